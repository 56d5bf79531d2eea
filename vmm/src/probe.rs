//! `pvkvm probe`: what this host's KVM is and what each kind of trap costs here, measured
//! in a small VM with the real shim region (the numbers DESIGN.md's placement decisions
//! rest on).
//!
//! The probe guest is a handful of position-independent snippets assembled into this
//! binary and copied into a 4 MiB VM whose low 4 MiB are identity-mapped (user
//! accessible). Ring-3 snippets report through the hypercall doorbell (`syscall`),
//! ring-0 snippets through their own port; faults land in the shim's IDT stubs and
//! come back as trap doorbells, so every outcome is observed, none hangs.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress};
use xen_abi::contract::{layout, port, selector as shim_sel};

use crate::shim::{self, pte, ShimImage, ShimRegion, XCR0_X87_SSE_AVX};
use crate::vstate::{self, Exit, Regs, Vcpu, Vm};

/// Port ring-0 probe snippets report through (any port is open at CPL0).
const PROBE_PORT: u16 = 0xe2;
const RAM: u64 = 4 << 20;
const CODE_GPA: u64 = 0x10_0000;
const STACK_TOP: u64 = 0x8_0000;
const L4: u64 = 0x1000;
const L1_BASE: u64 = 0x4000; // two L1 pages: 0x4000, 0x5000 (low 4 MiB)
const DATA_A: u64 = 0x20_0000;
const DATA_B: u64 = 0x20_1000;
const L1_ALIAS_VA: u64 = 0x30_0000; // the L1 page mapping DATA_A, mapped writable here
const XSAVE_AREA: u64 = 0x31_0000;

std::arch::global_asm!(
    r#"
    .section .rodata.pvkvm_probe,"a",@progbits
    .balign 16
    .globl pvkvm_probe_start
pvkvm_probe_start:

// r12 = TSC; then rbx = TSC - r12 (the cycles a snippet's loop took).
.macro tsc_start
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, %r12
.endm
.macro tsc_stop
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    sub %r12, %rax
    mov %rax, %rbx
.endm

// rdi iterations of a two-instruction loop; rax = TSC cycles; report by syscall (ring 3)
probe_r3_loop:
    mov %rdi, %r13
    tsc_start
1:  dec %r13
    jnz 1b
    tsc_stop
    mov $1, %eax
    syscall
    ud2

// the same loop at ring 0, reported through the probe port
probe_r0_loop:
    mov %rdi, %r13
    tsc_start
1:  dec %r13
    jnz 1b
    tsc_stop
    out %al, ${probe_port}
    ud2

// rdi int3 round trips from ring 3
probe_r3_int3:
    mov %rdi, %r13
    tsc_start
1:  int3
    dec %r13
    jnz 1b
    tsc_stop
    mov $1, %eax
    syscall
    ud2

// rdi null doorbells (syscall with rax = 0) from ring 3
probe_r3_syscall:
    mov %rdi, %r13
    tsc_start
1:  xor %eax, %eax
    syscall
    dec %r13
    jnz 1b
    tsc_stop
    mov $1, %eax
    syscall
    ud2

// rdi direct doorbells from ring 3 (out allowed by the I/O bitmap), no syscall
probe_r3_out:
    mov %rdi, %r13
    tsc_start
1:  xor %eax, %eax
    out %al, ${hcall_port}
    dec %r13
    jnz 1b
    tsc_stop
    mov $1, %eax
    syscall
    ud2

// rdi doorbells from ring 0 (no I/O bitmap check)
probe_r0_out:
    mov %rdi, %r13
    tsc_start
1:  xor %eax, %eax
    out %al, ${hcall_port}
    dec %r13
    jnz 1b
    tsc_stop
    out %al, ${probe_port}
    ud2

// read DATA_A's mapping, let the VMM rewrite its PTE (rax = 2), read again
probe_r3_pte_host:
    mov ${data_a}, %rsi
    mov (%rsi), %rbx
    mov $2, %eax
    syscall
    mov (%rsi), %rbx
    mov $1, %eax
    syscall
    ud2

// ring 0: read, let the VMM rewrite the PTE, invlpg, read, reload cr3, read
probe_r0_pte_host:
    mov ${data_a}, %rsi
    mov (%rsi), %rbx
    out %al, ${probe_port}
    invlpg (%rsi)
    mov (%rsi), %rbx
    out %al, ${probe_port}
    mov %cr3, %rax
    mov %rax, %cr3
    mov (%rsi), %rbx
    out %al, ${probe_port}
    ud2

// ring 0: read, then store the PTE from inside the guest, invlpg, read
probe_r0_pte_guest:
    mov ${data_a}, %rsi
    mov (%rsi), %rbx
    mov ${l1_alias}, %rdi
    mov %rdx, ((({data_a} >> 12) & 511) * 8)(%rdi)
    invlpg (%rsi)
    mov (%rsi), %rbx
    out %al, ${probe_port}
    ud2

// ring 3: one SSE instruction (the VMM sets CR0.TS first), then report
probe_r3_sse:
    movaps %xmm0, %xmm0
    mov $1, %eax
    syscall
    ud2

// ring 3: read the quadword at rdi, report it in rbx
probe_r3_read:
    mov (%rdi), %rbx
    mov $1, %eax
    syscall
    ud2

// ring 3: load selector 0x13 (guest GDT index 2) into %ds and read %ds back into rbx
probe_r3_load_ds:
    mov $0x13, %eax
    mov %eax, %ds
    mov %ds, %ebx
    xor %eax, %eax
    mov %eax, %ds
    mov $1, %eax
    syscall
    ud2

// ring 3: read the TSC into rbx and report at once
probe_r3_rdtsc:
    rdtsc
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, %rbx
    mov $1, %eax
    syscall
    ud2

// ring 3: rdtscp, TSC_AUX (ecx) into rbx (syscall takes rcx)
probe_r3_rdtscp:
    rdtscp
    mov %rcx, %rbx
    mov $1, %eax
    syscall
    ud2

// ring 3: raw cpuid of leaf 0x40000000
probe_r3_cpuid:
    mov $0x40000000, %eax
    xor %ecx, %ecx
    cpuid
    mov %rbx, %r12
    mov $1, %eax
    syscall
    ud2

// ring 3: raw cpuid of leaf rdi, subleaf rsi; eax..edx in r12..r15
probe_r3_cpuid_leaf:
    mov %edi, %eax
    mov %esi, %ecx
    cpuid
    mov %eax, %r12d
    mov %ebx, %r13d
    mov %ecx, %r14d
    mov %edx, %r15d
    mov $1, %eax
    syscall
    ud2

// ring 3: xgetbv(0) into rbx (#UD where CR4.OSXSAVE is not in effect)
probe_r3_xgetbv:
    xor %ecx, %ecx
    xgetbv
    shl $32, %rdx
    or %rdx, %rax
    mov %rax, %rbx
    mov $1, %eax
    syscall
    ud2

// ring 3: one AVX instruction (vpxor of ymm15 with itself: a YMM register), then report
probe_r3_avx:
    vpxor %ymm15, %ymm15, %ymm15
    mov $1, %eax
    syscall
    ud2

// ring 3: rdpkru into rbx (#UD where CR4.PKE is not in effect)
probe_r3_rdpkru:
    xor %ecx, %ecx
    rdpkru
    mov %rax, %rbx
    mov $1, %eax
    syscall
    ud2

// ring 3: wrpkru(rdi), then rdpkru into rbx
probe_r3_wrpkru:
    mov %rdi, %rax
    xor %ecx, %ecx
    xor %edx, %edx
    wrpkru
    rdpkru
    mov %rax, %rbx
    mov $1, %eax
    syscall
    ud2

// ring 0 instruction snippets: each runs one instruction then reports.
probe_i_iretq:
    mov %rsp, %rax
    pushq ${hv_ds}
    push %rax
    pushfq
    pushq ${hv_cs}
    lea 1f(%rip), %rax
    push %rax
    iretq
1:  out %al, ${probe_port}
    ud2
probe_i_sysret:
    lea 1f(%rip), %rcx
    mov $0x202, %r11
    sysretq
1:  mov $1, %eax
    syscall
    ud2
probe_i_swapgs:
    swapgs
    out %al, ${probe_port}
    ud2
probe_i_wrmsr:
    mov $0xc0000102, %ecx
    xor %eax, %eax
    xor %edx, %edx
    wrmsr
    out %al, ${probe_port}
    ud2
probe_i_rdmsr:
    mov $0xc0000102, %ecx
    rdmsr
    out %al, ${probe_port}
    ud2
probe_i_movcr3:
    mov %cr3, %rax
    mov %rax, %cr3
    out %al, ${probe_port}
    ud2
probe_i_invlpg:
    invlpg (%rsp)
    out %al, ${probe_port}
    ud2
probe_i_lgdt:
    sub $16, %rsp
    sgdt (%rsp)
    lgdt (%rsp)
    add $16, %rsp
    out %al, ${probe_port}
    ud2
probe_i_lidt:
    sub $16, %rsp
    sidt (%rsp)
    lidt (%rsp)
    add $16, %rsp
    out %al, ${probe_port}
    ud2
probe_i_ltr:
    mov ${tss_sel}, %ax
    ltr %ax
    out %al, ${probe_port}
    ud2
probe_i_xsave:
    mov ${xsave_area}, %rdi
    mov $3, %eax
    xor %edx, %edx
    xsave (%rdi)
    out %al, ${probe_port}
    ud2
probe_i_xrstor:
    mov ${xsave_area}, %rdi
    mov $3, %eax
    xor %edx, %edx
    xsave (%rdi)
    xrstor (%rdi)
    out %al, ${probe_port}
    ud2
probe_i_cmpxchg16b:
    sub $32, %rsp
    and $-16, %rsp
    xor %eax, %eax
    xor %edx, %edx
    xor %ebx, %ebx
    xor %ecx, %ecx
    lock cmpxchg16b (%rsp)
    out %al, ${probe_port}
    ud2
probe_i_cpuid:
    xor %eax, %eax
    cpuid
    out %al, ${probe_port}
    ud2
probe_i_movcr4:
    mov %cr4, %rax
    mov %rax, %cr4
    out %al, ${probe_port}
    ud2
probe_i_hlt:
    hlt
    out %al, ${probe_port}
    ud2

    .globl pvkvm_probe_end
pvkvm_probe_end:
    "#,
    probe_port = const PROBE_PORT,
    hcall_port = const port::HYPERCALL,
    data_a = const DATA_A,
    l1_alias = const L1_ALIAS_VA,
    xsave_area = const XSAVE_AREA,
    hv_cs = const shim_sel::HYPERVISOR_CS,
    hv_ds = const shim_sel::HYPERVISOR_DS,
    tss_sel = const 0xe050u16,
    options(att_syntax)
);

