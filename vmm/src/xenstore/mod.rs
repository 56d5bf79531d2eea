//! xenstored for one PV guest: the xenstore tree, the guest's connection over the
//! shared xenstore page, and the VMM's privileged (toolstack, "dom0") access.
//!
//! Semantics follow Xen's C xenstored (`tools/xenstored/`): message types and
//! error strings from `xs_wire.h`; path checks (`canonicalize()`), permissions
//! (`perm_for_conn()`, `errno_from_parents()`), node inheritance on creation,
//! watches (one event on registration, events for changes at or below the watched
//! path, relative event paths for relative watches, duplicate pending events
//! dropped), transactions with generation-count conflict detection (`EAGAIN`),
//! default per-domain quotas, and a hostile ring breaking the connection with the
//! page's `error` field set (`ignore_connection()`).
//!
//! The guest is always an unprivileged domain (its `domid` should not be 0); the
//! VMM-side calls ([`Xenstore::write`], [`Xenstore::read`], ...) act as the
//! privileged toolstack and are never subject to quotas or permissions.
//!
//! Usage: build with [`Xenstore::new`] (or [`Xenstore::with_config`]), call
//! [`Xenstore::process`] on each event-channel kick from the guest and after VMM-side
//! changes; notify the guest's xenstore event channel when it returns `true`; call it
//! again later while [`Xenstore::needs_poll`] is `true`.

pub mod ring;
mod store;
pub mod wire;

#[cfg(test)]
mod tests;

use std::collections::{HashMap, VecDeque};

pub use ring::RingPage;
pub use wire::XsError;

use store::{Node, Txn, Watch, Who};
use wire::*;

/// Permission bit: read.
pub const XS_PERM_READ: u8 = 0x01;
/// Permission bit: write.
pub const XS_PERM_WRITE: u8 = 0x02;
/// Internal permission bit: an entry naming a domain that does not exist.
pub const XS_PERM_IGNORE: u8 = 0x10;

/// `DOMID_ANY` (`DOMID_INVALID`), usable in permissions.
pub const DOMID_ANY: u32 = 0x7ff4;

/// Features this xenstored announces in `server_features`.
pub const SERVER_FEATURES: u32 = XENSTORE_SERVER_FEATURE_ERROR;

/// Default quotas of Xen's xenstored for an unprivileged domain.
pub mod quota {
    /// Nodes a domain may own (`ACC_NODES`; a creation fails at this count).
    pub const NODES: usize = 1000;
    /// Watches (`ACC_WATCH`).
    pub const WATCHES: usize = 128;
    /// Outstanding replies before requests are no longer read (`ACC_OUTST`).
    pub const OUTSTANDING: usize = 20;
    /// Memory (`ACC_MEM`, 2.5 MiB): here queued output, watches, transaction copies.
    pub const MEMORY: usize = 2 * 1024 * 1024 + 512 * 1024;
    /// Concurrent transactions (`ACC_TRANS`).
    pub const TRANSACTIONS: usize = 10;
    /// Nodes touched by one transaction (`ACC_TRANSNODES`).
    pub const TRANS_NODES: usize = 1024;
    /// Permission entries of a node (`ACC_NPERM`).
    pub const PERMS: usize = 5;
    /// Node size: header, permissions, value, child names (`ACC_NODESZ`).
    pub const NODE_SIZE: usize = 2048;
}

/// Request bytes one [`Xenstore::process`] call consumes at most.
pub const INPUT_BUDGET: usize = 16 * 1024;

/// One permission entry: `r<id>`, `w<id>`, `b<id>` or `n<id>`. The first entry of
/// a node names its owner and the access of every domain not listed after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Perm {
    /// Domain id.
    pub id: u32,
    /// [`XS_PERM_READ`] | [`XS_PERM_WRITE`] (| [`XS_PERM_IGNORE`]).
    pub access: u8,
}

impl Perm {
    /// No access for `id` (as first entry: owned by `id`, others have no access).
    pub const fn none(id: u32) -> Self {
        Self { id, access: 0 }
    }

    /// Read access for `id`.
    pub const fn read(id: u32) -> Self {
        Self {
            id,
            access: XS_PERM_READ,
        }
    }

    /// Write access for `id`.
    pub const fn write(id: u32) -> Self {
        Self {
            id,
            access: XS_PERM_WRITE,
        }
    }

    /// Read and write access for `id`.
    pub const fn both(id: u32) -> Self {
        Self {
            id,
            access: XS_PERM_READ | XS_PERM_WRITE,
        }
    }

