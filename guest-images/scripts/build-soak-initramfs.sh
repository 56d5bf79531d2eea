#!/usr/bin/env bash
# Build the soak guest's initramfs: the default guest's busybox initramfs
# (build-default-guest.sh, unchanged) followed by a second archive that adds Debian's
# stress-ng with the shared libraries it loads, and replaces /init with
# guest-images/initramfs/soak-init (the stress run; see guest-images/scripts/soak.sh).
# The kernel unpacks concatenated archives in order and later entries win, so the
# default guest's archive is reused byte for byte and nothing of it changes.
#
# Prints two lines: the kernel path, then (last line) the initramfs path,
# guest-images/cache/initramfs-soak.cpio.gz.
#
# Where the libraries come from: stress-ng and every package of its Depends/Pre-Depends
# closure are fetched with `apt-get download` (cached in guest-images/cache/soak-debs/)
# and unpacked into a scratch root; the archive gets stress-ng, the dynamic loader and
# exactly the shared objects of stress-ng's DT_NEEDED closure, resolved inside that root.
# Nothing is taken from the host's /lib: the guest's userland is what the Debian archive
# ships, whatever the build machine has installed, and the build needs no root. (A build
# check runs the staged binary through the staged loader and fails if any library
# resolves outside the scratch root.)
#
# Cached like the default guest: the archive is rebuilt only when its key changes (the
# package versions, the default initramfs, soak-init, newc.py and this script). `apt-get
# update` runs only when apt knows no stress-ng.
set -euo pipefail

script_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
images_dir=$(cd "$script_dir/.." && pwd)
cache_dir=$images_dir/cache
debs_dir=$cache_dir/soak-debs
src_dir=$images_dir/initramfs
mkdir -p "$cache_dir" "$debs_dir"

init_src=$src_dir/soak-init
newc=$src_dir/newc.py
out=$cache_dir/initramfs-soak.cpio.gz
key_file=$cache_dir/initramfs-soak.key
multiarch=x86_64-linux-gnu
interp=/lib64/ld-linux-x86-64.so.2

say() { echo "build-soak-initramfs: $*" >&2; }
die() { say "$*"; exit 1; }

for tool in readelf dpkg-deb apt-get apt-cache sha256sum; do
    command -v "$tool" >/dev/null || die "$tool is missing (guest-images/scripts/install-deps.sh installs it)"
done

# The default guest first (it takes its own lock): kernel and busybox archive.
paths=$("$script_dir/build-default-guest.sh")
kernel=$(tail -n 2 <<<"$paths" | head -n 1)
default_initrd=$(tail -n 1 <<<"$paths")
[[ -s $kernel && -s $default_initrd ]] || die "build-default-guest.sh gave no kernel and initramfs"
# (build-default-guest.sh installs python3, which newc.py needs, when root and missing.)
command -v python3 >/dev/null || die "python3 is missing"

if command -v flock >/dev/null; then
    exec 9>"$cache_dir/.build-soak-initramfs.lock"
    flock 9
fi

# --- the package closure, at apt's candidate versions ---------------------------------------
closure() {
    # Top-level lines are packages; "<name>" lines are virtual packages (none today, and
    # a real package providing one is listed too).
    apt-cache depends --recurse --important stress-ng 2>/dev/null \
        | grep -E '^[a-z0-9]' | LC_ALL=C sort -u || true
}
packages=$(closure)
if ! grep -qx stress-ng <<<"$packages"; then
    [[ $(id -u) -eq 0 ]] || die "apt knows no stress-ng and only root can run apt-get update"
    say "apt knows no stress-ng, running apt-get update"
    apt-get update -qq >&2
    packages=$(closure)
fi
grep -qx stress-ng <<<"$packages" || die "apt offers no stress-ng"

# One apt-cache call for all (one each costs a second apiece): "pkg:" starts a block.
# shellcheck disable=SC2086 # one argument per package name
mapfile -t pinned < <(apt-cache policy $packages 2>/dev/null \
    | awk '/^[^ ]/ { p = $1; sub(/:$/, "", p) } /^  Candidate:/ { print p "=" $2 }')
