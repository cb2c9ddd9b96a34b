//! `rafs-image inspect`, `check` and `unpack`, built on the reader.

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::path::Path;

use super::BuildError;
use crate::rafs::manifest::{walk, ChunkSource, LocalBlobs};
use crate::rafs::{layout, toc, ChunkRef, RafsImage, RafsVersion};

/// Summary printed by `inspect`.
pub struct InspectReport {
    pub json: serde_json::Value,
}

impl InspectReport {
    pub fn to_json(&self) -> serde_json::Value {
        self.json.clone()
    }
    pub fn to_text(&self) -> String {
        let j = &self.json;
        let mut s = String::new();
        s.push_str(&format!(
            "RAFS v{}  chunk size {:#x}  flags {}  compressor {}  digester {}\n",
            j["fs_version"],
            j["chunk_size"].as_u64().unwrap_or(0),
            j["flags"],
            j["compressor"].as_str().unwrap_or(""),
            j["digester"].as_str().unwrap_or("")
        ));
        s.push_str(&format!(
            "inodes {}  entries {}  regular files {}  directories {}  symlinks {}  data bytes {}\n",
            j["inodes"], j["entries"], j["files"], j["dirs"], j["symlinks"], j["data_size"]
        ));
        s.push_str(&format!(
            "chunk table entries {}  chunk references {}\n",
            j["chunk_table_entries"], j["chunk_references"]
        ));
        if let Some(blobs) = j["blobs"].as_array() {
            for b in blobs {
                s.push_str(&format!(
                    "blob {}: {}  chunks {}  compressed {}  uncompressed {}  compressor {}  features {}\n",
                    b["index"], b["blob_id"].as_str().unwrap_or(""), b["chunk_count"],
                    b["compressed_size"], b["uncompressed_size"],
                    b["compressor"].as_str().unwrap_or(""), b["features"].as_str().unwrap_or("")
                ));
            }
        }
        if let Some(list) = j["inode_list"].as_array() {
            s.push_str("inodes (ino mode uid:gid nlink size chunks path):\n");
            for i in list {
                s.push_str(&format!(
                    "  {} {} {}:{} {} {} {} {}\n",
                    i["ino"],
                    i["mode"].as_str().unwrap_or(""),
                    i["uid"],
                    i["gid"],
                    i["nlink"],
                    i["size"],
                    i["chunks"],
                    i["path"].as_str().unwrap_or("")
                ));
            }
        }
        if let Some(p) = j["prefetch"].as_array() {
            s.push_str(&format!("prefetch table ({} entries):\n", p.len()));
            for e in p {
                s.push_str(&format!(
                    "  {} {}\n",
                    e["ino"],
                    e["path"].as_str().unwrap_or("?")
                ));
            }
        }
        s
    }
}

