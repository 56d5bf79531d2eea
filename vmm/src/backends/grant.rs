//! The backends' access to pages the frontend granted them (`public/grant_table.h`,
//! version 1), with the checks Xen's `common/grant_table.c` makes for a grant mapping.
//!
//! pvkvm's backends live in the VMM, which can reach all guest memory; they still go
//! through the guest's grant table for every page a frontend hands them, so a frontend
//! gets exactly Xen's guarantees and refusals:
//! - a grant reference outside the table, or an entry that is not a permit-access grant
//!   to the backend domain (0), is refused (`GNTST_bad_gntref` / `GNTST_general_error`);
//! - a read-only grant cannot be mapped for writing (`GNTST_permission_denied`);
//! - the frame must be one of the frontend's own RAM pages (`get_page`), and a writable
//!   mapping takes a writable type reference (`get_page_type(PGT_writable_page)`), so a
//!   page the guest uses as a pagetable or descriptor table cannot be written through a
//!   grant, and a granted page cannot become a pagetable while it is mapped;
//! - while mapped, the entry carries `GTF_reading`/`GTF_writing`, set with a
//!   compare-and-exchange against the guest's concurrent updates, so the frontend's
//!   `gnttab_end_foreign_access` sees the page in use and a revoke that won the race
//!   makes the map fail instead of reaching a page the frontend took back.
//!
//! [`GrantAccess`] is the seam: the ring and device code take it, unit tests give them
//! [`fake::FakeGrants`].

use thiserror::Error;
use xen_abi::grant_table::status;

/// A grant reference: an index into the frontend's grant table.
pub type GrantRef = u32;

/// Size of a granted page.
pub const PAGE_SIZE: usize = 4096;

/// How a backend maps a grant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    /// The backend only reads the page (a disk write, a network transmit).
    ReadOnly,
    /// The backend writes the page (a disk read, a network receive, a shared ring).
    ReadWrite,
}

/// Why a grant could not be used. Each maps to the `GNTST_*` code Xen would return.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum GrantError {
    /// The reference is past the end of the grant table.
    #[error("grant reference {0} is outside the frontend's grant table")]
    BadRef(GrantRef),
    /// The entry is not a permit-access grant to the backend domain.
    #[error("grant reference {0} does not grant access to the backend domain")]
    NotGranted(GrantRef),
    /// A writable mapping of a read-only grant.
    #[error("grant reference {0} is read-only")]
    ReadOnly(GrantRef),
    /// The granted frame is not one of the frontend's own RAM pages.
    #[error("grant reference {gref} names frame {frame:#x}, which is not the frontend's page")]
    NotOwned {
        /// The grant.
        gref: GrantRef,
        /// The frame its entry names.
        frame: u64,
    },
    /// The frame is in use in a way that forbids this mapping (a pagetable mapped for
    /// writing), or its reference count is exhausted.
    #[error("grant reference {gref}: frame {frame:#x} cannot be mapped: {why}")]
    InUse {
        /// The grant.
        gref: GrantRef,
        /// The frame its entry names.
        frame: u64,
        /// The conflict, as the pagetable engine names it.
        why: String,
    },
    /// The entry kept changing under the map (a frontend flipping it in a loop).
    #[error("grant reference {0} kept changing while it was being mapped")]
    Unstable(GrantRef),
    /// An access outside the granted page, or a write through a read-only mapping.
    #[error("an access outside grant reference {0}'s page or beyond its mapping's rights")]
    Range(GrantRef),
}

impl GrantError {
    /// The `GNTST_*` status Xen's `GNTTABOP_map_grant_ref` would report.
    pub fn status(&self) -> i16 {
        match self {
            GrantError::BadRef(_) => status::BAD_GNTREF,
            GrantError::ReadOnly(_) => status::PERMISSION_DENIED,
            GrantError::NotGranted(_)
            | GrantError::NotOwned { .. }
            | GrantError::InUse { .. }
            | GrantError::Unstable(_)
            | GrantError::Range(_) => status::GENERAL_ERROR,
        }
    }
}