    /// Parses the wire form (`"r5"`, `"n0"`...) as `xenstore_strings_to_perms()`.
    pub fn parse(s: &str) -> Option<Self> {
        store::parse_perm(s.as_bytes())
    }
}

impl std::fmt::Display for Perm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = match self.access & (XS_PERM_READ | XS_PERM_WRITE) {
            XS_PERM_READ => 'r',
            XS_PERM_WRITE => 'w',
            0 => 'n',
            _ => 'b',
        };
        write!(f, "{c}{}", self.id as i32)
    }
}

/// What the standard domU tree holds (libxl's `libxl__domain_make()` and
/// `libxl__build_post()` layout).
#[derive(Debug, Clone)]
pub struct DomainConfig {
    /// Guest domain id (not 0).
    pub domid: u32,
    /// `name`.
    pub name: String,
    /// UUID: `vm` is `/vm/<uuid>`.
    pub uuid: String,
    /// `memory/target` in KiB.
    pub memory_target_kib: u64,
    /// `memory/static-max` in KiB.
    pub memory_static_max_kib: u64,
    /// vCPUs online at boot: `cpu/<n>/availability` = `online` below it.
    pub vcpus: u32,
    /// vCPUs the domain has (`maxvcpus`): `cpu/<n>/availability` = `offline` from
    /// `vcpus` up to it, as xl writes them (the guest brings such a vCPU up itself when
    /// the entry says `online`).
    pub max_vcpus: u32,
    /// `store/port`.
    pub store_port: u32,
    /// `store/ring-ref` (frame of the xenstore page).
    pub store_ring_ref: u64,
    /// `console/port`.
    pub console_port: u32,
    /// `console/ring-ref` (frame of the console page).
    pub console_ring_ref: u64,
}

impl DomainConfig {
    /// Defaults for `domid`: name `pvkvm-<domid>`, a nil-based UUID, 1 vCPU,
    /// 256 MiB, ports and frames 0 (the VMM should fill in the real ones).
    pub fn new(domid: u32) -> Self {
        Self {
            domid,
            name: format!("pvkvm-{domid}"),
            uuid: format!("00000000-0000-0000-0000-{domid:012x}"),
            memory_target_kib: 256 * 1024,
            memory_static_max_kib: 256 * 1024,
            vcpus: 1,
            max_vcpus: 1,
            store_port: 0,
            store_ring_ref: 0,
            console_port: 0,
            console_ring_ref: 0,
        }
    }
}

/// A queued outgoing message (header and payload), partly sent when `sent > 0`.
struct OutMsg {
    bytes: Vec<u8>,
    sent: usize,
    /// A reply (counts as outstanding) rather than a watch event.
    reply: bool,
}

/// The request being assembled from the ring.
#[derive(Default)]
struct InBuf {
    hdr: [u8; HEADER_LEN],
    hdr_used: usize,
    /// Some once the header is complete: the payload read so far, at its full length.
    body: Option<(MsgHeader, Vec<u8>, usize)>,
}

/// The xenstore daemon for one guest. See the module documentation.
pub struct Xenstore {
    domid: u32,
    dom_path: String,
    nodes: HashMap<String, Node>,
    generation: u64,
    /// Global nodes owned by the guest (`ACC_NODES`).
    guest_nodes: usize,
    watches: Vec<Watch>,
    watch_mem: usize,
    txns: Vec<Txn>,
    next_tx_id: u32,
    out: VecDeque<OutMsg>,
    out_mem: usize,
    outstanding: usize,
    input: InBuf,
    broken: Option<u32>,
    page_initialised: bool,
    poll: bool,
}

impl Xenstore {
    /// The standard tree for domU `domid` (see [`DomainConfig::new`]).
    pub fn new(domid: u32) -> Self {
        Self::with_config(&DomainConfig::new(domid))
    }

    /// The standard tree for the domain `cfg` describes.
    pub fn with_config(cfg: &DomainConfig) -> Self {
        let mut xs = Self {
            domid: cfg.domid,
            dom_path: format!("/local/domain/{}", cfg.domid),
            nodes: HashMap::new(),
            generation: 0,
            guest_nodes: 0,
            watches: Vec::new(),
            watch_mem: 0,
            txns: Vec::new(),
            next_tx_id: 0,
            out: VecDeque::new(),
            out_mem: 0,
            outstanding: 0,
            input: InBuf::default(),
            broken: None,
            page_initialised: false,
            poll: false,
        };
        xs.build_tree(cfg);
        xs
    }

