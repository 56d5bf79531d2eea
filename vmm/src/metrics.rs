//! The `--stats` report: exits by kind and hypercalls by number, with the count of
//! `-ENOSYS` answers, so a person sees what a guest used and what pvkvm lacks; then the
//! profile: every exit kind (hypercall and sub-op, trap vector, exit reason) with its
//! count and the VMM's time, the `mmu_update` batch sizes, `mmuext_op` commands and the
//! instructions the engine emulated.
//!
//! The profile's time is the VMM's own (decode, engine, posting), measured around the
//! exit handler; the KVM round trip around it (the same for every exit of a kind, see
//! `pvkvm probe`) and the shim's in-VM work are not in it. Collecting costs two clock
//! reads and a map update per exit, and nothing when `--stats` is off.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::exit::ExitKind;
use crate::runner::RunReport;

/// Count and total time of one kind of exit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Exits.
    pub count: u64,
    /// Nanoseconds the VMM spent on them.
    pub ns: u64,
}

/// Exits by kind, with the VMM's time.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Profile {
    /// By kind.
    pub by_kind: BTreeMap<ExitKind, Tally>,
}

impl Profile {
    /// Counts one exit of `kind` that took the VMM `ns`.
    pub fn add(&mut self, kind: ExitKind, ns: u64) {
        let t = self.by_kind.entry(kind).or_default();
        t.count += 1;
        t.ns += ns;
    }
}

fn kind_name(kind: ExitKind) -> String {
    match kind {
        ExitKind::Hypercall { nr, sub } => {
            let name = xen_abi::xen::hypercall::name(nr);
            match sub {
                Some(sub) => format!("hypercall {name}/{sub}"),
                None => format!("hypercall {name}"),
            }
        }
        ExitKind::UserSyscall => "guest-user syscall".into(),
        ExitKind::Trap(v) => format!("trap vector {v}"),
        ExitKind::ApplyRefill => "apply refill".into(),
        ExitKind::PortIo => "guest port I/O".into(),
        ExitKind::Interrupted => "interrupted (kick)".into(),
        ExitKind::Other => "other".into(),
    }
}

fn format_profile(s: &mut String, report: &RunReport, profile: &Profile) {
    let _ = writeln!(
        s,
        "  profile (VMM time per exit kind; add the probe's round trip per exit):"
    );
    let _ = writeln!(
        s,
        "    {:<40} {:>9} {:>12} {:>10}",
        "kind", "count", "total ms", "mean us"
    );
    let mut rows: Vec<_> = profile.by_kind.iter().collect();
    rows.sort_by(|a, b| b.1.ns.cmp(&a.1.ns).then(a.0.cmp(b.0)));
    for (kind, t) in rows {
        let _ = writeln!(
            s,
            "    {:<40} {:>9} {:>12.3} {:>10.2}",
            kind_name(*kind),
            t.count,
            t.ns as f64 / 1e6,
            t.ns as f64 / t.count.max(1) as f64 / 1e3
        );
    }
    let st = &report.stats;
    let _ = write!(s, "  mmu_update batch sizes:");
    for (k, &n) in st.mmu_update_batches.iter().enumerate() {
        if n == 0 {
            continue;
        }
        let label = match k {
            0 => "0".to_string(),
            1 => "1".to_string(),
            k if k + 1 == st.mmu_update_batches.len() => format!("{}+", 1u64 << (k - 1)),
            k => format!("{}-{}", 1u64 << (k - 1), (1u64 << k) - 1),
        };
        let _ = write!(s, " [{label}] {n}");
    }
    let _ = writeln!(s);
    let _ = write!(s, "  mmuext_op commands:");
    for (cmd, &n) in st.mmuext_cmds.iter().enumerate() {
        if n > 0 {
            let _ = write!(s, " {}={n}", xen_abi::xen::mmuext::name(cmd as u32));
        }
    }
    let _ = writeln!(s);
    let _ = write!(s, "  instructions the engine emulated:");
    for (name, &n) in pv_engine::stats::EMULATED_NAMES.iter().zip(&st.emulated) {
        let _ = write!(s, " {name} {n};");
    }
    let _ = writeln!(
        s,
        " (this host does not reveal how many shim instructions it emulated at ring 0)"
    );
}

fn on_off(bit: u32) -> &'static str {
    if bit != 0 {
        "in the VM"
    } else {
        "through the engine"
    }
}