unsafe extern "C" {
    static pvkvm_probe_start: u8;
    static pvkvm_probe_end: u8;
}

/// Offsets of snippets, found by a marker-free scan: the snippets are assembled in a
/// fixed order, so they are located by their position in this list at build time.
macro_rules! snippet_offsets {
    ($($name:ident),*) => {
        std::arch::global_asm!(
            ".section .rodata.pvkvm_probe_offsets,\"a\",@progbits",
            ".balign 8",
            ".globl pvkvm_probe_offsets",
            "pvkvm_probe_offsets:",
            $(concat!(".quad ", stringify!($name), " - pvkvm_probe_start"),)*
        );
        #[allow(non_camel_case_types, dead_code)]
        #[derive(Clone, Copy, Debug)]
        #[repr(usize)]
        enum Snippet { $($name),* }
        const SNIPPET_COUNT: usize = [$(stringify!($name)),*].len();
    };
}

snippet_offsets!(
    probe_r3_loop,
    probe_r0_loop,
    probe_r3_int3,
    probe_r3_syscall,
    probe_r3_out,
    probe_r0_out,
    probe_r3_pte_host,
    probe_r0_pte_host,
    probe_r0_pte_guest,
    probe_r3_rdtscp,
    probe_r3_cpuid,
    probe_r3_read,
    probe_r3_rdtsc,
    probe_r3_load_ds,
    probe_r3_sse,
    probe_r3_cpuid_leaf,
    probe_r3_xgetbv,
    probe_r3_avx,
    probe_r3_rdpkru,
    probe_r3_wrpkru,
    probe_i_iretq,
    probe_i_sysret,
    probe_i_swapgs,
    probe_i_wrmsr,
    probe_i_rdmsr,
    probe_i_movcr3,
    probe_i_invlpg,
    probe_i_lgdt,
    probe_i_lidt,
    probe_i_ltr,
    probe_i_xsave,
    probe_i_xrstor,
    probe_i_cmpxchg16b,
    probe_i_cpuid,
    probe_i_movcr4,
    probe_i_hlt
);

unsafe extern "C" {
    static pvkvm_probe_offsets: [u64; SNIPPET_COUNT];
}

fn probe_code() -> &'static [u8] {
    // SAFETY: both symbols are defined by the global_asm! above in the same section, in
    // this order, so [start, end) is a valid, immutable byte range of this binary.
    unsafe {
        let start = &raw const pvkvm_probe_start;
        let end = &raw const pvkvm_probe_end;
        std::slice::from_raw_parts(start, end as usize - start as usize)
    }
}

fn snippet_offset(s: Snippet) -> u64 {
    // SAFETY: the table is defined by the snippet_offsets! global_asm with exactly
    // SNIPPET_COUNT quads; it is read-only data.
    unsafe { pvkvm_probe_offsets[s as usize] }
}

