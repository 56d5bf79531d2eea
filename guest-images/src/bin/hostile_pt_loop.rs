//! `hostile_pt_loop`: pagetables that reference themselves with write permission.
//!
//! Asserts:
//!
//! * a read-only slack frame whose L2 slot 0 points at itself (P|RW|U|A|D):
//!   `PIN_L2_TABLE` -EINVAL (the frame cannot be an L1 while being an L2, and a writable
//!   linear entry is not allowed), never pinned, writable again afterwards;
//! * `mmu_update` of boot L4 slot 1 with an RW entry pointing at the boot L4 itself:
//!   -EINVAL, done 0, slot still empty;
//! * a copy of the boot L4 whose slot 0 points at the copy (RW): `PIN_L4_TABLE` -EINVAL,
//!   `NEW_BASEPTR` to it -EINVAL; never pinned, writable again;
//! * the domain keeps running throughout.
//!
//! Not asserted: a *read-only* self entry is a legal linear pagetable on Xen
//! (`pv-linear-pt`, default on), so only RW loops are refused.
#![no_std]
#![no_main]

use pv_test_kernels::mm;
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::xen_abi::errno::EINVAL;
use pv_test_kernels::xen_abi::xen::mmuext;
use pv_test_kernels::{check_eq, fail, println, test_kernel, StartInfo};

test_kernel!(main);

const L2: u64 = 30;
const L4: u64 = 31;

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    mm::assume("a writable self-reference at any level is refused with -EINVAL; read-only ones are Xen linear pagetables (mm.c get_lN_linear_pagetable)");

    let va = mm::slack_va(si, L2);
    let mfn = mm::slack_mfn(si, L2);
    for k in 0..512u64 {
        mm::wr(va + k * 8, 0);
    }
    mm::wr(va, (mfn << 12) | mm::PDE_FLAGS);
    mm::slack_make_ro(si, L2);
    mm::mmuext_err(
        "MMUEXT_PIN_L2_TABLE (slot 0 -> itself, RW)",
        mmuext::PIN_L2_TABLE,
        mfn,
        0,
        -EINVAL,
    );
    mm::mmuext_err(
        "MMUEXT_UNPIN_TABLE (refused L2)",
        mmuext::UNPIN_TABLE,
        mfn,
        0,
        -EINVAL,
    );
    mm::slack_make_rw(si, L2);
    mm::wr(va, 0);
    println!("L2 pointing at itself: PIN_L2_TABLE -EINVAL");

    let l4 = mm::va_to_mfn(si, si.pt_base);
    if mm::rd(si.pt_base) != 0 || mm::rd(si.pt_base + 8) != 0 {
        fail!(
            "boot L4 slots 0/1 are {:#x}/{:#x}, expected empty",
            mm::rd(si.pt_base),
            mm::rd(si.pt_base + 8)
        );
    }
    let (rc, done) = mm::mmu_update1(mm::entry_ma(l4, 1), (l4 << 12) | mm::PDE_FLAGS);
    if rc != -EINVAL || done != 0 {
        fail!("mmu_update of boot L4 slot 1 -> the boot L4 (RW): returned {}, done {}; expected -EINVAL, done 0", rc, done);
    }
    check_eq!(
        "boot L4 slot 1 after the refused update",
        mm::rd(si.pt_base + 8),
        0u64
    );
    println!("boot L4 slot 1 -> itself: -EINVAL");

    let c = mm::slack_va(si, L4);
    let cm = mm::slack_mfn(si, L4);
    for k in 0..512u64 {
        mm::wr(c + k * 8, mm::rd(si.pt_base + k * 8));
    }
    mm::wr(c, (cm << 12) | mm::PDE_FLAGS);
    mm::slack_make_ro(si, L4);
    mm::mmuext_err(
        "MMUEXT_PIN_L4_TABLE (slot 0 -> itself, RW)",
        mmuext::PIN_L4_TABLE,
        cm,
        0,
        -EINVAL,
    );
    mm::mmuext_err(
        "MMUEXT_NEW_BASEPTR (slot 0 -> itself, RW)",
        mmuext::NEW_BASEPTR,
        cm,
        0,
        -EINVAL,
    );
    mm::mmuext_err(
        "MMUEXT_UNPIN_TABLE (refused L4)",
        mmuext::UNPIN_TABLE,
        cm,
        0,
        -EINVAL,
    );
    mm::slack_make_rw(si, L4);
    mm::wr(c, 0);
    println!("L4 copy pointing at itself: PIN_L4_TABLE / NEW_BASEPTR -EINVAL; still running");
}
