#!/usr/bin/env bash
# Build pvkvm's default guest: the Debian cloud kernel (via fetch-debian-kernel.sh) and a
# busybox initramfs whose /init (guest-images/initramfs/init) mounts proc/sys/dev, prints
# "pvkvm default guest: Linux <release> on <hypervisor>" and runs an interactive shell
# (prompt "~ # ") on /dev/hvc0, powering off when it exits. The Xen PV frontends
# xen-blkfront and xen-netfront (modules in Debian's cloud kernel, with whatever they
# depend on) come from the kernel's own .deb into /lib/modules/<abi>/, and /init loads
# them, so /dev/xvd* and eth0 appear when pvkvm gives the guest a disk or a NIC.
#
# Prints two lines: the kernel path, then (last line) the initramfs path,
# guest-images/cache/initramfs-default.cpio.gz (newc cpio, gzip).
#
# Idempotent and cached in guest-images/cache/: the newest busybox-static .deb is
# downloaded once; the archive is rebuilt only when its key changes (busybox version,
# SHA-256 of the init script, of the archive writer newc.py, of the module extractor
# modules.py and of this script, the kernel .deb the modules come from and the module list).
# `apt-get update` runs only when apt knows no busybox-static (a fresh container has
# empty lists). A second run with unchanged inputs touches no network and writes nothing.
#
# The archive is written by guest-images/initramfs/newc.py (python3), not GNU cpio: it
# needs no root for device nodes and gives a byte-reproducible archive (entries sorted,
# owner 0:0, mtime 0, gzip header without name or time).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
images_dir=$(cd "$script_dir/.." && pwd)
cache_dir=$images_dir/cache
src_dir=$images_dir/initramfs
mkdir -p "$cache_dir"

init_src=$src_dir/init
newc=$src_dir/newc.py
modules_py=$src_dir/modules.py
out=$cache_dir/initramfs-default.cpio.gz
key_file=$cache_dir/initramfs-default.key

# Applets /init and an interactive session rely on; the build fails if one is missing.
required_applets=(sh mount mkdir mknod echo cat uname dmesg poweroff sync ls grep sleep
                  setsid cttyhack stty insmod)

# Kernel modules /init loads (with their dependencies, resolved by modules.py).
frontend_modules=(xen-blkfront xen-netfront)

say() { echo "build-default-guest: $*" >&2; }
die() { say "$*"; exit 1; }

# Parallel callers (tests) would otherwise race on the .deb and the archive.
if command -v flock >/dev/null; then
    exec 9>"$cache_dir/.build-default-guest.lock"
    flock 9
fi

apt_updated=no
apt_update() {
    [[ $apt_updated == yes ]] && return
    [[ $(id -u) -eq 0 ]] || die "apt knows no $1 and only root can run apt-get update"
    say "apt knows no $1, running apt-get update"
    apt-get update -qq >&2
    apt_updated=yes
}

candidate() {
    apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}' | grep -v '^(none)$' || true
}

# --- python3 (writes the archive) ---------------------------------------------------
if ! command -v python3 >/dev/null; then
    [[ $(id -u) -eq 0 ]] || die "python3 is missing; install python3-minimal"
    [[ -n $(candidate python3-minimal) ]] || apt_update python3-minimal
    say "installing python3-minimal"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-minimal >&2
fi

# --- kernel ---------------------------------------------------------------------------
kernel=$("$script_dir/fetch-debian-kernel.sh" | tail -n 1)
[[ -s $kernel ]] || die "fetch-debian-kernel.sh gave no kernel ('$kernel')"

# --- busybox-static .deb (newest apt knows) ------------------------------------------
pkg='busybox-static'
version=$(candidate "$pkg")
if [[ -z $version ]]; then
    apt_update "$pkg"
    version=$(candidate "$pkg")
fi
[[ -n $version ]] || die "apt offers no $pkg"

# apt-get download names the file with the epoch's ':' as '%3a'.
deb=$(find -H "$cache_dir" -maxdepth 1 -name "${pkg}_${version//:/%3a}_*.deb" -print -quit)
if [[ -z $deb ]]; then
    say "downloading $pkg $version"
    (cd "$cache_dir" && apt-get download -qq "$pkg=$version" >&2)
    deb=$(find -H "$cache_dir" -maxdepth 1 -name "${pkg}_${version//:/%3a}_*.deb" -print -quit)
fi
[[ -n $deb ]] || die "apt-get download left no .deb for $pkg $version"
arch=$(dpkg-deb -f "$deb" Architecture)
# The guest kernel is amd64; so must busybox be (apt downloads the host's architecture).
[[ $arch == amd64 ]] || die "$deb is for $arch, the guest needs amd64"

