//! A tolerant tar stream reader for OCI layers: ustar, GNU (long names, base-256 numbers,
//! old-style sparse files) and PAX (long names, xattrs with binary values, sub-second
//! mtimes, sparse formats 0.0 / 0.1 / 1.0), as written by GNU tar, Go archive/tar, Python
//! tarfile and bsdtar. Empty numeric fields (fifos with blank device numbers) read as 0.
//!
//! Headers are parsed here rather than with the `tar` crate, which rejects some of these
//! inputs. File data is streamed into the chunker entry by entry.

use std::collections::BTreeMap;
use std::io::Read;

use super::chunker::Chunker;
use super::tree::{Node, NodeId, Tree};
use super::BuildError;

const BLOCK: usize = 512;

fn terr(msg: impl Into<String>) -> BuildError {
    BuildError::Tar(msg.into())
}

/// Parse a numeric header field: octal (space/NUL padded, empty = 0) or GNU base-256.
pub fn parse_numeric(f: &[u8]) -> Result<u64, BuildError> {
    if let Some(&first) = f.first() {
        if first & 0x80 != 0 {
            if first == 0xff {
                // Negative base-256 (pre-epoch times): clamp to 0.
                return Ok(0);
            }
            let mut v: u64 = u64::from(first & 0x7f);
            for &c in &f[1..] {
                v = v
                    .checked_mul(256)
                    .and_then(|v| v.checked_add(u64::from(c)))
                    .ok_or_else(|| terr("base-256 number overflows"))?;
            }
            return Ok(v);
        }
    }
    let mut v: u64 = 0;
    let mut started = false;
    for &c in f {
        match c {
            b'0'..=b'7' => {
                started = true;
                v = v
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(u64::from(c - b'0')))
                    .ok_or_else(|| terr("octal number overflows"))?;
            }
            b' ' | 0 if !started => {}
            b' ' | 0 => break,
            _ => {
                return Err(terr(format!(
                    "bad numeric field {:?}",
                    String::from_utf8_lossy(f)
                )))
            }
        }
    }
    Ok(v)
}

fn cstr(f: &[u8]) -> &[u8] {
    match f.iter().position(|&c| c == 0) {
        Some(p) => &f[..p],
        None => f,
    }
}

fn read_block(r: &mut dyn Read, buf: &mut [u8; BLOCK]) -> Result<bool, BuildError> {
    let mut n = 0;
    while n < BLOCK {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(terr(format!("read error: {e}"))),
        }
    }
    if n == 0 {
        return Ok(false);
    }
    if n < BLOCK {
        return Err(terr("truncated header block"));
    }
    Ok(true)
}

fn read_exact_vec(r: &mut dyn Read, size: u64) -> Result<Vec<u8>, BuildError> {
    if size > 64 << 20 {
        return Err(terr(format!("metadata entry of {size} bytes is too large")));
    }
    let mut v = vec![0u8; size as usize];
    r.read_exact(&mut v)
        .map_err(|e| terr(format!("truncated entry data: {e}")))?;
    skip(r, pad(size))?;
    Ok(v)
}

fn pad(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn skip(r: &mut dyn Read, n: u64) -> Result<(), BuildError> {
    let copied = std::io::copy(&mut r.take(n), &mut std::io::sink())
        .map_err(|e| terr(format!("read error: {e}")))?;
    if copied != n {
        return Err(terr("truncated archive"));
    }
    Ok(())
}

/// PAX attributes that apply to the next entry.
#[derive(Default, Clone)]
struct Pax {
    path: Option<Vec<u8>>,
    linkpath: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
    mtime: Option<(u64, u32)>,
    devmajor: Option<u64>,
    devminor: Option<u64>,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    sparse_map: Vec<(u64, u64)>,
    sparse_offset: Option<u64>,
    sparse_realsize: Option<u64>,
    sparse_name: Option<Vec<u8>>,
    sparse_major: Option<u64>,
}

fn parse_dec(v: &[u8]) -> Result<u64, BuildError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .ok_or_else(|| terr(format!("bad PAX number {:?}", String::from_utf8_lossy(v))))
}

