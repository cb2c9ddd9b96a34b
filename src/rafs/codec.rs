//! Chunk payload encoding shared by the builder and the storage layer: compression
//! (RAFS-FORMAT.md §3.1), chunk digests and CRC-32C.

use std::io::{Read, Write};

use super::{Compressor, Digester};

/// Errors from encoding or decoding a chunk payload.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("{algo} decompression failed: {reason}")]
    Decompress { algo: Compressor, reason: String },
    #[error("{algo} output is {got} bytes, expected {want}")]
    Length {
        algo: Compressor,
        got: usize,
        want: usize,
    },
    #[error("{algo} compression failed: {reason}")]
    Compress { algo: Compressor, reason: String },
}

/// zstd level used by upstream nydus-image.
pub const ZSTD_LEVEL: i32 = 3;

/// Compress `data` with `algo`. Returns `None` when the result would not be strictly smaller
/// than the input (the caller then stores the raw bytes, unmarked as compressed), for
/// `Compressor::None`, and for empty input.
pub fn compress(algo: Compressor, data: &[u8]) -> Result<Option<Vec<u8>>, CodecError> {
    if data.is_empty() {
        return Ok(None);
    }
    let err = |e: std::io::Error| CodecError::Compress {
        algo,
        reason: e.to_string(),
    };
    let out = match algo {
        Compressor::None => return Ok(None),
        Compressor::Lz4Block => lz4::block::compress(data, None, false).map_err(err)?,
        Compressor::Zstd => zstd::bulk::compress(data, ZSTD_LEVEL).map_err(err)?,
        Compressor::Gzip => {
            let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            enc.write_all(data).map_err(err)?;
            enc.finish().map_err(err)?
        }
    };
    Ok((out.len() < data.len()).then_some(out))
}

/// A compressor that keeps its state (the zstd context and its workspace) between calls,
/// for a thread that compresses many chunks: same output as [`compress`], without
/// allocating and zeroing a new context per chunk.
pub struct ChunkCompressor {
    algo: Compressor,
    zstd: Option<zstd::bulk::Compressor<'static>>,
}

impl ChunkCompressor {
    /// A compressor for `algo`.
    pub fn new(algo: Compressor) -> Result<Self, CodecError> {
        let zstd =
            match algo {
                Compressor::Zstd => Some(zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(|e| {
                    CodecError::Compress {
                        algo,
                        reason: e.to_string(),
                    }
                })?),
                _ => None,
            };
        Ok(ChunkCompressor { algo, zstd })
    }

    /// Like [`compress`]: `None` when the data is empty or does not shrink.
    pub fn compress(&mut self, data: &[u8]) -> Result<Option<Vec<u8>>, CodecError> {
        match (&mut self.zstd, data.is_empty()) {
            (Some(z), false) => {
                let out = z.compress(data).map_err(|e| CodecError::Compress {
                    algo: self.algo,
                    reason: e.to_string(),
                })?;
                Ok((out.len() < data.len()).then_some(out))
            }
            _ => compress(self.algo, data),
        }
    }
}

