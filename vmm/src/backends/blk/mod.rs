//! blkback: the block device backend (`public/io/blkif.h`), the part Linux's
//! `xen-blkback` plays in dom0.
//!
//! This module is the protocol core only: no threads, no xenstore, no event channels.
//! The integrator opens a [`DiskImage`] from a [`DiskSpec`], publishes
//! [`backend_keys`] in the backend directory, reads the frontend's keys into
//! [`FrontendParams`], calls [`BlkBackend::connect`], then calls
//! [`BlkBackend::serve`] whenever the frontend's event channel fires (and again while
//! [`BlkBackend::more_pending`]), notifying the frontend when `serve` says so.
//!
//! Every request gets exactly one response, with the request's `id` and `operation`.
//! Whatever the frontend writes, a bad request costs it an error response, never the
//! backend's health; only a ring the frontend overran ([`BlkError::FrontendBroken`])
//! ends the service, as in Linux.

mod image;
mod spec;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::sync::Arc;

use thiserror::Error;
use xen_abi::blkif::{
    BlkifRequest, BlkifRequestDiscard, BlkifRequestIndirect, BlkifRequestSegment, BlkifResponse,
    BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST, BLKIF_MAX_SEGMENTS_PER_REQUEST, BLKIF_OP_DISCARD,
    BLKIF_OP_FLUSH_DISKCACHE, BLKIF_OP_INDIRECT, BLKIF_OP_READ, BLKIF_OP_WRITE,
    BLKIF_OP_WRITE_BARRIER, BLKIF_RSP_EOPNOTSUPP, BLKIF_RSP_ERROR, BLKIF_RSP_OKAY,
    BLKIF_SEGS_PER_INDIRECT_FRAME, SECTORS_PER_PAGE, SECTOR_SIZE, VDISK_READONLY,
    XEN_IO_PROTO_ABI_X86_32, XEN_IO_PROTO_ABI_X86_64,
};
use zerocopy::{FromBytes, IntoBytes};

pub use image::{DiskImage, ImageError, ImageKind};
pub use spec::{DiskFormat, DiskSpec, SpecError, Vdev};

use super::grant::{Access, GrantAccess, GrantError, GrantRef, Mapping, PAGE_SIZE};
use super::ring::{BackRing, RingError};

/// Segments one indirect request may carry (`feature-max-indirect-segments`; Linux's
/// `MAX_INDIRECT_SEGMENTS`). One indirect page holds 512, so this needs one page.
pub const MAX_INDIRECT_SEGMENTS: usize = 256;
/// The largest ring the backend accepts, as lb(pages) (`max-ring-page-order`; Linux's
/// default `xen_blkif_max_ring_order`).
pub const MAX_RING_PAGE_ORDER: u32 = 4;
/// Grants kept mapped at once with persistent grants (Linux's `max_pgrants` default);
/// past it, segments are mapped for the one request.
pub const MAX_PERSISTENT_GRANTS: usize = 1056;

const REQUEST_SIZE: usize = std::mem::size_of::<BlkifRequest>();
const RESPONSE_SIZE: usize = std::mem::size_of::<BlkifResponse>();
const SECTOR: usize = SECTOR_SIZE as usize;

// The integrator runs a backend on its own thread and may share the image.
const _: fn() = || {
    fn send<T: Send>() {}
    fn send_sync<T: Send + Sync>() {}
    send::<BlkBackend>();
    send_sync::<DiskImage>();
};

