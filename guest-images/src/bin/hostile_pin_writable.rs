//! `hostile_pin_writable`: pinning a frame that still has a writable mapping is refused.
//!
//! Asserts: `PIN_L1_TABLE` of a zeroed slack frame mapped writable: -EINVAL, done 0 (Xen:
//! "Bad type" in `_get_page_type`, the frame has the writable type); the same after the
//! frame's own VA was made read-only while a second writable alias exists; `UNPIN_TABLE`
//! afterwards -EINVAL (never pinned); the frame stays writable and its data intact; once
//! the last writable mapping is gone the same pin succeeds (0), then unpin 0 and
//! writable again — so the refusals were about the writable mappings only.
#![no_std]
#![no_main]

use pv_test_kernels::mm;
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::xen_abi::errno::EINVAL;
use pv_test_kernels::xen_abi::xen::mmuext;
use pv_test_kernels::{check_eq, println, test_kernel, StartInfo};

test_kernel!(main);

const F: u64 = 20;
const ALIAS: u64 = 21;

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    mm::assume("pinning needs the frame to have no writable mapping; otherwise -EINVAL (mm.c _get_page_type, do_mmuext_op)");
    let va = mm::slack_va(si, F);
    let mfn = mm::slack_mfn(si, F);
    for k in 0..512u64 {
        mm::wr(va + k * 8, 0);
    }

    mm::mmuext_err(
        "MMUEXT_PIN_L1_TABLE (frame mapped writable)",
        mmuext::PIN_L1_TABLE,
        mfn,
        0,
        -EINVAL,
    );
    mm::mmuext_err(
        "MMUEXT_PIN_L4_TABLE (frame mapped writable)",
        mmuext::PIN_L4_TABLE,
        mfn,
        0,
        -EINVAL,
    );
    mm::mmuext_err(
        "MMUEXT_UNPIN_TABLE (after the refused pins)",
        mmuext::UNPIN_TABLE,
        mfn,
        0,
        -EINVAL,
    );
    mm::wr(va + 8, 0x77);
    check_eq!(
        "frame still writable after the refused pins",
        mm::rd(va + 8),
        0x77u64
    );
    mm::wr(va + 8, 0);
    println!("pin of a writably mapped frame: -EINVAL, nothing changed");

    // Own VA read-only, but a writable alias elsewhere.
    let alias = mm::slack_va(si, ALIAS);
    mm::remap("writable alias", alias, mm::pte_rw(mfn));
    mm::slack_make_ro(si, F);
    mm::mmuext_err(
        "MMUEXT_PIN_L1_TABLE (writable alias)",
        mmuext::PIN_L1_TABLE,
        mfn,
        0,
        -EINVAL,
    );
    mm::wr(alias + 16, 0x99);
    check_eq!("alias still writable", mm::rd(va + 16), 0x99u64);
    mm::wr(alias + 16, 0);
    println!("pin with a writable alias: -EINVAL");

    mm::remap(
        "drop the alias",
        alias,
        mm::pte_rw(mm::slack_mfn(si, ALIAS)),
    );
    mm::mmuext_ok(
        "MMUEXT_PIN_L1_TABLE (no writable mapping left)",
        mmuext::PIN_L1_TABLE,
        mfn,
        0,
    );
    mm::mmuext_ok("MMUEXT_UNPIN_TABLE", mmuext::UNPIN_TABLE, mfn, 0);
    mm::slack_make_rw(si, F);
    println!("the same frame pins once read-only everywhere: ok; still running");
}
