//! The host's facts, measured at start, and the paths they choose.
//!
//! pvkvm runs on hosts that differ in ways no API reports: software KVM backends that run
//! guest ring 3 natively (`kvm_pvm`) and hardware VT-x/AMD-V; Intel and AMD under each.
//! [`HostFacts::probe`] measures what pvkvm depends on (the same experiments as `pvkvm
//! probe`, only the quick ones) and [`HostFacts::paths`] turns them into the choices the
//! runner and the exit handler make, or refuses the host with one line naming the fact.
//! Nothing else in the VMM asks what kind of host it is on.

use crate::probe;
use crate::vstate;

/// The facts pvkvm's behaviour depends on.
#[derive(Clone, Debug)]
pub struct HostFacts {
    /// The module serving /dev/kvm (kvm_intel, kvm_amd, kvm_pvm, ...).
    pub module: String,
    /// Whether the CPU offers hardware virtualization (vmx/svm flag).
    pub hardware_virt: bool,
    /// `KVM_CAP_SYNC_REGS` (the exit path relies on it).
    pub sync_regs: bool,
    /// `KVM_CAP_IMMEDIATE_EXIT` (kicks rely on it).
    pub immediate_exit: bool,
    /// The CPL the LSTAR stub runs at after a guest ring-3 `syscall`.
    pub syscall_cpl: u8,
    /// A ring-3 `cpuid` is answered from pvkvm's `KVM_SET_CPUID2` table (if not, guest
    /// processes see the host's own CPUID).
    pub ring3_cpuid_intercepted: bool,
    /// A PTE the VMM stores through its own mapping is seen by the guest without an
    /// in-guest flush.
    pub vmm_pte_store_visible: bool,
    /// The same for a store over a not-present entry the guest has faulted on
    /// (`probe::vmm_absent_pte_store_visible`).
    pub vmm_absent_store_visible: bool,
    /// A port-I/O exit reports rip past the `out` (`probe::io_exit_rip_past`).
    pub io_exit_rip_past: bool,
    /// Guest TSC minus host TSC as guest code reads it (0 when within the measurement's
    /// uncertainty), in cycles.
    pub tsc_offset: i64,
    /// L4 slot 256 (Xen's machine-to-phys address) is usable by guest ring 3.
    pub m2p_slot_usable: bool,
    /// A ring-3 `rdtscp` returns the TSC_AUX the VMM gave the vCPU.
    pub guest_tsc_aux: bool,
    /// What XCR0 and PKRU guest ring 3 runs with and who answers its CPUID leaves 1
    /// and 7 (None: the measurement failed, and extended state is hidden).
    pub xstate: Option<crate::probe::XstateHost>,
    /// What a VM exit and an in-VM transition cost here (None: the measurement failed,
    /// and every answer that needs a ring-0 transition goes through the engine).
    pub floors: Option<probe::TransitionFloors>,
}

/// How a guest `syscall` reaches the VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallEntry {
    /// The LSTAR stub runs at CPL3 (software backends): the vCPU's CS and SS after the
    /// doorbell are still the guest's.
    StubAtCpl3,
    /// The LSTAR stub runs at CPL0 (hardware virtualization): the CPU loaded STAR's
    /// selectors, so the guest context is Xen's flat 64-bit ring-3 selectors, which the
    /// VMM restores on return (what Xen's `sysret` path loads).
    StubAtCpl0,
}

