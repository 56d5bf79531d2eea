//! `public/grant_table.h`: the grant-table operations pvkvm answers and their records
//! (version 1 layout).

#![allow(missing_docs)]
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

pub const GNTTABOP_MAP_GRANT_REF: u64 = 0;
pub const GNTTABOP_UNMAP_GRANT_REF: u64 = 1;
pub const GNTTABOP_SETUP_TABLE: u64 = 2;
pub const GNTTABOP_DUMP_TABLE: u64 = 3;
pub const GNTTABOP_TRANSFER: u64 = 4;
pub const GNTTABOP_COPY: u64 = 5;
pub const GNTTABOP_QUERY_SIZE: u64 = 6;
pub const GNTTABOP_UNMAP_AND_REPLACE: u64 = 7;
pub const GNTTABOP_SET_VERSION: u64 = 8;
pub const GNTTABOP_GET_STATUS_FRAMES: u64 = 9;
pub const GNTTABOP_GET_VERSION: u64 = 10;
pub const GNTTABOP_SWAP_GRANT_REF: u64 = 11;
pub const GNTTABOP_CACHE_FLUSH: u64 = 12;

/// Per-operation status codes (`GNTST_*`), written into the records' `status` fields.
pub mod status {
    pub const OKAY: i16 = 0;
    pub const GENERAL_ERROR: i16 = -1;
    pub const BAD_DOMAIN: i16 = -2;
    pub const BAD_GNTREF: i16 = -3;
    pub const BAD_HANDLE: i16 = -4;
    pub const BAD_VIRT_ADDR: i16 = -5;
    pub const PERMISSION_DENIED: i16 = -8;
}

/// `struct gnttab_setup_table`, 24 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabSetupTable {
    /// IN: the domain (DOMID_SELF).
    pub dom: u16,
    pub _pad0: u16,
    /// IN: how many frames, from frame 0, the caller wants listed.
    pub nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    pub _pad1: [u16; 3],
    /// IN: guest handle of an array of `xen_pfn_t` that receives the frames (MFNs for PV).
    pub frame_list: u64,
}

/// Offset of `status` in [`GnttabSetupTable`]: the one field written back.
pub const SETUP_TABLE_STATUS: u64 = 8;

/// `struct gnttab_query_size`, 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabQuerySize {
    /// IN: the domain (DOMID_SELF).
    pub dom: u16,
    pub _pad0: u16,
    /// OUT: frames in use.
    pub nr_frames: u32,
    /// OUT: the most frames the table may grow to.
    pub max_nr_frames: u32,
    /// OUT: `GNTST_*`.
    pub status: i16,
    pub _pad1: u16,
}

/// `struct gnttab_set_version` (IN requested, OUT in force).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabSetVersion {
    pub version: u32,
}

/// `struct gnttab_get_version`, 8 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GnttabGetVersion {
    /// IN: the domain.
    pub dom: u16,
    pub _pad: u16,
    /// OUT: 1 or 2.
    pub version: u32,
}

const _: () = {
    assert!(core::mem::size_of::<GnttabSetupTable>() == 24);
    assert!(core::mem::size_of::<GnttabQuerySize>() == 16);
    assert!(core::mem::size_of::<GnttabGetVersion>() == 8);
};
