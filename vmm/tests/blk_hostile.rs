//! The block backend against a hostile frontend: the `hostile_blkfront` test kernel
//! (guest-images/src/bin/hostile_blkfront.rs) connects to `device/vbd/51712` (xvda) like
//! Linux's xen-blkfront, then sends good requests and bad ones (grant references past the
//! table or never filled in, a frame it does not own, a read into a read-only grant or
//! into its own pagetable, bad segment counts and sector ranges, an unknown operation, a
//! ring whose `req_prod` runs 1000 ahead). Every case must get Xen's answer, the disk
//! must change only where the good write went, and pvkvm must end normally.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// Image size: 1 MiB, 2048 sectors.
const IMAGE_SIZE: usize = 1 << 20;
/// The sector the kernel's write case writes (`WRITE_SECTOR` in hostile_blkfront.rs).
const WRITE_SECTOR: usize = 9;
const SECTOR: usize = 512;

/// Byte `i` of the image before the run.
fn image_byte(i: usize) -> u8 {
    (i % 251) as u8
}

/// Byte `i` of what the kernel writes to [`WRITE_SECTOR`] (`written_byte` there).
fn written_byte(i: usize) -> u8 {
    ((i as u64 * 7 + 3) as u8) ^ 0x5a
}

/// The case lines every full run must print, each ending in ` ok`.
const CASES: &[&str] = &[
    "connect",
    "good-read",
    "bad-gref",
    "unfilled-grant",
    "foreign-frame",
    "readonly-grant",
    "pagetable-page",
    "too-many-segments",
    "zero-segments",
    "bad-sector-range",
    "past-end",
    "unknown-op",
    "write",
    "read-back",
    "flush",
    "ring-overflow",
];

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!("pvkvm-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs `hostile_blkfront` with `extra` pvkvm arguments; (status, console, stderr, time).
fn run(extra: &[&str]) -> (Option<i32>, String, String, Duration) {
    common::require_kvm();
    let kernel = common::kernel("hostile_blkfront");
    let mut args = vec![
        "run",
        "--kernel",
        kernel.to_str().expect("utf-8 path"),
        "--timeout",
        "60",
    ];
    args.extend_from_slice(extra);
    let start = Instant::now();
    let out = common::pvkvm(&args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        start.elapsed(),
    )
}

fn case_lines(console: &str) -> Vec<&str> {
    console
        .lines()
        .filter(|l| l.starts_with("HOSTILE-BLK ") && *l != "HOSTILE-BLK done")
        .collect()
}

#[test]
fn hostile_blkfront_gets_xen_answers_and_the_disk_changes_only_where_written() {
    let tmp = TempDir::new("blk-hostile");
    let image = tmp.0.join("disk.img");
    let pattern: Vec<u8> = (0..IMAGE_SIZE).map(image_byte).collect();
    std::fs::write(&image, &pattern).expect("write the disk image");
    let disk = format!("{},vdev=xvda", image.to_str().expect("utf-8 path"));

    let (status, console, stderr, _) = run(&["--disk", &disk]);
    let report =
        format!("(status {status:?})\n--- console ---\n{console}\n--- pvkvm ---\n{stderr}");

    assert!(
        !(status == Some(2) && stderr.contains("--disk")),
        "pvkvm refused `--disk {disk}`: the block backend and its --disk option have not landed {report}"
    );
    let lines = case_lines(&console);
    let bad: Vec<&&str> = lines.iter().filter(|l| !l.ends_with(" ok")).collect();
    assert!(bad.is_empty(), "cases failed: {bad:?} {report}");
    for case in CASES {
        let prefix = format!("HOSTILE-BLK {case} ");
        assert!(
            lines.iter().any(|l| l.starts_with(&prefix)),
            "no line for case {case} {report}"
        );
    }
    assert!(
        lines.contains(&"HOSTILE-BLK ring-overflow survived ok"),
        "the ring-overflow case did not report survival {report}"
    );
    assert!(
        console.lines().any(|l| l == "HOSTILE-BLK done"),
        "no 'HOSTILE-BLK done' {report}"
    );
    assert_eq!(status, Some(0), "pvkvm did not exit 0 {report}");

    let after = std::fs::read(&image).expect("read the disk image back");
    assert_eq!(after.len(), IMAGE_SIZE, "the image changed size {report}");
    let written = WRITE_SECTOR * SECTOR..(WRITE_SECTOR + 1) * SECTOR;
    for (i, &b) in after.iter().enumerate() {
        let want = if written.contains(&i) {
            written_byte(i - written.start)
        } else {
            image_byte(i)
        };
        assert_eq!(
            b,
            want,
            "image byte {i} (sector {}) is {b:#x}, expected {want:#x} {report}",
            i / SECTOR
        );
    }
}

/// Without a disk there is no `device/vbd/51712`: the kernel says so at once (its waits
/// are bounded) and powers off.
#[test]
fn hostile_blkfront_without_a_backend_says_so_and_powers_off() {
    let (status, console, stderr, took) = run(&[]);
    let report =
        format!("(status {status:?})\n--- console ---\n{console}\n--- pvkvm ---\n{stderr}");
    assert!(
        console.lines().any(|l| {
            l
            == "HOSTILE-BLK connect status=none FAIL: no backend (device/vbd/51712/backend: ENOENT)"
        }),
        "no 'no backend' line {report}"
    );
    assert!(
        console.lines().any(|l| l == "HOSTILE-BLK done"),
        "no 'HOSTILE-BLK done' {report}"
    );
    assert_eq!(status, Some(0), "pvkvm did not exit 0 {report}");
    assert!(took < Duration::from_secs(30), "took {took:?} {report}");
}

/// A backend that never reaches InitWait (a node of the guest's own, held in state 1):
/// the wait is bounded (10 s), reported, and the kernel powers off.
#[test]
fn hostile_blkfront_wait_for_a_stuck_backend_is_bounded() {
    let (status, console, stderr, took) = run(&["--cmdline", "stuck-backend"]);
    let report =
        format!("(status {status:?})\n--- console ---\n{console}\n--- pvkvm ---\n{stderr}");
    assert!(
        console
            .lines()
            .any(|l| l
                .starts_with("HOSTILE-BLK connect status=none FAIL: backend state stayed Some(1)")),
        "no bounded-wait FAIL line {report}"
    );
    assert!(
        console.lines().any(|l| l == "HOSTILE-BLK done"),
        "no 'HOSTILE-BLK done' {report}"
    );
    assert_eq!(status, Some(0), "pvkvm did not exit 0 {report}");
    assert!(took < Duration::from_secs(45), "took {took:?} {report}");
}
