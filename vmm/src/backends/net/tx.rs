//! The transmit path (guest to host), after Linux netback's `xenvif_tx_action`:
//! read one packet's slots (`xenvif_count_requests`, `xenvif_get_extras`), check them,
//! copy the data out of the granted pages (`xenvif_tx_build_gops`), finish checksums
//! and segment GSO packets (`checksum_setup`, and the GSO the host stack would do),
//! hand the frames to the host side, and answer every slot (`make_tx_response`).

use std::io;

use xen_abi::netif::{
    NetifExtraInfo, NetifTxRequest, NetifTxResponse, NETIF_RSP_ERROR, NETIF_RSP_NULL,
    NETIF_RSP_OKAY, NETTXF_CSUM_BLANK, NETTXF_EXTRA_INFO, NETTXF_MORE_DATA,
    XEN_NETIF_EXTRA_FLAG_MORE, XEN_NETIF_EXTRA_TYPE_GSO, XEN_NETIF_EXTRA_TYPE_MAX,
    XEN_NETIF_EXTRA_TYPE_MCAST_ADD, XEN_NETIF_EXTRA_TYPE_MCAST_DEL, XEN_NETIF_EXTRA_TYPE_NONE,
    XEN_NETIF_GSO_TYPE_TCPV4, XEN_NETIF_GSO_TYPE_TCPV6, XEN_NETIF_NR_SLOTS_MIN,
};
use zerocopy::{FromBytes, IntoBytes};

use super::offload::{self, GsoKind, ETH_HLEN};
use super::{Dir, NetBackend, NetError};
use crate::backends::grant::{GrantAccess, PAGE_SIZE};
use crate::backends::ring::{BackRing, RingError};

/// Data slots per packet a well-behaved frontend stays within (netback's
/// `max_skb_slots`); a packet with more is dropped.
pub const MAX_SKB_SLOTS: usize = XEN_NETIF_NR_SLOTS_MIN;
/// Data slots past which the frontend is broken (netback's `fatal_skb_slots`).
pub const FATAL_SKB_SLOTS: usize = 20;
/// Packets one [`NetBackend::serve_tx`] call takes before returning, so a busy guest
/// cannot starve the receive side on the same thread.
pub const TX_BUDGET: usize = 64;

/// One packet's slots as read from the ring.
struct TxPacket {
    first: NetifTxRequest,
    /// Extra-info slots after the first request.
    nr_extras: u32,
    gso: Option<NetifExtraInfo>,
    /// A multicast-filter update: a dummy request that carries no frame.
    mcast: bool,
    /// The data slots after the first.
    frags: Vec<NetifTxRequest>,
}

impl TxPacket {
    fn slots(&self) -> u32 {
        1 + self.nr_extras + self.frags.len() as u32
    }
}

fn ring_err(source: RingError) -> NetError {
    NetError::Ring {
        dir: Dir::Tx,
        source,
    }
}

fn peek<T: FromBytes>(ring: &BackRing, g: &dyn GrantAccess, ahead: u32) -> Result<T, NetError> {
    let mut buf = [0u8; 12];
    ring.peek_request(g, ahead, &mut buf).map_err(ring_err)?;
    T::read_from_prefix(&buf)
        .map(|(v, _)| v)
        .map_err(|_| NetError::FatalTx("a slot is shorter than its structure".into()))
}

