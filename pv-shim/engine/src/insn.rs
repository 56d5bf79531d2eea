//! An allocation-free x86-64 decoder for exactly the instruction forms the engine
//! emulates on a trapped guest access: the stores [`crate::ptwr`] performs on a
//! read-only pagetable entry ([`decode_store`]) and the loads [`crate::m2p`] performs
//! from the M2P table ([`decode_load`]). Everything else is refused, which leads the
//! caller to bounce the fault as before.
//!
//! The engine used a general decoder (iced-x86) here; it allocates (its tables on first
//! use, its instruction-info operand lists on every call), which the engine cannot do in
//! the shim (docs/architecture.md, "The engine in the VM"). The forms are few, so they
//! are decoded here with fixed storage, and a differential property test
//! (`tests::same_as_iced_*` here and in `m2p`) holds this decoder to iced's answers for
//! random bytes and for every accepted form with random prefixes, REX, ModRM, SIB,
//! displacements and immediates.
//!
//! Stores accepted (64-bit code; the memory operand is the destination, `mod != 3`):
//! - `mov` r/m8,r8 (88), r/m,r (89), r/m8,imm8 (C6 /0), r/m,imm (C7 /0), moffs8,al (A2),
//!   moffs,rAX (A3), `movnti` m32/m64,r (0F C3);
//! - `xchg` r/m8,r8 (86), r/m,r (87);
//! - `add`/`or`/`and`/`sub`/`xor` r/m,r (00/01, 08/09, 20/21, 28/29, 30/31) and r/m,imm
//!   (80, 81, 83 with /0 /1 /4 /5 /6);
//! - `bts`/`btr`/`btc` r/m,r (0F AB, 0F B3, 0F BB) and r/m,imm8 (0F BA /5 /6 /7);
//! - `cmpxchg` r/m8,r8 (0F B0), r/m,r (0F B1), `cmpxchg8b` m64 (0F C7 /1 without REX.W).
//!
//! Prefixes: any number of legacy prefixes (lock, rep/repne, segment, operand size,
//! address size) and a REX that counts only right before the opcode, 15 bytes at most.
//! `lock` is valid only on the read-modify-write forms (not on `mov`/`movnti`).

use crate::ptwr::{AluOp, BitOp, Gpr};

/// The longest x86 instruction.
pub(crate) const MAX_LEN: usize = 15;

/// Why bytes are not one of the accepted forms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum InsnError {
    /// The bytes end before the instruction does.
    Truncated,
    /// Not one of the accepted forms: another instruction, an invalid encoding, a
    /// register destination, or longer than 15 bytes.
    NotHandled,
}

/// What a decoded store does with its memory operand.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StoreOp {
    /// `mov`, `movnti`: a plain store of the source.
    Mov,
    /// `xchg` with the source register.
    Xchg,
    /// A read-modify-write with the source.
    Alu(AluOp),
    /// A bit test-and-modify; the source is the bit offset.
    Bit(BitOp),
    /// `cmpxchg` with the source register (and the accumulator).
    Cmpxchg,
    /// `cmpxchg8b` (edx:eax, ecx:ebx).
    Cmpxchg8b,
}

/// The source operand of a store.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Src {
    /// A general register.
    Reg(Gpr),
    /// An immediate, sign- or zero-extended to 64 bits as the instruction defines it.
    Imm(u64),
    /// None (`cmpxchg8b`).
    None,
}

/// A decoded store to memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Store {
    /// Instruction length in bytes.
    pub(crate) len: u8,
    /// The operation.
    pub(crate) op: StoreOp,
    /// Width of the memory operand in bytes: 1, 2, 4 or 8.
    pub(crate) width: u8,
    /// A `lock` prefix.
    pub(crate) lock: bool,
    /// The source operand.
    pub(crate) src: Src,
}

/// The bytes being decoded, at most [`MAX_LEN`] of them.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn byte(&mut self) -> Result<u8, InsnError> {
        if self.pos >= MAX_LEN {
            return Err(InsnError::NotHandled);
        }
        let b = *self.bytes.get(self.pos).ok_or(InsnError::Truncated)?;
        self.pos += 1;
        Ok(b)
    }

    /// `n` bytes (1, 2, 4 or 8) little-endian, zero-extended.
    fn uint(&mut self, n: usize) -> Result<u64, InsnError> {
        let mut v = 0u64;
        for k in 0..n {
            v |= u64::from(self.byte()?) << (8 * k);
        }
        Ok(v)
    }
}

