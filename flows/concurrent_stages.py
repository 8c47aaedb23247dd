"""Independent items of one DVC stage (a ``foreach`` / ``matrix`` stage: train_b per seed, retrain per arm, budget
and seed) side by side, a fixed number per device, with DVC still the owner of every output.

DVC runs one ``dvc repro`` per workspace at a time (its repository lock), so the items cannot be run by parallel
``dvc repro`` calls. Instead, for the items ``dvc status`` reports as changed, the flow runs each item's own
command (the ``cmd`` DVC resolves for it) in a process group of its own, at most ``per_device`` per GPU (each
pinned with ``CUDA_VISIBLE_DEVICES``) or ``per_device`` on the CPU (with the threads `dvc repro` would use: CPU
results depend on the thread count; ``train_b.threads: 1`` makes that one thread per item, so that items fill the
cores side by side: ``auto_per_device``), and as each one finishes, ``dvc commit --force <item>`` records it: DVC
hashes its dependencies and outputs, caches the outputs and writes its entry in dvc.lock, exactly as ``dvc repro``
would. The commits run one at a time (DVC's lock again). Items write their outputs atomically, so a stopped item leaves
nothing for DVC to record, and it runs again next time. Before any item runs, DVC's run-cache is asked first, as
``dvc repro`` does: a changed item whose inputs match a recorded run (its lock entry, or any earlier run in the
run-cache) gets its outputs checked out of the cache and its lock entry written, and is not run.
"""

from __future__ import annotations

import json
import os
import queue
import shlex
import subprocess
import threading
import time
from pathlib import Path

from prefect import get_run_logger, task

from flows.stage_output import StageFailed, run_streamed, stop_all

_COMMIT_LOCK = threading.Lock()  # `dvc commit` takes DVC's repository lock: one at a time
_SLOTS: queue.Queue[dict] = queue.Queue()  # environment overrides of the free slots of the running group


def group_items(repo_root: str | Path, stage: str) -> dict[str, str]:
    """{item name: its resolved command} of a foreach / matrix stage ({} for a plain stage)."""
    from dvc.repo import Repo

    dvc_yaml = Path(repo_root).resolve() / "dvc.yaml"
    with Repo(str(dvc_yaml.parent)) as repo:
        stages = repo.stage.collect(f"{dvc_yaml}:{stage}")  # a relative target would be read from the cwd
    return {s.name: s.cmd for s in stages if "@" in s.name}


def changed_items(repo_root: str | Path, names: list[str], env: dict) -> list[str]:
    """The items among ``names`` that `dvc status` reports as changed (to run), in the given order."""
    out = subprocess.run(["dvc", "status", "--json", *names], cwd=repo_root, env=env, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"dvc status failed: {out.stderr.strip()[-500:]}")
    text = out.stdout.strip()
    status = json.loads(text[text.index("{"):]) if "{" in text else {}
    return [name for name in names if name in status]


def restore_cached_items(repo_root: str | Path, stage: str, names: list[str]) -> list[str]:
    """The items among ``names`` that DVC's run-cache restores, as ``dvc repro`` would before running a stage
    (``dvc.stage.run.run_stage``): each item's outputs are removed, then checked out of the cache when a recorded
    run has its inputs; a restored item is saved, committed and written to dvc.lock. Returns the restored names
    (the others are left to run, their outputs removed as a run removes them)."""
    from dvc.repo import Repo
    from dvc.stage.cache import RunCacheNotFoundError

    dvc_yaml = Path(repo_root).resolve() / "dvc.yaml"
    restored = []
    with Repo(str(dvc_yaml.parent)) as repo, repo.lock:
        for item in repo.stage.collect(f"{dvc_yaml}:{stage}"):
            if item.name not in names:
                continue
            item.remove_outs(ignore_remove=False, force=False)
            try:
                repo.stage_cache.restore(item)
            except RunCacheNotFoundError:
                continue
            item.save()
            item.commit()
            item.dump(update_pipeline=False)
            restored.append(item.name)
    return restored


def item_threads(repo_root: str | Path) -> int:
    """``train_b.threads`` of the project's params.yaml: the CPU threads each train_b / retrain item computes with
    (0: torch's default, every core)."""
    import yaml

    path = Path(repo_root) / "params.yaml"
    params = (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}
    return int((params.get("train_b") or {}).get("threads", 0) or 0)


