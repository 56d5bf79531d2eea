//! Preempted hypercalls, run as a guest runs them: the host's preemption check says true
//! after a chosen number of checks ([`FakePlatform::preempt_after`]), the engine rewinds
//! rip onto the `syscall`, and the test re-executes it with the registers the engine
//! left until rip stays after the `syscall`. Every result must be what an unpreempted
//! run gives, and every continuation must carry Xen's encoding of the work left.

use std::vec::Vec;

use xen_abi::console::CONSOLEIO_WRITE;
use xen_abi::errno::{EINVAL, ENOSYS};
use xen_abi::memory::*;
use xen_abi::sched::SCHEDOP_YIELD;
use xen_abi::xen::hypercall as hc;
use xen_abi::xen::mmuext::MMU_UPDATE_PREEMPTED;
use xen_abi::xen::{MmuUpdate, MulticallEntry, DOMID_SELF};
use zerocopy::IntoBytes;

use crate::memory::MEMOP_EXTENT_SHIFT;
use crate::testutil::*;
use crate::{guest, GuestRegs, Outcome, Stats, Vcpu};

/// What `XENVER_version` answers (Xen 4.17).
const VERSION: u64 = 0x4_0011;

/// A hypercall's entry registers.
fn regs_for(nr: u64, args: [u64; 5]) -> GuestRegs {
    let mut r = distinct_regs();
    r.rax = nr;
    (r.rdi, r.rsi, r.rdx, r.r10, r.r8) = (args[0], args[1], args[2], args[3], args[4]);
    r
}

/// Runs hypercall `nr` until it completes, re-executing the `syscall` after every
/// continuation as the guest does. Returns the last outcome, the final registers and
/// the registers each continuation left (what the guest re-executes with). Checks that a
/// continuation touches nothing but rip, rax and the argument registers, and names the
/// same hypercall.
fn until_done(
    v: &mut Vcpu,
    d: &mut crate::Domain,
    p: &mut FakePlatform,
    s: &mut Stats,
    nr: u64,
    args: [u64; 5],
) -> (Outcome, GuestRegs, Vec<GuestRegs>) {
    let mut r = regs_for(nr, args);
    let after_syscall = r.rip;
    let mut continuations = Vec::new();
    loop {
        let before = r;
        let out = crate::syscall_entry(v, d, &mut r, p, s);
        if r.rip != after_syscall - 2 {
            return (out, r, continuations);
        }
        assert_eq!(r.rax, nr, "a continuation re-enters the same hypercall");
        let mut same = r;
        (same.rax, same.rdi, same.rsi, same.rdx, same.r10, same.r8) = (
            before.rax, before.rdi, before.rsi, before.rdx, before.r10, before.r8,
        );
        same.rip = before.rip;
        assert_eq!(same, before, "a continuation changed other registers");
        continuations.push(r);
        assert!(continuations.len() < 100_000, "no progress");
        r.rip = after_syscall;
    }
}

fn put(p: &mut FakePlatform, v: &Vcpu, va: u64, bytes: &[u8]) {
    guest::copy_to_guest(v, p, va, bytes).unwrap();
}

fn entry(p: &FakePlatform, v: &Vcpu, va: u64) -> MulticallEntry {
    guest::read_obj(v, p, va).unwrap()
}

fn call(op: u64, args: [u64; 6]) -> MulticallEntry {
    MulticallEntry {
        op,
        result: 0x5555,
        args,
    }
}

