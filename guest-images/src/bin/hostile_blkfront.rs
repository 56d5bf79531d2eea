//! `hostile_blkfront`: a block frontend that connects to `device/vbd/51712` (xvda) the
//! way Linux's xen-blkfront does, then sends good and hostile requests and checks the
//! backend's answers. Run with a disk whose byte i is `(i % 251) as u8` (the host test
//! `vmm/tests/blk_hostile.rs` makes one).
//!
//! Output: one line per case, `HOSTILE-BLK <case> status=<response status> ok` or
//! `... FAIL: <why>`, then `blkfront: summary: <n> ok, <m> FAIL` and
//! `HOSTILE-BLK done`, then `SCHEDOP_shutdown(poweroff)` whatever the verdict (the host
//! test judges the lines; there is no `Test result:` line). Every wait is bounded: without
//! a backend the kernel prints `HOSTILE-BLK connect status=none FAIL: no backend ...` and
//! powers off. With `stuck-backend` on the command line it names a node of its own that
//! stays in state 1 as the backend, to show the wait for InitWait is bounded too.
//!
//! Connection (Xen `public/io/blkif.h`, Linux `drivers/block/xen-blkfront.c`): read
//! `device/vbd/51712/backend`; wait until the backend's `state` is 2 (InitWait); grant
//! the ring page rw to domain 0, `EVTCHNOP_alloc_unbound(remote_dom 0)`, write
//! `ring-ref`, `event-channel`, `protocol` = `x86_64-abi`, `state` = 3; wait for the
//! backend's `state` 4 (Connected); read `sectors`; write `state` = 4.
//!
//! Cases and the response each expects (`BLKIF_RSP_OKAY` 0, `ERROR` -1, `EOPNOTSUPP` -2):
//!  1. `good-read`: sector 0 into a granted rw page: 0, and the page holds the image
//!     pattern; the grant is no longer marked in use afterwards.
//!  2. `bad-gref`: a segment with grant reference 100000 (past the table): -1.
//!  3. `unfilled-grant`: a reference whose entry is all zero: -1.
//!  4. `foreign-frame`: a rw grant of MFN 0xfffff0 (not the guest's): -1.
//!  5. `readonly-grant`: a read into a `GTF_readonly` grant: -1, the page unchanged.
//!  6. `pagetable-page`: a read into a rw grant of one of the guest's own L1 pagetable
//!     frames: -1, the pagetable unchanged.
//!  7. `too-many-segments` (nr_segments 12): -1; `zero-segments` (a read with none): -1.
//!  8. `bad-sector-range` (first_sect 7, last_sect 0): -1; `past-end` (sector_number =
//!     the disk's `sectors`): -1.
//!  9. `unknown-op` (operation 99): -2.
//! 10. `write` of sector [`WRITE_SECTOR`] (512 bytes of [`written_byte`]) from a read-only
//!     grant: 0; `read-back` of it: 0, the same bytes, and the rest of the page untouched.
//! 11. `flush` (`BLKIF_OP_FLUSH_DISKCACHE`, no segments): 0.
//! 12. `ring-overflow`: the shared `req_prod` set to `rsp_prod + 1000` and notified; the
//!     backend must stop serving the ring without taking the VMM down; the kernel then
//!     prints `HOSTILE-BLK ring-overflow survived ok` (it is still running).
#![no_std]
#![no_main]

use core::fmt;
use pv_test_kernels::blkfront::FrontRing;
use pv_test_kernels::console::finish;
use pv_test_kernels::evtchn::{self, Events};
use pv_test_kernels::gnttab::{GrantTable, FIRST_FREE_REF, GTF_READING, GTF_WRITING};
use pv_test_kernels::mm;
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::xen_abi::blkif::{
    BlkifRequest, BlkifRequestSegment, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_FLUSH_DISKCACHE,
    BLKIF_OP_READ, BLKIF_OP_WRITE, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    SECTOR_SIZE,
};
use pv_test_kernels::xen_abi::sched::SHUTDOWN_POWEROFF;
use pv_test_kernels::xen_abi::xenbus;
use pv_test_kernels::xenstore::{parse_u64, Xenstore};
use pv_test_kernels::{cmdline_arg, println, test_kernel, xs_path, StartInfo};