/// The choices the facts make for one run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Paths {
    /// Where hypercalls and guest-user syscalls arrive.
    pub syscall_entry: SyscallEntry,
    /// Added to the host TSC to get the guest's (pvclock's base).
    pub tsc_offset: i64,
    /// Whether guest processes read the policy's CPUID (false: for leaves 1 and 7 they
    /// read the host's, and features the policy hides may still be used by them).
    pub ring3_cpuid_intercepted: bool,
    /// What the guest gets of extended state and how `xsetbv` and PKRU are handled.
    pub xstate: crate::xstate::XstatePlan,
    /// Whether guest code reads the guest's own TSC_AUX (`rdtscp`, `rdpid`): KVM loads
    /// it on VM entry with hardware virtualization; software KVM runs guest ring 3 on the
    /// host's.
    pub guest_tsc_aux: bool,
    /// Whether the read-only M2P is also mapped at Xen's `MACH2PHYS_VIRT_START` (L4 slot
    /// 256): where guest ring 3 can use that slot. Elsewhere the engine emulates reads
    /// there.
    pub m2p_at_abi: bool,
    /// The answers the shim gives inside the VM (`xen_abi::contract::in_vm` bits): each
    /// only where the host's measured costs make it cheaper than the exit it saves.
    pub in_vm: u32,
    /// Whether a pagetable store over a not-present entry is written into guest memory
    /// only, not posted for the shim to repeat: where the host's paging reads memory for
    /// an entry it never saw present (the probe's fact; a shadow MMU keeps no
    /// translation of a not-present entry). Saves a Linux page fault's ring-0 entry.
    pub absent_stores_unposted: bool,
    /// Whether the host reports a port-I/O exit with rip still at the `out` (KVM's fast
    /// PIO with hardware virtualization) rather than past it (kvm_pvm's emulator): the
    /// exit handler then steps past the doorbells' `out` first.
    pub io_exit_rip_at_insn: bool,
}

/// Round trips per kind and batch [`HostFacts::probe`] times for the transition floors
/// (three batches each: ~20 ms on a software-KVM host, far less with hardware
/// virtualization).
const FLOOR_ROUND_TRIPS: u64 = 50;

/// The in-VM answers worth giving on a host with these floors.
///
/// `VCPUOP_is_up` runs ring-3 instructions only and is always cheaper than any exit.
/// The local page flush enters ring 0 inside the VM; it pays where that round trip is
/// cheaper than the hypercall exit it replaces (about a third of it on kvm_pvm; with
/// hardware virtualization a native ring-0 round trip against a 1-2 us exit). Without
/// floors (the measurement failed) it stays with the engine, which is always right.
///
/// The #GP stub's `cli`/`sti` run about a dozen ring-0 instructions more than its
/// doorbell path, in a stub entered either way; the probe's flush round trip is an
/// entry, about eight instructions and an `iretq`, so their cost is taken as at most
/// three such round trips, against the exit they save. On kvm_pvm every ring-0
/// instruction is emulated and the in-VM answer loses (measured on an AMD EPYC host when
/// the stub also answered port I/O, ~25 instructions: `in al, 0x42` 66-71 us in the VM,
/// 50-55 us through the engine); with hardware virtualization it wins by far.
pub fn in_vm_paths(floors: Option<&probe::TransitionFloors>) -> u32 {
    use xen_abi::contract::in_vm;
    let mut bits = in_vm::IS_UP;
    if floors.is_some_and(|f| f.in_vm_flush_us < f.exit_us) {
        bits |= in_vm::INVLPG_LOCAL;
    }
    if floors.is_some_and(|f| 3.0 * f.in_vm_flush_us < f.exit_us) {
        bits |= in_vm::IOPL_OPS;
    }
    bits
}

/// Why pvkvm refuses to run on this host.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    /// No sync-regs area: every exit would need extra ioctls and the exit code assumes it.
    #[error("this host's KVM lacks KVM_CAP_SYNC_REGS, which pvkvm's exit path needs")]
    NoSyncRegs,
    /// No immediate-exit flag: a kick could be lost.
    #[error("this host's KVM lacks KVM_CAP_IMMEDIATE_EXIT, without which timer and backend kicks can be lost")]
    NoImmediateExit,
    /// `syscall` lands at a CPL pvkvm has no path for.
    #[error("a guest `syscall` lands at CPL{0} on this host; pvkvm handles CPL0 (hardware virtualization) and CPL3 (software KVM) only")]
    SyscallCpl(u8),
}

/// A guest TSC offset smaller than this (cycles) is measurement noise only if it is also
/// within the bracket; larger ones are always applied.
const TSC_OFFSET_FLOOR: u64 = 1_000_000;

