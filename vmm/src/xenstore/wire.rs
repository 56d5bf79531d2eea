//! The xenstore wire protocol: message types, the message header, error names, the
//! shared page's layout and the C-compatible little parsers xenstored applies to
//! request payloads (`xs_wire.h`, `docs/misc/xenstore.txt`).

/// `XS_CONTROL` (was `XS_DEBUG`).
pub const XS_CONTROL: u32 = 0;
/// `XS_DIRECTORY`.
pub const XS_DIRECTORY: u32 = 1;
/// `XS_READ`.
pub const XS_READ: u32 = 2;
/// `XS_GET_PERMS`.
pub const XS_GET_PERMS: u32 = 3;
/// `XS_WATCH`.
pub const XS_WATCH: u32 = 4;
/// `XS_UNWATCH`.
pub const XS_UNWATCH: u32 = 5;
/// `XS_TRANSACTION_START`.
pub const XS_TRANSACTION_START: u32 = 6;
/// `XS_TRANSACTION_END`.
pub const XS_TRANSACTION_END: u32 = 7;
/// `XS_INTRODUCE`.
pub const XS_INTRODUCE: u32 = 8;
/// `XS_RELEASE`.
pub const XS_RELEASE: u32 = 9;
/// `XS_GET_DOMAIN_PATH`.
pub const XS_GET_DOMAIN_PATH: u32 = 10;
/// `XS_WRITE`.
pub const XS_WRITE: u32 = 11;
/// `XS_MKDIR`.
pub const XS_MKDIR: u32 = 12;
/// `XS_RM`.
pub const XS_RM: u32 = 13;
/// `XS_SET_PERMS`.
pub const XS_SET_PERMS: u32 = 14;
/// `XS_WATCH_EVENT` (server to client only).
pub const XS_WATCH_EVENT: u32 = 15;
/// `XS_ERROR` (server to client only).
pub const XS_ERROR: u32 = 16;
/// `XS_IS_DOMAIN_INTRODUCED`.
pub const XS_IS_DOMAIN_INTRODUCED: u32 = 17;
/// `XS_RESUME`.
pub const XS_RESUME: u32 = 18;
/// `XS_SET_TARGET`.
pub const XS_SET_TARGET: u32 = 19;
/// `XS_RESET_WATCHES` (20, the old `XS_RESTRICT`, is gone).
pub const XS_RESET_WATCHES: u32 = 21;
/// `XS_DIRECTORY_PART`.
pub const XS_DIRECTORY_PART: u32 = 22;
/// `XS_GET_FEATURE`.
pub const XS_GET_FEATURE: u32 = 23;
/// `XS_SET_FEATURE`.
pub const XS_SET_FEATURE: u32 = 24;
/// `XS_GET_QUOTA`.
pub const XS_GET_QUOTA: u32 = 25;
/// `XS_SET_QUOTA`.
pub const XS_SET_QUOTA: u32 = 26;

/// Size of each of the two rings.
pub const XENSTORE_RING_SIZE: usize = 1024;
/// Largest payload in either direction; a request announcing more breaks the ring.
pub const XENSTORE_PAYLOAD_MAX: usize = 4096;
/// Longest absolute path (applied to the VMM's own requests).
pub const XENSTORE_ABS_PATH_MAX: usize = 3072;
/// Longest path below `/local/domain/<id>/` for a domain (xenstored's path quota).
pub const XENSTORE_REL_PATH_MAX: usize = 2048;

/// `server_features` bit: the reconnection protocol.
pub const XENSTORE_SERVER_FEATURE_RECONNECTION: u32 = 1;
/// `server_features` bit: the `error` field is present.
pub const XENSTORE_SERVER_FEATURE_ERROR: u32 = 2;
/// `connection` value: steady state.
pub const XENSTORE_CONNECTED: u32 = 0;
/// `connection` value: reconnect in progress.
pub const XENSTORE_RECONNECT: u32 = 1;
/// `error` value: none.
pub const XENSTORE_ERROR_NONE: u32 = 0;
/// `error` value: communication problem.
pub const XENSTORE_ERROR_COMM: u32 = 1;
/// `error` value: invalid ring index.
pub const XENSTORE_ERROR_RINGIDX: u32 = 2;
/// `error` value: protocol violation (payload too long).
pub const XENSTORE_ERROR_PROTO: u32 = 3;

