//! Chunking, deduplication and the blob data writer.
//!
//! Files are cut into `chunk_size` pieces as they are read (memory is bounded by the number
//! of chunks in flight, never by file size). Digest, CRC-32C and compression run on a pool
//! of worker threads; results are consumed in submission order, so the blob layout and
//! therefore the output bytes are deterministic. Duplicate chunks (same digest and length),
//! within the build or found in a chunk dictionary, are written once.

use std::collections::{HashMap, VecDeque};
use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use sha2::Digest as _;

use super::BuildError;
use crate::rafs::codec;
use crate::rafs::{ChunkInfo, Compressor, Digester};

/// A chunk found in a chunk dictionary, keyed by digest.
#[derive(Clone, Debug)]
pub struct DictChunk {
    /// The chunk, with `blob_index` = index in the dictionary's own blob table.
    pub info: ChunkInfo,
}

/// Result of processing one chunk on a worker.
struct Processed {
    digest: [u8; 32],
    crc: u32,
    raw: Vec<u8>,
    compressed: Option<Vec<u8>>,
}

struct Job {
    data: Vec<u8>,
    reply: Sender<Result<Processed, BuildError>>,
}

struct Pending {
    node: usize,
    file_offset: u64,
    rx: Receiver<Result<Processed, BuildError>>,
}

enum WriterMsg {
    Data(Vec<u8>),
    Snapshot(Sender<[u8; 32]>),
    Finish(Sender<Result<[u8; 32], std::io::Error>>),
}

/// A blob data file being written, hashed as it grows. Writing and sha256 run on a
/// dedicated thread so that they overlap with reading the next chunks.
pub struct BlobFile {
    path: PathBuf,
    tx: Option<Sender<WriterMsg>>,
    thread: Option<JoinHandle<()>>,
    pos: u64,
    /// Set once the file has been handed over by `finish`.
    kept: bool,
}

