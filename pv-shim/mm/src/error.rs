//! Why the engine refuses an operation, and the one place refusals become Xen errnos.
//!
//! One variant per refusal reason, each naming the Xen check it mirrors, so a refusal can
//! be explained precisely (see `refusal.rs`) while the guest still sees exactly the errno
//! Xen 4.17 returns for the same request.

use core::fmt;

use xen_abi::errno;

use crate::api::Level;
use crate::frame::PageType;

/// A refusal reason. Small and `Copy` (no_std); map to an errno with [`MmError::errno`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MmError {
    /// The frame is not the domain's RAM (`get_page_from_mfn`/`get_page_from_gfn` fail):
    /// tables, pins, base pointers, machphys, copy/clear and descriptor frames.
    NotOwned,
    /// An L1 entry maps a frame that is neither the domain's RAM nor a shared frame
    /// (`get_page_from_l1e`: owner mismatch, `could_not_pin`, -EBUSY).
    ForeignMapping,
    /// A frame to give back is still referenced, typed or pinned.
    InUse,
    /// An L1 entry maps a frame that is no memory at all: I/O space, refused to a domain
    /// without I/O permissions (`get_page_from_l1e`, -EPERM).
    IoSpace,
    /// An entry sets bits the level's disallow mask refuses (`Bad L1/L2/L3/L4 flags`).
    BadFlags {
        /// Level of the table holding the entry.
        level: Level,
        /// The offending bits (PTE positions).
        bits: u64,
    },
    /// PSE in an L2/L3 entry: PV superpages are not supported (Xen refuses it through the
    /// same disallow mask; a separate variant only to say so clearly).
    Superpage {
        /// Level of the table holding the entry.
        level: Level,
    },
    /// `_get_page_type`: the frame holds type references of another type.
    BadType {
        /// The type asked for.
        want: PageType,
        /// The type the frame has.
        have: PageType,
    },
    /// `get_page_from_l1e`: a writable mapping of a frame that is typed as something
    /// else (a pagetable or descriptor page): "Could not get page type PGT_writable_page".
    NotWritable {
        /// The frame's current type.
        have: PageType,
    },
    /// The frame has the right type but is not (yet) validated: only reachable through a
    /// reference to a table whose validation is in progress.
    NotValidated,
    /// A type or general reference count would overflow.
    CountOverflow,
    /// `mod_l4_entry` on a slot of the hypervisor hole (`L4 update in Xen-private area`).
    HoleSlot {
        /// The slot.
        slot: u16,
    },
    /// `MMUEXT_PIN_*` of a frame that is already pinned.
    AlreadyPinned,
    /// `MMUEXT_UNPIN_TABLE` of a frame that is not pinned.
    NotPinned,
    /// `mmu_update` into a frame in use as a descriptor table (Xen's `do_mmu_update`
    /// type switch has no case for it).
    SegDescTable,
    /// `check_descriptor` refused a descriptor.
    BadDescriptor {
        /// Index (0..512) of the descriptor in its frame.
        index: u16,
    },
    /// A slot or byte offset outside a frame, or a misaligned descriptor address.
    BadOffset,
    /// `get_page_type(PageType::None)`: not a type one can take a reference of.
    InvalidType,
    /// The caller releases a reference it does not hold (an engine bug, not the guest's:
    /// refused so counts stay exact).
    NotHeld,
    /// The operation ran out of its preemption budget (Xen's `hypercall_preempt_check()`
    /// firing inside `promote_lN_table`): the tables it was validating are left
    /// [`Validation::Partial`](crate::Validation::Partial) with their references
    /// consistent, and the same operation, issued again, resumes where it stopped
    /// (Xen's `-ERESTART` and hypercall continuation). Not a refusal: nothing is logged.
    Restart,
}

impl MmError {
    /// The (negative) Xen errno this refusal returns to the guest. The only place errors
    /// are mapped to errno.
    pub fn errno(&self) -> i64 {
        match self {
            // get_page_from_l1e: could_not_pin returns -EBUSY.
            MmError::ForeignMapping | MmError::NotWritable { .. } => -errno::EBUSY,
            MmError::IoSpace => -errno::EPERM,
            MmError::InUse => -errno::EBUSY,
            MmError::NotOwned
            | MmError::BadFlags { .. }
            | MmError::Superpage { .. }
            | MmError::BadType { .. }
            | MmError::NotValidated
            | MmError::CountOverflow
            | MmError::HoleSlot { .. }
            | MmError::AlreadyPinned
            | MmError::NotPinned
            | MmError::SegDescTable
            | MmError::BadDescriptor { .. }
            | MmError::BadOffset
            | MmError::InvalidType
            | MmError::NotHeld => -errno::EINVAL,
            MmError::Restart => -errno::ERESTART,
        }
    }
}

impl fmt::Display for MmError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MmError::NotOwned => write!(f, "frame is not this domain's RAM"),
            MmError::ForeignMapping => write!(
                f,
                "L1 entry maps a frame that is neither guest RAM nor a shared frame"
            ),
            MmError::IoSpace => write!(f, "L1 entry maps I/O space (a frame that is no memory)"),
            MmError::InUse => write!(f, "frame is still mapped, typed or pinned"),
            MmError::BadFlags { level, bits } => {
                write!(f, "{level:?} entry sets disallowed bits {bits:#x}")
            }
            MmError::Superpage { level } => write!(
                f,
                "{level:?} entry sets PSE: superpages are not supported for PV guests"
            ),
            MmError::BadType { want, have } => {
                write!(f, "bad type: wanted {want:?} but the frame is {have:?}")
            }
            MmError::NotWritable { have } => write!(
                f,
                "writable mapping of a frame typed {have:?} (map it read-only)"
            ),
            MmError::NotValidated => write!(f, "frame is not validated (validation in progress)"),
            MmError::CountOverflow => write!(f, "reference count overflow"),
            MmError::HoleSlot { slot } => write!(
                f,
                "L4 slot {slot} belongs to the hypervisor hole (slots 256..=271)"
            ),
            MmError::AlreadyPinned => write!(f, "frame is already pinned"),
            MmError::NotPinned => write!(f, "frame is not pinned"),
            MmError::SegDescTable => write!(f, "frame is in use as a descriptor table"),
            MmError::BadDescriptor { index } => write!(f, "descriptor {index} refused"),
            MmError::BadOffset => write!(f, "slot or offset outside the frame or misaligned"),
            MmError::InvalidType => write!(f, "invalid page type requested"),
            MmError::NotHeld => write!(f, "releasing a reference that is not held"),
            MmError::Restart => write!(
                f,
                "preempted: the validation stopped part-way and resumes when the operation \
                 is issued again"
            ),
        }
    }
}
