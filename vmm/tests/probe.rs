//! `pvkvm probe` runs every step on this host and reports them as JSON.

mod common;

#[test]
fn probe_reports_every_figure_as_json() {
    common::require_kvm();
    let out = common::pvkvm(&["probe", "--json"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "pvkvm probe failed:\n{stderr}");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("pvkvm probe --json prints JSON");
    let timings = report["timings"].as_array().expect("a timings list");
    for name in [
        "syscall -> VMM -> guest (sync regs)",
        "out from ring 0 -> VMM -> guest",
        "int3 -> shim stub -> VMM -> iretq",
        "int3 -> ring-0 iretq (no VMM)",
    ] {
        let t = timings
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no {name:?} in {report}"));
        let v = t["value"].as_f64().unwrap_or(0.0);
        assert!(v > 0.0 && v.is_finite(), "{name}: {v}");
    }
    assert!(
        report["facts"]
            .as_object()
            .is_some_and(|f| f.keys().any(|k| k.starts_with("guest clock drift"))),
        "no clock drift fact in {report}"
    );
    // The facts the runner consumes, and the paths they choose on this host.
    let facts = &report["host_facts"];
    assert_eq!(facts["sync_regs"], true, "{facts}");
    assert_eq!(facts["immediate_exit"], true, "{facts}");
    let cpl = facts["syscall_cpl"].as_u64().expect("syscall_cpl");
    let entry = facts["paths"]["syscall_entry"]
        .as_str()
        .expect("paths chosen");
    match cpl {
        3 => assert_eq!(entry, "StubAtCpl3"),
        0 => assert_eq!(entry, "StubAtCpl0"),
        other => panic!("syscall lands at CPL{other}: {facts}"),
    }
    if facts["module"] == "kvm_pvm" {
        // What the design for software KVM relies on.
        assert_eq!(cpl, 3, "{facts}");
        assert_eq!(facts["vmm_pte_store_visible"], false, "{facts}");
        assert_eq!(facts["hardware_virt"], false, "{facts}");
    }
    assert!(facts["tsc_offset"].is_i64(), "{facts}");
    assert!(facts["m2p_slot_usable"].is_boolean(), "{facts}");
}