impl Drop for BlobFile {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // A build that failed half way leaves no temporary file behind.
        if !self.kept {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl BlobFile {
    /// Create a temporary blob file in `dir`.
    pub fn create(dir: &Path) -> Result<Self, BuildError> {
        std::fs::create_dir_all(dir).map_err(|e| BuildError::io(dir, e))?;
        static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = dir.join(format!(".rafs-blob-{}-{seq}.tmp", std::process::id()));
        let f = File::create(&path).map_err(|e| BuildError::io(&path, e))?;
        let (tx, rx) = bounded::<WriterMsg>(8);
        let thread = std::thread::spawn(move || {
            // Small writes (tables, headers, tiny chunks) are batched; chunk-sized ones go
            // straight to the file (BufWriter passes through writes as large as its buffer),
            // which saves copying the whole blob once.
            let mut w = BufWriter::with_capacity(64 << 10, f);
            let mut hasher = sha2::Sha256::new();
            let mut err: Option<std::io::Error> = None;
            while let Ok(m) = rx.recv() {
                match m {
                    WriterMsg::Data(d) => {
                        hasher.update(&d);
                        if err.is_none() {
                            if let Err(e) = w.write_all(&d) {
                                err = Some(e);
                            }
                        }
                    }
                    WriterMsg::Snapshot(reply) => {
                        let _ = reply.send(hasher.clone().finalize().into());
                    }
                    WriterMsg::Finish(reply) => {
                        let r = match err.take() {
                            Some(e) => Err(e),
                            None => w.flush().map(|_| hasher.clone().finalize().into()),
                        };
                        let _ = reply.send(r);
                        return;
                    }
                }
            }
        });
        Ok(BlobFile {
            path,
            tx: Some(tx),
            thread: Some(thread),
            pos: 0,
            kept: false,
        })
    }

    fn send(&self, m: WriterMsg) -> Result<(), BuildError> {
        self.tx
            .as_ref()
            .and_then(|t| t.send(m).ok())
            .ok_or_else(|| BuildError::Invalid("blob writer thread stopped".into()))
    }

    /// Append bytes.
    pub fn write(&mut self, b: &[u8]) -> Result<(), BuildError> {
        self.write_owned(b.to_vec())
    }
    /// Append an owned buffer (no copy).
    pub fn write_owned(&mut self, b: Vec<u8>) -> Result<(), BuildError> {
        self.pos += b.len() as u64;
        self.send(WriterMsg::Data(b))
    }
    /// sha256 of the bytes written so far.
    pub fn digest_so_far(&self) -> Result<[u8; 32], BuildError> {
        let (tx, rx) = bounded(1);
        self.send(WriterMsg::Snapshot(tx))?;
        rx.recv()
            .map_err(|_| BuildError::Invalid("blob writer thread stopped".into()))
    }
    /// Bytes written so far.
    pub fn len(&self) -> u64 {
        self.pos
    }
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.pos == 0
    }
    /// Flush, returning (temporary path, hex sha256, size).
    pub fn finish(mut self) -> Result<(PathBuf, String, u64), BuildError> {
        let (tx, rx) = bounded(1);
        self.send(WriterMsg::Finish(tx))?;
        let digest = rx
            .recv()
            .map_err(|_| BuildError::Invalid("blob writer thread stopped".into()))?
            .map_err(|e| BuildError::io(&self.path, e))?;
        self.tx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.kept = true;
        Ok((self.path.clone(), hex::encode(digest), self.pos))
    }
    /// Discard the file.
    pub fn discard(self) {
        // Drop removes it.
    }
}

/// Settings of a chunker.
#[derive(Clone, Debug)]
pub struct ChunkerConfig {
    pub chunk_size: u32,
    pub compressor: Compressor,
    pub digester: Digester,
    /// Align uncompressed offsets to 4 KiB (v6 always; v5 never).
    pub aligned: bool,
    /// Blob-table index the new blob will get.
    pub blob_index: u32,
    /// Worker threads (0 = available parallelism).
    pub threads: usize,
}

/// Chunks all files of a build into one new blob.
pub struct Chunker {
    cfg: ChunkerConfig,
    job_tx: Option<Sender<Job>>,
    workers: Vec<JoinHandle<()>>,
    pending: VecDeque<Pending>,
    max_pending: usize,
    /// digest+len → chunk of this build.
    seen: HashMap<([u8; 32], u32), ChunkInfo>,
    /// Chunk dictionary (digest+len → chunk, blob index in the dict's table).
    dict: HashMap<([u8; 32], u32), ChunkInfo>,
    /// Dict blob indexes used, in first-use order. Chunks from the dictionary carry
    /// `DICT_BASE + dict blob index` until the caller remaps them.
    pub dict_blobs_used: Vec<u32>,
    blob: BlobFile,
    /// New chunks of the blob, in ci-index order.
    pub chunks: Vec<ChunkInfo>,
    uncompressed_pos: u64,
    /// Per node: its chunks in file order.
    pub node_chunks: HashMap<usize, Vec<ChunkInfo>>,
    /// Read buffers whose chunk is done, reused for the next reads (no fresh pages to fault
    /// in and zero for every chunk).
    free_bufs: Vec<Vec<u8>>,
}

/// Blob indexes at or above this value denote dictionary blobs (`value - DICT_BASE` is the
/// blob index in the dictionary) until [`super`] remaps them.
pub const DICT_BASE: u32 = 0x1000_0000;

impl Chunker {
    /// Start workers; the blob's temporary file goes to `tmp_dir`.
    pub fn new(cfg: ChunkerConfig, tmp_dir: &Path) -> Result<Self, BuildError> {
        let n = if cfg.threads == 0 {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
        } else {
            cfg.threads
        };
        let (job_tx, job_rx) = bounded::<Job>(n * 2);
        let mut workers = Vec::new();
        for _ in 0..n {
            let rx = job_rx.clone();
            let (c, d) = (cfg.compressor, cfg.digester);
            workers.push(std::thread::spawn(move || {
                let mut comp = codec::ChunkCompressor::new(c);
                while let Ok(job) = rx.recv() {
                    let r = match &mut comp {
                        Ok(comp) => process(comp, d, job.data),
                        Err(e) => Err(BuildError::Invalid(format!("compressor: {e}"))),
                    };
                    let _ = job.reply.send(r);
                }
            }));
        }
        Ok(Chunker {
            blob: BlobFile::create(tmp_dir)?,
            cfg,
            job_tx: Some(job_tx),
            workers,
            pending: VecDeque::new(),
            max_pending: n * 3,
            seen: HashMap::new(),
            dict: HashMap::new(),
            dict_blobs_used: Vec::new(),
            chunks: Vec::new(),
            uncompressed_pos: 0,
            node_chunks: HashMap::new(),
            free_bufs: Vec::new(),
        })
    }

