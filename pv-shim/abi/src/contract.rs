//! The versioned contract between the pvkvm VMM and its ring-0 shim.
//!
//! The shim is a position-independent blob of entry stubs that the VMM copies into the
//! shim region (guest-physical memory above guest RAM, owned by no guest frame number)
//! and maps in the hypervisor hole at [`SHIM_VA_BASE`], once per vCPU: each vCPU has a
//! block of its own (the text copy, then its guest-state page, GDT, IDT, TSS with its I/O
//! bitmap, ring-0 stacks and posting area), and the domain has one `shared_info`, one
//! grant table and the shim's own pagetables. The VMM builds all of it at the offsets in
//! [`layout`] before the first vCPU runs, and points each vCPU's GDTR, IDTR, TR and
//! LSTAR into that vCPU's block.
//!
//! Two doorbells lead from the VM to the VMM, both `out %al, $port`:
//! - [`port::HYPERCALL`]: executed at CPL3 by the `syscall` entry stub (LSTAR). On this
//!   host's KVM a `syscall` from ring 3 stays at CPL3, so the stub's `out` is allowed by
//!   the TSS I/O bitmap and the VMM answers the hypercall (or bounces a guest-user
//!   `syscall`) with no ring-0 instruction executed. The VMM accepts the doorbell only
//!   when rip is [`ShimHeader::syscall_doorbell_end`] (a guest that writes the port itself
//!   gets the #GP Xen would give it).
//! - [`port::TRAP`]: executed at CPL0 by the per-vector IDT stubs after they push the
//!   vector and an error code (0 when the CPU pushes none). The VMM reads the frame from
//!   the vCPU's ring-0 stack, may rewrite its iret part (to bounce to the guest or
//!   resume), and the stub drops the two words and `iretq`s.
//!
//! Bump [`CONTRACT_VERSION`] on any change of layout or meaning; the VMM refuses a shim
//! whose header carries another version.

use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout};

/// Version of this contract; the shim header carries it.
pub const CONTRACT_VERSION: u32 = 10;
/// Magic at offset 0 of the shim image.
pub const SHIM_MAGIC: [u8; 8] = *b"PVKVSHIM";
/// Number of IDT vectors the shim provides stubs for.
pub const NR_VECTORS: usize = 256;

/// Virtual base of the shim region: L4 slot 258, inside the hypervisor hole and clear of
/// the M2P table at its start.
pub const SHIM_VA_BASE: u64 = 0xffff_8100_0000_0000;

/// I/O ports of the doorbells.
pub mod port {
    /// Hypercall / guest `syscall` doorbell, written at CPL3 by the LSTAR stub.
    pub const HYPERCALL: u16 = 0x00e1;
    /// Trap doorbell, written at CPL0 by the IDT stubs.
    pub const TRAP: u16 = 0x00e0;
    /// Rung at CPL0 by the apply routine when the VMM flagged more posted stores than
    /// the posting area holds: the VMM refills it and the routine goes on.
    pub const APPLY_MORE: u16 = 0x00e3;
}

/// Where pvkvm maps the read-only M2P table (what `XENMEM_machphys_mapping` reports):
/// L4 slot 257 rather than Xen's `MACH2PHYS_VIRT_START` (slot 256), because the probe
/// finds that this host's KVM keeps slot 256 for itself (ring-3 accesses there fault with
/// a reserved-bit error). Linux takes the address from the hypercall; a guest that reads
/// Xen's address gets the same table there (mapped where the host allows the slot,
/// emulated by the engine elsewhere).
pub const M2P_VA: u64 = 0xffff_8080_0000_0000;
/// End of the M2P area (room for 2^35 entries, as Xen's).
pub const M2P_VA_END: u64 = M2P_VA + (1 << 38);

/// Where the shim maps all guest-physical memory (guest RAM and the shim region),
/// supervisor-only, so that the apply routine can store into any frame (L4 slot 262).
pub const DIRECTMAP_VA: u64 = 0xffff_8300_0000_0000;

/// Ring-0 selectors of the shim, in the Xen-reserved GDT pages.
pub mod selector {
    /// Shim code (`__HYPERVISOR_CS`).
    pub const HYPERVISOR_CS: u16 = 0xe008;
    /// Shim data/stack (`__HYPERVISOR_DS`).
    pub const HYPERVISOR_DS: u16 = 0xe010;
    /// The TSS (two GDT entries).
    pub const TSS: u16 = 0xe040;
}

/// Most vCPUs a domain can have: the shim region holds one [`layout::vcpu`] block each.
pub const MAX_VCPUS: u32 = 128;

