//! `rafs-image`: build, inspect, check, unpack and merge Nydus RAFS images, with
//! nydus-image's flag names.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use rafs_virtiofsd::convert;
use rafs_virtiofsd::rafs::builder::{
    self, merge, parse_chunk_size, tools, BuildOptions, SourceType, WhiteoutSpec,
};
use rafs_virtiofsd::rafs::{Compressor, Digester, RafsVersion};

#[derive(Parser)]
#[command(
    name = "rafs-image",
    version,
    about = "Build and inspect Nydus RAFS images"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Build a RAFS image from a directory or a tar / tar.gz layer.
    #[command(
        after_help = "Long options are nydus-image's; the short forms -c -d -S -M -p -P -W -A are extras."
    )]
    Create(CreateArgs),
    /// Merge per-layer bootstraps into one, applying OCI whiteouts in layer order.
    #[command(after_help = "Long options are nydus-image's; the short forms -M -P are extras.")]
    Merge(MergeArgs),
    /// Convert an OCI image to a Nydus image, registry to registry (or OCI layout / docker save tar).
    #[command(
        after_help = "SRC and DST: host[:port]/name:tag (or @sha256:...), oci:DIR[:tag], or (SRC only) docker-archive:FILE.\n\
                      Credentials: --*-creds, else $DOCKER_CONFIG/config.json or ~/.docker/config.json.\n\
                      nydusify equivalent: nydusify convert --source SRC --target DST."
    )]
    Convert(ConvertArgs),
    /// Print a summary of a bootstrap.
    Inspect {
        /// Bootstrap (RAFS metadata) file to inspect
        bootstrap: PathBuf,
        /// Print JSON instead of text: to FILE, or to stdout when given without a value or as -; default: text on stdout
        #[arg(long = "output-json", num_args = 0..=1, default_missing_value = "-")]
        output_json: Option<String>,
    },
    /// Validate a bootstrap (and with --blob-dir every chunk's data), or with --source and
    /// --target compare an OCI image with its Nydus conversion.
    Check {
        /// Bootstrap (RAFS metadata) file to check (or give --bootstrap, or --source/--target)
        bootstrap: Option<PathBuf>,
        /// OCI image to compare (with --target): a registry reference, oci:DIR[:tag] or docker-archive:FILE; default: none (check a bootstrap)
        #[arg(long, requires = "target")]
        source: Option<String>,
        /// Nydus image to compare with --source: a registry reference or oci:DIR[:tag]; default: none
        #[arg(long, requires = "source")]
        target: Option<String>,
        #[command(flatten)]
        access: AccessArgs,
        /// With --source/--target: compare mtimes to the second (for images built without nanoseconds, as upstream nydus-image builds tar layers); default: to the nanosecond
        #[arg(long = "mtime-sec")]
        mtime_sec: bool,
        /// Bootstrap file, instead of the positional BOOTSTRAP; one of the two is required
        #[arg(short = 'B', long = "bootstrap")]
        bootstrap_flag: Option<PathBuf>,
        /// Directory of the data blobs (named by blob id): also reads and verifies every chunk; default: metadata only
        #[arg(short = 'D', long = "blob-dir")]
        blob_dir: Option<PathBuf>,
        /// Data blob of an image built with --blob (blob id placeholders resolve to it); default: none
        #[arg(short = 'b', long = "blob")]
        blob: Option<PathBuf>,
        /// Also write the result as JSON to this file; default: none
        #[arg(long = "output-json")]
        output_json: Option<PathBuf>,
    },
    /// Write the image's tree to a tar file.
    Unpack {
        /// Bootstrap (RAFS metadata) file to unpack (or give --bootstrap, or --source)
        bootstrap: Option<PathBuf>,
        /// A Nydus image (registry reference or oci:DIR[:tag]) to fetch and unpack, instead of a bootstrap; default: none
        #[arg(long)]
        source: Option<String>,
        #[command(flatten)]
        access: AccessArgs,
        /// Bootstrap file, instead of the positional BOOTSTRAP; one of the two is required
        #[arg(short = 'B', long = "bootstrap")]
        bootstrap_flag: Option<PathBuf>,
        /// Directory of the data blobs, named by blob id; one of --blob-dir and --blob is required
        #[arg(short = 'D', long = "blob-dir")]
        blob_dir: Option<PathBuf>,
        /// Data blob of an image built with --blob (its directory is the default --blob-dir)
        #[arg(short = 'b', long = "blob")]
        blob: Option<PathBuf>,
        /// Tar file to write; required
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Source: a directory, or a tar / tar.gz file (see --type)
    source: PathBuf,
    /// Bootstrap (RAFS metadata) file to write; required unless --blob-inline-meta
    #[arg(short = 'B', long)]
    bootstrap: Option<PathBuf>,
    /// Data blob file to write; one of --blob and --blob-dir is required
    #[arg(short = 'b', long)]
    blob: Option<PathBuf>,
    /// Directory to write the data blob into, named by its id (created if missing, unlike nydus-image); one of --blob and --blob-dir is required
    #[arg(short = 'D', long = "blob-dir")]
    blob_dir: Option<PathBuf>,
    /// Source type: dir-rafs (directory; also: directory), tar-rafs (tar), targz-rafs (gzip'd tar)
    #[arg(short = 't', long = "type", default_value = "dir-rafs")]
    source_type: String,
    /// RAFS format version: 5 or 6
    #[arg(short = 'v', long = "fs-version", default_value = "6")]
    fs_version: String,
    /// Chunk compression: none, lz4_block, zstd or gzip (gzip: not in nydus-image)
    #[arg(short = 'c', long, default_value = "zstd")]
    compressor: String,
    /// Chunk digest: blake3 or sha256
    #[arg(short = 'd', long, default_value = "blake3")]
    digester: String,
    /// Chunk size: a power of two from 0x1000 to 0x1000000, hex (0x...) or decimal
    #[arg(short = 'S', long = "chunk-size", default_value = "0x100000")]
    chunk_size: String,
    /// Chunk dictionary: bootstrap=PATH (or PATH) of an image whose chunks are reused, not written again; default: none
    #[arg(short = 'M', long = "chunk-dict")]
    chunk_dict: Option<String>,
    /// Parent bootstrap: the new image is this image plus the source as an upper layer; default: none
    #[arg(short = 'p', long = "parent-bootstrap")]
    parent_bootstrap: Option<PathBuf>,
    /// Prefetch table: none, or fs (read path patterns, one a line, from stdin)
    #[arg(short = 'P', long = "prefetch-policy", default_value = "none")]
    prefetch_policy: String,
    /// Append the bootstrap (and blob metadata) to the data blob, for per-layer blobs; default: off
    #[arg(long = "blob-inline-meta")]
    blob_inline_meta: bool,
    /// Comma-separated features: blob-toc (a ToC at the blob's end, with --blob-inline-meta); default: none
    #[arg(long)]
    features: Option<String>,
    /// Whiteouts in the source: oci (.wh. files), overlayfs (0:0 char devices, opaque xattr) or none
    #[arg(short = 'W', long = "whiteout-spec", default_value = "oci")]
    whiteout_spec: String,
    /// Write a JSON summary (blobs, sizes, chunk count) to this file; default: none
    #[arg(short = 'J', long = "output-json")]
    output_json: Option<PathBuf>,
    /// Worker threads compressing and hashing chunks; 0: one per core (not in nydus-image)
    #[arg(long, default_value = "0")]
    threads: usize,
    /// Accepted for nydus-image compatibility and ignored: v6 chunks are always 4 KiB aligned; default: off
    #[arg(short = 'A', long = "aligned-chunk")]
    aligned_chunk: bool,
}

