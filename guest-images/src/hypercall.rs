//! 64-bit PV hypercalls, made inline with `syscall` from guest kernel mode.
//!
//! ABI (Xen public `arch-x86/xen-x86_64.h`, Linux `asm/xen/hypercall.h`): rax = number,
//! arguments in rdi, rsi, rdx, r10, r8; the result comes back in rax. rcx and r11 are
//! clobbered by `syscall`; the argument registers are treated as clobbered too (Xen debug
//! builds scribble over them). The test kernels never call through the hypercall page.

use core::arch::asm;
use xen_abi::xen::hypercall as nr;

pub use xen_abi::version::FeatureInfo;
pub use xen_abi::xen::mmuext::MmuextOp;

/// Numbers the tests need that Xen deliberately leaves undefined, and sizes.
pub mod abi_extra {
    /// `UVMF_INVLPG` (`public/xen.h`): flush the one address after `update_va_mapping`.
    pub const UVMF_INVLPG: u64 = 2;
    /// `XENVER_platform_parameters` result: `struct xen_platform_parameters { xen_ulong_t virt_start; }`.
    pub const PLATFORM_PARAMETERS_LEN: usize = 8;
    /// `CONSOLEIO_*` command number that Xen does not define (for the -ENOSYS checks).
    pub const CONSOLEIO_UNDEFINED: u64 = 99;
    /// `SCHEDOP_*` command number that Xen does not define.
    pub const SCHEDOP_UNDEFINED: u64 = 99;
    /// `XENVER_*` command number that Xen does not define.
    pub const XENVER_UNDEFINED: u64 = 99;
    /// `SEGBASE_*` selector that Xen does not define.
    pub const SEGBASE_UNDEFINED: u64 = 99;
}

/// Makes hypercall `nr` with five arguments.
///
/// # Safety
/// Hypercalls can do anything to the guest (map memory, change stacks, shut it down); the
/// caller vouches for the arguments and any buffers they point to.
#[inline(always)]
pub unsafe fn hypercall5(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64, a5: u64) -> i64 {
    let ret: i64;
    // SAFETY: `syscall` from guest kernel mode enters the hypervisor; registers as per the
    // PV ABI; the caller guarantees the arguments. Memory is clobbered (not `nomem`).
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as i64 => ret,
            inlateout("rdi") a1 => _,
            inlateout("rsi") a2 => _,
            inlateout("rdx") a3 => _,
            inlateout("r10") a4 => _,
            inlateout("r8") a5 => _,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

/// Hypercall with no arguments.
///
/// # Safety
/// See [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall0(nr: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, 0, 0, 0, 0, 0) }
}

/// Hypercall with one argument.
///
/// # Safety
/// See [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall1(nr: u64, a1: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, 0, 0, 0, 0) }
}

/// Hypercall with two arguments.
///
/// # Safety
/// See [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall2(nr: u64, a1: u64, a2: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, 0, 0, 0) }
}

/// Hypercall with three arguments.
///
/// # Safety
/// See [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall3(nr: u64, a1: u64, a2: u64, a3: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, a3, 0, 0) }
}

/// Hypercall with four arguments.
///
/// # Safety
/// See [`hypercall5`].
#[inline(always)]
pub unsafe fn hypercall4(nr: u64, a1: u64, a2: u64, a3: u64, a4: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall5(nr, a1, a2, a3, a4, 0) }
}

/// `HYPERVISOR_console_io(CONSOLEIO_write, len, buf)`.
pub fn console_write(buf: &[u8]) -> i64 {
    // SAFETY: the hypervisor only reads `buf`.
    unsafe {
        hypercall3(
            nr::CONSOLE_IO,
            xen_abi::console::CONSOLEIO_WRITE,
            buf.len() as u64,
            buf.as_ptr() as u64,
        )
    }
}

/// `HYPERVISOR_sched_op(SCHEDOP_shutdown, &{reason})`; returns only if the hypervisor
/// refuses.
pub fn shutdown(reason: u32) -> i64 {
    let arg: u32 = reason;
    // SAFETY: `struct sched_shutdown { unsigned int reason; }` is read by the hypervisor.
    unsafe {
        hypercall2(
            nr::SCHED_OP,
            xen_abi::sched::SCHEDOP_SHUTDOWN,
            &arg as *const u32 as u64,
        )
    }
}

/// `HYPERVISOR_xen_version(cmd, arg)`.
///
/// # Safety
/// `arg` must be null or point to a buffer of the size `cmd` writes.
pub unsafe fn xen_version(cmd: u64, arg: *mut u8) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall2(nr::XEN_VERSION, cmd, arg as u64) }
}

/// `HYPERVISOR_set_trap_table(table)`; the table ends at an entry whose address is 0.
///
/// # Safety
/// Every handler address must be a correct PV exception entry point.
pub unsafe fn set_trap_table(table: &[xen_abi::xen::TrapInfo]) -> i64 {
    // SAFETY: forwarded contract; the hypervisor reads the table.
    unsafe { hypercall1(nr::SET_TRAP_TABLE, table.as_ptr() as u64) }
}

/// `HYPERVISOR_fpu_taskswitch(set)`: sets (1) or clears (0) the virtual CR0.TS.
pub fn fpu_taskswitch(set: bool) -> i64 {
    // SAFETY: only changes when #NM is raised.
    unsafe { hypercall1(nr::FPU_TASKSWITCH, set as u64) }
}

