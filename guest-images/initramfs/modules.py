#!/usr/bin/env python3
"""Extract kernel modules and everything they depend on from a Debian linux-image .deb.

    modules.py DEB ABI OUTDIR NAME...

NAME is a module name as modprobe takes it (xen-blkfront or xen_blkfront). The .deb
carries no modules.dep (depmod makes it at install time), so dependencies come from each
module's own `.modinfo` section (`depends=a,b`), which is what depmod reads too.

Writes, flat in OUTDIR: `<module>.ko` for each module needed (decompressed when the .deb
has `.ko.xz`), `modules.dep` in depmod's format for these files (so busybox modprobe can
use them), and `pvkvm-load.list`: the file names in load order, dependencies first.
Prints the load list on stdout. Fails if a named module or a dependency is missing, or
was built for another kernel (vermagic).
"""

import lzma
import subprocess
import sys
import tarfile


def norm(name: str) -> str:
    return name.replace("-", "_")


def modinfo(data: bytes) -> dict:
    """Fields of the .modinfo strings (NUL-separated key=value, found by searching)."""
    info = {}
    for key in (b"depends=", b"vermagic=", b"name="):
        i = data.find(b"\0" + key)
        if i >= 0:
            j = data.find(b"\0", i + 1)
            info[key[:-1].decode()] = data[i + 1 + len(key):j].decode("ascii", "replace")
    return info


def ko_bytes(member_name: str, raw: bytes) -> bytes:
    if member_name.endswith(".ko.xz"):
        return lzma.decompress(raw)
    if member_name.endswith(".ko"):
        return raw
    raise SystemExit(f"modules.py: {member_name}: unsupported module compression")


def members(deb: str):
    """Yields (name, fileobj-reader) for each regular file in the .deb's data."""
    proc = subprocess.Popen(["dpkg-deb", "--fsys-tarfile", deb], stdout=subprocess.PIPE)
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for m in tar:
                if m.isfile():
                    yield m.name, (lambda m=m: tar.extractfile(m).read())
    finally:
        proc.stdout.close()
        if proc.wait() != 0:
            raise SystemExit(f"modules.py: dpkg-deb --fsys-tarfile {deb} failed")


def main() -> None:
    if len(sys.argv) < 5:
        raise SystemExit(__doc__)
    deb, abi, outdir, wanted = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
    prefix = f"./lib/modules/{abi}/kernel/"

    # One pass over the data: every module's raw bytes (parsed only when needed).
    path_of, raw_of = {}, {}
    for name, read in members(deb):
        if name.startswith(prefix) and (name.endswith(".ko") or name.endswith(".ko.xz")):
            base = norm(name.rsplit("/", 1)[1].split(".ko")[0])
            path_of[base], raw_of[base] = name, read()
    deps_of, data_of = {}, {}

    def load(mod: str) -> None:
        if mod in data_of:
            return
        data = ko_bytes(path_of[mod], raw_of[mod])
        info = modinfo(data)
        vermagic = info.get("vermagic", "").split(" ")[0]
        if vermagic != abi:
            raise SystemExit(f"modules.py: {path_of[mod]} is for kernel '{vermagic}', not {abi}")
        data_of[mod] = data
        deps_of[mod] = [d for d in info.get("depends", "").split(",") if d]

    # Dependencies first (depth-first post-order), each once.
    order, seen = [], set()

    def visit(mod: str, chain: list) -> None:
        if mod in seen:
            return
        if mod in chain:
            raise SystemExit(f"modules.py: dependency cycle {' -> '.join(chain + [mod])}")
        if mod not in path_of:
            via = f" (needed by {chain[-1]})" if chain else ""
            raise SystemExit(f"modules.py: no module {mod} in {deb}{via}")
        load(mod)
        for d in deps_of[mod]:
            visit(norm(d), chain + [mod])
        seen.add(mod)
        order.append(mod)

    for w in wanted:
        visit(norm(w), [])

    file_of = {m: path_of[m].rsplit("/", 1)[1].split(".ko")[0] + ".ko" for m in order}
    for m in order:
        with open(f"{outdir}/{file_of[m]}", "wb") as f:
            f.write(data_of[m])
    with open(f"{outdir}/modules.dep", "w") as f:
        for m in order:
            deps = " ".join(file_of[norm(d)] for d in deps_of[m])
            f.write(f"{file_of[m]}:{' ' + deps if deps else ''}\n")
    with open(f"{outdir}/pvkvm-load.list", "w") as f:
        for m in order:
            f.write(file_of[m] + "\n")
    for m in order:
        print(file_of[m])


if __name__ == "__main__":
    main()
