"""The training engine's settings: gradient accumulation and data parallel give the update of one process with the
full batch; the EMA of the weights (diffusers EMAModel) is what the saved model holds, checked against an fp64
recursion over the plain run's weights; the LR schedule (diffusers get_scheduler) warms up from 0; a run with
all of them resumes from its checkpoint bitwise; the params reject settings that cannot work."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hopfield_replay.config import ParamsError, load_config
from hopfield_replay.errors import UserError
from hopfield_replay.models import (CheckpointPolicy, TrainConfig, build_model, load_model, train_and_save,
                                   train_denoiser)
from hopfield_replay.tables import tensor_meta
from hopfield_replay.models.training import Checkpoint, check_batch_split
from stages import encode, prepare
from tests.conftest import ROOT, TINY_PARAMS
from tests.test_checkpoints import StopAfterSave, Stopped, _data, _model
from tests.test_diffusion import _weights

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = TrainConfig(steps=5, batch_size=8, lr=2e-3, seed=3, replay_fraction=0.25)


def _train(config, **kwargs):
    x, y = _data()
    rx, ry = _data(6, seed=1)
    model = _model()
    losses = train_denoiser(model, x, config, labels=y, replay_x0=rx, replay_labels=ry, progress=False, **kwargs)
    return model, losses


# -- gradient accumulation: the same update in less memory ---------------------------------------------------


def _first_gradient(config, tmp_path) -> list[torch.Tensor]:
    """The clipped gradient of the first step, from AdamW's state in a checkpoint saved after it:
    exp_avg_1 = (1 - beta1) g_1."""
    policy = CheckpointPolicy(tmp_path, every_minutes=60, every_steps=1)
    with pytest.raises(Stopped):
        _train(replace(config, steps=2), checkpoint=StopAfterSave(policy, "g", str(config.grad_accumulation),
                                                                  stop_at=1))
    state = torch.load(tmp_path / f"g-{config.grad_accumulation}.pt", weights_only=True)["optimizer"]["state"]
    return [state[i]["exp_avg"] / 0.1 for i in sorted(state)]


@pytest.mark.parametrize("k", [2, 4])
def test_grad_accumulation_gives_the_full_batch_update(tmp_path, k):
    """The first step's gradient agrees to float rounding; over five steps the losses agree to 1e-5. (Weights are
    not compared elementwise: AdamW's first step is lr * g / |g|, so a near-zero gradient whose rounding differs
    can flip a weight's step from +lr to -lr.)"""
    full = _first_gradient(CONFIG, tmp_path)
    split = _first_gradient(replace(CONFIG, grad_accumulation=k), tmp_path)
    for a, b in zip(full, split, strict=True):
        assert torch.allclose(b, a, rtol=1e-4, atol=1e-7)
    _, full_losses = _train(CONFIG)
    _, split_losses = _train(replace(CONFIG, grad_accumulation=k))
    assert split_losses == pytest.approx(full_losses, rel=1e-5)
    # the control: another batch draw gives another gradient, by far more than the tolerance
    other = _first_gradient(replace(CONFIG, seed=4), tmp_path / "other")
    assert max((a - b).abs().max().item() for a, b in zip(full, other)) > 1e-3


def test_a_batch_that_does_not_split_is_refused():
    with pytest.raises(UserError, match="batch_size 8 does not split into 3 process"):
        check_batch_split(CONFIG, 3)
    with pytest.raises(UserError, match="grad_accumulation 3"):
        _train(replace(CONFIG, grad_accumulation=3))
    assert check_batch_split(replace(CONFIG, grad_accumulation=2), 2) == 2


# -- EMA: the saved model is the moving average, checked against an fp64 recursion ----------------------------


def test_the_saved_model_is_the_ema_of_the_trained_weights(tmp_path):
    """EMAModel's rule, d_k = min(decay, (1 + k') / (10 + k')) with k' = k - 1 (0 at the first update),
    ema_k = d_k ema_{k-1} + (1 - d_k) theta_k, recomputed in fp64 from the weights of plain runs of 1..5 steps (a
    run of n steps is the first n steps of a longer one: same seeded draws, constant LR)."""
    decay = 0.6
    thetas = [_weights(_train(replace(CONFIG, steps=n))[0]).double() for n in range(1, CONFIG.steps + 1)]
    ema = _weights(_model()).double()
    for k, theta in enumerate(thetas, start=1):
        d = min(decay, (1 + (k - 1)) / (10 + (k - 1))) if k > 1 else 0.0
        ema = d * ema + (1 - d) * theta
    assert (ema - thetas[-1]).abs().max() > 1e-4  # the average is not the last weights

    x, y = _data()
    rx, ry = _data(6, seed=1)
    model = _model()
    train_and_save(model, x, y, replace(CONFIG, ema_decay=decay), torch.device("cpu"), tmp_path / "m", desc="ema",
                   replay_x0=rx, replay_labels=ry)
    assert torch.allclose(_weights(model).double(), ema, rtol=0, atol=1e-6)
    loaded = load_model(tmp_path / "m")  # through save_pretrained / from_pretrained
    assert torch.equal(_weights(loaded), _weights(model))
    log = json.loads((tmp_path / "m" / "train_log.json").read_text())
    assert log["config"]["ema_decay"] == decay and log["config"]["lr_schedule"] == "constant"