    /// Use a chunk dictionary: chunks with the same digest and length are referenced
    /// instead of written. `blob_index` of each entry is the dict's own blob index.
    pub fn set_dict(&mut self, chunks: impl IntoIterator<Item = ChunkInfo>) {
        for c in chunks {
            if let Some(d) = c.digest {
                self.dict.entry((d, c.uncompressed_size)).or_insert(c);
            }
        }
    }

    /// Pre-seed the "already available" chunks (e.g. from a parent bootstrap): these are
    /// referenced as they are (their blob index must already be valid in the new table).
    pub fn add_known(&mut self, chunks: impl IntoIterator<Item = ChunkInfo>) {
        for c in chunks {
            if let Some(d) = c.digest {
                self.seen.entry((d, c.uncompressed_size)).or_insert(c);
            }
        }
    }

    /// Chunk `size` bytes of file data from `r` for `node`.
    pub fn add_file(&mut self, node: usize, r: &mut dyn Read, size: u64) -> Result<(), BuildError> {
        let cs = u64::from(self.cfg.chunk_size);
        let mut off = 0u64;
        self.node_chunks.entry(node).or_default();
        while off < size {
            let len = (size - off).min(cs) as usize;
            // read_to_end into spare capacity: no zeroing of a fresh buffer per chunk.
            let mut buf = self.free_bufs.pop().unwrap_or_default();
            buf.clear();
            buf.reserve(len);
            let got = r.take(len as u64).read_to_end(&mut buf).map_err(|e| {
                BuildError::Invalid(format!(
                    "read of file data failed (node {node}, offset {off}): {e}"
                ))
            })?;
            if got != len {
                return Err(BuildError::Invalid(format!(
                    "short read of file data (node {node}, offset {off}): {got} of {len} bytes"
                )));
            }
            self.submit(node, off, buf)?;
            off += len as u64;
        }
        Ok(())
    }

    fn submit(&mut self, node: usize, file_offset: u64, data: Vec<u8>) -> Result<(), BuildError> {
        while self.pending.len() >= self.max_pending {
            self.complete_one()?;
        }
        let (tx, rx) = bounded(1);
        self.job_tx
            .as_ref()
            .expect("job channel open until finish")
            .send(Job { data, reply: tx })
            .map_err(|_| BuildError::Invalid("chunk worker pool stopped".into()))?;
        self.pending.push_back(Pending {
            node,
            file_offset,
            rx,
        });
        Ok(())
    }