impl HostFacts {
    /// Measures the facts (a few small VMs; tens of milliseconds).
    pub fn probe() -> Result<Self, probe::Error> {
        let (_kvm, host) = vstate::host_kvm()?;
        let landing = probe::syscall_landing()?;
        let (offset, uncertainty) = probe::guest_tsc_offset_bracketed()?;
        Ok(Self {
            module: host.module.clone(),
            hardware_virt: host.cpu_virt_flag.is_some() && host.module != "kvm_pvm",
            sync_regs: host.sync_regs,
            immediate_exit: host.immediate_exit,
            syscall_cpl: landing.cpl,
            ring3_cpuid_intercepted: landing.cpuid_from_table,
            vmm_pte_store_visible: probe::vmm_pte_store_visible()?,
            vmm_absent_store_visible: probe::vmm_absent_pte_store_visible()?,
            io_exit_rip_past: probe::io_exit_rip_past()?,
            tsc_offset: significant_tsc_offset(offset, uncertainty),
            m2p_slot_usable: probe::hole_slot_usable(256)?,
            guest_tsc_aux: probe::guest_tsc_aux_loaded()?,
            xstate: match probe::xstate_host() {
                Ok(x) => Some(x),
                Err(e) => {
                    log::warn!("cannot measure this host's extended state ({e}); XSAVE hidden");
                    None
                }
            },
            floors: match probe::transition_floors(FLOOR_ROUND_TRIPS) {
                Ok(f) => Some(f),
                Err(e) => {
                    log::warn!(
                        "cannot measure this host's transition costs ({e}); the shim's in-VM flush is off"
                    );
                    None
                }
            },
        })
    }

    /// The paths these facts choose, or why pvkvm cannot run here.
    pub fn paths(&self) -> Result<Paths, Refusal> {
        if !self.sync_regs {
            return Err(Refusal::NoSyncRegs);
        }
        if !self.immediate_exit {
            return Err(Refusal::NoImmediateExit);
        }
        let syscall_entry = match self.syscall_cpl {
            3 => SyscallEntry::StubAtCpl3,
            0 => SyscallEntry::StubAtCpl0,
            other => return Err(Refusal::SyscallCpl(other)),
        };
        Ok(Paths {
            syscall_entry,
            tsc_offset: self.tsc_offset,
            ring3_cpuid_intercepted: self.ring3_cpuid_intercepted
                && self.xstate.as_ref().is_some_and(|x| {
                    x.leaf1_from_table == Some(true) && x.leaf7_from_table == Some(true)
                }),
            xstate: self.xstate.as_ref().map_or(
                crate::xstate::XstatePlan::HIDDEN,
                crate::xstate::XstatePlan::for_host,
            ),
            guest_tsc_aux: self.guest_tsc_aux,
            m2p_at_abi: self.m2p_slot_usable,
            in_vm: in_vm_paths(self.floors.as_ref()),
            absent_stores_unposted: self.vmm_absent_store_visible || self.vmm_pte_store_visible,
            io_exit_rip_at_insn: !self.io_exit_rip_past,
        })
    }
}

impl Default for Paths {
    /// The software-KVM paths (what the exit handler's unit tests assume by default).
    fn default() -> Self {
        Self {
            syscall_entry: SyscallEntry::StubAtCpl3,
            tsc_offset: 0,
            ring3_cpuid_intercepted: true,
            xstate: crate::xstate::XstatePlan::HIDDEN,
            guest_tsc_aux: false,
            m2p_at_abi: false,
            in_vm: xen_abi::contract::in_vm::ALL,
            absent_stores_unposted: true,
            io_exit_rip_at_insn: false,
        }
    }
}