/// Errors of the probe.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// KVM failed.
    #[error(transparent)]
    Kvm(#[from] vstate::Error),
    /// The shim region failed.
    #[error(transparent)]
    Shim(#[from] shim::Error),
    /// A probe step did not end as expected.
    #[error("probe step '{0}' ended unexpectedly: {1}")]
    Step(&'static str, String),
}

/// How a probe snippet ended.
#[derive(Clone, Debug, PartialEq, Eq)]
enum End {
    /// Reported through the ring-0 probe port.
    Port,
    /// Reported through the hypercall doorbell (rax = 1).
    Doorbell,
    /// An exception reached the shim's IDT (vector).
    Exception(u8),
    /// KVM could not emulate it (the VM is dead).
    InternalError(u32),
    /// Halted.
    Hlt,
    /// Something else.
    Other(String),
}

struct ProbeVm {
    vm: Vm,
    vcpu: Vcpu,
    region: ShimRegion,
}

impl ProbeVm {
    fn new() -> Result<Self, Error> {
        Self::with_cpuid(|_| {})
    }

    /// A probe VM whose `KVM_SET_CPUID2` table `edit` changed first.
    fn with_cpuid(edit: impl FnOnce(&mut kvm_bindings::CpuId)) -> Result<Self, Error> {
        let shim_gpa = RAM;
        let vm = Vm::new(&[
            (0, RAM as usize),
            (shim_gpa, shim::region_size(RAM >> 12, 1)? as usize),
        ])?;
        let region =
            shim::build_region(vm.memory(), shim_gpa, &ShimImage::embedded()?, RAM >> 12, 1)?;
        let mem = vm.memory();
        let w = |gpa: u64, v: u64| {
            mem.write_obj(v, GuestAddress(gpa))
                .map_err(|_| shim::Error::Memory(gpa))
        };
        let upper = pte::P | pte::RW | pte::U | pte::A;
        w(L4, 0x2000 | upper)?;
        w(0x2000, 0x3000 | upper)?;
        w(0x3000, L1_BASE | upper)?;
        w(0x3008, (L1_BASE + 0x1000) | upper)?;
        for page in 1..(RAM >> 12) {
            w(
                L1_BASE + page * 8,
                (page << 12) | pte::P | pte::RW | pte::U | pte::A | pte::D,
            )?;
        }
        // The L1 page that maps DATA_A, reachable for the in-guest store.
        let l1_of_a = L1_BASE + (DATA_A >> 21) * 0x1000;
        w(
            L1_BASE + (L1_ALIAS_VA >> 12) * 8,
            l1_of_a | pte::P | pte::RW | pte::A | pte::D,
        )?;
        for (i, e) in region.hole_l4.iter().enumerate() {
            w(L4 + (256 + i as u64) * 8, *e)?;
        }
        w(DATA_A, 0xaaaa)?;
        w(DATA_B, 0xbbbb)?;
        mem.write_slice(probe_code(), GuestAddress(CODE_GPA))
            .map_err(|_| shim::Error::Memory(CODE_GPA))?;
        // A second, available TSS descriptor for the ltr probe.
        let gdt = region.vcpu0().block_gpa + layout::vcpu::GDT;
        let mut tss = [0u8; 16];
        mem.read_slice(&mut tss, GuestAddress(gdt + u64::from(shim_sel::TSS)))
            .map_err(|_| shim::Error::Memory(gdt))?;
        tss[5] = 0x89;
        mem.write_slice(&tss, GuestAddress(gdt + 0xe050))
            .map_err(|_| shim::Error::Memory(gdt))?;

        let mut vcpu = vm.create_vcpu(0)?;
        let mut cpuid = vm.supported_cpuid()?;
        // A signature only this table has, to tell whether ring-3 CPUID reads it.
        for e in cpuid
            .as_mut_slice()
            .iter_mut()
            .filter(|e| e.function == 0x4000_0000)
        {
            e.ebx = u32::from_le_bytes(*b"pvkv");
        }
        edit(&mut cpuid);
        vcpu.set_cpuid(&cpuid)?;
        let xsave = cpuid
            .as_slice()
            .iter()
            .any(|e| e.function == 1 && e.ecx & (1 << 26) != 0);
        let sregs = vcpu.sregs()?;
        vcpu.set_sregs_ioctl(&region.vcpu0().initial_sregs(sregs, L4, xsave))?;
        vcpu.set_msrs(&region.vcpu0().msrs())?;
        if xsave && vcpu.set_xcr0(XCR0_X87_SSE_AVX).is_err() {
            vcpu.set_xcr0(0b11)?;
        }
        Ok(Self { vm, vcpu, region })
    }

    /// Starts a snippet at ring 3 (guest-kernel-like) or ring 0.
    fn start(&mut self, s: Snippet, ring0: bool, rdi: u64) -> Result<(), Error> {
        let mut sregs = self.vcpu.sregs()?;
        let init = self
            .region
            .vcpu0()
            .initial_sregs(sregs, L4, sregs.cr4 & (1 << 18) != 0);
        sregs.cs = init.cs;
        sregs.ss = init.ss;
        if ring0 {
            sregs.cs.selector = shim_sel::HYPERVISOR_CS;
            sregs.cs.dpl = 0;
            sregs.ss.selector = shim_sel::HYPERVISOR_DS;
            sregs.ss.dpl = 0;
        }
        self.vcpu.set_sregs_ioctl(&sregs)?;
        let rsp = if ring0 {
            self.region.vcpu0().stack_top - 256
        } else {
            STACK_TOP
        };
        let regs = Regs {
            rip: CODE_GPA + snippet_offset(s),
            rsp,
            rdi,
            rflags: 0x2,
            ..Default::default()
        };
        self.vcpu.set_regs_ioctl(&regs)?;
        Ok(())
    }

    /// Runs until the snippet reports or faults. Null doorbells (rax = 0) are answered
    /// right away; `on_doorbell` sees reports with rax = 2 (a request to the VMM).
    fn run(
        &mut self,
        mut on_request: impl FnMut(&mut ProbeVm, u64),
        ioctl_regs: bool,
    ) -> Result<(End, Regs), Error> {
        loop {
            let exit = self.vcpu.run()?;
            match exit {
                Exit::IoOut {
                    port: port::HYPERCALL,
                    ..
                } => {
                    let mut regs = if ioctl_regs {
                        self.vcpu.get_regs_ioctl()?
                    } else {
                        self.vcpu.regs()?
                    };
                    match regs.rax {
                        0 if regs.rip != self.region.vcpu0().syscall_doorbell_end => {}
                        0 | 2 => {
                            if regs.rax == 2 {
                                on_request(self, 2);
                            }
                            regs.rip = regs.rcx;
                            regs.rflags = regs.r11 | 0x2;
                            if ioctl_regs {
                                self.vcpu.set_regs_ioctl(&regs)?;
                            } else {
                                self.vcpu.set_regs(&regs);
                            }
                        }
                        _ => return Ok((End::Doorbell, regs)),
                    }
                }
                Exit::IoOut {
                    port: PROBE_PORT, ..
                } => {
                    let regs = self.vcpu.regs()?;
                    return Ok((End::Port, regs));
                }
                Exit::IoOut {
                    port: port::TRAP, ..
                } => {
                    let regs = self.vcpu.regs()?;
                    let mut vector = [0u8; 1];
                    let gpa = self.region.va_to_gpa(regs.rsp).unwrap_or(0);
                    let _ = self.vm.memory().read_slice(&mut vector, GuestAddress(gpa));
                    if vector[0] == 3 {
                        // int3 through the VMM: resume at once (the stub iretqs).
                        continue;
                    }
                    return Ok((End::Exception(vector[0]), regs));
                }
                Exit::InternalError { suberror } => {
                    return Ok((End::InternalError(suberror), Regs::default()))
                }
                Exit::Hlt => return Ok((End::Hlt, Regs::default())),
                other => return Ok((End::Other(format!("{other:?}")), Regs::default())),
            }
        }
    }

    /// Runs a timing loop of `n` iterations (the snippet reports its TSC delta in rbx)
    /// and returns cycles per iteration; any other end than `want` is an error naming
    /// `step`.
    fn timed(
        &mut self,
        snippet: Snippet,
        ring0: bool,
        n: u64,
        ioctl_regs: bool,
        step: &'static str,
        want: End,
    ) -> Result<f64, Error> {
        self.start(snippet, ring0, n)?;
        let (end, r) = self.run(|_: &mut ProbeVm, _: u64| {}, ioctl_regs)?;
        expect(step, &end, want)?;
        Ok(r.rbx as f64 / n as f64)
    }

    /// Cycles per ring-3 `int3` whose #BP gate points, for this measurement only, at the
    /// first place in the shim's #BP entry holding `tail`'s bytes: an exception round
    /// trip that never leaves the VM (with the shim's in-VM flush when `tail` has one).
    fn in_vm_round_trip(&mut self, tail: InVmTail, n: u64) -> Result<f64, Error> {
        let pattern = tail.bytes();
        let idt3 = self.region.vcpu0().block_gpa + layout::vcpu::IDT + 3 * 16;
        let mut gate = [0u8; 16];
        self.vm
            .memory()
            .read_slice(&mut gate, GuestAddress(idt3))
            .map_err(|_| shim::Error::Memory(idt3))?;
        let stub = u64::from(u16::from_le_bytes([gate[0], gate[1]]))
            | (u64::from(u16::from_le_bytes([gate[6], gate[7]])) << 16)
            | (u64::from(u32::from_le_bytes([gate[8], gate[9], gate[10], gate[11]])) << 32);
        let mut code = [0u8; 64];
        let stub_gpa = self
            .region
            .va_to_gpa(stub)
            .ok_or(Error::Step("int3 in-VM", "stub outside the shim".into()))?;
        self.vm
            .memory()
            .read_slice(&mut code, GuestAddress(stub_gpa))
            .map_err(|_| shim::Error::Memory(stub_gpa))?;
        let at = code
            .windows(pattern.len())
            .position(|w| w == pattern)
            .ok_or(Error::Step(
                "int3 in-VM",
                format!("no {pattern:02x?} in the #BP entry"),
            ))?;
        let target = stub + at as u64;
        let mut g2 = gate;
        g2[0..2].copy_from_slice(&(target as u16).to_le_bytes());
        g2[6..8].copy_from_slice(&((target >> 16) as u16).to_le_bytes());
        g2[8..12].copy_from_slice(&((target >> 32) as u32).to_le_bytes());
        self.vm
            .memory()
            .write_slice(&g2, GuestAddress(idt3))
            .map_err(|_| shim::Error::Memory(idt3))?;
        let measured = self
            .start(Snippet::probe_r3_int3, false, n)
            .and_then(|()| self.run(|_: &mut ProbeVm, _: u64| {}, false));
        // The gate goes back whatever happened, so the VM can measure on.
        self.vm
            .memory()
            .write_slice(&gate, GuestAddress(idt3))
            .map_err(|_| shim::Error::Memory(idt3))?;
        let (end, r) = measured?;
        expect("int3 in-VM", &end, End::Doorbell)?;
        Ok(r.rbx as f64 / n as f64)
    }
}

/// What the ring-0 side of an in-VM round trip runs before returning.
#[derive(Clone, Copy, Debug)]
enum InVmTail {
    /// `iretq` only: the bare cost of an exception that stays in the VM.
    Iretq,
    /// `invlpg (%rax); iretq`: the shim's in-VM page flush (the tail of its #BP gate).
    InvlpgIretq,
}

impl InVmTail {
    fn bytes(self) -> &'static [u8] {
        match self {
            Self::Iretq => &[0x48, 0xcf],
            Self::InvlpgIretq => &[0x0f, 0x01, 0x38, 0x48, 0xcf],
        }
    }
}

/// What a guest transition costs on this host, in microseconds: the VM exit an in-VM
/// path saves against the in-VM path itself. Measured at every start (a few hundred
/// round trips, ~30 ms on a software-KVM host); `host::Paths` chooses from them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TransitionFloors {
    /// A hypercall `syscall` -> VMM -> guest round trip (the exit the engine's answer
    /// costs).
    pub exit_us: f64,
    /// A ring-3 `int3` -> ring-0 `invlpg` + `iretq`, no VMM: the shim's in-VM flush.
    pub in_vm_flush_us: f64,
}

