//! The guest's CPUID policy: Xen's PV default policy, built leaf by leaf from an
//! allow-list, one table for both views a PV guest has: raw `cpuid` (answered by KVM
//! from `KVM_SET_CPUID2` where the host intercepts it) and the forced-emulation
//! `ud2; "xen"; cpuid` (answered by the engine through [`CpuidTable::lookup`]).
//!
//! Construction follows Xen's `calculate_pv_def_policy` and `recalculate_misc`
//! (`xen/arch/x86/cpu-policy.c`):
//! 1. the host's featureset (here: what KVM reports it can give a guest) is masked with
//!    the features Xen's featureset marks for PV guests by default
//!    ([`xen_abi::cpufeatureset::Avail::AllDefault`]); nothing else can appear;
//! 2. Xen's fix-ups (hypervisor bit, STIBP with IBRS, IBPB wherever IBRS exists, no
//!    SYSENTER on AMD, ARCH_CAPS only on Intel, ...);
//! 3. pvkvm's own restrictions, each with its reason ([`PVKVM_HIDDEN`]): features Xen
//!    offers that pvkvm cannot back on this kind of host;
//! 4. Xen's dependency closure ([`xen_abi::cpufeatureset::DEPS`]);
//! 5. the leaves: vendor, family/model, caches and brand from the host, feature words
//!    from the featureset, extended state from it, Xen's leaves at 0x40000000, and every
//!    other leaf zero.
//!
//! What Xen computes per vCPU at the time of the `cpuid` (OSXSAVE and OSPKE from the
//! virtual CR4, leaf 0xD's current size from XCR0) is not in this table: the engine
//! adds it (and KVM does for raw CPUID).

use std::fmt;

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};
use xen_abi::cpufeatureset::{self as fset, feat, Avail, Feature, WordSource, NR_WORDS};

/// Machine address width Linux must see in leaf 0x40000005 (above 44 bits it asks for
/// grant tables v2).
pub const PV_MACHINE_ADDRESS_BITS: u32 = 44;

/// Highest basic leaf a PV guest sees (Xen's `CPUID_GUEST_NR_BASIC - 1`), before
/// pvkvm's leaf 0x16.
const MAX_BASIC_LEAF: u32 = 0xd;
/// Highest extended leaf on Intel and on AMD (Xen's `CPUID_GUEST_NR_EXTD_*`).
const MAX_EXTD_INTEL: u32 = 0x8000_0008;
const MAX_EXTD_AMD: u32 = 0x8000_0021;
/// Leaf 4 subleaves kept (Xen's `CPUID_GUEST_NR_CACHE`).
const NR_CACHE_SUBLEAVES: u32 = 6;
/// Leaf 7 subleaves kept (Xen's `CPUID_GUEST_NR_FEAT`).
const NR_FEAT_SUBLEAVES: u32 = 3;

/// XCR0 components.
pub mod xcr0 {
    /// x87 state.
    pub const X87: u64 = 1 << 0;
    /// SSE (XMM) state.
    pub const SSE: u64 = 1 << 1;
    /// AVX (upper YMM) state.
    pub const YMM: u64 = 1 << 2;
    /// MPX bound registers.
    pub const BNDREGS: u64 = 1 << 3;
    /// MPX configuration.
    pub const BNDCSR: u64 = 1 << 4;
    /// AVX-512 opmask registers.
    pub const OPMASK: u64 = 1 << 5;
    /// Upper halves of ZMM0-15.
    pub const ZMM: u64 = 1 << 6;
    /// ZMM16-31.
    pub const HI_ZMM: u64 = 1 << 7;
    /// Protection-key rights register.
    pub const PKRU: u64 = 1 << 9;
    /// AMX tile configuration.
    pub const TILE_CFG: u64 = 1 << 17;
    /// AMX tile data.
    pub const TILE_DATA: u64 = 1 << 18;
}

/// The CPU vendor, from leaf 0's signature.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD".
    Amd,
    /// "HygonGenuine" (AMD's rules apply).
    Hygon,
    /// Anything else.
    Other,
}

