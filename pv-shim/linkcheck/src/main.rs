//! The link check of issue 14, item 3: the engine (`pv-engine`) and the pagetable engine
//! (`pv-mm`) linked into a freestanding image with the ring-0 shim's flags, as the
//! second placement (the engine inside the VM) will link them.
//!
//! What a successful link proves (check.sh builds it and inspects the image):
//!
//! - **No allocation is reachable from the engine's entry points.** The image has a
//!   global allocator whose every method calls `pvkvm_linkcheck_allocation_reached`, a
//!   symbol nothing defines. The image is linked with LTO and `--gc-sections` from one
//!   root, `_start`, which calls the entry points below; code that no root reaches is
//!   dropped before symbols are resolved, so the undefined symbol is referenced (and the
//!   link fails, naming the function that allocates) exactly when some path from an
//!   entry point may allocate. A `Vec`, `Box` or `BTreeMap` left on a hypercall, trap or
//!   pagetable path breaks this link.
//! - **Nothing is left to a default.** The host's side (`Platform`, `FrameAccess`) is
//!   implemented here method by method over `extern "C"` functions: the engine's traits
//!   have no default bodies that could stand in for the host silently.
//! - **The image carries no SSE.** Built with SSE disabled (as the shim must be: guest
//!   vector registers are live while it runs); check.sh disassembles the image and fails
//!   on any xmm/ymm/zmm register.
//! - **`memcpy` and friends are supplied**, as a freestanding image must supply them
//!   (there is no libc; `compiler_builtins`' `mem` implementations are enabled only for
//!   targets without a libc, and enabling them here needs `-Zbuild-std-features` on a
//!   nightly toolchain). They are `rep movsb`/`rep stosb`/`repe cmpsb` in assembly, so
//!   the compiler cannot turn them back into calls to themselves and they use no SSE.
//!
//! The host functions are assembly stubs (they return 0) so the image links; being
//! opaque to the optimiser, they keep every engine path that depends on their results
//! reachable. The image is never run.

#![no_std]
#![no_main]

use core::alloc::{GlobalAlloc, Layout};

use pv_engine::mmu::BatchFlush;
use pv_engine::vcpu_context::NewVcpu;
use pv_engine::{Domain, GuestRegs, MmCtx, Outcome, PhysError, Platform, Stats, Trap, Vcpu};
use pv_mm::{FrameAccess, Mfn, Mm};

// The host's side, as the shim would provide it (here: stubs in `HOST_STUBS` below).
extern "C" {
    /// Defined nowhere: referenced only by the global allocator (see the module docs).
    /// It returns a pointer, not `!`: the compiler may delete an allocator call whose
    /// result leads only to code that cannot return, so a diverging allocator would
    /// hide real allocations from the link.
    fn pvkvm_linkcheck_allocation_reached(size: usize, align: usize) -> *mut u8;
    fn pvkvm_lc_read_phys(gpa: u64, buf: *mut u8, len: usize) -> u64;
    fn pvkvm_lc_write_phys(gpa: u64, buf: *const u8, len: usize) -> u64;
    fn pvkvm_lc_atomic_or(gpa: u64, bits: u64, old: *mut u64) -> u64;
    fn pvkvm_lc_atomic_and(gpa: u64, mask: u64, old: *mut u64) -> u64;
    fn pvkvm_lc_kick_vcpu(id: u32);
    fn pvkvm_lc_vcpu_initialised(id: u32, new: *const core::ffi::c_void);
    fn pvkvm_lc_console_write(buf: *const u8, len: usize);
    fn pvkvm_lc_console_read(buf: *mut u8, len: usize) -> usize;
    fn pvkvm_lc_preempt_check() -> u64;
    fn pvkvm_lc_cpuid(leaf: u32, subleaf: u32, out: *mut [u32; 4]);
    fn pvkvm_lc_set_xcr0(xcr0: u64) -> u64;
    fn pvkvm_lc_arch_capabilities() -> u64;
    fn pvkvm_lc_notify_backend(port: u32);
    fn pvkvm_lc_system_time_ns() -> u64;
    fn pvkvm_lc_msr_effect(effect: *const core::ffi::c_void);
    fn pvkvm_lc_read_m2p(offset: u64, buf: *mut u8, len: usize) -> u64;
    fn pvkvm_lc_read_entry(mfn: Mfn, slot: usize) -> u64;
    fn pvkvm_lc_write_entry(mfn: Mfn, slot: usize, value: u64);
    fn pvkvm_lc_copy_frame(dst: Mfn, src: Mfn);
    fn pvkvm_lc_clear_frame(mfn: Mfn);
    fn pvkvm_lc_write_m2p(mfn: Mfn, pfn: u64);
    fn pvkvm_lc_state(which: u32) -> *mut u8;
    fn pvkvm_lc_halt() -> !;
}

