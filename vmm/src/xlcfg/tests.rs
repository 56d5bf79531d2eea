//! Tests of the xl.cfg reader over the shapes real configuration files take.

use super::*;
use crate::backends::blk::{DiskFormat, Vdev};
use crate::backends::net::{HostSpec, Mac, Proto};

fn load_ok(text: &str) -> Loaded {
    match from_str(text, "guest.cfg") {
        Ok(l) => l,
        Err(e) => panic!("refused: {e}"),
    }
}

fn load_err(text: &str) -> String {
    match from_str(text, "guest.cfg") {
        Ok(l) => panic!("accepted: {l:?}"),
        Err(e) => e.to_string(),
    }
}

fn vdev(s: &str) -> Option<Vdev> {
    Some(Vdev::parse(s).expect("a vdev"))
}

/// The shape xen-tools writes for a pygrub guest on image files.
const XEN_TOOLS: &str = r#"#
# Configuration file for the Xen instance web1, created
# by xen-tools 4.9 on Sat Jan  1 00:00:00 2022.
#

#
#  Kernel + memory size
#
bootloader = 'pygrub'

vcpus       = '1'
memory      = '512'

type      = 'pv'

#
#  Disk device(s).
#
root        = '/dev/xvda2 ro'
disk        = [
                  'file:/home/xen/domains/web1/disk.img,xvda2,w',
                  'file:/home/xen/domains/web1/swap.img,xvda1,w',
              ]


#
#  Hostname
#
name        = 'web1'

#
#  Networking
#
vif         = [ 'ip=192.168.1.10,mac=00:16:3E:2A:3B:4C,bridge=xenbr0' ]

#
#  Behaviour
#
on_poweroff = 'destroy'
on_reboot   = 'restart'
on_crash    = 'restart'
"#;

#[test]
fn xen_tools_config() {
    let l = load_ok(XEN_TOOLS);
    let c = &l.config;
    assert_eq!(c.name.as_deref(), Some("web1"));
    assert_eq!(c.memory_mib, Some(512));
    assert_eq!(c.vcpus, Some(1));
    assert_eq!(
        c.bootloader,
        Some(Bootloader {
            args: Some("root=/dev/xvda2 ro".into()),
            ..Bootloader::default()
        })
    );
    assert_eq!(c.kernel, None);
    assert_eq!(c.cmdline, None);
    assert_eq!(c.disks.len(), 2);
    assert_eq!(
        c.disks[0].path,
        PathBuf::from("/home/xen/domains/web1/disk.img")
    );
    assert_eq!(c.disks[0].vdev, vdev("xvda2"));
    assert_eq!(c.disks[1].vdev, vdev("xvda1"));
    assert!(!c.disks[0].read_only);
    assert_eq!(c.disks[0].format, DiskFormat::Raw);
    assert_eq!(c.nets.len(), 1);
    assert_eq!(c.nets[0].host, HostSpec::Bridge("xenbr0".into()));
    assert_eq!(
        c.nets[0].mac,
        Some(Mac([0x00, 0x16, 0x3e, 0x2a, 0x3b, 0x4c]))
    );
    assert_eq!(c.on_crash, Action::Restart);
    assert_eq!(c.on_reboot, Action::Restart);
    assert_eq!(c.on_poweroff, Action::Destroy);
    // `ip=` is the only thing not honoured.
    assert_eq!(l.warnings.len(), 1, "{:?}", l.warnings);
    assert_eq!(
        l.warnings[0].to_string(),
        "guest.cfg:34: vif \"ip=192.168.1.10,mac=00:16:3E:2A:3B:4C,bridge=xenbr0\": the vif option `ip` is not supported; ignored"
    );
}

