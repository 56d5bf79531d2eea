//! Reads of the read-only M2P table at Xen's ABI address, on hosts that cannot map it
//! there.
//!
//! Xen's public header fixes the 64-bit PV M2P at `MACH2PHYS_VIRT_START`
//! (0xffff800000000000, L4 slot 256) up to `MACH2PHYS_VIRT_END`, and guests other than
//! Linux read it there without asking `XENMEM_machphys_mapping`. pvkvm maps the table at
//! `contract::M2P_VA` (slot 257) everywhere, and at slot 256 too where the host lets
//! guest ring 3 use that slot. Where it does not (kvm_pvm keeps slot 256 for itself, and
//! an access there faults with a reserved-bit #PF), the guest's load lands here before
//! the #PF would be bounced: the instruction at rip is decoded and, when it is one of the
//! plain loads guest kernels use on the table (`mov`, `movzx`, `movsx`, `movsxd`, and
//! `cmp`/`test`/`add`/`sub`/`and`/`or`/`xor` with a memory source), performed with the
//! value read through [`Platform::read_m2p`]; rip moves past it.
//!
//! Everything else in the range faults as it would on Xen, whose mapping is present,
//! read-only, user-accessible and NX up to the end of the table and absent after it:
//! a write or an instruction fetch, an instruction not emulated here, and a read past the
//! table's end are bounced as #PF with Xen's error code (present or not by where the
//! access is, the write/fetch bits of the access, never the reserved-bit the host
//! reported); the bounce path sets the user bit from the guest mode as for any #PF.

use xen_abi::xen::selector::FLAT_RING3_CS32;
use xen_abi::xen::{MACH2PHYS_VIRT_END, MACH2PHYS_VIRT_START};

use crate::insn::{self, LoadOp, Mem, Seg, Src};
use crate::ptwr::{self, AluOp, Gpr};
use crate::{guest, GuestRegs, Platform, Vcpu};

/// #PF error code: the page was present.
pub const PFEC_PRESENT: u64 = 1 << 0;
/// #PF error code: the access was a write.
pub const PFEC_WRITE: u64 = 1 << 1;
/// #PF error code: the access was an instruction fetch.
pub const PFEC_INSN_FETCH: u64 = 1 << 4;

/// What became of a #PF at an address in Xen's M2P range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum M2pFault {
    /// The load was performed; resume at the updated rip.
    Emulated,
    /// Bounce a #PF at `cr2` with `code` (user bit still to be set from the guest mode).
    Fault {
        /// Faulting address to report.
        cr2: u64,
        /// Error code Xen would give, without the user bit.
        code: u64,
    },
}

/// Whether `va` lies in Xen's read-only M2P area.
pub fn in_abi_range(va: u64) -> bool {
    (MACH2PHYS_VIRT_START..MACH2PHYS_VIRT_END).contains(&va)
}

/// Handles a #PF with error code `ec` at `cr2`, which [`in_abi_range`] accepted.
pub fn page_fault(
    vcpu: &Vcpu,
    regs: &mut GuestRegs,
    cr2: u64,
    ec: u64,
    p: &dyn Platform,
) -> M2pFault {
    let access = ec & (PFEC_WRITE | PFEC_INSN_FETCH);
    let as_on_xen = M2pFault::Fault {
        cr2,
        code: present(p, cr2) | access,
    };
    // Writes and fetches fault on Xen too: its mapping is read-only and NX.
    if access != 0 || regs.cs & 0xffff == u64::from(FLAT_RING3_CS32) {
        return as_on_xen;
    }
    let mut insn = [0u8; 15];
    let mut len = insn.len();
    if guest::copy_from_guest(vcpu, p, regs.rip, &mut insn).is_err() {
        // The instruction may end just before an unmapped page.
        len = ((0x1000 - (regs.rip & 0xfff)) as usize).min(len);
        if guest::copy_from_guest(vcpu, p, regs.rip, &mut insn[..len]).is_err() {
            return as_on_xen;
        }
    }
    let hw = vcpu.hw_state();
    let Some(load) = decode(&insn[..len], regs, hw.fs_base, hw.gs_base) else {
        return as_on_xen;
    };
    // Only the access that faulted is served: an instruction whose memory operand is
    // elsewhere (or that touches memory twice) is not one of the loads handled here.
    let end = load.ea.wrapping_add(u64::from(load.size));
    if !(load.ea..end).contains(&cr2) || !in_abi_range(load.ea) || end > MACH2PHYS_VIRT_END {
        return as_on_xen;
    }
    let mut buf = [0u8; 8];
    let bytes = &mut buf[..usize::from(load.size)];
    if p.read_m2p(load.ea - MACH2PHYS_VIRT_START, bytes).is_err() {
        // Past the table's end: not present, as Xen's unmapped tail. An access that
        // starts in the table's last page faults at the first byte beyond it (the table
        // is whole pages), as the CPU reports a split access.
        let first = if present(p, load.ea) != 0 {
            (load.ea | 0xfff) + 1
        } else {
            load.ea
        };
        return M2pFault::Fault {
            cr2: first,
            code: 0,
        };
    }
    load.complete(regs, u64::from_le_bytes(buf));
    M2pFault::Emulated
}