/// Page offset of `req[]`.
pub const OFF_REQ: usize = 0;
/// Page offset of `rsp[]`.
pub const OFF_RSP: usize = 1024;
/// Page offset of `req_cons`.
pub const OFF_REQ_CONS: usize = 2048;
/// Page offset of `req_prod`.
pub const OFF_REQ_PROD: usize = 2052;
/// Page offset of `rsp_cons`.
pub const OFF_RSP_CONS: usize = 2056;
/// Page offset of `rsp_prod`.
pub const OFF_RSP_PROD: usize = 2060;
/// Page offset of `server_features`.
pub const OFF_SERVER_FEATURES: usize = 2064;
/// Page offset of `connection`.
pub const OFF_CONNECTION: usize = 2068;
/// Page offset of `error`.
pub const OFF_ERROR: usize = 2072;
/// Page offset of `evtchn_port`.
pub const OFF_EVTCHN_PORT: usize = 2076;

/// Size of `struct xsd_sockmsg`.
pub const HEADER_LEN: usize = 16;

/// `struct xsd_sockmsg`: the header of every message in both directions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsgHeader {
    /// `XS_*` type.
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0: none).
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl MsgHeader {
    /// Decodes a header from its 16 little-endian bytes.
    pub fn from_bytes(b: &[u8; HEADER_LEN]) -> Self {
        let w = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Self {
            ty: w(0),
            req_id: w(4),
            tx_id: w(8),
            len: w(12),
        }
    }

    /// Encodes the header.
    pub fn to_bytes(self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..4].copy_from_slice(&self.ty.to_le_bytes());
        b[4..8].copy_from_slice(&self.req_id.to_le_bytes());
        b[8..12].copy_from_slice(&self.tx_id.to_le_bytes());
        b[12..16].copy_from_slice(&self.len.to_le_bytes());
        b
    }
}

/// The errors xenstored reports, by the names it sends (`xsd_errors[]`).
#[allow(non_camel_case_types, clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XsError {
    /// Invalid argument.
    EINVAL,
    /// Permission denied.
    EACCES,
    /// Already exists.
    EEXIST,
    /// Is a directory.
    EISDIR,
    /// No such node / transaction / watch.
    ENOENT,
    /// Out of memory (or memory quota).
    ENOMEM,
    /// Quota exceeded.
    ENOSPC,
    /// I/O error.
    EIO,
    /// Not empty.
    ENOTEMPTY,
    /// Unknown operation.
    ENOSYS,
    /// Read-only.
    EROFS,
    /// Busy (nested transaction).
    EBUSY,
    /// Transaction conflict: retry.
    EAGAIN,
    /// Already connected.
    EISCONN,
    /// Reply too big.
    E2BIG,
    /// Operation not permitted (owner change by a domain).
    EPERM,
}

impl XsError {
    /// The string sent in an `XS_ERROR` reply (without its nul).
    pub fn as_str(self) -> &'static str {
        match self {
            XsError::EINVAL => "EINVAL",
            XsError::EACCES => "EACCES",
            XsError::EEXIST => "EEXIST",
            XsError::EISDIR => "EISDIR",
            XsError::ENOENT => "ENOENT",
            XsError::ENOMEM => "ENOMEM",
            XsError::ENOSPC => "ENOSPC",
            XsError::EIO => "EIO",
            XsError::ENOTEMPTY => "ENOTEMPTY",
            XsError::ENOSYS => "ENOSYS",
            XsError::EROFS => "EROFS",
            XsError::EBUSY => "EBUSY",
            XsError::EAGAIN => "EAGAIN",
            XsError::EISCONN => "EISCONN",
            XsError::E2BIG => "E2BIG",
            XsError::EPERM => "EPERM",
        }
    }
}

