//! blkback against a fake grant table and a temporary image file, with a small
//! frontend that writes requests into the ring page as Linux's blkfront would.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use xen_abi::blkif::*;
use zerocopy::{FromBytes, IntoBytes};

use super::*;
use crate::backends::grant::fake::FakeGrants;
use crate::backends::ring::RING_HEADER;

/// A temporary image file, removed when dropped.
struct TempImage {
    path: PathBuf,
}

impl TempImage {
    /// A file of `size` bytes where byte i holds `i / 512 + i % 251` (each sector
    /// different, and not all zero).
    fn new(size: usize) -> TempImage {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "pvkvm-blk-test-{}-{}.img",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        let data: Vec<u8> = (0..size).map(|i| (i / 512 + i % 251) as u8).collect();
        std::fs::write(&path, data).unwrap();
        TempImage { path }
    }

    fn bytes(&self) -> Vec<u8> {
        std::fs::read(&self.path).unwrap()
    }

    fn open(&self, read_only: bool) -> Arc<DiskImage> {
        Arc::new(DiskImage::open_raw(&self.path, read_only).unwrap())
    }
}

impl Drop for TempImage {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The frontend: ring pages at grants 0.., data pages wherever a test grants them.
struct Front {
    g: Arc<FakeGrants>,
    pages: u32,
    entries: u32,
    req_prod: u32,
    rsp_cons: u32,
}

const TABLE: u32 = 4096;

impl Front {
    fn new(pages: u32) -> Front {
        let g = Arc::new(FakeGrants::new(TABLE));
        for i in 0..pages {
            g.grant(i, false);
        }
        Front {
            g,
            pages,
            entries: crate::backends::ring::ring_entries(pages as usize, 112),
            req_prod: 0,
            rsp_cons: 0,
        }
    }

    fn params(&self, persistent: bool) -> FrontendParams {
        FrontendParams {
            ring_refs: (0..self.pages).collect(),
            protocol: Some("x86_64-abi".into()),
            persistent,
        }
    }

    fn connect(&self, disk: Arc<DiskImage>, persistent: bool) -> BlkBackend {
        BlkBackend::connect(self.g.clone(), disk, &self.params(persistent)).unwrap()
    }

    /// Writes bytes into the ring's byte space (which spans its pages).
    fn ring_write(&self, mut off: usize, bytes: &[u8]) {
        for &b in bytes {
            self.g.fill((off / 4096) as u32, off % 4096, &[b]);
            off += 1;
        }
    }

    fn ring_read(&self, off: usize, len: usize) -> Vec<u8> {
        (off..off + len)
            .map(|o| self.g.page((o / 4096) as u32)[o % 4096])
            .collect()
    }

    fn set_req_prod(&self, v: u32) {
        self.g.fill(0, 0, &v.to_le_bytes());
    }

    /// Queues a request (any layout; padded to an entry) and publishes it.
    fn push(&mut self, req: &[u8]) {
        let mut entry = [0u8; 112];
        entry[..req.len()].copy_from_slice(req);
        let off = RING_HEADER + (self.req_prod & (self.entries - 1)) as usize * 112;
        self.ring_write(off, &entry);
        self.req_prod += 1;
        self.set_req_prod(self.req_prod);
    }

    /// The responses published since the last call.
    fn responses(&mut self) -> Vec<BlkifResponse> {
        let prod = u32::from_le_bytes(self.g.page(0)[8..12].try_into().unwrap());
        let mut out = Vec::new();
        while self.rsp_cons != prod {
            let off = RING_HEADER + (self.rsp_cons & (self.entries - 1)) as usize * 112;
            out.push(BlkifResponse::read_from_bytes(&self.ring_read(off, 16)).unwrap());
            self.rsp_cons += 1;
        }
        out
    }