/// A segment override that has a base in 64-bit mode.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seg {
    Fs,
    Gs,
}

/// The legacy and REX prefixes of an instruction.
#[derive(Clone, Copy, Debug, Default)]
struct Prefixes {
    lock: bool,
    /// The last of 0xf2/0xf3 (0: none).
    rep: u8,
    /// 0x66 seen.
    opsize: bool,
    /// 0x67 seen.
    addr32: bool,
    /// An FS or GS override (the ES/CS/SS/DS ones have no effect in 64-bit mode and do
    /// not replace an FS/GS one).
    seg: Option<Seg>,
    /// The REX byte right before the opcode (0: none).
    rex: u8,
}

impl Prefixes {
    fn w(&self) -> bool {
        self.rex & 8 != 0
    }
    fn r(&self) -> u8 {
        (self.rex >> 2) & 1
    }
    fn x(&self) -> u8 {
        (self.rex >> 1) & 1
    }
    fn b(&self) -> u8 {
        self.rex & 1
    }
    /// Operand size of the `v` forms.
    fn vsize(&self) -> u8 {
        if self.w() {
            8
        } else if self.opsize {
            2
        } else {
            4
        }
    }
}

/// Reads the prefixes; returns them and the first opcode byte.
fn prefixes(c: &mut Cursor<'_>) -> Result<(Prefixes, u8), InsnError> {
    let mut p = Prefixes::default();
    loop {
        let b = c.byte()?;
        match b {
            0xf0 => p.lock = true,
            0xf2 | 0xf3 => p.rep = b,
            0x2e | 0x36 | 0x3e | 0x26 => {}
            0x64 => p.seg = Some(Seg::Fs),
            0x65 => p.seg = Some(Seg::Gs),
            0x66 => p.opsize = true,
            0x67 => p.addr32 = true,
            0x40..=0x4f => {
                p.rex = b;
                continue;
            }
            _ => return Ok((p, b)),
        }
        // A REX followed by a legacy prefix is ignored.
        p.rex = 0;
    }
}

/// A memory operand's addressing: `seg + base + (index << scale) + disp`, or
/// `next_rip + disp` (rip-relative), or the absolute `disp` (moffs), computed in 32 bits
/// with an address-size prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Mem {
    /// Base register (0 = rax .. 15 = r15).
    pub(crate) base: Option<u8>,
    /// Index register.
    pub(crate) index: Option<u8>,
    /// Index shift (0..=3).
    pub(crate) scale: u8,
    /// Displacement, sign-extended (moffs: the address as encoded).
    pub(crate) disp: u64,
    /// Relative to the next instruction.
    pub(crate) rip: bool,
    /// 32-bit addressing (0x67).
    pub(crate) addr32: bool,
    /// FS or GS override.
    pub(crate) seg: Option<Seg>,
}

/// The ModRM byte of an instruction whose r/m operand is memory, with its SIB byte and
/// displacement.
struct ModRm {
    /// The reg field (without REX.R).
    reg: u8,
    mem: Mem,
}

fn modrm_mem(c: &mut Cursor<'_>, p: &Prefixes) -> Result<ModRm, InsnError> {
    let m = c.byte()?;
    let (md, reg, rm) = (m >> 6, (m >> 3) & 7, m & 7);
    if md == 3 {
        // A register operand, not memory.
        return Err(InsnError::NotHandled);
    }
    let mut mem = Mem {
        base: Some(rm | (p.b() << 3)),
        index: None,
        scale: 0,
        disp: 0,
        rip: false,
        addr32: p.addr32,
        seg: p.seg,
    };
    let mut disp = match md {
        1 => 1,
        2 => 4,
        _ => 0,
    };
    if rm == 4 {
        let sib = c.byte()?;
        mem.scale = sib >> 6;
        let index = ((sib >> 3) & 7) | (p.x() << 3);
        mem.index = (index != 4).then_some(index);
        mem.base = Some((sib & 7) | (p.b() << 3));
        if md == 0 && sib & 7 == 5 {
            mem.base = None;
            disp = 4;
        }
    } else if md == 0 && rm == 5 {
        mem.base = None;
        mem.rip = true;
        disp = 4;
    }
    mem.disp = match disp {
        1 => c.uint(1)? as u8 as i8 as u64,
        4 => c.uint(4)? as u32 as i32 as u64,
        _ => 0,
    };
    Ok(ModRm { reg, mem })
}