/// Offsets of the shim region's parts from its base (the same for its guest-physical
/// base and for [`SHIM_VA_BASE`]).
///
/// The region is a domain part (the [`GRANT_TABLE`](layout::GRANT_TABLE) frames, the
/// [`SHARED_INFO`](layout::SHARED_INFO) page), then one block per vCPU at
/// [`vcpu_block`](layout::vcpu_block) (its own copy of the shim text followed by that
/// vCPU's guest-state page, GDT, IDT, TSS, stacks and posting area, at the offsets of
/// [`layout::vcpu`]), then the shim's own pagetables, sized for the blocks built, at
/// [`pagetables`](layout::pagetables). The M2P table and the direct map's tables follow
/// at [`size`](layout::size). The shim's code reaches its guest-state page and posting
/// area rip-relatively, so every block's text copy finds its own vCPU's pages: the one
/// image serves every vCPU.
pub mod layout {
    /// Offsets inside one vCPU block, from the block's start.
    pub mod vcpu {
        /// The shim image (header + stubs); mapped read-only and user-executable,
        /// because the `syscall` stub runs at CPL3 on this host.
        pub const TEXT: u64 = 0x0_0000;
        /// Largest shim image.
        pub const TEXT_SIZE: u64 = 0xf000;
        /// The guest-state page the `syscall` stub reads at CPL3
        /// ([`crate::contract::GuestStatePage`]): mapped user-readable and read-only in the
        /// guest, written by the VMM.
        pub const GUEST_STATE: u64 = 0xf000;
        /// The 16-page GDT: pages 0-13 for the guest's `set_gdt` frames, 14-15 Xen's.
        pub const GDT: u64 = 0x1_0000;
        /// GDT size in bytes.
        pub const GDT_SIZE: u64 = 0x1_0000;
        /// The IDT (256 gates of 16 bytes).
        pub const IDT: u64 = 0x2_0000;
        /// The 64-bit TSS, followed at [`TSS_IOPB`] by its I/O permission bitmap.
        pub const TSS: u64 = 0x2_1000;
        /// Offset of the I/O bitmap from the TSS (`iomap_base`).
        pub const TSS_IOPB: u64 = 0x68;
        /// TSS limit: the TSS, 65536 port bits and the trailing all-ones byte.
        pub const TSS_LIMIT: u64 = TSS_IOPB + 8192;
        /// Pages of the TSS with its bitmap.
        pub const TSS_PAGES: u64 = (TSS_LIMIT + 1).div_ceil(0x1000);
        /// The ring-0 stack ends here (grows down from this page boundary); the unmapped
        /// pages below it catch an overflow (a double fault, on its own stack).
        pub const STACK: u64 = 0x2_a000;
        /// Ring-0 stack size.
        pub const STACK_SIZE: u64 = 0x4000;
        /// The double-fault (IST1) stack, so a broken ring-0 stack still reports; an
        /// unmapped page lies between it and the ring-0 stack.
        pub const DF_STACK: u64 = 0x2_c000;
        /// Size of the double-fault stack.
        pub const DF_STACK_SIZE: u64 = 0x1000;
        /// The posting area: a [`crate::contract::PostedHeader`] page, then
        /// [`crate::contract::PostedStore`]s.
        pub const POSTED: u64 = 0x2_c000;
        /// Size of the posting area.
        pub const POSTED_SIZE: u64 = 0x4000;
        /// Size of one block.
        pub const SIZE: u64 = 0x3_0000;

        // The parts must not overlap; checked when the crate compiles.
        const _: () = {
            assert!(TEXT + TEXT_SIZE <= GUEST_STATE);
            assert!(GUEST_STATE + 0x1000 <= GDT);
            assert!(GDT + GDT_SIZE <= IDT);
            assert!(IDT + 0x1000 <= TSS);
            assert!(TSS + TSS_PAGES * 0x1000 < STACK - STACK_SIZE);
            assert!(STACK < DF_STACK - DF_STACK_SIZE);
            assert!(DF_STACK <= POSTED);
            assert!(POSTED + POSTED_SIZE <= SIZE);
        };
    }

