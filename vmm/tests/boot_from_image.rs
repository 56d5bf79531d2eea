//! `pvkvm::bootloader` over real ext2/3/4 images made with `mkfs.ext{2,3,4} -d`
//! (e2fsprogs; these tests fail, not skip, without it) inside partition tables written
//! here: no table, MBR, GPT, a separate /boot partition, and broken images.

use std::path::{Path, PathBuf};
use std::process::Command;

use pvkvm::backends::blk::{DiskImage, DiskSpec};
use pvkvm::bootloader::{boot_from_disk, list_entries, BootOptions, Error};

const KVER: &str = "6.1.0-57-cloud-amd64";
const UUID: &str = "8a3b7d5e-1f2c-4e6d-9a0b-3c4d5e6f7a8b";

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("pvkvm-boot-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Scratch(p)
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn write(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

fn kernel_bytes() -> Vec<u8> {
    (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect()
}

fn initrd_bytes() -> Vec<u8> {
    (0..100_000u32).map(|i| (i * 13 % 241) as u8).collect()
}

/// Debian 12's grub.cfg shape (update-grub), with paths under `prefix`.
fn grub_cfg(prefix: &str) -> String {
    format!(
        r#"### BEGIN /etc/grub.d/00_header ###
if [ -s $prefix/grubenv ]; then
  set have_grubenv=true
  load_env
fi
if [ "${{next_entry}}" ] ; then
   set default="${{next_entry}}"
   set next_entry=
   save_env next_entry
   set boot_once=true
else
   set default="0"
fi
if [ x"${{feature_menuentry_id}}" = xy ]; then
  menuentry_id_option="--id"
else
  menuentry_id_option=""
fi
export menuentry_id_option
function load_video {{
  if [ x$feature_all_video_module = xy ]; then
    insmod all_video
  fi
}}
if loadfont $font ; then
  set gfxmode=auto
fi
### END /etc/grub.d/00_header ###
### BEGIN /etc/grub.d/10_linux ###
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux --class gnu --class os $menuentry_id_option 'gnulinux-simple-{UUID}' {{
	load_video
	insmod gzio
	if [ x$grub_platform = xxen ]; then insmod xzio; insmod lzopio; fi
	insmod part_msdos
	insmod ext2
	search --no-floppy --fs-uuid --set=root {UUID}
	echo	'Loading Linux {KVER} ...'
	linux	{prefix}/vmlinuz-{KVER} root=UUID={UUID} ro console=hvc0 quiet
	echo	'Loading initial ramdisk ...'
	initrd	{prefix}/initrd.img-{KVER}
}}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-{UUID}' {{
	menuentry 'Debian GNU/Linux, with Linux {KVER}' --class debian $menuentry_id_option 'gnulinux-{KVER}-advanced-{UUID}' {{
		linux	{prefix}/vmlinuz-{KVER} root=UUID={UUID} ro console=hvc0 quiet
		initrd	{prefix}/initrd.img-{KVER}
	}}
	menuentry 'Debian GNU/Linux, with Linux {KVER} (recovery mode)' --class debian $menuentry_id_option 'gnulinux-{KVER}-recovery-{UUID}' {{
		linux	{prefix}/vmlinuz-{KVER} root=UUID={UUID} ro single console=hvc0
		initrd	{prefix}/initrd.img-{KVER}
	}}
}}
### END /etc/grub.d/10_linux ###
"#
    )
}

/// A root filesystem tree with /boot/grub/grub.cfg, the kernel and the initrd.
fn debian_root(dir: &Path) {
    write(dir, "boot/grub/grub.cfg", grub_cfg("/boot").as_bytes());
    write(dir, &format!("boot/vmlinuz-{KVER}"), &kernel_bytes());
    write(dir, &format!("boot/initrd.img-{KVER}"), &initrd_bytes());
    write(dir, "etc/hostname", b"guest\n");
}

/// The bytes of an ext filesystem of `mib` MiB made by `mkfs.<kind> -d dir`.
fn mkfs(kind: &str, mib: u64, dir: &Path, scratch: &Scratch) -> Vec<u8> {
    let img = scratch.path(&format!(
        "fs-{kind}-{}.img",
        dir.file_name().unwrap().to_string_lossy()
    ));
    std::fs::File::create(&img)
        .unwrap()
        .set_len(mib << 20)
        .unwrap();
    let tool = format!("mkfs.{kind}");
    let path = format!(
        "{}:/usr/sbin:/sbin",
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new(&tool)
        .env("PATH", path)
        .args(["-q", "-F", "-m", "0", "-E", "root_owner=0:0", "-d"])
        .arg(dir)
        .arg(&img)
        .output()
        .unwrap_or_else(|e| {
            panic!("{tool} cannot run ({e}): install e2fsprogs (apt-get install e2fsprogs, or guest-images/scripts/install-deps.sh)")
        });
    assert!(
        out.status.success(),
        "{tool} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&img).unwrap()
}

fn mbr_entry(d: &mut [u8], i: usize, boot: u8, sys: u8, first: u64, sectors: u64) {
    let o = 446 + 16 * i;
    d[o] = boot;
    d[o + 4] = sys;
    d[o + 8..o + 12].copy_from_slice(&(first as u32).to_le_bytes());
    d[o + 12..o + 16].copy_from_slice(&(sectors as u32).to_le_bytes());
    d[510] = 0x55;
    d[511] = 0xaa;
}

/// A disk with an MBR and the filesystems as primary partitions from 1 MiB on.
fn mbr_disk(fss: &[&[u8]]) -> Vec<u8> {
    let mut d = vec![0u8; 1 << 20];
    for (i, fs) in fss.iter().enumerate() {
        let first = d.len() as u64 / 512;
        mbr_entry(
            &mut d,
            i,
            if i == 0 { 0x80 } else { 0 },
            0x83,
            first,
            fs.len() as u64 / 512,
        );
        d.extend_from_slice(fs);
    }
    d
}

/// A disk with a GPT: an empty first entry's worth of nothing, then `fs` as entry 2.
fn gpt_disk(fs: &[u8]) -> Vec<u8> {
    let mut d = vec![0u8; 1 << 20];
    let first = d.len() as u64 / 512;
    let last = first + fs.len() as u64 / 512 - 1;
    d.extend_from_slice(fs);
    d.extend_from_slice(&[0u8; 64 * 512]);
    let total = d.len() as u64 / 512;
    mbr_entry(&mut d, 0, 0, 0xee, 1, total - 1);
    let mut table = vec![0u8; 128 * 128];
    // Entry 1: a BIOS boot partition without a filesystem; entry 2: the filesystem.
    table[0..16].copy_from_slice(&[0x48; 16]);
    table[32..40].copy_from_slice(&34u64.to_le_bytes());
    table[40..48].copy_from_slice(&2047u64.to_le_bytes());
    let e = &mut table[128..256];
    e[0..16].copy_from_slice(&[0xaf; 16]);
    e[32..40].copy_from_slice(&first.to_le_bytes());
    e[40..48].copy_from_slice(&last.to_le_bytes());
    let mut h = [0u8; 92];
    h[0..8].copy_from_slice(b"EFI PART");
    h[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes());
    h[12..16].copy_from_slice(&92u32.to_le_bytes());
    h[24..32].copy_from_slice(&1u64.to_le_bytes());
    h[72..80].copy_from_slice(&2u64.to_le_bytes());
    h[80..84].copy_from_slice(&128u32.to_le_bytes());
    h[84..88].copy_from_slice(&128u32.to_le_bytes());
    h[88..92].copy_from_slice(&crc32(&table).to_le_bytes());
    let crc = crc32(&h);
    h[16..20].copy_from_slice(&crc.to_le_bytes());
    d[512..604].copy_from_slice(&h);
    d[1024..1024 + table.len()].copy_from_slice(&table);
    d
}

/// CRC-32 (IEEE), bit by bit: independent of the crate the code under test uses.
fn crc32(b: &[u8]) -> u32 {
    let mut c = !0u32;
    for &x in b {
        c ^= u32::from(x);
        for _ in 0..8 {
            c = if c & 1 != 0 {
                (c >> 1) ^ 0xedb8_8320
            } else {
                c >> 1
            };
        }
    }
    !c
}

fn spec(scratch: &Scratch, name: &str, bytes: &[u8]) -> DiskSpec {
    let p = scratch.path(name);
    std::fs::write(&p, bytes).unwrap();
    DiskSpec::parse(&format!("{},vdev=xvda", p.display())).unwrap()
}

/// `expect_err` without printing a whole kernel when the boot wrongly succeeds.
trait MustFail {
    fn must_fail(self, why: &str) -> Error;
}

impl MustFail for Result<pvkvm::bootloader::BootImage, Error> {
    fn must_fail(self, why: &str) -> Error {
        match self {
            Ok(img) => panic!("{why}: booted {:?} from {}", img.title, img.source),
            Err(e) => e,
        }
    }
}

fn check_debian(img: &pvkvm::bootloader::BootImage) {
    assert_eq!(img.kernel, kernel_bytes());
    assert_eq!(img.initrd.as_deref(), Some(&initrd_bytes()[..]));
    assert_eq!(
        img.cmdline,
        format!("root=UUID={UUID} ro console=hvc0 quiet")
    );
    assert_eq!(img.title, "Debian GNU/Linux");
}

#[test]
fn partitionless_ext4_grub_cfg() {
    let s = Scratch::new("plain");
    let root = s.path("root");
    debian_root(&root);
    let disk = spec(&s, "disk.img", &mkfs("ext4", 8, &root, &s));
    let img = boot_from_disk(&disk, &BootOptions::default()).unwrap();
    check_debian(&img);
    assert_eq!(img.source, "xvda (ext4) /boot/grub/grub.cfg");
    assert!(img.warnings.is_empty());

    // The image is closed again: the block backend can take its exclusive lock.
    DiskImage::open_raw(&disk.path, false).expect("the image is not left locked");

    let rec = BootOptions {
        entry: Some("2".into()),
        args: Some("xen_blkfront.max=8".into()),
        ..BootOptions::default()
    };
    let img = boot_from_disk(&disk, &rec).unwrap();
    assert!(img.title.ends_with("(recovery mode)"), "{}", img.title);
    assert_eq!(
        img.cmdline,
        format!("root=UUID={UUID} ro single console=hvc0 xen_blkfront.max=8")
    );
    let by_title = BootOptions {
        entry: Some(format!("Debian GNU/Linux, with Linux {KVER}")),
        ..BootOptions::default()
    };
    assert_eq!(
        boot_from_disk(&disk, &by_title).unwrap().title,
        format!("Advanced options for Debian GNU/Linux>Debian GNU/Linux, with Linux {KVER}")
    );
    let missing = BootOptions {
        entry: Some("Windows".into()),
        ..BootOptions::default()
    };
    let e = boot_from_disk(&disk, &missing).must_fail("an error");
    assert!(matches!(e, Error::NoSuchEntry { .. }), "{e}");

    let list = list_entries(&disk).unwrap();
    assert_eq!(list.entries.len(), 3);
    assert_eq!(list.default, 0);
    assert_eq!(
        list.entries[0].kernel.as_deref(),
        Some(&*format!("/boot/vmlinuz-{KVER}"))
    );

    // pygrub's --kernel: no configuration read.
    let direct = BootOptions {
        kernel: Some(format!("/boot/vmlinuz-{KVER}")),
        ramdisk: Some(format!("/boot/initrd.img-{KVER}")),
        args: Some("root=/dev/xvda ro".into()),
        ..BootOptions::default()
    };
    let img = boot_from_disk(&disk, &direct).unwrap();
    assert_eq!(img.kernel, kernel_bytes());
    assert_eq!(img.cmdline, "root=/dev/xvda ro");
}

#[test]
fn mbr_partition_one() {
    let s = Scratch::new("mbr");
    let root = s.path("root");
    debian_root(&root);
    let fs = mkfs("ext4", 8, &root, &s);
    let disk = spec(&s, "disk.img", &mbr_disk(&[&fs]));
    let img = boot_from_disk(&disk, &BootOptions::default()).unwrap();
    check_debian(&img);
    assert_eq!(img.source, "xvda1 (ext4) /boot/grub/grub.cfg");
}

#[test]
fn gpt_partition_two() {
    let s = Scratch::new("gpt");
    let root = s.path("root");
    debian_root(&root);
    let fs = mkfs("ext4", 8, &root, &s);
    let disk = spec(&s, "disk.img", &gpt_disk(&fs));
    let img = boot_from_disk(&disk, &BootOptions::default()).unwrap();
    check_debian(&img);
    assert_eq!(img.source, "xvda2 (ext4) /boot/grub/grub.cfg");
}

#[test]
fn ext2_menu_lst_and_ext3_extlinux() {
    let s = Scratch::new("legacy");
    let root = s.path("ext2");
    write(&root, "boot/grub/menu.lst", b"default 1\ntimeout 5\n\ntitle Old\nroot (hd0,0)\nkernel /boot/old root=/dev/xvda1\n\ntitle Debian\nroot (hd0,0)\nkernel (hd0,0)/boot/vmlinuz root=/dev/xvda1 ro console=hvc0\ninitrd /boot/initrd.img\n");
    write(&root, "boot/vmlinuz", &kernel_bytes());
    write(&root, "boot/initrd.img", &initrd_bytes());
    let disk = spec(&s, "ext2.img", &mbr_disk(&[&mkfs("ext2", 4, &root, &s)]));
    let img = boot_from_disk(&disk, &BootOptions::default()).unwrap();
    assert_eq!(
        (img.title.as_str(), img.source.as_str()),
        ("Debian", "xvda1 (ext2) /boot/grub/menu.lst")
    );
    assert_eq!(img.kernel, kernel_bytes());
    assert_eq!(img.cmdline, "root=/dev/xvda1 ro console=hvc0");

    let root = s.path("ext3");
    write(&root, "boot/extlinux/extlinux.conf", b"DEFAULT debian\nLABEL debian\n  KERNEL ../vmlinuz\n  APPEND root=/dev/xvda ro initrd=/boot/initrd.img\n");
    write(&root, "boot/vmlinuz", &kernel_bytes());
    write(&root, "boot/initrd.img", &initrd_bytes());
    let disk = spec(&s, "ext3.img", &mkfs("ext3", 8, &root, &s));
    let img = boot_from_disk(&disk, &BootOptions::default()).unwrap();
    assert_eq!(img.source, "xvda (ext3) /boot/extlinux/extlinux.conf");
    assert_eq!(
        img.kernel,
        kernel_bytes(),
        "../ resolves inside the filesystem"
    );
    assert_eq!(img.initrd.as_deref(), Some(&initrd_bytes()[..]));
    assert_eq!(img.cmdline, "root=/dev/xvda ro");
}

#[test]
fn separate_boot_partition() {
    let s = Scratch::new("sepboot");
    // /boot's filesystem: grub.cfg at /grub/grub.cfg, files at its root. The config
    // names the kernel as update-grub does (/vmlinuz-...) and the initrd with a /boot
    // prefix (a hand-edited config): both are found.
    let boot = s.path("boot");
    write(
        &boot,
        "grub/grub.cfg",
        grub_cfg("")
            .replace(
                &format!("initrd\t/initrd.img-{KVER}"),
                &format!("initrd\t/boot/initrd.img-{KVER}"),
            )
            .as_bytes(),
    );
    write(&boot, &format!("vmlinuz-{KVER}"), &kernel_bytes());
    write(&boot, &format!("initrd.img-{KVER}"), &initrd_bytes());
    let root = s.path("rootfs");
    write(&root, "etc/fstab", b"UUID=x / ext4 defaults 0 1\n");
    std::fs::create_dir_all(root.join("boot")).unwrap();
    let disk = spec(
        &s,
        "disk.img",
        &mbr_disk(&[&mkfs("ext4", 4, &root, &s), &mkfs("ext4", 4, &boot, &s)]),
    );
    let img = boot_from_disk(&disk, &BootOptions::default()).unwrap();
    check_debian(&img);
    assert_eq!(img.source, "xvda2 (ext4) /grub/grub.cfg");
}

#[test]
fn default_naming_nothing_warns() {
    let s = Scratch::new("baddefault");
    let root = s.path("root");
    debian_root(&root);
    write(
        &root,
        "boot/grub/grubenv",
        b"# GRUB Environment Block\nnext_entry=7>3\n",
    );
    let disk = spec(&s, "disk.img", &mkfs("ext4", 8, &root, &s));
    let img = boot_from_disk(&disk, &BootOptions::default()).unwrap();
    check_debian(&img);
    assert_eq!(img.warnings.len(), 1, "{:?}", img.warnings);
}

#[test]
fn truncated_image() {
    let s = Scratch::new("trunc");
    let root = s.path("root");
    debian_root(&root);
    let fs = mkfs("ext4", 8, &root, &s);
    // The partition table still says 8 MiB; the image ends after 2.
    let mut d = mbr_disk(&[&fs]);
    d.truncate(3 << 20);
    let disk = spec(&s, "disk.img", &d);
    let e = boot_from_disk(&disk, &BootOptions::default()).must_fail("an error");
    let msg = e.to_string();
    assert!(
        msg.contains("xvda") && msg.contains("past the end"),
        "{msg}"
    );
    // A partitionless filesystem cut short: an error, whatever part is missing.
    let disk = spec(&s, "cut.img", &fs[..fs.len() / 3]);
    let msg = boot_from_disk(&disk, &BootOptions::default())
        .must_fail("a truncated filesystem is refused")
        .to_string();
    assert!(
        msg.contains("xvda: ext4 of 8388608 bytes in 2796202 bytes: the image is truncated"),
        "{msg}"
    );
}

#[test]
fn partition_past_the_end() {
    let s = Scratch::new("pastend");
    let root = s.path("root");
    debian_root(&root);
    let fs = mkfs("ext4", 8, &root, &s);
    let mut d = mbr_disk(&[&fs]);
    mbr_entry(&mut d, 1, 0, 0x83, 1 << 30, 1 << 20);
    let disk = spec(&s, "disk.img", &d);
    // The good partition still boots; the bad one is only noted.
    assert_eq!(
        boot_from_disk(&disk, &BootOptions::default())
            .unwrap()
            .source,
        "xvda1 (ext4) /boot/grub/grub.cfg"
    );
    // Alone, it is the error.
    let mut d = vec![0u8; 1 << 20];
    mbr_entry(&mut d, 0, 0x80, 0x83, 2048, 1 << 20);
    let disk = spec(&s, "bad.img", &d);
    let e = boot_from_disk(&disk, &BootOptions::default()).must_fail("an error");
    let msg = e.to_string();
    assert!(
        msg.contains("xvda1: the partition (sectors 2048..") && msg.contains("past the end"),
        "{msg}"
    );
}

#[test]
fn hostile_files() {
    let s = Scratch::new("hostile");
    let root = s.path("root");
    debian_root(&root);
    // Symlink loop as the kernel.
    std::os::unix::fs::symlink("vmlinuz-b", root.join("boot/vmlinuz-a")).unwrap();
    std::os::unix::fs::symlink("vmlinuz-a", root.join("boot/vmlinuz-b")).unwrap();
    write(
        &root,
        "boot/grub/grub.cfg",
        b"menuentry loop { linux /boot/vmlinuz-a }\nmenuentry nokernel { echo hi }\n",
    );
    let disk = spec(&s, "loop.img", &mkfs("ext4", 8, &root, &s));
    let e = boot_from_disk(&disk, &BootOptions::default()).must_fail("an error");
    assert!(e.to_string().contains("/boot/vmlinuz-a"), "{e}");
    let e = boot_from_disk(
        &disk,
        &BootOptions {
            entry: Some("1".into()),
            ..Default::default()
        },
    )
    .must_fail("an error");
    assert!(matches!(e, Error::NoKernel { .. }), "{e}");

    // A grub.cfg over 1 MiB.
    let root = s.path("big");
    debian_root(&root);
    let mut big = grub_cfg("/boot");
    big.push_str(&"#".repeat(2 << 20));
    write(&root, "boot/grub/grub.cfg", big.as_bytes());
    let disk = spec(&s, "big.img", &mkfs("ext4", 8, &root, &s));
    let e = boot_from_disk(&disk, &BootOptions::default()).must_fail("an error");
    assert!(matches!(e, Error::FileTooLarge { .. }), "{e}");

    // A config whose kernel is not there.
    let root = s.path("missing");
    write(
        &root,
        "boot/grub/grub.cfg",
        b"set default=0\nmenuentry gone { linux /boot/vmlinuz-gone }\n",
    );
    let disk = spec(&s, "missing.img", &mkfs("ext4", 4, &root, &s));
    let e = boot_from_disk(&disk, &BootOptions::default()).must_fail("an error");
    assert!(
        matches!(e, Error::FileMissing { .. }) && e.to_string().contains("xvda"),
        "{e}"
    );

    // No configuration at all.
    let root = s.path("empty");
    write(&root, "etc/hostname", b"x\n");
    let disk = spec(&s, "empty.img", &mkfs("ext4", 4, &root, &s));
    let e = boot_from_disk(&disk, &BootOptions::default()).must_fail("an error");
    assert!(
        e.to_string().contains("xvda: ext4, no configuration file"),
        "{e}"
    );
}

#[test]
fn qcow2_over_a_raw_backing_file() {
    use imago::{FormatCreateBuilder, Storage, StorageCreateOptions};
    let s = Scratch::new("qcow2");
    let root = s.path("root");
    debian_root(&root);
    let raw = mbr_disk(&[&mkfs("ext4", 8, &root, &s)]);
    let size = raw.len() as u64;
    std::fs::write(s.path("base.img"), &raw).unwrap();
    let overlay = s.path("overlay.qcow2");
    let storage =
        imago::file::File::create_open(StorageCreateOptions::new().filename(&overlay)).unwrap();
    imago::qcow2::Qcow2::<imago::file::File>::create_builder(storage)
        .size(size)
        .backing("base.img".to_string(), "raw".to_string())
        .create()
        .unwrap();
    let disk = DiskSpec::parse(&format!("{},format=qcow2,vdev=xvdb", overlay.display())).unwrap();
    let img = boot_from_disk(&disk, &BootOptions::default()).unwrap();
    check_debian(&img);
    assert_eq!(img.source, "xvdb1 (ext4) /boot/grub/grub.cfg");
}

#[test]
fn a_disk_in_use_for_writing_is_not_read() {
    let s = Scratch::new("locked");
    let root = s.path("root");
    debian_root(&root);
    let disk = spec(&s, "disk.img", &mkfs("ext4", 8, &root, &s));
    let held = DiskImage::open_raw(&disk.path, false).unwrap();
    let e = boot_from_disk(&disk, &BootOptions::default()).must_fail("the lock is held");
    assert!(matches!(e, Error::Open { .. }), "{e}");
    drop(held);
    boot_from_disk(&disk, &BootOptions::default()).unwrap();
}

/// A small deterministic generator (xorshift) for the corruption tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

#[test]
fn corrupted_metadata_never_panics() {
    let s = Scratch::new("corrupt");
    let root = s.path("root");
    debian_root(&root);
    let fs = mkfs("ext4", 8, &root, &s);
    let good = mbr_disk(&[&fs]);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut ok, mut failed) = (0, 0);
    for round in 0..60 {
        let mut d = good.clone();
        // The partition table, the superblock, group descriptors, bitmaps and the
        // first inode tables: where a corrupt byte changes what is read.
        for _ in 0..(1 + round % 16) {
            let region = match rng.next() % 3 {
                0 => 0..512,
                1 => (1 << 20) + 1024..(1 << 20) + 2048,
                _ => (1 << 20)..(1 << 20) + (256 << 10),
            };
            let at = region.start + (rng.next() as usize % (region.end - region.start));
            d[at] = rng.next() as u8;
        }
        let disk = spec(&s, "corrupt.img", &d);
        match boot_from_disk(&disk, &BootOptions::default()) {
            Ok(_) => ok += 1,
            Err(e) => {
                failed += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert_eq!(ok + failed, 60);
}
