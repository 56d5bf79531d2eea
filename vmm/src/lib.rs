//! pvkvm's host side: the VMM that runs Xen PV kernels on KVM.
//!
//! Modules follow DESIGN.md's boxes: [`vstate`] is the only code that touches KVM,
//! [`loader`] is the domain builder, [`shim`] lays out the ring-0 shim region, [`exit`]
//! turns VM exits into engine calls, [`runner`] drives a domain, [`probe`] measures
//! the host, [`metrics`] reports counters.

pub mod affinity;
pub mod api;
pub mod backends;
pub mod bootloader;
pub mod cpuid;
pub mod exit;
pub mod host;
pub mod inject;
pub mod loader;
pub mod metrics;
pub mod posted;
pub mod probe;
pub mod runner;
pub mod shim;
pub mod smp;
pub mod vstate;
pub mod xenstore;
pub mod xlcfg;
pub mod xstate;

/// An error and its causes (`source()` chain) as one line, for messages to a person.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}
