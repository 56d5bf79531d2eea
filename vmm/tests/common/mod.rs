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
    require_kvm();
    shell_session(
        DebianConsole::spawn(kernel, initrd, cmdline, extra),
        commands,
    )
}

/// `pvkvm run ARGS...` (an xl.cfg, say) to a shell, then as [`debian_shell`].
#[allow(dead_code)]
pub fn debian_shell_args(args: &[&str], commands: &[&str]) -> ShellRun {
    require_kvm();
    shell_session(DebianConsole::spawn_args(args), commands)
}

/// Waits for the shell on `console`, runs `commands` (one answer line each), then
/// `poweroff -f`.
fn shell_session(mut console: DebianConsole, commands: &[&str]) -> ShellRun {
    use std::time::Duration;

    let Some(prompt) = console.wait_for_from("~ # ", 0, Duration::from_secs(240)) else {
        let (console, stderr) = console.kill_with_stderr();
        panic!("no shell prompt within 240 s; console:\n{console}\n--- pvkvm ---\n{stderr}");
    };
    for c in commands {
        console.send(c);
    }
    console.send("echo END-OF-ANSWERS");
    let end = console
        .wait_for_from("END-OF-ANSWERS\r\n", prompt, Duration::from_secs(120))
        .or_else(|| console.wait_for_from("END-OF-ANSWERS\n", prompt, Duration::from_secs(1)));
    let Some(end) = end else {
        let (console, stderr) = console.kill_with_stderr();
        panic!("no answers; console:\n{console}\n--- pvkvm ---\n{stderr}");
    };
    let all = console.text();
    let lines: Vec<String> = all[prompt..end]
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty() && !l.contains('#') && !l.contains("END-OF-ANSWERS"))
        .collect();
    let answers = lines[lines.len().saturating_sub(commands.len())..].to_vec();
    let (status, console, stderr) = console.poweroff_and_wait(Duration::from_secs(60));
    ShellRun {
        answers,
        console,
        status,
        stderr,
    }
}

/// A pvkvm running a Debian kernel and initramfs, its console (stdout) collected by a
/// thread, its stdin the guest's console input, its stderr collected by another thread.
pub struct DebianConsole {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    console: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
    reader: std::thread::JoinHandle<()>,
    stderr: std::thread::JoinHandle<String>,
}

impl DebianConsole {
    /// Starts `pvkvm run` on `kernel` with `initrd`, `cmdline`, a 300 s timeout and the
    /// `extra` arguments.
    pub fn spawn(kernel: &Path, initrd: &Path, cmdline: &str, extra: &[&str]) -> DebianConsole {
        let mut args = vec![
            "--kernel",
            kernel.to_str().expect("utf-8 path"),
            "--initrd",
            initrd.to_str().expect("utf-8 path"),
            "--cmdline",
            cmdline,
            "--timeout",
            "300",
        ];
        args.extend_from_slice(extra);
        Self::spawn_args(&args)
    }

    /// Starts `pvkvm run ARGS...` with the console collected as [`Self::spawn`] does.
    pub fn spawn_args(args: &[&str]) -> DebianConsole {
        use std::io::Read;
        use std::process::Stdio;
        use std::sync::{Arc, Mutex};

        let mut child = Command::new(env!("CARGO_BIN_EXE_pvkvm"))
            .arg("run")
            .args(args)
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
        let mut err = child.stderr.take().expect("piped");
        let stderr = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        });
        let stdin = child.stdin.take().expect("piped");
        DebianConsole {
            child,
            stdin,
            console,
            reader,
            stderr,
        }
    }

    /// Everything on the console so far (lossy UTF-8).
    pub fn text(&self) -> String {
        Self::text_of(&self.console)
    }

    fn text_of(console: &std::sync::Mutex<Vec<u8>>) -> String {
        String::from_utf8_lossy(&console.lock().expect("lock")).into_owned()
    }

    /// Waits up to `limit` for `needle` on the console at or after byte `from`; returns
    /// the byte offset just past its first occurrence.
    pub fn wait_for_from(
        &self,
        needle: &str,
        from: usize,
        limit: std::time::Duration,
    ) -> Option<usize> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            let t = self.text();
            if let Some(at) = t.get(from..).and_then(|rest| rest.find(needle)) {
                return Some(from + at + needle.len());
            }
            std::thread::sleep(std::time::Duration::from_millis(200));
        }
        None
    }

    /// Whether `needle` appears anywhere on the console within `limit`.
    pub fn wait_for(&self, needle: &str, limit: std::time::Duration) -> bool {
        self.wait_for_from(needle, 0, limit).is_some()
    }

    /// Types `line` and a newline on the guest's console; an error if pvkvm's stdin is
    /// gone.
    pub fn try_send(&mut self, line: &str) -> std::io::Result<()> {
        use std::io::Write;
        writeln!(self.stdin, "{line}")
    }

    /// [`DebianConsole::try_send`], panicking when it fails.
    pub fn send(&mut self, line: &str) {
        self.try_send(line).expect("stdin");
    }

    /// SIGKILLs pvkvm, reaps it, collects the rest of its console; returns the console.
    pub fn kill(self) -> String {
        self.kill_with_stderr().0
    }

    /// [`Self::kill`], also returning what pvkvm wrote on stderr (its warnings).
    pub fn kill_with_stderr(mut self) -> (String, String) {
        self.child.kill().expect("kill -9");
        let _ = self.child.wait();
        let _ = self.reader.join();
        let stderr = self.stderr.join().unwrap_or_default();
        (Self::text_of(&self.console), stderr)
    }

    /// Types `poweroff -f` and waits up to `limit` for pvkvm to exit (killing it and
    /// panicking with the console if it does not); returns its exit code, the whole
    /// console and its stderr.
    pub fn poweroff_and_wait(
        mut self,
        limit: std::time::Duration,
    ) -> (Option<i32>, String, String) {
        self.send("poweroff -f");
        self.wait_exit(limit)
    }

    /// Waits up to `limit` for pvkvm to exit (killing it and panicking with the console
    /// if it does not); returns its exit code, the whole console and its stderr.
    pub fn wait_exit(mut self, limit: std::time::Duration) -> (Option<i32>, String, String) {
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            if started.elapsed() > limit {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("pvkvm did not exit in time; console:\n{}", self.text());
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        let _ = self.reader.join();
        let stderr = self.stderr.join().unwrap_or_default();
        (status.code(), Self::text_of(&self.console), stderr)
    }
}

/// An ext4 filesystem image of `mib` MiB at `img` holding the tree at `root`, made with
/// `mkfs.ext4 -d` (no root needed, no mount).
#[allow(dead_code)]
pub fn ext4_image_of(root: &Path, img: &Path, mib: u64) {
    std::fs::File::create(img)
        .and_then(|f| f.set_len(mib << 20))
        .expect("image file");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(root)
        .arg(img)
        .status()
        .expect("mkfs.ext4 runs (e2fsprogs: guest-images/scripts/install-deps.sh)");
    assert!(st.success(), "mkfs.ext4 -d {} failed", root.display());
}
