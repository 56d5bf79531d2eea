//! The CPU policy on this host and as other CPUs: the policy built from this host's KVM
//! keeps the allow-list invariants, and Debian's kernels boot to their shell, with no
//! warning and no unchecked MSR access: the generic flavour (machine checks built in)
//! under every recorded CPU's policy (vmm/tests/data/cpuid/), the cloud flavour under the
//! mitigation command lines that make Linux touch the speculation-control MSRs.

mod common;

use pvkvm::cpuid::{CpuidTable, PolicyOptions, RawCpuid};
use xen_abi::cpufeatureset::{Avail, DEPS};

#[test]
fn this_hosts_policy_keeps_the_invariants() {
    common::require_kvm();
    let vm = pvkvm::vstate::Vm::new(&[(0, 1 << 20)]).expect("a VM");
    let raw = RawCpuid::from_kvm(&vm.supported_cpuid().expect("supported CPUID"));
    for xcr0 in [0, 0x7, 0xe7] {
        let opts = PolicyOptions {
            xcr0,
            ..Default::default()
        };
        let t = CpuidTable::build(&raw, &opts);
        let fs = t.featureset();
        for f in fs.features() {
            assert!(
                f.avail == Avail::AllDefault || matches!(f.name, "stibp" | "amd_stibp"),
                "{} offered",
                f.name
            );
        }
        for (key, deps) in DEPS {
            if !fs.has(*key) {
                for d in *deps {
                    assert!(!fs.has(*d), "{} without {}", d.name, key.name);
                }
            }
        }
        let [_, b, c, d] = t.lookup(0x4000_0000, 0);
        let sig: Vec<u8> = [b, c, d].iter().flat_map(|r| r.to_le_bytes()).collect();
        assert_eq!(&sig, b"XenVMMXenVMM");
    }
}

/// The per-boot check: no kernel warning, oops or unchecked MSR access.
const CHECK: &str =
    "dmesg | grep -c -E 'BUG:|Oops|WARNING: CPU:|Kernel panic|unchecked MSR|MCA architectural'";

fn boot_clean(
    kernel: Option<std::path::PathBuf>,
    cmdline: &str,
    extra: &[&str],
    vendor: Option<&str>,
) {
    let Some(kernel) = kernel else {
        return;
    };
    let run = common::debian_shell(
        &kernel,
        cmdline,
        extra,
        &[CHECK, "grep -m1 vendor_id /proc/cpuinfo | cut -d' ' -f2"],
    );
    assert!(
        run.answers.first().map(String::as_str) == Some("0"),
        "kernel warnings or MSR errors with {cmdline:?} {extra:?}: answers {:?}; console:\n{}",
        run.answers,
        run.console
    );
    if let Some(v) = vendor {
        assert_eq!(
            run.answers.get(1).map(String::as_str),
            Some(v),
            "{}",
            run.console
        );
    }
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
}

fn recorded(name: &str) -> String {
    common::repo_root()
        .join("vmm/tests/data/cpuid")
        .join(format!("{name}.txt"))
        .to_str()
        .expect("utf-8 path")
        .to_string()
}

macro_rules! boots_as {
    ($($test:ident: $file:literal, $vendor:literal;)*) => {$(
        #[test]
        fn $test() {
            let dump = recorded($file);
            // The generic flavour: built with machine-check support, so each vendor's
            // MCE MSR sequence runs too.
            boot_clean(
                common::debian_generic_kernel(),
                "console=hvc0 xen_msr_safe=0",
                &["--cpu-policy", &dump],
                Some($vendor),
            );
        }
    )*};
}

boots_as! {
    debian_boots_as_skylake_sp: "intel-skylake-sp", "GenuineIntel";
    debian_boots_as_cascade_lake: "intel-cascade-lake", "GenuineIntel";
    debian_boots_as_ice_lake_sp: "intel-ice-lake-sp", "GenuineIntel";
    debian_boots_as_sapphire_rapids: "intel-sapphire-rapids", "GenuineIntel";
    debian_boots_as_zen2_rome: "amd-zen2-rome", "AuthenticAMD";
    debian_boots_as_zen3_milan: "amd-zen3-milan", "AuthenticAMD";
    debian_boots_as_zen4_genoa: "amd-zen4-genoa", "AuthenticAMD";
    debian_boots_as_zen5_turin: "amd-zen5-turin", "AuthenticAMD";
}

macro_rules! boots_with {
    ($($test:ident: $option:literal;)*) => {$(
        /// The option makes Linux choose a mitigation that touches SPEC_CTRL, PRED_CMD or
        /// FLUSH_CMD where the policy offers them; `xen_msr_safe=0` makes any MSR access
        /// the engine refuses show as "unchecked MSR access error".
        #[test]
        fn $test() {
            boot_clean(
                common::debian_kernel(),
                concat!("console=hvc0 xen_msr_safe=0 ", $option),
                &[],
                None,
            );
        }
    )*};
}

boots_with! {
    boots_with_spec_rstack_overflow_off: "spec_rstack_overflow=off";
    boots_with_spectre_v2_ibrs: "spectre_v2=ibrs";
    boots_with_retbleed_ibpb: "retbleed=ibpb";
    boots_with_spectre_v2_user_on: "spectre_v2_user=on";
    boots_with_spec_store_bypass_disable_on: "spec_store_bypass_disable=on";
    boots_with_l1d_flush_on: "l1d_flush=on";
    boots_with_mitigations_off: "mitigations=off";
}

/// `kernel` (when fetched) reaches its shell with no extra kernel option, with no
/// kernel warning or MSR error, and its release starts with `release`.
fn boots_plain(kernel: Option<std::path::PathBuf>, release: &str) {
    let Some(kernel) = kernel else {
        return;
    };
    let run = common::debian_shell(&kernel, "console=hvc0", &[], &[CHECK, "uname -r"]);
    assert_eq!(
        run.answers.first().map(String::as_str),
        Some("0"),
        "{}",
        run.console
    );
    assert!(
        run.answers.get(1).is_some_and(|r| r.starts_with(release)),
        "{}",
        run.console
    );
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
}

/// Debian's generic 6.1 flavour as shipped (xz bzImage with the x86 BCJ filter, built
/// with machine-check support).
#[test]
fn generic_kernel_boots_to_a_shell() {
    boots_plain(common::debian_generic_kernel(), "6.1.0-");
}

/// Trixie's newest 6.12 cloud kernel.
#[test]
fn trixie_cloud_kernel_boots_to_a_shell() {
    boots_plain(common::debian_trixie_cloud_kernel(), "6.12.");
}
