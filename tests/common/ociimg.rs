//! Test helpers: OCI layer tars (PAX xattrs and ns mtimes, whiteouts, hard links, devices),
//! OCI image layouts (single manifest or multi-platform index) and `docker save` tars,
//! written from scratch so that the converter meets images it did not make.
#![allow(dead_code)]

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

pub fn sha(b: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(b)))
}

/// One tar entry.
#[derive(Clone)]
pub enum E {
    Dir(&'static str, u32),
    File(&'static str, u32, Vec<u8>),
    Hard(&'static str, &'static str),
    Sym(&'static str, &'static str),
    Fifo(&'static str),
    Char(&'static str, u32, u32),
    /// A file with xattrs (PAX SCHILY.xattr) and a nanosecond mtime.
    XFile(&'static str, Vec<u8>, Xattrs),
}

/// Xattrs of an entry: (name, value).
pub type Xattrs = Vec<(&'static str, &'static [u8])>;
/// One image's layers, lowest first, each with its compression.
pub type Layers = Vec<(Vec<E>, Comp)>;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Comp {
    None,
    Gzip,
    Zstd,
}

fn pax_record(out: &mut Vec<u8>, k: &str, v: &[u8]) {
    let body = k.len() + v.len() + 3;
    let mut n = body + body.to_string().len();
    if (n).to_string().len() != body.to_string().len() {
        n += 1;
    }
    out.extend_from_slice(format!("{n} {k}=").as_bytes());
    out.extend_from_slice(v);
    out.push(b'\n');
}

/// An uncompressed layer tar of `entries` (mtimes 1700000000.123456789 via PAX).
pub fn layer_tar(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    // A hard link's header carries its target's mode, as GNU tar writes it.
    let mode_of = |path: &str| {
        entries.iter().find_map(|e| match e {
            E::File(p, m, _) if *p == path => Some(*m),
            _ => None,
        })
    };
    for e in entries {
        let (path, mut h, data, xattrs): (&str, tar::Header, Vec<u8>, Xattrs) = {
            let mut h = tar::Header::new_ustar();
            h.set_mtime(1_700_000_000);
            h.set_uid(1000);
            h.set_gid(1000);
            match e {
                E::Dir(p, m) => {
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(*m);
                    (p, h, vec![], vec![])
                }
                E::File(p, m, d) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(*m);
                    (p, h, d.clone(), vec![])
                }
                E::XFile(p, d, x) => {
                    h.set_entry_type(tar::EntryType::Regular);
                    h.set_mode(0o640);
                    (p, h, d.clone(), x.clone())
                }
                E::Hard(p, t) => {
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_mode(mode_of(t).unwrap_or(0o644));
                    h.set_link_name(t).unwrap();
                    (p, h, vec![], vec![])
                }
                E::Sym(p, t) => {
                    h.set_entry_type(tar::EntryType::Symlink);
                    h.set_mode(0o777);
                    h.set_link_name(t).unwrap();
                    (p, h, vec![], vec![])
                }
                E::Fifo(p) => {
                    h.set_entry_type(tar::EntryType::Fifo);
                    h.set_mode(0o600);
                    h.set_device_major(0).unwrap();
                    h.set_device_minor(0).unwrap();
                    (p, h, vec![], vec![])
                }
                E::Char(p, ma, mi) => {
                    h.set_entry_type(tar::EntryType::Char);
                    h.set_mode(0o600);
                    h.set_uid(0);
                    h.set_gid(0);
                    h.set_device_major(*ma).unwrap();
                    h.set_device_minor(*mi).unwrap();
                    (p, h, vec![], vec![])
                }
            }
        };
        let mut pax = Vec::new();
        pax_record(&mut pax, "mtime", b"1700000000.123456789");
        for (k, v) in &xattrs {
            pax_record(&mut pax, &format!("SCHILY.xattr.{k}"), v);
        }
        let mut ph = tar::Header::new_ustar();
        ph.set_entry_type(tar::EntryType::XHeader);
        ph.set_mode(0o644);
        ph.set_size(pax.len() as u64);
        b.append_data(&mut ph, "PaxHeader", pax.as_slice()).unwrap();
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn compress(tar: &[u8], c: Comp) -> (Vec<u8>, &'static str) {
    match c {
        Comp::None => (tar.to_vec(), "application/vnd.oci.image.layer.v1.tar"),
        Comp::Gzip => {
            let mut g = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            g.write_all(tar).unwrap();
            (
                g.finish().unwrap(),
                "application/vnd.oci.image.layer.v1.tar+gzip",
            )
        }
        Comp::Zstd => (
            zstd::encode_all(tar, 3).unwrap(),
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
    }
}

fn put_blob(dir: &Path, b: &[u8]) -> String {
    let d = sha(b);
    let p = dir.join("blobs/sha256").join(&d[7..]);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, b).unwrap();
    d
}

/// Write one platform's manifest (and config, layers) into the layout's blobs; returns
/// the manifest descriptor JSON.
pub fn write_manifest(dir: &Path, arch: &str, layers: &[(Vec<E>, Comp)]) -> serde_json::Value {
    let mut descs = Vec::new();
    let mut diff_ids = Vec::new();
    for (entries, c) in layers {
        let tar = layer_tar(entries);
        diff_ids.push(sha(&tar));
        let (blob, mt) = compress(&tar, *c);
        let d = put_blob(dir, &blob);
        descs.push(serde_json::json!({"mediaType": mt, "digest": d, "size": blob.len()}));
    }
    let cfg = serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": {"Env": ["PATH=/usr/bin:/bin"], "Cmd": ["/bin/sh"]},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": layers.iter().map(|_| serde_json::json!({"created_by": "test"})).collect::<Vec<_>>(),
    });
    let cb = serde_json::to_vec(&cfg).unwrap();
    let cd = put_blob(dir, &cb);
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cb.len()},
        "layers": descs,
    });
    let mb = serde_json::to_vec(&m).unwrap();
    let md = put_blob(dir, &mb);
    serde_json::json!({
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": md, "size": mb.len(),
        "platform": {"architecture": arch, "os": "linux"},
    })
}

/// An OCI layout at `dir` whose `tag` names one manifest (one platform) or an index of
/// several.
pub fn write_layout(dir: &Path, tag: &str, platforms: &[(&str, Layers)]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut ms: Vec<serde_json::Value> = platforms
        .iter()
        .map(|(arch, layers)| write_manifest(dir, arch, layers))
        .collect();
    let top = if ms.len() == 1 {
        let mut m = ms.remove(0);
        m.as_object_mut().unwrap().remove("platform");
        m
    } else {
        let idx = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": ms,
            "annotations": {"org.example.test": "index-annotation"},
        });
        let ib = serde_json::to_vec(&idx).unwrap();
        let d = put_blob(dir, &ib);
        serde_json::json!({"mediaType": "application/vnd.oci.image.index.v1+json", "digest": d, "size": ib.len()})
    };
    let mut top = top;
    top["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [top]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
}

