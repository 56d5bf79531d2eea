//! Exception handlers, the syscall callback entry, `HYPERVISOR_iret` and user mode.
//!
//! Facts used (Xen `arch/x86/x86_64/entry.S` `create_bounce_frame`, `arch/x86/pv/iret.c`,
//! public `arch-x86/xen-x86_64.h`):
//!
//! * Exception bounce frame on the guest kernel stack, from rsp upwards:
//!   `rcx, r11, [error code], rip, cs, rflags, rsp, ss`. The frame is placed below the
//!   interrupted rsp rounded down to 16 bytes (or below `kernel_sp` when coming from user
//!   mode). The CS slot holds the selector in bits 0-15 with RPL cleared to 0 when the
//!   interrupted context was guest kernel, and the saved `evtchn_upcall_mask` in bits
//!   32-39; RFLAGS.IF in the frame is `!saved mask`.
//! * The syscall callback frame is the same without an error code.
//! * `HYPERVISOR_iret` (23) pops `struct iret_context` from rsp:
//!   `rax, r11, rcx, flags, rip, cs, rflags, rsp, ss`. `(cs & 3) == 3` switches to user
//!   mode (a user L4 must have been set), `flags & VGCF_in_syscall` leaves rcx/r11 alone,
//!   `evtchn_upcall_mask = !rflags.IF`.
//!
//! The handlers are assembly only: they use no SIMD, save what they touch, record the
//! frame into [`PVT_TRAP`], optionally redirect the return (a new rip, or a resume in
//! kernel mode on a given stack), and return with `HYPERVISOR_iret`. A trap that arrives
//! while the record is not armed is reported as a FAILURE.

use core::arch::{asm, global_asm};
use xen_abi::xen::{selector, StartInfo, TrapInfo};

use crate::hypercall::{self, MmuextOp};
use crate::start::Stack;

/// What the last exception bounce looked like, written by the assembly handlers.
/// Field offsets are used from assembly: keep them in sync with `global_asm!` below.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrapRecord {
    /// +0: vector.
    pub vector: u64,
    /// +8: error code, or `u64::MAX` for vectors without one.
    pub error_code: u64,
    /// +16: saved rip.
    pub rip: u64,
    /// +24: saved CS slot (selector in bits 0-15, saved upcall mask in bits 32-39).
    pub cs: u64,
    /// +32: saved rflags.
    pub rflags: u64,
    /// +40: saved rsp.
    pub rsp: u64,
    /// +48: saved ss.
    pub ss: u64,
    /// +56: number of exceptions taken so far.
    pub count: u64,
    /// +64: nonzero when a trap is expected; the handler clears it.
    pub armed: u64,
    /// +72: if nonzero, the rip to return to (cleared by the handler).
    pub resume_rip: u64,
    /// +80: if nonzero, return in guest kernel mode on this rsp (CS 0xe030, SS 0xe02b).
    pub resume_rsp: u64,
    /// +88: address of the frame's rip slot (the bounce frame minus rcx/r11/error code).
    pub frame: u64,
}

/// The record the handlers write (named for assembly).
#[no_mangle]
pub static mut PVT_TRAP: TrapRecord = TrapRecord {
    vector: 0,
    error_code: 0,
    rip: 0,
    cs: 0,
    rflags: 0,
    rsp: 0,
    ss: 0,
    count: 0,
    armed: 0,
    resume_rip: 0,
    resume_rsp: 0,
    frame: 0,
};

/// A copy of the trap record.
pub fn last_trap() -> TrapRecord {
    // SAFETY: single vcpu; the handlers write the record only while a trap is delivered.
    unsafe { core::ptr::read_volatile(&raw const PVT_TRAP) }
}

/// Vectors Xen bounces with an error code (`TRAP_HAVE_EC` minus #DF and #CP).
pub const VECTORS_WITH_ERROR_CODE: &[u8] = &[10, 11, 12, 13, 14, 17];

/// Registers the syscall callback pushes below the frame, then the frame itself.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SyscallFrame {
    #[allow(missing_docs)]
    pub rbp: u64,
    #[allow(missing_docs)]
    pub rbx: u64,
    #[allow(missing_docs)]
    pub r10: u64,
    #[allow(missing_docs)]
    pub r9: u64,
    #[allow(missing_docs)]
    pub r8: u64,
    #[allow(missing_docs)]
    pub rdx: u64,
    #[allow(missing_docs)]
    pub rsi: u64,
    #[allow(missing_docs)]
    pub rdi: u64,
    /// Syscall number on entry; the value user mode sees in rax after the return.
    pub rax: u64,
    /// Bounce frame: user rcx (= return rip, as `syscall` left it).
    pub rcx: u64,
    /// Bounce frame: user r11 (= user rflags, as `syscall` left it).
    pub r11: u64,
    /// Bounce frame: rip to return to.
    pub rip: u64,
    /// Bounce frame: CS slot.
    pub cs: u64,
    /// Bounce frame: rflags.
    pub rflags: u64,
    /// Bounce frame: user rsp.
    pub rsp: u64,
    /// Bounce frame: ss.
    pub ss: u64,
}