#[test]
fn a_preempted_multicall_completes_every_entry_with_its_own_result() {
    let (mut v, mut d, mut p) = setup();
    const N: u64 = 40;
    let expected = |k: u64| -> u64 {
        match k % 4 {
            0 => VERSION,
            1 => -ENOSYS as u64,
            2 => 0,
            _ => -EINVAL as u64,
        }
    };
    for k in 0..N {
        let c = match k % 4 {
            0 => call(hc::XEN_VERSION, [0; 6]),
            1 => call(hc::XEN_VERSION, [99, 0, 0, 0, 0, 0]),
            2 => call(hc::STACK_SWITCH, [0xe02b, 0x1000 + k, 0, 0, 0, 0]),
            // A nested multicall is refused, and the list goes on.
            _ => call(hc::MULTICALL, [DATA_VA, 1, 0, 0, 0, 0]),
        };
        put(&mut p, &v, DATA_VA + k * 64, c.as_bytes());
    }
    // Three entries per trap: checks before entries 1, 2 and 3, the third says yes.
    p.preempt_after = Some(3);
    let mut s = Stats::new();
    let (out, r, conts) = until_done(
        &mut v,
        &mut d,
        &mut p,
        &mut s,
        hc::MULTICALL,
        [DATA_VA, N, 7, 8, 9],
    );
    assert_eq!((out, r.rax), (Outcome::Resume, 0));
    assert_eq!(conts.len(), 13, "40 entries, 3 per trap");
    for (j, c) in conts.iter().enumerate() {
        let done = 3 * (j as u64 + 1);
        assert_eq!(c.rdi, DATA_VA + done * 64, "list advanced past {done}");
        assert_eq!(c.rsi, N - done, "count reduced by {done}");
        assert_eq!(
            (c.rdx, c.r10, c.r8),
            (7, 8, 9),
            "other arguments as they were"
        );
    }
    for k in 0..N {
        assert_eq!(
            entry(&p, &v, DATA_VA + k * 64).result,
            expected(k),
            "entry {k}"
        );
    }
    assert_eq!(v.kernel_sp, 0x1000 + 38, "the last stack_switch ran last");
    assert_eq!(s.continuations, 13);
    assert_eq!(s.continued[hc::MULTICALL as usize], 13);
    // 14 entries of the multicall, 10 nested ones refused.
    assert_eq!(s.hypercalls[hc::MULTICALL as usize], 14 + 10);
    assert_eq!(s.hypercalls[hc::XEN_VERSION as usize], 20);
}

#[test]
fn a_multicall_entry_that_continues_carries_its_continuation() {
    let (mut v, mut d, mut p) = setup();
    let buf = DATA_VA + 0x1000;
    let msg: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
    put(&mut p, &v, buf, &msg);
    put(
        &mut p,
        &v,
        DATA_VA,
        call(
            hc::CONSOLE_IO,
            [CONSOLEIO_WRITE, 300, buf, 0xa3, 0xa4, 0xa5],
        )
        .as_bytes(),
    );
    put(
        &mut p,
        &v,
        DATA_VA + 64,
        call(hc::XEN_VERSION, [0; 6]).as_bytes(),
    );
    // Every check says yes: one console chunk per trap.
    p.preempt_after = Some(1);
    let mut s = Stats::new();
    let mut r = regs_for(hc::MULTICALL, [DATA_VA, 2, 0, 0, 0]);
    let after_syscall = r.rip;
    assert_eq!(
        crate::syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut s),
        Outcome::Resume
    );
    assert_eq!(r.rip, after_syscall - 2);
    assert_eq!(
        (r.rax, r.rdi, r.rsi),
        (hc::MULTICALL, DATA_VA, 2),
        "continues at entry 0"
    );
    // Xen writes the sub-call's continuation over its entry: the same op, the
    // continuation's return value (the op) as result, the arguments of the rest.
    let e = entry(&p, &v, DATA_VA);
    assert_eq!(
        (e.op, e.result, e.args),
        (
            hc::CONSOLE_IO,
            hc::CONSOLE_IO,
            [CONSOLEIO_WRITE, 300 - 127, buf + 127, 0xa3, 0xa4, 0xa5]
        )
    );
    assert_eq!(p.console_out, &msg[..127]);
    let (out, r, conts) = until_done(
        &mut v,
        &mut d,
        &mut p,
        &mut s,
        hc::MULTICALL,
        [r.rdi, r.rsi, 0, 0, 0],
    );
    assert_eq!((out, r.rax), (Outcome::Resume, 0));
    assert_eq!(p.console_out, msg, "every byte once, in order");
    assert_eq!(entry(&p, &v, DATA_VA).result, 0);
    assert_eq!(entry(&p, &v, DATA_VA + 64).result, VERSION);
    // Then: the last console chunk and a preemption before entry 1; then entry 1.
    assert_eq!(conts.len(), 2);
    assert_eq!((conts[0].rdi, conts[0].rsi), (DATA_VA, 2));
    assert_eq!((conts[1].rdi, conts[1].rsi), (DATA_VA + 64, 1));
    assert_eq!(s.continuations, 3);
}