/// Measures [`TransitionFloors`] with `n` round trips of each kind (the median of three
/// batches, so one descheduling of the thread does not decide).
pub fn transition_floors(n: u64) -> Result<TransitionFloors, Error> {
    let mhz = tsc_mhz_quick();
    let mut p = ProbeVm::new()?;
    let mut exits = Vec::new();
    let mut flushes = Vec::new();
    for _ in 0..3 {
        exits.push(p.timed(
            Snippet::probe_r3_syscall,
            false,
            n,
            false,
            "syscall doorbell",
            End::Doorbell,
        )?);
        flushes.push(p.in_vm_round_trip(InVmTail::InvlpgIretq, n)?);
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    Ok(TransitionFloors {
        exit_us: median(&mut exits) / mhz,
        in_vm_flush_us: median(&mut flushes) / mhz,
    })
}

/// One measured figure.
#[derive(Clone, Debug)]
pub struct Figure {
    /// What was measured.
    pub name: &'static str,
    /// Value.
    pub value: f64,
    /// Unit.
    pub unit: &'static str,
}

/// Everything the probe found.
#[derive(Clone, Debug)]
pub struct Report {
    /// What /dev/kvm is.
    pub host: vstate::HostKvm,
    /// Guess of the kind of KVM: "hardware" or "software".
    pub kind: &'static str,
    /// TSC frequency used to convert cycles (MHz), measured against the host clock.
    pub tsc_mhz: f64,
    /// Timings.
    pub figures: Vec<Figure>,
    /// Facts (name, value).
    pub facts: Vec<(&'static str, String)>,
    /// Instruction emulation at ring 0 (instruction, outcome).
    pub instructions: Vec<(&'static str, String)>,
}

fn tsc_mhz() -> f64 {
    // SAFETY: rdtsc has no memory effects; it is available on every x86_64 CPU.
    let t0 = unsafe { core::arch::x86_64::_rdtsc() };
    let i0 = Instant::now();
    std::thread::sleep(Duration::from_millis(100));
    // SAFETY: as above.
    let t1 = unsafe { core::arch::x86_64::_rdtsc() };
    (t1 - t0) as f64 / i0.elapsed().as_secs_f64() / 1e6
}

/// The TSC rate in MHz over 20 ms: good to a few parts in a thousand, which is all a
/// comparison of two costs needs.
fn tsc_mhz_quick() -> f64 {
    // SAFETY: rdtsc has no memory effects; it is available on every x86_64 CPU.
    let t0 = unsafe { core::arch::x86_64::_rdtsc() };
    let i0 = Instant::now();
    std::thread::sleep(Duration::from_millis(20));
    // SAFETY: as above.
    let t1 = unsafe { core::arch::x86_64::_rdtsc() };
    (t1 - t0) as f64 / i0.elapsed().as_secs_f64() / 1e6
}

/// Runs all probes.
pub fn run() -> Result<Report, Error> {
    let (_kvm, host) = vstate::host_kvm()?;
    let mhz = tsc_mhz();
    let mut figures = Vec::new();
    let mut facts = Vec::new();
    let no_req = |_: &mut ProbeVm, _: u64| {};

    let mut p = ProbeVm::new()?;
    let per = p.timed(
        Snippet::probe_r3_loop,
        false,
        10_000_000,
        false,
        "ring-3 loop",
        End::Doorbell,
    )?;
    figures.push(Figure {
        name: "ring-3 loop iteration (dec+jnz)",
        value: per,
        unit: "cycles",
    });
    let per = p.timed(
        Snippet::probe_r0_loop,
        true,
        2_000,
        false,
        "ring-0 loop",
        End::Port,
    )?;
    figures.push(Figure {
        name: "ring-0 loop iteration (dec+jnz)",
        value: per,
        unit: "cycles",
    });
    figures.push(Figure {
        name: "ring-0 instruction (emulated?)",
        value: per / 2.0 / mhz * 1000.0,
        unit: "ns",
    });

    // Round trips through the VMM, in microseconds each.
    let nt = 20_000;
    let round_trips = [
        (
            Snippet::probe_r3_syscall,
            false,
            false,
            "syscall doorbell",
            End::Doorbell,
            "syscall -> VMM -> guest (sync regs)",
        ),
        (
            Snippet::probe_r3_syscall,
            false,
            true,
            "syscall doorbell (ioctls)",
            End::Doorbell,
            "syscall -> VMM -> guest (GET/SET_REGS)",
        ),
        (
            Snippet::probe_r3_out,
            false,
            false,
            "out doorbell",
            End::Doorbell,
            "out from ring 3 (I/O bitmap) -> VMM -> guest",
        ),
        (
            Snippet::probe_r0_out,
            true,
            false,
            "ring-0 out doorbell",
            End::Port,
            "out from ring 0 -> VMM -> guest",
        ),
        (
            Snippet::probe_r3_int3,
            false,
            false,
            "int3 via VMM",
            End::Doorbell,
            "int3 -> shim stub -> VMM -> iretq",
        ),
    ];
    for (snippet, ring0, ioctl_regs, step, want, name) in round_trips {
        let per = p.timed(snippet, ring0, nt, ioctl_regs, step, want)?;
        figures.push(Figure {
            name,
            value: per / mhz,
            unit: "us",
        });
    }

    // The same exception with a ring-0 handler that only iretqs (no VMM), then with one
    // that does the shim's in-VM page flush (`invlpg (%rax); iretq`, the tail of its #BP
    // gate): what an exception costs inside the VM, and what an in-VM flush costs.
    for (tail, name) in [
        (InVmTail::Iretq, "int3 -> ring-0 iretq (no VMM)"),
        (
            InVmTail::InvlpgIretq,
            "int3 -> ring-0 invlpg + iretq (in-VM page flush)",
        ),
    ] {
        let cycles = p.in_vm_round_trip(tail, nt)?;
        figures.push(Figure {
            name,
            value: cycles / mhz,
            unit: "us",
        });
    }

    // KVM_SET_SREGS cost, host side.
    {
        let s = p.vcpu.sregs()?;
        let t = Instant::now();
        for _ in 0..1000 {
            p.vcpu.set_sregs_ioctl(&s)?;
        }
        figures.push(Figure {
            name: "KVM_SET_SREGS ioctl",
            value: t.elapsed().as_secs_f64() * 1e6 / 1000.0,
            unit: "us",
        });
    }

    // Where a ring-3 syscall lands.
    match syscall_landing() {
        Ok(l) => {
            facts.push((
                "raw CPUID at ring 3 answered from KVM_SET_CPUID2",
                format!("{} (leaf 0x40000000)", yes_no(l.cpuid_from_table)),
            ));
            facts.push((
                "syscall from ring 3 lands",
                format!(
                    "LSTAR stub at CPL{} (cs {:#x}), rcx = return rip: {}",
                    l.cpl, l.cs, l.rcx_is_return_rip
                ),
            ));
        }
        Err(e) => facts.push(("syscall from ring 3 lands", format!("error: {e}"))),
    }

    // Pagetable coherence: VMM-side store vs in-guest store.
    let l1_entry = L1_BASE + (DATA_A >> 21) * 0x1000 + ((DATA_A >> 12) & 511) * 8;
    let pte_a = DATA_A | pte::P | pte::RW | pte::U | pte::A | pte::D;
    let pte_b = DATA_B | pte::P | pte::RW | pte::U | pte::A | pte::D;
    let rewrite = move |p: &mut ProbeVm, _| {
        let _ = p.vm.memory().write_obj(pte_b, GuestAddress(l1_entry));
    };
    let drift = pvclock_drift_ppm(Duration::from_secs(1))?;
    facts.push((
        "guest clock drift vs host CLOCK_MONOTONIC (1 s)",
        format!("{drift:+.3} ppm ({:+.1} us per minute)", drift * 60.0),
    ));
    let mut pv = ProbeVm::new()?;
    pv.start(Snippet::probe_r3_pte_host, false, 0)?;
    let (end, r) = pv.run(rewrite, false)?;
    expect("pte host store", &end, End::Doorbell)?;
    facts.push((
        "PTE stored by the VMM, seen by guest at once",
        yes_no(r.rbx == 0xbbbb),
    ));
    let mut pv = ProbeVm::new()?;
    pv.start(Snippet::probe_r0_pte_host, true, 0)?;
    let mut after = Vec::new();
    for step in 0..3 {
        let (end, r) = pv.run(no_req, false)?;
        if end != End::Port {
            after.push(format!("{end:?}"));
            break;
        }
        if step == 0 {
            let _ = pv.vm.memory().write_obj(pte_b, GuestAddress(l1_entry));
        } else {
            after.push(yes_no(r.rbx == 0xbbbb));
        }
    }
    facts.push((
        "  ... seen after invlpg / after CR3 reload",
        after.join(" / "),
    ));
    let mut pv = ProbeVm::new()?;
    pv.start(Snippet::probe_r0_pte_guest, true, 0)?;
    let mut regs = pv.vcpu.get_regs_ioctl()?;
    regs.rdx = pte_b;
    pv.vcpu.set_regs_ioctl(&regs)?;
    let (end, r) = pv.run(no_req, false)?;
    facts.push((
        "PTE stored inside the guest, seen after invlpg",
        if end == End::Port {
            yes_no(r.rbx == 0xbbbb)
        } else {
            format!("{end:?}")
        },
    ));
    let _ = pte_a;

    facts.push((
        "guest GDT data selector loads at ring 3",
        yes_no(guest_gdt_selectors_honoured()?),
    ));
    facts.push((
        "guest TSC - host TSC at ring 3 (cycles)",
        guest_tsc_offset()?.to_string(),
    ));
    facts.push((
        "L4 slots ring 3 can use in the hypervisor hole",
        hole_slots_usable()?,
    ));
    facts.push((
        "CR0.TS makes ring-3 SSE raise #NM",
        match cr0_ts_check() {
            Ok(true) => yes_no(true),
            Ok(false) => "no (fpu_taskswitch cannot be enforced here)".to_string(),
            Err(e) => format!("error: {e}"),
        },
    ));

    match xstate_host_with(true) {
        Ok(x) => facts.extend(x.facts()),
        Err(e) => facts.push(("extended state (XCR0, PKRU)", format!("error: {e}"))),
    }

    // Which ring-0 instructions the host executes.
    let mut instructions = Vec::new();
    for (name, s, want) in [
        ("iretq", Snippet::probe_i_iretq, End::Port),
        ("sysretq", Snippet::probe_i_sysret, End::Doorbell),
        ("swapgs", Snippet::probe_i_swapgs, End::Port),
        ("wrmsr", Snippet::probe_i_wrmsr, End::Port),
        ("rdmsr", Snippet::probe_i_rdmsr, End::Port),
        ("mov cr3", Snippet::probe_i_movcr3, End::Port),
        ("mov cr4", Snippet::probe_i_movcr4, End::Port),
        ("invlpg", Snippet::probe_i_invlpg, End::Port),
        ("lgdt", Snippet::probe_i_lgdt, End::Port),
        ("lidt", Snippet::probe_i_lidt, End::Port),
        ("ltr", Snippet::probe_i_ltr, End::Port),
        ("xsave", Snippet::probe_i_xsave, End::Port),
        ("xrstor", Snippet::probe_i_xrstor, End::Port),
        ("lock cmpxchg16b", Snippet::probe_i_cmpxchg16b, End::Port),
        ("cpuid", Snippet::probe_i_cpuid, End::Port),
        ("hlt", Snippet::probe_i_hlt, End::Hlt),
    ] {
        let mut vm = ProbeVm::new()?;
        vm.start(s, true, 0)?;
        let outcome = match vm.run(no_req, false) {
            Ok((end, _)) if end == want => "works".to_string(),
            Ok((End::InternalError(e), _)) => {
                format!("NOT emulated (KVM internal error {e}: the VM dies)")
            }
            Ok((End::Exception(v), _)) => format!("raises exception {v}"),
            Ok((end, _)) => format!("ends as {end:?}"),
            Err(e) => format!("error: {e}"),
        };
        instructions.push((name, outcome));
    }

    let kind = if host.module == "kvm_pvm" || host.cpu_virt_flag.is_none() {
        "software (no VT-x/AMD-V)"
    } else {
        "hardware"
    };
    facts.insert(0, ("KVM_CAP_XEN_HVM", host.xen_hvm.to_string()));
    facts.insert(0, ("KVM_CAP_SYNC_REGS", yes_no(host.sync_regs)));
    Ok(Report {
        host,
        kind,
        tsc_mhz: mhz,
        figures,
        facts,
        instructions,
    })
}

/// Which L4 slots of the hypervisor hole (256..=271) a ring-3 read can go through here:
/// the host may keep some of the upper half for itself.
fn hole_slots_usable() -> Result<String, Error> {
    let mut bad = Vec::new();
    let shim_slot = (xen_abi::contract::SHIM_VA_BASE >> 39) & 511;
    for slot in (256u64..=271).filter(|&s| s != shim_slot) {
        let end = hole_slot_read(slot)?;
        if end != HOLE_READ_OK {
            bad.push(format!("{slot} ({end:?})"));
        }
    }
    Ok(if bad.is_empty() {
        format!("all (slot {shim_slot}, the shim's, not tested)")
    } else {
        format!(
            "all but {} (slot {shim_slot}, the shim's, not tested)",
            bad.join(", ")
        )
    })
}

/// A TSC reading paired with the host's monotonic clock, taken so that the two are as
/// close together as this host allows (the tightest of a few tries).
fn paired_reading() -> (u64, Instant) {
    let mut best: Option<(u64, u64, Instant)> = None;
    for _ in 0..64 {
        // SAFETY: rdtsc has no memory effects.
        let before = unsafe { core::arch::x86_64::_rdtsc() };
        let now = Instant::now();
        // SAFETY: as above.
        let after = unsafe { core::arch::x86_64::_rdtsc() };
        let width = after.wrapping_sub(before);
        if best.is_none_or(|(w, _, _)| width < w) {
            best = Some((width, before + width / 2, now));
        }
    }
    let (_, tsc, now) = best.expect("at least one reading");
    (tsc, now)
}

/// How fast the guest's clock runs against the host's `CLOCK_MONOTONIC`, in parts per
/// million (positive: the guest's clock is fast), measured over `over`. The guest's
/// clock is the pvclock pvkvm publishes: the TSC scaled by the frequency KVM reports for
/// the vCPU (`KVM_GET_TSC_KHZ`), the same `PvClock` the runner builds. 1 ms per minute is
/// 16.7 ppm.
pub fn pvclock_drift_ppm(over: Duration) -> Result<f64, Error> {
    let p = ProbeVm::new()?;
    let tsc_hz = u64::from(p.vcpu.tsc_khz()?) * 1000;
    let (t0, i0) = paired_reading();
    let clock = pv_engine::time::PvClock::new(t0, tsc_hz);
    std::thread::sleep(over);
    let (t1, i1) = paired_reading();
    let guest_ns = clock.ns(t1) as f64;
    let host_ns = (i1 - i0).as_nanos() as f64;
    Ok((guest_ns - host_ns) / host_ns * 1e6)
}

/// Guest TSC minus host TSC, as a ring-3 `rdtsc` sees it (0 within the exit's duration
/// when the host does not offset the guest's TSC).
pub fn guest_tsc_offset() -> Result<i64, Error> {
    let mut p = ProbeVm::new()?;
    p.start(Snippet::probe_r3_rdtsc, false, 0)?;
    let (end, r) = p.run(|_: &mut ProbeVm, _| {}, false)?;
    // SAFETY: rdtsc has no memory effects.
    let host = unsafe { core::arch::x86_64::_rdtsc() };
    if end != End::Doorbell {
        return Err(Error::Step("guest TSC", format!("{end:?}")));
    }
    Ok(r.rbx.wrapping_sub(host) as i64)
}

/// Whether guest ring 3 runs with the guest's own descriptor tables: a data selector
/// the guest put in its GDT (index 2, which a Linux host uses for its kernel code)
/// loads into %ds and stays there.
pub fn guest_gdt_selectors_honoured() -> Result<bool, Error> {
    let mut p = ProbeVm::new()?;
    let flat_data_dpl3 = 0x00cf_f300_0000_ffffu64;
    let gdt = p.region.vcpu0().block_gpa + layout::vcpu::GDT;
    p.vm.memory()
        .write_obj(flat_data_dpl3, GuestAddress(gdt + 16))
        .map_err(|_| shim::Error::Memory(gdt))?;
    p.start(Snippet::probe_r3_load_ds, false, 0)?;
    let (end, r) = p.run(|_: &mut ProbeVm, _| {}, false)?;
    Ok(end == End::Doorbell && r.rbx & 0xffff == 0x13)
}

/// Whether this host's KVM makes a guest SSE instruction at ring 3 fault with #NM when
/// the guest's CR0.TS is set (software backends that run ring 3 natively may not).
pub fn cr0_ts_honoured() -> Result<bool, Error> {
    cr0_ts_check()
}

fn cr0_ts_check() -> Result<bool, Error> {
    let mut p = ProbeVm::new()?;
    p.start(Snippet::probe_r3_sse, false, 0)?;
    let mut sregs = p.vcpu.sregs()?;
    sregs.cr0 |= 8;
    p.vcpu.set_sregs_ioctl(&sregs)?;
    let (end, _) = p.run(|_: &mut ProbeVm, _| {}, false)?;
    match end {
        End::Exception(7) => Ok(true),
        End::Doorbell => Ok(false),
        other => Err(Error::Step("CR0.TS", format!("{other:?}"))),
    }
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.to_string()
}

fn expect(step: &'static str, got: &End, want: End) -> Result<(), Error> {
    if *got == want {
        Ok(())
    } else {
        Err(Error::Step(step, format!("{got:?}")))
    }
}

impl Report {
    /// Human-readable table.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "host KVM: {} (module {}, cpu flag {}), API {}",
            self.kind,
            self.host.module,
            self.host.cpu_virt_flag.as_deref().unwrap_or("none"),
            self.host.api_version
        );
        let _ = writeln!(s, "TSC: {:.0} MHz", self.tsc_mhz);
        let _ = writeln!(s, "\ntimings");
        for f in &self.figures {
            let _ = writeln!(s, "  {:<50} {:>10.2} {}", f.name, f.value, f.unit);
        }
        let _ = writeln!(s, "\nfacts");
        for (k, v) in &self.facts {
            let _ = writeln!(s, "  {k:<48} {v}");
        }
        let _ = writeln!(s, "\nring-0 instructions");
        for (k, v) in &self.instructions {
            let _ = writeln!(s, "  {k:<18} {v}");
        }
        s
    }

    /// JSON (hand-built: flat and small).
    pub fn to_json(&self) -> String {
        let timings: Vec<serde_json::Value> = self
            .figures
            .iter()
            .map(|f| {
                let value = (f.value * 1000.0).round() / 1000.0;
                serde_json::json!({ "name": f.name, "value": value, "unit": f.unit })
            })
            .collect();
        let facts: serde_json::Map<String, serde_json::Value> = self
            .facts
            .iter()
            .map(|(k, v)| (k.trim().to_string(), v.clone().into()))
            .collect();
        let ins: serde_json::Map<String, serde_json::Value> = self
            .instructions
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone().into()))
            .collect();
        serde_json::json!({
            "kind": self.kind,
            "module": self.host.module,
            "tsc_mhz": (self.tsc_mhz * 10.0).round() / 10.0,
            "sync_regs": self.host.sync_regs,
            "xen_hvm": self.host.xen_hvm,
            "timings": timings,
            "facts": facts,
            "ring0_instructions": ins,
        })
        .to_string()
    }
}

