//! Shared helpers of the integration tests: build the PV test kernels (once per test
//! binary) and run `pvkvm` on them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("vmm/ has a parent")
        .to_path_buf()
}

/// Fails (never skips) when /dev/kvm is unusable, saying why.
pub fn require_kvm() {
    if let Err(e) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    {
        panic!(
            "this test boots guests and needs /dev/kvm, which cannot be opened here ({e}); \
             run the tests on a machine with KVM (the CI machines have it)"
        );
    }
}

/// Builds the test kernels in guest-images/ (its own workspace and flags) and returns the
/// directory holding them.
pub fn guest_kernels() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = repo_root().join("guest-images");
        // Serialize builds across test binaries running at once.
        let lock = std::fs::File::create(std::env::temp_dir().join("pvkvm-guest-images.lock"))
            .expect("lock file");
        lock_exclusive(&lock);
        let out = Command::new(env!("CARGO"))
            .current_dir(&dir)
            .args(["build", "--release", "--quiet"])
            .env_remove("RUSTFLAGS")
            .env_remove("CARGO_TARGET_DIR")
            .env_remove("CARGO_BUILD_TARGET")
            .env_remove("CARGO_ENCODED_RUSTFLAGS")
            .output()
            .expect("cargo runs");
        assert!(
            out.status.success(),
            "building the PV test kernels failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        dir.join("target/x86_64-unknown-linux-gnu/release")
    })
}

/// Holds an exclusive advisory lock on `file` until the process ends.
fn lock_exclusive(file: &std::fs::File) {
    use std::os::fd::AsRawFd;
    unsafe extern "C" {
        fn flock(fd: i32, op: i32) -> i32;
    }
    let fd = file.try_clone().expect("dup lock file");
    // SAFETY: flock only takes a file descriptor, which is live; LOCK_EX (2) blocks until
    // the lock is held. The duplicate is leaked so the lock lasts for the whole process.
    unsafe {
        flock(fd.as_raw_fd(), 2);
    }
    std::mem::forget(fd);
}

/// Path of one test kernel.
pub fn kernel(name: &str) -> PathBuf {
    let path = guest_kernels().join(name);
    assert!(
        path.exists(),
        "test kernel {} was not built",
        path.display()
    );
    path
}

/// Runs the pvkvm binary.
pub fn pvkvm(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_pvkvm"))
        .args(args)
        .output()
        .expect("pvkvm runs")
}