#[test]
fn direct_kernel_with_comments_semicolons_and_both_quotes() {
    let l = load_ok(
        "name = \"g\" ; memory = 256 # trailing comment\n\
         kernel = '/boot/vmlinuz'\n\
         ramdisk = \"initrd.gz\"\n\
         extra = 'console=hvc0'; root = \"/dev/xvda1\"\n\
         vcpus = 0x1\n",
    );
    let c = &l.config;
    assert_eq!(c.memory_mib, Some(256));
    assert_eq!(c.kernel, Some(PathBuf::from("/boot/vmlinuz")));
    // Relative paths stay relative: they resolve against the current directory.
    assert_eq!(c.ramdisk, Some(PathBuf::from("initrd.gz")));
    assert_eq!(c.cmdline.as_deref(), Some("root=/dev/xvda1 console=hvc0"));
    assert_eq!(c.vcpus, Some(1));
    assert!(l.warnings.is_empty());
    assert_eq!(c.on_reboot, Action::Restart, "xl's default");
    assert_eq!(c.on_crash, Action::Destroy, "xl's default");
}

#[test]
fn cmdline_excludes_root_and_extra() {
    let l = load_ok("cmdline = 'quiet'\nroot = '/dev/xvda'\nextra = 'x'\n");
    assert_eq!(l.config.cmdline.as_deref(), Some("quiet"));
    assert_eq!(l.warnings.len(), 1);
    assert_eq!(l.warnings[0].line, 1);
    let l = load_ok("extra = 'single'");
    assert_eq!(l.config.cmdline.as_deref(), Some("single"));
}

#[test]
fn later_assignment_wins_and_plus_equals_appends() {
    let l = load_ok(
        "memory = 128\nmemory = 1024\n\
         extra = 'a'\nextra += ' b'\n\
         disk = ['/a.img,raw,xvda,w']\ndisk += [ '/b.img,,xvdb' ]\n",
    );
    assert_eq!(l.config.memory_mib, Some(1024));
    assert_eq!(l.config.cmdline.as_deref(), Some("a b"));
    assert_eq!(l.config.disks.len(), 2);
    assert_eq!(l.config.disks[1].vdev, vdev("xvdb"));
    assert!(load_err("memory = 1\nmemory += 2\n").contains("guest.cfg:2:"));
    assert!(load_err("extra = 'a'\nextra += ['b']\n").contains("guest.cfg:2:"));
}

#[test]
fn lists_span_lines_with_trailing_commas_and_comments() {
    let l = load_ok(
        "disk = [\n\
         # the root\n\
         'phy:/dev/vg/root,xvda,w',  # lvm\n\
         \n\
         \"tap:qcow2:/var/img/data.qcow2,xvdb,r\",\n\
         ]\n\
         vif = [ ]\n",
    );
    let d = &l.config.disks;
    assert_eq!(d[0].path, PathBuf::from("/dev/vg/root"));
    assert_eq!(d[1].format, DiskFormat::Qcow2);
    assert!(d[1].read_only);
    assert!(l.config.nets.is_empty());
}

#[test]
fn disk_positional_and_prefixed_forms() {
    let one = |s: &str| disk::parse_disk(s).expect("a disk").spec.expect("a spec");
    let d = one("file:/path/img,xvda1,w");
    assert_eq!(
        (d.path.to_str(), d.vdev, d.read_only),
        (Some("/path/img"), vdev("xvda1"), false)
    );
    let d = one("tap:aio:/p.img,xvdc,r");
    assert_eq!(
        (d.path.to_str(), d.format, d.read_only),
        (Some("/p.img"), DiskFormat::Raw, true)
    );
    let d = one("tap2:tapdisk:aio:/p.img,xvdd,w");
    assert_eq!(d.path.to_str(), Some("/p.img"));
    let d = one("qcow2:/q.qcow2,xvde,w");
    assert_eq!(d.format, DiskFormat::Qcow2);
    // Without a prefix the second position is the format.
    let d = one("/p.img,qcow2,xvdf,ro");
    assert_eq!(
        (d.format, d.vdev, d.read_only),
        (DiskFormat::Qcow2, vdev("xvdf"), true)
    );
    let d = one("/p.img,,xvdg");
    assert_eq!((d.format, d.read_only), (DiskFormat::Raw, false));
    // Old device type suffix.
    let d = one("/iso/x.iso,raw,xvdh:cdrom,r");
    assert!(d.read_only);
    assert!(disk::parse_disk(",raw,xvdi:cdrom,r")
        .expect("empty cdrom")
        .spec
        .is_none());
}