impl std::fmt::Display for XsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for XsError {}

/// The nul-terminated strings at the start of `p` (bytes after the last nul are
/// ignored), as xenstored's `get_strings()`.
pub fn get_strings(p: &[u8]) -> Vec<&[u8]> {
    let mut v = Vec::new();
    let mut rest = p;
    while let Some(i) = rest.iter().position(|&b| b == 0) {
        v.push(&rest[..i]);
        rest = &rest[i + 1..];
    }
    v
}

/// Number of nul bytes in `p` (`xenstore_count_strings()`).
pub fn count_strings(p: &[u8]) -> usize {
    p.iter().filter(|&&b| b == 0).count()
}

/// The single argument of a request whose payload must hold exactly one string
/// ending at the payload's end (`onearg()`).
pub fn onearg(p: &[u8]) -> Option<&[u8]> {
    let i = p.iter().position(|&b| b == 0)?;
    if i + 1 == p.len() {
        Some(&p[..i])
    } else {
        None
    }
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// C `atoi()` (wrapping on overflow, which C leaves undefined).
pub fn c_atoi(s: &[u8]) -> i32 {
    let mut i = 0;
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let mut v: i32 = 0;
    while i < s.len() && s[i].is_ascii_digit() {
        v = v.wrapping_mul(10).wrapping_add(i32::from(s[i] - b'0'));
        i += 1;
    }
    if neg {
        v.wrapping_neg()
    } else {
        v
    }
}

/// C `strtoul(s, &end, 10)` on a 64-bit host: the value (saturated at `u64::MAX`,
/// negated modulo 2^64 after a `-`) and the index of `end`.
pub fn c_strtoul10(s: &[u8]) -> (u64, usize) {
    let mut i = 0;
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let start = i;
    let mut v: u64 = 0;
    let mut overflow = false;
    while i < s.len() && s[i].is_ascii_digit() {
        match v
            .checked_mul(10)
            .and_then(|x| x.checked_add(u64::from(s[i] - b'0')))
        {
            Some(x) => v = x,
            None => overflow = true,
        }
        i += 1;
    }
    if i == start {
        return (0, 0);
    }
    if overflow {
        return (u64::MAX, i);
    }
    (if neg { v.wrapping_neg() } else { v }, i)
}

/// C `strtol(s, &end, 0)` on a 64-bit host: the value (saturated), the index of
/// `end` (0 when no number was found).
pub fn c_strtol0(s: &[u8]) -> (i64, usize) {
    let mut i = 0;
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let mut base = 10u32;
    if i + 1 < s.len() && s[i] == b'0' && (s[i + 1] | 0x20) == b'x' {
        // "0x" counts as a prefix only when a hex digit follows.
        if i + 2 < s.len() && s[i + 2].is_ascii_hexdigit() {
            base = 16;
            i += 2;
        } else {
            // Only the "0" is parsed.
            return (0, i + 1);
        }
    } else if i < s.len() && s[i] == b'0' {
        base = 8;
    }
    let start = i;
    let mut mag: u64 = 0;
    let mut overflow = false;
    while i < s.len() {
        let d = match (s[i] as char).to_digit(base) {
            Some(d) => d,
            None => break,
        };
        match mag
            .checked_mul(u64::from(base))
            .and_then(|x| x.checked_add(u64::from(d)))
        {
            Some(x) => mag = x,
            None => overflow = true,
        }
        i += 1;
    }
    if i == start {
        return (0, 0);
    }
    let v = if neg {
        if overflow || mag > (i64::MAX as u64) + 1 {
            i64::MIN
        } else {
            (mag as i64).wrapping_neg()
        }
    } else if overflow || mag > i64::MAX as u64 {
        i64::MAX
    } else {
        mag as i64
    };
    (v, i)
}