/// Summarise a bootstrap.
pub fn inspect(path: &Path) -> Result<InspectReport, BuildError> {
    let img = RafsImage::open(path)?;
    let (mut entries, mut files, mut dirs, mut symlinks, mut data) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let mut inos = HashSet::new();
    let mut paths: HashMap<u64, String> = HashMap::new();
    let mut inodes: Vec<serde_json::Value> = Vec::new();
    let mut chunk_refs = 0u64;
    walk(&img, &mut |e| {
        entries += 1;
        let a = e.attr;
        let chunks = if a.mode & libc::S_IFMT == libc::S_IFREG {
            img.file_chunks(a.ino, 0, a.size)?.len()
        } else {
            0
        };
        chunk_refs += chunks as u64;
        inodes.push(serde_json::json!({
            "path": String::from_utf8_lossy(&e.path), "ino": a.ino,
            "mode": format!("{:o}", a.mode), "uid": a.uid, "gid": a.gid, "nlink": a.nlink,
            "size": a.size, "rdev": a.rdev, "mtime": a.mtime, "mtime_nsec": a.mtime_nsec,
            "chunks": chunks,
        }));
        inos.insert(e.attr.ino);
        paths
            .entry(e.attr.ino)
            .or_insert_with(|| String::from_utf8_lossy(&e.path).into_owned());
        match e.attr.mode & libc::S_IFMT {
            libc::S_IFREG => {
                files += 1;
                data += e.attr.size;
            }
            libc::S_IFDIR => dirs += 1,
            libc::S_IFLNK => symlinks += 1,
            _ => {}
        }
        Ok(())
    })?;
    let blobs: Vec<serde_json::Value> = img
        .blobs()
        .iter()
        .map(|b| {
            serde_json::json!({
                "index": b.index, "blob_id": b.blob_id, "chunk_count": b.chunk_count,
                "compressed_size": b.compressed_size, "uncompressed_size": b.uncompressed_size,
                "compressor": b.compressor.name(), "digester": b.digester.name(),
                "features": format!("{:#x}", b.features), "ci_offset": b.ci_offset,
                "ci_compressed_size": b.ci_compressed_size, "toc_size": b.toc_size,
            })
        })
        .collect();
    let prefetch: Vec<serde_json::Value> = img
        .prefetch_inodes()?
        .into_iter()
        .map(|i| serde_json::json!({"ino": i, "path": paths.get(&i)}))
        .collect();
    let chunk_entries = if img.version() == RafsVersion::V6 {
        img.chunk_table()?.len()
    } else {
        0
    };
    let json = serde_json::json!({
        "fs_version": if img.version() == RafsVersion::V6 { 6 } else { 5 },
        "chunk_size": img.chunk_size(),
        "flags": format!("{:#x}", img.flags()),
        "compressor": img.compressor().name(),
        "digester": img.digester().name(),
        "inodes": inos.len(), "entries": entries, "files": files, "dirs": dirs,
        "symlinks": symlinks, "data_size": data,
        "chunk_table_entries": chunk_entries,
        "chunk_references": chunk_refs,
        "inode_list": inodes,
        "blobs": blobs, "prefetch": prefetch,
    });
    Ok(InspectReport { json })
}

/// Result of `check`.
pub struct CheckReport {
    pub entries: u64,
    pub chunks: u64,
    pub crcs_checked: u64,
    pub digests_checked: u64,
}

impl CheckReport {
    pub fn summary(&self) -> String {
        format!(
            "OK: {} entries, {} chunk references, {} crc32c and {} digests verified",
            self.entries, self.chunks, self.crcs_checked, self.digests_checked
        )
    }
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({"entries": self.entries, "chunks": self.chunks,
            "crcs_checked": self.crcs_checked, "digests_checked": self.digests_checked})
    }
}

fn blob_source(img: &RafsImage, blob_dir: &Path, blob: Option<&Path>) -> LocalBlobs {
    let mut src = LocalBlobs::new(blob_dir);
    if let Some(b) = blob {
        for bi in img.blobs() {
            if bi.blob_id == layout::PLACEHOLDER_BLOB_ID {
                src = src.with_blob_file(
                    bi.index,
                    &b.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default(),
                );
            }
        }
    }
    src
}

/// Open a bootstrap path that may be a per-layer blob with an inlined bootstrap.
fn open_image(path: &Path) -> Result<RafsImage, BuildError> {
    match RafsImage::open(path) {
        Ok(i) => Ok(i),
        Err(e) => {
            let bytes = std::fs::read(path).map_err(|io| BuildError::io(path, io))?;
            match toc::extract_bootstrap(&bytes) {
                Ok(b) => Ok(RafsImage::from_bytes(b)?),
                Err(_) => Err(e.into()),
            }
        }
    }
}

