//! Debian's cloud kernel on pvkvm's blkback: an ext4 image mounted, written, synced and
//! checked from the host; durability across a `kill -9` of pvkvm after the guest's sync;
//! several disks and per-partition devices under the names the command line gives.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A scratch directory removed at the end.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("pvkvm-disk-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("scratch dir");
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// An ext4 image of `mib` MiB holding `files` (name, contents), made without root.
fn ext4_image(dir: &Path, name: &str, mib: u32, files: &[(&str, &str)]) -> PathBuf {
    let src = dir.join(format!("{name}.src"));
    std::fs::create_dir_all(&src).expect("mkdir");
    for (f, body) in files {
        std::fs::write(src.join(f), body).expect("write");
    }
    let out = dir.join(name);
    let status = Command::new(common::repo_root().join("guest-images/scripts/make-ext4-image.sh"))
        .arg(&out)
        .arg(mib.to_string())
        .arg(&src)
        .status()
        .expect("make-ext4-image.sh runs");
    assert!(status.success(), "make-ext4-image.sh failed: {status}");
    out
}

fn e2fs_tool(tool: &str) -> Command {
    let mut c = Command::new(tool);
    c.env(
        "PATH",
        format!(
            "{}:/usr/sbin:/sbin",
            std::env::var("PATH").unwrap_or_default()
        ),
    );
    c
}

