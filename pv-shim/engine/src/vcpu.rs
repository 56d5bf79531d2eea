//! Per-vCPU PV state the engine owns, and the registers it exchanges with its host.

use xen_abi::xen::TrapInfo;

/// General registers, rip and rflags as the host passes them in and takes them back.
#[allow(missing_docs)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestRegs {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rsp: u64,
    pub rbp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    /// Code selector of the interrupted context (always RPL 3 on this ABI: guest kernel
    /// and guest user both run in ring 3).
    pub cs: u64,
    /// Stack selector of the interrupted context.
    pub ss: u64,
}

impl GuestRegs {
    /// The general register with x86 number `num` (0 = rax, 1 = rcx, ... 15 = r15; only
    /// the low four bits count), as instruction encodings name them.
    pub fn gpr_mut(&mut self, num: u8) -> &mut u64 {
        match num & 15 {
            0 => &mut self.rax,
            1 => &mut self.rcx,
            2 => &mut self.rdx,
            3 => &mut self.rbx,
            4 => &mut self.rsp,
            5 => &mut self.rbp,
            6 => &mut self.rsi,
            7 => &mut self.rdi,
            8 => &mut self.r8,
            9 => &mut self.r9,
            10 => &mut self.r10,
            11 => &mut self.r11,
            12 => &mut self.r12,
            13 => &mut self.r13,
            14 => &mut self.r14,
            _ => &mut self.r15,
        }
    }
}

/// Which half of the guest is running (both run at CPL3, as on 64-bit Xen).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mode {
    /// Guest kernel mode (`TF_kernel_mode`).
    #[default]
    Kernel,
    /// Guest user mode.
    User,
}

/// A registered callback (`CALLBACKOP_register` / `set_callbacks`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Callback {
    /// Entry point; 0 when none is registered.
    pub address: u64,
    /// `CALLBACKF_*` flags.
    pub flags: u16,
}

/// Hardware state the host must load after the engine ran (it compares with what it
/// loaded last and writes only what changed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HwState {
    /// Guest-physical address of the active top-level pagetable.
    pub cr3: u64,
    /// FS base.
    pub fs_base: u64,
    /// Active GS base (kernel's in kernel mode, user's in user mode).
    pub gs_base: u64,
    /// CR0.TS as the guest asked with `fpu_taskswitch`.
    pub cr0_ts: bool,
}

/// PV state of one vCPU.
#[derive(Clone, Debug)]
pub struct Vcpu {
    /// vCPU id.
    pub id: u32,
    /// Current guest mode.
    pub mode: Mode,
    /// Guest-physical address of the kernel top-level pagetable (`guest_table`).
    pub kernel_cr3: u64,
    /// Guest-physical address of the user top-level pagetable (`guest_table_user`), 0
    /// when none is set.
    pub user_cr3: u64,
    /// Kernel stack segment from `stack_switch`.
    pub kernel_ss: u64,
    /// Kernel stack pointer from `stack_switch`: where bounces from user mode land.
    pub kernel_sp: u64,
    /// The guest's trap table, indexed by vector.
    pub trap_table: [TrapInfo; 256],
    /// Event upcall callback.
    pub event_callback: Callback,
    /// Failsafe callback.
    pub failsafe_callback: Callback,
    /// 64-bit syscall callback.
    pub syscall_callback: Callback,
    /// 32-bit syscall callback.
    pub syscall32_callback: Callback,
    /// sysenter callback.
    pub sysenter_callback: Callback,
    /// NMI callback.
    pub nmi_callback: Callback,
    /// FS base.
    pub fs_base: u64,
    /// Kernel GS base.
    pub gs_base_kernel: u64,
    /// User GS base.
    pub gs_base_user: u64,
    /// Debug registers 0-7 as the guest set them (4 and 5 unused: they alias 6 and 7).
    pub debugreg: [u64; 8],
    /// Virtual CR0.TS (`fpu_taskswitch`).
    pub cr0_ts: bool,
    /// Single-shot timer deadline (system time, ns).
    pub timer_deadline: Option<u64>,
    /// Periodic timer period (ns; 0: off).
    pub periodic_ns: u64,
    /// Next periodic expiry (system time, ns).
    pub periodic_next: u64,
    /// Guest virtual address of the registered second `vcpu_time_info` (0: none).
    pub time_area: u64,
    /// Runstate accounting (see [`crate::vcpu_op::runstate_change`]).
    pub runstate: crate::vcpu_op::RunstateInfo,
    /// An unfinished `SCHEDOP_poll`: what ends the wait besides a new event.
    pub poll: Option<crate::hypercall::PollWait>,
    /// The guest's virtual CR2 (the last page-fault address bounced to it).
    pub cr2: u64,
    /// The guest's virtual CR4 (reads and the bits it may write; the hardware CR4 is the
    /// shim's).
    pub cr4: u64,
    /// The vCPU's XCR0 as the guest kernel set it with `xsetbv` (see [`crate::xstate`]).
    pub xcr0: u64,
    /// Guest-physical address of this vCPU's `vcpu_info` (the domain's slot for the
    /// vCPU says the same; another vCPU reaches it there).
    pub vcpu_info_gpa: u64,
    /// Guest frames of the GDT (`set_gdt`), mapped below Xen's reserved entries.
    pub gdt_frames: [u64; xen_abi::xen::selector::FIRST_RESERVED_GDT_PAGE],
    /// Entries of the guest GDT.
    pub gdt_ents: u32,
    /// LDT base (`MMUEXT_SET_LDT`).
    pub ldt_base: u64,
    /// LDT entries.
    pub ldt_ents: u32,
    /// Virtual IOPL (EFLAGS bits 12-13), reflected into bounce frames when the
    /// `architectural_iopl` assist is on.
    pub iopl: u64,
    /// User GS selector last loaded with `SEGBASE_GS_USER_SEL` (RPL fixed up as Xen does).
    pub gs_sel_user: u16,
    /// MSR values the guest wrote and reads back (speculation controls, TSC_AUX,
    /// machine-check banks; see [`crate::msr`]).
    pub msrs: crate::msr::VcpuMsrs,
}

