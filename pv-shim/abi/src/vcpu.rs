//! `public/arch-x86/xen.h` and `public/arch-x86/xen-x86_64.h`: the 64-bit vCPU context a
//! guest passes to `VCPUOP_initialise` (`struct vcpu_guest_context`), its register block
//! (`struct cpu_user_regs`), the `VGCF_*` flags and the cr3 encoding.
//!
//! Layout facts (x86_64): `cpu_user_regs` is 200 bytes, `vcpu_guest_context` 5168 bytes
//! (0x1430); every field is naturally aligned, so `#[repr(C)]` needs no packing. The
//! compile-time asserts below pin each offset to the value the C headers give.

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout};

use crate::xen::TrapInfo;

pub use crate::xen::{VGCF_FAILSAFE_DISABLES_EVENTS, VGCF_SYSCALL_DISABLES_EVENTS};

/// `VGCF_i387_valid`: `fpu_ctxt` holds an FXSAVE image to load; clear, the FPU is reset.
pub const VGCF_I387_VALID: u64 = 1 << 0;
/// `VGCF_in_kernel`: the vCPU starts in guest kernel mode (clear: user mode, which needs a
/// user pagetable in `ctrlreg[1]`).
pub const VGCF_IN_KERNEL: u64 = 1 << 2;
/// `VGCF_online`: the vCPU is up as soon as the context is set (clear: it stays down
/// until `VCPUOP_up`).
pub const VGCF_ONLINE: u64 = 1 << 5;

/// Number of GDT frames in the context (`gdt_frames[16]`); only the first
/// [`crate::xen::selector::FIRST_RESERVED_GDT_PAGE`] can be used.
pub const NR_GDT_FRAMES: usize = 16;

/// The frame number a 64-bit cr3 value names (`xen_cr3_to_pfn`): bits 12 and up.
pub const fn xen_cr3_to_pfn(cr3: u64) -> u64 {
    cr3 >> 12
}

/// The cr3 value naming frame `pfn` (`xen_pfn_to_cr3`).
pub const fn xen_pfn_to_cr3(pfn: u64) -> u64 {
    pfn << 12
}

/// `struct cpu_user_regs` (x86_64), 200 bytes.
#[repr(C)]
#[derive(
    Clone, Copy, Default, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
#[allow(missing_docs)]
pub struct CpuUserRegs {
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    /// Private to the hypervisor.
    pub error_code: u32,
    /// Private to the hypervisor.
    pub entry_vector: u32,
    pub rip: u64,
    pub cs: u16,
    pub _pad0: u16,
    /// Event mask saved in a bounce frame (`rflags.IF == !saved_upcall_mask`).
    pub saved_upcall_mask: u8,
    pub _pad1: [u8; 3],
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u16,
    pub _pad2: [u16; 3],
    pub es: u16,
    pub _pad3: [u16; 3],
    pub ds: u16,
    pub _pad4: [u16; 3],
    pub fs: u16,
    pub _pad5: [u16; 3],
    pub gs: u16,
    pub _pad6: [u16; 3],
}

/// `struct vcpu_guest_context` (x86_64), 5168 bytes.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct VcpuGuestContext {
    /// FXSAVE image, loaded when `flags` has [`VGCF_I387_VALID`].
    pub fpu_ctxt: [u8; 512],
    /// `VGCF_*` flags.
    pub flags: u64,
    /// General registers, rip, rflags and selectors the vCPU starts with.
    pub user_regs: CpuUserRegs,
    /// Virtual IDT, indexed by vector.
    pub trap_ctxt: [TrapInfo; 256],
    /// LDT linear address.
    pub ldt_base: u64,
    /// LDT entries.
    pub ldt_ents: u64,
    /// GDT frames.
    pub gdt_frames: [u64; NR_GDT_FRAMES],
    /// GDT entries.
    pub gdt_ents: u64,
    /// Kernel stack selector (the virtual TSS's SS1).
    pub kernel_ss: u64,
    /// Kernel stack pointer (the virtual TSS's SP1).
    pub kernel_sp: u64,
    /// CR0-CR7; on x86_64 `ctrlreg[1]` holds the user pagetable and `ctrlreg[3]` the
    /// kernel one, both in the [`xen_pfn_to_cr3`] encoding.
    pub ctrlreg: [u64; 8],
    /// DR0-DR7.
    pub debugreg: [u64; 8],
    /// Event upcall entry point.
    pub event_callback_eip: u64,
    /// Failsafe callback entry point.
    pub failsafe_callback_eip: u64,
    /// 64-bit syscall callback entry point.
    pub syscall_callback_eip: u64,
    /// `1 << VMASST_TYPE_*` bitmap.
    pub vm_assist: u64,
    /// FS base.
    pub fs_base: u64,
    /// Kernel GS base.
    pub gs_base_kernel: u64,
    /// User GS base.
    pub gs_base_user: u64,
}