    /// Pushes one request, serves it, and returns its one response.
    fn roundtrip(&mut self, be: &mut BlkBackend, req: &[u8]) -> BlkifResponse {
        self.push(req);
        be.serve().unwrap();
        let mut r = self.responses();
        assert_eq!(r.len(), 1, "one response per request");
        r.remove(0)
    }
}

fn seg(gref: u32, first: u8, last: u8) -> BlkifRequestSegment {
    BlkifRequestSegment {
        gref,
        first_sect: first,
        last_sect: last,
        _pad: [0; 2],
    }
}

fn rw(op: u8, id: u64, sector: u64, segs: &[BlkifRequestSegment]) -> Vec<u8> {
    let mut r = BlkifRequest {
        operation: op,
        nr_segments: segs.len() as u8,
        id,
        sector_number: sector,
        ..Default::default()
    };
    r.seg[..segs.len()].copy_from_slice(segs);
    r.as_bytes().to_vec()
}

fn okay(rsp: &BlkifResponse, id: u64, op: u8) {
    assert_eq!(
        (rsp.id, rsp.operation, rsp.status),
        (id, op, BLKIF_RSP_OKAY),
        "{rsp:?}"
    );
}

fn failed(rsp: &BlkifResponse, id: u64, op: u8) {
    assert_eq!(
        (rsp.id, rsp.operation, rsp.status),
        (id, op, BLKIF_RSP_ERROR),
        "{rsp:?}"
    );
}

/// Disconnects and checks that no grant stays mapped.
fn finish(front: &Front, be: BlkBackend) {
    be.disconnect();
    assert_eq!(front.g.live_mappings(), 0);
}

#[test]
fn write_then_read_round_trips_through_the_image() {
    let img = TempImage::new(64 * 1024);
    let mut f = Front::new(1);
    let mut be = f.connect(img.open(false), false);
    f.g.grant(100, false);
    let data: Vec<u8> = (0..4096).map(|i| (i * 7 % 256) as u8).collect();
    f.g.fill(100, 0, &data);
    let rsp = f.roundtrip(&mut be, &rw(BLKIF_OP_WRITE, 0xabc, 8, &[seg(100, 0, 7)]));
    okay(&rsp, 0xabc, BLKIF_OP_WRITE);
    assert_eq!(&img.bytes()[4096..8192], &data[..]);

    f.g.grant(101, false);
    let rsp = f.roundtrip(&mut be, &rw(BLKIF_OP_READ, 0xdef, 8, &[seg(101, 0, 7)]));
    okay(&rsp, 0xdef, BLKIF_OP_READ);
    assert_eq!(f.g.page(101), data);
    let s = be.stats();
    assert_eq!(
        (s.requests, s.sectors_written, s.sectors_read, s.errors),
        (2, 8, 8, 0)
    );
    finish(&f, be);
}

#[test]
fn multi_segment_requests_use_partial_pages_in_order() {
    let img = TempImage::new(64 * 1024);
    let before = img.bytes();
    let mut f = Front::new(1);
    let mut be = f.connect(img.open(false), false);
    for g in [10, 11, 12] {
        f.g.grant(g, false);
        f.g.fill(g, 0, &[g as u8; 4096]);
    }
    // 3 + 8 + 1 sectors from sector 20.
    let segs = [seg(10, 1, 3), seg(11, 0, 7), seg(12, 2, 2)];
    okay(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_WRITE, 1, 20, &segs)),
        1,
        BLKIF_OP_WRITE,
    );
    let after = img.bytes();
    let at = |s: usize| s * 512;
    assert_eq!(&after[at(20)..at(23)], &[10u8; 1536][..]);
    assert_eq!(&after[at(23)..at(31)], &[11u8; 4096][..]);
    assert_eq!(&after[at(31)..at(32)], &[12u8; 512][..]);
    assert_eq!(&after[..at(20)], &before[..at(20)]);
    assert_eq!(&after[at(32)..], &before[at(32)..]);

    // Read it back into fresh pages at the same offsets.
    for g in [20, 21, 22] {
        f.g.grant(g, false);
    }
    let segs = [seg(20, 1, 3), seg(21, 0, 7), seg(22, 2, 2)];
    okay(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_READ, 2, 20, &segs)),
        2,
        BLKIF_OP_READ,
    );
    assert_eq!(&f.g.page(20)[512..2048], &[10u8; 1536][..]);
    assert_eq!(f.g.page(20)[..512], [0u8; 512]);
    assert_eq!(f.g.page(21), vec![11u8; 4096]);
    assert_eq!(&f.g.page(22)[1024..1536], &[12u8; 512][..]);
    finish(&f, be);
}

