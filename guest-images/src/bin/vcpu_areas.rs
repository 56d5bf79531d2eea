//! `vcpu_areas`: the per-domain and per-vCPU areas a Linux PV guest sets up after the MMU:
//! the grant table, a moved `vcpu_info`, the runstate area, and `SCHEDOP_poll` with a
//! timeout (which the runstate area must show as time spent blocked).
//!
//! Asserts:
//! - `GNTTABOP_query_size`: 1 frame in use of at most 64 (Xen's default), status 0;
//!   `setup_table` for 2 frames lists two distinct frames outside our RAM and the size
//!   grows to 2; 65 frames: status GNTST_general_error; the listed frame maps writable
//!   with `update_va_mapping` and keeps what is written to it.
//! - `VCPUOP_register_vcpu_info`: -EINVAL on the shared_info frame and on a pinned L1
//!   table; 0 on an ordinary frame, after which that frame cannot be pinned as a table
//!   (the hypervisor holds a writable reference) and a second registration is -EINVAL;
//!   the pvclock then runs in the new place.
//! - `VCPUOP_is_up`: 1 for vCPU 0; -ENOENT for vCPUs 1 to 1000 and 2^32-1 (the shim
//!   answers these without an exit; the host test counts the exits).
//! - `PHYSDEVOP_pirq_eoi_gmfn_v2`: -EINVAL on a pinned L1 and on shared_info, 0 on an
//!   ordinary frame, -EBUSY the second time (Xen takes one page per domain);
//!   `xenpmu_op`: -EOPNOTSUPP for every sub-op (Xen's default, no virtual PMU).
//! - `VCPUOP_register_runstate_memory_area`: filled at once (state running); a
//!   `SCHEDOP_poll` on an idle port with a 3 ms timeout returns 0 no earlier than the
//!   timeout, and afterwards the area says running again with at least 2 ms blocked.
#![no_std]
#![no_main]

use core::ptr::{addr_of, addr_of_mut};
use pv_test_kernels::hypercall::hypercall3;
use pv_test_kernels::mm;
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::xen_abi::errno::{EBUSY, EINVAL, ENOENT, EOPNOTSUPP};
use pv_test_kernels::xen_abi::grant_table::*;
use pv_test_kernels::xen_abi::sched::{SchedPoll, SCHEDOP_POLL};
use pv_test_kernels::xen_abi::xen::{hypercall as hc, mmuext, DOMID_SELF};
use pv_test_kernels::{check_eq, check_rc, fail, println, test_kernel, StartInfo};

test_kernel!(main);

const SHINFO_SLOT: u64 = 30;
const GRANT_SLOT: u64 = 31;
const L1_SLOT: u64 = 32;
const VCPU_INFO_SLOT: u64 = 33;
const EOI_SLOT: u64 = 34;

const VCPUOP_GET_RUNSTATE_INFO: u64 = 4;
const VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA: u64 = 5;
const VCPUOP_REGISTER_VCPU_INFO: u64 = 10;

/// `struct vcpu_runstate_info`.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Runstate {
    state: i32,
    _pad: u32,
    state_entry_time: u64,
    time: [u64; 4],
}

static mut RUNSTATE: Runstate = Runstate {
    state: -1,
    _pad: 0,
    state_entry_time: 0,
    time: [0; 4],
};

/// Runs `f` with slack frame `L1_SLOT` zeroed and pinned as an L1 table, then unpins it
/// and makes it writable again.
fn with_pinned_l1(si: &StartInfo, f: impl FnOnce(u64)) {
    let l1_va = mm::slack_va(si, L1_SLOT);
    let l1 = mm::slack_mfn(si, L1_SLOT);
    for k in 0..512 {
        mm::wr(l1_va + k * 8, 0);
    }
    mm::slack_make_ro(si, L1_SLOT);
    mm::mmuext_ok("pin L1", mmuext::PIN_L1_TABLE, l1, 0);
    f(l1);
    mm::mmuext_ok("unpin L1", mmuext::UNPIN_TABLE, l1, 0);
    mm::slack_make_rw(si, L1_SLOT);
}

