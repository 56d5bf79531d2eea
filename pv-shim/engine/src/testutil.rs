//! Test support: a fake [`Platform`] over a byte vector and a small pagetable builder,
//! so every engine path runs against real 4-level tables the tests build themselves.

extern crate std;
use std::vec;
use std::vec::Vec;

use crate::{PhysError, Platform, Vcpu};

pub const MEM_SIZE: usize = 0x100_0000;
pub const P: u64 = 1;
pub const RW: u64 = 2;
pub const US: u64 = 4;
pub const PS: u64 = 0x80;
pub const UPPER: u64 = P | RW | US;

pub const KERNEL_L4: u64 = 0x1000;
pub const USER_L4: u64 = 0x2000;
pub const SHARED_INFO: u64 = 0x8000;

pub const DATA_VA: u64 = 0xffff_ffff_8000_0000;
pub const DATA_GPA: u64 = 0x40_0000;
pub const DATA_GPA2: u64 = 0x50_0000;
pub const RO_VA: u64 = DATA_VA + 0x2000;
pub const UNMAPPED_VA: u64 = DATA_VA + 0x3000;
pub const RO_L2_VA: u64 = 0xffff_ffff_8020_0000;
pub const SUPER2M_VA: u64 = 0xffff_ffff_8040_0000;
pub const SUPER1G_VA: u64 = 0xffff_ffff_4000_0000;
pub const KSTACK_VA: u64 = 0xffff_ffff_8060_0000;
pub const KSTACK_GPA: u64 = 0x70_0000;
pub const KSTACK_TOP: u64 = KSTACK_VA + 0x4000;
/// The last page of the address space, mapped so that arithmetic on pointers into it
/// is exercised up to the wrap.
pub const TOP_VA: u64 = 0xffff_ffff_ffff_f000;
pub const TOP_GPA: u64 = 0x90_0000;
pub const USER_VA: u64 = 0x40_0000;
pub const USER_GPA: u64 = 0x60_0000;

pub struct FakePlatform {
    pub mem: FakeMem,
    pub console_out: Vec<u8>,
    pub console_in: Vec<u8>,
    /// The CPUID policy: None answers `[leaf, subleaf, 0x1234, 0x5678]` (a policy with
    /// no leaves beyond 0 and an unknown vendor); Some answers from the list, zeros for
    /// a leaf not in it.
    pub cpuid: Option<Vec<(u32, u32, [u32; 4])>>,
    /// MSR effects the engine asked for, in order.
    pub effects: Vec<crate::msr::MsrEffect>,
    /// The read-only M2P table [`Platform::read_m2p`] serves (empty: none).
    pub m2p: Vec<u8>,
    next_frame: u64,
    /// CPUID leaves ((leaf, subleaf), eax..edx); empty: every leaf answers
    /// `[leaf, subleaf, 0x1234, 0x5678]`, otherwise a leaf not listed answers zeros.
    pub cpuid_leaves: Vec<((u32, u32), [u32; 4])>,
    /// The last XCR0 the engine handed to the host.
    pub xcr0: Option<u64>,
    /// Makes the host refuse every XCR0.
    pub xcr0_refused: bool,
    /// [`Platform::hypercall_preempt_check`] says true on every `n`th check since it
    /// last said true (None: never), so a test preempts a loop after a chosen number
    /// of items.
    pub preempt_after: Option<u64>,
    /// Checks since the last true answer.
    preempt_run: u64,
    /// vCPUs the engine kicked, in order.
    pub kicked: Vec<u32>,
    /// All preemption checks asked so far.
    pub preempt_checks: u64,
    /// The pagetable engine over `mem`, when a test enabled it ([`FakePlatform::enable_mm`]).
    pub mmstate: Option<(pv_mm::Mm, crate::mmu::BatchFlush)>,
    /// The vCPUs `VCPUOP_initialise` built, in order.
    pub initialised: Vec<(u32, crate::vcpu_context::NewVcpu)>,
}

/// Guest memory as the pagetable engine reads and writes it (plain stores: the fake
/// host has no shadow MMU to keep coherent).
pub struct FakeMem(pub Vec<u8>);