#[test]
fn a_yield_inside_a_multicall_takes_effect_and_the_rest_follows() {
    let (mut v, mut d, mut p) = setup();
    put(
        &mut p,
        &v,
        DATA_VA,
        call(hc::SCHED_OP, [SCHEDOP_YIELD, 0, 0, 0, 0, 0]).as_bytes(),
    );
    put(
        &mut p,
        &v,
        DATA_VA + 64,
        call(hc::XEN_VERSION, [0; 6]).as_bytes(),
    );
    let mut s = Stats::new();
    let mut r = regs_for(hc::MULTICALL, [DATA_VA, 2, 0, 0, 0]);
    assert_eq!(
        crate::syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut s),
        Outcome::Yield
    );
    assert_eq!((r.rax, r.rdi, r.rsi), (hc::MULTICALL, DATA_VA + 64, 1));
    assert_eq!(entry(&p, &v, DATA_VA).result, 0);
    assert_eq!(entry(&p, &v, DATA_VA + 64).result, 0x5555, "not run yet");
    r.rip += 2;
    assert_eq!(
        crate::syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut s),
        Outcome::Resume
    );
    assert_eq!(r.rax, 0);
    assert_eq!(entry(&p, &v, DATA_VA + 64).result, VERSION);
}

/// An L1 table, pinned, and `n` requests that fill its slots with data frames.
fn l1_requests(p: &mut FakePlatform, v: &Vcpu, list: u64, n: u64) -> (u64, impl Fn(u64) -> u64) {
    const L1: u64 = 0xc00;
    p.enable_mm();
    let (mm, _) = p.mmstate.as_mut().unwrap();
    let _ = mm.pin_table(&mut p.mem, L1, pv_mm::Level::L1).unwrap();
    let frame = |k: u64| 0xc10 + k;
    for k in 0..n {
        let req = MmuUpdate {
            ptr: (L1 << 12) + k * 8,
            val: (frame(k) << 12) | P | RW,
        };
        put(p, v, list + k * 16, req.as_bytes());
    }
    (L1, frame)
}

fn check_l1(p: &FakePlatform, l1: u64, frame: impl Fn(u64) -> u64, n: u64) {
    for k in 0..n {
        let e = p.r64(l1 * 4096 + k * 8);
        assert_eq!(
            (e & 0x000f_ffff_ffff_f000, e & P),
            (frame(k) << 12, P),
            "slot {k}"
        );
    }
}

