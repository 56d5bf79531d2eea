//! Checking the context a 64-bit PV guest gives `VCPUOP_initialise` for another vCPU,
//! before any pagetable or frame-table work.
//!
//! [`validate`] applies every rule Xen applies to such a context that needs nothing but
//! the context itself, and the fixups Xen makes on the way in. What it returns
//! ([`ValidatedContext`]) still names guest frames the caller must check against the
//! frame table, in this order, each failure being `-EINVAL` unless the type reference
//! says otherwise: the GDT frames (each must take a descriptor-table type reference),
//! then [`ValidatedContext::cr3_pfn`] (must be a frame of the domain and take a
//! top-level pagetable type reference: a data frame mapped writable is refused), then
//! [`ValidatedContext::user_cr3_pfn`] the same way.
//!
//! What the caller checks before calling [`validate`]: the vCPU id names a vCPU of the
//! domain (else `-ENOENT`), the context can be read whole from guest memory (else
//! `-EFAULT`), and the vCPU has not been initialised yet (else `-EEXIST`).

use xen_abi::callback::CALLBACKF_MASK_EVENTS;
use xen_abi::errno::EINVAL;
use xen_abi::vcpu::{
    xen_cr3_to_pfn, VcpuGuestContext, VGCF_FAILSAFE_DISABLES_EVENTS, VGCF_I387_VALID,
    VGCF_IN_KERNEL, VGCF_ONLINE, VGCF_SYSCALL_DISABLES_EVENTS,
};
use xen_abi::xen::selector::{FIRST_RESERVED_GDT_ENTRY, FIRST_RESERVED_GDT_PAGE};
use xen_abi::xen::{vmassist, TrapInfo};

use crate::bounce::{X86_EFLAGS_IF, X86_EFLAGS_IOPL, X86_EFLAGS_VM};
use crate::guest::is_canonical;
use crate::hypercall::{addr_ok, DR6_DEFAULT, DR7_DEFAULT};
use xen_abi::errno::{EEXIST, ERESTART};
use zerocopy::IntoBytes;

use crate::{guest, Callback, Domain, GuestRegs, Mode, Platform, Vcpu};

/// The rflags bits a context may carry (arithmetic flags, TF, IF, DF, IOPL, NT, RF, VM,
/// AC, VIF, VIP, ID); the others are dropped and bit 1 reads as one.
const EFLAGS_ALL: u64 = 0x003f_7fd5;
/// rflags bit 1, always one.
const EFLAGS_MBS: u64 = 1 << 1;
/// Most LDT entries a guest may have (a 64 KiB LDT).
const MAX_LDT_ENTS: u64 = 8192;
/// CR0.TS, the only CR0 bit a guest context sets.
const CR0_TS: u64 = 1 << 3;
/// GDT entries per frame.
const GDT_ENTS_PER_FRAME: u64 = 512;

