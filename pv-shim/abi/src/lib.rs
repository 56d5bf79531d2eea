//! Xen public PV ABI definitions (x86_64) and the versioned contract between the pvkvm
//! VMM and its ring-0 shim.
//!
//! Data only: numbers, layouts and `#[repr(C)]` structures, taken as facts from Xen's
//! public headers (`xen/include/public/`). One module per header, so a Xen reviewer can
//! cross-read. `no_std` so the shim, the engine, the VMM and the test kernels share it.
#![no_std]

pub mod blkif;
pub mod callback;
pub mod console;
pub mod contract;
pub mod cpufeatureset;
pub mod elfnote;
pub mod errno;
pub mod features;
pub mod grant_table;
pub mod memory;
pub mod netif;
pub mod sched;
pub mod vcpu;
pub mod version;
pub mod xen;
pub mod xenbus;
