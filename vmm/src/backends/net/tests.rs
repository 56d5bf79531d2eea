//! Unit tests of netback: the rings driven as a frontend would through
//! [`FakeGrants`], a queue-backed host side, the offloads checked against an
//! independent checksum, and the real host sides (passt, tap) where present.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use xen_abi::netif::*;
use zerocopy::{FromBytes, IntoBytes};

use super::offload::{self, GsoKind};
use super::*;
use crate::backends::grant::fake::FakeGrants;
use crate::backends::grant::PAGE_SIZE;
use crate::backends::ring::RING_HEADER;

const TX_RING: GrantRef = 1;
const RX_RING: GrantRef = 2;

/// A host side made of two queues the test can see.
#[derive(Clone, Default)]
struct FakeHost {
    sent: Arc<Mutex<Vec<Vec<u8>>>>,
    incoming: Arc<Mutex<VecDeque<Vec<u8>>>>,
}

impl HostNet for FakeHost {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        self.sent.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(self.incoming.lock().unwrap().pop_front().map(|f| {
            buf[..f.len()].copy_from_slice(&f);
            f.len()
        }))
    }
    fn fd(&self) -> RawFd {
        -1
    }
}

/// A frontend: both ring pages, its producers, and a connected backend.
struct Rig {
    g: Arc<FakeGrants>,
    host: FakeHost,
    be: Option<NetBackend>,
    tx_prod: u32,
    rx_prod: u32,
}

fn params(sg: bool) -> FrontendParams {
    FrontendParams {
        tx_ring_ref: TX_RING,
        rx_ring_ref: RX_RING,
        request_rx_copy: true,
        feature_sg: sg,
        feature_rx_notify: true,
        ..Default::default()
    }
}

fn rig_with(sg: bool, host: Box<dyn HostNet>, fake: FakeHost) -> Rig {
    let g = Arc::new(FakeGrants::new(4096));
    g.grant(TX_RING, false);
    g.grant(RX_RING, false);
    let be = NetBackend::connect(g.clone(), params(sg), host).unwrap();
    Rig {
        g,
        host: fake,
        be: Some(be),
        tx_prod: 0,
        rx_prod: 0,
    }
}

fn rig(sg: bool) -> Rig {
    let host = FakeHost::default();
    rig_with(sg, Box::new(host.clone()), host)
}

impl Rig {
    fn be(&mut self) -> &mut NetBackend {
        self.be.as_mut().unwrap()
    }

    fn tx_slot(&mut self, bytes: &[u8]) {
        let off = RING_HEADER + (self.tx_prod % 256) as usize * 12;
        self.g.fill(TX_RING, off, bytes);
        self.tx_prod += 1;
    }

    fn tx_req(&mut self, gref: u32, offset: u16, flags: u16, id: u16, size: u16) {
        let r = NetifTxRequest {
            gref,
            offset,
            flags,
            id,
            size,
        };
        self.tx_slot(r.as_bytes());
    }

    fn tx_publish(&mut self) {
        self.g.fill(TX_RING, 0, &self.tx_prod.to_le_bytes());
    }

    fn u32_at(&self, gref: GrantRef, off: usize) -> u32 {
        u32::from_le_bytes(self.g.page(gref)[off..off + 4].try_into().unwrap())
    }

    fn tx_rsp(&self, i: u32) -> NetifTxResponse {
        let off = RING_HEADER + (i % 256) as usize * 12;
        NetifTxResponse::read_from_bytes(&self.g.page(TX_RING)[off..off + 4]).unwrap()
    }

    fn post_rx(&mut self, id: u16, gref: GrantRef) {
        self.g.grant(gref, false);
        let r = NetifRxRequest { id, pad: 0, gref };
        let off = RING_HEADER + (self.rx_prod % 256) as usize * 8;
        self.g.fill(RX_RING, off, r.as_bytes());
        self.rx_prod += 1;
        self.g.fill(RX_RING, 0, &self.rx_prod.to_le_bytes());
    }

    fn rx_rsp(&self, i: u32) -> NetifRxResponse {
        let off = RING_HEADER + (i % 256) as usize * 8;
        NetifRxResponse::read_from_bytes(&self.g.page(RX_RING)[off..off + 8]).unwrap()
    }

    fn sent(&self) -> Vec<Vec<u8>> {
        self.host.sent.lock().unwrap().clone()
    }

    fn incoming(&self, frame: Vec<u8>) {
        self.host.incoming.lock().unwrap().push_back(frame);
    }

    /// Grants page `gref` holding `data` at `offset`.
    fn data_page(&self, gref: GrantRef, offset: usize, data: &[u8]) {
        self.g.grant(gref, true);
        self.g.fill(gref, offset, data);
    }

