#!/usr/bin/env python3
# SPDX-License-Identifier: Apache-2.0
"""check_layering.py — the parts' allowed edges, read from the built archives.

Each part is one static archive (see docs/ARCHITECTURE.md "Parts"). A part
uses another when one of its objects has an undefined symbol that the other
part defines. Every such edge must be in ALLOWED; a strong symbol defined by
two parts is an error too (one owner per symbol).

  check_layering.py [--nm NM] PART=ARCHIVE [PART=ARCHIVE ...]

A part may be named several times (its archives are merged). Exit 0 when the
graph is within the rules, 1 with one line per violation, 2 on bad usage.
"""
import subprocess
import sys

ALLOWED = {
    "daemon": {"runtime", "comm", "client", "base"},
    "runtime": {"comm", "kernels", "base"},
    "comm": {"base"},
    "kernels": {"base"},
    "client": {"base"},
    "base": set(),
}
STRONG = set("TDBRC")  # text, data, bss, read-only, common


def symbols(nm, archive):
    """(defined strong, undefined) global symbol sets of one archive."""
    out = subprocess.run([nm, "-g", "-P", archive], capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"check_layering: {nm} failed on {archive}: {out.stderr.strip()}")
    defined, undefined = set(), set()
    for line in out.stdout.splitlines():
        f = line.split()
        # "archive[member.o]:" headers and blank lines carry no symbol type.
        if len(f) < 2 or f[0].endswith(":"):
            continue
        name, kind = f[0], f[1]
        if kind == "U":
            undefined.add(name)
        elif kind in STRONG:
            defined.add(name)
    return defined, undefined


def main(argv):
    nm = "nm"
    args = list(argv)
    if len(args) >= 2 and args[0] == "--nm":
        nm = args[1]
        args = args[2:]
    parts = {}
    for a in args:
        part, sep, path = a.partition("=")
        if not sep or part not in ALLOWED:
            print(f"check_layering: bad argument '{a}': want PART=ARCHIVE, PART one of {sorted(ALLOWED)}",
                  file=sys.stderr)
            return 2
        parts.setdefault(part, []).append(path)
    if not parts:
        print(__doc__, file=sys.stderr)
        return 2
    owner, uses, problems = {}, {}, []
    for part, archives in sorted(parts.items()):
        undefined = set()
        for ar in archives:
            d, u = symbols(nm, ar)
            undefined |= u
            for s in d:
                if s in owner and owner[s] != part:
                    problems.append(f"symbol {s} is defined by both {owner[s]} and {part}")
                owner.setdefault(s, part)
        uses[part] = undefined
    edges = {}
    for part, undefined in uses.items():
        for s in undefined:
            other = owner.get(s)
            if other and other != part:
                edges.setdefault((part, other), []).append(s)
    for (a, b), syms in sorted(edges.items()):
        status = "ok" if b in ALLOWED[a] else "FORBIDDEN"
        print(f"{a} -> {b}: {len(syms)} symbols ({status})")
        if status != "ok":
            shown = ", ".join(sorted(syms)[:5])
            problems.append(f"{a} -> {b} is not an allowed edge ({a} may use: "
                            f"{', '.join(sorted(ALLOWED[a])) or 'nothing'}); symbols: {shown}")
    for p in problems:
        print(f"check_layering: {p}", file=sys.stderr)
    if not problems:
        print(f"check_layering: {len(parts)} parts, {len(edges)} edges, all allowed")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
