#!/usr/bin/env python3
"""The layering check: fails when a module of the `corecast` crate imports a higher layer.

The layers (bottom to top) and the modules in each are written down once, in LAYERS
below; docs/ARCHITECTURE.md draws the same picture. A module may import its own layer
and any layer below it, never one above. Inside a layer, RANKS orders the modules that
must not import each other both ways (config is data: it imports no I/O; metrics reads
counter tables and knows no router or cluster types).

What counts as an import: every `crate::a::...` path in code (use declarations,
including grouped `use crate::{a, b::c}`, and fully qualified paths), outside comments
and outside `#[cfg(test)]` modules and test-only files (tests may reach anything).

Usage: python3 scripts/check-layers.py [--graph]   (exit 1 on a violation)
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "engine", "src")

# (layer number, name, top-level modules of engine/src). Imports point down only.
LAYERS = [
    (0, "sans-IO protocols", ["proto"]),
    (1, "vocabulary: messages, ids, metadata, registry types, counters, config data",
     ["vocab", "stats", "cert", "config", "logging", "metrics", "startup"]),
    (2, "cluster bridge (Redis sequencer; speaks its own message types)", ["cluster"]),
    (3, "shard engine (private): accept, driver, publish/fan-out, QUIC, TLS, boot", ["net"]),
    (4, "public API: Engine, handles, router, middleware, auth helpers", ["app"]),
    (5, "crate root and binaries", ["lib", "bin"]),
]

# Order inside layer 1: a module may import only modules of a lower rank (or its own).
RANKS = {"vocab": 0, "cert": 0, "stats": 1, "config": 1, "logging": 2, "metrics": 2, "startup": 2}

# Files that only exist under #[cfg(test)] (declared as such by their parent).
TEST_FILES = set()

LAYER_OF = {m: n for n, _, mods in LAYERS for m in mods}


def module_of(path):
    rel = os.path.relpath(path, SRC)
    first = rel.split(os.sep)[0]
    if first.endswith(".rs"):
        first = first[:-3]
    return first


def lex(text):
    """Code with comments, string and char literals blanked (one pass, so `//` inside
    a string or `"` inside a char literal cannot confuse it)."""
    out, i, n = [], 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if text.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif text.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
        elif re.match(r'b?r#*"', text[i:i + 40]) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            m = re.match(r'b?r(#*)"', text[i:])
            end = text.find('"' + m.group(1), i + m.end())
            i = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""')
        elif c == '"' or (c == "b" and text.startswith('b"', i) and (i == 0 or not text[i - 1].isalnum())):
            i += 2 if c == "b" else 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
            i += 1
            out.append('""')
        elif c == "'":
            m = re.match(r"'(?:\\.[^']*|[^'\\\n])'", text[i:])
            if m:  # a char literal; otherwise a lifetime
                i += m.end()
                out.append("' '")
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip(text):
    """Code without comments, literals and #[cfg(test)] modules."""
    text = lex(text)
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+\w+\s*\{", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        depth, j = 1, m.end()
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        i = j
    out.append(text[i:])
    return "".join(out)


def find_test_files():
    """Files declared by `#[cfg(test)] mod name;` in their parent."""
    for dirpath, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            text = open(path, encoding="utf-8").read()
            for m in re.finditer(r"#\[cfg\(test\)\]\s*(?:pub(?:\([a-z]+\))?\s+)?mod\s+(\w+)\s*;", text):
                base = os.path.splitext(path)[0] if f not in ("mod.rs", "lib.rs") else dirpath
                TEST_FILES.add(os.path.join(base, m.group(1) + ".rs"))
                TEST_FILES.add(os.path.join(base, m.group(1), "mod.rs"))


def imports(code):
    """Top-level crate modules a file's code names."""
    found = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", code))
    for group in re.findall(r"\bcrate::\{([^;]*?)\}\s*;", code, flags=re.S):
        for part in re.split(r",", group):
            name = re.match(r"\s*([a-z_][a-z0-9_]*)", part)
            if name:
                found.add(name.group(1))
    return found


def allowed(src, dst):
    ls, ld = LAYER_OF.get(src), LAYER_OF.get(dst)
    if ld is None:  # a re-export name at the crate root (e.g. crate::Message)
        return None
    if ls is None:
        return None
    if ls != ld:
        return ld < ls
    if src in RANKS and dst in RANKS:
        return RANKS[dst] <= RANKS[src] or src == dst
    return True


def find_cycles(graph):
    """Circles among top-level modules (each reported once, from its smallest name)."""
    found = set()

    def walk(path):
        for nxt in sorted(graph.get(path[-1], ())):
            if nxt == path[0]:
                i = path.index(min(path))
                found.add(tuple(path[i:] + path[:i] + [min(path)]))
            elif nxt not in path and nxt > path[0]:
                walk(path + [nxt])

    for start in sorted(graph):
        walk([start])
    return sorted(found)


def main():
    find_test_files()
    unknown, violations, graph = [], [], {}
    for dirpath, _, files in os.walk(SRC):
        for f in sorted(files):
            if not f.endswith(".rs"):
                continue
            path = os.path.join(dirpath, f)
            if path in TEST_FILES:
                continue
            src = module_of(path)
            if src not in LAYER_OF:
                unknown.append(os.path.relpath(path, ROOT))
                continue
            code = strip(open(path, encoding="utf-8").read())
            for dst in sorted(imports(code)):
                if dst == src:
                    continue
                graph.setdefault(src, set()).add(dst)
                ok = allowed(src, dst)
                if ok is None and src != "lib" and dst not in LAYER_OF:
                    violations.append((os.path.relpath(path, ROOT), dst, "names a crate-root re-export; import it from its module"))
                elif ok is False:
                    violations.append((os.path.relpath(path, ROOT), dst,
                                       f"layer {LAYER_OF[src]} ({src}) imports layer {LAYER_OF[dst]} ({dst})"))
    cycles = find_cycles(graph)
    for cyc in cycles:
        violations.append(("engine/src", " -> ".join(cyc), "modules import each other in a circle"))
    if "--graph" in sys.argv:
        for src in sorted(graph):
            print(f"{src} -> {', '.join(sorted(graph[src]))}")
    for path in unknown:
        print(f"check-layers: {path}: module not in any layer (add it to LAYERS in scripts/check-layers.py)")
    for path, dst, why in violations:
        print(f"check-layers: {path}: imports crate::{dst}: {why}")
    bad = len(unknown) + len(violations)
    print(f"layers: {0 if bad else 1} passed, {1 if bad else 0} failed")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