    fn finish(mut self) {
        let be = self.be.take().unwrap();
        drop(be.disconnect());
        assert_eq!(self.g.live_mappings(), 0, "a grant stayed mapped");
    }
}

// ---- frames, and an independent checksum to judge the offloads by ----

const GUEST_MAC: [u8; 6] = [0x00, 0x16, 0x3e, 0x01, 0x02, 0x03];

fn eth(ethertype: u16) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&ethertype.to_be_bytes());
    f
}

/// Sums 16-bit big-endian words in a u64 and folds once at the end: not the code
/// under test's fold-as-you-go.
fn ones_sum(parts: &[&[u8]]) -> u16 {
    let mut all = Vec::new();
    for p in parts {
        all.extend_from_slice(p);
    }
    if all.len() % 2 == 1 {
        all.push(0);
    }
    let mut s: u64 = all
        .chunks(2)
        .map(|c| u64::from(c[0]) << 8 | u64::from(c[1]))
        .sum();
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// Whether the frame's IPv4 header (if any) and TCP/UDP checksums verify.
fn checksums_ok(f: &[u8]) -> bool {
    let et = u16::from_be_bytes([f[12], f[13]]);
    let (l4, proto, pseudo) = if et == 0x0800 {
        let ihl = usize::from(f[14] & 0xf) * 4;
        let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
        if ones_sum(&[&f[14..14 + ihl]]) != 0xffff {
            return false;
        }
        let l4len = (tot - ihl) as u16;
        let mut p = f[26..34].to_vec();
        p.extend_from_slice(&[0, f[23]]);
        p.extend_from_slice(&l4len.to_be_bytes());
        (&f[14 + ihl..14 + tot], f[23], p)
    } else {
        let plen = usize::from(u16::from_be_bytes([f[18], f[19]]));
        let mut p = f[22..54].to_vec();
        p.extend_from_slice(&(plen as u32).to_be_bytes());
        p.extend_from_slice(&[0, 0, 0, f[20]]);
        (&f[54..54 + plen], f[20], p)
    };
    assert!(proto == 6 || proto == 17);
    ones_sum(&[&pseudo, l4]) == 0xffff
}

fn ipv4_header(proto: u8, l4_len: usize, id: u16) -> Vec<u8> {
    let tot = (20 + l4_len) as u16;
    let mut h = vec![0x45, 0];
    h.extend_from_slice(&tot.to_be_bytes());
    h.extend_from_slice(&id.to_be_bytes());
    h.extend_from_slice(&[0x40, 0, 64, proto, 0, 0]);
    h.extend_from_slice(&[10, 0, 2, 15, 93, 184, 216, 34]);
    let c = !ones_sum(&[&h]);
    h[10..12].copy_from_slice(&c.to_be_bytes());
    h
}

fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
}

/// A TCP/IPv4 frame with `data`, its checksum field holding `csum` (blank-ish).
fn tcp4_frame(data: &[u8], flags: u8, csum: u16) -> Vec<u8> {
    let mut f = eth(0x0800);
    f.extend(ipv4_header(6, 20 + data.len(), 0x1234));
    let mut tcp = vec![0x9c, 0x40, 0x00, 0x50];
    tcp.extend_from_slice(&1_000_000u32.to_be_bytes());
    tcp.extend_from_slice(&7u32.to_be_bytes());
    tcp.extend_from_slice(&[0x50, flags, 0xff, 0xff]);
    tcp.extend_from_slice(&csum.to_be_bytes());
    tcp.extend_from_slice(&[0, 0]);
    f.extend(tcp);
    f.extend_from_slice(data);
    f
}

fn udp4_frame(data: &[u8], csum: u16) -> Vec<u8> {
    let mut f = eth(0x0800);
    f.extend(ipv4_header(17, 8 + data.len(), 1));
    f.extend_from_slice(&[0x30, 0x39, 0x00, 0x35]);
    f.extend_from_slice(&((8 + data.len()) as u16).to_be_bytes());
    f.extend_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(data);
    f
}

fn tcp6_frame(data: &[u8], csum: u16) -> Vec<u8> {
    let mut f = eth(0x86dd);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&((20 + data.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[6, 64]);
    f.extend_from_slice(&[0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x0f]);
    f.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x9c, 0x40, 0x01, 0xbb]);
    f.extend_from_slice(&5u32.to_be_bytes());
    f.extend_from_slice(&9u32.to_be_bytes());
    f.extend_from_slice(&[0x50, 0x18, 0xff, 0xff]);
    f.extend_from_slice(&csum.to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(data);
    f
}

fn arp_request(sender: [u8; 4], target: [u8; 4]) -> Vec<u8> {
    let mut f = eth(0x0806);
    f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&sender);
    f.extend_from_slice(&[0; 6]);
    f.extend_from_slice(&target);
    f
}

// ---- transmit ----