impl Vendor {
    fn from_leaf0([_, b, c, d]: [u32; 4]) -> Self {
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&b.to_le_bytes());
        sig[4..8].copy_from_slice(&d.to_le_bytes());
        sig[8..].copy_from_slice(&c.to_le_bytes());
        match &sig {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" => Vendor::Amd,
            b"HygonGenuine" => Vendor::Hygon,
            _ => Vendor::Other,
        }
    }

    fn amd_like(self) -> bool {
        matches!(self, Vendor::Amd | Vendor::Hygon)
    }
}

/// CPUID leaves as some source reports them: KVM's supported list, or a recorded dump
/// of a real CPU (test data).
#[derive(Clone, Debug, Default)]
pub struct RawCpuid {
    entries: Vec<kvm_cpuid_entry2>,
    /// `MSR_ARCH_CAPABILITIES` as the source reports it (featureset words 16 and 17).
    pub arch_caps: u64,
}

/// Why a recorded CPUID dump could not be read.
#[derive(Debug, thiserror::Error)]
#[error("CPUID dump line {line}: {what}")]
pub struct DumpError {
    line: usize,
    what: &'static str,
}

fn entry(function: u32, index: u32, [eax, ebx, ecx, edx]: [u32; 4]) -> kvm_cpuid_entry2 {
    kvm_cpuid_entry2 {
        function,
        index,
        flags: if has_subleaves(function) {
            KVM_CPUID_FLAG_SIGNIFCANT_INDEX
        } else {
            0
        },
        eax,
        ebx,
        ecx,
        edx,
        ..Default::default()
    }
}

/// Leaves whose answer depends on the subleaf in ecx.
fn has_subleaves(function: u32) -> bool {
    matches!(
        function,
        0x4 | 0x7
            | 0xb
            | 0xd
            | 0xf
            | 0x10
            | 0x12
            | 0x14
            | 0x17
            | 0x18
            | 0x1d
            | 0x1e
            | 0x1f
            | 0x24
            | 0x8000_001d
            | 0x8000_0020
            | 0x8000_0026
    )
}

impl RawCpuid {
    /// What KVM reports it can give a guest.
    pub fn from_kvm(cpuid: &CpuId) -> Self {
        Self {
            entries: cpuid.as_slice().to_vec(),
            arch_caps: 0,
        }
    }

    /// Parses a recorded dump: `LEAF SUBLEAF EAX EBX ECX EDX` in hex per line, `#`
    /// comments, and an optional `msr 0x10a VALUE` line for `MSR_ARCH_CAPABILITIES`.
    pub fn parse_dump(text: &str) -> Result<Self, DumpError> {
        let mut raw = RawCpuid::default();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = |what| DumpError { line: n + 1, what };
            let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16);
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.first() == Some(&"msr") {
                match fields[..] {
                    [_, msr, value] if hex(msr) == Ok(0x10a) => {
                        raw.arch_caps = hex(value).map_err(|_| err("bad MSR value"))?;
                    }
                    _ => return Err(err("only `msr 0x10a VALUE` is understood")),
                }
                continue;
            }
            if fields.len() != 6 {
                return Err(err("expected LEAF SUBLEAF EAX EBX ECX EDX"));
            }
            let mut v = [0u32; 6];
            for (slot, f) in v.iter_mut().zip(&fields) {
                *slot = hex(f)
                    .ok()
                    .and_then(|x| u32::try_from(x).ok())
                    .ok_or(err("not a 32-bit hex number"))?;
            }
            raw.entries
                .push(entry(v[0], v[1], [v[2], v[3], v[4], v[5]]));
        }
        Ok(raw)
    }

    /// The registers of `leaf`/`subleaf`; zeros where the source has none.
    pub fn get(&self, leaf: u32, subleaf: u32) -> [u32; 4] {
        lookup(&self.entries, leaf, subleaf)
    }

    fn vendor(&self) -> Vendor {
        Vendor::from_leaf0(self.get(0, 0))
    }

    /// The featureset this source reports.
    pub fn featureset(&self) -> Featureset {
        let mut fs = Featureset::default();
        for (w, src) in fset::WORDS.iter().enumerate() {
            fs.0[w] = match *src {
                WordSource::Cpuid(leaf, sub, reg) => {
                    // A leaf above the source's maximum is not there.
                    let max = self.get(leaf & 0xffff_0000, 0)[0];
                    if leaf > max {
                        0
                    } else {
                        self.get(leaf, sub)[reg.index()]
                    }
                }
                WordSource::ArchCaps(high) => {
                    if high {
                        (self.arch_caps >> 32) as u32
                    } else {
                        self.arch_caps as u32
                    }
                }
                WordSource::Unused => 0,
            };
        }
        fs
    }
}

