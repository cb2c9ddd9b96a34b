//! The `nydus-overlayfs` mount helper: argv checking, option filtering, mount flag mapping
//! and the snapshotter's `extraoption` payload.
//!
//! containerd runs `mount.fuse overlay TARGET -o OPTS -t nydus-overlayfs`, which executes
//! `nydus-overlayfs overlay TARGET -o OPTS`. Options that only mean something to Kata
//! (`extraoption=`, `io.katacontainers.volume=`) are dropped; the rest become mount(2) flags
//! and overlay data. Unlike upstream's table, `dev`, `suid`, `exec`, `rw` and `async` *clear*
//! their flag (they are the defaults), and only the `no*`/`ro`/`sync` forms set one.

use base64::Engine;
use serde::Deserialize;

/// Option prefixes that never reach the kernel.
pub const DROPPED_PREFIXES: [&str; 2] = ["extraoption=", "io.katacontainers.volume="];

/// Overlay data must fit in one page (the kernel copies at most PAGE_SIZE bytes).
pub const MAX_DATA_LEN: usize = 4095;

/// Errors of the mount helper; each is a usage error or a bad option.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelperError {
    #[error("usage: nydus-overlayfs overlay TARGET -o OPTIONS")]
    Usage,
    #[error("the first argument must be \"overlay\", got {0:?}")]
    NotOverlay(String),
    #[error("empty mount target")]
    EmptyTarget,
    #[error("empty overlayfs mount options")]
    EmptyOptions,
    #[error("overlay mount data is {0} bytes; the kernel accepts at most {MAX_DATA_LEN}")]
    DataTooLong(usize),
    #[error("no extraoption= in the mount options")]
    NoExtraOption,
    #[error("more than one extraoption= in the mount options")]
    ManyExtraOptions,
    #[error("extraoption: {0}")]
    BadExtraOption(String),
}

/// A parsed helper invocation.
#[derive(Debug, PartialEq, Eq)]
pub struct MountRequest {
    pub target: String,
    /// All options as given, before filtering.
    pub options: Vec<String>,
}

/// Parse `argv[1..]`: exactly `overlay TARGET -o OPTIONS`.
pub fn parse_args(args: &[String]) -> Result<MountRequest, HelperError> {
    if args.len() != 4 || args[2] != "-o" {
        return Err(HelperError::Usage);
    }
    if args[0] != "overlay" {
        return Err(HelperError::NotOverlay(args[0].clone()));
    }
    if args[1].is_empty() {
        return Err(HelperError::EmptyTarget);
    }
    if args[3].is_empty() {
        return Err(HelperError::EmptyOptions);
    }
    Ok(MountRequest {
        target: args[1].clone(),
        options: args[3].split(',').map(str::to_owned).collect(),
    })
}

/// Drop the options meant for Kata only, and empty ones.
pub fn filter_options(options: &[String]) -> Vec<String> {
    options
        .iter()
        .filter(|o| !o.is_empty() && !DROPPED_PREFIXES.iter().any(|p| o.starts_with(p)))
        .cloned()
        .collect()
}

/// How one option acts on the mount flags.
enum FlagOp {
    Set(libc::c_ulong),
    Clear(libc::c_ulong),
}

fn flag_op(opt: &str) -> Option<FlagOp> {
    use FlagOp::*;
    Some(match opt {
        "defaults" => Clear(0),
        "ro" => Set(libc::MS_RDONLY),
        "rw" => Clear(libc::MS_RDONLY),
        "nodev" => Set(libc::MS_NODEV),
        "dev" => Clear(libc::MS_NODEV),
        "nosuid" => Set(libc::MS_NOSUID),
        "suid" => Clear(libc::MS_NOSUID),
        "noexec" => Set(libc::MS_NOEXEC),
        "exec" => Clear(libc::MS_NOEXEC),
        "sync" => Set(libc::MS_SYNCHRONOUS),
        "async" => Clear(libc::MS_SYNCHRONOUS),
        "dirsync" => Set(libc::MS_DIRSYNC),
        "noatime" => Set(libc::MS_NOATIME),
        "atime" => Clear(libc::MS_NOATIME),
        "nodiratime" => Set(libc::MS_NODIRATIME),
        "diratime" => Clear(libc::MS_NODIRATIME),
        "relatime" => Set(libc::MS_RELATIME),
        "norelatime" => Clear(libc::MS_RELATIME),
        "strictatime" => Set(libc::MS_STRICTATIME),
        "nostrictatime" => Clear(libc::MS_STRICTATIME),
        "lazytime" => Set(libc::MS_LAZYTIME),
        "nolazytime" => Clear(libc::MS_LAZYTIME),
        "mand" => Set(libc::MS_MANDLOCK),
        "nomand" => Clear(libc::MS_MANDLOCK),
        "silent" => Set(libc::MS_SILENT),
        "loud" => Clear(libc::MS_SILENT),
        _ => return None,
    })
}

