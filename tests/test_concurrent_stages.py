"""Stage items side by side (`python -m flows.pipeline --per-device N`): the items of train_b and retrain run
N at a time, and DVC records each as `dvc repro` would: the same dvc.lock, byte for byte, and nothing left to run."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from flows.concurrent_stages import device_slots, group_items
from tests.conftest import run


@pytest.mark.slow
def test_items_side_by_side_give_the_lock_of_dvc_repro(tiny_project, tmp_path):
    project = tmp_path / "project"
    shutil.copytree(tiny_project, project, symlinks=True)
    lock = (project / "dvc.lock").read_bytes()
    models = project / "data" / "models"
    outputs = [*models.glob("task_b/seed*"), *models.glob("retrain/seed*/*-*")]  # not DVC's .gitignore files
    assert len(outputs) == 2 + 8 and all(path.is_dir() for path in outputs)
    for path in outputs:
        shutil.rmtree(path)
    retrain = group_items(project, "retrain")
    assert len(retrain) == 8 and all(name.startswith("retrain@") for name in retrain)  # 2 seeds x 4 arms
    assert group_items(project, "train_a") == {}

    env = dict(os.environ)  # the threads the fixture's `dvc repro` had: CPU training results depend on them
    flow = subprocess.run([sys.executable, "-m", "flows.pipeline", "--repo-root", str(project), "--stages",
                           "train_b", "retrain", "--per-device", "2"], cwd=project, env=env, capture_output=True,
                          text=True, timeout=1200)
    out = flow.stdout + flow.stderr
    assert flow.returncode == 0, out[-4000:]
    assert "Stage 'train_b': 2 of 2 items to run, 2 at a time." in out
    assert "Stage 'retrain': 8 of 8 items to run, 2 at a time." in out
    if not torch.cuda.is_available():
        assert "No GPU: the items share the CPU cores" in out  # the warning: slower than one at a time there
    # side by side: two items run at once, never more
    running, most = set(), 0
    for item, what in re.findall(r"Task run '(retrain@[^']+)' - (Running stage|Stage '\S+' ended)", out):
        running.add(item) if what == "Running stage" else running.discard(item)
        most = max(most, len(running))
    assert most == 2
    # DVC recorded every item exactly as `dvc repro` had: same hashes, nothing left to run
    assert (project / "dvc.lock").read_bytes() == lock
    status = run(["dvc", "status", "--json"], project).stdout.strip()
    assert status == "{}", status
    assert run(["git", "status", "--porcelain"], project).stdout == ""


def test_slots_pin_a_gpu_or_keep_the_cpu_threads(monkeypatch):
    """On the CPU a slot changes nothing in the environment: an item must train with the threads `dvc repro`
    would use (the thread count changes CPU training results in their last bits) to give the same bytes."""
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    slots = device_slots(2)
    if "CUDA_VISIBLE_DEVICES" in slots[0]:
        assert len(slots) % 2 == 0
    else:
        assert slots == [{}, {}]