/// A grant the backend holds mapped. Give it back with [`GrantAccess::unmap`]; a
/// mapping that is dropped instead stays counted (the frontend cannot end its access)
/// until the device's grants are released at disconnect.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a grant mapping must be unmapped"]
pub struct Mapping {
    /// The grant reference.
    pub gref: GrantRef,
    /// The guest frame the grant names (an MFN for a PV frontend).
    pub frame: u64,
    /// How it is mapped.
    pub access: Access,
}

/// Grant operations of one frontend domain, as its backends use them.
///
/// Every method is safe to call with anything a frontend wrote: bad references and
/// offsets give errors, never a panic or an access outside the granted page.
pub trait GrantAccess: Send + Sync {
    /// Maps grant `gref` with `access` (Xen's map with `GNTMAP_host_map`).
    fn map(&self, gref: GrantRef, access: Access) -> Result<Mapping, GrantError>;
    /// Gives a mapping back: drops the page references and, with the grant's last
    /// mapping, clears its in-use flags.
    fn unmap(&self, mapping: Mapping);
    /// Copies `buf.len()` bytes out of the mapped page at `offset`.
    fn read(&self, mapping: &Mapping, offset: usize, buf: &mut [u8]) -> Result<(), GrantError>;
    /// Copies `buf` into the mapped page at `offset` (a [`Access::ReadWrite`] mapping).
    fn write(&self, mapping: &Mapping, offset: usize, buf: &[u8]) -> Result<(), GrantError>;
    /// Loads the aligned u32 at `offset` with acquire ordering (a ring index).
    fn load_u32(&self, mapping: &Mapping, offset: usize) -> Result<u32, GrantError>;
    /// Stores the aligned u32 at `offset` with release ordering (a ring index).
    fn store_u32(&self, mapping: &Mapping, offset: usize, value: u32) -> Result<(), GrantError>;
    /// A full memory fence between the backend's ring accesses and the frontend's
    /// (`xen_mb()` in the ring macros).
    fn fence(&self) {
        std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
    }
    /// Maps, copies out and unmaps in one step (Xen's `GNTTABOP_copy` from a grant).
    fn copy_from(&self, gref: GrantRef, offset: usize, buf: &mut [u8]) -> Result<(), GrantError> {
        let m = self.map(gref, Access::ReadOnly)?;
        let r = self.read(&m, offset, buf);
        self.unmap(m);
        r
    }
    /// Maps for writing, copies in and unmaps in one step (`GNTTABOP_copy` to a grant).
    fn copy_to(&self, gref: GrantRef, offset: usize, buf: &[u8]) -> Result<(), GrantError> {
        let m = self.map(gref, Access::ReadWrite)?;
        let r = self.write(&m, offset, buf);
        self.unmap(m);
        r
    }
}

/// Checks that `[offset, offset + len)` lies in one page; returns the end.
pub fn check_range(gref: GrantRef, offset: usize, len: usize) -> Result<usize, GrantError> {
    offset
        .checked_add(len)
        .filter(|&end| end <= PAGE_SIZE)
        .ok_or(GrantError::Range(gref))
}

pub mod fake {
    //! An in-memory grant table for unit tests of the ring and device code: pages are
    //! byte vectors, grants can be made read-only, revoked or never made, and the table
    //! counts live mappings so a test can assert that nothing leaked.

    use std::collections::HashMap;
    use std::sync::atomic::Ordering;
    use std::sync::Mutex;

    use super::*;

    #[derive(Debug)]
    struct Granted {
        page: Vec<u8>,
        read_only: bool,
        revoked: bool,
        maps: u32,
    }

    /// A frontend's grants, kept in memory.
    #[derive(Debug, Default)]
    pub struct FakeGrants {
        grants: Mutex<HashMap<GrantRef, Granted>>,
        /// Grant references the table holds (`BadRef` at and past it).
        pub table_size: u32,
    }

