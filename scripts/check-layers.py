#!/usr/bin/env python3
"""Checks that the crate's top-level modules depend on each other one way only.

Each module belongs to a layer (LAYERS, bottom first). A module may use modules of
its own layer or of layers below it, never above, and the uses inside a layer must not
form a cycle. A use is any `crate::<module>` path outside `#[cfg(test)]` code and
comments. Exits 1 with every offending use listed; prints the layering when clean.
"""
import os
import re
import sys

# Bottom first. The README's Architecture section shows the same picture.
LAYERS = [
    ("foundation", ["clock", "alloc", "errors", "config"]),
    ("telemetry", ["observe"]),
    ("policies", ["ai", "auth", "balance", "ratelimit", "pagination", "alerts"]),
    ("state", ["state"]),
    ("proxy and services", ["proxy", "services"]),
    ("control", ["reload", "admin"]),
    ("server", ["server"]),
    ("entry points", ["demo", "cli"]),
]

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_files(name):
    path = os.path.join(SRC, name)
    if os.path.isdir(path):
        for root, _, files in os.walk(path):
            for f in files:
                if f.endswith(".rs"):
                    yield os.path.join(root, f)
    else:
        yield path + ".rs"


def without_test_items(text):
    """The text with every `#[cfg(test)]` item (up to its `;` or matching `}`) removed."""
    out = []
    at = 0
    while True:
        i = text.find("#[cfg(test)]", at)
        if i < 0:
            out.append(text[at:])
            return "".join(out)
        out.append(text[at:i])
        j = i + len("#[cfg(test)]")
        brace, semi = text.find("{", j), text.find(";", j)
        if brace < 0 or (0 <= semi < brace):
            at = semi + 1 if semi >= 0 else len(text)
            continue
        depth = 0
        for k in range(brace, len(text)):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    break
        at = k + 1


def uses(path):
    text = open(path, encoding="utf-8", errors="replace").read()
    text = re.sub(r"//[^\n]*", "", text)
    text = without_test_items(text)
    found = set(re.findall(r"\bcrate::([a-z_][a-z0-9_]*)", text))
    for group in re.findall(r"use\s+crate::\{([^;]*)\}", text):
        found.update(re.findall(r"(?:^|[,{\s])([a-z_][a-z0-9_]*)", group))
    return found


def main():
    layer_of = {}
    for index, (_, mods) in enumerate(LAYERS):
        for m in mods:
            layer_of[m] = index
    present = sorted(
        e[:-3] if e.endswith(".rs") else e
        for e in os.listdir(SRC)
        if e not in ("lib.rs", "main.rs")
    )
    problems = []
    for m in present:
        if m not in layer_of:
            problems.append(f"src/{m}: not in any layer; add it to LAYERS in {sys.argv[0]}")
    edges = {m: set() for m in present}
    for m in present:
        for f in module_files(m):
            for dep in uses(f):
                if dep == m or dep not in edges:
                    continue
                edges[m].add(dep)
                if m in layer_of and dep in layer_of and layer_of[dep] > layer_of[m]:
                    rel = os.path.relpath(f, os.path.join(SRC, ".."))
                    problems.append(
                        f"{rel}: {m} ({LAYERS[layer_of[m]][0]}) uses crate::{dep}, "
                        f"a layer above it ({LAYERS[layer_of[dep]][0]})"
                    )
    # Cycles (inside a layer, the only place one can still be).
    state = {}

    def visit(m, stack):
        state[m] = "open"
        stack.append(m)
        for d in sorted(edges[m]):
            if state.get(d) == "open":
                cycle = stack[stack.index(d):] + [d]
                problems.append("cycle: " + " -> ".join(cycle))
            elif d not in state:
                visit(d, stack)
        stack.pop()
        state[m] = "done"

    for m in present:
        if m not in state:
            visit(m, [])
    if problems:
        print("module layering broken:", file=sys.stderr)
        for p in problems:
            print("  " + p, file=sys.stderr)
        return 1
    for name, mods in reversed(LAYERS):
        print(f"{name:>20}: {' '.join(mods)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