#[test]
fn mmu_update_preempted_reports_pdone_and_continues_where_it_stopped() {
    let (mut v, mut d, mut p) = setup();
    const N: u64 = 100;
    let pdone = DATA_VA + 0xf00;
    let (l1, frame) = l1_requests(&mut p, &v, DATA_VA, N);
    put(&mut p, &v, pdone, &0xdeadu32.to_le_bytes());
    p.preempt_after = Some(7);
    let mut s = Stats::new();
    let foreigndom = u64::from(DOMID_SELF) | 0xffff_0000_0000;
    let mut r = regs_for(hc::MMU_UPDATE, [DATA_VA, N, pdone, foreigndom, 0x88]);
    let after_syscall = r.rip;
    let mut done = 0;
    loop {
        assert_eq!(
            crate::syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut s),
            Outcome::Resume
        );
        let reported: u32 = guest::read_obj(&v, &p, pdone).unwrap();
        if r.rip == after_syscall {
            assert_eq!(r.rax, 0);
            assert_eq!(reported, N as u32, "pdone counts every request");
            break;
        }
        done += 7;
        assert_eq!(u64::from(reported), done, "pdone after a preemption");
        assert_eq!(r.rdi, DATA_VA + done * 16, "list advanced");
        assert_eq!(r.rsi, (N - done) | u64::from(MMU_UPDATE_PREEMPTED));
        assert_eq!(r.rdx, pdone);
        assert_eq!(
            r.r10,
            u64::from(DOMID_SELF),
            "foreigndom is an unsigned int"
        );
        assert_eq!(r.r8, 0x88);
        r.rip = after_syscall;
    }
    assert_eq!(done, 98);
    check_l1(&p, l1, frame, N);
    assert_eq!(s.continuations, 14);
    assert_eq!(s.continued[hc::MMU_UPDATE as usize], 14);
    // One batch in the histogram, not fifteen.
    assert_eq!(s.mmu_update_batches.iter().sum::<u64>(), 1);
}

#[test]
fn mmu_update_inside_a_multicall_continues_through_its_entry() {
    let (mut v, mut d, mut p) = setup();
    const N: u64 = 20;
    let list = DATA_VA + 0x1000;
    let pdone = DATA_VA + 0x100;
    let (l1, frame) = l1_requests(&mut p, &v, list, N);
    put(
        &mut p,
        &v,
        DATA_VA,
        call(
            hc::MMU_UPDATE,
            [list, N, pdone, u64::from(DOMID_SELF), 0, 0],
        )
        .as_bytes(),
    );
    p.preempt_after = Some(5);
    let mut s = Stats::new();
    let mut r = regs_for(hc::MULTICALL, [DATA_VA, 1, 0, 0, 0]);
    assert_eq!(
        crate::syscall_entry(&mut v, &mut d, &mut r, &mut p, &mut s),
        Outcome::Resume
    );
    assert_eq!((r.rax, r.rdi, r.rsi), (hc::MULTICALL, DATA_VA, 1));
    let e = entry(&p, &v, DATA_VA);
    assert_eq!(
        e.args[..4],
        [
            list + 5 * 16,
            (N - 5) | u64::from(MMU_UPDATE_PREEMPTED),
            pdone,
            u64::from(DOMID_SELF)
        ]
    );
    assert_eq!(guest::read_obj::<u32>(&v, &p, pdone).unwrap(), 5);
    let (out, r, conts) = until_done(
        &mut v,
        &mut d,
        &mut p,
        &mut s,
        hc::MULTICALL,
        [r.rdi, r.rsi, 0, 0, 0],
    );
    assert_eq!((out, r.rax), (Outcome::Resume, 0));
    assert_eq!(conts.len(), 2);
    assert_eq!(entry(&p, &v, DATA_VA).result, 0);
    assert_eq!(guest::read_obj::<u32>(&v, &p, pdone).unwrap(), N as u32);
    check_l1(&p, l1, frame, N);
}

#[test]
fn a_console_write_is_preempted_between_chunks() {
    let (mut v, mut d, mut p) = setup();
    let buf = DATA_VA + 0x100;
    let mut msg: Vec<u8> = (0..300u32).map(|i| b'a' + (i % 26) as u8).collect();
    msg[10] = b'\n';
    put(&mut p, &v, buf, &msg);
    p.preempt_after = Some(1);
    let mut s = Stats::new();
    let (out, r, conts) = until_done(
        &mut v,
        &mut d,
        &mut p,
        &mut s,
        hc::CONSOLE_IO,
        [CONSOLEIO_WRITE | 0xffff_0000_0000, 300, buf, 4, 5],
    );
    assert_eq!((out, r.rax), (Outcome::Resume, 0));
    assert_eq!(p.console_out, msg);
    // Chunks as Xen takes them from a domU: through the first newline, then 127 bytes.
    let at: Vec<(u64, u64, u64)> = conts.iter().map(|c| (c.rdi, c.rsi, c.rdx)).collect();
    assert_eq!(
        at,
        [
            (CONSOLEIO_WRITE, 289, buf + 11),
            (CONSOLEIO_WRITE, 162, buf + 138),
            (CONSOLEIO_WRITE, 35, buf + 265),
        ]
    );
    assert!(conts.iter().all(|c| (c.r10, c.r8) == (4, 5)));
}

