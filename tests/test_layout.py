"""The tree shows the architecture (docs/layout.md): the commands and the original's modules at the
root, the library in packages named after their jobs, and imports that only go down."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

COMMANDS = {"main", "predict", "compare", "synthetic", "explain"}
ORIGINALS = {"dataset", "models", "preprocess", "utils"}  # the original AU_Recognition's module names
PACKAGES = ("ckplus", "scoring", "training", "faces", "explaining")

# A module may import only from its own rank or below; within a rank, imports must not form a circle.
RANK = {"utils": 0, "preprocess": 0, "ckplus": 1, "dataset": 2, "models": 2, "scoring": 3, "training": 4,
        "faces": 5, "explaining": 5}


def library_modules() -> dict[str, Path]:
    """Dotted name -> file, for every library module (the packages and the original's modules)."""
    found = {name: REPO / f"{name}.py" for name in ORIGINALS}
    for package in PACKAGES:
        for path in sorted((REPO / package).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules a file imports, anywhere in it (type-hint-only imports count too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # `from training import engine` imports training.engine; `from ckplus import DataError` imports ckplus
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                     for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known | COMMANDS:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def graph() -> dict[str, set[str]]:
    modules = library_modules()
    known = set(modules)
    return {name: imports_of(path, known) - {name} for name, path in modules.items()}


def test_the_root_holds_the_commands_and_the_originals_modules_only():
    root = {p.stem for p in REPO.glob("*.py")}
    assert root == COMMANDS | ORIGINALS
    for package in PACKAGES:
        assert (REPO / package / "__init__.py").is_file(), package


def test_no_library_module_imports_a_command():
    bad = {name: sorted(deps & COMMANDS) for name, deps in graph().items() if deps & COMMANDS}
    assert bad == {}


def test_commands_import_no_other_command():
    known = set(library_modules())
    bad = {c: sorted(imports_of(REPO / f"{c}.py", known) & (COMMANDS - {c})) for c in COMMANDS}
    assert {c: d for c, d in bad.items() if d} == {}


def upward(deps: dict[str, set[str]]) -> list[str]:
    """Every import of a module that stands on a higher rank than the importer."""
    rank = lambda name: RANK[name.split(".")[0]]  # noqa: E731
    return sorted(f"{name} -> {dep}" for name, found in deps.items() for dep in found - COMMANDS
                  if rank(dep) > rank(name))


def circles(deps: dict[str, set[str]]) -> list[str]:
    """Every import circle met by a depth-first walk (two modules importing each other included)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    found: list[str] = []

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for dep in sorted(deps.get(name, set()) - COMMANDS):
            if state.get(dep) == 1:
                found.append(" -> ".join(path[path.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, path + [dep])
        state[name] = 2

    for name in sorted(deps):
        if name not in state:
            visit(name, [name])
    return found


def test_imports_only_go_down_the_ranks():
    assert upward(graph()) == []


def test_no_import_circle():
    assert circles(graph()) == []


def test_the_checks_see_a_circle_an_upward_import_and_a_type_hint_import(tmp_path):
    """The checks above can fail: the old crop_cache <-> dataset pair (a type-hint import), a circle
    of three, and a CK+ module importing the training code."""
    assert circles({"dataset": {"ckplus.crop_cache"}, "ckplus.crop_cache": {"dataset"}}) == \
        ["ckplus.crop_cache -> dataset -> ckplus.crop_cache"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a -> b -> c -> a"]
    assert circles({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert upward({"ckplus.crop_cache": {"training.engine", "utils"}}) == ["ckplus.crop_cache -> training.engine"]
    (tmp_path / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from dataset import Sequence\n")
    (tmp_path / "a.py").write_text("from training import engine\nimport dataset\nfrom ckplus import DataError\n")
    known = {"training.engine", "dataset", "training", "ckplus"}
    assert imports_of(tmp_path / "b.py", known) == {"dataset"}
    assert imports_of(tmp_path / "a.py", known) == {"training.engine", "dataset", "ckplus"}
