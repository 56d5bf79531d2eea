//! `public/memory.h`: `memory_op` sub-operations and their records.

#![allow(missing_docs)]
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const XENMEM_INCREASE_RESERVATION: u64 = 0;
pub const XENMEM_DECREASE_RESERVATION: u64 = 1;
pub const XENMEM_MAXIMUM_RAM_PAGE: u64 = 2;
pub const XENMEM_CURRENT_RESERVATION: u64 = 3;
pub const XENMEM_MAXIMUM_RESERVATION: u64 = 4;
pub const XENMEM_POPULATE_PHYSMAP: u64 = 6;
pub const XENMEM_MEMORY_MAP: u64 = 9;
pub const XENMEM_MACHPHYS_MAPPING: u64 = 12;

/// `struct xen_memory_reservation` (x86_64), 32 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MemoryReservation {
    /// Guest handle: the array of `xen_pfn_t` frame numbers.
    pub extent_start: u64,
    /// Entries in that array.
    pub nr_extents: u64,
    /// log2 of frames per extent.
    pub extent_order: u32,
    /// `XENMEMF_*` flags.
    pub mem_flags: u32,
    /// The domain (DOMID_SELF).
    pub domid: u16,
    /// Padding.
    pub _pad: [u16; 3],
}

/// `struct xen_machphys_mapping`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MachphysMapping {
    /// Start of the M2P table.
    pub v_start: u64,
    /// End of the M2P area.
    pub v_end: u64,
    /// Highest MFN the table covers.
    pub max_mfn: u64,
}
