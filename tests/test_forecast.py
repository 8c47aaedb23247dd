"""Forecasts before fine-tuning: the gradient interference against the loss change of a real small step, the
proximity against brute force, the probe against a fine-tune run by hand, and the one-call command line."""

from __future__ import annotations

import copy
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from hopfield_replay.forecast import _losses, forecast, gradient_interference, probe_rise, probe_rises
from hopfield_replay.measures.noise import fixed_noise
from hopfield_replay.measures.reconstruction import denoising_energy
from hopfield_replay.models import DDPMConfig, PixelDDPM, TrainConfig, train_denoiser
from tests.conftest import ROOT

pytestmark = pytest.mark.usefixtures("one_thread")
T = [100, 400, 800]


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    model = PixelDDPM.from_config(DDPMConfig(resolution=8, channels=1, block_out_channels=[8, 16], norm_num_groups=4))
    x = torch.rand(40, 1, 8, 8) * 2 - 1
    train_denoiser(model, x[:20], TrainConfig(steps=30, batch_size=10, lr=2e-3, seed=0), progress=False)
    return model.eval(), x[:20], x[20:]


def test_the_losses_are_the_denoising_energy(setup):
    model, old, _ = setup
    with torch.no_grad():
        mine = _losses(model, old, np.arange(20), T, 3, None).double().numpy()
    ref = denoising_energy(model, old, np.arange(20), T, seed=3, progress=False).double().numpy()
    np.testing.assert_allclose(mine, ref, rtol=1e-5)


def test_gradient_interference_predicts_the_loss_change_of_a_small_step(setup):
    """lr * grad_dot is the first-order rise of L_k after one SGD step of rate lr along g_B: take the step for real."""
    model, old, new = setup
    got = gradient_interference(model, old, np.arange(20), new, np.arange(100, 120), T, seed=1, chunk=7)
    assert np.all(np.abs(got["grad_cos"]) <= 1 + 1e-9)
    stepped = copy.deepcopy(model)
    params = [p for p in stepped.unet.parameters() if p.requires_grad]
    loss_b = _losses(stepped, new, np.arange(100, 120), T, 1, None).mean()
    grads = torch.autograd.grad(loss_b, params)
    lr = 1e-3
    with torch.no_grad():
        before = _losses(model, old, np.arange(20), T, 1, None).double().numpy()
        for p, g in zip(params, grads):
            p -= lr * g
        after = _losses(stepped, old, np.arange(20), T, 1, None).double().numpy()
    rise = after - before
    np.testing.assert_allclose(lr * got["grad_dot"], rise, rtol=0.05, atol=2e-6)
    assert np.corrcoef(lr * got["grad_dot"], rise)[0, 1] > 0.999


def test_the_per_sample_gradients_are_each_samples_own_in_float64(setup):
    """The vmapped chunks of per-sample gradients (6 samples each, the last one short) give every old sample its own
    g_k . g_B and |g_k|: against an independent float64 computation, one backward per sample on a float64 copy."""
    model, old, new = setup
    assert model.family == "ddpm"  # the vmapped path
    got = gradient_interference(model, old, np.arange(20), new, np.arange(100, 120), T, seed=1, per_sample_chunk=6)
    ref = copy.deepcopy(model.unet).double()
    params = [p for p in ref.parameters() if p.requires_grad]
    abar = model.scheduler.alphas_cumprod.double()

    def loss(x, ids):  # mean over t of the mean squared noise error, at the fixed noise of the measures
        total = 0
        for t in T:
            eps = torch.cat([fixed_noise([i], t, tuple(x.shape[1:]), 1) for i in ids]).double()
            x_t = abar[t].sqrt() * x.double() + (1 - abar[t]).sqrt() * eps
            total = total + ((ref(x_t, torch.full((len(ids),), t)).sample - eps) ** 2).flatten(1).mean(1)
        return total / len(T)

    g_b = torch.autograd.grad(loss(new, list(range(100, 120))).mean(), params)
    dot, norm = [], []
    for k in range(20):
        g_k = torch.autograd.grad(loss(old[k : k + 1], [k]).sum(), params)
        dot.append(float(sum((a * b).sum() for a, b in zip(g_k, g_b))))
        norm.append(float(torch.sqrt(sum((a**2).sum() for a in g_k))))
    norm_b = float(torch.sqrt(sum((b**2).sum() for b in g_b)))
    np.testing.assert_allclose(-got["grad_dot"], dot, rtol=1e-4, atol=1e-9)
    np.testing.assert_allclose(-got["grad_cos"], np.array(dot) / (np.array(norm) * norm_b), rtol=1e-4, atol=1e-7)