// The host stubs: every one returns 0 (`pvkvm_lc_halt` stops). Assembly, so the
// optimiser knows nothing of what they return.
core::arch::global_asm!(
    ".pushsection .text.pvkvm_lc_stubs, \"ax\"",
    ".globl pvkvm_lc_read_phys, pvkvm_lc_write_phys, pvkvm_lc_atomic_or, pvkvm_lc_atomic_and",
    ".globl pvkvm_lc_kick_vcpu, pvkvm_lc_vcpu_initialised, pvkvm_lc_console_write",
    ".globl pvkvm_lc_console_read, pvkvm_lc_preempt_check, pvkvm_lc_cpuid, pvkvm_lc_set_xcr0",
    ".globl pvkvm_lc_arch_capabilities, pvkvm_lc_notify_backend, pvkvm_lc_system_time_ns",
    ".globl pvkvm_lc_msr_effect, pvkvm_lc_read_m2p, pvkvm_lc_read_entry, pvkvm_lc_write_entry",
    ".globl pvkvm_lc_copy_frame, pvkvm_lc_clear_frame, pvkvm_lc_write_m2p, pvkvm_lc_state",
    ".globl pvkvm_lc_halt",
    "pvkvm_lc_read_phys:",
    "pvkvm_lc_write_phys:",
    "pvkvm_lc_atomic_or:",
    "pvkvm_lc_atomic_and:",
    "pvkvm_lc_kick_vcpu:",
    "pvkvm_lc_vcpu_initialised:",
    "pvkvm_lc_console_write:",
    "pvkvm_lc_console_read:",
    "pvkvm_lc_preempt_check:",
    "pvkvm_lc_cpuid:",
    "pvkvm_lc_set_xcr0:",
    "pvkvm_lc_arch_capabilities:",
    "pvkvm_lc_notify_backend:",
    "pvkvm_lc_system_time_ns:",
    "pvkvm_lc_msr_effect:",
    "pvkvm_lc_read_m2p:",
    "pvkvm_lc_read_entry:",
    "pvkvm_lc_write_entry:",
    "pvkvm_lc_copy_frame:",
    "pvkvm_lc_clear_frame:",
    "pvkvm_lc_write_m2p:",
    "pvkvm_lc_state:",
    "    xor eax, eax",
    "    ret",
    "pvkvm_lc_halt:",
    "    hlt",
    "    jmp pvkvm_lc_halt",
    ".popsection",
);

// memcpy, memmove, memset, memcmp, bcmp: string instructions, no SSE, and nothing the
// compiler could turn back into a call to the function itself. The ABI has the
// direction flag clear on entry and exit.
core::arch::global_asm!(
    ".pushsection .text.pvkvm_lc_mem, \"ax\"",
    ".globl memcpy, memmove, memset, memcmp, bcmp",
    // memcpy(rdi = dst, rsi = src, rdx = n) -> dst
    "memcpy:",
    "    mov rax, rdi",
    "    mov rcx, rdx",
    "    rep movsb",
    "    ret",
    // memmove: forwards unless dst lies inside [src, src + n), then backwards.
    "memmove:",
    "    mov rax, rdi",
    "    mov rcx, rdx",
    "    mov r8, rdi",
    "    sub r8, rsi",
    "    cmp r8, rdx",
    "    jb 2f",
    "    rep movsb",
    "    ret",
    "2:",
    "    lea rsi, [rsi + rdx - 1]",
    "    lea rdi, [rdi + rdx - 1]",
    "    std",
    "    rep movsb",
    "    cld",
    "    ret",
    // memset(rdi = dst, esi = byte, rdx = n) -> dst
    "memset:",
    "    mov r8, rdi",
    "    mov eax, esi",
    "    mov rcx, rdx",
    "    rep stosb",
    "    mov rax, r8",
    "    ret",
    // memcmp(rdi = a, rsi = b, rdx = n): the difference of the first unequal bytes.
    "memcmp:",
    "bcmp:",
    "    xor eax, eax",
    "    mov rcx, rdx",
    "    test rcx, rcx",
    "    jz 3f",
    "    repe cmpsb",
    "    je 3f",
    "    movzx eax, byte ptr [rdi - 1]",
    "    movzx ecx, byte ptr [rsi - 1]",
    "    sub eax, ecx",
    "3:",
    "    ret",
    ".popsection",
);

