//! Writable pagetables: emulating a guest kernel's direct write to one of its (read-only
//! mapped) L1 pagetable entries, as Xen does in `xen/arch/x86/pv/ro-page-fault.c`
//! (`ptwr_emulated_update` behind the `write`/`cmpxchg` hooks of its x86 emulator).
//!
//! A PV kernel runs at CPL3 with its pagetables mapped read-only, so a store such as
//! Linux's `ptep_get_and_clear` (`xchg`), `ptep_set_wrprotect` (`lock andb $~2`),
//! `ptep_test_and_clear_young` (`lock btr $5`), a plain `mov` or a `cmpxchg` raises
//! #PF(present|write). The host reads the 8-byte entry that contains CR2 and calls
//! [`decode`], which says what the instruction wants to store there ([`PtwrOp`]). The
//! host validates [`PtwrOp::new`] like an `mmu_update` of that entry, performs the write
//! (conditionally when [`PtwrOp::cmpxchg_old`] is set) and then calls
//! [`PtwrOp::complete`], which applies the instruction's register and flag effects and
//! moves rip past it. Any error leads the host to bounce the #PF to the guest, as Xen
//! does when its emulation is unhandleable.
//!
//! The sequence the host follows:
//!
//! ```text
//! old = read the 8 bytes at cr2 & !7            (guest-physical, through the L1 mapping)
//! op  = decode(insn, regs, cr2, old)?           (error: bounce the #PF)
//! if !op.write        { op.complete(regs, old, false); resume }
//! validate op.new like an L1 entry update       (refused: bounce the #PF)
//! match op.cmpxchg_old {
//!     None      => { store op.new; op.complete(regs, old, true) }
//!     Some(exp) => match atomic compare-exchange(entry, exp, op.new) {
//!         Ok            => op.complete(regs, exp, true),
//!         Err(actual) if op.must_retry(actual) => resume without completing (re-executes),
//!         Err(actual)   => op.complete(regs, actual, false),
//!     }
//! }
//! ```
//!
//! The address comes from CR2, never from the instruction's addressing mode (so segment
//! bases and index registers need not be known); the operand width decides how many
//! bytes of the entry are written. Like Xen, only naturally aligned accesses of 1, 2, 4 or
//! 8 bytes are emulated, and a narrower write is merged into the entry's other bytes.
//! Instructions are decoded as 64-bit code.

use crate::insn::{self, InsnError, Src, StoreOp};
use crate::GuestRegs;

/// RFLAGS.CF.
pub(crate) const CF: u64 = 1 << 0;
/// RFLAGS.PF.
pub(crate) const PF: u64 = 1 << 2;
/// RFLAGS.AF.
pub(crate) const AF: u64 = 1 << 4;
/// RFLAGS.ZF.
pub(crate) const ZF: u64 = 1 << 6;
/// RFLAGS.SF.
pub(crate) const SF: u64 = 1 << 7;
/// RFLAGS.OF.
pub(crate) const OF: u64 = 1 << 11;
/// The arithmetic flags an ALU instruction defines.
pub(crate) const ARITH_FLAGS: u64 = CF | PF | AF | ZF | SF | OF;

/// Why the faulting instruction is not emulated. Every case leads the host to deliver the
/// #PF to the guest, as Xen does when `x86_emulate` returns `X86EMUL_UNHANDLEABLE`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PtwrError {
    /// Not one of the stores this module emulates (`crate::insn`): an instruction that
    /// does not write memory (Xen's `pv_emul_is_mem_write` check), writes it in another
    /// way, or is not valid.
    Unsupported(&'static str),
    /// The access is not naturally aligned (Xen: "bad access").
    Misaligned,
    /// The access runs past the end of the 8-byte entry containing CR2.
    CrossesEntry,
    /// The bytes end before the instruction does (fetch up to 15 bytes).
    Truncated,
}

/// A locked or plain read-modify-write ALU operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum AluOp {
    And,
    Or,
    Xor,
    Add,
    Sub,
}

/// A bit-test-and-modify operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BitOp {
    Set,
    Reset,
    Complement,
}

/// A general register operand, as a slot of [`GuestRegs`] plus its part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gpr {
    /// Encoding number of the full register: 0 = rax ... 15 = r15.
    pub(crate) num: u8,
    /// Width in bytes (1, 2, 4 or 8).
    pub(crate) size: u8,
    /// ah, ch, dh or bh: bits 8..16 of the full register.
    pub(crate) high8: bool,
}

/// What the instruction does, beyond the store itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// `mov`/`movnti`: no register or flag effect.
    Mov,
    /// `xchg`: the register receives the old memory operand.
    Xchg { reg: Gpr },
    /// `and`/`or`/`xor`/`add`/`sub` with this (width-masked) source: flags.
    Alu { op: AluOp, src: u64 },
    /// `bts`/`btr`/`btc` of bit `bit` of the operand: CF.
    Bit { op: BitOp, bit: u32 },
    /// `cmpxchg`: `acc` is the accumulator (width-masked) it compares with.
    Cmpxchg { acc: u64 },
    /// `cmpxchg8b`.
    Cmpxchg8b,
}

/// What a faulting instruction does to the 8-byte pagetable entry at [`PtwrOp::pte_addr`],
/// and how to finish it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PtwrOp {
    /// Linear address of the 8-byte entry: CR2 rounded down to 8.
    pub pte_addr: u64,
    /// The full 8-byte value to store (a narrower write merged into the entry's other
    /// bytes as they were in the `old` given to [`decode`]).
    pub new: u64,
    /// `Some(expected)`: the store is conditional and must be atomic: store [`Self::new`]
    /// only if the entry still equals `expected` (which is the `old` given to [`decode`]).
    /// Set for `cmpxchg`/`cmpxchg8b` and for locked read-modify-writes (a `lock` prefix,
    /// or `xchg`), which Xen performs through its `cmpxchg` hook. `None`: a plain store
    /// (`mov`, unlocked read-modify-write).
    pub cmpxchg_old: Option<u64>,
    /// Instruction length: [`Self::complete`] advances rip by it.
    pub insn_len: u64,
    /// Whether anything is to be stored. False when the instruction leaves the entry as
    /// it is: a read-modify-write whose result equals the old value, or a `cmpxchg` whose
    /// comparison already fails against `old` (Xen then calls no write hook at all, so
    /// nothing is validated). The host then calls `complete(regs, old, false)`.
    pub write: bool,
    /// Width of the memory operand in bytes: 1, 2, 4 or 8.
    pub width: u8,
    /// Bit offset of the operand within the entry (8 × (CR2 & 7)).
    shift: u32,
    kind: Kind,
}

