//! Decompression bombs and forged headers (issue 10, point 4): every decoder streams into
//! a buffer capped at the limit and stops there, whatever size the image claims, and the
//! decoders' own memory (xz/lzma dictionary, zstd window) is refused above its limit
//! before it is allocated. Peak memory is measured, not assumed: the test binary's
//! allocator counts the live bytes of each thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use super::decompress::{self, DECODER_MEM_MAX, MAX_DECOMPRESSED};
use super::tests::{bzimage, bzip2, gzip, lz4_legacy, lzma, xz, zstd};
use super::*;

/// The system allocator, counting each thread's live bytes and their peak.
struct CountingAlloc;

thread_local! {
    // Const-initialised `Cell`s: reading them never allocates and needs no destructor,
    // so the allocator may use them.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn count(delta: isize) {
    let _ = LIVE.try_with(|live| {
        let now = live.get().wrapping_add(delta);
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

// SAFETY: every call is forwarded to `System` with the caller's own arguments; the
// counting touches only thread-local integers.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's contract for `alloc` is `System.alloc`'s.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            count(layout.size() as isize);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        count(-(layout.size() as isize));
        // SAFETY: `ptr` came from this allocator, that is from `System`, with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from `System` with `layout`; the rest is the caller's contract.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            count(new_size as isize - layout.size() as isize);
        }
        p
    }
}

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result with the most memory this thread held at once during
/// it, beyond what it held before.
fn peak_during<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(start));
    let r = f();
    let peak = PEAK.with(Cell::get);
    (r, usize::try_from(peak - start).unwrap_or(0))
}

/// Fixed decoder state besides the output and the dictionary/window: bzip2's tables
/// (about 3.6 MiB at level 9), lz4's 8 MiB block buffer, and small change.
const DECODER_STATE: usize = 12 << 20;

/// xz-utils' `xz --format=xz --check=none --x86 --lzma2=dict=1MiB` of 8 MiB of zeros:
/// one block (the x86 BCJ filter and LZMA2, as Linux's payloads), 1348 bytes.
const XZ_ZEROS_8MIB: &[u8] = include_bytes!("testdata/zeros-8mib.xz");

/// xz's variable-length integer.
fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = flate2::Crc::new();
    c.update(bytes);
    c.sum()
}

/// An xz stream of `blocks` copies of [`XZ_ZEROS_8MIB`]'s block: `blocks * 8` MiB of
/// zeros in about `blocks * 1.3` KiB. Every block starts its LZMA2 afresh, so copies
/// verbatim are valid; the index and footer are rebuilt for the new count.
fn xz_zeros(blocks: u64) -> Vec<u8> {
    let f = XZ_ZEROS_8MIB;
    let footer = &f[f.len() - 12..];
    let backward = u32::from_le_bytes(footer[4..8].try_into().unwrap());
    let index_len = (backward as usize + 1) * 4;
    let block = &f[12..f.len() - 12 - index_len];
    // The fixture's index: indicator 0, one record (unpadded size, uncompressed size).
    let index = &f[f.len() - 12 - index_len..f.len() - 12];
    assert_eq!(index[..2], [0x00, 0x01], "one record");
    let mut unpadded = 0u64;
    for (i, &b) in index[2..].iter().enumerate() {
        unpadded |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            break;
        }
    }
    let mut out = f[..12].to_vec();
    for _ in 0..blocks {
        out.extend_from_slice(block);
    }
    let mut index = vec![0x00];
    varint(&mut index, blocks);
    for _ in 0..blocks {
        varint(&mut index, unpadded);
        varint(&mut index, 8 << 20);
    }
    while index.len() % 4 != 0 {
        index.push(0);
    }
    index.extend_from_slice(&crc32(&index).to_le_bytes());
    let mut tail = ((index.len() / 4 - 1) as u32).to_le_bytes().to_vec();
    tail.extend_from_slice(&f[f.len() - 4..f.len() - 2]); // stream flags (check: none)
    out.extend_from_slice(&index);
    out.extend_from_slice(&crc32(&tail).to_le_bytes());
    out.extend_from_slice(&tail);
    out.extend_from_slice(b"YZ");
    out
}

