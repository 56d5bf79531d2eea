//! Helpers for the MMU test kernels (`mmu_*`, `hostile_*`): ABI numbers that `xen-abi`
//! does not carry, the `mmu_update`/`multicall`/`memory_op` records, page-table walking
//! through the guest's own tables, the slack frames after the boot stack, and probes that
//! touch an address with the trap table armed.
//!
//! Facts used (Xen 4.17 `public/xen.h`, `public/memory.h`, `arch/x86/mm.c`,
//! `tools/libs/guest/xg_dom_x86.c`; Linux `arch/x86/xen/mmu_pv.c`):
//!
//! * The domain builder lays out, from `virt_base`: kernel, start_info/xenstore/console,
//!   the bootstrap page tables (L4 first: `pt_base`, `nr_pt_frames` of them, mapped
//!   read-only), one boot-stack page, then padding: `alloc_pgtables_pv` keeps
//!   `pt_base + (nr_pt_frames + 1 + 128) * 4096 <= virt_pgtab_end` (512 KiB padding,
//!   end rounded up to 4 MiB) and `xc_dom_alloc_pad` backs all of it. So
//!   `pt_base + (nr_pt_frames + 1 + i) * 4096` for `i < 128` are writable mappings of our
//!   own frames that nothing uses ("slack").
//! * The VA region is 1:1 with the first PFNs (VA = `virt_base` + pfn * 4096); the p2m
//!   list at `mfn_list` maps pfn -> mfn, the read-only M2P at `0xffff800000000000` maps
//!   mfn -> pfn.
//! * Xen stores every present 64-bit guest L1e with `_PAGE_USER` added and, for kernel
//!   mappings, its soft bit 52 (`_PAGE_GUEST_KERNEL`) (`adjust_guest_l1e`); compare PTEs
//!   under [`PTE_CMP_MASK`].
//! * `mmu_update` of an L1e and `update_va_mapping` with `UVMF_NONE` do not flush the
//!   TLB; a changed *present* translation is only guaranteed after a flush
//!   (INVLPG/TLB_FLUSH). Not-present -> present needs none (the TLB does not hold
//!   not-present translations). L2-L4 updates through `mmu_update` flush (`flush_linear_pt`).

use core::arch::asm;
use xen_abi::xen::StartInfo;

use crate::hypercall::{self, MmuextOp};
use crate::traps::{last_trap, TrapRecord};
use crate::{PAGE_SIZE, VIRT_BASE};

/// `mmu_update` command in `ptr[1:0]`: checked `*ptr = val` (`MMU_NORMAL_PT_UPDATE`).
pub const MMU_NORMAL_PT_UPDATE: u64 = 0;
/// `mmu_update` command: M2P entry of the frame at `ptr` := `val` (`MMU_MACHPHYS_UPDATE`).
pub const MMU_MACHPHYS_UPDATE: u64 = 1;
/// `mmu_update` command: like NORMAL but A/D bits already in the PTE are ORed into `val`.
pub const MMU_PT_UPDATE_PRESERVE_AD: u64 = 2;

/// `update_va_mapping` flags (`public/xen.h`): no flush.
pub const UVMF_NONE: u64 = 0;
/// Flush the whole TLB(s).
pub const UVMF_TLB_FLUSH: u64 = 1;
/// Flush only the one address.
pub const UVMF_INVLPG: u64 = 2;
/// Mask of the flush type.
pub const UVMF_FLUSHTYPE_MASK: u64 = 3;
/// Flush the TLBs of the vCPUs in the bitmap whose address is ORed into the flags.
pub const UVMF_MULTI: u64 = 0;
/// Flush the local TLB only (`UVMF_MULTI` with a NULL bitmap).
pub const UVMF_LOCAL: u64 = 0;
/// Flush on all vCPUs of the domain.
pub const UVMF_ALL: u64 = 4;

