//! Secondary vCPUs: `VCPUOP_initialise` / `up` / `down` / `is_up`, the context a test
//! kernel gives a second vCPU, IPI event channels (`EVTCHNOP_bind_ipi`), per-vCPU event
//! state in `shared_info`, and a bounded spin for waiting on another vCPU.
//!
//! Facts used (Xen `public/vcpu.h`, `public/event_channel.h`, `public/xen.h`,
//! `public/arch-x86/xen.h`):
//! * `HYPERVISOR_vcpu_op(cmd, vcpuid, arg)`: `VCPUOP_initialise` = 0 (arg: a
//!   `struct vcpu_guest_context`), `VCPUOP_up` = 1, `VCPUOP_down` = 2, `VCPUOP_is_up` = 3
//!   (no argument).
//! * `EVTCHNOP_bind_ipi` = 7 with `struct evtchn_bind_ipi { uint32_t vcpu; evtchn_port_t
//!   port; }` (port is OUT); events sent on the port are for vCPU `vcpu`, whoever sends.
//! * `vcpu_info[n]` (64 bytes at `shared_info + 64 * n` for n < 32): `evtchn_upcall_pending`
//!   u8 at 0, `evtchn_upcall_mask` u8 at 1, `evtchn_pending_sel` u64 at 8. A port that
//!   becomes pending and is not masked (`shared_info.evtchn_mask`, offset 2560) sets bit
//!   `port / 64` of its vCPU's `evtchn_pending_sel` and that vCPU's upcall_pending, even
//!   while the vCPU's upcall mask keeps the upcall from being delivered.

use core::arch::global_asm;
use core::sync::atomic::{fence, Ordering};

use xen_abi::vcpu::{xen_pfn_to_cr3, VcpuGuestContext, VGCF_IN_KERNEL};
use xen_abi::xen::hypercall as hc;
use xen_abi::xen::{selector, shared_info, vcpu_info, StartInfo, TrapInfo};

use crate::evtchn::Events;
use crate::hypercall::{hypercall2, hypercall3};
use crate::{mm, traps};

/// `VCPUOP_initialise`.
pub const VCPUOP_INITIALISE: u64 = 0;
/// `VCPUOP_up`.
pub const VCPUOP_UP: u64 = 1;
/// `VCPUOP_down`.
pub const VCPUOP_DOWN: u64 = 2;
/// `VCPUOP_is_up`.
pub const VCPUOP_IS_UP: u64 = 3;
/// `EVTCHNOP_bind_ipi`.
pub const EVTCHNOP_BIND_IPI: u64 = 7;

/// `vcpu_op(cmd, vcpu, arg)` with a raw argument pointer.
///
/// # Safety
/// For `VCPUOP_initialise`, `arg` is read as a whole context: the caller vouches for what
/// a successful call makes the other vCPU run (a bad pointer only gets -EFAULT).
pub unsafe fn vcpu_op(cmd: u64, vcpu: u64, arg: u64) -> i64 {
    // SAFETY: forwarded contract.
    unsafe { hypercall3(hc::VCPU_OP, cmd, vcpu, arg) }
}

/// `VCPUOP_is_up`.
pub fn is_up(vcpu: u64) -> i64 {
    // SAFETY: is_up reads no argument and changes nothing.
    unsafe { vcpu_op(VCPUOP_IS_UP, vcpu, 0) }
}

/// `VCPUOP_up`.
pub fn up(vcpu: u64) -> i64 {
    // SAFETY: up takes no argument; it runs a vCPU whose context this kernel installed.
    unsafe { vcpu_op(VCPUOP_UP, vcpu, 0) }
}

/// `VCPUOP_down` (of the calling vCPU, in these kernels: it returns once another vCPU
/// brings this one up again).
pub fn down(vcpu: u64) -> i64 {
    // SAFETY: down takes no argument.
    unsafe { vcpu_op(VCPUOP_DOWN, vcpu, 0) }
}

/// `VCPUOP_initialise` of `vcpu` with `ctx`.
pub fn initialise(vcpu: u64, ctx: &VcpuGuestContext) -> i64 {
    // SAFETY: `ctx` is a live context; what it makes the vCPU run is the caller's choice.
    unsafe {
        vcpu_op(
            VCPUOP_INITIALISE,
            vcpu,
            ctx as *const VcpuGuestContext as u64,
        )
    }
}

