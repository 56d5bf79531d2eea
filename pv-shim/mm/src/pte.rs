//! Pagetable-entry bits and the per-level rules Xen applies to guest entries.
//!
//! Facts from Xen 4.17: `asm/page.h` (`_PAGE_*`), `asm/x86_64/page.h` (`_PAGE_NX_BIT`,
//! `_PAGE_GNTTAB`, `_PAGE_GUEST_KERNEL`, the 24-bit "flags" view of a PTE: bits 0..11 plus
//! bits 52..63), `arch/x86/mm.c` (`base_disallow_mask`, `L1_DISALLOW_MASK`..`L4_DISALLOW_MASK`,
//! `FASTPATH_FLAG_WHITELIST`) and `arch/x86/pv/mm.h` (`adjust_guest_l1e`..`adjust_guest_l4e`).
//! Xen keeps flags as a 24-bit integer; here every mask is a plain 64-bit PTE mask, which is
//! the same set of bits (`put_pte_flags` maps flag bit 12+n to PTE bit 52+n).

use crate::api::{Level, Mfn};

/// `_PAGE_PRESENT`.
pub const PAGE_PRESENT: u64 = 1 << 0;
/// `_PAGE_RW`.
pub const PAGE_RW: u64 = 1 << 1;
/// `_PAGE_USER`.
pub const PAGE_USER: u64 = 1 << 2;
/// `_PAGE_PWT`.
pub const PAGE_PWT: u64 = 1 << 3;
/// `_PAGE_PCD`.
pub const PAGE_PCD: u64 = 1 << 4;
/// `_PAGE_ACCESSED`.
pub const PAGE_ACCESSED: u64 = 1 << 5;
/// `_PAGE_DIRTY`.
pub const PAGE_DIRTY: u64 = 1 << 6;
/// `_PAGE_PAT` (in an L1 entry; the same bit is PSE in L2/L3).
pub const PAGE_PAT: u64 = 1 << 7;
/// `_PAGE_PSE` (superpage, in L2/L3 entries).
pub const PAGE_PSE: u64 = 1 << 7;
/// `_PAGE_GLOBAL`.
pub const PAGE_GLOBAL: u64 = 1 << 8;
/// `_PAGE_AVAIL` (bits 9..11, software-available).
pub const PAGE_AVAIL: u64 = 0x7 << 9;
/// `_PAGE_AVAIL_HIGH` (PTE bits 52..62, software-available).
pub const PAGE_AVAIL_HIGH: u64 = 0x7ff << 52;
/// `_PAGE_GUEST_KERNEL`: PTE bit 52, set by `adjust_guest_l1e` on kernel mappings (a 64-bit
/// PV kernel runs in ring 3, so its mappings need U; this bit remembers they were kernel ones).
pub const PAGE_GUEST_KERNEL: u64 = 1 << 52;
/// `_PAGE_GNTTAB`: PTE bit 62, reserved for grant mappings; a guest may not set it.
pub const PAGE_GNTTAB: u64 = 1 << 62;
/// `_PAGE_NX`: PTE bit 63 (Xen allows it when the CPU has NX; pvkvm requires NX).
pub const PAGE_NX: u64 = 1 << 63;

/// Machine-address bits of an entry (`PADDR_MASK & PAGE_MASK`: bits 12..51).
pub const PAGE_ADDR_MASK: u64 = ((1u64 << 52) - 1) & !0xfff;
/// All non-address bits (Xen's 24-bit "flags").
pub const PAGE_FLAGS_MASK: u64 = !PAGE_ADDR_MASK;
/// Both cache-attribute bits Xen checks in an L1 besides PAT (`PAGE_CACHE_ATTRS`).
pub const PAGE_CACHE_ATTRS: u64 = PAGE_PAT | PAGE_PCD | PAGE_PWT;

/// Bits every guest entry may carry (`arch_init_memory`: PRESENT, RW, USER, A/D, AVAIL,
/// AVAIL_HIGH, NX).
pub const BASE_ALLOWED: u64 = PAGE_PRESENT
    | PAGE_RW
    | PAGE_USER
    | PAGE_ACCESSED
    | PAGE_DIRTY
    | PAGE_AVAIL
    | PAGE_AVAIL_HIGH
    | PAGE_NX;
/// Xen's `base_disallow_mask`: PWT, PCD, PSE/PAT and G.
pub const BASE_DISALLOW_MASK: u64 = PAGE_FLAGS_MASK & !BASE_ALLOWED;
/// Xen's `L1_DISALLOW_MASK` for a domU without I/O memory: G is allowed in an L1, the grant
/// bit is not; PAT/PCD/PWT stay refused because `l1_disallow_mask()` only relaxes
/// `PAGE_CACHE_ATTRS` for domains with iomem/ioport capabilities or passthrough devices.
pub const L1_DISALLOW_MASK: u64 = (BASE_DISALLOW_MASK | PAGE_GNTTAB) & !PAGE_GLOBAL;
/// Xen's `L2_DISALLOW_MASK` (includes PSE: no superpages for PV guests).
pub const L2_DISALLOW_MASK: u64 = BASE_DISALLOW_MASK;
/// Xen's `l3_disallow_mask()` for a 64-bit guest (includes PSE: no 1G pages).
pub const L3_DISALLOW_MASK: u64 = BASE_DISALLOW_MASK;
/// Xen's `L4_DISALLOW_MASK`.
pub const L4_DISALLOW_MASK: u64 = BASE_DISALLOW_MASK;

