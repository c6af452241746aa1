"""The import structure of the project, checked over the source (every import statement, function-local and
TYPE_CHECKING ones included): no cycle anywhere, and the floors of docs/architecture.md hold.

    kernels      imports no other package of ours (the Triton kernels and their PyTorch twins)
    data_prep    imports no other package of ours (text in, tokenizer / shards / pairs / BEIR sets out)
    encoder      may import data_prep and kernels
    trainers     (encoder.train_*) are imported by nothing but the top floor (encoder.pipeline, which runs
                 them, and encoder.cli): evaluation, export and the pipeline load models through encoder.artifacts
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("encoder", "data_prep", "kernels", "launch")
TRAINERS = ("encoder.train_mlm", "encoder.train_contrastive", "encoder.train_reranker")
TOP_FLOOR = ("encoder.pipeline", "encoder.cli")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for package in PACKAGES for p in sorted((ROOT / package).rglob("*.py"))}


def resolve(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `name` (a module or a name inside one) refers to."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        for target in targets:
            resolved = resolve(target, known)
            if resolved and resolved != name:
                found.add(resolved)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_checker_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_the_checker_resolves_relative_and_local_imports(graph):
    assert "encoder.batch" in graph["encoder.model"]  # `from .batch import ...`
    assert "encoder.train_mlm" in graph["encoder.pipeline"]  # `from . import train_mlm`


def test_no_import_cycle(graph):
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(("package", "forbidden"), [("data_prep", ("encoder", "kernels")),
                                                     ("kernels", ("encoder", "data_prep"))])
def test_lower_floors_do_not_import_upper_ones(graph, package, forbidden):
    offending = sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                       if source.split(".")[0] == package and target.split(".")[0] in forbidden)
    assert not offending, offending


def test_only_the_top_floor_imports_a_trainer(graph):
    offending = sorted(f"{source} -> {target}" for source, targets in graph.items() for target in targets
                       if target in TRAINERS and source not in TOP_FLOOR)
    assert not offending, offending


def test_nothing_imports_the_pipeline_but_the_cli(graph):
    offending = sorted(source for source, targets in graph.items() if "encoder.pipeline" in targets)
    assert offending in ([], ["encoder.cli"]), offending