/// `struct evtchn_bind_ipi`.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug)]
pub struct BindIpi {
    /// The vCPU events on the port are for.
    pub vcpu: u32,
    /// OUT: the new port.
    pub port: u32,
}

/// `EVTCHNOP_bind_ipi` for `vcpu`: the port or the error.
pub fn bind_ipi(vcpu: u32) -> Result<u32, i64> {
    let mut b = BindIpi { vcpu, port: 0 };
    // SAFETY: `b` is a live `struct evtchn_bind_ipi` the hypervisor reads and writes.
    let rc = unsafe {
        hypercall2(
            hc::EVENT_CHANNEL_OP,
            EVTCHNOP_BIND_IPI,
            &mut b as *mut BindIpi as u64,
        )
    };
    if rc == 0 {
        Ok(b.port)
    } else {
        Err(rc)
    }
}

/// Event state in a `shared_info` mapped at a known VA, usable from any vCPU (all bit
/// updates are atomic: the hypervisor and the other vCPU update the same words).
#[derive(Clone, Copy, Debug)]
pub struct Shared {
    /// VA of the `shared_info` mapping.
    pub va: u64,
}

fn bit_op(word: u64, bit: u64, set: bool) {
    // SAFETY: `word` is inside the writable shared_info mapping; `lock bts/btr` changes
    // one bit atomically.
    unsafe {
        if set {
            core::arch::asm!("lock bts qword ptr [{w}], {b}", w = in(reg) word, b = in(reg) bit, options(nostack));
        } else {
            core::arch::asm!("lock btr qword ptr [{w}], {b}", w = in(reg) word, b = in(reg) bit, options(nostack));
        }
    }
}

impl Shared {
    fn vcpu_info(&self, vcpu: u32) -> u64 {
        self.va + u64::from(vcpu) * vcpu_info::SIZE
    }

    fn port_word(&self, base: u64, port: u32) -> u64 {
        self.va + base + u64::from(port / 64) * 8
    }

    /// Whether `port` is pending.
    pub fn pending(&self, port: u32) -> bool {
        mm::rd(self.port_word(shared_info::EVTCHN_PENDING, port)) & (1 << (port % 64)) != 0
    }

    /// Clears `port`'s pending bit.
    pub fn clear_pending(&self, port: u32) {
        bit_op(
            self.port_word(shared_info::EVTCHN_PENDING, port),
            u64::from(port % 64),
            false,
        );
    }

    /// Clears `port`'s mask bit (nothing may be pending on it: a pending port unmasked
    /// this way is not re-raised).
    pub fn unmask(&self, port: u32) {
        bit_op(
            self.port_word(shared_info::EVTCHN_MASK, port),
            u64::from(port % 64),
            false,
        );
    }

    /// `vcpu_info[vcpu].evtchn_pending_sel`.
    pub fn pending_sel(&self, vcpu: u32) -> u64 {
        mm::rd(self.vcpu_info(vcpu) + vcpu_info::PENDING_SEL)
    }

    /// Clears the bit of `port`'s word in `vcpu_info[vcpu].evtchn_pending_sel`.
    pub fn clear_sel(&self, vcpu: u32, port: u32) {
        bit_op(
            self.vcpu_info(vcpu) + vcpu_info::PENDING_SEL,
            u64::from(port / 64),
            false,
        );
    }

    /// `vcpu_info[vcpu].evtchn_upcall_pending`.
    pub fn upcall_pending(&self, vcpu: u32) -> u8 {
        mm::rd8(self.vcpu_info(vcpu) + vcpu_info::UPCALL_PENDING)
    }

    /// `vcpu_info[vcpu].evtchn_upcall_mask`.
    pub fn upcall_mask(&self, vcpu: u32) -> u8 {
        mm::rd8(self.vcpu_info(vcpu) + vcpu_info::UPCALL_MASK)
    }