test_kernel!(main);

/// The frontend directory (relative to the domain's home) of xvda: 202 << 8 = 51712.
const VBD: &str = "device/vbd/51712";
/// The sector case 10 writes (the host test checks only this one changed).
pub const WRITE_SECTOR: u64 = 9;
/// Byte `i` of what case 10 writes.
pub fn written_byte(i: u64) -> u8 {
    ((i * 7 + 3) as u8) ^ 0x5a
}
/// Byte `i` of the disk image the host test prepares.
fn image_byte(i: u64) -> u8 {
    (i % 251) as u8
}

// Slack frames.
const SHINFO_SLOT: u64 = 30;
const GNT_SLOT: u64 = 31;
const XS_FALLBACK_SLOT: u64 = 32;
const RING_SLOT: u64 = 40;
const DATA_SLOT: u64 = 41;
const RO_SLOT: u64 = 42;
const WRITE_SLOT: u64 = 43;
const READBACK_SLOT: u64 = 44;

// Grant references.
const RING_REF: u32 = FIRST_FREE_REF;
const DATA_REF: u32 = FIRST_FREE_REF + 1;
const RO_REF: u32 = FIRST_FREE_REF + 2;
const UNFILLED_REF: u32 = FIRST_FREE_REF + 3;
const FOREIGN_REF: u32 = FIRST_FREE_REF + 4;
const PT_REF: u32 = FIRST_FREE_REF + 5;
const WRITE_REF: u32 = FIRST_FREE_REF + 6;
const READBACK_REF: u32 = FIRST_FREE_REF + 7;
/// A reference far past the one-frame table.
const BAD_REF: u32 = 100_000;
/// A machine frame beyond the guest's RAM.
const FOREIGN_MFN: u64 = 0xff_fff0;
/// Backend domain.
const BACKEND_DOM: u16 = 0;

/// How long a connection step may wait for the backend, and a request for its response.
const STATE_TIMEOUT_MS: u64 = 10_000;
const RESPONSE_TIMEOUT_MS: u64 = 5_000;

const FILL: u8 = 0xee;

struct Tally {
    ok: u32,
    fail: u32,
}

static mut TALLY: Tally = Tally { ok: 0, fail: 0 };

fn tally(ok: bool) {
    // SAFETY: single-threaded kernel; no reentrancy.
    unsafe {
        if ok {
            TALLY.ok += 1;
        } else {
            TALLY.fail += 1;
        }
    }
}

/// A response status for printing: a number, `timeout` or `none`.
#[derive(Clone, Copy)]
enum Status {
    Got(i16),
    Timeout,
    None,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Status::Got(s) => write!(f, "{}", s),
            Status::Timeout => f.write_str("timeout"),
            Status::None => f.write_str("none"),
        }
    }
}

/// Prints a case line: `ok` when `problem` is `None`.
fn report(case: &str, status: Status, problem: Option<fmt::Arguments<'_>>) {
    match problem {
        None => {
            tally(true);
            println!("HOSTILE-BLK {} status={} ok", case, status);
        }
        Some(why) => {
            tally(false);
            println!("HOSTILE-BLK {} status={} FAIL: {}", case, status, why);
        }
    }
}

/// Reports a case whose only requirement is the response status `want`.
fn expect_status(case: &str, got: Status, want: i16) {
    match got {
        Status::Got(s) if s == want => report(case, got, None),
        Status::Got(_) => report(case, got, Some(format_args!("expected status {}", want))),
        _ => report(
            case,
            got,
            Some(format_args!(
                "no response within {} ms (expected status {})",
                RESPONSE_TIMEOUT_MS, want
            )),
        ),
    }
}

