//! The front end of a blkif shared ring, for block frontend test kernels.
//!
//! TODO(move to xen-abi): the `blkif.h` layouts and numbers below ([`Request`],
//! [`Segment`], [`Response`], `BLKIF_OP_*`, `BLKIF_RSP_*`, the ring geometry) belong in
//! `pv-shim/abi/src/blkif.rs`, which another change is filling in; they are defined here
//! only until that lands, to avoid a merge conflict. Replace them with `xen_abi::blkif`.
//!
//! Facts used (Xen `public/io/blkif.h`, `public/io/ring.h`, `public/io/xenbus.h`):
//! * `struct blkif_request` (x86_64, 112 bytes): operation u8 @0, nr_segments u8 @1,
//!   handle u16 @2, (pad) @4, id u64 @8, sector_number u64 @16, seg[11] @24, each
//!   `struct blkif_request_segment { grant_ref_t gref; uint8_t first_sect, last_sect; }`
//!   (8 bytes with padding). Sectors are 512 bytes; a segment covers sectors
//!   first_sect..=last_sect of its 4 KiB page.
//! * `struct blkif_response` (16 bytes): id u64 @0, operation u8 @8, status i16 @10.
//! * The shared ring (`DEFINE_RING_TYPES`): req_prod, req_event, rsp_prod, rsp_event
//!   (u32 each), 48 bytes of padding, then the entries (a union of request and
//!   response, 112 bytes) from offset 64; `__RING_SIZE` = the largest power of two
//!   <= (4096 - 64) / 112 = 32 entries. Indexes are free-running; slot = idx & 31.
//!   A request is published by writing it, a write barrier, then `req_prod`; the
//!   consumer of responses sets `rsp_event = rsp_cons + 1` to be notified.
//! * XenbusState: Initialising 1, InitWait 2, Initialised 3, Connected 4, Closing 5,
//!   Closed 6.

use core::sync::atomic::{fence, Ordering};

/// `BLKIF_OP_READ`.
pub const BLKIF_OP_READ: u8 = 0;
/// `BLKIF_OP_WRITE`.
pub const BLKIF_OP_WRITE: u8 = 1;
/// `BLKIF_OP_FLUSH_DISKCACHE`.
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// `BLKIF_MAX_SEGMENTS_PER_REQUEST`.
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// `BLKIF_RSP_OKAY`.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// `BLKIF_RSP_ERROR`.
pub const BLKIF_RSP_ERROR: i16 = -1;
/// `BLKIF_RSP_EOPNOTSUPP`.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;
/// Sector size of `sector_number`, `first_sect`, `last_sect`.
pub const SECTOR_SIZE: u64 = 512;

/// `XenbusStateInitialising`.
pub const XENBUS_INITIALISING: u64 = 1;
/// `XenbusStateInitWait`.
pub const XENBUS_INIT_WAIT: u64 = 2;
/// `XenbusStateInitialised`.
pub const XENBUS_INITIALISED: u64 = 3;
/// `XenbusStateConnected`.
pub const XENBUS_CONNECTED: u64 = 4;
/// `XenbusStateClosing`.
pub const XENBUS_CLOSING: u64 = 5;
/// `XenbusStateClosed`.
pub const XENBUS_CLOSED: u64 = 6;

/// `struct blkif_request_segment`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Segment {
    /// Grant reference of the page.
    pub gref: u32,
    /// First sector of the page transferred (inclusive).
    pub first_sect: u8,
    /// Last sector of the page transferred (inclusive).
    pub last_sect: u8,
    /// Padding.
    pub _pad: u16,
}

/// `struct blkif_request` (x86_64).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Request {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Segments used.
    pub nr_segments: u8,
    /// `blkif_vdev_t` handle.
    pub handle: u16,
    /// Padding.
    pub _pad: u32,
    /// Echoed in the response.
    pub id: u64,
    /// First 512-byte sector on the disk.
    pub sector_number: u64,
    /// The segments.
    pub seg: [Segment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// `struct blkif_response`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Response {
    /// The request's id.
    pub id: u64,
    /// The request's operation.
    pub operation: u8,
    /// Padding.
    pub _pad0: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    /// Padding.
    pub _pad1: u32,
}

const _: () = assert!(core::mem::size_of::<Segment>() == 8);
const _: () = assert!(core::mem::size_of::<Request>() == 112);
const _: () = assert!(core::mem::offset_of!(Request, id) == 8);
const _: () = assert!(core::mem::offset_of!(Request, sector_number) == 16);
const _: () = assert!(core::mem::offset_of!(Request, seg) == 24);
const _: () = assert!(core::mem::size_of::<Response>() == 16);
const _: () = assert!(core::mem::offset_of!(Response, operation) == 8);
const _: () = assert!(core::mem::offset_of!(Response, status) == 10);

