"""The shared training loop: seeded, replay mixed in at the given fraction, models round-trip."""

from __future__ import annotations

import torch

from hopfield_replay.models import DDPMConfig, DenoisingModel, PixelDDPM, TrainConfig, load_model, train_denoiser

TINY = DDPMConfig(resolution=8, channels=1, block_out_channels=[8, 16], norm_num_groups=4)


def _weights(model):
    return torch.cat([p.detach().flatten() for p in model.unet.parameters()])


def test_training_is_seeded_and_lowers_the_loss():
    x = torch.rand(64, 1, 8, 8) * 2 - 1
    torch.manual_seed(0)
    a = PixelDDPM.from_config(TINY)
    b = PixelDDPM.from_config(TINY)
    b.unet.load_state_dict(a.unet.state_dict())
    cfg = TrainConfig(steps=60, batch_size=16, lr=2e-3, seed=5)
    la = train_denoiser(a, x, cfg, progress=False)
    lb = train_denoiser(b, x, cfg, progress=False)
    assert la == lb and torch.equal(_weights(a), _weights(b))
    assert sum(la[-15:]) / 15 < sum(la[:15]) / 15


class _Recorder(DenoisingModel):
    """Records what the training loop feeds it (sign of x0 tells task data from replay)."""

    def __init__(self):
        base = PixelDDPM.from_config(TINY)
        super().__init__(base.unet, base.scheduler)
        self.seen = []

    def predict_noise(self, x_t, t, labels=None):
        self.seen.append(labels.clone())
        return self.unet(x_t, t).sample


def test_replay_fraction_sets_the_batch_mix():
    new, old = torch.zeros(30, 1, 8, 8), torch.zeros(5, 1, 8, 8)
    model = _Recorder()
    cfg = TrainConfig(steps=3, batch_size=8, replay_fraction=0.25, seed=0)
    train_denoiser(model, new, cfg, labels=torch.full((30,), 7), replay_x0=old, replay_labels=torch.full((5,), 2),
                   progress=False)
    for labels in model.seen:
        assert labels.tolist() == [7] * 6 + [2] * 2
    model.seen.clear()
    train_denoiser(model, new, cfg, labels=torch.full((30,), 7), progress=False)  # no buffer: no replay
    assert all(labels.tolist() == [7] * 8 for labels in model.seen)


def test_save_and_load_round_trip(tmp_path):
    model = PixelDDPM.from_config(TINY)
    model.save_pretrained(tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert isinstance(again, PixelDDPM) and torch.equal(_weights(model), _weights(again))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([10, 900])
    assert torch.equal(model.predict_noise(x, t), again.predict_noise(x, t))
    assert again.scheduler.config.num_train_timesteps == 1000 and again.scheduler.config.beta_schedule == "linear"


def test_foreign_weights_are_one_error_without_diffusers_warnings(tmp_path):
    """A weight under another name: diffusers alone would log two warnings and keep a random weight; the loader
    raises one UserError, diffusers logs nothing, and diffusers' verbosity is as it was."""
    import logging

    import pytest
    from diffusers.utils import logging as diffusers_logging
    from safetensors.torch import load_file, save_file

    from hopfield_replay.errors import UserError

    PixelDDPM.from_config(TINY).save_pretrained(tmp_path / "m")
    weights = next((tmp_path / "m" / "unet").glob("*.safetensors"))
    tensors = load_file(weights)
    tensors["conv_in.bias_renamed"] = tensors.pop("conv_in.bias")
    save_file(tensors, weights)
    records = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = records.append
    before = diffusers_logging.get_verbosity()
    diffusers_logging.get_logger("diffusers").addHandler(handler)
    diffusers_logging.set_verbosity_warning()
    try:
        with pytest.raises(UserError, match=r"unet: its weights do not fit its config \(missing_keys: conv_in.bias"):
            load_model(tmp_path / "m")
        assert records == [] and diffusers_logging.get_verbosity() == logging.WARNING
    finally:
        diffusers_logging.get_logger("diffusers").removeHandler(handler)
        diffusers_logging.set_verbosity(before)


def test_build_model_is_seeded_and_checks_the_model_space():
    import pytest

    from hopfield_replay.io.config import ModelParams
    from tests.conftest import shipped_section
    from hopfield_replay.errors import UserError
    from hopfield_replay.models import build_model

    params = ModelParams(**shipped_section("model", block_out_channels=[8, 16], norm_num_groups=4))
    a = build_model(params, (1, 8, 8), {"family": "ddpm"}, seed=3)
    b = build_model(params, (1, 8, 8), None, seed=3)
    c = build_model(params, (1, 8, 8), None, seed=4)
    assert isinstance(a, PixelDDPM) and a.unet.config.sample_size == 8 and a.unet.config.in_channels == 1
    assert list(a.unet.config.block_out_channels) == [8, 16]
    assert torch.equal(_weights(a), _weights(b)) and not torch.equal(_weights(a), _weights(c))
    with pytest.raises(UserError, match="model.family: 'ddpm' but the model-space file holds 'sd' x0"):
        build_model(params, (4, 8, 8), {"family": "sd"}, seed=0)


def test_train_and_save_writes_the_model_and_its_log(tmp_path):
    import json

    from hopfield_replay.models import train_and_save

    model = PixelDDPM.from_config(TINY)
    x = torch.rand(10, 1, 8, 8) * 2 - 1
    cfg = TrainConfig(steps=2, batch_size=4, seed=1, replay_fraction=0.5)
    losses = train_and_save(model, x, None, cfg, torch.device("cpu"), tmp_path / "m", desc="t", replay_x0=x[:2],
                            extra={"arm": "energy_high"})
    log = json.loads((tmp_path / "m" / "train_log.json").read_text())
    assert log["losses"] == losses and len(losses) == 2 and log["config"]["replay_fraction"] == 0.5
    assert log["arm"] == "energy_high" and log["n_train"] == 10
    assert torch.equal(_weights(load_model(tmp_path / "m")), _weights(model))
