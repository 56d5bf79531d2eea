#!/usr/bin/env bash
# Fetch the newest Debian bookworm cloud kernel (linux-image-6.1.0-*-cloud-amd64) into
# guest-images/cache/ and print the path of its vmlinuz as the last line.
#
# Idempotent: a package already downloaded and extracted is reused; `apt-get update` runs
# only when apt knows no such package (a fresh container has empty lists).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_dir=$(cd "$script_dir/.." && pwd)/cache
mkdir -p "$cache_dir"

# Only the signed image package: "-unsigned" and "-dbg" carry the same kernel (or just
# symbols) and are not what a Debian cloud VM installs.
pattern='^linux-image-6\.1\.0-[0-9]+-cloud-amd64$'

newest_package() {
    apt-cache search --names-only '^linux-image-6\.1\.0-.*-cloud-amd64$' 2>/dev/null \
        | awk '{print $1}' | grep -E "$pattern" | sort -V | tail -n 1 || true
}

pkg=$(newest_package)
if [[ -z "$pkg" ]]; then
    echo "fetch-debian-kernel: no $pattern known to apt, running apt-get update" >&2
    apt-get update -qq >&2
    pkg=$(newest_package)
fi
if [[ -z "$pkg" ]]; then
    echo "fetch-debian-kernel: apt offers no package matching $pattern" >&2
    exit 1
fi

# The package name's ABI number ("6.1.0-47") names the vmlinuz; several uploads of one
# ABI are possible, so the .deb file itself is picked by apt's candidate version.
version=$(apt-cache policy "$pkg" | awk '/Candidate:/ {print $2}')
abi=${pkg#linux-image-}
vmlinuz="$cache_dir/boot/vmlinuz-$abi"

if [[ ! -s "$vmlinuz" ]]; then
    deb=$(find "$cache_dir" -maxdepth 1 -name "${pkg}_${version//:/%3a}_amd64.deb" -print -quit)
    if [[ -z "$deb" ]]; then
        echo "fetch-debian-kernel: downloading $pkg $version" >&2
        # apt-get download writes into the current directory.
        (cd "$cache_dir" && apt-get download -qq "$pkg=$version" >&2)
        deb=$(find "$cache_dir" -maxdepth 1 -name "${pkg}_*_amd64.deb" -print | sort -V | tail -n 1)
    fi
    if [[ -z "$deb" ]]; then
        echo "fetch-debian-kernel: apt-get download left no .deb for $pkg" >&2
        exit 1
    fi
    # Extract the whole package into a scratch dir and keep only boot/vmlinuz-*: the
    # modules tree is large and pvkvm boots with an initramfs of its own.
    tmp=$(mktemp -d "$cache_dir/extract.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    dpkg-deb -x "$deb" "$tmp"
    mkdir -p "$cache_dir/boot"
    for f in "$tmp"/boot/vmlinuz-*; do
        [[ -e "$f" ]] || { echo "fetch-debian-kernel: $deb has no boot/vmlinuz-*" >&2; exit 1; }
        cp "$f" "$cache_dir/boot/"
    done
fi
# A flat name too: the loader's tests look for guest-images/cache/vmlinuz-*-cloud-amd64.
ln -sf "boot/vmlinuz-$abi" "$cache_dir/vmlinuz-$abi"
if [[ ! -s "$vmlinuz" ]]; then
    echo "fetch-debian-kernel: $vmlinuz missing after extraction" >&2
    exit 1
fi
echo "$cache_dir/vmlinuz-$abi"
