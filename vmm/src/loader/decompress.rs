//! bzImage payload decompression (Xen's `xg_dom_bzimageloader.c` probes the same magics).
//!
//! Linux appends the decompressed size as 4 little-endian bytes after every payload
//! except gzip's (`*_with_size` in arch/x86/boot/compressed/Makefile); the decoders are
//! therefore tried on the payload without those 4 bytes first, then on all of it.
//! Every decoder streams into a buffer capped at [`MAX_DECOMPRESSED`] and stops with
//! [`LoaderError::DecompressedTooLarge`] as soon as its output would pass the cap. No size
//! the image claims is trusted for an allocation: the appended size word, the lzma
//! header's size, a zstd frame's content size and the xz index are guest-controlled, so
//! the output buffer grows with what is really decoded, never past the cap.
//!
//! Decoder memory is bounded too: the xz/lzma dictionary and the zstd window are header
//! fields (up to 4 GiB and terabytes), so both are refused above [`DECODER_MEM_MAX`]
//! before a byte is decoded. Peak memory for a bomb is therefore the cap plus at most
//! that much (plus the fixed state of gzip, bzip2 and lz4, a few MiB at most).
//!
//! xz blocks may carry a BCJ filter before LZMA2 (Linux's x86 payloads do:
//! scripts/xz_wrap.sh passes `--x86`); lzma-rust2 applies it.

use std::io::{self, Read, Write};

use super::elf::Compression;
use super::LoaderError;

/// Upper bound for a decompressed kernel (Xen's `XC_DOM_DECOMPRESS_MAX` is 1 GiB too).
pub const MAX_DECOMPRESSED: u64 = 1 << 30;

/// Upper bound for a decoder's own memory: the xz/lzma dictionary and the zstd window.
/// Xen's builder gives liblzma the same memory limit (`LZMA_BLOCK_SIZE`, 256 MiB, in
/// xg_dom_bzimageloader.c); Linux's payloads need 32 MiB (xz, scripts/xz_wrap.sh), 64 MiB
/// (`lzma -9`) and 128 MiB (`zstd -22 --ultra` on a pipe).
pub const DECODER_MEM_MAX: u64 = 256 << 20;

/// The lz4 legacy frame magic (`ARCHIVE_MAGICNUMBER`, written by `lz4 -l`).
const LZ4_LEGACY_MAGIC: u32 = 0x184c_2102;
/// A legacy lz4 block decompresses to at most 8 MiB.
const LZ4_LEGACY_BLOCK_MAX: usize = 8 << 20;

/// Identifies the payload's compression from its magic bytes.
pub fn detect(payload: &[u8]) -> Result<Compression, LoaderError> {
    let starts = |m: &[u8]| payload.starts_with(m);
    if starts(&[0x1f, 0x8b]) {
        Ok(Compression::Gzip)
    } else if starts(b"BZh") {
        Ok(Compression::Bzip2)
    } else if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        Ok(Compression::Xz)
    } else if starts(&[0x5d, 0x00, 0x00]) {
        Ok(Compression::Lzma)
    } else if starts(&LZ4_LEGACY_MAGIC.to_le_bytes()) {
        Ok(Compression::Lz4Legacy)
    } else if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Ok(Compression::Zstd)
    } else if starts(&[0x89, b'L', b'Z', b'O']) {
        Err(LoaderError::UnsupportedCompression("lzo"))
    } else if starts(b"\x7fELF") {
        Ok(Compression::None)
    } else {
        Err(LoaderError::UnknownCompression {
            magic: payload.iter().take(6).copied().collect(),
        })
    }
}

/// A writer that refuses to grow past `cap` bytes. It reserves its own capacity (never
/// past the cap, and fallibly) because `Vec`'s doubling alone would allocate up to twice
/// the cap just before a bomb is noticed.
struct CappedVec {
    buf: Vec<u8>,
    cap: usize,
    overflowed: bool,
}

impl CappedVec {
    fn new(cap: u64) -> Self {
        CappedVec {
            buf: Vec::new(),
            cap: usize::try_from(cap).unwrap_or(usize::MAX),
            overflowed: false,
        }
    }
}

