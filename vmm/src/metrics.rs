//! The `--stats` report: exits by kind and hypercalls by number, with the count of
//! `-ENOSYS` answers, so a person sees what a guest used and what pvkvm lacks.

use std::fmt::Write as _;

use crate::runner::RunReport;

/// Formats the counters of a finished run.
pub fn format_report(report: &RunReport) -> String {
    let mut s = String::new();
    let e = &report.exits;
    let total = e.hypercall_doorbells + e.trap_doorbells + e.apply_more + e.interrupted + e.other;
    let _ = writeln!(
        s,
        "pvkvm stats: {:.3} s, {total} VM exits",
        report.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "  exits: hypercall doorbell {}, trap doorbell {}, apply refill {}, interrupted {}, other {}",
        e.hypercall_doorbells, e.trap_doorbells, e.apply_more, e.interrupted, e.other
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
        "  posted pagetable stores: {} in {} applies inside the VM",
        e.posted_stores, e.applies
    );
    let st = &report.stats;
    let calls: u64 = st.hypercalls.iter().sum::<u64>() + st.hypercalls_out_of_range;
    let _ = writeln!(
        s,
        "  hypercalls: {calls} ({} answered -ENOSYS)",
        st.enosys_total
    );
    for (nr, &count) in st.hypercalls.iter().enumerate() {
        if count > 0 {
            let name = format!("{} ({nr})", xen_abi::xen::hypercall::name(nr as u64));
            let _ = writeln!(s, "    {name:<28} {count:>10}  enosys {}", st.enosys[nr]);
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
    s
}
