//! The model-specific registers a PV guest may read and write, as one explicit table
//! ([`MSRS`]). A PV kernel runs at CPL3, so every `rdmsr`/`wrmsr` faults with #GP(0) and
//! reaches [`crate::emulate::emulate_privileged_op`], which asks [`guest_rdmsr`] /
//! [`guest_wrmsr`] here.
//!
//! The reference for which MSRs exist and what they do for a PV domU is Xen's
//! `guest_rdmsr`/`guest_wrmsr` (`xen/arch/x86/msr.c`), the PV fallbacks `read_msr`/
//! `write_msr` (`pv/emul-priv-op.c`) and vMCE (`cpu/mcheck/vmce.c`). Each row says when
//! the MSR exists (a predicate over the guest's CPUID policy, read through
//! [`Platform::cpuid`]), what a read returns, which writes are valid, and what a write
//! does: performed for real through [`Platform::msr_effect`] (barriers, flushes, the
//! speculation controls KVM loads on entry), stored per vCPU ([`VcpuMsrs`]) and read
//! back, or dropped. Everything else is #GP, as on Xen for an MSR it does not know.
//!
//! [`FEATURE_MSRS`] lists the CPUID features that imply an MSR, so a host can prove that
//! every such feature its policy offers has a row here.

use crate::{Platform, Vcpu};

/// Why an MSR access is refused. Every variant means the guest takes #GP(0); the
/// variants only tell tests and diagnostics apart.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrFault {
    /// No row: the MSR is unknown to a PV guest.
    Unknown,
    /// The row exists but the CPUID policy (or the vendor) does not offer the MSR.
    Absent,
    /// A read of a write-only (command) MSR.
    WriteOnly,
    /// A write of a read-only MSR.
    ReadOnly,
    /// A write with reserved bits set or a value the MSR does not accept.
    Invalid,
}

/// A write that must also happen in hardware: the host performs it on the vCPU (the VMM
/// through `KVM_SET_MSRS`, where KVM either writes it at once or loads it on every
/// entry).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsrEffect {
    /// `MSR_PRED_CMD` with IBPB and/or SBPB: a branch-predictor barrier now.
    PredCmd(u64),
    /// `MSR_FLUSH_CMD` with L1D_FLUSH: flush the L1 data cache now.
    FlushCmd(u64),
    /// The guest's new `MSR_SPEC_CTRL`, for the host to run the guest with.
    SpecCtrl(u64),
    /// The guest's new `MSR_VIRT_SPEC_CTRL` (hosts without AMD_SSBD).
    VirtSpecCtrl(u64),
    /// The guest's new `MSR_TSC_AUX`, what `rdtscp`/`rdpid` return in the guest.
    TscAux(u32),
}

impl MsrEffect {
    /// The MSR index and value the host writes to the vCPU.
    pub fn msr_write(self) -> (u32, u64) {
        match self {
            Self::PredCmd(v) => (MSR_PRED_CMD, v),
            Self::FlushCmd(v) => (MSR_FLUSH_CMD, v),
            Self::SpecCtrl(v) => (MSR_SPEC_CTRL, v),
            Self::VirtSpecCtrl(v) => (MSR_VIRT_SPEC_CTRL, v),
            Self::TscAux(v) => (MSR_TSC_AUX, u64::from(v)),
        }
    }
}

// MSR indices (Xen's `msr-index.h` names without the prefix noise).
/// MSR_P5_MC_ADDR.
pub const MSR_P5_MC_ADDR: u32 = 0x0;
/// MSR_P5_MC_TYPE.
pub const MSR_P5_MC_TYPE: u32 = 0x1;
/// MSR_IA32_PLATFORM_ID.
pub const MSR_PLATFORM_ID: u32 = 0x17;
/// MSR_APIC_BASE.
pub const MSR_APIC_BASE: u32 = 0x1b;
/// MSR_IA32_TSC_ADJUST.
pub const MSR_TSC_ADJUST: u32 = 0x3b;
/// MSR_IA32_FEATURE_CONTROL.
pub const MSR_FEATURE_CONTROL: u32 = 0x3a;
/// MSR_SPEC_CTRL.
pub const MSR_SPEC_CTRL: u32 = 0x48;
/// MSR_PRED_CMD.
pub const MSR_PRED_CMD: u32 = 0x49;
/// MSR_IA32_UCODE_REV (MSR_AMD_PATCHLEVEL on AMD).
pub const MSR_UCODE_REV: u32 = 0x8b;
/// MSR_INTEL_PLATFORM_INFO.
pub const MSR_PLATFORM_INFO: u32 = 0xce;
/// MSR_IA32_MPERF.
pub const MSR_MPERF: u32 = 0xe7;
/// MSR_IA32_APERF.
pub const MSR_APERF: u32 = 0xe8;
/// MSR_ARCH_CAPABILITIES.
pub const MSR_ARCH_CAPABILITIES: u32 = 0x10a;
/// MSR_FLUSH_CMD.
pub const MSR_FLUSH_CMD: u32 = 0x10b;
/// MSR_INTEL_MISC_FEATURES_ENABLES.
pub const MSR_MISC_FEATURES_ENABLES: u32 = 0x140;
/// MSR_IA32_MCG_CAP.
pub const MSR_MCG_CAP: u32 = 0x179;
/// MSR_IA32_MCG_STATUS.
pub const MSR_MCG_STATUS: u32 = 0x17a;
/// MSR_IA32_MCG_CTL.
pub const MSR_MCG_CTL: u32 = 0x17b;
/// MSR_IA32_PERF_STATUS.
pub const MSR_PERF_STATUS: u32 = 0x198;
/// MSR_IA32_PERF_CTL.
pub const MSR_PERF_CTL: u32 = 0x199;
/// MSR_IA32_THERM_CONTROL.
pub const MSR_THERM_CONTROL: u32 = 0x19a;
/// MSR_IA32_THERM_STATUS.
pub const MSR_THERM_STATUS: u32 = 0x19c;
/// MSR_IA32_MISC_ENABLE.
pub const MSR_MISC_ENABLE: u32 = 0x1a0;
/// MSR_IA32_ENERGY_PERF_BIAS.
pub const MSR_ENERGY_PERF_BIAS: u32 = 0x1b0;
/// MSR_IA32_CR_PAT.
pub const MSR_PAT: u32 = 0x277;
/// MSR_IA32_MC0_CTL2 (MCi_CTL2 is 0x280 + i).
pub const MSR_MC0_CTL2: u32 = 0x280;
/// MSR_IA32_PERF_CAPABILITIES.
pub const MSR_PERF_CAPABILITIES: u32 = 0x345;
/// MSR_IA32_MC0_CTL (MCi_CTL/STATUS/ADDR/MISC are 0x400 + 4i + 0..3).
pub const MSR_MC0_CTL: u32 = 0x400;
/// MSR_IA32_MCG_EXT_CTL (no row: it exists only with LMCE, which a PV guest never has).
pub const MSR_MCG_EXT_CTL: u32 = 0x4d0;
/// MSR_IA32_XSS.
pub const MSR_XSS: u32 = 0xda0;
/// MSR_EFER.
pub const MSR_EFER: u32 = 0xc000_0080;
/// MSR_FS_BASE.
pub const MSR_FS_BASE: u32 = 0xc000_0100;
/// MSR_GS_BASE.
pub const MSR_GS_BASE: u32 = 0xc000_0101;
/// MSR_SHADOW_GS_BASE (KERNEL_GS_BASE).
pub const MSR_SHADOW_GS_BASE: u32 = 0xc000_0102;
/// MSR_TSC_AUX.
pub const MSR_TSC_AUX: u32 = 0xc000_0103;
/// MSR_K8_HWCR (Linux: MSR_K7_HWCR).
pub const MSR_K8_HWCR: u32 = 0xc001_0015;
/// MSR_AMD64_NB_CFG.
pub const MSR_AMD64_NB_CFG: u32 = 0xc001_001f;
/// MSR_K7_FID_VID_CTL (first of the two FID/VID MSRs).
pub const MSR_K7_FID_VID_CTL: u32 = 0xc001_0041;
/// MSR_K7_FID_VID_STATUS.
pub const MSR_K7_FID_VID_STATUS: u32 = 0xc001_0042;
/// MSR_K8_PSTATE_LIMIT (first of the P-state MSRs, through MSR_K8_PSTATE7).
pub const MSR_K8_PSTATE_LIMIT: u32 = 0xc001_0061;
/// MSR_K8_PSTATE7.
pub const MSR_K8_PSTATE7: u32 = 0xc001_006b;
/// MSR_VIRT_SPEC_CTRL.
pub const MSR_VIRT_SPEC_CTRL: u32 = 0xc001_011f;
/// MSR_AMD_OSVW_ID_LENGTH.
pub const MSR_AMD_OSVW_ID_LENGTH: u32 = 0xc001_0140;
/// MSR_AMD_OSVW_STATUS.
pub const MSR_AMD_OSVW_STATUS: u32 = 0xc001_0141;
/// MSR_AMD64_DR1_ADDRESS_MASK (DR1-DR3 masks are consecutive).
pub const MSR_AMD64_DR1_ADDRESS_MASK: u32 = 0xc001_1019;
/// MSR_AMD64_DR3_ADDRESS_MASK.
pub const MSR_AMD64_DR3_ADDRESS_MASK: u32 = 0xc001_101b;
/// MSR_AMD64_DR0_ADDRESS_MASK.
pub const MSR_AMD64_DR0_ADDRESS_MASK: u32 = 0xc001_1027;
/// MSR_AMD64_DE_CFG.
pub const MSR_AMD64_DE_CFG: u32 = 0xc001_1029;

