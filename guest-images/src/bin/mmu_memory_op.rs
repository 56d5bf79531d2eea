//! `mmu_memory_op`: `HYPERVISOR_memory_op` queries and a balloon round trip.
//!
//! Asserts:
//!
//! * `XENMEM_machphys_mapping`: an area in the hypervisor hole (Xen: 0xffff800000000000..0xffff804000000000)
//!   max_mfn 2^35 - 1 (domU values, x86_64/mm.c);
//! * `XENMEM_maximum_ram_page` is above every MFN in our p2m;
//! * `XENMEM_current_reservation(DOMID_SELF)` == nr_pages; `XENMEM_maximum_reservation`
//!   >= nr_pages (xl adds 1 MiB of slack to maxmem, so it need not be equal; printed);
//! * `XENMEM_memory_map`: -ENOSYS (no e820 set for the PV domU) or exactly one RAM range
//!   at 0 covering nr_pages (printed which);
//! * `XENMEM_decrease_reservation` of one unmapped slack frame: 1 extent, reservation
//!   nr_pages - 1; `XENMEM_populate_physmap` of the same pfn: 1 extent, an MFN written
//!   back, M2P[new mfn] == pfn at once, reservation nr_pages again; after updating the
//!   p2m the new frame maps with `update_va_mapping` and holds what is written to it.
#![no_std]
#![no_main]

use pv_test_kernels::hypercall;
use pv_test_kernels::mm::{self, E820Entry, MemoryMap, MemoryReservation};
use pv_test_kernels::xen_abi::errno::ENOSYS;
use pv_test_kernels::xen_abi::memory::*;
use pv_test_kernels::xen_abi::xen::DOMID_SELF;
use pv_test_kernels::{check_eq, fail, println, test_kernel, StartInfo};

test_kernel!(main);

const BALLOON: u64 = 100;

fn mop(cmd: u64, arg: u64) -> i64 {
    // SAFETY: every caller passes the record `cmd` expects.
    unsafe { hypercall::memory_op(cmd, arg) }
}

