#!/usr/bin/env python3
"""Which of the image's own functions reach the allocator (for check.sh).

Reads `objdump -d` output of an image linked with undefined symbols allowed, builds the
reference graph (calls, jumps and address-taking, e.g. vtables built in code), and walks
it backwards from the allocator shims. Paths through one-time lazy initialisation
(`spin::once::Once::try_call_once_slow`, as iced-x86 built its decoder tables on the
first decode before the engine had its own decoder) are reported apart. Prints the
frontier: functions of pv-engine, pv-mm or the check itself whose next step towards the
allocator is outside them. Per-call frontier functions matching a pattern of the file
given second (known-allocations.txt: regular expressions on the mangled names, one a
line, `#` comments; empty today) are known and listed as such. Exit status 1 when any
other path exists, one-time ones included (the shim has no allocator even for one
allocation), 0 otherwise.
"""
import collections
import re
import sys

ONCE = re.compile(r"try_call_once_slow")
OURS = re.compile(r"pv_engine|pv_mm|pvkvm_lc|^_start$")
# The allocator shims, and the check's own allocator methods (never inlined: with LTO
# the shims are inlined into their callers).
ALLOC = re.compile(r"rust_(alloc|dealloc|realloc|alloc_zeroed)$|NoAllocator")


def graph(path):
    fn = None
    callers = collections.defaultdict(set)
    with open(path) as f:
        for line in f:
            m = re.match(r"^[0-9a-f]+ <([^>]*)>:$", line)
            if m:
                fn = m.group(1)
                continue
            for m in re.finditer(r"<([^+>]*)(\+0x[0-9a-f]+)?>", line):
                if fn and m.group(1) != fn:
                    callers[m.group(1)].add(fn)
    return callers


def reach(callers, stop):
    """Frontier of the functions that reach the allocator without passing `stop`:
    (ours, callee) for every reference of one of our functions to a function outside
    them that reaches it."""
    targets = [k for k in callers if ALLOC.search(k)]
    seen = set(targets)
    todo = list(targets)
    while todo:
        t = todo.pop()
        if stop(t):
            continue
        for c in callers.get(t, ()):
            if c not in seen:
                seen.add(c)
                todo.append(c)
    frontier = {}
    for t in seen:
        if OURS.search(t) or stop(t):
            continue
        for c in callers.get(t, ()):
            if c in seen and OURS.search(c):
                frontier.setdefault(c, t)
    return frontier


known = []
if len(sys.argv) > 2:
    with open(sys.argv[2]) as f:
        known = [re.compile(x.strip()) for x in f if x.strip() and not x.startswith("#")]
callers = graph(sys.argv[1])
per_call = reach(callers, lambda name: ONCE.search(name) is not None)
once = reach(callers, lambda name: False)
new = False
for s, p in sorted(per_call.items()):
    if any(k.search(s) for k in known):
        print(f"known (per call): {s} -> {p}")
    else:
        print(f"NEW (per call): {s} -> {p}")
        new = True
for s, p in sorted(once.items()):
    if s not in per_call:
        print(f"NEW (one-time): {s} -> {p}")
        new = True
sys.exit(1 if new else 0)