fn lookup(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> [u32; 4] {
    entries
        .iter()
        .find(|e| {
            e.function == function
                && (e.flags & KVM_CPUID_FLAG_SIGNIFCANT_INDEX == 0 || e.index == index)
        })
        .map(|e| [e.eax, e.ebx, e.ecx, e.edx])
        .unwrap_or([0; 4])
}

/// A featureset: one bit per [`Feature`].
#[derive(Clone, Copy, Default, PartialEq, Eq)]
pub struct Featureset(pub [u32; NR_WORDS]);

impl Featureset {
    /// Whether `f` is set.
    pub fn has(&self, f: Feature) -> bool {
        self.0[f.word as usize] & f.mask() != 0
    }

    /// Sets or clears `f`.
    pub fn set(&mut self, f: Feature, on: bool) {
        if on {
            self.0[f.word as usize] |= f.mask();
        } else {
            self.0[f.word as usize] &= !f.mask();
        }
    }

    /// The features set, by Xen's names.
    pub fn features(&self) -> impl Iterator<Item = Feature> + '_ {
        fset::ALL.iter().copied().filter(|f| self.has(*f))
    }

    /// The features Xen's featureset marks with `avail`.
    fn with_avail(avail: Avail) -> Self {
        let mut fs = Featureset::default();
        for f in fset::ALL.iter().filter(|f| f.avail == avail) {
            fs.set(*f, true);
        }
        fs
    }

    fn and(mut self, other: &Featureset) -> Self {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a &= b;
        }
        self
    }

    /// Xen's `sanitise_featureset`: clears every feature whose prerequisite is clear,
    /// transitively.
    fn close_dependencies(&mut self) {
        loop {
            let before = *self;
            for (key, dependents) in fset::DEPS {
                if !self.has(*key) {
                    for d in *dependents {
                        self.set(*d, false);
                    }
                }
            }
            if *self == before {
                return;
            }
        }
    }
}

impl fmt::Debug for Featureset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.features().map(|x| x.name))
            .finish()
    }
}

/// Features Xen's PV default policy offers that pvkvm does not, with the reason. Listed
/// here once: the policy builder clears them and the recorded-CPU tests check that every
/// difference from Xen's policy is one of these.
pub const PVKVM_HIDDEN: &[(Feature, &str)] = &[(
    feat::FSGSBASE,
    "guest code could change FS/GS bases with wrfsbase/wrgsbase without the engine \
         seeing it (no trap on any host kind); bases go through set_segment_base and wrmsr",
)];

/// The extended-state features, offered only with an XCR0 mask from the host's plan
/// ([`PolicyOptions::xcr0`]).
pub const XSTATE_FEATURES: &[Feature] = &[feat::XSAVE];

/// The features that read `MSR_TSC_AUX` in guest code, offered only where the host loads
/// the guest's TSC_AUX while guest code runs ([`PolicyOptions::tsc_aux`]): where guest
/// ring 3 runs natively on the host's state (software KVM), `rdtscp`/`rdpid` return the
/// host's value (the host CPU number), which the guest never wrote.
pub const TSC_AUX_FEATURES: &[Feature] = &[feat::RDTSCP, feat::RDPID];