fn gnttab<T>(cmd: u64, op: &mut T) -> i64 {
    // SAFETY: `op` is a live record of the size the command expects.
    unsafe { hypercall3(hc::GRANT_TABLE_OP, cmd, op as *mut T as u64, 1) }
}

fn vcpu_op<T>(cmd: u64, arg: &mut T) -> i64 {
    // SAFETY: `arg` is a live record of the size the command expects.
    unsafe { hypercall3(hc::VCPU_OP, cmd, 0, arg as *mut T as u64) }
}

fn runstate() -> Runstate {
    // SAFETY: the hypervisor writes RUNSTATE only while this vCPU is in a hypercall or
    // blocked; the volatile read sees its last write.
    unsafe { core::ptr::read_volatile(addr_of!(RUNSTATE)) }
}

/// System time (ns) from the pvclock in the `vcpu_info` mapped at `vi_va`.
fn system_time(vi_va: u64) -> u64 {
    let t = vi_va + 32;
    loop {
        let version = mm::rd(t) as u32;
        let tsc_stamp = mm::rd(t + 8);
        let system = mm::rd(t + 16);
        let mul_shift = mm::rd(t + 24);
        let tsc = tsc();
        if version & 1 == 0 && mm::rd(t) as u32 == version {
            let mul = mul_shift as u32;
            let shift = (mul_shift >> 32) as u8 as i8;
            let mut delta = tsc.wrapping_sub(tsc_stamp);
            if shift >= 0 {
                delta <<= shift;
            } else {
                delta >>= -shift;
            }
            return system + ((u128::from(delta) * u128::from(mul)) >> 32) as u64;
        }
    }
}

fn tsc() -> u64 {
    let (lo, hi): (u32, u32);
    // SAFETY: rdtsc reads the time-stamp counter; no memory effects.
    unsafe { core::arch::asm!("rdtsc", out("eax") lo, out("edx") hi, options(nomem, nostack)) };
    (u64::from(hi) << 32) | u64::from(lo)
}

fn grant_table(si: &StartInfo) {
    let mut q = GnttabQuerySize {
        dom: DOMID_SELF,
        status: 99,
        ..Default::default()
    };
    check_rc!(
        "GNTTABOP_query_size",
        gnttab(GNTTABOP_QUERY_SIZE, &mut q),
        0
    );
    check_eq!("query_size status", q.status, 0i16);
    check_eq!("query_size nr_frames", q.nr_frames, 1u32);
    check_eq!("query_size max_nr_frames", q.max_nr_frames, 64u32);

    let mut frames = [0u64; 2];
    let mut setup = GnttabSetupTable {
        dom: DOMID_SELF,
        nr_frames: 2,
        status: 99,
        frame_list: frames.as_mut_ptr() as u64,
        ..Default::default()
    };
    check_rc!(
        "GNTTABOP_setup_table",
        gnttab(GNTTABOP_SETUP_TABLE, &mut setup),
        0
    );
    check_eq!("setup_table status", setup.status, 0i16);
    if frames[0] == frames[1] || frames.iter().any(|&f| f < si.nr_pages) {
        fail!(
            "setup_table frames {:#x} {:#x}: not two hypervisor frames",
            frames[0],
            frames[1]
        );
    }
    check_rc!(
        "GNTTABOP_query_size",
        gnttab(GNTTABOP_QUERY_SIZE, &mut q),
        0
    );
    check_eq!("nr_frames after setup_table(2)", q.nr_frames, 2u32);

    setup.nr_frames = 65;
    check_rc!(
        "GNTTABOP_setup_table(65)",
        gnttab(GNTTABOP_SETUP_TABLE, &mut setup),
        0
    );
    check_eq!(
        "setup_table(65) status",
        setup.status,
        status::GENERAL_ERROR
    );

    let va = mm::slack_va(si, GRANT_SLOT);
    mm::remap("map grant frame 0", va, mm::pte_rw(frames[0]));
    mm::fill(va, 0x6e7);
    mm::expect_fill("grant frame 0 keeps its contents", va, 0x6e7);
    println!(
        "grant table: query_size 1/64, setup_table 2 frames {:#x} {:#x}, mapped writable",
        frames[0], frames[1]
    );
}