# -- LR schedule -------------------------------------------------------------------------------------------


def test_warmup_starts_from_a_zero_learning_rate():
    """constant_with_warmup: lr_k = lr * k / warmup, so the first step (k = 0) leaves the weights as they were
    (AdamW's decoupled weight decay is also scaled by lr); without warmup the first step moves them."""
    start = _weights(_model())
    warm, _ = _train(replace(CONFIG, steps=1, lr_schedule="constant_with_warmup", lr_warmup_steps=3,
                             weight_decay=0.01))
    assert torch.equal(_weights(warm), start)
    plain, _ = _train(replace(CONFIG, steps=1))
    assert not torch.equal(_weights(plain), start)
    cosine, _ = _train(replace(CONFIG, lr_schedule="cosine", lr_warmup_steps=2))
    assert not torch.equal(_weights(cosine), _weights(_train(CONFIG)[0]))


def test_a_run_with_every_setting_resumes_bitwise(tmp_path):
    config = replace(CONFIG, steps=8, lr_schedule="cosine", lr_warmup_steps=2, ema_decay=0.7, grad_accumulation=2)
    reference, ref_losses = _train(config)
    policy = CheckpointPolicy(tmp_path, every_minutes=60, every_steps=3)
    with pytest.raises(Stopped):
        _train(config, checkpoint=StopAfterSave(policy, "run", "k", stop_at=3))
    saved = torch.load(tmp_path / "run-k.pt", weights_only=True)
    assert saved["step"] == 3 and "ema" in saved and "lr_schedule" in saved
    resumed, losses = _train(config, checkpoint=Checkpoint(policy, "run", "k"))
    assert losses == ref_losses
    assert torch.equal(_weights(resumed), _weights(reference))


# -- params -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("section", "values", "field"), [
    ("train_a", {"lr_warmup_steps": 6}, "train_a.lr_warmup_steps"),
    ("train_b", {"lr_warmup_steps": 2}, "train_b.lr_schedule"),
    ("train_b", {"grad_accumulation": 3}, "train_b.grad_accumulation"),
    ("train_a", {"ema_decay": 1.0}, "train_a.ema_decay"),
    ("train_b", {"lr_schedule": "step"}, "train_b.lr_schedule"),
])
def test_params_refuse_settings_that_cannot_work(tmp_path, section, values, field):
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as info:
        load_config(tmp_path / "params.yaml")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'params.yaml'}: {field}: ") and "\n" not in message


# -- data parallel: `accelerate launch` with 2 CPU processes --------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_data_parallel_train_a_gives_the_one_process_update(tmp_path):
    """The real stage under `accelerate launch --cpu --num_processes 2` (DDP over gloo): each process trains on
    its half of every batch; the weights equal the one-process run's up to the order of the gradient sum, and
    only the main process writes."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["train_a"].update(steps=2, batch_size=16)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    x0, samples, images = tmp_path / "x0.safetensors", tmp_path / "samples.parquet", tmp_path / "images.safetensors"
    prepare.main(["--params", str(path), "--out-images", str(images), "--out-samples", str(samples)])
    encode.main(["--params", str(path), "--images", str(images), "--out", str(x0)])
    stage = ["-m", "stages.train_a", "--params", str(path), "--x0", str(x0), "--samples", str(samples), "--out"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *stage, str(tmp_path / "one")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(_free_port())]
    two = subprocess.run([*launch, *stage, str(tmp_path / "two")], cwd=tmp_path, env=env, capture_output=True,
                         text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]

    # Weights agree to rounding except where AdamW's sign-like step flips for a near-zero gradient (at most 2 lr
    # per step); the losses of both steps carry the update through the model.
    weights = "unet/diffusion_pytorch_model.safetensors"
    a, b = load_file(tmp_path / "one" / weights), load_file(tmp_path / "two" / weights)
    assert a.keys() == b.keys()
    diff = torch.cat([(a[k] - b[k]).abs().flatten() for k in a])
    assert (diff > 1e-5).float().mean() < 1e-3 and diff.max() <= 2 * 2 * 2e-4 + 1e-6, diff.max()
    log_one = json.loads((tmp_path / "one" / "train_log.json").read_text())
    log_two = json.loads((tmp_path / "two" / "train_log.json").read_text())
    assert log_two["processes"] == 2 and "processes" not in log_one
    assert log_two["losses"] == pytest.approx(log_one["losses"], rel=1e-5)
    assert two.stdout.count("train_a: 2 steps") == 1  # one writer
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith((".", "two"))) == ["two"]
    # the control: the DP run trained (most weights moved by far more than the two runs differ)
    cfg = load_config(path)
    initial = build_model(cfg.model, load_file(x0)["x0"].shape[1:], tensor_meta(x0), seed=0).unet.state_dict()
    moved = torch.cat([(initial[k] - b[k]).abs().flatten() for k in b])
    assert (moved > 1e-4).float().mean() > 0.5  # two AdamW steps of ~lr = 2e-4 each
