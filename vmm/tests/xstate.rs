//! Issue 9 end to end: the Debian 6.1 cloud kernel with pvkvm's default initramfs plus
//! a second archive holding guest-images/xstate-test (a static C program, built here
//! with `gcc -static`) runs it from the shell: YMM upper halves must survive context
//! switches between guest processes, and an unprivileged `wrpkru` + system call must
//! neither crash the domain nor leak PKRU into another process. The default guest's
//! cache key is not touched: the test archive is written to a temporary directory.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Builds the test initramfs: the default one with a newc archive appended that adds
/// /xstate-test (Linux unpacks concatenated archives in order).
fn test_initramfs(dir: &Path) -> Option<PathBuf> {
    let root = common::repo_root();
    let default = root.join("guest-images/cache/initramfs-default.cpio.gz");
    if !default.exists() {
        assert!(
            std::env::var_os("PVKVM_REQUIRE_DEBIAN_KERNEL").is_none(),
            "no default initramfs: run guest-images/scripts/build-default-guest.sh"
        );
        eprintln!("skipped: no guest-images/cache/initramfs-default.cpio.gz");
        return None;
    }
    let bin = dir.join("xstate-test");
    let out = Command::new("gcc")
        .args(["-static", "-O2", "-Wall", "-o"])
        .arg(&bin)
        .arg(root.join("guest-images/xstate-test/xstate-test.c"))
        .output()
        .expect("gcc runs (the test needs gcc and a static libc)");
    assert!(
        out.status.success(),
        "gcc -static failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let extra = dir.join("extra.cpio.gz");
    let mut newc = Command::new("python3")
        .arg(root.join("guest-images/initramfs/newc.py"))
        .arg("create")
        .arg(&extra)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    newc.stdin
        .take()
        .unwrap()
        .write_all(b"file /xstate-test xstate-test 0755\n")
        .unwrap();
    assert!(newc.wait().unwrap().success(), "newc.py failed");
    let initrd = dir.join("initramfs-xstate.cpio.gz");
    let mut bytes = std::fs::read(&default).unwrap();
    bytes.extend(std::fs::read(&extra).unwrap());
    std::fs::write(&initrd, bytes).unwrap();
    Some(initrd)
}

#[test]
fn ymm_survives_context_switches_and_wrpkru_is_contained() {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("pvkvm-xstate-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let Some(initrd) = test_initramfs(&dir) else {
        return;
    };
    // The program's verdict is its last line; then the domain must still answer.
    let run = common::debian_shell_with(
        &kernel,
        &initrd,
        "console=hvc0",
        &[],
        // Its whole report stays on the console; the verdict line comes last.
        &[
            "/xstate-test > /xstate.log 2>&1; cat /xstate.log; tail -n 1 /xstate.log",
            "echo STILL-ALIVE",
        ],
    );
    let _ = std::fs::remove_dir_all(&dir);
    let report: Vec<&str> = run
        .console
        .lines()
        .filter(|l| l.contains("xstate-test:"))
        .collect();
    eprintln!("{}", report.join("\n"));
    assert_eq!(
        run.answers,
        ["xstate-test: PASS", "STILL-ALIVE"],
        "xstate-test did not pass or the domain died; console:\n{}\npvkvm:\n{}",
        run.console,
        run.stderr
    );
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
}
