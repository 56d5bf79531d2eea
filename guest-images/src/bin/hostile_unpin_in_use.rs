//! `hostile_unpin_in_use`: unpinning the running L4 and switching to bad base pointers.
//!
//! Asserts:
//!
//! * `UNPIN_TABLE` of the boot L4 while it is the base pointer: 0 (Xen drops only the pin
//!   reference; the base-pointer reference keeps the table validated); the kernel keeps
//!   running on it; it still cannot be mapped writable (-EBUSY); a second unpin -EINVAL;
//!   `PIN_L4_TABLE` again: 0;
//! * `NEW_BASEPTR` to a read-only, unpinned frame of garbage present entries: -EINVAL;
//!   to a zeroed frame that is still mapped writable: -EINVAL; to a frame that is not
//!   ours: -EINVAL; the kernel keeps running on the boot L4 after each (it still maps and
//!   runs the kernel) and the garbage frame takes a writable mapping again.
#![no_std]
#![no_main]

use pv_test_kernels::mm;
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::xen_abi::errno::{EBUSY, EINVAL};
use pv_test_kernels::xen_abi::xen::mmuext;
use pv_test_kernels::{check_eq, println, test_kernel, StartInfo};

test_kernel!(main);

const GARBAGE: u64 = 40;
const WRITABLE: u64 = 41;
const X: u64 = 42;

static mut COUNTER: u64 = 0;

fn still_running(si: &StartInfo, what: &str) {
    // SAFETY: single vCPU; a plain read-modify-write of our own data.
    unsafe {
        let v = core::ptr::read_volatile(&raw const COUNTER);
        core::ptr::write_volatile(&raw mut COUNTER, v + 1);
    }
    mm::expect_fill(what, mm::slack_va(si, X), mm::seed_of(X));
    println!("{}: still running", what);
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    mm::fill(mm::slack_va(si, X), mm::seed_of(X));
    let l4 = mm::va_to_mfn(si, si.pt_base);

    mm::assume("UNPIN of the L4 in use succeeds: the base-pointer type reference keeps it validated (mm.c do_mmuext_op UNPIN, new_guest_cr3)");
    mm::mmuext_ok(
        "MMUEXT_UNPIN_TABLE (boot L4, in use)",
        mmuext::UNPIN_TABLE,
        l4,
        0,
    );
    still_running(si, "after unpinning the L4 in use");
    let rc = mm::uvm(mm::slack_va(si, X), mm::pte_rw(l4), mm::UVMF_INVLPG);
    check_eq!("writable mapping of the unpinned but in-use L4", rc, -EBUSY);
    mm::expect_fill(
        "slack data after the refused mapping",
        mm::slack_va(si, X),
        mm::seed_of(X),
    );
    mm::mmuext_err(
        "MMUEXT_UNPIN_TABLE (boot L4, again)",
        mmuext::UNPIN_TABLE,
        l4,
        0,
        -EINVAL,
    );
    mm::mmuext_ok(
        "MMUEXT_PIN_L4_TABLE (boot L4, re-pin)",
        mmuext::PIN_L4_TABLE,
        l4,
        0,
    );
    still_running(si, "after re-pinning the boot L4");

    let g = mm::slack_va(si, GARBAGE);
    let gm = mm::slack_mfn(si, GARBAGE);
    for k in 0..512u64 {
        mm::wr(g + k * 8, ((0xdead_c000 + k) << 12) | mm::PDE_FLAGS);
    }
    mm::slack_make_ro(si, GARBAGE);
    mm::mmuext_err(
        "MMUEXT_NEW_BASEPTR (garbage frame)",
        mmuext::NEW_BASEPTR,
        gm,
        0,
        -EINVAL,
    );
    still_running(si, "after NEW_BASEPTR to garbage");
    mm::mmuext_err(
        "MMUEXT_UNPIN_TABLE (garbage frame)",
        mmuext::UNPIN_TABLE,
        gm,
        0,
        -EINVAL,
    );
    mm::slack_make_rw(si, GARBAGE);
    mm::wr(g, 0);

    let wv = mm::slack_va(si, WRITABLE);
    for k in 0..512u64 {
        mm::wr(wv + k * 8, 0);
    }
    mm::mmuext_err(
        "MMUEXT_NEW_BASEPTR (frame mapped writable)",
        mmuext::NEW_BASEPTR,
        mm::slack_mfn(si, WRITABLE),
        0,
        -EINVAL,
    );
    mm::mmuext_err(
        "MMUEXT_NEW_BASEPTR (frame not ours)",
        mmuext::NEW_BASEPTR,
        mm::MFN_NOT_RAM,
        0,
        -EINVAL,
    );
    still_running(
        si,
        "after NEW_BASEPTR to a writable frame and to a foreign frame",
    );
}