struct Blk<'a> {
    ev: &'a Events,
    ring: FrontRing,
    port: u32,
    next_id: u64,
    sectors: u64,
}

impl Blk<'_> {
    /// Publishes `req` (its id is set here), notifies, and waits (bounded) for the
    /// response with that id.
    fn submit(&mut self, mut req: BlkifRequest) -> Status {
        self.next_id += 1;
        let id = 0x4b1f_0000 + self.next_id;
        req.id = id;
        if self.ring.free() == 0 {
            return Status::None;
        }
        self.ring.push(&req);
        self.ring.publish();
        evtchn::send(self.port);
        let deadline = self.ev.deadline_ms(RESPONSE_TIMEOUT_MS);
        for _ in 0..evtchn::max_rounds(RESPONSE_TIMEOUT_MS) {
            while let Some(rsp) = self.ring.next_response() {
                if rsp.id == id {
                    if rsp.operation != req.operation {
                        println!(
                            "blkfront: note: response {:#x} echoes operation {}, request had {}",
                            id, rsp.operation, req.operation
                        );
                    }
                    return Status::Got(rsp.status);
                }
                println!(
                    "blkfront: note: stray response id {:#x} status {}",
                    rsp.id, rsp.status
                );
            }
            if self.ev.now_ns() >= deadline {
                break;
            }
            self.ev.wait(self.port, deadline);
        }
        Status::Timeout
    }
}

fn seg(gref: u32, first_sect: u8, last_sect: u8) -> BlkifRequestSegment {
    BlkifRequestSegment {
        gref,
        first_sect,
        last_sect,
        _pad: [0; 2],
    }
}

/// A read or write of one page-sized segment list.
fn rw(operation: u8, sector: u64, segs: &[BlkifRequestSegment]) -> BlkifRequest {
    let mut r = BlkifRequest {
        operation,
        nr_segments: segs.len() as u8,
        handle: 51712,
        sector_number: sector,
        ..BlkifRequest::default()
    };
    r.seg[..segs.len()].copy_from_slice(segs);
    r
}

fn fill_page(va: u64, b: u8) {
    for i in 0..4096 {
        // SAFETY: `va` is a writable page of ours.
        unsafe { core::ptr::write_volatile((va + i) as *mut u8, b) };
    }
}

/// First byte of `len` at `va` that differs from `want(i)`: (offset, got, expected).
fn mismatch(va: u64, len: u64, want: impl Fn(u64) -> u8) -> Option<(u64, u8, u8)> {
    (0..len).find_map(|i| {
        let got = mm::rd8(va + i);
        (got != want(i)).then_some((i, got, want(i)))
    })
}

