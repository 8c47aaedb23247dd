"""Training checkpoints: a run stopped at any point and rerun ends with the same model, bit for bit, as a run that
never stopped; a checkpoint is used only by the run it belongs to, and removed once the model is written."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest
import torch
import yaml

from hopfield_replay.models import CheckpointPolicy, PixelDDPM, TrainConfig, train_and_save, train_denoiser
from hopfield_replay.models.training import Checkpoint, run_key
from stages import encode, prepare
from tests.conftest import ROOT, TINY_PARAMS
from tests.test_diffusion import TINY, _weights

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = TrainConfig(steps=12, batch_size=8, seed=3, replay_fraction=0.25)


class Stopped(Exception):
    pass


class StopAfterSave(Checkpoint):
    """A checkpoint that stops the run right after its save at ``stop_at`` (a crash between two steps)."""

    def __init__(self, *args, stop_at: int):
        super().__init__(*args)
        self.stop_at = stop_at

    def save(self, state):
        super().save(state)
        if state["step"] == self.stop_at:
            raise Stopped


def _data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 5, (n,), generator=g)


def _model():
    torch.manual_seed(0)
    return PixelDDPM.from_config(TINY)


@pytest.mark.parametrize("stop_at", [3, 9])
def test_a_resumed_run_is_bitwise_the_uninterrupted_run(tmp_path, stop_at):
    x, y = _data()
    rx, ry = _data(6, seed=1)
    reference = _model()
    ref_losses = train_denoiser(reference, x, CONFIG, labels=y, replay_x0=rx, replay_labels=ry, progress=False)

    policy = CheckpointPolicy(tmp_path, every_minutes=60, every_steps=3)
    with pytest.raises(Stopped):
        train_denoiser(_model(), x, CONFIG, labels=y, replay_x0=rx, replay_labels=ry, progress=False,
                       checkpoint=StopAfterSave(policy, "run", "k", stop_at=stop_at))
    saved = torch.load(tmp_path / "run-k.pt", weights_only=True)
    assert saved["step"] == stop_at and len(saved["losses"]) == stop_at
    resumed = _model()  # a fresh process: the initial weights again, then the checkpoint
    losses = train_denoiser(resumed, x, CONFIG, labels=y, replay_x0=rx, replay_labels=ry, progress=False,
                            checkpoint=Checkpoint(policy, "run", "k"))
    assert losses == ref_losses
    assert torch.equal(_weights(resumed), _weights(reference))


def test_without_resume_the_run_would_differ(tmp_path):
    """The control: the checkpoint, not luck, makes the resumed run equal (a restart from step 0 with the
    partly trained weights gives another model)."""
    x, y = _data()
    reference = _model()
    train_denoiser(reference, x, CONFIG, labels=y, progress=False)
    policy = CheckpointPolicy(tmp_path, every_minutes=60, every_steps=3)
    partly = _model()
    with pytest.raises(Stopped):
        train_denoiser(partly, x, CONFIG, labels=y, progress=False,
                       checkpoint=StopAfterSave(policy, "run", "k", stop_at=6))
    train_denoiser(partly, x, CONFIG, labels=y, progress=False)  # no checkpoint: steps 0..11 again
    assert not torch.equal(_weights(partly), _weights(reference))


def test_the_key_covers_config_inputs_and_weights():
    x, y = _data()
    base = run_key({"lr": 1e-3}, "cpu", x, y, _weights(_model()))
    assert run_key({"lr": 1e-3}, "cpu", x.clone(), y, _weights(_model())) == base
    assert run_key({"lr": 2e-3}, "cpu", x, y, _weights(_model())) != base
    assert run_key({"lr": 1e-3}, "cuda", x, y, _weights(_model())) != base
    x2 = x.clone()
    x2[0, 0, 0, 0] += 1e-6
    assert run_key({"lr": 1e-3}, "cpu", x2, y, _weights(_model())) != base
    assert run_key({"lr": 1e-3}, "cpu", x, y, _weights(_model()) * 2) != base


def test_train_and_save_resumes_only_its_own_run_and_cleans_up(tmp_path, capsys):
    x, y = _data()
    policy = CheckpointPolicy(tmp_path / "ckpt", every_minutes=60, every_steps=4)
    reference = _model()
    train_and_save(reference, x, y, CONFIG, torch.device("cpu"), tmp_path / "ref", desc="train_a")

    class StopAtEight(Exception):
        pass

    original = Checkpoint.save

    def save_then_stop(self, state):
        original(self, state)
        if state["step"] == 8:
            raise StopAtEight

    Checkpoint.save = save_then_stop
    try:
        with pytest.raises(StopAtEight):
            train_and_save(_model(), x, y, CONFIG, torch.device("cpu"), tmp_path / "out", desc="train_a",
                           checkpoints=policy)
    finally:
        Checkpoint.save = original
    assert not (tmp_path / "out").exists()
    [ckpt] = (tmp_path / "ckpt").glob("train_a-*.pt")
    # Another run (other steps) in the same folder ignores it and starts from step 0.
    other = replace(CONFIG, steps=10)
    capsys.readouterr()
    train_and_save(_model(), x, y, other, torch.device("cpu"), tmp_path / "other", desc="train_a",
                   checkpoints=policy)
    assert "resumed" not in capsys.readouterr().out and ckpt.is_file()
    # The same run resumes from step 8 and ends where the uninterrupted run ended; its checkpoint is removed.
    resumed = _model()
    train_and_save(resumed, x, y, CONFIG, torch.device("cpu"), tmp_path / "out", desc="train_a", checkpoints=policy)
    assert "resumed from step 8 of 12" in capsys.readouterr().out
    assert torch.equal(_weights(resumed), _weights(reference))
    weights = "unet/diffusion_pytorch_model.safetensors"
    assert (tmp_path / "out" / weights).read_bytes() == (tmp_path / "ref" / weights).read_bytes()
    assert list((tmp_path / "ckpt").iterdir()) == []


def test_a_damaged_checkpoint_starts_over(tmp_path, capsys):
    policy = CheckpointPolicy(tmp_path, every_minutes=60, every_steps=4)
    (tmp_path / "run-k.pt").write_bytes(b"not a checkpoint")
    x, y = _data()
    model = _model()
    train_denoiser(model, x, CONFIG, labels=y, progress=False, checkpoint=Checkpoint(policy, "run", "k"))
    assert "unreadable" in capsys.readouterr().out
    reference = _model()
    train_denoiser(reference, x, CONFIG, labels=y, progress=False)
    assert torch.equal(_weights(model), _weights(reference))


# -- the real thing: kill -9 of the train_a stage's process, then the same command again ---------------------


def _stage(name: str, params, *args) -> list[str]:
    return [sys.executable, "-m", f"stages.{name}", "--params", str(params), *map(str, args)]


@pytest.mark.slow
def test_kill_9_during_train_a_then_rerun_gives_the_same_model(tmp_path):
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["train_a"].update(steps=100, batch_size=16)  # killed at its first checkpoint, 90 steps before the end
    params["execution"] = {"checkpoint_dir": "ckpt", "checkpoint_every_steps": 10}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    x0, samples = tmp_path / "x0.safetensors", tmp_path / "samples.parquet"
    images = tmp_path / "images.safetensors"
    prepare.main(["--params", str(path), "--out-images", str(images), "--out-samples", str(samples)])
    encode.main(["--params", str(path), "--images", str(images), "--out", str(x0)])
    train = lambda out: _stage("train_a", path, "--x0", x0, "--samples", samples, "--out", out,  # noqa: E731
                               "--out-curves", f"{out}-curves")

    subprocess.run(train(tmp_path / "reference"), cwd=tmp_path, env=env, check=True, capture_output=True, timeout=600)
    assert not list((tmp_path / "ckpt").glob("*.pt"))  # removed after success

    proc = subprocess.Popen(train(tmp_path / "model"), cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list((tmp_path / "ckpt").glob("*.pt")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "train_a finished before its first checkpoint: raise its steps"
    assert not (tmp_path / "model").exists()

    rerun = subprocess.run(train(tmp_path / "model"), cwd=tmp_path, env=env, capture_output=True, text=True,
                           timeout=600)
    assert rerun.returncode == 0, rerun.stderr
    step = int(rerun.stdout.split("resumed from step ")[1].split()[0])
    assert 0 < step < 100
    for name in ("unet/diffusion_pytorch_model.safetensors", "train_log.json"):
        assert (tmp_path / "model" / name).read_bytes() == (tmp_path / "reference" / name).read_bytes(), name
    for name in ("metrics.json", "plots/metrics/eval_task_a.tsv"):  # the curve points before the kill are kept
        assert (tmp_path / "model-curves" / name).read_bytes() == (tmp_path / "reference-curves" / name).read_bytes()
    assert not list((tmp_path / "ckpt").iterdir())
