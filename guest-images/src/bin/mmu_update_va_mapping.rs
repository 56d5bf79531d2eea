//! `mmu_update_va_mapping`: `HYPERVISOR_update_va_mapping` flush flags, the shared_info
//! mapping and `vcpu_info[0].arch.cr2`.
//!
//! Asserts:
//!
//! * `UVMF_NONE` on a not-present entry: 0, visible at once (no flush needed);
//! * present -> present remaps of a VA that was just read, each visible right after the
//!   hypercall: `UVMF_INVLPG|UVMF_LOCAL`, `UVMF_TLB_FLUSH|UVMF_LOCAL`,
//!   `UVMF_INVLPG|UVMF_ALL`, `UVMF_TLB_FLUSH|UVMF_ALL`, `UVMF_INVLPG|UVMF_MULTI` and
//!   `UVMF_TLB_FLUSH|UVMF_MULTI` with a vcpumask {vCPU 0} (pointer ORed into the flags);
//!   the PTE holds the new MFN each time;
//! * a VA whose L2 entry is not present (0x100000000000): -EINVAL; a VA in the hypervisor
//!   hole: -EINVAL; nothing mapped;
//! * `start_info.shared_info` (a machine address) maps at a slack VA and
//!   `vcpu_info[0].evtchn_upcall_mask` reads 1;
//! * with the trap table installed, #PFs on unmapped 0x10000 (read, error code 0),
//!   0x20008 (read) and 0x30010 (write, error code 2) each leave the fault address in
//!   `vcpu_info[0].arch.cr2` (offset 16).
#![no_std]
#![no_main]

use pv_test_kernels::mm;
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::xen_abi::errno::EINVAL;
use pv_test_kernels::{check_eq, fail, println, test_kernel, StartInfo};

test_kernel!(main);

const U: u64 = 40;
const SHINFO: u64 = 41;

static VCPU_MASK: u64 = 1;

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    mm::assume("UVMF flush type in bits 0-1 (NONE 0, TLB_FLUSH 1, INVLPG 2); bits 2+ = LOCAL 0, ALL 4, else a vcpumask pointer (public/xen.h, mm.c __do_update_va_mapping)");
    for i in 0..8 {
        mm::fill(mm::slack_va(si, i), mm::seed_of(i));
    }
    let u = mm::slack_va(si, U);
    let w = mm::walk(si, u);

    mm::remap("unmap u", u, 0);
    let rc = mm::uvm(u, mm::pte_rw(mm::slack_mfn(si, 1)), mm::UVMF_NONE);
    check_eq!("update_va_mapping(UVMF_NONE) rc", rc, 0i64);
    mm::expect_fill("UVMF_NONE (not-present -> present)", u, mm::seed_of(1));

    let maskp = &VCPU_MASK as *const u64 as u64;
    if maskp & 7 != 0 {
        fail!("vcpumask at {:#x} not 8-byte aligned", maskp);
    }
    let cases: [(&str, u64); 6] = [
        ("UVMF_INVLPG|UVMF_LOCAL", mm::UVMF_INVLPG | mm::UVMF_LOCAL),
        (
            "UVMF_TLB_FLUSH|UVMF_LOCAL",
            mm::UVMF_TLB_FLUSH | mm::UVMF_LOCAL,
        ),
        ("UVMF_INVLPG|UVMF_ALL", mm::UVMF_INVLPG | mm::UVMF_ALL),
        ("UVMF_TLB_FLUSH|UVMF_ALL", mm::UVMF_TLB_FLUSH | mm::UVMF_ALL),
        (
            "UVMF_INVLPG|UVMF_MULTI {vcpu0}",
            mm::UVMF_INVLPG | mm::UVMF_MULTI | maskp,
        ),
        (
            "UVMF_TLB_FLUSH|UVMF_MULTI {vcpu0}",
            mm::UVMF_TLB_FLUSH | mm::UVMF_MULTI | maskp,
        ),
    ];
    for (n, &(name, flags)) in cases.iter().enumerate() {
        let _ = mm::rd(u); // the old translation is in the TLB now
        let f = n as u64 + 2;
        let pte = mm::pte_rw(mm::slack_mfn(si, f));
        let rc = mm::uvm(u, pte, flags);
        if rc != 0 {
            fail!(
                "update_va_mapping({:#x}, {:#x}, {}): returned {}, expected 0",
                u,
                pte,
                name,
                rc
            );
        }
        let got = w.pte_now();
        if got & mm::PTE_CMP_MASK != pte & mm::PTE_CMP_MASK {
            fail!("{}: PTE {:#x}, expected {:#x}", name, got, pte);
        }
        mm::expect_fill(name, u, mm::seed_of(f));
    }
    println!("update_va_mapping flush flags: ok");

    let rc = mm::uvm(
        0x1000_0000_0000,
        mm::pte_rw(mm::slack_mfn(si, 0)),
        mm::UVMF_INVLPG,
    );
    check_eq!(
        "update_va_mapping of a VA without an L1 (0x100000000000)",
        rc,
        -EINVAL
    );
    let rc = mm::uvm(
        0xffff_8000_0000_0000,
        mm::pte_rw(mm::slack_mfn(si, 0)),
        mm::UVMF_INVLPG,
    );
    check_eq!(
        "update_va_mapping of a VA in the hypervisor hole",
        rc,
        -EINVAL
    );
    println!("update_va_mapping without an L1 / in the hole: -EINVAL");

    let sh = mm::slack_va(si, SHINFO);
    mm::map_shared_info(si, sh);
    let mask = mm::rd8(sh + mm::VCPU_INFO_UPCALL_MASK);
    check_eq!("vcpu_info[0].evtchn_upcall_mask", mask, 1u8);
    println!(
        "shared_info (machine address {:#x}) mapped at {:#x}: upcall mask {}",
        si.shared_info, sh, mask
    );

    mm::assume("a #PF bounced to the guest stores the fault address in vcpu_info.arch.cr2 (pv/traps.c pv_inject_event -> arch_set_cr2)");
    for &(addr, write, ec) in &[
        (0x10000u64, false, 0u64),
        (0x20008, false, 0),
        (0x30010, true, 2),
    ] {
        let p = if write {
            mm::probe_write(addr, 1)
        } else {
            mm::probe_read(addr)
        };
        if !p.trapped || p.trap.vector != 14 || p.trap.error_code != ec || p.trap.rip != p.insn {
            fail!(
                "access of {:#x}: trapped {} vector {} error code {:#x} rip {:#x}; expected #PF error code {:#x} at {:#x}",
                addr, p.trapped, p.trap.vector, p.trap.error_code, p.trap.rip, ec, p.insn
            );
        }
        let cr2 = mm::vcpu0_cr2(sh);
        if cr2 != addr {
            fail!(
                "vcpu_info[0].arch.cr2 after a #PF at {:#x}: {:#x}",
                addr,
                cr2
            );
        }
        println!(
            "#PF at {:#x} (error code {}): vcpu_info.arch.cr2 {:#x}",
            addr, ec, cr2
        );
    }
}