#[test]
fn a_single_slot_packet_reaches_the_host_and_is_answered() {
    let mut r = rig(true);
    let frame = arp_request([10, 0, 2, 15], [10, 0, 2, 2]);
    r.data_page(10, 100, &frame);
    r.tx_req(10, 100, 0, 7, frame.len() as u16);
    r.g.fill(TX_RING, 12, &1u32.to_le_bytes()); // rsp_event: notify on the first
    r.tx_publish();
    assert!(r.be().serve_tx().unwrap());
    assert_eq!(r.sent(), vec![frame.clone()]);
    assert_eq!(r.u32_at(TX_RING, 8), 1);
    assert_eq!(
        r.tx_rsp(0),
        NetifTxResponse {
            id: 7,
            status: NETIF_RSP_OKAY
        }
    );
    let s = r.be().stats();
    assert_eq!((s.tx_packets, s.tx_bytes), (1, frame.len() as u64));
    // Nothing more: the backend asked to be kicked for the next request.
    assert_eq!(r.u32_at(TX_RING, 4), 2);
    r.finish();
}

#[test]
fn a_scatter_gather_packet_is_put_together_from_its_slots() {
    let mut r = rig(true);
    let frame = payload(5000);
    // 4000 bytes in the first slot, then 800 and 200 elsewhere.
    r.data_page(10, 0, &frame[..4000]);
    r.data_page(11, 50, &frame[4000..4800]);
    r.data_page(12, 3896, &frame[4800..]);
    r.tx_req(10, 0, NETTXF_MORE_DATA, 1, 5000);
    r.tx_req(11, 50, NETTXF_MORE_DATA, 2, 800);
    r.tx_req(12, 3896, 0, 3, 200);
    r.tx_publish();
    r.be().serve_tx().unwrap();
    assert_eq!(r.sent(), vec![frame]);
    for (i, id) in [1, 2, 3].into_iter().enumerate() {
        assert_eq!(r.tx_rsp(i as u32).id, id);
        assert_eq!(r.tx_rsp(i as u32).status, NETIF_RSP_OKAY);
    }
    assert_eq!(r.u32_at(TX_RING, 8), 3);
    r.finish();
}

#[test]
fn blank_checksums_are_completed() {
    let mut r = rig(true);
    let frames = [
        // The pseudo-header sum Linux leaves, garbage, and zero.
        tcp4_frame(&payload(333), 0x18, 0x1234),
        udp4_frame(&payload(101), 0xbeef),
        tcp6_frame(&payload(1000), 0),
    ];
    for (i, f) in frames.iter().enumerate() {
        assert!(!checksums_ok(f));
        r.data_page(10 + i as u32, 0, f);
        r.tx_req(
            10 + i as u32,
            0,
            NETTXF_CSUM_BLANK | NETTXF_DATA_VALIDATED,
            i as u16,
            f.len() as u16,
        );
    }
    r.tx_publish();
    r.be().serve_tx().unwrap();
    let sent = r.sent();
    assert_eq!(sent.len(), 3);
    for (s, f) in sent.iter().zip(&frames) {
        assert!(checksums_ok(s), "a completed checksum does not verify");
        // Only the checksum field changed.
        let field = if s[23] == 17 {
            40
        } else if s[12] == 0x86 {
            70
        } else {
            50
        };
        assert_eq!(s[..field], f[..field]);
        assert_eq!(s[field + 2..], f[field + 2..]);
    }
    // A UDP checksum computing to zero goes out as 0xffff: check the helper alone.
    let mut z = udp4_frame(&[0, 0], 0);
    offload::complete_checksum(&mut z).unwrap();
    assert!(checksums_ok(&z));
    r.finish();
}

