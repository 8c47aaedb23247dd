"""Stage items side by side (`python -m flows.pipeline --per-device N`): the items of train_b and retrain run
N at a time, and DVC records each as `dvc repro` would: the same dvc.lock, byte for byte, and nothing left to run.
The whole pipeline side by side on a fresh clone: tests/test_pipeline.py."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
import yaml

from flows import concurrent_stages
from flows.concurrent_stages import auto_per_device, device_slots, group_items
from tests.conftest import run


def _flow(project, *args) -> str:
    env = dict(os.environ)  # the threads the fixture's `dvc repro` had: CPU training results depend on them
    flow = subprocess.run([sys.executable, "-m", "flows.pipeline", "--repo-root", str(project), *args], cwd=project,
                          env=env, capture_output=True, text=True, timeout=1200)
    out = flow.stdout + flow.stderr
    assert flow.returncode == 0, out[-4000:]
    return out


def most_at_once(out: str, stage: str) -> int:
    """The most items of ``stage`` running at once, from the flow's log (each item's start and end lines)."""
    running, most = set(), 0
    for item, what in re.findall(rf"Task run '({stage}@[^']+)' - (Running stage|Stage '\S+' ended)", out):
        running.add(item) if what == "Running stage" else running.discard(item)
        most = max(most, len(running))
    return most


def _outputs(project):
    models = project / "data" / "models"
    return [*models.glob("task_b/seed*"), *models.glob("retrain/seed*/*-*")]  # not DVC's .gitignore files


def _uncache(project, items: list[str]) -> None:
    """Take the outputs of ``items`` out of DVC's cache (their folder manifests): no recorded run of them can be
    restored (DVC restores a run only when its outputs are cached), so they must run again."""
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    for name in items:
        for out in lock["stages"][name]["outs"]:
            (project / ".dvc" / "cache" / "files" / "md5" / out["md5"][:2] / out["md5"][2:]).unlink()


@pytest.mark.slow
def test_items_side_by_side_give_the_lock_of_dvc_repro(tiny_project, tmp_path):
    """(A fresh clone run with `--per-device 2`, every item running: tests/test_pipeline.py.) Here, as `dvc repro`
    would, the flow restores items from DVC's cache instead of running them: a train_b param changed (train_b runs
    again, two at a time) and changed back, every output deleted and one retrain item taken out of the cache:
    train_b comes back from the run-cache (its earlier runs), five retrain items from their lock entries, and only
    the sixth runs. DVC then records exactly what `dvc repro` had."""
    project = tmp_path / "project"
    shutil.copytree(tiny_project, project, symlinks=True)
    lock = (project / "dvc.lock").read_bytes()
    assert len(_outputs(project)) == 2 + 6 and all(path.is_dir() for path in _outputs(project))
    retrain = group_items(project, "retrain")
    assert len(retrain) == 6 and all(name.startswith("retrain@") for name in retrain)  # 2 seeds x 3 arms
    assert group_items(project, "train_a") == {}

    # a train_b param changed: train_b runs again (no run of these inputs is recorded), two at a time
    params = (project / "params.yaml").read_text()
    changed = yaml.safe_load(params)
    changed["train_b"]["steps"] = 3
    (project / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    out = _flow(project, "--stages", "train_b", "--per-device", "2")
    assert "Stage 'train_b': 2 of 2 items to run, 2 at a time." in out
    if not torch.cuda.is_available():
        assert "No GPU: the items share the CPU cores" in out  # the warning: slower than one at a time there
    assert most_at_once(out, "train_b") == 2
    assert (project / "dvc.lock").read_bytes() != lock
    # ... and changed back, every output deleted, one retrain item out of the cache: only that item runs
    (project / "params.yaml").write_text(params)
    for path in _outputs(project):
        shutil.rmtree(path)
    lost = sorted(retrain)[0]
    _uncache(project, [lost])
    out = _flow(project, "--stages", "train_b", "retrain", "--per-device", "2")
    assert "Stage 'train_b': 2 items restored from DVC's run-cache" in out
    restored = re.search(r"Stage 'retrain': 5 items restored from DVC's run-cache: (.*)\.", out)
    assert restored and sorted(restored.group(1).split(", ")) == sorted(set(retrain) - {lost}), out[-3000:]
    assert "Stage 'retrain': 1 of 6 items to run, 2 at a time." in out
    assert re.findall(r"Running stage '([^']+)'", out) == [lost]
    # DVC recorded every item exactly as `dvc repro` had: same hashes, nothing left to run
    assert (project / "dvc.lock").read_bytes() == lock
    status = run(["dvc", "status", "--json"], project).stdout.strip()
    assert status == "{}", status
    assert run(["git", "status", "--porcelain"], project).stdout == ""
    assert all(path.is_dir() for path in _outputs(project)) and len(_outputs(project)) == 8


@pytest.mark.slow
def test_one_thread_items_fill_the_cores_by_default_and_give_the_bytes_of_dvc_repro(tiny_project, tmp_path):
    """train_b.threads: 1 makes the flow's default (--per-device auto) run cores // 1 train_b items at once on the
    CPU, without the oversubscription warning; `dvc repro` of the same items, one at a time, writes the same
    dvc.lock byte for byte (each item computes with one thread either way)."""
    project = tmp_path / "project"
    shutil.copytree(tiny_project, project, symlinks=True)
    changed = yaml.safe_load((project / "params.yaml").read_text())
    changed["train_b"]["threads"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(changed, sort_keys=False))
    slots = auto_per_device(project)
    out = _flow(project, "--stages", "train_b")
    assert f"Stage 'train_b': 2 of 2 items to run, {slots} at a time." in out
    assert "No GPU: the items share the CPU cores" not in out
    if not torch.cuda.is_available():
        assert slots == concurrent_stages.cpu_cores()
        assert most_at_once(out, "train_b") == min(2, slots)
    logs = [json.loads((project / "data" / "models" / "task_b" / f"seed{s}" / "train_log.json").read_text())
            for s in (1, 2)]
    assert all(log.get("threads") == (None if torch.cuda.is_available() else 1) for log in logs)
    lock = (project / "dvc.lock").read_bytes()
    run(["dvc", "repro", "--single-item", "--force", "--no-run-cache", "train_b"], project)
    assert (project / "dvc.lock").read_bytes() == lock
    assert run(["dvc", "status", "--json", "train_b"], project).stdout.strip() == "{}"


def test_the_default_side_by_side_count_follows_the_item_threads(tmp_path, monkeypatch):
    """auto: one item at a time with a GPU or with train_b.threads 0 (every core each); else cores // threads."""
    monkeypatch.setattr(concurrent_stages, "cpu_cores", lambda: 8)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for threads, expected in [(0, 1), (1, 8), (3, 2), (16, 1)]:
        (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train_b": {"threads": threads}}))
        assert auto_per_device(tmp_path) == expected, threads
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_per_device(tmp_path) == 1


def test_slots_pin_a_gpu_or_keep_the_cpu_threads(monkeypatch):
    """On the CPU a slot changes nothing in the environment: an item must train with the threads `dvc repro`
    would use (the thread count changes CPU training results in their last bits) to give the same bytes."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    slots = device_slots(2)
    if "CUDA_VISIBLE_DEVICES" in slots[0]:
        assert len(slots) % 2 == 0
    else:
        assert slots == [{}, {}]


def test_items_side_by_side_refuse_data_parallel_items(tmp_path, capsys):
    """--per-device pins each item to one GPU: train_b items (every replay arm too) that ask for 2 data-parallel
    processes are refused before anything runs (exit 2, naming both settings)."""
    from flows.pipeline import main

    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train_b": {"steps": 4, "processes": 2}}))
    with pytest.raises(SystemExit) as info:
        main(["--repo-root", str(tmp_path), "--per-device", "2"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith("--per-device 2 runs one GPU per item, but train_b.processes is 2: use --per-device 1 "
                        "(data parallel) or train_b.processes: 1 (items side by side)")


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_a_bad_side_by_side_count_is_one_line_naming_the_option(value, tmp_path, capsys):
    from flows.pipeline import main

    with pytest.raises(SystemExit) as info:
        main(["--repo-root", str(tmp_path), "--per-device", value])
    assert info.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1].endswith(
        f"--per-device {value}: must be an integer >= 1 or auto")