/// A `docker save`-style tar of one image (uncompressed layers named `<n>/layer.tar`).
pub fn write_docker_archive(file: &Path, layers: &[Vec<E>]) {
    let mut b = tar::Builder::new(Vec::new());
    let add = |b: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]| {
        let mut h = tar::Header::new_ustar();
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, data).unwrap();
    };
    let mut names = Vec::new();
    let mut diff_ids = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let t = layer_tar(l);
        diff_ids.push(sha(&t));
        let n = format!("{i}/layer.tar");
        add(&mut b, &n, &t);
        names.push(n);
    }
    let cfg = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": diff_ids}
    }))
    .unwrap();
    let cn = format!("{}.json", &sha(&cfg)[7..]);
    add(&mut b, &cn, &cfg);
    let man = serde_json::to_vec(&serde_json::json!([
        {"Config": cn, "RepoTags": ["test:1"], "Layers": names}
    ]))
    .unwrap();
    add(&mut b, "manifest.json", &man);
    std::fs::write(file, b.into_inner().unwrap()).unwrap();
}

/// `layers` as docker writes them: every parent directory of an entry has its own entry
/// in the same layer (attributes as the layer below gave them, here 0755).
pub fn with_parent_entries(layers: Layers) -> Layers {
    layers
        .into_iter()
        .map(|(entries, c)| {
            let mut out: Vec<E> = Vec::new();
            let mut have: Vec<String> = Vec::new();
            for e in entries {
                let p = match &e {
                    E::Dir(p, _)
                    | E::File(p, ..)
                    | E::Hard(p, _)
                    | E::Sym(p, _)
                    | E::Fifo(p)
                    | E::Char(p, ..)
                    | E::XFile(p, ..) => *p,
                };
                let mut acc = String::new();
                let comps: Vec<&str> = p.split('/').collect();
                for c in &comps[..comps.len() - 1] {
                    if !acc.is_empty() {
                        acc.push('/');
                    }
                    acc.push_str(c);
                    if !have.contains(&acc) {
                        have.push(acc.clone());
                        let leaked: &'static str = Box::leak(acc.clone().into_boxed_str());
                        out.push(E::Dir(leaked, 0o755));
                    }
                }
                if let E::Dir(p, _) = &e {
                    if have.iter().any(|h| h == p) {
                        continue;
                    }
                    have.push(p.to_string());
                }
                out.push(e);
            }
            (out, c)
        })
        .collect()
}