#[test]
fn bad_revoked_and_read_only_grants_get_error_responses() {
    let img = TempImage::new(64 * 1024);
    let before = img.bytes();
    let mut f = Front::new(1);
    let mut be = f.connect(img.open(false), false);
    // Outside the table, and never granted.
    failed(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_READ, 1, 0, &[seg(TABLE + 5, 0, 7)])),
        1,
        0,
    );
    failed(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_WRITE, 2, 0, &[seg(300, 0, 7)])),
        2,
        1,
    );
    // Revoked.
    f.g.grant(301, false);
    f.g.revoke(301);
    failed(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_WRITE, 3, 0, &[seg(301, 0, 7)])),
        3,
        1,
    );
    // A read-only grant may feed a disk write but not receive a disk read.
    f.g.grant(302, true);
    failed(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_READ, 4, 0, &[seg(302, 0, 7)])),
        4,
        0,
    );
    assert_eq!(f.g.page(302), vec![0u8; 4096]);
    okay(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_WRITE, 5, 0, &[seg(302, 0, 0)])),
        5,
        1,
    );
    // A write with one bad segment writes nothing at all.
    f.g.grant(303, false);
    f.g.fill(303, 0, &[0xee; 4096]);
    failed(
        &f.roundtrip(
            &mut be,
            &rw(BLKIF_OP_WRITE, 6, 8, &[seg(303, 0, 7), seg(300, 0, 7)]),
        ),
        6,
        1,
    );
    assert_eq!(&img.bytes()[512..], &before[512..]);
    assert_eq!(be.stats().errors, 5);
    finish(&f, be);
}

#[test]
fn malformed_requests_get_error_responses() {
    let img = TempImage::new(64 * 1024); // 128 sectors
    let mut f = Front::new(1);
    let mut be = f.connect(img.open(false), false);
    f.g.grant(100, false);
    let read = |id, sector, segs: &[_]| rw(BLKIF_OP_READ, id, sector, segs);
    // Past the end, straddling it, and wrapping around u64.
    failed(
        &f.roundtrip(&mut be, &read(1, 128, &[seg(100, 0, 0)])),
        1,
        0,
    );
    failed(
        &f.roundtrip(&mut be, &read(2, 121, &[seg(100, 0, 7)])),
        2,
        0,
    );
    failed(
        &f.roundtrip(&mut be, &read(3, u64::MAX, &[seg(100, 0, 1)])),
        3,
        0,
    );
    okay(
        &f.roundtrip(&mut be, &read(4, 120, &[seg(100, 0, 7)])),
        4,
        0,
    );
    // Sectors outside the page, or backwards.
    failed(&f.roundtrip(&mut be, &read(5, 0, &[seg(100, 0, 8)])), 5, 0);
    failed(&f.roundtrip(&mut be, &read(6, 0, &[seg(100, 5, 4)])), 6, 0);
    // No segments, or more than a request holds.
    failed(&f.roundtrip(&mut be, &read(7, 0, &[])), 7, 0);
    let mut r = read(8, 0, &[seg(100, 0, 0)]);
    r[1] = 12;
    failed(&f.roundtrip(&mut be, &r), 8, 0);
    // An unknown operation is "not supported", with id and operation echoed.
    let mut r = read(9, 0, &[seg(100, 0, 0)]);
    r[0] = 4;
    let rsp = f.roundtrip(&mut be, &r);
    assert_eq!(
        (rsp.id, rsp.operation, rsp.status),
        (9, 4, BLKIF_RSP_EOPNOTSUPP)
    );
    r[0] = 0xff;
    assert_eq!(f.roundtrip(&mut be, &r).status, BLKIF_RSP_EOPNOTSUPP);
    finish(&f, be);
}

#[test]
fn a_read_only_disk_refuses_writes_and_says_so() {
    let img = TempImage::new(64 * 1024);
    let before = img.bytes();
    let disk = img.open(true);
    let keys = backend_keys(&disk);
    let key = |k: &str| keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(key("info"), Some("4"));
    assert_eq!(key("feature-discard"), Some("0"));
    let mut f = Front::new(1);
    let mut be = f.connect(disk, false);
    f.g.grant(100, false);
    f.g.fill(100, 0, &[1; 4096]);
    failed(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_WRITE, 1, 0, &[seg(100, 0, 7)])),
        1,
        1,
    );
    failed(
        &f.roundtrip(
            &mut be,
            &rw(BLKIF_OP_FLUSH_DISKCACHE, 2, 0, &[seg(100, 0, 7)]),
        ),
        2,
        BLKIF_OP_FLUSH_DISKCACHE,
    );
    // Reads and data-less flushes still work.
    okay(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_READ, 3, 0, &[seg(100, 0, 7)])),
        3,
        0,
    );
    okay(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_FLUSH_DISKCACHE, 4, 0, &[])),
        4,
        BLKIF_OP_FLUSH_DISKCACHE,
    );
    assert_eq!(img.bytes(), before);
    finish(&f, be);
}