#[derive(clap::Args)]
struct AccessArgs {
    /// Reach a registry --source over plain http; default: https
    #[arg(long = "source-insecure")]
    source_insecure: bool,
    /// Reach a registry --target over plain http; default: https
    #[arg(long = "target-insecure")]
    target_insecure: bool,
    /// user:password for the source registry; default: the docker config's entry
    #[arg(long = "source-creds")]
    source_creds: Option<String>,
    /// user:password for the target registry; default: the docker config's entry
    #[arg(long = "target-creds")]
    target_creds: Option<String>,
    /// Platforms os/arch[/variant], comma-separated; default: every platform of an index
    #[arg(long)]
    platform: Option<String>,
}

#[derive(clap::Args)]
struct ConvertArgs {
    /// OCI image to convert: host[:port]/name:tag, oci:DIR[:tag] or docker-archive:FILE; required
    #[arg(long)]
    source: String,
    /// Where the Nydus image goes: host[:port]/name:tag or oci:DIR[:tag]; required
    #[arg(long)]
    target: String,
    #[command(flatten)]
    access: AccessArgs,
    /// RAFS format version: 5 or 6
    #[arg(long = "fs-version", default_value = "6")]
    fs_version: String,
    /// Chunk compression: none, lz4_block, zstd or gzip
    #[arg(long, default_value = "zstd")]
    compressor: String,
    /// Chunk size: a power of two from 0x1000 to 0x1000000 [nydusify: --fs-chunk-size, also accepted]
    #[arg(
        long = "chunk-size",
        alias = "fs-chunk-size",
        default_value = "0x100000"
    )]
    chunk_size: String,
    /// Chunk dictionary: bootstrap=PATH (its blobs must be in the target repository) or a Nydus image reference (its blobs are copied when missing); nydusify's bootstrap:local:PATH and bootstrap:registry:REF also work; default: none
    #[arg(long = "chunk-dict")]
    chunk_dict: Option<String>,
    /// Accepted for nydusify compatibility: every platform of an index is converted unless --platform is given; default: off
    #[arg(long = "all-platforms", conflicts_with = "platform")]
    all_platforms: bool,
    /// Keep the OCI manifests and add the Nydus ones in one index (as nydusify); default: off
    #[arg(long = "merge-platform")]
    merge_platform: bool,
    /// Layers built and blobs pushed at a time
    #[arg(long, default_value = "4")]
    threads: usize,
    /// Keep per-layer builds here and reuse them on a re-run; default: a temporary directory
    #[arg(long = "work-dir")]
    work_dir: Option<PathBuf>,
    /// Bytes per upload PATCH
    #[arg(long = "upload-chunk-size", default_value = "8388608")]
    upload_chunk_size: usize,
    /// Retries of a failed request or upload chunk
    #[arg(long, default_value = "3")]
    retries: u32,
    /// Write a JSON report (manifests, layers, blobs pushed and skipped) to FILE, or stdout with - or no value; default: none
    #[arg(long = "output-json", num_args = 0..=1, default_missing_value = "-")]
    output_json: Option<String>,
}