/// Where a `syscall` from guest ring 3 lands ([`syscall_landing`]).
#[derive(Clone, Copy, Debug)]
pub struct SyscallLanding {
    /// The CPL the LSTAR stub runs at: 3 on software backends that run ring 3
    /// natively, 0 with hardware virtualization.
    pub cpl: u8,
    /// The CS selector there.
    pub cs: u16,
    /// rcx holds the return address, as `syscall` saves it.
    pub rcx_is_return_rip: bool,
    /// The ring-3 `cpuid` of leaf 0x40000000 before it was answered from pvkvm's
    /// `KVM_SET_CPUID2` table (a signature only that table has).
    pub cpuid_from_table: bool,
}

/// Runs a ring-3 `cpuid` then `syscall` and reports where the `syscall` landed.
pub fn syscall_landing() -> Result<SyscallLanding, Error> {
    let mut p = ProbeVm::new()?;
    p.start(Snippet::probe_r3_cpuid, false, 0)?;
    match p.vcpu.run()? {
        Exit::IoOut {
            port: port::HYPERCALL,
            ..
        } => {
            let s = p.vcpu.sregs()?;
            let r = p.vcpu.regs()?;
            Ok(SyscallLanding {
                cpl: s.cs.dpl,
                cs: s.cs.selector,
                rcx_is_return_rip: r.rcx > CODE_GPA,
                cpuid_from_table: r.r12 as u32 == u32::from_le_bytes(*b"pvkv"),
            })
        }
        other => Err(Error::Step("syscall landing", format!("{other:?}"))),
    }
}

