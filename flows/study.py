"""Run a study: every cell of a study file as a DVC experiment in a git worktree of its own, fanned out through a
Prefect task runner on Dask (default) or Ray; then one study table and report over all cells
(flows/study_results.py).

    python -m flows.study studies/tiny.yaml                        # a local Dask cluster (engine.workers processes)
    python -m flows.study studies/ddpm-mnist-seeds.yaml --gpus 0,1,2,3    # one cell per GPU on this machine
    python -m flows.study studies/ddpm-mnist-seeds.yaml --address tcp://scheduler:8786   # an existing Dask cluster
    python -m flows.study studies/tiny.yaml --list                 # the cells, their ids and params; runs nothing

For each cell, in this process: a worktree ``.studies/<study>/<cell>/`` at the commit HEAD (reused while HEAD
stays), its params.yaml written with tools/params_yaml.py (base profile, then the cell's grid values; validated
first), and its DVC cache set to the main repository's (``cache.dir`` in its .dvc/config.local). On a worker: one
Prefect task, `dvc repro [stages]` in that worktree, output in ``.studies/<study>/logs/<cell>.log``, retried
``engine.retries`` times. Back here, as each cell finishes: `dvc exp save` in its worktree (one at a time: DVC's
experiment refs are shared by all worktrees), so `dvc exp show` in the main repository lists it. DVC's run-cache
in the shared cache means a cell computed before, here or in any cell, is restored, not recomputed. The Dask
workers run Prefect tasks, so they must reach a Prefect API: PREFECT_API_URL, or a temporary local server that
this command starts. Exit status: 0 when every cell completed, 1 when some failed (each listed with its log), 2 on
a bad study file. Layout, clusters, GPUs and the measured overhead: docs/studies.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # Dask's INFO lines (here and in workers) are noise

from flows.pipeline import ROOT, dvc_env, dvc_stages  # noqa: E402 - also sets the offline Prefect/DVC env
from flows.stage_output import run_streamed  # noqa: E402
from flows.study_engine import (cell_resources, check_dask_cluster, engine_runner, limit_concurrency,  # noqa: E402
                                prefect_api)
from flows.study_results import aggregate  # noqa: E402
from hopfield_replay.io.params_file import read_yaml, validate_config  # noqa: E402
from hopfield_replay.errors import UserError  # noqa: E402
from hopfield_replay.analysis.study import StudySpec, cell_id, expand, load_study, validate_engine  # noqa: E402
from hopfield_replay.io.tables import atomic_path  # noqa: E402
from stages.runner import draw_to_files  # noqa: E402
from tools.params_yaml import deep_merge, render_merged  # noqa: E402
from tools.profile import read_profile, set_dotted, tiny_spec  # noqa: E402

STUDIES_DIR = ".studies"
ATTEMPT = "=== attempt "  # the header of each attempt in a cell's log


@dataclass
class Cell:
    id: str
    values: dict  # the grid values, by dotted key
    params: dict  # the whole params, as the stages read them
    text: str  # the params.yaml written into the workspace
    workspace: Path
    log: Path
    exp: str  # the DVC experiment's name


# ----------------------------------------------------------------------------------------------------- planning
def git(*args: str, cwd: Path) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"git {' '.join(args)} failed in {cwd}: {out.stderr.strip()[-500:]}")
    return out.stdout.strip()


def study_dir(repo: Path, name: str) -> Path:
    return repo / STUDIES_DIR / name


def plan(study_path: Path, spec: StudySpec, repo: Path) -> tuple[str, list[Cell], dict]:
    """(the commit every cell starts from, the cells, the base profile's build_tiny_sd or {}); every cell's params
    validated. Relative paths (base, a tiny SD folder) are relative to the current directory."""
    try:
        head = git("rev-parse", "HEAD", cwd=repo)
        committed = git("show", "HEAD:params.yaml", cwd=repo) + "\n"
    except RuntimeError:
        raise UserError(f"{repo}: not a git repository with a committed params.yaml; commit the project first "
                        "(every cell starts from the commit HEAD)") from None
    known = dvc_stages(repo)
    for name in spec.stages or []:
        if name.split("@")[0] not in known:
            raise UserError(f"{study_path}: stages: unknown stage {name!r}; dvc.yaml has {', '.join(known)}")
    base, tiny = {}, {}
    if spec.base:
        try:
            base, meta = read_profile(Path(spec.base))
        except UserError as exc:
            raise UserError(f"{study_path}: base: {exc}") from None
        if meta.get("build_tiny_sd") is not None:
            tiny = dict(meta["build_tiny_sd"], path=str(tiny_spec(meta["build_tiny_sd"])[0].resolve()))
            set_dotted(base, "model.sd.pretrained", tiny["path"])
    cells, root = [], study_dir(repo, study_path.stem)
    for values in expand(spec.grid):
        overrides = {}
        for key, value in values.items():
            set_dotted(overrides, key, value)
        merged = deep_merge(base, overrides)
        text, _ = render_merged(committed, merged)
        try:
            params = validate_config(read_yaml(text)).model_dump(mode="json")
        except UserError as exc:
            raise UserError(f"{study_path}: the cell {json.dumps(values)}: {exc}") from None
        cid = cell_id(values, params)
        cells.append(Cell(cid, values, params, text, root / cid, root / "logs" / f"{cid}.log",
                          f"{study_path.stem}-{cid}"))
    return head, cells, tiny


# --------------------------------------------------------------------------------------------------- workspaces
def remove_workspace(repo: Path, ws: Path) -> None:
    with contextlib.suppress(RuntimeError):
        git("worktree", "remove", "--force", str(ws), cwd=repo)
    shutil.rmtree(ws, ignore_errors=True)
    git("worktree", "prune", cwd=repo)  # forget worktrees whose folders are gone (also after a Ctrl-C)


def prepare_workspace(cell: Cell, repo: Path, head: str, cache_dir: str, fresh: bool) -> str:
    """The cell's worktree at ``head`` with its params and the shared cache: 'reused' or 'created'."""
    from configobj import ConfigObj  # DVC's own config format

    ws = cell.workspace
    if ws.exists():
        try:
            same = git("rev-parse", "HEAD", cwd=ws) == head and (ws / ".git").is_file()
        except RuntimeError:
            same = False
        if fresh or not same:
            remove_workspace(repo, ws)
    state = "reused" if ws.exists() else "created"
    if state == "created":
        ws.parent.mkdir(parents=True, exist_ok=True)
        git("worktree", "add", "--detach", str(ws), head, cwd=repo)
        local = repo / ".dvc" / "config.local"
        conf = ConfigObj(str(local)) if local.is_file() else ConfigObj()
        conf.filename = str(ws / ".dvc" / "config.local")
        conf.setdefault("cache", {})["dir"] = cache_dir
        conf.write()
    params = ws / "params.yaml"
    if params.read_text() != cell.text:
        with atomic_path(params) as tmp:
            tmp.write_text(cell.text)
    return state


# ------------------------------------------------------------------------------------------------- the cell task
class CellFailed(RuntimeError):
    """`dvc repro` of a cell exited non-zero (one message argument: it crosses process boundaries pickled)."""


def stop_leftovers(workspace: Path) -> int:
    """Stop what an interrupted study left running in ``workspace``: a `dvc repro` whose worker is gone (an orphan,
    re-parented to init) leads its own process group, with the stage under it; it would hold the worktree's DVC
    lock. Returns how many groups were stopped."""
    import psutil

    stopped = 0
    for proc in psutil.process_iter(["cwd", "ppid"]):
        try:
            orphan = proc.info["ppid"] == 1 and proc.info["cwd"] and Path(proc.info["cwd"]) == workspace
            if orphan and os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, 9)
                stopped += 1
        except (psutil.Error, ProcessLookupError):
            continue
    return stopped


