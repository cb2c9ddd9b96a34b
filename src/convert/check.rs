//! `rafs-image check --source OCI --target NYDUS`: unpack the OCI image's layers in order
//! (applying `.wh.` whiteouts and `.wh..wh..opq` opaque markers) into a tree, read the Nydus
//! image through our RAFS reader (every chunk verified), and compare the two entry by
//! entry: names, types, modes, owners, sizes, mtimes (ns), device numbers, symlink targets,
//! content (SHA-256), xattrs and hard-link groups, in `treemanifest.py`'s line format.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use super::layer::{decompressed, Verifying};
use super::store::{HashWriter, Source};
use super::{parse_manifest, platform_string, resolve_manifests, ConvertError, ImagePair, TempDir};
use crate::rafs::manifest::{self as tm, LocalBlobs, ManifestOptions};
use crate::rafs::RafsImage;

/// What `check` compares.
#[derive(Clone, Debug)]
pub struct CheckOptions {
    pub images: ImagePair,
    /// Compare mtimes to the second (images whose builder dropped the nanoseconds, as
    /// upstream nydus-image does for tar layers).
    pub mtime_sec: bool,
}

/// The result for one platform.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PlatformCheck {
    pub platform: Option<String>,
    pub source_digest: String,
    pub target_digest: String,
    /// Entries in the OCI tree.
    pub entries: usize,
    /// Differences, `path: what` (empty: the trees are equal).
    pub differences: Vec<String>,
}

/// The result of `check`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct CheckReport {
    pub platforms: Vec<PlatformCheck>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.platforms.iter().all(|p| p.differences.is_empty())
    }
}

#[derive(Clone, Debug)]
struct Ent {
    kind: u8,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime_ns: u128,
    rdev: (u32, u32),
    target: Vec<u8>,
    digest: String,
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    /// Hard link to this path.
    link: Option<Vec<u8>>,
    /// A directory no tar entry described (a parent created on the way).
    implicit: bool,
    layer: usize,
}

fn implicit_dir(layer: usize) -> Ent {
    Ent {
        kind: b'd',
        mode: 0o755,
        uid: 0,
        gid: 0,
        size: 0,
        mtime_ns: 0,
        rdev: (0, 0),
        target: Vec::new(),
        digest: String::new(),
        xattrs: BTreeMap::new(),
        link: None,
        implicit: true,
        layer,
    }
}

/// An OCI image's tree, built layer by layer.
#[derive(Default)]
pub struct OciTree {
    ents: BTreeMap<Vec<u8>, Ent>,
}

fn normalize(p: &[u8]) -> Vec<u8> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in p.split(|&b| b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out.join(&b'/')
}

fn parent_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => &p[..i],
        None => b"",
    }
}

fn under(p: &[u8], dir: &[u8]) -> bool {
    dir.is_empty() || (p.len() > dir.len() && p.starts_with(dir) && p[dir.len()] == b'/')
}

