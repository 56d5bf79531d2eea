//! The control socket with a real guest (Debian's cloud kernel and the default
//! initramfs): `pvkvm remote` info, pause (the guest runs nothing: typed input is not
//! echoed), resume (it is), console attach (bytes both ways, Ctrl-] detaches), reboot
//! and shutdown through xenstore's `control/shutdown` (the guest's own shutdown path),
//! and destroy.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

fn remote(socket: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_pvkvm"))
        .args(["remote", "--api-socket", socket.to_str().expect("utf-8")])
        .args(args)
        .output()
        .expect("pvkvm remote runs");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn socket(tag: &str) -> PathBuf {
    std::env::temp_dir().join(format!("pvkvm-test-api-{}-{tag}.sock", std::process::id()))
}

fn boot(sock: &Path) -> (common::DebianConsole, usize) {
    let kernel = common::debian_kernel().expect("Debian kernel in the cache");
    let initrd = common::repo_root().join("guest-images/cache/initramfs-default.cpio.gz");
    let console = common::DebianConsole::spawn(
        &kernel,
        &initrd,
        "console=hvc0 quiet",
        &["--api-socket", sock.to_str().expect("utf-8")],
    );
    let Some(at) = console.wait_for_from("~ # ", 0, Duration::from_secs(240)) else {
        let (c, e) = console.kill_with_stderr();
        panic!("no prompt; console:\n{c}\n--- pvkvm ---\n{e}");
    };
    (console, at)
}

#[test]
fn pause_resume_attach_and_shutdown_through_the_socket() {
    common::require_kvm();
    let sock = socket("life");
    let (mut console, at) = boot(&sock);

    let (rc, info, err) = remote(&sock, &["info"]);
    assert_eq!(rc, 0, "{err}");
    let info: serde_json::Value = serde_json::from_str(&info).expect("JSON");
    assert_eq!(info["state"], "running");
    assert_eq!(info["memory_mib"], 512);
    // A booted Linux has exited the VM tens of thousands of times and applied stores.
    let exits = info["counters"]["vm_exits"].as_u64().expect("vm_exits");
    assert!(exits > 10_000, "{info}");
    assert!(
        info["counters"]["applies"].as_u64().expect("applies") > 0,
        "{info}"
    );

    assert_eq!(remote(&sock, &["pause"]).0, 0);
    let (rc, _, err) = remote(&sock, &["pause"]);
    assert_eq!(rc, 1);
    assert!(err.contains("already paused"), "{err}");
    let (_, info, _) = remote(&sock, &["info"]);
    assert!(info.contains("\"paused\""), "{info}");
    let paused: serde_json::Value = serde_json::from_str(&info).expect("JSON");
    assert!(
        paused["counters"]["vm_exits"].as_u64().expect("vm_exits") >= exits,
        "{info}"
    );
    console.send("echo resumed-$((40+2))");
    assert!(
        console
            .wait_for_from("resumed-42", at, Duration::from_secs(3))
            .is_none(),
        "a paused guest ran"
    );
    assert_eq!(remote(&sock, &["resume"]).0, 0);
    assert!(
        console
            .wait_for_from("resumed-42", at, Duration::from_secs(30))
            .is_some(),
        "the guest did not run on after resume"
    );

    // Attach a second console: it sees the guest's answers to what it types.
    let mut attached = Command::new(env!("CARGO_BIN_EXE_pvkvm"))
        .args([
            "remote",
            "--api-socket",
            sock.to_str().expect("utf-8"),
            "console",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("attach");
    std::thread::sleep(Duration::from_millis(500));
    let mut input = attached.stdin.take().expect("piped");
    input.write_all(b"echo attached-$((6*7))\n").expect("type");
    assert!(
        console
            .wait_for_from("attached-42", at, Duration::from_secs(30))
            .is_some(),
        "input from the attached console did not reach the guest"
    );
    input.write_all(b"\x1d").expect("detach");
    let out = attached.wait_with_output().expect("detached");
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("attached-42"),
        "the attached console did not see the guest's output"
    );

    // A clean shutdown: the guest's own poweroff path, exit status 0.
    assert_eq!(remote(&sock, &["shutdown"]).0, 0);
    let (status, _, stderr) = console.wait_exit(Duration::from_secs(60));
    assert_eq!(status, Some(0), "{stderr}");
    assert!(stderr.contains("poweroff"), "{stderr}");
    assert!(!sock.exists(), "the socket file is removed at the end");
    let (rc, _, err) = remote(&sock, &["info"]);
    assert_eq!(rc, 1);
    assert!(err.contains("cannot reach"), "{err}");
}

#[test]
fn reboot_asks_the_guest_and_destroy_ends_it() {
    common::require_kvm();
    let sock = socket("reboot");
    let (console, _) = boot(&sock);
    assert_eq!(remote(&sock, &["reboot"]).0, 0);
    let (status, _, stderr) = console.wait_exit(Duration::from_secs(60));
    assert_eq!(status, Some(0), "{stderr}");
    assert!(stderr.contains("reboot"), "{stderr}");

    let sock = socket("destroy");
    let (console, _) = boot(&sock);
    assert_eq!(remote(&sock, &["pause"]).0, 0);
    // Destroy works on a paused domain too.
    assert_eq!(remote(&sock, &["destroy"]).0, 0);
    let (status, _, stderr) = console.wait_exit(Duration::from_secs(30));
    assert_eq!(status, Some(143), "{stderr}");
    assert!(stderr.contains("control socket"), "{stderr}");
}