/// Why the backend cannot connect or go on serving.
#[derive(Debug, Error)]
pub enum BlkError {
    /// The frontend asked for a ring size the backend does not offer.
    #[error("the frontend's ring has {0} pages; the backend takes 1, 2, 4, 8 or 16")]
    RingPages(usize),
    /// The frontend uses the 32-bit request layout.
    #[error("the frontend uses the 32-bit x86 ring layout (protocol x86_32-abi), which this backend does not translate")]
    Protocol32,
    /// An unknown `protocol` value.
    #[error("the frontend's ring protocol {0:?} is not known")]
    UnknownProtocol(String),
    /// A frontend key is missing or not a number.
    #[error("the frontend's key {key} is missing or malformed ({value:?})")]
    FrontendKey {
        /// The key.
        key: String,
        /// What it holds, if anything.
        value: Option<String>,
    },
    /// A ring page could not be mapped.
    #[error("cannot map the frontend's ring page (grant reference {gref})")]
    RingMap {
        /// The grant reference.
        gref: GrantRef,
        /// The cause.
        #[source]
        source: GrantError,
    },
    /// The frontend overran the ring: it is broken or hostile; stop serving it.
    #[error("the frontend is broken: it overran the request ring")]
    FrontendBroken(#[source] RingError),
    /// The ring became inaccessible.
    #[error("the request ring cannot be accessed")]
    Ring(#[source] RingError),
    /// [`BlkBackend::serve`] after the backend let go of its ring.
    #[error("the block backend is disconnected")]
    Disconnected,
}

impl From<RingError> for BlkError {
    fn from(e: RingError) -> Self {
        match e {
            RingError::Overflow { .. } => BlkError::FrontendBroken(e),
            RingError::Page(_) => BlkError::Ring(e),
        }
    }
}

/// What the frontend wrote in its directory for this connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FrontendParams {
    /// The ring's pages in order (`ring-ref`, or `ring-ref0`.. with `ring-page-order`).
    pub ring_refs: Vec<GrantRef>,
    /// `protocol`; absent means the backend's native (x86_64) layout.
    pub protocol: Option<String>,
    /// `feature-persistent`: the frontend reuses grants and grants them writable.
    pub persistent: bool,
}

impl FrontendParams {
    /// Reads the frontend's keys through `read` (a key relative to the frontend's
    /// device directory to its value), as Linux's `connect_ring` does.
    pub fn from_keys(read: impl Fn(&str) -> Option<String>) -> Result<Self, BlkError> {
        let number = |key: &str| -> Result<Option<u32>, BlkError> {
            match read(key) {
                None => Ok(None),
                Some(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| BlkError::FrontendKey {
                        key: key.to_string(),
                        value: Some(v),
                    }),
            }
        };
        let required = |key: &str| -> Result<u32, BlkError> {
            number(key)?.ok_or_else(|| BlkError::FrontendKey {
                key: key.to_string(),
                value: None,
            })
        };
        let ring_refs = match number("ring-page-order")? {
            None => vec![required("ring-ref")?],
            Some(order) if order <= MAX_RING_PAGE_ORDER => (0..1u32 << order)
                .map(|i| required(&format!("ring-ref{i}")))
                .collect::<Result<_, _>>()?,
            Some(order) => {
                return Err(BlkError::RingPages(
                    1usize.checked_shl(order).unwrap_or(usize::MAX),
                ))
            }
        };
        Ok(FrontendParams {
            ring_refs,
            protocol: read("protocol"),
            persistent: number("feature-persistent")?.unwrap_or(0) != 0,
        })
    }
}

/// The keys the backend publishes in its xenstore directory for Linux's
/// `xen-blkfront` (as Linux's `xen-blkback` does in `connect()`), as (key, value).
pub fn backend_keys(disk: &DiskImage) -> Vec<(String, String)> {
    let mut keys: Vec<(&str, String)> = vec![
        ("sectors", disk.sectors().to_string()),
        (
            "info",
            if disk.read_only() { VDISK_READONLY } else { 0 }.to_string(),
        ),
        ("sector-size", SECTOR.to_string()),
        // The image is served in 512-byte units through the host's page cache; there
        // is no larger unit the guest must respect.
        ("physical-sector-size", SECTOR.to_string()),
        // Flush and barrier both end in fdatasync, so both are offered (Linux offers
        // both exactly when the device has a write cache to flush).
        ("feature-flush-cache", "1".into()),
        ("feature-barrier", "1".into()),
        ("feature-persistent", "1".into()),
        (
            "feature-max-indirect-segments",
            MAX_INDIRECT_SEGMENTS.to_string(),
        ),
        ("max-ring-page-order", MAX_RING_PAGE_ORDER.to_string()),
    ];
    if disk.supports_discard() {
        keys.push(("feature-discard", "1".into()));
        keys.push((
            "discard-granularity",
            disk.discard_granularity().to_string(),
        ));
        keys.push(("discard-alignment", "0".into()));
        keys.push(("discard-secure", "0".into()));
    } else {
        keys.push(("feature-discard", "0".into()));
    }
    keys.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// Counters of what the backend served.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkStats {
    /// Requests answered.
    pub requests: u64,
    /// Sectors read from the disk into the guest.
    pub sectors_read: u64,
    /// Sectors written from the guest to the disk.
    pub sectors_written: u64,
    /// Flushes (`fdatasync`) done.
    pub flushes: u64,
    /// Sectors discarded.
    pub sectors_discarded: u64,
    /// Requests answered with an error or "not supported".
    pub errors: u64,
}

/// A request's outcome, before it becomes a `BLKIF_RSP_*`.
enum Outcome {
    Okay,
    /// A refused or failed request; the string says why (for the log).
    Error(String),
    NotSupported,
}

/// One segment after its checks: a run of sectors inside one granted page.
#[derive(Clone, Copy, Debug)]
struct Segment {
    gref: GrantRef,
    /// Byte offset in the page.
    offset: usize,
    /// Bytes.
    len: usize,
}

/// The back end of one virtual block device connection.
pub struct BlkBackend {
    grants: Arc<dyn GrantAccess>,
    disk: Arc<DiskImage>,
    ring: Option<BackRing>,
    persistent: bool,
    /// Persistently mapped grants (ReadWrite), with `persistent` negotiated.
    pgrants: HashMap<GrantRef, Mapping>,
    more: bool,
    stats: BlkStats,
    /// The bounce buffer between the grants and the image, kept across requests.
    bounce: Vec<u8>,
}

impl std::fmt::Debug for BlkBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlkBackend")
            .field("disk", &self.disk.path())
            .field("ring", &self.ring)
            .field("persistent", &self.persistent)
            .field("pgrants", &self.pgrants.len())
            .field("stats", &self.stats)
            .finish()
    }
}

