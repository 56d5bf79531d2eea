use super::*;

/// A host that claims every bit of every feature word, as Intel or AMD.
fn everything(vendor: &[u8; 12]) -> RawCpuid {
    let v = |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
    let all = u32::MAX;
    let mut text = format!("0x0 0x0 0x16 {:#x} {:#x} {:#x}\n", v(0), v(8), v(4));
    text += "0x1 0x0 0x00a20f12 0x01020800 0xffffffff 0xffffffff\n";
    text += "0x7 0x0 0x2 0xffffffff 0xffffffff 0xffffffff\n";
    text += "0x7 0x1 0xffffffff 0xffffffff 0xffffffff 0xffffffff\n";
    text += "0x7 0x2 0x0 0x0 0x0 0xffffffff\n";
    text += "0xd 0x0 0x2e7 0x340 0x988 0x0\n";
    text += "0xd 0x1 0xf 0x0 0x0 0x0\n";
    text += "0xd 0x2 0x100 0x240 0x0 0x0\n";
    text += "0xd 0x5 0x40 0x440 0x0 0x0\n";
    text += "0xd 0x6 0x200 0x480 0x0 0x0\n";
    text += "0xd 0x7 0x400 0x680 0x0 0x0\n";
    text += "0xd 0x9 0x8 0xa80 0x0 0x0\n";
    text += "0x80000000 0x0 0x80000021 0x0 0x0 0x0\n";
    text += "0x80000001 0x0 0x00a20f12 0x20000000 0xffffffff 0xffffffff\n";
    text += "0x80000007 0x0 0x0 0x0 0x0 0xffffffff\n";
    text += "0x80000008 0x0 0x3030 0xffffffff 0x0 0x0\n";
    text += "0x80000021 0x0 0xffffffff 0x0 0xffffffff 0x0\n";
    text += &format!("msr 0x10a {:#x}\n", u64::MAX);
    let _ = all;
    RawCpuid::parse_dump(&text).unwrap()
}

fn intel_everything() -> RawCpuid {
    everything(b"GenuineIntel")
}

fn amd_everything() -> RawCpuid {
    everything(b"AuthenticAMD")
}

/// Extended state with every component pvkvm can offer (a host whose plan allows them).
const XSTATE_ON: PolicyOptions = PolicyOptions {
    xcr0: 0xe7,
    tsc_aux: false,
    tsc_khz: 0,
};

/// What a hardware-virtualization host gives.
const HARDWARE: PolicyOptions = PolicyOptions {
    xcr0: 0xe7,
    tsc_aux: true,
    tsc_khz: 0,
};

#[test]
fn only_features_xen_offers_pv_guests_by_default_appear() {
    for host in [intel_everything(), amd_everything()] {
        for opts in [PolicyOptions::default(), XSTATE_ON] {
            let t = CpuidTable::build(&host, &opts);
            for f in t.featureset().features() {
                assert!(
                    f.avail == Avail::AllDefault || f == feat::STIBP || f == feat::AMD_STIBP,
                    "{} is offered but Xen's featureset does not give it to PV guests",
                    f.name
                );
            }
        }
    }
}

#[test]
fn features_a_pv_guest_must_never_see_are_absent() {
    let never = [
        feat::VME,
        feat::PSE,
        feat::PSE36,
        feat::PGE,
        feat::MTRR,
        feat::PAGE1GB,
        feat::VMX,
        feat::SVM,
        feat::MONITOR,
        feat::X2APIC,
        feat::TSC_DEADLINE,
        feat::PCID,
        feat::INVPCID,
        feat::SMEP,
        feat::SMAP,
        feat::UMIP,
        feat::PKU,
        feat::OSPKE,
        feat::OSXSAVE,
        feat::LA57,
        feat::TSC_ADJUST,
        feat::WBNOINVD,
        feat::IBRS,
        feat::AMD_STIBP,
        feat::AMD_SSBD,
        feat::PSFD,
        feat::OSVW,
        feat::TOPOEXT,
        feat::XSAVES,
        feat::ITSC,
        feat::SRSO_US_NO,
        feat::FSGSBASE,
    ];
    for host in [intel_everything(), amd_everything()] {
        for opts in [PolicyOptions::default(), XSTATE_ON] {
            let t = CpuidTable::build(&host, &opts);
            for f in never {
                assert!(
                    !t.featureset().has(f),
                    "{} offered ({:?})",
                    f.name,
                    t.vendor()
                );
            }
        }
    }
}

