#!/usr/bin/env bash
# Makes an ext4 disk image for a pvkvm guest (`pvkvm run --disk OUT,vdev=xvda`):
#
#   make-ext4-image.sh OUT SIZE_MIB [DIR]
#
# OUT is a raw image of SIZE_MIB MiB (sparse) holding one ext4 filesystem (no partition
# table: the guest mounts /dev/xvda directly) with DIR's contents, or empty without DIR.
# Uses `mkfs.ext4 -d` (e2fsprogs >= 1.43): no root, no loop device, no mount. The
# filesystem's root directory is owned by 0:0; files keep DIR's owners and modes. The
# image is checked with `e2fsck -fn` and only then moved to OUT, so OUT is never half
# written. Fails if DIR does not fit.
set -euo pipefail

say() { echo "make-ext4-image: $*" >&2; }
die() { say "$*"; exit 1; }

[[ $# -eq 2 || $# -eq 3 ]] || die "usage: make-ext4-image.sh OUT SIZE_MIB [DIR]"
out=$1
size_mib=$2
dir=${3:-}
[[ $size_mib =~ ^[1-9][0-9]*$ ]] || die "SIZE_MIB must be a positive whole number, not '$size_mib'"
# ext4 needs some room for its metadata (journal, group descriptors, inode tables).
(( size_mib >= 2 )) || die "SIZE_MIB must be at least 2"
[[ -z $dir || -d $dir ]] || die "'$dir' is not a directory"

# mkfs.ext4 and e2fsck live in /sbin, which a normal user's PATH may lack.
export PATH=$PATH:/usr/sbin:/sbin
for tool in mkfs.ext4 e2fsck; do
    command -v "$tool" >/dev/null || die "$tool is missing: install e2fsprogs (guest-images/scripts/install-deps.sh)"
done

out_dir=$(dirname -- "$out")
[[ -d $out_dir ]] || die "directory '$out_dir' does not exist"
tmp=$(mktemp "$out_dir/.make-ext4-image.XXXXXX")
trap 'rm -f "$tmp"' EXIT
chmod 0644 "$tmp"
truncate -s "${size_mib}M" "$tmp"

args=(-q -F -t ext4 -L pvkvm -m 0 -E root_owner=0:0)
[[ -n $dir ]] && args+=(-d "$dir")
mkfs.ext4 "${args[@]}" "$tmp" >&2 || die "mkfs.ext4 failed (does '${dir:-nothing}' fit in $size_mib MiB?)"
e2fsck -fn "$tmp" >/dev/null 2>&1 || die "e2fsck finds the new filesystem inconsistent"
mv -f "$tmp" "$out"
trap - EXIT
say "$out: ext4, $size_mib MiB${dir:+, from $dir}"