def test_the_probe_is_a_fine_tune_of_a_copy(setup):
    model, old, new = setup
    weights = [p.detach().clone() for p in model.unet.parameters()]
    config = TrainConfig(steps=5, batch_size=10, lr=1e-3, seed=2, replay_fraction=0.0)
    rise = probe_rise(model, old, np.arange(20), new, T, config, seed=4)
    assert all(torch.equal(a, b) for a, b in zip(weights, model.unet.parameters()))  # model A is untouched
    by_hand = copy.deepcopy(model)
    train_denoiser(by_hand, new, config, progress=False)
    ref = (denoising_energy(by_hand, old, np.arange(20), T, seed=4, progress=False).double()
           - denoising_energy(model, old, np.arange(20), T, seed=4, progress=False).double()).numpy()
    np.testing.assert_allclose(rise, ref, rtol=1e-6, atol=1e-9)


def test_one_fine_tune_measured_at_each_length_is_one_fine_tune_per_length(setup):
    """The forecast's probes share one fine-tune, measured as it passes each length: at a constant learning rate
    without EMA the first s steps of the longer run are the run of s steps, so every rise is the same bytes as a
    probe of that length alone; a recipe whose steps depend on the run's length is refused."""
    model, old, new = setup
    config = TrainConfig(steps=1, batch_size=10, lr=1e-3, seed=2, replay_fraction=0.0)
    rises, seconds, train_seconds = probe_rises(model, old, np.arange(20), new, T, config, [2, 5], seed=4)
    assert sorted(rises) == [2, 5] and all(seconds[s] > 0 for s in (2, 5)) and train_seconds > 0
    for steps in (2, 5):
        alone = probe_rise(model, old, np.arange(20), new, T, TrainConfig(**{**config.__dict__, "steps": steps}),
                           seed=4)
        np.testing.assert_array_equal(rises[steps], alone)
    table, _ = forecast(model, old, new, timesteps=T, probe=config, probe_steps=[2, 5], knn_k=3, seed=4)
    np.testing.assert_array_equal(table["probe_5"], rises[5])
    for changed in ({"ema_decay": 0.9}, {"lr_schedule": "cosine"}):
        with pytest.raises(ValueError, match="constant learning rate without warmup and no EMA"):
            probe_rises(model, old, np.arange(20), new, T, TrainConfig(**{**config.__dict__, **changed}), [2])


def test_forecast_returns_every_column_and_its_cost(setup):
    model, old, new = setup
    timing = {}
    table, cost = forecast(model, old, new, timesteps=T, probe=TrainConfig(batch_size=10, lr=1e-3, seed=0),
                           probe_steps=[2, 4], knn_k=3, seed=0, timing=timing)
    assert list(table.columns) == ["proximity_b", "grad_dot", "grad_cos", "probe_2", "probe_4"] and len(table) == 20
    assert np.isfinite(table.to_numpy()).all() and set(cost) == set(table.columns)
    assert min(cost.values()) > 0 and cost["probe_4"] > timing["train_seconds_per_step"] * 4 > 0
    a, b = old.reshape(20, -1).double().numpy(), new.reshape(20, -1).double().numpy()
    dist = np.sqrt(((a[:, None] - b[None]) ** 2).sum(-1))
    np.testing.assert_allclose(table.proximity_b, -np.sort(dist, 1)[:, :3].mean(1), rtol=1e-9)


def _folder(root, classes, n=6, seed=0):
    g = np.random.default_rng(seed)
    for c in classes:
        (root / str(c)).mkdir(parents=True)
        for i in range(n):
            Image.fromarray((g.random((12, 12)) * 255).astype(np.uint8), "L").save(root / str(c) / f"{i}.png")
    return root


