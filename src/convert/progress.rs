//! Progress of a conversion: one indicatif bar per layer and per push on a TTY, plain
//! lines (start and end of each step) on stderr otherwise.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

/// Where progress goes.
pub struct Progress {
    multi: Option<MultiProgress>,
}

/// One step's bar (a no-op off a TTY).
#[derive(Clone)]
pub struct Bar {
    bar: Option<Arc<ProgressBar>>,
}

impl Progress {
    /// Bars when stderr is a terminal, lines otherwise.
    pub fn new() -> Progress {
        Progress {
            multi: std::io::stderr().is_terminal().then(MultiProgress::new),
        }
    }

    /// A step of `total` bytes named `what`.
    pub fn bar(&self, what: &str, total: u64) -> Bar {
        match &self.multi {
            Some(m) => {
                let b = m.add(ProgressBar::new(total));
                b.set_style(
                    ProgressStyle::with_template(
                        "{msg:40} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .expect("a valid template")
                    .progress_chars("=> "),
                );
                b.set_message(what.to_string());
                Bar {
                    bar: Some(Arc::new(b)),
                }
            }
            None => {
                eprintln!("{what}: {total} bytes");
                Bar { bar: None }
            }
        }
    }

    /// A one-line event.
    pub fn line(&self, msg: &str) {
        match &self.multi {
            Some(m) => {
                let _ = m.println(msg);
            }
            None => eprintln!("{msg}"),
        }
    }
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new()
    }
}

impl Bar {
    pub fn set(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.set_position(n);
        }
    }

    /// End the step with `msg`.
    pub fn done(&self, msg: &str) {
        match &self.bar {
            Some(b) => b.finish_with_message(msg.to_string()),
            None => eprintln!("{msg}"),
        }
    }
}
