#!/usr/bin/env bash
# Fetch the newest Debian kernel of one flavour and suite into guest-images/cache/ and
# print the path of its vmlinuz as the last line.
#
#   fetch-debian-kernel.sh [--flavour cloud|generic] [--suite bookworm|trixie]
#
#   (default)                  bookworm  linux-image-6.1.0-*-cloud-amd64   (lz4 bzImage)
#   --flavour generic          bookworm  linux-image-6.1.0-*-amd64         (xz bzImage)
#   --suite trixie             trixie    linux-image-6.12.*-cloud-amd64
#
# bookworm comes from the system's apt sources. trixie comes from a private apt
# configuration under guest-images/cache/apt-trixie/ (its own sources list, lists and
# package cache), so a bookworm machine's apt setup is neither needed nor changed.
#
# Idempotent: a package already downloaded and extracted is reused; `apt-get update` runs
# only when apt knows no such package (a fresh container has empty lists).
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
cache_dir=$(cd "$script_dir/.." && pwd)/cache
mkdir -p "$cache_dir"

say() { echo "fetch-debian-kernel: $*" >&2; }
die() { say "$*"; exit 1; }
usage() { die "usage: $0 [--flavour cloud|generic] [--suite bookworm|trixie]"; }

flavour=cloud
suite=bookworm
while [[ $# -gt 0 ]]; do
    case $1 in
        --flavour) [[ $# -ge 2 ]] || usage; flavour=$2; shift 2 ;;
        --flavour=*) flavour=${1#*=}; shift ;;
        --suite) [[ $# -ge 2 ]] || usage; suite=$2; shift 2 ;;
        --suite=*) suite=${1#*=}; shift ;;
        *) usage ;;
    esac
done

# The kernel series each suite ships, as a regex for the package name's ABI part
# ("6.1.0-47" on bookworm, "6.12.48+deb13" on trixie).
case $suite in
    bookworm) abi_re='6\.1\.0-[0-9]+' ;;
    trixie) abi_re='6\.12\.[0-9]+\+deb13' ;;
    *) usage ;;
esac
# Only the signed image package: "-unsigned" and "-dbg" carry the same kernel (or just
# symbols) and are not what a Debian VM installs. The generic flavour has no infix, so
# anchoring the ABI right before "-amd64" keeps out -cloud-amd64 and -rt-amd64.
case $flavour in
    cloud) pattern="^linux-image-${abi_re}-cloud-amd64\$" ;;
    generic) pattern="^linux-image-${abi_re}-amd64\$" ;;
    *) usage ;;
esac

# apt for the suite: the system's for bookworm, a private configuration for trixie.
apt_opts=()
if [[ $suite != bookworm ]]; then
    # Follow the Debian mirrors this machine's apt already uses (deb.debian.org otherwise).
    system_uri() {
        grep -rhE '^[^#]*https?://' /etc/apt/sources.list /etc/apt/sources.list.d/ 2>/dev/null \
            | grep -oE "https?://[^ ]+/$1/?( |\$)" | head -n 1 | tr -d ' ' | sed 's:/$::' || true
    }
    mirror=$(system_uri debian)
    mirror=${mirror:-http://deb.debian.org/debian}
    security=$(system_uri debian-security)
    security=${security:-http://deb.debian.org/debian-security}
    apt_dir=$cache_dir/apt-$suite
    mkdir -p "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial" "$apt_dir/sources.list.d"
    # The kernel's security updates reach the -security suite first.
    keyring=/usr/share/keyrings/debian-archive-keyring.gpg
    printf '%s\n' \
        "deb [signed-by=$keyring] $mirror $suite main" \
        "deb [signed-by=$keyring] $mirror $suite-updates main" \
        "deb [signed-by=$keyring] $security $suite-security main" >"$apt_dir/sources.list.new"
    # Rewritten only when it changes, so the lists stay valid between runs.
    if cmp -s "$apt_dir/sources.list.new" "$apt_dir/sources.list"; then
        rm -f "$apt_dir/sources.list.new"
    else
        mv -f "$apt_dir/sources.list.new" "$apt_dir/sources.list"
        rm -rf "$apt_dir/state/lists" "$apt_dir/cache"/*.bin
        mkdir -p "$apt_dir/state/lists/partial"
    fi
    # apt downloads as the unprivileged _apt user when it exists; give it the partial dirs.
    if [[ $(id -u) -eq 0 ]] && id _apt >/dev/null 2>&1; then
        chown _apt "$apt_dir/state/lists/partial" "$apt_dir/cache/archives/partial"
    fi
    # The empty sources.list.d keeps the system's bookworm sources out; the dpkg status
    # stays the system's (apt needs one, and nothing is installed from this config).
    apt_opts=(
        -o "Dir::Etc::SourceList=$apt_dir/sources.list"
        -o "Dir::Etc::SourceParts=$apt_dir/sources.list.d"
        -o "Dir::State=$apt_dir/state"
        -o "Dir::Cache=$apt_dir/cache"
    )
fi

newest_package() {
    apt-cache "${apt_opts[@]}" search --names-only "$pattern" 2>/dev/null \
        | awk '{print $1}' | grep -E "$pattern" | sort -V | tail -n 1 || true
}

pkg=$(newest_package)
if [[ -z "$pkg" ]]; then
    say "no $pattern known to apt ($suite), running apt-get update"
    apt-get "${apt_opts[@]}" update -qq >&2
    pkg=$(newest_package)
fi
[[ -n "$pkg" ]] || die "apt offers no package matching $pattern ($suite)"

# The package name's ABI ("6.1.0-47-cloud-amd64") names the vmlinuz; several uploads of
# one ABI are possible, so the .deb file itself is picked by apt's candidate version.
version=$(apt-cache "${apt_opts[@]}" policy "$pkg" | awk '/Candidate:/ {print $2}')
[[ -n "$version" && "$version" != "(none)" ]] || die "apt has no candidate version of $pkg"
abi=${pkg#linux-image-}
vmlinuz="$cache_dir/boot/vmlinuz-$abi"

if [[ ! -s "$vmlinuz" ]]; then
    deb_name="${pkg}_${version//:/%3a}_amd64.deb"
    deb=$(find -H "$cache_dir" -maxdepth 1 -name "$deb_name" -print -quit)
    if [[ -z "$deb" ]]; then
        say "downloading $pkg $version ($suite)"
        # apt-get download writes into the current directory.
        (cd "$cache_dir" && apt-get "${apt_opts[@]}" download -qq "$pkg=$version" >&2)
        deb=$(find -H "$cache_dir" -maxdepth 1 -name "$deb_name" -print -quit)
    fi
    [[ -n "$deb" ]] || die "apt-get download left no $deb_name"
    # Extract the whole package into a scratch dir and keep only boot/vmlinuz-*: the
    # modules tree is large and pvkvm boots with an initramfs of its own.
    tmp=$(mktemp -d "$cache_dir/extract.XXXXXX")
    trap 'rm -rf "$tmp"' EXIT
    dpkg-deb -x "$deb" "$tmp"
    mkdir -p "$cache_dir/boot"
    for f in "$tmp"/boot/vmlinuz-*; do
        [[ -e "$f" ]] || die "$deb has no boot/vmlinuz-*"
        cp "$f" "$cache_dir/boot/"
    done
fi
# A flat name too: the loader's tests look for guest-images/cache/vmlinuz-<abi>.
ln -sf "boot/vmlinuz-$abi" "$cache_dir/vmlinuz-$abi"
[[ -s "$vmlinuz" ]] || die "$vmlinuz missing after extraction"
echo "$cache_dir/vmlinuz-$abi"
