"""The import graph of ``ase_definet`` by layer; fails on a cycle or an upward import.

    python tools/import_graph.py            # the graph by layer, then the verdict
    python tools/import_graph.py --quiet    # the verdict only

Every ``import`` in the package counts, at the top of a file or inside a function (a
deferred import is still a dependency), except those under ``if TYPE_CHECKING:`` and
those of a package's lazy ``__getattr__``.
Importing ``a.b.c`` also runs ``a/__init__.py`` and ``a/b/__init__.py``, so those count
as imported too. A module may import its own layer or layers below it, never one above;
cycles are reported between modules (a cycle inside one package is still a cycle).

The layers, lowest first, are set by module in ``LAYERS`` and match the folders: graph/,
model/, core/ (inference), the ASE-facing relaxer and batch modules, data/ (generation),
train/, then the applications (cli, demo, plot) and the package's ``__init__``.
Exit status: 0 clean, 1 with the violations listed.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import defaultdict
from fnmatch import fnmatch
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "ase_definet"
PACKAGE = "ase_definet"

# (layer name, module patterns), lowest first; the first pattern that matches wins
LAYERS: list[tuple[str, list[str]]] = [
    ("graph", ["graph", "graph.*"]),
    ("model", ["model", "model.*"]),
    ("core", ["core", "core.*"]),
    ("ase", ["relaxer", "batch"]),
    ("data", ["data", "data.*"]),
    ("train", ["train", "train.*"]),
    ("app", ["plot", "demo", "cli", "train.__main__", "__init__"]),
]
# a package's __init__ runs whenever one of its modules is imported: it belongs to the
# lowest layer of its modules (and must not import above that layer)
PACKAGE_INIT_LAYER: dict[str, str] = {}


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1] or ["__init__"]
    return ".".join(parts)


def layer_of(module: str) -> str:
    if module in PACKAGE_INIT_LAYER:
        return PACKAGE_INIT_LAYER[module]
    for name, patterns in LAYERS:  # a module named exactly wins over a wildcard
        if module in patterns:
            return name
    for name, patterns in LAYERS:
        if any(fnmatch(module, p) for p in patterns):
            return name
    raise SystemExit(f"module {module!r} is in no layer: add it to LAYERS in {__file__}")


def _skipped_lines(tree: ast.Module) -> set[int]:
    """Lines under ``if TYPE_CHECKING:`` and in a package's module-level ``__getattr__``
    (a lazy re-export of its own submodules: it runs when the name is asked for, not
    when the package or one of its modules is imported)."""
    lines: set[int] = set()
    blocks: list[ast.stmt] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            blocks += node.body
    blocks += [n for n in tree.body if isinstance(n, ast.FunctionDef)
               and n.name == "__getattr__"]
    for child in blocks:
        lines.update(range(child.lineno, (child.end_lineno or child.lineno) + 1))
    return lines


def imports_of(path: Path, modules: set[str]) -> set[str]:
    """The package modules that ``path`` imports (relative names resolved)."""
    me = module_name(path)
    is_pkg = path.name == "__init__.py"
    base = me.split(".") if is_pkg and me != "__init__" else me.split(".")[:-1]
    if me == "__init__":
        base = []
    tree = ast.parse(path.read_text(), str(path))
    skip = _skipped_lines(tree)
    own = me.split(".")

    def mine(package: str) -> bool:
        return own[: len(package.split("."))] == package.split(".") and package != me
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        targets: list[str] = []
        if isinstance(node, ast.ImportFrom):
            if node.level:
                parent = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join([*parent, node.module] if node.module else parent)
            elif node.module and node.module.split(".")[0] == PACKAGE:
                stem = node.module[len(PACKAGE) + 1:]
            else:
                continue
            for alias in node.names:  # `from . import x`: x may be a module
                sub = f"{stem}.{alias.name}" if stem else alias.name
                targets.append(sub if sub in modules else stem)
        elif isinstance(node, ast.Import):
            targets = [a.name[len(PACKAGE) + 1:] for a in node.names
                       if a.name.split(".")[0] == PACKAGE]
        for t in targets:
            t = t or "__init__"
            parts = t.split(".")
            for k in range(1, len(parts) + 1):  # a.b.c runs a and a.b first ...
                m = ".".join(parts[:k])
                if k < len(parts) and mine(m):
                    continue  # ... unless they are packages the importer is already in
                if m in modules and m != me:
                    found.add(m)
    return found


def private_imports(path: Path, modules: set[str]) -> list[str]:
    """``from .x import _name`` and ``x._name`` (x an imported package module) in
    ``path``: private names used outside the module that defines them."""
    tree = ast.parse(path.read_text(), str(path))
    module_aliases: set[str] = set()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.level or (
                node.module or "").startswith(PACKAGE)):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    out.append(f"{module_name(path)}:{node.lineno} imports {alias.name} "
                               f"from {'.' * node.level}{node.module or ''}")
                elif alias.name in {m.rsplit(".", 1)[-1] for m in modules}:
                    module_aliases.add(alias.asname or alias.name)
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.value.id in module_aliases and node.attr.startswith("_")
                and not node.attr.startswith("__")):
            out.append(f"{module_name(path)}:{node.lineno} uses {node.value.id}.{node.attr}")
    return out


def build_graph() -> dict[str, set[str]]:
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(10000)
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def check(graph: dict[str, set[str]]) -> list[str]:
    """The violations: upward imports, cycles and private names crossing modules, one
    line each."""
    rank = {name: k for k, (name, _) in enumerate(LAYERS)}
    problems = []
    for mod in sorted(graph):
        for dep in sorted(graph[mod]):
            if mod == "__init__":
                continue  # the top-level package re-exports: it sits above everything
            if rank[layer_of(dep)] > rank[layer_of(mod)]:
                problems.append(f"upward import: {mod} ({layer_of(mod)}) imports {dep} "
                                f"({layer_of(dep)})")
    for comp in find_cycles(graph):
        problems.append("cycle: " + " <-> ".join(comp))
    paths = sorted(ROOT.rglob("*.py"))
    modules = {module_name(p) for p in paths}
    for path in paths:
        problems.extend("private name: " + s for s in private_imports(path, modules))
    return problems


def describe(graph: dict[str, set[str]]) -> str:
    by_layer: dict[str, list[str]] = defaultdict(list)
    for mod in sorted(graph):
        by_layer[layer_of(mod)].append(mod)
    lines = []
    for name, _ in LAYERS:
        lines.append(f"[{name}]")
        for mod in by_layer.get(name, []):
            deps = ", ".join(sorted(graph[mod])) or "-"
            lines.append(f"  {mod:<22} -> {deps}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quiet", action="store_true", help="the verdict only")
    args = p.parse_args(argv)
    graph = build_graph()
    if not args.quiet:
        print(describe(graph))
        print()
    problems = check(graph)
    layers = " -> ".join(name for name, _ in LAYERS)
    if problems:
        print(f"{len(problems)} problem(s) with the layers {layers}:")
        print("\n".join("  " + s for s in problems))
        return 1
    print(f"{len(graph)} modules, layers {layers}: one-way imports, no cycle")
    return 0


if __name__ == "__main__":
    sys.exit(main())
