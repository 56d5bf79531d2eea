//! Software versions of the offloads a netfront asks of its backend: completing a
//! blank TCP/UDP checksum (`NETTXF_csum_blank`) and segmenting a TCP GSO packet into
//! MSS-sized frames. The host sides (a tap without `IFF_VNET_HDR`, passt's socket) take
//! whole, finished Ethernet frames only, so both happen here.
//!
//! The parsers read only what the frame holds: every length comes from the guest and
//! is checked against the bytes present before use.

use thiserror::Error;

/// Ethernet header bytes (no VLAN tag).
pub const ETH_HLEN: usize = 14;
const ETH_P_IPV4: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_8021Q: u16 = 0x8100;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
/// Linux's `TCP_MIN_SND_MSS`: a smaller GSO size would only multiply the segments.
pub const MIN_GSO_SIZE: u16 = 48;

/// Why an offload could not be done on a frame.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum OffloadError {
    /// The frame ends inside a header or before the length a header claims.
    #[error("the frame is truncated: {0}")]
    Truncated(&'static str),
    /// Not IPv4 or IPv6 (ethertype shown).
    #[error("the frame's ethertype {0:#06x} is neither IPv4 nor IPv6")]
    NotIp(u16),
    /// The transport is not TCP or UDP (or, for segmentation, not TCP).
    #[error("the IP protocol {0} has no checksum or segmentation offload")]
    Protocol(u8),
    /// An IPv6 extension header this code does not walk (a fragment header).
    #[error("the IPv6 extension header {0} is not supported for offloads")]
    Ipv6Extension(u8),
    /// An IP fragment: its checksum covers data in other fragments.
    #[error("the packet is an IP fragment, whose checksum cannot be completed alone")]
    Fragment,
    /// A GSO size of zero or below the TCP minimum.
    #[error("the GSO segment size {0} is below the minimum of {MIN_GSO_SIZE}")]
    GsoSize(u16),
    /// The GSO type does not match the packet (TCPv4 asked of an IPv6 packet, ...).
    #[error("the GSO type does not match the packet's IP version")]
    GsoMismatch,
}

/// Where the headers of a TCP or UDP over IP frame are.
#[derive(Clone, Copy, Debug)]
struct Layout {
    /// Start of the IP header.
    l3: usize,
    /// Start of the TCP/UDP header.
    l4: usize,
    /// End of the IP datagram (frames may carry Ethernet padding after it).
    end: usize,
    v6: bool,
    proto: u8,
}

fn be16(b: &[u8], at: usize) -> Result<u16, OffloadError> {
    b.get(at..at + 2)
        .map(|s| u16::from_be_bytes([s[0], s[1]]))
        .ok_or(OffloadError::Truncated("a header field lies past the end"))
}

fn parse(frame: &[u8]) -> Result<Layout, OffloadError> {
    let mut l3 = ETH_HLEN;
    let mut ethertype = be16(frame, 12)?;
    if ethertype == ETH_P_8021Q {
        ethertype = be16(frame, 16)?;
        l3 += 4;
    }
    match ethertype {
        ETH_P_IPV4 => {
            let vihl = *frame
                .get(l3)
                .ok_or(OffloadError::Truncated("no IPv4 header"))?;
            let ihl = usize::from(vihl & 0xf) * 4;
            if vihl >> 4 != 4 || ihl < 20 {
                return Err(OffloadError::Truncated("a bad IPv4 header length"));
            }
            let total = usize::from(be16(frame, l3 + 2)?);
            let end = l3 + total;
            if total < ihl || end > frame.len() {
                return Err(OffloadError::Truncated(
                    "the IPv4 total length exceeds the frame",
                ));
            }
            if be16(frame, l3 + 6)? & 0x3fff != 0 {
                // A fragment's transport header and checksum span all fragments.
                return Err(OffloadError::Fragment);
            }
            let proto = frame[l3 + 9];
            Ok(Layout {
                l3,
                l4: l3 + ihl,
                end,
                v6: false,
                proto,
            })
        }
        ETH_P_IPV6 => {
            let end = l3 + 40 + usize::from(be16(frame, l3 + 4)?);
            if end > frame.len() {
                return Err(OffloadError::Truncated(
                    "the IPv6 payload length exceeds the frame",
                ));
            }
            let mut next = frame[l3 + 6];
            let mut l4 = l3 + 40;
            // Hop-by-hop, routing and destination options can precede the transport
            // header; each is (len + 1) * 8 bytes. At most a few: bound the walk.
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 => {
                        let hdr = frame
                            .get(l4..l4 + 2)
                            .ok_or(OffloadError::Truncated("an IPv6 extension header"))?;
                        next = hdr[0];
                        l4 += (usize::from(hdr[1]) + 1) * 8;
                        if l4 > end {
                            return Err(OffloadError::Truncated("an IPv6 extension header"));
                        }
                    }
                    IPPROTO_TCP | IPPROTO_UDP => break,
                    44 => return Err(OffloadError::Ipv6Extension(44)),
                    other => return Err(OffloadError::Protocol(other)),
                }
            }
            Ok(Layout {
                l3,
                l4,
                end,
                v6: true,
                proto: next,
            })
        }
        other => Err(OffloadError::NotIp(other)),
    }
}

