"""The pipeline flow: every DVC stage of dvc.yaml, in order, as a Prefect task; then a short summary.

    python -m flows.pipeline                 # run (offline, a temporary Prefect server, PREFECT_HOME=.prefect)
    python -m flows.pipeline --stages prepare train_a

Each task runs `dvc repro --single-item <stage>` in a subprocess from the repo root and streams its output into
the flow's log (flows/stage_output.py: one line per progress bar, its final state with elapsed time and rate;
DVC's git hints dropped; bars stay live in a terminal's `dvc repro`). DVC's lock file decides what is up to date
(no Prefect result caching on top); a task is retried only for transient failures (another DVC process holding the
repo lock), and killed after its timeout.

With ``--per-device N`` (N > 1), the independent items of a foreach / matrix stage (train_b per seed, retrain per
arm) run N at a time per device (flows/concurrent_stages.py: each item's command, then `dvc commit` of it); 1 runs
every stage through `dvc repro`. The default, auto, is 1 with a GPU and, on the CPU, cores // train_b.threads
(params.yaml's 1 thread per item: two items side by side on 2 cores), or 1 when train_b.threads is 0.

Ctrl-C (SIGINT) or SIGTERM stops the running stage (its whole process group: DVC and the stage), marks the flow
run Crashed, stops the temporary Prefect server and exits with 128 + the signal number. Finished stages stay in
DVC's lock; a training stage resumes from its checkpoint on the next run.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Offline, project-local Prefect and DVC: set before Prefect is imported.
OFFLINE_ENV = {
    "PREFECT_HOME": str(ROOT / ".prefect"),
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120",
}
for _key, _value in OFFLINE_ENV.items():
    os.environ.setdefault(_key, _value)

import yaml  # noqa: E402
from prefect import flow, get_run_logger, task  # noqa: E402
from prefect.exceptions import TerminationSignal  # noqa: E402

from flows.concurrent_stages import auto_per_device, group_items, run_group  # noqa: E402
from flows.prefect_server import temporary_prefect_server  # noqa: E402
from flows.stage_output import StageFailed, run_streamed, stop_all  # noqa: E402

DEFAULT_TIMEOUT_S = 4 * 3600


def dvc_stages(repo_root: str | Path) -> list[str]:
    """Stage names of dvc.yaml in file order (a matrix/foreach stage is one name: all its items)."""
    spec = yaml.safe_load((Path(repo_root) / "dvc.yaml").read_text())
    return list((spec or {}).get("stages", {}))


def dvc_env() -> dict:
    """The subprocess environment: offline settings, unbuffered Python output (a stage's prints and its progress
    bars reach the log in order, as they happen), and this interpreter's bin first on PATH (dvc.yaml's `python`
    must be the project's environment)."""
    env = dict(os.environ)
    env.update({k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()})
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("DVC_SITE_CACHE_DIR", str(Path(env.get("PREFECT_HOME", ROOT / ".prefect")).parent / ".dvc" / "site_cache"))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def _is_transient(task, task_run, state) -> bool:
    try:
        state.result()
    except StageFailed as exc:
        return exc.transient
    except Exception:  # noqa: BLE001 - anything else is not worth retrying
        return False
    return False


@task(name="dvc-stage", retries=2, retry_delay_seconds=10, retry_condition_fn=_is_transient, cache_policy=None,
      persist_result=False, task_run_name="{stage}")
def dvc_stage(stage: str, repo_root: str, timeout_s: float = DEFAULT_TIMEOUT_S) -> str:
    """`dvc repro --single-item <stage>`; returns 'ran' or 'up to date'."""
    log = get_run_logger()
    code, lines = run_streamed(["dvc", "repro", "--single-item", stage], Path(repo_root), dvc_env(), timeout_s,
                               log.info)
    if code != 0:
        raise StageFailed(stage, code, lines)
    ran = any(line.startswith("Running stage") for line in lines)
    return "ran" if ran else "up to date"


def pipeline_status(repo_root: str | Path) -> dict:
    """`dvc status --json`: {} when every stage is up to date."""
    out = subprocess.run(["dvc", "status", "--json"], cwd=repo_root, env=dvc_env(), capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"dvc status failed: {out.stderr.strip()[-500:]}")
    text = out.stdout.strip()
    return json.loads(text[text.index("{"):]) if "{" in text else {}


