#!/usr/bin/env python3
"""Write (or list) a reproducible newc ("070701") cpio archive, gzip-compressed.

Used by guest-images/scripts/build-default-guest.sh instead of GNU cpio, so that the
archive needs no root and no extra package: device nodes are plain archive entries (no
mknod), every entry is owned by 0:0 with mtime 0 (or --mtime), inode numbers are
assigned in order, entries are sorted by path, and the gzip header carries no name and
no time. Same inputs, same bytes.

  newc.py create OUT.cpio.gz < MANIFEST
  newc.py list ARCHIVE            (gzip-compressed or plain newc)

MANIFEST lines (like the kernel's usr/gen_init_cpio; paths absolute, '#' comments):
  dir   <path> <mode>
  file  <path> <source file> <mode>
  slink <path> <target> <mode>
  nod   <path> <mode> <c|b> <major> <minor>
Every parent directory of an entry must itself be a `dir` entry.
"""
import gzip
import os
import stat
import sys

TRAILER = "TRAILER!!!"


def die(msg):
    sys.stderr.write("newc.py: %s\n" % msg)
    sys.exit(1)


def norm(path, lineno):
    if not path.startswith("/") or path == "/":
        die("line %d: path %r must be absolute and not /" % (lineno, path))
    parts = path.strip("/").split("/")
    if any(p in ("", ".", "..") for p in parts):
        die("line %d: path %r is not normalised" % (lineno, path))
    return "/".join(parts)


def parse(manifest):
    entries = {}
    for lineno, raw in enumerate(manifest.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        f = line.split()
        kind = f[0]
        want = {"dir": 3, "file": 4, "slink": 4, "nod": 6}.get(kind)
        if want is None or len(f) != want:
            die("line %d: cannot parse %r" % (lineno, raw))
        name = norm(f[1], lineno)
        if name in entries:
            die("line %d: %s listed twice" % (lineno, f[1]))
        if kind == "dir":
            e = dict(mode=stat.S_IFDIR | int(f[2], 8), nlink=2, data=b"")
        elif kind == "file":
            with open(f[2], "rb") as fh:
                data = fh.read()
            e = dict(mode=stat.S_IFREG | int(f[3], 8), nlink=1, data=data)
        elif kind == "slink":
            e = dict(mode=stat.S_IFLNK | int(f[3], 8), nlink=1, data=f[2].encode())
        else:
            typ = {"c": stat.S_IFCHR, "b": stat.S_IFBLK}.get(f[3])
            if typ is None:
                die("line %d: device type must be c or b" % lineno)
            e = dict(mode=typ | int(f[2], 8), nlink=1, data=b"",
                     rdev=(int(f[4]), int(f[5])))
        entries[name] = e
    for name in entries:
        parent = name.rpartition("/")[0]
        if parent and not stat.S_ISDIR(entries.get(parent, {}).get("mode", 0)):
            die("%s: parent directory /%s is not a dir entry" % (name, parent))
    return entries


def pad4(n):
    return (4 - n % 4) % 4


def header(ino, mode, uid, gid, nlink, mtime, size, rdev, namesize):
    fields = (ino, mode, uid, gid, nlink, mtime, size, 0, 0, rdev[0], rdev[1], namesize, 0)
    return ("070701" + "".join("%08X" % v for v in fields)).encode()


def build(entries, mtime):
    out = bytearray()

    def put(ino, e, name):
        bname = name.encode() + b"\0"
        out.extend(header(ino, e["mode"], 0, 0, e["nlink"], mtime, len(e["data"]),
                          e.get("rdev", (0, 0)), len(bname)))
        out.extend(bname)
        out.extend(b"\0" * pad4(110 + len(bname)))
        out.extend(e["data"])
        out.extend(b"\0" * pad4(len(e["data"])))

    # Sorted by path components: a parent always precedes its children.
    for ino, name in enumerate(sorted(entries, key=lambda n: n.split("/")), 1):
        put(ino, entries[name], name)
    put(0, dict(mode=0, nlink=1, data=b""), TRAILER)
    return bytes(out)


def create(out_path, mtime):
    data = build(parse(sys.stdin.read()), mtime)
    tmp = out_path + ".tmp"
    with open(tmp, "wb") as raw:
        # filename="" and mtime=0: nothing of the build host in the gzip header.
        with gzip.GzipFile(filename="", mode="wb", compresslevel=9, fileobj=raw,
                           mtime=0) as gz:
            gz.write(data)
    os.replace(tmp, out_path)


def list_archive(path):
    with open(path, "rb") as fh:
        data = fh.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    pos = 0
    while True:
        h = data[pos:pos + 110]
        if len(h) < 110 or h[:6] != b"070701":
            die("bad newc header at offset %d" % pos)
        v = [int(h[6 + 8 * i:14 + 8 * i], 16) for i in range(13)]
        ino, mode, uid, gid, nlink, mtime, size, _, _, rmaj, rmin, namesize, _ = v
        pos += 110
        name = data[pos:pos + namesize - 1].decode()
        pos += namesize + pad4(110 + namesize)
        body = data[pos:pos + size]
        pos += size + pad4(size)
        if name == TRAILER:
            break
        extra = ""
        if stat.S_ISLNK(mode):
            extra = " -> " + body.decode()
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            extra = " (%d,%d)" % (rmaj, rmin)
        print("%s %d %d/%d %8d %d %s%s" % (stat.filemode(mode), nlink, uid, gid, size,
                                           mtime, name, extra))


def main(argv):
    if len(argv) >= 3 and argv[1] == "create":
        mtime = 0
        if len(argv) == 5 and argv[3] == "--mtime":
            mtime = int(argv[4])
        elif len(argv) != 3:
            die("usage: newc.py create OUT [--mtime N] < MANIFEST")
        create(argv[2], mtime)
    elif len(argv) == 3 and argv[1] == "list":
        list_archive(argv[2])
    else:
        die("usage: newc.py create OUT [--mtime N] < MANIFEST | newc.py list ARCHIVE")


if __name__ == "__main__":
    main(sys.argv)