/// Whether a PTE stored by the VMM through its own mapping is seen by the guest's next
/// access without any flush inside the guest (hardware paging: yes; shadow paging: no).
pub fn vmm_pte_store_visible() -> Result<bool, Error> {
    let l1_entry = L1_BASE + (DATA_A >> 21) * 0x1000 + ((DATA_A >> 12) & 511) * 8;
    let pte_b = DATA_B | pte::P | pte::RW | pte::U | pte::A | pte::D;
    let mut p = ProbeVm::new()?;
    p.start(Snippet::probe_r3_pte_host, false, 0)?;
    let (end, r) = p.run(
        move |p: &mut ProbeVm, _| {
            let _ = p.vm.memory().write_obj(pte_b, GuestAddress(l1_entry));
        },
        false,
    )?;
    expect("pte host store", &end, End::Doorbell)?;
    Ok(r.rbx == 0xbbbb)
}

/// Whether a PTE the VMM stores through its own mapping over a *not-present* entry is
/// seen by the guest's next access without any flush inside the guest, after the guest
/// has already faulted on that entry and touched its neighbours (so the host's shadow
/// of the table exists): the case of a Linux page fault's `set_pte`. A shadow MMU holds
/// no translation of a not-present entry, so its next walk reads memory; where this
/// holds, the VMM writes such stores without posting them (`Paths::absent_stores_unposted`).
pub fn vmm_absent_pte_store_visible() -> Result<bool, Error> {
    const DATA_C: u64 = DATA_A + 0x2000;
    let l1_entry = L1_BASE + (DATA_C >> 21) * 0x1000 + ((DATA_C >> 12) & 511) * 8;
    let present = DATA_C | pte::P | pte::RW | pte::U | pte::A | pte::D;
    let mut p = ProbeVm::new()?;
    let mem = p.vm.memory();
    mem.write_obj(0xccccu64, GuestAddress(DATA_C))
        .and_then(|()| mem.write_obj(0u64, GuestAddress(l1_entry)))
        .map_err(|_| shim::Error::Memory(l1_entry))?;
    // A neighbour in the same table and prefetch group first.
    p.start(Snippet::probe_r3_read, false, DATA_A)?;
    let (end, _) = p.run(|_: &mut ProbeVm, _| {}, false)?;
    expect("absent pte: neighbour", &end, End::Doorbell)?;
    p.start(Snippet::probe_r3_read, false, DATA_C)?;
    let (end, _) = p.run(|_: &mut ProbeVm, _| {}, false)?;
    expect("absent pte: first touch", &end, End::Exception(14))?;
    p.vm.memory()
        .write_obj(present, GuestAddress(l1_entry))
        .map_err(|_| shim::Error::Memory(l1_entry))?;
    // The #PF stub resumes past its doorbell and returns to the read, which retries.
    let (end, r) = p.run(|_: &mut ProbeVm, _| {}, false)?;
    Ok(end == End::Doorbell && r.rbx == 0xcccc)
}

/// Whether a port-I/O exit reports rip past the `out` (kvm_pvm's emulator finishes the
/// instruction first) rather than at it (KVM's fast PIO with hardware virtualization,
/// which skips it at the next entry): one ring-3 doorbell, and the two bytes before the
/// reported rip.
pub fn io_exit_rip_past() -> Result<bool, Error> {
    let mut p = ProbeVm::new()?;
    p.start(Snippet::probe_r3_out, false, 1)?;
    match p.vcpu.run()? {
        Exit::IoOut {
            port: port::HYPERCALL,
            ..
        } => {}
        other => return Err(Error::Step("io exit rip", format!("{other:?}"))),
    }
    let rip = p.vcpu.regs()?.rip;
    let mut before = [0u8; 2];
    p.vm.memory()
        .read_slice(&mut before, GuestAddress(rip.wrapping_sub(2)))
        .map_err(|_| shim::Error::Memory(rip))?;
    Ok(before == [0xe6, port::HYPERCALL as u8])
}

/// Guest TSC minus host TSC as guest ring 3 reads it, bracketed by host reads around
/// the run: returns the offset and its uncertainty (half the bracket), in cycles.
pub fn guest_tsc_offset_bracketed() -> Result<(i64, u64), Error> {
    let mut p = ProbeVm::new()?;
    p.start(Snippet::probe_r3_rdtsc, false, 0)?;
    // SAFETY: rdtsc has no memory effects.
    let before = unsafe { core::arch::x86_64::_rdtsc() };
    let (end, r) = p.run(|_: &mut ProbeVm, _| {}, false)?;
    // SAFETY: as above.
    let after = unsafe { core::arch::x86_64::_rdtsc() };
    if end != End::Doorbell {
        return Err(Error::Step("guest TSC", format!("{end:?}")));
    }
    let half = after.wrapping_sub(before) / 2;
    let mid = before.wrapping_add(half);
    Ok((r.rbx.wrapping_sub(mid) as i64, half))
}

/// Whether guest code reads the guest's own TSC_AUX: the VMM sets the vCPU's TSC_AUX
/// (`KVM_SET_MSRS`) and a ring-3 `rdtscp` must return it. False where KVM refuses the
/// MSR, `rdtscp` faults, or it returns something else (software KVM runs guest ring 3
/// on the host's TSC_AUX).
pub fn guest_tsc_aux_loaded() -> Result<bool, Error> {
    const MSR_TSC_AUX: u32 = 0xc000_0103;
    const MARK: u64 = 0x5a5a;
    let mut p = ProbeVm::new()?;
    if p.vcpu.set_msr(MSR_TSC_AUX, MARK).is_err() {
        return Ok(false);
    }
    p.start(Snippet::probe_r3_rdtscp, false, 0)?;
    let (end, r) = p.run(|_: &mut ProbeVm, _| {}, false)?;
    Ok(end == End::Doorbell && r.rbx & 0xffff_ffff == MARK)
}

