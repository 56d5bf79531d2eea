//! Xen's x86 featureset (`public/arch-x86/cpufeatureset.h`): every CPUID feature bit Xen
//! knows, the word and bit it lives in, and which guests Xen's policy may offer it to.
//!
//! A featureset is a bitmap of 32-bit words, each word one CPUID register (or, for words
//! 16 and 17, `MSR_ARCH_CAPABILITIES`). The availability attribute is Xen's annotation:
//! `A` all guests by default, `a` all guests on request, `S`/`s` HVM guests only, `H`/`h`
//! HVM guests with hardware paging only, nothing: never offered to a guest. pvkvm's PV
//! policy starts from the features marked [`Avail::AllDefault`] (Xen's PV default) and
//! takes nothing else. The dependency table ([`DEPS`]) is Xen's: a feature whose
//! prerequisite is absent is absent too.
//!
//! The attributes are not part of Xen's public ABI (the header says so); they are the
//! facts that decide what a PV guest sees on Xen, so pvkvm keeps them next to the bits.

/// Number of featureset words.
pub const NR_WORDS: usize = 19;

/// A CPUID register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reg {
    /// eax
    Eax,
    /// ebx
    Ebx,
    /// ecx
    Ecx,
    /// edx
    Edx,
}

impl Reg {
    /// Index into an `[eax, ebx, ecx, edx]` array.
    pub const fn index(self) -> usize {
        match self {
            Reg::Eax => 0,
            Reg::Ebx => 1,
            Reg::Ecx => 2,
            Reg::Edx => 3,
        }
    }
}

/// Where a featureset word comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WordSource {
    /// CPUID leaf, subleaf, register.
    Cpuid(u32, u32, Reg),
    /// `MSR_ARCH_CAPABILITIES`, low (false) or high (true) half.
    ArchCaps(bool),
    /// A word Xen numbers but has not assigned.
    Unused,
}

/// The source of each featureset word, by word number.
pub const WORDS: [WordSource; NR_WORDS] = [
    WordSource::Cpuid(0x1, 0, Reg::Edx),
    WordSource::Cpuid(0x1, 0, Reg::Ecx),
    WordSource::Cpuid(0x8000_0001, 0, Reg::Edx),
    WordSource::Cpuid(0x8000_0001, 0, Reg::Ecx),
    WordSource::Cpuid(0xd, 1, Reg::Eax),
    WordSource::Cpuid(0x7, 0, Reg::Ebx),
    WordSource::Cpuid(0x7, 0, Reg::Ecx),
    WordSource::Cpuid(0x8000_0007, 0, Reg::Edx),
    WordSource::Cpuid(0x8000_0008, 0, Reg::Ebx),
    WordSource::Cpuid(0x7, 0, Reg::Edx),
    WordSource::Cpuid(0x7, 1, Reg::Eax),
    WordSource::Cpuid(0x8000_0021, 0, Reg::Eax),
    WordSource::Cpuid(0x7, 1, Reg::Ebx),
    WordSource::Cpuid(0x7, 2, Reg::Edx),
    WordSource::Cpuid(0x7, 1, Reg::Ecx),
    WordSource::Cpuid(0x7, 1, Reg::Edx),
    WordSource::ArchCaps(false),
    WordSource::ArchCaps(true),
    WordSource::Cpuid(0x8000_0021, 0, Reg::Ecx),
];

/// Which guests Xen may offer a feature to (the header's attribute letter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Avail {
    /// `A`: every guest, PV included, by default.
    AllDefault,
    /// `a`: every guest, only when the toolstack asks.
    AllOptIn,
    /// `S`: HVM guests by default, never PV.
    HvmDefault,
    /// `s`: HVM guests on request, never PV.
    HvmOptIn,
    /// `H`: HVM guests with hardware paging by default.
    HapDefault,
    /// `h`: HVM guests with hardware paging on request.
    HapOptIn,
    /// No letter: Xen never offers it.
    NotForGuests,
}

/// One feature bit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Feature {
    /// Featureset word.
    pub word: u8,
    /// Bit in the word.
    pub bit: u8,
    /// Xen's name, lower case (as `xen-cpuid` prints it).
    pub name: &'static str,
    /// Which guests may see it.
    pub avail: Avail,
    /// Xen's `!`: more than a plain capability bit (computed, or with side rules).
    pub special: bool,
}

impl Feature {
    const fn new(word: u8, bit: u8, name: &'static str, avail: Avail, special: bool) -> Self {
        Self {
            word,
            bit,
            name,
            avail,
            special,
        }
    }

    /// The bit's index in a featureset (`word * 32 + bit`).
    pub const fn index(self) -> usize {
        self.word as usize * 32 + self.bit as usize
    }

    /// The mask of the bit within its word.
    pub const fn mask(self) -> u32 {
        1 << self.bit
    }

    /// The CPUID leaf, subleaf and register the bit is in (None for the words that come
    /// from `MSR_ARCH_CAPABILITIES`).
    pub const fn cpuid_location(self) -> Option<(u32, u32, Reg)> {
        match WORDS[self.word as usize] {
            WordSource::Cpuid(leaf, subleaf, reg) => Some((leaf, subleaf, reg)),
            WordSource::ArchCaps(_) | WordSource::Unused => None,
        }
    }
}

/// Every feature, by name.
pub mod feat {
    use super::{Avail, Feature};