impl core::ops::Deref for FakeMem {
    type Target = Vec<u8>;
    fn deref(&self) -> &Vec<u8> {
        &self.0
    }
}

impl core::ops::DerefMut for FakeMem {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.0
    }
}

impl FakeMem {
    fn entry_at(mfn: u64, slot: usize) -> usize {
        (mfn as usize) * 4096 + (slot & 511) * 8
    }
}

impl pv_mm::FrameAccess for FakeMem {
    fn read_entry(&self, mfn: u64, slot: usize) -> u64 {
        let at = Self::entry_at(mfn, slot);
        self.0
            .get(at..at + 8)
            .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap()))
    }
    fn write_entry(&mut self, mfn: u64, slot: usize, value: u64) {
        let at = Self::entry_at(mfn, slot);
        if let Some(b) = self.0.get_mut(at..at + 8) {
            b.copy_from_slice(&value.to_le_bytes());
        }
    }
    fn copy_frame(&mut self, dst: u64, src: u64) {
        for slot in 0..512 {
            let v = self.read_entry(src, slot);
            self.write_entry(dst, slot, v);
        }
    }
    fn clear_frame(&mut self, mfn: u64) {
        for slot in 0..512 {
            self.write_entry(mfn, slot, 0);
        }
    }
    fn write_m2p(&mut self, _mfn: u64, _pfn: u64) {}
}

impl Platform for FakePlatform {
    fn kick_vcpu(&mut self, id: u32) {
        self.kicked.push(id);
    }
    // The fake host runs the engine on one thread: plain read-modify-write is atomic
    // enough.
    fn atomic_or_u64(&mut self, gpa: u64, bits: u64) -> Result<u64, PhysError> {
        crate::plain_or_u64(self, gpa, bits)
    }
    fn atomic_and_u64(&mut self, gpa: u64, mask: u64) -> Result<u64, PhysError> {
        crate::plain_and_u64(self, gpa, mask)
    }
    fn vcpu_initialised(&mut self, id: u32, new: &crate::vcpu_context::NewVcpu) {
        self.initialised.push((id, new.clone()));
    }
    fn arch_capabilities(&self) -> u64 {
        0
    }
    // No backends here: a notification goes nowhere.
    fn notify_backend(&mut self, _remote_port: u32) {}
    fn system_time_ns(&self) -> u64 {
        0
    }
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), PhysError> {
        let start = usize::try_from(gpa).map_err(|_| PhysError::OutOfRange)?;
        let end = start.checked_add(buf.len()).ok_or(PhysError::OutOfRange)?;
        buf.copy_from_slice(self.mem.get(start..end).ok_or(PhysError::OutOfRange)?);
        Ok(())
    }
    fn write_phys(&mut self, gpa: u64, buf: &[u8]) -> Result<(), PhysError> {
        let start = usize::try_from(gpa).map_err(|_| PhysError::OutOfRange)?;
        let end = start.checked_add(buf.len()).ok_or(PhysError::OutOfRange)?;
        self.mem
            .get_mut(start..end)
            .ok_or(PhysError::OutOfRange)?
            .copy_from_slice(buf);
        Ok(())
    }
    fn console_write(&mut self, bytes: &[u8]) {
        self.console_out.extend_from_slice(bytes);
    }
    fn cpuid(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        if let Some(t) = &self.cpuid {
            return t
                .iter()
                .find(|(l, s, _)| *l == leaf && *s == subleaf)
                .map_or([0; 4], |e| e.2);
        }
        if self.cpuid_leaves.is_empty() {
            return [leaf, subleaf, 0x1234, 0x5678];
        }
        self.cpuid_leaves
            .iter()
            .find(|(k, _)| *k == (leaf, subleaf))
            .map_or([0; 4], |(_, v)| *v)
    }
    fn msr_effect(&mut self, effect: crate::msr::MsrEffect) {
        self.effects.push(effect);
    }
    fn set_xcr0(&mut self, xcr0: u64) -> bool {
        if self.xcr0_refused {
            return false;
        }
        self.xcr0 = Some(xcr0);
        true
    }
    fn read_m2p(&self, offset: u64, buf: &mut [u8]) -> Result<(), PhysError> {
        let start = usize::try_from(offset).map_err(|_| PhysError::OutOfRange)?;
        let end = start.checked_add(buf.len()).ok_or(PhysError::OutOfRange)?;
        buf.copy_from_slice(self.m2p.get(start..end).ok_or(PhysError::OutOfRange)?);
        Ok(())
    }
    fn hypercall_preempt_check(&mut self) -> bool {
        self.preempt_checks += 1;
        let Some(n) = self.preempt_after else {
            return false;
        };
        self.preempt_run += 1;
        if self.preempt_run >= n {
            self.preempt_run = 0;
            return true;
        }
        false
    }
    fn mm(&mut self) -> Option<crate::MmCtx<'_>> {
        let (mm, flush) = self.mmstate.as_mut()?;
        Some(crate::MmCtx {
            mm,
            mem: &mut self.mem,
            flush,
        })
    }
    fn console_read(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.console_in.len());
        buf[..n].copy_from_slice(&self.console_in[..n]);
        self.console_in.drain(..n);
        n
    }
}