/// [`PFEC_PRESENT`] when the page holding `va` is part of the table.
fn present(p: &dyn Platform, va: u64) -> u64 {
    let mut b = [0u8; 1];
    match p.read_m2p(va.wrapping_sub(MACH2PHYS_VIRT_START), &mut b) {
        Ok(()) => PFEC_PRESENT,
        Err(_) => 0,
    }
}

/// What the instruction does with the value it loads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `mov`, `movzx`: the register receives the value (zero-extended).
    Load(Gpr),
    /// `movsx`, `movsxd`: the register receives the value sign-extended.
    SignExtend(Gpr),
    /// `reg op mem`: flags, and the result into the register unless `dst` is None
    /// (`cmp`).
    RegOpMem { op: AluOp, reg: Gpr, dst: bool },
    /// `mem op src` without a store (`cmp`, `test` with the memory operand first).
    MemOpSrc { op: AluOp, src: u64 },
}

/// A decoded load from the M2P range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Load {
    /// Linear address of the memory operand.
    ea: u64,
    /// Its width in bytes: 1, 2, 4 or 8.
    size: u8,
    /// Where execution continues.
    next_rip: u64,
    kind: Kind,
}

/// Decodes the instruction in `insn` (at `regs.rip`) as one of the loads this module
/// performs ([`insn::decode_load`], which allocates nothing); None for anything else.
fn decode(insn: &[u8], regs: &GuestRegs, fs_base: u64, gs_base: u64) -> Option<Load> {
    let l = insn::decode_load(insn).ok()?;
    let reg = match l.src {
        Src::Reg(r) => Some(r),
        _ => None,
    };
    let kind = match l.op {
        LoadOp::Load => Kind::Load(reg?),
        LoadOp::SignExtend => Kind::SignExtend(reg?),
        LoadOp::RegOpMem { op, dst } => Kind::RegOpMem { op, reg: reg?, dst },
        LoadOp::MemOpSrc { op } => Kind::MemOpSrc {
            op,
            src: match l.src {
                Src::Reg(r) => ptwr::read_gpr(regs, r),
                Src::Imm(v) => v,
                Src::None => return None,
            },
        },
    };
    let next_rip = regs.rip.wrapping_add(u64::from(l.len));
    Some(Load {
        ea: effective_address(&l.mem, regs, next_rip, fs_base, gs_base),
        size: l.size,
        next_rip,
        kind,
    })
}

/// The linear address of a memory operand: segment base (FS/GS only, as in 64-bit
/// mode) plus the addressing mode over the guest's registers, in 32 bits with an
/// address-size prefix.
fn effective_address(
    mem: &Mem,
    regs: &GuestRegs,
    next_rip: u64,
    fs_base: u64,
    gs_base: u64,
) -> u64 {
    let narrow = |v: u64| if mem.addr32 { v & 0xffff_ffff } else { v };
    let reg = |n: u8| {
        let mut copy = *regs;
        narrow(*copy.gpr_mut(n))
    };
    let mut a = if mem.rip {
        next_rip.wrapping_add(mem.disp)
    } else {
        mem.disp
    };
    if let Some(b) = mem.base {
        a = a.wrapping_add(reg(b));
    }
    if let Some(i) = mem.index {
        a = a.wrapping_add(reg(i) << mem.scale);
    }
    let seg = match mem.seg {
        Some(Seg::Fs) => fs_base,
        Some(Seg::Gs) => gs_base,
        None => 0,
    };
    narrow(a).wrapping_add(seg)
}