fn parse_pax_time(v: &[u8]) -> Result<(u64, u32), BuildError> {
    let s = std::str::from_utf8(v).map_err(|_| terr("bad PAX time"))?;
    if s.starts_with('-') {
        return Ok((0, 0));
    }
    let (sec, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    let sec = sec.parse::<u64>().map_err(|_| terr("bad PAX time"))?;
    let mut nsec = 0u32;
    for (i, c) in frac.chars().take(9).enumerate() {
        let d = c.to_digit(10).ok_or_else(|| terr("bad PAX time"))?;
        nsec += d * 10u32.pow(8 - i as u32);
    }
    Ok((sec, nsec))
}

fn parse_pax(data: &[u8], pax: &mut Pax) -> Result<(), BuildError> {
    let mut rest = data;
    while !rest.is_empty() {
        if rest.iter().all(|&c| c == 0) {
            break;
        }
        let sp = rest
            .iter()
            .position(|&c| c == b' ')
            .ok_or_else(|| terr("bad PAX record"))?;
        let len = parse_dec(&rest[..sp])? as usize;
        if len <= sp + 1 || len > rest.len() || rest[len - 1] != b'\n' {
            return Err(terr("bad PAX record length"));
        }
        let rec = &rest[sp + 1..len - 1];
        let eq = rec
            .iter()
            .position(|&c| c == b'=')
            .ok_or_else(|| terr("PAX record without '='"))?;
        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
        match k {
            b"path" => pax.path = Some(v.to_vec()),
            b"linkpath" => pax.linkpath = Some(v.to_vec()),
            b"size" => pax.size = Some(parse_dec(v)?),
            b"uid" => pax.uid = Some(parse_dec(v)?),
            b"gid" => pax.gid = Some(parse_dec(v)?),
            b"mtime" => pax.mtime = Some(parse_pax_time(v)?),
            b"SCHILY.devmajor" => pax.devmajor = Some(parse_dec(v)?),
            b"SCHILY.devminor" => pax.devminor = Some(parse_dec(v)?),
            b"GNU.sparse.size" | b"GNU.sparse.realsize" => {
                pax.sparse_realsize = Some(parse_dec(v)?)
            }
            b"GNU.sparse.name" => pax.sparse_name = Some(v.to_vec()),
            b"GNU.sparse.major" => pax.sparse_major = Some(parse_dec(v)?),
            b"GNU.sparse.offset" => pax.sparse_offset = Some(parse_dec(v)?),
            b"GNU.sparse.numbytes" => {
                let off = pax
                    .sparse_offset
                    .take()
                    .ok_or_else(|| terr("sparse numbytes without offset"))?;
                pax.sparse_map.push((off, parse_dec(v)?));
            }
            b"GNU.sparse.map" => {
                let nums: Result<Vec<u64>, _> = v
                    .split(|&c| c == b',')
                    .filter(|s| !s.is_empty())
                    .map(parse_dec)
                    .collect();
                let nums = nums?;
                if nums.len() % 2 != 0 {
                    return Err(terr("odd GNU.sparse.map"));
                }
                pax.sparse_map = nums.chunks(2).map(|p| (p[0], p[1])).collect();
            }
            _ => {
                if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                    pax.xattrs.insert(name.to_vec(), v.to_vec());
                } else if let Some(name) = k.strip_prefix(b"LIBARCHIVE.xattr.") {
                    use base64::Engine;
                    let name = percent_encoding::percent_decode(name).collect::<Vec<u8>>();
                    let val = base64::engine::general_purpose::STANDARD
                        .decode(v)
                        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(v))
                        .map_err(|_| terr("bad LIBARCHIVE.xattr value"))?;
                    pax.xattrs.entry(name).or_insert(val);
                }
            }
        }
        rest = &rest[len..];
    }
    Ok(())
}

/// Reads a sparse file's data segments from the archive, yielding zeros in the holes.
struct SparseReader<'a> {
    inner: &'a mut dyn Read,
    map: Vec<(u64, u64)>,
    seg: usize,
    pos: u64,
    size: u64,
}

impl Read for SparseReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pos >= self.size || buf.is_empty() {
            return Ok(0);
        }
        while self.seg < self.map.len() && self.map[self.seg].0 + self.map[self.seg].1 <= self.pos {
            self.seg += 1;
        }
        let (off, len) = self.map.get(self.seg).copied().unwrap_or((self.size, 0));
        if self.pos < off {
            let n = (off.min(self.size) - self.pos).min(buf.len() as u64) as usize;
            buf[..n].fill(0);
            self.pos += n as u64;
            return Ok(n);
        }
        let n = (off + len - self.pos).min(buf.len() as u64) as usize;
        let got = self.inner.read(&mut buf[..n])?;
        if got == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.pos += got as u64;
        Ok(got)
    }
}

fn normalize(path: &[u8]) -> Vec<Vec<u8>> {
    path.split(|&c| c == b'/')
        .filter(|c| !c.is_empty() && *c != b".")
        .map(|c| c.to_vec())
        .collect()
}