    /// Onboard FPU
    pub const FPU: Feature = Feature::new(0, 0, "fpu", Avail::AllDefault, false);
    /// Virtual Mode Extensions
    pub const VME: Feature = Feature::new(0, 1, "vme", Avail::HvmDefault, false);
    /// Debugging Extensions
    pub const DE: Feature = Feature::new(0, 2, "de", Avail::AllDefault, false);
    /// Page Size Extensions
    pub const PSE: Feature = Feature::new(0, 3, "pse", Avail::HvmDefault, false);
    /// Time Stamp Counter
    pub const TSC: Feature = Feature::new(0, 4, "tsc", Avail::AllDefault, false);
    /// Model-Specific Registers, RDMSR, WRMSR
    pub const MSR: Feature = Feature::new(0, 5, "msr", Avail::AllDefault, false);
    /// Physical Address Extensions
    pub const PAE: Feature = Feature::new(0, 6, "pae", Avail::AllDefault, false);
    /// Machine Check Architecture
    pub const MCE: Feature = Feature::new(0, 7, "mce", Avail::AllDefault, false);
    /// CMPXCHG8 instruction
    pub const CX8: Feature = Feature::new(0, 8, "cx8", Avail::AllDefault, false);
    /// Onboard APIC
    pub const APIC: Feature = Feature::new(0, 9, "apic", Avail::AllDefault, true);
    /// SYSENTER/SYSEXIT
    pub const SEP: Feature = Feature::new(0, 11, "sep", Avail::AllDefault, false);
    /// Memory Type Range Registers
    pub const MTRR: Feature = Feature::new(0, 12, "mtrr", Avail::HvmDefault, false);
    /// Page Global Enable
    pub const PGE: Feature = Feature::new(0, 13, "pge", Avail::HvmDefault, false);
    /// Machine Check Architecture
    pub const MCA: Feature = Feature::new(0, 14, "mca", Avail::AllDefault, false);
    /// CMOV instruction (FCMOVCC and FCOMI too if FPU present)
    pub const CMOV: Feature = Feature::new(0, 15, "cmov", Avail::AllDefault, false);
    /// Page Attribute Table
    pub const PAT: Feature = Feature::new(0, 16, "pat", Avail::AllDefault, false);
    /// 36-bit PSEs
    pub const PSE36: Feature = Feature::new(0, 17, "pse36", Avail::HvmDefault, false);
    /// CLFLUSH instruction
    pub const CLFLUSH: Feature = Feature::new(0, 19, "clflush", Avail::AllDefault, false);
    /// Debug Store
    pub const DS: Feature = Feature::new(0, 21, "ds", Avail::NotForGuests, false);
    /// ACPI via MSR
    pub const ACPI: Feature = Feature::new(0, 22, "acpi", Avail::AllDefault, false);
    /// Multimedia Extensions
    pub const MMX: Feature = Feature::new(0, 23, "mmx", Avail::AllDefault, false);
    /// FXSAVE and FXRSTOR instructions
    pub const FXSR: Feature = Feature::new(0, 24, "fxsr", Avail::AllDefault, false);
    /// Streaming SIMD Extensions
    pub const SSE: Feature = Feature::new(0, 25, "sse", Avail::AllDefault, false);
    /// Streaming SIMD Extensions-2
    pub const SSE2: Feature = Feature::new(0, 26, "sse2", Avail::AllDefault, false);
    /// CPU self snoop
    pub const SS: Feature = Feature::new(0, 27, "ss", Avail::AllDefault, false);
    /// Hyper-Threading Technology
    pub const HTT: Feature = Feature::new(0, 28, "htt", Avail::AllDefault, true);
    /// Thermal Monitor 1
    pub const TM1: Feature = Feature::new(0, 29, "tm1", Avail::NotForGuests, false);
    /// Pending Break Enable
    pub const PBE: Feature = Feature::new(0, 31, "pbe", Avail::NotForGuests, false);
    /// Streaming SIMD Extensions-3
    pub const SSE3: Feature = Feature::new(1, 0, "sse3", Avail::AllDefault, false);
    /// Carry-less multiplication
    pub const PCLMULQDQ: Feature = Feature::new(1, 1, "pclmulqdq", Avail::AllDefault, false);
    /// 64-bit Debug Store
    pub const DTES64: Feature = Feature::new(1, 2, "dtes64", Avail::NotForGuests, false);
    /// Monitor/Mwait support
    pub const MONITOR: Feature = Feature::new(1, 3, "monitor", Avail::NotForGuests, false);
    /// CPL Qualified Debug Store
    pub const DSCPL: Feature = Feature::new(1, 4, "dscpl", Avail::NotForGuests, false);
    /// Virtual Machine Extensions
    pub const VMX: Feature = Feature::new(1, 5, "vmx", Avail::HapOptIn, false);
    /// Safer Mode Extensions
    pub const SMX: Feature = Feature::new(1, 6, "smx", Avail::NotForGuests, false);
    /// Enhanced SpeedStep
    pub const EIST: Feature = Feature::new(1, 7, "eist", Avail::NotForGuests, false);
    /// Thermal Monitor 2
    pub const TM2: Feature = Feature::new(1, 8, "tm2", Avail::NotForGuests, false);
    /// Supplemental Streaming SIMD Extensions-3
    pub const SSSE3: Feature = Feature::new(1, 9, "ssse3", Avail::AllDefault, false);
    /// IA32_DEBUG_INTERFACE MSR for silicon debugging support
    pub const SDBG: Feature = Feature::new(1, 11, "sdbg", Avail::NotForGuests, false);
    /// Fused Multiply Add
    pub const FMA: Feature = Feature::new(1, 12, "fma", Avail::AllDefault, false);
    /// CMPXCHG16B
    pub const CX16: Feature = Feature::new(1, 13, "cx16", Avail::AllDefault, false);
    /// Send Task Priority Messages
    pub const XTPR: Feature = Feature::new(1, 14, "xtpr", Avail::NotForGuests, false);
    /// Perf/Debug Capability MSR
    pub const PDCM: Feature = Feature::new(1, 15, "pdcm", Avail::NotForGuests, false);
    /// Process Context ID
    pub const PCID: Feature = Feature::new(1, 17, "pcid", Avail::HapDefault, false);
    /// Direct Cache Access
    pub const DCA: Feature = Feature::new(1, 18, "dca", Avail::NotForGuests, false);
    /// Streaming SIMD Extensions 4.1
    pub const SSE4_1: Feature = Feature::new(1, 19, "sse4_1", Avail::AllDefault, false);
    /// Streaming SIMD Extensions 4.2
    pub const SSE4_2: Feature = Feature::new(1, 20, "sse4_2", Avail::AllDefault, false);
    /// Extended xAPIC
    pub const X2APIC: Feature = Feature::new(1, 21, "x2apic", Avail::HvmDefault, true);
    /// movbe instruction
    pub const MOVBE: Feature = Feature::new(1, 22, "movbe", Avail::AllDefault, false);
    /// POPCNT instruction
    pub const POPCNT: Feature = Feature::new(1, 23, "popcnt", Avail::AllDefault, false);
    /// TSC Deadline Timer
    pub const TSC_DEADLINE: Feature = Feature::new(1, 24, "tsc_deadline", Avail::HvmDefault, false);
    /// AES instructions
    pub const AESNI: Feature = Feature::new(1, 25, "aesni", Avail::AllDefault, false);
    /// XSAVE/XRSTOR/XSETBV/XGETBV
    pub const XSAVE: Feature = Feature::new(1, 26, "xsave", Avail::AllDefault, false);
    /// OSXSAVE
    pub const OSXSAVE: Feature = Feature::new(1, 27, "osxsave", Avail::NotForGuests, true);
    /// Advanced Vector Extensions
    pub const AVX: Feature = Feature::new(1, 28, "avx", Avail::AllDefault, false);
    /// Half-precision convert instruction
    pub const F16C: Feature = Feature::new(1, 29, "f16c", Avail::AllDefault, false);
    /// Digital Random Number Generator
    pub const RDRAND: Feature = Feature::new(1, 30, "rdrand", Avail::AllDefault, true);
    /// Running under some hypervisor
    pub const HYPERVISOR: Feature = Feature::new(1, 31, "hypervisor", Avail::AllDefault, true);
    /// SYSCALL/SYSRET
    pub const SYSCALL: Feature = Feature::new(2, 11, "syscall", Avail::AllDefault, false);
    /// Execute Disable
    pub const NX: Feature = Feature::new(2, 20, "nx", Avail::AllDefault, false);
    /// AMD MMX extensions
    pub const MMXEXT: Feature = Feature::new(2, 22, "mmxext", Avail::AllDefault, false);
    /// FFXSR instruction optimizations
    pub const FFXSR: Feature = Feature::new(2, 25, "ffxsr", Avail::AllDefault, false);
    /// 1Gb large page support
    pub const PAGE1GB: Feature = Feature::new(2, 26, "page1gb", Avail::HapDefault, false);
    /// RDTSCP
    pub const RDTSCP: Feature = Feature::new(2, 27, "rdtscp", Avail::AllDefault, false);
    /// Long Mode (x86-64)
    pub const LM: Feature = Feature::new(2, 29, "lm", Avail::AllDefault, false);
    /// AMD 3DNow! extensions
    pub const F_3DNOWEXT: Feature = Feature::new(2, 30, "3dnowext", Avail::AllDefault, false);
    /// 3DNow!
    pub const F_3DNOW: Feature = Feature::new(2, 31, "3dnow", Avail::AllDefault, false);
    /// LAHF/SAHF in long mode
    pub const LAHF_LM: Feature = Feature::new(3, 0, "lahf_lm", Avail::AllDefault, false);
    /// If yes HyperThreading not valid
    pub const CMP_LEGACY: Feature = Feature::new(3, 1, "cmp_legacy", Avail::AllDefault, true);
    /// Secure virtual machine
    pub const SVM: Feature = Feature::new(3, 2, "svm", Avail::HapOptIn, false);
    /// Extended APIC space
    pub const EXTAPIC: Feature = Feature::new(3, 3, "extapic", Avail::NotForGuests, false);
    /// CR8 in 32-bit mode
    pub const CR8_LEGACY: Feature = Feature::new(3, 4, "cr8_legacy", Avail::HvmDefault, false);
    /// Advanced bit manipulation
    pub const ABM: Feature = Feature::new(3, 5, "abm", Avail::AllDefault, false);
    /// SSE-4A
    pub const SSE4A: Feature = Feature::new(3, 6, "sse4a", Avail::AllDefault, false);
    /// Misaligned SSE mode
    pub const MISALIGNSSE: Feature = Feature::new(3, 7, "misalignsse", Avail::AllDefault, false);
    /// 3DNow prefetch instructions
    pub const F_3DNOWPREFETCH: Feature =
        Feature::new(3, 8, "3dnowprefetch", Avail::AllDefault, false);
    /// OS Visible Workaround
    pub const OSVW: Feature = Feature::new(3, 9, "osvw", Avail::NotForGuests, false);
    /// Instruction Based Sampling
    pub const IBS: Feature = Feature::new(3, 10, "ibs", Avail::NotForGuests, false);
    /// extended AVX instructions
    pub const XOP: Feature = Feature::new(3, 11, "xop", Avail::AllDefault, false);
    /// SKINIT/STGI instructions
    pub const SKINIT: Feature = Feature::new(3, 12, "skinit", Avail::NotForGuests, false);
    /// Watchdog timer
    pub const WDT: Feature = Feature::new(3, 13, "wdt", Avail::NotForGuests, false);
    /// Light Weight Profiling
    pub const LWP: Feature = Feature::new(3, 15, "lwp", Avail::NotForGuests, false);
    /// 4 operands MAC instructions
    pub const FMA4: Feature = Feature::new(3, 16, "fma4", Avail::AllDefault, false);
    /// NodeId MSR
    pub const NODEID_MSR: Feature = Feature::new(3, 19, "nodeid_msr", Avail::NotForGuests, false);
    /// trailing bit manipulations
    pub const TBM: Feature = Feature::new(3, 21, "tbm", Avail::AllDefault, false);
    /// topology extensions CPUID leafs
    pub const TOPOEXT: Feature = Feature::new(3, 22, "topoext", Avail::NotForGuests, false);
    /// data breakpoint extension
    pub const DBEXT: Feature = Feature::new(3, 26, "dbext", Avail::AllDefault, false);
    /// MONITOR extension (MONITORX/MWAITX)
    pub const MONITORX: Feature = Feature::new(3, 29, "monitorx", Avail::NotForGuests, false);
    /// Address Mask Extentions
    pub const ADDR_MSK_EXT: Feature = Feature::new(3, 30, "addr_msk_ext", Avail::AllDefault, false);
    /// XSAVEOPT instruction
    pub const XSAVEOPT: Feature = Feature::new(4, 0, "xsaveopt", Avail::AllDefault, false);
    /// XSAVEC/XRSTORC instructions
    pub const XSAVEC: Feature = Feature::new(4, 1, "xsavec", Avail::AllDefault, false);
    /// XGETBV with %ecx=1
    pub const XGETBV1: Feature = Feature::new(4, 2, "xgetbv1", Avail::AllDefault, false);
    /// XSAVES/XRSTORS instructions
    pub const XSAVES: Feature = Feature::new(4, 3, "xsaves", Avail::HvmDefault, false);
    /// MSR_XFD{,_ERR} (eXtended Feature Disable)
    pub const XFD: Feature = Feature::new(4, 4, "xfd", Avail::NotForGuests, false);
    /// {RD,WR}{FS,GS}BASE instructions
    pub const FSGSBASE: Feature = Feature::new(5, 0, "fsgsbase", Avail::AllDefault, false);
    /// TSC_ADJUST MSR available
    pub const TSC_ADJUST: Feature = Feature::new(5, 1, "tsc_adjust", Avail::HvmDefault, false);
    /// Software Guard extensions
    pub const SGX: Feature = Feature::new(5, 2, "sgx", Avail::NotForGuests, false);
    /// 1st bit manipulation extensions
    pub const BMI1: Feature = Feature::new(5, 3, "bmi1", Avail::AllDefault, false);
    /// Hardware Lock Elision
    pub const HLE: Feature = Feature::new(5, 4, "hle", Avail::AllOptIn, true);
    /// AVX2 instructions
    pub const AVX2: Feature = Feature::new(5, 5, "avx2", Avail::AllDefault, false);
    /// x87 FDP only updated on exception.
    pub const FDP_EXCP_ONLY: Feature =
        Feature::new(5, 6, "fdp_excp_only", Avail::NotForGuests, true);
    /// Supervisor Mode Execution Protection
    pub const SMEP: Feature = Feature::new(5, 7, "smep", Avail::HvmDefault, false);
    /// 2nd bit manipulation extensions
    pub const BMI2: Feature = Feature::new(5, 8, "bmi2", Avail::AllDefault, false);
    /// Enhanced REP MOVSB/STOSB
    pub const ERMS: Feature = Feature::new(5, 9, "erms", Avail::AllDefault, false);
    /// Invalidate Process Context ID
    pub const INVPCID: Feature = Feature::new(5, 10, "invpcid", Avail::HapDefault, false);
    /// Restricted Transactional Memory
    pub const RTM: Feature = Feature::new(5, 11, "rtm", Avail::AllDefault, true);
    /// Platform QoS Monitoring
    pub const PQM: Feature = Feature::new(5, 12, "pqm", Avail::NotForGuests, false);
    /// FPU CS/DS stored as zero
    pub const NO_FPU_SEL: Feature = Feature::new(5, 13, "no_fpu_sel", Avail::NotForGuests, true);
    /// Memory Protection Extensions
    pub const MPX: Feature = Feature::new(5, 14, "mpx", Avail::HvmOptIn, false);
    /// Platform QoS Enforcement
    pub const PQE: Feature = Feature::new(5, 15, "pqe", Avail::NotForGuests, false);
    /// AVX-512 Foundation Instructions
    pub const AVX512F: Feature = Feature::new(5, 16, "avx512f", Avail::AllDefault, false);
    /// AVX-512 Doubleword & Quadword Instrs
    pub const AVX512DQ: Feature = Feature::new(5, 17, "avx512dq", Avail::AllDefault, false);
    /// RDSEED instruction
    pub const RDSEED: Feature = Feature::new(5, 18, "rdseed", Avail::AllDefault, false);
    /// ADCX, ADOX instructions
    pub const ADX: Feature = Feature::new(5, 19, "adx", Avail::AllDefault, false);
    /// Supervisor Mode Access Prevention
    pub const SMAP: Feature = Feature::new(5, 20, "smap", Avail::HvmDefault, false);
    /// AVX-512 Integer Fused Multiply Add
    pub const AVX512_IFMA: Feature = Feature::new(5, 21, "avx512_ifma", Avail::AllDefault, false);
    /// CLFLUSHOPT instruction
    pub const CLFLUSHOPT: Feature = Feature::new(5, 23, "clflushopt", Avail::AllDefault, false);
    /// CLWB instruction
    pub const CLWB: Feature = Feature::new(5, 24, "clwb", Avail::AllDefault, true);
    /// Processor Trace
    pub const PROC_TRACE: Feature = Feature::new(5, 25, "proc_trace", Avail::NotForGuests, false);
    /// Xeon Phi AVX-512 Prefetch Instructions
    pub const AVX512PF: Feature = Feature::new(5, 26, "avx512pf", Avail::NotForGuests, false);
    /// Xeon Phi AVX-512 Exponent & Reciprocal Instrs
    pub const AVX512ER: Feature = Feature::new(5, 27, "avx512er", Avail::NotForGuests, false);
    /// AVX-512 Conflict Detection Instrs
    pub const AVX512CD: Feature = Feature::new(5, 28, "avx512cd", Avail::AllDefault, false);
    /// SHA1 & SHA256 instructions
    pub const SHA: Feature = Feature::new(5, 29, "sha", Avail::AllDefault, false);
    /// AVX-512 Byte and Word Instructions
    pub const AVX512BW: Feature = Feature::new(5, 30, "avx512bw", Avail::AllDefault, false);
    /// AVX-512 Vector Length Extensions
    pub const AVX512VL: Feature = Feature::new(5, 31, "avx512vl", Avail::AllDefault, false);
    /// PREFETCHWT1 instruction
    pub const PREFETCHWT1: Feature = Feature::new(6, 0, "prefetchwt1", Avail::AllDefault, false);
    /// AVX-512 Vector Byte Manipulation Instrs
    pub const AVX512_VBMI: Feature = Feature::new(6, 1, "avx512_vbmi", Avail::AllDefault, false);
    /// User Mode Instruction Prevention
    pub const UMIP: Feature = Feature::new(6, 2, "umip", Avail::HvmDefault, false);
    /// Protection Keys for Userspace
    pub const PKU: Feature = Feature::new(6, 3, "pku", Avail::HapDefault, false);
    /// OS Protection Keys Enable
    pub const OSPKE: Feature = Feature::new(6, 4, "ospke", Avail::NotForGuests, true);
    /// UMONITOR/UMWAIT/TPAUSE
    pub const WAITPKG: Feature = Feature::new(6, 5, "waitpkg", Avail::NotForGuests, false);
    /// Additional AVX-512 Vector Byte Manipulation Instrs
    pub const AVX512_VBMI2: Feature = Feature::new(6, 6, "avx512_vbmi2", Avail::AllDefault, false);
    /// CET - Shadow Stacks
    pub const CET_SS: Feature = Feature::new(6, 7, "cet_ss", Avail::NotForGuests, false);
    /// Galois Field Instrs
    pub const GFNI: Feature = Feature::new(6, 8, "gfni", Avail::AllDefault, false);
    /// Vector AES Instrs
    pub const VAES: Feature = Feature::new(6, 9, "vaes", Avail::AllDefault, false);
    /// Vector Carry-less Multiplication Instrs
    pub const VPCLMULQDQ: Feature = Feature::new(6, 10, "vpclmulqdq", Avail::AllDefault, false);
    /// Vector Neural Network Instrs
    pub const AVX512_VNNI: Feature = Feature::new(6, 11, "avx512_vnni", Avail::AllDefault, false);
    /// Support for VPOPCNT[B,W] and VPSHUFBITQMB
    pub const AVX512_BITALG: Feature =
        Feature::new(6, 12, "avx512_bitalg", Avail::AllDefault, false);
    /// Total Memory Encryption
    pub const TME: Feature = Feature::new(6, 13, "tme", Avail::NotForGuests, false);
    /// POPCNT for vectors of DW/QW
    pub const AVX512_VPOPCNTDQ: Feature =
        Feature::new(6, 14, "avx512_vpopcntdq", Avail::AllDefault, false);
    /// 5-level paging (57-bit linear address)
    pub const LA57: Feature = Feature::new(6, 16, "la57", Avail::NotForGuests, false);
    /// RDPID instruction
    pub const RDPID: Feature = Feature::new(6, 22, "rdpid", Avail::AllDefault, false);
    /// BusLock Detect (#DB trap) support
    pub const BLD: Feature = Feature::new(6, 24, "bld", Avail::NotForGuests, false);
    /// CLDEMOTE instruction
    pub const CLDEMOTE: Feature = Feature::new(6, 25, "cldemote", Avail::AllDefault, false);
    /// MOVDIRI instruction
    pub const MOVDIRI: Feature = Feature::new(6, 27, "movdiri", Avail::AllOptIn, false);
    /// MOVDIR64B instruction
    pub const MOVDIR64B: Feature = Feature::new(6, 28, "movdir64b", Avail::AllOptIn, false);
    /// ENQCMD{,S} instructions
    pub const ENQCMD: Feature = Feature::new(6, 29, "enqcmd", Avail::NotForGuests, false);
    /// SGX Launch Configuration
    pub const SGX_LC: Feature = Feature::new(6, 30, "sgx_lc", Avail::NotForGuests, false);
    /// Protection Key for Supervisor
    pub const PKS: Feature = Feature::new(6, 31, "pks", Avail::HapDefault, false);
    /// Hardware Pstates
    pub const HW_PSTATE: Feature = Feature::new(7, 7, "hw_pstate", Avail::NotForGuests, false);
    /// Invariant TSC
    pub const ITSC: Feature = Feature::new(7, 8, "itsc", Avail::AllOptIn, false);
    /// Core Performance Boost (Turbo)
    pub const CPB: Feature = Feature::new(7, 9, "cpb", Avail::NotForGuests, false);
    /// APERF/MPERF Read Only interface
    pub const EFRO: Feature = Feature::new(7, 10, "efro", Avail::NotForGuests, false);
    /// CLZERO instruction
    pub const CLZERO: Feature = Feature::new(8, 0, "clzero", Avail::AllDefault, false);
    /// (F)X{SAVE,RSTOR} always saves/restores FPU Error pointers
    pub const RSTR_FP_ERR_PTRS: Feature =
        Feature::new(8, 2, "rstr_fp_err_ptrs", Avail::AllDefault, false);
    /// WBNOINVD instruction
    pub const WBNOINVD: Feature = Feature::new(8, 9, "wbnoinvd", Avail::NotForGuests, false);
    /// IBPB support only (no IBRS, used by AMD)
    pub const IBPB: Feature = Feature::new(8, 12, "ibpb", Avail::AllDefault, false);
    /// MSR_SPEC_CTRL.IBRS
    pub const IBRS: Feature = Feature::new(8, 14, "ibrs", Avail::HvmDefault, false);
    /// MSR_SPEC_CTRL.STIBP
    pub const AMD_STIBP: Feature = Feature::new(8, 15, "amd_stibp", Avail::HvmDefault, false);
    /// IBRS preferred always on
    pub const IBRS_ALWAYS: Feature = Feature::new(8, 16, "ibrs_always", Avail::HvmDefault, false);
    /// STIBP preferred always on
    pub const STIBP_ALWAYS: Feature = Feature::new(8, 17, "stibp_always", Avail::HvmDefault, false);
    /// IBRS preferred over software options
    pub const IBRS_FAST: Feature = Feature::new(8, 18, "ibrs_fast", Avail::HvmDefault, false);
    /// IBRS provides same-mode protection
    pub const IBRS_SAME_MODE: Feature =
        Feature::new(8, 19, "ibrs_same_mode", Avail::HvmDefault, false);
    /// EFER.LMSLE no longer supported.
    pub const NO_LMSL: Feature = Feature::new(8, 20, "no_lmsl", Avail::HvmDefault, false);
    /// Protected Processor Inventory Number
    pub const AMD_PPIN: Feature = Feature::new(8, 23, "amd_ppin", Avail::NotForGuests, false);
    /// MSR_SPEC_CTRL.SSBD available
    pub const AMD_SSBD: Feature = Feature::new(8, 24, "amd_ssbd", Avail::HvmDefault, false);
    /// MSR_VIRT_SPEC_CTRL.SSBD
    pub const VIRT_SSBD: Feature = Feature::new(8, 25, "virt_ssbd", Avail::NotForGuests, true);
    /// Hardware not vulnerable to SSB
    pub const SSB_NO: Feature = Feature::new(8, 26, "ssb_no", Avail::AllDefault, false);
    /// Collaborative Processor Performance Control
    pub const CPPC: Feature = Feature::new(8, 27, "cppc", Avail::NotForGuests, false);
    /// MSR_SPEC_CTRL.PSFD
    pub const PSFD: Feature = Feature::new(8, 28, "psfd", Avail::HvmDefault, false);
    /// Hardware not vulnerable to Branch Type Confusion
    pub const BTC_NO: Feature = Feature::new(8, 29, "btc_no", Avail::AllDefault, false);
    /// IBPB clears RSB/RAS too.
    pub const IBPB_RET: Feature = Feature::new(8, 30, "ibpb_ret", Avail::AllDefault, false);
    /// SGX Attestation Service
    pub const SGX_KEYS: Feature = Feature::new(9, 1, "sgx_keys", Avail::NotForGuests, false);
    /// Xeon Phi AVX512 Neural Network Instructions
    pub const AVX512_4VNNIW: Feature =
        Feature::new(9, 2, "avx512_4vnniw", Avail::NotForGuests, false);
    /// Xeon Phi AVX512 Multiply Accumulation Single Precision
    pub const AVX512_4FMAPS: Feature =
        Feature::new(9, 3, "avx512_4fmaps", Avail::NotForGuests, false);
    /// Fast Short REP MOVS
    pub const FSRM: Feature = Feature::new(9, 4, "fsrm", Avail::AllDefault, false);
    /// User-mode Interrupts
    pub const UINTR: Feature = Feature::new(9, 5, "uintr", Avail::NotForGuests, false);
    /// VP2INTERSECT{D,Q} insns
    pub const AVX512_VP2INTERSECT: Feature =
        Feature::new(9, 8, "avx512_vp2intersect", Avail::AllOptIn, false);
    /// MSR_MCU_OPT_CTRL and RNGDS_MITG_DIS.
    pub const SRBDS_CTRL: Feature = Feature::new(9, 9, "srbds_ctrl", Avail::NotForGuests, false);
    /// VERW clears microarchitectural buffers
    pub const MD_CLEAR: Feature = Feature::new(9, 10, "md_clear", Avail::AllDefault, true);
    /// RTM disabled (but XBEGIN wont fault)
    pub const RTM_ALWAYS_ABORT: Feature =
        Feature::new(9, 11, "rtm_always_abort", Avail::NotForGuests, true);
    /// MSR_TSX_FORCE_ABORT.RTM_ABORT
    pub const TSX_FORCE_ABORT: Feature =
        Feature::new(9, 13, "tsx_force_abort", Avail::NotForGuests, false);
    /// SERIALIZE insn
    pub const SERIALIZE: Feature = Feature::new(9, 14, "serialize", Avail::AllDefault, false);
    /// Heterogeneous platform
    pub const HYBRID: Feature = Feature::new(9, 15, "hybrid", Avail::NotForGuests, false);
    /// TSX load tracking suspend/resume insns
    pub const TSXLDTRK: Feature = Feature::new(9, 16, "tsxldtrk", Avail::AllOptIn, false);
    /// PCONFIG instruction
    pub const PCONFIG: Feature = Feature::new(9, 18, "pconfig", Avail::NotForGuests, false);
    /// Architectural Last Branch Record
    pub const ARCH_LBR: Feature = Feature::new(9, 19, "arch_lbr", Avail::NotForGuests, false);
    /// CET - Indirect Branch Tracking
    pub const CET_IBT: Feature = Feature::new(9, 20, "cet_ibt", Avail::NotForGuests, false);
    /// AMX BFloat16 instruction
    pub const AMX_BF16: Feature = Feature::new(9, 22, "amx_bf16", Avail::NotForGuests, false);
    /// AVX512 FP16 instructions
    pub const AVX512_FP16: Feature = Feature::new(9, 23, "avx512_fp16", Avail::AllDefault, false);
    /// AMX Tile architecture
    pub const AMX_TILE: Feature = Feature::new(9, 24, "amx_tile", Avail::NotForGuests, false);
    /// AMX 8-bit integer instructions
    pub const AMX_INT8: Feature = Feature::new(9, 25, "amx_int8", Avail::NotForGuests, false);
    /// IBRS and IBPB support (used by Intel)
    pub const IBRSB: Feature = Feature::new(9, 26, "ibrsb", Avail::AllDefault, false);
    /// STIBP
    pub const STIBP: Feature = Feature::new(9, 27, "stibp", Avail::AllDefault, false);
    /// MSR_FLUSH_CMD and L1D flush.
    pub const L1D_FLUSH: Feature = Feature::new(9, 28, "l1d_flush", Avail::HvmDefault, false);
    /// IA32_ARCH_CAPABILITIES MSR
    pub const ARCH_CAPS: Feature = Feature::new(9, 29, "arch_caps", Avail::AllDefault, true);
    /// IA32_CORE_CAPABILITIES MSR
    pub const CORE_CAPS: Feature = Feature::new(9, 30, "core_caps", Avail::NotForGuests, false);
    /// MSR_SPEC_CTRL.SSBD available
    pub const SSBD: Feature = Feature::new(9, 31, "ssbd", Avail::AllDefault, false);
    /// SHA512 Instructions
    pub const SHA512: Feature = Feature::new(10, 0, "sha512", Avail::AllDefault, false);
    /// SM3 Instructions
    pub const SM3: Feature = Feature::new(10, 1, "sm3", Avail::AllDefault, false);
    /// SM4 Instructions
    pub const SM4: Feature = Feature::new(10, 2, "sm4", Avail::AllDefault, false);
    /// AVX-VNNI Instructions
    pub const AVX_VNNI: Feature = Feature::new(10, 4, "avx_vnni", Avail::AllDefault, false);
    /// AVX512 BFloat16 Instructions
    pub const AVX512_BF16: Feature = Feature::new(10, 5, "avx512_bf16", Avail::AllDefault, false);
    /// Linear Address Space Separation
    pub const LASS: Feature = Feature::new(10, 6, "lass", Avail::HvmOptIn, false);
    /// CMPccXADD Instructions
    pub const CMPCCXADD: Feature = Feature::new(10, 7, "cmpccxadd", Avail::AllOptIn, false);
    /// Architectural Perfmon
    pub const ARCH_PERF_MON: Feature =
        Feature::new(10, 8, "arch_perf_mon", Avail::NotForGuests, false);
    /// Fast Zero-length REP MOVSB
    pub const FZRM: Feature = Feature::new(10, 10, "fzrm", Avail::AllDefault, false);
    /// Fast Short REP STOSB
    pub const FSRS: Feature = Feature::new(10, 11, "fsrs", Avail::AllDefault, false);
    /// Fast Short REP CMPSB/SCASB
    pub const FSRCS: Feature = Feature::new(10, 12, "fsrcs", Avail::AllDefault, false);
    /// Flexible Return and Event Delivery
    pub const FRED: Feature = Feature::new(10, 17, "fred", Avail::NotForGuests, false);
    /// Load Kernel GS instruction
    pub const LKGS: Feature = Feature::new(10, 18, "lkgs", Avail::NotForGuests, false);
    /// WRMSR Non-Serialising
    pub const WRMSRNS: Feature = Feature::new(10, 19, "wrmsrns", Avail::HvmDefault, false);
    /// NMI-Source Reporting
    pub const NMI_SRC: Feature = Feature::new(10, 20, "nmi_src", Avail::NotForGuests, false);
    /// AMX FP16 instruction
    pub const AMX_FP16: Feature = Feature::new(10, 21, "amx_fp16", Avail::NotForGuests, false);
    /// AVX-IFMA Instructions
    pub const AVX_IFMA: Feature = Feature::new(10, 23, "avx_ifma", Avail::AllDefault, false);
    /// Linear Address Masking
    pub const LAM: Feature = Feature::new(10, 26, "lam", Avail::NotForGuests, false);
    /// {RD,WR}MSRLIST instructions
    pub const MSRLIST: Feature = Feature::new(10, 27, "msrlist", Avail::NotForGuests, false);
    /// INVD instruction unusable
    pub const NO_INVD: Feature = Feature::new(10, 30, "no_invd", Avail::NotForGuests, false);
    /// MOV-read-shared instructions
    pub const MOVRS: Feature = Feature::new(10, 31, "movrs", Avail::AllOptIn, false);
    /// No Nested Data Breakpoints
    pub const NO_NEST_BP: Feature = Feature::new(11, 0, "no_nest_bp", Avail::AllDefault, false);
    /// FS/GS base MSRs non-serialising
    pub const FS_GS_NS: Feature = Feature::new(11, 1, "fs_gs_ns", Avail::HvmDefault, false);
    /// LFENCE always serializing
    pub const LFENCE_DISPATCH: Feature =
        Feature::new(11, 2, "lfence_dispatch", Avail::AllDefault, false);
    /// VERW clears microarchitectural buffers
    pub const VERW_CLEAR: Feature = Feature::new(11, 5, "verw_clear", Avail::AllDefault, true);
    /// Null Selector Clears Base (and limit too)
    pub const NSCB: Feature = Feature::new(11, 6, "nscb", Avail::AllDefault, false);
    /// Automatic IBRS
    pub const AUTO_IBRS: Feature = Feature::new(11, 8, "auto_ibrs", Avail::HvmDefault, false);
    /// Fast Short REP STOSB
    pub const AMD_FSRS: Feature = Feature::new(11, 10, "amd_fsrs", Avail::AllDefault, false);
    /// Fast Short REP CMPSB
    pub const AMD_FSRC: Feature = Feature::new(11, 11, "amd_fsrc", Avail::AllDefault, false);
    /// CPUID disable for CPL > 0 software
    pub const CPUID_USER_DIS: Feature =
        Feature::new(11, 17, "cpuid_user_dis", Avail::NotForGuests, false);
    /// Enhanced Predictive Store Forwarding
    pub const EPSF: Feature = Feature::new(11, 18, "epsf", Avail::AllDefault, false);
    /// Fast Short REP SCASB
    pub const FSRSC: Feature = Feature::new(11, 19, "fsrsc", Avail::AllDefault, false);
    /// PREFETCHIT{0,1} Instructions
    pub const AMD_PREFETCHI: Feature =
        Feature::new(11, 20, "amd_prefetchi", Avail::AllDefault, false);
    /// AVX512 Bitmap Manipulation Instructions
    pub const AVX512_BMM: Feature = Feature::new(11, 23, "avx512_bmm", Avail::AllOptIn, false);
    /// Selective Branch Predictor Barrier
    pub const SBPB: Feature = Feature::new(11, 27, "sbpb", Avail::AllDefault, false);
    /// IBPB flushes Branch Type predictions too
    pub const IBPB_BRTYPE: Feature = Feature::new(11, 28, "ibpb_brtype", Avail::AllDefault, false);
    /// Hardware not vulnerable to Speculative Return Stack Overflow
    pub const SRSO_NO: Feature = Feature::new(11, 29, "srso_no", Avail::AllDefault, false);
    /// Hardware not vulnerable to SRSO across the User/Supervisor boundary
    pub const SRSO_US_NO: Feature = Feature::new(11, 30, "srso_us_no", Avail::AllDefault, true);
    /// MSR_BP_CFG.BP_SPEC_REDUCE available
    pub const SRSO_MSR_FIX: Feature =
        Feature::new(11, 31, "srso_msr_fix", Avail::NotForGuests, false);
    /// Protected Processor Inventory Number
    pub const INTEL_PPIN: Feature = Feature::new(12, 0, "intel_ppin", Avail::NotForGuests, false);
    /// MSR_SPEC_CTRL.PSFD
    pub const INTEL_PSFD: Feature = Feature::new(13, 0, "intel_psfd", Avail::AllDefault, false);
    /// MSR_SPEC_CTRL.IPRED_DIS_*
    pub const IPRED_CTRL: Feature = Feature::new(13, 1, "ipred_ctrl", Avail::HvmDefault, false);
    /// MSR_SPEC_CTRL.RRSBA_DIS_*
    pub const RRSBA_CTRL: Feature = Feature::new(13, 2, "rrsba_ctrl", Avail::HvmDefault, false);
    /// MSR_SPEC_CTRL.DDP_DIS_U
    pub const DDP_CTRL: Feature = Feature::new(13, 3, "ddp_ctrl", Avail::NotForGuests, false);
    /// MSR_SPEC_CTRL.BHI_DIS_S
    pub const BHI_CTRL: Feature = Feature::new(13, 4, "bhi_ctrl", Avail::HvmDefault, false);
    /// MCDT_NO
    pub const MCDT_NO: Feature = Feature::new(13, 5, "mcdt_no", Avail::AllDefault, false);
    /// UC-lock disable
    pub const UC_LOCK_DIS: Feature = Feature::new(13, 6, "uc_lock_dis", Avail::NotForGuests, false);
    /// AVX-VNNI-INT8 Instructions
    pub const AVX_VNNI_INT8: Feature =
        Feature::new(15, 4, "avx_vnni_int8", Avail::AllDefault, false);
    /// AVX-NE-CONVERT Instructions
    pub const AVX_NE_CONVERT: Feature =
        Feature::new(15, 5, "avx_ne_convert", Avail::AllDefault, false);
    /// AMX Complex Instructions
    pub const AMX_COMPLEX: Feature = Feature::new(15, 8, "amx_complex", Avail::NotForGuests, false);
    /// AVX-VNNI-INT16 Instructions
    pub const AVX_VNNI_INT16: Feature =
        Feature::new(15, 10, "avx_vnni_int16", Avail::AllDefault, false);
    /// PREFETCHIT{0,1} Instructions
    pub const PREFETCHI: Feature = Feature::new(15, 14, "prefetchi", Avail::AllDefault, false);
    /// UIRET updates UIF
    pub const UIRET_UIF: Feature = Feature::new(15, 17, "uiret_uif", Avail::NotForGuests, false);
    /// CET Supervisor Shadow Stacks safe to use
    pub const CET_SSS: Feature = Feature::new(15, 18, "cet_sss", Avail::NotForGuests, false);
    /// Static Lockstep Mode
    pub const SLSM: Feature = Feature::new(15, 24, "slsm", Avail::NotForGuests, false);
    /// No Rogue Data Cache Load (Meltdown)
    pub const RDCL_NO: Feature = Feature::new(16, 0, "rdcl_no", Avail::AllDefault, false);
    /// Enhanced IBRS
    pub const EIBRS: Feature = Feature::new(16, 1, "eibrs", Avail::AllDefault, false);
    /// RSB Alternative (Retpoline not safe)
    pub const RSBA: Feature = Feature::new(16, 2, "rsba", Avail::NotForGuests, true);
    /// Don't need to flush L1D on VMEntry
    pub const SKIP_L1DFL: Feature = Feature::new(16, 3, "skip_l1dfl", Avail::NotForGuests, false);
    /// No Speculative Store Bypass
    pub const INTEL_SSB_NO: Feature = Feature::new(16, 4, "intel_ssb_no", Avail::AllDefault, false);
    /// No Microarchitectural Data Sampling
    pub const MDS_NO: Feature = Feature::new(16, 5, "mds_no", Avail::AllDefault, false);
    /// No Instruction fetch #MC
    pub const IF_PSCHANGE_MC_NO: Feature =
        Feature::new(16, 6, "if_pschange_mc_no", Avail::AllDefault, false);
    /// MSR_TSX_CTRL
    pub const TSX_CTRL: Feature = Feature::new(16, 7, "tsx_ctrl", Avail::NotForGuests, false);
    /// No TSX Async Abort
    pub const TAA_NO: Feature = Feature::new(16, 8, "taa_no", Avail::AllDefault, false);
    /// MSR_MCU_CTRL
    pub const MCU_CTRL: Feature = Feature::new(16, 9, "mcu_ctrl", Avail::NotForGuests, false);
    /// MSR_MISC_PKG_CTRL
    pub const MISC_PKG_CTRL: Feature =
        Feature::new(16, 10, "misc_pkg_ctrl", Avail::NotForGuests, false);
    /// MSR_MISC_PKG_CTRL.ENERGY_FILTERING
    pub const ENERGY_FILTERING: Feature =
        Feature::new(16, 11, "energy_filtering", Avail::NotForGuests, false);
    /// Data Operand Invariant Timing Mode
    pub const DOITM: Feature = Feature::new(16, 12, "doitm", Avail::NotForGuests, false);
    /// No Shared Buffer Data Read or Sideband Stale Data Propagation
    pub const SBDR_SSDP_NO: Feature =
        Feature::new(16, 13, "sbdr_ssdp_no", Avail::AllDefault, false);
    /// No Fill Buffer Stale Data Propagation
    pub const FBSDP_NO: Feature = Feature::new(16, 14, "fbsdp_no", Avail::AllDefault, false);
    /// No Primary Stale Data Propagation
    pub const PSDP_NO: Feature = Feature::new(16, 15, "psdp_no", Avail::AllDefault, false);
    /// MCU_STATUS/ENUM MSRs
    pub const MCU_EXT: Feature = Feature::new(16, 16, "mcu_ext", Avail::NotForGuests, false);
    /// Fill Buffers cleared by VERW
    pub const FB_CLEAR: Feature = Feature::new(16, 17, "fb_clear", Avail::AllDefault, true);
    /// MSR_OPT_CPU_CTRL.FB_CLEAR_DIS
    pub const FB_CLEAR_CTRL: Feature =
        Feature::new(16, 18, "fb_clear_ctrl", Avail::NotForGuests, false);
    /// Restricted RSB Alternative
    pub const RRSBA: Feature = Feature::new(16, 19, "rrsba", Avail::NotForGuests, true);
    /// No Branch History Injection
    pub const BHI_NO: Feature = Feature::new(16, 20, "bhi_no", Avail::AllDefault, false);
    /// MSR_XAPIC_DISABLE_STATUS
    pub const XAPIC_STATUS: Feature =
        Feature::new(16, 21, "xapic_status", Avail::NotForGuests, false);
    /// MSR_OVERCLOCKING_STATUS
    pub const OVRCLK_STATUS: Feature =
        Feature::new(16, 23, "ovrclk_status", Avail::NotForGuests, false);
    /// No Post-Barrier RSB predictions
    pub const PBRSB_NO: Feature = Feature::new(16, 24, "pbrsb_no", Avail::AllDefault, false);
    /// MCU_OPT_CTRL.GDS_MIT_{DIS,LOCK}
    pub const GDS_CTRL: Feature = Feature::new(16, 25, "gds_ctrl", Avail::NotForGuests, false);
    /// No Gather Data Sampling
    pub const GDS_NO: Feature = Feature::new(16, 26, "gds_no", Avail::AllDefault, false);
    /// No Register File Data Sampling
    pub const RFDS_NO: Feature = Feature::new(16, 27, "rfds_no", Avail::AllDefault, false);
    /// Register File(s) cleared by VERW
    pub const RFDS_CLEAR: Feature = Feature::new(16, 28, "rfds_clear", Avail::AllDefault, true);
    /// MCU_OPT_CTRL.IGN_UMONITOR
    pub const IGN_UMONITOR: Feature =
        Feature::new(16, 29, "ign_umonitor", Avail::NotForGuests, false);
    /// MCU_OPT_CTRL.MON_UMON_MITG
    pub const MON_UMON_MITG: Feature =
        Feature::new(16, 30, "mon_umon_mitg", Avail::NotForGuests, false);
    /// MSR_PB_OPT_CTRL.IBPB_ALT
    pub const PB_OPT_CTRL: Feature = Feature::new(17, 0, "pb_opt_ctrl", Avail::NotForGuests, false);
    /// No Indirect Target Selection
    pub const ITS_NO: Feature = Feature::new(17, 30, "its_no", Avail::AllDefault, true);
    /// No Store Queue Transitive Scheduler Attacks
    pub const TSA_SQ_NO: Feature = Feature::new(18, 1, "tsa_sq_no", Avail::AllDefault, false);
    /// No L1D Transitive Scheduler Attacks
    pub const TSA_L1_NO: Feature = Feature::new(18, 2, "tsa_l1_no", Avail::AllDefault, false);
}