/// The moffs operand of A0-A3: a 64-bit (32 with 0x67) absolute address.
fn moffs(c: &mut Cursor<'_>, p: &Prefixes) -> Result<Mem, InsnError> {
    let disp = c.uint(if p.addr32 { 4 } else { 8 })?;
    Ok(Mem {
        base: None,
        index: None,
        scale: 0,
        disp,
        rip: false,
        addr32: p.addr32,
        seg: p.seg,
    })
}

/// The general register `reg` (0..16) of `size` bytes as the instruction names it:
/// without any REX, byte registers 4..8 are ah, ch, dh, bh.
fn gpr(reg: u8, size: u8, p: &Prefixes) -> Gpr {
    if size == 1 && p.rex == 0 && (4..8).contains(&reg) {
        Gpr {
            num: reg - 4,
            size: 1,
            high8: true,
        }
    } else {
        Gpr {
            num: reg,
            size,
            high8: false,
        }
    }
}

/// Decodes `bytes` (64-bit code) as one of the accepted stores.
pub(crate) fn decode_store(bytes: &[u8]) -> Result<Store, InsnError> {
    let mut c = Cursor { bytes, pos: 0 };
    let (p, opcode) = prefixes(&mut c)?;
    let vsize = p.vsize();
    let alu = |digit: u8| match digit {
        0 => Some(AluOp::Add),
        1 => Some(AluOp::Or),
        4 => Some(AluOp::And),
        5 => Some(AluOp::Sub),
        6 => Some(AluOp::Xor),
        _ => None,
    };
    let (op, width, src, lockable) = match opcode {
        0x0f => {
            let op2 = c.byte()?;
            match op2 {
                0xc3 => {
                    // movnti My,Gy: no operand-size or rep prefix form.
                    if p.opsize || p.rep != 0 {
                        return Err(InsnError::NotHandled);
                    }
                    let m = modrm_mem(&mut c, &p)?;
                    let size = if p.w() { 8 } else { 4 };
                    (StoreOp::Mov, size, Src::Reg(reg_of(&m, size, &p)), false)
                }
                0xab | 0xb3 | 0xbb => {
                    let m = modrm_mem(&mut c, &p)?;
                    let op = match op2 {
                        0xab => BitOp::Set,
                        0xb3 => BitOp::Reset,
                        _ => BitOp::Complement,
                    };
                    (
                        StoreOp::Bit(op),
                        vsize,
                        Src::Reg(reg_of(&m, vsize, &p)),
                        true,
                    )
                }
                0xba => {
                    let m = modrm_mem(&mut c, &p)?;
                    let op = match m.reg {
                        5 => BitOp::Set,
                        6 => BitOp::Reset,
                        7 => BitOp::Complement,
                        _ => return Err(InsnError::NotHandled), // bt (4) only reads
                    };
                    let imm = c.uint(1)?;
                    (StoreOp::Bit(op), vsize, Src::Imm(imm), true)
                }
                0xb0 => {
                    let m = modrm_mem(&mut c, &p)?;
                    (StoreOp::Cmpxchg, 1, Src::Reg(reg_of(&m, 1, &p)), true)
                }
                0xb1 => {
                    let m = modrm_mem(&mut c, &p)?;
                    (
                        StoreOp::Cmpxchg,
                        vsize,
                        Src::Reg(reg_of(&m, vsize, &p)),
                        true,
                    )
                }
                0xc7 => {
                    let m = modrm_mem(&mut c, &p)?;
                    // /1 only; with REX.W it is cmpxchg16b, which spans two entries.
                    if m.reg != 1 || p.w() {
                        return Err(InsnError::NotHandled);
                    }
                    (StoreOp::Cmpxchg8b, 8, Src::None, true)
                }
                _ => return Err(InsnError::NotHandled),
            }
        }
        0x88 | 0x86 | 0x00 | 0x08 | 0x20 | 0x28 | 0x30 => {
            let m = modrm_mem(&mut c, &p)?;
            let (op, lockable) = match opcode {
                0x88 => (StoreOp::Mov, false),
                0x86 => (StoreOp::Xchg, true),
                o => (StoreOp::Alu(alu_of_opcode(o)), true),
            };
            (op, 1, Src::Reg(reg_of(&m, 1, &p)), lockable)
        }
        0x89 | 0x87 | 0x01 | 0x09 | 0x21 | 0x29 | 0x31 => {
            let m = modrm_mem(&mut c, &p)?;
            let (op, lockable) = match opcode {
                0x89 => (StoreOp::Mov, false),
                0x87 => (StoreOp::Xchg, true),
                o => (StoreOp::Alu(alu_of_opcode(o & !1)), true),
            };
            (op, vsize, Src::Reg(reg_of(&m, vsize, &p)), lockable)
        }
        0xc6 | 0xc7 => {
            let m = modrm_mem(&mut c, &p)?;
            if m.reg != 0 {
                return Err(InsnError::NotHandled);
            }
            if opcode == 0xc6 {
                (StoreOp::Mov, 1, Src::Imm(c.uint(1)?), false)
            } else {
                (StoreOp::Mov, vsize, Src::Imm(imm_z(&mut c, vsize)?), false)
            }
        }
        0x80 => {
            let m = modrm_mem(&mut c, &p)?;
            let op = alu(m.reg).ok_or(InsnError::NotHandled)?;
            (StoreOp::Alu(op), 1, Src::Imm(c.uint(1)?), true)
        }
        0x81 => {
            let m = modrm_mem(&mut c, &p)?;
            let op = alu(m.reg).ok_or(InsnError::NotHandled)?;
            (
                StoreOp::Alu(op),
                vsize,
                Src::Imm(imm_z(&mut c, vsize)?),
                true,
            )
        }
        0x83 => {
            let m = modrm_mem(&mut c, &p)?;
            let op = alu(m.reg).ok_or(InsnError::NotHandled)?;
            (StoreOp::Alu(op), vsize, Src::Imm(imm_b_sx(&mut c)?), true)
        }
        0xa2 | 0xa3 => {
            // mov moffs,al / moffs,rAX.
            moffs(&mut c, &p)?;
            let size = if opcode == 0xa2 { 1 } else { vsize };
            (
                StoreOp::Mov,
                size,
                Src::Reg(Gpr {
                    num: 0,
                    size,
                    high8: false,
                }),
                false,
            )
        }
        _ => return Err(InsnError::NotHandled),
    };
    if p.lock && !lockable {
        return Err(InsnError::NotHandled); // #UD
    }
    Ok(Store {
        len: c.pos as u8,
        op,
        width,
        lock: p.lock,
        src,
    })
}