    fn build_tree(&mut self, cfg: &DomainConfig) {
        let d = cfg.domid;
        let dom = self.dom_path.clone();
        // setup_structure(): "/" and "/tool/xenstored" owned by dom0, no access;
        // the special watch nodes.
        self.insert_raw("/", vec![Perm::none(0)]);
        self.insert_raw("@releaseDomain", vec![Perm::none(0), Perm::read(DOMID_ANY)]);
        self.insert_raw("@introduceDomain", vec![Perm::none(0)]);

        let ro = [Perm::none(0), Perm::read(d)];
        let rw = [Perm::none(d)];
        let front = [Perm::none(d), Perm::read(0)];
        let mknod = |xs: &mut Self, path: &str, perms: &[Perm]| {
            let _ = xs.mkdir(path);
            let _ = xs.set_perms(path, perms);
        };
        mknod(self, "/tool/xenstored", &[Perm::none(0)]);
        mknod(self, "/local/domain/0/backend", &[Perm::none(0)]);
        let _ = self.write("/local/domain/0/name", b"Domain-0");
        let _ = self.write("/local/domain/0/domid", b"0");

        let vm = format!("/vm/{}", cfg.uuid);
        mknod(self, &dom, &ro);
        mknod(self, &vm, &ro);
        let _ = self.write(&format!("{vm}/uuid"), cfg.uuid.as_bytes());
        let _ = self.write(&format!("{vm}/name"), cfg.name.as_bytes());
        let _ = self.write(&format!("{dom}/vm"), vm.as_bytes());
        let _ = self.write(&format!("{dom}/name"), cfg.name.as_bytes());
        let _ = self.write(&format!("{dom}/domid"), d.to_string().as_bytes());
        mknod(self, &format!("{dom}/cpu"), &ro);
        for i in 0..cfg.max_vcpus.max(cfg.vcpus).min(4096) {
            let state: &[u8] = if i < cfg.vcpus { b"online" } else { b"offline" };
            let _ = self.write(&format!("{dom}/cpu/{i}/availability"), state);
        }
        mknod(self, &format!("{dom}/memory"), &ro);
        let _ = self.write(
            &format!("{dom}/memory/static-max"),
            cfg.memory_static_max_kib.to_string().as_bytes(),
        );
        let _ = self.write(
            &format!("{dom}/memory/target"),
            cfg.memory_target_kib.to_string().as_bytes(),
        );
        mknod(self, &format!("{dom}/device"), &ro);
        mknod(self, &format!("{dom}/device/suspend/event-channel"), &rw);
        mknod(self, &format!("{dom}/control"), &ro);
        for n in [
            "shutdown",
            "feature-poweroff",
            "feature-reboot",
            "feature-suspend",
            "sysrq",
        ] {
            mknod(self, &format!("{dom}/control/{n}"), &rw);
        }
        for n in ["data", "drivers", "feature", "attr", "error"] {
            mknod(self, &format!("{dom}/{n}"), &rw);
        }
        let _ = self.write(
            &format!("{dom}/control/platform-feature-multiprocessor-suspend"),
            b"1",
        );
        let _ = self.write(
            &format!("{dom}/control/platform-feature-xs_reset_watches"),
            b"1",
        );
        let _ = self.write(
            &format!("{dom}/store/port"),
            cfg.store_port.to_string().as_bytes(),
        );
        let _ = self.write(
            &format!("{dom}/store/ring-ref"),
            cfg.store_ring_ref.to_string().as_bytes(),
        );
        // The console frontend directory (libxl__device_generic_add()): owned by
        // the guest with backend read access; libxl's read-only entries owned by
        // dom0 with guest read access.
        let con = format!("{dom}/console");
        mknod(self, &con, &front);
        let _ = self.write(&format!("{con}/backend-id"), b"0");
        let ro_front: [(&str, String); 6] = [
            ("limit", "1048576".to_string()),
            ("type", "xenconsoled".to_string()),
            ("output", "pty".to_string()),
            ("tty", String::new()),
            ("port", cfg.console_port.to_string()),
            ("ring-ref", cfg.console_ring_ref.to_string()),
        ];
        for (k, v) in ro_front {
            let p = format!("{con}/{k}");
            let _ = self.write(&p, v.as_bytes());
            let _ = self.set_perms(&p, &ro);
        }
        // Building the tree queued nothing (no watches yet).
        self.poll = false;
    }

    /// The guest's domain id.
    pub fn domid(&self) -> u32 {
        self.domid
    }

    /// `/local/domain/<domid>`, the base of the guest's relative paths.
    pub fn domain_path(&self) -> &str {
        &self.dom_path
    }

