#!/usr/bin/env bash
# Installs what building and testing pvkvm needs on a fresh Debian machine (root), then
# fetches the Debian PV guest kernels: the default guest's (bookworm cloud) and the two
# more that the loader tests read. Rust (stable, host target) must already be there:
# pvkvm uses no other toolchain or target.
set -euo pipefail

# binutils: readelf, which build-soak-initramfs.sh resolves stress-ng's libraries with;
# objdump, nm and c++filt, which the engine link check reads its image with (python3
# for its reach.py).
# passt: the user-mode network (`--net user`) and its netback test.
# e2fsprogs: mkfs.ext4 -d, which make-ext4-image.sh makes guest disk images with (and
# debugfs, which extract-boot.sh reads them with).
# mmdebstrap, fdisk (sfdisk): build-debian-image.sh's Debian 12 PV disk image;
# openssh-client: the test that logs in to it over ssh.
need_apt=(gcc libc6-dev make dpkg ca-certificates binutils python3 passt e2fsprogs mmdebstrap fdisk openssh-client)

if [[ $(id -u) -eq 0 ]]; then
    echo "install-deps: apt-get update" >&2
    apt-get update -qq >&2
    echo "install-deps: apt-get install ${need_apt[*]}" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
else
    for tool in gcc dpkg-deb apt-get readelf objdump python3 passt; do
        command -v "$tool" >/dev/null || { echo "install-deps: $tool is missing and this is not root; install: ${need_apt[*]}" >&2; exit 1; }
    done
fi
command -v cargo >/dev/null || { echo "install-deps: cargo (stable Rust) is missing; install it with rustup" >&2; exit 1; }

script_dir=$(dirname "${BASH_SOURCE[0]}")
# The Debian guest kernel and the default initramfs (busybox), cached.
"$script_dir/build-default-guest.sh"
# bookworm's generic flavour (an xz payload with the x86 BCJ filter) and trixie's 6.12
# cloud kernel (zstd, from a private apt configuration): the loader tests read both.
"$script_dir/fetch-debian-kernel.sh" --flavour generic
"$script_dir/fetch-debian-kernel.sh" --suite trixie
# The soak guest (vmm/tests/soak.rs): the default initramfs plus Debian's stress-ng and
# the libraries it loads, downloaded as .debs (nothing is installed on this machine).
"$script_dir/build-soak-initramfs.sh"
# The Debian 12 PV disk image (vmm/tests/debian_image.rs), cached.
"$script_dir/build-debian-image.sh" >/dev/null
# Debian's PV-GRUB (vmm/tests/pv_grub.rs), downloaded, not installed.
"$script_dir/fetch-pv-grub.sh" >/dev/null