/// The allocator of an image that must never allocate: every method references a symbol
/// nothing defines, so the link fails when any of them is reachable.
struct NoAllocator;

// SAFETY: every method calls a symbol that nothing defines, so an image in which any of
// them is reachable does not link: the image that exists never allocates.
unsafe impl GlobalAlloc for NoAllocator {
    // Never inlined: check.sh's diagnosis (reach.py) finds allocating paths by the calls
    // to these two functions.
    #[inline(never)]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: never defined; reaching this is a link error, not a run-time call.
        unsafe { pvkvm_linkcheck_allocation_reached(layout.size(), layout.align()) }
    }
    #[inline(never)]
    unsafe fn dealloc(&self, _ptr: *mut u8, layout: Layout) {
        // SAFETY: as in `alloc`.
        unsafe { pvkvm_linkcheck_allocation_reached(layout.size(), layout.align()) };
    }
}

#[global_allocator]
static ALLOCATOR: NoAllocator = NoAllocator;

#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    // The shim would crash the domain here; the check needs only a handler that does
    // not format (formatting drags in code the engine's own paths do not need).
    // SAFETY: a stub that halts; it touches no Rust state.
    unsafe { pvkvm_lc_halt() }
}

/// Guest frames through the host (the shim's direct map).
struct HostFrames;

impl FrameAccess for HostFrames {
    fn read_entry(&self, mfn: Mfn, slot: usize) -> u64 {
        // SAFETY: plain values in, a value out.
        unsafe { pvkvm_lc_read_entry(mfn, slot) }
    }
    fn write_entry(&mut self, mfn: Mfn, slot: usize, value: u64) {
        // SAFETY: plain values.
        unsafe { pvkvm_lc_write_entry(mfn, slot, value) }
    }
    fn write_entry_unwalked(&mut self, mfn: Mfn, slot: usize, value: u64) {
        // Inside the VM a store to memory is what the hardware walks: nothing to skip.
        self.write_entry(mfn, slot, value);
    }
    fn copy_frame(&mut self, dst: Mfn, src: Mfn) {
        // SAFETY: plain values.
        unsafe { pvkvm_lc_copy_frame(dst, src) }
    }
    fn clear_frame(&mut self, mfn: Mfn) {
        // SAFETY: plain values.
        unsafe { pvkvm_lc_clear_frame(mfn) }
    }
    fn write_m2p(&mut self, mfn: Mfn, pfn: u64) {
        // SAFETY: plain values.
        unsafe { pvkvm_lc_write_m2p(mfn, pfn) }
    }
}

/// The engine's platform as the shim would give it: every method goes to the host.
struct ShimPlatform<'a> {
    mm: &'a mut Mm,
    frames: HostFrames,
    flush: &'a mut BatchFlush,
}

fn phys(rc: u64) -> Result<(), PhysError> {
    if rc == 0 {
        Ok(())
    } else {
        Err(PhysError::OutOfRange)
    }
}