/// Host-dependent choices for the policy.
#[derive(Clone, Copy, Debug, Default)]
pub struct PolicyOptions {
    /// The XCR0 components the host's extended-state plan lets the guest have
    /// ([`crate::xstate::XstatePlan::xcr0_mask`]); 0 hides XSAVE and everything that
    /// needs it. Otherwise XSAVE is offered, and exactly the state features of these
    /// components (AVX for YMM, AVX-512F for the AVX-512 trio), whatever KVM's table says
    /// of them: the plan measured what guest code runs with, and where guest ring 3
    /// runs natively it can use them anyway, so the kernel must save them (Linux saves
    /// task state with FXSAVE unless it is offered XSAVE).
    pub xcr0: u64,
    /// Offer RDTSCP and RDPID: only where guest code reads the guest's own TSC_AUX (the
    /// host fact `HostFacts::guest_tsc_aux`; hardware virtualization loads it on VM
    /// entry).
    pub tsc_aux: bool,
    /// The TSC rate for pvkvm's leaf 0x16, in kHz (0: no leaf 0x16). With it a kernel
    /// takes the rate from CPUID instead of timing the PIT (every PIT read is a trap on
    /// software KVM: the PIT loop cost ~10 s of boot).
    pub tsc_khz: u32,
}

/// What Xen's PV default policy offers on a host with this featureset (`host`), from
/// the featureset table and Xen's fix-ups; pvkvm's restrictions come on top of it.
pub fn xen_pv_default_featureset(host: &RawCpuid) -> Featureset {
    xen_pv_default_from(host, host.featureset())
}

/// [`xen_pv_default_featureset`] over `host_fs`, the host's featureset as pvkvm knows it
/// (the table's, or with facts measured on the host folded in).
fn xen_pv_default_from(host: &RawCpuid, host_fs: Featureset) -> Featureset {
    let vendor = host.vendor();
    let mut fs = host_fs.and(&Featureset::with_avail(Avail::AllDefault));
    // The AMD copy of the common leaf 1 EDX bits is rebuilt from leaf 1 at the end.
    for f in fset::COMMON_1D {
        fs.0[2] &= !f.mask();
    }
    fs.set(feat::HYPERVISOR, true);
    // STIBP comes with IBRS; IBPB is offered wherever IBRS is (the AMD bit).
    if fs.has(feat::IBRSB) {
        fs.set(feat::STIBP, true);
    }
    if fs.has(feat::IBRS) {
        fs.set(feat::AMD_STIBP, true);
    }
    if host_fs.has(feat::IBRSB) {
        fs.set(feat::IBPB, true);
    }
    if vendor.amd_like() {
        // Xen runs in long mode: SYSENTER cannot reach it on AMD (init_amd clears it).
        fs.set(feat::SEP, false);
    }
    if vendor != Vendor::Intel {
        // MSR_ARCH_CAPABILITIES is Intel's; Xen offers it only on Intel hosts (KVM
        // emulates it on AMD too, which is why a KVM view can have it there).
        fs.set(feat::ARCH_CAPS, false);
    }
    // SRSO_US_NO describes a CPL3/CPL0 boundary; a 64-bit PV kernel and its processes
    // are both CPL3 (Xen keeps it only with BP_SPEC_REDUCE active).
    fs.set(feat::SRSO_US_NO, false);
    if host.get(0, 0)[0] < 0xd {
        fs.set(feat::XSAVE, false);
    }
    fs.close_dependencies();
    if !fs.has(feat::ARCH_CAPS) {
        fs.0[16] = 0;
        fs.0[17] = 0;
    }
    fs
}