impl BlkBackend {
    /// Maps the frontend's ring and gets ready to serve it (Linux's `connect_ring`
    /// and `xen_blkif_map`).
    pub fn connect(
        grants: Arc<dyn GrantAccess>,
        disk: Arc<DiskImage>,
        params: &FrontendParams,
    ) -> Result<BlkBackend, BlkError> {
        match params.protocol.as_deref() {
            None | Some(XEN_IO_PROTO_ABI_X86_64) => {}
            Some(XEN_IO_PROTO_ABI_X86_32) => return Err(BlkError::Protocol32),
            Some(p) => return Err(BlkError::UnknownProtocol(p.to_string())),
        }
        let n = params.ring_refs.len();
        if !n.is_power_of_two() || n > 1 << MAX_RING_PAGE_ORDER {
            return Err(BlkError::RingPages(n));
        }
        let mut pages = Vec::with_capacity(n);
        for &gref in &params.ring_refs {
            match grants.map(gref, Access::ReadWrite) {
                Ok(m) => pages.push(m),
                Err(source) => {
                    pages.into_iter().for_each(|m| grants.unmap(m));
                    return Err(BlkError::RingMap { gref, source });
                }
            }
        }
        // BackRing::new keeps the pages even when it fails, so check the one access it
        // makes first, while the mappings can still be given back.
        if let Err(source) = grants.load_u32(&pages[0], 8) {
            let gref = pages[0].gref;
            pages.into_iter().for_each(|m| grants.unmap(m));
            return Err(BlkError::RingMap { gref, source });
        }
        let ring =
            BackRing::new(&*grants, pages, REQUEST_SIZE, RESPONSE_SIZE).map_err(BlkError::Ring)?;
        Ok(BlkBackend {
            grants,
            disk,
            ring: Some(ring),
            persistent: params.persistent,
            pgrants: HashMap::new(),
            more: false,
            stats: BlkStats::default(),
            bounce: Vec::new(),
        })
    }

    /// What was served so far.
    pub fn stats(&self) -> BlkStats {
        self.stats
    }

    /// Whether the last [`Self::serve`] stopped at its budget with requests left:
    /// call it again (without waiting for an event).
    pub fn more_pending(&self) -> bool {
        self.more
    }

    /// Grants currently held mapped persistently.
    pub fn persistent_grants(&self) -> usize {
        self.pgrants.len()
    }

    /// The disk being served.
    pub fn disk(&self) -> &Arc<DiskImage> {
        &self.disk
    }

    /// Serves up to a ring's worth of requests (Linux's `__do_block_io_op`): each is
    /// done synchronously and answered; the responses are published, and the frontend
    /// is asked to notify the backend of its next request. Returns whether the
    /// frontend must be notified of the responses.
    ///
    /// An error means the ring cannot be served any more: the caller stops serving
    /// and disconnects.
    pub fn serve(&mut self) -> Result<bool, BlkError> {
        let g = Arc::clone(&self.grants);
        let g = &*g;
        let mut ring = self.ring.take().ok_or(BlkError::Disconnected)?;
        let r = self.serve_ring(g, &mut ring);
        self.ring = Some(ring);
        r
    }