#[test]
fn flush_and_barrier_complete_after_fdatasync() {
    let img = TempImage::new(64 * 1024);
    let disk = img.open(false);
    let keys = backend_keys(&disk);
    let key = |k: &str| keys.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    assert_eq!(key("sectors").as_deref(), Some("128"));
    assert_eq!(key("info").as_deref(), Some("0"));
    assert_eq!(key("sector-size").as_deref(), Some("512"));
    assert_eq!(key("feature-flush-cache").as_deref(), Some("1"));
    assert_eq!(key("feature-barrier").as_deref(), Some("1"));
    assert_eq!(key("feature-persistent").as_deref(), Some("1"));
    assert_eq!(key("feature-max-indirect-segments").as_deref(), Some("256"));
    assert_eq!(key("max-ring-page-order").as_deref(), Some("4"));
    let mut f = Front::new(1);
    let mut be = f.connect(disk, false);
    let rsp = f.roundtrip(&mut be, &rw(BLKIF_OP_FLUSH_DISKCACHE, 7, 0, &[]));
    okay(&rsp, 7, BLKIF_OP_FLUSH_DISKCACHE);
    assert_eq!(be.stats().flushes, 1);
    // Linux's blkfront sends an empty flush with whatever sector number its block layer
    // left (seen: past the disk's end); an empty flush has no range to check.
    let rsp = f.roundtrip(&mut be, &rw(BLKIF_OP_FLUSH_DISKCACHE, 9, u64::MAX, &[]));
    okay(&rsp, 9, BLKIF_OP_FLUSH_DISKCACHE);
    assert_eq!(be.stats().flushes, 2);
    // A barrier with data: flushed before and after its write.
    f.g.grant(100, false);
    f.g.fill(100, 0, &[0x5a; 4096]);
    let rsp = f.roundtrip(
        &mut be,
        &rw(BLKIF_OP_WRITE_BARRIER, 8, 4, &[seg(100, 0, 7)]),
    );
    okay(&rsp, 8, BLKIF_OP_WRITE_BARRIER);
    assert_eq!(be.stats().flushes, 4);
    assert_eq!(be.stats().sectors_written, 8);
    assert_eq!(&img.bytes()[2048..6144], &[0x5a; 4096][..]);
    finish(&f, be);
}

#[test]
fn discard_punches_a_hole_or_is_not_supported() {
    let img = TempImage::new(1 << 20);
    let disk = img.open(false);
    let mut f = Front::new(1);
    let supported = disk.supports_discard();
    let mut be = f.connect(disk, false);
    let blocks = || std::fs::metadata(&img.path).unwrap().blocks();
    let before = blocks();
    let discard = |id, sector, n| {
        BlkifRequestDiscard {
            operation: BLKIF_OP_DISCARD,
            id,
            sector_number: sector,
            nr_sectors: n,
            ..Default::default()
        }
        .as_bytes()
        .to_vec()
    };
    let rsp = f.roundtrip(&mut be, &discard(1, 0, 1024));
    if !supported {
        // A filesystem without hole punching: the backend says so instead.
        assert_eq!(rsp.status, BLKIF_RSP_EOPNOTSUPP);
        finish(&f, be);
        return;
    }
    okay(&rsp, 1, BLKIF_OP_DISCARD);
    assert!(blocks() < before, "blocks {} -> {}", before, blocks());
    let bytes = img.bytes();
    assert!(bytes[..512 * 1024].iter().all(|&b| b == 0));
    assert_ne!(&bytes[512 * 1024..512 * 1024 + 512], &[0u8; 512][..]);
    assert_eq!(bytes.len(), 1 << 20);
    assert_eq!(be.stats().sectors_discarded, 1024);
    // Out of range and overflowing ranges are errors.
    failed(
        &f.roundtrip(&mut be, &discard(2, 2000, 100)),
        2,
        BLKIF_OP_DISCARD,
    );
    failed(
        &f.roundtrip(&mut be, &discard(3, 1, u64::MAX)),
        3,
        BLKIF_OP_DISCARD,
    );
    okay(
        &f.roundtrip(&mut be, &discard(4, 2047, 1)),
        4,
        BLKIF_OP_DISCARD,
    );
    finish(&f, be);
}