#[test]
fn memory_op_encodes_its_progress_in_the_command() {
    let (mut v, mut d, mut p) = setup();
    p.enable_mm();
    const N: u64 = 10;
    let list = DATA_VA + 0x800;
    let frames: Vec<u64> = (0..N).map(|k| 0xd00 + k).collect();
    put(&mut p, &v, list, frames.as_bytes());
    let reservation = |nr_extents: u64, list: u64| MemoryReservation {
        extent_start: list,
        nr_extents,
        extent_order: 0,
        mem_flags: 0,
        domid: DOMID_SELF,
        _pad: [0; 3],
    };
    put(&mut p, &v, DATA_VA, reservation(N, list).as_bytes());
    p.preempt_after = Some(3);
    let mut s = Stats::new();
    let owned = |p: &mut FakePlatform| p.mmstate.as_ref().unwrap().0.owned_frames();
    let before = owned(&mut p);
    let (out, r, conts) = until_done(
        &mut v,
        &mut d,
        &mut p,
        &mut s,
        hc::MEMORY_OP,
        [XENMEM_DECREASE_RESERVATION, DATA_VA, 0, 0, 0],
    );
    assert_eq!((out, r.rax), (Outcome::Resume, N), "extents done in all");
    let cmds: Vec<u64> = conts.iter().map(|c| c.rdi).collect();
    assert_eq!(
        cmds,
        [3, 6, 9].map(|done| XENMEM_DECREASE_RESERVATION | done << MEMOP_EXTENT_SHIFT)
    );
    assert!(conts.iter().all(|c| c.rsi == DATA_VA));
    assert_eq!(owned(&mut p), before - N);

    // populate_physmap takes them back, with the same encoding.
    let (_, r, conts) = until_done(
        &mut v,
        &mut d,
        &mut p,
        &mut s,
        hc::MEMORY_OP,
        [XENMEM_POPULATE_PHYSMAP, DATA_VA, 0, 0, 0],
    );
    assert_eq!(r.rax, N);
    assert_eq!(conts.len(), 3);
    assert_eq!(owned(&mut p), before);

    // A continuation at or past the end does nothing and answers its start; so does a
    // request too large to encode one, or one whose list starts in the hypervisor hole.
    p.preempt_after = None;
    let ret = |v: &mut Vcpu, d: &mut crate::Domain, p: &mut FakePlatform, cmd: u64| {
        let mut s = Stats::new();
        let (out, r, conts) = until_done(v, d, p, &mut s, hc::MEMORY_OP, [cmd, DATA_VA, 0, 0, 0]);
        assert_eq!((out, conts.len()), (Outcome::Resume, 0));
        r.rax as i64
    };
    let dec = |start: u64| XENMEM_DECREASE_RESERVATION | start << MEMOP_EXTENT_SHIFT;
    assert_eq!(ret(&mut v, &mut d, &mut p, dec(N)), N as i64);
    assert_eq!(ret(&mut v, &mut d, &mut p, dec(N + 5)), N as i64 + 5);
    assert_eq!(owned(&mut p), before, "nothing given back");
    put(&mut p, &v, DATA_VA, reservation(1 << 26, list).as_bytes());
    assert_eq!(ret(&mut v, &mut d, &mut p, dec(0)), 0);
    put(
        &mut p,
        &v,
        DATA_VA,
        reservation(N, 0xffff_8000_0000_0000).as_bytes(),
    );
    assert_eq!(ret(&mut v, &mut d, &mut p, dec(2)), 2);
    // An unreadable request answers its start too (Xen: not -EFAULT).
    let mut s = Stats::new();
    let (_, r, _) = until_done(
        &mut v,
        &mut d,
        &mut p,
        &mut s,
        hc::MEMORY_OP,
        [dec(4), UNMAPPED_VA, 0, 0, 0],
    );
    assert_eq!(r.rax, 4);
    // The other common sub-operations take no progress; the architecture's own match
    // the whole command.
    assert_eq!(
        ret(
            &mut v,
            &mut d,
            &mut p,
            XENMEM_MAXIMUM_RAM_PAGE | 1 << MEMOP_EXTENT_SHIFT
        ),
        -EINVAL
    );
    assert_eq!(
        ret(
            &mut v,
            &mut d,
            &mut p,
            XENMEM_MACHPHYS_MAPPING | 1 << MEMOP_EXTENT_SHIFT
        ),
        -ENOSYS
    );
}

