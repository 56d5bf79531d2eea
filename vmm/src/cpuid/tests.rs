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

const XSTATE_ON: PolicyOptions = PolicyOptions {
    xstate: true,
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
        feat::RDTSCP,
        feat::RDPID,
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
    assert_eq!(
        ecx,
        0xa80 + 0x8 - 8 + 0,
        "largest offset+size among offered components"
    );
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
