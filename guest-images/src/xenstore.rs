//! A minimal xenstore client over the ring page named in `start_info` (`store_mfn`,
//! `store_evtchn`): `XS_READ`, `XS_WRITE`, `XS_DIRECTORY`, one request at a time, every
//! wait bounded (a missing or silent xenstored is reported as [`XsErr::Timeout`], never a
//! hang).
//!
//! Facts used (Xen `public/io/xs_wire.h`):
//! * `struct xenstore_domain_interface`: `req[1024]`, `rsp[1024]`, then u32 `req_cons`,
//!   `req_prod`, `rsp_cons`, `rsp_prod` (offsets 2048..2064), `server_features`,
//!   `connection`, `error`; indexes are free-running, `MASK_XENSTORE_IDX(i) = i & 1023`.
//! * Each message is `struct xsd_sockmsg { u32 type, req_id, tx_id, len; }` then `len`
//!   bytes of payload. `XS_READ`/`XS_DIRECTORY`: payload `path\0`; the reply is the value
//!   (no NUL) or the child names, each NUL-terminated. `XS_WRITE`: `path\0value` (the
//!   value without NUL); reply `OK\0`. An error reply has type `XS_ERROR` and an errno
//!   name (`ENOENT\0`). Relative paths are under the domain's home
//!   (`/local/domain/<domid>/`).
//! * The client writes requests, then notifies `store_evtchn`; xenstored notifies it back
//!   when it has written a reply.

use core::fmt;
use core::sync::atomic::{fence, Ordering};
use xen_abi::xen::StartInfo;

use crate::evtchn::{self, Events};
use crate::mm;

/// `XS_DIRECTORY`.
pub const XS_DIRECTORY: u32 = 1;
/// `XS_READ`.
pub const XS_READ: u32 = 2;
/// `XS_WRITE`.
pub const XS_WRITE: u32 = 11;
/// `XS_WATCH_EVENT` (never requested here; skipped if seen).
pub const XS_WATCH_EVENT: u32 = 15;
/// `XS_ERROR`.
pub const XS_ERROR: u32 = 16;

/// `XENSTORE_RING_SIZE`.
pub const RING_SIZE: u32 = 1024;
/// `XENSTORE_PAYLOAD_MAX`.
pub const PAYLOAD_MAX: usize = 4096;
const OFF_REQ: u64 = 0;
const OFF_RSP: u64 = 1024;
const OFF_REQ_CONS: u64 = 2048;
const OFF_REQ_PROD: u64 = 2052;
const OFF_RSP_CONS: u64 = 2056;
const OFF_RSP_PROD: u64 = 2060;
const HEADER_LEN: usize = 16;

/// How long one request may take, in ms.
pub const OP_TIMEOUT_MS: u64 = 5000;

/// Why a xenstore operation failed.
#[derive(Clone, Copy)]
pub enum XsErr {
    /// No (complete) reply within [`OP_TIMEOUT_MS`].
    Timeout,
    /// xenstored answered `XS_ERROR` with this errno name.
    Error([u8; 16], usize),
    /// The request or the reply does not fit.
    TooLong,
    /// A reply of an unexpected type or request id.
    Unexpected(u32),
}

impl XsErr {
    /// Whether this is the error reply `name` (e.g. `"ENOENT"`).
    pub fn is(&self, name: &str) -> bool {
        matches!(self, XsErr::Error(b, n) if &b[..*n] == name.as_bytes())
    }
}

impl fmt::Display for XsErr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            XsErr::Timeout => write!(f, "no reply from xenstored within {} ms", OP_TIMEOUT_MS),
            XsErr::Error(b, n) => f.write_str(core::str::from_utf8(&b[..*n]).unwrap_or("?")),
            XsErr::TooLong => f.write_str("message too long"),
            XsErr::Unexpected(t) => write!(f, "unexpected reply type {}", t),
        }
    }
}

/// The client: the ring page, its event channel, the shared_info page for waiting.
pub struct Xenstore<'a> {
    ring: u64,
    port: u32,
    ev: &'a Events,
    next_id: u32,
}