    /// The domain's grant table: [`GRANT_FRAMES`] hypervisor frames shared with the guest
    /// (not used by the shim; placed here so the region holds all of the domain's
    /// hypervisor-owned frames).
    pub const GRANT_TABLE: u64 = 0x0_0000;
    /// Frames of the grant table (Xen's default `max_grant_frames`).
    pub const GRANT_FRAMES: u64 = 64;
    /// The domain's `shared_info` page (a frame outside guest RAM, as on Xen). Its next
    /// frame is vCPU 0's text, which the guest may not map (as on Xen, where it is
    /// some frame of Xen's own; the hostile guest tests map it and expect a refusal).
    pub const SHARED_INFO: u64 = GRANT_TABLE + GRANT_FRAMES * 0x1000;
    /// Block of vCPU 0; vCPU `i`'s is [`VCPU_STRIDE`] `* i` further.
    pub const VCPU_BASE: u64 = SHARED_INFO + 0x1000;
    /// Distance between two vCPU blocks.
    pub const VCPU_STRIDE: u64 = vcpu::SIZE;

    /// Offset of vCPU `i`'s block (for `i` = the number of vCPUs: the end of the last).
    pub const fn vcpu_block(i: u32) -> u64 {
        VCPU_BASE + i as u64 * VCPU_STRIDE
    }

    /// L1 pages of the shim's pagetables for `nr_vcpus` blocks: one per 2 MiB of the
    /// region up to the end of the last block (the part mapped at [`super::SHIM_VA_BASE`]).
    pub const fn l1_pages(nr_vcpus: u32) -> u64 {
        vcpu_block(nr_vcpus).div_ceil(1 << 21)
    }

    /// Offset of the shim's pagetables for `nr_vcpus` blocks: its L3, its L2, then
    /// [`l1_pages`] L1s mapping the region from its base (right after the last block, so
    /// that they grow with the blocks built and no block moves).
    pub const fn pagetables(nr_vcpus: u32) -> u64 {
        vcpu_block(nr_vcpus)
    }

    /// Size of a shim region of `nr_vcpus` blocks without the M2P table and the direct
    /// map (which follow at this offset).
    pub const fn size(nr_vcpus: u32) -> u64 {
        pagetables(nr_vcpus) + (2 + l1_pages(nr_vcpus)) * 0x1000
    }

    // The parts must not overlap, and the mapped part of the largest region must fit
    // the one L2 of the shim's pagetables; checked when the crate compiles.
    const _: () = {
        assert!(GRANT_TABLE + GRANT_FRAMES * 0x1000 <= SHARED_INFO);
        assert!(SHARED_INFO + 0x1000 <= VCPU_BASE);
        assert!(VCPU_BASE.is_multiple_of(0x1000) && VCPU_STRIDE.is_multiple_of(0x1000));
        assert!(l1_pages(super::MAX_VCPUS) <= 512);
    };
}

/// The page at [`layout::vcpu::GUEST_STATE`] of each vCPU block (each vCPU's stub reads
/// its own: `kernel_mode` is per vCPU): what the `syscall` stub needs to answer, at CPL3
/// and without an exit, the one hypercall Linux makes thousands of times with a fixed
/// answer: `VCPUOP_is_up` for each vCPU the domain does not have (it probes every
/// possible CPU at boot, 8192 of them in Debian's build). -ENOENT, as Xen answers.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct GuestStatePage {
    /// 1 while this vCPU's guest kernel runs, 0 in guest user mode (a user `syscall`
    /// must reach the guest kernel, never the fast path). The VMM writes it on every
    /// change.
    pub kernel_mode: u32,
    /// vCPUs of the domain: `is_up` for an id at or above it is -ENOENT. The same in
    /// every block.
    pub nr_vcpus: u32,
    /// Which answers the shim may give inside the VM ([`in_vm`] bits); a clear bit sends
    /// that case through the doorbell to the engine. The VMM chooses them once, from the
    /// host's measured costs (an in-VM path is only worth it where it is cheaper than the
    /// VM exit it saves), and writes the same value in every block.
    pub in_vm: u32,
    /// 1 while this vCPU's guest kernel runs with a virtual IOPL that lets it execute
    /// `cli`/`sti` and port I/O (Xen's `iopl_ok` in guest kernel mode): the engine then
    /// skips `cli`/`sti`, and so may the #GP stub ([`in_vm::IOPL_OPS`]); port I/O then
    /// leaves the VM through the opened I/O bitmap. The VMM writes it on every change.
    pub kernel_io_ok: u32,
}

