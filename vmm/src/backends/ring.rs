//! Xen's shared I/O rings (`public/io/ring.h`), the back end's half, over pages the
//! frontend granted (blkif, netif tx and rx).
//!
//! The shared page(s) start with a 64-byte header (`req_prod`, `req_event`,
//! `rsp_prod`, `rsp_event`, then padding), followed by the entries: a power of two of
//! them, each the size of the larger of request and response. Entries may straddle page
//! boundaries in a multi-page ring; reads and writes are split accordingly.
//!
//! The frontend owns `req_prod` and `rsp_event` and may write anything there. A
//! producer more than a ring ahead of what the backend has answered (Xen's
//! `RING_REQUEST_PROD_OVERFLOW`) is [`RingError::Overflow`]; the device stops serving
//! that ring until the frontend reconnects, as Linux's blkback and netback do.

use thiserror::Error;

use super::grant::{Access, GrantAccess, GrantError, Mapping, PAGE_SIZE};

/// Bytes before the first entry.
pub const RING_HEADER: usize = 64;
const REQ_PROD: usize = 0;
const REQ_EVENT: usize = 4;
const RSP_PROD: usize = 8;
const RSP_EVENT: usize = 12;

/// Entries in a ring of `pages` pages with entries of `entry_size` bytes
/// (`__RING_SIZE`: the largest power of two that fits).
pub fn ring_entries(pages: usize, entry_size: usize) -> u32 {
    let fit = (pages * PAGE_SIZE).saturating_sub(RING_HEADER) / entry_size.max(1);
    if fit == 0 {
        0
    } else {
        1u32 << (usize::BITS - 1 - fit.leading_zeros())
    }
}

/// Why a ring cannot be served.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum RingError {
    /// The frontend's producer index claims more requests than the ring can hold.
    #[error("the frontend's request producer ({prod}) is more than a ring ({size} entries) ahead of the backend's responses ({rsp})")]
    Overflow {
        /// The frontend's `req_prod`.
        prod: u32,
        /// The backend's private response producer.
        rsp: u32,
        /// Entries in the ring.
        size: u32,
    },
    /// A ring page could not be accessed.
    #[error("the ring page is not accessible")]
    Page(#[source] GrantError),
}

impl From<GrantError> for RingError {
    fn from(e: GrantError) -> Self {
        RingError::Page(e)
    }
}

/// The back end of one shared ring.
#[derive(Debug)]
pub struct BackRing {
    pages: Vec<Mapping>,
    entry_size: usize,
    nr_ents: u32,
    req_cons: u32,
    rsp_prod_pvt: u32,
}

impl BackRing {
    /// A back ring over `pages` (mapped [`Access::ReadWrite`]), whose entries are
    /// `max(req_size, rsp_size)` bytes. The indices start from the shared header's
    /// `req_prod`/`rsp_prod` as the frontend initialised them (both 0 for a fresh ring).
    pub fn new(
        g: &dyn GrantAccess,
        pages: Vec<Mapping>,
        req_size: usize,
        rsp_size: usize,
    ) -> Result<Self, RingError> {
        let entry_size = req_size.max(rsp_size);
        let nr_ents = ring_entries(pages.len(), entry_size);
        let first = pages.first().ok_or(RingError::Page(GrantError::Range(0)))?;
        if let Some(ro) = pages.iter().find(|m| m.access != Access::ReadWrite) {
            return Err(RingError::Page(GrantError::Range(ro.gref)));
        }
        let rsp_prod = g.load_u32(first, RSP_PROD)?;
        Ok(BackRing {
            entry_size,
            nr_ents,
            req_cons: rsp_prod,
            rsp_prod_pvt: rsp_prod,
            pages,
        })
    }

    /// Entries in the ring.
    pub fn size(&self) -> u32 {
        self.nr_ents
    }

    /// The ring's page mappings, for unmapping at disconnect.
    pub fn into_pages(self) -> Vec<Mapping> {
        self.pages
    }

    /// Takes the ring's page mappings out, for unmapping where the ring cannot be
    /// moved (a `Drop`); the ring must not be used afterwards.
    pub fn take_pages(&mut self) -> Vec<Mapping> {
        std::mem::take(&mut self.pages)
    }

    /// Requests the frontend has produced that the backend has not consumed and has
    /// room to answer (`RING_UNCONSUMED_REQUESTS`), after the overflow check.
    pub fn unconsumed_requests(&self, g: &dyn GrantAccess) -> Result<u32, RingError> {
        let prod = g.load_u32(&self.pages[0], REQ_PROD)?;
        if prod.wrapping_sub(self.rsp_prod_pvt) > self.nr_ents {
            return Err(RingError::Overflow {
                prod,
                rsp: self.rsp_prod_pvt,
                size: self.nr_ents,
            });
        }
        let reqs = prod.wrapping_sub(self.req_cons);
        let room = self
            .nr_ents
            .wrapping_sub(self.req_cons.wrapping_sub(self.rsp_prod_pvt));
        Ok(reqs.min(room))
    }