// Bits.
/// SPEC_CTRL.IBRS.
pub const SPEC_CTRL_IBRS: u64 = 1 << 0;
/// SPEC_CTRL.STIBP.
pub const SPEC_CTRL_STIBP: u64 = 1 << 1;
/// SPEC_CTRL.SSBD.
pub const SPEC_CTRL_SSBD: u64 = 1 << 2;
/// SPEC_CTRL.IPRED_DIS_U and IPRED_DIS_S.
pub const SPEC_CTRL_IPRED_DIS: u64 = (1 << 3) | (1 << 4);
/// SPEC_CTRL.RRSBA_DIS_U and RRSBA_DIS_S.
pub const SPEC_CTRL_RRSBA_DIS: u64 = (1 << 5) | (1 << 6);
/// SPEC_CTRL.PSFD.
pub const SPEC_CTRL_PSFD: u64 = 1 << 7;
/// SPEC_CTRL.BHI_DIS_S.
pub const SPEC_CTRL_BHI_DIS_S: u64 = 1 << 10;
/// PRED_CMD.IBPB.
pub const PRED_CMD_IBPB: u64 = 1 << 0;
/// PRED_CMD.SBPB.
pub const PRED_CMD_SBPB: u64 = 1 << 7;
/// FLUSH_CMD.L1D.
pub const FLUSH_CMD_L1D: u64 = 1 << 0;
/// DE_CFG bit 1: LFENCE is dispatch serialising.
pub const DE_CFG_LFENCE_SERIALISE: u64 = 1 << 1;
/// FEATURE_CONTROL.LOCK.
pub const FEATURE_CONTROL_LOCK: u64 = 1 << 0;
/// APIC_BASE: this is the bootstrap processor.
pub const APIC_BASE_BSP: u64 = 1 << 8;
/// APIC_BASE: the local APIC is enabled.
pub const APIC_BASE_ENABLE: u64 = 1 << 11;
/// The architectural default local APIC base.
pub const APIC_DEFAULT_PHYS_BASE: u64 = 0xfee0_0000;

/// MSR_IA32_MISC_ENABLE as a PV guest sees it (Xen's `guest_misc_enable` over a host
/// with fast strings on): fast strings, BTS and PEBS unavailable, xTPR disabled.
pub const MISC_ENABLE_GUEST: u64 = (1 << 0) | (1 << 11) | (1 << 12) | (1 << 23);
/// The PAT Xen gives every PV guest (`XEN_MSR_PAT`).
pub const XEN_MSR_PAT: u64 = 0x0000_0501_0007_0406;
/// EFER as a 64-bit PV guest runs: SCE | LME | LMA | NXE.
pub const GUEST_EFER: u64 = 0xd01;

// vMCE.
/// Banks a guest has (Xen's `GUEST_MC_BANK_NUM`).
pub const GUEST_MC_BANK_NUM: usize = 2;
/// Banks whose MSRs are routed to vMCE at all: 0x400-0x47f and 0x280-0x29f hold 32;
/// those past [`GUEST_MC_BANK_NUM`] read 0 and drop writes, as on Xen.
const MC_BANK_MSR_BANKS: u32 = 32;
/// MCG_CAP.CTL_P: MCG_CTL is present.
pub const MCG_CTL_P: u64 = 1 << 8;
/// MCG_CAP.CMCI_P (Intel).
pub const MCG_CMCI_P: u64 = 1 << 10;
/// MCG_CAP.TES_P (Intel).
pub const MCG_TES_P: u64 = 1 << 11;
/// MCG_CAP.SER_P (Intel).
pub const MCG_SER_P: u64 = 1 << 24;
/// MCG_CAP an Intel-vendor guest sees: software error recovery, threshold-based error
/// status and CMCI offered (a CMCI is never injected), two banks, no MCG_CTL.
pub const INTEL_GUEST_MCG_CAP: u64 = MCG_SER_P | MCG_TES_P | MCG_CMCI_P | GUEST_MC_BANK_NUM as u64;
/// MCG_CAP every other vendor's guest sees: two banks and nothing else.
pub const AMD_GUEST_MCG_CAP: u64 = GUEST_MC_BANK_NUM as u64;

/// One guest MCA bank (Xen's `struct vmce_bank`). STATUS/ADDR/MISC only ever hold what
/// an injected error would put there; pvkvm injects none, so they read 0 until the guest
/// writes 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmceBank {
    /// MCi_STATUS.
    pub mci_status: u64,
    /// MCi_ADDR.
    pub mci_addr: u64,
    /// MCi_MISC.
    pub mci_misc: u64,
    /// MCi_CTL2 (Intel).
    pub mci_ctl2: u64,
}

/// Per-vCPU machine-check state (Xen's `struct vmce`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Vmce {
    /// MCG_STATUS.
    pub mcg_status: u64,
    /// The guest's banks.
    pub bank: [VmceBank; GUEST_MC_BANK_NUM],
}

/// Per-vCPU MSR values a PV guest writes and reads back (Xen's `struct vcpu_msrs`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VcpuMsrs {
    /// MSR_SPEC_CTRL.
    pub spec_ctrl: u64,
    /// MSR_VIRT_SPEC_CTRL where it is not folded into SPEC_CTRL (no AMD_SSBD).
    pub virt_spec_ctrl: u64,
    /// MSR_TSC_AUX.
    pub tsc_aux: u32,
    /// MSR_INTEL_MISC_FEATURES_ENABLES.
    pub misc_features_enables: u64,
    /// MSR_IA32_XSS.
    pub xss: u64,
    /// MSR_AMD64_DR{0..3}_ADDRESS_MASK.
    pub dr_mask: [u32; 4],
    /// Machine-check banks and status.
    pub vmce: Vmce,
}

/// A CPU vendor, from leaf 0's vendor string.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD.
    Amd,
    /// HygonGenuine.
    Hygon,
    /// CentaurHauls.
    Centaur,
    /// "  Shanghai  ".
    Shanghai,
    /// Anything else.
    Other,
}

impl Vendor {
    fn intel_like(self) -> bool {
        matches!(self, Self::Intel | Self::Centaur | Self::Shanghai)
    }
    fn amd_like(self) -> bool {
        matches!(self, Self::Amd | Self::Hygon)
    }
}

pub use xen_abi::cpufeatureset::{Feature, Reg};

/// The CPUID features the table depends on, from Xen's featureset (`xen-abi`): the
/// numbers live there once.
pub mod feature {
    pub use xen_abi::cpufeatureset::feat::{
        AMD_SSBD, AMD_STIBP, ARCH_CAPS, ARCH_LBR, BHI_CTRL, CORE_CAPS, DBEXT, DS, IBPB, IBRS,
        IBRSB, INTEL_PSFD, IPRED_CTRL, L1D_FLUSH, LWP, MCA, MCE, MPX, MTRR, OSVW, PDCM, PKS, PQE,
        PQM, PROC_TRACE, PSFD, RDPID, RDTSCP, RRSBA_CTRL, SBPB, SDBG, SSBD, STIBP, SVM, TSC_ADJUST,
        TSC_DEADLINE, VIRT_SSBD, WAITPKG, X2APIC, XSAVES,
    };
}

use feature as f;

/// The parts of the guest's CPUID policy the table looks at, read once per access.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    vendor: Vendor,
    /// (leaf, subleaf, registers) for every leaf a [`Feature`] names; zeros where the
    /// leaf is past the policy's maximum.
    leaves: [(u32, u32, [u32; 4]); POLICY_LEAVES.len()],
    /// `MSR_ARCH_CAPABILITIES` as the policy gives it ([`Platform::arch_capabilities`]).
    arch_caps: u64,
}

/// Leaves (and subleaves) the features above live in.
const POLICY_LEAVES: [(u32, u32); 7] = [
    (1, 0),
    (7, 0),
    (7, 2),
    (0xd, 1),
    (0x8000_0001, 0),
    (0x8000_0008, 0),
    (0x8000_0021, 0),
];

impl Policy {
    /// Reads the policy through the platform. A leaf past the maximum leaf 0 (or
    /// 0x80000000) reports, or a leaf-7 subleaf past 7.0 EAX, counts as all zeros, so
    /// a host's out-of-range answer is never taken for a feature.
    pub fn read(p: &dyn Platform) -> Self {
        let [max_basic, b, c, d] = p.cpuid(0, 0);
        let max_ext = p.cpuid(0x8000_0000, 0)[0];
        let max_leaf7_sub = if max_basic >= 7 { p.cpuid(7, 0)[0] } else { 0 };
        let mut name = [0u8; 12];
        name[..4].copy_from_slice(&b.to_le_bytes());
        name[4..8].copy_from_slice(&d.to_le_bytes());
        name[8..].copy_from_slice(&c.to_le_bytes());
        let vendor = match &name {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" => Vendor::Amd,
            b"HygonGenuine" => Vendor::Hygon,
            b"CentaurHauls" => Vendor::Centaur,
            b"  Shanghai  " => Vendor::Shanghai,
            _ => Vendor::Other,
        };
        let mut leaves = [(0, 0, [0; 4]); POLICY_LEAVES.len()];
        for (slot, &(leaf, sub)) in leaves.iter_mut().zip(POLICY_LEAVES.iter()) {
            let present = if leaf >= 0x8000_0000 {
                max_ext >= 0x8000_0000 && leaf <= max_ext
            } else {
                leaf <= max_basic && (leaf != 7 || sub <= max_leaf7_sub)
            };
            let regs = if present { p.cpuid(leaf, sub) } else { [0; 4] };
            *slot = (leaf, sub, regs);
        }
        Self {
            vendor,
            leaves,
            arch_caps: p.arch_capabilities(),
        }
    }

    /// The vendor.
    pub fn vendor(&self) -> Vendor {
        self.vendor
    }

    /// Whether the policy offers `feat`.
    pub fn has(&self, feat: Feature) -> bool {
        let Some((leaf, sub, reg)) = feat.cpuid_location() else {
            return false;
        };
        let Some(&(_, _, regs)) = self.leaves.iter().find(|(l, s, _)| *l == leaf && *s == sub)
        else {
            return false;
        };
        regs[reg.index()] & feat.mask() != 0
    }
}

impl Policy {
    /// A policy of `vendor` offering exactly `features` (tests, and hosts proving their
    /// policy against [`FEATURE_MSRS`]).
    pub fn with_features(vendor: Vendor, features: &[Feature]) -> Self {
        let mut leaves = [(0, 0, [0u32; 4]); POLICY_LEAVES.len()];
        for (slot, &(leaf, sub)) in leaves.iter_mut().zip(POLICY_LEAVES.iter()) {
            let mut regs = [0u32; 4];
            for ft in features {
                if let Some((l, s, reg)) = ft.cpuid_location() {
                    if (l, s) == (leaf, sub) {
                        regs[reg.index()] |= ft.mask();
                    }
                }
            }
            *slot = (leaf, sub, regs);
        }
        Self {
            vendor,
            leaves,
            arch_caps: 0,
        }
    }
}

