"""Reconstruction error, denoising energy and forgetting on hand-computable models, with the fixed per-(sample, t)
noise (its own tests: tests/test_noise.py)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDPMScheduler

from hopfield_replay.models import DDPMConfig, DenoisingModel, PixelDDPM
from hopfield_replay.measures.noise import fixed_noise
from hopfield_replay.measures.reconstruction import default_batch_size, denoising_energy, error_table, reconstruction_error

SHAPE = (1, 4, 4)


pytestmark = pytest.mark.usefixtures("one_thread")


class ScaledModel(DenoisingModel):
    """predict_noise(x_t) = k * x_t: errors computable in closed form from the same fixed noise (k = 0: zeros)."""

    family = "test-scaled"

    def __init__(self, k: float):
        super().__init__(torch.nn.Linear(1, 1), DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear"))
        self.k = k

    def predict_noise(self, x_t, t, labels=None):
        return self.k * x_t


def closed_form(k, x0, ids, timesteps, seed, model):
    """(recon, eps_err), (N, T), for predict_noise = k x_t, from the module docstring's equations."""
    abar = model.scheduler.alphas_cumprod.double()
    recon = torch.empty(len(x0), len(timesteps), dtype=torch.float64)
    eps_err = torch.empty_like(recon)
    for j, t in enumerate(timesteps):
        a = abar[t]
        eps = fixed_noise(ids, t, tuple(x0.shape[1:]), seed).double()
        x_t = a.sqrt() * x0.double() + (1 - a).sqrt() * eps
        pred = k * x_t
        x0_hat = (x_t - (1 - a).sqrt() * pred) / a.sqrt()
        recon[:, j] = ((x0_hat - x0.double()) ** 2).flatten(1).mean(1)
        eps_err[:, j] = ((pred - eps) ** 2).flatten(1).mean(1)
    return recon, eps_err


@pytest.mark.parametrize("k", [0.0, 0.5])
def test_errors_match_the_closed_form(k):
    model = ScaledModel(k)
    x0 = torch.rand(6, *SHAPE) * 2 - 1
    ids, ts = [10, 11, 12, 13, 14, 15], [0, 100, 500, 999]
    recon = reconstruction_error(model, x0, ids, ts, seed=3, progress=False)
    energy = denoising_energy(model, x0, ids, ts, seed=3, progress=False)
    want_recon, want_eps = closed_form(k, x0, ids, ts, 3, model)
    np.testing.assert_allclose(recon.double().numpy(), want_recon.numpy(), rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(energy.double().numpy(), want_eps.mean(1).numpy(), rtol=2e-5)
    if k == 0.0:  # zeros: x0_hat = x_t / sqrt(abar), recon = (1 - abar) / abar * mean(eps^2)
        abar = model.scheduler.alphas_cumprod.double()
        eps2 = torch.stack([(fixed_noise(ids, t, SHAPE, 3).double() ** 2).flatten(1).mean(1) for t in ts], 1)
        np.testing.assert_allclose(recon.double().numpy(), ((1 - abar[ts]) / abar[ts] * eps2).numpy(), rtol=2e-5)


def test_forgetting_on_hand_computed_values():
    """The long error table of two models and their difference (absolute forgetting) against the closed form."""
    from hopfield_replay.measures.forgetting import add_measures

    x0 = torch.rand(5, *SHAPE) * 2 - 1
    ids, ts = [1, 2, 3, 4, 5], [50, 700]
    before = error_table(ScaledModel(0.5), x0, ids, ts, seed=0, progress=False).rename(columns={"error": "error_a"})
    after = error_table(ScaledModel(0.0), x0, ids, ts, seed=0, progress=False)
    assert before[["sample_id", "t"]].values.tolist() == [[i, t] for i in ids for t in ts]
    got = add_measures(before.merge(after, on=["sample_id", "t"]))
    want = closed_form(0.0, x0, ids, ts, 0, ScaledModel(0.0))[0] - closed_form(0.5, x0, ids, ts, 0, ScaledModel(0.5))[0]
    np.testing.assert_allclose(got["absolute"].to_numpy(), want.double().numpy().reshape(-1), rtol=1e-4, atol=1e-6)


def test_results_do_not_depend_on_batch_size():
    torch.manual_seed(0)
    model = PixelDDPM.from_config(DDPMConfig(resolution=8, block_out_channels=[8, 16], norm_num_groups=4))
    x0 = torch.rand(7, 1, 8, 8) * 2 - 1
    ids, ts = [3, 9, 27, 81, 243, 729, 2187], [10, 400, 900]
    ref_r = reconstruction_error(model, x0, ids, ts, batch_size=2, progress=False)
    ref_e = denoising_energy(model, x0, ids, ts, batch_size=2, progress=False)
    for bs in (5, None):
        r = reconstruction_error(model, x0, ids, ts, batch_size=bs, progress=False)
        torch.testing.assert_close(r, ref_r, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(denoising_energy(model, x0, ids, ts, progress=False), ref_e, rtol=1e-5, atol=1e-6)
    # the same sample sees the same noise alone as in a batch: a subset gives the subset's rows
    sub = reconstruction_error(model, x0[[4, 1]], [243, 9], ts, batch_size=3, progress=False)
    torch.testing.assert_close(sub, ref_r[[4, 1]], rtol=1e-5, atol=1e-6)


def test_bad_input():
    model = ScaledModel(0.0)
    x0 = torch.zeros(2, *SHAPE)
    with pytest.raises(ValueError, match="3 sample_ids for 2 samples"):
        reconstruction_error(model, x0, [1, 2, 3], [10], progress=False)
    with pytest.raises(ValueError, match="timestep 1000 is outside"):
        denoising_energy(model, x0, [1, 2], [1000], progress=False)


def test_default_batch_size_by_device():
    assert default_batch_size(torch.device("cpu"), 3 * 32 * 32) == 64
    assert 64 <= default_batch_size(torch.device("cuda"), 4 * 64 * 64) <= 4096
