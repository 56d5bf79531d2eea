#!/usr/bin/env bash
# Extract the kernel and initrd that a disk image's GRUB menu boots by default, the way
# pygrub would, for `pvkvm run --kernel --initrd --cmdline` until pvkvm reads grub.cfg
# itself:
#
#   extract-boot.sh IMAGE OUTDIR
#
# IMAGE: a raw disk with an MBR partition table (the first Linux partition is read) or a
# bare ext2/3/4 filesystem. Reads /boot/grub/grub.cfg with debugfs (no mount, no loop
# device, no root), takes the first `linux` and `initrd` lines (the default entry when
# GRUB_DEFAULT=0, as build-debian-image.sh's image has) and dumps both files into OUTDIR.
# Prints three lines: the kernel path, the initrd path, the kernel command line.
set -euo pipefail

say() { echo "extract-boot: $*" >&2; }
die() { say "error: $*"; exit 1; }

[[ $# -eq 2 ]] || die "usage: extract-boot.sh IMAGE OUTDIR"
image=$1
outdir=$2
[[ -f $image ]] || die "'$image' is not a file"
export PATH=$PATH:/usr/sbin:/sbin
command -v debugfs >/dev/null || die "debugfs is missing: install e2fsprogs"
mkdir -p "$outdir"

# The first partition of type 83 in the MBR (bytes 446..509, signature 55 aa), or 0.
offset=$(python3 - "$image" <<'EOF'
import struct, sys
with open(sys.argv[1], "rb") as f:
    mbr = f.read(512)
off = 0
if len(mbr) == 512 and mbr[510:512] == b"\x55\xaa":
    for i in range(4):
        e = mbr[446 + 16 * i: 462 + 16 * i]
        if e[4] == 0x83:
            off = struct.unpack_from("<I", e, 8)[0] * 512
            break
print(off)
EOF
)
fs="$image?offset=$offset"

grub_cfg=$(debugfs -R 'cat /boot/grub/grub.cfg' "$fs" 2>/dev/null) || true
[[ -n $grub_cfg ]] || die "no /boot/grub/grub.cfg in $image (filesystem at byte $offset)"
linux_line=$(grep -m1 -E '^\s*linux\s' <<<"$grub_cfg") || die "grub.cfg has no linux line"
initrd_line=$(grep -m1 -E '^\s*initrd\s' <<<"$grub_cfg") || die "grub.cfg has no initrd line"
read -r _ kernel_path cmdline <<<"$linux_line"
read -r _ initrd_path <<<"$initrd_line"

for p in "$kernel_path" "$initrd_path"; do
    out=$outdir/$(basename "$p")
    rm -f "$out"
    debugfs -R "dump $p $out" "$fs" 2>/dev/null
    [[ -s $out ]] || die "cannot dump $p from $image"
done
say "$image: $kernel_path, $initrd_path"
echo "$outdir/$(basename "$kernel_path")"
echo "$outdir/$(basename "$initrd_path")"
echo "$cmdline"
