//! `simd_preserved`: the hypervisor preserves the guest's SIMD registers across a
//! hypercall and across an exception bounce.
//!
//! Fills xmm0-xmm15 with distinct 16-byte patterns, makes a hypercall
//! (`xen_version(XENVER_version)`) and compares all 16; fills them again, takes an `int3`
//! bounce (the handler is assembly that touches no SIMD state) and compares again. If
//! CPUID reports AVX and OSXSAVE and XCR0 enables SSE and AVX state, does the same for
//! the full 32 bytes of ymm0-ymm15 (so the upper halves are checked too).
#![no_std]
#![no_main]
// `&mut *(&raw mut X)` is deliberate: it avoids a reference to a `static mut` in one step.
#![allow(clippy::deref_addrof)]

use core::arch::asm;
use pv_test_kernels::traps::{install_trap_table, last_trap};
use pv_test_kernels::{fail, println, test_kernel, StartInfo};

test_kernel!(main);

#[repr(C, align(32))]
struct Buf([u8; 512]);

static mut PATTERN: Buf = Buf([0; 512]);
static mut OUT: Buf = Buf([0; 512]);

fn fill_pattern(salt: u8) {
    // SAFETY: single vcpu; plain static.
    let p = unsafe { &mut *(&raw mut PATTERN) };
    for (i, b) in p.0.iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7).wrapping_add(salt) ^ ((i >> 5) as u8).wrapping_mul(0x35);
    }
    // SAFETY: as above.
    unsafe { (*(&raw mut OUT)).0 = [0; 512] };
}

fn compare(what: &str, width: usize) {
    // SAFETY: single vcpu; plain statics.
    let (p, o) = unsafe { (&(*(&raw const PATTERN)).0, &(*(&raw const OUT)).0) };
    for r in 0..16 {
        let (a, b) = (
            &p[r * width..(r + 1) * width],
            &o[r * width..(r + 1) * width],
        );
        if a != b {
            let i = a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(0);
            fail!(
                "{}: {}{} byte {} is {:#04x}, expected {:#04x}",
                what,
                if width == 16 { "xmm" } else { "ymm" },
                r,
                i,
                b[i],
                a[i]
            );
        }
    }
}

macro_rules! xmm_roundtrip {
    ($middle:literal) => {
        // SAFETY: loads/stores the statics; the middle part is a hypercall or an armed
        // int3; all vector registers and the hypercall registers are declared clobbered.
        unsafe {
            asm!(
                "movdqu xmm0, [{p}]", "movdqu xmm1, [{p} + 16]", "movdqu xmm2, [{p} + 32]",
                "movdqu xmm3, [{p} + 48]", "movdqu xmm4, [{p} + 64]", "movdqu xmm5, [{p} + 80]",
                "movdqu xmm6, [{p} + 96]", "movdqu xmm7, [{p} + 112]", "movdqu xmm8, [{p} + 128]",
                "movdqu xmm9, [{p} + 144]", "movdqu xmm10, [{p} + 160]", "movdqu xmm11, [{p} + 176]",
                "movdqu xmm12, [{p} + 192]", "movdqu xmm13, [{p} + 208]", "movdqu xmm14, [{p} + 224]",
                "movdqu xmm15, [{p} + 240]",
                $middle,
                "movdqu [{o}], xmm0", "movdqu [{o} + 16], xmm1", "movdqu [{o} + 32], xmm2",
                "movdqu [{o} + 48], xmm3", "movdqu [{o} + 64], xmm4", "movdqu [{o} + 80], xmm5",
                "movdqu [{o} + 96], xmm6", "movdqu [{o} + 112], xmm7", "movdqu [{o} + 128], xmm8",
                "movdqu [{o} + 144], xmm9", "movdqu [{o} + 160], xmm10", "movdqu [{o} + 176], xmm11",
                "movdqu [{o} + 192], xmm12", "movdqu [{o} + 208], xmm13", "movdqu [{o} + 224], xmm14",
                "movdqu [{o} + 240], xmm15",
                p = in(reg) (&raw const PATTERN) as u64,
                o = in(reg) (&raw mut OUT) as u64,
                out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
                out("r8") _, out("r10") _, out("r11") _,
                out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
                out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            );
        }
    };
}

