"""The overhead of running one cell through a study (flows/study.py) against the same `dvc repro` run directly.

    .venv/bin/python benchmarks/bench_study.py            # the tiny config up to report: ~8 minutes on 2 cores

Three fresh copies of the tiny project (tests/tiny_params.yaml with one task-B seed and two arms), each with an
empty DVC cache, one after another:

    direct   `dvc repro report` in the project
    study    `python -m flows.study` of a one-cell study of the same params (stages [report], one Dask worker):
             the whole command, and the cell's parts: its worktree and params (prepare), `dvc repro` inside the
             Prefect task on the worker (run), `dvc exp save` (save)
    cached   the same study again with --fresh: a new worktree whose every stage the run-cache restores

The per-cell overhead is (prepare + run + save) - direct; the fixed cost of a study (Prefect server, Dask cluster,
the aggregation) is the study's wall time minus the cell's parts, paid once however many cells run.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from tests.conftest import TINY_PARAMS, make_project  # noqa: E402 - also sets the offline env and PATH


def tiny_params() -> dict:
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["seeds"] = [1]
    params["select_replay"]["arms"] = ["energy_high", "random"]
    return params


def timed(cmd: list[str], cwd: Path) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="bench-study-"))
    direct = make_project(tmp / "direct", tiny_params())
    t_direct = timed(["dvc", "repro", "report"], direct)
    print(f"direct: dvc repro report                     {t_direct:7.1f} s")

    project = make_project(tmp / "study", tiny_params())
    study = tmp / "bench.yaml"
    study.write_text(yaml.safe_dump({"stages": ["report"], "engine": {"workers": 1, "retries": 0}}))
    cli = [sys.executable, "-m", "flows.study", str(study), "--repo-root", str(project)]
    rows = {}
    for name, extra in (("study", []), ("cached", ["--fresh"])):
        wall = timed(cli + extra, ROOT)
        cell = pd.read_parquet(project / ".studies" / "bench" / "results" / "cells.parquet").iloc[0]
        rows[name] = {"wall": wall, "prepare": cell.prepare_s, "run": cell.seconds, "save": cell.save_s,
                      "ran": len(json.loads(cell.ran)), "restored": int(cell.restored)}
        parts = cell.prepare_s + cell.seconds + cell.save_s
        print(f"{name + ':':8s} study command                        {wall:7.1f} s   (cell: prepare {cell.prepare_s:.2f} "
              f"+ run {cell.seconds:.1f} + save {cell.save_s:.2f} = {parts:.1f} s; {rows[name]['ran']} stages ran, "
              f"{rows[name]['restored']} restored; fixed cost of the study {wall - parts:.1f} s)")
    s = rows["study"]
    cell = s["prepare"] + s["run"] + s["save"]
    print(f"per-cell overhead: {cell - t_direct:+.1f} s; cell / direct = {cell / t_direct:.3f}; "
          f"whole one-cell study / direct = {s['wall'] / t_direct:.3f}; "
          f"a cached cell costs {rows['cached']['prepare'] + rows['cached']['run'] + rows['cached']['save']:.1f} s")
    print(f"({os.cpu_count()} CPUs; projects under {tmp})")


if __name__ == "__main__":
    main()
