//! PV-GRUB, as a Xen user boots it: Debian 12's `grub-x86_64-xen.bin` (GRUB 2 built as a
//! PV kernel, package grub-xen-host) named as the xl.cfg's `kernel`, the guest's disk
//! as its `disk`. GRUB runs as the PV guest, reads the disk through pvkvm's blkback,
//! loads the kernel its grub.cfg names (Debian's generic 6.1 kernel: an xz payload,
//! which GRUB 2.06 can unpack, unlike the cloud kernel's lz4) and starts it through
//! the PV ABI (a new start_info and pagetables built with mmu_update), all in the same
//! domain. The kernel reaches the busybox shell and powers off.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn pv_grub() -> PathBuf {
    let out = Command::new(common::repo_root().join("guest-images/scripts/fetch-pv-grub.sh"))
        .output()
        .expect("fetch-pv-grub.sh runs");
    assert!(
        out.status.success(),
        "fetch-pv-grub.sh failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PathBuf::from(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .expect("a path")
            .trim(),
    )
}

#[test]
fn pv_grub_named_as_the_kernel_boots_the_disks_own_kernel() {
    common::require_kvm();
    let grub = pv_grub();
    let kernel = common::debian_generic_kernel().expect("the generic 6.1 kernel in the cache");
    let initrd = common::repo_root().join("guest-images/cache/initramfs-default.cpio.gz");
    let dir = Scratch(std::env::temp_dir().join(format!("pvkvm-pvgrub-{}", std::process::id())));
    let root = dir.0.join("root");
    std::fs::create_dir_all(root.join("boot/grub")).expect("mkdir");
    std::fs::copy(&kernel, root.join("boot/vmlinuz")).expect("kernel");
    std::fs::copy(&initrd, root.join("boot/initrd.img")).expect("initrd");
    std::fs::write(
        root.join("boot/grub/grub.cfg"),
        "set default=0\nset timeout=0\ninsmod xzio\n\
         menuentry 'Debian generic via PV-GRUB' {\n\
         \tlinux /boot/vmlinuz console=hvc0 quiet pvgrub_marker=1\n\
         \tinitrd /boot/initrd.img\n}\n",
    )
    .expect("grub.cfg");
    let img = dir.0.join("disk.img");
    common::ext4_image_of(&root, &img, 128);
    let cfg = dir.0.join("pvgrub.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"pvgrub\"\nmemory = 1024\nkernel = \"{}\"\ndisk = [ 'file:{},xvda1,w' ]\n",
            grub.display(),
            img.display()
        ),
    )
    .expect("cfg");

    let mut console = common::DebianConsole::spawn_args(&[
        cfg.to_str().expect("utf-8"),
        "--timeout",
        "400",
        "--stall-timeout",
        "0",
    ]);
    let Some(at) = console.wait_for_from("~ # ", 0, Duration::from_secs(300)) else {
        let (c, e) = console.kill_with_stderr();
        panic!("no shell; console:\n{c}\n--- pvkvm ---\n{e}");
    };
    let text = console.text();
    assert!(
        text.contains("Booting `Debian generic via PV-GRUB'"),
        "{text}"
    );
    console.send("cat /proc/cmdline; uname -r");
    assert!(
        console
            .wait_for_from("pvgrub_marker=1", at, Duration::from_secs(30))
            .is_some(),
        "the kernel did not get grub.cfg's command line; console:\n{}",
        console.text()
    );
    let (status, _, stderr) = console.poweroff_and_wait(Duration::from_secs(60));
    assert_eq!(status, Some(0), "{stderr}");
}