impl OciTree {
    fn remove_subtree(&mut self, dir: &[u8], keep_layer: Option<usize>) {
        let keys: Vec<Vec<u8>> = self
            .ents
            .range(dir.to_vec()..)
            .take_while(|(k, _)| dir.is_empty() || k.starts_with(dir))
            .filter(|(k, e)| under(k, dir) && keep_layer != Some(e.layer))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            self.ents.remove(&k);
        }
    }

    /// Apply one layer's tar stream (decompressed here).
    pub fn apply_layer(&mut self, layer: usize, r: &mut dyn Read) -> Result<(), ConvertError> {
        let io = |e: std::io::Error| ConvertError::Io(format!("layer {layer}: {e}"));
        let tar = decompressed(r).map_err(io)?;
        let mut ar = tar::Archive::new(tar);
        for e in ar.entries().map_err(io)? {
            let mut e = e.map_err(io)?;
            let path = normalize(&e.path_bytes());
            let h = e.header().clone();
            let et = h.entry_type();
            let mut xattrs = BTreeMap::new();
            let mut mtime_ns = u128::from(h.mtime().unwrap_or(0)) * 1_000_000_000;
            if let Some(exts) = e.pax_extensions().map_err(io)? {
                for x in exts {
                    let x = x.map_err(io)?;
                    let k = x.key_bytes();
                    if let Some(n) = k.strip_prefix(b"SCHILY.xattr.") {
                        xattrs.insert(n.to_vec(), x.value_bytes().to_vec());
                    } else if k == b"mtime" {
                        if let Some(t) = parse_pax_time(x.value_bytes()) {
                            mtime_ns = t;
                        }
                    }
                }
            }
            let name = path.rsplit(|&b| b == b'/').next().unwrap_or(b"").to_vec();
            let dir = parent_of(&path).to_vec();
            if name == b".wh..wh..opq" {
                self.remove_subtree(&dir, Some(layer));
                continue;
            }
            if let Some(victim) = name.strip_prefix(b".wh.") {
                let mut v = dir.clone();
                if !v.is_empty() {
                    v.push(b'/');
                }
                v.extend_from_slice(victim);
                self.ents.remove(&v);
                self.remove_subtree(&v, None);
                continue;
            }
            let kind = match et {
                tar::EntryType::Regular | tar::EntryType::Continuous => b'f',
                tar::EntryType::Link => b'f',
                tar::EntryType::Directory => b'd',
                tar::EntryType::Symlink => b'l',
                tar::EntryType::Char => b'c',
                tar::EntryType::Block => b'b',
                tar::EntryType::Fifo => b'p',
                _ => continue,
            };
            let mut ent = Ent {
                kind,
                mode: h.mode().unwrap_or(0) & 0o7777,
                uid: h.uid().unwrap_or(0),
                gid: h.gid().unwrap_or(0),
                size: 0,
                mtime_ns,
                rdev: (
                    h.device_major().ok().flatten().unwrap_or(0),
                    h.device_minor().ok().flatten().unwrap_or(0),
                ),
                target: Vec::new(),
                digest: String::new(),
                xattrs,
                link: None,
                implicit: false,
                layer,
            };
            match et {
                tar::EntryType::Link => {
                    let t = normalize(&e.link_name_bytes().unwrap_or_default());
                    let Some(te) = self.ents.get(&t).filter(|x| x.kind == b'f') else {
                        return Err(ConvertError::Invalid(format!(
                            "layer {layer}: hard link {} to missing {}",
                            String::from_utf8_lossy(&path),
                            String::from_utf8_lossy(&t)
                        )));
                    };
                    // A hard link shares the target's inode: its attributes too.
                    let link_root = te.link.clone().unwrap_or_else(|| t.clone());
                    ent = Ent {
                        link: Some(link_root),
                        layer,
                        implicit: false,
                        ..te.clone()
                    };
                }
                tar::EntryType::Symlink => {
                    ent.target = e.link_name_bytes().unwrap_or_default().to_vec();
                    ent.size = ent.target.len() as u64;
                }
                _ if kind == b'f' => {
                    let mut hs = Sha256::new();
                    let n = std::io::copy(&mut e, &mut HashWriter(&mut hs)).map_err(io)?;
                    ent.size = n;
                    ent.digest = hex::encode(hs.finalize())[..24].to_string();
                }
                _ => {}
            }
            if path.is_empty() {
                if kind == b'd' {
                    self.ents.insert(Vec::new(), ent);
                }
                continue;
            }
            // Parents.
            let mut p = parent_of(&path).to_vec();
            let mut missing = Vec::new();
            while !p.is_empty() && self.ents.get(&p).is_none_or(|x| x.kind != b'd') {
                missing.push(p.clone());
                p = parent_of(&p).to_vec();
            }
            for m in missing {
                self.ents.remove(&m);
                self.ents.insert(m, implicit_dir(layer));
            }
            match self.ents.get(&path) {
                Some(old) if old.kind == b'd' && kind == b'd' => {}
                Some(_) => self.remove_subtree(&path, None),
                None => {}
            }
            self.ents.insert(path, ent);
        }
        Ok(())
    }

    /// treemanifest.py lines by path (`.` is the root); the flag says whether only the
    /// entry's type is known (a directory created implicitly).
    pub fn lines(&self) -> BTreeMap<Vec<u8>, (String, bool)> {
        // Hard-link groups: every live name whose link root (or itself) is the same.
        let mut groups: HashMap<Vec<u8>, Vec<Vec<u8>>> = HashMap::new();
        for (p, e) in &self.ents {
            if e.kind == b'f' {
                let root = e.link.clone().unwrap_or_else(|| p.clone());
                groups.entry(root).or_default().push(p.clone());
            }
        }
        let mut out = BTreeMap::new();
        let root_ent = self
            .ents
            .get(b"".as_slice())
            .cloned()
            .unwrap_or_else(|| implicit_dir(0));
        for (p, e) in std::iter::once((&Vec::new(), &root_ent))
            .chain(self.ents.iter().filter(|(k, _)| !k.is_empty()))
        {
            let path = if p.is_empty() {
                b".".to_vec()
            } else {
                p.clone()
            };
            let (nlink, grp) = if e.kind == b'f' {
                let root = e.link.clone().unwrap_or_else(|| p.clone());
                let g = &groups[&root];
                let smallest = g.iter().min().unwrap();
                if g.len() > 1 {
                    (g.len().to_string(), tm::py_backslashreplace(smallest))
                } else {
                    ("1".into(), "-".into())
                }
            } else if e.kind == b'd' {
                ("-".into(), "-".into())
            } else {
                ("1".into(), "-".into())
            };
            let kind = e.kind as char;
            let mode = if e.kind == b'l' {
                "-".into()
            } else {
                format!("{:o}", e.mode)
            };
            let size = if e.kind == b'd' {
                "-".into()
            } else {
                e.size.to_string()
            };
            let mtime = if e.kind == b'l' {
                "-".into()
            } else {
                e.mtime_ns.to_string()
            };
            let rdev = if e.kind == b'c' || e.kind == b'b' {
                format!("{},{}", e.rdev.0, e.rdev.1)
            } else {
                "-".into()
            };
            let target = if e.kind == b'l' {
                hex::encode(&e.target)
            } else {
                "-".into()
            };
            let digest = if e.kind == b'f' {
                e.digest.clone()
            } else {
                "-".into()
            };
            let xa = if e.kind == b'l' || e.xattrs.is_empty() {
                "-".to_string()
            } else {
                e.xattrs
                    .iter()
                    .map(|(k, v)| format!("{}={}", tm::py_backslashreplace(k), hex::encode(v)))
                    .collect::<Vec<_>>()
                    .join(",")
            };
            let line = format!(
                "{} {kind} {mode} {}:{} {size} {mtime} {rdev} {nlink} {target} {digest} {xa} {grp}",
                tm::py_backslashreplace(&path),
                e.uid,
                e.gid
            );
            out.insert(path, (line, e.implicit));
        }
        out
    }
}