impl Load {
    /// Applies the instruction's effect with the loaded `raw` bytes (little-endian,
    /// zero-padded) and moves rip past it.
    fn complete(&self, regs: &mut GuestRegs, raw: u64) {
        let width = self.size;
        let value = raw & ptwr::width_mask(width);
        match self.kind {
            Kind::Load(reg) => ptwr::write_gpr(regs, reg, value),
            Kind::SignExtend(reg) => {
                let shift = 64 - u32::from(width) * 8;
                ptwr::write_gpr(regs, reg, (((value << shift) as i64) >> shift) as u64);
            }
            Kind::RegOpMem { op, reg, dst } => {
                let (r, flags) = ptwr::alu(op, ptwr::read_gpr(regs, reg), value, width);
                ptwr::set_flags(regs, ptwr::ARITH_FLAGS, flags);
                if dst {
                    ptwr::write_gpr(regs, reg, r);
                }
            }
            Kind::MemOpSrc { op, src } => {
                let (_, flags) = ptwr::alu(op, value, src, width);
                ptwr::set_flags(regs, ptwr::ARITH_FLAGS, flags);
            }
        }
        regs.rip = self.next_rip;
    }
}

/// The decoder this module used before [`insn::decode_load`] (iced-x86): the reference
/// the differential property test holds the new one to.
#[cfg(test)]
mod iced_reference {
    use super::*;
    use crate::ptwr::iced_reference::{decoder64, gpr_number, gpr_operand, source};
    use iced_x86::{Instruction, Mnemonic, OpKind, Register};

    /// Decodes the instruction in `insn` (at `regs.rip`) as one of the loads this module
    /// performs; None for anything else.
    pub(super) fn decode_iced(
        insn: &[u8],
        regs: &GuestRegs,
        fs_base: u64,
        gs_base: u64,
    ) -> Option<Load> {
        let mut decoder = decoder64(insn, regs.rip)?;
        let instr = decoder.decode();
        if instr.is_invalid() || instr.has_lock_prefix() || instr.op_count() != 2 {
            return None;
        }
        let mem = (0..2).find(|&n| instr.op_kind(n) == OpKind::Memory)?;
        let size = instr.memory_size().size();
        if !matches!(size, 1 | 2 | 4 | 8) {
            return None;
        }
        let alu = |m| match m {
            Mnemonic::Add => Some(AluOp::Add),
            Mnemonic::Sub | Mnemonic::Cmp => Some(AluOp::Sub),
            Mnemonic::And | Mnemonic::Test => Some(AluOp::And),
            Mnemonic::Or => Some(AluOp::Or),
            Mnemonic::Xor => Some(AluOp::Xor),
            _ => None,
        };
        let kind = match (instr.mnemonic(), mem) {
            (Mnemonic::Mov | Mnemonic::Movzx, 1) => Kind::Load(gpr_operand(&instr, 0).ok()?),
            (Mnemonic::Movsx | Mnemonic::Movsxd, 1) => {
                Kind::SignExtend(gpr_operand(&instr, 0).ok()?)
            }
            (m @ (Mnemonic::Add | Mnemonic::Sub | Mnemonic::And | Mnemonic::Or), 1)
            | (m @ (Mnemonic::Xor | Mnemonic::Cmp), 1) => Kind::RegOpMem {
                op: alu(m)?,
                reg: gpr_operand(&instr, 0).ok()?,
                dst: m != Mnemonic::Cmp,
            },
            (m @ (Mnemonic::Cmp | Mnemonic::Test), 0) => Kind::MemOpSrc {
                op: alu(m)?,
                src: source(&instr, regs).ok()?,
            },
            _ => return None,
        };
        let ea = effective_address(&instr, mem, regs, fs_base, gs_base)?;
        Some(Load {
            ea,
            size: size as u8,
            next_rip: instr.next_ip(),
            kind,
        })
    }

