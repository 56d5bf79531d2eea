//! Byte access to a 4 KiB page shared with the guest, as the ring backends
//! (console, xenstore) see it.
//!
//! The rings themselves differ per protocol; what they share is that every access is by
//! page offset and that nothing the guest writes there can make an access panic.
//! [`GuestRingPage`] is the page in guest memory; byte arrays and vectors stand in for it
//! in unit tests.

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Size of a shared ring page.
pub const PAGE_SIZE: usize = 4096;

/// Byte access to a 4 KiB shared page. Offsets are page offsets.
///
/// Implementations must not panic on any offset: bytes outside the page read as 0
/// and writes outside it are ignored. The ring code places the memory fences.
pub trait RingPage {
    /// Fills `buf` from the page at `offset`.
    fn read(&self, offset: usize, buf: &mut [u8]);
    /// Stores `buf` into the page at `offset`.
    fn write(&mut self, offset: usize, buf: &[u8]);
}

impl RingPage for [u8] {
    fn read(&self, offset: usize, buf: &mut [u8]) {
        buf.fill(0);
        if let Some(src) = self.get(offset..) {
            let n = src.len().min(buf.len());
            buf[..n].copy_from_slice(&src[..n]);
        }
    }

    fn write(&mut self, offset: usize, buf: &[u8]) {
        if let Some(dst) = self.get_mut(offset..) {
            let n = dst.len().min(buf.len());
            dst[..n].copy_from_slice(&buf[..n]);
        }
    }
}

impl<const N: usize> RingPage for [u8; N] {
    fn read(&self, offset: usize, buf: &mut [u8]) {
        self.as_slice().read(offset, buf)
    }

    fn write(&mut self, offset: usize, buf: &[u8]) {
        self.as_mut_slice().write(offset, buf)
    }
}

impl RingPage for Vec<u8> {
    fn read(&self, offset: usize, buf: &mut [u8]) {
        self.as_slice().read(offset, buf)
    }

    fn write(&mut self, offset: usize, buf: &[u8]) {
        self.as_mut_slice().write(offset, buf)
    }
}

/// A shared page in guest memory, at guest-physical `base`.
///
/// Accesses that fall outside guest memory or past the page read as 0 and are
/// otherwise ignored.
pub struct GuestRingPage<'a> {
    mem: &'a GuestMemoryMmap,
    base: GuestAddress,
}

impl<'a> GuestRingPage<'a> {
    /// The page at guest-physical `base` (page aligned in practice).
    pub fn new(mem: &'a GuestMemoryMmap, base: GuestAddress) -> Self {
        Self { mem, base }
    }

    fn addr(&self, offset: usize, len: usize) -> Option<GuestAddress> {
        let end = offset.checked_add(len)?;
        if end > PAGE_SIZE {
            return None;
        }
        self.base.0.checked_add(offset as u64).map(GuestAddress)
    }
}

impl RingPage for GuestRingPage<'_> {
    fn read(&self, offset: usize, buf: &mut [u8]) {
        let ok = self
            .addr(offset, buf.len())
            .is_some_and(|a| self.mem.read_slice(buf, a).is_ok());
        if !ok {
            buf.fill(0);
        }
    }

    fn write(&mut self, offset: usize, buf: &[u8]) {
        if let Some(a) = self.addr(offset, buf.len()) {
            let _ = self.mem.write_slice(buf, a);
        }
    }
}

/// Reads the little-endian u32 at `offset`.
pub fn read_u32(page: &dyn RingPage, offset: usize) -> u32 {
    let mut b = [0u8; 4];
    page.read(offset, &mut b);
    u32::from_le_bytes(b)
}

/// Writes the little-endian u32 at `offset`.
pub fn write_u32(page: &mut dyn RingPage, offset: usize, v: u32) {
    page.write(offset, &v.to_le_bytes());
}