def cell_env() -> dict:
    """The environment of a cell's `dvc repro`: dvc_env() without MALLOC_TRIM_THRESHOLD_ where a Dask nanny set it
    for its worker (distributed.nanny.pre-spawn-environ: 65536). With it glibc hands freed memory back at once, and
    the stages, which allocate and free large tensors every step, trained 1.8x slower on the CPU (1.66 against
    3.05 steps/s in a task-B run of studies/ddpm-mnist-cpu-budgets.yaml on 2 cores, measured)."""
    env = dvc_env()
    if "__DASK_PARENT_PID" in env:
        env.pop("MALLOC_TRIM_THRESHOLD_", None)
    return env


def run_cell(cell: str, workspace: str, targets: list[str], log: str, timeout_s: float) -> dict:
    """`dvc repro [targets]` in the cell's worktree, every attempt's output appended to its log."""
    from prefect import get_run_logger
    from prefect.runtime import task_run

    logger, attempt, started = get_run_logger(), task_run.run_count, time.time()
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w" if attempt <= 1 else "a", encoding="utf-8") as fh:
        fh.write(f"{ATTEMPT}{attempt} on {socket.gethostname()} at {time.strftime('%Y-%m-%d %H:%M:%S')}: "
                 f"dvc repro {' '.join(targets)} in {workspace}\n")
        if stopped := stop_leftovers(Path(workspace)):
            fh.write(f"stopped {stopped} `dvc repro` left running here by an interrupted study\n")

        def write(line: str) -> None:
            fh.write(line + "\n")
            fh.flush()
            if line.startswith(("Running stage", "ERROR", "error:")):
                logger.info(f"{cell}: {line}")

        code, lines = run_streamed(["dvc", "repro", *targets], Path(workspace), cell_env(), timeout_s, write)
    if code != 0:
        error = next((ln for ln in reversed(lines) if ln.startswith("error:")), lines[-1] if lines else "")
        raise CellFailed(f"dvc repro exited with {code}: {error}")
    finished = time.time()
    return {"cell": cell, "attempts": attempt, "started": started, "finished": finished,
            "seconds": round(finished - started, 3),
            "ran": [ln.split("'")[1] for ln in lines if ln.startswith("Running stage")],
            "restored": sum(ln.startswith("Stage '") and "is cached" in ln for ln in lines),
            "host": socket.gethostname(), "gpus": os.environ.get("CUDA_VISIBLE_DEVICES")}


