"""Training curves: the denoising loss of fixed evaluation sets at fixed noise, every ``every`` steps, logged with
dvclive so that ``dvc plots show`` draws them and ``dvc exp show`` lists their last values.

At step s the curve of an evaluation set S (a task's images) is

    L_S(s) = mean over i in S, t in T of |eps_theta_s(sqrt(abar_t) x0_i + sqrt(1 - abar_t) eps_it, t) - eps_it|^2 / D

with eps_it the fixed noise of sample i at t (``measures.noise``, as the reconstruction measures draw it: the same
at every step and in every run), so a curve moves only with the weights. theta_s is the model the run would save at
step s: its EMA weights when it keeps an EMA. Every task-A image trains (forgetting is measured on all of them), so
S is a fixed, seeded subset of a task's training images, not a held-out set: the curve says whether the fit still
improves, not how the model generalises. A task-B run follows both tasks: its own (task B) and task A's curve, the
course of forgetting during the fine-tune. ``train_loss`` is the mean training loss of the steps since the previous
point (none at step 0). A run that trains in bf16 autocast on the CPU (``cpu_bf16``) measures its points in bf16
autocast too, as every run on CUDA does (``devices.autocast``): about half the cost of an fp32 point, the same
fixed noise and subsets, other rounding.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..runtime.devices import autocast
from .reconstruction import denoising_energy

__all__ = ["EvalSet", "TrainingCurves", "eval_subset", "training_curves"]


@dataclass
class EvalSet:
    """One curve's images: ``x0`` in model space, their sample ids (the fixed noise's key) and labels (or None)."""

    name: str
    x0: torch.Tensor
    sample_ids: np.ndarray
    labels: torch.Tensor | None = None


def eval_subset(name: str, x0: torch.Tensor, sample_ids, labels: torch.Tensor | None, n: int, seed: int) -> EvalSet:
    """``n`` rows of a task drawn without replacement by ``seed`` (all of them when the task has fewer), in order."""
    ids = np.asarray(sample_ids, dtype=np.int64)
    keep = np.arange(len(ids))
    if n < len(ids):
        keep = np.sort(np.random.default_rng(seed).choice(len(ids), size=n, replace=False))
    rows = torch.from_numpy(keep)
    return EvalSet(name, x0[rows], ids[keep], labels[rows] if labels is not None else None)


@dataclass
class TrainingCurves:
    """The curve points of one training run: ``due`` says at which steps (0, every ``every``-th and the last),
    ``measure`` adds a point, ``write`` logs them all with dvclive into a folder."""

    sets: list[EvalSet]
    every: int
    timesteps: list[int]
    seed: int
    batch_size: int | None = None
    cpu_bf16: bool = False
    points: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.every < 1:
            raise ValueError(f"every={self.every}: must be >= 1")
        names = [s.name for s in self.sets]
        if len(set(names)) != len(names) or not names:
            raise ValueError(f"evaluation sets {names}: need at least one, with distinct names")

    def key(self) -> dict:
        """What the points depend on besides the run (part of a checkpoint's key: a resumed run keeps its points)."""
        return {"curves": [self.every, [int(t) for t in self.timesteps], self.seed,
                           [(s.name, [int(i) for i in s.sample_ids]) for s in self.sets],
                           *(["cpu_bf16"] if self.cpu_bf16 else [])]}

    def due(self, step: int, steps: int) -> bool:
        return step % self.every == 0 or step == steps

    @torch.no_grad()
    def measure(self, step: int, model, train_loss: float | None) -> dict:
        """Add the point of ``step``: every set's L_S of ``model`` as it is now (module docstring)."""
        point = {"step": int(step), "train_loss": None if train_loss is None else float(train_loss)}
        for s in self.sets:
            with autocast(model.device, cpu_bf16=self.cpu_bf16):
                err = denoising_energy(model, s.x0, s.sample_ids, self.timesteps, labels=s.labels, seed=self.seed,
                                       batch_size=self.batch_size, device=model.device, progress=False)
            point[f"eval_{s.name}"] = float(err.double().mean())
        self.points.append(point)
        return point

    def write(self, folder: str | Path) -> None:
        """The points as a dvclive folder: ``plots/metrics/<name>.tsv`` (step, value; no timestamps, so a rerun
        writes the same bytes) and ``metrics.json`` (the last point). The caller makes the folder atomically.
        Where dvclive is not installed (it needs DVC: the lent GPU machine has neither), the same files are written
        here, byte for byte what dvclive writes (tests/test_curves.py checks it)."""
        try:
            from dvclive import Live
        except ImportError:
            write_dvclive_layout(self.points, Path(folder))
            return
        with Live(dir=str(folder), save_dvc_exp=False, dvcyaml=None, report=None) as live:
            for point in self.points:
                live.step = point["step"]
                for name, value in point.items():
                    if name != "step" and value is not None:
                        live.log_metric(name, value)
                live.make_summary()


def write_dvclive_layout(points: list[dict], folder: Path) -> None:
    """dvclive's folder for ``log_metric`` per point then ``make_summary``: one TSV per metric (``step``, the
    value; the steps where it has a value) and ``metrics.json``, the last value of each metric and the last step
    (keys sorted, indent 4)."""
    metrics = folder / "plots" / "metrics"
    metrics.mkdir(parents=True, exist_ok=True)
    names = sorted({k for p in points for k, v in p.items() if k != "step" and v is not None})
    summary: dict = {}
    for name in names:
        rows = [(p["step"], p[name]) for p in points if p.get(name) is not None]
        text = f"step\t{name}\n" + "".join(f"{step}\t{value!r}\n" for step, value in rows)
        (metrics / f"{name}.tsv").write_text(text)
        summary[name] = rows[-1][1]
    if points:
        summary["step"] = points[-1]["step"]
    (folder / "metrics.json").write_text(json.dumps(dict(sorted(summary.items())), indent=4) + "\n")


def training_curves(params, tasks: dict[str, tuple], *, cpu_bf16: bool = False) -> TrainingCurves:
    """The curves of one run from the ``curves`` params (every, samples, timesteps, seed): one evaluation set per
    entry of ``tasks`` (name -> (x0, sample_ids, labels)), each a fixed subset of ``params.samples`` images;
    ``cpu_bf16``: the run's own setting (its points in bf16 autocast on the CPU, as it trains)."""
    sets = [eval_subset(name, x0, ids, labels, params.samples, params.seed)
            for name, (x0, ids, labels) in tasks.items()]
    return TrainingCurves(sets, every=params.every, timesteps=list(params.timesteps), seed=params.seed,
                          cpu_bf16=cpu_bf16)