use feat::*;

/// Every feature Xen knows, in featureset order.
pub const ALL: &[Feature] = &[
    FPU,
    VME,
    DE,
    PSE,
    TSC,
    MSR,
    PAE,
    MCE,
    CX8,
    APIC,
    SEP,
    MTRR,
    PGE,
    MCA,
    CMOV,
    PAT,
    PSE36,
    CLFLUSH,
    DS,
    ACPI,
    MMX,
    FXSR,
    SSE,
    SSE2,
    SS,
    HTT,
    TM1,
    PBE,
    SSE3,
    PCLMULQDQ,
    DTES64,
    MONITOR,
    DSCPL,
    VMX,
    SMX,
    EIST,
    TM2,
    SSSE3,
    SDBG,
    FMA,
    CX16,
    XTPR,
    PDCM,
    PCID,
    DCA,
    SSE4_1,
    SSE4_2,
    X2APIC,
    MOVBE,
    POPCNT,
    TSC_DEADLINE,
    AESNI,
    XSAVE,
    OSXSAVE,
    AVX,
    F16C,
    RDRAND,
    HYPERVISOR,
    SYSCALL,
    NX,
    MMXEXT,
    FFXSR,
    PAGE1GB,
    RDTSCP,
    LM,
    F_3DNOWEXT,
    F_3DNOW,
    LAHF_LM,
    CMP_LEGACY,
    SVM,
    EXTAPIC,
    CR8_LEGACY,
    ABM,
    SSE4A,
    MISALIGNSSE,
    F_3DNOWPREFETCH,
    OSVW,
    IBS,
    XOP,
    SKINIT,
    WDT,
    LWP,
    FMA4,
    NODEID_MSR,
    TBM,
    TOPOEXT,
    DBEXT,
    MONITORX,
    ADDR_MSK_EXT,
    XSAVEOPT,
    XSAVEC,
    XGETBV1,
    XSAVES,
    XFD,
    FSGSBASE,
    TSC_ADJUST,
    SGX,
    BMI1,
    HLE,
    AVX2,
    FDP_EXCP_ONLY,
    SMEP,
    BMI2,
    ERMS,
    INVPCID,
    RTM,
    PQM,
    NO_FPU_SEL,
    MPX,
    PQE,
    AVX512F,
    AVX512DQ,
    RDSEED,
    ADX,
    SMAP,
    AVX512_IFMA,
    CLFLUSHOPT,
    CLWB,
    PROC_TRACE,
    AVX512PF,
    AVX512ER,
    AVX512CD,
    SHA,
    AVX512BW,
    AVX512VL,
    PREFETCHWT1,
    AVX512_VBMI,
    UMIP,
    PKU,
    OSPKE,
    WAITPKG,
    AVX512_VBMI2,
    CET_SS,
    GFNI,
    VAES,
    VPCLMULQDQ,
    AVX512_VNNI,
    AVX512_BITALG,
    TME,
    AVX512_VPOPCNTDQ,
    LA57,
    RDPID,
    BLD,
    CLDEMOTE,
    MOVDIRI,
    MOVDIR64B,
    ENQCMD,
    SGX_LC,
    PKS,
    HW_PSTATE,
    ITSC,
    CPB,
    EFRO,
    CLZERO,
    RSTR_FP_ERR_PTRS,
    WBNOINVD,
    IBPB,
    IBRS,
    AMD_STIBP,
    IBRS_ALWAYS,
    STIBP_ALWAYS,
    IBRS_FAST,
    IBRS_SAME_MODE,
    NO_LMSL,
    AMD_PPIN,
    AMD_SSBD,
    VIRT_SSBD,
    SSB_NO,
    CPPC,
    PSFD,
    BTC_NO,
    IBPB_RET,
    SGX_KEYS,
    AVX512_4VNNIW,
    AVX512_4FMAPS,
    FSRM,
    UINTR,
    AVX512_VP2INTERSECT,
    SRBDS_CTRL,
    MD_CLEAR,
    RTM_ALWAYS_ABORT,
    TSX_FORCE_ABORT,
    SERIALIZE,
    HYBRID,
    TSXLDTRK,
    PCONFIG,
    ARCH_LBR,
    CET_IBT,
    AMX_BF16,
    AVX512_FP16,
    AMX_TILE,
    AMX_INT8,
    IBRSB,
    STIBP,
    L1D_FLUSH,
    ARCH_CAPS,
    CORE_CAPS,
    SSBD,
    SHA512,
    SM3,
    SM4,
    AVX_VNNI,
    AVX512_BF16,
    LASS,
    CMPCCXADD,
    ARCH_PERF_MON,
    FZRM,
    FSRS,
    FSRCS,
    FRED,
    LKGS,
    WRMSRNS,
    NMI_SRC,
    AMX_FP16,
    AVX_IFMA,
    LAM,
    MSRLIST,
    NO_INVD,
    MOVRS,
    NO_NEST_BP,
    FS_GS_NS,
    LFENCE_DISPATCH,
    VERW_CLEAR,
    NSCB,
    AUTO_IBRS,
    AMD_FSRS,
    AMD_FSRC,
    CPUID_USER_DIS,
    EPSF,
    FSRSC,
    AMD_PREFETCHI,
    AVX512_BMM,
    SBPB,
    IBPB_BRTYPE,
    SRSO_NO,
    SRSO_US_NO,
    SRSO_MSR_FIX,
    INTEL_PPIN,
    INTEL_PSFD,
    IPRED_CTRL,
    RRSBA_CTRL,
    DDP_CTRL,
    BHI_CTRL,
    MCDT_NO,
    UC_LOCK_DIS,
    AVX_VNNI_INT8,
    AVX_NE_CONVERT,
    AMX_COMPLEX,
    AVX_VNNI_INT16,
    PREFETCHI,
    UIRET_UIF,
    CET_SSS,
    SLSM,
    RDCL_NO,
    EIBRS,
    RSBA,
    SKIP_L1DFL,
    INTEL_SSB_NO,
    MDS_NO,
    IF_PSCHANGE_MC_NO,
    TSX_CTRL,
    TAA_NO,
    MCU_CTRL,
    MISC_PKG_CTRL,
    ENERGY_FILTERING,
    DOITM,
    SBDR_SSDP_NO,
    FBSDP_NO,
    PSDP_NO,
    MCU_EXT,
    FB_CLEAR,
    FB_CLEAR_CTRL,
    RRSBA,
    BHI_NO,
    XAPIC_STATUS,
    OVRCLK_STATUS,
    PBRSB_NO,
    GDS_CTRL,
    GDS_NO,
    RFDS_NO,
    RFDS_CLEAR,
    IGN_UMONITOR,
    MON_UMON_MITG,
    PB_OPT_CTRL,
    ITS_NO,
    TSA_SQ_NO,
    TSA_L1_NO,
];

