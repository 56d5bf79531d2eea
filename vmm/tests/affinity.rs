//! Pinning vCPU threads to host CPUs (`--cpus`, xl.cfg `cpus`): the threads of a running
//! guest have the affinity asked for, and a CPU the host lacks is refused before boot.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The `Cpus_allowed_list` of each of `pid`'s threads named `vcpuN`, by name.
fn vcpu_affinities(pid: u32) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let Ok(comm) = std::fs::read_to_string(dir.join("comm")) else {
            continue;
        };
        let comm = comm.trim().to_string();
        if !comm.starts_with("vcpu") {
            continue;
        }
        let Ok(status) = std::fs::read_to_string(dir.join("status")) else {
            continue;
        };
        if let Some(list) = status
            .lines()
            .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        {
            out.push((comm, list.trim().to_string()));
        }
    }
    out.sort();
    out
}

/// `--vcpus 2 --cpus 0`: both vCPU threads of a running guest (the `spin` kernel, which
/// runs until the watchdog stops it) may run on CPU 0 only.
#[test]
fn vcpu_threads_are_pinned() {
    common::require_kvm();
    let kernel = common::kernel("spin");
    let mut child = Command::new(env!("CARGO_BIN_EXE_pvkvm"))
        .args([
            "run",
            "--kernel",
            kernel.to_str().expect("utf-8 path"),
            "--vcpus",
            "2",
            "--cpus",
            "0",
            "--timeout",
            "20",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("pvkvm runs");
    let pid = child.id();
    // The threads pin themselves as they start: wait until both show the set (or give up
    // and report what they show).
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        seen = vcpu_affinities(pid);
        if seen.len() == 2 && seen.iter().all(|(_, l)| l == "0") {
            break;
        }
        if child.try_wait().expect("wait").is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let out = child.wait_with_output().expect("pvkvm ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        seen,
        [
            ("vcpu0".to_string(), "0".to_string()),
            ("vcpu1".to_string(), "0".to_string())
        ],
        "the vCPU threads' Cpus_allowed_list; pvkvm said:\n{stderr}"
    );
    assert!(
        !stderr.contains("runs unpinned"),
        "pinning failed:\n{stderr}"
    );
}

/// A CPU the host lacks (`--cpus 999`) is refused before the guest is built: exit
/// status 2, the CPU named, nothing on the console.
#[test]
fn a_cpu_the_host_lacks_fails_before_boot() {
    common::require_kvm();
    let kernel = common::kernel("hello");
    let out = common::pvkvm(&[
        "run",
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
        "--vcpus",
        "2",
        "--cpus",
        "999",
        "--timeout",
        "20",
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains("cpus: CPU 999 does not exist on this host"),
        "stderr:\n{stderr}"
    );
    assert!(stdout.is_empty(), "the guest ran:\n{stdout}");
}

/// The same refusal from an xl.cfg's `cpus`, and a NUMA form refused at the key's line.
#[test]
fn xl_cfg_cpus_refusals() {
    common::require_kvm();
    let kernel = common::kernel("hello");
    let dir = std::env::temp_dir().join(format!("pvkvm-affinity-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let cfg = dir.join("guest.cfg");
    let write = |cpus: &str| {
        std::fs::write(
            &cfg,
            format!(
                "name = 'a'\nkernel = '{}'\nvcpus = 2\ncpus = {cpus}\n",
                kernel.display()
            ),
        )
        .expect("write cfg")
    };
    let run = || {
        let out = common::pvkvm(&["run", cfg.to_str().unwrap(), "--timeout", "20"]);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    write("['0', '999']");
    let (status, stdout, stderr) = run();
    assert_eq!(status, Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("CPU 999 does not exist"), "{stderr}");
    assert!(stdout.is_empty(), "the guest ran:\n{stdout}");

    write("'nodes:0'");
    let (status, _, stderr) = run();
    assert_eq!(status, Some(2), "stderr:\n{stderr}");
    assert!(
        stderr.contains("guest.cfg:4: cpus: \"nodes:0\" names NUMA nodes"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
