"""dvc.yaml's deps cannot drift: every project file a stage imports (its import closure, lazy imports included)
is covered by the stage's deps, so a change to any of them reruns the stage."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT

PACKAGES = {"stages": ROOT / "stages", "hopfield_replay": ROOT / "src" / "hopfield_replay"}


def module_file(name: str) -> Path | None:
    """The project file of a dotted module name, or None for a third-party module."""
    top, *rest = name.split(".")
    if top not in PACKAGES:
        return None
    base = PACKAGES[top].joinpath(*rest)
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports (top-level or inside functions), absolute names."""
    # The module's dotted name (a package's __init__ counts as one level below the package, so that
    # `from .x import y` inside it resolves to package.x like in any module of the package).
    package = ".".join(path.relative_to(ROOT / ("src" if "src" in path.parts else "")).with_suffix("").parts)
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: -node.level]
                name = ".".join(base + ([node.module] if node.module else []))
            else:
                name = node.module
            out.add(name)
            out.update(f"{name}.{alias.name}" for alias in node.names)  # `from pkg import submodule`
    return out


def import_closure(entry: Path) -> set[Path]:
    seen, todo = set(), [entry]
    while todo:
        path = todo.pop()
        if path in seen:
            continue
        seen.add(path)
        for name in imported_modules(path):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # importing a.b.c runs a/__init__, a/b/__init__ too
                found = module_file(".".join(parts[:i]))
                if found is not None and found not in seen:
                    todo.append(found)
    return {p for p in seen if p.name != "__init__.py" or p.stat().st_size > 0}


def stages_of(dvc: dict):
    for name, spec in dvc["stages"].items():
        body = spec.get("do", spec)
        yield name, body["cmd"], body.get("deps", [])


DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())


@pytest.mark.parametrize("name, cmd, deps", list(stages_of(DVC)), ids=[n for n, *_ in stages_of(DVC)])
def test_deps_cover_the_import_closure(name, cmd, deps):
    module = cmd.split("python -m ", 1)[1].split()[0]
    entry = module_file(module)
    assert entry is not None, f"{name}: cannot find {module}"
    dep_paths = [(ROOT / d).resolve() for d in deps if "${" not in d]
    missing = sorted(str(f.relative_to(ROOT)) for f in import_closure(entry)
                     if not any(f == d or d in f.parents for d in dep_paths))
    assert not missing, f"stage {name} imports {missing} but does not list them in its deps"
    closure = import_closure(entry)
    code = [d for d in dep_paths if d.is_relative_to(ROOT / "src") or d.is_relative_to(ROOT / "stages")]
    unused = sorted(str(d.relative_to(ROOT)) for d in code if not any(f == d or d in f.parents for f in closure))
    assert not unused, f"stage {name} lists code deps it never imports (they rerun it for nothing): {unused}"


def test_the_closure_finds_lazy_and_relative_imports(tmp_path):
    """The checker itself: a lazy import inside a function is found (it is what hid devices.py before)."""
    closure = import_closure(ROOT / "stages" / "runner.py")
    assert ROOT / "src" / "hopfield_replay" / "io" / "config.py" in closure
    assert ROOT / "src" / "hopfield_replay" / "runtime" / "devices.py" in closure  # imported inside provenance()
    assert ROOT / "src" / "hopfield_replay" / "errors.py" in closure  # via config's relative import
    deep = import_closure(ROOT / "stages" / "mhn_closed_form.py")  # package __init__ -> .closed_form -> ..energy
    assert ROOT / "src" / "hopfield_replay" / "mhn" / "closed_form.py" in deep
    assert ROOT / "src" / "hopfield_replay" / "energy.py" in deep