def summarize(repo_root: str | Path) -> str:
    """The verdicts on the paper's two claims (the report's first section), the design checks' verdicts, and where
    the outputs are."""
    root = Path(repo_root)
    report = root / "data" / "report" / "report.md"
    lines = []
    if report.is_file():
        text = report.read_text()
        if "## Verdicts" in text:
            section = text.split("## Verdicts", 1)[1].split("\n## ", 1)[0]
            lines += ["  " + line for line in section.strip().splitlines() if line.strip()]
        if "## Can this run show a replay effect?" in text:
            section = text.split("## Can this run show a replay effect?", 1)[1].split("\n## ", 1)[0]
            lines += ["  design check: " + line[2:] for line in section.splitlines() if line.startswith("- **")]
    mhn = root / "data" / "mhn" / "report" / "summary.md"
    if mhn.is_file():
        lines.append(f"  Hopfield-network experiments: {mhn}")
    lines += [f"  tables: {root / 'data' / 'tables'} (Parquet, keyed by sample_id)",
              f"  report: {report} (predictors against baselines, arms against random over seeds)",
              "  against the committed run: python -m tools.check_reproduction (same verdicts, numbers within 1e-3?)"]
    return "\n".join(lines)


@flow(name="hopfield-replay-pipeline")
def pipeline(repo_root: str = str(ROOT), stages: list[str] | None = None,
             timeout_s: float = DEFAULT_TIMEOUT_S, per_device: int = 1) -> dict:
    """Run the DVC stages (all of dvc.yaml by default) in order; return {stage: 'ran' | 'up to date'}. With
    ``per_device`` > 1, the items of a foreach / matrix stage run that many at a time per device."""
    log = get_run_logger()
    names = stages or dvc_stages(repo_root)
    if stages is None and not pipeline_status(repo_root):
        log.info("The pipeline is up to date: nothing to run (DVC's lock matches every stage's inputs).")
        results = {name: "up to date" for name in names}
    else:
        results = {}
        for name in names:
            if per_device > 1 and group_items(repo_root, name):
                results[name] = run_group(name, repo_root, dvc_env(), per_device, timeout_s)
            else:
                results[name] = dvc_stage.with_options(timeout_seconds=timeout_s)(name, repo_root, timeout_s)
        if all(v == "up to date" for v in results.values()):
            log.info("The pipeline is up to date: nothing to run.")
    log.info("Summary:\n" + summarize(repo_root))
    return results


def _interrupt(signum, frame):
    """SIGINT or SIGTERM (outside the flow run: inside it, Prefect's own SIGTERM handler raises instead): stop every
    running stage, then raise in the main thread, once."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop_all()
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise TerminationSignal(signal=signum)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the hopfield-replay pipeline as a Prefect flow.")
    ap.add_argument("--repo-root", default=str(ROOT),
                    help="the project to run: a git + DVC repository with dvc.yaml and params.yaml "
                         "(default: this checkout)")
    ap.add_argument("--stages", nargs="*", help="stage names from dvc.yaml (default: all, in order)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per-stage timeout in seconds")
    ap.add_argument("--per-device", default="auto", metavar="N",
                    help="run the items of a foreach / matrix stage (train_b, retrain) N at a time per GPU, or N "
                         "at a time on the CPU; 1: every stage through `dvc repro`, one at a time (default auto: 1 "
                         "with a GPU; on the CPU, cores // train_b.threads, or 1 when train_b.threads is 0)")
    args = ap.parse_args(argv)
    if args.per_device == "auto":
        args.per_device = auto_per_device(args.repo_root)
    elif not args.per_device.isdigit() or int(args.per_device) < 1:
        ap.error(f"--per-device {args.per_device}: must be an integer >= 1 or auto")
    args.per_device = int(args.per_device)
    if args.per_device > 1:  # an item pinned to one GPU cannot train as several data-parallel processes
        params = yaml.safe_load((Path(args.repo_root) / "params.yaml").read_text()) or {}
        processes = (params.get("train_b") or {}).get("processes", 1)
        if processes != 1:
            ap.error(f"--per-device {args.per_device} runs one GPU per item, but train_b.processes is {processes}: "
                     "use --per-device 1 (data parallel) or train_b.processes: 1 (items side by side)")
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        with temporary_prefect_server():
            results = pipeline(repo_root=args.repo_root, stages=args.stages or None, timeout_s=args.timeout,
                               per_device=args.per_device)
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except (KeyboardInterrupt, TerminationSignal) as exc:
        signum = getattr(exc, "signal", signal.SIGINT)
        print(f"error: stopped by {signal.Signals(signum).name}: the running stage was stopped and the flow run "
              "marked Crashed; rerun to continue (finished stages are kept, training resumes from its checkpoint)",
              file=sys.stderr)
        return 128 + signum
    ran = [k for k, v in results.items() if v == "ran"]
    print("pipeline: " + (f"ran {', '.join(ran)}" if ran else "up to date, nothing ran"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