fn vcpu_info(si: &StartInfo) -> u64 {
    let shinfo_va = mm::slack_va(si, SHINFO_SLOT);
    mm::map_shared_info(si, shinfo_va);
    let mut reg = [0u64; 2]; // mfn, offset + rsvd
    reg[0] = si.shared_info >> 12;
    check_rc!(
        "register_vcpu_info on shared_info",
        vcpu_op(VCPUOP_REGISTER_VCPU_INFO, &mut reg),
        -EINVAL
    );

    with_pinned_l1(si, |l1| {
        reg[0] = l1;
        check_rc!(
            "register_vcpu_info on a pinned L1",
            vcpu_op(VCPUOP_REGISTER_VCPU_INFO, &mut reg),
            -EINVAL
        );
    });

    let vi_va = mm::slack_va(si, VCPU_INFO_SLOT);
    let vi = mm::slack_mfn(si, VCPU_INFO_SLOT);
    for k in 0..512 {
        mm::wr(vi_va + k * 8, 0);
    }
    let mask_before = mm::rd8(shinfo_va + mm::VCPU_INFO_UPCALL_MASK);
    reg = [vi, 0x40];
    check_rc!(
        "register_vcpu_info",
        vcpu_op(VCPUOP_REGISTER_VCPU_INFO, &mut reg),
        0
    );
    let new_vi = vi_va + 0x40;
    check_eq!(
        "upcall mask moved with vcpu_info",
        mm::rd8(new_vi + mm::VCPU_INFO_UPCALL_MASK),
        mask_before
    );
    check_rc!(
        "second register_vcpu_info",
        vcpu_op(VCPUOP_REGISTER_VCPU_INFO, &mut reg),
        -EINVAL
    );
    mm::slack_make_ro(si, VCPU_INFO_SLOT);
    mm::mmuext_err(
        "pin the vcpu_info frame as an L1",
        mmuext::PIN_L1_TABLE,
        vi,
        0,
        -EINVAL,
    );
    mm::slack_make_rw(si, VCPU_INFO_SLOT);
    let t0 = system_time(new_vi);
    let t1 = system_time(new_vi);
    if t0 == 0 || t1 < t0 {
        fail!("pvclock in the moved vcpu_info: {} then {}", t0, t1);
    }
    println!(
        "vcpu_info: refused on shared_info and a pinned L1, moved to an own frame, clock {} ns",
        t1
    );
    new_vi
}