/// A syscall callback handler; it runs in guest kernel mode on the `stack_switch` stack.
/// Returning resumes user mode with `HYPERVISOR_iret` and `VGCF_in_syscall`.
pub type SyscallHook = extern "C" fn(&mut SyscallFrame);

extern "C" fn no_syscall_hook(f: &mut SyscallFrame) {
    crate::fail!(
        "syscall callback entered (rax={:#x}, rip={:#x}) but the test set no handler",
        f.rax,
        f.rip
    );
}

/// Called by `pvt_syscall_entry` (named for assembly).
#[no_mangle]
pub static mut PVT_SYSCALL_HOOK: SyscallHook = no_syscall_hook;

/// Sets the Rust function the syscall callback calls.
pub fn set_syscall_hook(hook: SyscallHook) {
    // SAFETY: single vcpu, written before user mode is entered.
    unsafe { core::ptr::write_volatile(&raw mut PVT_SYSCALL_HOOK, hook) };
}

/// Stack for bounce frames from user mode (`stack_switch`).
pub static mut PVT_KERNEL_STACK: Stack<{ 32 * 1024 }> = Stack([0; 32 * 1024]);
/// Stack user-mode code runs on.
pub static mut PVT_USER_STACK: Stack<{ 16 * 1024 }> = Stack([0; 16 * 1024]);

/// Top of [`PVT_KERNEL_STACK`].
pub fn kernel_stack_top() -> u64 {
    (&raw const PVT_KERNEL_STACK) as u64 + 32 * 1024
}

/// Top of [`PVT_USER_STACK`].
pub fn user_stack_top() -> u64 {
    (&raw const PVT_USER_STACK) as u64 + 16 * 1024
}