/// Writes instruction bytes at guest virtual `rip`, through the vCPU's page tables.
pub fn place(p: &mut FakePlatform, vcpu: &Vcpu, rip: u64, bytes: &[u8]) {
    let gpa = crate::guest::translate(vcpu.hw_state().cr3, p, rip, false).expect("mapped");
    for (i, b) in bytes.iter().enumerate() {
        p.mem[gpa as usize + i] = *b;
    }
}

impl FakePlatform {
    pub fn new() -> Self {
        Self {
            mem: FakeMem(vec![0; MEM_SIZE]),
            console_out: Vec::new(),
            console_in: Vec::new(),
            cpuid: None,
            effects: Vec::new(),
            m2p: Vec::new(),
            next_frame: 0x10_0000,
            cpuid_leaves: Vec::new(),
            xcr0: None,
            xcr0_refused: false,
            preempt_after: None,
            preempt_run: 0,
            kicked: Vec::new(),
            preempt_checks: 0,
            mmstate: None,
            initialised: Vec::new(),
        }
    }
    /// Gives the platform a pagetable engine over its memory: the domain owns every
    /// frame of `mem`, nothing is typed yet.
    pub fn enable_mm(&mut self) {
        let mm = pv_mm::Mm::new(pv_mm::MmConfig {
            nr_frames: (MEM_SIZE / 4096) as u64,
            hole_l4: [0; 16],
            shared_frames: pv_mm::SharedFrames::EMPTY,
            max_machine_frame: (MEM_SIZE / 4096) as u64,
        });
        self.mmstate = Some((mm, crate::mmu::BatchFlush::default()));
    }
    /// Sets the CPUID policy to `vendor` (a 12-byte leaf-0 string) with `features`, and
    /// maximum leaves covering every leaf the MSR table reads.
    pub fn set_policy(&mut self, vendor: &[u8; 12], features: &[crate::msr::Feature]) {
        let word =
            |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
        let mut t = vec![
            (0, 0, [0xd, word(0), word(8), word(4)]),
            (0x8000_0000, 0, [0x8000_0021, 0, 0, 0]),
            (7, 0, [2, 0, 0, 0]),
        ];
        for ft in features {
            let Some((leaf, sub, reg)) = ft.cpuid_location() else {
                continue;
            };
            let slot = match t.iter().position(|(l, s, _)| (*l, *s) == (leaf, sub)) {
                Some(i) => i,
                None => {
                    t.push((leaf, sub, [0; 4]));
                    t.len() - 1
                }
            };
            t[slot].2[reg.index()] |= ft.mask();
        }
        self.cpuid = Some(t);
    }
    pub fn r64(&self, gpa: u64) -> u64 {
        let g = gpa as usize;
        u64::from_le_bytes(self.mem[g..g + 8].try_into().unwrap())
    }
    pub fn w64(&mut self, gpa: u64, v: u64) {
        let g = gpa as usize;
        self.mem[g..g + 8].copy_from_slice(&v.to_le_bytes());
    }
    fn alloc(&mut self) -> u64 {
        let f = self.next_frame;
        self.next_frame += 0x1000;
        f
    }
    /// Returns the table the entry at `table[idx]` points to, creating it if absent.
    fn descend(&mut self, table: u64, idx: u64) -> u64 {
        let e = self.r64(table + idx * 8);
        if e & P != 0 {
            return e & 0x000f_ffff_ffff_f000;
        }
        let t = self.alloc();
        self.w64(table + idx * 8, t | UPPER);
        t
    }
    /// Maps one 4 KiB page; `level` picks which entry gets `flags` (1 = the L1 entry), the
    /// others get P|RW|U.
    pub fn map(&mut self, l4: u64, va: u64, gpa: u64, flags: u64) {
        let l3 = self.descend(l4, (va >> 39) & 0x1ff);
        let l2 = self.descend(l3, (va >> 30) & 0x1ff);
        let l1 = self.descend(l2, (va >> 21) & 0x1ff);
        self.w64(l1 + ((va >> 12) & 0x1ff) * 8, gpa | flags);
    }
    /// Rewrites the flags of the L2 entry covering `va`.
    pub fn set_l2_flags(&mut self, l4: u64, va: u64, flags: u64) {
        let l3 = self.descend(l4, (va >> 39) & 0x1ff);
        let l2 = self.descend(l3, (va >> 30) & 0x1ff);
        let slot = l2 + ((va >> 21) & 0x1ff) * 8;
        let e = self.r64(slot);
        self.w64(slot, (e & 0x000f_ffff_ffff_f000) | flags);
    }
    pub fn map_2m(&mut self, l4: u64, va: u64, gpa: u64) {
        let l3 = self.descend(l4, (va >> 39) & 0x1ff);
        let l2 = self.descend(l3, (va >> 30) & 0x1ff);
        self.w64(l2 + ((va >> 21) & 0x1ff) * 8, gpa | UPPER | PS);
    }
    pub fn map_1g(&mut self, l4: u64, va: u64, gpa: u64) {
        let l3 = self.descend(l4, (va >> 39) & 0x1ff);
        self.w64(l3 + ((va >> 30) & 0x1ff) * 8, gpa | UPPER | PS);
    }
}