/// What a row's read does: the value, or why it faults.
pub type ReadFn = fn(&Vcpu, &Policy, u32) -> Result<u64, MsrFault>;
/// What a row's write does: None when nothing beyond the vCPU's state changes, the
/// effect the host must perform otherwise, or why it faults.
pub type WriteFn = fn(&mut Vcpu, &Policy, u32, u64) -> Result<Option<MsrEffect>, MsrFault>;

/// One row of the table: an MSR (or a contiguous range with one meaning).
pub struct MsrRow {
    /// First MSR index.
    pub first: u32,
    /// Last MSR index (inclusive).
    pub last: u32,
    /// Xen's name.
    pub name: &'static str,
    /// Whether the MSR exists for a guest with this policy; when not, both directions
    /// are #GP ([`MsrFault::Absent`]).
    pub exists: fn(&Policy) -> bool,
    /// A read.
    pub read: ReadFn,
    /// A write.
    pub write: WriteFn,
}

// Building blocks the rows share.
fn always(_: &Policy) -> bool {
    true
}
fn intel_like(p: &Policy) -> bool {
    p.vendor.intel_like()
}
fn amd_like(p: &Policy) -> bool {
    p.vendor.amd_like()
}
fn read_zero(_: &Vcpu, _: &Policy, _: u32) -> Result<u64, MsrFault> {
    Ok(0)
}
fn write_only(_: &Vcpu, _: &Policy, _: u32) -> Result<u64, MsrFault> {
    Err(MsrFault::WriteOnly)
}
fn read_only(_: &mut Vcpu, _: &Policy, _: u32, _: u64) -> Result<Option<MsrEffect>, MsrFault> {
    Err(MsrFault::ReadOnly)
}
/// Accepted and ignored: the MSR is the host's business (power management, northbridge,
/// machine-check controls a guest cannot change).
fn drop_write(_: &mut Vcpu, _: &Policy, _: u32, _: u64) -> Result<Option<MsrEffect>, MsrFault> {
    Ok(None)
}

/// Bits of SPEC_CTRL a guest may set (Xen's `msr_spec_ctrl_valid_bits`). STIBP is
/// always allowed: hardware without it ignores the bit.
pub fn spec_ctrl_valid_bits(p: &Policy) -> u64 {
    let mut bits = SPEC_CTRL_STIBP;
    if p.has(f::IBRSB) || p.has(f::IBRS) {
        bits |= SPEC_CTRL_IBRS;
    }
    if p.has(f::SSBD) || p.has(f::AMD_SSBD) {
        bits |= SPEC_CTRL_SSBD;
    }
    if p.has(f::INTEL_PSFD) || p.has(f::PSFD) {
        bits |= SPEC_CTRL_PSFD;
    }
    if p.has(f::IPRED_CTRL) {
        bits |= SPEC_CTRL_IPRED_DIS;
    }
    if p.has(f::RRSBA_CTRL) {
        bits |= SPEC_CTRL_RRSBA_DIS;
    }
    if p.has(f::BHI_CTRL) {
        bits |= SPEC_CTRL_BHI_DIS_S;
    }
    bits
}

/// SPEC_CTRL exists with any of the features that name one of its controls (Linux
/// sets X86_FEATURE_MSR_SPEC_CTRL for the same set).
fn has_spec_ctrl(p: &Policy) -> bool {
    [
        f::IBRSB,
        f::STIBP,
        f::SSBD,
        f::IBRS,
        f::AMD_STIBP,
        f::AMD_SSBD,
    ]
    .iter()
    .any(|&ft| p.has(ft))
}

/// PRED_CMD bits a guest may write.
fn pred_cmd_valid_bits(p: &Policy) -> u64 {
    let mut bits = 0;
    if p.has(f::IBRSB) || p.has(f::IBPB) {
        bits |= PRED_CMD_IBPB;
    }
    if p.has(f::SBPB) {
        bits |= PRED_CMD_SBPB;
    }
    bits
}

/// The MCG_CAP a guest of this vendor sees (Xen's `vmce_init_vcpu` by host vendor).
pub fn guest_mcg_cap(p: &Policy) -> u64 {
    if p.vendor == Vendor::Intel {
        INTEL_GUEST_MCG_CAP
    } else {
        AMD_GUEST_MCG_CAP
    }
}

fn has_mca(p: &Policy) -> bool {
    p.has(f::MCA)
}

/// MCi_CTL/STATUS/ADDR/MISC (0x400 + 4 * bank + register).
fn mc_bank_read(v: &Vcpu, p: &Policy, msr: u32) -> Result<u64, MsrFault> {
    let bank = (msr.wrapping_sub(MSR_MC0_CTL) / 4) as usize;
    // Banks past the guest's (up to the 32 the range holds) read 0, as Xen's vMCE
    // answers MSRs it routes but does not model.
    let Some(b) = bank_in_cap(v, p, bank) else {
        return Ok(0);
    };
    Ok(match msr & 3 {
        // Every error type is reported: MCi_CTL reads all ones.
        0 => u64::MAX,
        1 => b.mci_status,
        2 => b.mci_addr,
        _ => b.mci_misc,
    })
}

fn mc_bank_write(
    v: &mut Vcpu,
    p: &Policy,
    msr: u32,
    val: u64,
) -> Result<Option<MsrEffect>, MsrFault> {
    let bank = (msr.wrapping_sub(MSR_MC0_CTL) / 4) as usize;
    if bank_in_cap(v, p, bank).is_none() {
        return Ok(None);
    }
    let Some(b) = v.msrs.vmce.bank.get_mut(bank) else {
        return Ok(None);
    };
    match msr & 3 {
        // Clearing MCi_CTL bits would disable reporting nobody models: ignored.
        0 => {}
        // STATUS/ADDR/MISC may only be cleared (Xen: a non-zero write is #GP, so a guest
        // cannot fake an error record).
        _ if val != 0 => return Err(MsrFault::Invalid),
        1 => b.mci_status = 0,
        2 => b.mci_addr = 0,
        _ => b.mci_misc = 0,
    }
    Ok(None)
}

/// The guest's bank `bank` when MCG_CAP's count covers it.
fn bank_in_cap<'v>(v: &'v Vcpu, p: &Policy, bank: usize) -> Option<&'v VmceBank> {
    let count = (guest_mcg_cap(p) & 0xff) as usize;
    if bank < count {
        v.msrs.vmce.bank.get(bank)
    } else {
        None
    }
}

/// MCi_CTL2 (0x280 + bank): stored for the guest's banks on Intel (CMCI enable and
/// threshold), 0 and ignored elsewhere.
fn mc_ctl2_read(v: &Vcpu, p: &Policy, msr: u32) -> Result<u64, MsrFault> {
    let bank = msr.wrapping_sub(MSR_MC0_CTL2) as usize;
    if p.vendor != Vendor::Intel {
        return Ok(0);
    }
    Ok(bank_in_cap(v, p, bank).map_or(0, |b| b.mci_ctl2))
}

fn mc_ctl2_write(
    v: &mut Vcpu,
    p: &Policy,
    msr: u32,
    val: u64,
) -> Result<Option<MsrEffect>, MsrFault> {
    let bank = msr.wrapping_sub(MSR_MC0_CTL2) as usize;
    if p.vendor == Vendor::Intel && bank_in_cap(v, p, bank).is_some() {
        if let Some(b) = v.msrs.vmce.bank.get_mut(bank) {
            b.mci_ctl2 = val;
        }
    }
    Ok(None)
}

/// P5_MC_ADDR/TYPE: on Intel-like vendors bank 1's ADDR/STATUS (Xen's "bank 0 quirk"
/// view), 0 elsewhere.
fn p5_mc_read(v: &Vcpu, p: &Policy, msr: u32) -> Result<u64, MsrFault> {
    if !p.vendor.intel_like() {
        return Ok(0);
    }
    let Some(b) = v.msrs.vmce.bank.get(1) else {
        return Ok(0);
    };
    Ok(if msr == MSR_P5_MC_ADDR {
        b.mci_addr
    } else {
        b.mci_status
    })
}

/// DR0's mask MSR sits apart from DR1-3's.
fn dr_mask_index(msr: u32) -> usize {
    if msr == MSR_AMD64_DR0_ADDRESS_MASK {
        0
    } else {
        msr.wrapping_sub(MSR_AMD64_DR1_ADDRESS_MASK).wrapping_add(1) as usize
    }
}

fn read_dr_mask(v: &Vcpu, _: &Policy, msr: u32) -> Result<u64, MsrFault> {
    Ok(v.msrs
        .dr_mask
        .get(dr_mask_index(msr))
        .map_or(0, |&m| u64::from(m)))
}