fn indirect(op: u8, id: u64, sector: u64, nr: u16, pages: &[u32]) -> Vec<u8> {
    let mut r = BlkifRequestIndirect {
        operation: BLKIF_OP_INDIRECT,
        indirect_op: op,
        nr_segments: nr,
        id,
        sector_number: sector,
        ..Default::default()
    };
    r.indirect_grefs[..pages.len()].copy_from_slice(pages);
    r.as_bytes().to_vec()
}

#[test]
fn indirect_requests_carry_32_segments() {
    let img = TempImage::new(1 << 20);
    let mut f = Front::new(1);
    let mut be = f.connect(img.open(false), false);
    // The descriptor page, then 32 data pages of one byte value each.
    f.g.grant(50, true);
    let segs: Vec<BlkifRequestSegment> = (0..32).map(|i| seg(200 + i, 0, 7)).collect();
    f.g.fill(50, 0, segs.as_bytes());
    for i in 0..32 {
        f.g.grant(200 + i, false);
        f.g.fill(200 + i, 0, &[i as u8 + 1; 4096]);
    }
    let rsp = f.roundtrip(&mut be, &indirect(BLKIF_OP_WRITE, 11, 64, 32, &[50]));
    // Answered with the operation inside (Linux's blkfront checks it).
    okay(&rsp, 11, BLKIF_OP_WRITE);
    let bytes = img.bytes();
    for i in 0..32usize {
        let at = 64 * 512 + i * 4096;
        assert_eq!(&bytes[at..at + 4096], &[i as u8 + 1; 4096][..], "page {i}");
    }
    // Read them back into other pages.
    let segs: Vec<BlkifRequestSegment> = (0..32).map(|i| seg(400 + i, 0, 7)).collect();
    f.g.grant(51, false);
    f.g.fill(51, 0, segs.as_bytes());
    for i in 0..32 {
        f.g.grant(400 + i, false);
    }
    let rsp = f.roundtrip(&mut be, &indirect(BLKIF_OP_READ, 12, 64, 32, &[51]));
    okay(&rsp, 12, BLKIF_OP_READ);
    for i in 0..32 {
        assert_eq!(f.g.page(400 + i), vec![i as u8 + 1; 4096]);
    }
    assert_eq!(be.stats().sectors_read, 256);
    // Too many segments, none, a bad descriptor page, a bad inner operation: each
    // answered with the inner operation, as Linux's blkback does.
    failed(
        &f.roundtrip(&mut be, &indirect(0, 13, 0, 257, &[51])),
        13,
        0,
    );
    failed(&f.roundtrip(&mut be, &indirect(0, 14, 0, 0, &[51])), 14, 0);
    failed(
        &f.roundtrip(&mut be, &indirect(0, 15, 0, 32, &[999])),
        15,
        0,
    );
    failed(&f.roundtrip(&mut be, &indirect(3, 16, 0, 32, &[51])), 16, 3);
    finish(&f, be);
}

#[test]
fn persistent_grants_are_mapped_once_and_reused() {
    let img = TempImage::new(64 * 1024);
    let mut f = Front::new(1);
    let mut be = f.connect(img.open(false), true);
    f.g.grant(100, false);
    f.g.grant(101, false);
    let segs = [seg(100, 0, 7), seg(101, 0, 7)];
    okay(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_WRITE, 1, 0, &segs)),
        1,
        1,
    );
    assert_eq!(be.persistent_grants(), 2);
    // The ring page and the two grants.
    assert_eq!(f.g.live_mappings(), 3);
    for id in 2..10 {
        let op = if id % 2 == 0 {
            BLKIF_OP_READ
        } else {
            BLKIF_OP_WRITE
        };
        okay(&f.roundtrip(&mut be, &rw(op, id, 0, &segs)), id, op);
        assert_eq!(f.g.live_mappings(), 3);
    }
    // A revoked grant stays usable while mapped, as on Xen.
    f.g.revoke(100);
    okay(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_READ, 10, 0, &segs)),
        10,
        0,
    );
    // A read-only grant still takes a write through a one-off mapping.
    f.g.grant(102, true);
    okay(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_WRITE, 11, 0, &[seg(102, 0, 0)])),
        11,
        1,
    );
    assert_eq!(be.persistent_grants(), 2);
    assert_eq!(f.g.live_mappings(), 3);
    finish(&f, be);
}