def cpu_cores() -> int:
    """The cores this process may run on (its affinity; the machine's count where that is unknown)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def auto_per_device(repo_root: str | Path) -> int:
    """The flow's default: 1 with a GPU (one item per GPU at a time); on the CPU, as many items side by side as
    the cores hold at ``train_b.threads`` each (cores // threads), or 1 when threads is 0 (every core per item)."""
    import torch

    threads = item_threads(repo_root)
    if torch.cuda.is_available() or threads == 0:
        return 1
    return max(1, cpu_cores() // threads)


def device_slots(per_device: int) -> list[dict]:
    """Environment overrides of each slot: ``per_device`` slots per visible GPU (``CUDA_VISIBLE_DEVICES``), or
    ``per_device`` CPU slots that keep the environment as it is. (Not ``OMP_NUM_THREADS``: CPU training results
    depend on the thread count in their last bits, so an item must use the threads `dvc repro` would, to give the
    same bytes. On the CPU, side by side therefore shares the cores rather than splitting them.)"""
    import torch

    if torch.cuda.is_available():
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        gpus = [g.strip() for g in visible.split(",")] if visible else [str(i) for i in range(torch.cuda.device_count())]
        return [{"CUDA_VISIBLE_DEVICES": gpu} for _ in range(per_device) for gpu in gpus]
    return [{} for _ in range(per_device)]


@task(name="dvc-stage-item", cache_policy=None, persist_result=False, task_run_name="{item}")
def stage_item(item: str, cmd: str, repo_root: str, env: dict, timeout_s: float) -> str:
    """Run one item's command on a free slot, then `dvc commit` it; returns 'ran'."""
    log = get_run_logger()
    slot = _SLOTS.get()
    try:
        log.info(f"Running stage '{item}'" + (f" ({', '.join(f'{k}={v}' for k, v in slot.items())})" if slot else "")
                 + ":")
        log.info(f"> {cmd}")
        started = time.monotonic()
        code, lines = run_streamed(shlex.split(cmd), Path(repo_root), {**env, **slot}, timeout_s, log.info)
        log.info(f"Stage '{item}' ended (exit {code}) after {time.monotonic() - started:.1f} s.")
    finally:
        _SLOTS.put(slot)
    if code != 0:
        raise StageFailed(item, code, lines)
    with _COMMIT_LOCK:
        code, commit_lines = run_streamed(["dvc", "commit", "--force", item], Path(repo_root), env, timeout_s,
                                          log.info)
    if code != 0:
        raise StageFailed(item, code, lines + commit_lines)
    return "ran"


def run_group(stage: str, repo_root: str, env: dict, per_device: int, timeout_s: float) -> str:
    """Every changed item of ``stage`` side by side on the slots (``device_slots``); 'ran' or 'up to date'.
    Waits for every item; then raises the first failure (the items that finished are recorded)."""
    log = get_run_logger()
    items = group_items(repo_root, stage)
    todo = changed_items(repo_root, list(items), env)
    if not todo:
        log.info(f"Stage '{stage}': all {len(items)} items up to date.")
        return "up to date"
    restored = restore_cached_items(repo_root, stage, todo)
    if restored:
        log.info(f"Stage '{stage}': {len(restored)} items restored from DVC's run-cache: {', '.join(restored)}.")
        todo = [item for item in todo if item not in restored]
        if not todo:
            return "up to date"  # as `dvc repro` reports a stage it restored: nothing ran
    slots = device_slots(per_device)
    threads = item_threads(repo_root)
    oversubscribed = (threads or cpu_cores()) * len(slots) > cpu_cores()
    if not any("CUDA_VISIBLE_DEVICES" in slot for slot in slots) and oversubscribed:
        log.warning("No GPU: the items share the CPU cores, each with the threads `dvc repro` would use (so the "
                    "results are the same bytes); that oversubscribes the cores and is usually slower than one at a "
                    "time (measured 0.30x for 2 on 2 cores: benchmarks/bench_side_by_side.py); "
                    "train_b.threads: 1 gives each item one core instead.")
    while not _SLOTS.empty():
        _SLOTS.get_nowait()
    for slot in slots:
        _SLOTS.put(slot)
    log.info(f"Stage '{stage}': {len(todo)} of {len(items)} items to run, {len(slots)} at a time.")
    futures = [stage_item.with_options(timeout_seconds=timeout_s).submit(item, items[item], repo_root, env, timeout_s)
               for item in todo]
    errors = []
    try:
        for future in futures:
            try:
                future.result()
            except Exception as exc:  # noqa: BLE001 - collected; the first is raised once all are done
                errors.append(exc)
    except BaseException:  # Ctrl-C, or Prefect's SIGTERM handler (TerminationSignal), lands here in the main
        stop_all()         # thread: stop every running item, so the worker threads end and the flow can exit
        raise
    if errors:
        raise errors[0]
    return "ran"