    fn serve_ring(&mut self, g: &dyn GrantAccess, ring: &mut BackRing) -> Result<bool, BlkError> {
        let budget = ring.size();
        let mut done = 0u32;
        let mut notify = false;
        let mut req = [0u8; REQUEST_SIZE];
        // Each pass either answers a request or ends; the bound stops a frontend that
        // flips req_prod back and forth from keeping the final check looping.
        for _ in 0..2 * budget + 2 {
            if ring.unconsumed_requests(g)? == 0 {
                notify |= ring.push_responses(g)?;
                if ring.final_check_for_requests(g)? && done < budget {
                    continue;
                }
                self.more = ring.unconsumed_requests(g)? > 0;
                return Ok(notify);
            }
            if done >= budget {
                break;
            }
            ring.take_request(g, &mut req)?;
            let rsp = self.handle_request(g, &req);
            ring.put_response(g, rsp.as_bytes())?;
            done += 1;
        }
        notify |= ring.push_responses(g)?;
        self.more = ring.unconsumed_requests(g)? > 0;
        Ok(notify)
    }

    /// Does one request and builds its response.
    fn handle_request(&mut self, g: &dyn GrantAccess, req: &[u8; REQUEST_SIZE]) -> BlkifResponse {
        let operation = req[0];
        let id = u64::from_le_bytes(req[8..16].try_into().unwrap_or_default());
        let outcome = self.dispatch(g, operation, req);
        self.stats.requests += 1;
        let status = match outcome {
            Outcome::Okay => BLKIF_RSP_OKAY,
            Outcome::Error(why) => {
                self.stats.errors += 1;
                log::debug!("blkback: request {id:#x} (operation {operation}) failed: {why}");
                BLKIF_RSP_ERROR
            }
            Outcome::NotSupported => {
                self.stats.errors += 1;
                BLKIF_RSP_EOPNOTSUPP
            }
        };
        // An indirect request is answered with the operation it carries, as Linux's
        // blkback answers it and its blkfront checks.
        let answered = if operation == BLKIF_OP_INDIRECT {
            req[1]
        } else {
            operation
        };
        BlkifResponse {
            id,
            operation: answered,
            status,
            ..Default::default()
        }
    }

    fn dispatch(
        &mut self,
        g: &dyn GrantAccess,
        operation: u8,
        req: &[u8; REQUEST_SIZE],
    ) -> Outcome {
        match operation {
            BLKIF_OP_READ | BLKIF_OP_WRITE | BLKIF_OP_WRITE_BARRIER | BLKIF_OP_FLUSH_DISKCACHE => {
                let Ok((r, _)) = BlkifRequest::read_from_prefix(req) else {
                    return Outcome::Error("short request".into());
                };
                let n = usize::from(r.nr_segments);
                // Flush and barrier may come without data; reads and writes may not.
                let data_optional =
                    matches!(operation, BLKIF_OP_WRITE_BARRIER | BLKIF_OP_FLUSH_DISKCACHE);
                if n > BLKIF_MAX_SEGMENTS_PER_REQUEST || (n == 0 && !data_optional) {
                    return Outcome::Error(format!("{n} segments"));
                }
                self.dispatch_rw_block_io(g, operation, r.sector_number, &r.seg[..n])
            }
            BLKIF_OP_DISCARD => {
                let Ok((r, _)) = BlkifRequestDiscard::read_from_prefix(req) else {
                    return Outcome::Error("short request".into());
                };
                self.dispatch_discard_io(&r)
            }
            BLKIF_OP_INDIRECT => {
                let Ok((r, _)) = BlkifRequestIndirect::read_from_prefix(req) else {
                    return Outcome::Error("short request".into());
                };
                match self.read_indirect_segments(g, &r) {
                    Ok(segs) => self.dispatch_rw_block_io(g, r.indirect_op, r.sector_number, &segs),
                    Err(why) => Outcome::Error(why),
                }
            }
            _ => Outcome::NotSupported,
        }
    }

