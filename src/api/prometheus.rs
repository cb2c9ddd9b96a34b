//! Prometheus text exposition (format 0.0.4) of the daemon's metrics, for `GET /metrics`.
//!
//! Every numeric leaf of the per-mount metrics JSON becomes a sample named
//! `rafs_virtiofsd_<path>` with a `mountpoint` label; a backend latency histogram becomes a
//! real Prometheus histogram (`_bucket{le=...}`, `_count`).

use std::collections::BTreeMap;
use std::fmt::Write;

use serde_json::Value;

const PREFIX: &str = "rafs_virtiofsd";

/// Content type of the exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Samples grouped by metric family, so each family's lines stay together.
#[derive(Default)]
struct Families {
    fams: BTreeMap<String, (Option<&'static str>, Vec<String>)>,
}

impl Families {
    fn push(&mut self, family: &str, kind: Option<&'static str>, line: String) {
        let e = self.fams.entry(family.to_string()).or_default();
        if kind.is_some() {
            e.0 = kind;
        }
        e.1.push(line);
    }

    fn walk(&mut self, path: &str, v: &Value, labels: &str) {
        match v {
            Value::Object(o) => {
                if let (Some(Value::Array(h)), Some(Value::Array(b))) =
                    (o.get("latency_histogram"), o.get("latency_buckets_ms"))
                {
                    self.histogram(&format!("{path}_latency_seconds"), h, b, labels);
                }
                for (k, child) in o {
                    if k == "latency_histogram" || k == "latency_buckets_ms" {
                        continue;
                    }
                    let p = if path.is_empty() {
                        sanitize(k)
                    } else {
                        format!("{path}_{}", sanitize(k))
                    };
                    self.walk(&p, child, labels);
                }
            }
            Value::Number(n) => {
                let name = format!("{PREFIX}_{path}");
                self.push(&name, None, format!("{name}{{{labels}}} {n}"));
            }
            Value::Bool(b) => {
                let name = format!("{PREFIX}_{path}");
                self.push(&name, None, format!("{name}{{{labels}}} {}", u8::from(*b)));
            }
            _ => {}
        }
    }

    /// `counts[i]` requests took at most `bounds_ms[i]`; the last count is the open bucket.
    fn histogram(&mut self, path: &str, counts: &[Value], bounds_ms: &[Value], labels: &str) {
        let name = format!("{PREFIX}_{path}");
        let mut cum = 0u64;
        for (i, c) in counts.iter().enumerate() {
            cum += c.as_u64().unwrap_or(0);
            let le = match bounds_ms.get(i).and_then(Value::as_u64) {
                Some(ms) => format!("{}", ms as f64 / 1000.0),
                None => "+Inf".to_string(),
            };
            self.push(
                &name,
                Some("histogram"),
                format!("{name}_bucket{{{labels},le=\"{le}\"}} {cum}"),
            );
        }
        self.push(
            &name,
            Some("histogram"),
            format!("{name}_count{{{labels}}} {cum}"),
        );
    }
}

/// Render `metrics` (mountpoint → metrics object, as `GET /api/v1/metrics` returns).
pub fn render(metrics: &Value) -> String {
    let mut f = Families::default();
    if let Value::Object(mounts) = metrics {
        for (mp, v) in mounts {
            let labels = format!("mountpoint=\"{}\"", escape_label(mp));
            f.walk("fs", v, &labels);
        }
    }
    let mut out = String::new();
    for (name, (kind, lines)) in &f.fams {
        if let Some(k) = kind {
            let _ = writeln!(out, "# TYPE {name} {k}");
        }
        for l in lines {
            let _ = writeln!(out, "{l}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_labels_and_histograms() {
        let m = serde_json::json!({
            "/": {"requests": 3},
            "/rafs/a\"b/lowerdir": {
                "requests": 10,
                "backend": {
                    "backend_type": "registry",
                    "read_count": 4,
                    "latency_buckets_ms": [1, 5],
                    "latency_histogram": [1, 2, 1]
                },
                "bootstrap": "/x/image.boot"
            }
        });
        let t = render(&m);
        assert!(
            t.contains("rafs_virtiofsd_fs_requests{mountpoint=\"/\"} 3\n"),
            "{t}"
        );
        assert!(
            t.contains("rafs_virtiofsd_fs_requests{mountpoint=\"/rafs/a\\\"b/lowerdir\"} 10\n"),
            "{t}"
        );
        assert!(t.contains("rafs_virtiofsd_fs_backend_read_count{"), "{t}");
        assert!(t.contains("# TYPE rafs_virtiofsd_fs_backend_latency_seconds histogram"));
        assert!(
            t.contains(
                "_latency_seconds_bucket{mountpoint=\"/rafs/a\\\"b/lowerdir\",le=\"0.001\"} 1\n"
            ),
            "{t}"
        );
        assert!(t.contains("le=\"0.005\"} 3\n"), "{t}");
        assert!(t.contains("le=\"+Inf\"} 4\n"), "{t}");
        assert!(t.contains("_latency_seconds_count{mountpoint=\"/rafs/a\\\"b/lowerdir\"} 4\n"));
        // Strings are not samples.
        assert!(!t.contains("bootstrap"), "{t}");
        assert!(!t.contains("backend_type"), "{t}");
        // Families are contiguous: a family's lines are never split by another family.
        let mut seen = std::collections::HashSet::new();
        let mut last = String::new();
        for l in t.lines().filter(|l| !l.starts_with('#')) {
            let fam = l
                .split(['{', ' '])
                .next()
                .unwrap()
                .trim_end_matches("_bucket")
                .trim_end_matches("_count")
                .to_string();
            if fam != last {
                assert!(seen.insert(fam.clone()), "family {fam} split:\n{t}");
                last = fam;
            }
        }
    }
}
