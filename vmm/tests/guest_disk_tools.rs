//! What the default guest needs for disks and NICs: its initramfs carries Debian's
//! xen-blkfront and xen-netfront modules and /init loads them; and
//! guest-images/scripts/make-ext4-image.sh makes an ext4 image from a directory without
//! root.

mod common;

use std::process::Command;

/// The default guest boots with both frontend modules loaded (from the kernel's own
/// .deb, put into the initramfs by build-default-guest.sh).
#[test]
fn default_guest_loads_the_xen_frontend_modules() {
    let Some(kernel) = common::debian_kernel() else {
        return;
    };
    let run = common::debian_shell(
        &kernel,
        "console=hvc0 quiet",
        &[],
        &[
            "grep -c -E '^xen_(blk|net)front ' /proc/modules",
            "dmesg | grep -c -E 'BUG:|Oops|WARNING: CPU:|Kernel panic'",
        ],
    );
    assert_eq!(
        run.answers,
        ["2", "0"],
        "expected [frontend modules loaded, kernel warnings]; rebuild the initramfs with \
         guest-images/scripts/build-default-guest.sh if it predates the modules; console:\n{}",
        run.console
    );
    assert_eq!(run.status, Some(0), "pvkvm:\n{}", run.stderr);
}

/// make-ext4-image.sh OUT SIZE_MIB DIR: a consistent ext4 image of that size holding
/// DIR's files; a DIR that does not fit fails and leaves no OUT.
#[test]
fn make_ext4_image_from_a_directory() {
    let script = common::repo_root().join("guest-images/scripts/make-ext4-image.sh");
    let tmp = std::env::temp_dir().join(format!("pvkvm-ext4-{}", std::process::id()));
    let src = tmp.join("src");
    std::fs::create_dir_all(src.join("etc")).expect("mkdir");
    std::fs::write(src.join("etc/hostname"), "pvkvm-guest\n").expect("write");
    let out = tmp.join("disk.img");

    let status = Command::new(&script)
        .arg(&out)
        .arg("8")
        .arg(&src)
        .status()
        .expect("make-ext4-image.sh runs");
    assert!(status.success(), "make-ext4-image.sh failed: {status}");
    assert_eq!(
        std::fs::metadata(&out).expect("image exists").len(),
        8 << 20,
        "image size"
    );
    let path = format!(
        "PATH={}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    let fsck = Command::new("sh")
        .args(["-c", &format!("{path} e2fsck -fn \"$0\"")])
        .arg(&out)
        .output()
        .expect("e2fsck runs");
    assert!(
        fsck.status.success(),
        "e2fsck: {}",
        String::from_utf8_lossy(&fsck.stdout)
    );
    let cat = Command::new("sh")
        .args([
            "-c",
            &format!("{path} debugfs -R 'cat /etc/hostname' \"$0\""),
        ])
        .arg(&out)
        .output()
        .expect("debugfs runs");
    assert_eq!(String::from_utf8_lossy(&cat.stdout), "pvkvm-guest\n");

    // 4 MiB of data cannot fit in a 2 MiB filesystem.
    std::fs::write(src.join("big"), vec![0x5au8; 4 << 20]).expect("write");
    let small = tmp.join("small.img");
    let status = Command::new(&script)
        .arg(&small)
        .arg("2")
        .arg(&src)
        .status()
        .expect("make-ext4-image.sh runs");
    assert!(
        !status.success(),
        "a directory that does not fit was accepted"
    );
    assert!(!small.exists(), "a failed run left {}", small.display());
    let _ = std::fs::remove_dir_all(&tmp);
}