impl HostFacts {
    /// The facts and the paths they choose (or the refusal), as `pvkvm probe --json`
    /// reports them under `host_facts`.
    pub fn to_json(&self) -> serde_json::Value {
        let paths = match self.paths() {
            Ok(p) => serde_json::json!({
                "syscall_entry": format!("{:?}", p.syscall_entry),
                "tsc_offset": p.tsc_offset,
                "ring3_cpuid_intercepted": p.ring3_cpuid_intercepted,
                "xstate": format!("{:?}", p.xstate),
                "guest_tsc_aux": p.guest_tsc_aux,
                "in_vm": p.in_vm,
                "absent_stores_unposted": p.absent_stores_unposted,
            }),
            Err(refusal) => serde_json::json!({ "refused": refusal.to_string() }),
        };
        serde_json::json!({
            "module": self.module,
            "hardware_virt": self.hardware_virt,
            "sync_regs": self.sync_regs,
            "immediate_exit": self.immediate_exit,
            "syscall_cpl": self.syscall_cpl,
            "ring3_cpuid_intercepted": self.ring3_cpuid_intercepted,
            "vmm_pte_store_visible": self.vmm_pte_store_visible,
            "vmm_absent_store_visible": self.vmm_absent_store_visible,
            "io_exit_rip_past": self.io_exit_rip_past,
            "tsc_offset": self.tsc_offset,
            "m2p_slot_usable": self.m2p_slot_usable,
            "guest_tsc_aux": self.guest_tsc_aux,
            "exit_round_trip_us": self.floors.map(|f| f.exit_us),
            "in_vm_flush_us": self.floors.map(|f| f.in_vm_flush_us),
            "paths": paths,
        })
    }

    /// The same as a table for `pvkvm probe`.
    pub fn to_table(&self) -> String {
        let paths = match self.paths() {
            Ok(p) => format!("{p:?}"),
            Err(r) => format!("REFUSED: {r}"),
        };
        format!(
            "\nhost facts the runner uses\n  {:<48} {}\n  {:<48} {}\n  {:<48} {}\n  {:<48} {}\n  {:<48} {}\n  {:<48} {}\n  {:<48} {}\n  {:<48} {}\n  {:<48} {}\n  {:<48} {}\n  paths: {paths}\n",
            "syscall lands at CPL",
            self.syscall_cpl,
            "ring-3 CPUID leaf 0x40000000 from pvkvm's table",
            self.ring3_cpuid_intercepted,
            "VMM PTE store visible without guest flush",
            self.vmm_pte_store_visible,
            "VMM store over a not-present PTE visible at once",
            self.vmm_absent_store_visible,
            "port-I/O exit reports rip past the out",
            self.io_exit_rip_past,
            "guest TSC offset (cycles, 0 = none measured)",
            self.tsc_offset,
            "L4 slot 256 (Xen's M2P address) usable",
            self.m2p_slot_usable,
            "hardware virtualization",
            self.hardware_virt,
            "ring-3 rdtscp reads the vCPU's TSC_AUX",
            self.guest_tsc_aux,
            "exit / in-VM flush round trip (us)",
            self.floors.map_or("not measured".into(), |f| format!(
                "{:.1} / {:.1}",
                f.exit_us, f.in_vm_flush_us
            )),
        )
    }
}

