"""Each dvc.yaml stage's code deps, from its import closure: every project file the stage's module imports, at the
top or inside a function, directly or through other project files, so an edit to any of them reruns the stage and
an edit to any other file does not.

    python -m tools.dvc_deps            # each stage's code deps, and whether dvc.yaml lists exactly those
    python -m tools.dvc_deps --write    # rewrite dvc.yaml's code deps (data deps, their order and every comment kept)

A stage's module is the ``python -m <module>`` of its cmd. Code deps are the deps under ``stages/`` or ``src/``,
listed one file each (never a folder: a folder also covers files no stage imports, e.g. the SD code for the DDPM
stages, or byte-code caches); every other dep (data) is left as it is. The closure is static (``ast``): an
``import``/``from`` statement anywhere in a file, and a string constant that names a project module (what
``importlib.import_module`` gets, e.g. ``models.base.FAMILY_MODULES``). tests/test_dvc_deps.py checks dvc.yaml
against it.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"stages": ROOT / "stages", "hopfield_replay": ROOT / "src" / "hopfield_replay"}
CODE_DIRS = ("stages/", "src/")
_MODULE_NAME = re.compile(r"^(?:stages|hopfield_replay)(?:\.\w+)+$")


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
    """Every module a file imports (top-level or inside functions), absolute names, plus the project modules its
    string constants name (imported by name, with importlib)."""
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
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and _MODULE_NAME.match(node.value):
            if module_file(node.value) is not None:
                out.add(node.value)
    return out


def import_closure(entry: Path) -> set[Path]:
    """Every project file ``entry`` runs when imported: its imports, theirs, and the packages' ``__init__`` files
    on the way (empty ones left out: nothing in them can change a result)."""
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


def stage_module(cmd: str) -> str:
    """The module a stage's cmd runs (``python -m <module> ...``)."""
    return cmd.split("python -m ", 1)[1].split()[0]


def code_deps(module: str) -> list[str]:
    """The code deps of the stage running ``module``: its own file first, then the other files of its closure by
    path (stages/ before src/)."""
    entry = module_file(module)
    if entry is None:
        raise ValueError(f"cannot find the project module {module}")
    rest = sorted(str(p.relative_to(ROOT)) for p in import_closure(entry) if p != entry)
    return [str(entry.relative_to(ROOT))] + sorted(rest, key=lambda p: (not p.startswith("stages/"), p))


def is_code(dep: str) -> bool:
    return dep.startswith(CODE_DIRS)


def stages_of(dvc: dict):
    """(name, cmd, deps) of every stage of a parsed dvc.yaml (a foreach stage's ``do`` body)."""
    for name, spec in dvc["stages"].items():
        body = spec.get("do", spec)
        yield name, body["cmd"], body.get("deps", [])


_STAGE = re.compile(r"^  ([A-Za-z0-9_-]+):\s*(#.*)?$")
_DEPS = re.compile(r"^(\s+)deps:\s*(#.*)?$")


def rewrite(text: str) -> str:
    """dvc.yaml's text with each stage's code deps replaced by its closure (``code_deps``), in place of the old
    ones: the new code deps first, then the data deps and every comment line of the list, as they were."""
    wanted = {name: code_deps(stage_module(cmd)) for name, cmd, _ in stages_of(yaml.safe_load(text))}
    lines, out, stage, i = text.splitlines(keepends=True), [], None, 0
    while i < len(lines):
        line = lines[i]
        match = _STAGE.match(line)
        if match:
            stage = match.group(1)
        out.append(line)
        i += 1
        deps = _DEPS.match(line)
        if not deps or stage not in wanted:
            continue
        item = deps.group(1) + "  - "
        kept = []
        while i < len(lines) and (lines[i].startswith(item) or lines[i].strip().startswith("#")):
            dep = lines[i][len(item):].split("#", 1)[0].strip() if lines[i].startswith(item) else ""
            if not is_code(dep):
                kept.append(lines[i])
            i += 1
        out += [f"{item}{dep}\n" for dep in wanted.pop(stage)] + kept
    return "".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.dvc_deps", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dvc-yaml", type=Path, default=ROOT / "dvc.yaml")
    ap.add_argument("--write", action="store_true", help="rewrite the code deps of dvc.yaml in place")
    args = ap.parse_args(argv)
    text = args.dvc_yaml.read_text()
    new = rewrite(text)
    if args.write:
        if new != text:
            args.dvc_yaml.write_text(new)
        print(f"{args.dvc_yaml}: {'code deps rewritten' if new != text else 'code deps already match'}")
        return 0
    listed = {name: [d for d in deps if is_code(d)] for name, _, deps in stages_of(yaml.safe_load(text))}
    for name, cmd, _ in stages_of(yaml.safe_load(text)):
        want = code_deps(stage_module(cmd))
        state = "ok" if sorted(want) == sorted(listed[name]) else "differs from dvc.yaml"
        print(f"{name}: {state}\n" + "".join(f"  {d}\n" for d in want), end="")
    return 0 if new == text else 1


if __name__ == "__main__":
    sys.exit(main())