#[test]
fn a_tcp_gso_packet_is_cut_into_mss_segments() {
    let mut r = rig(true);
    let data = payload(20_000);
    let frame = tcp4_frame(&data, 0x19 /* FIN PSH ACK */, 0);
    let total = frame.len();
    let mss = 1448u16;
    // First slot, a GSO extra, then the rest in page-sized slots.
    let chunks: Vec<&[u8]> = frame.chunks(PAGE_SIZE).collect();
    for (i, c) in chunks.iter().enumerate() {
        r.data_page(20 + i as u32, 0, c);
    }
    r.tx_req(
        20,
        0,
        NETTXF_CSUM_BLANK | NETTXF_MORE_DATA | NETTXF_EXTRA_INFO,
        0,
        total as u16,
    );
    r.tx_slot(NetifExtraInfo::gso(mss, XEN_NETIF_GSO_TYPE_TCPV4, 0).as_bytes());
    for (i, c) in chunks.iter().enumerate().skip(1) {
        let more = if i + 1 < chunks.len() {
            NETTXF_MORE_DATA
        } else {
            0
        };
        r.tx_req(20 + i as u32, 0, more, i as u16, c.len() as u16);
    }
    r.tx_publish();
    r.be().serve_tx().unwrap();

    let segs = r.sent();
    assert_eq!(segs.len(), 20_000usize.div_ceil(1448));
    let mut joined = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        assert!(checksums_ok(s), "segment {i} has a bad checksum");
        let plen = s.len() - 54;
        assert!(plen <= usize::from(mss));
        assert_eq!(
            usize::from(u16::from_be_bytes([s[16], s[17]])),
            s.len() - 14
        );
        assert_eq!(u16::from_be_bytes([s[18], s[19]]), 0x1234 + i as u16);
        let seq = u32::from_be_bytes(s[38..42].try_into().unwrap());
        assert_eq!(seq, 1_000_000 + (i * usize::from(mss)) as u32);
        let last = i + 1 == segs.len();
        assert_eq!(s[47] & 0x09 != 0, last, "FIN/PSH only on the last segment");
        assert_eq!(s[47] & 0x10, 0x10);
        joined.extend_from_slice(&s[54..]);
    }
    assert_eq!(joined, data);
    // One response per slot; the extra slot's is NULL.
    assert_eq!(r.u32_at(TX_RING, 8), 1 + chunks.len() as u32);
    assert_eq!(r.tx_rsp(0).status, NETIF_RSP_OKAY);
    assert_eq!(r.tx_rsp(1).status, NETIF_RSP_NULL);
    assert_eq!(r.tx_rsp(2).status, NETIF_RSP_OKAY);
    assert_eq!(r.be().stats().tx_packets, segs.len() as u64);
    r.finish();
}

#[test]
fn tcp6_segmentation_and_the_helpers_refusals() {
    let f = tcp6_frame(&payload(3000), 0);
    let segs = offload::segment_tcp(&f, GsoKind::TcpV6, 1000).unwrap();
    assert_eq!(segs.len(), 3);
    assert!(segs.iter().all(|s| checksums_ok(s)));
    assert_eq!(
        offload::segment_tcp(&f, GsoKind::TcpV4, 1000),
        Err(offload::OffloadError::GsoMismatch)
    );
    assert!(matches!(
        offload::segment_tcp(&f, GsoKind::TcpV6, 0),
        Err(offload::OffloadError::GsoSize(0))
    ));
    // A length field beyond the frame is refused, not followed.
    let mut bad = tcp4_frame(&payload(10), 0, 0);
    bad[16..18].copy_from_slice(&9000u16.to_be_bytes());
    assert!(offload::complete_checksum(&mut bad).is_err());
    assert!(offload::complete_checksum(&mut arp_request([0; 4], [0; 4])).is_err());
    // A fragment (more-fragments set) is not checksummed alone.
    let mut frag = udp4_frame(&payload(10), 0);
    frag[20] |= 0x20;
    assert_eq!(
        offload::complete_checksum(&mut frag),
        Err(offload::OffloadError::Fragment)
    );
}

#[test]
fn malformed_packets_get_error_responses_and_the_ring_goes_on() {
    let mut r = rig(true);
    let good = arp_request([10, 0, 2, 15], [10, 0, 2, 2]);
    r.data_page(10, 0, &payload(4096));
    r.data_page(11, 0, &good);
    // The following slot holds more than the whole packet's size.
    r.tx_req(10, 0, NETTXF_MORE_DATA, 1, 100);
    r.tx_req(10, 0, 0, 2, 200);
    // A grant that was never made.
    r.tx_req(999, 0, 0, 3, 60);
    // A slot past its page's end.
    r.tx_req(10, 4000, 0, 4, 200);
    // Shorter than an Ethernet header.
    r.tx_req(10, 0, 0, 5, 10);
    // A good one after them all.
    r.tx_req(11, 0, 0, 6, good.len() as u16);
    r.tx_publish();
    r.be().serve_tx().unwrap();
    let rsps: Vec<_> = (0..6).map(|i| r.tx_rsp(i)).collect();
    let expect = [
        (1, NETIF_RSP_ERROR),
        (2, NETIF_RSP_ERROR),
        (3, NETIF_RSP_ERROR),
        (4, NETIF_RSP_ERROR),
        (5, NETIF_RSP_ERROR),
        (6, NETIF_RSP_OKAY),
    ];
    for (rsp, (id, status)) in rsps.iter().zip(expect) {
        assert_eq!((rsp.id, rsp.status), (id, status));
    }
    assert_eq!(r.sent(), vec![good]);
    let s = r.be().stats();
    assert_eq!((s.tx_errors, s.tx_packets), (4, 1));
    r.finish();
}

