"""Did my rerun reproduce the committed results? Compare a run's metrics with the committed ones.

    python -m tools.check_reproduction                      # the run's metrics against git HEAD's
    python -m tools.check_reproduction --rev 8c8c636        # ... against another commit's
    python -m tools.check_reproduction --details data/metrics/details.json --against other.json --tol 1e-4

Same params, same seed and the same device give the same bytes; another CPU model, thread count or GPU gives other
last bits, which at the learned default's 5600 training steps grow into other numbers and sub-verdicts
(docs/reliability.md). So a rerun reproduces the committed run when every verdict and design check is the same and
every number of its details files (DETAILS: the evidence's effects, intervals, correlations and tables, and the two
MHN experiments') lies within ``--tol`` of the committed one; numbers are compared, not text, and text other than
the verdicts is ignored. Prints what was compared, whether the headline verdicts (the claims and design checks)
are the same, and the largest difference; exit 0 if reproduced, 1 if not (naming what differs), 2 if a file cannot
be read.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

from hopfield_replay.errors import UserError

DETAILS = ("data/metrics/details.json", "data/mhn/closed_form/details.json", "data/mhn/trained/details.json")
# a table row's name: its values of these columns
ROW_KEYS = ("predictor", "strategy", "budget", "subset", "reference", "arm", "other", "label", "t", "bin")


def _row_names(rows: list) -> list[str] | None:
    """The rows' names from their key columns (ROW_KEYS), or None if the list is not rows named uniquely that way."""
    if not rows or not all(isinstance(r, dict) for r in rows):
        return None
    names = [",".join(f"{k}={r[k]}" for k in ROW_KEYS if k in r) for r in rows]
    return names if all(names) and len(set(names)) == len(names) else None


def compare(ours, theirs, path: str = "") -> tuple[list, list, list]:
    """Walk two details.json trees. Returns (numbers: (path, ours, theirs) for every pair of numbers; verdicts:
    (path, ours, theirs) for every "verdict" entry that differs; structure: paths present in only one tree, or of
    another type). Table rows are matched and named by their key columns (ROW_KEYS), other lists by position."""
    numbers, verdicts, structure = [], [], []

    def walk(a, b, p):
        if isinstance(a, dict) and isinstance(b, dict):
            structure.extend(f"{p}/{k}" for k in sorted(set(a) ^ set(b)))
            for k in sorted(set(a) & set(b)):
                if k == "verdict" and a[k] != b[k]:
                    verdicts.append((f"{p}/{k}", a[k], b[k]))
                walk(a[k], b[k], f"{p}/{k}")
        elif isinstance(a, list) and isinstance(b, list):
            names_a, names_b = _row_names(a), _row_names(b)
            if names_a is not None and names_b is not None:  # table rows: matched by their key columns
                rows_b, seen = dict(zip(names_b, b)), set(names_a)
                structure.extend(f"{p}[{n}]" for n in names_a if n not in rows_b)
                structure.extend(f"{p}[{n}]" for n in names_b if n not in seen)
                for n, x in zip(names_a, a):
                    if n in rows_b:
                        walk(x, rows_b[n], f"{p}[{n}]")
                return
            if len(a) != len(b):
                structure.append(f"{p} ({len(a)} vs {len(b)} entries)")
            for i, (x, y) in enumerate(zip(a, b)):
                walk(x, y, f"{p}[{i}]")
        elif _number(a) and _number(b):
            numbers.append((p, float(a), float(b)))
        elif (a is None) != (b is None) and (_number(a) or _number(b)):
            structure.append(f"{p} ({a} vs {b})")  # a value on one side, none (NaN) on the other
        elif type(a) is not type(b) and not (a is None or b is None):
            structure.append(f"{p} ({type(a).__name__} vs {type(b).__name__})")

    walk(ours, theirs, path)
    return numbers, verdicts, structure


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _load(text: str, where: str) -> dict:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"{where}: is not valid JSON ({exc.msg}, line {exc.lineno}); rerun the stage that writes it "
                        "(dvc repro)") from None
    if not isinstance(data, dict):
        raise UserError(f"{where}: is not a details file of this pipeline (a JSON object); rerun the stage that "
                        "writes it (dvc repro)")
    return data


def read_committed(rev: str, path: Path) -> dict:
    """``path`` as committed at ``rev`` (git show), parsed."""
    where = f"{rev}:{path.as_posix()}"
    proc = subprocess.run(["git", "show", where], capture_output=True, text=True)
    if proc.returncode != 0:
        line = (proc.stderr.strip().splitlines() or ["git failed"])[-1]
        raise UserError(f"{where}: cannot be read from git ({line}); pass --rev a commit that has it, or --against "
                        "a file")
    return _load(proc.stdout, where)


