//! `smp_bringup`: bringing up a second vCPU the way a PV kernel does (domain of 2 vCPUs:
//! `--vcpus 2`).
//!
//! Asserts, on vCPU 0:
//! - `VCPUOP_is_up`: 1 for vCPU 0, 0 for vCPU 1, -ENOENT for vCPU 2.
//! - `VCPUOP_up` of vCPU 1 before it has a context: -EINVAL.
//! - `VCPUOP_initialise` refusals: vCPU 2 and 2^32-1 -ENOENT; a NULL or unmapped context
//!   -EFAULT; a non-canonical event callback, 7169 GDT entries, a misaligned LDT base,
//!   DR7 with high bits set, user mode without a user pagetable: -EINVAL; cr3 naming a data
//!   frame this kernel maps writable (it cannot become a pagetable): -EINVAL. vCPU 1 is
//!   still down and `VCPUOP_up` still -EINVAL afterwards.
//! - A good context (entry in this kernel with the vCPU id in rdi, its own stack, cr3 =
//!   the L4 vCPU 0 runs on, the same trap table, event callback): 0; again: -EEXIST; and
//!   vCPU 0's own initialise: -EEXIST. vCPU 1 stays down (no `VGCF_online`).
//! - `VCPUOP_up(1)`: 0. vCPU 1 then (events masked throughout, nothing printed):
//!   records its id, binds an IPI port for itself (`EVTCHNOP_bind_ipi`), sends on it and
//!   checks its own pending bit and `vcpu_info[1].evtchn_pending_sel`, sends on the IPI
//!   port vCPU 0 bound and left in memory, raises flag 1, and calls `VCPUOP_down` on
//!   itself. vCPU 0 sees flag 1, the pending bit of its port, the port's word in
//!   `vcpu_info[0].evtchn_pending_sel` and upcall_pending; then `VCPUOP_is_up(1)` turns 0.
//! - `VCPUOP_up(1)` again: 0, and vCPU 1's `VCPUOP_down` returns 0 (it raises flag 2);
//!   it parks with another `VCPUOP_down`, and `is_up(1)` turns 0 again.
//!
//! Every wait is bounded (pvclock deadline and a round cap) and fails with what it waited
//! for.
#![no_std]
#![no_main]

use core::sync::atomic::{AtomicI64, AtomicU64, Ordering::SeqCst};

use pv_test_kernels::evtchn::{self, Events};
use pv_test_kernels::smp::{self, Shared};
use pv_test_kernels::start::Stack;
use pv_test_kernels::traps::install_trap_table;
use pv_test_kernels::xen_abi::errno::{EEXIST, EFAULT, EINVAL, ENOENT};
use pv_test_kernels::xen_abi::vcpu::{xen_pfn_to_cr3, VcpuGuestContext};
use pv_test_kernels::{check_eq, check_rc, fail, mm, println, test_kernel, StartInfo};

test_kernel!(main);

const SHINFO_SLOT: u64 = 30;
const DATA_SLOT: u64 = 31;
/// How long vCPU 0 waits for each step of vCPU 1.
const WAIT_MS: u64 = 5_000;

const V1_STACK_SIZE: usize = 16 * 1024;
static mut V1_STACK: Stack<V1_STACK_SIZE> = Stack([0; V1_STACK_SIZE]);

/// VA of the shared_info mapping (vCPU 0 sets it before vCPU 1 runs).
static SHINFO_VA: AtomicU64 = AtomicU64::new(0);
/// vCPU 0's IPI port (vCPU 0 sets it before vCPU 1 runs).
static PORT_V0: AtomicU64 = AtomicU64::new(0);
/// What vCPU 1 found in rdi.
static V1_ID: AtomicU64 = AtomicU64::new(u64::MAX);
/// vCPU 1's own IPI port.
static V1_PORT: AtomicU64 = AtomicU64::new(u64::MAX);
/// vCPU 1's progress: 1 = flag 1 (IPI sent, about to go down), 2 = flag 2 (its
/// `VCPUOP_down` returned).
static V1_STAGE: AtomicU64 = AtomicU64::new(0);
/// What vCPU 1's first `VCPUOP_down` returned.
static V1_DOWN_RC: AtomicI64 = AtomicI64::new(i64::MIN);
/// The first step vCPU 1 found wrong (0: none) and the value it got there.
static V1_FAIL_STEP: AtomicU64 = AtomicU64::new(0);
static V1_FAIL_VALUE: AtomicI64 = AtomicI64::new(0);

const STEP_BIND: u64 = 1;
const STEP_SELF_SEND: u64 = 2;
const STEP_SELF_PENDING: u64 = 3;
const STEP_SELF_SEL: u64 = 4;
const STEP_SEND_V0: u64 = 5;