#[test]
fn set_trap_table_preempted_after_every_entry_still_loads_the_whole_table() {
    let (mut v, mut d, mut p) = setup();
    for i in 0..20u64 {
        let ti = xen_abi::xen::TrapInfo {
            vector: i as u8,
            flags: 0,
            cs: 0xe033,
            _pad: 0,
            address: 0x1000 + i,
        };
        put(&mut p, &v, DATA_VA + i * 16, ti.as_bytes());
    }
    put(&mut p, &v, DATA_VA + 20 * 16, &[0u8; 16]);
    p.preempt_after = Some(1);
    let mut s = Stats::new();
    let (out, r, conts) = until_done(
        &mut v,
        &mut d,
        &mut p,
        &mut s,
        hc::SET_TRAP_TABLE,
        [DATA_VA, 0, 0, 0, 0],
    );
    assert_eq!((out, r.rax), (Outcome::Resume, 0));
    assert_eq!(conts.len(), 20, "one entry per trap, then the terminator");
    assert!((0..20).all(|i| v.trap_table[i].address == 0x1000 + i as u64));
}

/// A pinned L4 over 128 full L1s (65,536 L1 entries, four times the engine's budget) at
/// frames 0xa00.. of the fake memory; returns the L4 and an L2 of the tree.
fn big_tree(p: &mut FakePlatform) -> (u64, u64) {
    use pv_mm::FrameAccess;
    const L4: u64 = 0xa00;
    const L3: u64 = 0xa01;
    const L2: [u64; 2] = [0xa02, 0xa03];
    const DATA: u64 = 0xb00;
    p.enable_mm();
    p.mem.write_entry(L4, 0, (L3 << 12) | UPPER);
    for (i, &l2) in L2.iter().enumerate() {
        p.mem.write_entry(L3, i, (l2 << 12) | UPPER);
        for j in 0..64u64 {
            let l1 = 0xa04 + i as u64 * 64 + j;
            p.mem.write_entry(l2, j as usize, (l1 << 12) | UPPER);
            for s in 0..512 {
                p.mem.write_entry(l1, s, (DATA << 12) | P | US);
            }
        }
    }
    let (mm, _) = p.mmstate.as_mut().unwrap();
    let _ = mm.pin_table(&mut p.mem, L4, pv_mm::Level::L4).unwrap();
    (L4, L2[0])
}