/// Whether a ring-3 read through L4 slot `slot` of the hypervisor hole works here (the
/// host may keep some upper-half slots for itself).
pub fn hole_slot_usable(slot: u64) -> Result<bool, Error> {
    Ok(hole_slot_read(slot)? == HOLE_READ_OK)
}

/// How [`hole_slot_read`] ends when the read went through.
const HOLE_READ_OK: End = End::Doorbell;

/// A ring-3 read of `DATA_A` through L4 slot `slot`: ends at the doorbell when the
/// read returned the data, as the exception it raised otherwise.
fn hole_slot_read(slot: u64) -> Result<End, Error> {
    let mut p = ProbeVm::new()?;
    let entry = 0x2000 | pte::P | pte::RW | pte::U | pte::A;
    p.vm.memory()
        .write_obj(entry, GuestAddress(L4 + slot * 8))
        .map_err(|_| shim::Error::Memory(L4))?;
    let va = 0xffff_0000_0000_0000 | (slot << 39) | DATA_A;
    p.start(Snippet::probe_r3_read, false, va)?;
    let (end, r) = p.run(|_: &mut ProbeVm, _| {}, false)?;
    Ok(match end {
        End::Doorbell if r.rbx != 0xaaaa => End::Other(format!("read {:#x}", r.rbx)),
        other => other,
    })
}

/// XCR0 component bits.
const XCR0_X87: u64 = 1 << 0;
const XCR0_SSE: u64 = 1 << 1;
const XCR0_AVX: u64 = 1 << 2;
/// XCR0 bit of PKRU.
const XCR0_PKRU: u64 = 1 << 9;
/// CR4.OSXSAVE, CR4.PKE.
const CR4_OSXSAVE: u64 = 1 << 18;
const CR4_PKE: u64 = 1 << 22;

/// What a ring-3 probe instruction did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ring3 {
    /// It ran; the value it produced.
    Value(u64),
    /// It raised this exception.
    Fault(u8),
    /// The probe could not tell (set-up refused or an unexpected end).
    Unknown,
}

impl std::fmt::Display for Ring3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Ring3::Value(v) => write!(f, "{v:#x}"),
            Ring3::Fault(6) => write!(f, "#UD"),
            Ring3::Fault(13) => write!(f, "#GP"),
            Ring3::Fault(v) => write!(f, "exception {v}"),
            Ring3::Unknown => write!(f, "unknown"),
        }
    }
}

/// Extended-state facts of this host (issue 9): what XCR0 and PKRU guest ring 3 runs
/// with, and who answers its CPUID. The runner reads [`XstateHost::xcr0_follows_vcpu`]
/// to decide whether the guest is offered XSAVE (with `xsetbv` emulated) or not.
#[derive(Clone, Debug)]
pub struct XstateHost {
    /// XCR0 components KVM supports (`KVM_GET_SUPPORTED_CPUID` leaf 0xD.0 EDX:EAX).
    pub kvm_xcr0_mask: u64,
    /// Ring-3 `xgetbv(0)` after `KVM_SET_XCRS` of x87|SSE.
    pub xgetbv_after_sse: Ring3,
    /// Ring-3 `xgetbv(0)` after `KVM_SET_XCRS` of x87|SSE|AVX.
    pub xgetbv_after_avx: Ring3,
    /// A ring-3 AVX instruction (`vpxor %ymm15`) with XCR0 = x87|SSE.
    pub avx_with_sse_only: Ring3,
    /// The same with XCR0 = x87|SSE|AVX.
    pub avx_with_avx: Ring3,
    /// Ring-3 `xgetbv(0)` with the vCPU's CR4.OSXSAVE clear.
    pub xgetbv_without_osxsave: Ring3,
    /// Ring-3 `rdpkru` with the vCPU's CR4.PKE clear.
    pub rdpkru_without_pke: Ring3,
    /// Ring-3 `wrpkru(8)` then `rdpkru`, CR4.PKE clear.
    pub wrpkru_without_pke: Ring3,
    /// PKRU as `KVM_GET_XSAVE` reports it after the ring-3 `wrpkru` (None: the XSAVE
    /// header says PKRU is not in the image, or the ioctl failed).
    pub pkru_in_kvm_xsave: Option<u32>,
    /// Ring-3 `rdpkru` after `KVM_SET_XSAVE` put PKRU 0x55555554 in the image.
    pub rdpkru_after_set_xsave: Ring3,
    /// Cost of one `KVM_GET_XSAVE` + `KVM_SET_XSAVE` pair (us).
    pub xsave_ioctls_us: f64,
    /// Ring-3 leaf 1 is the `KVM_SET_CPUID2` table's, not the host CPU's (AVX, ECX bit
    /// 28, set opposite to the host's in the table).
    pub leaf1_from_table: Option<bool>,
    /// The same for leaf 7.0 (AVX2, EBX bit 5).
    pub leaf7_from_table: Option<bool>,
    /// Ring-3 leaf 1 ECX.OSXSAVE with the vCPU's CR4.OSXSAVE clear, then set.
    pub ring3_osxsave: (Option<bool>, Option<bool>),
    /// Leaf 1 ECX and leaf 7.0 ECX as ring 3 reads them (with the table's bits as KVM
    /// adjusts them: OSXSAVE and OSPKE follow the vCPU's CR4).
    pub ring3_leaf1_ecx: Option<u32>,
    /// Leaf 7.0 ECX at ring 3.
    pub ring3_leaf7_ecx: Option<u32>,
}

impl XstateHost {
    /// Whether the XCR0 guest ring 3 runs with is the vCPU's XCR0 as the VMM sets it
    /// through `KVM_SET_XCRS` (xgetbv reads it back and AVX faults without the AVX
    /// bit): then the guest kernel may own XCR0 through emulated `xsetbv` and be offered
    /// XSAVE. Otherwise XSAVE and everything built on it must be hidden.
    pub fn xcr0_follows_vcpu(&self) -> bool {
        let sse = XCR0_X87 | XCR0_SSE;
        let avx_ok = self.kvm_xcr0_mask & XCR0_AVX == 0
            || (self.xgetbv_after_avx == Ring3::Value(sse | XCR0_AVX)
                && self.avx_with_sse_only == Ring3::Fault(6)
                && matches!(self.avx_with_avx, Ring3::Value(_)));
        self.xgetbv_after_sse == Ring3::Value(sse) && avx_ok
    }

    /// Whether KVM's XSAVE image carries guest PKRU both ways: the probe's ring-3
    /// `wrpkru(8)` shows in `KVM_GET_XSAVE`, and a `KVM_SET_XSAVE` of 0x55555554 is
    /// what ring 3 then reads.
    pub fn pkru_in_xsave_image(&self) -> bool {
        self.pkru_in_kvm_xsave == Some(8)
            && self.rdpkru_after_set_xsave == Ring3::Value(0x5555_5554)
    }

    /// Whether a guest process can change PKRU at ring 3 on this host.
    pub fn wrpkru_reachable(&self) -> bool {
        matches!(self.wrpkru_without_pke, Ring3::Value(_))
    }

    /// The facts as (name, value) lines for the report.
    pub fn facts(&self) -> Vec<(&'static str, String)> {
        let opt = |b: Option<bool>| b.map_or("unknown".to_string(), yes_no);
        vec![
            (
                "KVM's supported XCR0 (leaf 0xD.0)",
                format!("{:#x}", self.kvm_xcr0_mask),
            ),
            (
                "ring-3 xgetbv after KVM_SET_XCRS 0x3 / 0x7",
                format!("{} / {}", self.xgetbv_after_sse, self.xgetbv_after_avx),
            ),
            (
                "ring-3 AVX (ymm) with XCR0 0x3 / 0x7",
                format!(
                    "{} / {}",
                    works_or(self.avx_with_sse_only),
                    works_or(self.avx_with_avx)
                ),
            ),
            (
                "  => ring-3 XCR0 is the vCPU's (KVM_SET_XCRS)",
                yes_no(self.xcr0_follows_vcpu()),
            ),
            (
                "ring-3 xgetbv with vCPU CR4.OSXSAVE clear",
                self.xgetbv_without_osxsave.to_string(),
            ),
            (
                "ring-3 rdpkru / wrpkru(8) (vCPU CR4.PKE clear)",
                format!("{} / {}", self.rdpkru_without_pke, self.wrpkru_without_pke),
            ),
            (
                "PKRU in KVM_GET_XSAVE after ring-3 wrpkru",
                self.pkru_in_kvm_xsave
                    .map_or("absent".to_string(), |v| format!("{v:#x}")),
            ),
            (
                "ring-3 rdpkru after KVM_SET_XSAVE(PKRU)",
                self.rdpkru_after_set_xsave.to_string(),
            ),
            (
                "KVM_GET_XSAVE + KVM_SET_XSAVE",
                format!("{:.2} us", self.xsave_ioctls_us),
            ),
            (
                "ring-3 CPUID leaf 1 / 7 from KVM_SET_CPUID2",
                format!(
                    "{} / {}",
                    opt(self.leaf1_from_table),
                    opt(self.leaf7_from_table)
                ),
            ),
            (
                "ring-3 CPUID OSXSAVE with vCPU CR4.OSXSAVE 0 / 1",
                format!(
                    "{} / {}",
                    opt(self.ring3_osxsave.0),
                    opt(self.ring3_osxsave.1)
                ),
            ),
            (
                "ring-3 CPUID leaf 1 ECX / leaf 7 ECX",
                format!(
                    "{} / {}",
                    self.ring3_leaf1_ecx
                        .map_or("?".into(), |v| format!("{v:#010x}")),
                    self.ring3_leaf7_ecx
                        .map_or("?".into(), |v| format!("{v:#010x}"))
                ),
            ),
        ]
    }
}

