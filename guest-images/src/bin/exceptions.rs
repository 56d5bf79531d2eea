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

use core::arch::asm;
use pv_test_kernels::traps::{install_trap_table, last_trap, TrapRecord};
use pv_test_kernels::xen_abi::xen::selector;
use pv_test_kernels::{check_eq, fail, println, test_kernel, StartInfo};

test_kernel!(main);

const R12_MAGIC: u64 = 0x5a5a_1234_8765_a5a5;
const NO_EC: u64 = u64::MAX;

/// Where the trigger put things: fault rip, resume rip, rsp at the instruction, r12 after.
struct Shot {
    fault: u64,
    after: u64,
    sp: u64,
    r12: u64,
}

/// Arms the handlers (resume at the label after the instruction), runs `$setup` then the
/// faulting `$insn`. The handlers preserve all registers; the explicit clobbers cover the
/// setup code (which may make a hypercall).
macro_rules! shoot {
    ($setup:literal, $insn:literal) => {{
        let fault: u64;
        let after: u64;
        let sp: u64;
        let r12: u64;
        // SAFETY: the trap table is installed and armed; the handler returns to label 3.
        unsafe {
            asm!(
                "lea {f}, [rip + 2f]",
                "lea {a}, [rip + 3f]",
                "mov [rip + PVT_TRAP + 72], {a}",
                "mov qword ptr [rip + PVT_TRAP + 64], 1",
                $setup,
                "mov {s}, rsp",
                "2:",
                $insn,
                "3:",
                f = out(reg) fault,
                a = out(reg) after,
                s = out(reg) sp,
                inout("r12") R12_MAGIC => r12,
                out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                out("xmm0") _, out("xmm1") _,
            );
        }
        Shot { fault, after, sp, r12 }
    }};
}

fn check(name: &str, before: u64, shot: &Shot, vector: u64, ec: u64, trap_like: bool) {
    let t: TrapRecord = last_trap();
    if t.count != before + 1 {
        fail!(
            "{}: {} exceptions delivered, expected 1",
            name,
            t.count.wrapping_sub(before)
        );
    }
    if t.vector != vector {
        fail!("{}: vector {}, expected {}", name, t.vector, vector);
    }
    if t.error_code != ec {
        if ec == NO_EC {
            fail!(
                "{}: frame has error code {:#x}, expected none",
                name,
                t.error_code
            );
        } else if t.error_code == NO_EC {
            fail!("{}: no error code, expected {:#x}", name, ec);
        }
        fail!(
            "{}: error code {:#x}, expected {:#x}",
            name,
            t.error_code,
            ec
        );
    }
    let want_rip = if trap_like { shot.after } else { shot.fault };
    if t.rip != want_rip {
        fail!(
            "{}: saved rip {:#x}, expected {:#x} ({} the instruction at {:#x})",
            name,
            t.rip,
            want_rip,
            if trap_like { "after" } else { "at" },
            shot.fault
        );
    }
    let kcs = (selector::FLAT_KERNEL_CS & !3) as u64;
    if t.cs & 0xffff != kcs {
        fail!(
            "{}: saved CS {:#x}, expected {:#x} (FLAT_KERNEL_CS with RPL 0: interrupted guest kernel)",
            name,
            t.cs & 0xffff,
            kcs
        );
    }
    let mask = (t.cs >> 32) & 0xff;
    if mask != 1 {
        fail!(
            "{}: saved upcall mask (CS slot bits 32-39) {}, expected 1 (events masked)",
            name,
            mask
        );
    }
    if t.rflags & 0x200 != 0 {
        fail!(
            "{}: saved RFLAGS {:#x} has IF set, expected clear (events were masked)",
            name,
            t.rflags
        );
    }
    check_eq!("saved SS", t.ss & 0xffff, selector::FLAT_KERNEL_SS as u64);
    if t.rsp != shot.sp {
        fail!("{}: saved rsp {:#x}, expected {:#x}", name, t.rsp, shot.sp);
    }
    if t.frame + 40 != shot.sp & !15 {
        fail!(
            "{}: bounce frame ends at {:#x}, expected {:#x} (interrupted rsp rounded down to 16)",
            name,
            t.frame + 40,
            shot.sp & !15
        );
    }
    if shot.r12 != R12_MAGIC {
        fail!(
            "{}: r12 {:#x} after the exception returned, expected {:#x}",
            name,
            shot.r12,
            R12_MAGIC
        );
    }
    println!("{}: ok (rip {:#x}, cs slot {:#x})", name, t.rip, t.cs);
}

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