/// Split filtered options into mount(2) flags and the overlay data string. Later options
/// win over earlier ones, as with mount(8).
pub fn flags_and_data(options: &[String]) -> Result<(libc::c_ulong, String), HelperError> {
    if options.is_empty() {
        return Err(HelperError::EmptyOptions);
    }
    let mut flags: libc::c_ulong = 0;
    let mut data: Vec<&str> = Vec::new();
    for o in options {
        match flag_op(o) {
            Some(FlagOp::Set(f)) => flags |= f,
            Some(FlagOp::Clear(f)) => flags &= !f,
            None => data.push(o),
        }
    }
    let data = data.join(",");
    if data.len() > MAX_DATA_LEN {
        return Err(HelperError::DataTooLong(data.len()));
    }
    Ok((flags, data))
}

/// The JSON that nydus-snapshotter base64-encodes into `extraoption=`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, serde::Serialize)]
pub struct ExtraOption {
    /// Host path of the image's RAFS bootstrap.
    pub source: String,
    /// The daemon config for this image: nydusd v1 JSON, as a string.
    pub config: String,
    /// Snapshot dir holding `fs/` and `work/`.
    pub snapshotdir: String,
    /// `v5` or `v6`.
    #[serde(default)]
    pub fs_version: String,
}

/// Find and decode the single `extraoption=` among mount options, as the Kata runtimes do.
pub fn parse_extra_option(options: &[String]) -> Result<ExtraOption, HelperError> {
    let mut found = options
        .iter()
        .filter_map(|o| o.strip_prefix("extraoption="));
    let b64 = found.next().ok_or(HelperError::NoExtraOption)?;
    if found.next().is_some() {
        return Err(HelperError::ManyExtraOptions);
    }
    let bad = |e: String| HelperError::BadExtraOption(e);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| bad(format!("base64: {e}")))?;
    let eo: ExtraOption = serde_json::from_slice(&raw).map_err(|e| bad(format!("json: {e}")))?;
    if eo.source.is_empty() || eo.config.is_empty() || eo.snapshotdir.is_empty() {
        return Err(bad(
            "source, config and snapshotdir must be non-empty".into()
        ));
    }
    if !eo.fs_version.is_empty() && eo.fs_version != "v5" && eo.fs_version != "v6" {
        return Err(bad(format!(
            "fs_version {:?} is not v5 or v6",
            eo.fs_version
        )));
    }
    Ok(eo)
}

/// Encode an [`ExtraOption`] the way nydus-snapshotter does (std base64 of the JSON).
pub fn encode_extra_option(eo: &ExtraOption) -> String {
    let json = serde_json::to_vec(eo).expect("ExtraOption serializes");
    format!(
        "extraoption={}",
        base64::engine::general_purpose::STANDARD.encode(json)
    )
}