#[test]
fn a_deferred_teardown_is_finished_first_by_the_next_mmu_call() {
    use xen_abi::xen::mmuext::{self, MmuextOp};
    let (mut v, mut d, mut p) = setup();
    let (l4, l2) = big_tree(&mut p);
    let pdone = DATA_VA + 0xf00;
    let ops = [
        MmuextOp {
            cmd: mmuext::UNPIN_TABLE,
            arg1: l4,
            ..Default::default()
        },
        // Meets the tree's L2 only once its teardown is over: an L1 pin of it then
        // validates its (by then untyped) L1 frames as data.
        MmuextOp {
            cmd: mmuext::PIN_L1_TABLE,
            arg1: l2,
            ..Default::default()
        },
    ];
    put(&mut p, &v, DATA_VA, ops.as_bytes());
    put(&mut p, &v, pdone, &0u32.to_le_bytes());
    let mut s = Stats::new();
    let a = [DATA_VA, 2, pdone, u64::from(DOMID_SELF), 0];
    let (out, r, conts) = until_done(&mut v, &mut d, &mut p, &mut s, hc::MMUEXT_OP, a);
    assert_eq!(out, Outcome::Resume);
    assert_eq!(r.rax, 0, "both records succeed");
    assert_eq!(guest::read_obj::<u32>(&v, &p, pdone), Ok(2));
    // The unpin is record 0, done at once; the batch stops before record 1 (pdone 1)
    // and the continuations finish the teardown (65K entries, 16K a call) before it.
    assert!(conts.len() >= 3, "{} continuations", conts.len());
    assert_eq!(conts[0].rdi, DATA_VA + 24, "continued at the pin");
    assert_eq!(conts[0].rsi, 1 | u64::from(MMU_UPDATE_PREEMPTED));
    let (mm, _) = p.mmstate.as_ref().unwrap();
    assert!(!mm.has_deferred_put());
    assert_eq!(mm.page_info(l4).unwrap().type_count, 0);
    let p2 = mm.page_info(l2).unwrap();
    assert_eq!(
        (p2.ty, p2.type_count, p2.pinned),
        (pv_mm::PageType::L1, 1, true)
    );
    mm.check_invariants(&p.mem).unwrap();
}

#[test]
fn update_va_mapping_finishes_a_deferred_teardown_first() {
    let (mut v, mut d, mut p) = setup();
    let (l4, _) = big_tree(&mut p);
    let (mm, _) = p.mmstate.as_mut().unwrap();
    mm.set_preempt_budget(Some(crate::mmu::MM_PREEMPT_ENTRIES));
    let _ = mm.unpin_table(&mut p.mem, l4).unwrap();
    assert!(mm.has_deferred_put(), "the unpin left its teardown");
    let root = v.hw_state().cr3 >> 12;
    let (l1, slot) = crate::mmu::l1_slot_of(&p.mem, root, DATA_VA).unwrap();
    let val = p.r64(l1 * 4096 + slot as u64 * 8);
    let mut s = Stats::new();
    let a = [DATA_VA, val, 0, 0, 0];
    let (out, r, conts) = until_done(&mut v, &mut d, &mut p, &mut s, hc::UPDATE_VA_MAPPING, a);
    assert_eq!(out, Outcome::Resume);
    assert_eq!(r.rax, 0);
    assert!(conts.len() >= 3, "{} continuations", conts.len());
    assert!(conts.iter().all(|c| c.rdi == DATA_VA && c.rsi == val));
    let (mm, _) = p.mmstate.as_ref().unwrap();
    assert!(!mm.has_deferred_put());
    assert_eq!(mm.page_info(l4).unwrap().type_count, 0);
    mm.check_invariants(&p.mem).unwrap();
}