def attempts_in(log: Path) -> int:
    return sum(line.startswith(ATTEMPT) for line in log.read_text(errors="replace").splitlines()) if log.is_file() else 0


# ------------------------------------------------------------------------------------------------- experiments
def save_experiment(cell: Cell, head: str, targets: list[str], ran: bool) -> str:
    """`dvc exp save` in the cell's worktree ('saved'), unless nothing ran and the experiment exists ('kept')."""
    ref = f"refs/exps/{head[:2]}/{head[2:]}/{cell.exp}"
    exists = subprocess.run(["git", "show-ref", "--verify", "--quiet", ref], cwd=cell.workspace).returncode == 0
    if exists and not ran:
        return "kept"
    untracked = git("ls-files", "--others", "--exclude-standard", cwd=cell.workspace).splitlines()
    cmd = ["dvc", "exp", "save", "--force", "-n", cell.exp, *(a for f in untracked for a in ("-I", f)), *targets]
    out = subprocess.run(cmd, cwd=cell.workspace, env=dvc_env(), capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"dvc exp save failed in {cell.workspace}: {(out.stdout + out.stderr).strip()[-800:]}")
    return "saved"


# ---------------------------------------------------------------------------------------------------- the flow
def study_flow(study_path: str, repo_root: str, engine: dict, stages: list[str] | None = None,
               fresh: bool = False) -> dict:
    """Every cell of the study (its engine replaced by ``engine``, its stages by ``stages`` if given); returns
    {'cells': [one record per cell], 'results': folder, 'report': path}."""
    from prefect import get_run_logger, task
    from prefect.cache_policies import NONE
    from prefect.futures import as_completed

    log, path, repo = get_run_logger(), Path(study_path), Path(repo_root).resolve()
    spec = load_study(path)
    if stages:
        spec = spec.model_copy(update={"stages": stages})
    engine = validate_engine(engine, "engine")
    head, cells, tiny = plan(path, spec, repo)
    if tiny:
        from tools.profile import build_tiny

        build_tiny(tiny)
    root = study_dir(repo, path.stem)
    root.mkdir(parents=True, exist_ok=True)
    (repo / STUDIES_DIR / ".gitignore").write_text("*\n")  # worktrees and results never show in git status
    cache_dir = subprocess.run(["dvc", "cache", "dir"], cwd=repo, env=dvc_env(), capture_output=True,
                               text=True, check=True).stdout.strip()
    records, targets = {}, spec.stages or []
    git("worktree", "prune", cwd=repo)  # forget worktrees whose folders are gone (deleted, or a Ctrl-C mid-add)
    for cell in cells:
        t0 = time.time()
        state = prepare_workspace(cell, repo, head, cache_dir, fresh)
        records[cell.id] = {"cell": cell.id, "workspace": str(cell.workspace), "log": str(cell.log),
                            "exp": cell.exp, "workspace_state": state, "prepare_s": round(time.time() - t0, 3)}
    log.info(f"study {path.stem}: {len(cells)} cells at {head[:7]} in {root}")
    tag = f"study:{path.stem}"
    limit_concurrency(tag, engine.max_parallel)
    runner_cell = task(run_cell, name="study-cell", task_run_name="{cell}", retries=engine.retries,
                       retry_delay_seconds=2, cache_policy=NONE, persist_result=False, tags=[tag])
    futures = {}
    for cell in cells:
        with cell_resources(engine):
            fut = runner_cell.submit(cell.id, str(cell.workspace), targets, str(cell.log), engine.timeout_h * 3600)
        futures[fut.task_run_id] = (fut, cell)
    for fut in as_completed([f for f, _ in futures.values()]):
        cell, rec = futures[fut.task_run_id][1], records[futures[fut.task_run_id][1].id]
        out = fut.result(raise_on_failure=False)
        if isinstance(out, BaseException):
            rec.update(status="failed", attempts=attempts_in(cell.log), error=str(out).splitlines()[0])
            log.error(f"{cell.id}: failed after {rec['attempts']} attempt(s); log: {cell.log}")
            continue
        rec.update(out, status="completed")
        t0 = time.time()
        try:
            rec["experiment"] = save_experiment(cell, head, targets, bool(out["ran"]))
        except RuntimeError as exc:
            rec.update(status="failed", error=str(exc).splitlines()[0])
        rec["save_s"] = round(time.time() - t0, 3)
        log.info(f"{cell.id}: {rec['status']}, ran {len(out['ran'])} stage(s), restored {out['restored']}")
    results = aggregate(path.stem, spec, cells, records, root, head)
    return {"cells": [records[c.id] for c in cells], **results}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m flows.study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", type=Path, help="a study file, e.g. studies/tiny.yaml")
    ap.add_argument("--repo-root", type=Path, default=ROOT, help="the git + DVC project (default: this checkout)")
    ap.add_argument("--engine", choices=("dask", "ray"), help="overrides engine.runner")
    ap.add_argument("--address", help="overrides engine.address: a Dask scheduler (tcp://host:8786) or Ray address")
    ap.add_argument("--workers", type=int, help="overrides engine.workers (local Dask cluster)")
    ap.add_argument("--gpus", help="overrides engine.gpus: local GPU ids, e.g. 0,1,2,3 (one cell per GPU)")
    ap.add_argument("--max-parallel", type=int, help="overrides engine.max_parallel")
    ap.add_argument("--stages", nargs="+", help="overrides the study's stages, e.g. --stages scores (with "
                    "--max-parallel: compute the upstream that cells share once, before the whole study)")
    ap.add_argument("--fresh", action="store_true", help="recreate every cell's worktree (outputs come back from "
                    "the shared run-cache)")
    ap.add_argument("--list", action="store_true", help="print the cells and exit")
    args = ap.parse_args(argv)
    try:
        spec = load_study(args.study)
        if args.stages:
            spec = spec.model_copy(update={"stages": args.stages})
        updates = {k: v for k, v in {"runner": args.engine, "address": args.address, "workers": args.workers,
                                     "max_parallel": args.max_parallel}.items() if v is not None}
        if args.gpus is not None:
            updates["gpus"] = [int(g) for g in args.gpus.split(",") if g.strip()]
            updates.setdefault("gpus_per_cell", max(1, spec.engine.gpus_per_cell))
        engine = validate_engine(spec.engine.model_dump() | updates, "engine (with the command-line options)")
        head, cells, _ = plan(args.study, spec, args.repo_root.resolve())
        if args.list:
            for cell in cells:
                print(f"{cell.id}\t{json.dumps(cell.values)}")
            return 0
        draw_to_files()  # the study report's figures
        runner = engine_runner(engine)
        if engine.runner == "dask" and engine.address:
            check_dask_cluster(engine)
        from prefect import flow

        with prefect_api(engine):
            run = flow(study_flow, name="hopfield-replay-study", task_runner=runner)
            result = run(str(args.study), str(args.repo_root.resolve()), engine.model_dump(), args.stages, args.fresh)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    failed = [c for c in result["cells"] if c["status"] != "completed"]
    print(f"study {args.study.stem}: {len(result['cells']) - len(failed)} of {len(result['cells'])} cells completed; "
          f"report: {result['report']}")
    for c in failed:
        print(f"  missing: {c['cell']} ({c.get('error', 'failed')}); log: {c['log']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
