//! `exceptions`: `set_trap_table` and exception bounce frames from guest kernel mode.
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

use pv_test_kernels::kernel_fault::{check, NO_EC};
use pv_test_kernels::shoot;
use pv_test_kernels::traps::{install_trap_table, last_trap};
use pv_test_kernels::{test_kernel, StartInfo};

test_kernel!(main);

fn main(_si: &'static StartInfo) {
    install_trap_table();

    let n = last_trap().count;
    let s = shoot!("xor edx, edx\n mov eax, 1\n xor ecx, ecx", "div rcx");
    check("#DE (div by zero)", n, &s, 0, NO_EC, false);

    let n = last_trap().count;
    let s = shoot!("", "int3");
    check("#BP (int3)", n, &s, 3, NO_EC, true);

    let n = last_trap().count;
    let s = shoot!("", "ud2");
    check("#UD (ud2)", n, &s, 6, NO_EC, false);

    let n = last_trap().count;
    let s = shoot!("", "hlt");
    check("#GP (hlt in guest kernel mode)", n, &s, 13, 0, false);

    let n = last_trap().count;
    let s = shoot!("", "mov rdx, qword ptr [0x10000]");
    check("#PF (read of unmapped 0x10000)", n, &s, 14, 0, false);
}
