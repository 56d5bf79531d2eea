//! Issue 5's Linux workloads: benches/linux.py builds the guest benchmark
//! (benches/workload) and the benchmark initramfs, boots the Debian kernel with it on
//! pvkvm (this build's binary), and every figure comes back with sane numbers. Needs the
//! Debian kernel like debian_kernel.rs (skipped with a note when it was not fetched,
//! required in CI with PVKVM_REQUIRE_DEBIAN_KERNEL=1), python3, and /dev/kvm (fails
//! without it).

mod common;

use std::process::Command;

const FIGURES: [&str; 11] = [
    "clock",
    "getppid",
    "cpu",
    "fault",
    "mmap_cycle",
    "memfill",
    "mprotect",
    "pipe",
    "fork_exit",
    "fork_exec",
    "fork_exec_busybox",
];

#[test]
fn workload_runs_on_pvkvm_with_every_figure() {
    if common::debian_kernel().is_none() {
        return;
    }
    common::require_kvm();
    let root = common::repo_root();
    let work = std::env::temp_dir().join(format!("pvkvm-linux-workload-{}", std::process::id()));
    std::fs::create_dir_all(&work).unwrap();
    let json_path = work.join("result.json");
    let out = Command::new("python3")
        .arg(root.join("benches/linux.py"))
        .args([
            "--platforms",
            "pvkvm",
            "--pvkvm",
            env!("CARGO_BIN_EXE_pvkvm"),
        ])
        .arg("--work")
        .arg(&work)
        .arg("--json")
        .arg(&json_path)
        .output()
        .expect("python3 runs benches/linux.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let json = std::fs::read_to_string(&json_path)
        .unwrap_or_else(|e| panic!("no JSON from benches/linux.py ({e}):\n{stderr}"));
    assert!(
        out.status.success(),
        "benches/linux.py failed:\n{stderr}\n{json}"
    );
    let result: serde_json::Value = serde_json::from_str(&json)
        .unwrap_or_else(|e| panic!("benches/linux.py wrote invalid JSON ({e}):\n{json}"));
    let pv = &result["platforms"]["pvkvm"];
    assert_eq!(
        pv["status"], "ok",
        "pvkvm did not run the benchmark:\n{json}"
    );
    let boot = pv["boot_s"].as_f64().expect("boot_s");
    assert!(boot > 0.0 && boot < 300.0, "boot_s {boot}");
    for fig in FIGURES {
        let f = &pv["figures"][fig];
        let num = |k: &str| {
            f[k].as_f64()
                .unwrap_or_else(|| panic!("figure {fig} has no {k}:\n{json}"))
        };
        let (median, p10, p90) = (num("median_ns"), num("p10_ns"), num("p90_ns"));
        assert!(
            median > 0.0 && p10 <= median && median <= p90,
            "{fig}: median {median} p10 {p10} p90 {p90}"
        );
    }
    let _ = std::fs::remove_dir_all(&work);
}