fn platforms(a: &AccessArgs) -> Vec<String> {
    a.platform
        .iter()
        .flat_map(|p| p.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

fn image_ref(s: &str) -> Result<convert::reference::ImageRef, String> {
    convert::reference::ImageRef::parse(s).map_err(|e| e.to_string())
}

fn image_pair(source: &str, target: &str, a: &AccessArgs) -> Result<convert::ImagePair, String> {
    let mut p = convert::ImagePair::new(image_ref(source)?, image_ref(target)?);
    p.source_insecure = a.source_insecure;
    p.target_insecure = a.target_insecure;
    p.source_creds = a.source_creds.clone();
    p.target_creds = a.target_creds.clone();
    p.platforms = platforms(a);
    Ok(p)
}

fn run_convert(a: ConvertArgs) -> Result<(), String> {
    let images = image_pair(&a.source, &a.target, &a.access)?;
    let mut o = convert::ConvertOptions::new(images.source.clone(), images.target.clone());
    o.images = images;
    o.version = match a.fs_version.as_str() {
        "5" => RafsVersion::V5,
        "6" => RafsVersion::V6,
        v => return Err(format!("unsupported fs version {v:?}")),
    };
    o.compressor = parse_compressor(&a.compressor)?;
    o.chunk_size = parse_chunk_size(&a.chunk_size).map_err(|e| e.to_string())?;
    o.chunk_dict = match a.chunk_dict.as_deref() {
        None => None,
        Some(d) => {
            if let Some(p) = d
                .strip_prefix("bootstrap=")
                .or_else(|| d.strip_prefix("bootstrap:local:"))
            {
                Some(convert::ChunkDict::Bootstrap(PathBuf::from(p)))
            } else {
                let r = d.strip_prefix("bootstrap:registry:").unwrap_or(d);
                Some(convert::ChunkDict::Image(image_ref(r)?))
            }
        }
    };
    let _ = a.all_platforms;
    o.merge_platform = a.merge_platform;
    o.threads = a.threads.max(1);
    o.work_dir = a.work_dir;
    o.upload_chunk_size = a.upload_chunk_size.max(4096);
    o.retries = a.retries;
    let r = convert::convert(&o).map_err(|e| format!("convert failed: {e}"))?;
    eprintln!(
        "converted {} to {}: {} manifest(s), {} blob(s) pushed ({} bytes), {} already there, {:.1} s",
        r.source,
        r.target,
        r.manifests.len(),
        r.blobs_pushed,
        r.bytes_pushed,
        r.blobs_skipped,
        r.seconds
    );
    if let Some(dest) = a.output_json {
        write_json(&dest, &serde_json::to_value(&r).map_err(|e| e.to_string())?)?;
    }
    Ok(())
}

#[derive(clap::Args)]
struct MergeArgs {
    /// Per-layer bootstraps, lowest layer first
    sources: Vec<PathBuf>,
    /// Merged bootstrap file to write; required
    #[arg(short = 'B', long)]
    bootstrap: PathBuf,
    /// Comma-separated sha256 digests (hex, sha256: prefix optional) of the layers' blobs, one per source, used as blob ids; default: the ids in the sources
    #[arg(long = "blob-digests")]
    blob_digests: Option<String>,
    /// Comma-separated sizes in bytes of the layers' blobs, one per source; default: the sizes in the sources
    #[arg(long = "blob-sizes")]
    blob_sizes: Option<String>,
    /// Comma-separated sha256 digests (hex) of the layers' blob ToCs, one per source; default: none
    #[arg(long = "blob-toc-digests")]
    blob_toc_digests: Option<String>,
    /// Comma-separated sizes in bytes of the layers' blob ToCs, one per source; default: none
    #[arg(long = "blob-toc-sizes")]
    blob_toc_sizes: Option<String>,
    /// Chunk dictionary the layers were built with: bootstrap=PATH (or PATH), a v6 image whose blobs any layer may use; default: none
    #[arg(short = 'M', long = "chunk-dict")]
    chunk_dict: Option<String>,
    /// Prefetch table: none, or fs (read path patterns, one a line, from stdin)
    #[arg(short = 'P', long = "prefetch-policy", default_value = "none")]
    prefetch_policy: String,
    /// Write a JSON summary (blobs, bootstrap) to this file; default: none
    #[arg(short = 'J', long = "output-json")]
    output_json: Option<PathBuf>,
}

fn parse_compressor(s: &str) -> Result<Compressor, String> {
    Ok(match s {
        "none" => Compressor::None,
        "lz4_block" => Compressor::Lz4Block,
        "zstd" => Compressor::Zstd,
        "gzip" => Compressor::Gzip,
        _ => return Err(format!("unknown compressor {s:?}")),
    })
}

fn read_prefetch_patterns() -> Result<Vec<Vec<u8>>, String> {
    let mut s = Vec::new();
    std::io::stdin()
        .read_to_end(&mut s)
        .map_err(|e| format!("reading prefetch patterns from stdin: {e}"))?;
    Ok(s.split(|&c| c == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
        .map(|l| l.trim_ascii())
        .filter(|l| !l.is_empty())
        .map(|l| l.to_vec())
        .collect())
}

fn dict_path(s: &str) -> Result<PathBuf, String> {
    match s.split_once('=') {
        Some(("bootstrap", p)) => Ok(PathBuf::from(p)),
        None => Ok(PathBuf::from(s)),
        Some((k, _)) => Err(format!("unsupported chunk dict type {k:?}")),
    }
}

fn write_json(dest: &str, v: &serde_json::Value) -> Result<(), String> {
    let s = serde_json::to_string_pretty(v).map_err(|e| e.to_string())?;
    if dest == "-" {
        println!("{s}");
        Ok(())
    } else {
        std::fs::write(dest, s + "\n").map_err(|e| format!("{dest}: {e}"))
    }
}

fn create(a: CreateArgs) -> Result<(), String> {
    let mut o = BuildOptions::new(&a.source);
    o.source_type = match a.source_type.as_str() {
        "dir-rafs" | "directory" => SourceType::Dir,
        "tar-rafs" => SourceType::Tar,
        "targz-rafs" => SourceType::TarGz,
        t => return Err(format!("unsupported source type {t:?}")),
    };
    o.version = match a.fs_version.as_str() {
        "5" => RafsVersion::V5,
        "6" => RafsVersion::V6,
        v => return Err(format!("unsupported fs version {v:?}")),
    };
    o.compressor = parse_compressor(&a.compressor)?;
    o.digester = match a.digester.as_str() {
        "blake3" => Digester::Blake3,
        "sha256" => Digester::Sha256,
        d => return Err(format!("unknown digester {d:?}")),
    };
    o.chunk_size = parse_chunk_size(&a.chunk_size).map_err(|e| e.to_string())?;
    o.bootstrap = a.bootstrap;
    o.blob = a.blob;
    o.blob_dir = a.blob_dir;
    o.chunk_dict = a.chunk_dict.as_deref().map(dict_path).transpose()?;
    o.parent_bootstrap = a.parent_bootstrap;
    o.blob_inline_meta = a.blob_inline_meta;
    o.threads = a.threads;
    for f in a.features.iter().flat_map(|f| f.split(',')) {
        match f.trim() {
            "blob-toc" => o.blob_toc = true,
            "" => {}
            other => return Err(format!("unsupported feature {other:?}")),
        }
    }
    o.whiteout_spec = match a.whiteout_spec.as_str() {
        "oci" => WhiteoutSpec::Oci,
        "overlayfs" => WhiteoutSpec::Overlayfs,
        "none" => WhiteoutSpec::None,
        w => return Err(format!("unknown whiteout spec {w:?}")),
    };
    o.prefetch_patterns = match a.prefetch_policy.as_str() {
        "none" => Vec::new(),
        "fs" => read_prefetch_patterns()?,
        p => return Err(format!("unsupported prefetch policy {p:?}")),
    };
    let out = builder::create(&o).map_err(|e| e.to_string())?;
    if let Some(j) = a.output_json {
        let v = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "blobs": out.blobs,
            "blob_id": out.blob_id,
            "blob_size": out.blob_size,
            "chunk_count": out.chunk_count,
            "bootstrap": out.bootstrap,
            "bootstrap_size": out.bootstrap_size,
            "fs_version": a.fs_version,
            "compressor": o.compressor.name(),
            "digester": o.digester.name(),
        });
        write_json(&j.display().to_string(), &v)?;
    }
    Ok(())
}

fn csv<T: std::str::FromStr>(s: &Option<String>, what: &str) -> Result<Option<Vec<T>>, String> {
    s.as_ref()
        .map(|s| {
            s.split(',')
                .map(|x| {
                    x.trim()
                        .parse::<T>()
                        .map_err(|_| format!("bad {what} value {x:?}"))
                })
                .collect()
        })
        .transpose()
}

fn run() -> Result<(), String> {
    let cli = Cli::parse();
    match cli.cmd {
        Cmd::Create(a) => create(a),
        Cmd::Merge(a) => {
            let mut o = merge::MergeOptions::new(a.sources, a.bootstrap);
            o.blob_digests = csv::<String>(&a.blob_digests, "--blob-digests")?;
            o.blob_sizes = csv::<u64>(&a.blob_sizes, "--blob-sizes")?;
            o.blob_toc_digests = csv::<String>(&a.blob_toc_digests, "--blob-toc-digests")?;
            o.blob_toc_sizes = csv::<u32>(&a.blob_toc_sizes, "--blob-toc-sizes")?;
            o.chunk_dict = a.chunk_dict.as_deref().map(dict_path).transpose()?;
            o.prefetch_patterns = match a.prefetch_policy.as_str() {
                "none" => Vec::new(),
                "fs" => read_prefetch_patterns()?,
                p => return Err(format!("unsupported prefetch policy {p:?}")),
            };
            let out = merge::merge(&o).map_err(|e| e.to_string())?;
            if let Some(j) = a.output_json {
                let v = serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "blobs": out.blobs,
                    "bootstrap": o.bootstrap,
                });
                write_json(&j.display().to_string(), &v)?;
            }
            Ok(())
        }
        Cmd::Inspect {
            bootstrap,
            output_json,
        } => {
            let r = tools::inspect(&bootstrap).map_err(|e| e.to_string())?;
            match output_json {
                Some(dest) => write_json(&dest, &r.to_json()),
                None => {
                    print!("{}", r.to_text());
                    Ok(())
                }
            }
        }
        Cmd::Convert(a) => run_convert(a),
        Cmd::Check {
            source: Some(source),
            target: Some(target),
            access,
            output_json,
            mtime_sec,
            ..
        } => {
            let o = convert::check::CheckOptions {
                mtime_sec,
                images: image_pair(&source, &target, &access)?,
            };
            let r = convert::check::check(&o).map_err(|e| format!("check failed: {e}"))?;
            for p in &r.platforms {
                let name = p.platform.as_deref().unwrap_or("image");
                if p.differences.is_empty() {
                    println!("{name}: {} entries equal", p.entries);
                } else {
                    println!("{name}: {} differences", p.differences.len());
                    for d in p.differences.iter().take(20) {
                        println!("  {d}");
                    }
                }
            }
            if let Some(j) = output_json {
                write_json(
                    &j.display().to_string(),
                    &serde_json::to_value(&r).map_err(|e| e.to_string())?,
                )?;
            }
            if r.ok() {
                Ok(())
            } else {
                Err("check failed: the nydus image differs from the OCI image".into())
            }
        }
        Cmd::Check {
            bootstrap,
            bootstrap_flag,
            blob_dir,
            blob,
            output_json,
            ..
        } => {
            let b = bootstrap
                .or(bootstrap_flag)
                .ok_or("a bootstrap is required")?;
            let r = tools::check(&b, blob_dir.as_deref(), blob.as_deref())
                .map_err(|e| format!("check failed: {e}"))?;
            println!("{}", r.summary());
            if let Some(j) = output_json {
                write_json(&j.display().to_string(), &r.to_json())?;
            }
            Ok(())
        }
        Cmd::Unpack {
            source: Some(source),
            access,
            output,
            ..
        } => {
            use convert::store;
            let r = image_ref(&source)?;
            let src =
                store::open_source(&r, access.source_insecure, access.source_creds.as_deref())
                    .map_err(|e| e.to_string())?;
            let (ms, _) = convert::resolve_manifests(src.as_ref(), &platforms(&access), true)
                .map_err(|e| e.to_string())?;
            if ms.len() > 1 {
                return Err(format!(
                    "{source} has {} platforms; pick one with --platform",
                    ms.len()
                ));
            }
            let tmp = convert::TempDir::new("rafs-unpack").map_err(|e| e.to_string())?;
            let boot = convert::check::fetch_nydus_image(src.as_ref(), &ms[0].2, &tmp.0)
                .map_err(|e| e.to_string())?;
            tools::unpack(&boot, Some(&tmp.0), None, &output).map_err(|e| e.to_string())
        }
        Cmd::Unpack {
            bootstrap,
            bootstrap_flag,
            blob_dir,
            blob,
            output,
            ..
        } => {
            let b = bootstrap
                .or(bootstrap_flag)
                .ok_or("a bootstrap is required")?;
            tools::unpack(&b, blob_dir.as_deref(), blob.as_deref(), &output)
                .map_err(|e| e.to_string())
        }
    }
}

fn main() -> ExitCode {
    // A closed pipe (`rafs-image inspect ... | head`) ends the process quietly, as for other
    // command-line tools, instead of a panic in println!.
    // SAFETY: restoring the default disposition of SIGPIPE before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rafs-image: {e}");
            ExitCode::FAILURE
        }
    }
}
