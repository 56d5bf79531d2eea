//! `pv-mm`: the PV MMU engine of pvkvm. Xen's pagetable semantics for 64-bit PV guests
//! (Xen 4.17, pv-linear-pt disabled, no superpages), as a `no_std` library over the
//! [`FrameAccess`] trait, so the same code runs in the VMM, in the ring-0 shim, in host
//! unit tests and under fuzzers.
//!
//! Per frame: a type ([`PageType`]), a type count, a validation state
//! ([`Validation`], partial validation explicit), a general refcount and a pinned bit.
//! A frame is a pagetable only while no writable mapping of it exists. Validation is
//! recursive on pin / base-pointer load and undone on the last type reference. Every
//! refusal is recorded with enough context to fix the guest ([`Refusal`]).
//!
//! Module map: [`api`] (the fixed shared types), `pte` (entry bits and per-level rules),
//! `frame` (per-frame state), `mm` (the engine), `desc` (descriptor checks), `error`
//! (refusal reasons and their errno), `refusal` (records), `invariants`
//! (`Mm::check_invariants`), [`fuzz`] (fake memory, model guest, fuzz entry point).
//!
//! Validation is preemptible as in Xen: with a budget set ([`Mm::set_preempt_budget`]) a
//! pin, base-pointer load or L3/L4 entry update stops part-way with
//! [`MmError::Restart`] (`-ERESTART`), leaving tables [`Validation::Partial`], and
//! resumes when issued again. Deviations from Xen are listed in the `mm` module docs
//! (entry updates put the old target at once, synchronous undo of failed validations, no L1TF check,
//! one error for non-RAM L1 targets, `u32` counts, a global TLB-flush epoch). `copy_page`, `clear_page`, `update_descriptor` and
//! `get_segdesc_page` keep their `Result<(), _>` signatures; the flush a type change there
//! may need (Xen's `_get_page_type`) is collected with `Mm::take_pending_flush`.
//!
//! Several vCPUs: operations run one at a time (the caller's domain lock) and may
//! interleave between vCPUs; [`Mm::set_current_vcpu`] (default 0) selects whose
//! `old_guest_table` slot and base pointers an operation uses, as Xen's `current`, and
//! [`FlushSet::needs_remote`] says when every vCPU must flush (docs/mmu-invariants.md,
//! "Several vCPUs").
//!
//! Storage: no operation allocates. The frame table is the host's ([`Mm::with_storage`])
//! or allocated once by [`Mm::new`] (the `alloc` feature, on by default, which also
//! gives the invariant checker and the fuzzing model); everything else is fixed-size
//! (`storage` module).
#![no_std]
#![forbid(unsafe_code)]
#[cfg(feature = "alloc")]
extern crate alloc;

pub mod api;
mod desc;
mod error;
mod frame;
#[cfg(feature = "alloc")]
pub mod fuzz;
#[cfg(feature = "alloc")]
mod invariants;
mod mm;
pub mod pte;
mod refusal;
mod storage;

pub use api::{FlushSet, FrameAccess, InvlpgList, Level, Mfn};
pub use desc::check_descriptor;
pub use error::MmError;
pub use frame::{FrameState, PageInfo, PageType, Validation};
pub use mm::{Mm, MmConfig, MmStats, LOADED_ROOTS_MAX};
pub use refusal::{EntryCause, MmOp, Refusal, WritableMapping, REFUSAL_LOG_LEN};
pub use storage::{FrameList, FrameSlot, SharedFrames, MAX_SHARED_FRAMES, MAX_VCPUS};

#[cfg(test)]
mod concurrent_tests;
#[cfg(test)]
mod restart_tests;
#[cfg(test)]
mod tests;