/// The offset to apply: 0 when the measured value is within its uncertainty and small
/// (the host does not offset the guest's TSC), the measured value otherwise.
pub fn significant_tsc_offset(offset: i64, uncertainty: u64) -> i64 {
    if offset.unsigned_abs() <= uncertainty.max(TSC_OFFSET_FLOOR) {
        0
    } else {
        offset
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn software() -> HostFacts {
        HostFacts {
            module: "kvm_pvm".into(),
            hardware_virt: false,
            sync_regs: true,
            immediate_exit: true,
            syscall_cpl: 3,
            ring3_cpuid_intercepted: true,
            vmm_pte_store_visible: false,
            vmm_absent_store_visible: true,
            io_exit_rip_past: true,
            tsc_offset: 0,
            m2p_slot_usable: false,
            guest_tsc_aux: false,
            xstate: None,
            // This host kind's figures (AMD EPYC, kvm_pvm).
            floors: Some(probe::TransitionFloors {
                exit_us: 63.0,
                in_vm_flush_us: 31.5,
            }),
        }
    }

    fn hardware() -> HostFacts {
        HostFacts {
            module: "kvm_intel".into(),
            hardware_virt: true,
            syscall_cpl: 0,
            vmm_pte_store_visible: true,
            io_exit_rip_past: false,
            tsc_offset: -123_456_789_000,
            m2p_slot_usable: true,
            guest_tsc_aux: true,
            // What hardware virtualization gives: exits of a microsecond or two, native
            // ring-0 round trips.
            floors: Some(probe::TransitionFloors {
                exit_us: 1.5,
                in_vm_flush_us: 0.1,
            }),
            ..software()
        }
    }

    #[test]
    fn software_kvm_takes_the_cpl3_stub_path() {
        let p = software().paths().unwrap();
        assert_eq!(p.syscall_entry, SyscallEntry::StubAtCpl3);
        assert_eq!(p.tsc_offset, 0);
        assert!(!p.m2p_at_abi, "kvm_pvm keeps slot 256");
    }

    #[test]
    fn hardware_virtualization_takes_the_cpl0_path_and_the_tsc_offset() {
        let p = hardware().paths().unwrap();
        assert_eq!(p.syscall_entry, SyscallEntry::StubAtCpl0);
        assert_eq!(p.tsc_offset, -123_456_789_000);
        assert!(p.m2p_at_abi);
        assert!(p.io_exit_rip_at_insn, "fast PIO leaves rip at the out");
        assert!(!software().paths().unwrap().io_exit_rip_at_insn);
    }

    #[test]
    fn unsafe_facts_are_refused_with_the_fact_named() {
        let mut f = software();
        f.sync_regs = false;
        assert_eq!(f.paths(), Err(Refusal::NoSyncRegs));
        let mut f = software();
        f.syscall_cpl = 1;
        assert_eq!(f.paths(), Err(Refusal::SyscallCpl(1)));
        assert!(Refusal::SyscallCpl(1).to_string().contains("CPL1"));
        let mut f = software();
        f.immediate_exit = false;
        assert_eq!(f.paths(), Err(Refusal::NoImmediateExit));
    }

    #[test]
    fn stores_over_absent_entries_skip_posting_only_where_the_probe_saw_them() {
        assert!(software().paths().unwrap().absent_stores_unposted);
        assert!(hardware().paths().unwrap().absent_stores_unposted);
        let mut f = software();
        f.vmm_absent_store_visible = false;
        assert!(
            !f.paths().unwrap().absent_stores_unposted,
            "a host that keeps a translation of a not-present entry gets every store posted"
        );
        f.vmm_pte_store_visible = true;
        assert!(
            f.paths().unwrap().absent_stores_unposted,
            "hardware paging reads memory anyway"
        );
    }

    #[test]
    fn in_vm_answers_follow_the_measured_costs() {
        use xen_abi::contract::in_vm;
        // kvm_pvm: the flush round trip is half an exit, the #GP stub's longer path
        // is not worth it.
        assert_eq!(
            software().paths().unwrap().in_vm,
            in_vm::IS_UP | in_vm::INVLPG_LOCAL
        );
        assert_eq!(hardware().paths().unwrap().in_vm, in_vm::ALL);
        // A host where ring 0 inside the VM costs more than an exit keeps the flush in
        // the engine; the ring-3 answer stays.
        let mut f = software();
        f.floors = Some(probe::TransitionFloors {
            exit_us: 20.0,
            in_vm_flush_us: 45.0,
        });
        assert_eq!(f.paths().unwrap().in_vm, in_vm::IS_UP);
        // Unmeasured: only what needs no ring 0.
        f.floors = None;
        assert_eq!(f.paths().unwrap().in_vm, in_vm::IS_UP);
    }

    #[test]
    fn tsc_offsets_within_the_measurement_are_zero() {
        assert_eq!(significant_tsc_offset(-286_283, 300_000), 0);
        assert_eq!(significant_tsc_offset(5_000, 10), 0, "below the floor");
        assert_eq!(
            significant_tsc_offset(-5_000_000_000, 300_000),
            -5_000_000_000
        );
    }
}