/// Offsets in the shared ring page.
pub const SRING_REQ_PROD: u64 = 0;
/// `req_event`.
pub const SRING_REQ_EVENT: u64 = 4;
/// `rsp_prod`.
pub const SRING_RSP_PROD: u64 = 8;
/// `rsp_event`.
pub const SRING_RSP_EVENT: u64 = 12;
/// First entry.
pub const SRING_ENTRIES: u64 = 64;
/// Size of an entry (the request/response union).
pub const ENTRY_SIZE: u64 = 112;

/// `__RING_SIZE` for a one-page blkif ring.
pub const fn ring_size() -> u32 {
    let n = ((4096 - SRING_ENTRIES) / ENTRY_SIZE) as u32;
    // Largest power of two <= n.
    1 << (31 - n.leading_zeros())
}
const _: () = assert!(ring_size() == 32);

/// The frontend's private ring state over a shared ring page mapped at `va`.
pub struct FrontRing {
    va: u64,
    /// `req_prod_pvt`: requests written, not necessarily published.
    pub req_prod_pvt: u32,
    /// `rsp_cons`: responses consumed.
    pub rsp_cons: u32,
}

impl FrontRing {
    /// `SHARED_RING_INIT` + `FRONT_RING_INIT` on the page at `va` (zeroed first).
    pub fn init(va: u64) -> Self {
        for k in 0..512 {
            crate::mm::wr(va + k * 8, 0);
        }
        let r = FrontRing {
            va,
            req_prod_pvt: 0,
            rsp_cons: 0,
        };
        r.wr32(SRING_REQ_EVENT, 1);
        r.wr32(SRING_RSP_EVENT, 1);
        r
    }

    fn rd32(&self, off: u64) -> u32 {
        // SAFETY: `off` is inside the ring page the caller mapped writable.
        unsafe { core::ptr::read_volatile((self.va + off) as *const u32) }
    }

    fn wr32(&self, off: u64, v: u32) {
        // SAFETY: as for rd32.
        unsafe { core::ptr::write_volatile((self.va + off) as *mut u32, v) }
    }

    fn slot(&self, idx: u32) -> u64 {
        self.va + SRING_ENTRIES + u64::from(idx & (ring_size() - 1)) * ENTRY_SIZE
    }

    /// Free request slots (`RING_FREE_REQUESTS`).
    pub fn free(&self) -> u32 {
        ring_size() - self.req_prod_pvt.wrapping_sub(self.rsp_cons)
    }

    /// Writes `req` into the next slot (not yet published).
    pub fn push(&mut self, req: &Request) {
        let slot = self.slot(self.req_prod_pvt);
        // SAFETY: the slot is inside the ring page; `Request` is plain data.
        unsafe { core::ptr::write_volatile(slot as *mut Request, *req) };
        self.req_prod_pvt = self.req_prod_pvt.wrapping_add(1);
    }

    /// `RING_PUSH_REQUESTS`: publishes what was pushed.
    pub fn publish(&self) {
        fence(Ordering::SeqCst);
        self.wr32(SRING_REQ_PROD, self.req_prod_pvt);
        fence(Ordering::SeqCst);
    }

    /// Writes any value to the shared `req_prod` (the hostile part).
    pub fn set_shared_req_prod(&self, v: u32) {
        fence(Ordering::SeqCst);
        self.wr32(SRING_REQ_PROD, v);
        fence(Ordering::SeqCst);
    }

    /// The shared `rsp_prod`.
    pub fn rsp_prod(&self) -> u32 {
        self.rd32(SRING_RSP_PROD)
    }

    /// The shared `req_prod`.
    pub fn req_prod(&self) -> u32 {
        self.rd32(SRING_REQ_PROD)
    }

    /// The next unconsumed response, if the backend produced one (asks to be notified of
    /// the next one either way).
    pub fn next_response(&mut self) -> Option<Response> {
        let prod = self.rsp_prod();
        fence(Ordering::SeqCst);
        if prod == self.rsp_cons {
            self.wr32(SRING_RSP_EVENT, self.rsp_cons.wrapping_add(1));
            fence(Ordering::SeqCst);
            return None;
        }
        // SAFETY: the slot is inside the ring page; `Response` is plain data.
        let rsp = unsafe { core::ptr::read_volatile(self.slot(self.rsp_cons) as *const Response) };
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        self.wr32(SRING_RSP_EVENT, self.rsp_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
        Some(rsp)
    }
}
