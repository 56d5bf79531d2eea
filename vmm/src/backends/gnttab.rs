//! [`GrantAccess`] over the guest's real grant table: version-1 entries in the table
//! frames the guest set up, pages in guest RAM, and page references taken in the
//! domain's frame table (the pagetable engine), as Xen's `map_grant_ref` takes them.
//!
//! Per grant the table keeps Xen's "active entry": the frame it was first mapped at and
//! how many read-only and writable mappings the backends hold. The entry's
//! `GTF_reading`/`GTF_writing` flags are set with the first mapping (a
//! compare-and-exchange against the guest's own updates of the same word, as Xen's
//! `_set_status_v1` does) and cleared with the last.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use std::sync::Mutex;

use vm_memory::{
    Address, Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, VolatileMemory,
};

use super::grant::{check_range, Access, GrantAccess, GrantError, GrantRef, Mapping, PAGE_SIZE};
use crate::posted::{Posted, VmmFrames};
use crate::runner::{lock_mm, SharedMm};

/// `GTF_permit_access`: the entry grants access to `domid`.
const GTF_PERMIT_ACCESS: u16 = 1;
/// The entry's type bits.
const GTF_TYPE_MASK: u16 = 3;
/// `GTF_readonly`: the grantee may only read.
const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading`: the grantee holds the page mapped (set by the hypervisor).
const GTF_READING: u16 = 1 << 3;
/// `GTF_writing`: the grantee holds the page mapped writable.
const GTF_WRITING: u16 = 1 << 4;
/// Bytes per version-1 entry (`flags`, `domid`, `frame`).
const ENTRY_SIZE: u64 = 8;
/// How often a map retries an entry the frontend keeps changing (Xen: 4).
const MAP_RETRIES: usize = 4;

/// What the backends hold of one grant (Xen's `struct active_grant_entry`).
#[derive(Clone, Copy, Debug)]
struct Active {
    frame: u64,
    readers: u32,
    writers: u32,
}

/// One frontend domain's grant table, as its backends see it.
pub struct GuestGrantTable {
    mem: GuestMemoryMmap,
    mm: SharedMm,
    /// Guest-physical address of table frame 0 (the frames are contiguous).
    table_gpa: u64,
    /// Entries in the table at its largest.
    nr_entries: u32,
    /// Frames of guest RAM (`0..ram_frames`): the only ones a grant may name.
    ram_frames: u64,
    /// Domain id of the backends (0).
    backend_domid: u16,
    active: Mutex<HashMap<GrantRef, Active>>,
}

impl GuestGrantTable {
    /// The table of `max_frames` frames at `table_gpa`, for a guest of `ram_frames`
    /// RAM frames whose frame table is `mm`.
    pub fn new(
        mem: GuestMemoryMmap,
        mm: SharedMm,
        table_gpa: u64,
        max_frames: u32,
        ram_frames: u64,
    ) -> Self {
        GuestGrantTable {
            mem,
            mm,
            table_gpa,
            nr_entries: max_frames.saturating_mul((PAGE_SIZE as u64 / ENTRY_SIZE) as u32),
            ram_frames,
            backend_domid: 0,
            active: Mutex::new(HashMap::new()),
        }
    }

    fn lock_active(&self) -> std::sync::MutexGuard<'_, HashMap<GrantRef, Active>> {
        self.active.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn entry_gpa(&self, gref: GrantRef) -> Result<GuestAddress, GrantError> {
        if gref >= self.nr_entries {
            return Err(GrantError::BadRef(gref));
        }
        Ok(GuestAddress(self.table_gpa + u64::from(gref) * ENTRY_SIZE))
    }

    /// Sets `GTF_reading` (and `GTF_writing`) in the entry after checking that it grants
    /// the backend domain the access asked for. Returns the entry's frame.
    fn set_status(&self, gref: GrantRef, access: Access) -> Result<u64, GrantError> {
        let at = self.entry_gpa(gref)?;
        let slice = self
            .mem
            .get_slice(at, 4)
            .map_err(|_| GrantError::BadRef(gref))?;
        let combo = slice
            .get_atomic_ref::<AtomicU32>(0)
            .map_err(|_| GrantError::BadRef(gref))?;
        let mut current = combo.load(Ordering::Acquire);
        for _ in 0..MAP_RETRIES {
            let flags = current as u16;
            let domid = (current >> 16) as u16;
            if flags & GTF_TYPE_MASK != GTF_PERMIT_ACCESS || domid != self.backend_domid {
                return Err(GrantError::NotGranted(gref));
            }
            if access == Access::ReadWrite && flags & GTF_READONLY != 0 {
                return Err(GrantError::ReadOnly(gref));
            }
            let mut new = flags | GTF_READING;
            if access == Access::ReadWrite {
                new |= GTF_WRITING;
            }
            let new = (current & 0xffff_0000) | u32::from(new);
            match combo.compare_exchange(current, new, Ordering::AcqRel, Ordering::Acquire) {
                Ok(_) => {
                    let frame: u32 = self
                        .mem
                        .load(at.unchecked_add(4), Ordering::Acquire)
                        .map_err(|_| GrantError::BadRef(gref))?;
                    return Ok(u64::from(frame));
                }
                Err(now) => current = now,
            }
        }
        Err(GrantError::Unstable(gref))
    }

    /// Clears `bits` in the entry's flags.
    fn clear_flags(&self, gref: GrantRef, bits: u16) {
        let Ok(at) = self.entry_gpa(gref) else { return };
        if let Ok(slice) = self.mem.get_slice(at, 2) {
            if let Ok(flags) = slice.get_atomic_ref::<AtomicU16>(0) {
                flags.fetch_and(!bits, Ordering::AcqRel);
            }
        }
    }

    /// Takes the page references a mapping holds: a general one, and a writable type
    /// reference for a writable mapping (which fails on a pagetable or descriptor page).
    fn get_page(&self, gref: GrantRef, frame: u64, access: Access) -> Result<(), GrantError> {
        if frame >= self.ram_frames {
            return Err(GrantError::NotOwned { gref, frame });
        }
        let mut mm = lock_mm(&self.mm);
        let r = match access {
            Access::ReadOnly => mm.get_page(frame),
            Access::ReadWrite => {
                let mut posted = Posted::default();
                let mut frames = self.frames(&mut posted);
                // A data page's type change flushes nothing.
                mm.get_page_and_type(&mut frames, frame, pv_mm::PageType::Writable)
                    .map(|_flush| ())
            }
        };
        r.map_err(|e| GrantError::InUse {
            gref,
            frame,
            why: e.to_string(),
        })
    }

    fn put_page(&self, frame: u64, access: Access) {
        let mut mm = lock_mm(&self.mm);
        let mut posted = Posted::default();
        let mut frames = self.frames(&mut posted);
        // Dropping a data page's references changes no pagetable, so there is nothing
        // to flush.
        let _flush = match access {
            Access::ReadOnly => mm.put_page(&mut frames, frame),
            Access::ReadWrite => mm.put_page_and_type(&mut frames, frame),
        };
        if !posted.is_empty() {
            log::warn!("pvkvm: releasing grant frame {frame:#x} changed pagetable entries");
        }
    }

    fn frames<'a>(&'a self, posted: &'a mut Posted) -> VmmFrames<'a> {
        // Grant mappings never update the M2P.
        VmmFrames::new(&self.mem, posted, 0, 0)
    }

    fn page_gpa(&self, m: &Mapping, offset: usize, len: usize) -> Result<GuestAddress, GrantError> {
        check_range(m.gref, offset, len)?;
        Ok(GuestAddress(m.frame * PAGE_SIZE as u64 + offset as u64))
    }
}

impl GrantAccess for GuestGrantTable {
    fn map(&self, gref: GrantRef, access: Access) -> Result<Mapping, GrantError> {
        let mut active = self.lock_active();
        let existing = active.get(&gref).copied();
        let needs_status = match existing {
            None => true,
            // A first writable mapping of a grant mapped read-only so far checks the
            // entry again and sets GTF_writing.
            Some(a) => access == Access::ReadWrite && a.writers == 0,
        };
        let frame = if needs_status {
            let frame = self.set_status(gref, access)?;
            match existing {
                Some(a) => a.frame,
                None => frame,
            }
        } else {
            existing.map(|a| a.frame).unwrap_or_default()
        };
        if let Err(e) = self.get_page(gref, frame, access) {
            match existing {
                None => self.clear_flags(gref, GTF_READING | GTF_WRITING),
                Some(_) if needs_status => self.clear_flags(gref, GTF_WRITING),
                Some(_) => {}
            }
            return Err(e);
        }
        let a = active.entry(gref).or_insert(Active {
            frame,
            readers: 0,
            writers: 0,
        });
        match access {
            Access::ReadOnly => a.readers += 1,
            Access::ReadWrite => a.writers += 1,
        }
        Ok(Mapping {
            gref,
            frame,
            access,
        })
    }

    fn unmap(&self, m: Mapping) {
        let mut active = self.lock_active();
        let Some(a) = active.get_mut(&m.gref).filter(|a| a.frame == m.frame) else {
            log::warn!("pvkvm: unmap of grant {} that is not mapped", m.gref);
            return;
        };
        match m.access {
            Access::ReadOnly => a.readers = a.readers.saturating_sub(1),
            Access::ReadWrite => a.writers = a.writers.saturating_sub(1),
        }
        let (readers, writers) = (a.readers, a.writers);
        self.put_page(m.frame, m.access);
        if writers == 0 {
            self.clear_flags(m.gref, GTF_WRITING);
        }
        if readers == 0 && writers == 0 {
            active.remove(&m.gref);
            self.clear_flags(m.gref, GTF_READING);
        }
    }

    fn read(&self, m: &Mapping, offset: usize, buf: &mut [u8]) -> Result<(), GrantError> {
        let at = self.page_gpa(m, offset, buf.len())?;
        self.mem
            .read_slice(buf, at)
            .map_err(|_| GrantError::Range(m.gref))
    }

    fn write(&self, m: &Mapping, offset: usize, buf: &[u8]) -> Result<(), GrantError> {
        if m.access != Access::ReadWrite {
            return Err(GrantError::Range(m.gref));
        }
        let at = self.page_gpa(m, offset, buf.len())?;
        self.mem
            .write_slice(buf, at)
            .map_err(|_| GrantError::Range(m.gref))
    }

    fn load_u32(&self, m: &Mapping, offset: usize) -> Result<u32, GrantError> {
        if !offset.is_multiple_of(4) {
            return Err(GrantError::Range(m.gref));
        }
        let at = self.page_gpa(m, offset, 4)?;
        self.mem
            .load(at, Ordering::Acquire)
            .map_err(|_| GrantError::Range(m.gref))
    }

    fn store_u32(&self, m: &Mapping, offset: usize, value: u32) -> Result<(), GrantError> {
        if !offset.is_multiple_of(4) || m.access != Access::ReadWrite {
            return Err(GrantError::Range(m.gref));
        }
        let at = self.page_gpa(m, offset, 4)?;
        self.mem
            .store(value, at, Ordering::Release)
            .map_err(|_| GrantError::Range(m.gref))
    }
}