/// A context that passed every check that needs no frame table, with Xen's fixups
/// applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValidatedContext {
    /// The registers the vCPU starts with: rflags with IOPL taken out (see
    /// [`Self::iopl`]), IF set, VM clear and only defined bits kept; cs and ss with their
    /// RPL raised to 3.
    pub regs: GuestRegs,
    /// Data selectors as given (es, ds, fs, gs): Xen loads them as they are, a bad one
    /// becomes a NUL selector or a failsafe callback when the vCPU first runs.
    pub data_selectors: [u16; 4],
    /// Kernel mode, or user mode when the context asked for it (`VGCF_in_kernel` clear,
    /// allowed only with a user pagetable).
    pub mode: Mode,
    /// Virtual IOPL, as [`crate::Vcpu::iopl`] holds it (rflags bits 12-13).
    pub iopl: u64,
    /// The trap table, indexed by vector (an entry's position is its vector, whatever its
    /// `vector` field says), code selectors with RPL 3.
    pub trap_table: [TrapInfo; 256],
    /// Event upcall entry (no flags: upcalls always mask events).
    pub event_callback: Callback,
    /// Failsafe callback; masks events when the context has
    /// `VGCF_failsafe_disables_events`.
    pub failsafe_callback: Callback,
    /// 64-bit syscall callback; masks events when the context has
    /// `VGCF_syscall_disables_events`.
    pub syscall_callback: Callback,
    /// Kernel stack selector, RPL raised to 3.
    pub kernel_ss: u64,
    /// Kernel stack pointer.
    pub kernel_sp: u64,
    /// FS base.
    pub fs_base: u64,
    /// Kernel GS base.
    pub gs_base_kernel: u64,
    /// User GS base.
    pub gs_base_user: u64,
    /// GDT frames; only the first `ceil(gdt_ents / 512)` are meaningful, the rest are 0.
    pub gdt_frames: [u64; FIRST_RESERVED_GDT_PAGE],
    /// GDT entries (at most [`FIRST_RESERVED_GDT_ENTRY`]).
    pub gdt_ents: u32,
    /// LDT base (0 when there are no entries).
    pub ldt_base: u64,
    /// LDT entries (at most 8192).
    pub ldt_ents: u32,
    /// Debug registers in [`crate::Vcpu::debugreg`]'s form: DR0-3 as given, DR6 and DR7
    /// with reserved bits forced, 4 and 5 zero. A DR7 that `set_debugreg` would refuse
    /// (general detect, or an enabled I/O breakpoint, CR4.DE being clear) is left at its
    /// reset value rather than failing the call, as on Xen.
    pub debugreg: [u64; 8],
    /// The domain's new VM assists: only vCPU 0's context sets them; None for others,
    /// whose `vm_assist` field is ignored.
    pub vm_assist: Option<u64>,
    /// CR0.TS, the only CR0 bit a context sets.
    pub cr0_ts: bool,
    /// `ctrlreg[4]` as given: the caller applies the same CR4 policy as to a guest
    /// `mov` to %cr4 (bits outside the guest-controlled set are dropped, never refused).
    pub cr4_request: u64,
    /// The FXSAVE image to load when the context has `VGCF_i387_valid`; None: reset the
    /// FPU. Not checked (Xen does not check it either: a reserved MXCSR bit is found when
    /// the state is restored).
    pub fpu: Option<[u8; 512]>,
    /// Frame of the kernel top-level pagetable (`ctrlreg[3]`), for the caller to validate.
    pub cr3_pfn: u64,
    /// Frame of the user top-level pagetable when `ctrlreg[1]` is not zero (frame 0 when
    /// it is non-zero below 4096: the test is on the raw value).
    pub user_cr3_pfn: Option<u64>,
    /// `VGCF_online`: the vCPU is up once the context is installed (else it stays down
    /// until `VCPUOP_up`).
    pub online: bool,
}

/// Xen's selector RPL fixup for a 64-bit guest, whose kernel runs at RPL 3: a selector
/// with RPL below 3 gets RPL 3, other bits unchanged.
fn fixup_selector(sel: u64) -> u64 {
    if sel & 3 >= 3 {
        sel
    } else {
        (sel & !3) | 3
    }
}

/// DR7 as `set_debugreg` would store it (same rules as the hypercall), or None where it
/// refuses the value.
fn dr7_value(value: u64) -> Option<u64> {
    const DR_CONTROL_RESERVED_ZERO: u64 = !0xffff_27ff;
    const DR_GENERAL_DETECT: u64 = 1 << 13;
    const DR7_ACTIVE_MASK: u64 = 0xff;
    const DR_IO: u64 = 2;
    let value = (value & !DR_CONTROL_RESERVED_ZERO) | DR7_DEFAULT;
    if value & DR_GENERAL_DETECT != 0 {
        return None;
    }
    // I/O breakpoints need CR4.DE, which the engine never gives a guest.
    if value & DR7_ACTIVE_MASK != 0 && (16..32).step_by(4).any(|i| (value >> i) & 3 == DR_IO) {
        return None;
    }
    Some(value)
}

