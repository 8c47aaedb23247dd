"""Has model A converged? The empirical optimal denoiser against a brute-force fp64 reference, the regime table
against the reconstruction measures, and the control's sentences on hand-built tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from hopfield_replay.analysis.convergence import control_by_t, control_lines, regime_lines
from hopfield_replay.measures.reconstruction import reconstruction_error
from hopfield_replay.measures.regime import empirical_denoiser, regime_by_t, regime_table
from hopfield_replay.models import DDPMConfig, PixelDDPM

pytestmark = pytest.mark.usefixtures("one_thread")


def brute_force_denoiser(x_t: np.ndarray, memories: np.ndarray, abar: float) -> np.ndarray:
    """Posterior mean of x0 under the uniform distribution over memories, from the Gaussian likelihood itself:
    p(i | x_t) proportional to exp(-|x_t - sqrt(abar) x_i|^2 / (2 (1 - abar))), one query at a time, fp64."""
    out = np.empty_like(x_t, dtype=np.float64)
    for k, q in enumerate(x_t.astype(np.float64)):
        log_w = np.array([-np.sum((q - np.sqrt(abar) * m) ** 2) / (2 * (1 - abar)) for m in memories])
        w = np.exp(log_w - log_w.max())
        out[k] = np.tensordot(w / w.sum(), memories.astype(np.float64), axes=1)
    return out


@pytest.mark.parametrize("abar", [0.999, 0.9, 0.5, 0.02])
def test_empirical_denoiser_matches_the_posterior_mean_in_fp64(abar):
    g = np.random.default_rng(int(abar * 1000))
    memories = g.uniform(-1, 1, (40, 1, 4, 4)).astype(np.float32)
    x_t = (np.sqrt(abar) * memories[:7] + np.sqrt(1 - abar) * g.standard_normal((7, 1, 4, 4))).astype(np.float32)
    got = empirical_denoiser(torch.from_numpy(x_t), torch.from_numpy(memories), abar, chunk=3)
    assert got.dtype == torch.float64 and got.shape == x_t.shape
    np.testing.assert_allclose(got.numpy(), brute_force_denoiser(x_t, memories, abar), rtol=1e-9, atol=1e-10)


def test_empirical_denoiser_memorises_at_low_noise_and_averages_at_high_noise():
    g = np.random.default_rng(0)
    memories = torch.from_numpy(g.uniform(-1, 1, (30, 16)))
    low = empirical_denoiser(np.sqrt(0.9999) * memories[:5], memories, 0.9999)
    assert torch.allclose(low, memories[:5], atol=1e-6)  # every query retrieves its own image
    high = empirical_denoiser(torch.zeros(2, 16), memories, 1e-6)
    assert torch.allclose(high, memories.mean(0).expand(2, -1), atol=1e-4)  # no signal: the mean image
    with pytest.raises(ValueError, match="abar"):
        empirical_denoiser(memories, memories, 1.0)
    with pytest.raises(ValueError, match="shapes"):
        empirical_denoiser(memories[:, :8], memories, 0.5)


def test_regime_table_agrees_with_the_reconstruction_measures():
    torch.manual_seed(0)
    model = PixelDDPM.from_config(DDPMConfig(resolution=8, channels=1, block_out_channels=[8, 16], norm_num_groups=4))
    x0 = torch.rand(12, 1, 8, 8) * 2 - 1
    ids, timesteps = np.arange(100, 112), [50, 500, 900]
    table = regime_table(model, x0, ids, timesteps, seed=7, batch_size=5, progress=False)
    assert list(table.columns) == ["sample_id", "t", "model_error", "empirical_error", "distance"]
    assert len(table) == 36 and table.sample_id.is_monotonic_increasing
    recon = reconstruction_error(model, x0, ids, timesteps, seed=7, batch_size=4, progress=False).double().numpy()
    wide = table.pivot(index="sample_id", columns="t", values="model_error").to_numpy()
    np.testing.assert_allclose(wide, recon, rtol=1e-5, atol=1e-7)  # the same noise, the same one-step estimate
    # the three errors are squared distances between three points: the triangle inequality holds on their roots
    a, b, c = (np.sqrt(table[k].to_numpy()) for k in ("model_error", "empirical_error", "distance"))
    assert np.all(c <= a + b + 1e-9) and np.all(a <= b + c + 1e-9)
    by_t = regime_by_t(table)
    np.testing.assert_allclose(by_t.relative, by_t.distance / by_t.empirical_error)
    assert by_t.empirical_error.iloc[0] < by_t.empirical_error.iloc[-1]  # more noise, a worse optimal denoiser


def _control(changes: dict[int, float], n: int = 50, seed: int = 0) -> pd.DataFrame:
    g = np.random.default_rng(seed)
    rows = []
    for t, mean in changes.items():
        error_a = g.uniform(0.5, 1.0, n)
        rows.append(pd.DataFrame({"sample_id": np.arange(n), "seed": 1, "t": t, "error_a": error_a,
                                  "error": error_a + mean + 0.01 * g.standard_normal(n)}))
    df = pd.concat(rows, ignore_index=True)
    return df.assign(absolute=df.error - df.error_a, relative=np.log(df.error / df.error_a))


def test_the_control_says_where_the_task_a_error_still_falls():
    control = _control({100: -0.2, 500: 0.0, 750: 0.1})
    forgetting = _control({100: 0.3, 500: 0.3, 750: 0.3}, seed=1)
    table = control_by_t(control, forgetting, n_boot=200)
    rel = table[table.measure == "absolute"].set_index("t")
    assert rel.still_learning.tolist() == [True, False, False]
    assert rel.at[100, "beyond_control"] == pytest.approx(0.5, abs=0.02)
    lines = control_lines(table, steps=800, seed=1, level=0.95)
    assert any(line.startswith("- absolute: the task-A error still falls") and "t = 100;" in line for line in lines)
    done = control_lines(control_by_t(_control({100: 0.05, 500: 0.05}), forgetting, n_boot=200), 800, 1, 0.95)
    assert any(line.startswith("- relative: at no measured t") for line in done)


def test_regime_lines_name_the_memorising_timesteps():
    table = pd.DataFrame({"sample_id": [0, 0, 1, 1], "t": [100, 900, 100, 900], "model_error": [1.0] * 4,
                          "empirical_error": [0.5, 2.0, 0.5, 2.0], "distance": [0.1, 4.0, 0.3, 4.0]})
    lines = regime_lines(table)
    assert "| 100 | 1 | 0.5 | 0.2 | 0.4 |" in lines and "| 900 | 1 | 2 | 4 | 2 |" in lines
    assert lines[-1].startswith("Model A is close to D* at t = 100 (relative distance below 1") and lines[-1].endswith(
        "far from it at t = 900.")
    assert regime_lines(table.assign(distance=0.0))[-1].startswith("Model A is close to D* at every measured t")
    assert regime_lines(table.assign(distance=9.0))[-1].startswith("Model A is far from D* at every measured t")
