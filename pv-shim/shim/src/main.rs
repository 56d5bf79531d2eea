//! pvkvm's ring-0 shim.
//!
//! A position-independent image the VMM copies into the shim region and maps in the
//! hypervisor hole of every guest L4 (see `xen_abi::contract`). On this host (KVM
//! emulates guest ring 0 one instruction at a time) the shim is only the few
//! instructions a trap must pass through:
//!
//! - `syscall_entry` (MSR_LSTAR): a `syscall` from ring 3 stays at CPL3 here, so the stub
//!   rings the hypercall doorbell with an `out` the TSS I/O bitmap allows, and the VMM
//!   resumes the guest wherever the engine says. No ring-0 instruction runs. One fast
//!   path first: `VCPUOP_is_up` from the guest kernel for a vCPU the domain does not have
//!   is answered -ENOENT in place (flags from r11, back to rcx, as the doorbell path
//!   would), reading the VMM-written `GuestStatePage`; only at CPL3, where returning with
//!   a plain jump is right. A second: `mmuext_op` with one `MMUEXT_INVLPG_LOCAL` (how
//!   Linux flushes a page, e.g. 16 times in an mprotect of 16 pages) does its `invlpg`
//!   at ring 0, entered by an `int3` whose #BP gate checks where it came from, and
//!   answers 0; its reads of the op
//!   are in a fixup range the VMM knows, so a bad pointer falls back to the doorbell.
//!   Each fast path runs only while its bit of `GuestStatePage::in_vm` is set: the VMM
//!   turns off the ones the host's measured costs do not favour.
//! - one IDT stub per vector: push an error code (0 where the CPU pushes none) and the
//!   vector, ring the trap doorbell, then (where the VMM resumes it: `trap_return`) `iretq`
//!   to the frame the VMM may have rewritten. Four emulated instructions per trap.
//!   #GP first looks for the case it can finish alone: `cli`/`sti` from the guest kernel
//!   under its virtual IOPL, skipped as the engine would, a dozen ring-0 instructions
//!   instead of a VM exit (a Linux boot runs ~5,600), where the VMM's measured floors say
//!   that is cheaper (`in_vm::IOPL_OPS`).
//!
//! - `shim_apply`: entered when the VMM redirects a stub (or the hypercall return) to it:
//!   performs the pagetable stores the VMM posted, from inside the VM (the host's shadow
//!   MMU does not see the VMM's own writes), then the TLB flushes, then returns.
//!   `apply_one` and `apply_flush_all` are the same for one store, or one full flush,
//!   with the operands in registers: 4 instructions instead of ~30; `apply_list` and
//!   `apply_list_flush_all` for a few stores the VMM lists on the ring-0 stack.
//!
//! The stubs touch no general, segment or SIMD register: `out %al` only reads al, the
//! pushes go to the shim's own stack; the apply routine saves and restores what it uses. The header at offset 0 tells the VMM where each
//! stub is; its layout is `xen_abi::contract::ShimHeader`.
#![no_std]
#![no_main]

use core::arch::global_asm;