#[test]
fn disk_key_value_form() {
    let one = |s: &str| disk::parse_disk(s).expect("a disk").spec.expect("a spec");
    let d = one("format=qcow2, vdev=xvda, access=ro, target=/p/with,comma.qcow2");
    assert_eq!(d.path.to_str(), Some("/p/with,comma.qcow2"));
    assert_eq!(
        (d.format, d.vdev, d.read_only),
        (DiskFormat::Qcow2, vdev("xvda"), true)
    );
    let d = one("vdev=xvdb,backendtype=qdisk,devtype=disk,discard,target=/b.img");
    assert_eq!((d.vdev, d.read_only), (vdev("xvdb"), false));
    let p = disk::parse_disk("vdev=xvdc,devtype=cdrom,target=/x.iso").expect("a cdrom");
    assert!(p.spec.expect("a spec").read_only);
    assert_eq!(p.warnings.len(), 1);
    assert!(matches!(
        disk::parse_disk("vdev=xvda,format=vhd,target=/a"),
        Err(DiskError::UnsupportedFormat(_))
    ));
    assert!(matches!(
        disk::parse_disk("target=/a"),
        Err(DiskError::NoVdev)
    ));
    assert!(matches!(
        disk::parse_disk("vdev=xvda"),
        Err(DiskError::NoTarget)
    ));
    assert!(matches!(
        disk::parse_disk("/a,raw,xvda,w,extra"),
        Err(DiskError::TooManyPositional(_))
    ));
    assert!(matches!(
        disk::parse_disk("vdev=xvda,script=block-iscsi,target=x"),
        Err(DiskError::Script(_))
    ));
    assert!(matches!(
        disk::parse_disk("vdev=xvda,vdev=xvdb,target=x"),
        Err(DiskError::Respecified("vdev"))
    ));
    assert!(matches!(
        disk::parse_disk("colour=red,vdev=xvda,target=x"),
        Err(DiskError::UnknownParameter(_))
    ));
    assert!(matches!(
        disk::parse_disk("/a,raw,sda1,w"),
        Err(DiskError::Vdev(_))
    ));
}

#[test]
fn vif_forms() {
    let one = |s: &str| vif::parse_vif(s).expect("a vif");
    assert_eq!(one("").spec.host, HostSpec::User(vec![]));
    assert_eq!(
        one("mac=00:16:3e:00:00:01").spec.host,
        HostSpec::User(vec![])
    );
    let v =
        one("pvkvm-net=user,pvkvm-hostfwd=tcp::2222-:22;udp::5353-:53,pvkvm-hostfwd=tcp::8080-:80");
    let HostSpec::User(f) = v.spec.host else {
        panic!("not user")
    };
    assert_eq!(f.len(), 3);
    assert_eq!(
        (f[1].proto, f[1].host_port, f[1].guest_port),
        (Proto::Udp, 5353, 53)
    );
    assert_eq!(
        one("pvkvm-net=tap:tap0").spec.host,
        HostSpec::Tap("tap0".into())
    );
    assert_eq!(
        one("vifname=web0, mac=00:16:3e:1:2:3").spec.host,
        HostSpec::Tap("web0".into())
    );
    assert_eq!(
        one("vifname=web0, mac=00:16:3e:1:2:3").spec.mac,
        Some(Mac([0, 0x16, 0x3e, 1, 2, 3]))
    );
    let v = one("bridge=br0,vifname=web0,script=vif-bridge,model=e1000,type=ioemu");
    assert_eq!(v.spec.host, HostSpec::Bridge("br0".into()));
    assert_eq!(v.warnings.len(), 2, "{:?}", v.warnings);
    assert!(matches!(
        vif::parse_vif("bridge=br0,pvkvm-net=user"),
        Err(VifError::Conflict(..))
    ));
    assert!(matches!(
        vif::parse_vif("pvkvm-net=tap:t,vifname=u"),
        Err(VifError::Conflict(..))
    ));
    assert!(matches!(
        vif::parse_vif("bridge=br0,pvkvm-hostfwd=tcp::1-:2"),
        Err(VifError::HostFwdNotUser)
    ));
    assert!(matches!(
        vif::parse_vif("mac=01:00:00:00:00:00"),
        Err(VifError::MulticastMac(_))
    ));
    assert!(matches!(
        vif::parse_vif("mac=00:16:3e:00:00"),
        Err(VifError::Mac(_))
    ));
    assert!(matches!(
        vif::parse_vif("pvkvm-net=slirp"),
        Err(VifError::PvkvmNet(_))
    ));
}

