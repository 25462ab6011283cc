"""Imports run one way: the import graph of our packages (audit, distill, policies), read
statically (ast over every source file, function-level imports included), has no cycle and
no edge against the stated direction.

Direction: policies imports nothing of ours; audit never imports distill; within distill a
wing imports only the wings listed for it in ALLOWED (and audit). ALLOWED is the table the
wings' docstrings state ("Imports: ..."); a test checks that they agree.

An import of a submodule (``from distill.gate import preflight``) is an edge to that module; the
implicit run of the parent package's ``__init__`` is not counted (it would make every package
that re-exports a submodule's name look like a cycle).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("audit", "distill", "policies")

# wing -> the wings it may import (every wing may import audit; the package root imports nothing)
ALLOWED = {
    "cli": {"train", "generation", "gate", "data", "outputs", "runtime"},
    "train": {"gate", "data", "outputs", "runtime"},
    "generation": {"gate", "data", "outputs", "runtime"},
    "gate": {"data", "outputs", "runtime"},
    "data": {"runtime"},
    "outputs": {"runtime"},
    "runtime": set(),
}


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[str, list[str]]]:
    """Every import statement anywhere in ``tree`` (function bodies too): ``(module named,
    [names taken from it])``; relative imports resolved against ``module``."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(alias.name, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[:len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            found.append((base, [alias.name for alias in node.names]))
    return found


def build_graph(root: Path = ROOT, packages=PACKAGES) -> dict[str, set[str]]:
    """module -> the modules of ``packages`` it imports (self-imports left out). ``from a
    import b``: an edge to ``a.b`` when that is a module, else to ``a``."""
    sources = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            sources[module_name(path, root)] = path
    graph = {}
    for module, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        targets = set()
        for base, names in imported(tree, module, path.name == "__init__.py"):
            submodules = {f"{base}.{name}" for name in names} & set(sources)
            targets |= submodules
            if base in sources and (not names or len(submodules) < len(names)):
                targets.add(base)
        graph[module] = targets - {module}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    WHITE, GREY, BLACK = 0, 1, 2
    colour = {node: WHITE for node in graph}
    for start in sorted(graph):
        if colour[start] != WHITE:
            continue
        stack = [(start, iter(sorted(graph[start])))]
        path = [start]
        colour[start] = GREY
        while stack:
            node, children = stack[-1]
            for child in children:
                if colour.get(child, BLACK) == GREY:
                    return path[path.index(child):] + [child]
                if colour.get(child) == WHITE:
                    colour[child] = GREY
                    path.append(child)
                    stack.append((child, iter(sorted(graph.get(child, ())))))
                    break
            else:
                colour[node] = BLACK
                path.pop()
                stack.pop()
    return None


def wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "distill" and len(parts) > 1 else None


def direction_errors(graph: dict[str, set[str]], allowed=ALLOWED) -> list[str]:
    errors = []
    for module, targets in sorted(graph.items()):
        top = module.split(".")[0]
        for target in sorted(targets):
            target_top = target.split(".")[0]
            if top == "policies" and target_top != "policies":
                errors.append(f"{module} -> {target}: policies imports nothing of ours")
            elif top == "audit" and target_top == "distill":
                errors.append(f"{module} -> {target}: audit never imports distill")
            elif top == "distill" and target_top == "distill":
                source, dest = wing(module), wing(target)
                if source is None:
                    errors.append(f"{module} -> {target}: the distill package root imports no wing")
                elif dest is None:
                    errors.append(f"{module} -> {target}: a wing imports the distill root")
                elif source != dest and dest not in allowed.get(source, set()):
                    errors.append(f"{module} -> {target}: {source}/ may import "
                                  f"{', '.join(sorted(allowed.get(source, ()))) or 'no other wing'}, not {dest}/")
    return errors


# -- the repository ---------------------------------------------------------------------------

def test_the_import_graph_has_no_cycle():
    graph = build_graph()
    assert len(graph) > 100, "the graph should hold every module of audit, distill and policies"
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_imports_follow_the_stated_direction():
    assert direction_errors(build_graph()) == []


def test_the_wings_are_the_table():
    wings = {p.name for p in (ROOT / "distill").iterdir() if (p / "__init__.py").is_file()}
    assert wings == set(ALLOWED)
    loose = sorted(p.name for p in (ROOT / "distill").glob("*.py") if p.name != "__init__.py")
    assert loose == [], f"distill/ top-level modules outside a wing: {loose}"


@pytest.mark.parametrize("name", sorted(ALLOWED))
def test_each_wing_docstring_states_its_row_of_the_table(name):
    doc = ast.get_docstring(ast.parse((ROOT / "distill" / name / "__init__.py").read_text()))
    found = re.search(r"Imports: (.*?); and audit\.", doc or "", re.S)
    assert found, f"distill/{name}/__init__.py: the docstring should end 'Imports: ...; and audit.'"
    stated = set() if found.group(1).strip() == "nothing else of distill" else \
        {w.strip() for w in found.group(1).split(",")}
    assert stated == ALLOWED[name]


# -- the checks themselves, on made-up graphs -------------------------------------------------

def test_a_planted_cycle_is_found():
    graph = {"distill.train.sequence": {"distill.cli.distill_cmd"},
             "distill.cli.distill_cmd": {"distill.train.session", "distill.train.sequence"},
             "distill.train.session": set()}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"distill.train.sequence", "distill.cli.distill_cmd"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_a_planted_cycle_in_files_is_found(tmp_path):
    (tmp_path / "distill" / "train").mkdir(parents=True)
    (tmp_path / "distill" / "__init__.py").write_text("")
    (tmp_path / "distill" / "train" / "__init__.py").write_text("")
    (tmp_path / "distill" / "train" / "a.py").write_text("from distill.train.b import x\n")
    (tmp_path / "distill" / "train" / "b.py").write_text("def x():\n    from distill.train import a\n")
    graph = build_graph(tmp_path, ("distill",))
    assert graph["distill.train.a"] == {"distill.train.b"}
    assert graph["distill.train.b"] == {"distill.train.a"}  # a function-level import counts
    assert find_cycle(graph) in (["distill.train.a", "distill.train.b", "distill.train.a"],
                                 ["distill.train.b", "distill.train.a", "distill.train.b"])


def test_an_edge_against_the_direction_is_named():
    graph = {"distill.train.sequence": {"distill.cli.distill_cmd", "distill.gate.preflight"},
             "distill.runtime.models": {"distill.train.losses"},
             "audit.plan": {"distill.gate.checks"},
             "policies": {"audit.errors"}}
    errors = direction_errors(graph)
    assert any(e.startswith("distill.train.sequence -> distill.cli.distill_cmd") for e in errors)
    assert any(e.startswith("distill.runtime.models -> distill.train.losses") for e in errors)
    assert any("audit never imports distill" in e for e in errors)
    assert any("policies imports nothing of ours" in e for e in errors)
    assert not any("distill.gate.preflight" in e for e in errors)  # train -> gate is allowed