/// `PHYSDEVOP_set_iopl(iopl)`: the virtual IOPL under which guest kernel mode may run
/// port I/O and `cli`/`sti` (`public/physdev.h`: command 6, `struct physdev_set_iopl {
/// u32 iopl; }`).
pub fn set_iopl(iopl: u32) -> i64 {
    const PHYSDEVOP_SET_IOPL: u64 = 6;
    let arg = iopl;
    // SAFETY: the argument is a live u32; the IOPL changes only what port I/O and
    // cli/sti do.
    unsafe {
        hypercall2(
            nr::PHYSDEV_OP,
            PHYSDEVOP_SET_IOPL,
            &arg as *const u32 as u64,
        )
    }
}

/// `HYPERVISOR_stack_switch(ss, sp)`: the kernel stack used on entry from user mode.
///
/// # Safety
/// `sp` must be the top of a stack reserved for bounce frames from user mode.
pub unsafe fn stack_switch(ss: u64, sp: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall2(nr::STACK_SWITCH, ss, sp) }
}

/// `HYPERVISOR_set_segment_base(which, base)`.
///
/// # Safety
/// Changes FS/GS bases the compiler might rely on (these kernels use none).
pub unsafe fn set_segment_base(which: u64, base: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall2(nr::SET_SEGMENT_BASE, which, base) }
}

/// `HYPERVISOR_callback_op(CALLBACKOP_register, &reg)`.
///
/// # Safety
/// `address` must be a correct entry point for the callback type.
pub unsafe fn callback_register(kind: u16, flags: u16, address: u64) -> i64 {
    let reg = xen_abi::callback::CallbackRegister {
        kind,
        flags,
        _pad: 0,
        address,
    };
    // SAFETY: forwarded contract; the hypervisor reads `reg`.
    unsafe {
        hypercall2(
            nr::CALLBACK_OP,
            xen_abi::callback::CALLBACKOP_REGISTER,
            &reg as *const _ as u64,
        )
    }
}

/// `HYPERVISOR_mmuext_op(ops, count, &done, DOMID_SELF)`; returns (rc, done).
///
/// # Safety
/// The operations change the address space.
pub unsafe fn mmuext_op(ops: &[MmuextOp]) -> (i64, u32) {
    let mut done: u32 = 0;
    // SAFETY: forwarded contract; the hypervisor reads `ops` and writes `done`.
    let rc = unsafe {
        hypercall4(
            nr::MMUEXT_OP,
            ops.as_ptr() as u64,
            ops.len() as u64,
            &mut done as *mut u32 as u64,
            xen_abi::xen::DOMID_SELF as u64,
        )
    };
    (rc, done)
}

/// `HYPERVISOR_update_va_mapping(va, pte, flags)`.
///
/// # Safety
/// Changes the address space.
pub unsafe fn update_va_mapping(va: u64, pte: u64, flags: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall3(nr::UPDATE_VA_MAPPING, va, pte, flags) }
}

/// `HYPERVISOR_mmu_update(reqs, count, &done, DOMID_SELF)`; returns (rc, done).
///
/// # Safety
/// The updates change the address space (or the M2P).
pub unsafe fn mmu_update(reqs: &[crate::mm::MmuUpdate]) -> (i64, u32) {
    let mut done: u32 = 0;
    // SAFETY: forwarded contract; the hypervisor reads `reqs` and writes `done`.
    let rc = unsafe {
        hypercall4(
            nr::MMU_UPDATE,
            reqs.as_ptr() as u64,
            reqs.len() as u64,
            &mut done as *mut u32 as u64,
            xen_abi::xen::DOMID_SELF as u64,
        )
    };
    (rc, done)
}

/// `HYPERVISOR_multicall(calls, count)`; each entry's `result` is written back (and, on
/// debug Xen builds, everything else in the entry is scribbled over).
///
/// # Safety
/// Every call in the list is made with the caller's authority.
pub unsafe fn multicall(calls: &mut [crate::mm::MulticallEntry]) -> i64 {
    // SAFETY: forwarded contract; the hypervisor reads and writes `calls`.
    unsafe { hypercall2(nr::MULTICALL, calls.as_mut_ptr() as u64, calls.len() as u64) }
}

/// `HYPERVISOR_memory_op(cmd, arg)`.
///
/// # Safety
/// `arg` must point to the record `cmd` reads and writes (or be what `cmd` expects).
pub unsafe fn memory_op(cmd: u64, arg: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall2(nr::MEMORY_OP, cmd, arg) }
}

/// `HYPERVISOR_set_gdt(frames, entries)`: `frames` are MFNs (one per 512 entries).
///
/// # Safety
/// The frames become the guest GDT.
pub unsafe fn set_gdt(frames: &[u64], entries: u64) -> i64 {
    // SAFETY: forwarded contract; the hypervisor reads `frames`.
    unsafe { hypercall2(nr::SET_GDT, frames.as_ptr() as u64, entries) }
}

/// `HYPERVISOR_update_descriptor(ma, desc)`: `ma` is the machine address of the 8-byte
/// descriptor slot.
///
/// # Safety
/// Changes a descriptor table.
pub unsafe fn update_descriptor(ma: u64, desc: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall2(nr::UPDATE_DESCRIPTOR, ma, desc) }
}

/// `HYPERVISOR_vm_assist(cmd, type)`.
pub fn vm_assist(cmd: u64, kind: u64) -> i64 {
    // SAFETY: only switches a VM assist on or off.
    unsafe { hypercall2(nr::VM_ASSIST, cmd, kind) }
}