    /// The linear address of memory operand `n`: segment base (FS/GS only, as in 64-bit
    /// mode) plus the addressing mode over the guest's registers.
    fn effective_address(
        instr: &Instruction,
        n: u32,
        regs: &GuestRegs,
        fs_base: u64,
        gs_base: u64,
    ) -> Option<u64> {
        instr.virtual_address(n, 0, |reg, _, _| match reg {
            Register::FS => Some(fs_base),
            Register::GS => Some(gs_base),
            Register::ES | Register::CS | Register::SS | Register::DS => Some(0),
            r if r.is_gpr() => {
                let mut copy = *regs;
                let full = *copy.gpr_mut(gpr_number(r.full_register())?);
                Some(full & ptwr::width_mask(r.size() as u8))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bounce::{exception, Trap};
    use crate::stats::emulated;
    use crate::testutil::*;
    use crate::{Mode, Outcome, Stats};
    use xen_abi::xen::TrapInfo;

    const M2P: u64 = MACH2PHYS_VIRT_START;
    /// Entries of the test table: two pages.
    const ENTRIES: u64 = 1024;
    /// An entry whose top bits are set (sign extension shows).
    const SIGNED_MFN: u64 = 5;
    const SIGNED: u64 = 0x8765_4321_fedc_ba98;
    /// An entry a machphys update made invalid.
    const INVALID_MFN: u64 = 6;
    const PF_HANDLER: u64 = 0xffff_ffff_8100_1000;
    /// What this host reports for a ring-3 read in slot 256: present, reserved bit, user.
    const RSVD_READ: u64 = 0b1101;

    fn platform() -> (Vcpu, crate::Domain, FakePlatform) {
        let (mut v, d, mut p) = setup();
        p.m2p = (0..ENTRIES)
            .map(|mfn| match mfn {
                SIGNED_MFN => SIGNED,
                INVALID_MFN => u64::MAX,
                m => m,
            })
            .flat_map(u64::to_le_bytes)
            .collect();
        v.trap_table[14] = TrapInfo {
            vector: 14,
            flags: 0,
            cs: 0xe033,
            _pad: 0,
            address: PF_HANDLER,
        };
        (v, d, p)
    }

    /// Runs `insn` (placed at DATA_VA) with `r` through the engine's #PF entry.
    fn run(
        v: &mut Vcpu,
        d: &mut crate::Domain,
        p: &mut FakePlatform,
        r: &mut GuestRegs,
        insn: &[u8],
        cr2: u64,
        ec: u64,
    ) -> (Outcome, Stats) {
        p.mem[DATA_GPA as usize..DATA_GPA as usize + insn.len()].copy_from_slice(insn);
        r.rip = DATA_VA;
        let mut s = Stats::new();
        let trap = Trap {
            vector: 14,
            error_code: Some(ec),
            cr2,
        };
        (exception(v, d, r, trap, p, &mut s), s)
    }

    /// Registers pointing rbx at Xen's M2P and rdi at `mfn`.
    fn regs(mfn: u64) -> GuestRegs {
        GuestRegs {
            rbx: M2P,
            rdi: mfn,
            rflags: 0x202,
            ..distinct_regs()
        }
    }

    /// Emulates `insn` reading entry `mfn` (+`off`) and checks rip and the counter.
    fn emulate(insn: &[u8], r: &mut GuestRegs, mfn: u64, off: u64) {
        let (mut v, mut d, mut p) = platform();
        let (out, s) = run(
            &mut v,
            &mut d,
            &mut p,
            r,
            insn,
            M2P + mfn * 8 + off,
            RSVD_READ,
        );
        assert_eq!(out, Outcome::Resume);
        assert_eq!(
            r.rip,
            DATA_VA + insn.len() as u64,
            "rip past the instruction"
        );
        assert_eq!(s.emulated[emulated::M2P_READ], 1);
        assert_eq!(s.bounces[14], 0);
    }

    /// The bounced #PF: (cr2 in vcpu_info, error code in the frame).
    fn bounced(v: &Vcpu, p: &FakePlatform, r: &GuestRegs, s: &Stats) -> (u64, u64) {
        assert_eq!(s.bounces[14], 1, "a #PF was bounced");
        assert_eq!(s.emulated[emulated::M2P_READ], 0);
        assert_eq!(r.rip, PF_HANDLER);
        let mut ec = [0u8; 8];
        guest::copy_from_guest(v, p, r.rsp + 16, &mut ec).unwrap();
        (p.r64(SHARED_INFO + 16), u64::from_le_bytes(ec))
    }

    /// Everything but the listed fields, rip and rflags stays as it was.
    fn others_unchanged(before: &GuestRegs, after: &GuestRegs, changed: &[u8]) {
        let (mut a, mut b) = (*after, *before);
        for &n in changed {
            *a.gpr_mut(n) = 0;
            *b.gpr_mut(n) = 0;
        }
        (a.rip, a.rflags) = (b.rip, b.rflags);
        assert_eq!(a, b);
    }

    #[test]
    fn mov_of_every_width() {
        let mut r = regs(0x123);
        let before = r;
        emulate(&[0x48, 0x8b, 0x04, 0xfb], &mut r, 0x123, 0); // mov rax, [rbx+rdi*8]
        assert_eq!(r.rax, 0x123);
        assert_eq!(r.rflags, before.rflags, "mov leaves the flags");
        others_unchanged(&before, &r, &[0]);

        let mut r = regs(SIGNED_MFN);
        r.rcx = u64::MAX;
        emulate(&[0x8b, 0x0c, 0xfb], &mut r, SIGNED_MFN, 0); // mov ecx, [rbx+rdi*8]
        assert_eq!(r.rcx, SIGNED & 0xffff_ffff, "32-bit load zero-extends");

        let mut r = regs(SIGNED_MFN);
        r.rdx = 0x1111_2222_3333_4444;
        emulate(&[0x66, 0x8b, 0x14, 0xfb], &mut r, SIGNED_MFN, 0); // mov dx, [...]
        assert_eq!(r.rdx, 0x1111_2222_3333_ba98, "16-bit load keeps the rest");

        let mut r = regs(SIGNED_MFN);
        r.rax = 0x1111_2222_3333_4444;
        emulate(&[0x8a, 0x64, 0xfb, 0x01], &mut r, SIGNED_MFN, 1); // mov ah, [...+1]
        assert_eq!(r.rax, 0x1111_2222_3333_ba44, "ah is bits 8..16");
    }

    #[test]
    fn movzx_movsx_movsxd() {
        let mut r = regs(SIGNED_MFN);
        r.rsi = u64::MAX;
        emulate(&[0x0f, 0xb6, 0x74, 0xfb, 0x01], &mut r, SIGNED_MFN, 1); // movzx esi, byte
        assert_eq!(r.rsi, 0xba);

        let mut r = regs(SIGNED_MFN);
        emulate(&[0x4c, 0x0f, 0xb7, 0x04, 0xfb], &mut r, SIGNED_MFN, 0); // movzx r8, word
        assert_eq!(r.r8, 0xba98);

        let mut r = regs(SIGNED_MFN);
        emulate(&[0x4c, 0x63, 0x4c, 0xfb, 0x04], &mut r, SIGNED_MFN, 4); // movsxd r9, [+4]
        assert_eq!(r.r9, 0xffff_ffff_8765_4321);

        let mut r = regs(0x3ff);
        emulate(&[0x4c, 0x63, 0x4c, 0xfb, 0x04], &mut r, 0x3ff, 4);
        assert_eq!(r.r9, 0, "positive dword: upper half clear");

        let mut r = regs(SIGNED_MFN);
        emulate(&[0x4c, 0x0f, 0xbf, 0x54, 0xfb, 0x06], &mut r, SIGNED_MFN, 6); // movsx r10, word
        assert_eq!(r.r10, 0xffff_ffff_ffff_8765);

        let mut r = regs(SIGNED_MFN);
        r.r11 = u64::MAX;
        emulate(&[0x44, 0x0f, 0xbe, 0x5c, 0xfb, 0x07], &mut r, SIGNED_MFN, 7); // movsx r11d, byte
        assert_eq!(
            r.r11, 0xffff_ff87,
            "sign-extended to 32 bits, then zero-extended"
        );
    }

    #[test]
    fn cmp_and_test_set_flags_only() {
        const CF: u64 = 1;
        const ZF: u64 = 1 << 6;
        const SF: u64 = 1 << 7;
        let mut r = regs(0x40);
        r.rax = 0x40;
        let before = r;
        emulate(&[0x48, 0x3b, 0x04, 0xfb], &mut r, 0x40, 0); // cmp rax, [...]
        assert_eq!(r.rflags & (ZF | CF | SF), ZF);
        others_unchanged(&before, &r, &[]);

        let mut r = regs(0x40);
        r.rax = 0x3f;
        emulate(&[0x48, 0x3b, 0x04, 0xfb], &mut r, 0x40, 0);
        assert_eq!(r.rflags & (ZF | CF | SF), CF | SF, "0x3f - 0x40 borrows");

        // cmp qword [...], -1: the INVALID_M2P_ENTRY check.
        let mut r = regs(INVALID_MFN);
        emulate(&[0x48, 0x83, 0x3c, 0xfb, 0xff], &mut r, INVALID_MFN, 0);
        assert_eq!(r.rflags & ZF, ZF);
        let mut r = regs(0x41);
        emulate(&[0x48, 0x83, 0x3c, 0xfb, 0xff], &mut r, 0x41, 0);
        assert_eq!(r.rflags & (ZF | CF), CF);

        // cmp [...], r13
        let mut r = regs(0x41);
        r.r13 = 0x41;
        emulate(&[0x4c, 0x39, 0x2c, 0xfb], &mut r, 0x41, 0);
        assert_eq!(r.rflags & ZF, ZF);

        // test byte [...], 1
        let mut r = regs(0x41);
        emulate(&[0xf6, 0x04, 0xfb, 0x01], &mut r, 0x41, 0);
        assert_eq!(r.rflags & ZF, 0);
        let mut r = regs(0x40);
        let before = r;
        emulate(&[0xf6, 0x04, 0xfb, 0x01], &mut r, 0x40, 0);
        assert_eq!(r.rflags & ZF, ZF);
        others_unchanged(&before, &r, &[]);
    }

    #[test]
    fn alu_with_a_memory_source() {
        let cases: &[(&[u8], u64)] = &[
            (&[0x48, 0x03, 0x14, 0xfb], 0x1000 + 0x80), // add rdx, [...]
            (&[0x2b, 0x14, 0xfb], 0x1000 - 0x80),       // sub edx, [...]
            (&[0x48, 0x23, 0x14, 0xfb], 0x1000 & 0x80), // and rdx, [...]
            (&[0x48, 0x0b, 0x14, 0xfb], 0x1000 | 0x80), // or rdx, [...]
            (&[0x48, 0x33, 0x14, 0xfb], 0x1000 ^ 0x80), // xor rdx, [...]
        ];
        for &(insn, want) in cases {
            let mut r = regs(0x80);
            r.rdx = 0x1000;
            let before = r;
            emulate(insn, &mut r, 0x80, 0);
            assert_eq!(r.rdx, want, "{insn:x?}");
            others_unchanged(&before, &r, &[2]);
        }
        let mut r = regs(0x80);
        r.rdx = 0x80;
        emulate(&[0x48, 0x33, 0x14, 0xfb], &mut r, 0x80, 0);
        assert_eq!(r.rflags & (1 << 6), 1 << 6, "xor to zero sets ZF");
    }

    #[test]
    fn segment_base_and_page_crossing() {
        // mov rax, gs:[rdi*8]: the kernel's GS base points at the table.
        let (mut v, mut d, mut p) = platform();
        v.gs_base_kernel = M2P;
        let mut r = regs(0x200);
        let insn = [0x65, 0x48, 0x8b, 0x04, 0xfd, 0, 0, 0, 0];
        let (out, _) = run(
            &mut v,
            &mut d,
            &mut p,
            &mut r,
            &insn,
            M2P + 0x1000,
            RSVD_READ,
        );
        assert_eq!(out, Outcome::Resume);
        assert_eq!(r.rax, 0x200);

        // mov rax, [rbx+0xffc]: half in each page of the table.
        let mut r = regs(0);
        emulate(&[0x48, 0x8b, 0x83, 0xfc, 0x0f, 0, 0], &mut r, 0, 0xffc);
        assert_eq!(
            r.rax,
            0x200 << 32,
            "entry 0x1ff's high half (0), entry 0x200's low half"
        );
    }

    #[test]
    fn reads_follow_machphys_updates() {
        let (mut v, mut d, mut p) = platform();
        p.m2p[0x30 * 8..0x31 * 8].copy_from_slice(&0x77u64.to_le_bytes());
        let mut r = regs(0x30);
        let (out, _) = run(
            &mut v,
            &mut d,
            &mut p,
            &mut r,
            &[0x48, 0x8b, 0x04, 0xfb],
            M2P + 0x180,
            RSVD_READ,
        );
        assert_eq!(out, Outcome::Resume);
        assert_eq!(r.rax, 0x77);
    }

    #[test]
    fn writes_fault_as_on_a_read_only_mapping() {
        let (mut v, mut d, mut p) = platform();
        let mut r = regs(0);
        // mov [rbx], rax: present, write, reserved, user as this host reports it.
        let (out, s) = run(
            &mut v,
            &mut d,
            &mut p,
            &mut r,
            &[0x48, 0x89, 0x03],
            M2P,
            0b1111,
        );
        assert_eq!(out, Outcome::Resume);
        assert_eq!(bounced(&v, &p, &r, &s), (M2P, PFEC_PRESENT | PFEC_WRITE));
        assert_eq!(p.m2p[..8], [0; 8], "nothing written");

        // From guest user mode the user bit is set, as Xen's pv_inject_event does.
        let (mut v, mut d, mut p) = platform();
        v.kernel_sp = KSTACK_TOP;
        v.user_cr3 = USER_L4;
        v.toggle_guest_mode();
        assert_eq!(v.mode, Mode::User);
        let mut r = regs(0);
        let (_, s) = run(
            &mut v,
            &mut d,
            &mut p,
            &mut r,
            &[0x48, 0x89, 0x03],
            M2P + 8 * ENTRIES,
            0b1111,
        );
        assert_eq!(
            bounced(&v, &p, &r, &s),
            (M2P + 8 * ENTRIES, PFEC_WRITE | 4),
            "a write past the table: not present"
        );
    }

    #[test]
    fn fetches_fault() {
        let (mut v, mut d, mut p) = platform();
        let mut r = regs(0);
        let mut s = Stats::new();
        r.rip = M2P + 0x10;
        let trap = Trap {
            vector: 14,
            error_code: Some(0b11101),
            cr2: M2P + 0x10,
        };
        assert_eq!(
            exception(&mut v, &mut d, &mut r, trap, &mut p, &mut s),
            Outcome::Resume
        );
        assert_eq!(
            bounced(&v, &p, &r, &s),
            (M2P + 0x10, PFEC_PRESENT | PFEC_INSN_FETCH)
        );
    }

    #[test]
    fn reads_past_the_table_fault_not_present() {
        let (mut v, mut d, mut p) = platform();
        let mut r = regs(ENTRIES);
        let (_, s) = run(
            &mut v,
            &mut d,
            &mut p,
            &mut r,
            &[0x48, 0x8b, 0x04, 0xfb],
            M2P + 8 * ENTRIES,
            RSVD_READ,
        );
        assert_eq!(bounced(&v, &p, &r, &s), (M2P + 8 * ENTRIES, 0));

        // Far beyond (still in Xen's range).
        let (mut v, mut d, mut p) = platform();
        let mut r = regs(1 << 30);
        let far = M2P + (8 << 30);
        let (_, s) = run(
            &mut v,
            &mut d,
            &mut p,
            &mut r,
            &[0x48, 0x8b, 0x04, 0xfb],
            far,
            RSVD_READ,
        );
        assert_eq!(bounced(&v, &p, &r, &s), (far, 0));

        // An 8-byte read of the table's last 4 bytes and 4 beyond: faults at the end.
        let (mut v, mut d, mut p) = platform();
        let mut r = regs(0);
        r.rbx = M2P + 8 * ENTRIES - 4;
        let (_, s) = run(
            &mut v,
            &mut d,
            &mut p,
            &mut r,
            &[0x48, 0x8b, 0x03],
            M2P + 8 * ENTRIES - 4,
            RSVD_READ,
        );
        assert_eq!(bounced(&v, &p, &r, &s), (M2P + 8 * ENTRIES, 0));
        assert_eq!(r.rax, distinct_regs().rax, "nothing loaded");
    }

    #[test]
    fn other_instructions_are_bounced() {
        let cases: &[&[u8]] = &[
            &[0xff, 0x33],                   // push qword [rbx]: a second access
            &[0xf3, 0x0f, 0x6f, 0x03],       // movdqu xmm0, [rbx]
            &[0xf0, 0x48, 0x83, 0x03, 0x01], // lock add qword [rbx], 1
            &[0x0f, 0x0b],                   // ud2
            &[0x48],                         // truncated
        ];
        for &insn in cases {
            let (mut v, mut d, mut p) = platform();
            let mut r = regs(0);
            let (out, s) = run(&mut v, &mut d, &mut p, &mut r, insn, M2P, RSVD_READ);
            assert_eq!(out, Outcome::Resume);
            assert_eq!(bounced(&v, &p, &r, &s), (M2P, PFEC_PRESENT), "{insn:x?}");
        }
        // A load whose operand is not at CR2 (the fault was another access).
        let (mut v, mut d, mut p) = platform();
        let mut r = regs(0);
        let (_, s) = run(
            &mut v,
            &mut d,
            &mut p,
            &mut r,
            &[0x4d, 0x8b, 0x3c, 0x24],
            M2P,
            RSVD_READ,
        );
        assert_eq!(bounced(&v, &p, &r, &s), (M2P, PFEC_PRESENT));
        // No table at all (a host without one): reads fault not present.
        let (mut v, mut d, mut p) = platform();
        p.m2p.clear();
        let mut r = regs(0);
        let (_, s) = run(
            &mut v,
            &mut d,
            &mut p,
            &mut r,
            &[0x48, 0x8b, 0x04, 0xfb],
            M2P,
            RSVD_READ,
        );
        assert_eq!(bounced(&v, &p, &r, &s), (M2P, 0));
    }

    #[test]
    fn faults_outside_the_range_are_untouched() {
        assert!(in_abi_range(M2P));
        assert!(in_abi_range(MACH2PHYS_VIRT_END - 1));
        assert!(!in_abi_range(MACH2PHYS_VIRT_END));
        assert!(!in_abi_range(xen_abi::contract::M2P_VA));
        assert!(!in_abi_range(M2P - 1));
    }
}

/// [`decode`] against the iced-based decoder it replaced, on the accepted forms with
/// random prefixes and operand bytes and on random bytes.
#[cfg(test)]
mod differential {
    extern crate std;

    use super::iced_reference::decode_iced;
    use super::*;
    use crate::insn::tests::regs_from;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// Every accepted opcode, and neighbours that are not accepted.
    const OPCODES: [&[u8]; 42] = [
        &[0x8a],
        &[0x8b],
        &[0xa0],
        &[0xa1],
        &[0x63],
        &[0x0f, 0xb6],
        &[0x0f, 0xb7],
        &[0x0f, 0xbe],
        &[0x0f, 0xbf],
        &[0x02],
        &[0x03],
        &[0x0a],
        &[0x0b],
        &[0x22],
        &[0x23],
        &[0x2a],
        &[0x2b],
        &[0x32],
        &[0x33],
        &[0x3a],
        &[0x3b],
        &[0x38],
        &[0x39],
        &[0x84],
        &[0x85],
        &[0x80],
        &[0x81],
        &[0x83],
        &[0xf6],
        &[0xf7],
        // Not accepted.
        &[0x88],
        &[0x89],
        &[0x8e],
        &[0x12],
        &[0x13],
        &[0x1a],
        &[0x8d],
        &[0xa2],
        &[0xff],
        &[0x0f, 0xb8],
        &[0x0f, 0xbc],
        &[0x0f, 0xaf],
    ];

    fn form() -> impl Strategy<Value = Vec<u8>> {
        crate::insn::tests::form_with(&OPCODES)
    }

    fn check(insn: &[u8], regs: &GuestRegs, fs: u64, gs: u64) -> Result<(), TestCaseError> {
        let new = decode(insn, regs, fs, gs);
        let reference = decode_iced(insn, regs, fs, gs);
        prop_assert_eq!(new, reference, "{:02x?}", insn);
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        #[test]
        fn same_as_iced_on_forms(
            insn in form(),
            gprs in any::<[u64; 16]>(),
            rip in prop_oneof![Just(0xffff_ffff_8100_1000u64), any::<u64>()],
            fs in any::<u64>(),
            gs in any::<u64>(),
        ) {
            check(&insn, &regs_from(&gprs, rip), fs, gs)?;
        }

        #[test]
        fn same_as_iced_on_random_bytes(
            insn in proptest::collection::vec(any::<u8>(), 0..=15),
            gprs in any::<[u64; 16]>(),
            fs in any::<u64>(),
            gs in any::<u64>(),
        ) {
            check(&insn, &regs_from(&gprs, 0xffff_ffff_8100_1000), fs, gs)?;
        }

        #[test]
        fn hostile_bytes_are_bounded(insn in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(l) = insn::decode_load(&insn) {
                prop_assert!(usize::from(l.len) <= insn::MAX_LEN && usize::from(l.len) <= insn.len());
            }
        }
    }

    /// Not vacuous: many generated forms are accepted.
    #[test]
    fn forms_are_accepted_often() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let regs = regs_from(&[7; 16], 0xffff_ffff_8100_1000);
        let ok = (0..5000)
            .filter(|_| {
                let insn = form().new_tree(&mut runner).unwrap().current();
                decode(&insn, &regs, 0, 0).is_some()
            })
            .count();
        assert!(ok > 1000, "{ok}");
    }
}