#[test]
fn a_ring_overrun_is_a_broken_frontend() {
    let img = TempImage::new(64 * 1024);
    let f = Front::new(1);
    let mut be = f.connect(img.open(false), false);
    f.set_req_prod(33);
    let e = be.serve().unwrap_err();
    assert!(matches!(e, BlkError::FrontendBroken(_)), "{e}");
    assert!(e.to_string().contains("frontend is broken"));
    finish(&f, be);
}

#[test]
fn a_multi_page_ring_serves_many_requests_and_notifies() {
    let img = TempImage::new(64 * 1024);
    let mut f = Front::new(4);
    let mut be = f.connect(img.open(false), false);
    assert_eq!(f.entries, 128);
    f.g.grant(100, false);
    // The frontend waits for the first response.
    f.g.fill(0, 12, &1u32.to_le_bytes());
    for id in 0..100 {
        f.push(&rw(BLKIF_OP_READ, id, id % 16, &[seg(100, 0, 0)]));
    }
    assert!(be.serve().unwrap());
    assert!(!be.more_pending());
    let rsps = f.responses();
    assert_eq!(rsps.len(), 100);
    for (i, r) in rsps.iter().enumerate() {
        okay(r, i as u64, 0);
    }
    // The backend asked to hear of the next request.
    assert_eq!(
        u32::from_le_bytes(f.g.page(0)[4..8].try_into().unwrap()),
        101
    );
    // Nothing new: nothing to notify.
    assert!(!be.serve().unwrap());
    finish(&f, be);
}

#[test]
fn connect_refuses_what_it_cannot_serve_without_leaking() {
    let img = TempImage::new(64 * 1024);
    let disk = img.open(false);
    let f = Front::new(2);
    let try_connect = |p: FrontendParams| BlkBackend::connect(f.g.clone(), disk.clone(), &p);
    let mut p = f.params(false);
    p.protocol = Some("x86_32-abi".into());
    assert!(matches!(try_connect(p.clone()), Err(BlkError::Protocol32)));
    p.protocol = Some("arm-abi".into());
    assert!(matches!(try_connect(p), Err(BlkError::UnknownProtocol(_))));
    let mut p = f.params(false);
    p.ring_refs = vec![0, 1, 2];
    assert!(matches!(try_connect(p), Err(BlkError::RingPages(3))));
    // The second page is not granted: the first is given back.
    let mut p = f.params(false);
    p.ring_refs = vec![0, 77];
    assert!(matches!(
        try_connect(p),
        Err(BlkError::RingMap { gref: 77, .. })
    ));
    assert_eq!(f.g.live_mappings(), 0);
    let p = FrontendParams {
        protocol: None,
        ..f.params(false)
    };
    let be = try_connect(p).unwrap();
    finish(&f, be);
}

#[test]
fn frontend_params_come_from_the_frontend_keys() {
    let keys = |pairs: &'static [(&'static str, &'static str)]| {
        move |k: &str| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    };
    let p = FrontendParams::from_keys(keys(&[("ring-ref", "8"), ("event-channel", "3")])).unwrap();
    assert_eq!(
        p,
        FrontendParams {
            ring_refs: vec![8],
            protocol: None,
            persistent: false
        }
    );
    let p = FrontendParams::from_keys(keys(&[
        ("ring-page-order", "1"),
        ("ring-ref0", "9"),
        ("ring-ref1", "10"),
        ("protocol", "x86_64-abi"),
        ("feature-persistent", "1"),
    ]))
    .unwrap();
    assert_eq!(p.ring_refs, vec![9, 10]);
    assert!(p.persistent);
    assert_eq!(p.protocol.as_deref(), Some("x86_64-abi"));
    assert!(
        FrontendParams::from_keys(keys(&[("ring-page-order", "1"), ("ring-ref0", "9")])).is_err()
    );
    assert!(FrontendParams::from_keys(keys(&[("ring-page-order", "9")])).is_err());
    assert!(FrontendParams::from_keys(keys(&[("ring-ref", "x")])).is_err());
    assert!(FrontendParams::from_keys(keys(&[])).is_err());
}