/// `e2fsck -fn`: a read-only forced check; true when the filesystem is clean.
fn fsck_clean(img: &Path) -> (bool, String) {
    let out = e2fs_tool("e2fsck")
        .arg("-fn")
        .arg(img)
        .output()
        .expect("e2fsck runs (e2fsprogs: guest-images/scripts/install-deps.sh)");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// A file's contents read from the image with debugfs (no mount).
fn debugfs_cat(img: &Path, file: &str) -> Vec<u8> {
    let out = e2fs_tool("debugfs")
        .arg("-R")
        .arg(format!("cat {file}"))
        .arg(img)
        .output()
        .expect("debugfs runs");
    out.stdout
}

/// The guest's command that mounts the first disk on /mnt (answer: `mounted`).
fn mount_cmds() -> [&'static str; 1] {
    ["mkdir -p /mnt && mount /dev/xvda /mnt && echo mounted"]
}

/// Written by the host, read by the guest; written by the guest, synced, checked by the
/// host (fsck clean, the file there) and read again by the guest on the next boot.
#[test]
fn an_ext4_disk_is_written_synced_and_clean_across_boots() {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let dir = Scratch::new("ext4");
    let img = ext4_image(&dir.0, "disk.img", 64, &[("greeting", "hello-from-host\n")]);
    let disk = format!("{},vdev=xvda", img.display());

    let mut cmds = mount_cmds().to_vec();
    cmds.extend([
        "cat /mnt/greeting",
        "echo written-by-guest > /mnt/new && echo ok",
        "dd if=/dev/urandom of=/mnt/big bs=64k count=48 2>/dev/null; echo $?",
        "sync && echo synced",
        "md5sum /mnt/big | cut -c1-32",
        "umount /mnt && echo unmounted",
    ]);
    let run = common::debian_shell(&kernel, "console=hvc0 quiet", &["--disk", &disk], &cmds);
    let guest_md5 = run.answers.get(5).cloned().unwrap_or_default();
    assert_eq!(
        run.answers,
        [
            "mounted",
            "hello-from-host",
            "ok",
            "0",
            "synced",
            guest_md5.as_str(),
            "unmounted"
        ],
        "console:\n{}",
        run.console
    );
    assert_eq!(guest_md5.len(), 32, "an md5 from the guest: {guest_md5}");
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
    let (clean, report) = fsck_clean(&img);
    assert!(
        clean,
        "the image is not clean after the guest's umount:\n{report}"
    );
    assert_eq!(debugfs_cat(&img, "/new"), b"written-by-guest\n");
    let big = debugfs_cat(&img, "/big");
    assert_eq!(big.len(), 48 * 65536, "size of the file the guest wrote");
    assert_eq!(
        md5_hex(&big),
        guest_md5,
        "the host reads what the guest wrote"
    );

    // The next boot sees what the last one wrote.
    let mut cmds = mount_cmds().to_vec();
    cmds.extend(["cat /mnt/new", "umount /mnt && echo unmounted"]);
    let run = common::debian_shell(&kernel, "console=hvc0 quiet", &["--disk", &disk], &cmds);
    assert_eq!(
        run.answers,
        ["mounted", "written-by-guest", "unmounted"],
        "console:\n{}",
        run.console
    );
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
}

/// What the guest synced survives `kill -9` of pvkvm: the flush reached the host's
/// disk before the guest's sync returned.
#[test]
fn data_the_guest_synced_survives_kill_9() {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    common::require_kvm();
    let dir = Scratch::new("kill9");
    let img = ext4_image(&dir.0, "disk.img", 64, &[("greeting", "hi\n")]);
    let disk = format!("{},vdev=xvda", img.display());
    let initrd = common::repo_root().join("guest-images/cache/initramfs-default.cpio.gz");
    let mut console =
        common::DebianConsole::spawn(&kernel, &initrd, "console=hvc0 quiet", &["--disk", &disk]);
    if !console.wait_for("~ # ", Duration::from_secs(240)) {
        panic!("no shell prompt; console:\n{}", console.kill());
    }
    // 8 MiB of random data, synced; the guest prints its md5 only after sync returned.
    console.send("mkdir -p /mnt && mount /dev/xvda /mnt && echo MOUNT\"\"ED");
    let mounted = console.wait_for("MOUNTED", Duration::from_secs(60));
    console.send(
        "dd if=/dev/urandom of=/mnt/kept bs=64k count=128 2>/dev/null && sync && echo SYNC\"\"ED",
    );
    let synced = mounted && console.wait_for("SYNCED", Duration::from_secs(120));
    console.send("echo MD5=$(md5sum /mnt/kept | cut -c1-32)");
    // The echo of the command shows "MD5=$(", never 32 hex digits.
    let find_md5 = || {
        console
            .text()
            .lines()
            .filter_map(|l| l.trim().strip_prefix("MD5="))
            .map(|l| l.chars().take(32).collect::<String>())
            .find(|m| m.len() == 32 && m.chars().all(|c| c.is_ascii_hexdigit()))
    };
    let started = Instant::now();
    let mut guest_md5 = String::new();
    while synced && started.elapsed() < Duration::from_secs(60) {
        if let Some(m) = find_md5() {
            guest_md5 = m;
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    // Then more data that is never synced, and no clean shutdown at all.
    let _ = console.try_send("dd if=/dev/urandom of=/mnt/lost bs=64k count=64 2>/dev/null");
    std::thread::sleep(Duration::from_millis(300));
    let text = console.kill();
    assert!(
        guest_md5.len() == 32,
        "the guest did not finish its sync and checksum; console:\n{}",
        text
    );

    // Recover the journal on a copy (as the next mount would) and read the file.
    let copy = dir.0.join("after-kill.img");
    std::fs::copy(&img, &copy).expect("copy");
    let fix = e2fs_tool("e2fsck")
        .arg("-fy")
        .arg(&copy)
        .output()
        .expect("e2fsck runs");
    // 0: clean; 1: errors corrected (a replayed journal counts). Anything else is damage.
    assert!(
        matches!(fix.status.code(), Some(0) | Some(1)),
        "e2fsck after kill -9: {:?}\n{}",
        fix.status,
        String::from_utf8_lossy(&fix.stdout)
    );
    let kept = debugfs_cat(&copy, "/kept");
    assert_eq!(
        kept.len(),
        128 * 65536,
        "size of the synced file after kill -9"
    );
    assert_eq!(
        md5_hex(&kept),
        guest_md5,
        "the synced file's contents after kill -9"
    );
}

/// Three disks: the next free whole disk, a read-only one by name, and one partition
/// device; the guest sees exactly those names, sizes and the read-only flag.
#[test]
fn several_disks_and_partition_devices_appear_under_their_names() {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let dir = Scratch::new("names");
    let mk = |name: &str, mib: u64| {
        let p = dir.0.join(name);
        let f = std::fs::File::create(&p).expect("create");
        f.set_len(mib << 20).expect("size");
        p
    };
    let a = mk("a.img", 8);
    let b = mk("b.img", 16);
    let c = mk("c.img", 4);
    let disks = [
        format!("{}", a.display()),
        format!("{},ro,vdev=xvdb", b.display()),
        format!("{},vdev=xvdc1", c.display()),
    ];
    let mut extra = Vec::new();
    for d in &disks {
        extra.push("--disk");
        extra.push(d.as_str());
    }
    let run = common::debian_shell(
        &kernel,
        "console=hvc0 quiet",
        &extra,
        &[
            "echo $(ls /sys/block | grep xvd)",
            "cd /sys/block && echo $(cat xvda/size xvdb/size xvdc1/size)",
            "echo $(cat xvda/ro xvdb/ro xvdc1/ro)",
            "dd if=/dev/zero of=/dev/xvdb count=1 2>/dev/null; echo $?",
        ],
    );
    assert_eq!(
        run.answers,
        ["xvda xvdb xvdc1", "16384 32768 8192", "0 1 0", "1"],
        "console:\n{}",
        run.console
    );
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
}

/// One image given twice (or in use by another pvkvm) is refused with its name before
/// anything starts; so is an image that does not exist.
#[test]
fn an_image_in_use_or_missing_is_refused_clearly() {
    common::require_kvm();
    let dir = Scratch::new("inuse");
    let img = dir.0.join("x.img");
    std::fs::File::create(&img)
        .expect("create")
        .set_len(1 << 20)
        .expect("size");
    let img_s = img.to_str().expect("utf-8");
    let kernel = common::kernel("hello");
    let out = common::pvkvm(&[
        "run",
        "--kernel",
        kernel.to_str().expect("utf-8"),
        "--disk",
        img_s,
        "--disk",
        &format!("{img_s},vdev=xvdb"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(
        err.contains("in use") && err.contains("x.img"),
        "stderr: {err}"
    );
    let missing = dir.0.join("missing.img");
    let out = common::pvkvm(&[
        "run",
        "--kernel",
        kernel.to_str().expect("utf-8"),
        "--disk",
        missing.to_str().expect("utf-8"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_ne!(out.status.code(), Some(0));
    assert!(err.contains("missing.img"), "stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
}

/// MD5 of `data` as hex, from the host's md5sum (the guest's busybox md5sum is
/// compared with it).
fn md5_hex(data: &[u8]) -> String {
    let out = Command::new("md5sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().expect("piped").write_all(data)?;
            c.wait_with_output()
        })
        .expect("md5sum runs");
    String::from_utf8_lossy(&out.stdout)[..32].to_string()
}
