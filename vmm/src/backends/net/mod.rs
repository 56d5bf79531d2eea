//! netback: the network device backend (`public/io/netif.h`), the part of Linux's
//! xen-netback that moves packets, with the host's network behind a [`HostNet`].
//!
//! One queue, one event channel, copy mode in both directions (as netfront requires of
//! a backend: `feature-rx-copy`): transmitted packets are copied out of the frontend's
//! granted pages, given finished checksums and, if they are GSO packets, cut into
//! MSS-sized frames in software ([`offload`]), then handed whole to the host side;
//! received frames are copied into the pages the frontend posted on the rx ring.
//!
//! Host sides: [`Tap`] (a tap interface; root or CAP_NET_ADMIN) and [`UserNet`] (passt,
//! unprivileged). xenstore and event-channel wiring are the caller's: it advertises
//! [`backend_keys`], reads the frontend's keys into [`FrontendParams`], calls
//! [`NetBackend::connect`], then on a kick from the frontend calls
//! [`NetBackend::serve_tx`] and [`NetBackend::serve_rx`], and on the host side's fd
//! becoming readable [`NetBackend::serve_rx`]; each returns whether to notify the
//! frontend. It calls [`NetBackend::serve_tx`] again while [`NetBackend::tx_more`]
//! (the per-call budget ran out), [`NetBackend::flush_host`] when the host fd becomes
//! writable while [`NetBackend::host_wants_write`], and, for a frontend without
//! `feature-rx-notify`, [`NetBackend::serve_rx`] on a timer while
//! [`NetBackend::rx_backlog`] is non-zero. An `Err` from either serve call means the
//! frontend broke the protocol or the host side died: disconnect the device.

pub mod offload;
mod rx;
pub mod spec;
pub mod tap;
mod tx;
pub mod user;

#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::Arc;

use thiserror::Error;
use xen_abi::netif::{NetifRxRequest, NetifRxResponse, NetifTxRequest, NetifTxResponse};

use super::grant::{Access, GrantAccess, GrantError, GrantRef};
use super::ring::{BackRing, RingError};

pub use spec::{HostFwd, HostSpec, Mac, NetSpec, Proto, SpecError};
pub use tap::{Tap, TapError};
pub use user::{UserNet, UserNetError};

/// The largest frame a host side hands over: a 64 KiB IP packet (passt's default MTU
/// is 65520) plus its Ethernet header, rounded up.
pub const MAX_HOST_FRAME: usize = 65536 + 64;

/// Frames kept for the guest while it has posted no receive buffers; past this the
/// oldest is dropped (and counted), as a NIC's receive FIFO overflows.
pub const RX_BACKLOG: usize = 256;

/// The host side of the virtual NIC: where transmitted frames go and received ones
/// come from. Whole Ethernet frames, no offload metadata.
pub trait HostNet: Send {
    /// Hands one frame to the host. `WouldBlock` means the host side's queue is full
    /// and the frame was dropped.
    fn send(&mut self, frame: &[u8]) -> io::Result<()>;
    /// Takes one frame into `buf` without blocking: `Ok(None)` when none is waiting.
    /// `buf` is at least [`MAX_HOST_FRAME`] bytes.
    fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>>;
    /// The descriptor the caller's poll waits on for readability (and writability
    /// while [`Self::wants_write`]).
    fn fd(&self) -> RawFd;
    /// Writes out frames [`Self::send`] had to queue (the fd became writable).
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Whether queued output waits for the fd to become writable.
    fn wants_write(&self) -> bool {
        false
    }
}