impl Platform for ShimPlatform<'_> {
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), PhysError> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of writes.
        phys(unsafe { pvkvm_lc_read_phys(gpa, buf.as_mut_ptr(), buf.len()) })
    }
    fn write_phys(&mut self, gpa: u64, buf: &[u8]) -> Result<(), PhysError> {
        // SAFETY: `buf` is valid for `buf.len()` bytes of reads.
        phys(unsafe { pvkvm_lc_write_phys(gpa, buf.as_ptr(), buf.len()) })
    }
    fn atomic_or_u64(&mut self, gpa: u64, bits: u64) -> Result<u64, PhysError> {
        let mut old = 0;
        // SAFETY: `old` is a valid u64 to write.
        phys(unsafe { pvkvm_lc_atomic_or(gpa, bits, &mut old) })?;
        Ok(old)
    }
    fn atomic_and_u64(&mut self, gpa: u64, mask: u64) -> Result<u64, PhysError> {
        let mut old = 0;
        // SAFETY: `old` is a valid u64 to write.
        phys(unsafe { pvkvm_lc_atomic_and(gpa, mask, &mut old) })?;
        Ok(old)
    }
    fn kick_vcpu(&mut self, id: u32) {
        // SAFETY: a plain value.
        unsafe { pvkvm_lc_kick_vcpu(id) }
    }
    fn vcpu_initialised(&mut self, id: u32, new: &NewVcpu) {
        // SAFETY: `new` is valid for the call; the host copies it into the vCPU's own
        // storage.
        unsafe { pvkvm_lc_vcpu_initialised(id, (new as *const NewVcpu).cast()) }
    }
    fn console_write(&mut self, bytes: &[u8]) {
        // SAFETY: `bytes` is valid for its length.
        unsafe { pvkvm_lc_console_write(bytes.as_ptr(), bytes.len()) }
    }
    fn console_read(&mut self, buf: &mut [u8]) -> usize {
        // SAFETY: `buf` is valid for its length; the host returns at most that.
        let n = unsafe { pvkvm_lc_console_read(buf.as_mut_ptr(), buf.len()) };
        n.min(buf.len())
    }
    fn hypercall_preempt_check(&mut self) -> bool {
        // SAFETY: no arguments.
        unsafe { pvkvm_lc_preempt_check() != 0 }
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        let mut out = [0; 4];
        // SAFETY: `out` is valid for writes.
        unsafe { pvkvm_lc_cpuid(leaf, subleaf, &mut out) };
        out
    }
    fn set_xcr0(&mut self, xcr0: u64) -> bool {
        // SAFETY: a plain value.
        unsafe { pvkvm_lc_set_xcr0(xcr0) != 0 }
    }
    fn arch_capabilities(&self) -> u64 {
        // SAFETY: no arguments.
        unsafe { pvkvm_lc_arch_capabilities() }
    }
    fn mm(&mut self) -> Option<MmCtx<'_>> {
        Some(MmCtx {
            mm: self.mm,
            mem: &mut self.frames,
            flush: self.flush,
        })
    }
    fn notify_backend(&mut self, remote_port: u32) {
        // SAFETY: a plain value.
        unsafe { pvkvm_lc_notify_backend(remote_port) }
    }
    fn system_time_ns(&self) -> u64 {
        // SAFETY: no arguments.
        unsafe { pvkvm_lc_system_time_ns() }
    }
    fn msr_effect(&mut self, effect: pv_engine::msr::MsrEffect) {
        // SAFETY: `effect` is valid for the call.
        unsafe { pvkvm_lc_msr_effect((&effect as *const pv_engine::msr::MsrEffect).cast()) }
    }
    fn read_m2p(&self, offset: u64, buf: &mut [u8]) -> Result<(), PhysError> {
        // SAFETY: `buf` is valid for its length.
        phys(unsafe { pvkvm_lc_read_m2p(offset, buf.as_mut_ptr(), buf.len()) })
    }
}

/// One vCPU's state as the shim keeps it: its own, and the domain's (under the domain
/// lock), all in storage the shim owns, never built on a stack.
#[repr(C)]
pub struct Cpu {
    vcpu: *mut Vcpu,
    dom: *mut Domain,
    mm: *mut Mm,
    flush: *mut BatchFlush,
    stats: *mut Stats,
    regs: *mut GuestRegs,
}