    /// The `error` value the connection was broken with, if it was.
    pub fn broken(&self) -> Option<u32> {
        self.broken
    }

    /// A look at the ring's indices (see [`ring::look`]); None once the connection is
    /// broken (the page is left alone then).
    pub fn look(&self, page: &mut dyn RingPage) -> Option<ring::RingLook> {
        self.broken.is_none().then(|| ring::look(page))
    }

    /// True when [`Xenstore::process`] should be called again without waiting for
    /// a kick: its input budget ran out, or VMM-side calls queued watch events.
    pub fn needs_poll(&self) -> bool {
        self.poll
    }

    /// Serves the guest's connection: sends queued output as far as the response
    /// ring allows, consumes and answers complete requests (at most
    /// [`INPUT_BUDGET`] bytes per call; stops reading while [`quota::OUTSTANDING`]
    /// replies wait), partial messages staying buffered across calls. Returns true
    /// when an index moved (or the connection broke) and the guest should be
    /// notified. A hostile ring (bad indices, a header announcing more than 4096
    /// bytes) breaks the connection as Xen's xenstored does: `error` is set, watches,
    /// transactions and queued output are dropped, and the page is left alone until
    /// [`Xenstore::reset`].
    pub fn process(&mut self, page: &mut dyn RingPage) -> bool {
        self.poll = false;
        if self.broken.is_some() {
            return false;
        }
        if !self.page_initialised {
            ring::write_u32(page, OFF_SERVER_FEATURES, SERVER_FEATURES);
            self.page_initialised = true;
        }
        let mut notify = false;
        let mut budget = INPUT_BUDGET;
        loop {
            let mut progress = false;
            // Output first, as xenstored's loop does.
            while let Some(m) = self.out.front_mut() {
                match ring::write_responses(page, &m.bytes[m.sent..]) {
                    Err(_) => {
                        self.break_connection(page, XENSTORE_ERROR_RINGIDX);
                        return true;
                    }
                    Ok(0) => break,
                    Ok(n) => {
                        notify = true;
                        progress = true;
                        m.sent += n;
                        if m.sent < m.bytes.len() {
                            break;
                        }
                        let m = self.out.pop_front().expect("front exists");
                        self.out_mem -= m.bytes.len();
                        if m.reply {
                            self.outstanding -= 1;
                        }
                    }
                }
            }
            if self.can_read() {
                if budget == 0 {
                    self.poll = true;
                } else {
                    match self.read_step(page, &mut budget) {
                        Err(err) => {
                            self.break_connection(page, err);
                            return true;
                        }
                        Ok(0) => {}
                        Ok(_) => {
                            notify = true;
                            progress = true;
                        }
                    }
                }
            }
            if !progress {
                break;
            }
        }
        notify
    }

    /// `domain_can_read()` without the ring check: quotas on outstanding replies and
    /// memory stop reading requests.
    fn can_read(&self) -> bool {
        self.outstanding < quota::OUTSTANDING && self.guest_mem() < quota::MEMORY
    }

    /// Reads one chunk of request bytes; dispatches a request once complete.
    fn read_step(&mut self, page: &mut dyn RingPage, budget: &mut usize) -> Result<usize, u32> {
        let got;
        if let Some((_, body, used)) = self.input.body.as_mut() {
            let want = (body.len() - *used).min(*budget);
            got = ring::read_requests(page, &mut body[*used..*used + want])
                .map_err(|_| XENSTORE_ERROR_RINGIDX)?;
            *used += got;
        } else {
            let used = self.input.hdr_used;
            let want = (HEADER_LEN - used).min(*budget);
            let mut tmp = [0u8; HEADER_LEN];
            got =
                ring::read_requests(page, &mut tmp[..want]).map_err(|_| XENSTORE_ERROR_RINGIDX)?;
            self.input.hdr[used..used + got].copy_from_slice(&tmp[..got]);
            self.input.hdr_used += got;
            if self.input.hdr_used == HEADER_LEN {
                let hdr = MsgHeader::from_bytes(&self.input.hdr);
                if hdr.len as usize > XENSTORE_PAYLOAD_MAX {
                    return Err(XENSTORE_ERROR_PROTO);
                }
                self.input.hdr_used = 0;
                self.input.body = Some((hdr, vec![0u8; hdr.len as usize], 0));
            }
        }
        *budget -= got;
        if let Some((_, body, used)) = &self.input.body {
            if *used == body.len() {
                let (hdr, body, _) = self.input.body.take().expect("checked");
                self.handle_request(hdr, &body);
                // A complete zero-length request is progress even if `got` is 0.
                return Ok(got.max(1));
            }
        }
        Ok(got)
    }