fn runstate_and_poll(vi: u64) {
    let mut area = addr_of_mut!(RUNSTATE) as u64;
    check_rc!(
        "register_runstate_memory_area",
        vcpu_op(VCPUOP_REGISTER_RUNSTATE_MEMORY_AREA, &mut area),
        0
    );
    check_eq!("runstate state after registration", runstate().state, 0i32);

    let mut port: u32 = 100;
    let start = system_time(vi);
    let mut poll = SchedPoll {
        ports: &mut port as *mut u32 as u64,
        nr_ports: 1,
        _pad: 0,
        timeout: start + 3_000_000,
    };
    // SAFETY: `poll` and the port it names are live.
    let rc = unsafe { hypercall3(hc::SCHED_OP, SCHEDOP_POLL, &mut poll as *mut _ as u64, 0) };
    let end = system_time(vi);
    check_rc!("SCHEDOP_poll with a 3 ms timeout", rc, 0);
    if end < start + 3_000_000 {
        fail!(
            "SCHEDOP_poll returned after {} ns, before its 3 ms timeout",
            end - start
        );
    }
    let rs = runstate();
    check_eq!("runstate state after the poll", rs.state, 0i32);
    // Blocked for the poll, running again only when it ended. The blocked span is the
    // poll's unless the host held the vCPU's thread before it could block (a loaded
    // host: seen once, 5 ms late): a short span must then have begun late. This is the
    // only block so far, so the block began at the running entry minus the blocked time.
    let block_began = rs.state_entry_time.saturating_sub(rs.time[2]);
    let short_but_late = rs.time[2] > 0 && block_began >= start + 1_000_000;
    if (rs.time[2] < 2_000_000 && !short_but_late) || rs.state_entry_time < start + 3_000_000 {
        fail!(
            "runstate after a 3 ms poll: blocked {} ns, entered running at {} (poll began {})",
            rs.time[2],
            rs.state_entry_time,
            start
        );
    }
    let mut info = Runstate::default();
    check_rc!(
        "get_runstate_info",
        vcpu_op(VCPUOP_GET_RUNSTATE_INFO, &mut info),
        0
    );
    if info.time[2] != rs.time[2] || info.time[0] < rs.time[0] {
        fail!(
            "get_runstate_info disagrees with the area: blocked {} vs {}",
            info.time[2],
            rs.time[2]
        );
    }
    println!(
        "poll: returned after {} us; runstate running {} us, blocked {} us",
        (end - start) / 1000,
        rs.time[0] / 1000,
        rs.time[2] / 1000
    );
}

fn is_up() {
    const VCPUOP_IS_UP: u64 = 3;
    // SAFETY: is_up takes no argument pointer.
    let up = |id: u64| unsafe { hypercall3(hc::VCPU_OP, VCPUOP_IS_UP, id, 0) };
    check_rc!("is_up(0)", up(0), 1);
    for id in (1..=1000).chain([u64::from(u32::MAX)]) {
        if up(id) != -ENOENT {
            fail!("is_up({}) returned {}, expected -ENOENT", id, up(id));
        }
    }
    println!("is_up: vCPU 0 up, 1..=1000 and 2^32-1 -ENOENT");
}

fn physdev_and_pmu(si: &StartInfo) {
    const PHYSDEVOP_PIRQ_EOI_GMFN_V2: u64 = 28;
    let eoi = |gmfn: u64| {
        let mut arg = gmfn;
        // SAFETY: `arg` is a live `struct physdev_pirq_eoi_gmfn`.
        unsafe {
            hypercall3(
                hc::PHYSDEV_OP,
                PHYSDEVOP_PIRQ_EOI_GMFN_V2,
                &mut arg as *mut u64 as u64,
                0,
            )
        }
    };
    check_rc!(
        "pirq_eoi_gmfn on shared_info",
        eoi(si.shared_info >> 12),
        -EINVAL
    );
    with_pinned_l1(si, |l1| {
        check_rc!("pirq_eoi_gmfn on a pinned L1", eoi(l1), -EINVAL);
    });
    let frame = mm::slack_mfn(si, EOI_SLOT);
    check_rc!("pirq_eoi_gmfn on an own frame", eoi(frame), 0);
    check_rc!("a second pirq_eoi_gmfn", eoi(frame), -EBUSY);
    for cmd in [0u64, 4, 7] {
        // SAFETY: xenpmu_op is refused before it reads its argument.
        let rc = unsafe { hypercall3(hc::XENPMU_OP, cmd, 0, 0) };
        check_rc!("xenpmu_op", rc, -EOPNOTSUPP);
    }
    println!("physdev pirq_eoi_gmfn: -EINVAL, -EINVAL, 0, -EBUSY; xenpmu_op: -EOPNOTSUPP");
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    is_up();
    physdev_and_pmu(si);
    grant_table(si);
    let vi = vcpu_info(si);
    runstate_and_poll(vi);
}