    /// Fetches an indirect request's segment descriptors from its indirect pages.
    fn read_indirect_segments(
        &self,
        g: &dyn GrantAccess,
        r: &BlkifRequestIndirect,
    ) -> Result<Vec<BlkifRequestSegment>, String> {
        if !matches!(r.indirect_op, BLKIF_OP_READ | BLKIF_OP_WRITE) {
            return Err(format!("indirect operation {}", r.indirect_op));
        }
        let n = usize::from(r.nr_segments);
        if n == 0 || n > MAX_INDIRECT_SEGMENTS {
            return Err(format!(
                "{n} indirect segments (at most {MAX_INDIRECT_SEGMENTS})"
            ));
        }
        let pages = n.div_ceil(BLKIF_SEGS_PER_INDIRECT_FRAME);
        debug_assert!(pages <= BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST);
        let seg_size = std::mem::size_of::<BlkifRequestSegment>();
        let mut segs = Vec::with_capacity(n);
        let mut buf = vec![0u8; PAGE_SIZE];
        for (i, &gref) in r.indirect_grefs.iter().take(pages).enumerate() {
            let here = (n - i * BLKIF_SEGS_PER_INDIRECT_FRAME).min(BLKIF_SEGS_PER_INDIRECT_FRAME);
            let bytes = &mut buf[..here * seg_size];
            g.copy_from(gref, 0, bytes)
                .map_err(|e| format!("indirect page: {e}"))?;
            segs.extend(
                bytes
                    .chunks_exact(seg_size)
                    .filter_map(|c| BlkifRequestSegment::read_from_bytes(c).ok()),
            );
        }
        Ok(segs)
    }

    /// A read, write, barrier or flush over `segs` starting at `sector` (Linux's
    /// `dispatch_rw_block_io`): all checks first, then the I/O.
    fn dispatch_rw_block_io(
        &mut self,
        g: &dyn GrantAccess,
        operation: u8,
        sector: u64,
        segs: &[BlkifRequestSegment],
    ) -> Outcome {
        let writes = operation != BLKIF_OP_READ;
        let flush = matches!(operation, BLKIF_OP_WRITE_BARRIER | BLKIF_OP_FLUSH_DISKCACHE);
        let mut checked = Vec::with_capacity(segs.len());
        let mut total = 0usize;
        for s in segs {
            if s.last_sect >= SECTORS_PER_PAGE || s.first_sect > s.last_sect {
                return Outcome::Error(format!(
                    "segment sectors {}..={} outside a page",
                    s.first_sect, s.last_sect
                ));
            }
            let seg = Segment {
                gref: s.gref,
                offset: usize::from(s.first_sect) * SECTOR,
                len: usize::from(s.last_sect - s.first_sect + 1) * SECTOR,
            };
            total += seg.len;
            checked.push(seg);
        }
        let nsect = (total / SECTOR) as u64;
        // Only a request with data has a sector range (an empty flush's sector number
        // is whatever the frontend's block layer left there; Linux's blkback ignores it).
        if nsect > 0
            && sector
                .checked_add(nsect)
                .is_none_or(|end| end > self.disk.sectors())
        {
            return Outcome::Error(format!(
                "sectors {sector}+{nsect} beyond the disk's {}",
                self.disk.sectors()
            ));
        }
        if writes && total > 0 && self.disk.read_only() {
            return Outcome::Error("write to a read-only disk".into());
        }
        // In range when there is data (checked above); unused when there is none.
        let offset = sector.saturating_mul(SECTOR_SIZE);
        if flush {
            // A barrier's earlier writes reach stable storage before its own data.
            if let Err(e) = self.flush() {
                return e;
            }
        }
        let mut bounce = std::mem::take(&mut self.bounce);
        bounce.resize(total, 0);
        let r = if writes {
            self.write_segments(g, &checked, &mut bounce, offset)
        } else {
            self.read_segments(g, &checked, &mut bounce, offset)
        };
        self.bounce = bounce;
        if let Err(e) = r {
            return e;
        }
        if flush && total > 0 {
            // And its own data is durable when it completes.
            if let Err(e) = self.flush() {
                return e;
            }
        }
        if writes {
            self.stats.sectors_written += nsect;
        } else {
            self.stats.sectors_read += nsect;
        }
        Outcome::Okay
    }

    fn flush(&mut self) -> Result<(), Outcome> {
        self.stats.flushes += 1;
        self.disk.flush().map_err(|e| {
            log::warn!(
                "blkback: flushing {} failed: {e}",
                self.disk.path().display()
            );
            Outcome::Error(format!("flush: {e}"))
        })
    }

