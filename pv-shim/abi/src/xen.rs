//! `public/xen.h` and `public/arch-x86/xen-x86_64.h`: hypercall numbers, selectors, the
//! hypervisor hole, `start_info`, `shared_info`, `vcpu_info`, `trap_info`, VM assists.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Hypercall numbers (`__HYPERVISOR_*`).
pub mod hypercall {
    #![allow(missing_docs)]
    pub const SET_TRAP_TABLE: u64 = 0;
    pub const MMU_UPDATE: u64 = 1;
    pub const SET_GDT: u64 = 2;
    pub const STACK_SWITCH: u64 = 3;
    pub const SET_CALLBACKS: u64 = 4;
    pub const FPU_TASKSWITCH: u64 = 5;
    pub const SCHED_OP_COMPAT: u64 = 6;
    pub const PLATFORM_OP: u64 = 7;
    pub const SET_DEBUGREG: u64 = 8;
    pub const GET_DEBUGREG: u64 = 9;
    pub const UPDATE_DESCRIPTOR: u64 = 10;
    pub const MEMORY_OP: u64 = 12;
    pub const MULTICALL: u64 = 13;
    pub const UPDATE_VA_MAPPING: u64 = 14;
    pub const SET_TIMER_OP: u64 = 15;
    pub const EVENT_CHANNEL_OP_COMPAT: u64 = 16;
    pub const XEN_VERSION: u64 = 17;
    pub const CONSOLE_IO: u64 = 18;
    pub const PHYSDEV_OP_COMPAT: u64 = 19;
    pub const GRANT_TABLE_OP: u64 = 20;
    pub const VM_ASSIST: u64 = 21;
    pub const UPDATE_VA_MAPPING_OTHERDOMAIN: u64 = 22;
    pub const IRET: u64 = 23;
    pub const VCPU_OP: u64 = 24;
    pub const SET_SEGMENT_BASE: u64 = 25;
    pub const MMUEXT_OP: u64 = 26;
    pub const XSM_OP: u64 = 27;
    pub const NMI_OP: u64 = 28;
    pub const SCHED_OP: u64 = 29;
    pub const CALLBACK_OP: u64 = 30;
    pub const XENOPROF_OP: u64 = 31;
    pub const EVENT_CHANNEL_OP: u64 = 32;
    pub const PHYSDEV_OP: u64 = 33;
    pub const HVM_OP: u64 = 34;
    pub const SYSCTL: u64 = 35;
    pub const DOMCTL: u64 = 36;
    pub const KEXEC_OP: u64 = 37;
    pub const XENPMU_OP: u64 = 40;
    /// One past the highest hypercall number pvkvm counts individually.
    pub const COUNT: usize = 64;

    /// Name of a hypercall for diagnostics ("unknown" for numbers Xen does not define).
    pub fn name(nr: u64) -> &'static str {
        match nr {
            SET_TRAP_TABLE => "set_trap_table",
            MMU_UPDATE => "mmu_update",
            SET_GDT => "set_gdt",
            STACK_SWITCH => "stack_switch",
            SET_CALLBACKS => "set_callbacks",
            FPU_TASKSWITCH => "fpu_taskswitch",
            SCHED_OP_COMPAT => "sched_op_compat",
            PLATFORM_OP => "platform_op",
            SET_DEBUGREG => "set_debugreg",
            GET_DEBUGREG => "get_debugreg",
            UPDATE_DESCRIPTOR => "update_descriptor",
            MEMORY_OP => "memory_op",
            MULTICALL => "multicall",
            UPDATE_VA_MAPPING => "update_va_mapping",
            SET_TIMER_OP => "set_timer_op",
            EVENT_CHANNEL_OP_COMPAT => "event_channel_op_compat",
            XEN_VERSION => "xen_version",
            CONSOLE_IO => "console_io",
            PHYSDEV_OP_COMPAT => "physdev_op_compat",
            GRANT_TABLE_OP => "grant_table_op",
            VM_ASSIST => "vm_assist",
            UPDATE_VA_MAPPING_OTHERDOMAIN => "update_va_mapping_otherdomain",
            IRET => "iret",
            VCPU_OP => "vcpu_op",
            SET_SEGMENT_BASE => "set_segment_base",
            MMUEXT_OP => "mmuext_op",
            XSM_OP => "xsm_op",
            NMI_OP => "nmi_op",
            SCHED_OP => "sched_op",
            CALLBACK_OP => "callback_op",
            XENOPROF_OP => "xenoprof_op",
            EVENT_CHANNEL_OP => "event_channel_op",
            PHYSDEV_OP => "physdev_op",
            HVM_OP => "hvm_op",
            SYSCTL => "sysctl",
            DOMCTL => "domctl",
            KEXEC_OP => "kexec_op",
            XENPMU_OP => "xenpmu_op",
            _ => "unknown",
        }
    }
}

