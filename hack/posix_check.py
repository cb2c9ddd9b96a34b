#!/usr/bin/env python3
"""POSIX conformance checks for a directory, run as one user.

Usage: posix_check.py setup DIR      (as root: the shared fixture dirs)
       posix_check.py run DIR TAG    (as the user under test; TAG names its entries)

Prints one line per check: `name: outcome`, where the outcome is OK or an errno name plus
the attributes that matter (owner, group, mode, link count, ACL presence). Nothing
host-specific (inode numbers, times) is printed, so two runs on two filesystems can be
compared line by line: tests/posix_conformance.rs runs this on the host's ext4 and through
the daemon and expects the same lines.
"""
import ctypes
import errno
import os
import stat
import struct
import sys

libc = ctypes.CDLL(None, use_errno=True)
RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT = 1, 2, 4


def renameat2(a, b, flags):
    r = libc.renameat2(-100, a.encode(), -100, b.encode(), flags)
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


def acl_xattr(entries):
    """POSIX ACL xattr bytes: version 2, then (tag, perm, id) entries."""
    out = struct.pack("<I", 2)
    for tag, perm, ident in entries:
        out += struct.pack("<HHI", tag, perm, ident)
    return out


USER_OBJ, USER, GROUP_OBJ, GROUP, MASK, OTHER = 1, 2, 4, 8, 0x10, 0x20
UNDEF = 0xFFFFFFFF
OUT = []