impl Vcpu {
    /// A vCPU as the domain builder leaves it: kernel mode, the builder's pagetable,
    /// nothing registered, events masked.
    pub fn new(id: u32, kernel_cr3: u64, vcpu_info_gpa: u64) -> Self {
        Self {
            id,
            mode: Mode::Kernel,
            kernel_cr3,
            user_cr3: 0,
            kernel_ss: 0,
            kernel_sp: 0,
            trap_table: [TrapInfo::default(); 256],
            event_callback: Callback::default(),
            failsafe_callback: Callback::default(),
            syscall_callback: Callback::default(),
            syscall32_callback: Callback::default(),
            sysenter_callback: Callback::default(),
            nmi_callback: Callback::default(),
            fs_base: 0,
            gs_base_kernel: 0,
            gs_base_user: 0,
            debugreg: [
                0,
                0,
                0,
                0,
                0,
                0,
                crate::hypercall::DR6_DEFAULT,
                crate::hypercall::DR7_DEFAULT,
            ],
            cr0_ts: false,
            cr2: 0,
            time_area: 0,
            runstate: crate::vcpu_op::RunstateInfo::default(),
            poll: None,
            timer_deadline: None,
            periodic_ns: 0,
            periodic_next: 0,
            // PAE | PGE | OSFXSR | OSXMMEXCPT, as Xen starts a 64-bit PV vCPU.
            cr4: 0x6a0,
            xcr0: crate::xstate::XCR0_INITIAL,
            vcpu_info_gpa,
            gdt_frames: [0; xen_abi::xen::selector::FIRST_RESERVED_GDT_PAGE],
            gdt_ents: 0,
            ldt_base: 0,
            ldt_ents: 0,
            iopl: 0,
            gs_sel_user: 0,
            msrs: crate::msr::VcpuMsrs::default(),
        }
    }

    /// Switches between guest kernel and guest user mode, as Xen's `toggle_guest_mode`:
    /// the active pagetable and GS base follow from [`Vcpu::hw_state`].
    pub fn toggle_guest_mode(&mut self) {
        self.mode = match self.mode {
            Mode::Kernel => Mode::User,
            Mode::User => Mode::Kernel,
        };
    }

    /// The hardware state that matches the PV state.
    pub fn hw_state(&self) -> HwState {
        let (cr3, gs_base) = match self.mode {
            Mode::Kernel => (self.kernel_cr3, self.gs_base_kernel),
            Mode::User => (self.user_cr3, self.gs_base_user),
        };
        HwState {
            cr3,
            fs_base: self.fs_base,
            gs_base,
            cr0_ts: self.cr0_ts,
        }
    }
}
