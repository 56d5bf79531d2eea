//! `public/io/blkif.h`: the block device protocol (x86_64 layout), and the virtual
//! device numbering of `docs/man/xen-vbd-interface.7.pandoc`.
//!
//! A request and a response share one ring entry; the ring itself is `public/io/ring.h`.
//! Every sector number and sector count on the ring is in 512-byte units, whatever the
//! backend advertises as `sector-size`.

#![allow(missing_docs)]
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Read `nr_segments` segments starting at `sector_number`.
pub const BLKIF_OP_READ: u8 = 0;
/// Write `nr_segments` segments starting at `sector_number`.
pub const BLKIF_OP_WRITE: u8 = 1;
/// A write (possibly without data) that all earlier writes complete before, and all
/// later writes start after (`feature-barrier`).
pub const BLKIF_OP_WRITE_BARRIER: u8 = 2;
/// Commit the device's volatile write cache to stable storage (`feature-flush-cache`).
pub const BLKIF_OP_FLUSH_DISKCACHE: u8 = 3;
/// Reserved (a SLES device-specific packet).
pub const BLKIF_OP_RESERVED_1: u8 = 4;
/// Discard a sector range ([`BlkifRequestDiscard`], `feature-discard`).
pub const BLKIF_OP_DISCARD: u8 = 5;
/// A read or write whose segments live in granted pages ([`BlkifRequestIndirect`],
/// `feature-max-indirect-segments`).
pub const BLKIF_OP_INDIRECT: u8 = 6;

/// Segments a direct request carries (so that 32 entries fit one ring page).
pub const BLKIF_MAX_SEGMENTS_PER_REQUEST: usize = 11;
/// Pages of segment descriptors one indirect request may name.
pub const BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST: usize = 8;
/// Segment descriptors one 4 KiB indirect page holds.
pub const BLKIF_SEGS_PER_INDIRECT_FRAME: usize = 4096 / core::mem::size_of::<BlkifRequestSegment>();

/// [`BlkifRequestDiscard::flag`]: the range must be made unrecoverable (ignored unless
/// the backend advertised `discard-secure`).
pub const BLKIF_DISCARD_SECURE: u8 = 1;

/// The request completed.
pub const BLKIF_RSP_OKAY: i16 = 0;
/// The request failed (an I/O error, or a request the backend refuses).
pub const BLKIF_RSP_ERROR: i16 = -1;
/// The backend does not implement the operation.
pub const BLKIF_RSP_EOPNOTSUPP: i16 = -2;

/// The unit of `sector_number`, `first_sect`, `last_sect`, `nr_sectors` and `sectors`.
pub const SECTOR_SIZE: u64 = 512;
/// Sectors in one granted page: `last_sect` is at most this minus one.
pub const SECTORS_PER_PAGE: u8 = 8;

/// `info` bit: the device is a CD-ROM.
pub const VDISK_CDROM: u32 = 0x1;
/// `info` bit: the medium is removable.
pub const VDISK_REMOVABLE: u32 = 0x2;
/// `info` bit: the device is read-only.
pub const VDISK_READONLY: u32 = 0x4;

/// `protocol` values (`public/io/protocols.h`) a frontend may write.
pub const XEN_IO_PROTO_ABI_X86_32: &str = "x86_32-abi";
pub const XEN_IO_PROTO_ABI_X86_64: &str = "x86_64-abi";

/// `struct blkif_request_segment`: one page of a transfer, 8 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Default, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifRequestSegment {
    /// The granted page.
    pub gref: u32,
    /// First 512-byte sector of the page to transfer (inclusive).
    pub first_sect: u8,
    /// Last 512-byte sector of the page to transfer (inclusive).
    pub last_sect: u8,
    pub _pad: [u8; 2],
}

/// `struct blkif_request`: a read, write, barrier or flush, 112 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequest {
    /// `BLKIF_OP_*`.
    pub operation: u8,
    /// Segments in `seg` that are used.
    pub nr_segments: u8,
    /// The virtual device (`blkif_vdev_t`).
    pub handle: u16,
    pub _pad: u32,
    /// The frontend's cookie, echoed in the response.
    pub id: u64,
    /// First sector on the disk.
    pub sector_number: u64,
    pub seg: [BlkifRequestSegment; BLKIF_MAX_SEGMENTS_PER_REQUEST],
}