impl<'a> Xenstore<'a> {
    /// Connects to the ring `start_info` names. The page must be one of the domain's own
    /// frames in the builder's 1:1 region (it is, under Xen's and pvkvm's builders); if
    /// it is not, it is mapped at slack frame `fallback_slot`.
    pub fn new(si: &StartInfo, ev: &'a Events, fallback_slot: u64) -> Self {
        let ring = match mm::mfn_to_va(si, si.store_mfn) {
            Some(va) => va,
            None => {
                let va = mm::slack_va(si, fallback_slot);
                mm::remap("map the xenstore ring", va, mm::pte_rw(si.store_mfn));
                va
            }
        };
        Xenstore {
            ring,
            port: si.store_evtchn,
            ev,
            next_id: 1,
        }
    }

    fn rd32(&self, off: u64) -> u32 {
        // SAFETY: `off` is inside the mapped ring page.
        unsafe { core::ptr::read_volatile((self.ring + off) as *const u32) }
    }

    fn wr32(&self, off: u64, v: u32) {
        // SAFETY: as for rd32; the page is writable.
        unsafe { core::ptr::write_volatile((self.ring + off) as *mut u32, v) }
    }

    /// Puts `bytes` on the request ring, waiting (bounded) for space.
    fn put(&self, bytes: &[u8], deadline: u64, rounds: &mut u64) -> Result<(), XsErr> {
        let mut done = 0;
        while done < bytes.len() {
            let cons = self.rd32(OFF_REQ_CONS);
            let prod = self.rd32(OFF_REQ_PROD);
            fence(Ordering::SeqCst);
            let used = prod.wrapping_sub(cons);
            if used > RING_SIZE {
                return Err(XsErr::Unexpected(u32::MAX));
            }
            let free = (RING_SIZE - used) as usize;
            if free == 0 {
                self.wait(deadline, rounds)?;
                continue;
            }
            let n = free.min(bytes.len() - done);
            for (i, &b) in bytes[done..done + n].iter().enumerate() {
                let idx = u64::from(prod.wrapping_add(i as u32) & (RING_SIZE - 1));
                // SAFETY: idx < 1024, inside `req`.
                unsafe { core::ptr::write_volatile((self.ring + OFF_REQ + idx) as *mut u8, b) };
            }
            fence(Ordering::SeqCst);
            self.wr32(OFF_REQ_PROD, prod.wrapping_add(n as u32));
            done += n;
            evtchn::send(self.port);
        }
        Ok(())
    }

    /// Takes `out.len()` bytes off the response ring, waiting (bounded) for them.
    fn take(&self, out: &mut [u8], deadline: u64, rounds: &mut u64) -> Result<(), XsErr> {
        let mut done = 0;
        while done < out.len() {
            let cons = self.rd32(OFF_RSP_CONS);
            let prod = self.rd32(OFF_RSP_PROD);
            fence(Ordering::SeqCst);
            let avail = prod.wrapping_sub(cons);
            if avail > RING_SIZE {
                return Err(XsErr::Unexpected(u32::MAX));
            }
            if avail == 0 {
                self.wait(deadline, rounds)?;
                continue;
            }
            let n = (avail as usize).min(out.len() - done);
            for (i, b) in out[done..done + n].iter_mut().enumerate() {
                let idx = u64::from(cons.wrapping_add(i as u32) & (RING_SIZE - 1));
                // SAFETY: idx < 1024, inside `rsp`.
                *b = unsafe { core::ptr::read_volatile((self.ring + OFF_RSP + idx) as *const u8) };
            }
            fence(Ordering::SeqCst);
            self.wr32(OFF_RSP_CONS, cons.wrapping_add(n as u32));
            done += n;
            evtchn::send(self.port);
        }
        Ok(())
    }

    fn wait(&self, deadline: u64, rounds: &mut u64) -> Result<(), XsErr> {
        *rounds += 1;
        if self.ev.now_ns() >= deadline || *rounds > evtchn::max_rounds(OP_TIMEOUT_MS) {
            return Err(XsErr::Timeout);
        }
        self.ev.wait(self.port, deadline);
        Ok(())
    }

