//! `fpu_taskswitch`: #NM after `fpu_taskswitch(1)`, bounced with Xen's frame, and SSE
//! working again after `fpu_taskswitch(0)`. Same harness as `exceptions`.
//!
//! Registers handlers for the architectural exceptions (trap_info {vector, flags, cs
//! 0xe033, address}, #BP with DPL 3, table ended by a zero entry) and raises, one at a
//! time: #DE (`div` by zero), #BP (`int3`), #UD (`ud2`), #GP (`hlt`, privileged at CPL3:
//! error code 0) and #PF (read of the unmapped user address 0x10000); #NM has its own
//! kernel, `fpu_taskswitch`. For each it asserts that exactly one exception
//! arrived, with the right vector and error code (#PF: 0, because Xen re-sets the U bit
//! from the guest's mode and this read is made in guest kernel mode), the faulting rip
//! (for #BP: the rip after `int3`), CS 0xe030 (RPL cleared: interrupted guest kernel) with
//! the saved upcall mask 1 in bits 32-39 (events stay masked at boot) and RFLAGS.IF 0,
//! SS 0xe02b, the interrupted rsp, a frame placed right below the interrupted rsp rounded
//! down to 16 bytes, and that execution resumes after the instruction with the
//! registers intact (r12 is checked).
#![no_std]
#![no_main]

use core::arch::asm;
use pv_test_kernels::kernel_fault::{check, NO_EC};
use pv_test_kernels::shoot;
use pv_test_kernels::traps::{install_trap_table, last_trap};
use pv_test_kernels::{check_eq, check_rc, hypercall, test_kernel, StartInfo};

test_kernel!(main);

fn main(_si: &'static StartInfo) {
    install_trap_table();

    let n = last_trap().count;
    let s = shoot!("mov edi, 1\n mov eax, 5\n syscall", "movaps xmm1, xmm0");
    check("#NM (SSE after fpu_taskswitch(1))", n, &s, 7, NO_EC, false);
    check_rc!("fpu_taskswitch(0)", hypercall::fpu_taskswitch(false), 0);
    let n = last_trap().count;
    let v: u64;
    // SAFETY: plain SSE register moves; TS is clear again.
    unsafe {
        asm!(
            "mov {t}, 0x1234", "movq xmm0, {t}", "movaps xmm1, xmm0", "movq {v}, xmm1",
            t = out(reg) _, v = out(reg) v, out("xmm0") _, out("xmm1") _,
        );
    }
    check_eq!("SSE after fpu_taskswitch(0)", v, 0x1234u64);
    check_eq!(
        "exceptions during SSE after fpu_taskswitch(0)",
        last_trap().count,
        n
    );
}