/// `struct blkif_request_discard`, 32 bytes (read from a request-sized entry).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequestDiscard {
    /// [`BLKIF_OP_DISCARD`].
    pub operation: u8,
    /// [`BLKIF_DISCARD_SECURE`] or 0.
    pub flag: u8,
    pub handle: u16,
    pub _pad: u32,
    pub id: u64,
    /// First sector to discard.
    pub sector_number: u64,
    /// Contiguous sectors to discard.
    pub nr_sectors: u64,
}

/// `struct blkif_request_indirect`, 64 bytes on x86_64 (the i386 tail pad is absent).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct BlkifRequestIndirect {
    /// [`BLKIF_OP_INDIRECT`].
    pub operation: u8,
    /// [`BLKIF_OP_READ`] or [`BLKIF_OP_WRITE`].
    pub indirect_op: u8,
    /// Segments described by the indirect pages.
    pub nr_segments: u16,
    pub _pad0: u32,
    pub id: u64,
    pub sector_number: u64,
    pub handle: u16,
    pub _pad1: u16,
    /// Pages holding [`BlkifRequestSegment`] arrays, 512 to a page.
    pub indirect_grefs: [u32; BLKIF_MAX_INDIRECT_PAGES_PER_REQUEST],
    pub _pad2: u32,
}

/// `struct blkif_response`, 16 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Default, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct BlkifResponse {
    /// The request's `id`.
    pub id: u64,
    /// The request's `operation`.
    pub operation: u8,
    pub _pad0: u8,
    /// `BLKIF_RSP_*`.
    pub status: i16,
    pub _pad1: u32,
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<BlkifRequestSegment>() == 8);
    assert!(size_of::<BlkifRequest>() == 112);
    assert!(offset_of!(BlkifRequest, id) == 8);
    assert!(offset_of!(BlkifRequest, sector_number) == 16);
    assert!(offset_of!(BlkifRequest, seg) == 24);
    assert!(size_of::<BlkifRequestDiscard>() == 32);
    assert!(offset_of!(BlkifRequestDiscard, nr_sectors) == 24);
    assert!(size_of::<BlkifRequestIndirect>() == 64);
    assert!(offset_of!(BlkifRequestIndirect, handle) == 24);
    assert!(offset_of!(BlkifRequestIndirect, indirect_grefs) == 28);
    assert!(size_of::<BlkifResponse>() == 16);
    assert!(offset_of!(BlkifResponse, operation) == 8);
    assert!(offset_of!(BlkifResponse, status) == 10);
    assert!(BLKIF_SEGS_PER_INDIRECT_FRAME == 512);
};

/// Virtual device numbers (the frontend's `virtual-device` key).
pub mod vdev {
    /// Linux's major for xvd disks: the compact encoding's top byte.
    pub const XVD_MAJOR: u32 = 202;
    /// The extended xvd encoding's marker bit.
    pub const XVD_EXTENDED: u32 = 1 << 28;
    /// Disks the extended encoding can name.
    pub const XVD_EXTENDED_MAX_DISKS: u32 = 1 << 20;
    /// Partitions the extended encoding can name (0 is the whole disk).
    pub const XVD_EXTENDED_MAX_PARTITIONS: u32 = 256;
    /// Disks and partitions the compact encoding can name.
    pub const XVD_COMPACT_LIMIT: u32 = 16;

    /// The `virtual-device` number of xvd disk `disk`, partition `partition` (0: the
    /// whole disk): `202 << 8 | disk << 4 | partition` while both fit in 4 bits, else
    /// `1 << 28 | disk << 8 | partition`; `None` past the extended form's range.
    pub const fn xvd_devid(disk: u32, partition: u32) -> Option<u32> {
        if disk < XVD_COMPACT_LIMIT && partition < XVD_COMPACT_LIMIT {
            Some((XVD_MAJOR << 8) | (disk << 4) | partition)
        } else if disk < XVD_EXTENDED_MAX_DISKS && partition < XVD_EXTENDED_MAX_PARTITIONS {
            Some(XVD_EXTENDED | (disk << 8) | partition)
        } else {
            None
        }
    }

    const _: () = {
        assert!(matches!(xvd_devid(0, 0), Some(51712)));
        assert!(matches!(xvd_devid(0, 1), Some(51713)));
        assert!(matches!(xvd_devid(16, 0), Some(0x1000_1000)));
        assert!(matches!(xvd_devid(0, 16), Some(0x1000_0010)));
        assert!(xvd_devid(1 << 20, 0).is_none());
    };
}
