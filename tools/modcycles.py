#!/usr/bin/env python3
"""Fails when files inside one crate import each other in a cycle.

Usage: tools/modcycles.py [CRATE_SRC_DIR ...]   (default: every services/*/src and proto/src)

Why a script and not `cargo modules dependencies --acyclic`: cargo-modules links
rust-analyzer, which takes minutes to build from source on CI's two cores for one check,
and its graph counts a parent's `mod` declarations and re-exports as uses, which flags every
`mod.rs` that re-exports its children. This reads what the code names instead:

- each file is a node (`lib.rs`/`main.rs` is the crate root, `a/mod.rs` and `a.rs` are `a`);
- an edge A -> B for each `crate::`, `super::` or `self::` path in A (in `use` items,
  braces expanded, and inline) that resolves to a module in file B; a name that a root or
  `mod.rs` re-exports with `pub use` resolves to the file that defines it;
- the root and each `mod.rs` own their children: their edges into their own subtree are
  not uses;
- test code (`#[cfg(test)]` modules) is not read: tests may reach anywhere.

A strongly connected component of more than one file is a cycle; each is printed with one
edge per file and its line, and the exit status is 1.
"""

import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def module_of(src, path):
    rel = os.path.relpath(path, src)[:-3].split(os.sep)
    if rel in (["lib"], ["main"]):
        return ()
    if rel[-1] == "mod":
        rel = rel[:-1]
    return tuple(rel)


RAW_STRING = re.compile(r'b?r(#*)"')  # r"…", r#"…"#, br"…"
CHAR = re.compile(r"'(?:\\.[^']*|[^'\\])'")  # 'a', '\n', '\u{1F600}' (not a lifetime)


def blank(text):
    """Blanks comments, string and char literals (keeping newlines), in one left-to-right pass."""
    out, i, n = [], 0, len(text)

    def keep_lines(chunk):
        out.append("\n" * chunk.count("\n"))

    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            i = n if j < 0 else j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            keep_lines(text[i:j])
            i = j
        elif (m := RAW_STRING.match(text, i)) and (i == 0 or not (text[i - 1].isalnum() or text[i - 1] == "_")):
            end = text.find('"' + m.group(1), m.end())
            end = n if end < 0 else end + 1 + len(m.group(1))
            out.append('""')
            keep_lines(text[i:end])
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""')
            keep_lines(text[i:j + 1])
            i = j + 1
        elif c == "'" and (m := CHAR.match(text, i)):
            out.append("' '")
            i = m.end()
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip(text):
    """Drops comments, string contents and test modules, keeping line numbers."""
    text = blank(text)
    out, lines = [], text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if re.match(r"\s*#\[cfg\(test\)\]", line) and i + 1 < len(lines) and re.match(
                r"\s*(pub(\([^)]*\))?\s+)?mod\s+\w+\s*\{", lines[i + 1]):
            depth, j = 0, i + 1
            while j < len(lines):
                depth += lines[j].count("{") - lines[j].count("}")
                if depth <= 0 and "{" in "".join(lines[i + 1:j + 1]):
                    break
                j += 1
            out.extend([""] * (j - i + 1))
            i = j + 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def expand(tree):
    """Expands a use tree `a::{b, c::{d, e}}` into paths."""
    tree = re.sub(r"\s+", "", tree)
    m = re.match(r"^(.*?)\{(.*)\}$", tree)
    if not m:
        return [tree]
    prefix, inner = m.group(1), m.group(2)
    parts, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            parts.append(cur)
            cur = ""
            continue
        depth += (ch == "{") - (ch == "}")
        cur += ch
    parts.append(cur)
    return [p for part in parts if part for p in expand(prefix + part)]