#[test]
fn a_second_writer_is_refused_by_the_lock() {
    let img = TempImage::new(4096);
    let first = img.open(false);
    let e = DiskImage::open_raw(&img.path, false).unwrap_err();
    assert!(matches!(e, ImageError::Locked { .. }));
    assert!(
        e.to_string()
            .contains("is in use by another process (locked)"),
        "{e}"
    );
    assert!(DiskImage::open_raw(&img.path, true).is_err());
    drop(first);
    // Readers share.
    let a = img.open(true);
    let b = img.open(true);
    assert!(DiskImage::open_raw(&img.path, false).is_err());
    drop((a, b));
    assert!(DiskImage::open_raw(&img.path, false).is_ok());
}

#[test]
fn images_that_cannot_be_served_are_refused_clearly() {
    let e = DiskImage::open_raw(std::path::Path::new("/nonexistent/pvkvm.img"), false).unwrap_err();
    assert!(matches!(e, ImageError::Open { .. }), "{e}");
    let e = DiskImage::open_raw(&std::env::temp_dir(), true).unwrap_err();
    assert!(
        matches!(e, ImageError::NotADisk { .. } | ImageError::Open { .. }),
        "{e}"
    );
    let img = TempImage::new(4096);
    let spec = DiskSpec::parse(&format!("{},format=qcow2", img.path.display())).unwrap();
    // A raw file is not a qcow2 image.
    let e = DiskImage::open(&spec).unwrap_err();
    assert!(matches!(e, ImageError::Qcow2 { .. }), "{e}");
    assert!(e.to_string().contains("qcow2 image"), "{e}");
    let spec = DiskSpec::parse(&format!("{}", img.path.display())).unwrap();
    let d = DiskImage::open(&spec).unwrap();
    assert_eq!((d.size(), d.sectors(), d.read_only()), (4096, 8, false));
}

#[test]
fn disk_specs_parse_the_command_line_syntax() {
    let s = DiskSpec::parse("/img/a.raw").unwrap();
    assert_eq!(
        s,
        DiskSpec {
            path: "/img/a.raw".into(),
            format: DiskFormat::Raw,
            vdev: None,
            read_only: false
        }
    );
    let s = DiskSpec::parse("b.qcow2,format=qcow2,vdev=xvdb1,ro").unwrap();
    assert_eq!(s.format, DiskFormat::Qcow2);
    assert_eq!(s.vdev, Vdev::new(1, 1));
    assert!(s.read_only);
    assert!(DiskSpec::parse("c,readonly").unwrap().read_only);
    let err = |s: &str| DiskSpec::parse(s).unwrap_err();
    assert_eq!(err(",ro"), SpecError::NoPath(",ro".into()));
    assert_eq!(err("a,format=vmdk"), SpecError::BadFormat("vmdk".into()));
    assert_eq!(
        err("a,cache=none"),
        SpecError::UnknownOption("cache=none".into())
    );
    assert_eq!(err("a,ro,ro"), SpecError::Repeated("ro".into()));
    assert_eq!(err("a,vdev=hda"), SpecError::BadVdev("hda".into()));
    assert!(err("a,ro=1").to_string().contains("\"ro=1\""));
}

#[test]
fn vdev_names_and_numbers_follow_xen() {
    let v = |s: &str| Vdev::parse(s).unwrap();
    assert_eq!(v("xvda").devid(), 51712);
    assert_eq!(v("xvda1").devid(), 51713);
    assert_eq!(v("xvdb").devid(), 202 << 8 | 1 << 4);
    assert_eq!(v("xvdp15").devid(), 202 << 8 | 15 << 4 | 15);
    // Disk 16 and partition 16 need the extended form.
    assert_eq!(v("xvdq").devid(), 1 << 28 | 16 << 8);
    assert_eq!(v("xvda16").devid(), 1 << 28 | 16);
    assert_eq!(v("xvdz").disk(), 25);
    assert_eq!(v("xvdaa").disk(), 26);
    assert_eq!(v("xvdtq37"), Vdev::new(536, 37).unwrap());
    assert_eq!(v("d536p37").name(), "xvdtq37");
    assert_eq!(v("d0").name(), "xvda");
    for name in [
        "xvda", "xvdz", "xvdaa", "xvdzz", "xvdaaa", "xvdb255", "xvdq",
    ] {
        assert_eq!(v(name).name(), name);
        assert_eq!(v(name).to_string(), name);
    }
    for bad in [
        "", "xvd", "xvd1", "xvdA", "sda", "xvda0", "xvda01", "xvda-1", "dx", "d1p",
    ] {
        assert!(
            matches!(Vdev::parse(bad), Err(SpecError::BadVdev(_))),
            "{bad}"
        );
    }
    for far in ["xvda256", "xvdzzzzz", "d1048576"] {
        assert!(
            matches!(Vdev::parse(far), Err(SpecError::VdevRange(_))),
            "{far}"
        );
    }
    assert_eq!(Vdev::new(1 << 20, 0), None);
}

