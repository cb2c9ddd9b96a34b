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
    Create(CreateArgs),
    /// Merge per-layer bootstraps into one, applying OCI whiteouts in layer order.
    Merge(MergeArgs),
    /// Print a summary of a bootstrap.
    Inspect {
        /// Bootstrap file.
        bootstrap: PathBuf,
        /// Print JSON instead of text.
        #[arg(long = "output-json", num_args = 0..=1, default_missing_value = "-")]
        output_json: Option<String>,
    },
    /// Validate a bootstrap (and with --blob-dir every chunk's data).
    Check {
        /// Bootstrap file (positional or --bootstrap).
        bootstrap: Option<PathBuf>,
        #[arg(short = 'B', long = "bootstrap")]
        bootstrap_flag: Option<PathBuf>,
        #[arg(short = 'D', long = "blob-dir")]
        blob_dir: Option<PathBuf>,
        /// Blob file of an inlined-meta image (`--blob`), for placeholder blob ids.
        #[arg(short = 'b', long = "blob")]
        blob: Option<PathBuf>,
        #[arg(long = "output-json")]
        output_json: Option<PathBuf>,
    },
    /// Write the image's tree to a tar file.
    Unpack {
        /// Bootstrap file (positional or --bootstrap).
        bootstrap: Option<PathBuf>,
        #[arg(short = 'B', long = "bootstrap")]
        bootstrap_flag: Option<PathBuf>,
        #[arg(short = 'D', long = "blob-dir")]
        blob_dir: Option<PathBuf>,
        #[arg(short = 'b', long = "blob")]
        blob: Option<PathBuf>,
        #[arg(short = 'o', long = "output")]
        output: PathBuf,
    },
}

#[derive(clap::Args)]
struct CreateArgs {
    /// Source directory or tar file.
    source: PathBuf,
    #[arg(short = 'B', long)]
    bootstrap: Option<PathBuf>,
    #[arg(short = 'b', long)]
    blob: Option<PathBuf>,
    #[arg(short = 'D', long = "blob-dir")]
    blob_dir: Option<PathBuf>,
    /// dir-rafs, tar-rafs or targz-rafs.
    #[arg(short = 't', long = "type", default_value = "dir-rafs")]
    source_type: String,
    #[arg(short = 'v', long = "fs-version", default_value = "6")]
    fs_version: String,
    #[arg(short = 'c', long, default_value = "zstd")]
    compressor: String,
    #[arg(short = 'd', long, default_value = "blake3")]
    digester: String,
    #[arg(short = 'S', long = "chunk-size", default_value = "0x100000")]
    chunk_size: String,
    /// `bootstrap=PATH`.
    #[arg(short = 'M', long = "chunk-dict")]
    chunk_dict: Option<String>,
    #[arg(short = 'p', long = "parent-bootstrap")]
    parent_bootstrap: Option<PathBuf>,
    /// `fs` reads prefetch patterns from stdin; `none` disables prefetch.
    #[arg(short = 'P', long = "prefetch-policy", default_value = "none")]
    prefetch_policy: String,
    #[arg(long = "blob-inline-meta")]
    blob_inline_meta: bool,
    /// Comma-separated features; `blob-toc` is supported.
    #[arg(long)]
    features: Option<String>,
    #[arg(short = 'W', long = "whiteout-spec", default_value = "oci")]
    whiteout_spec: String,
    #[arg(short = 'J', long = "output-json")]
    output_json: Option<PathBuf>,
    /// Worker threads (default: all cores).
    #[arg(long, default_value = "0")]
    threads: usize,
    /// Accepted for compatibility; RAFS v6 blobs are always 4 KiB aligned.
    #[arg(short = 'A', long = "aligned-chunk")]
    aligned_chunk: bool,
}

#[derive(clap::Args)]
struct MergeArgs {
    /// Per-layer bootstraps, lowest layer first.
    sources: Vec<PathBuf>,
    #[arg(short = 'B', long)]
    bootstrap: PathBuf,
    #[arg(long = "blob-digests")]
    blob_digests: Option<String>,
    #[arg(long = "blob-sizes")]
    blob_sizes: Option<String>,
    #[arg(long = "blob-toc-digests")]
    blob_toc_digests: Option<String>,
    #[arg(long = "blob-toc-sizes")]
    blob_toc_sizes: Option<String>,
    #[arg(short = 'M', long = "chunk-dict")]
    chunk_dict: Option<String>,
    #[arg(short = 'P', long = "prefetch-policy", default_value = "none")]
    prefetch_policy: String,
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
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rafs-image: {e}");
            ExitCode::FAILURE
        }
    }
}
