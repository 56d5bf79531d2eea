//! The front end of a blkif shared ring, for block frontend test kernels.
//!
//! The request and response layouts and the `BLKIF_*` numbers are
//! [`xen_abi::blkif`]'s; the XenbusState numbers are [`xen_abi::xenbus`]'s. This module
//! adds the frontend's own ring geometry and private ring state.
//!
//! Facts used (Xen `public/io/ring.h`):
//! * The shared ring (`DEFINE_RING_TYPES`): req_prod, req_event, rsp_prod, rsp_event
//!   (u32 each), 48 bytes of padding, then the entries (a union of request and
//!   response, 112 bytes) from offset 64; `__RING_SIZE` = the largest power of two
//!   <= (4096 - 64) / 112 = 32 entries. Indexes are free-running; slot = idx & 31.
//!   A request is published by writing it, a write barrier, then `req_prod`; the
//!   consumer of responses sets `rsp_event = rsp_cons + 1` to be notified.

use core::sync::atomic::{fence, Ordering};
use xen_abi::blkif::{BlkifRequest, BlkifResponse};

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
/// Size of an entry (the request/response union: the request is the larger).
pub const ENTRY_SIZE: u64 = core::mem::size_of::<BlkifRequest>() as u64;
const _: () = assert!(core::mem::size_of::<BlkifResponse>() as u64 <= ENTRY_SIZE);

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
    pub fn push(&mut self, req: &BlkifRequest) {
        let slot = self.slot(self.req_prod_pvt);
        // SAFETY: the slot is inside the ring page; `BlkifRequest` is plain data.
        unsafe { core::ptr::write_volatile(slot as *mut BlkifRequest, *req) };
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
    pub fn next_response(&mut self) -> Option<BlkifResponse> {
        let prod = self.rsp_prod();
        fence(Ordering::SeqCst);
        if prod == self.rsp_cons {
            self.wr32(SRING_RSP_EVENT, self.rsp_cons.wrapping_add(1));
            fence(Ordering::SeqCst);
            return None;
        }
        // SAFETY: the slot is inside the ring page; `BlkifResponse` is plain data.
        let rsp =
            unsafe { core::ptr::read_volatile(self.slot(self.rsp_cons) as *const BlkifResponse) };
        self.rsp_cons = self.rsp_cons.wrapping_add(1);
        self.wr32(SRING_RSP_EVENT, self.rsp_cons.wrapping_add(1));
        fence(Ordering::SeqCst);
        Some(rsp)
    }
}