/// Decodes the instruction `insn` (up to 15 bytes fetched at `regs.rip`) that faulted
/// writing to linear address `cr2`, given the current value `old` of the 8-byte entry
/// containing `cr2`. Returns the operation, or why it cannot be emulated. Allocates
/// nothing: the instruction forms are decoded by [`crate::insn`].
pub fn decode(insn: &[u8], regs: &GuestRegs, cr2: u64, old: u64) -> Result<PtwrOp, PtwrError> {
    let store = match insn::decode_store(insn) {
        Ok(s) => s,
        Err(InsnError::Truncated) => return Err(PtwrError::Truncated),
        Err(InsnError::NotHandled) => {
            return Err(PtwrError::Unsupported("not one of the emulated stores"))
        }
    };
    let width = u64::from(store.width);
    let offset = cr2 & 7;
    if offset + width > 8 {
        return Err(PtwrError::CrossesEntry);
    }
    if cr2 & (width - 1) != 0 {
        return Err(PtwrError::Misaligned);
    }
    let shift = (offset * 8) as u32;
    let mask = width_mask(store.width);
    let cur = (old >> shift) & mask;
    let merge = |v: u64| (old & !(mask << shift)) | ((v & mask) << shift);
    let source = || match store.src {
        Src::Reg(r) => read_gpr(regs, r),
        Src::Imm(v) => v,
        Src::None => 0,
    };

    let (kind, value, conditional, write) = match store.op {
        StoreOp::Mov => (Kind::Mov, source(), false, true),
        StoreOp::Xchg => {
            let Src::Reg(reg) = store.src else {
                return Err(PtwrError::Unsupported("xchg without a register"));
            };
            let v = read_gpr(regs, reg);
            // A memory xchg is implicitly locked.
            (Kind::Xchg { reg }, v, true, v != cur)
        }
        StoreOp::Alu(op) => {
            let src = source() & mask;
            let (r, _) = alu(op, cur, src, store.width);
            (Kind::Alu { op, src }, r, store.lock, r != cur)
        }
        StoreOp::Bit(op) => {
            // CR2 is where the CPU accessed the bit string, so a register bit offset
            // selects the bit within the accessed operand modulo its width.
            let bit = (source() & (width * 8 - 1)) as u32;
            let r = bit_op(op, cur, bit);
            (Kind::Bit { op, bit }, r, store.lock, r != cur)
        }
        StoreOp::Cmpxchg => {
            let acc = regs.rax & mask;
            let v = source();
            // Like Xen: a comparison that fails against the value read stores nothing.
            (Kind::Cmpxchg { acc }, v, true, acc == cur)
        }
        StoreOp::Cmpxchg8b => {
            let expected = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
            let v = (regs.rcx << 32) | (regs.rbx & 0xffff_ffff);
            (Kind::Cmpxchg8b, v, true, expected == old)
        }
    };

    Ok(PtwrOp {
        pte_addr: cr2 & !7,
        new: if write { merge(value) } else { old },
        cmpxchg_old: conditional.then_some(old),
        insn_len: u64::from(store.len),
        write,
        width: store.width,
        shift,
        kind,
    })
}

impl PtwrOp {
    /// Applies the instruction's register and flag effects after the host performed the
    /// write (or, for a compare-exchange whose comparison failed, after it did not
    /// write), and advances rip. `written` says whether the store was performed;
    /// `actual_old` is the entry's value before it (on a failed conditional store: the
    /// value the host found instead of [`Self::cmpxchg_old`]).
    pub fn complete(&self, regs: &mut GuestRegs, actual_old: u64, written: bool) {
        let w = self.width;
        let mask = width_mask(w);
        let cur = (actual_old >> self.shift) & mask;
        match self.kind {
            Kind::Mov => {}
            Kind::Xchg { reg } => write_gpr(regs, reg, cur),
            Kind::Alu { op, src } => {
                let (_, flags) = alu(op, cur, src, w);
                set_flags(regs, ARITH_FLAGS, flags);
            }
            Kind::Bit { bit, .. } => {
                // BTS/BTR/BTC define only CF (ZF is unaffected, the rest undefined).
                let cf = if (cur >> bit) & 1 != 0 { CF } else { 0 };
                set_flags(regs, CF, cf);
            }
            Kind::Cmpxchg { acc } => {
                // Flags as `cmp accumulator, destination`.
                let seen = if written { acc } else { cur };
                let (_, flags) = alu(AluOp::Sub, acc, seen, w);
                set_flags(regs, ARITH_FLAGS, flags);
                if !written {
                    let reg = Gpr {
                        num: 0,
                        size: w,
                        high8: false,
                    };
                    write_gpr(regs, reg, cur);
                }
            }
            Kind::Cmpxchg8b => {
                if written {
                    set_flags(regs, ZF, ZF);
                } else {
                    regs.rax = actual_old & 0xffff_ffff;
                    regs.rdx = actual_old >> 32;
                    set_flags(regs, ZF, 0);
                }
            }
        }
        regs.rip = regs.rip.wrapping_add(self.insn_len);
    }

    /// After a conditional store found `actual` instead of [`Self::cmpxchg_old`]: true
    /// when the guest must simply re-execute the instruction (resume it without calling
    /// [`Self::complete`], as Xen's `X86EMUL_RETRY`): a locked read-modify-write lost a
    /// race, or a narrower `cmpxchg` failed only because bytes outside its operand
    /// changed. False when the instruction completes as a failed compare-exchange.
    pub fn must_retry(&self, actual: u64) -> bool {
        match self.kind {
            Kind::Cmpxchg { acc } => (actual >> self.shift) & width_mask(self.width) == acc,
            Kind::Cmpxchg8b => false,
            _ => true,
        }
    }
}

