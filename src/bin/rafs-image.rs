//! `rafs-image`: build, inspect, check, unpack and merge Nydus RAFS images, with
//! nydus-image's flag names.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
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
    /// Print a summary of a bootstrap.
    Inspect {
        /// Bootstrap (RAFS metadata) file to inspect
        bootstrap: PathBuf,
        /// Print JSON instead of text: to FILE, or to stdout when given without a value or as -; default: text on stdout
        #[arg(long = "output-json", num_args = 0..=1, default_missing_value = "-")]
        output_json: Option<String>,
    },
    /// Validate a bootstrap (and with --blob-dir every chunk's data).
    Check {
        /// Bootstrap (RAFS metadata) file to check (or give --bootstrap)
        bootstrap: Option<PathBuf>,
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
        /// Bootstrap (RAFS metadata) file to unpack (or give --bootstrap)
        bootstrap: Option<PathBuf>,
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
        Cmd::Check {
            bootstrap,
            bootstrap_flag,
            blob_dir,
            blob,
            output_json,
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
            bootstrap,
            bootstrap_flag,
            blob_dir,
            blob,
            output,
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
