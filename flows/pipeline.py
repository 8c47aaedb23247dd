"""The pipeline flow: every DVC stage of dvc.yaml, in order, as a Prefect task; then a short summary.

    python -m flows.pipeline                 # run (offline, ephemeral Prefect API, PREFECT_HOME=.prefect)
    python -m flows.pipeline --stages prepare train_a

Each task runs `dvc repro --single-item <stage>` in a subprocess from the repo root and streams its output into
the flow's log. DVC's lock file decides what is up to date (no Prefect result caching on top); a task is retried
only for transient failures (another DVC process holding the repo lock), and killed after its timeout.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
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

TRANSIENT_MARKERS = ("Unable to acquire lock", "is busy", "Lock acquisition", "database is locked")
DEFAULT_TIMEOUT_S = 4 * 3600


class StageFailed(RuntimeError):
    def __init__(self, stage: str, returncode: int, tail: list[str]):
        self.stage, self.returncode, self.tail = stage, returncode, tail
        self.transient = any(m in line for line in tail for m in TRANSIENT_MARKERS)
        super().__init__(f"stage {stage!r} failed (exit {returncode}):\n" + "\n".join(tail[-15:]))


def dvc_stages(repo_root: str | Path) -> list[str]:
    """Stage names of dvc.yaml in file order (a matrix/foreach stage is one name: all its items)."""
    spec = yaml.safe_load((Path(repo_root) / "dvc.yaml").read_text())
    return list((spec or {}).get("stages", {}))


def dvc_env() -> dict:
    """The subprocess environment: offline settings, and this interpreter's bin first on PATH (dvc.yaml's
    `python` must be the project's environment)."""
    env = dict(os.environ)
    env.update({k: os.environ.get(k, v) for k, v in OFFLINE_ENV.items()})
    env.setdefault("DVC_SITE_CACHE_DIR", str(Path(env.get("PREFECT_HOME", ROOT / ".prefect")).parent / ".dvc" / "site_cache"))
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


def run_streamed(cmd: list[str], cwd: Path, timeout_s: float, log) -> tuple[int, list[str]]:
    """Run ``cmd``, sending each output line to ``log``; kill it after ``timeout_s``. Returns (code, lines)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=dvc_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    timed_out = threading.Event()

    def _kill():
        timed_out.set()
        proc.kill()

    timer = threading.Timer(timeout_s, _kill)
    timer.start()
    lines: list[str] = []
    try:
        for line in proc.stdout:
            parts = [p for p in line.rstrip("\n").split("\r") if p.strip()]
            if parts:  # progress bars redraw with \r: keep and log the last state of the line
                lines.append(parts[-1])
                log(parts[-1])
        code = proc.wait()
    finally:
        timer.cancel()
    if timed_out.is_set():
        lines.append(f"killed after the {timeout_s:.0f} s timeout")
    return code, lines


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
    code, lines = run_streamed(["dvc", "repro", "--single-item", stage], Path(repo_root), timeout_s, log.info)
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
    """The headline numbers from the report's metrics, and where the outputs are."""
    root = Path(repo_root)
    metrics_path = root / "data" / "metrics" / "report.json"
    lines = []
    if metrics_path.is_file():
        m = json.loads(metrics_path.read_text())
        for t, r in m["spearman"]["energy_a"].items():
            lines.append(f"  Spearman(task-A energy, forgetting) {t:>7}: {r['rho']:+.3f}  95% CI [{r['lo']:+.3f}, {r['hi']:+.3f}]")
        lines.append("  mean forgetting per replay arm (lower is better; averaged over t):")
        for arm, r in sorted(m["arms"].items(), key=lambda kv: kv[1]["mean"]):
            lines.append(f"    {arm:>18}: {r['mean']:.5f}   top energy decile {r['top_decile']:.5f}")
    mhn = root / "data" / "mhn" / "report" / "summary.md"
    if mhn.is_file():
        lines.append(f"  Hopfield-network experiments: {mhn}")
    lines += [f"  tables: {root / 'data' / 'tables'} (Parquet, keyed by sample_id)",
              f"  report: {root / 'data' / 'report' / 'report.md'}"]
    return "\n".join(lines)


@flow(name="hopfield-replay-pipeline")
def pipeline(repo_root: str = str(ROOT), stages: list[str] | None = None,
             timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """Run the DVC stages (all of dvc.yaml by default) in order; return {stage: 'ran' | 'up to date'}."""
    log = get_run_logger()
    names = stages or dvc_stages(repo_root)
    if stages is None and not pipeline_status(repo_root):
        log.info("The pipeline is up to date: nothing to run (DVC's lock matches every stage's inputs).")
        results = {name: "up to date" for name in names}
    else:
        results = {}
        for name in names:
            results[name] = dvc_stage.with_options(timeout_seconds=timeout_s)(name, repo_root, timeout_s)
        if all(v == "up to date" for v in results.values()):
            log.info("The pipeline is up to date: nothing to run.")
    log.info("Summary:\n" + summarize(repo_root))
    return results


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Run the hopfield-replay pipeline as a Prefect flow.")
    ap.add_argument("--repo-root", default=str(ROOT))
    ap.add_argument("--stages", nargs="*", help="stage names from dvc.yaml (default: all, in order)")
    ap.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="per-stage timeout in seconds")
    args = ap.parse_args(argv)
    try:
        results = pipeline(repo_root=args.repo_root, stages=args.stages or None, timeout_s=args.timeout)
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ran = [k for k, v in results.items() if v == "ran"]
    print("pipeline: " + (f"ran {', '.join(ran)}" if ran else "up to date, nothing ran"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