/// Checks a 64-bit PV guest's `VCPUOP_initialise` context for vCPU `vcpu_id` the way Xen
/// does before it touches pagetables, and applies Xen's fixups. Every refusal is
/// `-EINVAL`:
///
/// - DR6 or DR7 with any of bits 32-63 set;
/// - DR0-DR3 inside the hypervisor's range (from bit 47 up to the end of the hypervisor
///   hole, which includes every non-canonical address): a breakpoint may not watch the
///   hypervisor;
/// - a non-canonical rip, rsp, kernel_sp, fs_base, gs_base_kernel, gs_base_user, event,
///   failsafe or syscall callback, or trap table handler (all 256 entries, used or not);
/// - an LDT base inside the hypervisor's range (whether or not there are entries), not
///   page aligned, or more than 8192 LDT entries;
/// - for vCPU 0 only: a VM assist this guest type cannot have;
/// - more GDT entries than fit below the hypervisor's reserved GDT pages
///   ([`FIRST_RESERVED_GDT_ENTRY`]); the count is taken as Xen's 32-bit one;
/// - user mode (`VGCF_in_kernel` clear) without a user pagetable (`ctrlreg[1]` zero).
///
/// Not refused but fixed up: code and stack selectors (user cs/ss, kernel_ss, each trap
/// entry's cs) get RPL 3; rflags keeps only its defined bits, loses VM and IOPL (IOPL
/// becomes the virtual IOPL) and gains IF (a PV guest masks events, never interrupts);
/// only CR0.TS is taken; the other pointers (rip in the hypervisor hole, kernel_ss, data
/// selectors) are left to fault when used.
pub fn validate(vcpu_id: u32, c: &VcpuGuestContext) -> Result<ValidatedContext, i64> {
    let r = &c.user_regs;

    if c.debugreg[6] >> 32 != 0 || c.debugreg[7] >> 32 != 0 {
        return Err(-EINVAL);
    }
    if !c.debugreg[..4].iter().all(|&dr| addr_ok(dr)) {
        return Err(-EINVAL);
    }

    let canonical = [
        r.rip,
        r.rsp,
        c.kernel_sp,
        c.fs_base,
        c.gs_base_kernel,
        c.gs_base_user,
        c.event_callback_eip,
        c.syscall_callback_eip,
        c.failsafe_callback_eip,
    ];
    if !canonical.iter().all(|&va| is_canonical(va))
        || (c.ldt_ents != 0 && !is_canonical(c.ldt_base))
        || !c.trap_ctxt.iter().all(|t| is_canonical(t.address))
        || !addr_ok(c.ldt_base)
    {
        return Err(-EINVAL);
    }
    if c.ldt_base & 0xfff != 0 || c.ldt_ents > MAX_LDT_ENTS {
        return Err(-EINVAL);
    }

    let vm_assist = if vcpu_id == 0 {
        if c.vm_assist & !vmassist::VALID_PV64 != 0 {
            return Err(-EINVAL);
        }
        Some(c.vm_assist)
    } else {
        None
    };

    // Xen counts frames from the 64-bit field (wrapping as its unsigned long does) into
    // a 32-bit count, and installs the GDT with the field truncated to 32 bits.
    let nr_frames = (c.gdt_ents.wrapping_add(GDT_ENTS_PER_FRAME - 1) / GDT_ENTS_PER_FRAME) as u32;
    if nr_frames as usize > FIRST_RESERVED_GDT_PAGE {
        return Err(-EINVAL);
    }
    let gdt_ents = c.gdt_ents as u32;
    if gdt_ents as usize > FIRST_RESERVED_GDT_ENTRY {
        return Err(-EINVAL);
    }

    if c.flags & VGCF_IN_KERNEL == 0 && c.ctrlreg[1] == 0 {
        return Err(-EINVAL);
    }

    let rflags = (r.rflags & !X86_EFLAGS_VM & EFLAGS_ALL) | EFLAGS_MBS;
    let regs = GuestRegs {
        rax: r.rax,
        rbx: r.rbx,
        rcx: r.rcx,
        rdx: r.rdx,
        rsi: r.rsi,
        rdi: r.rdi,
        rsp: r.rsp,
        rbp: r.rbp,
        r8: r.r8,
        r9: r.r9,
        r10: r.r10,
        r11: r.r11,
        r12: r.r12,
        r13: r.r13,
        r14: r.r14,
        r15: r.r15,
        rip: r.rip,
        rflags: (rflags & !X86_EFLAGS_IOPL) | X86_EFLAGS_IF,
        cs: fixup_selector(u64::from(r.cs)),
        ss: fixup_selector(u64::from(r.ss)),
    };

    let mut trap_table = c.trap_ctxt;
    for t in trap_table.iter_mut() {
        t.cs = fixup_selector(u64::from(t.cs)) as u16;
    }

    let mask_if = |flag: u64| {
        if c.flags & flag != 0 {
            CALLBACKF_MASK_EVENTS
        } else {
            0
        }
    };

    let mut gdt_frames = [0; FIRST_RESERVED_GDT_PAGE];
    let used = gdt_ents.div_ceil(GDT_ENTS_PER_FRAME as u32) as usize;
    gdt_frames[..used].copy_from_slice(&c.gdt_frames[..used]);

    let mut debugreg = [0; 8];
    debugreg[..4].copy_from_slice(&c.debugreg[..4]);
    const DR_STATUS_RESERVED_ZERO: u64 = !0xffff_efff;
    debugreg[6] = (c.debugreg[6] & !DR_STATUS_RESERVED_ZERO) | DR6_DEFAULT;
    debugreg[7] = dr7_value(c.debugreg[7]).unwrap_or(DR7_DEFAULT);

    Ok(ValidatedContext {
        regs,
        data_selectors: [r.es, r.ds, r.fs, r.gs],
        mode: if c.flags & VGCF_IN_KERNEL != 0 {
            Mode::Kernel
        } else {
            Mode::User
        },
        iopl: rflags & X86_EFLAGS_IOPL,
        trap_table,
        event_callback: Callback {
            address: c.event_callback_eip,
            flags: 0,
        },
        failsafe_callback: Callback {
            address: c.failsafe_callback_eip,
            flags: mask_if(VGCF_FAILSAFE_DISABLES_EVENTS),
        },
        syscall_callback: Callback {
            address: c.syscall_callback_eip,
            flags: mask_if(VGCF_SYSCALL_DISABLES_EVENTS),
        },
        kernel_ss: fixup_selector(c.kernel_ss),
        kernel_sp: c.kernel_sp,
        fs_base: c.fs_base,
        gs_base_kernel: c.gs_base_kernel,
        gs_base_user: c.gs_base_user,
        gdt_frames,
        gdt_ents,
        ldt_base: if c.ldt_ents != 0 { c.ldt_base } else { 0 },
        ldt_ents: c.ldt_ents as u32,
        debugreg,
        vm_assist,
        cr0_ts: c.ctrlreg[0] & CR0_TS != 0,
        cr4_request: c.ctrlreg[4],
        fpu: (c.flags & VGCF_I387_VALID != 0).then_some(c.fpu_ctxt),
        cr3_pfn: xen_cr3_to_pfn(c.ctrlreg[3]),
        user_cr3_pfn: (c.ctrlreg[1] != 0).then(|| xen_cr3_to_pfn(c.ctrlreg[1])),
        online: c.flags & VGCF_ONLINE != 0,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use xen_abi::errno::EINVAL;
    use xen_abi::vcpu::xen_pfn_to_cr3;

    const KERNEL_CS: u16 = 0x10;
    const KERNEL_DS: u16 = 0x18;
    const USER_DS: u16 = 0x2b;
    const TEXT: u64 = 0xffff_ffff_8100_0000;
    const NONCANON: u64 = 0x0000_8000_0000_0000;
    const HOLE: u64 = 0xffff_8000_0000_1000;

    /// The context Linux's `cpu_initialize_context` builds for a secondary vCPU: kernel
    /// mode, IOPL 1, Linux's own selectors (RPL 0), its trap table, one GDT frame of 16
    /// entries, the idle task's stack, per-CPU GS base, event and failsafe callbacks,
    /// swapper_pg_dir in cr3.
    fn linux_context() -> VcpuGuestContext {
        let mut c = VcpuGuestContext::zeroed();
        c.flags = VGCF_IN_KERNEL;
        c.user_regs.rip = TEXT + 0x1230;
        c.user_regs.rflags = 0x1000;
        c.user_regs.ds = USER_DS;
        c.user_regs.es = USER_DS;
        c.user_regs.ss = KERNEL_DS;
        c.user_regs.cs = KERNEL_CS;
        c.user_regs.rsp = 0xffff_c900_0001_3f58;
        for (v, t) in [0u8, 1, 3, 6, 13, 14, 0x80].into_iter().zip(0..) {
            c.trap_ctxt[usize::from(v)] = TrapInfo {
                vector: v,
                flags: if v == 3 || v == 0x80 { 3 } else { 0 },
                cs: KERNEL_CS,
                _pad: 0,
                address: TEXT + 0x4000 + t * 0x40,
            };
        }
        c.gdt_frames[0] = 0x1_2345;
        c.gdt_ents = 16;
        c.kernel_ss = u64::from(KERNEL_DS);
        c.kernel_sp = 0xffff_c900_0001_4000;
        c.gs_base_kernel = 0xffff_8880_7fc0_0000;
        c.event_callback_eip = TEXT + 0x8000;
        c.failsafe_callback_eip = TEXT + 0x8100;
        c.ctrlreg[3] = xen_pfn_to_cr3(0x2a0c);
        c
    }

    fn err(c: &VcpuGuestContext) -> i64 {
        validate(1, c).expect_err("context accepted")
    }

    #[test]
    fn linux_secondary_context_is_accepted_with_xens_fixups() {
        let c = linux_context();
        let v = validate(1, &c).unwrap();
        assert_eq!(v.mode, Mode::Kernel);
        assert_eq!(v.regs.rip, TEXT + 0x1230);
        assert_eq!(v.regs.rsp, 0xffff_c900_0001_3f58);
        assert_eq!(v.regs.cs, 0x13);
        assert_eq!(v.regs.ss, 0x1b);
        assert_eq!(v.kernel_ss, 0x1b);
        // IOPL 1 goes to the virtual IOPL; IF is forced; bit 1 reads as one.
        assert_eq!(v.iopl, 0x1000);
        assert_eq!(v.regs.rflags, 0x202);
        assert_eq!(v.data_selectors, [USER_DS, USER_DS, 0, 0]);
        assert_eq!(v.trap_table[14].cs, 0x13);
        assert_eq!(v.trap_table[14].address, TEXT + 0x4000 + 5 * 0x40);
        assert_eq!(v.trap_table[3].dpl(), 3);
        // Unused slots stay unused (address 0); the RPL fixup reaches them too.
        assert_eq!(v.trap_table[2].address, 0);
        assert_eq!(v.trap_table[2].cs, 3);
        assert_eq!(
            v.event_callback,
            Callback {
                address: TEXT + 0x8000,
                flags: 0
            }
        );
        assert_eq!(v.failsafe_callback.flags, 0);
        assert_eq!(v.syscall_callback, Callback::default());
        assert_eq!(v.kernel_sp, 0xffff_c900_0001_4000);
        assert_eq!(v.gs_base_kernel, 0xffff_8880_7fc0_0000);
        assert_eq!(v.gdt_ents, 16);
        assert_eq!(v.gdt_frames[0], 0x1_2345);
        assert!(v.gdt_frames[1..].iter().all(|&f| f == 0));
        assert_eq!((v.ldt_base, v.ldt_ents), (0, 0));
        assert_eq!(v.debugreg, [0, 0, 0, 0, 0, 0, DR6_DEFAULT, DR7_DEFAULT]);
        assert_eq!(v.vm_assist, None);
        assert_eq!(v.cr3_pfn, 0x2a0c);
        assert_eq!(v.user_cr3_pfn, None);
        assert_eq!(v.fpu, None);
        assert!(!v.online);
        assert!(!v.cr0_ts);
    }

    /// What the `smp_bringup` test kernel gives vCPU 1: Xen's flat selectors, no GDT of
    /// its own, the id in rdi, a stack 8 below a 16-byte boundary.
    #[test]
    fn flat_selector_context_without_a_gdt_is_accepted() {
        use xen_abi::xen::selector::{FLAT_KERNEL_CS, FLAT_KERNEL_SS};
        let mut c = VcpuGuestContext::zeroed();
        c.flags = VGCF_IN_KERNEL;
        c.user_regs.rip = TEXT + 0x2000;
        c.user_regs.rsp = 0xffff_ffff_8020_3ff8;
        c.user_regs.rdi = 1;
        c.user_regs.rflags = 0x2;
        c.user_regs.cs = FLAT_KERNEL_CS;
        c.user_regs.ss = FLAT_KERNEL_SS;
        c.trap_ctxt[14] = TrapInfo {
            vector: 14,
            flags: 0,
            cs: FLAT_KERNEL_CS,
            _pad: 0,
            address: TEXT + 0x3000,
        };
        c.kernel_ss = u64::from(FLAT_KERNEL_SS);
        c.kernel_sp = 0xffff_ffff_8020_4000;
        c.event_callback_eip = TEXT + 0x3100;
        c.failsafe_callback_eip = TEXT + 0x3100;
        c.ctrlreg[3] = xen_pfn_to_cr3(0x125);
        let v = validate(1, &c).unwrap();
        assert_eq!((v.regs.cs, v.regs.ss), (0xe033, 0xe02b));
        assert_eq!((v.regs.rdi, v.regs.rflags, v.iopl), (1, 0x202, 0));
        assert_eq!((v.gdt_ents, v.cr3_pfn), (0, 0x125));
        assert_eq!(v.trap_table[14].cs, FLAT_KERNEL_CS);
    }

    #[test]
    fn flags_become_callback_masks_fpu_and_online() {
        let mut c = linux_context();
        c.flags |= VGCF_FAILSAFE_DISABLES_EVENTS
            | VGCF_SYSCALL_DISABLES_EVENTS
            | VGCF_ONLINE
            | VGCF_I387_VALID;
        c.syscall_callback_eip = TEXT + 0x9000;
        c.fpu_ctxt[24] = 0x80;
        c.ctrlreg[0] = 0x8000_003b;
        let v = validate(1, &c).unwrap();
        assert_eq!(v.failsafe_callback.flags, CALLBACKF_MASK_EVENTS);
        assert_eq!(
            v.syscall_callback,
            Callback {
                address: TEXT + 0x9000,
                flags: CALLBACKF_MASK_EVENTS
            }
        );
        assert_eq!(v.event_callback.flags, 0);
        assert!(v.online);
        assert!(v.cr0_ts);
        assert_eq!(v.fpu.unwrap()[24], 0x80);
    }

    #[test]
    fn rflags_keep_defined_bits_lose_vm_and_iopl_gain_if() {
        let mut c = linux_context();
        c.user_regs.rflags = !0;
        let v = validate(1, &c).unwrap();
        assert_eq!(v.iopl, 0x3000);
        assert_eq!(
            v.regs.rflags,
            EFLAGS_ALL & !X86_EFLAGS_VM & !X86_EFLAGS_IOPL | 2
        );
        c.user_regs.rflags = 0;
        assert_eq!(validate(1, &c).unwrap().regs.rflags, 0x202);
    }

    #[test]
    fn selectors_with_rpl_3_are_kept() {
        let mut c = linux_context();
        c.user_regs.cs = 0xe033;
        c.user_regs.ss = 0xe02b;
        c.kernel_ss = 0x1_e02b;
        c.trap_ctxt[0].cs = 0xe033;
        let v = validate(1, &c).unwrap();
        assert_eq!(
            (v.regs.cs, v.regs.ss, v.kernel_ss),
            (0xe033, 0xe02b, 0x1_e02b)
        );
        assert_eq!(v.trap_table[0].cs, 0xe033);
        c.user_regs.cs = 0x11;
        assert_eq!(validate(1, &c).unwrap().regs.cs, 0x13);
    }

    #[test]
    fn non_canonical_pointers_are_einval() {
        type Set = fn(&mut VcpuGuestContext);
        let cases: [(&str, Set); 11] = [
            ("rip", |c| c.user_regs.rip = NONCANON),
            ("rsp", |c| c.user_regs.rsp = NONCANON),
            ("kernel_sp", |c| c.kernel_sp = NONCANON),
            ("fs_base", |c| c.fs_base = NONCANON),
            ("gs_base_kernel", |c| c.gs_base_kernel = NONCANON),
            ("gs_base_user", |c| c.gs_base_user = NONCANON),
            ("event", |c| c.event_callback_eip = NONCANON),
            ("failsafe", |c| c.failsafe_callback_eip = NONCANON),
            ("syscall", |c| c.syscall_callback_eip = NONCANON),
            // An unused slot (vector 200) is checked too.
            ("trap", |c| c.trap_ctxt[200].address = NONCANON),
            ("ldt_base", |c| {
                c.ldt_ents = 1;
                c.ldt_base = NONCANON;
            }),
        ];
        for (what, set) in cases {
            let mut c = linux_context();
            set(&mut c);
            assert_eq!(validate(1, &c), Err(-EINVAL), "{what}");
        }
    }

    #[test]
    fn hypervisor_hole_is_fine_for_rip_but_not_for_ldt_or_breakpoints() {
        let mut c = linux_context();
        c.user_regs.rip = HOLE;
        c.kernel_sp = HOLE;
        c.event_callback_eip = HOLE;
        assert!(validate(1, &c).is_ok());

        let mut c = linux_context();
        c.ldt_base = HOLE;
        assert_eq!(err(&c), -EINVAL, "ldt_base in the hole with no entries");
        c.ldt_base = NONCANON;
        assert_eq!(err(&c), -EINVAL, "non-canonical ldt_base with no entries");

        for dr in 0..4 {
            let mut c = linux_context();
            c.debugreg[dr] = HOLE;
            assert_eq!(err(&c), -EINVAL, "dr{dr}");
            c.debugreg[dr] = 0xffff_8800_0000_0000;
            assert!(validate(1, &c).is_ok(), "dr{dr} above the hole");
        }
    }

    #[test]
    fn ldt_limits() {
        let mut c = linux_context();
        c.ldt_base = 0xffff_ffff_ff57_7000;
        c.ldt_ents = 8192;
        let v = validate(1, &c).unwrap();
        assert_eq!((v.ldt_base, v.ldt_ents), (0xffff_ffff_ff57_7000, 8192));
        c.ldt_ents = 8193;
        assert_eq!(err(&c), -EINVAL);
        c.ldt_ents = 16;
        c.ldt_base += 8;
        assert_eq!(err(&c), -EINVAL);
        c.ldt_ents = 0;
        assert_eq!(err(&c), -EINVAL, "alignment is checked without entries");
    }

    #[test]
    fn gdt_entry_limit() {
        let mut c = linux_context();
        c.gdt_frames = core::array::from_fn(|i| 0x100 + i as u64);
        c.gdt_ents = FIRST_RESERVED_GDT_ENTRY as u64;
        let v = validate(1, &c).unwrap();
        assert_eq!(v.gdt_ents as usize, FIRST_RESERVED_GDT_ENTRY);
        assert_eq!(v.gdt_frames[13], 0x10d);
        c.gdt_ents += 1;
        assert_eq!(err(&c), -EINVAL);
        c.gdt_ents = u64::MAX;
        assert_eq!(err(&c), -EINVAL);
        c.gdt_ents = 1 << 32;
        assert_eq!(err(&c), -EINVAL);
        // Xen's 32-bit frame count wraps to 0 here and its 32-bit entry count is 0.
        c.gdt_ents = 1 << 41;
        let v = validate(1, &c).unwrap();
        assert_eq!(v.gdt_ents, 0);
        assert!(v.gdt_frames.iter().all(|&f| f == 0));
    }

    #[test]
    fn user_mode_needs_a_user_pagetable() {
        let mut c = linux_context();
        c.flags = 0;
        assert_eq!(err(&c), -EINVAL);
        c.ctrlreg[1] = xen_pfn_to_cr3(0x2a0d);
        let v = validate(1, &c).unwrap();
        assert_eq!(v.mode, Mode::User);
        assert_eq!(v.user_cr3_pfn, Some(0x2a0d));
        c.ctrlreg[1] = 0x5;
        assert_eq!(validate(1, &c).unwrap().user_cr3_pfn, Some(0));
    }

    #[test]
    fn debug_register_rules() {
        let mut c = linux_context();
        c.debugreg[6] = 1 << 32;
        assert_eq!(err(&c), -EINVAL);
        let mut c = linux_context();
        c.debugreg[7] = 1 << 40;
        assert_eq!(err(&c), -EINVAL);

        let mut c = linux_context();
        c.debugreg[0] = TEXT;
        c.debugreg[4] = 0x1234;
        c.debugreg[5] = 0x5678;
        c.debugreg[6] = 0x1;
        c.debugreg[7] = 0x0001_0001;
        let v = validate(1, &c).unwrap();
        assert_eq!(v.debugreg[0], TEXT);
        assert_eq!((v.debugreg[4], v.debugreg[5]), (0, 0));
        assert_eq!(v.debugreg[6], DR6_DEFAULT | 1);
        assert_eq!(v.debugreg[7], 0x0001_0401);

        // Refused by set_debugreg, which the context path does not report: DR7 stays
        // at its reset value.
        c.debugreg[7] = 1 << 13;
        assert_eq!(validate(1, &c).unwrap().debugreg[7], DR7_DEFAULT);
        c.debugreg[7] = 0x0002_0001;
        assert_eq!(validate(1, &c).unwrap().debugreg[7], DR7_DEFAULT);
    }

    #[test]
    fn vm_assist_is_checked_and_taken_for_vcpu_0_only() {
        let mut c = linux_context();
        c.vm_assist = 1 << vmassist::TYPE_WRITABLE_PAGETABLES;
        assert_eq!(validate(0, &c).unwrap().vm_assist, Some(c.vm_assist));
        c.vm_assist = 1 << 6;
        assert_eq!(validate(0, &c), Err(-EINVAL));
        assert_eq!(validate(1, &c).unwrap().vm_assist, None);
    }
}

/// A vCPU as `VCPUOP_initialise` built it, handed to the host
/// ([`crate::Platform::vcpu_initialised`]) for the vCPU to take up when it first comes
/// up.
#[derive(Clone, Debug)]
pub struct NewVcpu {
    /// The engine's state for the vCPU (its pagetables and GDT frames already hold
    /// their references).
    pub vcpu: Vcpu,
    /// Its registers.
    pub regs: GuestRegs,
    /// ds, es, fs, gs as the context gave them.
    pub data_selectors: [u16; 4],
    /// The FXSAVE image to load, or None to reset the FPU.
    pub fpu: Option<[u8; 512]>,
}

/// `VCPUOP_initialise(id, ctxt)` from `caller`, in Xen's order: a vCPU without a
/// `vcpu_info` (-EINVAL), the context read whole (-EFAULT), a vCPU already initialised
/// (-EEXIST), [`validate`], then the GDT frames, the kernel pagetable and the user
/// pagetable take their references (a refusal undoes the earlier ones: -EINVAL, or a
/// continuation when validation of a large tree was preempted). The vCPU is then
/// initialised and, with `VGCF_online`, up.
pub fn initialise(caller: &Vcpu, dom: &mut Domain, p: &mut dyn Platform, id: u32, arg: u64) -> i64 {
    let Some(vcpu_info_gpa) = dom.vcpu_info_gpa(id) else {
        return -EINVAL;
    };
    // The 5 KiB context is read in place into the domain's scratch (held under the
    // domain lock like the rest of the domain), not onto the stack or a heap box.
    let Some(ctx) = dom.vcpu_context_scratch() else {
        return -xen_abi::errno::EFAULT;
    };
    if guest::copy_from_guest(caller, p, arg, ctx.as_mut_bytes()).is_err() {
        return -xen_abi::errno::EFAULT;
    }
    let c = validate(id, ctx);
    if dom.vcpu(id).is_some_and(|s| s.initialised) {
        return -EEXIST;
    }
    let c = match c {
        Ok(c) => c,
        Err(e) => return e,
    };
    let mut vcpu = Vcpu::new(id, c.cr3_pfn << 12, vcpu_info_gpa);
    let rc = crate::mmu::set_gdt_frames(&mut vcpu, p, &c.gdt_frames, c.gdt_ents);
    if rc != 0 {
        return if rc == -ERESTART { rc } else { -EINVAL };
    }
    let undo_gdt = |vcpu: &mut Vcpu, p: &mut dyn Platform| {
        let _ = crate::mmu::set_gdt_frames(vcpu, p, &[0; FIRST_RESERVED_GDT_PAGE], 0);
    };
    let Some(ctx_mm) = p.mm() else {
        undo_gdt(&mut vcpu, p);
        return -xen_abi::errno::ENOSYS;
    };
    // The references are the new vCPU's base pointers, not the caller's.
    let caller_id = ctx_mm.mm.current_vcpu();
    ctx_mm.mm.set_current_vcpu(id as usize);
    let roots = match ctx_mm.mm.set_root(ctx_mm.mem, None, Some(c.cr3_pfn)) {
        Ok(f) => {
            crate::mmu::merge_flush(ctx_mm.flush, f);
            match c.user_cr3_pfn {
                None => Ok(()),
                Some(user) => match ctx_mm.mm.set_root(ctx_mm.mem, None, Some(user)) {
                    Ok(f) => {
                        crate::mmu::merge_flush(ctx_mm.flush, f);
                        Ok(())
                    }
                    Err(e) => {
                        let f = ctx_mm.mm.set_root(ctx_mm.mem, Some(c.cr3_pfn), None);
                        if let Ok(f) = f {
                            crate::mmu::merge_flush(ctx_mm.flush, f);
                        }
                        Err(e)
                    }
                },
            }
        }
        Err(e) => Err(e),
    };
    ctx_mm.mm.set_current_vcpu(caller_id);
    if let Err(e) = roots {
        undo_gdt(&mut vcpu, p);
        return if e.errno() == -ERESTART {
            -ERESTART
        } else {
            -EINVAL
        };
    }
    vcpu.user_cr3 = c.user_cr3_pfn.map_or(0, |f| f << 12);
    vcpu.mode = c.mode;
    vcpu.iopl = c.iopl;
    vcpu.trap_table = c.trap_table;
    vcpu.event_callback = c.event_callback;
    vcpu.failsafe_callback = c.failsafe_callback;
    vcpu.syscall_callback = c.syscall_callback;
    vcpu.kernel_ss = c.kernel_ss;
    vcpu.kernel_sp = c.kernel_sp;
    vcpu.fs_base = c.fs_base;
    vcpu.gs_base_kernel = c.gs_base_kernel;
    vcpu.gs_base_user = c.gs_base_user;
    vcpu.ldt_base = c.ldt_base;
    vcpu.ldt_ents = c.ldt_ents;
    vcpu.debugreg = c.debugreg;
    vcpu.cr0_ts = c.cr0_ts;
    vcpu.cr4 = crate::emulate::fixup_guest_cr4(c.cr4_request);
    if let Some(assists) = c.vm_assist {
        dom.vm_assist = assists;
    }
    let new = NewVcpu {
        vcpu,
        regs: c.regs,
        data_selectors: c.data_selectors,
        fpu: c.fpu,
    };
    if let Some(slot) = dom.vcpu_mut(id) {
        slot.initialised = true;
        p.vcpu_initialised(id, &new);
        if c.online {
            slot.up = true;
            p.kick_vcpu(id);
        }
    }
    0
}