impl VcpuGuestContext {
    /// An all-zero context (what a guest's `kzalloc` gives before it fills it in).
    pub fn zeroed() -> Self {
        Self::new_zeroed()
    }
}

const _: () = {
    use core::mem::{offset_of, size_of};
    assert!(size_of::<CpuUserRegs>() == 200);
    assert!(offset_of!(CpuUserRegs, rbp) == 32);
    assert!(offset_of!(CpuUserRegs, rax) == 80);
    assert!(offset_of!(CpuUserRegs, rdi) == 112);
    assert!(offset_of!(CpuUserRegs, error_code) == 120);
    assert!(offset_of!(CpuUserRegs, entry_vector) == 124);
    assert!(offset_of!(CpuUserRegs, rip) == 128);
    assert!(offset_of!(CpuUserRegs, cs) == 136);
    assert!(offset_of!(CpuUserRegs, saved_upcall_mask) == 140);
    assert!(offset_of!(CpuUserRegs, rflags) == 144);
    assert!(offset_of!(CpuUserRegs, rsp) == 152);
    assert!(offset_of!(CpuUserRegs, ss) == 160);
    assert!(offset_of!(CpuUserRegs, es) == 168);
    assert!(offset_of!(CpuUserRegs, ds) == 176);
    assert!(offset_of!(CpuUserRegs, fs) == 184);
    assert!(offset_of!(CpuUserRegs, gs) == 192);

    assert!(size_of::<VcpuGuestContext>() == 5168);
    assert!(offset_of!(VcpuGuestContext, flags) == 512);
    assert!(offset_of!(VcpuGuestContext, user_regs) == 520);
    assert!(offset_of!(VcpuGuestContext, trap_ctxt) == 720);
    assert!(offset_of!(VcpuGuestContext, ldt_base) == 4816);
    assert!(offset_of!(VcpuGuestContext, ldt_ents) == 4824);
    assert!(offset_of!(VcpuGuestContext, gdt_frames) == 4832);
    assert!(offset_of!(VcpuGuestContext, gdt_ents) == 4960);
    assert!(offset_of!(VcpuGuestContext, kernel_ss) == 4968);
    assert!(offset_of!(VcpuGuestContext, kernel_sp) == 4976);
    assert!(offset_of!(VcpuGuestContext, ctrlreg) == 4984);
    assert!(offset_of!(VcpuGuestContext, debugreg) == 5048);
    assert!(offset_of!(VcpuGuestContext, event_callback_eip) == 5112);
    assert!(offset_of!(VcpuGuestContext, failsafe_callback_eip) == 5120);
    assert!(offset_of!(VcpuGuestContext, syscall_callback_eip) == 5128);
    assert!(offset_of!(VcpuGuestContext, vm_assist) == 5136);
    assert!(offset_of!(VcpuGuestContext, fs_base) == 5144);
    assert!(offset_of!(VcpuGuestContext, gs_base_kernel) == 5152);
    assert!(offset_of!(VcpuGuestContext, gs_base_user) == 5160);
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cr3_encoding_round_trips() {
        assert_eq!(xen_pfn_to_cr3(0x1234), 0x123_4000);
        assert_eq!(xen_cr3_to_pfn(0x123_4fff), 0x1234);
        assert_eq!(xen_cr3_to_pfn(xen_pfn_to_cr3(0xf_ffff_ffff)), 0xf_ffff_ffff);
    }

    #[test]
    fn zeroed_context_reads_back_from_bytes() {
        let mut c = VcpuGuestContext::zeroed();
        c.user_regs.rip = 0xffff_ffff_8100_0000;
        c.gs_base_user = 7;
        let bytes = c.as_bytes();
        assert_eq!(bytes.len(), 5168);
        assert_eq!(&bytes[648..656], &0xffff_ffff_8100_0000u64.to_le_bytes());
        assert_eq!(&bytes[5160..5168], &7u64.to_le_bytes());
        let back = VcpuGuestContext::read_from_bytes(bytes).unwrap();
        assert_eq!(back, c);
    }
}
