//! `public/io/netif.h`: the network device protocol (single-page tx and rx rings).
//!
//! A transmit packet is a chain of tx ring slots: the first request's `size` is the
//! whole packet's length, the following requests (each flagged by `NETTXF_more_data` on
//! the one before) carry their own fragment sizes, and a first request flagged
//! `NETTXF_extra_info` is followed by [`NetifExtraInfo`] slots (each flagged
//! `XEN_NETIF_EXTRA_FLAG_MORE` when another follows) before the data slots continue.
//! A receive packet is a chain of rx responses, each carrying its own fragment size in
//! `status`; responses must sit in the same ring slot as the request they answer.

#![allow(missing_docs)]
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// The slots per packet every backend must accept (old Linux `MAX_SKB_FRAGS`).
pub const XEN_NETIF_NR_SLOTS_MIN: usize = 18;
/// The largest packet the tx wire format can describe (the first slot's `size`).
pub const XEN_NETIF_MAX_TX_SIZE: usize = 0xFFFF;

/// `NETTXF_*`: flags of a [`NetifTxRequest`].
pub const NETTXF_CSUM_BLANK: u16 = 1 << 0;
pub const NETTXF_DATA_VALIDATED: u16 = 1 << 1;
pub const NETTXF_MORE_DATA: u16 = 1 << 2;
pub const NETTXF_EXTRA_INFO: u16 = 1 << 3;

/// `NETRXF_*`: flags of a [`NetifRxResponse`].
pub const NETRXF_DATA_VALIDATED: u16 = 1 << 0;
pub const NETRXF_CSUM_BLANK: u16 = 1 << 1;
pub const NETRXF_MORE_DATA: u16 = 1 << 2;
pub const NETRXF_EXTRA_INFO: u16 = 1 << 3;
/// Deprecated; kept for completeness.
pub const NETRXF_GSO_PREFIX: u16 = 1 << 4;

/// `XEN_NETIF_EXTRA_TYPE_*`: the `type` of a [`NetifExtraInfo`].
pub const XEN_NETIF_EXTRA_TYPE_NONE: u8 = 0;
pub const XEN_NETIF_EXTRA_TYPE_GSO: u8 = 1;
pub const XEN_NETIF_EXTRA_TYPE_MCAST_ADD: u8 = 2;
pub const XEN_NETIF_EXTRA_TYPE_MCAST_DEL: u8 = 3;
pub const XEN_NETIF_EXTRA_TYPE_HASH: u8 = 4;
/// One past the last type Xen's header defines.
pub const XEN_NETIF_EXTRA_TYPE_MAX: u8 = 5;

/// `XEN_NETIF_EXTRA_FLAG_MORE`: another extra-info slot follows.
pub const XEN_NETIF_EXTRA_FLAG_MORE: u8 = 1 << 0;

/// `XEN_NETIF_GSO_TYPE_*`: the segmentation a GSO extra asks for.
pub const XEN_NETIF_GSO_TYPE_NONE: u8 = 0;
pub const XEN_NETIF_GSO_TYPE_TCPV4: u8 = 1;
pub const XEN_NETIF_GSO_TYPE_TCPV6: u8 = 2;

/// `NETIF_RSP_*`: response statuses (a positive rx status is the fragment's length).
pub const NETIF_RSP_DROPPED: i16 = -2;
pub const NETIF_RSP_ERROR: i16 = -1;
pub const NETIF_RSP_OKAY: i16 = 0;
/// The response of an auxiliary (extra-info) slot.
pub const NETIF_RSP_NULL: i16 = 1;

/// `struct netif_tx_request`, 12 bytes (a whole tx ring slot).
#[repr(C)]
#[derive(
    Clone, Copy, Default, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifTxRequest {
    pub gref: u32,
    pub offset: u16,
    /// `NETTXF_*`.
    pub flags: u16,
    /// Echoed in the response.
    pub id: u16,
    /// The whole packet's length in the first slot, the fragment's in later ones.
    pub size: u16,
}

/// `struct netif_tx_response`, 4 bytes (the rest of its 12-byte slot is unused).
#[repr(C)]
#[derive(
    Clone, Copy, Default, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifTxResponse {
    pub id: u16,
    /// `NETIF_RSP_*`.
    pub status: i16,
}

/// `struct netif_extra_info`, 8 bytes: `type`, `flags` and a 6-byte union (in a tx slot
/// the last 4 bytes of the 12 are padding).
#[repr(C)]
#[derive(
    Clone, Copy, Default, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifExtraInfo {
    /// `XEN_NETIF_EXTRA_TYPE_*`.
    pub ty: u8,
    /// `XEN_NETIF_EXTRA_FLAG_*`.
    pub flags: u8,
    /// The union: `gso { u16 size; u8 type; u8 pad; u16 features; }`,
    /// `mcast { u8 addr[6]; }`, `hash { u8 type; u8 algorithm; u8 value[4]; }`.
    pub u: [u8; 6],
}

impl NetifExtraInfo {
    /// `u.gso.size`: the largest payload of one segment (the TCP MSS).
    pub fn gso_size(&self) -> u16 {
        u16::from_le_bytes([self.u[0], self.u[1]])
    }
    /// `u.gso.type`: `XEN_NETIF_GSO_TYPE_*`.
    pub fn gso_type(&self) -> u8 {
        self.u[2]
    }
    /// `u.gso.features`: `XEN_NETIF_GSO_FEAT_*`.
    pub fn gso_features(&self) -> u16 {
        u16::from_le_bytes([self.u[4], self.u[5]])
    }
    /// A GSO extra (as a frontend writes it).
    pub fn gso(size: u16, ty: u8, flags: u8) -> Self {
        let s = size.to_le_bytes();
        NetifExtraInfo {
            ty: XEN_NETIF_EXTRA_TYPE_GSO,
            flags,
            u: [s[0], s[1], ty, 0, 0, 0],
        }
    }
}

/// `struct netif_rx_request`, 8 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Default, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifRxRequest {
    /// Echoed in the response.
    pub id: u16,
    pub pad: u16,
    /// A whole page the backend copies the packet into.
    pub gref: u32,
}

/// `struct netif_rx_response`, 8 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Default, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct NetifRxResponse {
    pub id: u16,
    /// Where in the page the data starts.
    pub offset: u16,
    /// `NETRXF_*`.
    pub flags: u16,
    /// The fragment's length, or a negative `NETIF_RSP_*`.
    pub status: i16,
}

/// Bytes of one tx ring slot (the union of request, response and extra info).
pub const NETIF_TX_SLOT: usize = 12;
/// Bytes of one rx ring slot.
pub const NETIF_RX_SLOT: usize = 8;

const _: () = {
    assert!(core::mem::size_of::<NetifTxRequest>() == 12);
    assert!(core::mem::size_of::<NetifTxResponse>() == 4);
    assert!(core::mem::size_of::<NetifExtraInfo>() == 8);
    assert!(core::mem::size_of::<NetifRxRequest>() == 8);
    assert!(core::mem::size_of::<NetifRxResponse>() == 8);
};