/// Find or create the directory for `comps`; missing parents are made (0755).
fn ensure_dir(tree: &mut Tree, comps: &[Vec<u8>]) -> Result<NodeId, BuildError> {
    let mut cur = 0;
    for c in comps {
        if c == b".." {
            return Err(terr("path with '..'"));
        }
        cur = match tree.child(cur, c) {
            Some(n) if tree.nodes[n].is_dir() => n,
            Some(n) => {
                tree.detach(n);
                implicit_dir(tree, c, cur)
            }
            None => implicit_dir(tree, c, cur),
        };
    }
    Ok(cur)
}

fn implicit_dir(tree: &mut Tree, name: &[u8], parent: NodeId) -> NodeId {
    let mut n = Node::new(name.to_vec(), parent, libc::S_IFDIR | 0o755);
    n.implicit = true;
    tree.add(n)
}

fn makedev(major: u64, minor: u64) -> u32 {
    (((major & 0xfff) << 8) | (minor & 0xff) | ((minor & !0xff) << 12)) as u32
}

/// Read a tar stream into a tree, chunking file data into `chunker` as it goes.
pub fn read_tar(r: &mut dyn Read, chunker: &mut Chunker) -> Result<Tree, BuildError> {
    let mut tree = Tree::new();
    tree.nodes[0].implicit = true;
    let mut hdr = [0u8; BLOCK];
    let mut pax = Pax::default();
    let mut global = Pax::default();
    let mut gnu_name: Option<Vec<u8>> = None;
    let mut gnu_link: Option<Vec<u8>> = None;
    loop {
        if !read_block(r, &mut hdr)? {
            break;
        }
        if hdr.iter().all(|&c| c == 0) {
            // End-of-archive marker (one or two zero blocks).
            break;
        }
        let stored = parse_numeric(&hdr[148..156])?;
        let sum: u64 = hdr
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    u64::from(c)
                }
            })
            .sum();
        let ssum: i64 = hdr
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if (148..156).contains(&i) {
                    32
                } else {
                    i64::from(c as i8)
                }
            })
            .sum();
        if stored != sum && stored as i64 != ssum {
            return Err(terr("header checksum mismatch"));
        }
        let typeflag = hdr[156];
        let mut size = parse_numeric(&hdr[124..136])?;
        match typeflag {
            b'x' | b'X' => {
                let data = read_exact_vec(r, size)?;
                parse_pax(&data, &mut pax)?;
                continue;
            }
            b'g' => {
                let data = read_exact_vec(r, size)?;
                parse_pax(&data, &mut global)?;
                continue;
            }
            b'L' => {
                gnu_name = Some(cstr(&read_exact_vec(r, size)?).to_vec());
                continue;
            }
            b'K' => {
                gnu_link = Some(cstr(&read_exact_vec(r, size)?).to_vec());
                continue;
            }
            b'V' | b'M' | b'N' => {
                // Volume label / multi-volume / old long-name records: skip.
                skip(r, size + pad(size))?;
                pax = Pax::default();
                continue;
            }
            _ => {}
        }
        // Merge global PAX values under the entry's own.
        let mut p = global.clone();
        let own = std::mem::take(&mut pax);
        macro_rules! over {
            ($f:ident) => {
                if own.$f.is_some() {
                    p.$f = own.$f.clone();
                }
            };
        }
        over!(path);
        over!(linkpath);
        over!(size);
        over!(uid);
        over!(gid);
        over!(mtime);
        over!(devmajor);
        over!(devminor);
        over!(sparse_realsize);
        over!(sparse_name);
        over!(sparse_major);
        p.xattrs.extend(own.xattrs);
        if !own.sparse_map.is_empty() {
            p.sparse_map = own.sparse_map;
        }

        let is_ustar = &hdr[257..263] == b"ustar\0";
        let mut name = cstr(&hdr[0..100]).to_vec();
        if is_ustar && hdr[345] != 0 {
            let mut full = cstr(&hdr[345..500]).to_vec();
            full.push(b'/');
            full.extend_from_slice(&name);
            name = full;
        }
        if let Some(n) = gnu_name.take() {
            name = n;
        }
        if let Some(n) = &p.path {
            name = n.clone();
        }
        if let Some(n) = &p.sparse_name {
            name = n.clone();
        }
        let mut link = cstr(&hdr[157..257]).to_vec();
        if let Some(l) = gnu_link.take() {
            link = l;
        }
        if let Some(l) = &p.linkpath {
            link = l.clone();
        }
        if let Some(s) = p.size {
            size = s;
        }
        let mode = parse_numeric(&hdr[100..108])? as u32 & 0o7777;
        let uid = p.uid.unwrap_or(parse_numeric(&hdr[108..116])?) as u32;
        let gid = p.gid.unwrap_or(parse_numeric(&hdr[116..124])?) as u32;
        let (mtime, mtime_nsec) = match p.mtime {
            Some(t) => t,
            None => (parse_numeric(&hdr[136..148])?, 0),
        };
        let devmajor = p.devmajor.unwrap_or(parse_numeric(&hdr[329..337])?);
        let devminor = p.devminor.unwrap_or(parse_numeric(&hdr[337..345])?);

        let comps = normalize(&name);
        let fmt = match typeflag {
            b'0' | 0 | b'7' | b'S' => libc::S_IFREG,
            b'1' => 0,
            b'2' => libc::S_IFLNK,
            b'3' => libc::S_IFCHR,
            b'4' => libc::S_IFBLK,
            b'5' | b'D' => libc::S_IFDIR,
            b'6' => libc::S_IFIFO,
            other => {
                log::warn!("tar: skipping entry of type {:?}", other as char);
                skip(r, size + pad(size))?;
                continue;
            }
        };
        // Name '.' or '/' = attributes of the root.
        if comps.is_empty() {
            if fmt == libc::S_IFDIR {
                let root = &mut tree.nodes[0];
                root.mode = libc::S_IFDIR | mode;
                root.uid = uid;
                root.gid = gid;
                root.mtime = mtime;
                root.mtime_nsec = mtime_nsec;
                root.xattrs = p.xattrs.clone();
                root.implicit = false;
            }
            skip(r, size + pad(size))?;
            continue;
        }
        if comps.iter().any(|c| c == b"..") {
            return Err(terr(format!(
                "entry {:?} escapes the root",
                String::from_utf8_lossy(&name)
            )));
        }
        let (leaf, parents) = comps.split_last().expect("non-empty");
        let parent = ensure_dir(&mut tree, parents)?;
        let existing = tree.child(parent, leaf);

        if typeflag == b'1' {
            let target = tree
                .lookup_path(&normalize(&link).join(&b'/'))
                .filter(|&t| t != 0)
                .ok_or_else(|| {
                    terr(format!(
                        "hard link {:?} to missing {:?}",
                        String::from_utf8_lossy(&name),
                        String::from_utf8_lossy(&link)
                    ))
                })?;
            skip(r, size + pad(size))?;
            if existing == Some(target) {
                continue;
            }
            if let Some(e) = existing {
                tree.detach(e);
            }
            let t = &tree.nodes[target];
            let mut node = t.clone();
            node.name = leaf.clone();
            node.parent = parent;
            node.children = Vec::new();
            if t.is_reg() {
                node.link_to = Some(t.link_to.unwrap_or(target));
                node.chunks = Vec::new();
            } else if t.is_dir() {
                return Err(terr("hard link to a directory"));
            }
            tree.add(node);
            continue;
        }

        let mut node = Node::new(leaf.clone(), parent, fmt | mode);
        node.uid = uid;
        node.gid = gid;
        node.mtime = mtime;
        node.mtime_nsec = mtime_nsec;
        node.xattrs = p.xattrs.clone();
        if fmt == libc::S_IFCHR || fmt == libc::S_IFBLK {
            node.rdev = makedev(devmajor, devminor);
        }
        if fmt == libc::S_IFLNK {
            node.symlink = link.clone();
            node.size = link.len() as u64;
        }
        match existing {
            Some(e) if fmt == libc::S_IFDIR && tree.nodes[e].is_dir() => {
                // Re-declared directory: update attributes, keep children.
                let n = &mut tree.nodes[e];
                n.mode = node.mode;
                n.uid = uid;
                n.gid = gid;
                n.mtime = mtime;
                n.mtime_nsec = mtime_nsec;
                n.xattrs = node.xattrs;
                n.implicit = false;
                skip(r, size + pad(size))?;
                continue;
            }
            Some(e) => tree.detach(e),
            None => {}
        }
        if fmt != libc::S_IFREG {
            skip(r, size + pad(size))?;
            tree.add(node);
            continue;
        }
        // Regular file (possibly sparse).
        let mut map = p.sparse_map.clone();
        let mut real_size = p.sparse_realsize;
        let mut stored = size;
        if typeflag == b'S' {
            // Old GNU sparse: 4 map entries at 386, extension flag at 482, real size at 483.
            for i in 0..4 {
                let o = 386 + i * 24;
                let off = parse_numeric(&hdr[o..o + 12])?;
                let len = parse_numeric(&hdr[o + 12..o + 24])?;
                if off != 0 || len != 0 {
                    map.push((off, len));
                }
            }
            real_size = Some(parse_numeric(&hdr[483..495])?);
            let mut extended = hdr[482] != 0;
            let mut ext = [0u8; BLOCK];
            while extended {
                if !read_block(r, &mut ext)? {
                    return Err(terr("truncated sparse header"));
                }
                for i in 0..21 {
                    let o = i * 24;
                    let off = parse_numeric(&ext[o..o + 12])?;
                    let len = parse_numeric(&ext[o + 12..o + 24])?;
                    if off != 0 || len != 0 {
                        map.push((off, len));
                    }
                }
                extended = ext[504] != 0;
            }
        }
        let mut consumed_map = 0u64;
        if p.sparse_major == Some(1) {
            // PAX sparse 1.0: the map is at the start of the data, in decimal lines.
            let mut text = Vec::new();
            let mut blk = [0u8; BLOCK];
            let mut lines_needed: Option<usize> = None;
            loop {
                let nl = text.iter().filter(|&&c| c == b'\n').count();
                if let Some(n) = lines_needed {
                    if nl > 2 * n {
                        break;
                    }
                } else if nl >= 1 {
                    let first = text.split(|&c| c == b'\n').next().unwrap_or_default();
                    lines_needed = Some(parse_dec(first)? as usize);
                    continue;
                }
                r.read_exact(&mut blk)
                    .map_err(|_| terr("truncated sparse map"))?;
                consumed_map += BLOCK as u64;
                text.extend_from_slice(&blk);
                if consumed_map > (16 << 20) {
                    return Err(terr("sparse map too large"));
                }
            }
            let mut lines = text.split(|&c| c == b'\n');
            let n = parse_dec(lines.next().unwrap_or_default())? as usize;
            map.clear();
            for _ in 0..n {
                let off = parse_dec(lines.next().unwrap_or_default())?;
                let len = parse_dec(lines.next().unwrap_or_default())?;
                map.push((off, len));
            }
            stored = size.saturating_sub(consumed_map);
        }
        let is_sparse = typeflag == b'S' || !map.is_empty() || real_size.is_some();
        let id = tree.add(node);
        if is_sparse {
            let total = real_size.unwrap_or(stored);
            let data: u64 = map.iter().map(|m| m.1).sum();
            if data != stored {
                return Err(terr(format!(
                    "sparse entry {:?}: map covers {data} bytes, archive holds {stored}",
                    String::from_utf8_lossy(&name)
                )));
            }
            map.sort();
            tree.nodes[id].size = total;
            let mut sr = SparseReader {
                inner: r,
                map,
                seg: 0,
                pos: 0,
                size: total,
            };
            chunker.add_file(id, &mut sr, total)?;
            skip(r, pad(size))?;
        } else {
            tree.nodes[id].size = size;
            chunker.add_file(id, &mut r.take(size), size)?;
            skip(r, pad(size))?;
        }
    }
    Ok(tree)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_fields() {
        assert_eq!(parse_numeric(b"0000644\0").unwrap(), 0o644);
        assert_eq!(parse_numeric(b"       \0").unwrap(), 0);
        assert_eq!(parse_numeric(b"\0\0\0\0\0\0\0\0").unwrap(), 0);
        assert_eq!(parse_numeric(b" 12 ").unwrap(), 0o12);
        assert_eq!(
            parse_numeric(&[0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0]).unwrap(),
            256
        );
        assert!(parse_numeric(b"12x4").is_err());
    }

    #[test]
    fn pax_records() {
        let mut p = Pax::default();
        let mut data = Vec::new();
        let rec = |k: &[u8], v: &[u8]| {
            let body_len = k.len() + v.len() + 3;
            let mut len = body_len + 1;
            loop {
                let l = len.to_string().len() + body_len;
                if l == len {
                    break;
                }
                len = l;
            }
            let mut r = format!("{len} ").into_bytes();
            r.extend_from_slice(k);
            r.push(b'=');
            r.extend_from_slice(v);
            r.push(b'\n');
            r
        };
        data.extend(rec(b"path", b"a/b"));
        data.extend(rec(b"mtime", b"1700000000.123456789"));
        data.extend(rec(b"SCHILY.xattr.user.bin", &[0, 1, 0xff, b'\n', b'=']));
        parse_pax(&data, &mut p).unwrap();
        assert_eq!(p.path.as_deref(), Some(&b"a/b"[..]));
        assert_eq!(p.mtime, Some((1_700_000_000, 123_456_789)));
        assert_eq!(p.xattrs[&b"user.bin"[..]], vec![0, 1, 0xff, b'\n', b'=']);
    }
}