    /// One request (payload = the concatenation of `parts`); the reply's payload goes to
    /// `out` and its length is returned.
    pub fn request(&mut self, ty: u32, parts: &[&[u8]], out: &mut [u8]) -> Result<usize, XsErr> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > PAYLOAD_MAX {
            return Err(XsErr::TooLong);
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let deadline = self.ev.deadline_ms(OP_TIMEOUT_MS);
        let mut rounds = 0;
        let mut hdr = [0u8; HEADER_LEN];
        hdr[0..4].copy_from_slice(&ty.to_le_bytes());
        hdr[4..8].copy_from_slice(&id.to_le_bytes());
        hdr[12..16].copy_from_slice(&(len as u32).to_le_bytes());
        self.put(&hdr, deadline, &mut rounds)?;
        for p in parts {
            self.put(p, deadline, &mut rounds)?;
        }
        loop {
            let mut h = [0u8; HEADER_LEN];
            self.take(&mut h, deadline, &mut rounds)?;
            let word = |i: usize| u32::from_le_bytes([h[i], h[i + 1], h[i + 2], h[i + 3]]);
            let (rty, rid, rlen) = (word(0), word(4), word(12) as usize);
            if rlen > PAYLOAD_MAX {
                return Err(XsErr::Unexpected(rty));
            }
            let mut payload = [0u8; PAYLOAD_MAX];
            self.take(&mut payload[..rlen], deadline, &mut rounds)?;
            if rty == XS_WATCH_EVENT {
                continue;
            }
            if rid != id {
                return Err(XsErr::Unexpected(rty));
            }
            if rty == XS_ERROR {
                let mut name = [0u8; 16];
                let n = payload[..rlen]
                    .iter()
                    .position(|&b| b == 0)
                    .unwrap_or(rlen)
                    .min(16);
                name[..n].copy_from_slice(&payload[..n]);
                return Err(XsErr::Error(name, n));
            }
            if rty != ty {
                return Err(XsErr::Unexpected(rty));
            }
            if rlen > out.len() {
                return Err(XsErr::TooLong);
            }
            out[..rlen].copy_from_slice(&payload[..rlen]);
            return Ok(rlen);
        }
    }

    /// `XS_READ path`: the value's length in `out`.
    pub fn read(&mut self, path: &str, out: &mut [u8]) -> Result<usize, XsErr> {
        self.request(XS_READ, &[path.as_bytes(), b"\0"], out)
    }

    /// `XS_WRITE path value`.
    pub fn write(&mut self, path: &str, value: &str) -> Result<(), XsErr> {
        let mut ok = [0u8; 16];
        self.request(
            XS_WRITE,
            &[path.as_bytes(), b"\0", value.as_bytes()],
            &mut ok,
        )
        .map(|_| ())
    }

    /// `XS_DIRECTORY path`: the children, each NUL-terminated, in `out`.
    pub fn directory(&mut self, path: &str, out: &mut [u8]) -> Result<usize, XsErr> {
        self.request(XS_DIRECTORY, &[path.as_bytes(), b"\0"], out)
    }

    /// `XS_READ` of a decimal number.
    pub fn read_u64(&mut self, path: &str) -> Result<u64, XsErr> {
        let mut buf = [0u8; 32];
        let n = self.read(path, &mut buf)?;
        parse_u64(&buf[..n]).ok_or(XsErr::Unexpected(XS_READ))
    }
}

/// A decimal number (surrounding NULs and blanks ignored).
pub fn parse_u64(b: &[u8]) -> Option<u64> {
    let s = core::str::from_utf8(b).ok()?;
    s.trim_matches(|c: char| c == '\0' || c.is_whitespace())
        .parse()
        .ok()
}

/// A fixed-capacity string for building xenstore paths without an allocator.
pub struct PathBuf {
    buf: [u8; 256],
    len: usize,
}

impl PathBuf {
    /// An empty path.
    pub const fn new() -> Self {
        PathBuf {
            buf: [0; 256],
            len: 0,
        }
    }

    /// The path built from `args` (truncated at 256 bytes).
    pub fn from_fmt(args: fmt::Arguments<'_>) -> Self {
        let mut p = PathBuf::new();
        let _ = fmt::Write::write_fmt(&mut p, args);
        p
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        core::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Default for PathBuf {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Write for PathBuf {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for &b in s.as_bytes() {
            if self.len == self.buf.len() {
                return Err(fmt::Error);
            }
            self.buf[self.len] = b;
            self.len += 1;
        }
        Ok(())
    }
}

/// `PathBuf::from_fmt(format_args!(...))`.
#[macro_export]
macro_rules! xs_path {
    ($($arg:tt)*) => {
        $crate::xenstore::PathBuf::from_fmt(format_args!($($arg)*))
    };
}