    /// Sets `vcpu_info[vcpu].evtchn_upcall_mask`.
    pub fn set_upcall_mask(&self, vcpu: u32, masked: bool) {
        // SAFETY: the byte is inside the writable shared_info mapping.
        unsafe {
            core::ptr::write_volatile(
                (self.vcpu_info(vcpu) + vcpu_info::UPCALL_MASK) as *mut u8,
                u8::from(masked),
            )
        };
        fence(Ordering::SeqCst);
    }
}

/// Spins until `cond` holds, at most `ms` milliseconds of Xen system time and at most a
/// number of rounds that does not depend on the clock (so a clock that does not move
/// cannot hang the kernel); yields to the hypervisor now and then. Fails the test with
/// `what` on timeout.
pub fn wait_for(ev: &Events, what: &str, ms: u64, mut cond: impl FnMut() -> bool) {
    let deadline = ev.deadline_ms(ms);
    // ~ms * 1000 rounds of a few hundred cycles each, plus the yields: far more than `ms`
    // on any CPU, never unbounded.
    let max_rounds = ms * 100_000 + 1_000_000;
    for round in 0..max_rounds {
        if cond() {
            return;
        }
        core::hint::spin_loop();
        if round % 4096 == 4095 {
            if ev.now_ns() > deadline {
                break;
            }
            // SAFETY: SCHEDOP_yield has no argument and no effect on guest state.
            unsafe { hypercall2(hc::SCHED_OP, xen_abi::sched::SCHEDOP_YIELD, 0) };
        }
    }
    if cond() {
        return;
    }
    crate::fail!("timed out after {} ms waiting for {}", ms, what);
}

/// The context for a secondary vCPU of a test kernel, as Linux builds one: guest kernel
/// mode on the flat selectors Xen provides (no GDT of its own), the runtime's trap table
/// (by vector), `rip` = `entry` called as `extern "C" fn(rdi)` with a 16-byte-aligned
/// stack below `stack_top` (`rsp` = `stack_top - 8`, as after a `call`), `kernel_sp` =
/// `stack_top`, event and failsafe callbacks that report an unexpected upcall, and cr3 =
/// the builder's L4 (the one vCPU 0 runs on). Not online: `VCPUOP_up` starts it.
pub fn secondary_context(si: &StartInfo, entry: u64, rdi: u64, stack_top: u64) -> VcpuGuestContext {
    let mut c = VcpuGuestContext::zeroed();
    c.flags = VGCF_IN_KERNEL;
    c.user_regs.rip = entry;
    c.user_regs.rsp = stack_top - 8;
    c.user_regs.rdi = rdi;
    c.user_regs.rflags = 0x2;
    c.user_regs.cs = selector::FLAT_KERNEL_CS;
    c.user_regs.ss = selector::FLAT_KERNEL_SS;
    for &v in traps::HANDLED_VECTORS {
        c.trap_ctxt[usize::from(v)] = TrapInfo {
            vector: v,
            flags: if v == 3 || v == 4 { 3 } else { 0 },
            cs: selector::FLAT_KERNEL_CS,
            _pad: 0,
            address: traps::handler_address(v).unwrap_or(0),
        };
    }
    c.kernel_ss = u64::from(selector::FLAT_KERNEL_SS);
    c.kernel_sp = stack_top;
    c.event_callback_eip = unexpected_callback_address();
    c.failsafe_callback_eip = unexpected_callback_address();
    c.ctrlreg[3] = xen_pfn_to_cr3(traps::boot_l4_mfn(si));
    c
}

extern "C" {
    fn pvt_smp_unexpected_callback();
}

/// An event/failsafe callback entry that fails the test (for vCPUs that keep events
/// masked).
pub fn unexpected_callback_address() -> u64 {
    pvt_smp_unexpected_callback as *const () as usize as u64
}

extern "C" fn smp_unexpected_callback() -> ! {
    crate::fail!("unexpected event or failsafe callback (events were to stay masked)")
}

global_asm!(
    r#"
    .section .text.pvt_smp, "ax", @progbits
    .p2align 4
    .global pvt_smp_unexpected_callback
    .type pvt_smp_unexpected_callback, @function
pvt_smp_unexpected_callback:
    and rsp, -16
    call {f}
    ud2
    .size pvt_smp_unexpected_callback, . - pvt_smp_unexpected_callback
"#,
    f = sym smp_unexpected_callback,
);