/// `HYPERVISOR_vm_assist` command: enable.
pub const VMASST_CMD_ENABLE: u64 = 0;
/// `HYPERVISOR_vm_assist` command: disable.
pub const VMASST_CMD_DISABLE: u64 = 1;
/// `VMASST_TYPE_writable_pagetables`: Xen emulates guest-kernel writes to read-only L1s.
pub const VMASST_TYPE_WRITABLE_PAGETABLES: u64 = 2;

/// PTE bits.
pub const PTE_P: u64 = 1 << 0;
#[allow(missing_docs)]
pub const PTE_RW: u64 = 1 << 1;
#[allow(missing_docs)]
pub const PTE_USER: u64 = 1 << 2;
#[allow(missing_docs)]
pub const PTE_PWT: u64 = 1 << 3;
#[allow(missing_docs)]
pub const PTE_PCD: u64 = 1 << 4;
#[allow(missing_docs)]
pub const PTE_A: u64 = 1 << 5;
#[allow(missing_docs)]
pub const PTE_D: u64 = 1 << 6;
/// PSE in L2/L3 entries (PAT in L1 entries).
pub const PTE_PSE: u64 = 1 << 7;
#[allow(missing_docs)]
pub const PTE_G: u64 = 1 << 8;
/// Xen's software bit 52 (`_PAGE_GUEST_KERNEL`) on guest-kernel L1 mappings.
pub const PTE_XEN_GUEST_KERNEL: u64 = 1 << 52;
#[allow(missing_docs)]
pub const PTE_NX: u64 = 1 << 63;
/// Physical address bits of a PTE.
pub const PTE_ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;
/// What a test compares of a PTE it wrote: address, P, RW, PCD/PWT/PAT, NX (Xen may add
/// U, G and bit 52; the CPU may set A and D).
pub const PTE_CMP_MASK: u64 = PTE_ADDR_MASK | PTE_P | PTE_RW | PTE_PWT | PTE_PCD | PTE_PSE | PTE_NX;

/// Flags of an upper-level entry as the builder and Linux write them.
pub const PDE_FLAGS: u64 = PTE_P | PTE_RW | PTE_USER | PTE_A | PTE_D;

/// Base of the read-only M2P table, as `XENMEM_machphys_mapping` reports it (Xen:
/// `MACH2PHYS_VIRT_START`; a guest must not assume it, Linux does not).
pub fn m2p_base() -> u64 {
    use core::sync::atomic::{AtomicU64, Ordering};
    static BASE: AtomicU64 = AtomicU64::new(0);
    let cached = BASE.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let mut map = xen_abi::memory::MachphysMapping::default();
    // SAFETY: XENMEM_machphys_mapping writes one xen_machphys_mapping to `map`.
    let rc = unsafe {
        crate::hypercall::memory_op(
            xen_abi::memory::XENMEM_MACHPHYS_MAPPING,
            &mut map as *mut _ as u64,
        )
    };
    if rc != 0 {
        crate::fail!("XENMEM_machphys_mapping returned {}", rc);
    }
    BASE.store(map.v_start, Ordering::Relaxed);
    map.v_start
}

/// Number of slack frames the builder guarantees after the boot stack (512 KiB).
pub const SLACK_FRAMES: u64 = 128;

/// A machine frame no PV domU owns and that is not RAM on any realistic host (just below
/// 16 TiB, inside a 44-bit machine address width): Xen's `get_page_from_l1e` treats it as
/// MMIO the domain has no `iomem` permission for and refuses it with -EPERM.
pub const MFN_NOT_RAM: u64 = (1 << 32) - 16;

pub use xen_abi::memory::MemoryReservation;
pub use xen_abi::xen::{MmuUpdate, MulticallEntry};

/// `struct xen_memory_map` (`public/memory.h`): 16 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct MemoryMap {
    /// In: capacity of `buffer`; out: entries stored.
    pub nr_entries: u32,
    /// Padding.
    pub _pad: u32,
    /// Guest handle of an array of e820 entries.
    pub buffer: u64,
}

/// An e820 entry as `XENMEM_memory_map` returns it (packed, 20 bytes).
#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct E820Entry {
    #[allow(missing_docs)]
    pub addr: u64,
    #[allow(missing_docs)]
    pub size: u64,
    /// 1 = RAM.
    pub kind: u32,
}