/// All ones in the low `width` bytes.
pub(crate) fn width_mask(width: u8) -> u64 {
    if width >= 8 {
        u64::MAX
    } else {
        (1u64 << (width * 8)) - 1
    }
}

/// The [`GuestRegs`] slot of full register number `num` (0 = rax ... 15 = r15).
fn slot(regs: &mut GuestRegs, num: u8) -> &mut u64 {
    regs.gpr_mut(num)
}

/// The value of a register operand, zero-extended.
pub(crate) fn read_gpr(regs: &GuestRegs, reg: Gpr) -> u64 {
    let mut copy = *regs;
    let full = *slot(&mut copy, reg.num);
    if reg.high8 {
        (full >> 8) & 0xff
    } else {
        full & width_mask(reg.size)
    }
}

/// Writes a register operand as the CPU does: a 32-bit write zero-extends, 8- and 16-bit
/// writes keep the other bits.
pub(crate) fn write_gpr(regs: &mut GuestRegs, reg: Gpr, value: u64) {
    let full = slot(regs, reg.num);
    if reg.high8 {
        *full = (*full & !0xff00) | ((value & 0xff) << 8);
    } else {
        match reg.size {
            8 => *full = value,
            4 => *full = value & 0xffff_ffff,
            n => {
                let m = width_mask(n);
                *full = (*full & !m) | (value & m);
            }
        }
    }
}

/// Replaces the flags in `which` by `value`.
pub(crate) fn set_flags(regs: &mut GuestRegs, which: u64, value: u64) {
    regs.rflags = (regs.rflags & !which) | (value & which);
}

/// ZF, SF and PF of a `width`-byte result.
fn zsp(r: u64, width: u8) -> u64 {
    let mut f = 0;
    if r & width_mask(width) == 0 {
        f |= ZF;
    }
    if (r >> (width as u32 * 8 - 1)) & 1 != 0 {
        f |= SF;
    }
    if (r as u8).count_ones() & 1 == 0 {
        f |= PF;
    }
    f
}

/// Result (width-masked) and arithmetic flags of `a op b` at `width` bytes.
pub(crate) fn alu(op: AluOp, a: u64, b: u64, width: u8) -> (u64, u64) {
    let mask = width_mask(width);
    let (a, b) = (a & mask, b & mask);
    let top = width as u32 * 8 - 1;
    match op {
        AluOp::And | AluOp::Or | AluOp::Xor => {
            let r = match op {
                AluOp::And => a & b,
                AluOp::Or => a | b,
                _ => a ^ b,
            };
            // CF and OF cleared; AF is undefined, cleared as hardware does.
            (r, zsp(r, width))
        }
        AluOp::Add => {
            let r = a.wrapping_add(b) & mask;
            let mut f = zsp(r, width);
            if r < a {
                f |= CF;
            }
            if ((a ^ r) & (b ^ r)) >> top & 1 != 0 {
                f |= OF;
            }
            if (a ^ b ^ r) & 0x10 != 0 {
                f |= AF;
            }
            (r, f)
        }
        AluOp::Sub => {
            let r = a.wrapping_sub(b) & mask;
            let mut f = zsp(r, width);
            if a < b {
                f |= CF;
            }
            if ((a ^ b) & (a ^ r)) >> top & 1 != 0 {
                f |= OF;
            }
            if (a ^ b ^ r) & 0x10 != 0 {
                f |= AF;
            }
            (r, f)
        }
    }
}

/// `value` with bit `bit` set, cleared or flipped.
fn bit_op(op: BitOp, value: u64, bit: u32) -> u64 {
    match op {
        BitOp::Set => value | (1 << bit),
        BitOp::Reset => value & !(1 << bit),
        BitOp::Complement => value ^ (1 << bit),
    }
}