#[test]
fn the_xz_zeros_generator_makes_valid_streams() {
    for blocks in [1, 3] {
        let out = decompress::decompress(Compression::Xz, &xz_zeros(blocks)).unwrap();
        assert_eq!(out.len() as u64, blocks * (8 << 20));
        assert!(out.iter().all(|&b| b == 0));
    }
}

/// A decompression bomb ends with DecompressedTooLarge at the cap, in every format, and
/// output of exactly the cap is still accepted.
#[test]
fn every_decoder_stops_at_the_cap() {
    let raw = vec![0u8; 256 << 10];
    let cases: [(Compression, Vec<u8>); 6] = [
        (Compression::Gzip, gzip(&raw)),
        (Compression::Xz, xz(&raw)),
        (Compression::Lzma, lzma(&raw)),
        (Compression::Zstd, zstd(&raw)),
        (Compression::Bzip2, bzip2(&raw)),
        (Compression::Lz4Legacy, lz4_legacy(&raw)),
    ];
    for (kind, payload) in cases {
        let cap = 64 << 10;
        match decompress::decompress_capped(kind, &payload, cap) {
            Err(LoaderError::DecompressedTooLarge { limit, .. }) => assert_eq!(limit, cap),
            other => panic!("{kind:?}: expected DecompressedTooLarge, got {other:?}"),
        }
        let exact = decompress::decompress_capped(kind, &payload, raw.len() as u64)
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        assert_eq!(exact.len(), raw.len(), "{kind:?}");
    }
}

/// 64 MiB of zeros against an 8 MiB cap, in every format, with Linux's appended size word
/// forged to claim 4 GiB - 1: the error comes at the cap and the thread never holds more
/// than the cap plus the decoder's fixed state, so nothing was sized from a claim and
/// nothing was decoded past the cap.
#[test]
fn bombs_stop_at_the_cap_with_bounded_memory() {
    const RAW: usize = 64 << 20;
    const CAP: u64 = 8 << 20;
    let raw = vec![0u8; RAW];
    let cases: [(Compression, Vec<u8>); 6] = [
        (Compression::Gzip, gzip(&raw)),
        (Compression::Xz, xz_zeros((RAW >> 23) as u64)),
        (Compression::Lzma, lzma(&raw[..16 << 20])),
        (Compression::Zstd, zstd(&raw)),
        (Compression::Bzip2, bzip2(&raw)),
        (Compression::Lz4Legacy, lz4_legacy(&raw)),
    ];
    drop(raw);
    for (kind, mut payload) in cases {
        if kind != Compression::Gzip {
            payload.extend_from_slice(&u32::MAX.to_le_bytes());
        }
        let (res, peak) = peak_during(|| decompress::decompress_capped(kind, &payload, CAP));
        match res {
            Err(e @ LoaderError::DecompressedTooLarge { .. }) => {
                assert_eq!(
                    e.to_string(),
                    format!(
                        "the kernel's {}-compressed payload expands beyond 8 MiB, more than \
                         pvkvm loads",
                        kind.name()
                    )
                );
            }
            other => panic!("{kind:?}: expected DecompressedTooLarge, got {other:?}"),
        }
        assert!(
            peak <= CAP as usize + DECODER_STATE,
            "{kind:?}: {} KiB held at once for an {} KiB cap",
            peak >> 10,
            CAP >> 10
        );
    }
}

/// The case of the issue: an xz bzImage of under 200 KiB whose payload expands to more
/// than 1 GiB (Linux's appended size word claiming 6 GiB, truncated to 32 bits as Linux
/// writes it). Decoding stops at the real 1 GiB cap with the loader's error, and memory
/// stays at the cap plus the 1 MiB dictionary, never the claim. About 3 s in release.
#[test]
#[cfg_attr(debug_assertions, ignore = "decodes 1 GiB; run in release")]
fn xz_bomb_stops_at_the_real_cap() {
    let blocks = (MAX_DECOMPRESSED >> 23) + 4; // 1056 MiB
    let mut payload = xz_zeros(blocks);
    payload.extend_from_slice(&((6u64 << 30) as u32).to_le_bytes());
    assert!(payload.len() < 200 << 10);
    let image = bzimage(&payload, 27);
    let t = std::time::Instant::now();
    let (res, peak) = peak_during(|| KernelImage::parse(&image));
    match res {
        Err(e @ LoaderError::DecompressedTooLarge { .. }) => assert_eq!(
            e.to_string(),
            "the kernel's xz-compressed payload expands beyond 1024 MiB, more than pvkvm loads"
        ),
        other => panic!("expected DecompressedTooLarge, got {other:?}"),
    }
    assert!(
        peak <= MAX_DECOMPRESSED as usize + DECODER_STATE,
        "{} MiB held at once",
        peak >> 20
    );
    eprintln!(
        "xz bomb: stopped at 1 GiB in {:?}, peak {} MiB",
        t.elapsed(),
        peak >> 20
    );
}

