//! How a domain ends when the guest does not: the watchdog, an unhandled trap, and every
//! bad input the CLI refuses with one line and exit status 2.

mod common;

use common::{boot, pvkvm, repo_root};

#[test]
fn watchdog_stops_a_spinning_guest_with_a_diagnostic() {
    let (status, stdout, stderr) = boot("spin", 3);
    assert_eq!(status, Some(124), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("spinning without trapping"));
    assert!(
        stderr.contains("watchdog") && stderr.contains("vcpu rip"),
        "no diagnostic:\n{stderr}"
    );
    assert!(
        stderr.contains("console_io("),
        "the diagnostic lists the last hypercalls:\n{stderr}"
    );
}

#[test]
fn unhandled_trap_crashes_with_the_vector_named() {
    let (status, stdout, stderr) = boot("unhandled_fault", 60);
    assert_eq!(status, Some(1), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stdout.contains("still running"));
    assert!(
        stderr.contains("vector: 6"),
        "diagnostic must name #UD:\n{stderr}"
    );
    assert!(
        stderr.contains("guest rip"),
        "diagnostic must show the guest frame:\n{stderr}"
    );
}

/// Sends signal `sig` (a name: TERM, INT, ...) to process `pid`.
fn kill(pid: u32, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([format!("-{sig}"), pid.to_string()])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "kill -{sig} {pid}");
}