/// The connection; `None` (after a FAIL line) if there is no usable backend.
fn connect<'a>(si: &StartInfo, ev: &'a Events, gnt: &GrantTable) -> Option<Blk<'a>> {
    let mut xs = Xenstore::new(si, ev, XS_FALLBACK_SLOT);
    let mut buf = [0u8; 256];

    match xs.directory("device/vbd", &mut buf) {
        Ok(n) => {
            let names = core::str::from_utf8(&buf[..n]).unwrap_or("?");
            println!("blkfront: device/vbd lists {:?}", names);
        }
        Err(e) => println!("blkfront: device/vbd: {}", e),
    }
    // The client's own check: a write under the domain's `data/` and a read back.
    match xs
        .write("data/hostile-blkfront", "probe")
        .and_then(|()| xs.read("data/hostile-blkfront", &mut buf))
    {
        Ok(n) if &buf[..n] == b"probe" => println!("blkfront: xenstore write/read-back ok"),
        Ok(n) => println!(
            "blkfront: xenstore read-back gave {:?}",
            core::str::from_utf8(&buf[..n]).unwrap_or("?")
        ),
        Err(e) => println!("blkfront: xenstore write/read-back: {}", e),
    }
    let mut backend = [0u8; 128];
    let backend_path = xs_path!("{}/backend", VBD);
    let blen = if cmdline_arg(si, "stuck-backend").is_some() {
        // Pretend the backend is a node of our own that stays in state 1 (to show that
        // the wait for InitWait is bounded).
        if let Err(e) = xs.write("data/stuck-backend/state", "1") {
            println!("blkfront: setting up the stuck backend: {}", e);
        }
        let name = b"data/stuck-backend";
        backend[..name.len()].copy_from_slice(name);
        name.len()
    } else {
        match xs.read(backend_path.as_str(), &mut backend) {
            Ok(n) => n,
            Err(e) => {
                report(
                    "connect",
                    Status::None,
                    Some(format_args!(
                        "no backend ({}: {})",
                        backend_path.as_str(),
                        e
                    )),
                );
                return None;
            }
        }
    };
    let be = core::str::from_utf8(&backend[..blen]).unwrap_or("");
    println!("blkfront: backend at {}", be);
    let be_state = xs_path!("{}/state", be);

    let wait_state = |xs: &mut Xenstore<'_>, want: u32, what: &str| -> bool {
        let deadline = ev.deadline_ms(STATE_TIMEOUT_MS);
        let mut last: Option<u64> = None;
        for _ in 0..evtchn::max_rounds(STATE_TIMEOUT_MS) {
            match xs.read_u64(be_state.as_str()) {
                Ok(s) if s == u64::from(want) => return true,
                Ok(s) => last = Some(s),
                Err(e) => {
                    report(
                        what,
                        Status::None,
                        Some(format_args!("reading {}: {}", be_state.as_str(), e)),
                    );
                    return false;
                }
            }
            if ev.now_ns() >= deadline {
                break;
            }
            ev.wait(si.store_evtchn, deadline.min(ev.deadline_ms(50)));
        }
        report(
            what,
            Status::None,
            Some(format_args!(
                "backend state stayed {:?} for {} ms, expected {}",
                last, STATE_TIMEOUT_MS, want
            )),
        );
        false
    };

    if !wait_state(&mut xs, xenbus::INIT_WAIT, "connect") {
        return None;
    }
    for key in [
        "sectors",
        "sector-size",
        "info",
        "feature-flush-cache",
        "feature-barrier",
    ] {
        let p = xs_path!("{}/{}", be, key);
        match xs.read(p.as_str(), &mut buf) {
            Ok(n) => println!(
                "blkfront: at InitWait {} = {}",
                key,
                core::str::from_utf8(&buf[..n]).unwrap_or("?")
            ),
            Err(e) => println!("blkfront: at InitWait {}: {}", key, e),
        }
    }

    let ring_va = mm::slack_va(si, RING_SLOT);
    let ring = FrontRing::init(ring_va);
    gnt.grant(RING_REF, BACKEND_DOM, mm::va_to_mfn(si, ring_va), false);
    let port = match evtchn::alloc_unbound(BACKEND_DOM) {
        Ok(p) => p,
        Err(rc) => {
            report(
                "connect",
                Status::None,
                Some(format_args!(
                    "EVTCHNOP_alloc_unbound(remote 0) returned {}",
                    rc
                )),
            );
            return None;
        }
    };
    let ring_ref = xs_path!("{}", RING_REF);
    let port_s = xs_path!("{}", port);
    for (key, value) in [
        ("ring-ref", ring_ref.as_str()),
        ("event-channel", port_s.as_str()),
        ("protocol", "x86_64-abi"),
        ("state", "3"),
    ] {
        let p = xs_path!("{}/{}", VBD, key);
        if let Err(e) = xs.write(p.as_str(), value) {
            report(
                "connect",
                Status::None,
                Some(format_args!("writing {} = {}: {}", p.as_str(), value, e)),
            );
            return None;
        }
    }
    println!(
        "blkfront: ring-ref {} (mfn {:#x}), event-channel {}, state 3",
        RING_REF,
        mm::va_to_mfn(si, ring_va),
        port
    );
    if !wait_state(&mut xs, xenbus::CONNECTED, "connect") {
        return None;
    }
    let mut features = [0u8; 64];
    let mut flen = 0;
    for key in [
        "feature-flush-cache",
        "feature-barrier",
        "feature-discard",
        "feature-persistent",
    ] {
        let p = xs_path!("{}/{}", be, key);
        if let Ok(n) = xs.read(p.as_str(), &mut buf) {
            let v = parse_u64(&buf[..n]).unwrap_or(0);
            let item = xs_path!("{}={} ", &key[8..], v);
            let b = item.as_str().as_bytes();
            if flen + b.len() <= features.len() {
                features[flen..flen + b.len()].copy_from_slice(b);
                flen += b.len();
            }
        }
    }
    let sectors_path = xs_path!("{}/sectors", be);
    let sectors = match xs.read_u64(sectors_path.as_str()) {
        Ok(s) => s,
        Err(e) => {
            report(
                "connect",
                Status::None,
                Some(format_args!("reading {}: {}", sectors_path.as_str(), e)),
            );
            return None;
        }
    };
    let own_state = xs_path!("{}/state", VBD);
    if let Err(e) = xs.write(own_state.as_str(), "4") {
        report(
            "connect",
            Status::None,
            Some(format_args!("writing {} = 4: {}", own_state.as_str(), e)),
        );
        return None;
    }
    println!(
        "blkfront: connected: {} sectors, features: {}",
        sectors,
        core::str::from_utf8(&features[..flen]).unwrap_or("?")
    );
    report("connect", Status::Got(0), None);
    Some(Blk {
        ev,
        ring,
        port,
        next_id: 0,
        sectors,
    })
}