/// Start of the hypervisor hole (L4 slot 256).
pub const HYPERVISOR_VIRT_START: u64 = 0xffff_8000_0000_0000;
/// End of the hypervisor hole (L4 slot 272 starts here).
pub const HYPERVISOR_VIRT_END: u64 = 0xffff_8800_0000_0000;
/// First L4 slot of the hypervisor hole.
pub const HOLE_FIRST_L4_SLOT: usize = 256;
/// Last L4 slot of the hypervisor hole (inclusive).
pub const HOLE_LAST_L4_SLOT: usize = 271;
/// Read-only machine-to-phys table, as `XENMEM_machphys_mapping` reports it.
pub const MACH2PHYS_VIRT_START: u64 = 0xffff_8000_0000_0000;
/// End of the machine-to-phys table area.
pub const MACH2PHYS_VIRT_END: u64 = 0xffff_8040_0000_0000;

/// Flat selectors Xen gives a 64-bit PV guest (`FLAT_RING3_*`; kernel == ring 3).
pub mod selector {
    #![allow(missing_docs)]
    pub const FLAT_RING3_CS32: u16 = 0xe023;
    pub const FLAT_RING3_CS64: u16 = 0xe033;
    pub const FLAT_RING3_DS32: u16 = 0xe02b;
    pub const FLAT_RING3_DS64: u16 = 0x0000;
    pub const FLAT_RING3_SS32: u16 = 0xe02b;
    pub const FLAT_RING3_SS64: u16 = 0xe02b;
    pub const FLAT_KERNEL_CS: u16 = FLAT_RING3_CS64;
    pub const FLAT_KERNEL_SS: u16 = FLAT_RING3_SS64;
    pub const FLAT_USER_CS: u16 = FLAT_RING3_CS64;
    pub const FLAT_USER_SS: u16 = FLAT_RING3_SS64;
    /// First GDT entry reserved for the hypervisor (pages 14 and 15 of a 16-page GDT).
    pub const FIRST_RESERVED_GDT_ENTRY: usize = 14 * 512;
    /// Number of GDT pages a guest may supply with `set_gdt`.
    pub const FIRST_RESERVED_GDT_PAGE: usize = 14;
}

/// `VMASST_CMD_*` and `VMASST_TYPE_*`.
pub mod vmassist {
    #![allow(missing_docs)]
    pub const CMD_ENABLE: u64 = 0;
    pub const CMD_DISABLE: u64 = 1;
    pub const TYPE_4GB_SEGMENTS: u64 = 0;
    pub const TYPE_4GB_SEGMENTS_NOTIFY: u64 = 1;
    pub const TYPE_WRITABLE_PAGETABLES: u64 = 2;
    pub const TYPE_PAE_EXTENDED_CR3: u64 = 3;
    pub const TYPE_ARCHITECTURAL_IOPL: u64 = 4;
    pub const TYPE_RUNSTATE_UPDATE_FLAG: u64 = 5;
    pub const TYPE_M2P_STRICT: u64 = 32;
    /// Assists a 64-bit PV guest may toggle (Xen's `VM_ASSIST_VALID` for PV64).
    pub const VALID_PV64: u64 = (1 << TYPE_4GB_SEGMENTS)
        | (1 << TYPE_4GB_SEGMENTS_NOTIFY)
        | (1 << TYPE_WRITABLE_PAGETABLES)
        | (1 << TYPE_PAE_EXTENDED_CR3)
        | (1 << TYPE_ARCHITECTURAL_IOPL)
        | (1 << TYPE_RUNSTATE_UPDATE_FLAG)
        | (1 << TYPE_M2P_STRICT);
}