/// Every MSR a PV guest may touch. Anything not here is #GP ([`MsrFault::Unknown`]).
pub static MSRS: &[MsrRow] = &[
    MsrRow {
        first: MSR_P5_MC_ADDR,
        last: MSR_P5_MC_TYPE,
        name: "P5_MC_ADDR/P5_MC_TYPE",
        exists: |p| p.has(f::MCE),
        read: p5_mc_read,
        write: drop_write,
    },
    MsrRow {
        first: MSR_PLATFORM_ID,
        last: MSR_PLATFORM_ID,
        name: "IA32_PLATFORM_ID",
        exists: |p| p.vendor == Vendor::Intel,
        // Xen forwards the host's; 0 (platform 0) is what microcode matching by a guest
        // needs least: a PV guest loads no microcode.
        read: read_zero,
        write: read_only,
    },
    MsrRow {
        first: MSR_APIC_BASE,
        last: MSR_APIC_BASE,
        name: "APIC_BASE",
        exists: always,
        // Linux reads it even though a PV guest has no local APIC.
        read: |v, _, _| {
            let bsp = if v.id == 0 { APIC_BASE_BSP } else { 0 };
            Ok(APIC_DEFAULT_PHYS_BASE | APIC_BASE_ENABLE | bsp)
        },
        write: read_only,
    },
    MsrRow {
        first: MSR_TSC_ADJUST,
        last: MSR_TSC_ADJUST,
        name: "IA32_TSC_ADJUST",
        exists: |p| p.has(f::TSC_ADJUST),
        // Xen offers TSC_ADJUST to HVM guests only. Here the policy may offer it (KVM
        // does): no adjustment is reported, and the TSC, the host's, cannot be moved.
        read: read_zero,
        write: |_, _, _, val| {
            if val == 0 {
                Ok(None)
            } else {
                Err(MsrFault::Invalid)
            }
        },
    },
    MsrRow {
        first: MSR_FEATURE_CONTROL,
        last: MSR_FEATURE_CONTROL,
        name: "IA32_FEATURE_CONTROL",
        exists: intel_like,
        // Locked, nothing enabled: no VMX for a PV guest, no LMCE.
        read: |_, _, _| Ok(FEATURE_CONTROL_LOCK),
        write: read_only,
    },
    MsrRow {
        first: MSR_SPEC_CTRL,
        last: MSR_SPEC_CTRL,
        name: "SPEC_CTRL",
        exists: has_spec_ctrl,
        read: |v, _, _| Ok(v.msrs.spec_ctrl),
        write: |v, p, _, val| {
            if val & !spec_ctrl_valid_bits(p) != 0 {
                return Err(MsrFault::Invalid);
            }
            v.msrs.spec_ctrl = val;
            Ok(Some(MsrEffect::SpecCtrl(val)))
        },
    },
    MsrRow {
        first: MSR_PRED_CMD,
        last: MSR_PRED_CMD,
        name: "PRED_CMD",
        exists: |p| pred_cmd_valid_bits(p) != 0,
        read: write_only,
        write: |_, p, _, val| {
            if val & !pred_cmd_valid_bits(p) != 0 {
                return Err(MsrFault::Invalid);
            }
            Ok((val != 0).then_some(MsrEffect::PredCmd(val)))
        },
    },
    MsrRow {
        first: MSR_UCODE_REV,
        last: MSR_UCODE_REV,
        name: "UCODE_REV/AMD_PATCHLEVEL",
        exists: |p| matches!(p.vendor, Vendor::Intel | Vendor::Amd),
        // No microcode revision is claimed (Xen forwards the host's): a guest has no
        // business matching errata against it.
        read: read_zero,
        // Intel documents "write 0, cpuid, read"; AMD's is read-only.
        write: |_, p, _, val| {
            if p.vendor == Vendor::Intel && val == 0 {
                Ok(None)
            } else {
                Err(MsrFault::Invalid)
            }
        },
    },
    MsrRow {
        first: MSR_PLATFORM_INFO,
        last: MSR_PLATFORM_INFO,
        name: "INTEL_PLATFORM_INFO",
        exists: always,
        // No CPUID faulting offered (bit 31 clear): pvkvm cannot fault a guest's CPUID.
        read: read_zero,
        write: read_only,
    },
    MsrRow {
        first: MSR_MPERF,
        last: MSR_APERF,
        name: "IA32_MPERF/IA32_APERF",
        exists: |p| matches!(p.vendor, Vendor::Intel | Vendor::Amd | Vendor::Hygon),
        // Xen answers only writes (dropped) for a domU; reads are #GP.
        read: write_only,
        write: drop_write,
    },
    MsrRow {
        first: MSR_ARCH_CAPABILITIES,
        last: MSR_ARCH_CAPABILITIES,
        name: "ARCH_CAPABILITIES",
        exists: |p| p.has(f::ARCH_CAPS),
        // The policy's value: the host's capabilities Xen passes to a PV guest.
        read: |_, p, _| Ok(p.arch_caps),
        write: read_only,
    },
    MsrRow {
        first: MSR_FLUSH_CMD,
        last: MSR_FLUSH_CMD,
        name: "FLUSH_CMD",
        exists: |p| p.has(f::L1D_FLUSH),
        read: write_only,
        write: |_, _, _, val| {
            if val & !FLUSH_CMD_L1D != 0 {
                return Err(MsrFault::Invalid);
            }
            Ok((val != 0).then_some(MsrEffect::FlushCmd(val)))
        },
    },
    MsrRow {
        first: MSR_MISC_FEATURES_ENABLES,
        last: MSR_MISC_FEATURES_ENABLES,
        name: "INTEL_MISC_FEATURES_ENABLES",
        exists: always,
        read: |v, _, _| Ok(v.msrs.misc_features_enables),
        // Its only bit is CPUID faulting, which PLATFORM_INFO does not offer.
        write: |v, _, _, val| {
            if val != 0 {
                return Err(MsrFault::Invalid);
            }
            v.msrs.misc_features_enables = val;
            Ok(None)
        },
    },
    MsrRow {
        first: MSR_MCG_CAP,
        last: MSR_MCG_CAP,
        name: "IA32_MCG_CAP",
        exists: has_mca,
        read: |_, p, _| Ok(guest_mcg_cap(p)),
        // Read-only architecturally; Xen ignores writes rather than fault.
        write: drop_write,
    },
    MsrRow {
        first: MSR_MCG_STATUS,
        last: MSR_MCG_STATUS,
        name: "IA32_MCG_STATUS",
        exists: has_mca,
        read: |v, _, _| Ok(v.msrs.vmce.mcg_status),
        write: |v, _, _, val| {
            v.msrs.vmce.mcg_status = val;
            Ok(None)
        },
    },
    MsrRow {
        first: MSR_MCG_CTL,
        last: MSR_MCG_CTL,
        name: "IA32_MCG_CTL",
        exists: has_mca,
        // MCG_CAP has no CTL_P: reads 0 and writes are ignored (Xen; not #GP).
        read: |_, p, _| {
            Ok(if guest_mcg_cap(p) & MCG_CTL_P != 0 {
                u64::MAX
            } else {
                0
            })
        },
        write: drop_write,
    },
    MsrRow {
        first: MSR_PERF_STATUS,
        last: MSR_PERF_STATUS,
        name: "IA32_PERF_STATUS",
        exists: |p| matches!(p.vendor, Vendor::Intel | Vendor::Centaur),
        read: read_zero,
        write: read_only,
    },
    MsrRow {
        first: MSR_PERF_CTL,
        last: MSR_PERF_CTL,
        name: "IA32_PERF_CTL",
        exists: |p| matches!(p.vendor, Vendor::Intel | Vendor::Centaur),
        read: read_zero,
        write: drop_write,
    },
    MsrRow {
        first: MSR_THERM_CONTROL,
        last: MSR_THERM_CONTROL,
        name: "IA32_THERM_CONTROL",
        exists: |p| p.vendor == Vendor::Intel,
        read: write_only,
        write: drop_write,
    },
    MsrRow {
        first: MSR_THERM_STATUS,
        last: MSR_THERM_STATUS,
        name: "IA32_THERM_STATUS",
        exists: |p| p.vendor == Vendor::Intel,
        read: read_zero,
        write: read_only,
    },
    MsrRow {
        first: MSR_MISC_ENABLE,
        last: MSR_MISC_ENABLE,
        name: "IA32_MISC_ENABLE",
        exists: intel_like,
        read: |_, _, _| Ok(MISC_ENABLE_GUEST),
        // Writing back what a read returns is how Linux's msr_set_bit/clear_bit end
        // when nothing changes; any other value is dropped, as Xen does.
        write: drop_write,
    },
    MsrRow {
        first: MSR_ENERGY_PERF_BIAS,
        last: MSR_ENERGY_PERF_BIAS,
        name: "IA32_ENERGY_PERF_BIAS",
        exists: |p| p.vendor == Vendor::Intel,
        read: write_only,
        write: drop_write,
    },
    MsrRow {
        first: MSR_PAT,
        last: MSR_PAT,
        name: "IA32_CR_PAT",
        exists: always,
        read: |_, _, _| Ok(XEN_MSR_PAT),
        // The PAT is fixed; writing the same value back changes nothing.
        write: |_, _, _, val| {
            if val == XEN_MSR_PAT {
                Ok(None)
            } else {
                Err(MsrFault::Invalid)
            }
        },
    },
    MsrRow {
        first: MSR_MC0_CTL2,
        last: MSR_MC0_CTL2 + MC_BANK_MSR_BANKS - 1,
        name: "IA32_MCi_CTL2",
        exists: has_mca,
        read: mc_ctl2_read,
        write: mc_ctl2_write,
    },
    MsrRow {
        first: MSR_PERF_CAPABILITIES,
        last: MSR_PERF_CAPABILITIES,
        name: "IA32_PERF_CAPABILITIES",
        exists: |p| p.has(f::PDCM),
        // No extra capabilities.
        read: read_zero,
        write: read_only,
    },
    MsrRow {
        first: MSR_MC0_CTL,
        last: MSR_MC0_CTL + 4 * MC_BANK_MSR_BANKS - 1,
        name: "IA32_MCi_CTL/STATUS/ADDR/MISC",
        exists: has_mca,
        read: mc_bank_read,
        write: mc_bank_write,
    },
    MsrRow {
        first: MSR_XSS,
        last: MSR_XSS,
        name: "IA32_XSS",
        exists: |p| p.has(f::XSAVES),
        read: |v, _, _| Ok(v.msrs.xss),
        // No supervisor state component is offered.
        write: |v, _, _, val| {
            if val != 0 {
                return Err(MsrFault::Invalid);
            }
            v.msrs.xss = val;
            Ok(None)
        },
    },
    MsrRow {
        first: MSR_EFER,
        last: MSR_EFER,
        name: "EFER",
        exists: always,
        read: |_, _, _| Ok(GUEST_EFER),
        // Linux writes back what it read; a change is refused.
        write: |_, _, _, val| {
            if val == GUEST_EFER {
                Ok(None)
            } else {
                Err(MsrFault::Invalid)
            }
        },
    },
    MsrRow {
        first: MSR_FS_BASE,
        last: MSR_SHADOW_GS_BASE,
        name: "FS_BASE/GS_BASE/SHADOW_GS_BASE",
        exists: always,
        read: |v, _, msr| {
            Ok(match msr {
                MSR_FS_BASE => v.fs_base,
                MSR_GS_BASE => v.gs_base_kernel,
                _ => v.gs_base_user,
            })
        },
        // Loaded by the host from Vcpu::hw_state, like set_segment_base.
        write: |v, _, msr, val| {
            if !crate::guest::is_canonical(val) {
                return Err(MsrFault::Invalid);
            }
            match msr {
                MSR_FS_BASE => v.fs_base = val,
                MSR_GS_BASE => v.gs_base_kernel = val,
                _ => v.gs_base_user = val,
            }
            Ok(None)
        },
    },
    MsrRow {
        first: MSR_TSC_AUX,
        last: MSR_TSC_AUX,
        name: "TSC_AUX",
        exists: |p| p.has(f::RDTSCP) || p.has(f::RDPID),
        read: |v, _, _| Ok(u64::from(v.msrs.tsc_aux)),
        write: |v, _, _, val| {
            let Ok(aux) = u32::try_from(val) else {
                return Err(MsrFault::Invalid);
            };
            v.msrs.tsc_aux = aux;
            Ok(Some(MsrEffect::TscAux(aux)))
        },
    },
    MsrRow {
        first: MSR_K8_HWCR,
        last: MSR_K8_HWCR,
        name: "K8_HWCR",
        exists: amd_like,
        read: read_zero,
        write: drop_write,
    },
    MsrRow {
        first: MSR_AMD64_NB_CFG,
        last: MSR_AMD64_NB_CFG,
        name: "AMD64_NB_CFG",
        exists: always,
        read: read_zero,
        write: drop_write,
    },
    MsrRow {
        first: MSR_K7_FID_VID_CTL,
        last: MSR_K7_FID_VID_STATUS,
        name: "K7_FID_VID_CTL/STATUS",
        exists: amd_like,
        read: read_zero,
        write: drop_write,
    },
    MsrRow {
        first: MSR_K8_PSTATE_LIMIT,
        last: MSR_K8_PSTATE7,
        name: "K8_PSTATE_LIMIT/CTRL/STATUS/PSTATE0-7",
        exists: amd_like,
        read: read_zero,
        write: drop_write,
    },
    MsrRow {
        first: MSR_VIRT_SPEC_CTRL,
        last: MSR_VIRT_SPEC_CTRL,
        name: "VIRT_SPEC_CTRL",
        exists: |p| p.has(f::VIRT_SSBD),
        // With AMD_SSBD offered, the guest's SSBD lives in SPEC_CTRL (one value the host
        // loads); otherwise in its own register.
        read: |v, p, _| {
            Ok(if p.has(f::AMD_SSBD) {
                v.msrs.spec_ctrl & SPEC_CTRL_SSBD
            } else {
                v.msrs.virt_spec_ctrl
            })
        },
        // Only SSBD is implemented; other bits are ignored, not faulted (Xen).
        write: |v, p, _, val| {
            let ssbd = val & SPEC_CTRL_SSBD;
            if p.has(f::AMD_SSBD) {
                v.msrs.spec_ctrl = (v.msrs.spec_ctrl & !SPEC_CTRL_SSBD) | ssbd;
                Ok(Some(MsrEffect::SpecCtrl(v.msrs.spec_ctrl)))
            } else {
                v.msrs.virt_spec_ctrl = ssbd;
                Ok(Some(MsrEffect::VirtSpecCtrl(ssbd)))
            }
        },
    },
    MsrRow {
        first: MSR_AMD_OSVW_ID_LENGTH,
        last: MSR_AMD_OSVW_STATUS,
        name: "AMD_OSVW_ID_LENGTH/STATUS",
        exists: |p| p.has(f::OSVW),
        // Length 0: no erratum is known to be fixed or present.
        read: read_zero,
        write: drop_write,
    },
    MsrRow {
        first: MSR_AMD64_DR1_ADDRESS_MASK,
        last: MSR_AMD64_DR3_ADDRESS_MASK,
        name: "AMD64_DR1-3_ADDRESS_MASK",
        exists: |p| p.has(f::DBEXT),
        read: read_dr_mask,
        write: write_dr_mask,
    },
    MsrRow {
        first: MSR_AMD64_DR0_ADDRESS_MASK,
        last: MSR_AMD64_DR0_ADDRESS_MASK,
        name: "AMD64_DR0_ADDRESS_MASK",
        exists: |p| p.has(f::DBEXT),
        read: read_dr_mask,
        write: write_dr_mask,
    },
    MsrRow {
        first: MSR_AMD64_DE_CFG,
        last: MSR_AMD64_DE_CFG,
        name: "AMD64_DE_CFG",
        exists: amd_like,
        // LFENCE is dispatch serialising (Linux's Spectre v1 mitigation relies on it and
        // would otherwise try to set the bit).
        read: |_, _, _| Ok(DE_CFG_LFENCE_SERIALISE),
        // Dropped, never #GP: some guests (OpenBSD) panic on a fault here.
        write: drop_write,
    },
];