/// Xen's do_mmuext_op: an unpin that is the call's last record and leaves its teardown
/// in old_guest_table does not return to the guest with it: the call ends in a
/// continuation (null list, `MMU_UPDATE_PREEMPTED`, the final result in `foreigndom`)
/// that finishes the teardown, one budget per entry, before the guest runs on.
#[test]
fn the_last_records_deferred_teardown_ends_in_a_continuation() {
    use xen_abi::xen::mmuext::{self, MmuextOp, MMU_UPDATE_PREEMPTED};
    let (mut v, mut d, mut p) = setup();
    let (l4, _) = big_tree(&mut p);
    let pdone = DATA_VA + 0xf00;
    let ops = [MmuextOp {
        cmd: mmuext::UNPIN_TABLE,
        arg1: l4,
        ..Default::default()
    }];
    put(&mut p, &v, DATA_VA, ops.as_bytes());
    put(&mut p, &v, pdone, &0u32.to_le_bytes());
    let mut s = Stats::new();
    let a = [DATA_VA, 1, pdone, u64::from(DOMID_SELF), 0];
    let (out, r, conts) = until_done(&mut v, &mut d, &mut p, &mut s, hc::MMUEXT_OP, a);
    assert_eq!(out, Outcome::Resume);
    assert_eq!(r.rax, 0, "the unpin succeeds");
    assert_eq!(guest::read_obj::<u32>(&v, &p, pdone), Ok(1));
    // 65K entries at 16K a call.
    assert!(conts.len() >= 3, "{} continuations", conts.len());
    for c in &conts {
        assert_eq!((c.rdi, c.rsi), (0, u64::from(MMU_UPDATE_PREEMPTED)));
        assert_eq!(c.r10, 0, "the final result travels in foreigndom");
    }
    let (mm, _) = p.mmstate.as_ref().unwrap();
    assert!(!mm.has_deferred_put());
    assert_eq!(mm.page_info(l4).unwrap().type_count, 0);
    mm.check_invariants(&p.mem).unwrap();
}

/// A trapped PTE write (ptwr) that meets an unfinished old_guest_table: pv-mm continues
/// the teardown first and, while it does not finish within the budget, the write is not
/// done and the instruction is not completed (rip stays: the guest re-executes it and
/// traps again), never bounced to the guest; once the teardown is over, the write is.
#[test]
fn a_trapped_pte_write_waits_for_old_guest_table_without_a_bounce() {
    use xen_abi::xen::vmassist::TYPE_WRITABLE_PAGETABLES;
    let (mut v, mut d, mut p) = setup();
    let (l4, _) = big_tree(&mut p);
    d.vm_assist |= 1 << TYPE_WRITABLE_PAGETABLES;
    // The frame RO_VA maps (read-only) becomes a pinned L1 with an empty slot 0.
    let table = (DATA_GPA + 0x1000) >> 12;
    p.w64(table << 12, 0);
    let (mm, _) = p.mmstate.as_mut().unwrap();
    mm.set_preempt_budget(Some(crate::mmu::MM_PREEMPT_ENTRIES));
    let _ = mm.pin_table(&mut p.mem, table, pv_mm::Level::L1).unwrap();
    // The unpin leaves the tree's teardown in this vCPU's old_guest_table.
    let _ = mm.unpin_table(&mut p.mem, l4).unwrap();
    assert!(mm.has_deferred_put());
    // mov [rdi], rax: a read-only mapping of a RAM frame into slot 0.
    let insn_va = DATA_VA + 0x800;
    put(&mut p, &v, insn_va, &[0x48, 0x89, 0x07]);
    let new = DATA_GPA2 | P;
    let mut r = distinct_regs();
    (r.rip, r.rdi, r.rax, r.cs) = (insn_va, RO_VA, new, 0xe033);
    let mut retries = 0;
    loop {
        let before = r;
        assert!(crate::mmu::ptwr_emulate(
            &mut v, &d, &mut r, RO_VA, 3, &mut p
        ));
        if r.rip != insn_va {
            break;
        }
        assert_eq!(r, before, "nothing done while the teardown goes on");
        assert_eq!(p.r64(table << 12), 0);
        retries += 1;
        assert!(retries < 100, "no progress");
    }
    assert!(retries >= 2, "{retries}");
    assert_eq!(r.rip, insn_va + 3);
    // Written (with the bits Xen's adjust_guest_l1e adds).
    assert_eq!(p.r64(table << 12) & 0x000f_ffff_ffff_f003, new);
    let (mm, _) = p.mmstate.as_ref().unwrap();
    assert!(!mm.has_deferred_put());
    mm.check_invariants(&p.mem).unwrap();
}
