//! The receive path (host to guest), after Linux netback's `xenvif_rx_action` in copy
//! mode: each frame is copied into the pages of as many posted rx requests as it needs
//! (one page each; several only with `feature-sg`), at offset 0, and each slot is
//! answered in the ring slot of its request (netfront matches responses to requests by
//! slot, not by id).

use std::io;

use xen_abi::netif::{
    NetifRxRequest, NetifRxResponse, NETIF_RSP_ERROR, NETRXF_MORE_DATA, XEN_NETIF_NR_SLOTS_MIN,
};
use zerocopy::{FromBytes, IntoBytes};

use super::{Dir, NetBackend, NetError, RX_BACKLOG};
use crate::backends::grant::{GrantAccess, PAGE_SIZE};
use crate::backends::ring::RingError;

/// Frames one [`NetBackend::serve_rx`] call takes from the host side.
pub const RX_BUDGET: usize = 256;

/// What became of a frame offered to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Delivery {
    /// Copied into posted buffers (or answered with an error status).
    Done,
    /// Not receivable by this frontend; counted.
    Dropped,
    /// Not enough buffers posted: keep it.
    NoRoom,
}

fn ring_err(source: RingError) -> NetError {
    NetError::Ring {
        dir: Dir::Rx,
        source,
    }
}

impl NetBackend {
    /// Delivers waiting frames into the frontend's posted buffers and takes new frames
    /// from the host side (up to [`RX_BUDGET`]), keeping those without buffers in the
    /// backlog. Returns whether to notify the frontend. Call it on a frontend kick (rx
    /// buffers posted; a tx kick too, since one event channel carries both) and when
    /// the host side's fd is readable.
    pub fn serve_rx(&mut self) -> Result<bool, NetError> {
        let grants = self.grants.clone();
        let g = &*grants;
        self.rx_deliver_backlog(g)?;
        for _ in 0..RX_BUDGET {
            // A full backlog stops reading: the host side holds the rest (passt's
            // socket, the tap's queue) and its own flow control slows the sender, so
            // nothing is dropped for want of guest buffers.
            if self.backlog.len() >= RX_BACKLOG {
                break;
            }
            let n = match self.host.recv(&mut self.recv_buf) {
                Ok(Some(n)) => n,
                Ok(None) => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(NetError::Host(e)),
            };
            if n == 0 {
                continue;
            }
            if self.backlog.is_empty() {
                // The common case: straight from the receive buffer into the guest's.
                let buf = std::mem::take(&mut self.recv_buf);
                let r = self.rx_try_deliver(g, &buf[..n]);
                self.recv_buf = buf;
                if r? != Delivery::NoRoom {
                    continue;
                }
            }
            self.backlog.push_back(self.recv_buf[..n].to_vec());
        }
        let notify = self.rx.push_responses(g).map_err(ring_err)?;
        if !self.backlog.is_empty() {
            // Out of buffers: ask the frontend to kick when it posts more (and look
            // once more, in case it just did).
            if self.rx.final_check_for_requests(g).map_err(ring_err)? {
                self.rx_deliver_backlog(g)?;
                return Ok(self.rx.push_responses(g).map_err(ring_err)? | notify);
            }
        }
        Ok(notify)
    }

    /// Slots a frame of `len` bytes takes.
    fn rx_slots(len: usize) -> usize {
        len.div_ceil(PAGE_SIZE).max(1)
    }

    /// Moves frames from the backlog into posted buffers while there are enough.
    fn rx_deliver_backlog(&mut self, g: &dyn GrantAccess) -> Result<(), NetError> {
        while let Some(frame) = self.backlog.pop_front() {
            if self.rx_try_deliver(g, &frame)? == Delivery::NoRoom {
                self.backlog.push_front(frame);
                break;
            }
        }
        Ok(())
    }

    /// Delivers `frame` if the frontend has posted enough buffers for it.
    fn rx_try_deliver(&mut self, g: &dyn GrantAccess, frame: &[u8]) -> Result<Delivery, NetError> {
        let slots = Self::rx_slots(frame.len());
        if slots > XEN_NETIF_NR_SLOTS_MIN || (slots > 1 && !self.params.feature_sg) {
            // netfront takes no more slots than this (and one page without SG): a
            // frame the guest cannot receive is dropped, as an oversized frame on a NIC.
            self.stats.rx_dropped += 1;
            return Ok(Delivery::Dropped);
        }
        if (self.rx.unconsumed_requests(g).map_err(ring_err)? as usize) < slots {
            return Ok(Delivery::NoRoom);
        }
        self.rx_copy_frame(g, frame)?;
        Ok(Delivery::Done)
    }

    /// Copies `frame` into the next requests' pages and answers them; the caller
    /// checked that enough requests are posted.
    fn rx_copy_frame(&mut self, g: &dyn GrantAccess, frame: &[u8]) -> Result<(), NetError> {
        let mut failed = false;
        let chunks = frame.chunks(PAGE_SIZE);
        let last = chunks.len().saturating_sub(1);
        for (i, chunk) in chunks.enumerate() {
            let mut buf = [0u8; 8];
            self.rx.take_request(g, &mut buf).map_err(ring_err)?;
            let req = NetifRxRequest::read_from_bytes(&buf).unwrap_or_default();
            let status = match g.copy_to(req.gref, 0, chunk) {
                // At most a page, so it fits the i16.
                Ok(()) => chunk.len() as i16,
                Err(e) => {
                    log::debug!("netback: cannot copy a received frame to the guest: {e}");
                    failed = true;
                    NETIF_RSP_ERROR
                }
            };
            let rsp = NetifRxResponse {
                id: req.id,
                offset: 0,
                // The host side hands finished frames (tap computes checksums before
                // user space sees a frame; passt writes them): nothing is blank, and
                // the guest verifies them itself.
                flags: if i < last { NETRXF_MORE_DATA } else { 0 },
                status,
            };
            self.rx.put_response(g, rsp.as_bytes()).map_err(ring_err)?;
        }
        if failed {
            self.stats.rx_errors += 1;
        } else {
            self.stats.rx_packets += 1;
            self.stats.rx_bytes += frame.len() as u64;
        }
        Ok(())
    }
}