@pytest.mark.slow
def test_the_command_line_forecasts_from_a_saved_model_and_two_folders(setup, tmp_path):
    model, _, _ = setup
    model.save_pretrained(tmp_path / "model")
    old, new = _folder(tmp_path / "old", [0, 1]), _folder(tmp_path / "new", [2, 3], seed=1)
    cmd = [sys.executable, "-m", "hopfield_replay.forecast", "--model", tmp_path / "model", "--old", old, "--new", new,
           "--out", tmp_path / "f.parquet", "--probe-steps", "2", "--batch-size", "4", "--timesteps", "100", "500"]
    proc = subprocess.run(list(map(str, [*cmd, "--fine-tune-steps", "20"])), cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    # before it starts: the sizes, the compute (gradients 24 x 2, probe 2 x 4, losses before and after 2 x 12 x 2 / 3)
    first = proc.stdout.splitlines()[0]  # and an estimate
    assert first.startswith("forecast: 12 old and 12 new samples on cpu; 72 image passes in all, 0.90 x the image "
                            "passes of the 20-step fine-tune; estimated "), first
    table = pd.read_parquet(tmp_path / "f.parquet")
    assert list(table.columns) == ["sample_id", "label", "proximity_b", "grad_dot", "grad_cos", "probe_2"]
    assert len(table) == 12 and table["sample_id"].tolist() == list(range(12)) and sorted(set(table.label)) == [0, 1]
    written = (tmp_path / "f.parquet").read_bytes()
    empty = tmp_path / "empty"
    empty.mkdir()
    np.savez(empty / "data.npz", x_train=np.zeros((0, 12, 12), np.uint8), y_train=np.zeros(0, np.uint8))
    for extra, fragment in (["--probe-steps", "0"], "--probe-steps"), (["--buffer", "13"], "hold 12 samples"), \
            (["--buffer", "2", "--rank-by", "energy"], "not a forecast of this run"), \
            (["--probe-steps", "30", "--fine-tune-steps", "20"], "longer than the fine-tune it forecasts"), \
            (["--new", empty], "hold no pixels"):
        bad = subprocess.run(list(map(str, cmd[:-6] + extra)), cwd=ROOT, capture_output=True, text=True, timeout=600)
        assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and fragment in bad.stderr, bad.stderr
    assert (tmp_path / "f.parquet").read_bytes() == written  # a refused run replaces nothing
    # a suggested buffer: the K highest of the longest probe (MIR)
    buffered = [*cmd, "--buffer", "5"]
    buffered[buffered.index("--out") + 1] = tmp_path / "f2.parquet"
    proc = subprocess.run(list(map(str, buffered)), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    with_buffer = pd.read_parquet(tmp_path / "f2.parquet")
    top = set(with_buffer.sort_values("probe_2", ascending=False, kind="stable").sample_id[:5])
    assert set(with_buffer.loc[with_buffer.suggested, "sample_id"]) == top and with_buffer.suggested.sum() == 5
    assert with_buffer.drop(columns="suggested").equals(table)  # the same forecasts, seeded
    # the library call the command line makes: the same table, bit for bit
    from hopfield_replay.forecast import forecast_folders

    threads = int(subprocess.run([sys.executable, "-c", "import torch; print(torch.get_num_threads())"],
                                 capture_output=True, text=True, timeout=120).stdout)  # the command line's
    ours = torch.get_num_threads()
    torch.set_num_threads(threads)  # sums over threads round differently; same threads, same bits
    try:
        library = forecast_folders(tmp_path / "model", old, new, probe_steps=[2], batch_size=4,
                                   timesteps=[100, 500], buffer=5)
    finally:
        torch.set_num_threads(ours)
    assert library.attrs["rank_by"] == "probe_2" and set(library.attrs["seconds"]) == set(table.columns[2:])
    library.attrs = {}
    pd.testing.assert_frame_equal(library, with_buffer, check_exact=True)


@pytest.mark.slow
def test_the_command_line_forecasts_for_stable_diffusion_and_refuses_data_a_model_cannot_take(tmp_path):
    """The tiny SD pipeline (grey digits encoded by its VAE, class prompts): every column, deterministic for a seed;
    a DDPM of 2 channels cannot take grey or colour images: one line, exit 2, nothing written."""
    from hopfield_replay.models import LatentDiffusion
    from hopfield_replay.models.tiny_sd import build_tiny_sd_pipeline

    build_tiny_sd_pipeline(tmp_path / "pipeline", resolution=16, seed=0)
    LatentDiffusion.from_pipeline(str(tmp_path / "pipeline"), class_names=[str(c) for c in range(10)]).save_pretrained(
        tmp_path / "sd")
    old, new = _folder(tmp_path / "old", [0, 1], n=4), _folder(tmp_path / "new", [2, 3], n=4, seed=1)
    cmd = [sys.executable, "-m", "hopfield_replay.forecast", "--model", tmp_path / "sd", "--old", old, "--new", new,
           "--probe-steps", "1", "2", "--batch-size", "4", "--timesteps", "100", "500", "--buffer", "3", "--out"]
    runs = [subprocess.run(list(map(str, [*cmd, tmp_path / f"{i}.parquet"])), cwd=ROOT, capture_output=True,
                           text=True, timeout=600) for i in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    table = pd.read_parquet(tmp_path / "0.parquet")
    assert list(table.columns) == ["sample_id", "label", "proximity_b", "grad_dot", "grad_cos", "probe_1", "probe_2",
                                   "suggested"]
    assert len(table) == 8 and np.isfinite(table.iloc[:, 2:-1].to_numpy()).all() and table.suggested.sum() == 3
    assert table.equals(pd.read_parquet(tmp_path / "1.parquet"))  # the same seed, the same forecasts
    assert table.grad_dot.std() > 0 and table.probe_2.std() > 0

    two = PixelDDPM.from_config(DDPMConfig(resolution=8, channels=2, block_out_channels=[8, 16], norm_num_groups=4))
    two.save_pretrained(tmp_path / "two")
    bad = [*cmd[:4], tmp_path / "two", *cmd[5:], tmp_path / "bad.parquet"]
    proc = subprocess.run(list(map(str, bad)), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "images of 1 channel(s), but the model takes 2" in proc.stderr and str(old) in proc.stderr
    assert not (tmp_path / "bad.parquet").exists()


def test_the_time_estimate_counts_every_pass_of_the_forecast(setup, monkeypatch):
    """estimate_seconds = n_old s_g + n_new T / B s_B + S s_B + (1 + P) n_old T / B s_B / 3, with s_B the timed
    seconds of one batch's backward at one t, s_g an old sample's share of one timed vmapped chunk (a pixel-space
    DDPM: PER_SAMPLE_CHUNK samples at once, as gradient_interference) or one timed per-sample backward (any other
    family), and S the probes' steps: the longest when they share one fine-tune, their sum otherwise. Here every
    timed call takes 1 s."""
    import hopfield_replay.forecast as F

    model, old, new = setup
    clock = iter(range(1000))
    monkeypatch.setattr(F.time, "perf_counter", lambda: float(next(clock)))  # every timed call takes 1 s
    n_old, n_new, n_t, b = 20, 10, 3, 4
    chunk = min(F.PER_SAMPLE_CHUNK, n_old)
    rest = n_new * n_t / b + 3 * n_old * n_t / b / 3
    seconds = F.estimate_seconds(model, old, new[:10], timesteps=T, probe_steps=[2, 5], batch_size=4)
    assert seconds == pytest.approx(n_old / chunk + 5 + rest)  # one fine-tune of 5 steps for both probes
    separate = F.estimate_seconds(model, old, new[:10], timesteps=T, probe_steps=[2, 5], batch_size=4,
                                  shared_probes=False)
    assert separate == pytest.approx(n_old / chunk + 7 + rest)
    monkeypatch.setattr(model, "family", "sd")  # the per-sample loop of any family but a pixel-space DDPM
    loop = F.estimate_seconds(model, old, new[:10], timesteps=T, probe_steps=[2, 5], batch_size=4)
    assert loop == pytest.approx(n_old + 5 + rest)
    assert F.total_passes(n_old, n_new, n_t, [2, 5], b) == pytest.approx((n_old + n_new) * n_t + 5 * b + 60)
    assert F.total_passes(n_old, n_new, n_t, [2, 5], b, shared_probes=False) == \
        pytest.approx((n_old + n_new) * n_t + 7 * b + 60)
    assert F.probes_share_one_run(TrainConfig(lr=1e-3))  # constant, no warmup, no EMA
    assert not F.probes_share_one_run(TrainConfig(lr=1e-3, ema_decay=0.9))


def test_the_cost_of_a_forecast_is_counted_in_image_passes():
    from hopfield_replay.forecast import forecast_cost

    cost = forecast_cost(n_old=100, n_new=50, n_timesteps=4, probe_steps=[10], batch_size=8)
    assert cost == {"proximity_b": 0.0, "grad_dot": 600.0, "grad_cos": 600.0, "probe_10": 80 + 2 * 100 * 4 / 3}


@pytest.mark.slow
def test_the_forecast_benchmark_prints_each_forecast_as_a_share_of_one_fine_tune(tmp_path):
    """benchmarks/bench_forecast.py --smoke: every line it promises, and the ratios are its own seconds divided."""
    import re

    out = tmp_path / "bench.txt"
    proc = subprocess.run([sys.executable, "benchmarks/bench_forecast.py", "--smoke", "--out", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    text = out.read_text()
    run = float(re.search(r"one train_b run \(4 steps, projected from 2 timed\): ([\d.]+) s", text).group(1))
    peaks = re.findall(r"gradient interference, (\d+) old samples: [\d.]+ s; peak memory rise ([\d.]+) MiB", text)
    assert [int(n) for n, _ in peaks] == [2, 16]
    total, ratio = map(float, re.search(r"all forecasts together: ([\d.]+) s; ratio to one train_b run = ([\d.]+)x",
                                        text).groups())
    # the run is printed to 0.01 s and the total to 0.1 s: the ratio lies between the extremes of their roundings
    assert run > 0.005
    assert (total - 0.05) / (run + 0.005) - 1e-3 <= ratio <= (total + 0.05) / (run - 0.005) + 1e-3
    assert re.search(r"probe_1 \(1 steps and the losses after, as if alone\)", text) and "(goal <= 1.0x: " in text
    assert re.search(r"the \d+ probes as one fine-tune of \d+ steps, measured at each length: [\d.]+ s", text)
