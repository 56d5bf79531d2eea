//! `m2p_abi_address`: the read-only M2P at the address Xen's public header fixes,
//! `MACH2PHYS_VIRT_START` (0xffff800000000000), read without asking
//! `XENMEM_machphys_mapping`, as guests other than Linux do.
//!
//! Asserts:
//!
//! * M2P entries read at `MACH2PHYS_VIRT_START + 8 * mfn` equal those read through the
//!   address `XENMEM_machphys_mapping` reports, for the first and last RAM frames, the
//!   start_info frame, the boot L4 and a slack frame; with the loads guest kernels use on
//!   the table (`mov` of 8, 4 and 1 bytes, `movzx`, `movsxd`, `cmp` with -1 and `sete`);
//! * after `MMU_MACHPHYS_UPDATE` of a slack frame its entry reads the new pfn at both
//!   addresses (then restored);
//! * a write there raises #PF with error code present|write (the mapping is read-only;
//!   kernel mode, so no user bit) at the writing instruction, and changes nothing;
//! * a read of the area's last entry (`MACH2PHYS_VIRT_END - 8`) raises #PF not-present.
//!
//! Prints (not asserted here, the host's test checks it on pvkvm) whether the entry right
//! after the page holding the last frame's entry faults (`past the table: faulted`;
//! Xen maps its table in larger units and may read `INVALID_M2P_ENTRY`), and the cost of
//! one read at each address in TSC cycles (`m2p read cycles: abi <n> reported <n>`).
#![no_std]
#![no_main]

use core::arch::asm;
use pv_test_kernels::mm::{self, MmuUpdate};
use pv_test_kernels::traps::{self, last_trap};
use pv_test_kernels::xen_abi::memory::XENMEM_MAXIMUM_RAM_PAGE;
use pv_test_kernels::xen_abi::memory::{MachphysMapping, XENMEM_MACHPHYS_MAPPING};
use pv_test_kernels::xen_abi::xen::{MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START};
use pv_test_kernels::{check_eq, fail, hypercall, println, test_kernel, StartInfo};

test_kernel!(main);

const ABI: u64 = MACH2PHYS_VIRT_START;
/// #PF error code bits.
const PFEC_PRESENT: u64 = 1;
const PFEC_WRITE: u64 = 2;
/// Reads timed at each address.
const TIMED_READS: u64 = 200;

fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc reads the time-stamp counter; no memory effects.
    unsafe { asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

/// The forms of load a guest kernel uses on the table, each from `base + 8 * mfn`:
/// (mov r64, mov r32, mov r8, movzx r32 from a word, movsxd r64, cmp with -1 -> sete).
fn load_forms(base: u64, mfn: u64) -> [u64; 6] {
    let (q, d, b, w, sx, invalid): (u64, u64, u64, u64, u64, u64);
    // SAFETY: reads of the read-only M2P; the trap table reports any fault as FAILURE.
    unsafe {
        asm!(
            "mov {q}, qword ptr [{base} + {mfn} * 8]",
            "mov {d:e}, dword ptr [{base} + {mfn} * 8]",
            "xor {b:e}, {b:e}",
            "mov {b:l}, byte ptr [{base} + {mfn} * 8]",
            "movzx {w:e}, word ptr [{base} + {mfn} * 8]",
            "movsxd {sx}, dword ptr [{base} + {mfn} * 8 + 4]",
            "xor {inv:e}, {inv:e}",
            "cmp qword ptr [{base} + {mfn} * 8], -1",
            "sete {inv:l}",
            base = in(reg) base,
            mfn = in(reg) mfn,
            q = out(reg) q,
            d = out(reg) d,
            b = out(reg_abcd) b,
            w = out(reg) w,
            sx = out(reg) sx,
            inv = out(reg_abcd) invalid,
            options(nostack, readonly),
        );
    }
    [q, d, b, w, sx, invalid]
}

/// Checks entry `mfn` at Xen's address against the reported one, in every load form.
fn compare(what: &str, reported: u64, mfn: u64) -> u64 {
    let want = load_forms(reported, mfn);
    let got = load_forms(ABI, mfn);
    if got != want {
        fail!(
            "{} (mfn {:#x}): at {:#x} [mov64, mov32, mov8, movzx16, movsxd(hi), cmp -1] = {:x?}; through machphys_mapping {:#x}: {:x?}",
            what, mfn, ABI + 8 * mfn, got, reported + 8 * mfn, want
        );
    }
    println!(
        "{}: M2P[{:#x}] = {:#x} at both addresses",
        what, mfn, want[0]
    );
    want[0]
}

fn machphys_update(mfn: u64, pfn: u64) {
    let (rc, done) = mm::mmu_update(&[MmuUpdate {
        ptr: (mfn << 12) | mm::MMU_MACHPHYS_UPDATE,
        val: pfn,
    }]);
    if rc != 0 || done != 1 {
        fail!(
            "MMU_MACHPHYS_UPDATE mfn {:#x} := {:#x}: returned {}, done {}",
            mfn,
            pfn,
            rc,
            done
        );
    }
}

/// Cycles per `mov` from `base + 8 * mfn`, over [`TIMED_READS`] reads.
fn time_reads(base: u64, mfn: u64) -> u64 {
    let start = tsc();
    for _ in 0..TIMED_READS {
        core::hint::black_box(mm::rd(base + 8 * mfn));
    }
    (tsc() - start) / TIMED_READS
}

fn main(si: &'static StartInfo) {
    traps::install_trap_table();
    let mut map = MachphysMapping::default();
    // SAFETY: XENMEM_machphys_mapping writes one xen_machphys_mapping to `map`.
    let rc = unsafe { hypercall::memory_op(XENMEM_MACHPHYS_MAPPING, &mut map as *mut _ as u64) };
    check_eq!("XENMEM_machphys_mapping rc", rc, 0i64);
    let reported = map.v_start;
    println!(
        "machphys_mapping reports {:#x}; Xen's ABI address {:#x}",
        reported, ABI
    );

    let si_va = si as *const StartInfo as u64;
    let frames: [(&str, u64); 5] = [
        ("first RAM frame", mm::p2m(si, 0)),
        ("last RAM frame", mm::p2m(si, si.nr_pages - 1)),
        ("start_info frame", mm::va_to_mfn(si, si_va)),
        ("boot L4", traps::boot_l4_mfn(si)),
        ("slack frame", mm::slack_mfn(si, 0)),
    ];
    for (what, mfn) in frames {
        compare(what, reported, mfn);
    }

    mm::assume("MMU_MACHPHYS_UPDATE of an own frame shows in the read-only M2P at once (x86/mm.c)");
    let mfn = mm::slack_mfn(si, 0);
    let pfn = mm::m2p(mfn);
    machphys_update(mfn, 0x1234);
    check_eq!(
        "M2P after MMU_MACHPHYS_UPDATE, at Xen's address",
        compare("updated slack frame", reported, mfn),
        0x1234u64
    );
    machphys_update(mfn, pfn);
    check_eq!(
        "M2P after restoring, at Xen's address",
        mm::rd(ABI + 8 * mfn),
        pfn
    );

    // A write: the mapping is read-only.
    let before = last_trap().count;
    let w = mm::probe_write(ABI + 8 * mfn, 0x5555);
    if !w.trapped || w.trap.vector != 14 || w.trap.rip != w.insn {
        fail!(
            "write to {:#x}: trapped {} vector {} at {:#x} (the write is at {:#x}); expected #PF there",
            ABI + 8 * mfn, w.trapped, w.trap.vector, w.trap.rip, w.insn
        );
    }
    check_eq!(
        "write to Xen's M2P: #PF error code",
        w.trap.error_code,
        PFEC_PRESENT | PFEC_WRITE
    );
    check_eq!("exceptions for the write", last_trap().count - before, 1u64);
    check_eq!("M2P entry after the refused write", mm::m2p(mfn), pfn);
    println!("write at Xen's address: #PF present|write");

    // The area's last entry: no host has 2^35 frames.
    let end = MACH2PHYS_VIRT_END - 8;
    let r = mm::probe_read(end);
    if !r.trapped || r.trap.vector != 14 || r.trap.error_code != 0 {
        fail!(
            "read of {:#x}: trapped {} vector {} error code {:#x} value {:#x}; expected #PF not-present (0)",
            end, r.trapped, r.trap.vector, r.trap.error_code, r.value
        );
    }
    println!("read of the area's last entry: #PF not-present");

    // The entry after the page holding the highest frame's entry.
    // SAFETY: XENMEM_maximum_ram_page takes no argument.
    let max = unsafe { hypercall::memory_op(XENMEM_MAXIMUM_RAM_PAGE, 0) };
    if max <= 0 {
        fail!("XENMEM_maximum_ram_page returned {}", max);
    }
    let past = (max as u64 * 8).next_multiple_of(4096);
    let r = mm::probe_read(ABI + past);
    if r.trapped {
        if r.trap.vector != 14 || r.trap.error_code != 0 {
            fail!(
                "read past the table at {:#x}: vector {} error code {:#x}; expected #PF not-present (0)",
                ABI + past, r.trap.vector, r.trap.error_code
            );
        }
        println!(
            "past the table: faulted (read at {:#x}, #PF not-present)",
            ABI + past
        );
    } else if r.value == u64::MAX {
        println!(
            "past the table: INVALID_M2P_ENTRY (read at {:#x}; mapped in larger units)",
            ABI + past
        );
    } else {
        fail!(
            "read past the table at {:#x}: {:#x}, expected a fault or INVALID_M2P_ENTRY",
            ABI + past,
            r.value
        );
    }

    let slow = time_reads(ABI, mfn);
    let fast = time_reads(reported, mfn);
    println!(
        "m2p read cycles: abi {} reported {} ({} reads each)",
        slow, fast, TIMED_READS
    );
}