fn step_name(step: u64) -> &'static str {
    match step {
        STEP_BIND => "EVTCHNOP_bind_ipi(1) returned",
        STEP_SELF_SEND => "EVTCHNOP_send on its own IPI port returned",
        STEP_SELF_PENDING => "its own IPI port not pending after the send; port",
        STEP_SELF_SEL => "vcpu_info[1].evtchn_pending_sel after its own IPI",
        STEP_SEND_V0 => "EVTCHNOP_send on vCPU 0's IPI port returned",
        _ => "unknown step",
    }
}

/// vCPU 1 stops at a failed step: records it and parks (vCPU 0 reports it).
fn v1_fail(step: u64, value: i64, id: u64) -> ! {
    V1_FAIL_VALUE.store(value, SeqCst);
    V1_FAIL_STEP.store(step, SeqCst);
    park(id)
}

fn park(id: u64) -> ! {
    loop {
        smp::down(id);
        core::hint::spin_loop();
    }
}

/// vCPU 1's entry (rip of its context, id in rdi). Prints nothing and cannot panic: vCPU 0
/// reports for it.
extern "C" fn secondary(id: u64) -> ! {
    V1_ID.store(id, SeqCst);
    let sh = Shared {
        va: SHINFO_VA.load(SeqCst),
    };
    let me = id as u32;
    let port = match smp::bind_ipi(me) {
        Ok(p) => p,
        Err(rc) => v1_fail(STEP_BIND, rc, id),
    };
    V1_PORT.store(u64::from(port), SeqCst);
    sh.clear_pending(port);
    sh.clear_sel(me, port);
    sh.unmask(port);
    let rc = evtchn::send(port);
    if rc != 0 {
        v1_fail(STEP_SELF_SEND, rc, id);
    }
    if !sh.pending(port) {
        v1_fail(STEP_SELF_PENDING, i64::from(port), id);
    }
    let sel = sh.pending_sel(me);
    if sel & (1 << (port / 64)) == 0 {
        v1_fail(STEP_SELF_SEL, sel as i64, id);
    }
    sh.clear_pending(port);
    sh.clear_sel(me, port);

    let rc = evtchn::send(PORT_V0.load(SeqCst) as u32);
    if rc != 0 {
        v1_fail(STEP_SEND_V0, rc, id);
    }
    V1_STAGE.store(1, SeqCst);
    let rc = smp::down(id);
    V1_DOWN_RC.store(rc, SeqCst);
    V1_STAGE.store(2, SeqCst);
    park(id)
}

/// Fails with vCPU 1's recorded failure, if any.
fn check_v1() {
    let step = V1_FAIL_STEP.load(SeqCst);
    if step != 0 {
        fail!(
            "vCPU 1: {} {:#x}",
            step_name(step),
            V1_FAIL_VALUE.load(SeqCst)
        );
    }
}

fn is_up_checks() {
    check_rc!("is_up(0)", smp::is_up(0), 1);
    check_rc!("is_up(1) before initialise", smp::is_up(1), 0);
    check_rc!("is_up(2) in a domain of 2 vCPUs", smp::is_up(2), -ENOENT);
    check_rc!("up(1) before initialise", smp::up(1), -EINVAL);
    println!("is_up: 1, 0, -ENOENT; up(1) before initialise: -EINVAL");
}

fn refused_contexts(si: &StartInfo, good: &VcpuGuestContext) {
    check_rc!("initialise(2)", smp::initialise(2, good), -ENOENT);
    check_rc!(
        "initialise(2^32-1)",
        smp::initialise(u64::from(u32::MAX), good),
        -ENOENT
    );
    // SAFETY: the pointers are refused before anything is read from them.
    let rc = unsafe { smp::vcpu_op(smp::VCPUOP_INITIALISE, 1, 0) };
    check_rc!("initialise(1, NULL)", rc, -EFAULT);
    // SAFETY: as above (nothing is mapped in the lower half).
    let rc = unsafe { smp::vcpu_op(smp::VCPUOP_INITIALISE, 1, 0x1000_0000) };
    check_rc!("initialise(1, unmapped context)", rc, -EFAULT);

    type Bad = fn(&mut VcpuGuestContext, &StartInfo);
    let bad: [(&str, Bad); 6] = [
        ("non-canonical event callback", |c, _| {
            c.event_callback_eip = 0x0000_8000_0000_0000
        }),
        ("7169 GDT entries", |c, _| c.gdt_ents = 14 * 512 + 1),
        ("LDT base not page aligned", |c, _| {
            c.ldt_base = 0x1008;
            c.ldt_ents = 1
        }),
        ("DR7 with bits 32-63 set", |c, _| c.debugreg[7] = 1 << 32),
        ("user mode without a user pagetable", |c, _| c.flags = 0),
        ("cr3 naming a writable data frame", |c, si| {
            c.ctrlreg[3] = xen_pfn_to_cr3(mm::slack_mfn(si, DATA_SLOT))
        }),
    ];
    for (what, set) in bad {
        let mut c = *good;
        set(&mut c, si);
        let rc = smp::initialise(1, &c);
        if rc != -EINVAL {
            fail!(
                "initialise(1) with {}: returned {}, expected -EINVAL",
                what,
                rc
            );
        }
    }
    check_rc!("is_up(1) after refused contexts", smp::is_up(1), 0);
    check_rc!("up(1) after refused contexts", smp::up(1), -EINVAL);
    println!(
        "initialise refusals: -ENOENT (vCPU 2, 2^32-1), -EFAULT (NULL, unmapped), -EINVAL ({} bad contexts incl. a data frame as cr3)",
        bad.len()
    );
}