#[test]
fn the_dependency_closure_holds() {
    for host in [intel_everything(), amd_everything()] {
        for opts in [PolicyOptions::default(), XSTATE_ON] {
            let fs = *CpuidTable::build(&host, &opts).featureset();
            for (key, deps) in fset::DEPS {
                if !fs.has(*key) {
                    for d in *deps {
                        assert!(!fs.has(*d), "{} without {}", d.name, key.name);
                    }
                }
            }
        }
    }
}

#[test]
fn without_xstate_no_avx_family_and_no_leaf_0xd() {
    let t = CpuidTable::build(&intel_everything(), &PolicyOptions::default());
    for f in [
        feat::XSAVE,
        feat::AVX,
        feat::AVX2,
        feat::AVX512F,
        feat::FMA,
        feat::XSAVEOPT,
    ] {
        assert!(!t.featureset().has(f), "{}", f.name);
    }
    assert_eq!(t.lookup(0xd, 0), [0; 4]);
    assert_eq!(t.lookup(1, 0)[2] & (1 << 26), 0);
}

#[test]
fn with_xstate_leaf_0xd_follows_the_offered_components() {
    let t = CpuidTable::build(&intel_everything(), &XSTATE_ON);
    let fs = t.featureset();
    assert!(fs.has(feat::XSAVE) && fs.has(feat::AVX) && fs.has(feat::AVX512F));
    let [eax, ebx, ecx, edx] = t.lookup(0xd, 0);
    // x87, SSE, YMM, AVX-512; no MPX (not offered to PV), no PKRU.
    assert_eq!(eax, 0xe7);
    assert_eq!(edx, 0);
    assert_eq!(ebx, 576, "size for the initial XCR0 (x87|SSE)");
    // Hi-ZMM (component 7) ends last: offset 0x680 + size 0x400.
    assert_eq!(ecx, 0xa80, "largest offset+size among offered components");
    assert_eq!(t.lookup(0xd, 2)[..2], [0x100, 0x240]);
    assert_eq!(t.lookup(0xd, 9), [0; 4], "PKRU is not offered");
    assert_eq!(t.lookup(0xd, 1)[0] & (1 << 3), 0, "XSAVES");
}

#[test]
fn amd_mirror_of_leaf_1_edx_is_filtered_the_same_way() {
    let t = CpuidTable::build(&amd_everything(), &PolicyOptions::default());
    let l1 = t.lookup(1, 0)[3];
    let e1 = t.lookup(0x8000_0001, 0)[3];
    for f in fset::COMMON_1D {
        assert_eq!(l1 & f.mask() != 0, e1 & f.mask() != 0, "{}", f.name);
    }
    for bit in [1, 3, 12, 13, 17] {
        assert_eq!(e1 & (1 << bit), 0, "0x80000001 edx bit {bit}");
    }
    assert_eq!(l1 & (1 << 11), 0, "no SYSENTER on AMD");
    let i = CpuidTable::build(&intel_everything(), &PolicyOptions::default());
    assert_eq!(i.lookup(0x8000_0001, 0)[3] & 0xff, 0, "Intel: no mirror");
}