#[test]
fn bootloader_forms() {
    let b = |t: &str| load_ok(t).config.bootloader.expect("a bootloader");
    assert_eq!(
        b("bootloader='/usr/lib/xen/bin/pygrub'"),
        Bootloader::default()
    );
    let x = b("bootloader=\"pygrub\"\nbootloader_args=['--entry=1', '--kernel', '/vmlinuz']\nkernel='/boot/k'\nramdisk='/boot/i'");
    assert_eq!(x.entry, Some(BootEntry::Index(1)));
    assert_eq!(
        x.kernel.as_deref(),
        Some("/vmlinuz"),
        "bootloader_args come later and win"
    );
    assert_eq!(x.ramdisk.as_deref(), Some("/boot/i"));
    let x = b("bootloader='pygrub'; bootloader_args = '-q --entry=Debian GNU/Linux'");
    // A string is split at blanks, as xl does.
    assert_eq!(x.entry, Some(BootEntry::Title("Debian".into())));
    let e = load_err("\n\nbootloader = 'pvgrub'\n");
    assert!(
        e.starts_with("guest.cfg:3: bootloader=\"pvgrub\" is not supported"),
        "{e}"
    );
    assert!(load_err("bootloader='pygrub'\nbootloader_args=['--entry']").contains("guest.cfg:2:"));
}

#[test]
fn types_memory_and_actions() {
    assert!(load_err("type = 'hvm'").contains("guest.cfg:1: type=\"hvm\" is not supported"));
    assert!(load_err("name='x'\ntype = \"pvh\"").contains("guest.cfg:2: type=\"pvh\""));
    assert!(load_err("builder = 'hvm'").contains("builder=\"hvm\""));
    assert!(load_ok("builder = 'generic'").warnings.is_empty());
    let l = load_ok("memory = 512\nmaxmem = 2048\nvcpus = 4\nmaxvcpus = 8");
    assert_eq!(l.config.memory_mib, Some(512));
    assert_eq!(l.config.maxmem_mib, Some(2048));
    assert_eq!((l.config.vcpus, l.config.maxvcpus), (Some(4), Some(8)));
    assert_eq!(l.warnings.len(), 1);
    assert!(l.warnings[0]
        .message
        .contains("ballooning up is not supported"));
    assert_eq!(load_ok("maxmem = 300").config.memory_mib, Some(300));
    assert_eq!(
        load_ok("memory = 010").config.memory_mib,
        Some(8),
        "strtol's octal"
    );
    assert_eq!(
        load_ok("vcpus = 0").config.vcpus,
        Some(1),
        "xl makes at least one"
    );
    let l = load_ok("on_reboot = 'destroy'\non_watchdog='coredump-restart'\non_crash='preserve'");
    assert_eq!(l.config.on_reboot, Action::Destroy);
    assert_eq!(l.config.on_watchdog, Action::CoredumpRestart);
    assert!(l.config.on_watchdog.restarts());
    assert_eq!(l.config.on_crash, Action::Preserve);
    assert!(load_err("\non_poweroff = 'reboot'")
        .contains("guest.cfg:2: \"reboot\" is not an on_poweroff action"));
}

