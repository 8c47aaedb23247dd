"""Data parallel: N processes, each training on its contiguous 1/N of every batch, give the one-process update of
the full batch (up to the order of the gradient sum). Started by `accelerate launch`, or by the stage itself when
the params say `processes: N` (so `dvc repro` runs it and records N); bad input still ends in exit 2 with the
copies' one-line errors and no output, and SIGTERM stops every copy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hopfield_replay.io.params_file import load_config
from hopfield_replay.runtime.data_parallel import launched_world_size, run_data_parallel
from hopfield_replay.errors import UserError
from hopfield_replay.models import build_model
from hopfield_replay.io.tables import tensor_meta
from stages import encode, prepare
from tests.conftest import ROOT, TINY_PARAMS, run, write_params

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


# -- when a stage launches, and what it refuses (no processes started) ------------------------------------------


def test_one_process_or_a_launched_copy_trains_here(monkeypatch):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    assert launched_world_size() is None
    assert run_data_parallel(1, "train_a.processes", "cpu", ["-m", "x"]) is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert launched_world_size() == 2
    assert run_data_parallel(2, "train_b.processes", "auto", ["-m", "x"]) is None  # one of the 2 copies


def test_a_launcher_with_another_world_size_is_refused(monkeypatch):
    """`accelerate launch --num_processes 2` on params saying 1: DVC would record the wrong training."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(UserError, match=r"train_a.processes is 1 but the launcher started 2 processes; set "
                                        r"train_a.processes: 2"):
        run_data_parallel(1, "train_a.processes", "cpu", ["-m", "x"])


def test_a_pinned_gpu_cannot_hold_several_processes(monkeypatch):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(UserError, match=r"device cuda:1 pins one GPU but train_b.processes is 2"):
        run_data_parallel(2, "train_b.processes", "cuda:1", ["-m", "x"])