/// Reads a u64 at `va` (volatile).
pub fn rd(va: u64) -> u64 {
    // SAFETY: the tests only pass addresses they mapped; a fault would be reported.
    unsafe { core::ptr::read_volatile(va as *const u64) }
}

/// Writes a u64 at `va` (volatile).
pub fn wr(va: u64, v: u64) {
    // SAFETY: the tests only pass writable addresses they own.
    unsafe { core::ptr::write_volatile(va as *mut u64, v) }
}

/// Reads a byte at `va` (volatile).
pub fn rd8(va: u64) -> u8 {
    // SAFETY: as for [`rd`].
    unsafe { core::ptr::read_volatile(va as *const u8) }
}

/// p2m lookup: `mfn_list[pfn]`.
pub fn p2m(si: &StartInfo, pfn: u64) -> u64 {
    if pfn >= si.nr_pages {
        crate::fail!(
            "p2m lookup of pfn {:#x} >= nr_pages {:#x}",
            pfn,
            si.nr_pages
        );
    }
    rd(si.mfn_list + pfn * 8)
}

/// M2P lookup: the read-only table `XENMEM_machphys_mapping` names.
pub fn m2p(mfn: u64) -> u64 {
    rd(m2p_base() + mfn * 8)
}

/// pfn of a VA in the builder's 1:1 region.
pub fn va_to_pfn(va: u64) -> u64 {
    (va - VIRT_BASE) / PAGE_SIZE
}

/// MFN behind a VA of the builder's 1:1 region (through the p2m).
pub fn va_to_mfn(si: &StartInfo, va: u64) -> u64 {
    p2m(si, va_to_pfn(va))
}

/// First slack VA: `pt_base + (nr_pt_frames + 1) * 4096` (after the boot stack).
pub fn slack_base(si: &StartInfo) -> u64 {
    si.pt_base + (si.nr_pt_frames + 1) * PAGE_SIZE
}

/// VA of slack frame `i` (< [`SLACK_FRAMES`]).
pub fn slack_va(si: &StartInfo, i: u64) -> u64 {
    if i >= SLACK_FRAMES {
        crate::fail!(
            "slack frame {} out of range (only {} guaranteed)",
            i,
            SLACK_FRAMES
        );
    }
    slack_base(si) + i * PAGE_SIZE
}

/// MFN of slack frame `i`.
pub fn slack_mfn(si: &StartInfo, i: u64) -> u64 {
    va_to_mfn(si, slack_va(si, i))
}

/// End of the region this module assumes mapped 1:1 (the end of the guaranteed slack).
pub fn mapped_end(si: &StartInfo) -> u64 {
    slack_base(si) + SLACK_FRAMES * PAGE_SIZE
}

/// VA of one of our frames inside the builder's 1:1 region, through the M2P (and checked
/// back through the p2m), or `None`.
pub fn mfn_to_va(si: &StartInfo, mfn: u64) -> Option<u64> {
    let pfn = m2p(mfn);
    let va = VIRT_BASE.wrapping_add(pfn.wrapping_mul(PAGE_SIZE));
    if pfn < si.nr_pages && va < mapped_end(si) && p2m(si, pfn) == mfn {
        Some(va)
    } else {
        None
    }
}

/// Machine address of an entry: frame `mfn`, slot `index`.
pub fn entry_ma(mfn: u64, index: u64) -> u64 {
    (mfn << 12) + index * 8
}

/// Kernel-RW leaf PTE for `mfn` as Linux writes it (`PAGE_KERNEL` minus G/NX).
pub fn pte_rw(mfn: u64) -> u64 {
    (mfn << 12) | PTE_P | PTE_RW | PTE_A | PTE_D
}

/// Kernel-RO leaf PTE for `mfn` (`PAGE_KERNEL_RO` minus G/NX).
pub fn pte_ro(mfn: u64) -> u64 {
    (mfn << 12) | PTE_P | PTE_A
}

