#!/usr/bin/env bash
# Build a Debian 12 (bookworm) Xen PV guest disk image from Debian's packages, the way a
# Xen user's image looks, and an xl.cfg for it:
#
#   guest-images/cache/debian-image/debian-12-pv.img   2 GiB sparse raw disk: an MBR
#       partition table with one ext4 partition (the guest's xvda1) holding /
#   guest-images/cache/debian-image/debian-12-pv.cfg   xl.cfg (type "pv", bootloader "pygrub")
#   guest-images/cache/debian-image/id_ed25519[.pub]   SSH key pair whose public key is in
#       the guest's /root/.ssh/authorized_keys (kept across rebuilds)
#
# Prints the xl.cfg path, then (last line) the image path.
#
# The guest: mmdebstrap --variant=minbase (no Recommends) plus Debian's cloud kernel
# (linux-image-cloud-amd64, the same 6.1 cloud ABI fetch-debian-kernel.sh gives the tests)
# with its initramfs-tools initrd, systemd-sysv, udev, openssh-server, iproute2, procps,
# e2fsprogs and GRUB's configuration tools (grub2-common, grub-pc-bin: update-grub writes
# /boot/grub/grub.cfg, which pygrub reads; no boot sector is installed, a PV guest's
# bootloader runs in the toolstack). Configuration: hostname "debian-pv", fstab with / by
# UUID, root password "pvkvm" (console login; a serial getty runs on hvc0, which systemd
# starts from console=hvc0 on the kernel command line), ssh root login by key only
# (PermitRootLogin prohibit-password), sshd host keys made at build time, DHCP on the
# netfront NIC (eth0, which bookworm's udev renames to enX0) by systemd-networkd,
# /etc/default/grub with GRUB_TIMEOUT=0 and GRUB_CMDLINE_LINUX="console=hvc0", and what
# a VM on a slow emulated CPU does not want at boot disabled: the periodic jobs (apt-daily,
# man-db, e2scrub, fstrim, dpkg-db-backup timers) and getty-static (gettys on tty2-6,
# which Debian starts when there is no logind; a PV guest's console is hvc0).
#
# grub.cfg is written by the guest's own update-grub, run in the chroot by mmdebstrap's
# customize hook. grub-mkconfig asks grub-probe for the device, partition table and
# filesystem UUID of /, which a chroot on a directory cannot answer; so for that one run
# grub-probe is diverted (dpkg-divert --local --rename, Debian's documented way to replace
# a packaged file) to a wrapper that answers the facts of the planned disk: /dev/xvda1, an
# msdos partition table, ext2 (GRUB's name for ext4) and the filesystem UUID chosen here
# up front (mkfs.ext4 -U). The divert is removed afterwards, so in the guest update-grub
# (run again by every kernel upgrade) uses the real grub-probe on the real /dev/xvda1.
#
# The disk is made without loop devices or mounts: the tree goes into a filesystem image
# with mkfs.ext4 -d, sfdisk writes the partition table, and dd (conv=sparse) puts the
# filesystem at 1 MiB. MBR, not GPT: it is what Xen PV images and pygrub have always used,
# the disk is small, and there is no firmware that wants an EFI partition.
#
# Idempotent and cached: the image is rebuilt only when the key (this script's SHA-256,
# mmdebstrap's version, the mirrors, and apt's candidate versions of the kernel and the
# listed packages) changes; a second run with unchanged inputs touches no network and
# prints the paths. Needs root (mmdebstrap --mode=root); tools come from install-deps.sh
# (mmdebstrap, fdisk for sfdisk, e2fsprogs), and are installed here if missing.
set -euo pipefail

script_path=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")