/// Reads the packet starting at the next request, of the `avail` produced; takes
/// nothing. Errors are the frontend's unrecoverable faults (`xenvif_fatal_tx_err`).
fn read_packet(ring: &BackRing, g: &dyn GrantAccess, avail: u32) -> Result<TxPacket, NetError> {
    let first: NetifTxRequest = peek(ring, g, 0)?;
    let mut idx = 1;
    let mut pkt = TxPacket {
        first,
        nr_extras: 0,
        gso: None,
        mcast: false,
        frags: Vec::new(),
    };
    if first.flags & NETTXF_EXTRA_INFO != 0 {
        loop {
            if idx >= avail {
                return Err(NetError::FatalTx(
                    "an extra-info slot is missing: the packet runs past the requests produced"
                        .into(),
                ));
            }
            let extra: NetifExtraInfo = peek(ring, g, idx)?;
            idx += 1;
            pkt.nr_extras += 1;
            match extra.ty {
                XEN_NETIF_EXTRA_TYPE_NONE => {
                    return Err(NetError::FatalTx("an extra-info slot has no type".into()))
                }
                t if t >= XEN_NETIF_EXTRA_TYPE_MAX => {
                    return Err(NetError::FatalTx(format!(
                        "an extra-info slot has the unknown type {t}"
                    )))
                }
                XEN_NETIF_EXTRA_TYPE_GSO => pkt.gso = Some(extra),
                XEN_NETIF_EXTRA_TYPE_MCAST_ADD | XEN_NETIF_EXTRA_TYPE_MCAST_DEL => pkt.mcast = true,
                // A hash the frontend computed: of no use here.
                _ => {}
            }
            if extra.flags & XEN_NETIF_EXTRA_FLAG_MORE == 0 {
                break;
            }
        }
    }
    let mut more = first.flags & NETTXF_MORE_DATA != 0;
    while more {
        if pkt.frags.len() + 1 >= FATAL_SKB_SLOTS {
            return Err(NetError::FatalTx(format!(
                "a packet spans more than {FATAL_SKB_SLOTS} slots"
            )));
        }
        if idx >= avail {
            return Err(NetError::FatalTx(
                "a packet's data slots run past the requests produced".into(),
            ));
        }
        let frag: NetifTxRequest = peek(ring, g, idx)?;
        idx += 1;
        more = frag.flags & NETTXF_MORE_DATA != 0;
        pkt.frags.push(frag);
    }
    Ok(pkt)
}

/// Why a packet is answered with `NETIF_RSP_ERROR` and dropped (`xenvif_tx_err`).
fn check_packet(pkt: &TxPacket) -> Result<(), String> {
    if pkt.frags.len() + 1 > MAX_SKB_SLOTS {
        return Err(format!(
            "{} data slots, more than {MAX_SKB_SLOTS}",
            pkt.frags.len() + 1
        ));
    }
    let total = usize::from(pkt.first.size);
    if total < ETH_HLEN {
        return Err(format!(
            "a packet of {total} bytes is shorter than an Ethernet header"
        ));
    }
    let rest: usize = pkt.frags.iter().map(|f| usize::from(f.size)).sum();
    if rest > total {
        return Err(format!(
            "the following slots hold {rest} bytes, more than the packet's {total}"
        ));
    }
    let first_len = total - rest;
    let slots = std::iter::once((pkt.first, first_len))
        .chain(pkt.frags.iter().map(|f| (*f, usize::from(f.size))));
    for (req, len) in slots {
        if usize::from(req.offset) + len > PAGE_SIZE {
            return Err(format!(
                "a slot of {len} bytes at offset {} crosses its page's end",
                req.offset
            ));
        }
    }
    Ok(())
}

impl NetBackend {
    /// Serves the transmit ring: takes up to [`TX_BUDGET`] packets, hands their frames
    /// to the host side and answers every slot. Returns whether to notify the frontend.
    /// An error means the frontend broke the protocol (or the ring): disconnect.
    pub fn serve_tx(&mut self) -> Result<bool, NetError> {
        let grants = self.grants.clone();
        let g = &*grants;
        let mut notify = false;
        let mut done = 0;
        self.tx_more = false;
        loop {
            let avail = self.tx.unconsumed_requests(g).map_err(ring_err)?;
            if avail == 0 {
                notify |= self.tx.push_responses(g).map_err(ring_err)?;
                if self.tx.final_check_for_requests(g).map_err(ring_err)? {
                    continue;
                }
                break;
            }
            if done == TX_BUDGET {
                self.tx_more = true;
                break;
            }
            let pkt = read_packet(&self.tx, g, avail)?;
            self.tx.consume(pkt.slots());
            let status = self.tx_packet(g, &pkt);
            self.tx_respond(g, &pkt, status)?;
            done += 1;
        }
        notify |= self.tx.push_responses(g).map_err(ring_err)?;
        Ok(notify)
    }