/// Bits of [`GuestStatePage::in_vm`]: the shim's in-VM answers, each of which the VMM
/// may turn off (the engine then answers the same case through a VM exit).
pub mod in_vm {
    /// `VCPUOP_is_up` for a vCPU the domain does not have, answered at CPL3 by the
    /// `syscall` stub (ring-3 instructions only).
    pub const IS_UP: u32 = 1 << 0;
    /// `mmuext_op` with one `MMUEXT_INVLPG_LOCAL`, done through the ring-0 gate (an
    /// in-VM exception round trip).
    pub const INVLPG_LOCAL: u32 = 1 << 1;
    /// `cli`/`sti` from the guest kernel under its virtual IOPL, skipped by the #GP stub
    /// (a look at the faulting instruction's first byte, a dozen ring-0 instructions on
    /// a path the #GP enters anyway) instead of ringing the trap doorbell. Everything
    /// else goes to the engine. (Port I/O under that IOPL raises no #GP: the VMM opens
    /// the TSS I/O bitmap for it.)
    pub const IOPL_OPS: u32 = 1 << 2;
    /// Every bit this contract version defines.
    pub const ALL: u32 = IS_UP | INVLPG_LOCAL | IOPL_OPS;
}

/// The IDT vector the `syscall` stub enters ring 0 through, for the one thing it cannot
/// do at CPL3: a local `invlpg` (`mmuext_op` with one `MMUEXT_INVLPG_LOCAL`, no done
/// pointer, `DOMID_SELF`). It is #BP's: its gate has DPL 3 anyway, and on kvm_pvm an
/// `int $0x82` from CPL3 raised #UD even through a DPL3 gate. The shim's #BP stub
/// checks where the `int3` came from; the guest's own `int3` goes the ordinary way.
pub const FAST_GATE_VECTOR: u8 = 3;

/// Header at offset 0 of the shim image. All offsets are from the image start.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct ShimHeader {
    /// [`SHIM_MAGIC`].
    pub magic: [u8; 8],
    /// [`CONTRACT_VERSION`].
    pub version: u32,
    /// Size of this header in bytes.
    pub header_size: u32,
    /// Entry of the `syscall` stub (MSR_LSTAR).
    pub syscall_entry: u32,
    /// Address just after the stub's doorbell `out`: where rip points at its exit.
    pub syscall_doorbell_end: u32,
    /// Entry of the apply routine: stores what the VMM posted, flushes, and returns to the
    /// guest through the `TrapFrame`-shaped frame at rsp (as an IDT stub does).
    pub apply_entry: u32,
    /// Address just after the apply routine's [`port::APPLY_MORE`] doorbell.
    pub apply_more_doorbell_end: u32,
    /// The `syscall` stub's reads of guest memory lie in
    /// `syscall_fixup_start..syscall_fixup_end`: a #PF or #GP there is no guest fault, the VMM
    /// resumes the stub at `syscall_slow_path` (the doorbell), whose hypercall then
    /// answers -EFAULT as Xen would.
    pub syscall_fixup_start: u32,
    /// End of the fixup range.
    pub syscall_fixup_end: u32,
    /// The stub's doorbell `out`: the slow path every fast path falls back to.
    pub syscall_slow_path: u32,
    /// Entry of the IDT stub of each vector.
    pub vector_entry: [u32; NR_VECTORS],
    /// A CPL3 trampoline that writes PKRU 0 (`wrpkru` with eax, ecx and edx cleared)
    /// and rings the hypercall doorbell: the VMM runs it, with the guest's registers
    /// saved, where only guest ring 3 can change PKRU (see docs/host-kvm.md).
    pub pkru_reset: u32,
    /// Address just after the trampoline's doorbell `out`.
    pub pkru_reset_doorbell_end: u32,
    /// The #GP stub's read of the byte at the guest's rip (its [`in_vm::IOPL_OPS`] check) lies in
    /// `gp_fixup_start..gp_fixup_end`: a #PF or #GP there (a page another vCPU just
    /// unmapped) is no guest fault; the VMM resumes the stub at `gp_fixup_resume`, which
    /// takes the ordinary #GP path to the engine.
    pub gp_fixup_start: u32,
    /// End of the fixup range.
    pub gp_fixup_end: u32,
    /// Where the VMM resumes the #GP stub after a fault in its fixup range.
    pub gp_fixup_resume: u32,
    /// The ordinary #GP stub (doorbell only): the VMM points the #GP gate here instead
    /// of at `vector_entry[13]` when it turns [`in_vm::IOPL_OPS`] off, so a host where
    /// the in-VM answer does not pay runs none of its checks either.
    pub gp_plain: u32,
    /// One posted store and no flush: entered with rdi = the entry's direct-map address
    /// and rax = its value, rsp at two words holding the guest's rdi and rax (in place
    /// of a [`TrapFrame`]'s vector and error code), the CPU's frame above them.
    pub apply_one: u32,
    /// A full TLB flush and no store: entered with rsp at one word holding the guest's
    /// rax (in place of a [`TrapFrame`]'s error code), the CPU's frame above it.
    pub apply_flush_all: u32,
    /// An `iretq`: where a trap's doorbell resumes, rsp at the CPU's frame, when nothing
    /// waits for the apply routine.
    pub trap_return: u32,
    /// Up to [`MAX_LISTED_STORES`] posted stores and no flush, listed on the ring-0
    /// stack: entered with rcx = their number (at least 1) and rsp at the list, each
    /// store two words (the entry's direct-map address, then its value), followed by
    /// three words holding the guest's rcx, rdi and rax (the last two in place of a
    /// [`TrapFrame`]'s vector and error code), the CPU's frame above them.
    pub apply_list: u32,
    /// The same list followed by a full TLB flush.
    pub apply_list_flush_all: u32,
}