/// Formats `path` as an empty qcow2 image of `size` bytes, over `backing` (a raw
/// file's name, relative to the image) when given.
fn make_qcow2(path: &std::path::Path, size: u64, backing: Option<&str>) {
    use imago::{FormatCreateBuilder, Storage, StorageCreateOptions};
    let storage =
        imago::file::File::create_open(StorageCreateOptions::new().filename(path)).unwrap();
    let mut b = imago::qcow2::Qcow2::<imago::file::File>::create_builder(storage).size(size);
    if let Some(name) = backing {
        b = b.backing(name.to_string(), "raw".to_string());
    }
    b.create().unwrap();
}

#[test]
fn qcow2_images_serve_writes_over_their_backing_file() {
    let base = TempImage::new(256 * 1024);
    let base_bytes = base.bytes();
    let overlay = TempImage {
        path: base.path.with_extension("qcow2"),
    };
    let _ = std::fs::remove_file(&overlay.path);
    let base_name = base.path.file_name().unwrap().to_str().unwrap();
    make_qcow2(&overlay.path, 256 * 1024, Some(base_name));
    let spec = DiskSpec::parse(&format!("{},format=qcow2", overlay.path.display())).unwrap();
    let disk = Arc::new(DiskImage::open(&spec).unwrap());
    assert_eq!((disk.format(), disk.sectors()), (DiskFormat::Qcow2, 512));
    assert!(!disk.supports_discard());
    // The image is locked like a raw one.
    assert!(matches!(
        DiskImage::open(&spec),
        Err(ImageError::Locked { .. })
    ));

    let mut f = Front::new(1);
    let mut be = f.connect(disk, false);
    // Unwritten sectors come from the backing file.
    f.g.grant(100, false);
    okay(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_READ, 1, 16, &[seg(100, 0, 7)])),
        1,
        0,
    );
    assert_eq!(f.g.page(100), &base_bytes[16 * 512..24 * 512]);
    // Writes land in the overlay, not the backing file.
    f.g.grant(101, false);
    f.g.fill(101, 0, &[0x77; 4096]);
    okay(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_WRITE, 2, 20, &[seg(101, 0, 7)])),
        2,
        1,
    );
    okay(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_FLUSH_DISKCACHE, 3, 0, &[])),
        3,
        3,
    );
    f.g.grant(102, false);
    okay(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_READ, 4, 16, &[seg(102, 0, 7)])),
        4,
        0,
    );
    assert_eq!(&f.g.page(102)[..2048], &base_bytes[16 * 512..20 * 512]);
    assert_eq!(&f.g.page(102)[2048..], &[0x77; 2048][..]);
    assert_eq!(base.bytes(), base_bytes);
    // Discard is refused as unsupported; reads past the end are errors.
    let d = BlkifRequestDiscard {
        operation: BLKIF_OP_DISCARD,
        id: 5,
        nr_sectors: 8,
        ..Default::default()
    };
    assert_eq!(
        f.roundtrip(&mut be, d.as_bytes()).status,
        BLKIF_RSP_EOPNOTSUPP
    );
    failed(
        &f.roundtrip(&mut be, &rw(BLKIF_OP_READ, 6, 510, &[seg(102, 0, 7)])),
        6,
        0,
    );
    let d = Arc::clone(be.disk());
    finish(&f, be);
    drop(d);

    // The data survives closing and reopening the overlay.
    let disk = DiskImage::open(&spec).unwrap();
    let mut buf = vec![0u8; 4096];
    disk.read_at(&mut buf, 20 * 512).unwrap();
    assert_eq!(buf, vec![0x77; 4096]);
    drop(disk);
    // Read-only, it refuses writes.
    let ro = DiskImage::open_qcow2(&overlay.path, true).unwrap();
    assert!(ro.write_at(&[1; 512], 0).is_err());
}