/// Validate a bootstrap fully: every inode and directory, every chunk reference against the
/// chunk table (v6) and, with a blob directory, every chunk's data (crc32c / digest).
pub fn check(
    path: &Path,
    blob_dir: Option<&Path>,
    blob: Option<&Path>,
) -> Result<CheckReport, BuildError> {
    let img = open_image(path)?;
    let table: Option<HashSet<(u32, u32, u64)>> = if img.version() == RafsVersion::V6 {
        Some(
            img.chunk_table()?
                .iter()
                .map(|c| (c.blob_index, c.index, c.uncompressed_offset / 4096))
                .collect(),
        )
    } else {
        None
    };
    let dir = blob_dir
        .map(|d| d.to_path_buf())
        .or_else(|| blob.and_then(|b| b.parent().map(|p| p.to_path_buf())));
    let mut src = dir.as_deref().map(|d| blob_source(&img, d, blob));
    let mut report = CheckReport {
        entries: 0,
        chunks: 0,
        crcs_checked: 0,
        digests_checked: 0,
    };
    let nblobs = img.blobs().len() as u32;
    let mut seen_files = HashSet::new();
    walk(&img, &mut |e| {
        report.entries += 1;
        let a = e.attr;
        if a.mode & libc::S_IFMT == libc::S_IFLNK {
            img.readlink(a.ino)?;
        }
        for n in img.list_xattrs(a.ino)? {
            img.get_xattr(a.ino, &n)?;
        }
        if a.mode & libc::S_IFMT != libc::S_IFREG || !seen_files.insert(a.ino) {
            return Ok(());
        }
        let chunks = img.file_chunks(a.ino, 0, a.size)?;
        let mut covered = 0u64;
        for c in &chunks {
            report.chunks += 1;
            if c.chunk.blob_index() >= nblobs {
                return Err(crate::rafs::RafsError::corrupt(format!(
                    "{}: chunk at {} references blob {} of {nblobs}",
                    String::from_utf8_lossy(&e.path),
                    c.file_offset,
                    c.chunk.blob_index()
                )));
            }
            if let (
                Some(t),
                ChunkRef::Indexed {
                    blob_index,
                    ci_index,
                    blkaddr,
                },
            ) = (&table, c.chunk)
            {
                if !t.contains(&(blob_index, ci_index, u64::from(blkaddr))) {
                    return Err(crate::rafs::RafsError::corrupt(format!(
                        "{}: chunk at {} (blob {blob_index}, ci {ci_index}, blkaddr {blkaddr}) \
                         is missing from the chunk table",
                        String::from_utf8_lossy(&e.path),
                        c.file_offset
                    )));
                }
            }
            covered += u64::from(c.len);
            if let Some(s) = src.as_mut() {
                s.chunk_data(&img, c).map_err(|err| {
                    crate::rafs::RafsError::BadData(format!(
                        "{}: chunk at offset {}: {err}",
                        String::from_utf8_lossy(&e.path),
                        c.file_offset
                    ))
                })?;
            }
        }
        if covered != a.size && img.version() == RafsVersion::V6 {
            return Err(crate::rafs::RafsError::corrupt(format!(
                "{}: chunks cover {covered} of {} bytes",
                String::from_utf8_lossy(&e.path),
                a.size
            )));
        }
        Ok(())
    })?;
    if let Some(s) = &src {
        report.crcs_checked = s.crcs_checked;
        report.digests_checked = s.digests_checked;
    }
    Ok(report)
}

fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ' '=' '\n'
    let mut len = body + 1;
    loop {
        let l = len.to_string().len() + body;
        if l == len {
            break;
        }
        len = l;
    }
    out.extend_from_slice(format!("{len} ").as_bytes());
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn octal(field: &mut [u8], v: u64) {
    let w = field.len() - 1;
    let s = format!("{:0w$o}", v, w = w);
    if s.len() <= w {
        field[..w].copy_from_slice(s.as_bytes());
        field[w] = 0;
    } else {
        // base-256
        field.fill(0);
        field[0] = 0x80;
        let be = v.to_be_bytes();
        let n = field.len();
        field[n - 8..].copy_from_slice(&be);
    }
}