/// The layers of the standard test image: every entry kind, a multi-chunk file, and a
/// second and third layer with whiteouts, an opaque directory and a replaced file.
pub fn sample_layers(seed: u8) -> Vec<(Vec<E>, Comp)> {
    // Incompressible: a xorshift stream.
    let mut x = 0x9E37_79B9_7F4A_7C15u64 ^ u64::from(seed);
    let big: Vec<u8> = (0..3_000_000u32)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect();
    vec![
        (
            vec![
                E::Dir("etc", 0o755),
                E::File("etc/config", 0o644, b"key=value\n".to_vec()),
                E::File("etc/passwd", 0o644, b"root:x:0:0::/root:/bin/sh\n".to_vec()),
                E::Dir("usr", 0o755),
                E::Dir("usr/bin", 0o755),
                E::File("usr/bin/tool", 0o4755, big),
                E::Hard("usr/bin/tool-link", "usr/bin/tool"),
                E::Sym("usr/bin/sh", "busybox"),
                E::Dir("opaque", 0o755),
                E::File("opaque/old1", 0o644, b"old1".to_vec()),
                E::Dir("opaque/sub", 0o700),
                E::File("opaque/sub/old2", 0o644, b"old2".to_vec()),
                E::File("deleted", 0o644, b"to be removed".to_vec()),
                E::Dir("gone-dir", 0o755),
                E::File("gone-dir/inner", 0o644, b"inner".to_vec()),
                E::Fifo("fifo"),
                E::Char("null", 1, 3),
                E::XFile(
                    "xattr-file",
                    b"xattrs".to_vec(),
                    vec![("user.k", b"v\x00\xff")],
                ),
                E::File("empty", 0o600, Vec::new()),
            ],
            Comp::Gzip,
        ),
        (
            vec![
                E::File(".wh.deleted", 0o644, Vec::new()),
                E::File(".wh.gone-dir", 0o644, Vec::new()),
                E::Dir("opaque", 0o750),
                E::File("opaque/.wh..wh..opq", 0o644, Vec::new()),
                E::File("opaque/fresh", 0o644, vec![b'f', seed]),
                E::File("etc/config", 0o600, b"key=new\n".to_vec()),
            ],
            Comp::Zstd,
        ),
        (
            vec![
                E::Dir("var", 0o755),
                E::File("var/log", 0o644, b"log\n".to_vec()),
            ],
            Comp::None,
        ),
    ]
}