/// MFN in an entry.
pub fn pte_mfn(e: u64) -> u64 {
    (e & PTE_ADDR_MASK) >> 12
}

/// Result of walking the guest's tables for one VA.
#[derive(Clone, Copy, Debug, Default)]
pub struct Walk {
    /// MFN of the L4 walked from.
    pub l4_mfn: u64,
    /// L4 slot of the VA.
    pub l4_index: u64,
    /// MFN of the L3.
    pub l3_mfn: u64,
    /// MFN of the L2.
    pub l2_mfn: u64,
    /// VA of the L2 (in the 1:1 region).
    pub l2_va: u64,
    /// L2 slot of the VA.
    pub l2_index: u64,
    /// MFN of the L1.
    pub l1_mfn: u64,
    /// VA of the L1 (read-only mapping in the 1:1 region).
    pub l1_va: u64,
    /// L1 slot of the VA.
    pub l1_index: u64,
    /// The L1 entry at the time of the walk.
    pub pte: u64,
}

impl Walk {
    /// Machine address of the L1 entry (for `mmu_update`).
    pub fn pte_ma(&self) -> u64 {
        entry_ma(self.l1_mfn, self.l1_index)
    }
    /// VA of the L1 entry (read-only mapping).
    pub fn pte_va(&self) -> u64 {
        self.l1_va + self.l1_index * 8
    }
    /// The L1 entry now.
    pub fn pte_now(&self) -> u64 {
        rd(self.pte_va())
    }
}

fn table_va(si: &StartInfo, what: &str, va: u64, e: u64) -> u64 {
    if e & PTE_P == 0 {
        crate::fail!("walk of {:#x}: {} entry {:#x} not present", va, what, e);
    }
    match mfn_to_va(si, pte_mfn(e)) {
        Some(t) => t,
        None => crate::fail!(
            "walk of {:#x}: {} entry {:#x} points at mfn {:#x} (m2p pfn {:#x}) outside the builder's 1:1 region",
            va,
            what,
            e,
            pte_mfn(e),
            m2p(pte_mfn(e))
        ),
    }
}

/// Walks `va` through the L4 whose VA (1:1 region) is `l4_va`; the L2 entry must point
/// at an L1 (no superpages in PV). Fails the test if anything is missing.
pub fn walk_from(si: &StartInfo, l4_va: u64, va: u64) -> Walk {
    let mut w = Walk {
        l4_mfn: va_to_mfn(si, l4_va),
        l4_index: (va >> 39) & 511,
        ..Walk::default()
    };
    let l4e = rd(l4_va + w.l4_index * 8);
    let l3_va = table_va(si, "L4", va, l4e);
    w.l3_mfn = pte_mfn(l4e);
    let l3e = rd(l3_va + ((va >> 30) & 511) * 8);
    w.l2_va = table_va(si, "L3", va, l3e);
    w.l2_mfn = pte_mfn(l3e);
    w.l2_index = (va >> 21) & 511;
    let l2e = rd(w.l2_va + w.l2_index * 8);
    if l2e & PTE_PSE != 0 {
        crate::fail!("walk of {:#x}: L2 entry {:#x} is a superpage", va, l2e);
    }
    w.l1_va = table_va(si, "L2", va, l2e);
    w.l1_mfn = pte_mfn(l2e);
    w.l1_index = (va >> 12) & 511;
    w.pte = rd(w.pte_va());
    w
}

/// Walks `va` through the boot L4 (`pt_base`).
pub fn walk(si: &StartInfo, va: u64) -> Walk {
    walk_from(si, si.pt_base, va)
}

/// `update_va_mapping(va, pte, flags)`.
pub fn uvm(va: u64, pte: u64, flags: u64) -> i64 {
    // SAFETY: the tests only remap slack VAs, which nothing else uses.
    unsafe { hypercall::update_va_mapping(va, pte, flags) }
}