/// Features present in leaf 1 EDX that AMD mirrors in leaf 0x80000001 EDX (Xen's
/// `CPUID_COMMON_1D_FEATURES`).
pub const COMMON_1D: &[Feature] = &[
    FPU, VME, DE, PSE, TSC, MSR, PAE, MCE, CX8, APIC, MTRR, PGE, MCA, CMOV, PAT, PSE36, MMX, FXSR,
];

/// Xen's feature dependencies (`xen/tools/gen-cpuid.py`): each key is a direct
/// prerequisite of every feature in its list. The policy builder takes the transitive
/// closure: without the key, none of them may be offered.
pub const DEPS: &[(Feature, &[Feature])] = &[
    (FPU, &[MMX, RSTR_FP_ERR_PTRS]),
    (PSE, &[PSE36]),
    (PAE, &[LM, NX]),
    (TSC, &[TSC_DEADLINE, RDTSCP, TSC_ADJUST, ITSC]),
    (APIC, &[X2APIC, TSC_DEADLINE, EXTAPIC]),
    (CLFLUSH, &[CLZERO]),
    (MMX, &[MMXEXT, F_3DNOW]),
    (FXSR, &[FFXSR, SSE]),
    (SSE, &[SSE2, MISALIGNSSE]),
    (SSE2, &[SSE3, LM, AESNI, PCLMULQDQ, SHA, GFNI]),
    (SSE3, &[SSSE3, SSE4A]),
    (SSSE3, &[SSE4_1]),
    (SSE4_1, &[SSE4_2]),
    (
        XSAVE,
        &[
            XSAVEOPT, XSAVEC, XGETBV1, XSAVES, AVX, MPX, PKU, AMX_TILE, LWP,
        ],
    ),
    (AVX, &[FMA, FMA4, F16C, AVX2, XOP, AVX_NE_CONVERT, SM3]),
    (NX, &[SMAP]),
    (
        LM,
        &[
            CX16, PCID, LAHF_LM, PAGE1GB, PKU, NO_LMSL, AMX_TILE, CMPCCXADD, LKGS, MOVRS,
        ],
    ),
    (F_3DNOW, &[F_3DNOWEXT]),
    (
        AVX2,
        &[
            AVX512F,
            VAES,
            VPCLMULQDQ,
            AVX_VNNI,
            AVX_IFMA,
            AVX_VNNI_INT8,
            AVX_VNNI_INT16,
            SHA512,
            SM4,
        ],
    ),
    (
        AVX512F,
        &[
            AVX512DQ,
            AVX512_IFMA,
            AVX512PF,
            AVX512ER,
            AVX512CD,
            AVX512BW,
            AVX512VL,
            AVX512_4VNNIW,
            AVX512_4FMAPS,
            AVX512_VNNI,
            AVX512_VPOPCNTDQ,
            AVX512_VP2INTERSECT,
        ],
    ),
    (
        AVX512BW,
        &[
            AVX512_VBMI,
            AVX512_VBMI2,
            AVX512_BITALG,
            AVX512_BF16,
            AVX512_FP16,
            AVX512_BMM,
        ],
    ),
    (PCLMULQDQ, &[VPCLMULQDQ]),
    (AESNI, &[VAES]),
    (
        IBRSB,
        &[
            STIBP, SSBD, INTEL_PSFD, EIBRS, IPRED_CTRL, RRSBA_CTRL, BHI_CTRL,
        ],
    ),
    (
        IBRS,
        &[
            AMD_STIBP,
            AMD_SSBD,
            PSFD,
            AUTO_IBRS,
            IBRS_ALWAYS,
            IBRS_FAST,
            IBRS_SAME_MODE,
        ],
    ),
    (IBPB, &[IBPB_RET, SBPB, IBPB_BRTYPE]),
    (AMD_STIBP, &[STIBP_ALWAYS]),
    (RTM, &[TSXLDTRK]),
    (PSFD, &[EPSF]),
    (EIBRS, &[RRSBA]),
    (AMX_TILE, &[AMX_BF16, AMX_INT8, AMX_FP16, AMX_COMPLEX]),
];