/// Decompress a payload of `algo` that must expand to exactly `out.len()` bytes.
pub fn decompress_into(algo: Compressor, input: &[u8], out: &mut [u8]) -> Result<(), CodecError> {
    let want = out.len();
    let derr = |reason: String| CodecError::Decompress { algo, reason };
    let got = match algo {
        Compressor::None => {
            if input.len() != want {
                return Err(CodecError::Length {
                    algo,
                    got: input.len(),
                    want,
                });
            }
            out.copy_from_slice(input);
            want
        }
        Compressor::Lz4Block => {
            let size = i32::try_from(want).map_err(|_| derr("output too large".into()))?;
            let v = lz4::block::decompress(input, Some(size)).map_err(|e| derr(e.to_string()))?;
            if v.len() != want {
                return Err(CodecError::Length {
                    algo,
                    got: v.len(),
                    want,
                });
            }
            out.copy_from_slice(&v);
            want
        }
        Compressor::Zstd => {
            // One decompression context per thread: making one per chunk showed up in the
            // cold read profile (ZSTD_createDCtx, 2.6% of the daemon's samples).
            thread_local! {
                static DCTX: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
                    const { std::cell::RefCell::new(None) };
            }
            DCTX.with(|c| {
                let mut c = c.borrow_mut();
                if c.is_none() {
                    *c = Some(zstd::bulk::Decompressor::new().map_err(|e| derr(e.to_string()))?);
                }
                let d = c.as_mut().ok_or_else(|| derr("no zstd context".into()))?;
                d.decompress_to_buffer(input, out)
                    .map_err(|e| derr(e.to_string()))
            })?
        }
        Compressor::Gzip => {
            let mut dec = flate2::read::GzDecoder::new(input);
            let mut n = 0;
            while n < want {
                match dec.read(&mut out[n..]) {
                    Ok(0) => break,
                    Ok(k) => n += k,
                    Err(e) => return Err(derr(e.to_string())),
                }
            }
            // The stream must end exactly here.
            let mut extra = [0u8; 1];
            if n == want && dec.read(&mut extra).map_err(|e| derr(e.to_string()))? != 0 {
                return Err(derr("stream longer than expected".into()));
            }
            n
        }
    };
    if got != want {
        return Err(CodecError::Length { algo, got, want });
    }
    Ok(())
}

/// Decompress into a new buffer of exactly `size` bytes.
pub fn decompress(algo: Compressor, input: &[u8], size: usize) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![0u8; size];
    decompress_into(algo, input, &mut out)?;
    Ok(out)
}

/// Digest of uncompressed chunk data (or of a concatenation, for v5 inode digests).
pub fn digest(algo: Digester, data: &[u8]) -> [u8; 32] {
    match algo {
        Digester::Blake3 => *blake3::hash(data).as_bytes(),
        Digester::Sha256 => {
            use sha2::Digest;
            sha2::Sha256::digest(data).into()
        }
    }
}

/// CRC-32C (Castagnoli) of uncompressed chunk data.
pub fn crc32c(data: &[u8]) -> u32 {
    crc32c::crc32c(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: [Compressor; 4] = [
        Compressor::None,
        Compressor::Lz4Block,
        Compressor::Gzip,
        Compressor::Zstd,
    ];

    #[test]
    fn round_trip_every_algorithm() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        for algo in ALL {
            let c = compress(algo, &data).unwrap();
            match (algo, c) {
                (Compressor::None, None) => {}
                (Compressor::None, Some(_)) => panic!("none must not compress"),
                (_, None) => panic!("{algo} failed to shrink compressible data"),
                (_, Some(c)) => {
                    assert!(c.len() < data.len());
                    assert_eq!(decompress(algo, &c, data.len()).unwrap(), data);
                }
            }
        }
    }

    #[test]
    fn incompressible_and_empty_data_is_stored_raw() {
        let mut x = 0x12345678u32;
        let data: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                x as u8
            })
            .collect();
        for algo in ALL {
            assert!(compress(algo, &data).unwrap().is_none(), "{algo}");
            assert!(compress(algo, &[]).unwrap().is_none(), "{algo}");
        }
    }

    #[test]
    fn wrong_length_and_garbage_are_errors() {
        let data = vec![7u8; 10_000];
        for algo in [Compressor::Lz4Block, Compressor::Gzip, Compressor::Zstd] {
            let c = compress(algo, &data).unwrap().unwrap();
            assert!(
                decompress(algo, &c, data.len() - 1).is_err(),
                "{algo} short"
            );
            assert!(decompress(algo, &c, data.len() + 1).is_err(), "{algo} long");
            assert!(
                decompress(algo, &[0xff; 64], 100).is_err(),
                "{algo} garbage"
            );
        }
        assert!(decompress(Compressor::None, &[1, 2, 3], 4).is_err());
    }

    #[test]
    fn digests_match_reference_values() {
        assert_eq!(
            hex::encode(digest(Digester::Sha256, b"abc")),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert_eq!(
            hex::encode(digest(Digester::Blake3, b"")),
            "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
        );
        // CRC-32C check value ("123456789").
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
    }
}