fn works_or(r: Ring3) -> String {
    match r {
        Ring3::Value(_) => "works".to_string(),
        other => other.to_string(),
    }
}

/// Runs a ring-3 snippet in `p` and says what it did (rbx, or the exception).
fn ring3(p: &mut ProbeVm, s: Snippet, rdi: u64) -> Ring3 {
    if p.start(s, false, rdi).is_err() {
        return Ring3::Unknown;
    }
    match p.run(|_: &mut ProbeVm, _| {}, false) {
        Ok((End::Doorbell, r)) => Ring3::Value(r.rbx),
        Ok((End::Exception(v), _)) => Ring3::Fault(v),
        _ => Ring3::Unknown,
    }
}

/// A probe VM with the vCPU's CR4 bits `set` set and `clear` cleared.
fn probe_vm_cr4(set: u64, clear: u64) -> Result<ProbeVm, Error> {
    let mut p = ProbeVm::new()?;
    let mut s = p.vcpu.sregs()?;
    s.cr4 = (s.cr4 | set) & !clear;
    p.vcpu.set_sregs_ioctl(&s)?;
    Ok(p)
}

/// Ring-3 `xgetbv` and AVX with the vCPU's CR4.OSXSAVE set and its XCR0 set to `xcr0`
/// (KVM loads a guest's XCR0 only while its CR4.OSXSAVE is set).
fn with_xcr0(xcr0: u64) -> Result<(Ring3, Ring3), Error> {
    let mut p = probe_vm_cr4(CR4_OSXSAVE, 0)?;
    if p.vcpu.set_xcr0(xcr0).is_err() {
        return Ok((Ring3::Unknown, Ring3::Unknown));
    }
    let x = ring3(&mut p, Snippet::probe_r3_xgetbv, 0);
    let avx = ring3(&mut p, Snippet::probe_r3_avx, 0);
    Ok((x, avx))
}

/// Ring-3 raw CPUID of `leaf` in `p`: eax..edx.
fn ring3_cpuid(p: &mut ProbeVm, leaf: u32, subleaf: u32) -> Option<[u32; 4]> {
    p.start(Snippet::probe_r3_cpuid_leaf, false, u64::from(leaf))
        .ok()?;
    let mut regs = p.vcpu.get_regs_ioctl().ok()?;
    regs.rsi = u64::from(subleaf);
    p.vcpu.set_regs_ioctl(&regs).ok()?;
    match p.run(|_: &mut ProbeVm, _| {}, false) {
        Ok((End::Doorbell, r)) => Some([r.r12 as u32, r.r13 as u32, r.r14 as u32, r.r15 as u32]),
        _ => None,
    }
}

/// Measures the extended-state facts (each experiment in a fresh probe VM), without the
/// ioctl timing (what the runner needs: ~40 ms).
pub fn xstate_host() -> Result<XstateHost, Error> {
    xstate_host_with(false)
}

/// [`xstate_host`], timing `KVM_GET_XSAVE` + `KVM_SET_XSAVE` when `timed`.
pub fn xstate_host_with(timed: bool) -> Result<XstateHost, Error> {
    let supported = ProbeVm::new()?.vm.supported_cpuid()?;
    let kvm_xcr0_mask = supported
        .as_slice()
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .map_or(0, |e| u64::from(e.eax) | (u64::from(e.edx) << 32));
    let (xgetbv_after_sse, avx_with_sse_only) = with_xcr0(XCR0_X87 | XCR0_SSE)?;
    let (xgetbv_after_avx, avx_with_avx) = with_xcr0(XCR0_X87 | XCR0_SSE | XCR0_AVX)?;
    let xgetbv_without_osxsave = ring3(
        &mut probe_vm_cr4(0, CR4_OSXSAVE)?,
        Snippet::probe_r3_xgetbv,
        0,
    );
    let mut p = probe_vm_cr4(0, CR4_PKE)?;
    let rdpkru_without_pke = ring3(&mut p, Snippet::probe_r3_rdpkru, 0);
    let wrpkru_without_pke = ring3(&mut p, Snippet::probe_r3_wrpkru, 8);
    let area = p.vcpu.xsave_area().ok();
    let pkru_in_kvm_xsave = area.and_then(|a| {
        let xstate_bv = u64::from_le_bytes(a[512..520].try_into().ok()?);
        let at = vstate::XSAVE_PKRU_OFFSET;
        (xstate_bv & XCR0_PKRU != 0)
            .then(|| u32::from_le_bytes([a[at], a[at + 1], a[at + 2], a[at + 3]]))
    });
    let mut rdpkru_after_set_xsave = Ring3::Unknown;
    let mut xsave_ioctls_us = f64::NAN;
    if let Some(mut a) = area {
        let at = vstate::XSAVE_PKRU_OFFSET;
        a[at..at + 4].copy_from_slice(&0x5555_5554u32.to_le_bytes());
        let bv = u64::from_le_bytes(a[512..520].try_into().unwrap_or([0; 8])) | XCR0_PKRU;
        a[512..520].copy_from_slice(&bv.to_le_bytes());
        if p.vcpu.set_xsave_area(&a).is_ok() {
            rdpkru_after_set_xsave = ring3(&mut p, Snippet::probe_r3_rdpkru, 0);
        }
        let t = Instant::now();
        let n = if timed { 200 } else { 0 };
        for _ in 0..n {
            if let Ok(x) = p.vcpu.xsave_area() {
                let _ = p.vcpu.set_xsave_area(&x);
            }
        }
        if timed {
            xsave_ioctls_us = t.elapsed().as_secs_f64() * 1e6 / f64::from(n);
        }
    }
    // The table's leaf 1 AVX (ECX bit 28) and leaf 7 AVX2 (EBX bit 5) set opposite to the
    // host's own CPUID (as this process reads it): ring 3 then tells whose it reads.
    let host1 = core::arch::x86_64::__cpuid_count(1, 0);
    let host7 = core::arch::x86_64::__cpuid_count(7, 0);
    let mut p = ProbeVm::with_cpuid(|c| {
        for e in c.as_mut_slice().iter_mut() {
            match (e.function, e.index) {
                (1, _) => e.ecx = (e.ecx & !(1 << 28)) | (!host1.ecx & (1 << 28)),
                (7, 0) => e.ebx = (e.ebx & !(1 << 5)) | (!host7.ebx & (1 << 5)),
                _ => {}
            }
        }
    })?;
    let l1 = ring3_cpuid(&mut p, 1, 0);
    let l7 = ring3_cpuid(&mut p, 7, 0);
    let osxsave_with_cr4 = ring3_cpuid(&mut probe_vm_cr4(CR4_OSXSAVE, 0)?, 1, 0);
    let osxsave_without = ring3_cpuid(&mut probe_vm_cr4(0, CR4_OSXSAVE)?, 1, 0);
    let osxsave = |r: Option<[u32; 4]>| r.map(|r| r[2] & (1 << 27) != 0);
    Ok(XstateHost {
        kvm_xcr0_mask,
        xgetbv_after_sse,
        xgetbv_after_avx,
        avx_with_sse_only,
        avx_with_avx,
        xgetbv_without_osxsave,
        rdpkru_without_pke,
        wrpkru_without_pke,
        pkru_in_kvm_xsave,
        rdpkru_after_set_xsave,
        xsave_ioctls_us,
        leaf1_from_table: l1.map(|r| (r[2] ^ host1.ecx) & (1 << 28) != 0),
        leaf7_from_table: l7.map(|r| (r[1] ^ host7.ebx) & (1 << 5) != 0),
        ring3_osxsave: (osxsave(osxsave_without), osxsave(osxsave_with_cr4)),
        ring3_leaf1_ecx: l1.map(|r| r[2]),
        ring3_leaf7_ecx: l7.map(|r| r[2]),
    })
}