#[test]
fn too_many_slots_or_a_chain_past_the_producer_is_fatal() {
    let mut r = rig(true);
    r.data_page(10, 0, &payload(4096));
    for i in 0..25 {
        r.tx_req(10, 0, NETTXF_MORE_DATA, i, 60);
    }
    r.tx_publish();
    assert!(matches!(r.be().serve_tx(), Err(NetError::FatalTx(_))));
    r.finish();

    // 19 slots: over the 18 every backend takes, under the fatal 20: dropped.
    let mut r = rig(true);
    r.data_page(10, 0, &payload(4096));
    for i in 0..19u16 {
        let more = if i < 18 { NETTXF_MORE_DATA } else { 0 };
        r.tx_req(10, 0, more, i, if i == 0 { 19 * 60 } else { 60 });
    }
    r.tx_publish();
    r.be().serve_tx().unwrap();
    assert!((0..19).all(|i| r.tx_rsp(i).status == NETIF_RSP_ERROR));
    r.finish();

    let mut r = rig(true);
    r.data_page(10, 0, &payload(4096));
    r.tx_req(10, 0, NETTXF_MORE_DATA, 1, 120);
    r.tx_publish();
    assert!(matches!(r.be().serve_tx(), Err(NetError::FatalTx(_))));
    // An invalid extra type is fatal too.
    let mut r2 = rig(true);
    r2.data_page(10, 0, &payload(4096));
    r2.tx_req(10, 0, NETTXF_EXTRA_INFO, 1, 60);
    r2.tx_slot(&[9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    r2.tx_publish();
    assert!(matches!(r2.be().serve_tx(), Err(NetError::FatalTx(_))));
    r.finish();
    // Dropped on the error path without a disconnect: the rings are unmapped still.
    let g = r2.g.clone();
    drop(r2);
    assert_eq!(g.live_mappings(), 0);
}

#[test]
fn an_overrun_producer_is_a_ring_error() {
    let mut r = rig(true);
    r.tx_prod = 300;
    r.tx_publish();
    assert!(matches!(
        r.be().serve_tx(),
        Err(NetError::Ring { dir: Dir::Tx, .. })
    ));
    r.finish();
}

// ---- receive ----

#[test]
fn a_frame_lands_in_a_posted_buffer() {
    let mut r = rig(true);
    r.post_rx(5, 30);
    r.post_rx(6, 31);
    r.g.fill(RX_RING, 12, &1u32.to_le_bytes());
    let frame = payload(100);
    r.incoming(frame.clone());
    assert!(r.be().serve_rx().unwrap());
    assert_eq!(&r.g.page(30)[..100], &frame[..]);
    assert_eq!(
        r.rx_rsp(0),
        NetifRxResponse {
            id: 5,
            offset: 0,
            flags: 0,
            status: 100
        }
    );
    assert_eq!(r.u32_at(RX_RING, 8), 1);
    let s = r.be().stats();
    assert_eq!((s.rx_packets, s.rx_bytes), (1, 100));
    r.finish();
}

#[test]
fn frames_wait_for_buffers_and_the_backlog_is_bounded() {
    let mut r = rig(true);
    for i in 0..3u8 {
        r.incoming(vec![i; 60]);
    }
    assert!(!r.be().serve_rx().unwrap());
    assert_eq!(r.be().rx_backlog(), 3);
    // It asked to be kicked on the next rx request.
    assert_eq!(r.u32_at(RX_RING, 4), 1);
    for i in 0..3 {
        r.post_rx(i, 40 + u32::from(i));
    }
    r.be().serve_rx().unwrap();
    assert_eq!(r.be().rx_backlog(), 0);
    for i in 0..3u8 {
        assert_eq!(r.g.page(40 + u32::from(i))[..60], [i; 60]);
        assert_eq!(r.rx_rsp(u32::from(i)).status, 60);
    }
    // A full backlog stops reading the host side: nothing is dropped, the rest
    // waits there, in order.
    for i in 0..(RX_BACKLOG + 44) {
        r.incoming(vec![i as u8; 60]);
    }
    r.be().serve_rx().unwrap();
    r.be().serve_rx().unwrap();
    assert_eq!(r.be().rx_backlog(), RX_BACKLOG);
    assert!(!r.be().wants_host_input());
    assert_eq!(r.be().stats().rx_dropped, 0);
    r.post_rx(99, 60);
    r.be().serve_rx().unwrap();
    assert_eq!(r.g.page(60)[0], 0);
    // Every frame arrives, in order, as buffers come.
    for n in 1..(RX_BACKLOG + 44) {
        r.post_rx(100 + n as u16, 60);
        r.be().serve_rx().unwrap();
        assert_eq!(r.g.page(60)[0], n as u8, "frame {n}");
    }
    assert_eq!(r.be().rx_backlog(), 0);
    assert!(r.be().wants_host_input());
    assert_eq!(r.be().stats().rx_dropped, 0);
    r.finish();
}

#[test]
fn a_frame_larger_than_a_page_spans_buffers_with_sg_only() {
    let mut r = rig(true);
    r.post_rx(1, 30);
    r.post_rx(2, 31);
    let frame = payload(6000);
    r.incoming(frame.clone());
    r.be().serve_rx().unwrap();
    let a = r.rx_rsp(0);
    let b = r.rx_rsp(1);
    assert_eq!((a.id, a.flags, a.status), (1, NETRXF_MORE_DATA, 4096));
    assert_eq!((b.id, b.flags, b.status), (2, 0, 1904));
    let mut got = r.g.page(30);
    got.extend_from_slice(&r.g.page(31)[..1904]);
    assert_eq!(got, frame);
    r.finish();

    let mut r = rig(false);
    r.post_rx(1, 30);
    r.post_rx(2, 31);
    r.incoming(payload(6000));
    r.incoming(payload(1500));
    r.be().serve_rx().unwrap();
    // The big one is dropped; the next frame takes the first buffer.
    assert_eq!(r.be().stats().rx_dropped, 1);
    assert_eq!(r.rx_rsp(0).status, 1500);
    assert_eq!(r.u32_at(RX_RING, 8), 1);
    r.finish();
}

#[test]
fn a_bad_rx_grant_is_an_error_response() {
    let mut r = rig(true);
    r.post_rx(1, 30);
    r.g.revoke(30);
    r.incoming(payload(60));
    r.be().serve_rx().unwrap();
    assert_eq!(r.rx_rsp(0).status, NETIF_RSP_ERROR);
    assert_eq!(r.be().stats().rx_errors, 1);
    r.finish();
}

// ---- connecting ----

#[test]
fn connect_refuses_flip_mode_and_unmaps_on_failure() {
    let g = Arc::new(FakeGrants::new(16));
    g.grant(TX_RING, false);
    let p = FrontendParams {
        request_rx_copy: false,
        ..params(true)
    };
    let e = NetBackend::connect(g.clone(), p, Box::new(FakeHost::default())).unwrap_err();
    assert!(matches!(e, NetError::RxCopyRequired));
    assert!(e.to_string().contains("request-rx-copy"));
    // The rx ring's grant is missing: the tx mapping is given back.
    let e =
        NetBackend::connect(g.clone(), params(true), Box::new(FakeHost::default())).unwrap_err();
    assert!(matches!(e, NetError::MapRing { dir: Dir::Rx, .. }));
    assert_eq!(g.live_mappings(), 0);
}

#[test]
fn frontend_keys_are_read_as_netback_reads_them() {
    let keys = [
        ("tx-ring-ref", "8"),
        ("rx-ring-ref", "9"),
        ("request-rx-copy", "1"),
        ("feature-rx-notify", "1"),
        ("feature-sg", "1"),
        ("feature-gso-tcpv4", "1"),
    ];
    let read = |k: &str| {
        keys.iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
    };
    let p = FrontendParams::from_keys(read).unwrap();
    assert_eq!((p.tx_ring_ref, p.rx_ring_ref), (8, 9));
    assert!(p.request_rx_copy && p.feature_sg && p.feature_gso_tcpv4 && p.feature_rx_notify);
    assert!(!p.feature_gso_tcpv6 && !p.feature_no_csum_offload);
    assert!(matches!(
        FrontendParams::from_keys(|_| None),
        Err(NetError::MissingKey("tx-ring-ref"))
    ));
    assert!(matches!(
        FrontendParams::from_keys(|k| Some(if k == "rx-ring-ref" { "x" } else { "1" }.into())),
        Err(NetError::BadKey {
            key: "rx-ring-ref",
            ..
        })
    ));
    let mac = Mac([0, 0x16, 0x3e, 1, 2, 3]);
    let b = backend_keys(mac);
    let get = |k: &str| b.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("feature-rx-copy"), Some("1"));
    assert_eq!(get("feature-sg"), Some("1"));
    assert_eq!(get("feature-split-event-channels"), Some("0"));
    assert_eq!(get("mac"), Some("00:16:3e:01:02:03"));
    assert_eq!(get("multi-queue-max-queues"), None);
    assert_eq!(frontend_keys(mac)[0].1, "00:16:3e:01:02:03");
}

// ---- the command line ----

#[test]
fn net_specs_parse_and_name_their_bad_parts() {
    assert_eq!(
        NetSpec::parse("tap=vif0,mac=00:16:3e:aa:bb:cc").unwrap(),
        NetSpec {
            host: HostSpec::Tap("vif0".into()),
            mac: Some(Mac([0, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]))
        }
    );
    let s = NetSpec::parse(
        "user,mac=02:00:00:00:00:01,hostfwd=tcp::2222-:22,hostfwd=udp:127.0.0.1:5353-:53",
    )
    .unwrap();
    assert_eq!(s.mac, Some(Mac([2, 0, 0, 0, 0, 1])));
    let HostSpec::User(fwds) = &s.host else {
        panic!("not user")
    };
    assert_eq!(
        fwds,
        &vec![
            HostFwd {
                proto: Proto::Tcp,
                host_addr: None,
                host_port: 2222,
                guest_port: 22
            },
            HostFwd {
                proto: Proto::Udp,
                host_addr: Some("127.0.0.1".parse().unwrap()),
                host_port: 5353,
                guest_port: 53
            }
        ]
    );
    assert_eq!(
        user::passt_forward_args(fwds),
        vec!["-t", "2222:22", "-u", "127.0.0.1/5353:53"]
    );
    assert_eq!(NetSpec::parse("user").unwrap().mac, None);

    assert_eq!(
        NetSpec::parse("bridge=br0,mac=00:16:3e:00:00:01")
            .unwrap()
            .host,
        HostSpec::Bridge("br0".into())
    );

    let err = |s: &str| NetSpec::parse(s).unwrap_err().to_string();
    assert!(err("vde=sw0").contains("`vde=sw0`"));
    assert!(err("bridge=").contains("interface name"));
    assert!(err("tap=").contains("tap interface name"));
    assert!(err("tap=waytoolongname0123").contains("waytoolongname0123"));
    assert!(err("tap=t0,hostfwd=tcp::1-:2").contains("hostfwd=tcp::1-:2"));
    assert!(err("user,mac=00:16:3e:zz:00:00").contains("00:16:3e:zz:00:00"));
    assert!(err("user,mac=01:00:5e:00:00:01").contains("multicast"));
    assert!(err("user,hostfwd=sctp::1-:2").contains("sctp::1-:2"));
    assert!(err("user,hostfwd=tcp::0-:22").contains("host port"));
    assert!(err("user,hostfwd=tcp::22-10.0.0.1:22").contains("guest address"));
    assert!(err("user,speed=fast").contains("speed=fast"));
    assert!(matches!(
        NetSpec::parse("user,mac=00:16:3e:00:00:01,mac=00:16:3e:00:00:02"),
        Err(SpecError::DuplicateMac)
    ));

    let a = Mac::random_local();
    assert_eq!(a.0[..3], [0x00, 0x16, 0x3e]);
    assert_eq!(a.to_string().parse::<Mac>().unwrap(), a);
}

// ---- the real host sides ----

/// The host's IPv4 default gateway (passt answers ARP for it), or a stand-in.
fn default_gateway() -> [u8; 4] {
    let routes = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    for line in routes.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() > 2 && f[1] == "00000000" {
            if let Ok(gw) = u32::from_str_radix(f[2], 16) {
                if gw != 0 {
                    return gw.to_le_bytes();
                }
            }
        }
    }
    [10, 0, 2, 2]
}