/// Why a host side could not be opened.
#[derive(Debug, Error)]
pub enum HostOpenError {
    /// The tap interface.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// passt.
    #[error(transparent)]
    User(#[from] UserNetError),
}

impl HostSpec {
    /// Opens the host side this spec names: attaches the tap or starts passt.
    pub fn open(&self) -> Result<Box<dyn HostNet>, HostOpenError> {
        Ok(match self {
            HostSpec::Tap(name) => Box::new(Tap::open(name)?),
            HostSpec::User(fwds) => Box::new(UserNet::start(fwds)?),
            HostSpec::Bridge(name) => Box::new(Tap::open_on_bridge(name)?),
        })
    }
}

/// The keys a netback writes in its backend directory before `InitWait`, as values
/// Linux's netfront reads them (`xennet_connect`, `talk_to_netback`,
/// `xennet_fix_features`).
///
/// Scatter-gather and TCP segmentation are accepted (segmented here in software);
/// IPv4 checksum offload needs no key (it is assumed unless the frontend opts out),
/// IPv6's is advertised. `feature-rx-copy` is required by netfront; `feature-rx-flip`
/// (page flipping) is not offered. No multicast filtering, no split event channels,
/// and no `multi-queue-max-queues`, so netfront makes one queue with the flat
/// `tx-ring-ref`/`rx-ring-ref`/`event-channel` keys. `mac` is here as Xen's toolstack
/// writes it; netfront itself reads `mac` from its own (frontend) directory, see
/// [`frontend_keys`].
pub fn backend_keys(mac: Mac) -> Vec<(String, String)> {
    [
        ("feature-sg", "1"),
        ("feature-gso-tcpv4", "1"),
        ("feature-gso-tcpv6", "1"),
        ("feature-ipv6-csum-offload", "1"),
        ("feature-rx-copy", "1"),
        ("feature-rx-flip", "0"),
        ("feature-multicast-control", "0"),
        ("feature-split-event-channels", "0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .chain([("mac".to_string(), mac.to_string())])
    .collect()
}

/// The keys the toolstack writes in the frontend's directory for a vif, besides the
/// generic `backend`/`backend-id`/`state`: netfront parses `mac` from there
/// (`xen_net_read_mac` reads its own node) and fails the device without it.
pub fn frontend_keys(mac: Mac) -> Vec<(String, String)> {
    vec![("mac".to_string(), mac.to_string())]
}

/// What the frontend wrote in its directory before `Initialised`/`Connected`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrontendParams {
    /// `tx-ring-ref`: the transmit ring's page.
    pub tx_ring_ref: GrantRef,
    /// `rx-ring-ref`: the receive ring's page.
    pub rx_ring_ref: GrantRef,
    /// `request-rx-copy`: must be set; page flipping is not supported.
    pub request_rx_copy: bool,
    /// `feature-sg`: a received frame may span several rx buffers.
    pub feature_sg: bool,
    /// `feature-gso-tcpv4`: the frontend takes TCPv4 GSO packets (not sent here).
    pub feature_gso_tcpv4: bool,
    /// `feature-gso-tcpv6`: likewise for TCPv6.
    pub feature_gso_tcpv6: bool,
    /// `feature-no-csum-offload`: the frontend wants no blank checksums (none are sent).
    pub feature_no_csum_offload: bool,
    /// `feature-rx-notify`: the frontend kicks the backend when it posts rx buffers.
    /// Without it the caller must call [`NetBackend::serve_rx`] periodically while
    /// [`NetBackend::rx_backlog`] is non-zero.
    pub feature_rx_notify: bool,
}

impl FrontendParams {
    /// Reads the frontend's keys through `read` (key name in the frontend directory ->
    /// value). Absent feature keys are 0, as netback reads them.
    pub fn from_keys(read: impl Fn(&str) -> Option<String>) -> Result<Self, NetError> {
        let num = |key: &'static str, required: bool| -> Result<u32, NetError> {
            match read(key) {
                None if required => Err(NetError::MissingKey(key)),
                None => Ok(0),
                Some(v) => v.trim().parse().map_err(|_| NetError::BadKey {
                    key,
                    value: v.clone(),
                }),
            }
        };
        if read("multi-queue-num-queues").is_some_and(|v| v.trim() != "1") {
            return Err(NetError::MultiQueue);
        }
        Ok(FrontendParams {
            tx_ring_ref: num("tx-ring-ref", true)?,
            rx_ring_ref: num("rx-ring-ref", true)?,
            request_rx_copy: num("request-rx-copy", false)? != 0,
            feature_sg: num("feature-sg", false)? != 0,
            feature_gso_tcpv4: num("feature-gso-tcpv4", false)? != 0,
            feature_gso_tcpv6: num("feature-gso-tcpv6", false)? != 0,
            feature_no_csum_offload: num("feature-no-csum-offload", false)? != 0,
            feature_rx_notify: num("feature-rx-notify", false)? != 0,
        })
    }
}

/// Which ring.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dir {
    /// The transmit (guest to host) ring.
    Tx,
    /// The receive (host to guest) ring.
    Rx,
}