#[test]
fn unknown_keys_warn_once_each() {
    let l = load_ok(
        "name = 'x'\nvfb = ['vnc=1']\npci = []\nvfb = []\ncpus_soft = '0-3'\nuuid = 'a'\nlocaltime = 1\n",
    );
    let w: Vec<String> = l.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        w,
        [
            "guest.cfg:3: 'pci' is not supported; ignored",
            "guest.cfg:4: 'vfb' is not supported; ignored",
            "guest.cfg:5: 'cpus_soft' is not supported; ignored",
            "guest.cfg:6: 'uuid' is not supported; ignored",
            "guest.cfg:7: 'localtime' is not supported; ignored",
        ]
    );
}

/// `cpus`: a string for every vCPU, a list per vCPU, either quote style; refusals at
/// the setting's (or the list item's) line.
#[test]
fn cpus_affinity() {
    use crate::affinity::{CpuAffinity, CpuSet};
    let set = |s: &str| CpuSet::parse(s).unwrap();
    assert_eq!(load_ok("vcpus = 2").config.cpus, None);
    let l = load_ok("cpus = \"0-3,^1\"");
    assert!(l.warnings.is_empty(), "{:?}", l.warnings);
    assert_eq!(l.config.cpus, Some(CpuAffinity::Same(set("0,2-3"))));
    assert_eq!(
        load_ok("cpus = '5'").config.cpus,
        Some(CpuAffinity::Same(set("5")))
    );
    assert_eq!(
        load_ok("cpus = 5").config.cpus,
        Some(CpuAffinity::Same(set("5")))
    );
    assert_eq!(load_ok("cpus = 'all'").config.cpus, Some(CpuAffinity::All));
    let l = load_ok("vcpus = 3\ncpus = [\"2\", '3-4,^4', \"0,1\"]");
    let c = l.config.cpus.unwrap();
    assert_eq!(
        c,
        CpuAffinity::PerVcpu(vec![set("2"), set("3"), set("0-1")])
    );
    assert_eq!(c.for_vcpu(2).map(|s| s.to_string()).as_deref(), Some("0-1"));
    assert_eq!(c.for_vcpu(3), None, "past the list: not pinned");
    assert_eq!(load_ok("cpus = []").config.cpus, Some(CpuAffinity::All));
    // `+=` extends a list, as for the other list keys.
    assert_eq!(
        load_ok("cpus = ['1']\ncpus += ['2']").config.cpus,
        Some(CpuAffinity::PerVcpu(vec![set("1"), set("2")]))
    );

    assert_eq!(
        load_err("name = 'x'\ncpus = 'nodes:0'"),
        "guest.cfg:2: cpus: \"nodes:0\" names NUMA nodes, which pvkvm does not place guests by; name host CPUs instead (such as \"0-3\")"
    );
    assert_eq!(
        load_err("cpus = '0-7,^0-7'"),
        "guest.cfg:1: cpus: \"0-7,^0-7\" leaves no CPU to run on"
    );
    assert_eq!(
        load_err("cpus = '4096'"),
        "guest.cfg:1: cpus: CPU 4096 is beyond the 1024 CPUs an affinity mask can name"
    );
    assert!(load_err("cpus = '3-1'").starts_with("guest.cfg:1: cpus: the range \"3-1\""));
    // A bad list item is reported at its own line.
    let e = load_err("cpus = [\n  '0',\n  'x',\n]");
    assert!(
        e.starts_with("guest.cfg:3: cpus: \"x\" is not a CPU number"),
        "{e}"
    );
    assert!(load_err("cpus = ['0', ['1']]").contains("the items of 'cpus' must be strings"));
}