/// Perform the overlay mount for an invocation; returns the flags and data used.
pub fn mount_overlay(req: &MountRequest) -> std::io::Result<(libc::c_ulong, String)> {
    use std::ffi::CString;
    let opts = filter_options(&req.options);
    let (flags, data) = flags_and_data(&opts).map_err(std::io::Error::other)?;
    let c = |s: &str| CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL));
    let (src, target, fstype, cdata) = (c("overlay")?, c(&req.target)?, c("overlay")?, c(&data)?);
    // SAFETY: every pointer is a valid NUL-terminated string that outlives the call.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            flags,
            cdata.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((flags, data))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn argv_shape_is_enforced() {
        let ok = parse_args(&s(&["overlay", "/t", "-o", "lowerdir=/a,upperdir=/b"])).unwrap();
        assert_eq!(ok.target, "/t");
        assert_eq!(ok.options, s(&["lowerdir=/a", "upperdir=/b"]));
        assert_eq!(parse_args(&s(&["overlay", "/t"])), Err(HelperError::Usage));
        assert_eq!(
            parse_args(&s(&["overlay", "/t", "-x", "a"])),
            Err(HelperError::Usage)
        );
        assert_eq!(
            parse_args(&s(&["ext4", "/t", "-o", "a"])),
            Err(HelperError::NotOverlay("ext4".into()))
        );
        assert_eq!(
            parse_args(&s(&["overlay", "", "-o", "a"])),
            Err(HelperError::EmptyTarget)
        );
        assert_eq!(
            parse_args(&s(&["overlay", "/t", "-o", ""])),
            Err(HelperError::EmptyOptions)
        );
    }

    #[test]
    fn kata_only_options_are_dropped() {
        let opts = s(&[
            "lowerdir=/l",
            "extraoption=eyJ9",
            "io.katacontainers.volume=abc",
            "upperdir=/u",
            "",
            "workdir=/w",
        ]);
        assert_eq!(
            filter_options(&opts),
            s(&["lowerdir=/l", "upperdir=/u", "workdir=/w"])
        );
        let only = s(&["extraoption=eyJ9", "io.katacontainers.volume=x"]);
        assert_eq!(
            flags_and_data(&filter_options(&only)),
            Err(HelperError::EmptyOptions)
        );
    }

    #[test]
    fn flags_are_not_inverted() {
        // mount.fuse appends ",dev,suid": those must clear, not set, the no* flags.
        let (f, d) =
            flags_and_data(&s(&["lowerdir=/l", "rw", "dev", "suid", "exec", "async"])).unwrap();
        assert_eq!(f, 0);
        assert_eq!(d, "lowerdir=/l");
        let (f, d) = flags_and_data(&s(&[
            "ro",
            "nodev",
            "nosuid",
            "noexec",
            "sync",
            "noatime",
            "index=off",
        ]))
        .unwrap();
        assert_eq!(
            f,
            libc::MS_RDONLY
                | libc::MS_NODEV
                | libc::MS_NOSUID
                | libc::MS_NOEXEC
                | libc::MS_SYNCHRONOUS
                | libc::MS_NOATIME
        );
        assert_eq!(d, "index=off");
        // Last one wins.
        let (f, _) = flags_and_data(&s(&["nodev", "dev", "x=1"])).unwrap();
        assert_eq!(f, 0);
        let (f, _) = flags_and_data(&s(&["rw", "ro", "x=1"])).unwrap();
        assert_eq!(f, libc::MS_RDONLY);
    }

    #[test]
    fn oversized_data_is_refused() {
        let long = format!("lowerdir={}", "a".repeat(5000));
        assert!(matches!(
            flags_and_data(&[long]),
            Err(HelperError::DataTooLong(_))
        ));
    }

    #[test]
    fn extraoption_round_trips_and_is_validated() {
        let eo = ExtraOption {
            source: "/var/lib/snap/1/fs/image/image.boot".into(),
            config: r#"{"device":{"backend":{"type":"localfs","config":{"dir":"/b"}}}}"#.into(),
            snapshotdir: "/var/lib/snap/2".into(),
            fs_version: "v6".into(),
        };
        let opts = vec![
            "lowerdir=/x".to_string(),
            encode_extra_option(&eo),
            "upperdir=/u".to_string(),
        ];
        assert_eq!(parse_extra_option(&opts).unwrap(), eo);
        assert_eq!(
            parse_extra_option(&s(&["lowerdir=/x"])),
            Err(HelperError::NoExtraOption)
        );
        let twice = vec![encode_extra_option(&eo), encode_extra_option(&eo)];
        assert_eq!(
            parse_extra_option(&twice),
            Err(HelperError::ManyExtraOptions)
        );
        assert!(parse_extra_option(&s(&["extraoption=!!!"])).is_err());
        let mut bad = eo.clone();
        bad.fs_version = "v7".into();
        assert!(parse_extra_option(&[encode_extra_option(&bad)]).is_err());
        bad = eo;
        bad.snapshotdir.clear();
        assert!(parse_extra_option(&[encode_extra_option(&bad)]).is_err());
    }
}