    impl FakeGrants {
        /// An empty table of `table_size` references.
        pub fn new(table_size: u32) -> Self {
            FakeGrants {
                grants: Mutex::new(HashMap::new()),
                table_size,
            }
        }

        /// Grants a zeroed page as `gref`.
        pub fn grant(&self, gref: GrantRef, read_only: bool) {
            self.lock().insert(
                gref,
                Granted {
                    page: vec![0; PAGE_SIZE],
                    read_only,
                    revoked: false,
                    maps: 0,
                },
            );
        }

        /// Revokes `gref`: later maps fail; existing mappings stay usable (as on Xen).
        pub fn revoke(&self, gref: GrantRef) {
            if let Some(g) = self.lock().get_mut(&gref) {
                g.revoked = true;
            }
        }

        /// The page behind `gref` (test setup and checks).
        pub fn page(&self, gref: GrantRef) -> Vec<u8> {
            self.lock()
                .get(&gref)
                .map(|g| g.page.clone())
                .unwrap_or_default()
        }

        /// Writes `bytes` into the page behind `gref` at `offset` (the frontend's side).
        pub fn fill(&self, gref: GrantRef, offset: usize, bytes: &[u8]) {
            if let Some(g) = self.lock().get_mut(&gref) {
                g.page[offset..offset + bytes.len()].copy_from_slice(bytes);
            }
        }

        /// Mappings not given back.
        pub fn live_mappings(&self) -> u32 {
            self.lock().values().map(|g| g.maps).sum()
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<GrantRef, Granted>> {
            self.grants.lock().unwrap_or_else(|e| e.into_inner())
        }

        fn with_page<T>(
            &self,
            m: &Mapping,
            f: impl FnOnce(&mut Vec<u8>) -> T,
        ) -> Result<T, GrantError> {
            let mut grants = self.lock();
            let g = grants.get_mut(&m.gref).ok_or(GrantError::Range(m.gref))?;
            Ok(f(&mut g.page))
        }
    }

    impl GrantAccess for FakeGrants {
        fn map(&self, gref: GrantRef, access: Access) -> Result<Mapping, GrantError> {
            if gref >= self.table_size {
                return Err(GrantError::BadRef(gref));
            }
            let mut grants = self.lock();
            let g = grants
                .get_mut(&gref)
                .filter(|g| !g.revoked)
                .ok_or(GrantError::NotGranted(gref))?;
            if g.read_only && access == Access::ReadWrite {
                return Err(GrantError::ReadOnly(gref));
            }
            g.maps += 1;
            Ok(Mapping {
                gref,
                frame: u64::from(gref) + 0x1000,
                access,
            })
        }

        fn unmap(&self, m: Mapping) {
            if let Some(g) = self.lock().get_mut(&m.gref) {
                g.maps = g.maps.saturating_sub(1);
            }
        }

        fn read(&self, m: &Mapping, offset: usize, buf: &mut [u8]) -> Result<(), GrantError> {
            let end = check_range(m.gref, offset, buf.len())?;
            self.with_page(m, |p| buf.copy_from_slice(&p[offset..end]))
        }

        fn write(&self, m: &Mapping, offset: usize, buf: &[u8]) -> Result<(), GrantError> {
            let end = check_range(m.gref, offset, buf.len())?;
            if m.access != Access::ReadWrite {
                return Err(GrantError::Range(m.gref));
            }
            self.with_page(m, |p| p[offset..end].copy_from_slice(buf))
        }

        fn load_u32(&self, m: &Mapping, offset: usize) -> Result<u32, GrantError> {
            let mut b = [0u8; 4];
            self.read(m, offset, &mut b)?;
            std::sync::atomic::fence(Ordering::Acquire);
            Ok(u32::from_le_bytes(b))
        }

        fn store_u32(&self, m: &Mapping, offset: usize, value: u32) -> Result<(), GrantError> {
            std::sync::atomic::fence(Ordering::Release);
            self.write(m, offset, &value.to_le_bytes())
        }
    }
}
