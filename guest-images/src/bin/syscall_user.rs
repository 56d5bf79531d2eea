//! `syscall_user`: guest user mode entry with `HYPERVISOR_iret` and the syscall callback.
//!
//! Sets the kernel stack (`stack_switch`), registers a syscall callback
//! (`callback_op(CALLBACKOP_register, CALLBACKTYPE_syscall)`), installs the boot L4 as the
//! user pagetable (`MMUEXT_NEW_USER_BASEPTR`) and irets to user code (CS 0xe033 and SS
//! 0xe02b with RPL 3) on a separate user stack. The user code runs `syscall` with rax 42;
//! the callback (guest kernel mode, on the `stack_switch` stack) asserts rax 42, a frame
//! CS with RPL 3 and SS 0xe02b|3, the user rip after the `syscall` instruction (also in
//! rcx, as `syscall` left it), the user rsp and that it runs on the kernel stack; it
//! returns with `HYPERVISOR_iret` and `VGCF_in_syscall`. The user code checks it got the
//! callback's return value in rax and that its callee-saved registers survived, then
//! runs `syscall` with rax 24, rdi 3, rsi 1 (the registers of `vcpu_op(VCPUOP_is_up, 1)`,
//! which the shim answers itself when the guest kernel asks) and the callback, seeing
//! them unchanged, ends the test with SUCCESS: a user `syscall` always reaches the
//! guest kernel.
#![no_std]
#![no_main]

use core::arch::global_asm;
use pv_test_kernels::traps::{
    iret_to_user, kernel_stack_top, set_syscall_hook, setup_user_mode, user_stack_top,
    SyscallFrame, USER_RFLAGS,
};
use pv_test_kernels::xen_abi::{callback, xen::selector};
use pv_test_kernels::{check_rc, console, fail, hypercall, println, test_kernel, StartInfo};

test_kernel!(main);

const RET_42: u64 = 0x4242_0000_0000_4242;
const RBX_MAGIC: u64 = 0x0bb0_0bb0_0bb0_0bb0;

// User-mode code. rax after the first syscall must be RET_42 and rbx must survive; on a
// mismatch it makes syscall 44 carrying the bad values in rdi/rsi.
global_asm!(
    r#"
    .section .text.user, "ax", @progbits
    .global user_main
user_main:
    mov rbx, {rbx_magic}
    mov eax, 42
    syscall
    .global user_syscall1_ret
user_syscall1_ret:
    mov rcx, {ret42}
    cmp rax, rcx
    jne 4f
    mov rcx, {rbx_magic}
    cmp rbx, rcx
    jne 4f
    mov eax, 24
    mov edi, 3
    mov esi, 1
    syscall
    ud2
4:
    mov rdi, rax
    mov rsi, rbx
    mov eax, 44
    syscall
    ud2
    .text
"#,
    rbx_magic = const RBX_MAGIC,
    ret42 = const RET_42,
);

extern "C" {
    fn user_main();
    static user_syscall1_ret: u8;
}

static mut USER_RSP: u64 = 0;
static mut STAGE: u32 = 0;

extern "C" fn on_syscall(f: &mut SyscallFrame) {
    // SAFETY: single vcpu; only the callback and main touch these.
    let stage = unsafe { core::ptr::read_volatile(&raw const STAGE) };
    // SAFETY: only the address of the assembly label is taken.
    let ret1 = unsafe { &user_syscall1_ret as *const u8 as u64 };
    let user_cs = (selector::FLAT_USER_CS | 3) as u64;
    let user_ss = (selector::FLAT_USER_SS | 3) as u64;
    if f.cs & 0xffff != user_cs {
        fail!(
            "syscall #{}: frame CS {:#x}, expected {:#x} (RPL 3: came from user mode)",
            stage,
            f.cs & 0xffff,
            user_cs
        );
    }
    if f.ss & 0xffff != user_ss {
        fail!(
            "syscall #{}: frame SS {:#x}, expected {:#x}",
            stage,
            f.ss & 0xffff,
            user_ss
        );
    }
    let here = f as *const SyscallFrame as u64;
    let top = kernel_stack_top();
    if here >= top || here < top - 4096 {
        fail!(
            "syscall #{}: callback frame at {:#x}, expected just below the stack_switch stack top {:#x}",
            stage,
            here,
            top
        );
    }
    match stage {
        0 => {
            if f.rax != 42 {
                fail!("first syscall: rax {:#x}, expected 42", f.rax);
            }
            if f.rip != ret1 {
                fail!("first syscall: frame rip {:#x}, expected {:#x} (after the syscall)", f.rip, ret1);
            }
            if f.rcx != ret1 {
                fail!("first syscall: frame rcx {:#x}, expected {:#x} (syscall's return rip)", f.rcx, ret1);
            }
            // SAFETY: one vCPU; the static is written by the user-mode code that ran before this handler.
            let usp = unsafe { core::ptr::read_volatile(&raw const USER_RSP) };
            if f.rsp != usp {
                fail!("first syscall: frame rsp {:#x}, expected the user rsp {:#x}", f.rsp, usp);
            }
            println!("syscall 42 from user mode: rip {:#x} cs {:#x} rsp {:#x}", f.rip, f.cs, f.rsp);
            // SAFETY: one vCPU; the handler and the main flow never run at the same time.
            unsafe { core::ptr::write_volatile(&raw mut STAGE, 1) };
            f.rax = RET_42;
        }
        _ => match f.rax {
            24 if f.rdi == 3 && f.rsi == 1 => {
                println!("syscall 24 (rdi 3, rsi 1) from user mode after an iret(VGCF_in_syscall) round trip: reached the kernel");
                console::succeed();
            }
            44 => fail!(
                "user mode after the first syscall: rax {:#x} (expected {:#x}), rbx {:#x} (expected {:#x})",
                f.rdi,
                RET_42,
                f.rsi,
                RBX_MAGIC
            ),
            other => fail!("second syscall: rax {:#x}, expected 43", other),
        },
    }
}

fn main(si: &'static StartInfo) {
    pv_test_kernels::traps::install_trap_table();
    set_syscall_hook(on_syscall);
    setup_user_mode(si);
    // SAFETY: the entry point is the runtime's syscall callback stub.
    let rc = unsafe {
        hypercall::callback_register(
            callback::CALLBACKTYPE_SYSCALL,
            0,
            pv_test_kernels::traps::syscall_entry_address(),
        )
    };
    check_rc!(
        "callback_op(CALLBACKOP_register, CALLBACKTYPE_syscall)",
        rc,
        0
    );
    let usp = user_stack_top() - 64;
    // SAFETY: single vcpu.
    unsafe { core::ptr::write_volatile(&raw mut USER_RSP, usp) };
    println!("entering user mode");
    // SAFETY: user_main is user-runnable code that only leaves through syscalls.
    unsafe { iret_to_user(user_main as *const () as u64, usp, USER_RFLAGS) }
}