/// The debug registers' address masks are stored; they are not loaded into hardware
/// (the debug registers themselves are not yet either).
fn write_dr_mask(
    v: &mut Vcpu,
    _: &Policy,
    msr: u32,
    val: u64,
) -> Result<Option<MsrEffect>, MsrFault> {
    let Ok(mask) = u32::try_from(val) else {
        return Err(MsrFault::Invalid);
    };
    if let Some(slot) = v.msrs.dr_mask.get_mut(dr_mask_index(msr)) {
        *slot = mask;
    }
    Ok(None)
}

/// The row for `msr`, if any.
pub fn row(msr: u32) -> Option<&'static MsrRow> {
    MSRS.iter().find(|r| (r.first..=r.last).contains(&msr))
}

/// `rdmsr` by the guest kernel: the value, or why it is #GP.
pub fn guest_rdmsr(vcpu: &Vcpu, p: &dyn Platform, msr: u32) -> Result<u64, MsrFault> {
    let r = row(msr).ok_or(MsrFault::Unknown)?;
    let pol = Policy::read(p);
    if !(r.exists)(&pol) {
        return Err(MsrFault::Absent);
    }
    (r.read)(vcpu, &pol, msr)
}

/// `wrmsr` by the guest kernel: performs the write (and its effect through the
/// platform), or says why it is #GP.
pub fn guest_wrmsr(
    vcpu: &mut Vcpu,
    p: &mut dyn Platform,
    msr: u32,
    val: u64,
) -> Result<(), MsrFault> {
    let r = row(msr).ok_or(MsrFault::Unknown)?;
    let pol = Policy::read(p);
    if !(r.exists)(&pol) {
        return Err(MsrFault::Absent);
    }
    if let Some(effect) = (r.write)(vcpu, &pol, msr, val)? {
        p.msr_effect(effect);
    }
    Ok(())
}

/// How [`FEATURE_MSRS`] proves an MSR present: command MSRs are write-only, so they are
/// probed by writing a value their feature makes valid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Probe {
    /// `rdmsr` succeeds.
    Read,
    /// `wrmsr` of this value succeeds.
    Write(u64),
}

/// A CPUID feature that implies an MSR (or an MSR bit).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FeatureMsr {
    /// The feature.
    pub feature: Feature,
    /// The MSR it implies.
    pub msr: u32,
    /// How to see the MSR is there.
    pub probe: Probe,
}

const fn fm(feature: Feature, msr: u32, probe: Probe) -> FeatureMsr {
    FeatureMsr {
        feature,
        msr,
        probe,
    }
}

/// Every CPUID feature that implies an MSR, with the MSR: with the feature alone in the
/// policy the probe succeeds, without it the MSR is #GP. A host offering any of these
/// features can check the row is here.
pub const FEATURE_MSRS: &[FeatureMsr] = &[
    fm(f::MCE, MSR_P5_MC_ADDR, Probe::Read),
    fm(f::MCE, MSR_P5_MC_TYPE, Probe::Read),
    fm(f::MCA, MSR_MCG_CAP, Probe::Read),
    fm(f::MCA, MSR_MCG_STATUS, Probe::Read),
    fm(f::MCA, MSR_MCG_CTL, Probe::Read),
    fm(f::MCA, MSR_MC0_CTL, Probe::Read),
    fm(f::MCA, MSR_MC0_CTL + 1, Probe::Read),
    fm(f::MCA, MSR_MC0_CTL + 2, Probe::Read),
    fm(f::MCA, MSR_MC0_CTL + 3, Probe::Read),
    fm(f::MCA, MSR_MC0_CTL2, Probe::Read),
    fm(f::PDCM, MSR_PERF_CAPABILITIES, Probe::Read),
    fm(f::TSC_ADJUST, MSR_TSC_ADJUST, Probe::Read),
    fm(f::IBRSB, MSR_SPEC_CTRL, Probe::Write(SPEC_CTRL_IBRS)),
    fm(f::IBRSB, MSR_PRED_CMD, Probe::Write(PRED_CMD_IBPB)),
    fm(f::STIBP, MSR_SPEC_CTRL, Probe::Write(SPEC_CTRL_STIBP)),
    fm(f::SSBD, MSR_SPEC_CTRL, Probe::Write(SPEC_CTRL_SSBD)),
    fm(f::L1D_FLUSH, MSR_FLUSH_CMD, Probe::Write(FLUSH_CMD_L1D)),
    fm(f::ARCH_CAPS, MSR_ARCH_CAPABILITIES, Probe::Read),
    fm(f::IBPB, MSR_PRED_CMD, Probe::Write(PRED_CMD_IBPB)),
    fm(f::IBRS, MSR_SPEC_CTRL, Probe::Write(SPEC_CTRL_IBRS)),
    fm(f::AMD_STIBP, MSR_SPEC_CTRL, Probe::Write(SPEC_CTRL_STIBP)),
    fm(f::AMD_SSBD, MSR_SPEC_CTRL, Probe::Write(SPEC_CTRL_SSBD)),
    fm(f::VIRT_SSBD, MSR_VIRT_SPEC_CTRL, Probe::Read),
    fm(f::SBPB, MSR_PRED_CMD, Probe::Write(PRED_CMD_SBPB)),
    fm(f::RDTSCP, MSR_TSC_AUX, Probe::Read),
    fm(f::RDPID, MSR_TSC_AUX, Probe::Read),
    fm(f::XSAVES, MSR_XSS, Probe::Read),
    fm(f::OSVW, MSR_AMD_OSVW_ID_LENGTH, Probe::Read),
    fm(f::OSVW, MSR_AMD_OSVW_STATUS, Probe::Read),
    fm(f::DBEXT, MSR_AMD64_DR0_ADDRESS_MASK, Probe::Read),
    fm(f::DBEXT, MSR_AMD64_DR1_ADDRESS_MASK, Probe::Read),
    fm(f::DBEXT, MSR_AMD64_DR3_ADDRESS_MASK, Probe::Read),
];

/// CPUID features that imply MSRs the table has no row for: Xen does not offer them to
/// a PV guest (HVM-only or host-only in its featureset), so their MSRs are #GP. A PV
/// policy must not offer any of these; a host can check its policy against this list as
/// it checks [`FEATURE_MSRS`]. (AMD's core and northbridge performance-counter
/// extensions, 0x80000001 ECX bits 23 and 24, imply MSRs too; Xen's featureset does not
/// name them, so a policy built from it never offers them.)
pub const FEATURES_WITHOUT_ROWS: &[Feature] = &[
    f::SDBG,
    f::X2APIC,
    f::TSC_DEADLINE,
    f::MTRR,
    f::DS,
    f::PQM,
    f::MPX,
    f::PQE,
    f::PROC_TRACE,
    f::WAITPKG,
    f::PKS,
    f::ARCH_LBR,
    f::CORE_CAPS,
    f::SVM,
    f::LWP,
];

