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
//!
//! Port I/O to pvkvm's hypercall doorbell port (0xe1, open to ring 3 in the I/O bitmap
//! for the shim's stub) from the guest's own code is the guest's denied port I/O: #GP(0)
//! at the instruction, as Xen gives it, for `in` and `out`, immediate and dx forms, and
//! an `in` changes nothing: not rax (`in eax`), and a `rep insb` (two chunks' worth)
//! neither rcx, rdi nor the buffer. A `rep outsb` faults at the instruction with at most
//! one element done (Xen faults before any; the element's data goes nowhere), rcx and
//! rsi counting it, as a fault in the middle of a `rep` leaves them.
#![no_std]
#![no_main]

use core::arch::asm;

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
    let s = shoot!("mov eax, 0x5a5a", "in al, 0xe1");
    check("#GP (in al, 0xe1: the doorbell port)", n, &s, 13, 0, false);

    let n = last_trap().count;
    let s = shoot!("mov eax, 0x5a5a", "out 0xe1, al");
    check("#GP (out 0xe1, al: the doorbell port)", n, &s, 13, 0, false);

    let n = last_trap().count;
    let s = shoot!("mov edx, 0xe1", "in al, dx");
    check("#GP (in al, dx: the doorbell port)", n, &s, 13, 0, false);

    doorbell_in_changes_nothing();

    let n = last_trap().count;
    let s = shoot!("", "mov rdx, qword ptr [0x10000]");
    check("#PF (read of unmapped 0x10000)", n, &s, 14, 0, false);
}

/// The buffer a denied `rep insb` must leave alone (more than one 4 KiB chunk of KVM's).
static mut INS_BUFFER: [u8; 6000] = [0x5a; 6000];

/// `in eax, 0xe1` and `rep insb` from port 0xe1 raise #GP(0) and change no register and
/// no memory; `rep outsb` to it raises #GP(0) at the instruction.
fn doorbell_in_changes_nothing() {
    const RAX: u64 = 0x1122_3344_5566_7788;
    let n = last_trap().count;
    let rax: u64;
    // SAFETY: the trap table is installed; the armed handler returns to label 3.
    unsafe {
        asm!(
            "lea {a}, [rip + 3f]",
            "mov [rip + PVT_TRAP + 72], {a}",
            "mov qword ptr [rip + PVT_TRAP + 64], 1",
            "in eax, 0xe1",
            "3:",
            a = out(reg) _,
            inout("rax") RAX => rax,
        );
    }
    let t = last_trap();
    if t.count != n + 1 || t.vector != 13 || t.error_code != 0 {
        pv_test_kernels::fail!(
            "in eax, 0xe1: {} exceptions, vector {}, error code {:#x}; expected one #GP(0)",
            t.count - n,
            t.vector,
            t.error_code
        );
    }
    pv_test_kernels::check_eq!("rax after a denied in eax, 0xe1", rax, RAX);

    let n = last_trap().count;
    let buffer = (&raw mut INS_BUFFER).cast::<u8>();
    const COUNT: u64 = 5000;
    let (rcx, rdi): (u64, u64);
    // SAFETY: as above; `rep insb` would write COUNT bytes inside INS_BUFFER.
    unsafe {
        asm!(
            "lea {a}, [rip + 3f]",
            "mov [rip + PVT_TRAP + 72], {a}",
            "mov qword ptr [rip + PVT_TRAP + 64], 1",
            "cld",
            "rep insb",
            "3:",
            a = out(reg) _,
            in("dx") 0xe1u16,
            inout("rcx") COUNT => rcx,
            inout("rdi") buffer.wrapping_add(500) => rdi,
        );
    }
    let t = last_trap();
    if t.count != n + 1 || t.vector != 13 || t.error_code != 0 {
        pv_test_kernels::fail!(
            "rep insb from 0xe1: {} exceptions, vector {}, error code {:#x}; expected one #GP(0)",
            t.count - n,
            t.vector,
            t.error_code
        );
    }
    pv_test_kernels::check_eq!("rcx after a denied rep insb", rcx, COUNT);
    pv_test_kernels::check_eq!(
        "rdi after a denied rep insb",
        rdi,
        buffer.wrapping_add(500) as u64
    );
    let changed = (0..6000)
        // SAFETY: inside INS_BUFFER; single vCPU, nothing else writes it.
        .filter(|&i| unsafe { buffer.add(i).read_volatile() } != 0x5a)
        .count();
    pv_test_kernels::check_eq!("bytes a denied rep insb changed", changed, 0);

    let n = last_trap().count;
    let (rcx, rsi, at): (u64, u64, u64);
    // SAFETY: as above; `rep outsb` reads inside INS_BUFFER.
    unsafe {
        asm!(
            "lea {a}, [rip + 3f]",
            "mov [rip + PVT_TRAP + 72], {a}",
            "mov qword ptr [rip + PVT_TRAP + 64], 1",
            "lea {f}, [rip + 2f]",
            "cld",
            "2:",
            "rep outsb",
            "3:",
            a = out(reg) _,
            f = out(reg) at,
            in("dx") 0xe1u16,
            inout("rcx") COUNT => rcx,
            inout("rsi") buffer.wrapping_add(500) => rsi,
        );
    }
    let t = last_trap();
    if t.count != n + 1 || t.vector != 13 || t.error_code != 0 {
        pv_test_kernels::fail!(
            "rep outsb to 0xe1: {} exceptions, vector {}, error code {:#x}; expected one #GP(0)",
            t.count - n,
            t.vector,
            t.error_code
        );
    }
    pv_test_kernels::check_eq!("rip of the #GP of a rep outsb", t.rip, at);
    let done = COUNT - rcx;
    if rsi != buffer as u64 + 500 + done || done > 1 {
        pv_test_kernels::fail!(
            "rep outsb to 0xe1: rcx {} and rsi {:#x} after the #GP (start {:#x}, {} elements)",
            rcx,
            rsi,
            buffer as u64 + 500,
            COUNT
        );
    }
    pv_test_kernels::println!(
        "port 0xe1: in eax and rep insb raise #GP(0) and change nothing; rep outsb #GP(0) after {} element(s)",
        done
    );
}
