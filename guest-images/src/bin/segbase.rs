//! `segbase`: `HYPERVISOR_set_segment_base`.
//!
//! Asserts: SEGBASE_FS with the address of a static returns 0 and `%fs:0` then reads the
//! static's value; SEGBASE_GS_KERNEL likewise with `%gs:0` (guest kernel mode uses the
//! kernel GS base); SEGBASE_GS_USER with a canonical base returns 0; SEGBASE_FS and
//! SEGBASE_GS_USER with a non-canonical base return -EINVAL; an undefined selector (99)
//! returns -EINVAL. FS and GS bases are set back to 0 at the end.
#![no_std]
#![no_main]

use core::arch::asm;
use pv_test_kernels::hypercall::{abi_extra, set_segment_base};
use pv_test_kernels::xen_abi::{errno, xen::segbase};
use pv_test_kernels::{check_eq, check_rc, test_kernel, StartInfo};

test_kernel!(main);

static FS_TARGET: [u64; 2] = [0x1122_3344_5566_7788, 0];
static GS_TARGET: [u64; 2] = [0x99aa_bbcc_ddee_ff00, 0];
const NON_CANONICAL: u64 = 0x0000_8000_0000_0000;

fn main(_si: &'static StartInfo) {
    // SAFETY: this kernel uses neither FS nor GS otherwise (true of every call below).
    let rc = unsafe { set_segment_base(segbase::FS, FS_TARGET.as_ptr() as u64) };
    check_rc!("set_segment_base(SEGBASE_FS, &static)", rc, 0);
    let v: u64;
    // SAFETY: FS base now points at FS_TARGET.
    unsafe { asm!("mov {}, qword ptr fs:[0]", out(reg) v, options(nostack, readonly)) };
    check_eq!("%fs:0 after SEGBASE_FS", v, FS_TARGET[0]);
    let v: u64;
    // SAFETY: as above, second word.
    unsafe { asm!("mov {}, qword ptr fs:[8]", out(reg) v, options(nostack, readonly)) };
    check_eq!("%fs:8 after SEGBASE_FS", v, FS_TARGET[1]);

    // SAFETY: only a segment base of this vCPU changes; nothing is accessed through it here.
    let rc = unsafe { set_segment_base(segbase::GS_KERNEL, GS_TARGET.as_ptr() as u64) };
    check_rc!("set_segment_base(SEGBASE_GS_KERNEL, &static)", rc, 0);
    let v: u64;
    // SAFETY: the kernel GS base now points at GS_TARGET.
    unsafe { asm!("mov {}, qword ptr gs:[0]", out(reg) v, options(nostack, readonly)) };
    check_eq!("%gs:0 after SEGBASE_GS_KERNEL", v, GS_TARGET[0]);

    // SAFETY: only a segment base of this vCPU changes; nothing is accessed through it here.
    let rc = unsafe { set_segment_base(segbase::GS_USER, 0x1000) };
    check_rc!("set_segment_base(SEGBASE_GS_USER, 0x1000)", rc, 0);
    // The user GS base must not leak into kernel mode.
    let v: u64;
    // SAFETY: as above.
    unsafe { asm!("mov {}, qword ptr gs:[0]", out(reg) v, options(nostack, readonly)) };
    check_eq!(
        "%gs:0 after SEGBASE_GS_USER (kernel GS base must stay)",
        v,
        GS_TARGET[0]
    );

    // SAFETY: only a segment base of this vCPU changes; nothing is accessed through it here.
    let rc = unsafe { set_segment_base(segbase::FS, NON_CANONICAL) };
    check_rc!(
        "set_segment_base(SEGBASE_FS, non-canonical)",
        rc,
        -errno::EINVAL
    );
    let v: u64;
    // SAFETY: a refused call must leave the FS base as it was.
    unsafe { asm!("mov {}, qword ptr fs:[0]", out(reg) v, options(nostack, readonly)) };
    check_eq!("%fs:0 after a refused SEGBASE_FS", v, FS_TARGET[0]);
    // SAFETY: as above; a non-canonical base is refused and changes nothing.
    let rc = unsafe { set_segment_base(segbase::GS_USER, NON_CANONICAL) };
    check_rc!(
        "set_segment_base(SEGBASE_GS_USER, non-canonical)",
        rc,
        -errno::EINVAL
    );
    // SAFETY: only a segment base of this vCPU changes; nothing is accessed through it here.
    let rc = unsafe { set_segment_base(abi_extra::SEGBASE_UNDEFINED, 0) };
    check_rc!("set_segment_base(99, 0)", rc, -errno::EINVAL);

    // SAFETY: only a segment base of this vCPU changes; nothing is accessed through it here.
    let rc = unsafe { set_segment_base(segbase::FS, 0) };
    check_rc!("set_segment_base(SEGBASE_FS, 0)", rc, 0);
    // SAFETY: only a segment base of this vCPU changes; nothing is accessed through it here.
    let rc = unsafe { set_segment_base(segbase::GS_KERNEL, 0) };
    check_rc!("set_segment_base(SEGBASE_GS_KERNEL, 0)", rc, 0);
    // SAFETY: only a segment base of this vCPU changes; nothing is accessed through it here.
    let rc = unsafe { set_segment_base(segbase::GS_USER, 0) };
    check_rc!("set_segment_base(SEGBASE_GS_USER, 0)", rc, 0);
}