/// One's-complement sum of `data` as big-endian 16-bit words, added to `sum`.
fn sum_words(mut sum: u32, data: &[u8]) -> u32 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        sum = sum.wrapping_add(u32::from(u16::from_be_bytes([c[0], c[1]])));
        // Fold early so a 64 KiB packet cannot overflow the accumulator.
        sum = (sum & 0xffff) + (sum >> 16);
    }
    if let [last] = chunks.remainder() {
        sum = sum.wrapping_add(u32::from(*last) << 8);
    }
    sum
}

fn fold(mut sum: u32) -> u16 {
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// The Internet checksum of `data` (RFC 1071), e.g. for an IPv4 header.
pub fn internet_checksum(data: &[u8]) -> u16 {
    fold(sum_words(0, data))
}

fn pseudo_header_sum(frame: &[u8], lay: &Layout, l4_len: usize) -> u32 {
    let mut sum = 0;
    if lay.v6 {
        sum = sum_words(sum, &frame[lay.l3 + 8..lay.l3 + 40]);
        sum = sum_words(sum, &(l4_len as u32).to_be_bytes());
        sum = sum_words(sum, &[0, 0, 0, lay.proto]);
    } else {
        sum = sum_words(sum, &frame[lay.l3 + 12..lay.l3 + 20]);
        sum = sum_words(sum, &[0, lay.proto]);
        sum = sum_words(sum, &(l4_len as u16).to_be_bytes());
    }
    sum
}

/// Offset of the checksum field in the transport header.
fn csum_field(proto: u8) -> Result<usize, OffloadError> {
    match proto {
        IPPROTO_TCP => Ok(16),
        IPPROTO_UDP => Ok(6),
        p => Err(OffloadError::Protocol(p)),
    }
}

fn fill_l4_checksum(frame: &mut [u8], lay: &Layout) -> Result<(), OffloadError> {
    let field = lay.l4 + csum_field(lay.proto)?;
    let min_hdr = if lay.proto == IPPROTO_TCP { 20 } else { 8 };
    if lay.l4 + min_hdr > lay.end {
        return Err(OffloadError::Truncated("the transport header"));
    }
    // A blank checksum field may hold the pseudo-header sum (Linux's
    // CHECKSUM_PARTIAL) or anything else: compute it whole, from zero.
    frame[field..field + 2].copy_from_slice(&[0, 0]);
    let l4_len = lay.end - lay.l4;
    let sum = pseudo_header_sum(frame, lay, l4_len);
    let mut csum = fold(sum_words(sum, &frame[lay.l4..lay.end]));
    if lay.proto == IPPROTO_UDP && csum == 0 {
        // RFC 768: a computed zero is sent as all ones (zero means "no checksum").
        csum = 0xffff;
    }
    frame[field..field + 2].copy_from_slice(&csum.to_be_bytes());
    Ok(())
}

/// Completes the TCP or UDP checksum of an Ethernet frame whose checksum field the
/// guest left blank.
pub fn complete_checksum(frame: &mut [u8]) -> Result<(), OffloadError> {
    let lay = parse(frame)?;
    fill_l4_checksum(frame, &lay)
}

/// Which GSO a packet asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GsoKind {
    /// TCP over IPv4.
    TcpV4,
    /// TCP over IPv6.
    TcpV6,
}