/// Remaps `va` with `pte` and `UVMF_INVLPG`, failing the test on an error.
pub fn remap(what: &str, va: u64, pte: u64) {
    let rc = uvm(va, pte, UVMF_INVLPG | UVMF_LOCAL);
    if rc != 0 {
        crate::fail!(
            "{}: update_va_mapping({:#x}, {:#x}, UVMF_INVLPG) returned {}, expected 0",
            what,
            va,
            pte,
            rc
        );
    }
}

/// Makes slack frame `i` read-only at its VA (the first step before it becomes a
/// pagetable or GDT frame, as in Linux's `make_lowmem_page_readonly`).
pub fn slack_make_ro(si: &StartInfo, i: u64) {
    remap(
        "make slack frame read-only",
        slack_va(si, i),
        pte_ro(slack_mfn(si, i)),
    );
}

/// Makes slack frame `i` writable at its VA again.
pub fn slack_make_rw(si: &StartInfo, i: u64) {
    remap(
        "make slack frame writable",
        slack_va(si, i),
        pte_rw(slack_mfn(si, i)),
    );
}

/// One `mmuext_op`; returns (rc, done).
pub fn mmuext1(cmd: u32, arg1: u64, arg2: u64) -> (i64, u32) {
    let op = MmuextOp {
        cmd,
        _pad: 0,
        arg1,
        arg2,
    };
    // SAFETY: the tests vouch for what they pin, unpin, install or flush.
    unsafe { hypercall::mmuext_op(&[op]) }
}

/// One `mmuext_op` that must succeed.
pub fn mmuext_ok(what: &str, cmd: u32, arg1: u64, arg2: u64) {
    let (rc, done) = mmuext1(cmd, arg1, arg2);
    if rc != 0 || done != 1 {
        crate::fail!(
            "mmuext_op({}, {:#x}, {:#x}): returned {}, done {}; expected 0, done 1",
            what,
            arg1,
            arg2,
            rc,
            done
        );
    }
}

/// One `mmuext_op` that must fail with `want` and done 0.
pub fn mmuext_err(what: &str, cmd: u32, arg1: u64, arg2: u64, want: i64) {
    let (rc, done) = mmuext1(cmd, arg1, arg2);
    if rc != want || done != 0 {
        crate::fail!(
            "mmuext_op({}, {:#x}, {:#x}): returned {}, done {}; expected {}, done 0",
            what,
            arg1,
            arg2,
            rc,
            done,
            want
        );
    }
}

/// `mmu_update` with the given requests; returns (rc, done).
pub fn mmu_update(reqs: &[MmuUpdate]) -> (i64, u32) {
    // SAFETY: the tests only touch entries of slack VAs or deliberately bad ones.
    unsafe { hypercall::mmu_update(reqs) }
}

/// A one-entry `mmu_update`.
pub fn mmu_update1(ptr: u64, val: u64) -> (i64, u32) {
    mmu_update(&[MmuUpdate { ptr, val }])
}

