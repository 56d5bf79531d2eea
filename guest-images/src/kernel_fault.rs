//! The harness of the kernel-mode exception kernels (`exceptions`, `fpu_taskswitch`):
//! raise one exception at a known instruction, let the trap-table handlers record it and
//! resume after it, and check the bounce frame Xen would have built.

use crate::traps::{last_trap, TrapRecord};
use crate::xen_abi::xen::selector;

/// What r12 holds across the faulting instruction (the handlers must keep it).
pub const R12_MAGIC: u64 = 0x5a5a_1234_8765_a5a5;
/// "This vector pushes no error code."
pub const NO_EC: u64 = u64::MAX;

/// Where the trigger put things: fault rip, resume rip, rsp at the instruction, r12 after.
pub struct Shot {
    /// rip of the faulting instruction.
    pub fault: u64,
    /// rip after it (where the handlers resume).
    pub after: u64,
    /// rsp at the instruction.
    pub sp: u64,
    /// r12 after the exception returned.
    pub r12: u64,
}

/// Arms the handlers (resume at the label after the instruction), runs `$setup` then the
/// faulting `$insn`. The handlers preserve all registers; the explicit clobbers cover the
/// setup code (which may make a hypercall).
#[macro_export]
macro_rules! shoot {
    ($setup:literal, $insn:literal) => {{
        let fault: u64;
        let after: u64;
        let sp: u64;
        let r12: u64;
        // SAFETY: the trap table is installed and armed; the handler returns to label 3.
        unsafe {
            core::arch::asm!(
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
                inout("r12") $crate::kernel_fault::R12_MAGIC => r12,
                out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
                out("r8") _, out("r9") _, out("r10") _, out("r11") _,
                out("xmm0") _, out("xmm1") _,
            );
        }
        $crate::kernel_fault::Shot { fault, after, sp, r12 }
    }};
}

/// Checks one exception against Xen's bounce-frame rules (see the `exceptions` kernel).
pub fn check(name: &str, before: u64, shot: &Shot, vector: u64, ec: u64, trap_like: bool) {
    let t: TrapRecord = last_trap();
    if t.count != before + 1 {
        crate::fail!(
            "{}: {} exceptions delivered, expected 1",
            name,
            t.count.wrapping_sub(before)
        );
    }
    if t.vector != vector {
        crate::fail!("{}: vector {}, expected {}", name, t.vector, vector);
    }
    if t.error_code != ec {
        if ec == NO_EC {
            crate::fail!(
                "{}: frame has error code {:#x}, expected none",
                name,
                t.error_code
            );
        } else if t.error_code == NO_EC {
            crate::fail!("{}: no error code, expected {:#x}", name, ec);
        }
        crate::fail!(
            "{}: error code {:#x}, expected {:#x}",
            name,
            t.error_code,
            ec
        );
    }
    let want_rip = if trap_like { shot.after } else { shot.fault };
    if t.rip != want_rip {
        crate::fail!(
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
        crate::fail!(
            "{}: saved CS {:#x}, expected {:#x} (FLAT_KERNEL_CS with RPL 0: interrupted guest kernel)",
            name,
            t.cs & 0xffff,
            kcs
        );
    }
    let mask = (t.cs >> 32) & 0xff;
    if mask != 1 {
        crate::fail!(
            "{}: saved upcall mask (CS slot bits 32-39) {}, expected 1 (events masked)",
            name,
            mask
        );
    }
    if t.rflags & 0x200 != 0 {
        crate::fail!(
            "{}: saved RFLAGS {:#x} has IF set, expected clear (events were masked)",
            name,
            t.rflags
        );
    }
    crate::check_eq!("saved SS", t.ss & 0xffff, selector::FLAT_KERNEL_SS as u64);
    if t.rsp != shot.sp {
        crate::fail!("{}: saved rsp {:#x}, expected {:#x}", name, t.rsp, shot.sp);
    }
    if t.frame + 40 != shot.sp & !15 {
        crate::fail!(
            "{}: bounce frame ends at {:#x}, expected {:#x} (interrupted rsp rounded down to 16)",
            name,
            t.frame + 40,
            shot.sp & !15
        );
    }
    if shot.r12 != R12_MAGIC {
        crate::fail!(
            "{}: r12 {:#x} after the exception returned, expected {:#x}",
            name,
            shot.r12,
            R12_MAGIC
        );
    }
    crate::println!("{}: ok (rip {:#x}, cs slot {:#x})", name, t.rip, t.cs);
}