/// A vCPU in kernel mode on KERNEL_L4 and a platform with the test mappings.
pub fn setup() -> (Vcpu, crate::Domain, FakePlatform) {
    let mut p = FakePlatform::new();
    p.map(KERNEL_L4, DATA_VA, DATA_GPA, UPPER);
    p.map(KERNEL_L4, DATA_VA + 0x1000, DATA_GPA2, UPPER);
    p.map(KERNEL_L4, RO_VA, DATA_GPA + 0x1000, P | US);
    p.map(KERNEL_L4, RO_L2_VA, DATA_GPA + 0x2000, UPPER);
    p.set_l2_flags(KERNEL_L4, RO_L2_VA, P | US);
    p.map_2m(KERNEL_L4, SUPER2M_VA, 0x20_0000);
    p.map_1g(KERNEL_L4, SUPER1G_VA, 0);
    for i in 0..4 {
        p.map(
            KERNEL_L4,
            KSTACK_VA + i * 0x1000,
            KSTACK_GPA + i * 0x1000,
            UPPER,
        );
    }
    p.map(USER_L4, USER_VA, USER_GPA, UPPER);
    p.map(KERNEL_L4, TOP_VA, TOP_GPA, UPPER);
    let v = Vcpu::new(0, KERNEL_L4, SHARED_INFO);
    (v, crate::Domain::new(SHARED_INFO, 1), p)
}

/// Registers that make every field distinct, to catch writes to fields an operation does
/// not own.
pub fn distinct_regs() -> crate::GuestRegs {
    crate::GuestRegs {
        rax: 0x1111,
        rbx: 0x2222,
        rcx: 0x3333,
        rdx: 0x4444,
        rsi: 0x5555,
        rdi: 0x6666,
        rsp: KSTACK_TOP - 0x100,
        rbp: 0x8888,
        r8: 0x9999,
        r9: 0xaaaa,
        r10: 0xbbbb,
        r11: 0x202,
        r12: 0xcccc,
        r13: 0xdddd,
        r14: 0xeeee,
        r15: 0xffff,
        rip: 0xffff_ffff_8100_0000,
        rflags: 0x202,
        cs: 0xe033,
        ss: 0xe02b,
    }
}