/// The PTE bits a guest may change in a present entry without the engine revalidating it
/// (Xen's `FASTPATH_FLAG_WHITELIST`: NX, AVAIL_HIGH, AVAIL, G, D, A, U). Everything else
/// (the address, P, RW, the cache bits, PSE) changes translation, caching or safety. For
/// L2..L4 entries `RW` joins the list (`FASTPATH_PDE_FLAG_WHITELIST`, valid because guest
/// linear pagetables are disabled, so an upper-level RW bit never grants a writable
/// mapping of a pagetable).
pub const FASTPATH_FLAG_WHITELIST: u64 =
    PAGE_NX | PAGE_AVAIL_HIGH | PAGE_AVAIL | PAGE_GLOBAL | PAGE_DIRTY | PAGE_ACCESSED | PAGE_USER;

/// First and last L4 slot of the hypervisor hole (the shim and the M2P live there).
pub const HOLE_L4_SLOTS: core::ops::RangeInclusive<usize> =
    xen_abi::xen::HOLE_FIRST_L4_SLOT..=xen_abi::xen::HOLE_LAST_L4_SLOT;

/// Entries per pagetable frame.
pub const ENTRIES: usize = 512;

/// True if `slot` of an L4 belongs to the hypervisor hole (`!is_guest_l4_slot`).
pub fn is_hole_slot(slot: usize) -> bool {
    HOLE_L4_SLOTS.contains(&slot)
}

/// The frame an entry points at (`l1e_get_pfn`).
pub fn entry_mfn(e: u64) -> Mfn {
    (e & PAGE_ADDR_MASK) >> 12
}

/// True if the entry is present.
pub fn present(e: u64) -> bool {
    e & PAGE_PRESENT != 0
}

/// Xen's `lNe_has_changed(old, new, ~whitelist)`: did the address or any bit outside
/// `whitelist` change?
pub fn has_changed(old: u64, new: u64, whitelist: u64) -> bool {
    (old ^ new) & (PAGE_ADDR_MASK | (PAGE_FLAGS_MASK & !whitelist)) != 0
}

/// The fast-path whitelist for an entry of a table at `level`.
pub fn fastpath_whitelist(level: Level) -> u64 {
    match level {
        Level::L1 => FASTPATH_FLAG_WHITELIST,
        _ => FASTPATH_FLAG_WHITELIST | PAGE_RW,
    }
}

/// The disallow mask for an entry of a table at `level`.
pub fn disallow_mask(level: Level) -> u64 {
    match level {
        Level::L1 => L1_DISALLOW_MASK,
        Level::L2 => L2_DISALLOW_MASK,
        Level::L3 => L3_DISALLOW_MASK,
        Level::L4 => L4_DISALLOW_MASK,
    }
}

/// Xen's `adjust_guest_l1e..l4e` for a 64-bit PV guest: the guest kernel runs in ring 3,
/// so present entries get U. An L1 kernel mapping (no U) additionally gets
/// `_PAGE_GUEST_KERNEL`; an L1 user mapping gets G (Xen 4.17 marks user mappings global
/// so they survive the kernel/user CR3 switch). L4 entries also get A (Xen sets it
/// unconditionally so its shadow root copies never need A write-back).
pub fn adjust_guest_entry(level: Level, e: u64) -> u64 {
    if !present(e) {
        return e;
    }
    match level {
        Level::L1 => {
            let mut e = e;
            if e & PAGE_USER == 0 {
                e |= PAGE_GUEST_KERNEL | PAGE_USER;
            }
            if e & PAGE_GUEST_KERNEL == 0 {
                e |= PAGE_GLOBAL | PAGE_USER;
            }
            e
        }
        Level::L2 | Level::L3 => e | PAGE_USER,
        Level::L4 => e | PAGE_ACCESSED | PAGE_USER,
    }
}

/// The bits `adjust_guest_entry` may add: a failed validation may leave them behind in
/// entries it already processed (as Xen does), nothing else.
pub const ADJUST_BITS: u64 = PAGE_USER | PAGE_GUEST_KERNEL | PAGE_GLOBAL | PAGE_ACCESSED;

/// Virtual address mapped by L4/L3/L2/L1 slots (canonical, sign-extended from bit 47).
pub fn compose_va(l4: usize, l3: usize, l2: usize, l1: usize) -> u64 {
    let va = ((l4 as u64 & 511) << 39)
        | ((l3 as u64 & 511) << 30)
        | ((l2 as u64 & 511) << 21)
        | ((l1 as u64 & 511) << 12);
    if va & (1 << 47) != 0 {
        va | 0xffff_0000_0000_0000
    } else {
        va
    }
}
