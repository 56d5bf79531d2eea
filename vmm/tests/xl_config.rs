//! An xl.cfg written for Xen boots unchanged: `bootloader = "pygrub"` and a `file:` disk
//! holding a partition-less ext4 filesystem with Debian's kernel, the default initramfs
//! and an update-grub style `grub.cfg`; `on_reboot = "restart"` restarts the domain
//! (reading the boot menu again), then a power-off ends pvkvm with status 0.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn image_with_grub(dir: &Path, kernel: &Path, initrd: &Path) -> PathBuf {
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("boot/grub")).expect("mkdir");
    std::fs::copy(kernel, root.join("boot/vmlinuz-6.1.0-pv")).expect("kernel");
    std::fs::copy(initrd, root.join("boot/initrd.img-6.1.0-pv")).expect("initrd");
    let cfg = r#"### BEGIN /etc/grub.d/00_header ###
if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
set default="0"
set timeout=5
### END /etc/grub.d/00_header ###
### BEGIN /etc/grub.d/10_linux ###
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class os $menuentry_id_option 'gnulinux-simple-1' {
	load_video
	insmod gzio
	if [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
	insmod ext2
	echo	'Loading Linux 6.1.0-pv ...'
	linux	/boot/vmlinuz-6.1.0-pv root=/dev/xvda1 ro console=hvc0 quiet pvkvm_marker=from-grub
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-6.1.0-pv
}
### END /etc/grub.d/10_linux ###
"#;
    std::fs::write(root.join("boot/grub/grub.cfg"), cfg).expect("grub.cfg");
    let img = dir.join("disk.img");
    common::ext4_image_of(&root, &img, 64);
    img
}

#[test]
fn a_pygrub_config_boots_restarts_on_reboot_and_powers_off() {
    common::require_kvm();
    let kernel = common::debian_kernel().expect("Debian kernel in the cache");
    let initrd = common::repo_root().join("guest-images/cache/initramfs-default.cpio.gz");
    let dir = Scratch(std::env::temp_dir().join(format!("pvkvm-xlcfg-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).expect("scratch");
    let img = image_with_grub(&dir.0, &kernel, &initrd);
    let cfg = dir.0.join("guest.cfg");
    std::fs::write(
        &cfg,
        format!(
            "# as written for xl create\nname = \"pv-guest\"\ntype = 'pv'\nmemory = 512\nvcpus = 1\n\
             bootloader = \"pygrub\"\ndisk = [ 'file:{},xvda1,w' ]\nvfb = [ ]\n\
             on_poweroff = 'destroy'\non_reboot = 'restart'\non_crash = 'destroy'\n",
            img.display()
        ),
    )
    .expect("cfg");

    // The config file stands in for --kernel: DebianConsole's helpers still need one,
    // so spawn pvkvm here.
    let mut console =
        common::DebianConsole::spawn_args(&[cfg.to_str().expect("utf-8"), "--timeout", "400"]);
    let Some(first) = console.wait_for_from("~ # ", 0, Duration::from_secs(240)) else {
        let (c, e) = console.kill_with_stderr();
        panic!("no prompt; console:\n{c}\n--- pvkvm ---\n{e}");
    };
    console.send("cat /proc/cmdline");
    assert!(
        console
            .wait_for_from("pvkvm_marker=from-grub", first, Duration::from_secs(30))
            .is_some(),
        "the command line is grub.cfg's"
    );
    let Some(answered) = console.wait_for_from("~ # ", first, Duration::from_secs(30)) else {
        panic!("no prompt after cat");
    };
    console.send("reboot -f");
    // The restarted domain's shell (typing before it runs would be lost, as on Xen).
    let banner = console.wait_for_from("built-in shell", answered, Duration::from_secs(240));
    let second = banner.and_then(|b| console.wait_for_from("~ # ", b, Duration::from_secs(30)));
    let Some(second) = second else {
        let (c, e) = console.kill_with_stderr();
        panic!("no prompt after the reboot; console:\n{c}\n--- pvkvm ---\n{e}");
    };
    assert!(second > first);
    let (status, _, stderr) = console.poweroff_and_wait(Duration::from_secs(60));
    assert_eq!(status, Some(0), "{stderr}");
    assert!(
        stderr.contains("restarting the domain pv-guest"),
        "{stderr}"
    );
    assert_eq!(
        stderr
            .matches("booting 'Debian GNU/Linux' from xvda1 (ext4) /boot/grub/grub.cfg")
            .count(),
        2,
        "the menu is read at each start: {stderr}"
    );
    assert!(stderr.contains("'vfb' is not supported"), "{stderr}");
}