impl std::fmt::Display for Dir {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Dir::Tx => "transmit",
            Dir::Rx => "receive",
        })
    }
}

/// Why the device cannot connect or must disconnect. Malformed packets the frontend
/// can recover from are not errors: they get error responses and are counted.
#[derive(Debug, Error)]
pub enum NetError {
    /// A required frontend key is absent.
    #[error("the frontend did not write `{0}`")]
    MissingKey(&'static str),
    /// A frontend key that is not a number.
    #[error("the frontend's `{key}` is `{value}`, not a number")]
    BadKey {
        /// The key.
        key: &'static str,
        /// Its value.
        value: String,
    },
    /// A frontend that asked for several queues though none were offered.
    #[error("the frontend asked for several queues; this backend offers one")]
    MultiQueue,
    /// A frontend that wants page flipping.
    #[error("the frontend did not set `request-rx-copy`: page-flipping receive is not supported (every netfront since Linux 2.6.31 requests copy mode)")]
    RxCopyRequired,
    /// A ring page could not be mapped.
    #[error("cannot map the {dir} ring page (grant reference {gref})")]
    MapRing {
        /// Which ring.
        dir: Dir,
        /// Its grant.
        gref: GrantRef,
        /// Why.
        #[source]
        source: GrantError,
    },
    /// A ring is unusable (its producer overran it, or its page became inaccessible).
    #[error("the {dir} ring is broken")]
    Ring {
        /// Which ring.
        dir: Dir,
        /// Why.
        #[source]
        source: RingError,
    },
    /// The frontend sent a transmit request that cannot be stepped over (Linux's
    /// `xenvif_fatal_tx_err`): the device must be disconnected.
    #[error("the frontend sent a malformed transmit request: {0}")]
    FatalTx(String),
    /// The host side failed (passt exited, the tap went away).
    #[error("the host side of the network failed")]
    Host(#[source] io::Error),
}

/// Counters, from the guest's point of view of the wire (tx = guest to host).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames handed to the host side (GSO packets count once per segment).
    pub tx_packets: u64,
    /// Bytes of those frames.
    pub tx_bytes: u64,
    /// Well-formed packets that were dropped (the host side's queue was full, or an
    /// offload could not be done).
    pub tx_dropped: u64,
    /// Malformed packets answered with `NETIF_RSP_ERROR`, and host send errors.
    pub tx_errors: u64,
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Bytes of those frames.
    pub rx_bytes: u64,
    /// Frames dropped: the backlog overflowed, or a frame did not fit the guest's
    /// buffers.
    pub rx_dropped: u64,
    /// Frames whose copy into a guest buffer failed (bad grant).
    pub rx_errors: u64,
}

/// A connected network device: the frontend's two rings and a host side.
pub struct NetBackend {
    grants: Arc<dyn GrantAccess>,
    params: FrontendParams,
    tx: BackRing,
    rx: BackRing,
    host: Box<dyn HostNet>,
    /// Frames from the host waiting for rx buffers.
    backlog: VecDeque<Vec<u8>>,
    /// The host side's receive buffer.
    recv_buf: Vec<u8>,
    /// Whether the last [`Self::serve_tx`] stopped at its budget with work left.
    tx_more: bool,
    stats: NetStats,
}

impl std::fmt::Debug for NetBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetBackend")
            .field("params", &self.params)
            .field("backlog", &self.backlog.len())
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Drop for NetBackend {
    fn drop(&mut self) {
        // A backend dropped on an error path still gives the frontend its ring pages
        // back (their grants stay busy while mapped).
        self.unmap_rings();
    }
}

/// The host side left in a disconnected backend.
struct NoHost;

impl HostNet for NoHost {
    fn send(&mut self, _frame: &[u8]) -> io::Result<()> {
        Ok(())
    }
    fn recv(&mut self, _buf: &mut [u8]) -> io::Result<Option<usize>> {
        Ok(None)
    }
    fn fd(&self) -> RawFd {
        -1
    }
}

impl NetBackend {
    /// Maps both ring pages and starts serving them with `host` behind.
    pub fn connect(
        grants: Arc<dyn GrantAccess>,
        params: FrontendParams,
        host: Box<dyn HostNet>,
    ) -> Result<NetBackend, NetError> {
        Self::connect_keeping_host(grants, params, host).map_err(|(e, _)| e)
    }