#[test]
fn spectre_controls_follow_xen() {
    let intel = CpuidTable::build(&intel_everything(), &PolicyOptions::default());
    for f in [
        feat::IBRSB,
        feat::STIBP,
        feat::SSBD,
        feat::IBPB,
        feat::ARCH_CAPS,
        feat::MD_CLEAR,
    ] {
        assert!(intel.featureset().has(f), "Intel: {}", f.name);
    }
    assert!(
        !intel.featureset().has(feat::L1D_FLUSH),
        "L1D_FLUSH is HVM-only in Xen"
    );
    let amd = CpuidTable::build(&amd_everything(), &PolicyOptions::default());
    for f in [
        feat::IBPB,
        feat::SBPB,
        feat::IBPB_RET,
        feat::IBPB_BRTYPE,
        feat::SSB_NO,
    ] {
        assert!(amd.featureset().has(f), "AMD: {}", f.name);
    }
    for f in [feat::ARCH_CAPS, feat::IBRS, feat::AMD_SSBD, feat::VIRT_SSBD] {
        assert!(!amd.featureset().has(f), "AMD: {}", f.name);
    }
}

#[test]
fn unknown_and_dropped_leaves_are_zero() {
    for host in [intel_everything(), amd_everything()] {
        let t = CpuidTable::build(&host, &PolicyOptions::default());
        for leaf in [
            3,
            5,
            6,
            8,
            9,
            0xa,
            0xb,
            0xc,
            0xe,
            0x14,
            0x8000_001e,
            0x8000_001f,
        ] {
            assert_eq!(t.lookup(leaf, 0), [0; 4], "leaf {leaf:#x}");
        }
        assert_eq!(t.lookup(0, 0)[0], 0xd);
    }
}

#[test]
fn xen_leaves() {
    let t = CpuidTable::build(&intel_everything(), &PolicyOptions::default());
    let [max, b, c, d] = t.lookup(0x4000_0000, 0);
    assert_eq!(max, 0x4000_0005);
    let name: Vec<u8> = [b, c, d].iter().flat_map(|r| r.to_le_bytes()).collect();
    assert_eq!(&name, b"XenVMMXenVMM");
    assert_eq!(t.lookup(0x4000_0005, 0)[1], 44);
    assert_eq!(t.lookup(0x4000_0001, 0)[0] >> 16, 4);
    assert_ne!(t.lookup(1, 0)[2] & (1 << 31), 0, "hypervisor bit");
}

#[test]
fn leaf_0x16_reports_the_tsc_rate() {
    let opts = PolicyOptions {
        tsc_khz: 2_300_000,
        ..Default::default()
    };
    let t = CpuidTable::build(&intel_everything(), &opts);
    assert_eq!(t.lookup(0x16, 0)[0], 2300);
    assert_eq!(t.lookup(0, 0)[0], 0x16);
}

#[test]
fn subleaves_are_honoured() {
    let t = CpuidTable::build(&intel_everything(), &PolicyOptions::default());
    assert_eq!(t.lookup(7, 0)[0], 2);
    assert_ne!(t.lookup(7, 0)[1], t.lookup(7, 1)[1]);
}

#[test]
fn dumps_with_bad_lines_are_refused() {
    assert!(RawCpuid::parse_dump("0x1 0x0 0x0").is_err());
    assert!(RawCpuid::parse_dump("0x1 0x0 0x0 0x0 0x0 0x1ffffffff").is_err());
    assert!(RawCpuid::parse_dump("msr 0x48 0x1").is_err());
    assert!(RawCpuid::parse_dump("# only a comment\n").is_ok());
}

/// Recorded CPUID dumps of real CPUs (vmm/tests/data/cpuid/README.md).
pub(crate) const RECORDED: &[(&str, &str)] = &[
    (
        "intel-skylake-sp",
        include_str!("../../tests/data/cpuid/intel-skylake-sp.txt"),
    ),
    (
        "intel-cascade-lake",
        include_str!("../../tests/data/cpuid/intel-cascade-lake.txt"),
    ),
    (
        "intel-ice-lake-sp",
        include_str!("../../tests/data/cpuid/intel-ice-lake-sp.txt"),
    ),
    (
        "intel-sapphire-rapids",
        include_str!("../../tests/data/cpuid/intel-sapphire-rapids.txt"),
    ),
    (
        "amd-zen2-rome",
        include_str!("../../tests/data/cpuid/amd-zen2-rome.txt"),
    ),
    (
        "amd-zen3-milan",
        include_str!("../../tests/data/cpuid/amd-zen3-milan.txt"),
    ),
    (
        "amd-zen4-genoa",
        include_str!("../../tests/data/cpuid/amd-zen4-genoa.txt"),
    ),
    (
        "amd-zen5-turin",
        include_str!("../../tests/data/cpuid/amd-zen5-turin.txt"),
    ),
];