/// What a decoded load does with the value it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum LoadOp {
    /// `mov`, `movzx`: the register receives the value, zero-extended.
    Load,
    /// `movsx`, `movsxd`: the register receives the value, sign-extended.
    SignExtend,
    /// `reg op= mem` (`dst`: false for `cmp`, which keeps only the flags).
    RegOpMem { op: AluOp, dst: bool },
    /// `cmp`/`test` with the memory operand first: flags of `mem op src`.
    MemOpSrc { op: AluOp },
}

/// A decoded load from memory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct LoadInsn {
    /// Instruction length in bytes.
    pub(crate) len: u8,
    /// The operation.
    pub(crate) op: LoadOp,
    /// Width of the memory operand in bytes: 1, 2, 4 or 8.
    pub(crate) size: u8,
    /// The register operand (`Load`, `SignExtend`, `RegOpMem`), or the source of a
    /// `MemOpSrc` when it is a register.
    pub(crate) src: Src,
    /// The memory operand.
    pub(crate) mem: Mem,
}

/// Decodes `bytes` (64-bit code) as one of the loads the M2P emulation performs
/// ([`crate::m2p`]): `mov` r,m (8A, 8B, A0, A1), `movzx` (0F B6, 0F B7), `movsx`
/// (0F BE, 0F BF), `movsxd` (63), `add`/`or`/`and`/`sub`/`xor`/`cmp` r,m (02/03, 0A/0B,
/// 22/23, 2A/2B, 32/33, 3A/3B), `cmp` m,r and m,imm (38/39, 80/81/83 /7), `test` m,r
/// and m,imm (84/85, F6/F7 /0 and its alias /1). No `lock`.
pub(crate) fn decode_load(bytes: &[u8]) -> Result<LoadInsn, InsnError> {
    let mut c = Cursor { bytes, pos: 0 };
    let (p, opcode) = prefixes(&mut c)?;
    if p.lock {
        return Err(InsnError::NotHandled);
    }
    let vsize = p.vsize();
    let reg_op = |c: &mut Cursor<'_>, op: AluOp, dst: bool, size: u8| {
        let m = modrm_mem(c, &p)?;
        Ok::<_, InsnError>((
            LoadOp::RegOpMem { op, dst },
            size,
            Src::Reg(reg_of(&m, size, &p)),
            m.mem,
        ))
    };
    let (op, size, src, mem) = match opcode {
        0x8a | 0x8b => {
            let size = if opcode == 0x8a { 1 } else { vsize };
            let m = modrm_mem(&mut c, &p)?;
            (LoadOp::Load, size, Src::Reg(reg_of(&m, size, &p)), m.mem)
        }
        0xa0 | 0xa1 => {
            let size = if opcode == 0xa0 { 1 } else { vsize };
            let mem = moffs(&mut c, &p)?;
            let acc = Gpr {
                num: 0,
                size,
                high8: false,
            };
            (LoadOp::Load, size, Src::Reg(acc), mem)
        }
        0x63 => {
            // movsxd Gv, Ed (Ew with 0x66 and no REX.W).
            let m = modrm_mem(&mut c, &p)?;
            let size = if vsize == 2 { 2 } else { 4 };
            (
                LoadOp::SignExtend,
                size,
                Src::Reg(reg_of(&m, vsize, &p)),
                m.mem,
            )
        }
        0x02 | 0x0a | 0x22 | 0x2a | 0x32 | 0x3a => {
            let op = if opcode == 0x3a {
                AluOp::Sub
            } else {
                alu_of_opcode(opcode & !3)
            };
            reg_op(&mut c, op, opcode != 0x3a, 1)?
        }
        0x03 | 0x0b | 0x23 | 0x2b | 0x33 | 0x3b => {
            let op = if opcode == 0x3b {
                AluOp::Sub
            } else {
                alu_of_opcode(opcode & !3)
            };
            reg_op(&mut c, op, opcode != 0x3b, vsize)?
        }
        0x38 | 0x39 | 0x84 | 0x85 => {
            let size = if opcode & 1 == 0 { 1 } else { vsize };
            let op = if opcode < 0x80 {
                AluOp::Sub
            } else {
                AluOp::And
            };
            let m = modrm_mem(&mut c, &p)?;
            (
                LoadOp::MemOpSrc { op },
                size,
                Src::Reg(reg_of(&m, size, &p)),
                m.mem,
            )
        }
        0x80 | 0x81 | 0x83 | 0xf6 | 0xf7 => {
            let size = if opcode & 1 == 0 { 1 } else { vsize };
            let m = modrm_mem(&mut c, &p)?;
            let op = match (opcode, m.reg) {
                (0x80 | 0x81 | 0x83, 7) => AluOp::Sub,
                (0xf6 | 0xf7, 0 | 1) => AluOp::And, // /1: an alias of test
                _ => return Err(InsnError::NotHandled),
            };
            let imm = match opcode {
                0x80 | 0xf6 => c.uint(1)?,
                0x83 => imm_b_sx(&mut c)?,
                _ => imm_z(&mut c, size)?,
            };
            (LoadOp::MemOpSrc { op }, size, Src::Imm(imm), m.mem)
        }
        0x0f => {
            let op2 = c.byte()?;
            let (op, size) = match op2 {
                0xb6 => (LoadOp::Load, 1),
                0xb7 => (LoadOp::Load, 2),
                0xbe => (LoadOp::SignExtend, 1),
                0xbf => (LoadOp::SignExtend, 2),
                _ => return Err(InsnError::NotHandled),
            };
            let m = modrm_mem(&mut c, &p)?;
            (op, size, Src::Reg(reg_of(&m, vsize, &p)), m.mem)
        }
        _ => return Err(InsnError::NotHandled),
    };
    Ok(LoadInsn {
        len: c.pos as u8,
        op,
        size,
        src,
        mem,
    })
}