    /// `ignore_connection()`: report `err` in the page and drop all connection state.
    fn break_connection(&mut self, page: &mut dyn RingPage, err: u32) {
        if SERVER_FEATURES & XENSTORE_SERVER_FEATURE_ERROR != 0 {
            ring::write_u32(page, OFF_ERROR, err);
        }
        log::warn!("xenstore: guest connection broken (error {err})");
        self.broken = Some(err);
        self.drop_connection_state();
    }

    fn drop_connection_state(&mut self) {
        self.watches.clear();
        self.watch_mem = 0;
        self.txns.clear();
        self.out.clear();
        self.out_mem = 0;
        self.outstanding = 0;
        self.input = InBuf::default();
        self.poll = false;
    }

    /// Re-establishes the connection the way `XS_INTRODUCE` does
    /// (`domain_conn_reset()`): drops watches, transactions and buffers, zeroes the
    /// four ring indices and the `error` field, sets `server_features` and marks the
    /// connection `XENSTORE_CONNECTED`. The tree is kept.
    pub fn reset(&mut self, page: &mut dyn RingPage) {
        self.drop_connection_state();
        self.broken = None;
        for off in [
            OFF_REQ_CONS,
            OFF_REQ_PROD,
            OFF_RSP_CONS,
            OFF_RSP_PROD,
            OFF_ERROR,
        ] {
            ring::write_u32(page, off, 0);
        }
        ring::write_u32(page, OFF_SERVER_FEATURES, SERVER_FEATURES);
        ring::write_u32(page, OFF_CONNECTION, XENSTORE_CONNECTED);
        self.page_initialised = true;
    }

    // ----- VMM-side (privileged) access -----

    /// Writes `value` at `path` (absolute, or relative to the domain path), creating
    /// missing parents (they inherit their parent's permissions) and firing the
    /// guest's watches. Call [`Xenstore::process`] afterwards to deliver events.
    pub fn write(&mut self, path: &str, value: &[u8]) -> Result<(), XsError> {
        let name = self.canonicalize(Who::Tools, path.as_bytes(), false)?;
        let queued = self.out.len();
        let r = self.op_write(Who::Tools, None, &name, value);
        self.poll |= self.out.len() > queued;
        r
    }

    /// The value at `path`, if the node exists.
    pub fn read(&mut self, path: &str) -> Option<Vec<u8>> {
        let name = self.canonicalize(Who::Tools, path.as_bytes(), false).ok()?;
        self.nodes.get(&name).map(|n| n.value.clone())
    }

    /// Creates `path` (and parents) if missing.
    pub fn mkdir(&mut self, path: &str) -> Result<(), XsError> {
        let name = self.canonicalize(Who::Tools, path.as_bytes(), false)?;
        let queued = self.out.len();
        let r = self.op_mkdir(Who::Tools, None, &name);
        self.poll |= self.out.len() > queued;
        r
    }

    /// Removes `path` and its subtree (fine if missing while its parent exists),
    /// firing the guest's watches.
    pub fn rm(&mut self, path: &str) -> Result<(), XsError> {
        let name = self.canonicalize(Who::Tools, path.as_bytes(), false)?;
        let queued = self.out.len();
        let r = self.op_rm(Who::Tools, None, &name);
        self.poll |= self.out.len() > queued;
        r
    }

    /// The child names of `path`, if it exists.
    pub fn directory(&mut self, path: &str) -> Option<Vec<String>> {
        let name = self.canonicalize(Who::Tools, path.as_bytes(), false).ok()?;
        self.nodes.get(&name).map(|n| n.children.clone())
    }

    /// The permissions of `path` (also `@releaseDomain`/`@introduceDomain`).
    pub fn get_perms(&mut self, path: &str) -> Option<Vec<Perm>> {
        let name = self.canonicalize(Who::Tools, path.as_bytes(), true).ok()?;
        self.nodes.get(&name).map(|n| n.perms.clone())
    }

    /// Sets the permissions of `path` (first entry: owner and default access).
    /// Entries naming domains other than 0 and the guest are kept but ignored, as
    /// xenstored does for domains that do not exist.
    pub fn set_perms(&mut self, path: &str, perms: &[Perm]) -> Result<(), XsError> {
        let name = self.canonicalize(Who::Tools, path.as_bytes(), true)?;
        let perms = self.mark_unknown_domains(perms.to_vec(), true);
        let queued = self.out.len();
        let r = self.op_set_perms(Who::Tools, None, &name, perms);
        self.poll |= self.out.len() > queued;
        r
    }
}