global_asm!(
    r#"
    .macro PVT_TRAP_STUB vec, ec
    .section .text.pvt_traps, "ax", @progbits
    .p2align 4
    .global pvt_trap_\vec
    .type pvt_trap_\vec, @function
pvt_trap_\vec:
    pop rcx
    pop r11
    push rax
    mov qword ptr [rip + PVT_TRAP], \vec
    .if \ec
    mov rax, [rsp + 8]
    mov [rip + PVT_TRAP + 8], rax
    lea rax, [rsp + 16]
    .else
    mov qword ptr [rip + PVT_TRAP + 8], -1
    lea rax, [rsp + 8]
    .endif
    jmp pvt_trap_common
    .size pvt_trap_\vec, . - pvt_trap_\vec
    .endm

    PVT_TRAP_STUB 0, 0
    PVT_TRAP_STUB 1, 0
    PVT_TRAP_STUB 3, 0
    PVT_TRAP_STUB 4, 0
    PVT_TRAP_STUB 5, 0
    PVT_TRAP_STUB 6, 0
    PVT_TRAP_STUB 7, 0
    PVT_TRAP_STUB 10, 1
    PVT_TRAP_STUB 11, 1
    PVT_TRAP_STUB 12, 1
    PVT_TRAP_STUB 13, 1
    PVT_TRAP_STUB 14, 1
    PVT_TRAP_STUB 16, 0
    PVT_TRAP_STUB 17, 1
    PVT_TRAP_STUB 18, 0
    PVT_TRAP_STUB 19, 0

    .section .text.pvt_traps, "ax", @progbits
    /* rax -> frame rip slot; [rsp] = interrupted rax; rcx, r11 already restored. */
    .p2align 4
pvt_trap_common:
    push rbx
    mov rbx, rax
    mov [rip + PVT_TRAP + 88], rbx
    mov rax, [rbx]
    mov [rip + PVT_TRAP + 16], rax
    mov rax, [rbx + 8]
    mov [rip + PVT_TRAP + 24], rax
    mov rax, [rbx + 16]
    mov [rip + PVT_TRAP + 32], rax
    mov rax, [rbx + 24]
    mov [rip + PVT_TRAP + 40], rax
    mov rax, [rbx + 32]
    mov [rip + PVT_TRAP + 48], rax
    add qword ptr [rip + PVT_TRAP + 56], 1
    cmp qword ptr [rip + PVT_TRAP + 64], 0
    je 5f
    mov qword ptr [rip + PVT_TRAP + 64], 0
    mov rax, [rip + PVT_TRAP + 72]
    test rax, rax
    jz 2f
    mov [rbx], rax
    mov qword ptr [rip + PVT_TRAP + 72], 0
2:
    mov rax, [rip + PVT_TRAP + 80]
    test rax, rax
    jz 3f
    mov [rbx + 24], rax
    mov qword ptr [rbx + 8], {kernel_cs_rpl0}
    mov qword ptr [rbx + 32], {kernel_ss}
    mov qword ptr [rip + PVT_TRAP + 80], 0
3:
    pop rbx
    pop rax
    mov rsp, [rip + PVT_TRAP + 88]
    jmp pvt_iret_frame
5:
    /* Unexpected: make sure SSE works again (virtual CR0.TS clear), then report. */
    xor edi, edi
    mov eax, {fpu_taskswitch}
    syscall
    lea rdi, [rip + PVT_TRAP]
    and rsp, -16
    call {unexpected}
    ud2

    /* rsp -> rip, cs, rflags, rsp, ss; rax, rcx, r11 hold the values to return with. */
    .p2align 4
    .global pvt_iret_frame
pvt_iret_frame:
    push 0
    push rcx
    push r11
    push rax
    mov eax, {iret}
    syscall
    ud2

    /* Syscall callback: rsp -> rcx, r11, rip, cs, rflags, rsp, ss (kernel stack). */
    .p2align 4
    .global pvt_syscall_entry
    .type pvt_syscall_entry, @function
pvt_syscall_entry:
    push rax
    push rdi
    push rsi
    push rdx
    push r8
    push r9
    push r10
    push rbx
    push rbp
    mov rdi, rsp
    mov rbx, rsp
    and rsp, -16
    call qword ptr [rip + PVT_SYSCALL_HOOK]
    mov rsp, rbx
    pop rbp
    pop rbx
    pop r10
    pop r9
    pop r8
    pop rdx
    pop rsi
    pop rdi
    pop rax
    pop rcx
    pop r11
    push {in_syscall}
    push rcx
    push r11
    push rax
    mov eax, {iret}
    syscall
    ud2
    .size pvt_syscall_entry, . - pvt_syscall_entry
    .text
"#,
    kernel_cs_rpl0 = const selector::FLAT_KERNEL_CS & !3,
    kernel_ss = const selector::FLAT_KERNEL_SS,
    fpu_taskswitch = const xen_abi::xen::hypercall::FPU_TASKSWITCH,
    iret = const xen_abi::xen::hypercall::IRET,
    in_syscall = const xen_abi::xen::VGCF_IN_SYSCALL,
    unexpected = sym pvt_unexpected_trap,
);

extern "C" {
    fn pvt_trap_0();
    fn pvt_trap_1();
    fn pvt_trap_3();
    fn pvt_trap_4();
    fn pvt_trap_5();
    fn pvt_trap_6();
    fn pvt_trap_7();
    fn pvt_trap_10();
    fn pvt_trap_11();
    fn pvt_trap_12();
    fn pvt_trap_13();
    fn pvt_trap_14();
    fn pvt_trap_16();
    fn pvt_trap_17();
    fn pvt_trap_18();
    fn pvt_trap_19();
    fn pvt_syscall_entry();
}

/// Address of the syscall callback entry (for `CALLBACKTYPE_syscall`).
pub fn syscall_entry_address() -> u64 {
    pvt_syscall_entry as *const () as usize as u64
}

/// The handler for `vector`, if the runtime has one.
pub fn handler_address(vector: u8) -> Option<u64> {
    let f: unsafe extern "C" fn() = match vector {
        0 => pvt_trap_0,
        1 => pvt_trap_1,
        3 => pvt_trap_3,
        4 => pvt_trap_4,
        5 => pvt_trap_5,
        6 => pvt_trap_6,
        7 => pvt_trap_7,
        10 => pvt_trap_10,
        11 => pvt_trap_11,
        12 => pvt_trap_12,
        13 => pvt_trap_13,
        14 => pvt_trap_14,
        16 => pvt_trap_16,
        17 => pvt_trap_17,
        18 => pvt_trap_18,
        19 => pvt_trap_19,
        _ => return None,
    };
    Some(f as *const () as usize as u64)
}

/// Vectors [`install_trap_table`] registers.
pub const HANDLED_VECTORS: &[u8] = &[0, 1, 3, 4, 5, 6, 7, 10, 11, 12, 13, 14, 16, 17, 18, 19];