# ---------------------------------------------------------------------------------------
# The customize hook: mmdebstrap runs this script again as `build-debian-image.sh
# customize-hook ROOT` after every package is installed, with /proc, /sys and /dev
# mounted in ROOT. The build's facts come in PVKVM_IMG_* environment variables.
# ---------------------------------------------------------------------------------------
if [[ ${1:-} == customize-hook ]]; then
    root=$2
    say() { echo "build-debian-image: [chroot] $*" >&2; }
    die() { say "$*"; exit 1; }
    in_root() { chroot "$root" "$@"; }
    uuid=$PVKVM_IMG_UUID
    disk_id=$PVKVM_IMG_DISK_ID
    hostname=$PVKVM_IMG_HOSTNAME

    say "configuring hostname, fstab, root password, network, sshd"
    echo "$hostname" >"$root/etc/hostname"
    printf '%s\n' "127.0.0.1	localhost" "127.0.1.1	$hostname" "" \
        "::1	localhost ip6-localhost ip6-loopback" "ff02::1	ip6-allnodes" \
        "ff02::2	ip6-allrouters" >"$root/etc/hosts"
    printf '%s\n' "# <file system> <mount point> <type> <options> <dump> <pass>" \
        "UUID=$uuid / ext4 errors=remount-ro 0 1" >"$root/etc/fstab"
    echo "root:$PVKVM_IMG_ROOT_PASSWORD" | in_root chpasswd || die "chpasswd failed"
    # The console is hvc0. pam_securetty is not in bookworm's /etc/pam.d/login, but if an
    # /etc/securetty exists, make sure it lets root in on hvc0.
    if [[ -f $root/etc/securetty ]] && ! grep -qx hvc0 "$root/etc/securetty"; then
        echo hvc0 >>"$root/etc/securetty"
    fi
    # Nothing may mask the getty systemd-getty-generator starts for console=hvc0.
    rm -f "$root/etc/systemd/system/serial-getty@hvc0.service" \
        "$root/etc/systemd/system/serial-getty@.service"

    # DHCP on the netfront NIC: the kernel calls it eth0, and bookworm's udev (systemd
    # 252's predictable names) renames a Xen vif to enX0 (enX<vif id>), as on Xen.
    mkdir -p "$root/etc/systemd/network"
    printf '%s\n' "[Match]" "Name=eth0 enX0" "" "[Network]" "DHCP=ipv4" \
        >"$root/etc/systemd/network/50-eth0.network"
    in_root systemctl enable systemd-networkd.service >/dev/null 2>&1 \
        || die "cannot enable systemd-networkd"

    # sshd: key login for root; host keys were made by openssh-server's postinst.
    mkdir -p "$root/etc/ssh/sshd_config.d"
    echo "PermitRootLogin prohibit-password" >"$root/etc/ssh/sshd_config.d/pvkvm.conf"
    ls "$root"/etc/ssh/ssh_host_*_key >/dev/null 2>&1 || in_root ssh-keygen -A >&2
    install -d -m 0700 "$root/root/.ssh"
    # The key pair: the cache's if there is one (rebuilds keep it), else a new one.
    if [[ -s $PVKVM_IMG_KEY && -s $PVKVM_IMG_KEY.pub ]]; then
        install -m 0600 "$PVKVM_IMG_KEY" "$root/root/.ssh/pvkvm_build_key"
        install -m 0644 "$PVKVM_IMG_KEY.pub" "$root/root/.ssh/pvkvm_build_key.pub"
    else
        say "generating the SSH key pair"
        in_root ssh-keygen -q -t ed25519 -N '' -C "pvkvm-debian-image" \
            -f /root/.ssh/pvkvm_build_key || die "ssh-keygen failed"
        install -m 0600 "$root/root/.ssh/pvkvm_build_key" "$PVKVM_IMG_KEY.new"
        install -m 0644 "$root/root/.ssh/pvkvm_build_key.pub" "$PVKVM_IMG_KEY.pub.new"
    fi
    install -m 0600 "$root/root/.ssh/pvkvm_build_key.pub" "$root/root/.ssh/authorized_keys"
    rm -f "$root/root/.ssh/pvkvm_build_key" "$root/root/.ssh/pvkvm_build_key.pub"

    # First boot on a slow emulated CPU: no periodic maintenance jobs.
    for unit in apt-daily.timer apt-daily-upgrade.timer man-db.timer e2scrub_all.timer \
        e2scrub_reap.service fstrim.timer dpkg-db-backup.timer \
        systemd-networkd-wait-online.service; do
        if [[ -n $(in_root systemctl list-unit-files --no-legend "$unit" 2>/dev/null) ]]; then
            in_root systemctl disable "$unit" >/dev/null 2>&1 || die "cannot disable $unit"
        fi
    done
    # getty-static is wanted by getty.target from the package's own unit directory, so
    # only a mask keeps it from starting agetty on tty2-6 (it runs when dbus is missing).
    in_root systemctl mask getty-static.service >/dev/null 2>&1 || die "cannot mask getty-static"
    in_root systemctl set-default multi-user.target >/dev/null 2>&1

    say "writing /etc/default/grub and running update-grub"
    grub_default=$root/etc/default/grub
    # grub-pc's postinst would install Debian's template as /etc/default/grub; grub-pc
    # (the BIOS boot sector installer) is not in a PV guest, so install it the same way.
    if [[ ! -f $grub_default ]]; then
        [[ -f $root/usr/share/grub/default/grub ]] \
            || die "no /usr/share/grub/default/grub (is grub2-common installed?)"
        install -m 0644 "$root/usr/share/grub/default/grub" "$grub_default"
    fi
    sed -i -e 's/^#\?GRUB_TIMEOUT=.*/GRUB_TIMEOUT=0/' \
        -e 's/^#\?GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX="console=hvc0"/' "$grub_default"
    grep -qx 'GRUB_TIMEOUT=0' "$grub_default" || echo 'GRUB_TIMEOUT=0' >>"$grub_default"
    grep -qx 'GRUB_CMDLINE_LINUX="console=hvc0"' "$grub_default" \
        || echo 'GRUB_CMDLINE_LINUX="console=hvc0"' >>"$grub_default"

    # grub-probe answers for the planned disk while update-grub runs (see the header).
    in_root dpkg-divert --quiet --local --rename --add /usr/sbin/grub-probe \
        || die "dpkg-divert of grub-probe failed"
    cat >"$root/usr/sbin/grub-probe" <<EOF