/// The dictionary size and the zstd window are header fields (up to 4 GiB and terabytes);
/// forged ones are refused before the decoder allocates, with the loader's own error.
#[test]
fn forged_dictionary_and_window_sizes_are_refused() {
    // .lzma: properties 0x5d, a dictionary of `dict` bytes, unknown size, some data.
    for dict in [0xc000_0000u32, 512 << 20] {
        let mut forged = vec![0x5d];
        forged.extend_from_slice(&dict.to_le_bytes());
        forged.extend_from_slice(&u64::MAX.to_le_bytes());
        forged.extend_from_slice(&[0; 64]);
        let (e, peak) =
            peak_during(|| decompress::decompress(Compression::Lzma, &forged).unwrap_err());
        assert_eq!(
            e.to_string(),
            format!(
                "the kernel's lzma-compressed payload asks for a dictionary of {} MiB, more \
                 than the 256 MiB of decoder memory pvkvm allows",
                dict >> 20
            )
        );
        assert!(peak < 1 << 20, "{peak}");
    }

    // xz: the fixture's block header is 02 01 | 04 00 | 21 01 <dict> | 00 | CRC32; the
    // LZMA2 dictionary property 40 means 4 GiB - 1, 38 2 GiB, 34 512 MiB (under the old
    // 1 GiB limit, over today's 256 MiB), 31 192 MiB (accepted; the payload decodes).
    for (prop, refused) in [(40u8, true), (38, true), (34, true), (31, false)] {
        let mut forged = include_bytes!("testdata/x86-bcj.xz").to_vec();
        assert_eq!(forged[16..18], [0x21, 0x01]);
        forged[18] = prop;
        let crc = crc32(&forged[12..20]);
        forged[20..24].copy_from_slice(&crc.to_le_bytes());
        let (res, peak) = peak_during(|| decompress::decompress(Compression::Xz, &forged));
        if refused {
            let e = res.unwrap_err();
            assert!(
                matches!(
                    e,
                    LoaderError::DecoderMemory {
                        what: "dictionary",
                        ..
                    }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains("memory"), "{e}");
            assert!(peak < 1 << 20, "{peak}");
        } else {
            assert_eq!(res.unwrap().len(), 8 << 10);
        }
    }

    // zstd: a window descriptor of exponent 31 (2 TiB); single-segment frames whose
    // window is their content size, 1 GiB; and one within the limit.
    let frames: [(&[u8], Option<u64>); 3] = [
        (
            &[0x28, 0xb5, 0x2f, 0xfd, 0x00, 31 << 3, 0, 0, 0],
            Some(1 << 41),
        ),
        (
            &[0x28, 0xb5, 0x2f, 0xfd, 0xa0, 0, 0, 0, 0x40, 0, 0, 0, 0],
            Some(1 << 30),
        ),
        (&[0x28, 0xb5, 0x2f, 0xfd, 0x00, 18 << 3, 0, 0, 0], None),
    ];
    for (frame, refused) in frames {
        let (res, peak) = peak_during(|| decompress::decompress(Compression::Zstd, frame));
        let e = res.unwrap_err();
        match refused {
            Some(need) => {
                assert_eq!(
                    e.to_string(),
                    format!(
                        "the kernel's zstd-compressed payload asks for a window of {} MiB, \
                         more than the 256 MiB of decoder memory pvkvm allows",
                        need >> 20
                    )
                );
                assert!(peak < 1 << 20, "{peak}");
            }
            // 256 MiB: allowed, and then the (empty) frame's damage is reported.
            None => assert!(matches!(e, LoaderError::Decompress { .. }), "{e:?}"),
        }
    }
    assert_eq!(DECODER_MEM_MAX, 256 << 20);
}