/// What Xen's PV default policy offers on each recorded CPU and how pvkvm differs
/// (vmm/tests/data/cpuid/expected/NAME.txt; regenerate with PVKVM_BLESS=1 and review).
const EXPECTED: &[(&str, &str)] = &[
    (
        "intel-skylake-sp",
        include_str!("../../tests/data/cpuid/expected/intel-skylake-sp.txt"),
    ),
    (
        "intel-cascade-lake",
        include_str!("../../tests/data/cpuid/expected/intel-cascade-lake.txt"),
    ),
    (
        "intel-ice-lake-sp",
        include_str!("../../tests/data/cpuid/expected/intel-ice-lake-sp.txt"),
    ),
    (
        "intel-sapphire-rapids",
        include_str!("../../tests/data/cpuid/expected/intel-sapphire-rapids.txt"),
    ),
    (
        "amd-zen2-rome",
        include_str!("../../tests/data/cpuid/expected/amd-zen2-rome.txt"),
    ),
    (
        "amd-zen3-milan",
        include_str!("../../tests/data/cpuid/expected/amd-zen3-milan.txt"),
    ),
    (
        "amd-zen4-genoa",
        include_str!("../../tests/data/cpuid/expected/amd-zen4-genoa.txt"),
    ),
    (
        "amd-zen5-turin",
        include_str!("../../tests/data/cpuid/expected/amd-zen5-turin.txt"),
    ),
];