/// Boots a test kernel and returns (status, stdout, stderr).
pub fn boot(name: &str, timeout_secs: u32) -> (Option<i32>, String, String) {
    require_kvm();
    let kernel = kernel(name);
    let out = pvkvm(&[
        "run",
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
        "--timeout",
        &timeout_secs.to_string(),
    ]);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Boots a test kernel and requires its SUCCESS line and exit status 0.
pub fn expect_success(name: &str) {
    let (status, stdout, stderr) = boot(name, 60);
    let ok = stdout.lines().any(|l| l == "Test result: SUCCESS");
    let failure = stdout
        .lines()
        .find(|l| l.starts_with("Test result: FAILURE"));
    assert!(
        ok && failure.is_none() && status == Some(0),
        "test kernel '{name}' did not pass (status {status:?}, {}):\n--- console ---\n{stdout}\n--- pvkvm ---\n{stderr}",
        failure.unwrap_or("no result line")
    );
}

/// The newest Debian 6.1 cloud kernel in guest-images/cache (fetched by
/// guest-images/scripts/fetch-debian-kernel.sh). None, with a note, when there is none;
/// a failure instead when PVKVM_REQUIRE_DEBIAN_KERNEL is set (CI).
pub fn debian_kernel() -> Option<PathBuf> {
    cached_debian_kernel(
        |abi| {
            abi.strip_prefix("6.1.0-")
                .and_then(|r| r.strip_suffix("-cloud-amd64"))
                .is_some_and(all_digits)
        },
        "",
    )
}

/// The newest Debian 6.1 generic kernel (`vmlinuz-6.1.0-<n>-amd64`, an xz bzImage), like
/// [`debian_kernel`].
pub fn debian_generic_kernel() -> Option<PathBuf> {
    cached_debian_kernel(
        |abi| {
            abi.strip_prefix("6.1.0-")
                .and_then(|r| r.strip_suffix("-amd64"))
                .is_some_and(all_digits)
        },
        "--flavour generic",
    )
}

/// The newest Debian trixie cloud kernel (`vmlinuz-6.12.<n>+deb13-cloud-amd64`), like
/// [`debian_kernel`].
pub fn debian_trixie_cloud_kernel() -> Option<PathBuf> {
    cached_debian_kernel(
        |abi| abi.starts_with("6.12.") && abi.ends_with("-cloud-amd64"),
        "--suite trixie",
    )
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// The newest `guest-images/cache/vmlinuz-<abi>` whose ABI `matches`, by the numbers in
/// its name (so ABI 10 beats ABI 9), as `fetch-debian-kernel.sh <fetch_args>` leaves it.
fn cached_debian_kernel(matches: fn(&str) -> bool, fetch_args: &str) -> Option<PathBuf> {
    let cache = repo_root().join("guest-images/cache");
    let version = |p: &PathBuf| -> Vec<u64> {
        p.to_string_lossy()
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    let found = std::fs::read_dir(&cache).ok().and_then(|dir| {
        dir.filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .and_then(|n| n.strip_prefix("vmlinuz-"))
                    .is_some_and(matches)
            })
            .max_by_key(version)
    });
    if found.is_none() {
        let hint = format!("run guest-images/scripts/fetch-debian-kernel.sh {fetch_args}");
        assert!(
            std::env::var_os("PVKVM_REQUIRE_DEBIAN_KERNEL").is_none(),
            "the Debian kernel is not in guest-images/cache: {hint}"
        );
        eprintln!("skipped: the Debian kernel is not in guest-images/cache ({hint})");
    }
    found
}

/// What a Debian boot to the shell answered.
pub struct ShellRun {
    /// The last lines the shell printed before the end marker, one per command.
    pub answers: Vec<String>,
    /// Everything on the console.
    pub console: String,
    /// pvkvm's exit status.
    pub status: Option<i32>,
    /// pvkvm's own output.
    pub stderr: String,
}

/// Boots `kernel` with pvkvm's default initramfs and `cmdline` (plus `extra` pvkvm
/// arguments), waits for the shell, runs `commands` (one answer line each is expected),
/// then `poweroff -f`. Panics with the console when the shell or the answers do not come.
pub fn debian_shell(kernel: &Path, cmdline: &str, extra: &[&str], commands: &[&str]) -> ShellRun {
    let initrd = repo_root().join("guest-images/cache/initramfs-default.cpio.gz");
    assert!(
        initrd.exists(),
        "no default initramfs: run guest-images/scripts/build-default-guest.sh"
    );
    debian_shell_with(kernel, &initrd, cmdline, extra, commands)
}

/// [`debian_shell`] with another initramfs.
pub fn debian_shell_with(
    kernel: &Path,
    initrd: &Path,
    cmdline: &str,
    extra: &[&str],
    commands: &[&str],
) -> ShellRun {
    use std::io::{Read, Write};
    use std::process::Stdio;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    require_kvm();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvkvm"))
        .args(["run", "--kernel", kernel.to_str().expect("utf-8 path")])
        .args(["--initrd", initrd.to_str().expect("utf-8 path")])
        .args(["--cmdline", cmdline, "--timeout", "300"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pvkvm starts");
    let console = Arc::new(Mutex::new(Vec::<u8>::new()));
    let mut stdout = child.stdout.take().expect("piped");
    let sink = console.clone();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stdout.read(&mut buf) {
            if n == 0 {
                break;
            }
            sink.lock().expect("lock").extend_from_slice(&buf[..n]);
        }
    });
    let text =
        |c: &Arc<Mutex<Vec<u8>>>| String::from_utf8_lossy(&c.lock().expect("lock")).into_owned();
    let wait_for = |needle: &str, from: usize, limit: Duration| -> Option<usize> {
        let start = Instant::now();
        while start.elapsed() < limit {
            let t = text(&console);
            if let Some(at) = t.get(from..).and_then(|rest| rest.find(needle)) {
                return Some(from + at + needle.len());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        None
    };
    let mut stdin = child.stdin.take().expect("piped");
    let Some(prompt) = wait_for("~ # ", 0, Duration::from_secs(240)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no shell prompt within 240 s; console:\n{}", text(&console));
    };
    for c in commands {
        writeln!(stdin, "{c}").expect("stdin");
    }
    writeln!(stdin, "echo END-OF-ANSWERS").expect("stdin");
    let end = wait_for("END-OF-ANSWERS\r\n", prompt, Duration::from_secs(120))
        .or_else(|| wait_for("END-OF-ANSWERS\n", prompt, Duration::from_secs(1)));
    let Some(end) = end else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("no answers; console:\n{}", text(&console));
    };
    let all = text(&console);
    let lines: Vec<String> = all[prompt..end]
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.contains('#') && !l.contains("END-OF-ANSWERS"))
        .collect();
    let answers = lines[lines.len().saturating_sub(commands.len())..].to_vec();
    writeln!(stdin, "poweroff -f").expect("stdin");
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "pvkvm did not exit after poweroff -f; console:\n{}",
                text(&console)
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = reader.join();
    let mut stderr = String::new();
    let _ = child
        .stderr
        .take()
        .expect("piped")
        .read_to_string(&mut stderr);
    ShellRun {
        answers,
        console: text(&console),
        status: status.code(),
        stderr,
    }
}
