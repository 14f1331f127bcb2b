"""The layout shows the pipeline: one package per phase, imports only downwards, thin stage scripts."""
from __future__ import annotations

from pathlib import Path

import yaml

from tests.support.imports import PACKAGE, cycles, import_graph

ROOT = PACKAGE.parent
# A package may import only the packages before it (and itself). The flat modules of xreflect/ sit
# on top: they may import any phase, no phase may import them.
PHASES = ["core", "paper", "data", "backends", "generation", "embedding", "evaluation", "training", "reporting"]


def phase_of(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in PHASES else None


def package_of(module: str) -> str:
    path = ROOT / module.replace(".", "/")
    return module if (path / "__init__.py").exists() else module.rpartition(".")[0]


def test_no_import_circle_between_modules():
    assert cycles(import_graph()) == []


def test_no_import_circle_between_packages():
    graph: dict[str, set[str]] = {}
    for module, imported in import_graph().items():
        graph.setdefault(package_of(module), set()).update(package_of(m) for m in imported if package_of(m) != package_of(module))
    assert cycles(graph) == []


def test_every_import_points_down_the_phases():
    upward = []
    for module, imported in import_graph().items():
        here = phase_of(module)
        if here is None:
            continue
        for target in imported:
            there = phase_of(target)
            if there is None or PHASES.index(there) > PHASES.index(here):
                upward.append(f"{module} -> {target}")
    assert upward == []


def test_every_xreflect_import_names_a_module_that_exists():
    """A stale import (a module that moved) inside a function would only fail when that code runs."""
    import ast

    known = set(import_graph())
    stale = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom) and not node.level and node.module else [])
            stale += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.startswith("xreflect") and n not in known]
    assert stale == []


def test_few_flat_modules():
    flat = sorted(p.name for p in PACKAGE.glob("*.py"))
    assert len(flat) <= 8, flat


def test_the_graph_sees_function_local_imports(tmp_path, monkeypatch):
    """The checker itself: an import inside a function counts (a circle through one must be found)."""
    from tests.support import imports

    package = tmp_path / "xreflect"
    (package / "core").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core" / "__init__.py").write_text("")
    (package / "core" / "a.py").write_text("from xreflect.core.b import f\n")
    (package / "core" / "b.py").write_text("def f():\n    from xreflect.core import a\n")
    monkeypatch.setattr(imports, "PACKAGE", package)
    assert imports.cycles(imports.import_graph()) == [["xreflect.core.a", "xreflect.core.b"]]


def test_stages_are_thin_and_dvc_runs_them_as_modules():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    names = set()
    for name, stage in pipeline["stages"].items():
        command = (stage.get("do") or stage)["cmd"]
        assert command.split()[:2] == ["python", "-m"] and command.split()[2] == f"stages.{name}", command
        names.add(name)
    scripts = {p.stem for p in (ROOT / "stages").glob("*.py")} - {"__init__"}
    assert scripts == names
    for script in (ROOT / "stages").glob("*.py"):
        assert len(script.read_text().splitlines()) <= 80, script.name