fn reservation(cmd: u64) -> i64 {
    let domid: u16 = DOMID_SELF;
    mop(cmd, &domid as *const u16 as u64)
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    pv_test_kernels::traps::install_trap_table();

    let mut m = MachphysMapping::default();
    let rc = mop(XENMEM_MACHPHYS_MAPPING, &mut m as *mut _ as u64);
    check_eq!("XENMEM_machphys_mapping rc", rc, 0i64);
    // Xen reports 0xffff800000000000..0xffff804000000000; the ABI lets the hypervisor
    // choose, so check what a guest relies on: inside the hypervisor hole, room for
    // max_mfn + 1 entries, and the table at v_start translates our own frames.
    if !(0xffff_8000_0000_0000..0xffff_8800_0000_0000).contains(&m.v_start)
        || m.v_end > 0xffff_8800_0000_0000
        || m.v_end < m.v_start
        || (m.v_end - m.v_start) / 8 < m.max_mfn.saturating_add(1)
    {
        fail!("machphys_mapping {:#x}..{:#x} max_mfn {:#x} is not a hole area holding max_mfn+1 entries", m.v_start, m.v_end, m.max_mfn);
    }
    let mfn0 = mm::p2m(si, 0);
    check_eq!(
        "m2p[p2m[0]] through machphys_mapping.v_start",
        mm::m2p(mfn0),
        0u64
    );
    println!(
        "machphys_mapping: {:#x}..{:#x} max_mfn {:#x}",
        m.v_start, m.v_end, m.max_mfn
    );

    let max_ram = mop(XENMEM_MAXIMUM_RAM_PAGE, 0);
    let mut top = 0;
    for pfn in 0..si.nr_pages {
        top = top.max(mm::p2m(si, pfn));
    }
    if max_ram <= 0 || (max_ram as u64) <= top {
        fail!(
            "XENMEM_maximum_ram_page {} (our highest mfn {:#x})",
            max_ram,
            top
        );
    }
    println!(
        "maximum_ram_page {:#x} (our highest mfn {:#x})",
        max_ram, top
    );

    let cur = reservation(XENMEM_CURRENT_RESERVATION);
    check_eq!(
        "XENMEM_current_reservation(DOMID_SELF)",
        cur,
        si.nr_pages as i64
    );
    let max = reservation(XENMEM_MAXIMUM_RESERVATION);
    if max < si.nr_pages as i64 {
        fail!(
            "XENMEM_maximum_reservation {} < nr_pages {}",
            max,
            si.nr_pages
        );
    }
    println!(
        "current_reservation {} maximum_reservation {} (nr_pages {})",
        cur, max, si.nr_pages
    );

    let mut e820 = [E820Entry::default(); 8];
    let mut map = MemoryMap {
        nr_entries: 8,
        _pad: 0,
        buffer: e820.as_mut_ptr() as u64,
    };
    let rc = mop(XENMEM_MEMORY_MAP, &mut map as *mut _ as u64);
    if rc == -ENOSYS {
        println!("XENMEM_memory_map: -ENOSYS (no e820 for this domain; Linux then uses one RAM range of nr_pages)");
    } else if rc == 0 {
        let n = map.nr_entries;
        let e = e820[0];
        let (addr, size, kind) = (e.addr, e.size, e.kind);
        if n != 1 || kind != 1 || addr != 0 || size < si.nr_pages * 4096 {
            fail!(
                "XENMEM_memory_map: {} entries, first {:#x}+{:#x} type {}; expected one RAM range at 0 covering nr_pages ({:#x} bytes)",
                n, addr, size, kind, si.nr_pages * 4096
            );
        }
        println!("XENMEM_memory_map: one RAM range {:#x}+{:#x}", addr, size);
    } else {
        fail!("XENMEM_memory_map returned {}, expected 0 or -ENOSYS", rc);
    }

    // Balloon one slack frame out and back in.
    mm::assume("PV decrease_reservation takes MFNs; populate_physmap takes a pfn, writes the new MFN back and sets the M2P, the guest updates its p2m (common/memory.c, x86/mm/physmap.c)");
    let va = mm::slack_va(si, BALLOON);
    let pfn = mm::va_to_pfn(va);
    let old = mm::slack_mfn(si, BALLOON);
    mm::remap("unmap the frame to give back", va, 0);
    let mut ext: [u64; 1] = [old];
    let res = MemoryReservation {
        extent_start: ext.as_mut_ptr() as u64,
        nr_extents: 1,
        extent_order: 0,
        mem_flags: 0,
        domid: DOMID_SELF,
        _pad: [0; 3],
    };
    let rc = mop(XENMEM_DECREASE_RESERVATION, &res as *const _ as u64);
    check_eq!(
        "XENMEM_decrease_reservation of 1 frame: extents done",
        rc,
        1i64
    );
    check_eq!(
        "current_reservation after giving one frame back",
        reservation(XENMEM_CURRENT_RESERVATION),
        si.nr_pages as i64 - 1
    );
    mm::wr(si.mfn_list + pfn * 8, !0u64); // INVALID_P2M_ENTRY, as Linux does

    ext[0] = pfn;
    let res = MemoryReservation {
        extent_start: ext.as_mut_ptr() as u64,
        ..res
    };
    let rc = mop(XENMEM_POPULATE_PHYSMAP, &res as *const _ as u64);
    check_eq!("XENMEM_populate_physmap of 1 frame: extents done", rc, 1i64);
    // SAFETY: the hypervisor wrote the element.
    let new = unsafe { core::ptr::read_volatile(ext.as_ptr()) };
    check_eq!("M2P of the populated frame", mm::m2p(new), pfn);
    check_eq!(
        "current_reservation after populating",
        reservation(XENMEM_CURRENT_RESERVATION),
        si.nr_pages as i64
    );
    mm::wr(si.mfn_list + pfn * 8, new);
    mm::remap("map the populated frame", va, mm::pte_rw(new));
    mm::fill(va, mm::seed_of(BALLOON));
    mm::expect_fill("populated frame", va, mm::seed_of(BALLOON));
    println!(
        "balloon: pfn {:#x} mfn {:#x} given back, repopulated with mfn {:#x}",
        pfn, old, new
    );
}