def test_more_processes_than_gpus_is_refused(monkeypatch):
    for name in ("WORLD_SIZE", "RANK"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(UserError, match=r"train_a.processes is 4 but 2 GPU\(s\) are visible; set it to at most 2"):
        run_data_parallel(4, "train_a.processes", "auto", ["-m", "x"])


# -- the real stage, 2 CPU processes over gloo ----------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _prepared(tmp_path, processes: int):
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["train_a"].update(steps=2, batch_size=16, processes=processes)
    path = write_params(tmp_path / f"params{processes}.yaml", params)
    x0, samples, images = tmp_path / "x0.safetensors", tmp_path / "samples.parquet", tmp_path / "images.safetensors"
    if not x0.exists():
        prepare.main(["--params", str(path), "--out-images", str(images), "--out-samples", str(samples)])
        encode.main(["--params", str(path), "--images", str(images), "--out", str(x0)])
    return path, ["-m", "stages.train_a", "--params", str(path), "--x0", str(x0), "--samples", str(samples),
                  "--out-curves", str(tmp_path / f"curves{processes}"), "--out"]


@pytest.mark.slow
def test_two_processes_give_the_one_process_update_however_launched(tmp_path):
    """The real train_a stage as 2 processes (DDP over gloo): started by `accelerate launch`, and by the stage
    itself from `train_a.processes: 2`, the two give the same bytes; both equal the one-process run up to the
    order of the gradient sum; only the main process writes."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    path_one, stage_one = _prepared(tmp_path, 1)
    path_two, stage_two = _prepared(tmp_path, 2)
    one = subprocess.run([sys.executable, *stage_one, str(tmp_path / "one")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    two = subprocess.run([*launch, *stage_two, str(tmp_path / "two")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    itself = subprocess.run([sys.executable, *stage_two, str(tmp_path / "itself")], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=600)
    assert itself.returncode == 0, itself.stderr[-3000:]
    assert "data parallel: 2 processes of -m stages.train_a" in itself.stdout

    # the two launchers run the same computation: the same bytes
    for name in (WEIGHTS, "train_log.json"):
        assert (tmp_path / "two" / name).read_bytes() == (tmp_path / "itself" / name).read_bytes(), name
    # Against one process, weights agree to rounding except where AdamW's sign-like step flips for a near-zero
    # gradient (at most 2 lr per step); the losses of both steps carry the update through the model.
    a, b = load_file(tmp_path / "one" / WEIGHTS), load_file(tmp_path / "two" / WEIGHTS)
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert (diff > 1e-5).float().mean() < 1e-3 and diff.max() <= 2 * 2 * 2e-4 + 1e-6, diff.max()
    log_one = json.loads((tmp_path / "one" / "train_log.json").read_text())
    log_two = json.loads((tmp_path / "two" / "train_log.json").read_text())
    assert log_two["processes"] == 2 and "processes" not in log_one
    assert log_two["losses"] == pytest.approx(log_one["losses"], rel=1e-5)
    for proc in (two, itself):
        assert proc.stdout.count("train_a: 2 steps") == 1  # one writer
    # the training curves: measured in every process on the same weights, written once; close to one process's
    curves_one = json.loads((tmp_path / "curves1" / "metrics.json").read_text())
    curves_two = json.loads((tmp_path / "curves2" / "metrics.json").read_text())
    assert curves_two["step"] == curves_one["step"] == 2
    assert curves_two["eval_task_a"] == pytest.approx(curves_one["eval_task_a"], rel=1e-4)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".", "two", "itself"))) == ["itself",
                                                                                                      "two"]
    # the control: the DP run trained (most weights moved by far more than the two runs differ)
    cfg = load_config(path_one)
    initial = build_model(cfg.model, load_file(tmp_path / "x0.safetensors")["x0"].shape[1:],
                          tensor_meta(tmp_path / "x0.safetensors"), seed=0).unet.state_dict()
    moved = torch.cat([(initial[k] - b[k]).abs().flatten() for k in b])
    assert (moved > 1e-4).float().mean() > 0.5  # two AdamW steps of ~lr = 2e-4 each

    # bad input in the copies: exit 2, their one-line error, no output and no process left behind
    stage_bad = [arg.replace("x0.safetensors", "missing.safetensors") for arg in stage_two]
    bad = subprocess.run([sys.executable, *stage_bad, str(tmp_path / "bad")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert bad.returncode == 2, bad.stderr[-3000:]
    errors = {line for line in bad.stderr.splitlines() if line.startswith("error:")}
    assert errors == {f"error: {tmp_path / 'missing.safetensors'}: tensor file does not exist; run the stage that "
                      f"writes it first (dvc repro)"}, bad.stderr[-3000:]
    assert "Traceback" not in bad.stderr and not (tmp_path / "bad").exists()

    # SIGTERM to the stage (as the flow stops a stage): every copy stops, exit 143, no output
    params = yaml.safe_load(path_two.read_text())
    params["train_a"]["steps"] = 100000
    write_params(path_two, params)
    stopped = subprocess.Popen([sys.executable, *stage_two, str(tmp_path / "stopped")], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while len(_copies(tmp_path / "stopped")) < 2 and time.monotonic() < deadline:
        time.sleep(0.5)
    assert len(_copies(tmp_path / "stopped")) == 2  # the two copies run
    time.sleep(5)  # into training
    stopped.send_signal(signal.SIGTERM)
    assert stopped.wait(timeout=120) == 128 + signal.SIGTERM, stopped.stdout.read()[-3000:]
    time.sleep(1)
    assert _copies(tmp_path / "stopped") == [] and not (tmp_path / "stopped").exists()


def _copies(out) -> list[int]:
    """The processes whose command line names the output ``out``, other than the launching stage."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().split(b"\0")
            env = (proc / "environ").read_bytes()
        except (OSError, ValueError):
            continue
        if str(out).encode() in cmd and b"\0RANK=" in b"\0" + env:
            found.append(int(proc.name))
    return found


@pytest.mark.slow
def test_dvc_repro_trains_data_parallel_from_the_params(tiny_project, tmp_path):
    """`train_a.processes: 2` and a plain `dvc repro`: the stage runs as 2 processes, and DVC records it (the
    params in dvc.lock; nothing left to run)."""
    project = tmp_path / "project"
    shutil.copytree(tiny_project, project, symlinks=True)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["train_a"]["processes"] = 2
    write_params(project / "params.yaml", params)
    repro = run(["dvc", "repro", "--single-item", "train_a"], project)
    assert "data parallel: 2 processes of -m stages.train_a" in repro.stdout
    log = json.loads((project / "data" / "models" / "task_a" / "train_log.json").read_text())
    assert log["processes"] == 2
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    assert lock["stages"]["train_a"]["params"]["params.yaml"]["train_a"]["processes"] == 2
    status = json.loads(run(["dvc", "status", "--json", "train_a"], project).stdout)
    assert status == {}
