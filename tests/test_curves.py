"""Training curves (measures.curves): measuring them changes no trained weight, a point is the fixed-noise
denoising loss of the weights the run would save (checked in fp64), a resumed run keeps its points, and the dvclive
folder they are written to reads back the same values and the same bytes."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from hopfield_replay.measures.curves import TrainingCurves, eval_subset, training_curves
from hopfield_replay.measures.noise import fixed_noise
from hopfield_replay.models import CheckpointPolicy, TrainConfig, train_denoiser
from hopfield_replay.models.training import Checkpoint
from tests.test_checkpoints import _data as checkpoint_data, _model
from tests.test_diffusion import _weights

pytestmark = pytest.mark.usefixtures("one_thread")
CONFIG = TrainConfig(steps=10, batch_size=8, seed=3, lr=1e-3, ema_decay=0.9, replay_fraction=0.0)
T = [100, 600]


def _data():
    return checkpoint_data(30)  # the checkpoint tests' tiny data, 30 samples


def _curves(x, y, every=4):
    ids = np.arange(100, 100 + len(x))
    return TrainingCurves([eval_subset("a", x, ids, y, 12, seed=5), eval_subset("b", -x, ids, y, 40, seed=5)],
                          every=every, timesteps=T, seed=7)


def _loss64(model, s, timesteps, seed):
    """Independent fp64 reference: the UNet in double, the noise drawn per (sample, t), the mean over both."""
    unet = model.unet.double().eval()
    alphas = model.scheduler.alphas_cumprod.double()
    total = []
    with torch.no_grad():
        for t in timesteps:
            eps = fixed_noise(s.sample_ids, t, tuple(s.x0.shape[1:]), seed).double()
            a = alphas[t]
            x_t = a.sqrt() * s.x0.double() + (1 - a).sqrt() * eps
            pred = model.predict_noise(x_t, torch.full((len(x_t),), t), s.labels)
            total.append(((pred - eps) ** 2).mean(dim=(1, 2, 3)))
    model.unet.float()
    return torch.stack(total).mean().item()


@pytest.mark.parametrize("ema", [None, 0.9])
def test_measuring_curves_changes_no_weight_and_no_loss(ema):
    x, y = _data()
    config = replace(CONFIG, ema_decay=ema)
    plain = _model()
    plain_losses = train_denoiser(plain, x, config, labels=y, progress=False)
    measured = _model()
    curves = _curves(x, y)
    losses = train_denoiser(measured, x, config, labels=y, progress=False, curves=curves)
    assert losses == plain_losses
    assert torch.equal(_weights(measured), _weights(plain))
    assert [p["step"] for p in curves.points] == [0, 4, 8, 10]
    assert curves.points[0]["train_loss"] is None
    assert curves.points[1]["train_loss"] == pytest.approx(np.mean(losses[0:4]), rel=1e-12)
    assert curves.points[3]["train_loss"] == pytest.approx(np.mean(losses[8:10]), rel=1e-12)


def test_a_point_is_the_fp64_denoising_loss_of_the_saved_weights():
    x, y = _data()
    model = _model()
    curves = _curves(x, y)
    train_denoiser(model, x, CONFIG, labels=y, progress=False, curves=curves)  # the EMA weights end in the model
    last = curves.points[-1]
    assert len(curves.sets[0].x0) == 12 and len(curves.sets[1].x0) == 30  # a subset, and all when fewer
    for s in curves.sets:
        assert last[f"eval_{s.name}"] == pytest.approx(_loss64(model, s, T, seed=7), rel=1e-5)
    assert last["eval_a"] != pytest.approx(curves.points[0]["eval_a"], rel=1e-3)  # the curve moved with training
    first = _model()
    for s in curves.sets:  # step 0: the initial weights (the EMA starts from them)
        assert curves.points[0][f"eval_{s.name}"] == pytest.approx(_loss64(first, s, T, seed=7), rel=1e-5)


def test_a_bf16_run_measures_its_points_in_bf16_near_the_fp64_loss_and_changes_no_weight():
    """A run that trains in CPU bf16 autocast measures its curve in bf16 too: other rounding than fp32 (so the
    setting is really used), within bf16's precision of the fp64 loss, and the trained weights are those of the
    same bf16 run without curves."""
    x, y = _data()
    fp32, bf16 = _curves(x, y), replace(_curves(x, y), cpu_bf16=True, points=[])
    plain = _model()
    train_denoiser(plain, x, CONFIG, labels=y, progress=False, cpu_bf16=True)
    model = _model()
    train_denoiser(model, x, CONFIG, labels=y, progress=False, cpu_bf16=True, curves=bf16)
    assert torch.equal(_weights(model), _weights(plain))
    fp32.measure(10, model, None)  # the same weights, measured in fp32
    for s in bf16.sets:
        exact = _loss64(model, s, T, seed=7)
        assert bf16.points[-1][f"eval_{s.name}"] == pytest.approx(exact, rel=3e-2)
        assert fp32.points[-1][f"eval_{s.name}"] == pytest.approx(exact, rel=1e-5)
        assert bf16.points[-1][f"eval_{s.name}"] != fp32.points[-1][f"eval_{s.name}"]
    assert bf16.key() != fp32.key()  # a checkpoint of an fp32-curve run does not resume a bf16-curve one
    params = type("P", (), {"every": 3, "samples": 5, "timesteps": [10], "seed": 1})
    assert training_curves(params, {"task_a": (x, np.arange(30), y)}, cpu_bf16=True).cpu_bf16


def test_a_resumed_run_keeps_its_points(tmp_path):
    x, y = _data()
    reference = _curves(x, y)
    train_denoiser(_model(), x, CONFIG, labels=y, progress=False, curves=reference)
    policy = CheckpointPolicy(tmp_path, every_minutes=60, every_steps=6)

    class Stop(Checkpoint):
        def save(self, state):
            super().save(state)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_denoiser(_model(), x, CONFIG, labels=y, progress=False, curves=_curves(x, y),
                       checkpoint=Stop(policy, "run", "k"))
    resumed = _curves(x, y)
    train_denoiser(_model(), x, CONFIG, labels=y, progress=False, curves=resumed, checkpoint=Checkpoint(policy, "run", "k"))
    assert resumed.points == reference.points


def test_the_dvclive_folder_holds_every_point_and_the_same_bytes_twice(tmp_path):
    x, y = _data()
    curves = _curves(x, y)
    train_denoiser(_model(), x, CONFIG, labels=y, progress=False, curves=curves)
    curves.write(tmp_path / "one")
    curves.write(tmp_path / "two")
    files = sorted(p.relative_to(tmp_path / "one") for p in (tmp_path / "one").rglob("*") if p.is_file())
    assert [str(f) for f in files] == ["metrics.json", "plots/metrics/eval_a.tsv", "plots/metrics/eval_b.tsv",
                                       "plots/metrics/train_loss.tsv"]
    for f in files:
        assert (tmp_path / "one" / f).read_bytes() == (tmp_path / "two" / f).read_bytes()
    rows = [line.split("\t") for line in (tmp_path / "one/plots/metrics/eval_a.tsv").read_text().split("\n")[1:]
            if line]
    assert [int(r[0]) for r in rows] == [p["step"] for p in curves.points]
    assert [float(r[1]) for r in rows] == [p["eval_a"] for p in curves.points]
    summary = json.loads((tmp_path / "one/metrics.json").read_text())
    assert summary["step"] == 10 and summary["eval_b"] == curves.points[-1]["eval_b"]


def test_training_curves_from_params_and_bad_settings():
    x, y = _data()
    params = type("P", (), {"every": 3, "samples": 5, "timesteps": [10], "seed": 1})
    curves = training_curves(params, {"task_a": (x, np.arange(30), y)})
    assert curves.every == 3 and [s.name for s in curves.sets] == ["task_a"] and len(curves.sets[0].x0) == 5
    again = training_curves(params, {"task_a": (x, np.arange(30), y)})
    assert np.array_equal(curves.sets[0].sample_ids, again.sets[0].sample_ids)  # seeded
    with pytest.raises(ValueError, match="every"):
        TrainingCurves(curves.sets, every=0, timesteps=[10], seed=0)
    with pytest.raises(ValueError, match="distinct"):
        TrainingCurves(curves.sets * 2, every=1, timesteps=[10], seed=0)


def test_without_dvclive_the_same_bytes_are_written(tmp_path):
    """The lent GPU machine has no DVC (dvclive needs it): the fallback writes what dvclive writes, byte for byte."""
    from hopfield_replay.measures.curves import write_dvclive_layout

    x, y = _data()
    curves = _curves(x, y)
    train_denoiser(_model(), x, CONFIG, labels=y, progress=False, curves=curves)
    curves.write(tmp_path / "dvclive")
    write_dvclive_layout(curves.points, tmp_path / "ours")
    theirs = sorted(p.relative_to(tmp_path / "dvclive") for p in (tmp_path / "dvclive").rglob("*") if p.is_file())
    ours = sorted(p.relative_to(tmp_path / "ours") for p in (tmp_path / "ours").rglob("*") if p.is_file())
    assert ours == theirs
    for f in theirs:
        assert (tmp_path / "ours" / f).read_bytes() == (tmp_path / "dvclive" / f).read_bytes(), f


def _written(tmp_path):
    from hopfield_replay.measures.curves import write_dvclive_layout

    a = [{"step": s, "train_loss": None if s == 0 else 1.0 / s, "eval_task_a": 1.0 - s / 200} for s in range(0, 101, 10)]
    write_dvclive_layout(a, tmp_path / "task_a")
    for seed, k in ((1, 1.0), (2, 2.0)):
        b = [{"step": s, "train_loss": None, "eval_task_b": 0.5 - s / 1000, "eval_task_a": 0.1 + k * s / 1000}
             for s in range(0, 51, 5)]
        write_dvclive_layout(b, tmp_path / "task_b" / f"seed{seed}")
    return tmp_path


def test_the_report_reads_every_runs_curves_and_says_where_they_went(tmp_path):
    from hopfield_replay.analysis.convergence import curve_lines, last_fifth_change, plot_training_curves, read_curves

    curves = read_curves(_written(tmp_path))
    assert set(curves.model) == {"task_a", "task_b/seed1", "task_b/seed2"}
    assert len(curves[(curves.model == "task_a") & (curves.metric == "train_loss")]) == 10  # no value at step 0
    first, last, change = last_fifth_change(curves, "task_a", "eval_task_a")
    assert (first, last) == (1.0, 0.5) and change == pytest.approx((0.5 - 0.6) / 0.6)  # from step 80 to 100
    _, last_b, change_b = last_fifth_change(curves, "task_b/seed2", "eval_task_a")
    assert last_b == pytest.approx(0.2) and change_b == pytest.approx((0.2 - 0.18) / 0.18)
    text = "\n".join(curve_lines(curves, "plots/training_curves.png"))
    assert "1.0000 at step 0, 0.5000 at the end; -16.7% over its last fifth" in text
    assert "(2 seeds)" in text and "task-A loss 0.1000 at step 0, 0.1500 to 0.2000 at the end" in text
    png = plot_training_curves(curves, tmp_path / "curves.png")
    assert png.stat().st_size > 1000


@pytest.mark.parametrize("damage", [b"step\tother\n0\t1.0\n", b"step\teval_task_a\n0\tnan\n", b"\xff\xfe",
                                    b"step\teval_task_a\n0\n", b""])
def test_a_damaged_curve_file_is_named(tmp_path, damage):
    from hopfield_replay.analysis.convergence import read_curves
    from hopfield_replay.errors import UserError

    folder = _written(tmp_path)
    bad = folder / "task_a" / "plots" / "metrics" / "eval_task_a.tsv"
    bad.write_bytes(damage)
    with pytest.raises(UserError, match="eval_task_a.tsv: not a training curve"):
        read_curves(folder)
    with pytest.raises(UserError, match="holds no training curves"):
        read_curves(tmp_path / "nowhere")


def test_train_and_save_trains_at_its_thread_count_and_restores_the_callers(tmp_path):
    """``threads`` is the count the run trains with (its curve points too), and the caller's count comes back
    after: a notebook that trains one model does not compute everything after it at another count."""
    from hopfield_replay.models import train_and_save

    seen = []

    class Watched(TrainingCurves):
        def measure(self, step, model, train_loss):
            seen.append(torch.get_num_threads())
            return super().measure(step, model, train_loss)

    x, y = _data()
    ids = np.arange(len(x))
    curves = Watched([eval_subset("a", x, ids, y, 8, seed=5)], every=5, timesteps=T, seed=7)
    before = torch.get_num_threads()
    threads = 2 if before == 1 else 1
    train_and_save(_model(), x, y, CONFIG, torch.device("cpu"), tmp_path / "model", desc="t", threads=threads,
                   curves=curves, curves_out=tmp_path / "curves")
    assert seen == [threads] * 3 and torch.get_num_threads() == before
    assert json.loads((tmp_path / "model" / "train_log.json").read_text())["threads"] == threads
