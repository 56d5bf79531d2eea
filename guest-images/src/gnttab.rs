//! A one-frame v1 grant table for frontends: `GNTTABOP_setup_table` for 1 frame, the
//! frame mapped writable at a slack VA (as Linux maps its grant frames), and entries
//! written the way Linux's `gnttab_grant_foreign_access_ref` writes them (frame and domid
//! first, then the flags after a barrier).
//!
//! Facts used (Xen `public/grant_table.h`): `struct grant_entry_v1 { uint16_t flags;
//! domid_t domid; uint32_t frame; }` (8 bytes, 512 a page); `GTF_permit_access` = 1,
//! `GTF_readonly` = 1 << 2; for a PV guest `frame` is the MFN. `GNTTABOP_setup_table`
//! (2) takes `struct gnttab_setup_table { domid_t dom; uint32_t nr_frames; int16_t
//! status; XEN_GUEST_HANDLE(xen_pfn_t) frame_list; }`. Entries 0..7 are reserved for the
//! toolstack (`GNTTAB_NR_RESERVED_ENTRIES`), so frontends start at 8.

use core::sync::atomic::{fence, Ordering};
use xen_abi::grant_table::{GnttabSetupTable, GNTTABOP_SETUP_TABLE};
use xen_abi::xen::{hypercall as hc, StartInfo, DOMID_SELF};

use crate::hypercall::hypercall3;
use crate::mm;

/// `GTF_permit_access`.
pub const GTF_PERMIT_ACCESS: u16 = 1;
/// `GTF_readonly`.
pub const GTF_READONLY: u16 = 1 << 2;
/// `GTF_reading` (set by the hypervisor while a grant is mapped for reading).
pub const GTF_READING: u16 = 1 << 3;
/// `GTF_writing` (set while mapped for writing).
pub const GTF_WRITING: u16 = 1 << 4;
/// `GNTTAB_NR_RESERVED_ENTRIES`: the first reference a frontend uses.
pub const FIRST_FREE_REF: u32 = 8;
/// Entries in one frame.
pub const ENTRIES_PER_FRAME: u32 = 512;

/// The grant table: its single frame, mapped.
pub struct GrantTable {
    va: u64,
    /// The frame `setup_table` listed.
    pub frame: u64,
}

impl GrantTable {
    /// `setup_table(1)` and maps the frame at slack frame `slot`; the hypercall's rc or
    /// status on failure.
    pub fn setup(si: &StartInfo, slot: u64) -> Result<Self, (i64, i16)> {
        let mut frames = [0u64; 1];
        let mut setup = GnttabSetupTable {
            dom: DOMID_SELF,
            nr_frames: 1,
            status: 99,
            frame_list: frames.as_mut_ptr() as u64,
            ..Default::default()
        };
        // SAFETY: `setup` and `frames` are live; the hypervisor writes status and frames.
        let rc = unsafe {
            hypercall3(
                hc::GRANT_TABLE_OP,
                GNTTABOP_SETUP_TABLE,
                &mut setup as *mut GnttabSetupTable as u64,
                1,
            )
        };
        if rc != 0 || setup.status != 0 {
            return Err((rc, setup.status));
        }
        let va = mm::slack_va(si, slot);
        mm::remap("map the grant table frame", va, mm::pte_rw(frames[0]));
        Ok(GrantTable {
            va,
            frame: frames[0],
        })
    }

    fn entry(&self, gref: u32) -> u64 {
        if gref >= ENTRIES_PER_FRAME {
            crate::fail!("grant reference {} outside the one-frame table", gref);
        }
        self.va + u64::from(gref) * 8
    }

    /// Grants `domid` access to `mfn` (read-only if `readonly`).
    pub fn grant(&self, gref: u32, domid: u16, mfn: u64, readonly: bool) {
        let e = self.entry(gref);
        let flags = GTF_PERMIT_ACCESS | if readonly { GTF_READONLY } else { 0 };
        // SAFETY: `e` is an 8-byte entry in the writable grant frame mapping.
        unsafe {
            core::ptr::write_volatile((e + 2) as *mut u16, domid);
            core::ptr::write_volatile((e + 4) as *mut u32, mfn as u32);
            fence(Ordering::SeqCst);
            core::ptr::write_volatile(e as *mut u16, flags);
        }
    }

    /// Clears the entry (flags 0, domid 0, frame 0): a reference never filled in.
    pub fn clear(&self, gref: u32) {
        let e = self.entry(gref);
        // SAFETY: as for `grant`.
        unsafe {
            core::ptr::write_volatile(e as *mut u16, 0);
            fence(Ordering::SeqCst);
            core::ptr::write_volatile((e + 2) as *mut u16, 0);
            core::ptr::write_volatile((e + 4) as *mut u32, 0);
        }
    }

    /// The entry's flags now (to see `GTF_reading`/`GTF_writing` left behind).
    pub fn flags(&self, gref: u32) -> u16 {
        // SAFETY: as for `grant`.
        unsafe { core::ptr::read_volatile(self.entry(gref) as *const u16) }
    }
}