fn passt_installed() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join("passt").is_file()))
}

/// Serves rx until a delivered frame satisfies `want`, for up to 5 s.
fn await_rx(r: &mut Rig, seen: &mut u32, want: impl Fn(&[u8]) -> bool) -> Option<NetifRxResponse> {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        r.be().serve_rx().unwrap();
        let n = r.u32_at(RX_RING, 8);
        while *seen < n {
            let rsp = r.rx_rsp(*seen);
            *seen += 1;
            let page = r.g.page(100 + u32::from(rsp.id));
            if rsp.status > 0 && want(&page[..rsp.status as usize]) {
                return Some(rsp);
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

#[test]
fn passt_answers_arp_and_forwards_a_host_port_through_the_rings() {
    assert!(
        passt_installed(),
        "passt is not installed: run guest-images/scripts/install-deps.sh (Debian package `passt`)"
    );
    // A host port that is free now, forwarded to the guest's port 22.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let spec = NetSpec::parse(&format!("user,hostfwd=tcp:127.0.0.1:{port}-:22")).unwrap();
    let HostSpec::User(fwds) = &spec.host else {
        panic!("not user")
    };
    let user = UserNet::start(fwds).expect("passt starts");
    let pid = user.pid();
    let mut r = rig_with(true, Box::new(user), FakeHost::default());
    for i in 0..64 {
        r.post_rx(i, 100 + u32::from(i));
    }
    let gw = default_gateway();
    let arp = arp_request([10, 0, 2, 15], gw);
    r.data_page(10, 0, &arp);
    r.tx_req(10, 0, 0, 1, arp.len() as u16);
    r.tx_publish();
    r.be().serve_tx().unwrap();
    assert_eq!(r.be().stats().tx_packets, 1);

    // An ARP reply (opcode 2) from the gateway's address.
    let mut seen = 0;
    let reply = await_rx(&mut r, &mut seen, |f| {
        f[12..14] == [8, 6] && f[20..22] == [0, 2] && f[28..32] == gw
    })
    .expect("passt answered the ARP request within 5 s");
    assert_eq!(reply.status, 42);

    // A connection to the forwarded host port becomes a SYN to the guest's port 22.
    let _client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let syn = await_rx(&mut r, &mut seen, |f| {
        f.len() >= 54
            && f[12..14] == [8, 0]
            && f[23] == 6
            && f[36..38] == [0, 22]
            && f[47] & 0x02 != 0
    });
    assert!(
        syn.is_some(),
        "passt forwarded the host port as a SYN to guest port 22"
    );
    assert_eq!(r.be().stats().rx_packets as u32, r.u32_at(RX_RING, 8));
    r.finish();
    // Dropping the backend's host side killed and reaped passt.
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[test]
fn a_tap_interface_opens_up_and_takes_frames_as_root() {
    // SAFETY: geteuid(2) has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    assert!(
        root,
        "the tap test needs root (CAP_NET_ADMIN): run it as root"
    );
    let name = format!("pvkt{}", std::process::id() % 100_000);
    let mut tap = Tap::open(&name).expect("tap opens");
    assert_eq!(tap.name(), name);
    let flags = std::fs::read_to_string(format!("/sys/class/net/{name}/flags")).unwrap();
    let flags = u32::from_str_radix(flags.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(flags & 1, 1, "the link is up");
    tap.send(&arp_request([10, 0, 2, 15], [10, 0, 2, 2]))
        .unwrap();
    let mut buf = vec![0; MAX_HOST_FRAME];
    // Non-blocking: nothing or whatever the host stack sent (router solicitations).
    let _ = tap.recv(&mut buf).unwrap();
    // A second open of the same interface is refused as busy.
    assert!(matches!(Tap::open(&name), Err(TapError::Busy(..))));
    drop(tap);
    // Not persistent: it is gone with its descriptor.
    assert!(!std::path::Path::new(&format!("/sys/class/net/{name}")).exists());
}

#[test]
fn passt_framing_survives_partial_reads_and_a_full_socket() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    let (ours, mut peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut s = user::FrameStream::new(ours);
    let mut buf = vec![0; MAX_HOST_FRAME];

    // A frame arriving a byte at a time, then two at once.
    let frame = payload(300);
    let mut wire = (frame.len() as u32).to_be_bytes().to_vec();
    wire.extend_from_slice(&frame);
    for b in &wire[..wire.len() - 1] {
        peer.write_all(&[*b]).unwrap();
        assert_eq!(s.recv(&mut buf).unwrap(), None);
    }
    peer.write_all(&wire[wire.len() - 1..]).unwrap();
    assert_eq!(s.recv(&mut buf).unwrap(), Some(300));
    assert_eq!(buf[..300], frame[..]);
    let mut two = wire.clone();
    two.extend_from_slice(&[0, 0, 0, 2, 0xaa, 0xbb]);
    peer.write_all(&two).unwrap();
    assert_eq!(s.recv(&mut buf).unwrap(), Some(300));
    assert_eq!(s.recv(&mut buf).unwrap(), Some(2));
    assert_eq!(buf[..2], [0xaa, 0xbb]);
    assert_eq!(s.recv(&mut buf).unwrap(), None);

    // Sending more than the socket holds queues the rest, then drops past the limit.
    let big = payload(60_000);
    let mut sent = 0;
    loop {
        match s.send(&big) {
            Ok(()) => sent += 1,
            Err(e) => {
                assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
                break;
            }
        }
        assert!(sent < 1000, "the queue is unbounded");
    }
    assert!(s.wants_write());
    // The peer drains; flushing delivers every accepted frame, whole and in order.
    peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut got = 0;
    let mut hdr = [0u8; 4];
    while got < sent {
        s.flush().unwrap();
        peer.read_exact(&mut hdr).unwrap();
        assert_eq!(u32::from_be_bytes(hdr) as usize, big.len());
        let mut f = vec![0; big.len()];
        // Keep flushing while reading: the peer's reads make room.
        let mut at = 0;
        while at < f.len() {
            s.flush().unwrap();
            at += peer.read(&mut f[at..]).unwrap();
        }
        assert_eq!(f, big);
        got += 1;
    }
    s.flush().unwrap();
    assert!(!s.wants_write());

    // A length no frame can have means the stream is out of step.
    peer.write_all(&[0xff, 0xff, 0xff, 0xff]).unwrap();
    assert_eq!(
        s.recv(&mut buf).unwrap_err().kind(),
        io::ErrorKind::InvalidData
    );
    // The peer going away is an end of stream, not "no frame yet".
    let (ours, peer) = UnixStream::pair().unwrap();
    ours.set_nonblocking(true).unwrap();
    let mut s = user::FrameStream::new(ours);
    drop(peer);
    assert_eq!(
        s.recv(&mut buf).unwrap_err().kind(),
        io::ErrorKind::UnexpectedEof
    );
}