/// Words the IDT stub pushes on the ring-0 stack below the CPU's interrupt frame: at the
/// doorbell, rsp points at this, and the CPU's frame (rip, cs, rflags, rsp, ss) follows.
#[repr(C)]
#[derive(Clone, Copy, Default, Debug, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct TrapFrame {
    /// Vector number pushed by the stub.
    pub vector: u64,
    /// Error code pushed by the CPU, or 0 pushed by the stub.
    pub error_code: u64,
    /// Interrupted rip.
    pub rip: u64,
    /// Interrupted cs.
    pub cs: u64,
    /// Interrupted rflags.
    pub rflags: u64,
    /// Interrupted rsp.
    pub rsp: u64,
    /// Interrupted ss.
    pub ss: u64,
}

/// Stores the VMM posts: the apply routine performs them, in order, from inside the VM,
/// so the host's shadow MMU sees every pagetable change (docs/host-kvm.md).
pub const MAX_POSTED_STORES: usize = ((layout::vcpu::POSTED_SIZE - 0x1000) / 16) as usize;
/// Stores the VMM may list on the ring-0 stack for [`ShimHeader::apply_list`] (16 bytes
/// each, well inside the stack): more, or any single-address flush, take the posting
/// area and the general routine.
pub const MAX_LISTED_STORES: usize = 64;
/// Single-address invalidations one apply can carry.
pub const MAX_POSTED_INVLPG: usize = (0x1000 - 16) / 8;
/// [`PostedHeader::flags`]: ring [`port::APPLY_MORE`] after the stores (more follow).
pub const POSTED_MORE: u32 = 1 << 0;
/// [`PostedHeader::flags`]: flush the whole TLB (reload CR3) after the stores.
pub const POSTED_FLUSH_ALL: u32 = 1 << 1;

/// First page of the posting area.
#[repr(C)]
#[derive(Clone, Copy, FromBytes, IntoBytes, Immutable, KnownLayout)]
pub struct PostedHeader {
    /// Stores that follow the header page.
    pub nr_stores: u32,
    /// `POSTED_*` flags.
    pub flags: u32,
    /// Entries of `invlpg` in use.
    pub nr_invlpg: u32,
    /// Reserved, zero.
    pub _pad: u32,
    /// Addresses to invalidate after the stores (unless the whole TLB is flushed).
    pub invlpg: [u64; MAX_POSTED_INVLPG],
}

/// One posted store: `*va = value`, with `va` in the direct map.
#[repr(C)]
#[derive(
    Clone, Copy, Default, Debug, PartialEq, Eq, FromBytes, IntoBytes, Immutable, KnownLayout,
)]
pub struct PostedStore {
    /// Virtual address (in the shim's direct map) of the 8-byte entry.
    pub va: u64,
    /// Value to store.
    pub value: u64,
}

/// Whether the CPU pushes an error code for an exception vector.
pub const fn vector_has_error_code(vector: u8) -> bool {
    matches!(vector, 8 | 10 | 11 | 12 | 13 | 14 | 17 | 21 | 29 | 30)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_and_frame_sizes() {
        // magic (8), seven u32 offsets before the vector table (28), version and
        // header_size (8), the vector table, then the two PKRU trampoline offsets (8)
        // the #GP stub's fixup range, resume point and plain stub (16), and the two short
        // applies and the trap return (12), the two list applies (8).
        assert_eq!(
            core::mem::size_of::<ShimHeader>(),
            44 + 4 * NR_VECTORS + 8 + 16 + 12 + 8
        );
        assert_eq!(core::mem::size_of::<GuestStatePage>(), 16);
        assert_eq!(core::mem::size_of::<PostedHeader>(), 0x1000);
        assert_eq!(core::mem::size_of::<TrapFrame>(), 56);
    }
}