    /// [`Self::connect`], giving the host side back when the frontend's rings cannot
    /// be used, so the device can take the next attempt with it.
    pub fn connect_keeping_host(
        grants: Arc<dyn GrantAccess>,
        params: FrontendParams,
        host: Box<dyn HostNet>,
    ) -> Result<NetBackend, (NetError, Box<dyn HostNet>)> {
        let (tx, rx) = match Self::map_rings(&*grants, &params) {
            Ok(rings) => rings,
            Err(e) => return Err((e, host)),
        };
        Ok(NetBackend {
            grants,
            params,
            tx,
            rx,
            host,
            backlog: VecDeque::new(),
            recv_buf: vec![0; MAX_HOST_FRAME],
            tx_more: false,
            stats: NetStats::default(),
        })
    }

    fn map_rings(
        g: &dyn GrantAccess,
        params: &FrontendParams,
    ) -> Result<(BackRing, BackRing), NetError> {
        if !params.request_rx_copy {
            return Err(NetError::RxCopyRequired);
        }
        let map = |dir, gref| {
            g.map(gref, Access::ReadWrite)
                .map_err(|source| NetError::MapRing { dir, gref, source })
        };
        let tx_page = map(Dir::Tx, params.tx_ring_ref)?;
        let rx_page = match map(Dir::Rx, params.rx_ring_ref) {
            Ok(p) => p,
            Err(e) => {
                g.unmap(tx_page);
                return Err(e);
            }
        };
        let tx = match BackRing::new(
            g,
            vec![tx_page],
            size_of::<NetifTxRequest>(),
            size_of::<NetifTxResponse>(),
        ) {
            Ok(r) => r,
            Err(source) => {
                // BackRing::new fails only on a read-only or unreadable page, which a
                // fresh ReadWrite mapping is not; the tx mapping went with it.
                g.unmap(rx_page);
                return Err(NetError::Ring {
                    dir: Dir::Tx,
                    source,
                });
            }
        };
        let rx = match BackRing::new(
            g,
            vec![rx_page],
            size_of::<NetifRxRequest>(),
            size_of::<NetifRxResponse>(),
        ) {
            Ok(r) => r,
            Err(source) => {
                for m in tx.into_pages() {
                    g.unmap(m);
                }
                return Err(NetError::Ring {
                    dir: Dir::Rx,
                    source,
                });
            }
        };
        Ok((tx, rx))
    }

    /// Unmaps both rings and gives the host side back, for a frontend that reconnects
    /// (dropping it instead stops passt / closes the tap).
    pub fn disconnect(mut self) -> Box<dyn HostNet> {
        self.unmap_rings();
        std::mem::replace(&mut self.host, Box::new(NoHost))
    }

    fn unmap_rings(&mut self) {
        for m in self.tx.take_pages().into_iter().chain(self.rx.take_pages()) {
            self.grants.unmap(m);
        }
    }

    /// The counters.
    pub fn stats(&self) -> NetStats {
        self.stats
    }

    /// What the frontend negotiated.
    pub fn params(&self) -> &FrontendParams {
        &self.params
    }

    /// Frames waiting for the guest to post receive buffers.
    pub fn rx_backlog(&self) -> usize {
        self.backlog.len()
    }

    /// Whether the receive path takes more frames from the host side: not while its
    /// backlog is full (the caller stops polling the host's fd until the frontend posts
    /// buffers and kicks).
    pub fn wants_host_input(&self) -> bool {
        self.backlog.len() < RX_BACKLOG
    }

    /// Whether [`Self::serve_tx`] stopped at its per-call budget with requests left:
    /// the caller calls it again (after other work) without waiting for a kick.
    pub fn tx_more(&self) -> bool {
        self.tx_more
    }

    /// The host side's descriptor, for the caller's poll.
    pub fn host_fd(&self) -> RawFd {
        self.host.fd()
    }

    /// Whether the host side has output waiting for its fd to become writable.
    pub fn host_wants_write(&self) -> bool {
        self.host.wants_write()
    }

    /// Writes out the host side's queued output (its fd became writable).
    pub fn flush_host(&mut self) -> Result<(), NetError> {
        self.host.flush().map_err(NetError::Host)
    }
}