/// The register operand in the ModRM reg field.
fn reg_of(m: &ModRm, size: u8, p: &Prefixes) -> Gpr {
    gpr(m.reg | (p.r() << 3), size, p)
}

/// Iz: 16 or 32 bits, the 32-bit one sign-extended for a 64-bit operand.
fn imm_z(c: &mut Cursor<'_>, size: u8) -> Result<u64, InsnError> {
    Ok(match size {
        2 => c.uint(2)?,
        4 => c.uint(4)?,
        _ => c.uint(4)? as u32 as i32 as i64 as u64,
    })
}

/// Ib sign-extended (to 64 bits, as the operand-size forms define it).
fn imm_b_sx(c: &mut Cursor<'_>) -> Result<u64, InsnError> {
    Ok(c.uint(1)? as u8 as i8 as i64 as u64)
}

/// The operation of the r/m,r ALU opcodes 00, 08, 20, 28, 30.
fn alu_of_opcode(o: u8) -> AluOp {
    match o {
        0x00 => AluOp::Add,
        0x08 => AluOp::Or,
        0x20 => AluOp::And,
        0x28 => AluOp::Sub,
        _ => AluOp::Xor,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    extern crate std;

    use super::*;
    use crate::ptwr::iced_reference::decode_iced;
    use crate::ptwr::{decode, PtwrError};
    use crate::GuestRegs;
    use proptest::prelude::*;
    use std::vec::Vec;

    const BASE: u64 = 0xffff_8880_0123_4000;

    /// Legacy prefixes, each of which may come any number of times.
    const LEGACY: [u8; 11] = [
        0xf0, 0xf2, 0xf3, 0x2e, 0x36, 0x3e, 0x26, 0x64, 0x65, 0x66, 0x67,
    ];

    /// Every accepted opcode, and neighbours that are not accepted (loads, compares,
    /// other read-modify-writes, other 0F opcodes).
    const OPCODES: [&[u8]; 49] = [
        &[0x88],
        &[0x89],
        &[0xc6],
        &[0xc7],
        &[0xa2],
        &[0xa3],
        &[0x0f, 0xc3],
        &[0x86],
        &[0x87],
        &[0x00],
        &[0x01],
        &[0x08],
        &[0x09],
        &[0x20],
        &[0x21],
        &[0x28],
        &[0x29],
        &[0x30],
        &[0x31],
        &[0x80],
        &[0x81],
        &[0x83],
        &[0x0f, 0xab],
        &[0x0f, 0xb3],
        &[0x0f, 0xbb],
        &[0x0f, 0xba],
        &[0x0f, 0xb0],
        &[0x0f, 0xb1],
        &[0x0f, 0xc7],
        // Not accepted.
        &[0x8a],
        &[0x8b],
        &[0x8c],
        &[0x10],
        &[0x11],
        &[0x18],
        &[0x38],
        &[0x39],
        &[0x84],
        &[0x85],
        &[0x82],
        &[0xa0],
        &[0xa1],
        &[0xf6],
        &[0xf7],
        &[0xff],
        &[0x0f, 0xa3],
        &[0x0f, 0xc0],
        &[0x0f, 0xc1],
        &[0x0f, 0xb8],
    ];

    /// Guest registers with these sixteen GPRs, in kernel mode at `rip`.
    pub(crate) fn regs_from(v: &[u64; 16], rip: u64) -> GuestRegs {
        let mut r = GuestRegs {
            rip,
            rflags: 0x202,
            cs: 0xe033,
            ss: 0xe02b,
            ..GuestRegs::default()
        };
        for (k, &x) in v.iter().enumerate() {
            *r.gpr_mut(k as u8) = x;
        }
        r
    }

    /// Both decoders on the same input: both refuse, or both return the same operation.
    fn same(insn: &[u8], regs: &GuestRegs, cr2: u64, old: u64) -> Result<bool, TestCaseError> {
        let new = decode(insn, regs, cr2, old);
        let reference = decode_iced(insn, regs, cr2, old);
        match (&new, &reference) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b, "{:02x?}", insn),
            (Err(_), Err(_)) => {}
            _ => prop_assert!(
                false,
                "{:02x?} cr2 {:#x}: new {:?}, iced {:?}",
                insn,
                cr2,
                new,
                reference
            ),
        }
        // Where both refuse for a reason of the access, they agree on it.
        if let (Err(a @ (PtwrError::Misaligned | PtwrError::CrossesEntry)), Err(b)) =
            (&new, &reference)
        {
            prop_assert_eq!(a, b, "{:02x?}", insn);
        }
        Ok(new.is_ok())
    }

    /// An instruction of an accepted (or neighbouring) form of `ptwr`.
    fn form() -> impl Strategy<Value = Vec<u8>> {
        form_with(&OPCODES)
    }

    /// An instruction with one of `opcodes`: prefixes (legacy ones in any order and
    /// number, REX before the opcode or, ignored, before a legacy prefix), the opcode,
    /// then random ModRM, SIB, displacement and immediate bytes; cut to 15 bytes or,
    /// sometimes, shorter. Shared by the decoders' differential tests.
    pub(crate) fn form_with(opcodes: &'static [&'static [u8]]) -> impl Strategy<Value = Vec<u8>> {
        (
            proptest::collection::vec(proptest::sample::select(&LEGACY[..]), 0..5),
            proptest::option::of(0x40u8..=0x4f),
            proptest::option::of((0x40u8..=0x4f, 0usize..4)),
            proptest::sample::select(opcodes),
            proptest::collection::vec(any::<u8>(), 12),
            prop_oneof![8 => Just(15usize), 2 => 0usize..15],
        )
            .prop_map(|(mut pre, rex, stray, op, tail, cut)| {
                if let Some((r, at)) = stray {
                    pre.insert(at.min(pre.len()), r);
                }
                let mut v = pre;
                v.extend(rex);
                v.extend_from_slice(op);
                v.extend(tail);
                v.truncate(cut);
                v
            })
    }

    fn cr2() -> impl Strategy<Value = u64> {
        // Mostly aligned for the common widths, sometimes any byte of the entry.
        prop_oneof![
            4 => Just(BASE),
            2 => (0u64..2).prop_map(|k| BASE + 4 * k),
            1 => (0u64..4).prop_map(|k| BASE + 2 * k),
            2 => (0u64..8).prop_map(|k| BASE + k),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(20_000))]

        /// The accepted forms with random prefixes and operand bytes: the same answer
        /// as the iced-based decoder the engine used before.
        #[test]
        fn same_as_iced_on_forms(
            insn in form(),
            cr2 in cr2(),
            old in any::<u64>(),
            gprs in any::<[u64; 16]>(),
        ) {
            same(&insn, &regs_from(&gprs, 0xffff_ffff_8100_1000), cr2, old)?;
        }

        /// Random bytes: the same answer too (nearly always both refuse).
        #[test]
        fn same_as_iced_on_random_bytes(
            insn in proptest::collection::vec(any::<u8>(), 0..=15),
            cr2 in cr2(),
            old in any::<u64>(),
            gprs in any::<[u64; 16]>(),
        ) {
            same(&insn, &regs_from(&gprs, 0xffff_ffff_8100_1000), cr2, old)?;
        }

        /// Hostile input of any length: no panic, never more than 15 bytes used.
        #[test]
        fn hostile_bytes_are_bounded(insn in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(s) = decode_store(&insn) {
                prop_assert!(usize::from(s.len) <= MAX_LEN && usize::from(s.len) <= insn.len());
            }
        }
    }

    /// The differential test is not vacuous: a good share of the generated forms are
    /// accepted, of every kind.
    #[test]
    fn forms_are_accepted_often() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let regs = regs_from(&[7; 16], 0xffff_ffff_8100_1000);
        let (mut ok, mut kinds) = (0, [false; 6]);
        for _ in 0..5000 {
            let insn = form().new_tree(&mut runner).unwrap().current();
            if decode(&insn, &regs, BASE, 0x1234_5067).is_ok() {
                ok += 1;
                if let Ok(s) = decode_store(&insn) {
                    let k = match s.op {
                        StoreOp::Mov => 0,
                        StoreOp::Xchg => 1,
                        StoreOp::Alu(_) => 2,
                        StoreOp::Bit(_) => 3,
                        StoreOp::Cmpxchg => 4,
                        StoreOp::Cmpxchg8b => 5,
                    };
                    kinds[k] = true;
                }
            }
        }
        assert!(ok > 500, "{ok}");
        assert_eq!(kinds, [true; 6]);
    }
}
