//! The two byte rings of `struct xenstore_domain_interface`, read the way Xen's
//! xenstored reads them (`readchn()`/`writechn()` in `tools/xenstored/domain.c`):
//! both indices are read once per access, checked (`prod - cons <= 1024`), and only
//! then is data copied and our own index advanced.

use std::sync::atomic::{fence, Ordering};

pub use crate::backends::ring_page::{read_u32, write_u32, RingPage};

use super::wire::{
    OFF_REQ, OFF_REQ_CONS, OFF_REQ_PROD, OFF_RSP, OFF_RSP_CONS, OFF_RSP_PROD, XENSTORE_RING_SIZE,
};

/// The indices are inconsistent (`prod - cons > ring size`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadIndex;

fn indexes_ok(cons: u32, prod: u32) -> bool {
    prod.wrapping_sub(cons) as usize <= XENSTORE_RING_SIZE
}

const MASK: u32 = XENSTORE_RING_SIZE as u32 - 1;

/// What waits in the two rings, from their indices alone (nothing is consumed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingLook {
    /// Request bytes the guest produced that xenstored has not read.
    pub requests_unread: bool,
    /// The guest's producer index of the request ring.
    pub req_prod: u32,
    /// The guest's consumer index of the response ring.
    pub rsp_cons: u32,
    /// Response bytes xenstored produced that the guest has not read.
    pub responses_unread: bool,
}

/// Reads the four indices once; inconsistent ones say nothing waits (the next real
/// access breaks the connection for them).
pub fn look(page: &mut dyn RingPage) -> RingLook {
    let req_cons = read_u32(page, OFF_REQ_CONS);
    let req_prod = read_u32(page, OFF_REQ_PROD);
    let rsp_cons = read_u32(page, OFF_RSP_CONS);
    let rsp_prod = read_u32(page, OFF_RSP_PROD);
    RingLook {
        requests_unread: req_prod != req_cons && indexes_ok(req_cons, req_prod),
        req_prod,
        rsp_cons,
        responses_unread: rsp_prod != rsp_cons && indexes_ok(rsp_cons, rsp_prod),
    }
}

/// Copies up to `buf.len()` request bytes out of the ring and advances `req_cons`.
/// Returns the number of bytes taken (0: the ring is empty).
pub fn read_requests(page: &mut dyn RingPage, buf: &mut [u8]) -> Result<usize, BadIndex> {
    let cons = read_u32(page, OFF_REQ_CONS);
    let prod = read_u32(page, OFF_REQ_PROD);
    fence(Ordering::SeqCst);
    if !indexes_ok(cons, prod) {
        return Err(BadIndex);
    }
    let idx = (cons & MASK) as usize;
    let avail = (XENSTORE_RING_SIZE - idx).min(prod.wrapping_sub(cons) as usize);
    let len = avail.min(buf.len());
    if len == 0 {
        return Ok(0);
    }
    page.read(OFF_REQ + idx, &mut buf[..len]);
    fence(Ordering::SeqCst);
    write_u32(page, OFF_REQ_CONS, cons.wrapping_add(len as u32));
    Ok(len)
}

/// Copies as much of `data` as fits into the response ring and advances
/// `rsp_prod`. Returns the number of bytes written (0: the ring is full).
pub fn write_responses(page: &mut dyn RingPage, data: &[u8]) -> Result<usize, BadIndex> {
    let cons = read_u32(page, OFF_RSP_CONS);
    let prod = read_u32(page, OFF_RSP_PROD);
    fence(Ordering::SeqCst);
    if !indexes_ok(cons, prod) {
        return Err(BadIndex);
    }
    let idx = (prod & MASK) as usize;
    let free = XENSTORE_RING_SIZE - prod.wrapping_sub(cons) as usize;
    let len = (XENSTORE_RING_SIZE - idx).min(free).min(data.len());
    if len == 0 {
        return Ok(0);
    }
    page.write(OFF_RSP + idx, &data[..len]);
    fence(Ordering::SeqCst);
    write_u32(page, OFF_RSP_PROD, prod.wrapping_add(len as u32));
    Ok(len)
}
