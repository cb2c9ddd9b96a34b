//! The host's `/proc`, opened once as a directory fd so that every later use goes through
//! it rather than through the path: under `--sandbox chroot` the path `/proc` no longer
//! exists, but the fd opened before the chroot still reaches the process's own entries
//! (`self/fd`, `self/mountinfo`, `thread-self/status`). The sandbox calls [`init`] before it
//! confines the process; any other first use opens it then.

use std::ffi::CStr;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;

static PROC: OnceLock<Option<OwnedFd>> = OnceLock::new();

/// Opens `/proc` (once). Returns whether it is there.
pub fn init() -> bool {
    PROC.get_or_init(|| {
        // SAFETY: NUL-terminated literal path; the result is checked.
        let fd = unsafe {
            libc::open(
                c"/proc".as_ptr(),
                libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            log::warn!("/proc: {}", io::Error::last_os_error());
            return None;
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        Some(unsafe { OwnedFd::from_raw_fd(fd) })
    })
    .is_some()
}

/// The `/proc` directory fd, if `/proc` could be opened.
pub fn dir() -> Option<RawFd> {
    init();
    PROC.get()?.as_ref().map(|f| f.as_raw_fd())
}

/// Opens `rel` (relative, e.g. `self/fd`) under `/proc` with `flags` (plus O_CLOEXEC).
pub fn open(rel: &CStr, flags: i32) -> io::Result<OwnedFd> {
    let d = dir().ok_or_else(|| io::Error::from_raw_os_error(libc::ENOENT))?;
    // SAFETY: valid dirfd and NUL-terminated relative name; the result is checked.
    let fd = unsafe { libc::openat(d, rel.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Reads `rel` under `/proc` as text.
pub fn read_to_string(rel: &CStr) -> io::Result<String> {
    let mut s = String::new();
    std::fs::File::from(open(rel, libc::O_RDONLY)?).read_to_string(&mut s)?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_entries() {
        let s = read_to_string(c"self/status").unwrap();
        assert!(s.contains(&format!("Pid:\t{}", std::process::id())));
        assert!(open(c"self/fd", libc::O_PATH | libc::O_DIRECTORY).is_ok());
        assert!(open(c"self/nonexistent", libc::O_RDONLY).is_err());
    }
}