def read_file(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: does not exist; run the pipeline first (make run, or dvc repro)")
    return _load(path.read_text(), str(path))


def verdict_summary(details: dict) -> str:
    entries = {**details.get("verdicts", {}), **details.get("checks", {})}
    return ", ".join(f"{k} {v['verdict']}" for k, v in entries.items())


def headline_changes(ours: dict, theirs: dict) -> list[str]:
    """The claims and design checks whose verdict differs: 'name: here vs there' (a missing one counts)."""
    def headline(details):
        return {k: v.get("verdict") for k, v in {**details.get("verdicts", {}), **details.get("checks", {})}.items()}

    a, b = headline(ours), headline(theirs)
    return [f"{k} {a.get(k, 'missing')} here, {b.get(k, 'missing')} there" for k in sorted(a.keys() | b.keys())
            if a.get(k) != b.get(k)]


def check(ours: dict, theirs: dict, name: str, reference: str, tol: float) -> bool:
    """Print the comparison of one details file with its reference; True if it reproduces it."""
    numbers, verdicts, structure = compare(ours, theirs)
    print(f"{name} against {reference}")
    headline = headline_changes(ours, theirs) if "verdicts" in ours else []
    if "verdicts" in ours:
        print(f"  verdicts and design checks: {verdict_summary(ours)}"
              + (" (every verdict the same)" if not verdicts else f" ({len(verdicts)} verdicts differ, tables "
                                                                   "included)"))
        print("  headline verdicts (claims and design checks): "
              + ("the same" if not headline else "differ: " + "; ".join(headline)))
    far = [(p, a, b) for p, a, b in numbers if not abs(a - b) <= tol]
    changed = sum(a != b for _, a, b in numbers)
    largest = max(numbers, key=lambda n: abs(n[1] - n[2]), default=None)
    text = f"  numbers: {len(numbers)} compared, {changed} not identical"
    if largest and largest[1] != largest[2]:
        p, a, b = largest
        text += f", largest difference {abs(a - b):.3g} at {p} ({a:.6g} here, {b:.6g} there)"
    print(f"{text}; tolerance {tol:g}")
    for p, a, b in verdicts:
        print(f"  verdict differs: {p}: {a} here, {b} there")
    for p, a, b in far[:20]:
        print(f"  beyond the tolerance: {p}: {a:.6g} here, {b:.6g} there")
    for p in structure[:20]:
        print(f"  only on one side: {p}")
    ok = not verdicts and not far and not structure
    print("  reproduced" if ok else f"  NOT reproduced: {len(verdicts)} verdicts differ, {len(far)} numbers beyond "
                                    f"the tolerance, {len(structure)} entries on one side only")
    if not ok and "verdicts" in ours and not headline:
        print("  (the headline verdicts are the same: a run on another CPU model, thread count or GPU is expected to "
              "move numbers and sub-verdicts; compare with a run on the same kind of machine: docs/reliability.md)")
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--details", type=Path, action="append",
                    help=f"a details file of the rerun (repeatable; default: {', '.join(DETAILS)})")
    ap.add_argument("--rev", default="HEAD", help="the commit whose files are the reference (default HEAD)")
    ap.add_argument("--against", type=Path, help="a details file as the reference, instead of --rev (one --details)")
    ap.add_argument("--tol", type=float, default=1e-3, help="largest absolute difference of a number (default 1e-3: "
                                                           "the report prints 3 decimals)")
    args = ap.parse_args(argv)
    if not (args.tol >= 0 and math.isfinite(args.tol)):
        raise UserError(f"--tol: must be a finite number >= 0, got {args.tol}")
    files = args.details or [Path(p) for p in DETAILS]
    if args.against and len(files) != 1:
        raise UserError("--against: compares one file; name it with --details")
    pairs = []  # read everything first: a missing file is an error before any output
    for path in files:
        ours = read_file(path)
        theirs = read_file(args.against) if args.against else read_committed(args.rev, path)
        reference = str(args.against) if args.against else f"{args.rev}:{path.as_posix()}"
        pairs.append((ours, theirs, str(path), reference))
    results = [check(ours, theirs, name, reference, args.tol) for ours, theirs, name, reference in pairs]
    print("reproduced" if all(results) else f"NOT reproduced: {results.count(False)} of {len(results)} files differ")
    return 0 if all(results) else 1


def cli(argv=None) -> int:
    """``main`` with user errors as one line on stderr and exit status 2."""
    try:
        return main(argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(cli())