fn parse_pax_time(v: &[u8]) -> Option<u128> {
    let s = std::str::from_utf8(v).ok()?;
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let sec: u128 = sec.parse().ok()?;
    let mut ns = String::from(frac);
    ns.truncate(9);
    while ns.len() < 9 {
        ns.push('0');
    }
    Some(sec * 1_000_000_000 + ns.parse::<u128>().ok()?)
}

/// The OCI tree of a manifest's layers, streamed from `src` and verified.
pub fn oci_tree(src: &dyn Source, manifest: &[u8]) -> Result<OciTree, ConvertError> {
    let m = parse_manifest(manifest)?;
    let mut t = OciTree::default();
    for (i, l) in m.layers().iter().enumerate() {
        let mt = l.media_type().to_string();
        if mt.contains("foreign") || mt.contains("nondistributable") {
            continue;
        }
        let d = l.digest().to_string();
        let mut r = Verifying::new(src.blob(&d)?, &d, Some(l.size()));
        t.apply_layer(i, &mut r)?;
        r.finish()?;
    }
    Ok(t)
}

/// Fetch a Nydus manifest's bootstrap and blobs into `dir` (blobs verified against their
/// digests); returns the bootstrap path.
pub fn fetch_nydus_image(
    src: &dyn Source,
    manifest: &[u8],
    dir: &Path,
) -> Result<std::path::PathBuf, ConvertError> {
    let m = parse_manifest(manifest)?;
    let boot = dir.join("image.boot");
    super::fetch_bootstrap(src, &m, &boot)?;
    for l in &m.layers()[..m.layers().len() - 1] {
        let d = l.digest().to_string();
        let p = dir.join(d.trim_start_matches("sha256:"));
        let mut r = Verifying::new(src.blob(&d)?, &d, Some(l.size()));
        let mut f = std::fs::File::create(&p)
            .map_err(|e| ConvertError::Io(format!("{}: {e}", p.display())))?;
        std::io::copy(&mut r, &mut f).map_err(|e| ConvertError::Io(format!("blob {d}: {e}")))?;
    }
    Ok(boot)
}

