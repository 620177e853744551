"""Import circles among moldwatch's own modules (model_store and service).

    .venv/bin/python bench/import_graph.py            # every import: top level, in functions, TYPE_CHECKING
    .venv/bin/python bench/import_graph.py --runtime  # leave out TYPE_CHECKING-only imports

Builds the graph of imports between the packages' modules with ``ast`` (no module is imported)
and prints each strongly connected component of more than one module, with the edges inside it
(``run@LINE`` or ``type@LINE`` for an import under ``if TYPE_CHECKING:``). Exit code 1 when there
is a circle. A package's ``__init__`` that a submodule implicitly runs is not counted as an edge:
only imports written in the code are.
"""
from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("model_store", "service")


def module_files(root: Path) -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            modules[".".join(parts)] = path
    return modules


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                lines.update(n.lineno for n in ast.walk(statement) if hasattr(n, "lineno"))
    return lines


def import_edges(modules: dict[str, Path]) -> dict[str, dict[str, set[tuple[str, int]]]]:
    """module -> imported module -> {(kind, line)}; kind is ``run`` or ``type`` (TYPE_CHECKING)."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, dict[str, set[tuple[str, int]]]] = {m: {} for m in modules}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        typing_only = _type_checking_lines(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
                    for _ in range(node.level - 1):
                        package = package.rpartition(".")[0]
                    base = f"{package}.{base}" if base else package
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            for target in targets:
                found = resolve(target)
                if found and found != module:
                    kind = "type" if node.lineno in typing_only else "run"
                    edges[module].setdefault(found, set()).add((kind, node.lineno))
    return edges


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        found.append(sorted(component))
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runtime", action="store_true", help="leave out imports under `if TYPE_CHECKING:`")
    args = parser.parse_args()
    modules = module_files(ROOT)
    edges = import_edges(modules)
    graph = {m: {t for t, uses in e.items() if not args.runtime or any(kind == "run" for kind, _ in uses)} for m, e in edges.items()}
    found = circles(graph)
    print(f"{len(modules)} modules, {sum(len(t) for t in graph.values())} import edges, {len(found)} circles")
    for component in found:
        print("circle: " + ", ".join(component))
        for module in component:
            for target in sorted(graph[module] & set(component)):
                uses = ", ".join(f"{kind}@{line}" for kind, line in sorted(edges[module][target], key=lambda u: u[1]))
                print(f"  {module} -> {target}  {uses}")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
