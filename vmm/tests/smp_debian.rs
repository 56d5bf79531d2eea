//! Issue 13's end-to-end checks: Debian's cloud kernel with several vCPUs (more than this
//! 2-core host has, too) sees them all, runs a parallel job on every vCPU with no oops,
//! warning or RCU stall, and takes a vCPU offline and back online again and again.

mod common;

/// First command of every run: a wide terminal (long commands echo on one line) and no
/// job-control notices or kernel messages on the console (the answers are the last
/// lines).
const QUIET: &str = "stty cols 4000; set +m; dmesg -n 1; echo ready";

/// What the kernel says when something went wrong: an oops, a BUG, a warning, a
/// panic, an RCU stall or a soft lockup.
const TROUBLE: &str =
    "dmesg | grep -c -E 'BUG:|Oops|WARNING: CPU:|Kernel panic|rcu.*stall|soft lockup|hung_task'";

/// One checksum job per CPU, in parallel; prints how many finished with the right sum
/// (64 MiB of zeros each).
const PARALLEL_JOB: &str = "n=$(nproc); for i in $(seq $n); do (dd if=/dev/zero bs=1M count=64 2>/dev/null | sha256sum > /tmp/sum.$i) & done; wait; cat /tmp/sum.* | grep -c 3b6a07d0d404fab4e23b6d34bc6696a6a312dd92821332385e5af7c01c421351";

fn boots_with(vcpus: u32) {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let n = vcpus.to_string();
    let run = common::debian_shell(
        &kernel,
        "console=hvc0",
        &["--vcpus", &n, "--memory", "1G"],
        &[
            QUIET,
            "nproc",
            "grep -c ^processor /proc/cpuinfo",
            PARALLEL_JOB,
            TROUBLE,
        ],
    );
    assert_eq!(
        run.answers,
        ["ready", n.as_str(), n.as_str(), n.as_str(), "0"],
        "expected [nproc, cpuinfo processors, parallel jobs with the right sum, kernel \
         warnings]; console:\n{}",
        run.console
    );
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
}

#[test]
fn two_vcpus_boot_and_share_a_parallel_job() {
    boots_with(2);
}

#[test]
fn four_vcpus_on_a_two_core_host() {
    boots_with(4);
}

/// CPU hot-unplug and re-plug from inside the guest, five times, with work running
/// between: every cycle ends with both CPUs online and nothing in dmesg.
#[test]
fn a_vcpu_goes_offline_and_online_again() {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let cycle = "c=0; for i in 1 2 3 4 5; do echo 0 > /sys/devices/system/cpu/cpu1/online && \
                 [ \"$(cat /sys/devices/system/cpu/online)\" = 0 ] && \
                 echo 1 > /sys/devices/system/cpu/cpu1/online && \
                 [ \"$(cat /sys/devices/system/cpu/online)\" = 0-1 ] && \
                 dd if=/dev/zero bs=1M count=8 2>/dev/null | sha256sum >/dev/null && c=$((c+1)); done; echo $c";
    let run = common::debian_shell(
        &kernel,
        "console=hvc0",
        &["--vcpus", "2"],
        &[QUIET, cycle, "cat /sys/devices/system/cpu/online", TROUBLE],
    );
    assert_eq!(
        run.answers,
        ["ready", "5", "0-1", "0"],
        "expected [completed offline/online cycles, CPUs online, kernel warnings]; \
         console:\n{}",
        run.console
    );
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
}

/// `vcpus = 4` in an xl.cfg gives a guest that uses four vCPUs, as `--vcpus 4` does.
#[test]
fn an_xl_config_with_four_vcpus() {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let initrd = common::repo_root().join("guest-images/cache/initramfs-default.cpio.gz");
    let dir = std::env::temp_dir().join(format!("pvkvm-smp-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("smp.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"smp\"\ntype = \"pv\"\nmemory = 512\nvcpus = 4\nkernel = \"{}\"\n\
             ramdisk = \"{}\"\nextra = \"console=hvc0\"\n",
            kernel.display(),
            initrd.display()
        ),
    )
    .unwrap();
    let run = common::debian_shell_args(
        &[cfg.to_str().unwrap(), "--timeout", "300"],
        &[QUIET, "nproc", TROUBLE],
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(
        run.answers,
        ["ready", "4", "0"],
        "expected [nproc, kernel warnings]; console:\n{}",
        run.console
    );
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
}