/// pvkvm's featureset: Xen's PV default minus [`PVKVM_HIDDEN`] (and extended state
/// unless the host's plan allows it, [`PolicyOptions::xcr0`]).
pub fn pvkvm_featureset(host: &RawCpuid, opts: &PolicyOptions) -> Featureset {
    // The plan's components, as far as this CPU (or recorded dump) has them at all, are
    // host facts: they decide XSAVE, AVX and AVX-512F before Xen's rules run, so the
    // features built on them (FMA, AVX2, ...) follow as the host has those.
    let [lo, _, _, hi] = host.get(0xd, 0);
    let xcr0 = opts.xcr0 & ((u64::from(hi) << 32) | u64::from(lo));
    let mut host_fs = host.featureset();
    let has = |m: u64| xcr0 & m == m;
    let xsave = has(xcr0::X87 | xcr0::SSE) && host.get(0, 0)[0] >= 0xd;
    host_fs.set(feat::XSAVE, xsave);
    host_fs.set(feat::AVX, xsave && has(xcr0::YMM));
    host_fs.set(
        feat::AVX512F,
        xsave && has(xcr0::YMM | xcr0::OPMASK | xcr0::ZMM | xcr0::HI_ZMM),
    );
    let mut fs = xen_pv_default_from(host, host_fs);
    for (f, _) in PVKVM_HIDDEN {
        fs.set(*f, false);
    }
    if !opts.tsc_aux {
        for f in TSC_AUX_FEATURES {
            fs.set(*f, false);
        }
    }
    fs.close_dependencies();
    fs
}

/// The XCR0 components a featureset allows (Xen's `recalculate_xstate`).
pub fn xcr0_mask(fs: &Featureset) -> u64 {
    if !fs.has(feat::XSAVE) {
        return 0;
    }
    let mut mask = xcr0::X87 | xcr0::SSE;
    if fs.has(feat::AVX) {
        mask |= xcr0::YMM;
    }
    if fs.has(feat::MPX) {
        mask |= xcr0::BNDREGS | xcr0::BNDCSR;
    }
    if fs.has(feat::AVX512F) {
        mask |= xcr0::OPMASK | xcr0::ZMM | xcr0::HI_ZMM;
    }
    if fs.has(feat::PKU) {
        mask |= xcr0::PKRU;
    }
    if fs.has(feat::AMX_TILE) {
        mask |= xcr0::TILE_CFG | xcr0::TILE_DATA;
    }
    mask
}

/// The standard-format XSAVE area size for `components`, from the host's leaf 0xD
/// offsets and sizes (the legacy area and header are 576 bytes).
fn xsave_size(host: &RawCpuid, components: u64) -> u32 {
    (2..63)
        .filter(|i| components & (1 << i) != 0)
        .map(|i| {
            let [size, offset, _, _] = host.get(0xd, i);
            offset.saturating_add(size)
        })
        .fold(576, u32::max)
}

/// A CPUID table.
#[derive(Clone, Debug)]
pub struct CpuidTable {
    entries: Vec<kvm_cpuid_entry2>,
    featureset: Featureset,
    vendor: Vendor,
}

fn sig(s: &[u8; 4]) -> u32 {
    u32::from_le_bytes(*s)
}

fn word(fs: &Featureset, w: usize) -> u32 {
    fs.0[w]
}

impl CpuidTable {
    /// The PV policy from what KVM supports, without leaf 0x16.
    pub fn pv_policy(supported: &CpuId) -> Self {
        Self::build(&RawCpuid::from_kvm(supported), &PolicyOptions::default())
    }

    /// Builds the policy for a host that reports `host`.
    pub fn build(host: &RawCpuid, opts: &PolicyOptions) -> Self {
        let fs = pvkvm_featureset(host, opts);
        Self::from_featureset(host, host, fs, opts)
    }