fn run_cases(si: &StartInfo, gnt: &GrantTable, blk: &mut Blk<'_>) {
    let data_va = mm::slack_va(si, DATA_SLOT);
    let data_mfn = mm::va_to_mfn(si, data_va);
    gnt.grant(DATA_REF, BACKEND_DOM, data_mfn, false);

    // 1. A good read of sector 0 (the whole page: sectors 0..=7).
    fill_page(data_va, FILL);
    let st = blk.submit(rw(BLKIF_OP_READ, 0, &[seg(DATA_REF, 0, 7)]));
    match st {
        Status::Got(0) => {
            if let Some((i, got, want)) = mismatch(data_va, 4096, image_byte) {
                report(
                    "good-read",
                    st,
                    Some(format_args!(
                        "byte {} is {:#x}, expected {:#x}",
                        i, got, want
                    )),
                );
            } else if gnt.flags(DATA_REF) & (GTF_READING | GTF_WRITING) != 0 {
                report(
                    "good-read",
                    st,
                    Some(format_args!(
                        "grant flags {:#x} still say in use after the response",
                        gnt.flags(DATA_REF)
                    )),
                );
            } else {
                report("good-read", st, None);
            }
        }
        _ => expect_status("good-read", st, BLKIF_RSP_OKAY),
    }

    // 2. A grant reference past the table.
    let st = blk.submit(rw(BLKIF_OP_READ, 0, &[seg(BAD_REF, 0, 7)]));
    expect_status("bad-gref", st, BLKIF_RSP_ERROR);

    // 3. A reference the frontend never filled in.
    gnt.clear(UNFILLED_REF);
    let st = blk.submit(rw(BLKIF_OP_READ, 0, &[seg(UNFILLED_REF, 0, 7)]));
    expect_status("unfilled-grant", st, BLKIF_RSP_ERROR);

    // 4. A grant of a frame the guest does not own.
    gnt.grant(FOREIGN_REF, BACKEND_DOM, FOREIGN_MFN, false);
    let st = blk.submit(rw(BLKIF_OP_READ, 0, &[seg(FOREIGN_REF, 0, 7)]));
    expect_status("foreign-frame", st, BLKIF_RSP_ERROR);
    gnt.clear(FOREIGN_REF);

    // 5. A read into a read-only grant.
    let ro_va = mm::slack_va(si, RO_SLOT);
    fill_page(ro_va, 0x3c);
    gnt.grant(RO_REF, BACKEND_DOM, mm::va_to_mfn(si, ro_va), true);
    let st = blk.submit(rw(BLKIF_OP_READ, 0, &[seg(RO_REF, 0, 7)]));
    match (st, mismatch(ro_va, 4096, |_| 0x3c)) {
        (Status::Got(BLKIF_RSP_ERROR), Some((i, got, _))) => report(
            "readonly-grant",
            st,
            Some(format_args!(
                "the read-only page changed: byte {} is {:#x}",
                i, got
            )),
        ),
        _ => expect_status("readonly-grant", st, BLKIF_RSP_ERROR),
    }
    gnt.clear(RO_REF);

    // 6. A read into one of our own L1 pagetables.
    let w = mm::walk(si, data_va);
    let mut before = [0u64; 512];
    for (k, b) in before.iter_mut().enumerate() {
        *b = mm::rd(w.l1_va + k as u64 * 8);
    }
    gnt.grant(PT_REF, BACKEND_DOM, w.l1_mfn, false);
    let st = blk.submit(rw(BLKIF_OP_READ, 0, &[seg(PT_REF, 0, 7)]));
    gnt.clear(PT_REF);
    let changed = (0..512u64).find(|&k| {
        // The CPU may set Accessed/Dirty in live entries; anything else is a change.
        let now = mm::rd(w.l1_va + k * 8);
        (now ^ before[k as usize]) & !(mm::PTE_A | mm::PTE_D) != 0
    });
    match (st, changed) {
        (Status::Got(BLKIF_RSP_ERROR), Some(k)) => report(
            "pagetable-page",
            st,
            Some(format_args!(
                "L1 mfn {:#x} entry {} changed: {:#x} -> {:#x}",
                w.l1_mfn,
                k,
                before[k as usize],
                mm::rd(w.l1_va + k * 8)
            )),
        ),
        _ => expect_status("pagetable-page", st, BLKIF_RSP_ERROR),
    }

    // 7. Too many segments; no segment at all.
    let mut r = rw(
        BLKIF_OP_READ,
        0,
        &[seg(DATA_REF, 0, 7); BLKIF_MAX_SEGMENTS_PER_REQUEST],
    );
    r.nr_segments = (BLKIF_MAX_SEGMENTS_PER_REQUEST + 1) as u8;
    let st = blk.submit(r);
    expect_status("too-many-segments", st, BLKIF_RSP_ERROR);
    let st = blk.submit(rw(BLKIF_OP_READ, 0, &[]));
    expect_status("zero-segments", st, BLKIF_RSP_ERROR);

    // 8. last_sect before first_sect; a sector past the end.
    let st = blk.submit(rw(BLKIF_OP_READ, 0, &[seg(DATA_REF, 7, 0)]));
    expect_status("bad-sector-range", st, BLKIF_RSP_ERROR);
    let st = blk.submit(rw(BLKIF_OP_READ, blk.sectors, &[seg(DATA_REF, 0, 0)]));
    expect_status("past-end", st, BLKIF_RSP_ERROR);

    // 9. An operation the protocol does not define.
    let st = blk.submit(rw(99, 0, &[seg(DATA_REF, 0, 7)]));
    expect_status("unknown-op", st, BLKIF_RSP_EOPNOTSUPP);

    // 10. A write of one sector, then a read back.
    let wr_va = mm::slack_va(si, WRITE_SLOT);
    for i in 0..4096u64 {
        // SAFETY: a writable page of ours.
        unsafe { core::ptr::write_volatile((wr_va + i) as *mut u8, written_byte(i)) };
    }
    gnt.grant(WRITE_REF, BACKEND_DOM, mm::va_to_mfn(si, wr_va), true);
    println!("blkfront: writing sector {}", WRITE_SECTOR);
    let st = blk.submit(rw(BLKIF_OP_WRITE, WRITE_SECTOR, &[seg(WRITE_REF, 0, 0)]));
    expect_status("write", st, BLKIF_RSP_OKAY);
    let rb_va = mm::slack_va(si, READBACK_SLOT);
    fill_page(rb_va, FILL);
    gnt.grant(READBACK_REF, BACKEND_DOM, mm::va_to_mfn(si, rb_va), false);
    let st = blk.submit(rw(BLKIF_OP_READ, WRITE_SECTOR, &[seg(READBACK_REF, 0, 0)]));
    match st {
        Status::Got(0) => {
            if let Some((i, got, want)) = mismatch(rb_va, SECTOR_SIZE, written_byte) {
                report(
                    "read-back",
                    st,
                    Some(format_args!("byte {} is {:#x}, wrote {:#x}", i, got, want)),
                );
            } else if let Some((i, got, _)) =
                mismatch(rb_va + SECTOR_SIZE, 4096 - SECTOR_SIZE, |_| FILL)
            {
                report(
                    "read-back",
                    st,
                    Some(format_args!(
                        "byte {} of the page (outside sector 0 of the segment) became {:#x}",
                        SECTOR_SIZE + i,
                        got
                    )),
                );
            } else {
                report("read-back", st, None);
            }
        }
        _ => expect_status("read-back", st, BLKIF_RSP_OKAY),
    }

    // 11. A cache flush.
    let st = blk.submit(rw(BLKIF_OP_FLUSH_DISKCACHE, 0, &[]));
    expect_status("flush", st, BLKIF_RSP_OKAY);

    // 12. Ring-index attack: 1000 requests "published" on a 32-entry ring.
    let target = blk.ring.rsp_prod().wrapping_add(1000);
    println!(
        "blkfront: setting req_prod {} -> {} (rsp_prod {}) and notifying",
        blk.ring.req_prod(),
        target,
        blk.ring.rsp_prod()
    );
    blk.ring.set_shared_req_prod(target);
    evtchn::send(blk.port);
    // Give the backend time to react; count what it answers (it should answer nothing).
    let deadline = blk.ev.deadline_ms(1000);
    let mut answered = 0u32;
    for _ in 0..evtchn::max_rounds(1000) {
        while blk.ring.next_response().is_some() {
            answered += 1;
        }
        if blk.ev.now_ns() >= deadline {
            break;
        }
        blk.ev.wait(blk.port, deadline);
    }
    println!(
        "blkfront: after the overflow the backend produced {} responses (rsp_prod {})",
        answered,
        blk.ring.rsp_prod()
    );
    tally(true);
    println!("HOSTILE-BLK ring-overflow survived ok");
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    let ev = Events::new(si, SHINFO_SLOT);
    match GrantTable::setup(si, GNT_SLOT) {
        Ok(gnt) => {
            if let Some(mut blk) = connect(si, &ev, &gnt) {
                run_cases(si, &gnt, &mut blk);
            }
        }
        Err((rc, status)) => report(
            "connect",
            Status::None,
            Some(format_args!(
                "GNTTABOP_setup_table(1) returned {} status {}",
                rc, status
            )),
        ),
    }
    // SAFETY: single-threaded; read once at the end.
    let (ok, fail) = unsafe { (TALLY.ok, TALLY.fail) };
    println!("blkfront: summary: {} ok, {} FAIL", ok, fail);
    println!("HOSTILE-BLK done");
    finish(SHUTDOWN_POWEROFF)
}