/// `set_segment_base` selectors (`SEGBASE_*`).
pub mod segbase {
    #![allow(missing_docs)]
    pub const FS: u64 = 0;
    pub const GS_USER: u64 = 1;
    pub const GS_KERNEL: u64 = 2;
    pub const GS_USER_SEL: u64 = 3;
}

/// `start_info.flags` bits (`SIF_*`).
pub mod sif {
    #![allow(missing_docs)]
    pub const PRIVILEGED: u32 = 1 << 0;
    pub const INITDOMAIN: u32 = 1 << 1;
    pub const MULTIBOOT_MOD: u32 = 1 << 2;
    pub const MOD_START_PFN: u32 = 1 << 3;
    pub const VIRT_P2M_4TOOLS: u32 = 1 << 4;
}

/// Magic at the start of a 64-bit `start_info`.
pub const START_INFO_MAGIC: &[u8] = b"xen-3.0-x86_64";
/// Size of `start_info.cmd_line` (`MAX_GUEST_CMDLINE`).
pub const MAX_GUEST_CMDLINE: usize = 1024;

/// `struct start_info` (x86_64), 1168 bytes.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct StartInfo {
    /// "xen-3.0-x86_64", NUL padded.
    pub magic: [u8; 32],
    /// Total pages allocated to the domain.
    pub nr_pages: u64,
    /// Machine address of the shared_info page.
    pub shared_info: u64,
    /// `SIF_*` flags.
    pub flags: u32,
    /// Padding.
    pub _pad0: u32,
    /// Machine frame of the xenstore ring.
    pub store_mfn: u64,
    /// Event channel of the xenstore ring.
    pub store_evtchn: u32,
    /// Padding.
    pub _pad1: u32,
    /// Machine frame of the console ring (domU variant).
    pub console_mfn: u64,
    /// Event channel of the console ring.
    pub console_evtchn: u32,
    /// Padding.
    pub _pad2: u32,
    /// Virtual address of the top-level pagetable.
    pub pt_base: u64,
    /// Number of bootstrap pagetable frames.
    pub nr_pt_frames: u64,
    /// Virtual address of the p2m list.
    pub mfn_list: u64,
    /// Initrd start (a PFN when `SIF_MOD_START_PFN`, else a virtual address).
    pub mod_start: u64,
    /// Initrd length in bytes.
    pub mod_len: u64,
    /// Kernel command line, NUL terminated.
    pub cmd_line: [u8; MAX_GUEST_CMDLINE],
    /// First PFN of the p2m list and its pagetables (INIT_P2M only).
    pub first_p2m_pfn: u64,
    /// Number of frames of the p2m list and its pagetables (INIT_P2M only).
    pub nr_p2m_frames: u64,
}

/// Offsets in `struct vcpu_info` (64 bytes each, at `shared_info + 64 * n`).
pub mod vcpu_info {
    #![allow(missing_docs)]
    pub const SIZE: u64 = 64;
    pub const UPCALL_PENDING: u64 = 0;
    pub const UPCALL_MASK: u64 = 1;
    pub const PENDING_SEL: u64 = 8;
    pub const ARCH_CR2: u64 = 16;
    pub const TIME: u64 = 32;
}