/// Runs `probe` of `msr` against a vCPU and a policy directly (no platform): what
/// [`guest_rdmsr`]/[`guest_wrmsr`] decide, without performing effects.
pub fn probe_with_policy(
    vcpu: &mut Vcpu,
    pol: &Policy,
    msr: u32,
    probe: Probe,
) -> Result<(), MsrFault> {
    let r = row(msr).ok_or(MsrFault::Unknown)?;
    if !(r.exists)(pol) {
        return Err(MsrFault::Absent);
    }
    match probe {
        Probe::Read => (r.read)(vcpu, pol, msr).map(|_| ()),
        Probe::Write(val) => (r.write)(vcpu, pol, msr, val).map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::{setup, FakePlatform};
    use std::vec::Vec;

    const INTEL: &[u8; 12] = b"GenuineIntel";
    const AMD: &[u8; 12] = b"AuthenticAMD";

    /// Every feature the table knows.
    const ALL: &[Feature] = &[
        f::TSC_ADJUST,
        f::MCE,
        f::MCA,
        f::PDCM,
        f::RDPID,
        f::IBRSB,
        f::STIBP,
        f::L1D_FLUSH,
        f::ARCH_CAPS,
        f::SSBD,
        f::INTEL_PSFD,
        f::IPRED_CTRL,
        f::RRSBA_CTRL,
        f::BHI_CTRL,
        f::XSAVES,
        f::OSVW,
        f::DBEXT,
        f::RDTSCP,
        f::IBPB,
        f::IBRS,
        f::AMD_STIBP,
        f::AMD_SSBD,
        f::VIRT_SSBD,
        f::PSFD,
        f::SBPB,
    ];

    fn with(vendor: &[u8; 12], features: &[Feature]) -> (Vcpu, FakePlatform) {
        let (v, _, mut p) = setup();
        p.set_policy(vendor, features);
        (v, p)
    }

    fn rd(v: &Vcpu, p: &FakePlatform, msr: u32) -> Result<u64, MsrFault> {
        guest_rdmsr(v, p, msr)
    }

    #[test]
    fn rows_do_not_overlap_and_are_well_formed() {
        for (i, a) in MSRS.iter().enumerate() {
            assert!(a.first <= a.last, "{}", a.name);
            for b in &MSRS[i + 1..] {
                assert!(
                    a.last < b.first || b.last < a.first,
                    "{} / {}",
                    a.name,
                    b.name
                );
            }
        }
    }

    #[test]
    fn read_values_with_everything_offered() {
        let (mut v, p) = with(INTEL, ALL);
        v.fs_base = 0x1000;
        v.gs_base_kernel = 0x2000;
        v.gs_base_user = 0x3000;
        let expect: &[(u32, u64)] = &[
            (MSR_P5_MC_ADDR, 0),
            (MSR_P5_MC_TYPE, 0),
            (MSR_PLATFORM_ID, 0),
            (MSR_APIC_BASE, 0xfee0_0900),
            (MSR_TSC_ADJUST, 0),
            (MSR_FEATURE_CONTROL, 1),
            (MSR_SPEC_CTRL, 0),
            (MSR_UCODE_REV, 0),
            (MSR_PLATFORM_INFO, 0),
            (MSR_ARCH_CAPABILITIES, 0),
            (MSR_MISC_FEATURES_ENABLES, 0),
            (MSR_MCG_CAP, 0x100_0c02),
            (MSR_MCG_STATUS, 0),
            (MSR_MCG_CTL, 0),
            (MSR_PERF_STATUS, 0),
            (MSR_PERF_CTL, 0),
            (MSR_THERM_STATUS, 0),
            (MSR_MISC_ENABLE, 0x80_1801),
            (MSR_PAT, 0x0000_0501_0007_0406),
            (MSR_MC0_CTL2, 0),
            (MSR_MC0_CTL2 + 31, 0),
            (MSR_PERF_CAPABILITIES, 0),
            (MSR_MC0_CTL, u64::MAX),
            (MSR_MC0_CTL + 4, u64::MAX),
            (MSR_MC0_CTL + 5, 0),
            // Bank 2 is past MCG_CAP's count: 0, not all ones.
            (MSR_MC0_CTL + 8, 0),
            (MSR_MC0_CTL + 0x7f, 0),
            (MSR_XSS, 0),
            (MSR_EFER, 0xd01),
            (MSR_FS_BASE, 0x1000),
            (MSR_GS_BASE, 0x2000),
            (MSR_SHADOW_GS_BASE, 0x3000),
            (MSR_TSC_AUX, 0),
            (MSR_AMD64_NB_CFG, 0),
            (MSR_VIRT_SPEC_CTRL, 0),
            (MSR_AMD_OSVW_ID_LENGTH, 0),
            (MSR_AMD_OSVW_STATUS, 0),
            (MSR_AMD64_DR0_ADDRESS_MASK, 0),
            (MSR_AMD64_DR3_ADDRESS_MASK, 0),
        ];
        for &(msr, value) in expect {
            assert_eq!(rd(&v, &p, msr), Ok(value), "{msr:#x}");
        }
        v.id = 1;
        assert_eq!(rd(&v, &p, MSR_APIC_BASE), Ok(0xfee0_0800));
        let (v, p) = with(AMD, ALL);
        for (msr, value) in [
            (MSR_K8_HWCR, 0),
            (MSR_AMD64_DE_CFG, 2),
            (MSR_K7_FID_VID_CTL, 0),
            (MSR_K7_FID_VID_STATUS, 0),
            (MSR_K8_PSTATE_LIMIT, 0),
            (MSR_K8_PSTATE7, 0),
            (MSR_MCG_CAP, 2),
            (MSR_UCODE_REV, 0),
        ] {
            assert_eq!(rd(&v, &p, msr), Ok(value), "{msr:#x}");
        }
    }

    #[test]
    fn command_msrs_are_write_only_and_read_only_msrs_refuse_writes() {
        let (mut v, mut p) = with(INTEL, ALL);
        for msr in [
            MSR_PRED_CMD,
            MSR_FLUSH_CMD,
            MSR_MPERF,
            MSR_APERF,
            MSR_THERM_CONTROL,
        ] {
            assert_eq!(rd(&v, &p, msr), Err(MsrFault::WriteOnly), "{msr:#x}");
        }
        for msr in [
            MSR_PLATFORM_ID,
            MSR_APIC_BASE,
            MSR_FEATURE_CONTROL,
            MSR_PLATFORM_INFO,
            MSR_ARCH_CAPABILITIES,
            MSR_PERF_STATUS,
            MSR_THERM_STATUS,
            MSR_PERF_CAPABILITIES,
        ] {
            assert_eq!(
                guest_wrmsr(&mut v, &mut p, msr, 0),
                Err(MsrFault::ReadOnly),
                "{msr:#x}"
            );
        }
    }

    #[test]
    fn unknown_msrs_and_mcg_ext_ctl_are_gp() {
        let (mut v, mut p) = with(INTEL, ALL);
        for msr in [
            0x10,
            MSR_MCG_EXT_CTL,
            0xc000_0408,
            0x4000_0000,
            0xc001_0114,
            0x1d9,
        ] {
            assert_eq!(rd(&v, &p, msr), Err(MsrFault::Unknown), "{msr:#x}");
            assert_eq!(guest_wrmsr(&mut v, &mut p, msr, 0), Err(MsrFault::Unknown));
        }
    }

    #[test]
    fn writes_validate_reserved_bits_and_values() {
        let (mut v, mut p) = with(INTEL, ALL);
        let ok: &[(u32, u64)] = &[
            (MSR_UCODE_REV, 0),
            (MSR_TSC_ADJUST, 0),
            (MSR_MISC_FEATURES_ENABLES, 0),
            (MSR_MCG_CAP, 0x1234),
            (MSR_MCG_CTL, u64::MAX),
            (MSR_PERF_CTL, 0x55),
            (MSR_THERM_CONTROL, 1),
            (MSR_ENERGY_PERF_BIAS, 6),
            (MSR_MPERF, 0),
            (MSR_MISC_ENABLE, MISC_ENABLE_GUEST),
            // Any other MISC_ENABLE value is dropped too (Xen), not faulted.
            (MSR_MISC_ENABLE, 0),
            (MSR_PAT, XEN_MSR_PAT),
            (MSR_EFER, GUEST_EFER),
            (MSR_XSS, 0),
            (MSR_TSC_AUX, 0xffff_ffff),
            (MSR_AMD64_NB_CFG, 1),
            (MSR_FS_BASE, 0xffff_8000_0000_0000),
            (MSR_MC0_CTL, 0),
            (MSR_MC0_CTL + 1, 0),
            (MSR_MC0_CTL + 0x7d, 0x1234),
            (MSR_AMD64_DR1_ADDRESS_MASK, 0xffff_ffff),
        ];
        for &(msr, val) in ok {
            assert_eq!(
                guest_wrmsr(&mut v, &mut p, msr, val),
                Ok(()),
                "{msr:#x}={val:#x}"
            );
        }
        let bad: &[(u32, u64)] = &[
            (MSR_UCODE_REV, 1),
            (MSR_MISC_FEATURES_ENABLES, 1),
            (MSR_PAT, 0),
            (MSR_EFER, 0x501),
            (MSR_XSS, 1),
            (MSR_TSC_AUX, 1 << 32),
            (MSR_TSC_ADJUST, 1),
            (MSR_FS_BASE, 0x8000_0000_0000),
            (MSR_PRED_CMD, 1 << 1),
            (MSR_FLUSH_CMD, 2),
            (MSR_SPEC_CTRL, 1 << 9),
            (MSR_SPEC_CTRL, 1 << 63),
            (MSR_MC0_CTL + 1, 1),
            (MSR_MC0_CTL + 6, 1),
            (MSR_MC0_CTL + 7, 1),
            (MSR_AMD64_DR0_ADDRESS_MASK, 1 << 32),
        ];
        for &(msr, val) in bad {
            assert_eq!(
                guest_wrmsr(&mut v, &mut p, msr, val),
                Err(MsrFault::Invalid),
                "{msr:#x}={val:#x}"
            );
        }
        assert_eq!(v.msrs.tsc_aux, 0xffff_ffff);
        assert_eq!(v.msrs.dr_mask[1], 0xffff_ffff);
        assert_eq!(rd(&v, &p, MSR_AMD64_DR1_ADDRESS_MASK), Ok(0xffff_ffff));
        // AMD: UCODE_REV is read-only.
        let (mut v, mut p) = with(AMD, ALL);
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_UCODE_REV, 0),
            Err(MsrFault::Invalid)
        );
    }

    #[test]
    fn spec_ctrl_bits_follow_the_policy() {
        let (mut v, mut p) = with(AMD, &[f::IBPB, f::IBRS]);
        assert_eq!(guest_wrmsr(&mut v, &mut p, MSR_SPEC_CTRL, 3), Ok(()));
        // SSBD, PSFD not offered.
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_SPEC_CTRL, 4),
            Err(MsrFault::Invalid)
        );
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_SPEC_CTRL, 1 << 7),
            Err(MsrFault::Invalid)
        );
        let (mut v, mut p) = with(AMD, &[f::IBPB, f::IBRS, f::AMD_SSBD, f::PSFD]);
        assert_eq!(guest_wrmsr(&mut v, &mut p, MSR_SPEC_CTRL, 0x87), Ok(()));
        let (mut v, mut p) = with(
            INTEL,
            &[f::IBRSB, f::IPRED_CTRL, f::RRSBA_CTRL, f::BHI_CTRL],
        );
        assert_eq!(guest_wrmsr(&mut v, &mut p, MSR_SPEC_CTRL, 0x47b), Ok(()));
        assert_eq!(spec_ctrl_valid_bits(&Policy::read(&p)), 0x47b);
        // Neither IBRS feature: only STIBP and SSBD.
        let (mut v, mut p) = with(INTEL, &[f::SSBD]);
        assert_eq!(guest_wrmsr(&mut v, &mut p, MSR_SPEC_CTRL, 6), Ok(()));
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_SPEC_CTRL, 1),
            Err(MsrFault::Invalid)
        );
        // No feature: the MSR is absent.
        let (mut v, mut p) = with(INTEL, &[f::L1D_FLUSH]);
        assert_eq!(rd(&v, &p, MSR_SPEC_CTRL), Err(MsrFault::Absent));
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_SPEC_CTRL, 0),
            Err(MsrFault::Absent)
        );
    }

    #[test]
    fn spec_ctrl_is_stored_per_vcpu_and_passed_to_the_host() {
        let (mut v0, mut p) = with(AMD, &[f::IBPB, f::IBRS, f::AMD_STIBP, f::AMD_SSBD]);
        let mut v1 = Vcpu::new(1, v0.kernel_cr3, v0.vcpu_info_gpa + 64);
        assert_eq!(
            guest_wrmsr(&mut v0, &mut p, MSR_SPEC_CTRL, SPEC_CTRL_STIBP),
            Ok(())
        );
        assert_eq!(
            guest_wrmsr(&mut v1, &mut p, MSR_SPEC_CTRL, SPEC_CTRL_SSBD),
            Ok(())
        );
        assert_eq!(rd(&v0, &p, MSR_SPEC_CTRL), Ok(SPEC_CTRL_STIBP));
        assert_eq!(rd(&v1, &p, MSR_SPEC_CTRL), Ok(SPEC_CTRL_SSBD));
        assert_eq!(
            p.effects,
            [
                MsrEffect::SpecCtrl(SPEC_CTRL_STIBP),
                MsrEffect::SpecCtrl(SPEC_CTRL_SSBD)
            ]
        );
        // A refused write changes nothing and asks the host for nothing.
        assert!(guest_wrmsr(&mut v0, &mut p, MSR_SPEC_CTRL, 1 << 20).is_err());
        assert_eq!(rd(&v0, &p, MSR_SPEC_CTRL), Ok(SPEC_CTRL_STIBP));
        assert_eq!(p.effects.len(), 2);
    }

    #[test]
    fn pred_cmd_and_flush_cmd_produce_their_effects() {
        let (mut v, mut p) = with(AMD, &[f::IBPB]);
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_PRED_CMD, PRED_CMD_IBPB),
            Ok(())
        );
        // Writing 0 is valid and does nothing.
        assert_eq!(guest_wrmsr(&mut v, &mut p, MSR_PRED_CMD, 0), Ok(()));
        // SBPB needs its own feature.
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_PRED_CMD, PRED_CMD_SBPB),
            Err(MsrFault::Invalid)
        );
        assert_eq!(p.effects, [MsrEffect::PredCmd(1)]);
        let (mut v, mut p) = with(AMD, &[f::IBPB, f::SBPB]);
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_PRED_CMD, PRED_CMD_SBPB),
            Ok(())
        );
        assert_eq!(p.effects, [MsrEffect::PredCmd(PRED_CMD_SBPB)]);
        assert_eq!(MsrEffect::PredCmd(PRED_CMD_SBPB).msr_write(), (0x49, 0x80));
        let (mut v, mut p) = with(INTEL, &[f::L1D_FLUSH]);
        assert_eq!(guest_wrmsr(&mut v, &mut p, MSR_FLUSH_CMD, 1), Ok(()));
        assert_eq!(p.effects, [MsrEffect::FlushCmd(1)]);
        assert_eq!(MsrEffect::FlushCmd(1).msr_write(), (0x10b, 1));
        // Without IBRSB/IBPB/SBPB there is no PRED_CMD at all.
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_PRED_CMD, 1),
            Err(MsrFault::Absent)
        );
    }

    #[test]
    fn virt_spec_ctrl_folds_into_spec_ctrl_with_amd_ssbd() {
        let (mut v, mut p) = with(AMD, &[f::VIRT_SSBD]);
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_VIRT_SPEC_CTRL, 0xff),
            Ok(())
        );
        assert_eq!(rd(&v, &p, MSR_VIRT_SPEC_CTRL), Ok(SPEC_CTRL_SSBD));
        assert_eq!(p.effects, [MsrEffect::VirtSpecCtrl(SPEC_CTRL_SSBD)]);
        let (mut v, mut p) = with(AMD, &[f::VIRT_SSBD, f::AMD_SSBD, f::AMD_STIBP]);
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_SPEC_CTRL, SPEC_CTRL_STIBP),
            Ok(())
        );
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_VIRT_SPEC_CTRL, SPEC_CTRL_SSBD),
            Ok(())
        );
        assert_eq!(
            rd(&v, &p, MSR_SPEC_CTRL),
            Ok(SPEC_CTRL_STIBP | SPEC_CTRL_SSBD)
        );
        assert_eq!(rd(&v, &p, MSR_VIRT_SPEC_CTRL), Ok(SPEC_CTRL_SSBD));
        assert_eq!(
            p.effects.last(),
            Some(&MsrEffect::SpecCtrl(SPEC_CTRL_STIBP | SPEC_CTRL_SSBD))
        );
    }

    #[test]
    fn tsc_aux_is_stored_and_passed_to_the_host() {
        let (mut v, mut p) = with(AMD, &[f::RDTSCP]);
        assert_eq!(guest_wrmsr(&mut v, &mut p, MSR_TSC_AUX, 3), Ok(()));
        assert_eq!(rd(&v, &p, MSR_TSC_AUX), Ok(3));
        assert_eq!(p.effects, [MsrEffect::TscAux(3)]);
        let (v, p) = with(AMD, &[]);
        assert_eq!(rd(&v, &p, MSR_TSC_AUX), Err(MsrFault::Absent));
    }

    #[test]
    fn vendor_rows_exist_only_for_their_vendor() {
        let intel_only = [
            MSR_PLATFORM_ID,
            MSR_FEATURE_CONTROL,
            MSR_PERF_STATUS,
            MSR_THERM_STATUS,
            MSR_MISC_ENABLE,
        ];
        let amd_only = [
            MSR_K8_HWCR,
            MSR_AMD64_DE_CFG,
            MSR_K7_FID_VID_STATUS,
            MSR_K8_PSTATE_LIMIT + 2,
        ];
        let (mut vi, mut pi) = with(INTEL, ALL);
        let (mut va, mut pa) = with(AMD, ALL);
        let (hv, hp) = with(b"HygonGenuine", ALL);
        for msr in intel_only {
            assert!(rd(&vi, &pi, msr).is_ok(), "{msr:#x}");
            assert_eq!(rd(&va, &pa, msr), Err(MsrFault::Absent), "{msr:#x}");
        }
        for msr in amd_only {
            assert!(rd(&va, &pa, msr).is_ok(), "{msr:#x}");
            assert!(rd(&hv, &hp, msr).is_ok(), "{msr:#x}");
            assert_eq!(rd(&vi, &pi, msr), Err(MsrFault::Absent), "{msr:#x}");
        }
        // DE_CFG writes are dropped on AMD, #GP on Intel.
        assert_eq!(guest_wrmsr(&mut va, &mut pa, MSR_AMD64_DE_CFG, 0), Ok(()));
        assert_eq!(rd(&va, &pa, MSR_AMD64_DE_CFG), Ok(DE_CFG_LFENCE_SERIALISE));
        assert_eq!(
            guest_wrmsr(&mut vi, &mut pi, MSR_AMD64_DE_CFG, 0),
            Err(MsrFault::Absent)
        );
        // UCODE_REV: Intel and AMD, not an unknown vendor.
        let (ov, op) = with(b"SomethingNew", ALL);
        assert_eq!(rd(&ov, &op, MSR_UCODE_REV), Err(MsrFault::Absent));
        assert_eq!(rd(&ov, &op, MSR_MCG_CAP), Ok(AMD_GUEST_MCG_CAP));
    }

    #[test]
    fn mce_banks_as_xen_vmce() {
        let (mut v, mut p) = with(INTEL, &[f::MCE, f::MCA]);
        assert_eq!(rd(&v, &p, MSR_MCG_CAP), Ok(INTEL_GUEST_MCG_CAP));
        assert_eq!(INTEL_GUEST_MCG_CAP & 0xff, 2);
        assert_eq!(INTEL_GUEST_MCG_CAP & MCG_CTL_P, 0);
        // MCG_STATUS is stored per vCPU.
        assert_eq!(guest_wrmsr(&mut v, &mut p, MSR_MCG_STATUS, 5), Ok(()));
        assert_eq!(rd(&v, &p, MSR_MCG_STATUS), Ok(5));
        // MCi_CTL: all ones, writes ignored.
        assert_eq!(guest_wrmsr(&mut v, &mut p, MSR_MC0_CTL + 4, 0), Ok(()));
        assert_eq!(rd(&v, &p, MSR_MC0_CTL + 4), Ok(u64::MAX));
        // An error record (as an injection would leave) reads back and can be cleared.
        v.msrs.vmce.bank[1] = VmceBank {
            mci_status: 0xb000_0000_0000_0001,
            mci_addr: 0x1000,
            mci_misc: 0x86,
            mci_ctl2: 0,
        };
        assert_eq!(rd(&v, &p, MSR_MC0_CTL + 5), Ok(0xb000_0000_0000_0001));
        assert_eq!(rd(&v, &p, MSR_MC0_CTL + 6), Ok(0x1000));
        assert_eq!(rd(&v, &p, MSR_MC0_CTL + 7), Ok(0x86));
        // The P5 view of bank 1 on Intel.
        assert_eq!(rd(&v, &p, MSR_P5_MC_ADDR), Ok(0x1000));
        assert_eq!(rd(&v, &p, MSR_P5_MC_TYPE), Ok(0xb000_0000_0000_0001));
        for msr in [MSR_MC0_CTL + 5, MSR_MC0_CTL + 6, MSR_MC0_CTL + 7] {
            assert_eq!(guest_wrmsr(&mut v, &mut p, msr, 7), Err(MsrFault::Invalid));
            assert_eq!(guest_wrmsr(&mut v, &mut p, msr, 0), Ok(()));
            assert_eq!(rd(&v, &p, msr), Ok(0));
        }
        // MCi_CTL2 stored for the guest's banks on Intel; beyond them 0 and dropped.
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_MC0_CTL2 + 1, 0x4000_0001),
            Ok(())
        );
        assert_eq!(rd(&v, &p, MSR_MC0_CTL2 + 1), Ok(0x4000_0001));
        assert_eq!(
            guest_wrmsr(&mut v, &mut p, MSR_MC0_CTL2 + 2, 0x4000_0001),
            Ok(())
        );
        assert_eq!(rd(&v, &p, MSR_MC0_CTL2 + 2), Ok(0));
        // Out-of-range banks: read 0, any write dropped (even non-zero STATUS).
        assert_eq!(rd(&v, &p, MSR_MC0_CTL + 9), Ok(0));
        assert_eq!(guest_wrmsr(&mut v, &mut p, MSR_MC0_CTL + 9, 5), Ok(()));
        assert_eq!(rd(&v, &p, MSR_MC0_CTL + 9), Ok(0));
        // Per vCPU: another vCPU has its own MCG_STATUS.
        let v1 = Vcpu::new(1, v.kernel_cr3, v.vcpu_info_gpa + 64);
        assert_eq!(rd(&v1, &p, MSR_MCG_STATUS), Ok(0));
        // AMD: two banks, no CTL2 storage, P5 reads 0, MCG_CTL 0.
        let (mut v, mut p) = with(AMD, &[f::MCE, f::MCA]);
        assert_eq!(rd(&v, &p, MSR_MCG_CAP), Ok(2));
        assert_eq!(guest_wrmsr(&mut v, &mut p, MSR_MC0_CTL2, 9), Ok(()));
        assert_eq!(rd(&v, &p, MSR_MC0_CTL2), Ok(0));
        assert_eq!(rd(&v, &p, MSR_MCG_CTL), Ok(0));
        v.msrs.vmce.bank[1].mci_addr = 4;
        assert_eq!(rd(&v, &p, MSR_P5_MC_ADDR), Ok(0));
        // Without MCA, no machine-check MSR exists.
        let (v, p) = with(AMD, &[f::MCE]);
        assert_eq!(rd(&v, &p, MSR_MCG_CAP), Err(MsrFault::Absent));
        assert_eq!(rd(&v, &p, MSR_MC0_CTL), Err(MsrFault::Absent));
    }

    /// What Linux's MCE init does with MCE and MCA visible (mce/core.c: read MCG_CAP,
    /// clear MCG_STATUS, read each bank's CTL, write CTL and clear STATUS, poll STATUS;
    /// Intel's CMCI discovery sets and reads back MCi_CTL2), none of which may #GP:
    /// Linux's `mce_rdmsrl` panics "MCA architectural violation!" on a fault.
    #[test]
    fn linux_mce_init_sequence_never_faults() {
        for vendor in [INTEL, AMD] {
            let (mut v, mut p) = with(vendor, &[f::MCE, f::MCA]);
            let cap = rd(&v, &p, MSR_MCG_CAP).expect("MCG_CAP");
            let banks = (cap & 0xff) as u32;
            assert!(banks > 0);
            assert_eq!(guest_wrmsr(&mut v, &mut p, MSR_MCG_STATUS, 0), Ok(()));
            for i in 0..banks {
                let ctl = MSR_MC0_CTL + 4 * i;
                assert_ne!(rd(&v, &p, ctl), Ok(0));
                assert_eq!(guest_wrmsr(&mut v, &mut p, ctl, u64::MAX), Ok(()));
                assert_eq!(guest_wrmsr(&mut v, &mut p, ctl + 1, 0), Ok(()));
                assert_eq!(rd(&v, &p, ctl + 1), Ok(0));
                assert_eq!(rd(&v, &p, ctl + 3), Ok(0));
                if cap & MCG_CMCI_P != 0 {
                    let ctl2 = MSR_MC0_CTL2 + i;
                    let old = rd(&v, &p, ctl2).expect("CTL2");
                    assert_eq!(
                        guest_wrmsr(&mut v, &mut p, ctl2, old | (1 << 30) | 1),
                        Ok(())
                    );
                    assert_eq!(rd(&v, &p, ctl2), Ok(old | (1 << 30) | 1));
                }
            }
            assert_eq!(rd(&v, &p, MSR_MCG_STATUS), Ok(0));
        }
    }

    /// The proof [`FEATURE_MSRS`] exists for: each feature alone makes its MSR usable,
    /// and a policy without it (everything else offered) has no such MSR.
    #[test]
    fn every_feature_that_implies_an_msr_has_its_row() {
        for vendor in [Vendor::Intel, Vendor::Amd] {
            for fm in FEATURE_MSRS {
                let (mut v, _, _) = setup();
                let only = Policy::with_features(vendor, &[fm.feature]);
                assert_eq!(
                    probe_with_policy(&mut v, &only, fm.msr, fm.probe),
                    Ok(()),
                    "{} -> {:#x} on {vendor:?}",
                    fm.feature.name,
                    fm.msr
                );
                // Without it: every feature implying the same MSR removed, everything
                // else offered.
                let others: Vec<Feature> = ALL
                    .iter()
                    .copied()
                    .filter(|ft| {
                        !FEATURE_MSRS
                            .iter()
                            .any(|o| o.msr == fm.msr && o.feature == *ft)
                    })
                    .collect();
                let without = Policy::with_features(vendor, &others);
                assert!(
                    probe_with_policy(&mut v, &without, fm.msr, fm.probe).is_err(),
                    "{} -> {:#x} present without it",
                    fm.feature.name,
                    fm.msr
                );
            }
        }
        // And every feature in the list is one the policy reader sees.
        for fm in FEATURE_MSRS {
            assert!(Policy::with_features(Vendor::Other, &[fm.feature]).has(fm.feature));
        }
    }

    /// The same proof through a platform's CPUID, as the engine reads it at run time.
    #[test]
    fn feature_msrs_through_the_platform() {
        for fm in FEATURE_MSRS {
            let (mut v, mut p) = with(AMD, &[fm.feature]);
            let got = match fm.probe {
                Probe::Read => rd(&v, &p, fm.msr).map(|_| ()),
                Probe::Write(val) => guest_wrmsr(&mut v, &mut p, fm.msr, val),
            };
            assert_eq!(got, Ok(()), "{}", fm.feature.name);
            let (mut v, mut p) = with(AMD, &[]);
            let got = match fm.probe {
                Probe::Read => rd(&v, &p, fm.msr).map(|_| ()),
                Probe::Write(val) => guest_wrmsr(&mut v, &mut p, fm.msr, val),
            };
            assert_eq!(got, Err(MsrFault::Absent), "{}", fm.feature.name);
        }
    }

    /// Every feature is in exactly one list, and the features without rows really have
    /// none of their MSRs served (checked for the ones Linux would touch first).
    #[test]
    fn features_without_rows_are_disjoint_from_feature_msrs() {
        for ft in FEATURES_WITHOUT_ROWS {
            assert!(
                !FEATURE_MSRS.iter().any(|fm| fm.feature == *ft),
                "{}",
                ft.name
            );
            assert!(!ALL.contains(ft), "{}", ft.name);
        }
        let (v, p) = with(AMD, FEATURES_WITHOUT_ROWS);
        // TSC_DEADLINE, MTRRcap, DS_AREA, PQR_ASSOC, BNDCFGS, RTIT_CTL, UMWAIT_CONTROL,
        // PKRS, ARCH_LBR_CTL, CORE_CAPABILITIES, VM_CR, LWP_CFG, PERF_CTL0 (F15h),
        // x2APIC ID, DEBUG_INTERFACE.
        for msr in [
            0x6e0,
            0xfe,
            0x600,
            0xc8f,
            0xd90,
            0x570,
            0xe1,
            0x6e1,
            0x14ce,
            0xcf,
            0xc001_0114,
            0xc000_0105,
            0xc001_0200,
            0x802,
            0xc80,
        ] {
            assert_eq!(rd(&v, &p, msr), Err(MsrFault::Unknown), "{msr:#x}");
        }
    }

    #[test]
    fn policy_ignores_leaves_past_the_maximum() {
        let (_, _, mut p) = setup();
        // Leaf 7 answered but the maximum basic leaf is 6.
        p.cpuid = Some(std::vec![
            (0, 0, [6, 0, 0, 0]),
            (7, 0, [0, 0, 0, 1 << 26]),
            (0x8000_0000, 0, [0x8000_0008, 0, 0, 0]),
            (0x8000_0021, 0, [1 << 27, 0, 0, 0]),
        ]);
        let pol = Policy::read(&p);
        assert!(!pol.has(f::IBRSB));
        assert!(!pol.has(f::SBPB));
        assert_eq!(pol.vendor(), Vendor::Other);
    }
}