/// Registers handlers for all [`HANDLED_VECTORS`] with `set_trap_table`: CS
/// `FLAT_KERNEL_CS`, #BP and #OF with DPL 3 (so `int3`/`into` work from user mode), no
/// event masking. Fails the test if the hypercall does not return 0.
pub fn install_trap_table() {
    let mut table = [TrapInfo::default(); 17];
    for (slot, &v) in table.iter_mut().zip(HANDLED_VECTORS) {
        *slot = TrapInfo {
            vector: v,
            flags: if v == 3 || v == 4 { 3 } else { 0 },
            cs: selector::FLAT_KERNEL_CS,
            _pad: 0,
            address: handler_address(v).unwrap_or(0),
        };
    }
    // The last entry stays all-zero: address 0 ends the table.
    // SAFETY: every address is one of the handlers above.
    let rc = unsafe { hypercall::set_trap_table(&table) };
    crate::check_rc!("set_trap_table", rc, 0);
}

#[no_mangle]
extern "C" fn pvt_unexpected_trap(rec: &TrapRecord) -> ! {
    let ec = if rec.error_code == u64::MAX {
        -1
    } else {
        rec.error_code as i64
    };
    crate::fail!(
        "unexpected exception: vector {} error code {} at rip {:#x} (cs {:#x} rflags {:#x} rsp {:#x} ss {:#x})",
        rec.vector,
        ec,
        rec.rip,
        rec.cs,
        rec.rflags,
        rec.rsp,
        rec.ss
    );
}

/// MFN of the L4 the domain builder gave us: `start_info.pt_base` is its VA in the
/// kernel's 1:1-with-pfns region, the p2m at `start_info.mfn_list` gives the MFN.
pub fn boot_l4_mfn(si: &StartInfo) -> u64 {
    let pfn = (si.pt_base - crate::VIRT_BASE) / crate::PAGE_SIZE;
    // SAFETY: the builder maps the p2m list (nr_pages entries) at mfn_list.
    unsafe { core::ptr::read_volatile((si.mfn_list as *const u64).add(pfn as usize)) }
}

/// Prepares for guest user mode: `stack_switch` to the runtime's kernel stack and
/// `MMUEXT_NEW_USER_BASEPTR` with the boot L4 (which maps everything, user-accessible, so
/// user code can run from the kernel image). Fails the test on any error.
pub fn setup_user_mode(si: &StartInfo) {
    // SAFETY: the stack is reserved for bounce frames from user mode.
    let rc =
        unsafe { hypercall::stack_switch(selector::FLAT_KERNEL_SS as u64, kernel_stack_top()) };
    crate::check_rc!("stack_switch", rc, 0);
    let mfn = boot_l4_mfn(si);
    let op = MmuextOp {
        cmd: xen_abi::xen::mmuext::NEW_USER_BASEPTR,
        _pad: 0,
        arg1: mfn,
        arg2: 0,
    };
    // SAFETY: installs the already pinned boot L4 as the user pagetable.
    let (rc, done) = unsafe { hypercall::mmuext_op(&[op]) };
    if rc != 0 || done != 1 {
        crate::fail!(
            "mmuext_op(MMUEXT_NEW_USER_BASEPTR, mfn {:#x}): returned {}, done {}",
            mfn,
            rc,
            done
        );
    }
}

/// RFLAGS for user mode: IF clear, so `HYPERVISOR_iret` leaves events masked
/// (`evtchn_upcall_mask = !IF`) and no event callback is needed; bit 1 is always set.
pub const USER_RFLAGS: u64 = 0x2;

/// Leaves for user mode at `rip` on `rsp` (`FLAT_USER_CS`/`FLAT_USER_SS` with RPL 3)
/// through `HYPERVISOR_iret`; rax, rcx and r11 start as 0.
///
/// # Safety
/// [`setup_user_mode`] must have run and `rip` must be user-runnable code that never
/// returns here.
pub unsafe fn iret_to_user(rip: u64, rsp: u64, rflags: u64) -> ! {
    // SAFETY: builds a `struct iret_context` on the current stack and calls iret; the
    // caller vouches for the target.
    unsafe {
        asm!(
            "push {ss}",
            "push {usp}",
            "push {fl}",
            "push {cs}",
            "push {ip}",
            "push 0",
            "push rcx",
            "push r11",
            "push rax",
            "mov eax, {iret}",
            "syscall",
            "ud2",
            ss = in(reg) (selector::FLAT_USER_SS | 3) as u64,
            usp = in(reg) rsp,
            fl = in(reg) rflags,
            cs = in(reg) (selector::FLAT_USER_CS | 3) as u64,
            ip = in(reg) rip,
            iret = const xen_abi::xen::hypercall::IRET,
            in("rax") 0u64,
            in("rcx") 0u64,
            in("r11") 0u64,
            options(noreturn),
        )
    }
}
