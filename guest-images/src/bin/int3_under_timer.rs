//! `int3_under_timer`: software traps must not be lost to timer upcalls. A fast periodic
//! `VIRQ_TIMER` keeps the hypervisor interrupting the vCPU while guest kernel mode runs
//! `int3` (CC) and `int 3` (CD 03) back to back; every one of them must reach the #BP
//! handler. Regression test for pvkvm losing the #BP when a timer kick landed right after
//! the instruction (KVM held the trap queued, invisibly, and setting the registers for the
//! upcall dropped it).
//!
//! Asserts: #BP count == traps executed; at least one event upcall arrived (else the run
//! proved nothing); not 1000 upcalls in a row without a trap (a livelock: the entry
//! then returns with events masked so the loop can end). Prints the counts. `secs=`
//! (default 2) and `period_us=` (default 200) on the command line change the run.
//!
//! Then the same timer over port reads: under a virtual IOPL of 1 (`PHYSDEVOP_set_iopl`)
//! the kernel runs `in al, 0x80` for `secs` seconds with a pattern in rax; every read
//! must give al = 0xff with the rest of rax as it was, and upcalls must arrive meanwhile.
//! (Where pvkvm lets such reads reach it as plain I/O exits, an event due at one waits
//! for KVM to finish the half-done `in` first: moving rip before that would resume the
//! `in` at the event callback.)
//! Measured under kvm_pvm: a trap round trip takes 150-300 us (two VM exits); 50 us
//! periods kept the guest in upcalls for good; at 500 us most deadlines pass at the
//! traps' own exits, few need a kick, and without the fix some runs lost none; at
//! 200 us each of 19 runs without the fix lost 1 to 42 traps.
//!
//! Facts used:
//! * `public/callback.h`: `CALLBACKOP_register` (0) with `struct callback_register
//!   { u16 type, flags; xen_callback_t address; }`, `CALLBACKTYPE_event` (0).
//! * Xen `create_bounce_frame` (`arch/x86/x86_64/entry.S`) with `TBF_INTERRUPT`: the event
//!   callback gets `rcx, r11, rip, cs, rflags, rsp, ss` on the kernel stack (no error code)
//!   and `evtchn_upcall_mask` set to 1; `HYPERVISOR_iret` sets the mask to `!rflags.IF`.
//! * `public/xen.h`: `vcpu_info` at shared_info + 0: `evtchn_upcall_pending` (byte 0),
//!   `evtchn_upcall_mask` (byte 1), `evtchn_pending_sel` (offset 8); `shared_info.
//!   evtchn_pending` at 2048, `evtchn_mask` at 2560 (32 vcpu_info of 64 bytes, then two
//!   bitmaps of 64 words each).
//! * `public/event_channel.h`: `EVTCHNOP_bind_virq` (1), `struct evtchn_bind_virq { u32
//!   virq, vcpu; evtchn_port_t port; }`; `public/xen.h`: `VIRQ_TIMER` 0.
//! * `public/vcpu.h`: `VCPUOP_set_periodic_timer` (6) with `{ u64 period_ns; }`,
//!   `VCPUOP_stop_periodic_timer` (7).
#![no_std]
#![no_main]

use core::arch::{asm, global_asm};
use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use pv_test_kernels::evtchn::Events;
use pv_test_kernels::hypercall::{callback_register, hypercall2, hypercall3};
use pv_test_kernels::traps::{install_trap_table, last_trap, PVT_TRAP};
use pv_test_kernels::xen_abi::callback::CALLBACKTYPE_EVENT;
use pv_test_kernels::xen_abi::xen::{hypercall as hc, shared_info, vcpu_info};
use pv_test_kernels::{check_rc, cmdline_arg, fail, mm, println, test_kernel, StartInfo};

test_kernel!(main);

const SHINFO_SLOT: u64 = 40;
const EVTCHNOP_BIND_VIRQ: u64 = 1;
const VIRQ_TIMER: u32 = 0;
const VCPUOP_SET_PERIODIC_TIMER: u64 = 6;
const VCPUOP_STOP_PERIODIC_TIMER: u64 = 7;

/// Event upcalls taken (written by the entry below).
#[no_mangle]
static mut INT3T_UPCALLS: u64 = 0;
/// VA of shared_info (vcpu_info[0] is at its start), for the entry.
#[no_mangle]
static mut INT3T_SHINFO: u64 = 0;
/// The timer VIRQ's port, for the entry.
#[no_mangle]
static mut INT3T_PORT: u64 = 0;
/// The #BP count the entry saw last.
#[no_mangle]
static mut INT3T_LAST_BP: u64 = 0;
/// For how many upcalls in a row that count stayed the same.
#[no_mangle]
static mut INT3T_STREAK: u64 = 0;
/// Upcalls in a row without a trap between that count as a livelock.
const STREAK_LIMIT: u64 = 1000;