# --- the kernel's .deb (for its modules) ----------------------------------------------
# fetch-debian-kernel.sh keeps the .deb it extracted the vmlinuz from in the cache.
abi=$(basename "$kernel")
abi=${abi#vmlinuz-}
kernel_deb=$(find -H "$cache_dir" -maxdepth 1 -name "linux-image-${abi}_*_amd64.deb" -print \
    | sort -V | tail -n 1)
if [[ -z $kernel_deb ]]; then
    say "no linux-image-${abi}_*.deb in $cache_dir: the initramfs gets no kernel modules" \
        "(delete guest-images/cache/boot/vmlinuz-$abi and rerun to fetch it)"
    modules_key="modules none"
else
    modules_key="modules $abi $(basename "$kernel_deb") $(stat -c %s "$kernel_deb") ${frontend_modules[*]}"
fi

# --- cache key ---------------------------------------------------------------------------
[[ -f $init_src ]] || die "$init_src is missing"
[[ -f $newc ]] || die "$newc is missing"
[[ -f $modules_py ]] || die "$modules_py is missing"
key=$(printf '%s\n' \
    "format 1" \
    "$pkg $version $arch" \
    "init $(sha256sum <"$init_src" | cut -d' ' -f1)" \
    "newc.py $(sha256sum <"$newc" | cut -d' ' -f1)" \
    "modules.py $(sha256sum <"$modules_py" | cut -d' ' -f1)" \
    "$modules_key" \
    "builder $(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)")

if [[ -s $out && -f $key_file && $(<"$key_file") == "$key" ]]; then
    echo "$kernel"
    echo "$out"
    exit 0
fi

# --- build ---------------------------------------------------------------------------------
say "building $out ($pkg $version)"
tmp=$(mktemp -d "$cache_dir/initramfs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
dpkg-deb -x "$deb" "$tmp/deb"
busybox=$tmp/deb/bin/busybox
[[ -x $busybox ]] || die "$deb has no bin/busybox"

# Every applet at busybox's own install path (bin/sh, sbin/poweroff, usr/bin/setsid,
# ...), as symlinks to /bin/busybox. Not linuxrc and sbin/init: if /init fails, the
# kernel must say so instead of falling back to busybox init.
applets=$("$busybox" --list-full) || die "cannot run $busybox on this host to list its applets"
applets=$(grep -vxE 'linuxrc|sbin/init|bin/busybox' <<<"$applets" | LC_ALL=C sort)
for a in "${required_applets[@]}"; do
    grep -qE "(^|/)$a\$" <<<"$applets" || die "busybox $version has no '$a' applet"
done

# The frontend modules, flat in /lib/modules/<abi>/ with modules.dep and the load order.
modules=()
if [[ -n $kernel_deb ]]; then
    mkdir -p "$tmp/modules"
    python3 "$modules_py" "$kernel_deb" "$abi" "$tmp/modules" "${frontend_modules[@]}" \
        >"$tmp/modules.list" || die "cannot extract ${frontend_modules[*]} from $kernel_deb"
    mapfile -t modules <"$tmp/modules.list"
    [[ ${#modules[@]} -gt 0 ]] || die "modules.py found no modules in $kernel_deb"
    say "modules for $abi: ${modules[*]}"
fi

{
    echo "dir /bin 0755"
    echo "dir /sbin 0755"
    echo "dir /usr 0755"
    echo "dir /usr/bin 0755"
    echo "dir /usr/sbin 0755"
    echo "dir /dev 0755"
    echo "dir /proc 0555"
    echo "dir /sys 0555"
    echo "dir /tmp 1777"
    echo "dir /root 0700"
    # The kernel opens /dev/console for /init's stdin/out/err before /init runs.
    echo "nod /dev/console 0600 c 5 1"
    # Sources relative to $tmp (newc.py runs there): manifest fields are split on blanks.
    echo "file /bin/busybox deb/bin/busybox 0755"
    echo "file /init init 0755"
    if [[ ${#modules[@]} -gt 0 ]]; then
        echo "dir /lib 0755"
        echo "dir /lib/modules 0755"
        echo "dir /lib/modules/$abi 0755"
        for m in "${modules[@]}" modules.dep pvkvm-load.list; do
            echo "file /lib/modules/$abi/$m modules/$m 0644"
        done
    fi
    while read -r a; do
        echo "slink /$a /bin/busybox 0777"
    done <<<"$applets"
} >"$tmp/manifest"

cp "$init_src" "$tmp/init"
(cd "$tmp" && python3 "$newc" create initramfs.cpio.gz <manifest)
mv -f "$tmp/initramfs.cpio.gz" "$out"
printf '%s\n' "$key" >"$key_file"
say "$(wc -l <"$tmp/manifest") entries, $(stat -c %s "$out") bytes"

echo "$kernel"
echo "$out"