fn expect_refused(args: &[&str], needle: &str) {
    let out = pvkvm(args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "args {args:?}: stderr {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "one clear line, got:\n{stderr}");
    assert!(
        lines[0].starts_with("pvkvm: ") && lines[0].contains(needle),
        "line {:?} should mention {needle:?}",
        lines[0]
    );
}

fn scratch(name: &str, bytes: &[u8]) -> String {
    let dir = std::env::temp_dir().join(format!("pvkvm-ending-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn bad_kernels_get_one_line_and_status_2() {
    let missing = repo_root()
        .join("no-such-kernel")
        .to_str()
        .unwrap()
        .to_string();
    let garbage = scratch("garbage", &[0x5a; 4096]);
    // This test binary is an ELF without Xen notes.
    let plain_elf = std::env::current_exe()
        .unwrap()
        .to_str()
        .unwrap()
        .to_string();
    // A bzImage header whose payload runs past the end of the file.
    let mut bz = vec![0u8; 0x1000];
    bz[0x1f1] = 1; // setup_sects
    bz[0x202..0x206].copy_from_slice(b"HdrS");
    bz[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
    bz[0x248..0x24c].copy_from_slice(&0x100u32.to_le_bytes()); // payload_offset
    bz[0x24c..0x250].copy_from_slice(&0x10_0000u32.to_le_bytes()); // payload_length
    let truncated = scratch("truncated-bzimage", &bz);
    for cmd in ["run", "inspect"] {
        let with = |k: &str| {
            if cmd == "run" {
                vec![cmd, "--kernel", k]
            } else {
                vec![cmd, k]
            }
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
        };
        for (kernel, needle) in [
            (&missing, "cannot read"),
            (&garbage, "neither an ELF file nor a bzImage"),
            (&plain_elf, "Xen"),
            (&truncated, "truncated"),
        ] {
            let args = with(kernel);
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            expect_refused(&args, needle);
        }
    }
}

#[test]
fn bad_memory_size_is_refused() {
    let hello = common::kernel("hello");
    // A usage error: clap's message (with its usage hint) and status 2.
    let out = pvkvm(&[
        "run",
        "--kernel",
        hello.to_str().unwrap(),
        "--memory",
        "lots",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("'lots' is not a size like 512M or 2G"));
    // Too small to be a domain: pvkvm's own one-line refusal.
    expect_refused(
        &["run", "--kernel", hello.to_str().unwrap(), "--memory", "4M"],
        "memory size 4 MiB",
    );
}

/// Without /dev/kvm (hidden here by an empty /dev in a private mount namespace), `run`
/// and `probe` say so in one line and exit 2. Needs root for the namespace, which CI has;
/// elsewhere it says why it cannot run.
#[test]
fn no_dev_kvm_is_one_clear_line() {
    let hello = common::kernel("hello");
    let unshare = std::process::Command::new("unshare")
        .args(["--mount", "true"])
        .status();
    if !unshare.map(|s| s.success()).unwrap_or(false) {
        assert!(
            std::env::var_os("PVKVM_REQUIRE_DEBIAN_KERNEL").is_none(),
            "CI runs as root and must be able to create a mount namespace for this test"
        );
        eprintln!("skipped: cannot create a mount namespace here (not root)");
        return;
    }
    let pvkvm = env!("CARGO_BIN_EXE_pvkvm");
    for args in [
        format!("run --kernel {}", hello.display()),
        "probe".to_string(),
    ] {
        let script = format!("mount -t tmpfs none /dev && exec {pvkvm} {args}");
        let out = std::process::Command::new("unshare")
            .args(["--mount", "sh", "-c", &script])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args}: {stderr}");
        assert_eq!(
            stderr.lines().count(),
            1,
            "{args}: one line, got:\n{stderr}"
        );
        assert!(stderr.contains("cannot open /dev/kvm"), "{args}: {stderr}");
    }
}

#[test]
fn stall_watchdog_stops_a_guest_that_never_traps() {
    common::require_kvm();
    let spin = common::kernel("spin");
    let out = pvkvm(&[
        "run",
        "--kernel",
        spin.to_str().unwrap(),
        "--stall-timeout",
        "2",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(124), "{stderr}");
    assert!(stderr.contains("stopped making progress"), "{stderr}");
}

/// Signals another process may send: SIGUSR1/SIGUSR2 are ignored (pvkvm keeps running),
/// SIGINT, SIGHUP and SIGQUIT are stop requests like SIGTERM (the first asks the guest to
/// power off, a second destroys it), so pvkvm always ends by itself with a status, the
/// terminal restored, never killed by the signal.
#[test]
fn stop_signals_end_pvkvm_by_itself_and_others_are_ignored() {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};
    common::require_kvm();
    for (stop, destroys) in [("INT", "INT"), ("HUP", "HUP"), ("QUIT", "TERM")] {
        let kernel = common::kernel("spin");
        let mut child = Command::new(env!("CARGO_BIN_EXE_pvkvm"))
            .args([
                "run",
                "--kernel",
                kernel.to_str().unwrap(),
                "--timeout",
                "60",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("pvkvm starts");
        std::thread::sleep(Duration::from_secs(2));
        for sig in ["USR1", "USR2"] {
            kill(child.id(), sig);
        }
        std::thread::sleep(Duration::from_millis(500));
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGUSR1/SIGUSR2 ended pvkvm"
        );
        // The spinning guest cannot power off: the second request destroys it.
        kill(child.id(), stop);
        std::thread::sleep(Duration::from_millis(500));
        kill(child.id(), destroys);
        let started = Instant::now();
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "pvkvm did not end after SIG{stop} + SIG{destroys}"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            status.code(),
            Some(143),
            "SIG{stop}: pvkvm must end by itself with the destroyed status, not be killed: \
             {status:?}\n{stderr}"
        );
        assert!(stderr.contains("destroyed"), "SIG{stop}: {stderr}");
    }
}

/// Host inputs are checked for kind and size before they are read: a FIFO, a
/// character device and an initrd larger than the guest get one line and status 2,
/// without blocking or reading without end.
#[test]
fn unreadable_inputs_are_refused_before_reading() {
    let hello = common::kernel("hello");
    let hello = hello.to_str().unwrap();
    expect_refused(&["run", "--kernel", "/dev/zero"], "character device");
    let dir = std::env::temp_dir().join(format!("pvkvm-fifo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fifo = dir.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .is_ok_and(|s| s.success());
    assert!(made, "mkfifo");
    expect_refused(
        &["run", "--kernel", hello, "--initrd", fifo.to_str().unwrap()],
        "FIFO",
    );
    let big = dir.join("big-initrd");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len(96 << 20).unwrap();
    expect_refused(
        &[
            "run",
            "--kernel",
            hello,
            "--initrd",
            big.to_str().unwrap(),
            "--memory",
            "64M",
        ],
        "initrd",
    );
    let _ = std::fs::remove_dir_all(&dir);
    // A usage error (clap's message) and status 2, not a panic on the clock's overflow.
    let out = pvkvm(&[
        "run",
        "--kernel",
        hello,
        "--timeout",
        "18446744073709551615",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not in 1..="),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts `preempt_long_calls` in its `mode=huge` (a multicall of the maximal count,
/// 2^32 - 1 entries over an aliased page: hours of work in one hypercall) with `extra`
/// arguments, and returns once the guest is inside that multicall.
fn start_huge_multicall(extra: &[&str]) -> (std::process::Child, std::time::Instant) {
    start_long_calls(
        "mode=huge",
        extra,
        "huge multicall: 4294967295 entries, entering",
    )
}

/// Starts `preempt_long_calls` with `cmdline` and `extra` arguments, and returns once
/// its console has printed a line containing `marker`.
fn start_long_calls(
    cmdline: &str,
    extra: &[&str],
    marker: &str,
) -> (std::process::Child, std::time::Instant) {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    common::require_kvm();
    let kernel = common::kernel("preempt_long_calls");
    let started = std::time::Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvkvm"))
        .args(["run", "--kernel", kernel.to_str().unwrap()])
        .args(["--cmdline", cmdline])
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pvkvm starts");
    let stdout = child.stdout.take().expect("piped");
    let mut lines = std::io::BufReader::new(stdout).lines();
    let entered = lines.any(|l| l.is_ok_and(|l| l.contains(marker)));
    if !entered {
        let out = child.wait_with_output().unwrap();
        panic!(
            "the guest never printed {marker:?}:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The rest of the console goes nowhere (the reader ends with the process).
    std::thread::spawn(move || lines.for_each(drop));
    (child, started)
}

/// Waits for `child` to end, at most `limit`; returns its status and stderr.
fn wait_at_most(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> (std::process::ExitStatus, std::time::Instant, String) {
    let begun = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if begun.elapsed() > limit {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "pvkvm did not end within {limit:?}:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let ended = std::time::Instant::now();
    let out = child.wait_with_output().unwrap();
    (
        status,
        ended,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A stop request in the middle of a hypercall of the maximal count is served within a
/// second: the multicall is preempted every millisecond or so, and between two slices
/// the vCPU thread sees the request (before preemption, one such multicall ignored
/// SIGTERM for minutes). The guest cannot power off, so the second request destroys it.
#[test]
fn a_stop_request_ends_a_maximal_multicall_within_a_second() {
    use std::time::Duration;
    let (child, _) = start_huge_multicall(&["--timeout", "120"]);
    std::thread::sleep(Duration::from_millis(500));
    let pid = child.id();
    let asked = std::time::Instant::now();
    kill(pid, "TERM");
    std::thread::sleep(Duration::from_millis(50));
    kill(pid, "TERM");
    let (status, ended, stderr) = wait_at_most(child, Duration::from_secs(20));
    let latency = ended.duration_since(asked);
    eprintln!("SIGTERM to exit during a maximal multicall: {latency:?}");
    assert_eq!(status.code(), Some(143), "{stderr}");
    assert!(stderr.contains("destroyed"), "{stderr}");
    assert!(
        latency < Duration::from_secs(1),
        "pvkvm took {latency:?} to stop after SIGTERM:\n{stderr}"
    );
}

/// `--timeout` ends a maximal multicall on time too.
#[test]
fn timeout_ends_a_maximal_multicall_on_time() {
    use std::time::Duration;
    let (child, started) = start_huge_multicall(&["--timeout", "2"]);
    let (status, ended, stderr) = wait_at_most(child, Duration::from_secs(20));
    let took = ended.duration_since(started);
    eprintln!("--timeout 2 during a maximal multicall: pvkvm ended after {took:?}");
    assert_eq!(status.code(), Some(124), "{stderr}");
    assert!(
        took < Duration::from_secs(3),
        "--timeout 2 took {took:?}:\n{stderr}"
    );
    assert!(
        stderr.contains("multicall("),
        "the diagnostic shows the multicall continuing:\n{stderr}"
    );
}

/// A hostile `mmu_update` of 2^26 requests over one aliased page of requests (each one a
/// pagetable store the shim must repeat inside the VM) keeps pvkvm's memory small: the
/// posted-store queue is emptied every exit, and an exit ends after its budget or 64 Ki
/// queued stores (docs/architecture.md, "Bounded work per exit"). Before, the whole batch
/// was one exit and its queue grew by 16 bytes a request (1 GiB here), and `--timeout`
/// could not end it.
#[test]
fn a_hostile_mmu_update_keeps_vmm_memory_bounded() {
    use std::time::Duration;
    let (mut child, started) = start_long_calls(
        "mc=0 me=0 mu=67108864",
        &["--timeout", "3"],
        "multicall of 0 entries",
    );
    let status_file = format!("/proc/{}/status", child.id());
    let kib = |field: &str| -> Option<u64> {
        let status = std::fs::read_to_string(&status_file).ok()?;
        let line = status.lines().find(|l| l.starts_with(field))?;
        line.split_whitespace().nth(1)?.parse().ok()
    };
    let mut peak = 0;
    while child.try_wait().unwrap().is_none() {
        peak = peak.max(kib("VmHWM:").unwrap_or(0));
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("--timeout 3 did not end the batch; resident memory peaked at {peak} KiB");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let (status, _, stderr) = wait_at_most(child, Duration::from_secs(1));
    eprintln!("peak RSS during a 2^26-request mmu_update: {peak} KiB");
    assert_eq!(status.code(), Some(124), "{stderr}");
    assert!(peak > 0, "no /proc status read");
    assert!(
        peak < 64 * 1024,
        "pvkvm's resident memory reached {peak} KiB:\n{stderr}"
    );
}
