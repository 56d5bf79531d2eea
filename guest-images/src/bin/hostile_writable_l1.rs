//! `hostile_writable_l1`: a writable mapping of a live pagetable frame is refused.
//!
//! The boot L1 that maps the slack area is pinned (through the builder's pinned L4) and
//! has the L1 type. Asserts: `update_va_mapping(slack VA, that L1's MFN | RW)` returns
//! -EBUSY (Xen cannot take a writable type reference: `get_page_from_l1e` ->
//! could_not_pin); the same through `mmu_update` -EBUSY, done 0; the same for the boot L4
//! frame; the slack VA's PTE and data are unchanged; the domain keeps running. A
//! read-only mapping of the L1 frame is allowed and shows the same words as the L1's own
//! (read-only) VA.
#![no_std]
#![no_main]

use pv_test_kernels::mm;
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::xen_abi::errno::EBUSY;
use pv_test_kernels::{check_eq, fail, println, test_kernel, StartInfo};

test_kernel!(main);

const X: u64 = 10;

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    mm::assume("a frame with a pagetable type cannot get a writable mapping: -EBUSY (mm.c get_page_from_l1e could_not_pin)");
    let x = mm::slack_va(si, X);
    mm::fill(x, mm::seed_of(X));
    let w = mm::walk(si, x);
    let before = w.pte_now();
    let l1 = w.l1_mfn;
    let l4 = mm::va_to_mfn(si, si.pt_base);

    for &(what, mfn) in &[("boot L1", l1), ("boot L4", l4)] {
        let rc = mm::uvm(x, mm::pte_rw(mfn), mm::UVMF_INVLPG);
        if rc != -EBUSY {
            fail!("update_va_mapping mapping the {} (mfn {:#x}) writable: returned {}, expected -EBUSY", what, mfn, rc);
        }
        let (rc, done) = mm::mmu_update1(w.pte_ma(), mm::pte_rw(mfn));
        if rc != -EBUSY || done != 0 {
            fail!(
                "mmu_update mapping the {} writable: returned {}, done {}; expected -EBUSY, done 0",
                what,
                rc,
                done
            );
        }
        check_eq!("PTE after the refused updates", w.pte_now(), before);
        mm::expect_fill("data after the refused updates", x, mm::seed_of(X));
        println!(
            "writable mapping of the {} (mfn {:#x}): -EBUSY, nothing changed",
            what, mfn
        );
    }

    mm::remap("read-only mapping of the boot L1", x, mm::pte_ro(l1));
    for k in 0..512u64 {
        check_eq!(
            "boot L1 word through the read-only alias",
            mm::rd(x + k * 8),
            mm::rd(w.l1_va + k * 8)
        );
    }
    mm::remap("restore", x, mm::pte_rw(mm::slack_mfn(si, X)));
    mm::expect_fill("data after restoring", x, mm::seed_of(X));
    println!("read-only mapping of the boot L1: allowed; still running");
}