fn main(si: &'static StartInfo) {
    mm::print_layout(si);
    mm::check_slack(si);
    install_trap_table();
    let ev = Events::new(si, SHINFO_SLOT);
    let sh = Shared {
        va: mm::slack_va(si, SHINFO_SLOT),
    };
    check_eq!("vCPU 0 upcall mask at boot", sh.upcall_mask(0), 1u8);

    is_up_checks();

    // A data frame, mapped writable, holding data (what the bad cr3 names).
    mm::fill(mm::slack_va(si, DATA_SLOT), 0);
    let stack_top = (&raw const V1_STACK) as u64 + V1_STACK_SIZE as u64;
    let good = smp::secondary_context(si, secondary as *const () as usize as u64, 1, stack_top);
    refused_contexts(si, &good);

    // vCPU 1 starts with its upcalls masked (as Linux sets before initialise), vCPU 0
    // binds an IPI port for itself, unmasked and clear, and leaves it for vCPU 1.
    sh.set_upcall_mask(1, true);
    let port0 = match smp::bind_ipi(0) {
        Ok(p) => p,
        Err(rc) => fail!("EVTCHNOP_bind_ipi(0) returned {}", rc),
    };
    sh.clear_pending(port0);
    sh.clear_sel(0, port0);
    sh.unmask(port0);
    SHINFO_VA.store(sh.va, SeqCst);
    PORT_V0.store(u64::from(port0), SeqCst);

    check_rc!("initialise(1, good context)", smp::initialise(1, &good), 0);
    check_rc!(
        "initialise(1) a second time",
        smp::initialise(1, &good),
        -EEXIST
    );
    check_rc!("initialise(0)", smp::initialise(0, &good), -EEXIST);
    check_rc!("is_up(1) after initialise (not online)", smp::is_up(1), 0);
    println!("initialise(1): 0, then -EEXIST; initialise(0): -EEXIST; vCPU 1 still down");

    check_rc!("up(1)", smp::up(1), 0);
    wait_stage(&ev, "vCPU 1 to send its IPI (flag 1)", 1);
    check_eq!("vCPU id vCPU 1 found in rdi", V1_ID.load(SeqCst), 1u64);
    let port1 = V1_PORT.load(SeqCst) as u32;
    if port1 == port0 {
        fail!("bind_ipi gave vCPU 1 the port vCPU 0 holds ({})", port0);
    }
    smp::wait_for(&ev, "the IPI from vCPU 1 to be pending", WAIT_MS, || {
        sh.pending(port0)
    });
    let sel = sh.pending_sel(0);
    if sel & (1 << (port0 / 64)) == 0 {
        fail!(
            "vcpu_info[0].evtchn_pending_sel {:#x} lacks the word of port {} after the IPI",
            sel,
            port0
        );
    }
    check_eq!(
        "vcpu_info[0].evtchn_upcall_pending",
        sh.upcall_pending(0),
        1u8
    );
    sh.clear_pending(port0);
    println!(
        "vCPU 1 up: id 1 in rdi, own IPI port {}, IPI to vCPU 0 on port {} pending (sel {:#x})",
        port1, port0, sel
    );

    smp::wait_for(
        &ev,
        "is_up(1) to be 0 after its VCPUOP_down",
        WAIT_MS,
        || smp::is_up(1) == 0,
    );
    check_v1();
    check_eq!("vCPU 1 stage while down", V1_STAGE.load(SeqCst), 1u64);

    check_rc!("up(1) after its down", smp::up(1), 0);
    wait_stage(&ev, "vCPU 1's VCPUOP_down to return (flag 2)", 2);
    check_rc!("vCPU 1's VCPUOP_down", V1_DOWN_RC.load(SeqCst), 0);
    smp::wait_for(&ev, "is_up(1) to be 0 after it parked", WAIT_MS, || {
        smp::is_up(1) == 0
    });
    check_v1();
    println!("vCPU 1: down -> is_up 0; up again -> its VCPUOP_down returned 0; parked down");
}

/// Waits for vCPU 1 to reach `stage`, failing at once on a failure it recorded.
fn wait_stage(ev: &Events, what: &str, stage: u64) {
    smp::wait_for(ev, what, WAIT_MS, || {
        V1_FAIL_STEP.load(SeqCst) != 0 || V1_STAGE.load(SeqCst) >= stage
    });
    check_v1();
}
