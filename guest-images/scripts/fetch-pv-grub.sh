#!/usr/bin/env bash
# Fetch Debian 12's PV-GRUB (package grub-xen-host: GRUB 2 built as a Xen PV kernel,
# /usr/lib/grub-xen/grub-x86_64-xen.bin) into guest-images/cache/ with `apt-get download`
# (nothing is installed), and print the image's path as the last line.
#
# A Xen user boots it as `kernel = "/usr/lib/grub-xen/grub-x86_64-xen.bin"` with the
# guest's disk: GRUB then reads the disk through blkfront and loads the guest's own
# kernel. Idempotent: a package already downloaded and extracted is reused.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_dir=$(cd "$script_dir/.." && pwd)/cache
mkdir -p "$cache_dir"
say() { echo "fetch-pv-grub: $*" >&2; }

out="$cache_dir/grub-x86_64-xen.bin"
if [[ -s $out ]]; then
    echo "$out"
    exit 0
fi
work=$(mktemp -d "$cache_dir/.pv-grub.XXXXXX")
trap 'rm -rf "$work"' EXIT
cd "$work"
if ! apt-get download grub-xen-host >/dev/null 2>&1; then
    say "apt knows no grub-xen-host; apt-get update"
    apt-get update -qq >&2 || true
    apt-get download grub-xen-host >/dev/null 2>&1 \
        || { say "cannot download grub-xen-host from the apt sources"; exit 1; }
fi
deb=$(ls grub-xen-host_*.deb)
dpkg-deb -x "$deb" x
[[ -s x/usr/lib/grub-xen/grub-x86_64-xen.bin ]] \
    || { say "$deb has no usr/lib/grub-xen/grub-x86_64-xen.bin"; exit 1; }
cp x/usr/lib/grub-xen/grub-x86_64-xen.bin "$out.tmp"
mv "$out.tmp" "$out"
say "PV-GRUB from $deb"
echo "$out"