impl Write for CappedVec {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let len = self.buf.len();
        let Some(new_len) = len.checked_add(data.len()).filter(|&n| n <= self.cap) else {
            self.overflowed = true;
            return Err(io::Error::other("decompressed size limit reached"));
        };
        if new_len > self.buf.capacity() {
            let target = new_len
                .max(self.buf.capacity().saturating_mul(2))
                .min(self.cap);
            self.buf
                .try_reserve_exact(target - len)
                .map_err(io::Error::other)?;
        }
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Streams a whole `Read` decoder into a buffer of at most `cap` bytes, in the decoder's
/// own chunks (8 KiB at a time through `io::copy`), so decoding stops at the cap.
fn read_capped(format: &'static str, mut r: impl Read, cap: u64) -> Result<Vec<u8>, LoaderError> {
    let mut out = CappedVec::new(cap);
    let res = io::copy(&mut r, &mut out);
    if out.overflowed {
        return Err(LoaderError::DecompressedTooLarge { format, limit: cap });
    }
    res.map_err(|e| decoder_error(format, e))?;
    Ok(out.buf)
}

/// A decoder's error as a loader error: lzma-rust2 says `OutOfMemory` when the header's
/// dictionary is over the memory limit it was given.
fn decoder_error(format: &'static str, e: io::Error) -> LoaderError {
    if e.kind() == io::ErrorKind::OutOfMemory && matches!(format, "xz" | "lzma") {
        return LoaderError::DecoderMemory {
            format,
            what: "dictionary",
            need: None,
            limit: DECODER_MEM_MAX,
        };
    }
    LoaderError::Decompress {
        format,
        reason: e.to_string(),
    }
}

/// The LZMA/LZMA2 decoders' memory limit in KiB ([`DECODER_MEM_MAX`]): refusing a larger
/// dictionary up front keeps a forged header (the dictionary size is a field of it, up
/// to 4 GiB) from growing the dictionary past it while the output grows too.
const DICT_LIMIT_KIB: u32 = (DECODER_MEM_MAX >> 10) as u32;

/// The window a zstd frame asks for (RFC 8878 section 3.1.1.1.2): the window descriptor,
/// or the frame content size for a single-segment frame. `None` if the header is cut
/// short; the decoder then reports the damage itself.
fn zstd_window(frame: &[u8]) -> Option<u64> {
    let fhd = *frame.get(4)?;
    let single_segment = fhd & 0x20 != 0;
    if !single_segment {
        let wd = *frame.get(5)?;
        let base = 1u64 << (10 + u32::from(wd >> 3));
        return Some(base + (base / 8) * u64::from(wd & 7));
    }
    let dict_id_len = [0usize, 1, 2, 4][usize::from(fhd & 3)];
    let fcs_at = 5 + dict_id_len;
    let fcs = |n: usize| -> Option<u64> {
        let bytes = frame.get(fcs_at..fcs_at + n)?;
        Some(
            bytes
                .iter()
                .rev()
                .fold(0u64, |acc, &b| (acc << 8) | u64::from(b)),
        )
    };
    match fhd >> 6 {
        0 => fcs(1),
        1 => fcs(2).map(|v| v + 256),
        2 => fcs(4),
        _ => fcs(8),
    }
}

fn decode_once(kind: Compression, input: &[u8], cap: u64) -> Result<Vec<u8>, LoaderError> {
    let format = kind.name();
    match kind {
        Compression::None => Ok(input.to_vec()),
        Compression::Gzip => read_capped(format, flate2::read::GzDecoder::new(input), cap),
        Compression::Bzip2 => read_capped(format, bzip2::read::BzDecoder::new(input), cap),
        Compression::Zstd => {
            // ruzstd keeps a whole window of output before it hands any out, and sizes
            // its buffer from the header's window without a limit on a first frame.
            if let Some(window) = zstd_window(input).filter(|&w| w > DECODER_MEM_MAX) {
                return Err(LoaderError::DecoderMemory {
                    format,
                    what: "window",
                    need: Some(window),
                    limit: DECODER_MEM_MAX,
                });
            }
            let mut src = input;
            let dec = ruzstd::decoding::StreamingDecoder::new(&mut src).map_err(|e| {
                LoaderError::Decompress {
                    format,
                    reason: e.to_string(),
                }
            })?;
            read_capped(format, dec, cap)
        }
        // One stream only: Linux's appended size (or other trailing bytes) is not a
        // second stream. The block's filter chain comes from its header, so the BCJ
        // filters (x86 for x86 kernels, see scripts/xz_wrap.sh) need nothing here.
        Compression::Xz => read_capped(
            format,
            lzma_rust2::XzReader::new_mem_limit(input, false, DICT_LIMIT_KIB),
            cap,
        ),
        Compression::Lzma => {
            // .lzma header: properties byte, dictionary size (u32 le), uncompressed size.
            let dict = input
                .get(1..5)
                .and_then(|b| b.try_into().ok())
                .map(|b| u64::from(u32::from_le_bytes(b)));
            if let Some(dict) = dict.filter(|&d| d > DECODER_MEM_MAX) {
                return Err(LoaderError::DecoderMemory {
                    format,
                    what: "dictionary",
                    need: Some(dict),
                    limit: DECODER_MEM_MAX,
                });
            }
            let dec = lzma_rust2::LzmaReader::new_mem_limit(input, DICT_LIMIT_KIB, None)
                .map_err(|e| decoder_error(format, e))?;
            read_capped(format, dec, cap)
        }
        Compression::Lz4Legacy => lz4_legacy(input, cap),
    }
}

/// Decodes the kernel's lz4 legacy framing: magic, then (u32 le size, block) pairs until
/// the input ends; a size field equal to the magic starts a new frame. A lone trailing
/// 4-byte word after at least one block is Linux's appended size and ends the stream.
fn lz4_legacy(input: &[u8], cap: u64) -> Result<Vec<u8>, LoaderError> {
    let err = |reason: String| LoaderError::Decompress {
        format: "lz4",
        reason,
    };
    let word = |at: usize| -> Option<u32> {
        input
            .get(at..at.checked_add(4)?)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    if word(0) != Some(LZ4_LEGACY_MAGIC) {
        return Err(err("the legacy frame magic 0x184c2102 is missing".into()));
    }
    let mut pos = 4usize;
    let mut out = CappedVec::new(cap);
    let mut blocks = 0usize;
    let mut block = vec![0u8; LZ4_LEGACY_BLOCK_MAX];
    while pos < input.len() {
        let Some(size) = word(pos) else {
            return Err(err(format!("{} stray bytes at the end", input.len() - pos)));
        };
        pos += 4;
        if size == LZ4_LEGACY_MAGIC {
            continue;
        }
        let remaining = input.len() - pos;
        if remaining == 0 && blocks > 0 {
            break; // the appended decompressed size
        }
        let size = size as usize;
        let Some(data) = input.get(pos..pos.saturating_add(size)) else {
            return Err(err(format!(
                "block {blocks} claims {size} bytes but only {remaining} remain"
            )));
        };
        let n = lz4_flex::block::decompress_into(data, &mut block)
            .map_err(|e| err(format!("block {blocks}: {e}")))?;
        if let Err(e) = out.write_all(block.get(..n).unwrap_or_default()) {
            return Err(if out.overflowed {
                LoaderError::DecompressedTooLarge {
                    format: "lz4",
                    limit: cap,
                }
            } else {
                err(e.to_string())
            });
        }
        pos += size;
        blocks += 1;
    }
    if blocks == 0 {
        return Err(err("the stream holds no block".into()));
    }
    Ok(out.buf)
}

/// Decompresses a bzImage payload of the given kind.
pub fn decompress(kind: Compression, payload: &[u8]) -> Result<Vec<u8>, LoaderError> {
    decompress_capped(kind, payload, MAX_DECOMPRESSED)
}

/// [`decompress`] with the output cap as a parameter, so tests can reach it cheaply.
pub(super) fn decompress_capped(
    kind: Compression,
    payload: &[u8],
    cap: u64,
) -> Result<Vec<u8>, LoaderError> {
    if matches!(kind, Compression::None | Compression::Gzip) {
        return decode_once(kind, payload, cap);
    }
    // First without Linux's appended 4-byte size, then, for payloads built without it,
    // the whole thing; the first error is the one worth reporting, unless the second
    // attempt hit a limit (a header cut short by the trimming hides nothing else).
    let trimmed = payload
        .get(..payload.len().saturating_sub(4))
        .unwrap_or_default();
    match decode_once(kind, trimmed, cap) {
        Ok(v) => Ok(v),
        Err(
            first @ (LoaderError::DecompressedTooLarge { .. } | LoaderError::DecoderMemory { .. }),
        ) => Err(first),
        Err(first) => decode_once(kind, payload, cap).map_err(|second| match second {
            LoaderError::DecompressedTooLarge { .. } | LoaderError::DecoderMemory { .. } => second,
            _ => first,
        }),
    }
}