    /// Copies the next request into `buf` (its first `buf.len()` bytes) and consumes
    /// it. Call only while [`Self::unconsumed_requests`] is non-zero.
    pub fn take_request(&mut self, g: &dyn GrantAccess, buf: &mut [u8]) -> Result<(), RingError> {
        let off = self.entry_offset(self.req_cons);
        self.copy_out(g, off, buf)?;
        self.req_cons = self.req_cons.wrapping_add(1);
        Ok(())
    }

    /// Copies the request `ahead` entries past the next one into `buf` without
    /// consuming anything (netif reads a packet's slots before it takes them). Call
    /// only with `ahead` below [`Self::unconsumed_requests`].
    pub fn peek_request(
        &self,
        g: &dyn GrantAccess,
        ahead: u32,
        buf: &mut [u8],
    ) -> Result<(), RingError> {
        let off = self.entry_offset(self.req_cons.wrapping_add(ahead));
        self.copy_out(g, off, buf)
    }

    /// Consumes `n` requests read with [`Self::peek_request`].
    pub fn consume(&mut self, n: u32) {
        self.req_cons = self.req_cons.wrapping_add(n);
    }

    /// Writes `rsp` into the next response slot (not yet visible to the frontend).
    pub fn put_response(&mut self, g: &dyn GrantAccess, rsp: &[u8]) -> Result<(), RingError> {
        let off = self.entry_offset(self.rsp_prod_pvt);
        let len = rsp.len().min(self.entry_size);
        self.copy_in(g, off, &rsp[..len])?;
        self.rsp_prod_pvt = self.rsp_prod_pvt.wrapping_add(1);
        Ok(())
    }

    /// Responses written but not pushed, plus requests consumed and not yet answered.
    pub fn outstanding(&self) -> u32 {
        self.req_cons.wrapping_sub(self.rsp_prod_pvt)
    }

    /// Publishes the responses written so far (`RING_PUSH_RESPONSES_AND_CHECK_NOTIFY`);
    /// returns whether the frontend asked to be notified of them.
    pub fn push_responses(&mut self, g: &dyn GrantAccess) -> Result<bool, RingError> {
        let page = &self.pages[0];
        let old = g.load_u32(page, RSP_PROD)?;
        let new = self.rsp_prod_pvt;
        g.store_u32(page, RSP_PROD, new)?;
        g.fence();
        let event = g.load_u32(page, RSP_EVENT)?;
        Ok(new.wrapping_sub(event) < new.wrapping_sub(old))
    }

    /// `RING_FINAL_CHECK_FOR_REQUESTS`: whether requests are waiting; when none are,
    /// asks the frontend to notify on the next one and looks once more.
    pub fn final_check_for_requests(&mut self, g: &dyn GrantAccess) -> Result<bool, RingError> {
        if self.unconsumed_requests(g)? > 0 {
            return Ok(true);
        }
        g.store_u32(&self.pages[0], REQ_EVENT, self.req_cons.wrapping_add(1))?;
        g.fence();
        Ok(self.unconsumed_requests(g)? > 0)
    }

    fn entry_offset(&self, idx: u32) -> usize {
        RING_HEADER + (idx & self.nr_ents.wrapping_sub(1)) as usize * self.entry_size
    }

    /// The pieces of the ring's byte range `[off, off + len)` (which spans its pages):
    /// each as its page's mapping, the offset in that page and the range of the caller's
    /// buffer it covers.
    fn spans(
        &self,
        off: usize,
        len: usize,
    ) -> impl Iterator<Item = Result<(&Mapping, usize, std::ops::Range<usize>), RingError>> + '_
    {
        let mut done = 0;
        std::iter::from_fn(move || {
            if done >= len {
                return None;
            }
            let at = off + done;
            let (page, in_page) = (at / PAGE_SIZE, at % PAGE_SIZE);
            let n = (PAGE_SIZE - in_page).min(len - done);
            let range = done..done + n;
            done += n;
            Some(
                self.pages
                    .get(page)
                    .map(|m| (m, in_page, range))
                    .ok_or(RingError::Page(GrantError::Range(0))),
            )
        })
    }

    /// Copies out of the ring's byte space at `off`.
    fn copy_out(&self, g: &dyn GrantAccess, off: usize, buf: &mut [u8]) -> Result<(), RingError> {
        for span in self.spans(off, buf.len()) {
            let (m, in_page, range) = span?;
            g.read(m, in_page, &mut buf[range])?;
        }
        Ok(())
    }

