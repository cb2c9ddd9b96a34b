//! Where an image lives: `host[:port]/name[:tag|@sha256:…]`, `oci:DIR[:tag]` or
//! `docker-archive:FILE` (the forms `rafs-image convert` and `check` take, as skopeo spells
//! them).

use std::fmt;
use std::path::PathBuf;

use super::ConvertError;

/// A parsed image location.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    Registry {
        /// `host[:port]` as given (`docker.io` becomes `registry-1.docker.io`).
        host: String,
        /// Repository path, e.g. `library/debian`.
        repo: String,
        /// A tag, or a `sha256:` digest.
        reference: String,
    },
    /// An OCI image layout directory; `tag` picks the `org.opencontainers.image.ref.name`.
    OciDir { dir: PathBuf, tag: Option<String> },
    /// A `docker save` tar (source only).
    DockerArchive { file: PathBuf },
}

impl ImageRef {
    /// Parse one of the three forms.
    pub fn parse(s: &str) -> Result<ImageRef, ConvertError> {
        let bad = |why: &str| ConvertError::Invalid(format!("image reference {s:?}: {why}"));
        if let Some(rest) = s.strip_prefix("oci:") {
            if rest.is_empty() {
                return Err(bad("oci: needs a directory"));
            }
            // DIR[:tag]: a tag has no '/', so split at the last ':' after the last '/'.
            let slash = rest.rfind('/').map_or(0, |i| i + 1);
            return Ok(match rest[slash..].rfind(':') {
                Some(i) if slash + i + 1 < rest.len() => ImageRef::OciDir {
                    dir: PathBuf::from(&rest[..slash + i]),
                    tag: Some(rest[slash + i + 1..].to_string()),
                },
                _ => ImageRef::OciDir {
                    dir: PathBuf::from(rest.trim_end_matches(':')),
                    tag: None,
                },
            });
        }
        if let Some(rest) = s.strip_prefix("docker-archive:") {
            if rest.is_empty() {
                return Err(bad("docker-archive: needs a file"));
            }
            return Ok(ImageRef::DockerArchive {
                file: PathBuf::from(rest),
            });
        }
        let s2 = s.strip_prefix("docker://").unwrap_or(s);
        if s2.contains("://") {
            return Err(bad(
                "give host[:port]/name:tag without a scheme; use --*-insecure for http",
            ));
        }
        let (name, reference) = match s2.split_once('@') {
            Some((n, d)) => {
                if !d.starts_with("sha256:") || d.len() != 71 {
                    return Err(bad("a digest is sha256: and 64 hex digits"));
                }
                (n, d.to_string())
            }
            None => {
                let slash = s2.rfind('/').map_or(0, |i| i + 1);
                match s2[slash..].rfind(':') {
                    Some(i) => (&s2[..slash + i], s2[slash + i + 1..].to_string()),
                    None => (s2, "latest".to_string()),
                }
            }
        };
        let (first, rest) = match name.split_once('/') {
            Some((f, r)) if f.contains('.') || f.contains(':') || f == "localhost" => {
                (f.to_string(), r.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let repo = if first == "docker.io" && !rest.contains('/') {
            format!("library/{rest}")
        } else {
            rest
        };
        let host = if first == "docker.io" {
            "registry-1.docker.io".to_string()
        } else {
            first
        };
        let valid_repo = !repo.is_empty()
            && repo.split('/').all(|c| {
                !c.is_empty()
                    && c.bytes().all(|b| {
                        b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b)
                    })
            });
        if !valid_repo {
            return Err(bad(
                "repository names are lowercase letters, digits, '.', '_', '-' and '/'",
            ));
        }
        let valid_tag = reference.starts_with("sha256:")
            || (!reference.is_empty()
                && reference.len() <= 128
                && reference
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)));
        if !valid_tag {
            return Err(bad("invalid tag"));
        }
        Ok(ImageRef::Registry {
            host,
            repo,
            reference,
        })
    }

    /// The tag (not a digest) of this location, if it has one.
    pub fn tag(&self) -> Option<&str> {
        match self {
            ImageRef::Registry { reference, .. } if !reference.starts_with("sha256:") => {
                Some(reference)
            }
            ImageRef::OciDir { tag, .. } => tag.as_deref(),
            _ => None,
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Registry {
                host,
                repo,
                reference,
            } => {
                let sep = if reference.starts_with("sha256:") {
                    '@'
                } else {
                    ':'
                };
                write!(f, "{host}/{repo}{sep}{reference}")
            }
            ImageRef::OciDir { dir, tag } => match tag {
                Some(t) => write!(f, "oci:{}:{t}", dir.display()),
                None => write!(f, "oci:{}", dir.display()),
            },
            ImageRef::DockerArchive { file } => write!(f, "docker-archive:{}", file.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_parse() {
        let r = ImageRef::parse("127.0.0.1:5000/a/b:v1").unwrap();
        assert_eq!(
            r,
            ImageRef::Registry {
                host: "127.0.0.1:5000".into(),
                repo: "a/b".into(),
                reference: "v1".into()
            }
        );
        assert_eq!(r.to_string(), "127.0.0.1:5000/a/b:v1");
        let r = ImageRef::parse("localhost:5000/x").unwrap();
        assert_eq!(r.tag(), Some("latest"));
        let d = format!("reg.example/x@sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&d).unwrap();
        assert_eq!(r.tag(), None);
        assert_eq!(r.to_string(), d);
        assert_eq!(
            ImageRef::parse("debian:12").unwrap(),
            ImageRef::Registry {
                host: "registry-1.docker.io".into(),
                repo: "library/debian".into(),
                reference: "12".into()
            }
        );
        assert_eq!(
            ImageRef::parse("oci:/tmp/a:b/dir:v2").unwrap(),
            ImageRef::OciDir {
                dir: "/tmp/a:b/dir".into(),
                tag: Some("v2".into())
            }
        );
        assert_eq!(
            ImageRef::parse("oci:rel/dir").unwrap(),
            ImageRef::OciDir {
                dir: "rel/dir".into(),
                tag: None
            }
        );
        assert!(matches!(
            ImageRef::parse("docker-archive:/x.tar").unwrap(),
            ImageRef::DockerArchive { .. }
        ));
        for bad in [
            "http://h/x:1",
            "h.io/UPPER:1",
            "h.io/x@sha256:12",
            "oci:",
            "h.io/x:bad tag",
        ] {
            assert!(ImageRef::parse(bad).is_err(), "{bad}");
        }
    }
}