/// Word `k` of the pattern [`fill`] writes with `seed`.
pub fn pattern(seed: u64, k: u64) -> u64 {
    seed ^ k.wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// Fills the page at `va` with the pattern of `seed`.
pub fn fill(va: u64, seed: u64) {
    for k in 0..512 {
        wr(va + k * 8, pattern(seed, k));
    }
}

/// Checks that the page at `va` holds the pattern of `seed`; returns the first
/// mismatch (word, got, expected).
pub fn check_fill(va: u64, seed: u64) -> Option<(u64, u64, u64)> {
    for k in 0..512 {
        let got = rd(va + k * 8);
        if got != pattern(seed, k) {
            return Some((k, got, pattern(seed, k)));
        }
    }
    None
}

/// Fails unless the page at `va` holds the pattern of `seed`.
pub fn expect_fill(what: &str, va: u64, seed: u64) {
    if let Some((k, got, want)) = check_fill(va, seed) {
        crate::fail!(
            "{}: word {} at {:#x} is {:#x}, expected {:#x}",
            what,
            k,
            va + k * 8,
            got,
            want
        );
    }
}

/// A distinct seed per slack frame.
pub fn seed_of(i: u64) -> u64 {
    0x5157_ac00_0000_0000 | (i << 20) | 0x5a5
}

/// What a [`probe_read`] or [`probe_write`] saw.
#[derive(Clone, Copy, Debug)]
pub struct Probe {
    /// Whether the access raised an exception.
    pub trapped: bool,
    /// Value read (reads that did not trap).
    pub value: u64,
    /// Address of the accessing instruction.
    pub insn: u64,
    /// The trap record (valid if `trapped`).
    pub trap: TrapRecord,
}

/// Reads the u64 at `va` with the trap table armed (the runtime's trap table must be
/// installed): a fault resumes after the load.
pub fn probe_read(va: u64) -> Probe {
    let before = last_trap().count;
    let value: u64;
    let insn: u64;
    // SAFETY: the handler resumes at label 3 with all registers intact; the record is
    // disarmed afterwards either way.
    unsafe {
        asm!(
            "lea {a}, [rip + 3f]",
            "lea {i}, [rip + 2f]",
            "mov [rip + PVT_TRAP + 72], {a}",
            "mov qword ptr [rip + PVT_TRAP + 64], 1",
            "xor {v:e}, {v:e}",
            "2:",
            "mov {v}, qword ptr [{p}]",
            "3:",
            "mov qword ptr [rip + PVT_TRAP + 64], 0",
            "mov qword ptr [rip + PVT_TRAP + 72], 0",
            a = out(reg) _,
            i = out(reg) insn,
            v = out(reg) value,
            p = in(reg) va,
        );
    }
    let trap = last_trap();
    Probe {
        trapped: trap.count != before,
        value,
        insn,
        trap,
    }
}

/// Writes `val` to the u64 at `va` with the trap table armed (a plain `mov`).
pub fn probe_write(va: u64, val: u64) -> Probe {
    let before = last_trap().count;
    let insn: u64;
    // SAFETY: as for probe_read.
    unsafe {
        asm!(
            "lea {a}, [rip + 3f]",
            "lea {i}, [rip + 2f]",
            "mov [rip + PVT_TRAP + 72], {a}",
            "mov qword ptr [rip + PVT_TRAP + 64], 1",
            "2:",
            "mov qword ptr [{p}], {v}",
            "3:",
            "mov qword ptr [rip + PVT_TRAP + 64], 0",
            "mov qword ptr [rip + PVT_TRAP + 72], 0",
            a = out(reg) _,
            i = out(reg) insn,
            p = in(reg) va,
            v = in(reg) val,
        );
    }
    let trap = last_trap();
    Probe {
        trapped: trap.count != before,
        value: 0,
        insn,
        trap,
    }
}

/// Offset of `arch.cr2` in a 64-bit `vcpu_info`.
pub const VCPU_INFO_CR2: u64 = xen_abi::xen::vcpu_info::ARCH_CR2;
/// Offset of `evtchn_upcall_mask` in `vcpu_info`.
pub const VCPU_INFO_UPCALL_MASK: u64 = xen_abi::xen::vcpu_info::UPCALL_MASK;

/// Maps `start_info.shared_info` (a machine address, not necessarily RAM of ours) at
/// `va` read-write with `UVMF_INVLPG`, as Linux's `set_fixmap(FIX_PARAVIRT_BOOTMAP)`.
pub fn map_shared_info(si: &StartInfo, va: u64) {
    let pte = (si.shared_info & PTE_ADDR_MASK) | PTE_P | PTE_RW | PTE_A | PTE_D;
    remap("map shared_info", va, pte);
}

/// `vcpu_info[0].arch.cr2` through a shared_info mapping at `shinfo_va`.
pub fn vcpu0_cr2(shinfo_va: u64) -> u64 {
    rd(shinfo_va + VCPU_INFO_CR2)
}

/// Prints one ABI assumption a kernel relies on (prefix `ABI assumption:`).
pub fn assume(text: &str) {
    crate::println!("ABI assumption: {}", text);
}

/// Prints the layout the kernel found (start_info fields, slack range).
pub fn print_layout(si: &StartInfo) {
    crate::println!(
        "layout: nr_pages {:#x} pt_base {:#x} nr_pt_frames {} mfn_list {:#x} shared_info {:#x} slack {:#x}..{:#x} (slack mfn[0] {:#x})",
        si.nr_pages,
        si.pt_base,
        si.nr_pt_frames,
        si.mfn_list,
        si.shared_info,
        slack_base(si),
        mapped_end(si),
        slack_mfn(si, 0)
    );
}

/// Checks the slack frames are what this module assumes: mapped, writable, our own (the
/// p2m and M2P agree) and not pagetables; fails the test otherwise.
pub fn check_slack(si: &StartInfo) {
    for i in [0, SLACK_FRAMES - 1] {
        let va = slack_va(si, i);
        let w = walk(si, va);
        let mfn = slack_mfn(si, i);
        if w.pte & (PTE_P | PTE_RW) != PTE_P | PTE_RW || pte_mfn(w.pte) != mfn {
            crate::fail!(
                "slack frame {} at {:#x}: PTE {:#x}, expected a writable mapping of mfn {:#x} (p2m)",
                i,
                va,
                w.pte,
                mfn
            );
        }
        if m2p(mfn) != va_to_pfn(va) {
            crate::fail!(
                "slack frame {}: M2P[{:#x}] = {:#x}, expected pfn {:#x}",
                i,
                mfn,
                m2p(mfn),
                va_to_pfn(va)
            );
        }
    }
}

/// Flat 32-bit data descriptor, DPL 3 (what the descriptor kernels put at GDT index 2).
pub const FLAT_DATA32_DPL3: u64 = 0x00cf_f300_0000_ffff;
/// Slack frame the descriptor kernels use as their GDT page.
pub const GDT_SLACK: u64 = 60;
/// Slack frame they keep writable, to be refused.
pub const WRITABLE_SLACK: u64 = 62;

/// The `set_gdt` setup the descriptor kernels share: a GDT frame in slack page
/// [`GDT_SLACK`] with a flat DPL-3 data descriptor at index 2; checks that a frame still
/// mapped writable and an entry count over the Xen-reserved area are refused
/// (-EINVAL), then makes the frame read-only and installs it with 16 entries.
/// Returns the frame's MFN.
pub fn install_test_gdt(si: &StartInfo) -> u64 {
    const FIRST_RESERVED_GDT_ENTRY: u64 = 14 * 512;
    let einval = -xen_abi::errno::EINVAL;
    assume("set_gdt takes MFNs; each frame must be free of writable mappings (type PGT_seg_desc_page); entries <= 7168 (pv/descriptor-tables.c)");
    assume("update_descriptor takes the slot's machine address; 64-bit PV: code/data DPL < 3 is raised to 3, system descriptors other than call gates are -EINVAL");
    let g = slack_va(si, GDT_SLACK);
    let gmfn = slack_mfn(si, GDT_SLACK);
    for k in 0..512u64 {
        wr(g + k * 8, 0);
    }
    wr(g + 2 * 8, FLAT_DATA32_DPL3);

    // A frame still mapped writable is refused.
    let wmfn = slack_mfn(si, WRITABLE_SLACK);
    for k in 0..512u64 {
        wr(slack_va(si, WRITABLE_SLACK) + k * 8, 0);
    }
    // SAFETY: the frame list is a local array.
    let rc = unsafe { hypercall::set_gdt(&[wmfn], 16) };
    crate::check_eq!("set_gdt of a frame still mapped writable", rc, einval);
    // SAFETY: as above.
    let rc = unsafe { hypercall::set_gdt(&[gmfn], FIRST_RESERVED_GDT_ENTRY + 1) };
    crate::check_eq!("set_gdt with 7169 entries", rc, einval);

    slack_make_ro(si, GDT_SLACK);
    // SAFETY: the frame holds only valid descriptors.
    let rc = unsafe { hypercall::set_gdt(&[gmfn], 16) };
    crate::check_eq!("set_gdt(GDT frame, 16)", rc, 0i64);
    crate::println!("set_gdt(mfn {:#x}, 16): 0", gmfn);
    gmfn
}