/// Formats the counters of a finished run.
pub fn format_report(report: &RunReport) -> String {
    let mut s = String::new();
    let e = &report.exits;
    let total = e.vm_exits();
    let _ = writeln!(
        s,
        "pvkvm stats: {:.3} s, {total} VM exits{}",
        report.elapsed.as_secs_f64(),
        if report.vcpus > 1 {
            format!(" on {} vCPUs", report.vcpus)
        } else {
            String::new()
        }
    );
    let _ = writeln!(
        s,
        "  exits: hypercall doorbell {}, trap doorbell {}, apply refill {}, interrupted {}, other {}, guest port I/O {} ({} with an event due); kicks that found a guest fault in flight {}, kicks after a possible software trap {}",
        e.hypercall_doorbells,
        e.trap_doorbells,
        e.apply_more,
        e.interrupted,
        e.other,
        e.port_io,
        e.port_io_then_event,
        e.kicks_with_fault_in_flight,
        e.kicks_after_soft_trap
    );
    if e.pkru_resets > 0 {
        let _ = writeln!(
            s,
            "  protection-key faults answered by resetting PKRU: {}",
            e.pkru_resets
        );
    }
    let _ = writeln!(
        s,
        "  in-VM answers: {:#x} (is_up {}, local page flush {}, cli/sti {})",
        report.in_vm,
        on_off(report.in_vm & xen_abi::contract::in_vm::IS_UP),
        on_off(report.in_vm & xen_abi::contract::in_vm::INVLPG_LOCAL),
        on_off(report.in_vm & xen_abi::contract::in_vm::IOPL_OPS)
    );
    let per = |ns: u64, n: u64| ns as f64 / n.max(1) as f64 / 1000.0;
    let _ = writeln!(
        s,
        "  VMM time: {:.1} us per hypercall doorbell, {:.1} us per trap doorbell",
        per(e.hypercall_ns, e.hypercall_doorbells),
        per(e.trap_ns, e.trap_doorbells)
    );
    let _ = writeln!(
        s,
        "  posted pagetable stores: {} in {} applies inside the VM, at most {} in one; full flushes done by a new CR3's load: {}; stores over not-present entries, not posted: {}",
        e.posted_stores, e.applies, e.posted_peak, e.flushes_by_cr3_load, e.absent_unposted
    );
    if e.remote_flushes > 0 {
        let _ = writeln!(
            s,
            "  remote TLB flushes: {} (other vCPUs kicked out of the guest for them: {})",
            e.remote_flushes, e.remote_flush_kicks
        );
    }
    let st = &report.stats;
    let _ = writeln!(
        s,
        "  continuations: {} (hypercalls preempted and re-entered by the guest); longest hypercall doorbell {:.1} us",
        st.continuations,
        e.hypercall_max_ns as f64 / 1000.0
    );
    let calls: u64 = st.hypercalls.iter().sum::<u64>() + st.hypercalls_out_of_range;
    let _ = writeln!(
        s,
        "  hypercalls: {calls} ({} answered -ENOSYS)",
        st.enosys_total
    );
    for (nr, &count) in st.hypercalls.iter().enumerate() {
        if count > 0 {
            let name = format!("{} ({nr})", xen_abi::xen::hypercall::name(nr as u64));
            let _ = writeln!(
                s,
                "    {name:<28} {count:>10}  enosys {}  continued {}",
                st.enosys[nr], st.continued[nr]
            );
        }
    }
    if st.hypercalls_out_of_range > 0 {
        let _ = writeln!(
            s,
            "    {:<24} {:>10}",
            "(out of range)", st.hypercalls_out_of_range
        );
    }
    let _ = writeln!(s, "  guest-user syscalls bounced: {}", st.syscall_bounces);
    for (v, &count) in st.bounces.iter().enumerate() {
        if count > 0 {
            let _ = writeln!(s, "  exception {v:>3} bounced {count}");
        }
    }
    if let Some(p) = &report.exits.profile {
        format_profile(&mut s, report, p);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_tallies_by_kind_and_names_sub_ops() {
        let mut p = Profile::default();
        let mmu = ExitKind::Hypercall { nr: 1, sub: None };
        let evt = ExitKind::Hypercall {
            nr: 32,
            sub: Some(4),
        };
        p.add(mmu, 1000);
        p.add(mmu, 3000);
        p.add(evt, 500);
        p.add(ExitKind::Trap(14), 7000);
        assert_eq!(p.by_kind[&mmu], Tally { count: 2, ns: 4000 });
        assert_eq!(p.by_kind[&ExitKind::Trap(14)].count, 1);
        assert_eq!(kind_name(mmu), "hypercall mmu_update");
        assert_eq!(kind_name(evt), "hypercall event_channel_op/4");
        assert_eq!(kind_name(ExitKind::Trap(14)), "trap vector 14");
    }

    #[test]
    fn sub_ops_are_the_command_of_multiplexing_hypercalls() {
        use xen_abi::xen::hypercall as hc;
        assert_eq!(
            crate::exit::hypercall_subop(hc::EVENT_CHANNEL_OP, [4, 0, 0]),
            Some(4)
        );
        assert_eq!(
            crate::exit::hypercall_subop(hc::UPDATE_VA_MAPPING, [0, 0, 2]),
            Some(2)
        );
        assert_eq!(
            crate::exit::hypercall_subop(hc::MMU_UPDATE, [0xdead, 1, 0]),
            None
        );
    }
}