/// Offsets in `struct shared_info`.
pub mod shared_info {
    #![allow(missing_docs)]
    /// `XEN_LEGACY_MAX_VCPUS` vcpu_info slots at the start.
    pub const LEGACY_MAX_VCPUS: u64 = 32;
    pub const EVTCHN_PENDING: u64 = 2048;
    pub const EVTCHN_MASK: u64 = 2560;
    pub const WC_VERSION: u64 = 3072;
    pub const WC_SEC: u64 = 3076;
    pub const WC_NSEC: u64 = 3080;
    pub const WC_SEC_HI: u64 = 3084;
    pub const ARCH_MAX_PFN: u64 = 3088;
}

/// `struct trap_info` (x86_64), 16 bytes; a table ends at an entry with `address == 0`.
#[repr(C)]
#[derive(
    Clone, Copy, Default, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct TrapInfo {
    /// Exception vector.
    pub vector: u8,
    /// Bits 0-1: DPL allowed to raise it with `int n`; bit 2: mask events on entry.
    pub flags: u8,
    /// Code selector.
    pub cs: u16,
    /// Padding.
    pub _pad: u32,
    /// Handler address; 0 means "no handler".
    pub address: u64,
}

impl TrapInfo {
    /// DPL a software `int n` must have to reach this gate.
    pub fn dpl(&self) -> u8 {
        self.flags & 3
    }
    /// Whether entering the handler masks event delivery (`TI_GET_IF`).
    pub fn masks_events(&self) -> bool {
        self.flags & 4 != 0
    }
}

/// The frame `HYPERVISOR_iret` pops from the guest stack (`struct iret_context`).
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct IretContext {
    #[allow(missing_docs)]
    pub rax: u64,
    #[allow(missing_docs)]
    pub r11: u64,
    #[allow(missing_docs)]
    pub rcx: u64,
    /// `VGCF_*` flags; `VGCF_IN_SYSCALL` keeps rcx and r11 as they are.
    pub flags: u64,
    #[allow(missing_docs)]
    pub rip: u64,
    #[allow(missing_docs)]
    pub cs: u64,
    #[allow(missing_docs)]
    pub rflags: u64,
    #[allow(missing_docs)]
    pub rsp: u64,
    #[allow(missing_docs)]
    pub ss: u64,
}

/// `VGCF_in_syscall`: the iret returns from a syscall, rcx/r11 are not restored.
pub const VGCF_IN_SYSCALL: u64 = 1 << 8;
/// `VGCF_failsafe_disables_events`.
pub const VGCF_FAILSAFE_DISABLES_EVENTS: u64 = 1 << 3;
/// `VGCF_syscall_disables_events`.
pub const VGCF_SYSCALL_DISABLES_EVENTS: u64 = 1 << 4;

/// `struct mmu_update`, 16 bytes: the machine address of an entry with the command in
/// bits 0-1 (`MMU_NORMAL_PT_UPDATE`, `MMU_MACHPHYS_UPDATE`, ...) and the new value.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MmuUpdate {
    /// Machine address of the entry (or frame, for `MMU_MACHPHYS_UPDATE`), command in the
    /// low bits.
    pub ptr: u64,
    /// New entry (or pfn, for `MMU_MACHPHYS_UPDATE`).
    pub val: u64,
}

/// `struct multicall_entry` (x86_64: `xen_ulong_t` is 64 bits), 64 bytes.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct MulticallEntry {
    /// Hypercall number.
    pub op: u64,
    /// Written back by the hypervisor: the call's return value.
    pub result: u64,
    /// Arguments.
    pub args: [u64; 6],
}