macro_rules! ymm_roundtrip {
    ($middle:literal) => {
        // SAFETY: as xmm_roundtrip; AVX availability was checked by the caller. The
        // compiler does not use AVX (target-cpu x86-64), so clobbering the xmm halves
        // covers all the state it knows about.
        unsafe {
            asm!(
                "vmovdqu ymm0, [{p}]", "vmovdqu ymm1, [{p} + 32]", "vmovdqu ymm2, [{p} + 64]",
                "vmovdqu ymm3, [{p} + 96]", "vmovdqu ymm4, [{p} + 128]", "vmovdqu ymm5, [{p} + 160]",
                "vmovdqu ymm6, [{p} + 192]", "vmovdqu ymm7, [{p} + 224]", "vmovdqu ymm8, [{p} + 256]",
                "vmovdqu ymm9, [{p} + 288]", "vmovdqu ymm10, [{p} + 320]", "vmovdqu ymm11, [{p} + 352]",
                "vmovdqu ymm12, [{p} + 384]", "vmovdqu ymm13, [{p} + 416]", "vmovdqu ymm14, [{p} + 448]",
                "vmovdqu ymm15, [{p} + 480]",
                $middle,
                "vmovdqu [{o}], ymm0", "vmovdqu [{o} + 32], ymm1", "vmovdqu [{o} + 64], ymm2",
                "vmovdqu [{o} + 96], ymm3", "vmovdqu [{o} + 128], ymm4", "vmovdqu [{o} + 160], ymm5",
                "vmovdqu [{o} + 192], ymm6", "vmovdqu [{o} + 224], ymm7", "vmovdqu [{o} + 256], ymm8",
                "vmovdqu [{o} + 288], ymm9", "vmovdqu [{o} + 320], ymm10", "vmovdqu [{o} + 352], ymm11",
                "vmovdqu [{o} + 384], ymm12", "vmovdqu [{o} + 416], ymm13", "vmovdqu [{o} + 448], ymm14",
                "vmovdqu [{o} + 480], ymm15",
                "vzeroupper",
                p = in(reg) (&raw const PATTERN) as u64,
                o = in(reg) (&raw mut OUT) as u64,
                out("rax") _, out("rcx") _, out("rdx") _, out("rsi") _, out("rdi") _,
                out("r8") _, out("r10") _, out("r11") _,
                out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
                out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
                out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
                out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            );
        }
    };
}

fn avx_usable() -> bool {
    let ecx: u32;
    // SAFETY: cpuid is unprivileged; rbx is saved by hand (it cannot be an operand).
    unsafe {
        asm!(
            "mov {t}, rbx", "cpuid", "mov rbx, {t}",
            t = out(reg) _,
            inout("eax") 1u32 => _, inout("ecx") 0u32 => ecx, out("edx") _,
        );
    }
    let avx = ecx & (1 << 28) != 0;
    let osxsave = ecx & (1 << 27) != 0;
    if !(avx && osxsave) {
        println!(
            "CPUID.1:ECX {:#x}: AVX {} OSXSAVE {}; ymm check skipped",
            ecx, avx, osxsave
        );
        return false;
    }
    let (lo, _hi): (u32, u32);
    // SAFETY: xgetbv(0) is unprivileged when CR4.OSXSAVE is set (CPUID says so).
    unsafe { asm!("xgetbv", in("ecx") 0u32, out("eax") lo, out("edx") _hi) };
    if lo & 6 != 6 {
        println!("XCR0 {:#x} lacks SSE|AVX state; ymm check skipped", lo);
        return false;
    }
    true
}

fn main(_si: &'static StartInfo) {
    install_trap_table();

    fill_pattern(0x11);
    xmm_roundtrip!("mov eax, 17\n xor edi, edi\n xor esi, esi\n syscall");
    compare("xmm after a hypercall", 16);

    fill_pattern(0x5c);
    let n = last_trap().count;
    xmm_roundtrip!("mov qword ptr [rip + PVT_TRAP + 64], 1\n int3");
    if last_trap().count != n + 1 {
        fail!(
            "int3 bounce: {} exceptions delivered, expected 1",
            last_trap().count - n
        );
    }
    compare("xmm after an int3 bounce", 16);
    println!("xmm0-15 preserved across a hypercall and an exception bounce");

    if avx_usable() {
        fill_pattern(0xa7);
        ymm_roundtrip!("mov eax, 17\n xor edi, edi\n xor esi, esi\n syscall");
        compare("ymm after a hypercall", 32);
        fill_pattern(0x3e);
        let n = last_trap().count;
        ymm_roundtrip!("mov qword ptr [rip + PVT_TRAP + 64], 1\n int3");
        if last_trap().count != n + 1 {
            fail!(
                "int3 bounce (ymm): {} exceptions delivered, expected 1",
                last_trap().count - n
            );
        }
        compare("ymm after an int3 bounce", 32);
        println!("ymm0-15 (both halves) preserved across a hypercall and an exception bounce");
    }
}
