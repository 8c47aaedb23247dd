"""The training engine's settings: gradient accumulation gives the update of one process with the full batch (data
parallel: tests/test_data_parallel.py); the EMA of the weights (diffusers EMAModel) is what the saved model holds,
checked against an fp64 recursion over the plain run's weights; the LR schedule (diffusers get_scheduler) warms up
from 0; a run with all of them resumes from its checkpoint bitwise; with none of them, the loop is the plain loop of
the module docstring bit for bit; the params reject settings that cannot work."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
import yaml

from hopfield_replay.io.params_file import ParamsError, load_config
from hopfield_replay.errors import UserError
from hopfield_replay.models import CheckpointPolicy, TrainConfig, load_model, train_and_save, train_denoiser
from hopfield_replay.models.training import Checkpoint, check_batch_split
from tests.conftest import TINY_PARAMS
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


# -- the loop: the plain loop of the module docstring, bit for bit ---------------------------------------------


def _plain_loop(model, config, noise_first=False) -> list[float]:
    """``train_denoiser`` written out on the CPU: one generator seeded with ``config.seed`` draws batch indices,
    replay indices, timesteps and noise, in that order; AdamW on the epsilon loss, gradients clipped."""
    x, y = _data()
    rx, ry = _data(6, seed=1)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    params = [p for p in model.unet.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    n_replay = round(config.replay_fraction * config.batch_size)
    num_t = model.scheduler.config.num_train_timesteps
    model.train()
    losses = []
    for _ in range(config.steps):
        idx = torch.randint(0, x.shape[0], (config.batch_size - n_replay,), generator=gen)
        ridx = torch.randint(0, rx.shape[0], (n_replay,), generator=gen)
        batch, labels = torch.cat([x[idx], rx[ridx]]), torch.cat([y[idx], ry[ridx]])
        if noise_first:  # the control: the same draws in another order
            noise = torch.randn(batch.shape, generator=gen)
            t = torch.randint(0, num_t, (batch.shape[0],), generator=gen)
        else:
            t = torch.randint(0, num_t, (batch.shape[0],), generator=gen)
            noise = torch.randn(batch.shape, generator=gen)
        pred = model.predict_noise(model.scheduler.add_noise(batch, noise, t), t, labels)
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        losses.append(loss.item())
    return losses


def test_the_loop_is_the_plain_loop_bit_for_bit():
    """The training engine adds data parallel, accumulation, EMA, schedules, checkpoints and compilation around
    the plain loop; with none of them on, it is that loop: the same draws in the same order, the same weights."""
    model, losses = _train(CONFIG)
    plain = _model()
    assert _plain_loop(plain, CONFIG) == losses
    assert torch.equal(_weights(plain), _weights(model))
    other = _model()
    assert _plain_loop(other, CONFIG, noise_first=True) != losses
    assert not torch.equal(_weights(other), _weights(model))


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
    ("train_b", {"processes": 3}, "train_b.processes"),
    ("train_a", {"processes": 0}, "train_a.processes"),
])
def test_params_refuse_settings_that_cannot_work(tmp_path, section, values, field):
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params[section].update(values)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(ParamsError) as info:
        load_config(tmp_path / "params.yaml")
    message = str(info.value)
    assert message.startswith(f"{tmp_path / 'params.yaml'}: {field}: ") and "\n" not in message


# -- how the loop runs: params that change the rounding, not the method ------------------------------------


def test_channels_last_param_reaches_the_training_run(tmp_path):
    """`train_a.channels_last: true` through the real stage: the log records it, and the model is the default
    run's up to rounding (the same method in another memory layout)."""
    from stages import encode, prepare, train_a

    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["train_a"].update(steps=3, batch_size=8)
    plain = tmp_path / "plain.yaml"
    plain.write_text(yaml.safe_dump(params))
    params["train_a"]["channels_last"] = True
    fast = tmp_path / "fast.yaml"
    fast.write_text(yaml.safe_dump(params))
    x0, samples, images = tmp_path / "x0.safetensors", tmp_path / "samples.parquet", tmp_path / "images.safetensors"
    prepare.main(["--params", str(plain), "--out-images", str(images), "--out-samples", str(samples)])
    encode.main(["--params", str(plain), "--images", str(images), "--out", str(x0)])
    for path in (plain, fast):
        train_a.main(["--params", str(path), "--x0", str(x0), "--samples", str(samples),
                      "--out", str(tmp_path / path.stem), "--out-curves", str(tmp_path / f"{path.stem}-curves")])
    logs = [json.loads((tmp_path / name / "train_log.json").read_text()) for name in ("plain", "fast")]
    assert logs[1]["channels_last"] is True and "channels_last" not in logs[0]
    assert logs[0]["config"] == logs[1]["config"]  # TrainConfig holds the method's settings only
    assert logs[1]["losses"] == pytest.approx(logs[0]["losses"], rel=1e-4)
    a, b = (load_model(tmp_path / name) for name in ("plain", "fast"))
    assert all(p.is_contiguous() for p in b.unet.parameters())
    diff = (_weights(a) - _weights(b)).abs()
    # AdamW's first steps are sign-like: a near-zero gradient may flip (at most 2 lr per step)
    assert (diff > 1e-5).float().mean() < 1e-3 and diff.max() <= 2 * 3 * 2e-4 + 1e-6, diff.max()
    # the control: training moved the weights by far more than the two layouts differ
    from safetensors.torch import load_file

    from hopfield_replay.models import build_model
    from hopfield_replay.io.tables import tensor_meta

    initial = build_model(load_config(plain).model, load_file(x0)["x0"].shape[1:], tensor_meta(x0), seed=0)
    assert ((_weights(a) - _weights(initial)).abs() > 1e-4).float().mean() > 0.5  # three AdamW steps of ~lr
