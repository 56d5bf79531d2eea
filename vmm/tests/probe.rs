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
}
