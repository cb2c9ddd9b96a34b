//! Every flag of every binary explains itself: walks `--help` of each binary and each of its
//! subcommands (recursively) and fails on an option or argument without help text, and on an
//! option taking a value whose help gives neither its default nor that it is required.

use std::collections::BTreeSet;
use std::process::Command;

const BINS: [(&str, &str); 3] = [
    ("rafs-virtiofsd", env!("CARGO_BIN_EXE_rafs-virtiofsd")),
    ("rafs-image", env!("CARGO_BIN_EXE_rafs-image")),
    ("nydus-overlayfs", env!("CARGO_BIN_EXE_nydus-overlayfs")),
];

/// One entry of an `Options:` / `Arguments:` / `Commands:` section of a help text.
#[derive(Debug)]
struct Entry {
    section: String,
    spec: String,
    help: String,
}

/// The entries of a clap-style help text. An entry line is indented by 2 (an option without
/// a short form by 6); its help follows after two or more spaces on the same line, or on the
/// next, more indented line.
fn entries(text: &str) -> Vec<Entry> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut section = String::new();
    for (i, l) in lines.iter().enumerate() {
        if !l.starts_with(' ') && l.ends_with(':') {
            section = l.trim_end_matches(':').to_string();
            continue;
        }
        if !["Options", "Arguments", "Commands"].contains(&section.as_str()) {
            continue;
        }
        let indent = l.len() - l.trim_start().len();
        let body = l.trim_start();
        let is_entry = match section.as_str() {
            "Options" => body.starts_with('-') && indent <= 6,
            _ => indent == 2 && !body.is_empty(),
        };
        if !is_entry {
            continue;
        }
        let (spec, help) = match body.split_once("  ") {
            Some((s, h)) => (s.trim().to_string(), h.trim().to_string()),
            None => {
                let next = lines.get(i + 1).copied().unwrap_or("");
                let ni = next.len() - next.trim_start().len();
                let h = if ni > indent && !next.trim_start().starts_with('-') {
                    next.trim().to_string()
                } else {
                    String::new()
                };
                (body.trim().to_string(), h)
            }
        };
        out.push(Entry {
            section: section.clone(),
            spec,
            help,
        });
    }
    out
}

/// The help without clap's trailing annotations (`[default: x]`, `[aliases: y]`...), which
/// alone explain nothing.
fn own_text(help: &str) -> &str {
    let mut h = help.trim_end();
    while h.ends_with(']') {
        match h.rfind(" [").or_else(|| h.starts_with('[').then_some(0)) {
            Some(i) => h = h[..i].trim_end(),
            None => break,
        }
    }
    h
}

fn help_of(bin: &str, path: &[String]) -> String {
    let out = Command::new(bin).args(path).arg("--help").output().unwrap();
    assert!(
        out.status.success(),
        "{bin} {path:?} --help: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Walks `name path... --help` and its subcommands; collects problems and every
/// `command: spec` seen.
fn walk(
    name: &str,
    bin: &str,
    path: Vec<String>,
    bad: &mut Vec<String>,
    seen: &mut BTreeSet<String>,
) {
    let cmd = std::iter::once(name.to_string())
        .chain(path.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    for e in entries(&help_of(bin, &path)) {
        seen.insert(format!("{cmd}: {}", e.spec));
        if own_text(&e.help).is_empty() {
            bad.push(format!(
                "{cmd}: {} {:?} has no help text",
                e.section, e.spec
            ));
            continue;
        }
        let takes_value = e.section == "Options" && e.spec.contains('<');
        let h = e.help.to_lowercase();
        if takes_value && !h.contains("default") && !h.contains("required") {
            bad.push(format!(
                "{cmd}: {:?}: help gives no default (nor 'required'): {}",
                e.spec, e.help
            ));
        }
        if e.section == "Commands" {
            let sub = e.spec.split_whitespace().next().unwrap().to_string();
            if sub != "help" {
                let mut p = path.clone();
                p.push(sub);
                walk(name, bin, p, bad, seen);
            }
        }
    }
}

#[test]
fn every_flag_of_every_binary_has_help() {
    let (mut bad, mut seen) = (Vec::new(), BTreeSet::new());
    for (name, bin) in BINS {
        walk(name, bin, Vec::new(), &mut bad, &mut seen);
    }
    assert!(bad.is_empty(), "flags without help:\n{}", bad.join("\n"));
    // The walk reached every subcommand and read their flags.
    for want in [
        "rafs-virtiofsd: -A, --apisock <APISOCK>",
        "rafs-virtiofsd: virtiofs",
        "rafs-virtiofsd virtiofs: --sock <SOCK>",
        "rafs-virtiofsd fuse: -M, --mountpoint <MOUNTPOINT>",
        "rafs-image create: -D, --blob-dir <BLOB_DIR>",
        "rafs-image create: <SOURCE>",
        "rafs-image merge: --blob-digests <BLOB_DIGESTS>",
        "rafs-image inspect: --output-json [<OUTPUT_JSON>]",
        "rafs-image check: -D, --blob-dir <BLOB_DIR>",
        "rafs-image unpack: -o, --output <OUTPUT>",
        "nydus-overlayfs: -o <OPTIONS>",
    ] {
        assert!(seen.contains(want), "{want:?} not seen in:\n{seen:#?}");
    }
}

#[test]
fn clap_annotations_are_not_help_text() {
    assert_eq!(own_text("[default: 6]"), "");
    assert_eq!(own_text("[default: 6] [possible values: 5, 6]"), "");
    assert_eq!(own_text("RAFS version [default: 6]"), "RAFS version");
    assert_eq!(
        own_text("Log level [nydusd: no off] [default: info]"),
        "Log level"
    );
}

/// The checker itself: a flag line without text (same line or next line) is reported.
#[test]
fn entries_finds_flags_without_help() {
    let text = "\
Usage: x [OPTIONS] <SRC>

Arguments:
  <SRC>  Source

Options:
  -B, --bootstrap <BOOTSTRAP>
  -b, --blob <BLOB>
          Blob file [default: b]
      --quiet
  -h, --help     Print help
";
    let e = entries(text);
    let got: Vec<(&str, &str)> = e
        .iter()
        .map(|e| (e.spec.as_str(), e.help.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            ("<SRC>", "Source"),
            ("-B, --bootstrap <BOOTSTRAP>", ""),
            ("-b, --blob <BLOB>", "Blob file [default: b]"),
            ("--quiet", ""),
            ("-h, --help", "Print help"),
        ]
    );
}

/// `rafs-image inspect ... | head`: a reader that goes away ends the tool quietly (SIGPIPE),
/// never with a panic.
#[test]
fn closed_stdout_pipe_is_not_a_panic() {
    use std::io::Read;
    use std::os::unix::process::ExitStatusExt;
    let boot = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/images/v6-zstd-64k-base/image.boot"
    );
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_rafs-image"))
        .args(["inspect", boot, "--output-json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = child.stdout.take().unwrap();
    let mut one = [0u8; 1];
    out.read_exact(&mut one).unwrap();
    drop(out);
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let st = child.wait().unwrap();
    assert!(!err.contains("panicked"), "{err}");
    assert!(
        st.success() || st.signal() == Some(libc::SIGPIPE),
        "{st:?}: {err}"
    );
}