const TCP_FIN: u8 = 0x01;
const TCP_PSH: u8 = 0x08;
const TCP_CWR: u8 = 0x80;

/// Splits a TCP GSO frame into frames of at most `mss` payload bytes, each with its
/// own IP length, IPv4 id (counting up from the original's) and header checksum, TCP
/// sequence number and checksum; FIN and PSH only on the last, CWR only on the first
/// (as Linux's `tcp_gso_segment`). A packet that fits one segment is returned with its
/// checksum completed.
pub fn segment_tcp(frame: &[u8], kind: GsoKind, mss: u16) -> Result<Vec<Vec<u8>>, OffloadError> {
    if mss < MIN_GSO_SIZE {
        return Err(OffloadError::GsoSize(mss));
    }
    let lay = parse(frame)?;
    if lay.v6 != (kind == GsoKind::TcpV6) {
        return Err(OffloadError::GsoMismatch);
    }
    if lay.proto != IPPROTO_TCP {
        return Err(OffloadError::Protocol(lay.proto));
    }
    let doff = usize::from(
        *frame
            .get(lay.l4 + 12)
            .ok_or(OffloadError::Truncated("the TCP header"))?
            >> 4,
    ) * 4;
    let hdr_end = lay.l4 + doff;
    if doff < 20 || hdr_end > lay.end {
        return Err(OffloadError::Truncated("the TCP header"));
    }
    let payload = &frame[hdr_end..lay.end];
    let mss = usize::from(mss);
    if payload.len() <= mss {
        let mut one = frame[..lay.end].to_vec();
        fill_l4_checksum(&mut one, &lay)?;
        return Ok(vec![one]);
    }
    let ip_id = be16(frame, lay.l3 + 4)?;
    let seq0 = u32::from_be_bytes([
        frame[lay.l4 + 4],
        frame[lay.l4 + 5],
        frame[lay.l4 + 6],
        frame[lay.l4 + 7],
    ]);
    let flags0 = frame[lay.l4 + 13];
    let count = payload.len().div_ceil(mss);
    let mut out = Vec::with_capacity(count);
    for (i, chunk) in payload.chunks(mss).enumerate() {
        let mut seg = Vec::with_capacity(hdr_end + chunk.len());
        seg.extend_from_slice(&frame[..hdr_end]);
        seg.extend_from_slice(chunk);
        let seg_end = seg.len();
        let l3_len = seg_end - lay.l3;
        if lay.v6 {
            let plen = (l3_len - 40) as u16;
            seg[lay.l3 + 4..lay.l3 + 6].copy_from_slice(&plen.to_be_bytes());
        } else {
            seg[lay.l3 + 2..lay.l3 + 4].copy_from_slice(&(l3_len as u16).to_be_bytes());
            let id = ip_id.wrapping_add(i as u16);
            seg[lay.l3 + 4..lay.l3 + 6].copy_from_slice(&id.to_be_bytes());
            seg[lay.l3 + 10..lay.l3 + 12].copy_from_slice(&[0, 0]);
            let hc = internet_checksum(&seg[lay.l3..lay.l4]);
            seg[lay.l3 + 10..lay.l3 + 12].copy_from_slice(&hc.to_be_bytes());
        }
        let seq = seq0.wrapping_add((i * mss) as u32);
        seg[lay.l4 + 4..lay.l4 + 8].copy_from_slice(&seq.to_be_bytes());
        let mut flags = flags0;
        if i + 1 < count {
            flags &= !(TCP_FIN | TCP_PSH);
        }
        if i > 0 {
            flags &= !TCP_CWR;
        }
        seg[lay.l4 + 13] = flags;
        let seg_lay = Layout {
            end: seg_end,
            ..lay
        };
        fill_l4_checksum(&mut seg, &seg_lay)?;
        out.push(seg);
    }
    Ok(out)
}