/// Borrows the state behind `cpu` for one engine call.
///
/// # Safety
/// `cpu` points to a valid `Cpu` whose pointers are valid, distinct and not otherwise
/// borrowed for the call (the shim's per-CPU area and its domain lock).
unsafe fn with_state<R>(
    cpu: *mut Cpu,
    f: impl FnOnce(&mut Vcpu, &mut Domain, &mut GuestRegs, &mut ShimPlatform<'_>, &mut Stats) -> R,
) -> R {
    // SAFETY: the caller's contract.
    let c = unsafe { &mut *cpu };
    // SAFETY: the caller's contract: each pointer is valid and exclusively ours.
    let (vcpu, dom, regs, stats) =
        unsafe { (&mut *c.vcpu, &mut *c.dom, &mut *c.regs, &mut *c.stats) };
    // SAFETY: as above.
    let (mm, flush) = unsafe { (&mut *c.mm, &mut *c.flush) };
    let mut p = ShimPlatform {
        mm,
        frames: HostFrames,
        flush,
    };
    f(vcpu, dom, regs, &mut p, stats)
}

fn outcome_code(o: Outcome) -> u64 {
    match o {
        Outcome::Resume => 0,
        Outcome::Yield => 1,
        Outcome::Block => 2,
        Outcome::Down => 3,
        Outcome::Shutdown(r) => 0x100 | u64::from(r),
        Outcome::Crash(_) => 4,
    }
}

/// `syscall` from the guest: a hypercall in guest kernel mode (every hypercall,
/// `mmu_update`/`mmuext_op` through pv-mm included), a bounce in guest user mode.
///
/// # Safety
/// See [`with_state`].
#[no_mangle]
pub unsafe extern "C" fn pvkvm_lc_syscall(cpu: *mut Cpu) -> u64 {
    // SAFETY: the caller's contract.
    unsafe {
        with_state(cpu, |v, d, r, p, s| {
            outcome_code(pv_engine::syscall_entry(v, d, r, p, s))
        })
    }
}

/// An exception: privileged-instruction emulation, forced CPUID, M2P loads, then the
/// bounce to the guest's trap table.
///
/// # Safety
/// See [`with_state`].
#[no_mangle]
pub unsafe extern "C" fn pvkvm_lc_exception(
    cpu: *mut Cpu,
    vector: u8,
    error_code: u64,
    cr2: u64,
) -> u64 {
    let trap = Trap {
        vector,
        error_code: Some(error_code),
        cr2,
    };
    // SAFETY: the caller's contract.
    unsafe {
        with_state(cpu, |v, d, r, p, s| {
            outcome_code(pv_engine::exception(v, d, r, trap, p, s))
        })
    }
}

/// A trapped write to a pagetable entry (`ptwr`): decode the instruction, update the
/// entry through pv-mm, complete the instruction.
///
/// # Safety
/// See [`with_state`]; `insn` is valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn pvkvm_lc_ptwr(
    cpu: *mut Cpu,
    insn: *const u8,
    len: usize,
    cr2: u64,
    table: Mfn,
    old: u64,
) -> u64 {
    // SAFETY: the caller's contract.
    let insn = unsafe { core::slice::from_raw_parts(insn, len.min(15)) };
    // SAFETY: the caller's contract.
    unsafe {
        with_state(cpu, |v, _d, r, p, _s| {
            let Ok(op) = pv_engine::ptwr::decode(insn, r, cr2, old) else {
                return 1;
            };
            let roots = [v.kernel_cr3 >> 12, v.user_cr3 >> 12];
            let slot = ((op.pte_addr >> 3) & 511) as usize;
            let Some(ctx) = p.mm() else { return 2 };
            match ctx
                .mm
                .mod_entry(ctx.mem, table, slot, op.new, false, &roots)
            {
                Ok(f) => {
                    pv_engine::mmu::merge_flush(ctx.flush, f);
                    op.complete(r, old, op.write);
                    0
                }
                Err(e) => e.errno() as u64,
            }
        })
    }
}

/// Builds the domain and the pagetable engine in the shim's storage, in place (both are
/// tens of KiB: never on a stack): `Domain::reset`, `Mm::reset_with_storage` over the
/// frame table the host reserved.
///
/// # Safety
/// See [`with_state`]; `slots` is valid for `n` frame slots for the rest of the run and
/// used by nothing else.
#[no_mangle]
pub unsafe extern "C" fn pvkvm_lc_domain_init(
    cpu: *mut Cpu,
    slots: *mut pv_mm::FrameSlot,
    n: usize,
    shared_info_gpa: u64,
    nr_vcpus: u32,
) {
    // SAFETY: the caller's contract.
    let frames: &'static mut [pv_mm::FrameSlot] =
        unsafe { core::slice::from_raw_parts_mut(slots, n) };
    let cfg = pv_mm::MmConfig {
        nr_frames: n as u64,
        hole_l4: [0; 16],
        shared_frames: pv_mm::SharedFrames::EMPTY,
        max_machine_frame: n as u64,
    };
    // SAFETY: the caller's contract.
    unsafe {
        let c = &mut *cpu;
        (*c.dom).reset(shared_info_gpa, nr_vcpus);
        (*c.mm).reset_with_storage(cfg, frames);
    }
}

/// The one root: calls every entry point so that everything they reach is linked.
#[no_mangle]
pub extern "C" fn _start() -> ! {
    // SAFETY: the image is never run; the host stub provides the state pointer.
    unsafe {
        let cpu = pvkvm_lc_state(0).cast::<Cpu>();
        let insn = pvkvm_lc_state(1);
        pvkvm_lc_syscall(cpu);
        pvkvm_lc_exception(cpu, 14, 2, 0);
        pvkvm_lc_ptwr(cpu, insn, 15, 0, 0, 0);
        pvkvm_lc_domain_init(cpu, pvkvm_lc_state(2).cast(), 0x10_0000, 0, 4);
        pvkvm_lc_halt()
    }
}
