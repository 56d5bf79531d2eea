//! `hostile_direct_write`: plain writes into a read-only mapped, pinned L1 (Xen's
//! writable-pagetable emulation, `VMASST_TYPE_writable_pagetables`).
//!
//! Installs the trap table, maps shared_info (for `arch.cr2`) and enables the
//! writable_pagetables VM assist (as Linux's `xen_arch_setup`). Asserts:
//!
//! * a `mov` of a PTE pointing at mfn 0xffffff0 (beyond RAM) into the boot L1 slot of a
//!   slack VA is refused: one #PF, error code 3 (present|write; the U bit cleared for
//!   guest kernel mode), rip at the `mov`, `vcpu_info.arch.cr2` = the PTE's address; the
//!   entry and the data behind the VA are unchanged; the same for a PTE with PCD;
//! * after unmapping the VA, a `mov` of a valid PTE (another own slack frame) is accepted
//!   (no exception), the entry holds it and a read through the VA shows the new frame at
//!   once;
//! * a `lock and byte [pte], ~0x40` (Linux's `clear_bit(_PAGE_BIT_DIRTY)`) clears D and
//!   nothing else.
#![no_std]
#![no_main]

use core::arch::asm;
use pv_test_kernels::hypercall;
use pv_test_kernels::mm;
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::{check_eq, fail, println, test_kernel, StartInfo};

test_kernel!(main);

const X: u64 = 10;
const Y: u64 = 11;
const SHINFO: u64 = 50;

fn refused(si: &StartInfo, sh: u64, what: &str, w: &mm::Walk, bad: u64) {
    let before = w.pte_now();
    let p = mm::probe_write(w.pte_va(), bad);
    if !p.trapped {
        fail!(
            "{}: direct write of {:#x} to the PTE at {:#x} was accepted (PTE now {:#x})",
            what,
            bad,
            w.pte_va(),
            w.pte_now()
        );
    }
    if p.trap.vector != 14 || p.trap.error_code != 3 || p.trap.rip != p.insn {
        fail!(
            "{}: vector {} error code {:#x} rip {:#x}; expected #PF error code 3 at {:#x}",
            what,
            p.trap.vector,
            p.trap.error_code,
            p.trap.rip,
            p.insn
        );
    }
    check_eq!(
        "vcpu_info.arch.cr2 after the refused PTE write",
        mm::vcpu0_cr2(sh),
        w.pte_va()
    );
    check_eq!("PTE after the refused write", w.pte_now(), before);
    mm::expect_fill(
        "data after the refused write",
        mm::slack_va(si, X),
        mm::seed_of(X),
    );
    println!(
        "{}: refused with #PF (error code 3, cr2 {:#x}), entry unchanged",
        what,
        w.pte_va()
    );
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    let sh = mm::slack_va(si, SHINFO);
    mm::map_shared_info(si, sh);
    mm::assume("VMASST_TYPE_writable_pagetables (2) makes Xen emulate guest-kernel writes to read-only L1s; a write whose new PTE fails validation is bounced as the original #PF (pv/ro-page-fault.c, traps.c fixup_page_fault)");
    let rc = hypercall::vm_assist(mm::VMASST_CMD_ENABLE, mm::VMASST_TYPE_WRITABLE_PAGETABLES);
    check_eq!("vm_assist(enable, writable_pagetables)", rc, 0i64);

    mm::fill(mm::slack_va(si, X), mm::seed_of(X));
    mm::fill(mm::slack_va(si, Y), mm::seed_of(Y));
    let w = mm::walk(si, mm::slack_va(si, X));
    refused(
        si,
        sh,
        "PTE at a frame beyond RAM",
        &w,
        mm::pte_rw(mm::MFN_NOT_RAM),
    );
    refused(
        si,
        sh,
        "PTE with PCD",
        &w,
        mm::pte_rw(mm::slack_mfn(si, Y)) | mm::PTE_PCD,
    );

    mm::remap("unmap the test VA", mm::slack_va(si, X), 0);
    let good = mm::pte_rw(mm::slack_mfn(si, Y));
    let p = mm::probe_write(w.pte_va(), good);
    if p.trapped {
        fail!(
            "direct write of a valid PTE {:#x}: vector {} error code {:#x}",
            good,
            p.trap.vector,
            p.trap.error_code
        );
    }
    let got = w.pte_now();
    if got & mm::PTE_CMP_MASK != good & mm::PTE_CMP_MASK {
        fail!(
            "PTE after a valid direct write: {:#x}, expected {:#x}",
            got,
            good
        );
    }
    mm::expect_fill(
        "read through the VA right after the direct PTE write",
        mm::slack_va(si, X),
        mm::seed_of(Y),
    );
    println!(
        "valid direct PTE write: accepted and visible at once (PTE {:#x})",
        got
    );

    let before = w.pte_now();
    if before & mm::PTE_D == 0 {
        fail!("PTE {:#x} lacks D before the clear_bit test", before);
    }
    // SAFETY: a locked byte AND on our own L1 entry, emulated by the hypervisor.
    unsafe {
        asm!("lock and byte ptr [{p}], 0xbf", p = in(reg) w.pte_va());
    }
    check_eq!("PTE after lock and ~D", w.pte_now(), before & !mm::PTE_D);
    println!("lock and byte [pte], ~D: D cleared, nothing else; still running");
}