/// The decoder this module used before [`crate::insn`] (iced-x86 with its
/// instruction-info factory, which allocates): the reference the differential property
/// test holds the new one to.
#[cfg(test)]
pub(crate) mod iced_reference {
    use super::*;
    use iced_x86::{
        Decoder, DecoderError, DecoderOptions, Instruction, InstructionInfoFactory, Mnemonic,
        OpAccess, OpKind, Register,
    };
    /// A 64-bit decoder of `insn` at `ip`. Not iced's `Decoder::with_ip`: it unwraps
    /// `try_with_ip`, and the error type owns heap memory, which would link a panic and an
    /// allocator into the shim (the link check finds it). 64 is a valid bitness, so there is
    /// no error; were there one, it is forgotten rather than dropped, for the same reason.
    pub(crate) fn decoder64(insn: &[u8], ip: u64) -> Option<Decoder<'_>> {
        match Decoder::try_with_ip(64, insn, ip, DecoderOptions::NONE) {
            Ok(d) => Some(d),
            Err(e) => {
                core::mem::forget(e);
                None
            }
        }
    }

    /// The source operand (operand 1): a general register or an immediate, as the
    /// instruction uses it (immediates sign-extended to the operand width by the decoder).
    pub(crate) fn source(instr: &Instruction, regs: &GuestRegs) -> Result<u64, PtwrError> {
        if instr.op_count() < 2 {
            return Err(PtwrError::Unsupported("no source operand"));
        }
        // The kind's own getter, as iced's `immediate(1)` would pick it (signed forms
        // sign-extended to 64 bits): `immediate()` goes through `try_immediate()`, whose
        // error type owns heap memory, so it would link an allocator into the shim.
        match instr.op1_kind() {
            OpKind::Register => Ok(read_gpr(regs, gpr_operand(instr, 1)?)),
            OpKind::Immediate8 => Ok(u64::from(instr.immediate8())),
            OpKind::Immediate16 => Ok(u64::from(instr.immediate16())),
            OpKind::Immediate32 => Ok(u64::from(instr.immediate32())),
            OpKind::Immediate64 => Ok(instr.immediate64()),
            OpKind::Immediate8to16 => Ok(instr.immediate8to16() as u64),
            OpKind::Immediate8to32 => Ok(instr.immediate8to32() as u64),
            OpKind::Immediate8to64 => Ok(instr.immediate8to64() as u64),
            OpKind::Immediate32to64 => Ok(instr.immediate32to64() as u64),
            _ => Err(PtwrError::Unsupported("source operand kind")),
        }
    }

    /// Operand `n` as a general register.
    pub(crate) fn gpr_operand(instr: &Instruction, n: u32) -> Result<Gpr, PtwrError> {
        if instr.op_count() <= n || instr.op_kind(n) != OpKind::Register {
            return Err(PtwrError::Unsupported("operand is not a register"));
        }
        let r = instr.op_register(n);
        if !r.is_gpr() {
            return Err(PtwrError::Unsupported("operand is not a general register"));
        }
        let num = gpr_number(r.full_register())
            .ok_or(PtwrError::Unsupported("operand is not a general register"))?;
        Ok(Gpr {
            num,
            size: r.size() as u8,
            high8: matches!(r, Register::AH | Register::CH | Register::DH | Register::BH),
        })
    }

    /// x86 number (0 = rax ... 15 = r15) of a full 64-bit general register.
    pub(crate) fn gpr_number(full: Register) -> Option<u8> {
        Some(match full {
            Register::RAX => 0,
            Register::RCX => 1,
            Register::RDX => 2,
            Register::RBX => 3,
            Register::RSP => 4,
            Register::RBP => 5,
            Register::RSI => 6,
            Register::RDI => 7,
            Register::R8 => 8,
            Register::R9 => 9,
            Register::R10 => 10,
            Register::R11 => 11,
            Register::R12 => 12,
            Register::R13 => 13,
            Register::R14 => 14,
            Register::R15 => 15,
            _ => return None,
        })
    }

    /// Decodes the instruction `insn` (up to 15 bytes fetched at `regs.rip`) that faulted
    /// writing to linear address `cr2`, given the current value `old` of the 8-byte entry
    /// containing `cr2`. Returns the operation, or why it cannot be emulated.
    pub(crate) fn decode_iced(
        insn: &[u8],
        regs: &GuestRegs,
        cr2: u64,
        old: u64,
    ) -> Result<PtwrOp, PtwrError> {
        let Some(mut decoder) = decoder64(insn, regs.rip) else {
            return Err(PtwrError::Unsupported("decoder"));
        };
        let instr = decoder.decode();
        if instr.is_invalid() {
            return Err(match decoder.last_error() {
                DecoderError::NoMoreBytes => PtwrError::Truncated,
                _ => PtwrError::Unsupported("invalid"),
            });
        }

        if !writes_memory(&instr) {
            return Err(PtwrError::Unsupported("not a write"));
        }
        if instr.op_count() == 0 || instr.op0_kind() != OpKind::Memory {
            return Err(PtwrError::Unsupported(
                "memory write not through an explicit destination operand",
            ));
        }

        let width = instr.memory_size().size();
        let mnemonic = instr.mnemonic();
        if mnemonic == Mnemonic::Cmpxchg16b {
            // Xen's ptwr cmpxchg hook refuses writes wider than one entry.
            return Err(PtwrError::Unsupported("cmpxchg16b spans two entries"));
        }
        if !matches!(width, 1 | 2 | 4 | 8) {
            return Err(PtwrError::Unsupported("operand width"));
        }
        let offset = cr2 & 7;
        if offset + width as u64 > 8 {
            return Err(PtwrError::CrossesEntry);
        }
        if cr2 & (width as u64 - 1) != 0 {
            return Err(PtwrError::Misaligned);
        }
        let shift = (offset * 8) as u32;
        let mask = width_mask(width as u8);
        let cur = (old >> shift) & mask;
        let merge = |v: u64| (old & !(mask << shift)) | ((v & mask) << shift);

        let locked = instr.has_lock_prefix();
        let (kind, value, conditional, write) = match mnemonic {
            Mnemonic::Mov | Mnemonic::Movnti => {
                let v = source(&instr, regs)?;
                (Kind::Mov, v, false, true)
            }
            Mnemonic::Xchg => {
                let reg = gpr_operand(&instr, 1)?;
                let v = read_gpr(regs, reg);
                // A memory xchg is implicitly locked.
                (Kind::Xchg { reg }, v, true, v != cur)
            }
            Mnemonic::And | Mnemonic::Or | Mnemonic::Xor | Mnemonic::Add | Mnemonic::Sub => {
                let op = match mnemonic {
                    Mnemonic::And => AluOp::And,
                    Mnemonic::Or => AluOp::Or,
                    Mnemonic::Xor => AluOp::Xor,
                    Mnemonic::Add => AluOp::Add,
                    _ => AluOp::Sub,
                };
                let src = source(&instr, regs)? & mask;
                let (r, _) = alu(op, cur, src, width as u8);
                (Kind::Alu { op, src }, r, locked, r != cur)
            }
            Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc => {
                let op = match mnemonic {
                    Mnemonic::Bts => BitOp::Set,
                    Mnemonic::Btr => BitOp::Reset,
                    _ => BitOp::Complement,
                };
                // CR2 is where the CPU accessed the bit string, so a register bit offset
                // selects the bit within the accessed operand modulo its width.
                let bit = (source(&instr, regs)? & (width as u64 * 8 - 1)) as u32;
                let r = bit_op(op, cur, bit);
                (Kind::Bit { op, bit }, r, locked, r != cur)
            }
            Mnemonic::Cmpxchg => {
                let src = gpr_operand(&instr, 1)?;
                let acc = regs.rax & mask;
                let v = read_gpr(regs, src);
                // Like Xen: a comparison that fails against the value read stores nothing.
                (Kind::Cmpxchg { acc }, v, true, acc == cur)
            }
            Mnemonic::Cmpxchg8b => {
                let expected = (regs.rdx << 32) | (regs.rax & 0xffff_ffff);
                let v = (regs.rcx << 32) | (regs.rbx & 0xffff_ffff);
                (Kind::Cmpxchg8b, v, true, expected == old)
            }
            _ => return Err(PtwrError::Unsupported("instruction not emulated")),
        };

        Ok(PtwrOp {
            pte_addr: cr2 & !7,
            new: if write { merge(value) } else { old },
            cmpxchg_old: conditional.then_some(old),
            insn_len: instr.len() as u64,
            write,
            width: width as u8,
            shift,
            kind,
        })
    }

    /// Whether the instruction writes memory at all, explicitly or implicitly.
    fn writes_memory(instr: &Instruction) -> bool {
        let mut factory = InstructionInfoFactory::new();
        let info = factory.info(instr);
        info.used_memory().iter().any(|m| {
            matches!(
                m.access(),
                OpAccess::Write
                    | OpAccess::CondWrite
                    | OpAccess::ReadWrite
                    | OpAccess::ReadCondWrite
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page of some L1 table, as the guest kernel maps it (read-only).
    const BASE: u64 = 0xffff_8800_0012_3000;
    /// A present, user, accessed, dirty... entry with NX: 0x67 = P|RW|U|A|D.
    const PTE: u64 = 0x8000_0000_1234_5067;
    const RIP: u64 = 0xffff_ffff_8100_1000;

    /// Registers with a distinct value in each, so a stray write shows.
    fn regs() -> GuestRegs {
        GuestRegs {
            rax: 0x1111_1111_1111_1111,
            rbx: 0x2222_2222_2222_2222,
            rcx: 0x3333_3333_3333_3333,
            rdx: 0x4444_4444_4444_4444,
            rsi: 0x5555_5555_5555_5555,
            rdi: BASE,
            rsp: 0xffff_c900_0000_7f00,
            rbp: 0x6666_6666_6666_6666,
            r8: 0x8888_8888_8888_8888,
            r9: 0x9999_9999_9999_9999,
            r10: 0xa0a0_a0a0_a0a0_a0a0,
            r11: 0xb0b0_b0b0_b0b0_b0b0,
            r12: 0xc0c0_c0c0_c0c0_c0c0,
            r13: 0xd0d0_d0d0_d0d0_d0d0,
            r14: 0xe0e0_e0e0_e0e0_e0e0,
            r15: 0xf0f0_f0f0_f0f0_f0f0,
            rip: RIP,
            rflags: 0x202,
            cs: 0xe033,
            ss: 0xe02b,
        }
    }

    /// The host's side of the contract over one entry held in `entry`: decode, store
    /// (conditionally when asked), complete. Returns the op.
    fn emulate(
        insn: &[u8],
        regs: &mut GuestRegs,
        cr2: u64,
        entry: &mut u64,
    ) -> Result<PtwrOp, PtwrError> {
        let old = *entry;
        let op = decode(insn, regs, cr2, old)?;
        assert_eq!(op.pte_addr, cr2 & !7);
        if !op.write {
            assert_eq!(op.new, old);
            op.complete(regs, old, false);
            return Ok(op);
        }
        match op.cmpxchg_old {
            None => {
                *entry = op.new;
                op.complete(regs, old, true);
            }
            Some(expected) => {
                assert_eq!(expected, old);
                *entry = op.new;
                op.complete(regs, expected, true);
            }
        }
        Ok(op)
    }

    const ARITH: u64 = CF | PF | AF | ZF | SF | OF;

    #[test]
    fn ptwr_xchg_returns_old_entry() {
        // xchg [rdi], rax (ptep_get_and_clear)
        let insn = [0x48, 0x87, 0x07];
        let mut r = regs();
        r.rax = 0;
        r.rflags = 0x202 | ZF | CF;
        let mut entry = PTE;
        let op = emulate(&insn, &mut r, BASE, &mut entry).unwrap();
        assert_eq!(op.cmpxchg_old, Some(PTE), "xchg is implicitly locked");
        assert_eq!(op.insn_len, 3);
        assert_eq!(entry, 0);
        let mut want = regs();
        want.rax = PTE;
        want.rip = RIP + 3;
        want.rflags = 0x202 | ZF | CF; // flags untouched
        assert_eq!(r, want);
    }

    #[test]
    fn ptwr_xchg_dword_zero_extends_register() {
        // xchg [rdi], eax on the upper half
        let insn = [0x87, 0x07];
        let mut r = regs();
        let mut entry = PTE;
        emulate(&insn, &mut r, BASE + 4, &mut entry).unwrap();
        assert_eq!(entry, 0x1111_1111_1234_5067);
        assert_eq!(r.rax, 0x8000_0000);
        assert_eq!(r.rip, RIP + 2);
    }

    #[test]
    fn ptwr_lock_cmpxchg_success() {
        // lock cmpxchg [rdi], rcx
        let insn = [0xf0, 0x48, 0x0f, 0xb1, 0x0f];
        let mut r = regs();
        r.rax = PTE;
        r.rcx = PTE & !2;
        r.rflags = 0x202 | CF | SF | OF | AF;
        let mut entry = PTE;
        let op = emulate(&insn, &mut r, BASE, &mut entry).unwrap();
        assert!(op.write);
        assert_eq!(op.cmpxchg_old, Some(PTE));
        assert_eq!(op.new, PTE & !2);
        assert_eq!(entry, PTE & !2);
        let mut want = regs();
        want.rax = PTE;
        want.rcx = PTE & !2;
        want.rip = RIP + 5;
        want.rflags = 0x202 | ZF | PF;
        assert_eq!(r, want);
    }

    #[test]
    fn ptwr_lock_cmpxchg_failure_loads_accumulator() {
        let insn = [0xf0, 0x48, 0x0f, 0xb1, 0x0f];
        let mut r = regs();
        r.rax = 1;
        r.rflags = 0x202 | ZF;
        let old = 0x8000_0000_0000_0000;
        let mut entry = old;
        let op = emulate(&insn, &mut r, BASE, &mut entry).unwrap();
        assert!(!op.write, "the comparison fails against the entry read");
        assert_eq!(entry, old);
        let mut want = regs();
        want.rax = old;
        want.rip = RIP + 5;
        // cmp 1, 0x8000000000000000: result 0x8000000000000001.
        want.rflags = 0x202 | CF | OF | SF;
        assert_eq!(r, want);
    }

    #[test]
    fn ptwr_cmpxchg_failure_found_by_host() {
        // The entry changed between the host's read and its atomic store.
        let insn = [0xf0, 0x48, 0x0f, 0xb1, 0x0f];
        let mut r = regs();
        r.rax = PTE;
        r.rcx = 0;
        let op = decode(&insn, &r, BASE, PTE).unwrap();
        assert!(op.write);
        let actual = PTE & !0x20;
        assert!(!op.must_retry(actual));
        op.complete(&mut r, actual, false);
        assert_eq!(r.rax, actual);
        assert_eq!(r.rflags & ZF, 0);
        assert_eq!(r.rip, RIP + 5);
    }

    #[test]
    fn ptwr_narrow_cmpxchg_retries_when_other_bytes_changed() {
        // lock cmpxchg [rdi], ecx on the low half; the upper half changes under it.
        let insn = [0xf0, 0x0f, 0xb1, 0x0f];
        let mut r = regs();
        r.rax = PTE & 0xffff_ffff;
        r.rcx = 0x1234_5065;
        let op = decode(&insn, &r, BASE, PTE).unwrap();
        assert!(op.write);
        assert_eq!(op.new, 0x8000_0000_1234_5065);
        assert!(op.must_retry(PTE ^ (1 << 40)));
        assert!(!op.must_retry(PTE ^ 1));
        // Failure on the operand: eax loaded and zero-extended.
        op.complete(&mut r, PTE ^ 1, false);
        assert_eq!(r.rax, 0x1234_5066);
        assert_eq!(r.rflags & ZF, 0);
    }

    #[test]
    fn ptwr_unlocked_cmpxchg_word() {
        // cmpxchg [rdi], cx (no lock) on bytes 2..4
        let insn = [0x66, 0x0f, 0xb1, 0x0f];
        let mut r = regs();
        r.rax = 0xffff_ffff_ffff_1234;
        r.rcx = 0xabcd;
        let mut entry = PTE;
        let op = emulate(&insn, &mut r, BASE + 2, &mut entry).unwrap();
        assert_eq!(op.width, 2);
        assert_eq!(entry, 0x8000_0000_abcd_5067);
        assert_eq!(r.rax, 0xffff_ffff_ffff_1234);
        assert_eq!(r.rflags & ARITH, ZF | PF);
        assert_eq!(r.rip, RIP + 4);
    }

    #[test]
    fn ptwr_lock_andb_clear_bit_rw() {
        // lock andb $0xfd, (%rdi): Linux's clear_bit(_PAGE_BIT_RW) (ptep_set_wrprotect)
        let insn = [0xf0, 0x80, 0x27, 0xfd];
        let mut r = regs();
        r.rflags = 0x202 | ARITH;
        let mut entry = PTE;
        let op = emulate(&insn, &mut r, BASE, &mut entry).unwrap();
        assert_eq!(op.width, 1);
        assert_eq!(op.cmpxchg_old, Some(PTE));
        assert_eq!(op.new, PTE & !2);
        assert_eq!(entry, PTE & !2);
        let mut want = regs();
        want.rip = RIP + 4;
        // 0x65: four bits set, so PF; CF, OF, AF, ZF, SF clear.
        want.rflags = 0x202 | PF;
        assert_eq!(r, want);
    }

    #[test]
    fn ptwr_lock_btr_accessed() {
        // lock btrq $5, (%rdi): ptep_test_and_clear_young
        let insn = [0xf0, 0x48, 0x0f, 0xba, 0x37, 0x05];
        let mut r = regs();
        r.rflags = 0x202 | ZF | SF;
        let mut entry = PTE;
        let op = emulate(&insn, &mut r, BASE, &mut entry).unwrap();
        assert_eq!(op.insn_len, 6);
        assert_eq!(op.cmpxchg_old, Some(PTE));
        assert_eq!(entry, PTE & !0x20);
        let mut want = regs();
        want.rip = RIP + 6;
        want.rflags = 0x202 | ZF | SF | CF; // only CF changes
        assert_eq!(r, want);

        // Already clear: nothing to store, CF = 0.
        let mut r = regs();
        r.rflags |= CF;
        let op = emulate(&insn, &mut r, BASE, &mut entry).unwrap();
        assert!(!op.write);
        assert_eq!(entry, PTE & !0x20);
        assert_eq!(r.rflags & CF, 0);
        assert_eq!(r.rip, RIP + 6);
    }

    #[test]
    fn ptwr_bts_register_index_and_btc_imm() {
        // lock bts [rdi], rsi with rsi = 64 + 9: the CPU accessed the next qword (CR2),
        // bit 9 of it.
        let insn = [0xf0, 0x48, 0x0f, 0xab, 0x37];
        let mut r = regs();
        r.rsi = 64 + 9;
        let mut entry = PTE;
        emulate(&insn, &mut r, BASE + 8, &mut entry).unwrap();
        assert_eq!(entry, PTE | (1 << 9));
        assert_eq!(r.rflags & CF, 0);
        assert_eq!(r.rip, RIP + 5);

        // btcq $63, (%rdi) (no lock): flips NX, CF = old NX.
        let insn = [0x48, 0x0f, 0xba, 0x3f, 0x3f];
        let mut r = regs();
        let mut entry = PTE;
        let op = emulate(&insn, &mut r, BASE, &mut entry).unwrap();
        assert_eq!(op.cmpxchg_old, None);
        assert_eq!(entry, PTE & !(1 << 63));
        assert_eq!(r.rflags & CF, CF);
        assert_eq!(r.rip, RIP + 5);

        // btr [rdi], esi (32-bit) on the upper half: bit 31 of the dword.
        let insn = [0x0f, 0xb3, 0x37];
        let mut r = regs();
        r.rsi = 31;
        let mut entry = PTE;
        emulate(&insn, &mut r, BASE + 4, &mut entry).unwrap();
        assert_eq!(entry, PTE & !(1 << 63));
        assert_eq!(r.rflags & CF, CF);
    }

    #[test]
    fn ptwr_mov_next_entry() {
        // mov [rdi+8], rax with CR2 in the next entry
        let insn = [0x48, 0x89, 0x47, 0x08];
        let mut r = regs();
        r.rdi = BASE + 0x10;
        r.rax = PTE;
        let mut entry = 0;
        let op = emulate(&insn, &mut r, BASE + 0x18, &mut entry).unwrap();
        assert_eq!(op.pte_addr, BASE + 0x18);
        assert_eq!(op.cmpxchg_old, None);
        assert_eq!(op.new, PTE);
        assert_eq!(entry, PTE);
        let mut want = regs();
        want.rdi = BASE + 0x10;
        want.rax = PTE;
        want.rip = RIP + 4;
        assert_eq!(r, want);
    }

    #[test]
    fn ptwr_mov_dword_upper_half_merges() {
        // mov [rdi+4], eax
        let insn = [0x89, 0x47, 0x04];
        let mut r = regs();
        r.rax = 0xdead_beef_8000_0001;
        let old = 0x0000_0000_1234_5067;
        let mut entry = old;
        let op = emulate(&insn, &mut r, BASE + 4, &mut entry).unwrap();
        assert_eq!(op.width, 4);
        assert_eq!(op.pte_addr, BASE);
        assert_eq!(entry, 0x8000_0001_1234_5067);
        let mut want = regs();
        want.rax = 0xdead_beef_8000_0001;
        want.rip = RIP + 3;
        assert_eq!(r, want);
    }

    #[test]
    fn ptwr_mov_register_and_immediate_forms() {
        // mov [rdi], r9
        let mut r = regs();
        let mut entry = PTE;
        emulate(&[0x4c, 0x89, 0x0f], &mut r, BASE, &mut entry).unwrap();
        assert_eq!(entry, 0x9999_9999_9999_9999);
        assert_eq!(r.rip, RIP + 3);

        // mov qword [rdi], -1 (imm32 sign-extended)
        let mut r = regs();
        emulate(
            &[0x48, 0xc7, 0x07, 0xff, 0xff, 0xff, 0xff],
            &mut r,
            BASE,
            &mut entry,
        )
        .unwrap();
        assert_eq!(entry, u64::MAX);
        assert_eq!(r.rip, RIP + 7);

        // mov word [rdi+2], 0x1234
        let mut r = regs();
        let mut entry = PTE;
        emulate(
            &[0x66, 0xc7, 0x47, 0x02, 0x34, 0x12],
            &mut r,
            BASE + 2,
            &mut entry,
        )
        .unwrap();
        assert_eq!(entry, 0x8000_0000_1234_5067);
        emulate(
            &[0x66, 0xc7, 0x47, 0x02, 0xcd, 0xab],
            &mut r,
            BASE + 2,
            &mut entry,
        )
        .unwrap();
        assert_eq!(entry, 0x8000_0000_abcd_5067);

        // mov byte [rdi], ah at byte 2
        let mut r = regs();
        r.rax = 0xab00;
        let mut entry = PTE;
        emulate(&[0x88, 0x27], &mut r, BASE + 2, &mut entry).unwrap();
        assert_eq!(entry, 0x8000_0000_12ab_5067);

        // mov byte [rdi], sil (REX): byte 7
        let mut r = regs();
        r.rsi = 0x0f;
        let mut entry = PTE;
        emulate(&[0x40, 0x88, 0x37], &mut r, BASE + 7, &mut entry).unwrap();
        assert_eq!(entry, 0x0f00_0000_1234_5067);

        // mov byte [rdi], r10b
        let mut r = regs();
        let mut entry = 0;
        emulate(&[0x44, 0x88, 0x17], &mut r, BASE + 1, &mut entry).unwrap();
        assert_eq!(entry, 0xa000);

        // movabs [moffs64], rax
        let mut insn = [0x48, 0xa3, 0, 0, 0, 0, 0, 0, 0, 0];
        insn[2..].copy_from_slice(&(BASE + 0x20).to_le_bytes());
        let mut r = regs();
        let mut entry = 0;
        let op = emulate(&insn, &mut r, BASE + 0x20, &mut entry).unwrap();
        assert_eq!(op.insn_len, 10);
        assert_eq!(entry, 0x1111_1111_1111_1111);
        assert_eq!(r.rip, RIP + 10);

        // movnti [rdi], rax
        let mut r = regs();
        let mut entry = 0;
        emulate(&[0x48, 0x0f, 0xc3, 0x07], &mut r, BASE, &mut entry).unwrap();
        assert_eq!(entry, 0x1111_1111_1111_1111);
    }

    #[test]
    fn ptwr_lock_or_xor_add_sub_flags() {
        // lock or [rdi], rax
        let mut r = regs();
        r.rax = 0x20;
        let mut entry = PTE & !0x20;
        let op = emulate(&[0xf0, 0x48, 0x09, 0x07], &mut r, BASE, &mut entry).unwrap();
        assert_eq!(op.cmpxchg_old, Some(PTE & !0x20));
        assert_eq!(entry, PTE);
        assert_eq!(r.rflags & ARITH, SF); // 0x8000... : SF; low byte 0x67 has 5 bits: no PF

        // lock xor [rdi], rax with itself's value: zero
        let mut r = regs();
        r.rax = PTE;
        let mut entry = PTE;
        emulate(&[0xf0, 0x48, 0x31, 0x07], &mut r, BASE, &mut entry).unwrap();
        assert_eq!(entry, 0);
        assert_eq!(r.rflags & ARITH, ZF | PF);

        // lock add qword [rdi], 1 on all-ones: wraps to 0.
        let insn = [0xf0, 0x48, 0x83, 0x07, 0x01];
        let mut r = regs();
        let mut entry = u64::MAX;
        emulate(&insn, &mut r, BASE, &mut entry).unwrap();
        assert_eq!(entry, 0);
        assert_eq!(r.rflags & ARITH, CF | ZF | PF | AF);
        assert_eq!(r.rip, RIP + 5);
        // ... and on i64::MAX: signed overflow.
        let mut r = regs();
        let mut entry = i64::MAX as u64;
        emulate(&insn, &mut r, BASE, &mut entry).unwrap();
        assert_eq!(entry, 1 << 63);
        assert_eq!(r.rflags & ARITH, OF | SF | AF | PF);

        // lock sub [rdi], rcx: 5 - 7 borrows.
        let mut r = regs();
        r.rcx = 7;
        let mut entry = 5;
        emulate(&[0xf0, 0x48, 0x29, 0x0f], &mut r, BASE, &mut entry).unwrap();
        assert_eq!(entry, (-2i64) as u64);
        assert_eq!(r.rflags & ARITH, CF | SF | AF);

        // lock and dword [rdi+4], 0x7fffffff: clear NX through the upper half.
        let mut r = regs();
        let mut entry = PTE;
        let insn = [0xf0, 0x81, 0x67, 0x04, 0xff, 0xff, 0xff, 0x7f];
        emulate(&insn, &mut r, BASE + 4, &mut entry).unwrap();
        assert_eq!(entry, 0x1234_5067);
        assert_eq!(r.rflags & ARITH, ZF | PF);
        assert_eq!(r.rip, RIP + 8);
    }

    #[test]
    fn ptwr_cmpxchg8b() {
        // lock cmpxchg8b [rdi]
        let insn = [0xf0, 0x0f, 0xc7, 0x0f];
        let mut r = regs();
        r.rax = 0xffff_ffff_0000_0000 | (PTE & 0xffff_ffff);
        r.rdx = PTE >> 32;
        r.rbx = 0;
        r.rcx = 0;
        r.rflags = 0x202 | CF;
        let mut entry = PTE;
        let op = emulate(&insn, &mut r, BASE, &mut entry).unwrap();
        assert_eq!(op.cmpxchg_old, Some(PTE));
        assert_eq!(entry, 0);
        assert_eq!(r.rflags, 0x202 | CF | ZF);
        assert_eq!(
            r.rax,
            0xffff_ffff_0000_0000 | (PTE & 0xffff_ffff),
            "untouched"
        );
        assert_eq!(r.rip, RIP + 4);

        // Failure: edx:eax loaded (zero-extended), ZF clear, entry unchanged.
        let mut r = regs();
        r.rflags |= ZF;
        let mut entry = PTE;
        let op = emulate(&insn, &mut r, BASE, &mut entry).unwrap();
        assert!(!op.write);
        assert_eq!(entry, PTE);
        let mut want = regs();
        want.rax = PTE & 0xffff_ffff;
        want.rdx = PTE >> 32;
        want.rip = RIP + 4;
        assert_eq!(r, want);
    }

    #[test]
    fn ptwr_cmpxchg16b_unsupported() {
        let insn = [0xf0, 0x48, 0x0f, 0xc7, 0x0f];
        assert!(matches!(
            decode(&insn, &regs(), BASE, PTE),
            Err(PtwrError::Unsupported(_))
        ));
    }

    #[test]
    fn ptwr_crossing_and_misaligned() {
        // mov [rdi+6], eax: bytes 6..10
        assert_eq!(
            decode(&[0x89, 0x47, 0x06], &regs(), BASE + 6, PTE),
            Err(PtwrError::CrossesEntry)
        );
        // mov [rdi+4], rax
        assert_eq!(
            decode(&[0x48, 0x89, 0x47, 0x04], &regs(), BASE + 4, PTE),
            Err(PtwrError::CrossesEntry)
        );
        // mov [rdi+1], ax: inside the entry but not naturally aligned
        assert_eq!(
            decode(&[0x66, 0x89, 0x47, 0x01], &regs(), BASE + 1, PTE),
            Err(PtwrError::Misaligned)
        );
    }

    #[test]
    fn ptwr_read_only_instructions() {
        for insn in [
            &[0x48, 0x8b, 0x07][..],             // mov rax, [rdi]
            &[0x48, 0x39, 0x07][..],             // cmp [rdi], rax
            &[0x48, 0x0f, 0xba, 0x27, 0x05][..], // bt qword [rdi], 5
            &[0x48, 0x85, 0x07][..],             // test [rdi], rax
            &[0x0f, 0x0b][..],                   // ud2
        ] {
            assert!(
                matches!(
                    decode(insn, &regs(), BASE, PTE),
                    Err(PtwrError::Unsupported(_))
                ),
                "{insn:x?}"
            );
        }
    }

    #[test]
    fn ptwr_bad_and_unsupported_instructions() {
        // lock mov: #UD encoding; 16 bytes of prefixes: too long
        for insn in [
            &[0xf0, 0x48, 0x89, 0x07][..],
            &[0xff, 0xff][..],
            &[0x66; 16][..],
        ] {
            assert!(
                matches!(
                    decode(insn, &regs(), BASE, PTE),
                    Err(PtwrError::Unsupported(_))
                ),
                "{insn:x?}"
            );
        }
        assert_eq!(
            decode(&[0x48, 0x89], &regs(), BASE, PTE),
            Err(PtwrError::Truncated)
        );
        assert_eq!(decode(&[], &regs(), BASE, PTE), Err(PtwrError::Truncated));
        for insn in [
            &[0x48, 0xa5][..],       // movsq
            &[0x48, 0xff, 0x07][..], // inc qword [rdi]
            &[0x8c, 0x1f][..],       // mov [rdi], ds
            &[0xff, 0x37][..],       // push qword [rdi]
            &[0x0f, 0x97, 0x07][..], // seta byte [rdi]
        ] {
            assert!(
                matches!(
                    decode(insn, &regs(), BASE, PTE),
                    Err(PtwrError::Unsupported(_))
                ),
                "{insn:x?}"
            );
        }
    }
}