#[allow(clippy::too_many_arguments)]
fn ustar_header(
    name: &[u8],
    typeflag: u8,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    mtime: u64,
    link: &[u8],
    rdev: u32,
) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    octal(&mut h[100..108], u64::from(mode & 0o7777));
    octal(&mut h[108..116], u64::from(uid).min(0o7777777));
    octal(&mut h[116..124], u64::from(gid).min(0o7777777));
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime.min(0o77777777777));
    h[156] = typeflag;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    let major = (u64::from(rdev) >> 8) & 0xfff;
    let minor = (u64::from(rdev) & 0xff) | ((u64::from(rdev) >> 12) & !0xff);
    octal(&mut h[329..337], major);
    octal(&mut h[337..345], minor);
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&c| u64::from(c)).sum();
    let s = format!("{:06o}\0 ", sum);
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// Write the image's tree as a PAX tar (xattrs as SCHILY.xattr, ns mtimes, hard links).
pub fn unpack(
    path: &Path,
    blob_dir: Option<&Path>,
    blob: Option<&Path>,
    output: &Path,
) -> Result<(), BuildError> {
    let img = open_image(path)?;
    let dir = blob_dir
        .map(|d| d.to_path_buf())
        .or_else(|| blob.and_then(|b| b.parent().map(|p| p.to_path_buf())))
        .ok_or_else(|| BuildError::Invalid("unpack needs --blob-dir or --blob".into()))?;
    let mut src = blob_source(&img, &dir, blob);
    let f = std::fs::File::create(output).map_err(|e| BuildError::io(output, e))?;
    let mut w = std::io::BufWriter::new(f);
    let mut first_name: HashMap<u64, Vec<u8>> = HashMap::new();
    let io = |e: std::io::Error| BuildError::io(output, e);
    let mut err: Option<BuildError> = None;
    walk(&img, &mut |e| {
        let a = e.attr;
        let fmt = a.mode & libc::S_IFMT;
        let mut name = e.path.clone();
        let mut link = Vec::new();
        let mut size = 0u64;
        let typeflag = match fmt {
            libc::S_IFREG => {
                if a.nlink > 1 {
                    if let Some(f) = first_name.get(&a.ino) {
                        link = f.clone();
                    } else {
                        first_name.insert(a.ino, e.path.clone());
                    }
                }
                if link.is_empty() {
                    size = a.size;
                    b'0'
                } else {
                    b'1'
                }
            }
            libc::S_IFDIR => {
                name.push(b'/');
                b'5'
            }
            libc::S_IFLNK => {
                link = img.readlink(a.ino)?;
                b'2'
            }
            libc::S_IFCHR => b'3',
            libc::S_IFBLK => b'4',
            libc::S_IFIFO => b'6',
            _ => return Ok(()), // sockets cannot be stored in tar
        };
        let mut pax = Vec::new();
        pax_record(&mut pax, b"path", &name);
        if !link.is_empty() {
            pax_record(&mut pax, b"linkpath", &link);
        }
        pax_record(
            &mut pax,
            b"mtime",
            format!("{}.{:09}", a.mtime, a.mtime_nsec).as_bytes(),
        );
        pax_record(&mut pax, b"uid", a.uid.to_string().as_bytes());
        pax_record(&mut pax, b"gid", a.gid.to_string().as_bytes());
        pax_record(&mut pax, b"size", size.to_string().as_bytes());
        if fmt != libc::S_IFLNK || img.version() == RafsVersion::V6 {
            let mut names = img.list_xattrs(a.ino)?;
            names.sort();
            for n in names {
                let v = img.get_xattr(a.ino, &n)?.unwrap_or_default();
                let mut k = b"SCHILY.xattr.".to_vec();
                k.extend_from_slice(&n);
                pax_record(&mut pax, &k, &v);
            }
        }
        let res = (|| -> Result<(), BuildError> {
            let ph = ustar_header(b"PaxHeader", b'x', 0o644, 0, 0, pax.len() as u64, 0, b"", 0);
            w.write_all(&ph).map_err(io)?;
            w.write_all(&pax).map_err(io)?;
            w.write_all(&vec![0u8; (512 - pax.len() % 512) % 512])
                .map_err(io)?;
            let h = ustar_header(
                &name, typeflag, a.mode, a.uid, a.gid, size, a.mtime, &link, a.rdev,
            );
            w.write_all(&h).map_err(io)?;
            if size > 0 {
                for c in img.file_chunks(a.ino, 0, a.size)? {
                    let d = src.chunk_data(&img, &c)?;
                    w.write_all(&d).map_err(io)?;
                }
                w.write_all(&vec![0u8; ((512 - size % 512) % 512) as usize])
                    .map_err(io)?;
            }
            Ok(())
        })();
        if let Err(x) = res {
            err = Some(x);
            return Err(crate::rafs::RafsError::corrupt("unpack failed"));
        }
        Ok(())
    })
    .map_err(|e| match err.take() {
        Some(x) => x,
        None => e.into(),
    })?;
    w.write_all(&[0u8; 1024]).map_err(io)?;
    w.flush().map_err(io)?;
    Ok(())
}