    /// The policy of a recorded CPU (`recorded`: its vendor, family, model, caches,
    /// brand and features) limited to what this host can run (`host`), for booting a
    /// guest that makes the recorded CPU's CPUID and MSR decisions (tests). Features
    /// that only enumerate MSRs the engine emulates (`pv_engine::msr::FEATURE_MSRS`:
    /// speculation controls, ARCH_CAPS, machine checks) and the ARCH_CAPABILITIES words
    /// are the recorded CPU's, so its MSR decisions are made; instructions and state are
    /// limited to the host's. (A barrier or SPEC_CTRL value this host's KVM refuses is
    /// then logged and dropped: testing only.)
    pub fn build_as(recorded: &RawCpuid, host: &RawCpuid, opts: &PolicyOptions) -> Self {
        let theirs = pvkvm_featureset(recorded, opts);
        let mut fs = theirs.and(&pvkvm_featureset(host, opts));
        for fm in pv_engine::msr::FEATURE_MSRS {
            fs.set(fm.feature, theirs.has(fm.feature));
        }
        fs.0[16] = theirs.0[16];
        fs.0[17] = theirs.0[17];
        fs.set(feat::HYPERVISOR, true);
        fs.close_dependencies();
        Self::from_featureset(recorded, host, fs, opts)
    }