def attrs(p):
    st = os.lstat(p)
    s = "uid=%d gid=%d mode=%o nlink=%d" % (st.st_uid, st.st_gid, st.st_mode, st.st_nlink)
    if stat.S_ISCHR(st.st_mode):
        s += " rdev=%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev))
    try:
        v = os.getxattr(p, "system.posix_acl_access", follow_symlinks=False)
        s += " acl=%d" % ((len(v) - 4) // 8)
    except OSError:
        pass
    return s


def check(name, fn, show=None):
    try:
        r = fn()
        line = "OK"
        if isinstance(r, str):
            line += " " + r
        if show:
            line += " " + attrs(show)
    except OSError as e:
        line = errno.errorcode.get(e.errno, str(e.errno))
    OUT.append("%s: %s" % (name, line))


def setup(d):
    """The fixture, made by root: dirs each user works in."""
    os.umask(0)
    for sub, mode in [("pub", 0o777), ("sticky", 0o1777), ("ro", 0o555), ("priv", 0o700),
                      ("sgid", 0o2777), ("acl", 0o755), ("kill", 0o777)]:
        os.mkdir(os.path.join(d, sub), mode)
        os.chmod(os.path.join(d, sub), mode)
    os.chown(os.path.join(d, "sgid"), 0, 3000)
    # acl/: user 1002 may write through an access ACL; new entries inherit a default ACL.
    a = os.path.join(d, "acl")
    entries = [(USER_OBJ, 7, UNDEF), (USER, 7, 1002), (GROUP_OBJ, 5, UNDEF),
               (MASK, 7, UNDEF), (OTHER, 5, UNDEF)]
    os.setxattr(a, "system.posix_acl_access", acl_xattr(entries))
    os.setxattr(a, "system.posix_acl_default", acl_xattr(entries))
    # kill/: setuid/setgid files that other users may write.
    for n in ["w1001", "w1002", "w0", "c1001", "c1002", "c0", "t1001", "t1002", "t0"]:
        p = os.path.join(d, "kill", n)
        with open(p, "w") as f:
            f.write("x")
        owner = 1001 if n[1:] != "1001" else 1002
        os.chown(p, owner, owner)
        os.chmod(p, 0o6777)
    # An entry in sticky/ of someone else, per user.
    for u in (0, 1001, 1002):
        p = os.path.join(d, "sticky", "other-of-%d" % u)
        open(p, "w").close()
        os.chown(p, 4000, 4000)
        os.chmod(p, 0o666)


def run(d, tag):
    os.umask(0o022)
    me = os.getuid()
    j = lambda *a: os.path.join(d, *a)
    for sub in ["pub", "sticky", "ro", "priv", "sgid", "acl"]:
        b = j(sub, tag)
        check(sub + "/mkdir", lambda: os.mkdir(b, 0o777), b)
        check(sub + "/mkdir-in-new", lambda: os.mkdir(b + "/sub", 0o750), b + "/sub")
        f = b + ".file"
        check(sub + "/create", lambda: os.close(os.open(f, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)), f)
        check(sub + "/write", lambda: open(f, "w").write("hello"), f)
        check(sub + "/symlink", lambda: os.symlink("target", b + ".sym"), b + ".sym")
        check(sub + "/link", lambda: os.link(f, b + ".hard"), f)
        check(sub + "/mkfifo", lambda: os.mkfifo(b + ".fifo", 0o666), b + ".fifo")
        check(sub + "/rename", lambda: os.rename(b + ".hard", b + ".moved"), b + ".moved")
        check(sub + "/chmod", lambda: os.chmod(f, 0o640), f)
        check(sub + "/chmod-setgid", lambda: os.chmod(f, 0o2755), f)
        check(sub + "/chown-self", lambda: os.chown(f, me, os.getgid()), f)
        check(sub + "/chown-other", lambda: os.chown(f, 4000, -1), f)
        check(sub + "/chgrp-other", lambda: os.chown(f, -1, 4000), f)
        check(sub + "/truncate", lambda: os.truncate(f, 2), f)
        check(sub + "/read-back", lambda: open(f).read())
        check(sub + "/noreplace", lambda: renameat2(b + ".sym", b + ".moved", RENAME_NOREPLACE))
        check(sub + "/exchange", lambda: renameat2(b + ".sym", b + ".moved", RENAME_EXCHANGE), b + ".sym")
        check(sub + "/whiteout", lambda: renameat2(b + ".fifo", b + ".fifo2", RENAME_WHITEOUT), b + ".fifo")
        check(sub + "/mknod-whiteout", lambda: os.mknod(b + ".wh", stat.S_IFCHR | 0o000, 0), b + ".wh")
        check(sub + "/xattr-user", lambda: os.setxattr(f, "user.k", b"v"))
        check(sub + "/xattr-trusted", lambda: os.setxattr(f, "trusted.overlay.opaque", b"y"))
        check(sub + "/rmdir-sub", lambda: os.rmdir(b + "/sub"))
        check(sub + "/rmdir", lambda: os.rmdir(b))
        check(sub + "/unlink", lambda: os.unlink(b + ".moved"))
    # Sticky: someone else's entry stays.
    o = j("sticky", "other-of-%d" % me)
    check("sticky/unlink-other", lambda: os.unlink(o))
    check("sticky/rename-other", lambda: os.rename(j("sticky", "other-of-%d" % me), j("sticky", tag + ".stolen")))
    # killpriv: writes, truncates and chowns by a non-owner clear setuid/setgid.
    k = lambda n: j("kill", n)
    check("kill/write", lambda: open(k("w%d" % me), "a").write("y"), k("w%d" % me))
    check("kill/truncate", lambda: os.truncate(k("t%d" % me), 0), k("t%d" % me))
    check("kill/chown-by-root", lambda: os.chown(k("c%d" % me), 1001, 1001) if me == 0 else None, k("c%d" % me))
    # Unlinked while open: the fd keeps working.
    u = j("pub", tag + ".unlinked")

    def unlinked():
        fd = os.open(u, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            os.write(fd, b"abcdef")
            os.unlink(u)
            st = os.fstat(fd)
            os.pwrite(fd, b"XY", 1)
            os.ftruncate(fd, 4)
            data = os.pread(fd, 10, 0)
            st2 = os.fstat(fd)
            return "nlink=%d data=%r size=%d" % (st.st_nlink, data, st2.st_size)
        finally:
            os.close(fd)

    check("unlinked-open", unlinked)
    # O_TMPFILE, linked in.
    t = j("pub", tag + ".tmp")

    def tmpfile():
        fd = os.open(j("pub"), os.O_TMPFILE | os.O_RDWR, 0o600)
        try:
            os.write(fd, b"tmp")
            os.link("/proc/self/fd/%d" % fd, t, follow_symlinks=True)
        finally:
            os.close(fd)
        fd = os.open(t, os.O_RDONLY | os.O_NOFOLLOW)
        try:
            return os.read(fd, 10).decode()
        finally:
            os.close(fd)

    check("tmpfile", tmpfile, t)
    # Setgid dir: gid and setgid bit inherited.
    check("sgid/inherit-file", lambda: os.close(os.open(j("sgid", tag + ".g"), os.O_CREAT | os.O_WRONLY, 0o2755)), j("sgid", tag + ".g"))
    check("sgid/inherit-dir", lambda: os.mkdir(j("sgid", tag + ".gd"), 0o755), j("sgid", tag + ".gd"))
    # Default ACL inherited on create.
    check("acl/inherit", lambda: os.close(os.open(j("acl", tag + ".a"), os.O_CREAT | os.O_WRONLY, 0o666)), j("acl", tag + ".a"))
    print("\n".join(OUT))


if __name__ == "__main__":
    if sys.argv[1] == "setup":
        setup(sys.argv[2])
    else:
        run(sys.argv[2], sys.argv[3])