def paths_in(text):
    """Yields (line, path) for every crate-relative path in `text`."""
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        line = text.count("\n", 0, m.start()) + 1
        for p in expand(m.group(1)):
            p = re.sub(r"\bas\b.*$", "", p.replace("::self", ""))
            yield line, p
    no_use = re.sub(r"\buse\s+[^;]+;", lambda m: "\n" * m.group(0).count("\n"), text)
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", no_use):
        yield no_use.count("\n", 0, m.start()) + 1, m.group(1)


def absolute(module, path, local_mods):
    segs = path.split("::")
    if segs[0] == "crate":
        return tuple(segs[1:])
    if segs[0] in ("self", "super"):
        base = list(module)
        while segs and segs[0] in ("self", "super"):
            if segs[0] == "super":
                base = base[:-1]
            segs = segs[1:]
        return tuple(base) + tuple(segs)
    if segs[0] in local_mods:  # `use store::X` in a root or a mod.rs names its child
        return tuple(module) + tuple(segs)
    return None


def check(src):
    files = {}
    for dirpath, _, names in os.walk(src):
        for n in names:
            if n.endswith(".rs"):
                p = os.path.join(dirpath, n)
                files[module_of(src, p)] = p
    if not files:
        return []
    owners = {m for m, p in files.items() if m == () or p.endswith("mod.rs")}
    texts = {m: strip(open(p, encoding="utf-8").read()) for m, p in files.items()}

    def file_for(abs_path):
        for k in range(len(abs_path), -1, -1):
            if abs_path[:k] in files:
                return abs_path[:k], abs_path[k:]
        return (), abs_path

    # re-exports: (owner module, name) -> absolute path it names
    aliases = {}
    for m in owners:
        kids = {k[len(m)] for k in files if len(k) > len(m) and k[:len(m)] == m}
        for um in re.finditer(r"\bpub(?:\([^)]*\))?\s+use\s+([^;]+);", texts[m]):
            for p in expand(um.group(1)):
                alias = None
                am = re.search(r"\bas\s+(\w+)$", p)
                if am:
                    alias = am.group(1)
                    p = re.sub(r"\s*as\s+\w+$", "", p)
                a = absolute(m, p, kids)
                if a:
                    aliases[(m, alias or a[-1])] = a

    def resolve(abs_path, depth=0):
        f, rest = file_for(abs_path)
        if rest and (f, rest[0]) in aliases and depth < 8:
            target = aliases[(f, rest[0])] + tuple(rest[1:])
            if target != abs_path:
                return resolve(target, depth + 1)
        return f

    edges = {m: {} for m in files}
    for m in files:
        kids = {k[len(m)] for k in files if len(k) > len(m) and k[:len(m)] == m}
        for line, p in paths_in(texts[m]):
            a = absolute(m, p, kids if m in owners else set())
            if a is None:
                continue
            t = resolve(a)
            if t == m or t not in files:
                continue
            if m in owners and t[:len(m)] == m:
                continue  # a parent owns its children
            if t == ():
                continue  # the root only declares and re-exports
            edges[m].setdefault(t, line)

    # Tarjan's strongly connected components
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(files):
        if v not in index:
            visit(v)

    report = []
    for comp in comps:
        members = set(comp)
        lines = []
        for v in sorted(comp):
            for w, line in sorted(edges[v].items()):
                if w in members:
                    lines.append(f"    {os.path.relpath(files[v], ROOT)}:{line} uses "
                                 f"{os.path.relpath(files[w], ROOT)}")
        report.append(lines)
    return report


def main(argv):
    dirs = argv or sorted(
        os.path.join(ROOT, d) for d in
        [os.path.join("services", s, "src") for s in os.listdir(os.path.join(ROOT, "services"))]
        + ["proto/src"] if os.path.isdir(os.path.join(ROOT, d)))
    failed = False
    for src in dirs:
        for lines in check(src):
            failed = True
            print(f"import cycle in {os.path.relpath(src, ROOT)}:")
            print("\n".join(lines))
    if failed:
        print("modcycles: make the arrows point one way (move the shared item down a layer)")
        return 1
    print(f"modcycles: no import cycle between files in {len(dirs)} crates")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