    fn from_featureset(
        src: &RawCpuid,
        host: &RawCpuid,
        fs: Featureset,
        opts: &PolicyOptions,
    ) -> Self {
        let vendor = src.vendor();
        let mut e: Vec<kvm_cpuid_entry2> = Vec::new();
        let mut push = |leaf: u32, sub: u32, regs: [u32; 4]| e.push(entry(leaf, sub, regs));
        let leaf0 = src.get(0, 0);
        let max_basic = leaf0[0].min(MAX_BASIC_LEAF);
        let max_basic_reported = if opts.tsc_khz >= 1000 {
            max_basic.max(0x16)
        } else {
            max_basic
        };
        push(0, 0, [max_basic_reported, leaf0[1], leaf0[2], leaf0[3]]);

        for leaf in 1..=max_basic {
            let [a, b, c, d] = src.get(leaf, 0);
            match leaf {
                1 => push(
                    1,
                    0,
                    [
                        // No processor type; the APIC ID is the vCPU's (0).
                        a & 0x0fff_0fff,
                        b & 0x00ff_ffff,
                        word(&fs, 1),
                        word(&fs, 0),
                    ],
                ),
                2 if vendor == Vendor::Intel => push(2, 0, [a, b, c, d]),
                4 if vendor == Vendor::Intel => {
                    for sub in 0..NR_CACHE_SUBLEAVES {
                        push(4, sub, src.get(4, sub));
                    }
                }
                7 => {
                    let max_sub = a.min(NR_FEAT_SUBLEAVES - 1);
                    push(7, 0, [max_sub, word(&fs, 5), word(&fs, 6), word(&fs, 9)]);
                    push(
                        7,
                        1,
                        [word(&fs, 10), word(&fs, 12), word(&fs, 14), word(&fs, 15)],
                    );
                    push(7, 2, [0, 0, 0, word(&fs, 13)]);
                }
                0xd if fs.has(feat::XSAVE) => {
                    let mask = xcr0_mask(&fs) & opts.xcr0;
                    let initial = xcr0::X87 | xcr0::SSE;
                    push(
                        0xd,
                        0,
                        [
                            mask as u32,
                            xsave_size(host, initial),
                            xsave_size(host, mask),
                            (mask >> 32) as u32,
                        ],
                    );
                    // XSAVES is not offered: no supervisor components, no XSS.
                    push(0xd, 1, [word(&fs, 4), xsave_size(host, initial), 0, 0]);
                    let align_visible = if fs.has(feat::XSAVEC) { 0b10 } else { 0 };
                    for i in (2..63).filter(|i| mask & (1 << i) != 0) {
                        let [size, offset, flags, _] = host.get(0xd, i);
                        push(0xd, i, [size, offset, flags & align_visible, 0]);
                    }
                }
                // 3 (PSN), 5 (MONITOR), 6 (power), 8, 9 (DCA), 0xa (no vPMU), 0xb
                // (topology), 0xc: empty, as Xen gives them; 2 and 4 on AMD too.
                _ => {}
            }
        }
        if opts.tsc_khz >= 1000 {
            // pvkvm's addition (see PolicyOptions::tsc_khz): base and maximum frequency in
            // MHz, bus 100 MHz.
            let mhz = opts.tsc_khz / 1000;
            push(0x16, 0, [mhz, mhz, 100, 0]);
        }

        push(
            0x4000_0000,
            0,
            [0x4000_0005, sig(b"XenV"), sig(b"MMXe"), sig(b"nVMM")],
        );
        push(0x4000_0001, 0, [(4 << 16) | 17, 0, 0, 0]);
        // One hypercall page; MSR base for it; no Xen-specific features (bit 0 would
        // claim MMU_PT_UPDATE_PRESERVE_AD through CPUID, which Linux reads from XENVER).
        push(0x4000_0002, 0, [1, 0x4000_0000, 0, 0]);
        push(0x4000_0003, 0, [0; 4]);
        push(0x4000_0004, 0, [0; 4]);
        push(0x4000_0005, 0, [0, PV_MACHINE_ADDRESS_BITS, 0, 0]);

        let ext0 = src.get(0x8000_0000, 0);
        let max_extd = if vendor.amd_like() {
            ext0[0].min(MAX_EXTD_AMD)
        } else {
            ext0[0].min(MAX_EXTD_INTEL)
        };
        if max_extd >= 0x8000_0000 {
            let (b, c, d) = if vendor.amd_like() {
                (leaf0[1], leaf0[2], leaf0[3])
            } else {
                (0, 0, 0)
            };
            push(0x8000_0000, 0, [max_extd, b, c, d]);
        }
        let amd = vendor.amd_like();
        for leaf in 0x8000_0001..=max_extd {
            let [a, b, c, d] = src.get(leaf, 0);
            let regs = match leaf {
                0x8000_0001 => {
                    let mut edx = word(&fs, 2);
                    if amd {
                        // AMD repeats the common leaf 1 EDX bits: the same filtered ones.
                        for f in fset::COMMON_1D {
                            if fs.has(*f) {
                                edx |= f.mask();
                            }
                        }
                        [
                            src.get(1, 0)[0] & 0x0fff_0fff,
                            b & 0xff00_ffff,
                            word(&fs, 3),
                            edx,
                        ]
                    } else {
                        [0, 0, word(&fs, 3), edx]
                    }
                }
                0x8000_0002..=0x8000_0004 => [a, b, c, d],
                0x8000_0005 if amd => [a, b, c, d],
                0x8000_0006 if amd => [a, b, c, d],
                0x8000_0006 => [0, 0, c, 0],
                0x8000_0007 => [0, 0, 0, word(&fs, 7)],
                0x8000_0008 => [
                    // Physical and linear address widths; guest-physical width hidden.
                    a & 0xffff,
                    word(&fs, 8),
                    if amd { c & 0x0003_f0ff } else { 0 },
                    0,
                ],
                // TLB details and performance hints pass through on AMD.
                0x8000_0019 | 0x8000_001a if amd => [a, b, c, d],
                0x8000_0021 => [word(&fs, 11), 0, word(&fs, 18), 0],
                _ => [0; 4],
            };
            push(leaf, 0, regs);
        }

        Self {
            entries: e,
            featureset: fs,
            vendor,
        }
    }

    /// The table for `KVM_SET_CPUID2`.
    pub fn to_kvm(&self) -> Option<CpuId> {
        CpuId::from_entries(&self.entries).ok()
    }

    /// What `cpuid` with this leaf and subleaf returns; zeros for a leaf not in the table.
    pub fn lookup(&self, function: u32, index: u32) -> [u32; 4] {
        lookup(&self.entries, function, index)
    }

    /// The featureset the table offers.
    pub fn featureset(&self) -> &Featureset {
        &self.featureset
    }

    /// The vendor the table names.
    pub fn vendor(&self) -> Vendor {
        self.vendor
    }

    /// `MSR_ARCH_CAPABILITIES` as the policy gives it: featureset words 16 and 17 (the
    /// host's value filtered like every other word), 0 unless ARCH_CAPS is offered.
    pub fn arch_capabilities(&self) -> u64 {
        (u64::from(self.featureset.0[17]) << 32) | u64::from(self.featureset.0[16])
    }
}

#[cfg(test)]
pub(crate) mod tests;
