//! Issue 9 end to end: the Debian 6.1 cloud kernel with pvkvm's default initramfs plus
//! a second archive holding guest-images/xstate-test (a static C program, built here
//! with `gcc -static`) runs it from the shell: YMM upper halves must survive context
//! switches between guest processes, and an unprivileged `wrpkru` + system call must
//! neither crash the domain nor leak PKRU into another process. The default guest's
//! cache key is not touched: the test archive is written to a temporary directory.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
    common::require_kvm();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvkvm"))
        .args(["run", "--kernel", kernel.to_str().unwrap()])
        .args(["--initrd", initrd.to_str().unwrap()])
        .args(["--cmdline", "console=hvc0", "--timeout", "400"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pvkvm starts");
    let console = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut stdout = child.stdout.take().unwrap();
    let sink = console.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().unwrap().extend_from_slice(&buf[..n]);
        }
    });
    let text = || String::from_utf8_lossy(&console.lock().unwrap()).into_owned();
    let wait_for = |needles: &[&str], from: usize, limit: Duration| -> Option<(usize, usize)> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let t = text();
            for (i, n) in needles.iter().enumerate() {
                if let Some(at) = t.get(from..).and_then(|rest| rest.find(n)) {
                    return Some((i, from + at + n.len()));
                }
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    };
    let mut stdin = child.stdin.take().unwrap();
    let Some((_, prompt)) = wait_for(&["~ # "], 0, Duration::from_secs(240)) else {
        let _ = child.kill();
        panic!("no shell prompt within 240 s; console:\n{}", text());
    };
    writeln!(stdin, "/xstate-test; echo XSTATE-DONE $?").unwrap();
    let done = wait_for(
        &["XSTATE-DONE 0", "XSTATE-DONE 1"],
        prompt,
        Duration::from_secs(120),
    );
    let verdict = text();
    // The domain must still be alive and answer.
    writeln!(stdin, "echo STILL-ALIVE").unwrap();
    let alive = wait_for(
        &["STILL-ALIVE\r\n", "STILL-ALIVE\n"],
        prompt,
        Duration::from_secs(30),
    );
    writeln!(stdin, "poweroff -f").unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    let mut stderr = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
    let _ = std::fs::remove_dir_all(&dir);
    let report: Vec<&str> = verdict
        .lines()
        .filter(|l| l.contains("xstate-test:"))
        .collect();
    eprintln!("{}", report.join("\n"));
    assert!(
        matches!(done, Some((0, _))) && verdict.contains("xstate-test: PASS"),
        "xstate-test did not pass; console:\n{verdict}\npvkvm:\n{stderr}"
    );
    assert!(
        alive.is_some(),
        "the domain died after the test; console:\n{}",
        text()
    );
    assert_eq!(status.and_then(|s| s.code()), Some(0), "pvkvm:\n{stderr}");
}
