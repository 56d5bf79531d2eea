//! `hostile_hole_entry`: entries into the hypervisor hole and at frames that are not ours.
//!
//! Asserts:
//!
//! * `mmu_update` of boot L4 slots 256 and 271 (Xen's slots; value: the kernel's valid L3,
//!   or 0): -EINVAL, done 0 (`mod_l4_entry`: "L4 update in Xen-private area"), entries
//!   unchanged;
//! * `update_va_mapping` of a VA in the hole (the M2P at 0xffff800000000000): -EINVAL;
//! * an L1 entry (`mmu_update` and `update_va_mapping`, RW and RO) pointing at a frame
//!   next to the shared_info frame that is not ours: refused with -EBUSY (Xen: a RAM
//!   frame owned by Xen, nobody or another domain) or -EPERM (not RAM: "MMIO" the domU
//!   has no permission for) — the kernel prints which; both attempts must agree;
//! * an L1 entry pointing at mfn 0xffffff0 (far beyond any RAM): -EPERM;
//! * the slack VA's PTE and data are unchanged throughout; the domain keeps running.
#![no_std]
#![no_main]

use pv_test_kernels::mm;
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::xen_abi::errno::{EBUSY, EINVAL, EPERM};
use pv_test_kernels::{check_eq, fail, println, test_kernel, StartInfo, VIRT_BASE};

test_kernel!(main);

const X: u64 = 10;

fn ours(si: &StartInfo, mfn: u64) -> bool {
    let p = mm::probe_read(mm::m2p_base() + mfn * 8);
    !p.trapped && p.value < si.nr_pages && mm::p2m(si, p.value) == mfn
}

fn refuse(si: &StartInfo, what: &str, mfn: u64, allowed: &[i64]) -> i64 {
    let x = mm::slack_va(si, X);
    let w = mm::walk(si, x);
    let before = w.pte_now();
    let mut first = 0;
    for (n, &pte) in [mm::pte_rw(mfn), mm::pte_ro(mfn)].iter().enumerate() {
        let (rc, done) = mm::mmu_update1(w.pte_ma(), pte);
        let rc2 = mm::uvm(x, pte, mm::UVMF_INVLPG);
        if !allowed.contains(&rc) || done != 0 || rc2 != rc {
            fail!(
                "{} (mfn {:#x}, pte {:#x}): mmu_update returned {} done {}, update_va_mapping {}; expected one of {:?}, done 0, both equal",
                what, mfn, pte, rc, done, rc2, allowed
            );
        }
        if n == 0 {
            first = rc;
        } else if rc != first {
            fail!(
                "{}: RW mapping refused with {}, RO with {}",
                what,
                first,
                rc
            );
        }
        check_eq!("PTE after the refused updates", w.pte_now(), before);
    }
    mm::expect_fill("data after the refused updates", x, mm::seed_of(X));
    first
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    mm::fill(mm::slack_va(si, X), mm::seed_of(X));
    mm::assume(
        "L4 slots 256..271 belong to Xen: mod_l4_entry returns -EINVAL (mm.c is_guest_l4_slot)",
    );
    let l4 = mm::va_to_mfn(si, si.pt_base);
    let l3 = mm::walk(si, VIRT_BASE).l3_mfn;
    for &slot in &[256u64, 271] {
        let before = mm::rd(si.pt_base + slot * 8);
        for &val in &[(l3 << 12) | mm::PDE_FLAGS, 0] {
            let (rc, done) = mm::mmu_update1(mm::entry_ma(l4, slot), val);
            if rc != -EINVAL || done != 0 {
                fail!("mmu_update of boot L4 slot {} with {:#x}: returned {}, done {}; expected -EINVAL, done 0", slot, val, rc, done);
            }
            check_eq!(
                "hole slot after the refused update",
                mm::rd(si.pt_base + slot * 8),
                before
            );
        }
    }
    println!("mmu_update of L4 slots 256/271: -EINVAL, unchanged");
    let rc = mm::uvm(
        mm::m2p_base(),
        mm::pte_rw(mm::slack_mfn(si, 0)),
        mm::UVMF_INVLPG,
    );
    check_eq!("update_va_mapping of the M2P address", rc, -EINVAL);

    let sh = si.shared_info >> 12;
    let next = [sh + 1, sh.wrapping_sub(1)]
        .into_iter()
        .find(|&m| !ours(si, m));
    match next {
        Some(n) => {
            let rc = refuse(
                si,
                "L1 entry at shared_info's neighbour",
                n,
                &[-EBUSY, -EPERM],
            );
            println!(
                "L1 entry at mfn {:#x} (next to shared_info mfn {:#x}): {} ({})",
                n,
                sh,
                rc,
                if rc == -EPERM {
                    "-EPERM: not RAM"
                } else {
                    "-EBUSY: RAM that is not ours"
                }
            );
        }
        None => println!(
            "both neighbours of shared_info mfn {:#x} are our RAM: neighbour case skipped",
            sh
        ),
    }
    refuse(
        si,
        "L1 entry at a frame beyond RAM",
        mm::MFN_NOT_RAM,
        &[-EPERM],
    );
    println!(
        "L1 entry at mfn {:#x}: -EPERM; still running",
        mm::MFN_NOT_RAM
    );
}