/// Looks a feature up by Xen's name (lower case, as `xen-cpuid` prints it).
pub fn by_name(name: &str) -> Option<Feature> {
    ALL.iter().copied().find(|f| f.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_two_features_share_a_bit_and_words_are_in_range() {
        for (i, a) in ALL.iter().enumerate() {
            assert!((a.word as usize) < NR_WORDS, "{}", a.name);
            assert!(a.bit < 32, "{}", a.name);
            for b in &ALL[i + 1..] {
                assert_ne!(a.index(), b.index(), "{} and {}", a.name, b.name);
            }
        }
    }

    #[test]
    fn dependencies_have_no_cycle() {
        // Following DEPS from any feature ends within DEPS.len() steps.
        fn depth(f: Feature, limit: usize) -> bool {
            if limit == 0 {
                return false;
            }
            DEPS.iter()
                .filter(|(k, _)| *k == f)
                .all(|(_, ds)| ds.iter().all(|d| depth(*d, limit - 1)))
        }
        for &(root, _) in DEPS {
            assert!(depth(root, DEPS.len() + 1), "cycle through {}", root.name);
        }
    }

    #[test]
    fn names_resolve() {
        assert_eq!(by_name("ibpb"), Some(IBPB));
        assert_eq!(by_name("3dnow"), Some(F_3DNOW));
        assert_eq!(by_name("nonsense"), None);
    }
}