    /// Disk to guest: one read of the whole range, then a copy into each segment.
    fn read_segments(
        &mut self,
        g: &dyn GrantAccess,
        segs: &[Segment],
        bounce: &mut [u8],
        offset: u64,
    ) -> Result<(), Outcome> {
        self.disk.read_at(bounce, offset).map_err(|e| {
            log::warn!(
                "blkback: reading {} failed: {e}",
                self.disk.path().display()
            );
            Outcome::Error(format!("read: {e}"))
        })?;
        let mut at = 0;
        for s in segs {
            let data = &bounce[at..at + s.len];
            self.with_segment(g, s.gref, Access::ReadWrite, |g, m| {
                g.write(m, s.offset, data)
            })
            .map_err(|e| Outcome::Error(format!("segment: {e}")))?;
            at += s.len;
        }
        Ok(())
    }

    /// Guest to disk: gather every segment first, so a bad grant writes nothing.
    fn write_segments(
        &mut self,
        g: &dyn GrantAccess,
        segs: &[Segment],
        bounce: &mut [u8],
        offset: u64,
    ) -> Result<(), Outcome> {
        let mut at = 0;
        for s in segs {
            let data = &mut bounce[at..at + s.len];
            self.with_segment(g, s.gref, Access::ReadOnly, |g, m| {
                g.read(m, s.offset, data)
            })
            .map_err(|e| Outcome::Error(format!("segment: {e}")))?;
            at += s.len;
        }
        if bounce.is_empty() {
            return Ok(());
        }
        self.disk.write_at(bounce, offset).map_err(|e| {
            log::warn!(
                "blkback: writing {} failed: {e}",
                self.disk.path().display()
            );
            Outcome::Error(format!("write: {e}"))
        })
    }

    /// Runs `f` on a mapping of `gref` good for `access`: a persistent one when the
    /// frontend negotiated them (mapped ReadWrite once and kept, as Linux does),
    /// otherwise one mapped for this call only.
    fn with_segment<T>(
        &mut self,
        g: &dyn GrantAccess,
        gref: GrantRef,
        access: Access,
        f: impl FnOnce(&dyn GrantAccess, &Mapping) -> Result<T, GrantError>,
    ) -> Result<T, GrantError> {
        if self.persistent {
            if let Some(m) = self.pgrants.get(&gref) {
                return f(g, m);
            }
            if self.pgrants.len() < MAX_PERSISTENT_GRANTS {
                match g.map(gref, Access::ReadWrite) {
                    Ok(m) => {
                        let m = self.pgrants.entry(gref).or_insert(m);
                        return f(g, m);
                    }
                    // A frontend that granted this page read-only (against the
                    // protocol) still gets its disk write, through a one-off mapping.
                    Err(GrantError::ReadOnly(_)) if access == Access::ReadOnly => {}
                    Err(e) => return Err(e),
                }
            }
        }
        let m = g.map(gref, access)?;
        let r = f(g, &m);
        g.unmap(m);
        r
    }

    /// A discard (Linux's `dispatch_discard_io`): punches the range out of the image.
    fn dispatch_discard_io(&mut self, r: &BlkifRequestDiscard) -> Outcome {
        if !self.disk.supports_discard() {
            return Outcome::NotSupported;
        }
        let (sector, n) = (r.sector_number, r.nr_sectors);
        if sector
            .checked_add(n)
            .is_none_or(|end| end > self.disk.sectors())
        {
            return Outcome::Error(format!(
                "discard of sectors {sector}+{n} beyond the disk's {}",
                self.disk.sectors()
            ));
        }
        if n == 0 {
            return Outcome::Okay;
        }
        // The secure flag is ignored: discard-secure is advertised as 0.
        match self.disk.discard(sector * SECTOR_SIZE, n * SECTOR_SIZE) {
            Ok(()) => {
                self.stats.sectors_discarded += n;
                Outcome::Okay
            }
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Outcome::NotSupported,
            Err(e) => {
                log::warn!(
                    "blkback: discarding in {} failed: {e}",
                    self.disk.path().display()
                );
                Outcome::Error(format!("discard: {e}"))
            }
        }
    }

    /// Gives back every grant mapping (the ring's pages and the persistent grants).
    /// Dropping the backend does the same.
    pub fn disconnect(self) {
        drop(self);
    }

    fn release(&mut self) {
        for (_, m) in self.pgrants.drain() {
            self.grants.unmap(m);
        }
        if let Some(ring) = self.ring.take() {
            for m in ring.into_pages() {
                self.grants.unmap(m);
            }
        }
    }
}

impl Drop for BlkBackend {
    fn drop(&mut self) {
        self.release();
    }
}