// The event callback: rsp -> rcx, r11, rip, cs, rflags, rsp, ss. It acknowledges the
// timer (upcall_pending, pending_sel, the port's pending bit, in Linux's order, so a
// timer that fires meanwhile raises a new upcall) and returns through the runtime's
// `pvt_iret_frame` with rax, rcx, r11 as interrupted. The loop does not rely on rdx or
// flags, but they are kept anyway: the upcall may land between any two instructions.
global_asm!(
    r#"
    .section .text.int3t, "ax", @progbits
    .p2align 4
    /* Not int3 padding right before the entry: pvkvm looks at the bytes before rip. */
    nop
    .global int3t_event_entry
int3t_event_entry:
    pop rcx
    pop r11
    push rax
    push rdx
    add qword ptr [rip + INT3T_UPCALLS], 1
    /* Livelock guard: {streak} upcalls in a row with no #BP between means the upcalls
       take all the time; return with IF clear (events stay masked) so the loop ends. */
    mov rax, [rip + PVT_TRAP + 56]
    cmp rax, [rip + INT3T_LAST_BP]
    mov [rip + INT3T_LAST_BP], rax
    je 1f
    mov qword ptr [rip + INT3T_STREAK], 0
1:
    add qword ptr [rip + INT3T_STREAK], 1
    cmp qword ptr [rip + INT3T_STREAK], {streak}
    jb 2f
    and qword ptr [rsp + 32], ~0x200
2:
    mov rax, [rip + INT3T_SHINFO]
    mov byte ptr [rax + {pending}], 0
    xor edx, edx
    xchg [rax + {sel}], rdx
    mov rdx, [rip + INT3T_PORT]
    lock btr qword ptr [rax + {evtchn_pending}], rdx
    pop rdx
    pop rax
    jmp pvt_iret_frame
    .text
"#,
    pending = const vcpu_info::UPCALL_PENDING,
    sel = const vcpu_info::PENDING_SEL,
    evtchn_pending = const shared_info::EVTCHN_PENDING,
    streak = const STREAK_LIMIT,
);

extern "C" {
    fn int3t_event_entry();
}

fn arg(si: &StartInfo, key: &str, default: u64) -> u64 {
    match cmdline_arg(si, key).map(str::parse) {
        None => default,
        Some(Ok(n)) => n,
        Some(Err(_)) => fail!("{}= is not a number", key),
    }
}

fn upcalls() -> u64 {
    // SAFETY: a u64 the event entry increments; a volatile read sees its last write.
    unsafe { read_volatile(addr_of!(INT3T_UPCALLS)) }
}

/// Arms the runtime's #BP record (its handler takes only an armed trap) and runs
/// `insn`, which must raise exactly one #BP and resume after itself.
macro_rules! one_bp {
    ($insn:literal) => {
        // SAFETY: single vCPU; the handler clears `armed` and counts the trap.
        unsafe { write_volatile(addr_of_mut!(PVT_TRAP.armed), 1) };
        // SAFETY: the installed #BP handler (DPL 3) returns right after the instruction
        // with every register intact.
        unsafe { asm!($insn) };
    };
}