    fn complete_one(&mut self) -> Result<(), BuildError> {
        let Some(p) = self.pending.pop_front() else {
            return Ok(());
        };
        let r =
            p.rx.recv()
                .map_err(|_| BuildError::Invalid("chunk worker died".into()))??;
        let len = r.raw.len() as u32;
        let key = (r.digest, len);
        let mut raw = Some(r.raw);
        let info = if let Some(c) = self.seen.get(&key) {
            *c
        } else if let Some(c) = self.dict.get(&key) {
            let mut c = *c;
            if !self.dict_blobs_used.contains(&c.blob_index) {
                self.dict_blobs_used.push(c.blob_index);
            }
            c.blob_index += DICT_BASE;
            c
        } else {
            let (payload, compressed) = match r.compressed {
                Some(c) => (c, true),
                None => (raw.take().unwrap_or_default(), false),
            };
            let index = self.chunks.len() as u32;
            if index > crate::rafs::layout::MAX_CI_INDEX {
                return Err(BuildError::Invalid("too many chunks in one blob".into()));
            }
            let c = ChunkInfo {
                blob_index: self.cfg.blob_index,
                index,
                compressed_offset: self.blob.len(),
                compressed_size: payload.len() as u32,
                uncompressed_offset: self.uncompressed_pos,
                uncompressed_size: len,
                compressed,
                crc32: Some(r.crc),
                digest: Some(r.digest),
            };
            self.blob.write_owned(payload)?;
            self.uncompressed_pos += if self.cfg.aligned {
                crate::rafs::layout::round_up(u64::from(len), 4096)
            } else {
                u64::from(len)
            };
            self.chunks.push(c);
            self.seen.insert(key, c);
            c
        };
        if let Some(b) = raw {
            if self.free_bufs.len() < self.max_pending {
                self.free_bufs.push(b);
            }
        }
        let list = self.node_chunks.entry(p.node).or_default();
        debug_assert_eq!(
            list.iter()
                .map(|c| u64::from(c.uncompressed_size))
                .sum::<u64>(),
            p.file_offset
        );
        list.push(info);
        Ok(())
    }

    /// Wait for all chunks, stop the workers and hand back the blob file.
    pub fn finish(mut self) -> Result<ChunkerOutput, BuildError> {
        while !self.pending.is_empty() {
            self.complete_one()?;
        }
        self.job_tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        Ok(ChunkerOutput {
            blob: self.blob,
            chunks: self.chunks,
            uncompressed_size: self.uncompressed_pos,
            node_chunks: self.node_chunks,
            dict_blobs_used: self.dict_blobs_used,
        })
    }
}

/// Everything a finished chunker produced.
pub struct ChunkerOutput {
    /// The blob file holding the chunk data written so far.
    pub blob: BlobFile,
    /// New chunks in ci order.
    pub chunks: Vec<ChunkInfo>,
    /// End of the uncompressed blob (before 4 KiB rounding).
    pub uncompressed_size: u64,
    pub node_chunks: HashMap<usize, Vec<ChunkInfo>>,
    /// Dictionary blob indexes referenced, in first-use order.
    pub dict_blobs_used: Vec<u32>,
}

fn process(
    c: &mut codec::ChunkCompressor,
    d: Digester,
    raw: Vec<u8>,
) -> Result<Processed, BuildError> {
    let digest = codec::digest(d, &raw);
    let crc = codec::crc32c(&raw);
    let compressed = c.compress(&raw)?;
    Ok(Processed {
        digest,
        crc,
        raw,
        compressed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dedups_and_keeps_order() {
        let d = tempfile::tempdir().unwrap();
        let cfg = ChunkerConfig {
            chunk_size: 4096,
            compressor: Compressor::Zstd,
            digester: Digester::Blake3,
            aligned: true,
            blob_index: 0,
            threads: 2,
        };
        let mut ch = Chunker::new(cfg, d.path()).unwrap();
        let a: Vec<u8> = (0..10000u32).map(|i| (i * 7 % 251) as u8).collect();
        ch.add_file(1, &mut a.as_slice(), a.len() as u64).unwrap();
        ch.add_file(2, &mut a.as_slice(), a.len() as u64).unwrap();
        let out = ch.finish().unwrap();
        // 3 chunks (4096, 4096, 1808), the second file fully deduplicated.
        assert_eq!(out.chunks.len(), 3);
        assert_eq!(out.node_chunks[&1], out.node_chunks[&2]);
        assert_eq!(out.chunks[1].uncompressed_offset, 4096);
        assert_eq!(out.chunks[2].uncompressed_size, 1808);
        // Aligned: every chunk slot is rounded up to 4 KiB.
        assert_eq!(out.uncompressed_size, 3 * 4096);
        out.blob.discard();
    }
}