// The header, the syscall stub and 256 IDT stubs of 16 bytes each, in one section so
// every offset is an assemble-time constant (no relocations: position-independent).
global_asm!(
    r#"
    .section .text.shim,"ax",@progbits
    .globl shim_header
shim_header:
    .ascii "PVKVSHIM"
    .long {version}
    .long header_end - shim_header
    .long syscall_entry - shim_header
    .long syscall_doorbell_end - shim_header
    .long shim_apply - shim_header
    .long apply_more_doorbell_end - shim_header
    .long syscall_fixup_start - shim_header
    .long syscall_fixup_end - shim_header
    .long syscall_slow_path - shim_header
    .set vec, 0
    .rept 256
    .if vec == {gate_vector}
    .long fast_gate - shim_header
    .elseif vec == 13
    .long gp_entry - shim_header
    .else
    .long vector_stubs - shim_header + vec * 16
    .endif
    .set vec, vec + 1
    .endr
    .long pkru_reset - shim_header
    .long pkru_reset_doorbell_end - shim_header
    .long gp_fixup_start - shim_header
    .long gp_fixup_end - shim_header
    .long gp_fixup_resume - shim_header
    .long vector_stubs - shim_header + 13 * 16
    .long apply_one - shim_header
    .long apply_flush_all - shim_header
    .long trap_return - shim_header
    .long apply_list - shim_header
    .long apply_list_flush_all - shim_header
header_end:

    .balign 16
syscall_entry:
    cmpq ${vcpu_op}, %rax
    je 10f
    cmpq ${mmuext_op}, %rax
    je 20f
syscall_slow_path:
    out %al, ${hypercall_port}
syscall_doorbell_end:
    ud2

    // vcpu_op(VCPUOP_is_up, id) for an id the domain does not have: -ENOENT.
10: cmpl ${is_up}, %edi
    jne syscall_slow_path
    testl ${in_vm_is_up}, (shim_header + {state} + 8)(%rip)
    jz syscall_slow_path
    cmpl (shim_header + {state} + 4)(%rip), %esi
    jb syscall_slow_path
    cmpl $0, (shim_header + {state})(%rip)
    je syscall_slow_path
    mov %cs, %eax
    test $3, %al
    mov ${vcpu_op}, %eax
    jz syscall_slow_path
    movq $-{enoent}, %rax
    jmp 90f

    // mmuext_op(&op, 1, NULL, DOMID_SELF) with op.cmd MMUEXT_INVLPG_LOCAL: invlpg
    // through the ring-0 gate, 0. The two reads of the op may fault (a bad pointer):
    // the VMM then resumes at syscall_slow_path with every register as it was.
20: cmpl $1, %esi
    jne syscall_slow_path
    testl ${in_vm_invlpg}, (shim_header + {state} + 8)(%rip)
    jz syscall_slow_path
    testq %rdx, %rdx
    jne syscall_slow_path
    cmpl ${domid_self}, %r10d
    jne syscall_slow_path
    cmpl $0, (shim_header + {state})(%rip)
    je syscall_slow_path
    mov %cs, %eax
    test $3, %al
    mov ${mmuext_op}, %eax
    jz syscall_slow_path
syscall_fixup_start:
    cmpl ${invlpg_local}, (%rdi)
    jne syscall_slow_path
    movq 8(%rdi), %rax
syscall_fixup_end:
    int3
syscall_gate_return:
    xor %eax, %eax
90: pushq %r11
    popfq
    jmp *%rcx

    // PKRU 0 from guest ring 3 (the only place some hosts let PKRU change): run by the
    // VMM with the guest's rax, rcx, rdx and flags saved, which it restores at the
    // doorbell. wrpkru needs ecx = edx = 0; eax is the value.
pkru_reset:
    xor %eax, %eax
    xor %ecx, %ecx
    xor %edx, %edx
    .byte 0x0f, 0x01, 0xef
    out %al, ${hypercall_port}
pkru_reset_doorbell_end:
    ud2

    // The ring-0 gate (the #BP gate): only for the int3 just above; any other int3 is
    // the guest's and takes the vector's ordinary stub.
fast_gate:
    push %rcx
    lea syscall_gate_return(%rip), %rcx
    cmpq %rcx, 8(%rsp)
    pop %rcx
    jne vector_stubs + {gate_vector} * 16
    invlpg (%rax)
    iretq
    ud2

    // #GP from the guest kernel under its virtual IOPL for `cli`/`sti` (fa, fb): skipped,
    // as Xen does (it does not map them onto the event mask). The stack holds the error
    // code, then the CPU's frame. Anything else, or a doubt, takes the ordinary stub to
    // the engine. (Port I/O does not come here: under the same IOPL the VMM opens the
    // TSS I/O bitmap, so it leaves the VM as a plain I/O exit, answered from the
    // domain's emulated PIT and port space.)
    // The VMM points the #GP gate here only while `in_vm::IOPL_OPS` is on (otherwise
    // at the ordinary stub, `ShimHeader::gp_plain`), so the bit needs no test.
gp_entry:
    cmpl $0, (shim_header + {state} + {state_kernel_io_ok})(%rip)
    je 9f
    testb $3, 16(%rsp)
    jz 9f
    cmpq $0, (%rsp)
    jne 9f
    // From here the saved rax is at 0, the error code at 8, the guest's rip at 16.
    push %rax
    mov 16(%rsp), %rax
gp_fixup_start:
    movzbl (%rax), %eax
gp_fixup_end:
    or $1, %al
    cmp $0xfb, %al
    jne gp_fixup_resume
    incq 16(%rsp)
    pop %rax
    add $8, %rsp
    iretq
    // The VMM resumes here after a #PF or #GP in the read above (rax still saved).
gp_fixup_resume:
    pop %rax
9:  jmp vector_stubs + 13 * 16

    .balign 16
vector_stubs:
    .set vec, 0
    .rept 256
    .balign 16
    .if (vec - 8) * (vec - 10) * (vec - 11) * (vec - 12) * (vec - 13) * (vec - 14) * (vec - 17) * (vec - 21) * (vec - 29) * (vec - 30)
    pushq $0
    .endif
    pushq $vec
    out %al, ${trap_port}
    add $16, %rsp
    iretq
    .set vec, vec + 1
    .endr
    .balign 16
vector_stubs_end:

    // The apply routine (ring 0, on the shim stack below a TrapFrame-shaped frame):
    // performs the stores the VMM posted, in order, through the direct map, so the
    // host's shadow MMU sees them as guest writes; then the flushes; then returns to the
    // guest exactly as an IDT stub does. It saves the four registers it uses; the
    // arithmetic flags it changes are restored by the final iretq.
shim_apply:
    push %rax
    push %rcx
    push %rsi
    push %rdi
1:  movl (shim_header + {posted})(%rip), %ecx
    lea (shim_header + {posted} + 0x1000)(%rip), %rsi
    test %ecx, %ecx
    jz 3f
2:  mov (%rsi), %rdi
    mov 8(%rsi), %rax
    mov %rax, (%rdi)
    add $16, %rsi
    dec %ecx
    jnz 2b
3:  testl ${more}, (shim_header + {posted} + 4)(%rip)
    jz 4f
    out %al, ${apply_more_port}
apply_more_doorbell_end:
    jmp 1b
4:  testl ${flush_all}, (shim_header + {posted} + 4)(%rip)
    jz 5f
    mov %cr3, %rax
    mov %rax, %cr3
    jmp 7f
5:  movl (shim_header + {posted} + 8)(%rip), %ecx
    lea (shim_header + {posted} + 16)(%rip), %rsi
    test %ecx, %ecx
    jz 7f
6:  mov (%rsi), %rdi
    invlpg (%rdi)
    add $8, %rsi
    dec %ecx
    jnz 6b
7:  movq $0, (shim_header + {posted})(%rip)
    movl $0, (shim_header + {posted} + 8)(%rip)
    pop %rdi
    pop %rsi
    pop %rcx
    pop %rax
    add $16, %rsp
    iretq

    // The two shapes nearly every apply has (one store and no flush: a Linux
    // `set_pte`, a trapped PTE write; a full flush and no store), reduced to what they
    // must do, because each ring-0 instruction is emulated here (~1 us): the VMM loads
    // the operands into registers and writes the guest's values of those registers into
    // the words below the CPU's frame (where a stub's vector and error code are), so
    // the routine only stores (or flushes), pops them and returns. 4 and 4
    // instructions instead of the general routine's 30 and 23.
    // rdi = the entry's direct-map address, rax = its value; rsp -> [rdi][rax][frame].
apply_one:
    mov %rax, (%rdi)
    pop %rdi
    pop %rax
    iretq
    // rsp -> [rax][frame].
apply_flush_all:
    mov %cr3, %rax
    mov %rax, %cr3
    pop %rax
    // rsp -> the CPU's frame: where the VMM resumes a stub whose doorbell needs nothing
    // more (one instruction instead of dropping the two words first).
trap_return:
    iretq

    // A few stores (a Linux batch: a fork's copied entries, an exit's cleared ones),
    // listed by the VMM on this stack with their operands: 4 instructions a store and
    // 4 (7 with the flush) for the rest, against the general routine's 6 and ~25.
    // rcx = the count (>= 1); rsp -> [va][value] x rcx, [rcx][rdi][rax][frame].
apply_list:
    pop %rdi
    pop %rax
    mov %rax, (%rdi)
    loop apply_list
    pop %rcx
    pop %rdi
    pop %rax
    iretq
apply_list_flush_all:
    pop %rdi
    pop %rax
    mov %rax, (%rdi)
    loop apply_list_flush_all
    pop %rcx
    pop %rdi
    mov %cr3, %rax
    mov %rax, %cr3
    pop %rax
    iretq
    "#,
    version = const xen_abi::contract::CONTRACT_VERSION,
    hypercall_port = const xen_abi::contract::port::HYPERCALL,
    vcpu_op = const xen_abi::xen::hypercall::VCPU_OP,
    is_up = const 3,
    mmuext_op = const xen_abi::xen::hypercall::MMUEXT_OP,
    invlpg_local = const xen_abi::xen::mmuext::INVLPG_LOCAL,
    domid_self = const xen_abi::xen::DOMID_SELF,
    gate_vector = const xen_abi::contract::FAST_GATE_VECTOR,
    enoent = const xen_abi::errno::ENOENT,
    in_vm_is_up = const xen_abi::contract::in_vm::IS_UP,
    in_vm_invlpg = const xen_abi::contract::in_vm::INVLPG_LOCAL,
    state_kernel_io_ok = const core::mem::offset_of!(xen_abi::contract::GuestStatePage, kernel_io_ok),
    state = const xen_abi::contract::layout::vcpu::GUEST_STATE - xen_abi::contract::layout::vcpu::TEXT,
    trap_port = const xen_abi::contract::port::TRAP,
    apply_more_port = const xen_abi::contract::port::APPLY_MORE,
    posted = const xen_abi::contract::layout::vcpu::POSTED - xen_abi::contract::layout::vcpu::TEXT,
    more = const xen_abi::contract::POSTED_MORE,
    flush_all = const xen_abi::contract::POSTED_FLUSH_ALL,
    options(att_syntax)
);

// The syscall stub reads the guest-state page at fixed offsets.
const _: () = {
    use xen_abi::contract::GuestStatePage as G;
    assert!(core::mem::offset_of!(G, kernel_mode) == 0);
    assert!(core::mem::offset_of!(G, nr_vcpus) == 4);
    assert!(core::mem::offset_of!(G, in_vm) == 8);
};

/// Never called: the shim has no Rust code on its trap paths yet. Required by `no_std`.
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {
        core::hint::spin_loop();
    }
}
