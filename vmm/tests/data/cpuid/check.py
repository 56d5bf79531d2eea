#!/usr/bin/env python3
"""Self-check for the recorded CPUID files in this directory.

Parses every *.txt, verifies the line format, that leaf 0 / 0x80000000 EAX
cover every basic / extended leaf present, that the vendor string matches the
file name, the bare-metal rules (no hypervisor bit, no 0x4000xxxx leaves),
and prints decoded vendor/family/model plus a few key feature bits.
Exit status 1 on any error.
"""
import glob
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = re.compile(r"^0x[0-9a-f]{8}( 0x[0-9a-f]{8}){5}$")
MSR = re.compile(r"^msr 0x[0-9a-f]{8} 0x[0-9a-f]{16}$")


def parse(path):
    leaves, msrs, errs, comments = {}, {}, [], []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if line.startswith("#"):
                comments.append(line)
                continue
            if DATA.match(line):
                v = [int(x, 16) for x in line.split()]
                key = (v[0], v[1])
                if key in leaves:
                    errs.append("%d: duplicate leaf 0x%08x.%d" % (n, v[0], v[1]))
                leaves[key] = tuple(v[2:])
            elif MSR.match(line):
                _, idx, val = line.split()
                msrs[int(idx, 16)] = int(val, 16)
            else:
                errs.append("%d: bad line %r" % (n, line))
    if not comments:
        errs.append("no leading comment lines")
    return leaves, msrs, errs


def get(leaves, leaf, sub=0, reg=0):
    return leaves.get((leaf, sub), (0, 0, 0, 0))[reg]


EAX, EBX, ECX, EDX = range(4)


def bit(leaves, leaf, sub, reg, b):
    return (get(leaves, leaf, sub, reg) >> b) & 1


def check(path):
    name = os.path.basename(path)
    leaves, msrs, errs = parse(path)
    if (0, 0) not in leaves:
        return ["no leaf 0"], None
    a, b, c, d = leaves[(0, 0)]
    vendor = b"".join(x.to_bytes(4, "little") for x in (b, d, c)).decode("ascii", "replace")
    want = {"intel": "GenuineIntel", "amd": "AuthenticAMD"}[name.split("-")[0]]
    if vendor != want:
        errs.append("vendor %r does not match file name (want %r)" % (vendor, want))
    maxb = a
    maxe = get(leaves, 0x80000000)
    for (leaf, sub) in leaves:
        if leaf < 0x40000000 and leaf > maxb:
            errs.append("basic leaf 0x%x above max 0x%x" % (leaf, maxb))
        if 0x40000000 <= leaf < 0x80000000:
            errs.append("hypervisor leaf 0x%x present" % leaf)
        if leaf >= 0x80000000 and leaf > maxe:
            errs.append("extended leaf 0x%x above max 0x%x" % (leaf, maxe))
    for leaf in range(0, maxb + 1):
        if (leaf, 0) not in leaves:
            errs.append("basic leaf 0x%x missing" % leaf)
    for leaf in range(0x80000000, maxe + 1):
        if (leaf, 0) not in leaves:
            errs.append("extended leaf 0x%x missing" % leaf)
    if bit(leaves, 1, 0, ECX, 31):
        errs.append("hypervisor bit set")
    if bit(leaves, 1, 0, ECX, 26) and not bit(leaves, 1, 0, ECX, 27):
        errs.append("XSAVE without OSXSAVE")
    if bit(leaves, 7, 0, ECX, 3) and not bit(leaves, 7, 0, ECX, 4):
        errs.append("PKU without OSPKE")
    if bit(leaves, 7, 0, EDX, 29) != (0x10A in msrs):
        errs.append("ARCH_CAPS bit and msr 0x10a line disagree")
    # XSAVE: every XCR0/XSS component has a subleaf with a size
    xcr0 = get(leaves, 0xD, 0, EAX) | get(leaves, 0xD, 0, EDX) << 32
    xss = get(leaves, 0xD, 1, ECX) | get(leaves, 0xD, 1, EDX) << 32
    for i in range(2, 64):
        if (xcr0 | xss) >> i & 1 and get(leaves, 0xD, i, EAX) == 0:
            errs.append("XSAVE component %d has no size" % i)
    # brand string
    brand = b"".join(x.to_bytes(4, "little") for l in range(0x80000002, 0x80000005)
                     for x in leaves.get((l, 0), (0, 0, 0, 0)))
    brand = brand.split(b"\0")[0].decode("ascii", "replace").strip()
    sig = get(leaves, 1)
    fam = (sig >> 8) & 0xF
    model = (sig >> 4) & 0xF
    if fam == 0xF:
        fam += (sig >> 20) & 0xFF
    if fam in (0x6, 0xF) or fam >= 0xF:
        model |= ((sig >> 16) & 0xF) << 4
    feats = dict(
        XSAVE=bit(leaves, 1, 0, ECX, 26), OSXSAVE=bit(leaves, 1, 0, ECX, 27),
        AVX2=bit(leaves, 7, 0, EBX, 5), AVX512F=bit(leaves, 7, 0, EBX, 16),
        PKU=bit(leaves, 7, 0, ECX, 3), IBRSB=bit(leaves, 7, 0, EDX, 26),
        IBPB=bit(leaves, 0x80000008, 0, EBX, 12), SBPB=bit(leaves, 0x80000021, 0, EAX, 27),
        AMX=bit(leaves, 7, 0, EDX, 24), AUTO_IBRS=bit(leaves, 0x80000021, 0, EAX, 8))
    info = "%-26s %s fam %02xh model %02xh step %d  %r\n    %s" % (
        name, vendor, fam, model, sig & 0xF, brand,
        " ".join("%s=%d" % kv for kv in feats.items()))
    if 0x10A in msrs:
        info += "\n    ARCH_CAPABILITIES=0x%016x" % msrs[0x10A]
    return errs, info


def main():
    files = sorted(glob.glob(os.path.join(HERE, "*.txt")))
    bad = 0
    if not files:
        print("no files")
        return 1
    for p in files:
        errs, info = check(p)
        if info:
            print(info)
        for e in errs:
            print("  ERROR %s: %s" % (os.path.basename(p), e))
        bad += bool(errs)
    print("%d files, %d with errors" % (len(files), bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
