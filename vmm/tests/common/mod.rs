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