/// Domain id meaning "the calling domain".
pub const DOMID_SELF: u16 = 0x7ff0;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_match_the_headers() {
        assert_eq!(core::mem::size_of::<StartInfo>(), 1168);
        assert_eq!(core::mem::offset_of!(StartInfo, store_mfn), 56);
        assert_eq!(core::mem::offset_of!(StartInfo, console_mfn), 72);
        assert_eq!(core::mem::offset_of!(StartInfo, pt_base), 88);
        assert_eq!(core::mem::offset_of!(StartInfo, cmd_line), 128);
        assert_eq!(core::mem::offset_of!(StartInfo, first_p2m_pfn), 1152);
        assert_eq!(core::mem::size_of::<TrapInfo>(), 16);
        assert_eq!(core::mem::size_of::<IretContext>(), 72);
        assert_eq!(core::mem::size_of::<MmuUpdate>(), 16);
        assert_eq!(core::mem::size_of::<MulticallEntry>(), 64);
    }
}

/// `mmuext_op` commands (`MMUEXT_*`) and the operation record.
pub mod mmuext {
    #![allow(missing_docs)]
    use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

    pub const PIN_L1_TABLE: u32 = 0;
    pub const PIN_L2_TABLE: u32 = 1;
    pub const PIN_L3_TABLE: u32 = 2;
    pub const PIN_L4_TABLE: u32 = 3;
    pub const UNPIN_TABLE: u32 = 4;
    pub const NEW_BASEPTR: u32 = 5;
    pub const TLB_FLUSH_LOCAL: u32 = 6;
    pub const INVLPG_LOCAL: u32 = 7;
    pub const TLB_FLUSH_MULTI: u32 = 8;
    pub const INVLPG_MULTI: u32 = 9;
    pub const TLB_FLUSH_ALL: u32 = 10;
    pub const INVLPG_ALL: u32 = 11;
    pub const FLUSH_CACHE: u32 = 12;
    pub const SET_LDT: u32 = 13;
    pub const NEW_USER_BASEPTR: u32 = 15;
    pub const CLEAR_PAGE: u32 = 16;
    pub const COPY_PAGE: u32 = 17;
    pub const FLUSH_CACHE_GLOBAL: u32 = 18;
    pub const MARK_SUPER: u32 = 19;
    pub const UNMARK_SUPER: u32 = 20;
    /// Highest command Xen defines.
    pub const LAST: u32 = UNMARK_SUPER;

    /// The command's name as in Xen's headers (lower case, no prefix).
    pub fn name(cmd: u32) -> &'static str {
        match cmd {
            PIN_L1_TABLE => "pin_l1_table",
            PIN_L2_TABLE => "pin_l2_table",
            PIN_L3_TABLE => "pin_l3_table",
            PIN_L4_TABLE => "pin_l4_table",
            UNPIN_TABLE => "unpin_table",
            NEW_BASEPTR => "new_baseptr",
            TLB_FLUSH_LOCAL => "tlb_flush_local",
            INVLPG_LOCAL => "invlpg_local",
            TLB_FLUSH_MULTI => "tlb_flush_multi",
            INVLPG_MULTI => "invlpg_multi",
            TLB_FLUSH_ALL => "tlb_flush_all",
            INVLPG_ALL => "invlpg_all",
            FLUSH_CACHE => "flush_cache",
            SET_LDT => "set_ldt",
            NEW_USER_BASEPTR => "new_user_baseptr",
            CLEAR_PAGE => "clear_page",
            COPY_PAGE => "copy_page",
            FLUSH_CACHE_GLOBAL => "flush_cache_global",
            MARK_SUPER => "mark_super",
            UNMARK_SUPER => "unmark_super",
            _ => "unknown",
        }
    }

    /// Flag in a `mmuext_op` / `mmu_update` count marking a continuation.
    pub const MMU_UPDATE_PREEMPTED: u32 = 1 << 31;

    /// `struct mmuext_op` (x86_64), 24 bytes.
    #[repr(C)]
    #[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
    pub struct MmuextOp {
        pub cmd: u32,
        pub _pad: u32,
        /// mfn or linear_addr.
        pub arg1: u64,
        /// nr_ents, vcpumask or src_mfn.
        pub arg2: u64,
    }
}