fn main(si: &'static StartInfo) {
    install_trap_table();
    let secs = arg(si, "secs", 2);
    let period_ns = arg(si, "period_us", 200) * 1000;

    let events = Events::new(si, SHINFO_SLOT);
    let shinfo = mm::slack_va(si, SHINFO_SLOT);
    // SAFETY: single vCPU, events still masked: the entry cannot run yet.
    unsafe { write_volatile(addr_of_mut!(INT3T_SHINFO), shinfo) };
    // SAFETY: the entry acknowledges events and returns with HYPERVISOR_iret.
    let rc = unsafe {
        callback_register(
            CALLBACKTYPE_EVENT,
            0,
            int3t_event_entry as *const () as usize as u64,
        )
    };
    check_rc!("callback_op(register, CALLBACKTYPE_event)", rc, 0);

    // virq, vcpu, port (OUT).
    let mut bind: [u32; 3] = [VIRQ_TIMER, 0, u32::MAX];
    // SAFETY: `bind` is a live `struct evtchn_bind_virq`.
    let rc = unsafe {
        hypercall2(
            hc::EVENT_CHANNEL_OP,
            EVTCHNOP_BIND_VIRQ,
            bind.as_mut_ptr() as u64,
        )
    };
    check_rc!("EVTCHNOP_bind_virq(VIRQ_TIMER, vcpu 0)", rc, 0);
    let port = bind[2];
    // SAFETY: as above, the entry cannot run yet.
    unsafe { write_volatile(addr_of_mut!(INT3T_PORT), u64::from(port)) };
    // Unmask the port (nothing can be pending on it yet, so no EVTCHNOP_unmask needed).
    let mask_word = shinfo + shared_info::EVTCHN_MASK + u64::from(port / 64) * 8;
    mm::wr(mask_word, mm::rd(mask_word) & !(1 << (port % 64)));

    let set_periodic = |mut period: u64| {
        // SAFETY: `period` is a live `struct vcpu_set_periodic_timer`.
        unsafe {
            hypercall3(
                hc::VCPU_OP,
                VCPUOP_SET_PERIODIC_TIMER,
                0,
                &mut period as *mut u64 as u64,
            )
        }
    };
    // pvkvm takes any period; Xen's common/domain.c may refuse one under 1 ms (-EINVAL),
    // then 1 ms it is, so the kernel still runs there.
    let period_ns = if set_periodic(period_ns) == 0 {
        period_ns
    } else {
        check_rc!(
            "VCPUOP_set_periodic_timer(1 ms)",
            set_periodic(1_000_000),
            0
        );
        1_000_000
    };

    let bp_before = last_trap().count;
    let start = events.now_ns();
    let end = start + secs * 1_000_000_000;
    // The upcall mask is a byte the guest owns; clearing it lets events in (a pending one
    // arrives at the vCPU's next exit).
    // SAFETY: byte 1 of the mapped shared_info is vcpu_info[0].evtchn_upcall_mask.
    unsafe { write_volatile((shinfo + vcpu_info::UPCALL_MASK) as *mut u8, 0) };
    let mut executed = 0u64;
    loop {
        for _ in 0..256 {
            one_bp!("int3");
            one_bp!(".byte 0xcd, 0x03");
        }
        executed += 512;
        if events.now_ns() >= end {
            break;
        }
    }
    // SAFETY: as above; masks events again.
    unsafe { write_volatile((shinfo + vcpu_info::UPCALL_MASK) as *mut u8, 1) };
    let elapsed_ms = (events.now_ns() - start) / 1_000_000;
    let ups_after_traps = upcalls();
    // SAFETY: events are masked: the entry does not run now.
    if unsafe { read_volatile(addr_of!(INT3T_STREAK)) } >= STREAK_LIMIT {
        fail!(
            "{} upcalls in a row with no trap between (of {}, {} traps): a {} us period is too short for this host",
            STREAK_LIMIT,
            ups_after_traps,
            last_trap().count - bp_before,
            period_ns / 1000
        );
    }

    // The port-read phase, under the same timer.
    check_rc!(
        "PHYSDEVOP_set_iopl(1)",
        pv_test_kernels::hypercall::set_iopl(1),
        0
    );
    let end = events.now_ns() + secs * 1_000_000_000;
    // SAFETY: as above; lets events in again.
    unsafe { write_volatile((shinfo + vcpu_info::UPCALL_MASK) as *mut u8, 0) };
    let mut reads = 0u64;
    loop {
        for i in 0..256u64 {
            let pattern = 0x5a5a_0000_1234_0000 | (i << 8);
            let mut rax = pattern;
            // SAFETY: under IOPL 1 the read only loads all ones into al (no ports).
            unsafe { asm!("in al, 0x80", inout("rax") rax, options(nostack)) };
            if rax != pattern | 0xff {
                fail!(
                    "in al, 0x80 left rax {:#x}, expected {:#x} (read {})",
                    rax,
                    pattern | 0xff,
                    reads + i
                );
            }
        }
        reads += 256;
        // Progress: the entry's livelock guard counts upcalls without a #BP, and this
        // phase raises none.
        // SAFETY: a u64 the entry also writes; single vCPU, one store.
        unsafe { write_volatile(addr_of_mut!(INT3T_STREAK), 0) };
        if events.now_ns() >= end {
            break;
        }
    }
    // SAFETY: as above; masks events again.
    unsafe { write_volatile((shinfo + vcpu_info::UPCALL_MASK) as *mut u8, 1) };
    let port_ups = upcalls() - ups_after_traps;
    println!(
        "int3_under_timer: {} port reads, {} upcalls during them",
        reads, port_ups
    );
    if port_ups == 0 {
        fail!("no event upcall arrived during the port reads: the run proved nothing");
    }
    // SAFETY: stop_periodic_timer takes no argument record.
    let rc = unsafe { hypercall3(hc::VCPU_OP, VCPUOP_STOP_PERIODIC_TIMER, 0, 0) };
    check_rc!("VCPUOP_stop_periodic_timer", rc, 0);

    let bps = last_trap().count - bp_before;
    let ups = ups_after_traps;
    println!(
        "int3_under_timer: {} ms, period {} us, port {}: {} software traps executed, {} #BP taken, {} upcalls",
        elapsed_ms,
        period_ns / 1000,
        port,
        executed,
        bps,
        ups
    );
    if bps != executed {
        fail!(
            "{} #BP taken for {} int3/int 3 executed ({} lost) under {} upcalls",
            bps,
            executed,
            executed.saturating_sub(bps),
            ups
        );
    }
    if ups == 0 {
        fail!(
            "no event upcall arrived in {} ms: the run proved nothing",
            elapsed_ms
        );
    }
}