/// The treemanifest.py lines of a Nydus image fetched into `dir`.
pub fn nydus_lines(boot: &Path, dir: &Path) -> Result<BTreeMap<Vec<u8>, String>, ConvertError> {
    let img = RafsImage::open(boot).map_err(|e| ConvertError::Build(format!("bootstrap: {e}")))?;
    let mut blobs = LocalBlobs::new(dir);
    let text = tm::manifest(&img, ManifestOptions::default(), &mut blobs)
        .map_err(|e| ConvertError::Build(format!("reading the nydus image: {e}")))?;
    Ok(text
        .lines()
        .map(|l| {
            let path = l.split(' ').next().unwrap_or("").as_bytes().to_vec();
            (path, l.to_string())
        })
        .collect())
}

/// A treemanifest.py line with its mtime (ns) cut to whole seconds.
pub fn line_mtime_to_seconds(line: &str) -> String {
    let mut f: Vec<String> = line.split(' ').map(String::from).collect();
    if let Some(ns) = f.get(5).and_then(|m| m.parse::<u128>().ok()) {
        f[5] = (ns / 1_000_000_000 * 1_000_000_000).to_string();
    }
    f.join(" ")
}

/// [`OciTree::lines`] with mtimes cut to whole seconds.
pub fn mtime_to_seconds(
    lines: &BTreeMap<Vec<u8>, (String, bool)>,
) -> BTreeMap<Vec<u8>, (String, bool)> {
    lines
        .iter()
        .map(|(k, (l, i))| (k.clone(), (line_mtime_to_seconds(l), *i)))
        .collect()
}

/// Differences between an OCI tree and a Nydus image's lines.
pub fn compare(
    oci: &BTreeMap<Vec<u8>, (String, bool)>,
    nydus: &BTreeMap<Vec<u8>, String>,
) -> Vec<String> {
    const FIELDS: [&str; 12] = [
        "path",
        "type",
        "mode",
        "owner",
        "size",
        "mtime",
        "rdev",
        "nlink",
        "symlink",
        "content",
        "xattrs",
        "hardlink group",
    ];
    let mut out = Vec::new();
    for (p, (line, implicit)) in oci {
        let name = String::from_utf8_lossy(p);
        match nydus.get(p) {
            None => out.push(format!("{name}: missing in the nydus image")),
            Some(n) => {
                let a: Vec<&str> = line.split(' ').collect();
                let b: Vec<&str> = n.split(' ').collect();
                let upto = if *implicit { 2 } else { a.len().max(b.len()) };
                for i in 1..upto {
                    if a.get(i) != b.get(i) {
                        out.push(format!(
                            "{name}: {} differs: oci {} nydus {}",
                            FIELDS.get(i).unwrap_or(&"field"),
                            a.get(i).unwrap_or(&"?"),
                            b.get(i).unwrap_or(&"?")
                        ));
                    }
                }
            }
        }
    }
    for p in nydus.keys() {
        if !oci.contains_key(p) {
            out.push(format!(
                "{}: only in the nydus image",
                String::from_utf8_lossy(p)
            ));
        }
    }
    out
}