#!/bin/sh
# Temporary (build-debian-image.sh): the facts of the planned disk for grub-mkconfig.
target=device
while [ \$# -gt 0 ]; do
    case "\$1" in
        --target=*) target=\${1#--target=} ;;
        -t) shift; target=\$1 ;;
        --device|-d|--device-map=*|-m) ;;
        *) ;;
    esac
    shift
done
case "\$target" in
    device) echo /dev/xvda1 ;;
    disk) echo /dev/xvda ;;
    fs) echo ext2 ;;
    fs_uuid) echo $uuid ;;
    fs_label) echo ;;
    partuuid) echo $disk_id-01 ;;
    partmap) echo msdos ;;
    abstraction) ;;
    drive) echo '(hd0,msdos1)' ;;
    bios_hints|compatibility_hint) echo hd0,msdos1 ;;
    hints_string) echo '--hint-bios=hd0,msdos1 --hint-efi=hd0,msdos1 --hint-baremetal=ahci0,msdos1 ' ;;
    cryptodisk_uuid|arc_hints|baremetal_hints|efi_hints|ieee1275_hints) ;;
    *) echo "grub-probe (build wrapper): unknown target \$target" >&2; exit 1 ;;
esac
EOF
    chmod 0755 "$root/usr/sbin/grub-probe"
    # 10_linux writes root=UUID=... only when /dev/disk/by-uuid/<uuid> exists (udev's
    # link on the real guest); the chroot's /dev is mmdebstrap's own directory of device
    # nodes (not the host's /dev: checked), so the link is made there for this run.
    if mountpoint -q "$root/dev" || [[ $(stat -c %d:%i "$root/dev") == $(stat -c %d:%i /dev) ]]; then
        die "the chroot's /dev is a mount (the host's?): will not add /dev/disk/by-uuid there"
    fi
    by_uuid_made=no
    if [[ ! -d $root/dev/disk/by-uuid ]]; then
        mkdir -p "$root/dev/disk/by-uuid"
        by_uuid_made=yes
    fi
    ln -sfn ../../xvda1 "$root/dev/disk/by-uuid/$uuid"
    # test -e follows the link: the device node too (xen-blkfront's major 202, minor 1).
    xvda1_made=no
    if [[ ! -e $root/dev/xvda1 ]]; then
        mknod "$root/dev/xvda1" b 202 1 || die "mknod /dev/xvda1 in the chroot failed"
        xvda1_made=yes
    fi
    mkdir -p "$root/boot/grub"
    status=0
    in_root update-grub >&2 || status=$?
    rm -f "$root/dev/disk/by-uuid/$uuid"
    [[ $xvda1_made == no ]] || rm -f "$root/dev/xvda1"
    [[ $by_uuid_made == no ]] || rm -rf "$root/dev/disk"
    rm -f "$root/usr/sbin/grub-probe"
    in_root dpkg-divert --quiet --local --rename --remove /usr/sbin/grub-probe \
        || die "removing the grub-probe divert failed"
    [[ $status -eq 0 ]] || die "update-grub failed (status $status)"
    if ! grep -q "root=UUID=$uuid" "$root/boot/grub/grub.cfg"; then
        cp "$root/boot/grub/grub.cfg" "$PVKVM_IMG_OUT_DIR/grub.cfg.failed" || true
        die "grub.cfg has no root=UUID=$uuid (kept as $PVKVM_IMG_OUT_DIR/grub.cfg.failed)"
    fi
    # No logs or caches from the build in the image.
    rm -rf "$root"/var/log/*.log "$root"/var/log/apt/* "$root"/var/cache/apt/*.bin
    : >"$root/etc/machine-id"
    exit 0
fi

# ---------------------------------------------------------------------------------------
# The build.
# ---------------------------------------------------------------------------------------
images_dir=$(cd "$(dirname "$script_path")/.." && pwd)
cache_dir=$images_dir/cache
out_dir=$cache_dir/debian-image
mkdir -p "$out_dir"
img=$out_dir/debian-12-pv.img
cfg=$out_dir/debian-12-pv.cfg
key_file=$out_dir/debian-12-pv.key
ssh_key=$out_dir/id_ed25519

suite=bookworm
hostname=debian-pv
root_password=pvkvm
disk_mib=2048        # the whole disk
part_start_mib=1     # where partition 1 (the ext4 filesystem) starts
# The kernel metapackage; its ABI must be the one fetch-debian-kernel.sh gives the tests.
kernel_pkg=linux-image-cloud-amd64
packages=("$kernel_pkg" systemd-sysv udev openssh-server iproute2 procps e2fsprogs
          grub2-common grub-pc-bin)

started=$(date +%s.%N)
say() { echo "build-debian-image: $*" >&2; }
die() { say "error: $*"; exit 1; }
elapsed() { awk -v a="$started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f s", b - a }'; }

export PATH=$PATH:/usr/sbin:/sbin

# Parallel callers would race on the image.
if command -v flock >/dev/null; then
    exec 9>"$out_dir/.lock"
    flock 9
fi

candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '^(none)$' || true
}

# The Debian mirrors this machine's apt uses (deb.debian.org otherwise), as
# fetch-debian-kernel.sh finds them.
system_uri() {
    grep -rhE '^[^#]*https?://' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
        | grep -oE "https?://[^ ]+/$1/?( |\$)" | head -n 1 | tr -d ' ' | sed 's:/$::' || true
}
mirror=$(system_uri debian)
mirror=${mirror:-http://deb.debian.org/debian}
security=$(system_uri debian-security)
security=${security:-http://deb.debian.org/debian-security}
sources=("deb $mirror $suite main" "deb $mirror $suite-updates main"
         "deb $security $suite-security main")

# --- cache key (no network) ------------------------------------------------------------
# apt's candidate versions of the listed packages. `apt-cache policy` takes about a second
# on a machine with large lists, so the answer is kept with a digest of apt's InRelease
# files and asked again only when those change (an apt-get update that got new lists).
candidates_file=$out_dir/.candidates
candidate_versions() {
    local digest
    digest=$(cat /var/lib/apt/lists/*InRelease /var/lib/apt/lists/*_Release 2>/dev/null \
        | sha256sum | cut -d' ' -f1)
    if [[ -f $candidates_file && $(head -n 1 "$candidates_file") == "$digest" ]]; then
        tail -n +2 "$candidates_file"
        return
    fi
    local out
    out=$(apt-cache policy "${packages[@]}" 2>/dev/null \
        | awk '/^[^ ]/ {p=$1} /Candidate:/ {print p "=" $2}' | sed 's/:=/=/')
    printf '%s\n%s\n' "$digest" "$out" >"$candidates_file"
    echo "$out"
}
make_key() {
    printf '%s\n' "format 1" "suite $suite" "${sources[@]}" \
        "mmdebstrap $(dpkg-query -W -f '${Version}' mmdebstrap 2>/dev/null || true)" \
        "$(candidate_versions)" "builder $(sha256sum <"$script_path" | cut -d' ' -f1)"
}
key=$(make_key)

if [[ -s $img && -s $cfg && -s $ssh_key && -f $key_file && $(<"$key_file") == "$key" ]]; then
    say "cached: $img ($(du -h --apparent-size "$img" | cut -f1) sparse," \
        "$(du -h "$img" | cut -f1) on disk; ssh key $ssh_key; $(elapsed))"
    echo "$cfg"
    echo "$img"
    exit 0
fi

# --- tools ---------------------------------------------------------------------------------
[[ $(id -u) -eq 0 ]] || die "must run as root (mmdebstrap --mode=root installs packages into a chroot)"
missing=()
command -v mmdebstrap >/dev/null || missing+=(mmdebstrap)
command -v sfdisk >/dev/null || missing+=(fdisk)
command -v mkfs.ext4 >/dev/null && command -v e2fsck >/dev/null || missing+=(e2fsprogs)
if [[ ${#missing[@]} -gt 0 ]]; then
    [[ -n $(candidate "${missing[0]}") ]] || { say "apt-get update"; apt-get update -qq >&2; }
    say "installing ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
        || die "apt-get install ${missing[*]} failed"
    key=$(make_key)
fi
# apt on a fresh machine has empty lists: the key needs the candidates.
if [[ -z $(candidate "$kernel_pkg") ]]; then
    say "apt knows no $kernel_pkg, running apt-get update"
    apt-get update -qq >&2
    key=$(make_key)
fi

# The kernel ABI the tests use (fetch-debian-kernel.sh's default: bookworm cloud).
test_kernel=$("$(dirname "$script_path")/fetch-debian-kernel.sh" | tail -n 1) \
    || die "fetch-debian-kernel.sh failed"
test_abi=$(basename "$test_kernel")
test_abi=${test_abi#vmlinuz-}

# --- build -------------------------------------------------------------------------------
say "building $img (Debian $suite, kernel $test_abi, mirror $mirror)"
tmp=$(mktemp -d "$out_dir/.build.XXXXXX")
# apt in the chroot downloads as the _apt user, which must reach rootfs/var/lib/apt.
chmod 0755 "$tmp"
cleanup() {
    # mmdebstrap unmounts what it mounted; if it was killed, something may be left.
    if command -v findmnt >/dev/null; then
        { findmnt -rn -o TARGET | grep -F "$tmp/" || true; } | sort -r | while read -r m; do umount -l "$m" || true; done
    fi
    rm -rf "$tmp"
    rm -f "$ssh_key.new" "$ssh_key.pub.new"
}
trap cleanup EXIT

uuid=$(cat /proc/sys/kernel/random/uuid)
disk_id=$(od -An -N4 -tx4 /dev/urandom | tr -d ' \n')
export PVKVM_IMG_UUID=$uuid PVKVM_IMG_DISK_ID=$disk_id PVKVM_IMG_HOSTNAME=$hostname \
    PVKVM_IMG_ROOT_PASSWORD=$root_password PVKVM_IMG_KEY=$ssh_key PVKVM_IMG_OUT_DIR=$out_dir

rootfs=$tmp/rootfs
# The .debs are kept between builds (mmdebstrap's documented sync-in/sync-out recipe), so
# a rebuild downloads only what changed.
debs_dir=$out_dir/debs
mkdir -p "$debs_dir"
find "$debs_dir" -maxdepth 1 -name '*.deb' -mtime +30 -delete
include=$(IFS=,; echo "${packages[*]}")
say "mmdebstrap --variant=minbase --include=$include ($(elapsed))"
# No documentation, manual pages or translations in the image (as in Debian's
# "dpkg path-exclude" recipe); copyright files stay.
# shellcheck disable=SC2016 # $1 in the hooks is mmdebstrap's, expanded by its sh
mmdebstrap --mode=root --variant=minbase --format=directory \
    --aptopt='APT::Install-Recommends "false"' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --dpkgopt='path-include=/usr/share/locale/locale.alias' \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --include="$include" \
    --setup-hook='mkdir -p "$1"/var/cache/apt/archives/' \
    --setup-hook="sync-in $debs_dir /var/cache/apt/archives/" \
    --customize-hook="\"$script_path\" customize-hook \"\$1\"" \
    --customize-hook="sync-out /var/cache/apt/archives $debs_dir" \
    "$suite" "$rootfs" "${sources[@]}" >&2 \
    || die "mmdebstrap failed (see its messages above)"

# The kernel must be the tests' ABI.
shopt -s nullglob
vmlinuz=("$rootfs"/boot/vmlinuz-*)
initrd=("$rootfs"/boot/initrd.img-*)
shopt -u nullglob
[[ ${#vmlinuz[@]} -eq 1 ]] || die "expected one /boot/vmlinuz-* in the image, found ${#vmlinuz[@]}"
[[ ${#initrd[@]} -eq 1 ]] || die "expected one /boot/initrd.img-* in the image (initramfs-tools), found ${#initrd[@]}"
abi=$(basename "${vmlinuz[0]}")
abi=${abi#vmlinuz-}
[[ $abi == "$test_abi" ]] || die "the image's kernel is $abi but the tests use $test_abi (run apt-get update and fetch-debian-kernel.sh, then retry)"
[[ -s $rootfs/boot/grub/grub.cfg ]] || die "no /boot/grub/grub.cfg in the image"
if [[ -s $ssh_key.new ]]; then
    mv -f "$ssh_key.new" "$ssh_key"
    mv -f "$ssh_key.pub.new" "$ssh_key.pub"
fi
say "root filesystem: $(du -sh "$rootfs" | cut -f1) ($(elapsed))"

# The filesystem, then the disk around it.
fs_mib=$((disk_mib - part_start_mib))
fs=$tmp/rootfs.ext4
say "mkfs.ext4 -d ($fs_mib MiB, UUID $uuid)"
truncate -s "${fs_mib}M" "$fs"
mkfs.ext4 -q -F -t ext4 -L root -U "$uuid" -E root_owner=0:0 -d "$rootfs" "$fs" >&2 \
    || die "mkfs.ext4 -d failed"
e2fsck -fn "$fs" >/dev/null 2>&1 || die "e2fsck finds the new filesystem inconsistent"

disk=$tmp/disk.img
truncate -s "${disk_mib}M" "$disk"
say "sfdisk: MBR (disk id 0x$disk_id), partition 1 at $part_start_mib MiB, type 83 (Linux), bootable"
printf '%s\n' "label: dos" "label-id: 0x$disk_id" "unit: sectors" \
    "start=$((part_start_mib * 2048)), size=$((fs_mib * 2048)), type=83, bootable" \
    | sfdisk --quiet "$disk" >&2 || die "sfdisk failed"
dd if="$fs" of="$disk" bs=1M seek="$part_start_mib" conv=sparse,notrunc status=none \
    || die "dd of the filesystem into the disk failed"
rm -f "$fs"

# xl.cfg. The MAC is Xen's OUI with three bytes of the filesystem UUID.
mac=00:16:3e:$(echo "$uuid" | tr -d - | cut -c1-6 | sed 's/\(..\)\(..\)\(..\)/\1:\2:\3/')
# The final (absolute) path of the image.
img_abs=$(cd "$out_dir" && pwd)/$(basename "$img")
cat >"$tmp/disk.cfg" <<EOF
# Debian 12 (bookworm) PV guest built by guest-images/scripts/build-debian-image.sh.
# Console login: root / $root_password (hvc0). SSH: root with $ssh_key.
# Root filesystem: /dev/xvda1, ext4, UUID=$uuid.
name = "debian-12-pv"
type = "pv"
memory = 1024
vcpus = 1
bootloader = "pygrub"
disk = [ 'file:$img_abs,xvda,w' ]
# pvkvm-net and pvkvm-hostfwd are pvkvm's own vif keys (Xen's xl does not know them):
# the user-mode network (passt) and a host port forwarded to the guest's sshd.
# (docs/xl-config.md). Without them pvkvm also picks the user network.
vif = [ 'mac=$mac,pvkvm-net=user,pvkvm-hostfwd=tcp::2222-:22' ]
on_reboot = "restart"
on_poweroff = "destroy"
EOF

mv -f "$disk" "$img"
mv -f "$tmp/disk.cfg" "$cfg"
echo "$key" >"$key_file"
say "done in $(elapsed): $img ($(du -h --apparent-size "$img" | cut -f1) sparse," \
    "$(du -h "$img" | cut -f1) on disk), $cfg, $ssh_key"
echo "$cfg"
echo "$img"