#[test]
fn string_escapes() {
    let l = load_ok(r#"extra = 'a\'b\"c\\d\te\x41\101'"#);
    assert_eq!(l.config.cmdline.as_deref(), Some("a'b\"c\\d\teAA"));
    assert!(load_err(r"extra = 'a\qb'").starts_with("guest.cfg:1:11: "));
}

#[test]
fn syntax_errors_name_file_and_line() {
    let cases: &[(&str, &str)] = &[
        (
            "name = 'x'\nkernel = '/boot/k\n",
            "guest.cfg:2:10: the string has no closing ' on this line",
        ),
        (
            "name = 'x'\n\ndisk = [ '/a,raw,xvda,w',\n  '/b,raw,xvdb,w'\n",
            "the list opened on line 3 has no closing `]`",
        ),
        (
            "name = 'x'\nmemory 512\n",
            "guest.cfg:2:8: expected `=` or `+=` after the setting name",
        ),
        ("memory = 512M\n", "guest.cfg:1:10: `512M` is not a number"),
        ("memory = 0x\n", "guest.cfg:1: 'memory' must be a number"),
        ("memory = 12abc\n", "guest.cfg:1: 'memory' must be a number"),
        (
            "Memory = 1\n",
            "guest.cfg:1:1: `Memory` is not a setting name",
        ),
        ("memory = (512)\n", "xl.cfg is not Python"),
        (
            "name = 'x' 'y'\n",
            "guest.cfg:1:12: expected the end of the line",
        ),
        (
            "disk = [ 'a' 'b' ]\n",
            "guest.cfg:1:14: expected `,` or `]`",
        ),
        ("memory = \n", "guest.cfg:1:10: expected a value"),
        (
            "memory = [1]\n",
            "guest.cfg:1: 'memory' must be a single value",
        ),
        (
            "disk = [\n '/a.img,raw,xvda,w',\n '/b.img,raw,xvda,w',\n]\n",
            "guest.cfg:3: disk \"/b.img,raw,xvda,w\": the virtual device xvda is already used",
        ),
        (
            "disk = ['nfs:/a.img,xvda,w']\n",
            "guest.cfg:1: disk \"nfs:/a.img,xvda,w\": `nfs:` is not a known disk prefix",
        ),
        (
            "vif = [ 'mac=zz' ]",
            "guest.cfg:1: vif \"mac=zz\": `zz` is not a MAC address",
        ),
    ];
    for (text, want) in cases {
        let e = load_err(text);
        assert!(e.contains(want), "{text:?}: got {e:?}, want {want:?}");
    }
}

#[test]
fn bounds() {
    let big = format!("extra = '{}'\n", "a".repeat(parse::MAX_FILE_BYTES));
    assert!(load_err(&big).contains("larger than"));
    let items = vec!["'/a'"; parse::MAX_LIST_ITEMS + 1].join(",");
    assert!(load_err(&format!("disk = [{items}]")).contains("more than 4096 items"));
    let deep = format!("disk = {}{}", "[".repeat(20), "]".repeat(20));
    assert!(load_err(&deep).contains("nested"));
}

#[test]
fn file_errors_name_the_file() {
    let e = load(Path::new("/nonexistent/guest.cfg")).expect_err("no such file");
    assert!(
        e.to_string()
            .starts_with("/nonexistent/guest.cfg: cannot read"),
        "{e}"
    );
}

#[test]
fn a_missing_bridge_is_named_when_opened() {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    match HostSpec::Bridge("pvkvmnobr0".into()).open() {
        Ok(_) => panic!("a bridge that does not exist opened"),
        Err(e) => {
            let e = e.to_string();
            if root {
                assert!(e.contains("there is no bridge `pvkvmnobr0`"), "{e}");
            } else {
                assert!(e.contains("needs root"), "{e}");
            }
        }
    }
}