    /// Checks, copies, finishes and sends one packet; returns its response status.
    fn tx_packet(&mut self, g: &dyn GrantAccess, pkt: &TxPacket) -> i16 {
        if let Err(why) = check_packet(pkt) {
            log::debug!("netback: dropping a malformed transmit packet: {why}");
            self.stats.tx_errors += 1;
            return NETIF_RSP_ERROR;
        }
        if pkt.mcast {
            // A multicast-filter update (not offered, so not expected): nothing to send.
            return NETIF_RSP_OKAY;
        }
        let total = usize::from(pkt.first.size);
        let rest: usize = pkt.frags.iter().map(|f| usize::from(f.size)).sum();
        let mut data = vec![0u8; total];
        let mut at = 0;
        let pieces = std::iter::once((pkt.first, total - rest))
            .chain(pkt.frags.iter().map(|f| (*f, usize::from(f.size))));
        for (req, len) in pieces {
            let dst = &mut data[at..at + len];
            if let Err(e) = g.copy_from(req.gref, usize::from(req.offset), dst) {
                log::debug!("netback: dropping a transmit packet: {e}");
                self.stats.tx_errors += 1;
                return NETIF_RSP_ERROR;
            }
            at += len;
        }

        if let Some(gso) = pkt.gso {
            let kind = match gso.gso_type() {
                XEN_NETIF_GSO_TYPE_TCPV4 => GsoKind::TcpV4,
                XEN_NETIF_GSO_TYPE_TCPV6 => GsoKind::TcpV6,
                t => {
                    log::debug!("netback: dropping a packet of unknown GSO type {t}");
                    self.stats.tx_errors += 1;
                    return NETIF_RSP_ERROR;
                }
            };
            // GSO packets are checksummed per segment whether or not the frontend
            // flagged the checksum blank (netback's `rx_gso_checksum_fixup` case).
            match offload::segment_tcp(&data, kind, gso.gso_size()) {
                Ok(segs) => {
                    for s in segs {
                        self.tx_send(&s);
                    }
                }
                Err(e) => {
                    log::debug!("netback: cannot segment a GSO packet: {e}");
                    self.stats.tx_dropped += 1;
                }
            }
            return NETIF_RSP_OKAY;
        }
        if pkt.first.flags & NETTXF_CSUM_BLANK != 0 {
            if let Err(e) = offload::complete_checksum(&mut data) {
                // The data was taken; the packet cannot be finished (Linux drops it
                // after answering OKAY too).
                log::debug!("netback: cannot complete a blank checksum: {e}");
                self.stats.tx_dropped += 1;
                return NETIF_RSP_OKAY;
            }
        }
        self.tx_send(&data);
        NETIF_RSP_OKAY
    }

    fn tx_send(&mut self, frame: &[u8]) {
        match self.host.send(frame) {
            Ok(()) => {
                self.stats.tx_packets += 1;
                self.stats.tx_bytes += frame.len() as u64;
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.stats.tx_dropped += 1,
            Err(e) => {
                log::debug!("netback: the host side refused a frame: {e}");
                self.stats.tx_errors += 1;
            }
        }
    }

    /// One response per slot: the packet's status for data slots, `NETIF_RSP_NULL`
    /// for extra-info slots.
    fn tx_respond(
        &mut self,
        g: &dyn GrantAccess,
        pkt: &TxPacket,
        status: i16,
    ) -> Result<(), NetError> {
        let mut put = |id, status| {
            let rsp = NetifTxResponse { id, status };
            self.tx.put_response(g, rsp.as_bytes()).map_err(ring_err)
        };
        put(pkt.first.id, status)?;
        for _ in 0..pkt.nr_extras {
            put(0, NETIF_RSP_NULL)?;
        }
        for f in &pkt.frags {
            put(f.id, status)?;
        }
        Ok(())
    }
}