/// Compare `o.images.source` (OCI) with `o.images.target` (its Nydus conversion), per
/// platform.
pub fn check(o: &CheckOptions) -> Result<CheckReport, ConvertError> {
    let src = o.images.open_source()?;
    let dst = o.images.open_target_to_read()?;
    let (oms, _) = resolve_manifests(src.as_ref(), &o.images.platforms, false)?;
    let (nms, _) = resolve_manifests(dst.as_ref(), &o.images.platforms, true)?;
    let mut report = CheckReport {
        platforms: Vec::new(),
    };
    for (plat, sdigest, sbody, _) in &oms {
        let ps = plat.as_ref().map(platform_string);
        let pick = nms
            .iter()
            .find(|(p, ..)| p.as_ref().map(platform_string) == ps)
            .or_else(|| (oms.len() == 1 && nms.len() == 1).then(|| &nms[0]));
        let Some((_, tdigest, tbody, _)) = pick else {
            report.platforms.push(PlatformCheck {
                platform: ps.clone(),
                source_digest: sdigest.clone(),
                target_digest: String::new(),
                entries: 0,
                differences: vec![format!(
                    "no nydus manifest for platform {}",
                    ps.as_deref().unwrap_or("-")
                )],
            });
            continue;
        };
        let mut tree = oci_tree(src.as_ref(), sbody)?.lines();
        let tmp = TempDir::new("rafs-check")?;
        let boot = fetch_nydus_image(dst.as_ref(), tbody, &tmp.0)?;
        let mut ny = nydus_lines(&boot, &tmp.0)?;
        if o.mtime_sec {
            tree = mtime_to_seconds(&tree);
            ny.values_mut().for_each(|l| *l = line_mtime_to_seconds(l));
        }
        report.platforms.push(PlatformCheck {
            platform: ps,
            source_digest: sdigest.clone(),
            target_digest: tdigest.clone(),
            entries: tree.len(),
            differences: compare(&tree, &ny),
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], &str)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, t, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*t);
            h.set_mode(if *t == tar::EntryType::Directory {
                0o755
            } else {
                0o644
            });
            h.set_size(data.len() as u64);
            h.set_mtime(1000);
            if !link.is_empty() {
                h.set_link_name(link).unwrap();
            }
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn whiteouts_opaque_dirs_and_hard_links() {
        use tar::EntryType::*;
        let mut t = OciTree::default();
        let l0 = tar_of(&[
            ("a/", Directory, b"", ""),
            ("a/x", Regular, b"x", ""),
            ("a/y", Regular, b"y", ""),
            ("b/c/d", Regular, b"d", ""),
            ("h1", Regular, b"h", ""),
            ("h2", Link, b"", "h1"),
            ("gone", Regular, b"g", ""),
        ]);
        t.apply_layer(0, &mut l0.as_slice()).unwrap();
        let l1 = tar_of(&[
            ("a/.wh..wh..opq", Regular, b"", ""),
            ("a/new", Regular, b"n", ""),
            (".wh.gone", Regular, b"", ""),
            ("b/.wh.c", Regular, b"", ""),
        ]);
        t.apply_layer(1, &mut l1.as_slice()).unwrap();
        let lines = t.lines();
        let keys: Vec<String> = lines
            .keys()
            .map(|k| String::from_utf8_lossy(k).into_owned())
            .collect();
        assert_eq!(keys, [".", "a", "a/new", "b", "h1", "h2"]);
        assert!(lines[b"b".as_slice()].1, "b was implicit");
        assert!(lines[b"h2".as_slice()].0.ends_with(" h1"));
        assert!(lines[b"h1".as_slice()].0.contains(" 2 - "));
    }

    #[test]
    fn compare_names_each_difference() {
        let mut o = BTreeMap::new();
        o.insert(
            b"f".to_vec(),
            ("f f 644 0:0 1 0 - 1 - aa - -".to_string(), false),
        );
        o.insert(
            b"d".to_vec(),
            ("d d 755 0:0 - 0 - - - - - -".to_string(), true),
        );
        let mut n = BTreeMap::new();
        n.insert(b"f".to_vec(), "f f 755 0:0 1 0 - 1 - aa - -".to_string());
        n.insert(b"d".to_vec(), "d d 700 1:1 - 5 - - - - - -".to_string());
        n.insert(b"x".to_vec(), "x f 644 0:0 1 0 - 1 - aa - -".to_string());
        let d = compare(&o, &n);
        assert_eq!(
            d,
            [
                "f: mode differs: oci 644 nydus 755",
                "x: only in the nydus image"
            ]
        );
    }
}