    /// Copies into the ring's byte space at `off`.
    fn copy_in(&self, g: &dyn GrantAccess, off: usize, buf: &[u8]) -> Result<(), RingError> {
        for span in self.spans(off, buf.len()) {
            let (m, in_page, range) = span?;
            g.write(m, in_page, &buf[range])?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::grant::fake::FakeGrants;
    use super::*;

    fn ring(g: &FakeGrants, pages: u32, entry: usize) -> BackRing {
        let maps = (0..pages)
            .map(|i| {
                g.grant(i, false);
                g.map(i, Access::ReadWrite).unwrap()
            })
            .collect();
        BackRing::new(g, maps, entry, 16).unwrap()
    }

    fn set_u32(g: &FakeGrants, off: usize, v: u32) {
        g.fill(0, off, &v.to_le_bytes());
    }

    fn get_u32(g: &FakeGrants, off: usize) -> u32 {
        u32::from_le_bytes(g.page(0)[off..off + 4].try_into().unwrap())
    }

    #[test]
    fn sizes_match_xen_ring_size() {
        // blkif (112-byte requests): 32 entries per page; netif tx (12) 256; rx (8) 256.
        assert_eq!(ring_entries(1, 112), 32);
        assert_eq!(ring_entries(4, 112), 128);
        assert_eq!(ring_entries(1, 12), 256);
        assert_eq!(ring_entries(1, 8), 256);
        assert_eq!(ring_entries(0, 112), 0);
    }

    #[test]
    fn requests_and_responses_flow_and_notify_as_asked() {
        let g = FakeGrants::new(16);
        let mut r = ring(&g, 1, 112);
        assert_eq!(r.unconsumed_requests(&g).unwrap(), 0);
        g.fill(0, RING_HEADER, &[7; 112]);
        set_u32(&g, REQ_PROD, 1);
        assert_eq!(r.unconsumed_requests(&g).unwrap(), 1);
        let mut req = [0u8; 112];
        r.take_request(&g, &mut req).unwrap();
        assert_eq!(req, [7; 112]);
        // The frontend waits for response 1.
        set_u32(&g, RSP_EVENT, 1);
        r.put_response(&g, &[9; 16]).unwrap();
        assert!(r.push_responses(&g).unwrap());
        assert_eq!(get_u32(&g, RSP_PROD), 1);
        assert_eq!(&g.page(0)[RING_HEADER..RING_HEADER + 16], &[9; 16]);
        // No more requests: the backend asks for the next notification.
        assert!(!r.final_check_for_requests(&g).unwrap());
        assert_eq!(get_u32(&g, REQ_EVENT), 2);
        // A response the frontend did not ask about does not notify.
        set_u32(&g, REQ_PROD, 2);
        r.take_request(&g, &mut req).unwrap();
        r.put_response(&g, &[1; 16]).unwrap();
        assert!(!r.push_responses(&g).unwrap());
    }

    #[test]
    fn a_producer_too_far_ahead_is_an_overflow() {
        let g = FakeGrants::new(16);
        let r = ring(&g, 1, 112);
        set_u32(&g, REQ_PROD, 33);
        assert!(matches!(
            r.unconsumed_requests(&g),
            Err(RingError::Overflow { prod: 33, .. })
        ));
        set_u32(&g, REQ_PROD, u32::MAX);
        assert!(r.unconsumed_requests(&g).is_err());
        set_u32(&g, REQ_PROD, 32);
        assert_eq!(r.unconsumed_requests(&g).unwrap(), 32);
    }

    #[test]
    fn entries_straddle_pages_in_a_multi_page_ring() {
        let g = FakeGrants::new(16);
        let mut r = ring(&g, 4, 112);
        assert_eq!(r.size(), 128);
        // Entry 72 starts at 64 + 72 * 112 = 8128: the last 64 bytes of page 1, then
        // 48 bytes of page 2.
        g.fill(1, 4032, &[5; 64]);
        g.fill(2, 0, &[6; 48]);
        set_u32(&g, REQ_PROD, 73);
        let mut req = [0u8; 112];
        r.consume(72);
        r.take_request(&g, &mut req).unwrap();
        assert_eq!(req[..64], [5; 64]);
        assert_eq!(req[64..], [6; 48]);
        assert_eq!(r.outstanding(), 73);
        // A response there is split the same way.
        r.rsp_prod_pvt = 72;
        r.put_response(&g, &[8; 112]).unwrap();
        assert_eq!(g.page(1)[4032..], [8; 64]);
        assert_eq!(g.page(2)[..48], [8; 48]);
    }

    #[test]
    fn the_consumer_never_runs_past_the_unanswered_room() {
        let g = FakeGrants::new(16);
        let mut r = ring(&g, 1, 112);
        set_u32(&g, REQ_PROD, 32);
        let mut req = [0u8; 112];
        for _ in 0..32 {
            r.take_request(&g, &mut req).unwrap();
        }
        // 32 consumed, none answered: no room even if the frontend claims more.
        assert_eq!(r.unconsumed_requests(&g).unwrap(), 0);
        r.put_response(&g, &[0; 16]).unwrap();
        set_u32(&g, REQ_PROD, 33);
        assert_eq!(r.unconsumed_requests(&g).unwrap(), 1);
    }
}