[[ ${#pinned[@]} -eq $(wc -l <<<"$packages") ]] || die "apt-cache policy answered for ${#pinned[@]} of $(wc -l <<<"$packages") packages"
for p in "${pinned[@]}"; do
    [[ ${p#*=} != "(none)" ]] || die "apt has no candidate version of ${p%%=*}"
done

deb_of() { # pkg=version -> cached .deb path (empty when not downloaded)
    local pkg=${1%%=*} version=${1#*=}
    find -H "$debs_dir" -maxdepth 1 -name "${pkg}_${version//:/%3a}_*.deb" -print -quit
}
missing=()
for p in "${pinned[@]}"; do
    [[ -n $(deb_of "$p") ]] || missing+=("$p")
done
if [[ ${#missing[@]} -gt 0 ]]; then
    say "downloading ${#missing[@]} packages (${missing[*]})"
    (cd "$debs_dir" && apt-get download -qq "${missing[@]}" >&2)
fi
debs=()
for p in "${pinned[@]}"; do
    deb=$(deb_of "$p")
    [[ -n $deb ]] || die "apt-get download left no .deb for $p"
    arch=$(dpkg-deb -f "$deb" Architecture)
    [[ $arch == amd64 || $arch == all ]] || die "$deb is for $arch, the guest needs amd64"
    debs+=("$deb")
done

# --- cache key ------------------------------------------------------------------------------
[[ -f $init_src ]] || die "$init_src is missing"
[[ -f $newc ]] || die "$newc is missing"
key=$(printf '%s\n' \
    "format 1" \
    "${pinned[@]}" \
    "default $(sha256sum <"$default_initrd" | cut -d' ' -f1)" \
    "soak-init $(sha256sum <"$init_src" | cut -d' ' -f1)" \
    "newc.py $(sha256sum <"$newc" | cut -d' ' -f1)" \
    "builder $(sha256sum <"${BASH_SOURCE[0]}" | cut -d' ' -f1)")

if [[ -s $out && -f $key_file && $(<"$key_file") == "$key" ]]; then
    echo "$kernel"
    echo "$out"
    exit 0
fi

# --- build ----------------------------------------------------------------------------------
say "building $out (${#pinned[@]} packages, $(grep '^stress-ng=' <<<"$(printf '%s\n' "${pinned[@]}")"))"
tmp=$(mktemp -d "$cache_dir/soak-initramfs.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"
for deb in "${debs[@]}"; do
    dpkg-deb -x "$deb" "$root"
done
stress=$root/usr/bin/stress-ng
[[ -f $stress ]] || die "the stress-ng package has no usr/bin/stress-ng"

# Resolves a soname the way the guest's loader will find it: in the multiarch library
# directories of the unpacked root (bookworm's packages are not /usr-merged yet).
find_lib() {
    local d
    for d in "lib/$multiarch" "usr/lib/$multiarch" lib usr/lib; do
        if [[ -e $root/$d/$1 ]]; then
            echo "$root/$d/$1"
            return
        fi
    done
}
needed() { readelf -dW "$1" | sed -n 's/.*(NEEDED).*Shared library: \[\(.*\)\]/\1/p'; }

got_interp=$(readelf -lW "$stress" | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p')
[[ $got_interp == "$interp" ]] || die "stress-ng asks for interpreter '$got_interp', expected $interp"

# Breadth-first over DT_NEEDED, starting from stress-ng.
declare -A lib_src=()
queue=("$stress")
while [[ ${#queue[@]} -gt 0 ]]; do
    elf=${queue[0]}
    queue=("${queue[@]:1}")
    while read -r soname; do
        [[ -n $soname && -z ${lib_src[$soname]:-} ]] || continue
        path=$(find_lib "$soname")
        [[ -n $path ]] || die "no package of stress-ng's closure ships $soname (needed by ${elf#"$root"/})"
        lib_src[$soname]=$(readlink -f "$path")
        queue+=("${lib_src[$soname]}")
    done < <(needed "$elf")
done
interp_src=$(readlink -f "$root$interp")
[[ -f $interp_src ]] || die "libc6 has no $interp"

# Staged tree: every library as a regular file under its soname in /lib/<multiarch> (a
# directory Debian's loader searches by default, no ld.so.cache needed), the loader at
# its ELF interpreter path.
stage=$tmp/stage
mkdir -p "$stage/lib/$multiarch" "$stage/lib64" "$stage/usr/bin"
cp "$stress" "$stage/usr/bin/stress-ng"
cp "$interp_src" "$stage$interp"
for soname in "${!lib_src[@]}"; do
    cp "${lib_src[$soname]}" "$stage/lib/$multiarch/$soname"
done

# Build check: the staged loader resolves every library inside the stage, and the binary
# runs. (--library-path stands in for the guest's default search path; a library missing
# from the stage would resolve to the host's /lib and is caught by the path check.)
listing=$("$stage$interp" --library-path "$stage/lib/$multiarch" --list "$stage/usr/bin/stress-ng") \
    || die "the staged loader cannot load stress-ng"
outside=$(grep '=>' <<<"$listing" | grep -v "=> $stage/" || true)
[[ -z $outside ]] || die "libraries resolved outside the stage: $outside"
version=$("$stage$interp" --library-path "$stage/lib/$multiarch" "$stage/usr/bin/stress-ng" --version) \
    || die "the staged stress-ng does not run"
say "$version; ${#lib_src[@]} libraries: $(printf '%s ' "${!lib_src[@]}" | tr ' ' '\n' | LC_ALL=C sort | tr '\n' ' ')"

cp "$init_src" "$stage/init"
{
    echo "dir /lib 0755"
    echo "dir /lib/$multiarch 0755"
    echo "dir /lib64 0755"
    echo "dir /usr 0755"
    echo "dir /usr/bin 0755"
    echo "file /init init 0755"
    echo "file /usr/bin/stress-ng usr/bin/stress-ng 0755"
    echo "file $interp ${interp#/} 0755"
    for soname in "${!lib_src[@]}"; do
        echo "file /lib/$multiarch/$soname lib/$multiarch/$soname 0644"
    done
} >"$stage/manifest"
(cd "$stage" && python3 "$newc" create overlay.cpio.gz <manifest)
cat "$default_initrd" "$stage/overlay.cpio.gz" >"$tmp/initramfs.cpio.gz"
mv -f "$tmp/initramfs.cpio.gz" "$out"
printf '%s\n' "$key" >"$key_file"
say "$(wc -l <"$stage/manifest") overlay entries, $(stat -c %s "$out") bytes"

echo "$kernel"
echo "$out"