fn recorded(name: &str) -> RawCpuid {
    let text = RECORDED
        .iter()
        .find(|(n, _)| *n == name)
        .expect("known dump")
        .1;
    RawCpuid::parse_dump(text).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// The reason pvkvm gives for not offering `f` where Xen does.
fn reason(f: Feature, opts: &PolicyOptions) -> String {
    if let Some((_, why)) = PVKVM_HIDDEN.iter().find(|(h, _)| *h == f) {
        return why.split_whitespace().collect::<Vec<_>>().join(" ");
    }
    if TSC_AUX_FEATURES.contains(&f) && !opts.tsc_aux {
        return "the host does not load the guest's TSC_AUX for guest code (software KVM \
                runs guest ring 3 on the host's)"
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
    }
    if opts.xcr0 == 0 {
        return "extended state is off on hosts where the VMM cannot govern XCR0 (or needs \
                XSAVE, which is off)"
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
    }
    "UNEXPLAINED".into()
}

/// The expected-file text for one CPU: Xen's PV default featureset, then each feature
/// Xen offers and pvkvm does not (with the extended-state option off and on), with its
/// reason.
fn describe(raw: &RawCpuid) -> String {
    let xen = xen_pv_default_featureset(raw);
    let mut s =
        String::from("# Xen's PV default featureset on this CPU, then pvkvm's differences.\n");
    s += "xen-pv-default:";
    for f in xen.features() {
        s += " ";
        s += f.name;
    }
    s += "\n";
    for opts in [PolicyOptions::default(), XSTATE_ON, HARDWARE] {
        let ours = pvkvm_featureset(raw, &opts);
        for f in xen.features().filter(|f| !ours.has(*f)) {
            s += &format!(
                "hidden(xcr0={:#x},tsc_aux={}): {} -- {}\n",
                opts.xcr0,
                opts.tsc_aux,
                f.name,
                reason(f, &opts)
            );
        }
        for f in ours.features().filter(|f| !xen.has(*f)) {
            s += &format!("added({opts:?}): {} -- UNEXPLAINED\n", f.name);
        }
    }
    s
}

#[test]
fn recorded_cpus_match_xens_pv_default_but_for_listed_reasons() {
    let bless = std::env::var_os("PVKVM_BLESS").is_some();
    for (name, _) in RECORDED {
        let got = describe(&recorded(name));
        assert!(
            !got.contains("UNEXPLAINED"),
            "{name}: a difference without a reason:\n{got}"
        );
        if bless {
            let path = format!(
                "{}/tests/data/cpuid/expected/{name}.txt",
                env!("CARGO_MANIFEST_DIR")
            );
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        let want = EXPECTED.iter().find(|(n, _)| n == name).unwrap().1;
        assert_eq!(got, want, "{name}: policy changed; review and re-bless");
    }
}

#[test]
fn recorded_cpus_keep_the_invariants() {
    for (name, _) in RECORDED {
        let raw = recorded(name);
        for opts in [PolicyOptions::default(), XSTATE_ON, HARDWARE] {
            let t = CpuidTable::build(&raw, &opts);
            let fs = *t.featureset();
            assert!(opts.tsc_aux || !fs.has(feat::RDTSCP) && !fs.has(feat::RDPID));
            // Allow-list: nothing Xen would not give a PV guest by default.
            for f in fs.features() {
                assert!(
                    f.avail == Avail::AllDefault || f == feat::STIBP || f == feat::AMD_STIBP,
                    "{name}: {} offered",
                    f.name
                );
            }
            for (key, deps) in fset::DEPS {
                for d in deps.iter().filter(|_| !fs.has(*key)) {
                    assert!(!fs.has(*d), "{name}: {} without {}", d.name, key.name);
                }
            }
            // The table says what the featureset says.
            assert_eq!(t.lookup(1, 0)[3], fs.0[0], "{name}: leaf 1 edx");
            assert_eq!(t.lookup(1, 0)[2], fs.0[1], "{name}: leaf 1 ecx");
            assert_eq!(
                t.lookup(7, 0)[1..],
                [fs.0[5], fs.0[6], fs.0[9]],
                "{name}: leaf 7"
            );
            assert_eq!(t.lookup(0, 0)[1..], raw.get(0, 0)[1..], "{name}: vendor");
            assert_eq!(
                t.lookup(1, 0)[0],
                raw.get(1, 0)[0] & 0x0fff_0fff,
                "{name}: fms"
            );
            assert_eq!(t.lookup(1, 0)[1] >> 24, 0, "{name}: APIC id");
            assert!(t.lookup(0, 0)[0] <= 0xd, "{name}: max basic leaf");
            assert_eq!(t.lookup(0xb, 0), [0; 4], "{name}: topology");
            assert_eq!(t.lookup(6, 0), [0; 4], "{name}: power leaf");
            if t.vendor() == Vendor::Amd {
                let e1 = t.lookup(0x8000_0001, 0)[3];
                for f in fset::COMMON_1D {
                    assert_eq!(fs.has(*f), e1 & f.mask() != 0, "{name}: mirror {}", f.name);
                }
                assert!(!fs.has(feat::ARCH_CAPS), "{name}: ARCH_CAPS on AMD");
                assert!(!fs.has(feat::SEP), "{name}: SYSENTER on AMD");
                assert!(t.lookup(0x8000_0000, 0)[0] <= 0x8000_0021);
            } else {
                assert!(t.lookup(0x8000_0000, 0)[0] <= 0x8000_0008);
                assert_eq!(t.lookup(0x8000_0001, 0)[..2], [0, 0]);
            }
            // Extended state: offered only with the option, and then leaf 0xD matches.
            assert_eq!(
                fs.has(feat::XSAVE),
                (opts.xcr0 != 0) && raw.featureset().has(feat::XSAVE)
            );
            if fs.has(feat::XSAVE) {
                let mask = xcr0_mask(&fs);
                let [lo, _, max, hi] = t.lookup(0xd, 0);
                assert_eq!((u64::from(hi) << 32) | u64::from(lo), mask, "{name}");
                assert_eq!(mask & xcr0::PKRU, 0, "{name}: PKRU");
                assert!(max >= 576, "{name}");
                for i in 2..63u32 {
                    let offered = mask & (1 << i) != 0;
                    assert_eq!(t.lookup(0xd, i) != [0; 4], offered, "{name}: 0xd.{i}");
                }
            } else {
                assert_eq!(t.lookup(0xd, 0), [0; 4]);
                assert!(!fs.has(feat::AVX) && !fs.has(feat::AVX512F));
            }
        }
    }
}

#[test]
fn recorded_cpus_spectre_controls() {
    // Intel parts enumerate IBRSB (and with it STIBP, SSBD, IBPB through the AMD bit)
    // and MSR_ARCH_CAPABILITIES.
    for name in [
        "intel-skylake-sp",
        "intel-cascade-lake",
        "intel-ice-lake-sp",
        "intel-sapphire-rapids",
    ] {
        let fs = *CpuidTable::build(&recorded(name), &PolicyOptions::default()).featureset();
        for f in [
            feat::IBRSB,
            feat::STIBP,
            feat::SSBD,
            feat::IBPB,
            feat::ARCH_CAPS,
        ] {
            assert!(fs.has(f), "{name}: {}", f.name);
        }
        assert!(!fs.has(feat::L1D_FLUSH), "{name}: L1D_FLUSH is HVM-only");
    }
    // AMD: IBPB yes; the SPEC_CTRL bits (IBRS, AMD_STIBP, AMD_SSBD, PSFD) are HVM-only
    // in Xen's default.
    for name in [
        "amd-zen2-rome",
        "amd-zen3-milan",
        "amd-zen4-genoa",
        "amd-zen5-turin",
    ] {
        let fs = *CpuidTable::build(&recorded(name), &PolicyOptions::default()).featureset();
        assert!(fs.has(feat::IBPB), "{name}: IBPB");
        for f in [
            feat::IBRS,
            feat::AMD_STIBP,
            feat::AMD_SSBD,
            feat::PSFD,
            feat::AUTO_IBRS,
        ] {
            assert!(!fs.has(f), "{name}: {}", f.name);
        }
    }
}

#[test]
fn a_recorded_cpu_can_be_played_on_another_host() {
    let host = recorded("amd-zen3-milan");
    let t = CpuidTable::build_as(&recorded("intel-sapphire-rapids"), &host, &XSTATE_ON);
    assert_eq!(t.vendor(), Vendor::Intel);
    assert_eq!(t.lookup(1, 0)[0], 0x000806f8);
    // Only what both have: Milan has no AVX-512 and no AMX.
    assert!(!t.featureset().has(feat::AVX512F));
    assert!(!t.featureset().has(feat::AMX_TILE));
    assert!(t.featureset().has(feat::AVX2));
}

#[test]
fn arch_capabilities_are_the_hosts_filtered_like_any_word() {
    let t = CpuidTable::build(
        &recorded("intel-sapphire-rapids"),
        &PolicyOptions::default(),
    );
    let caps = t.arch_capabilities();
    for f in [feat::RDCL_NO, feat::EIBRS, feat::MDS_NO] {
        assert_ne!(caps & (1 << (f.index() - 16 * 32)), 0, "{}", f.name);
    }
    // TSX_CTRL and the other bits Xen does not give a PV guest are not passed on.
    assert_eq!(caps & (1 << (feat::TSX_CTRL.index() - 16 * 32)), 0);
    assert_eq!(caps & !recorded("intel-sapphire-rapids").arch_caps, 0);
    // AMD: no MSR_ARCH_CAPABILITIES at all.
    let amd = CpuidTable::build(&recorded("amd-zen4-genoa"), &PolicyOptions::default());
    assert_eq!(amd.arch_capabilities(), 0);
}
