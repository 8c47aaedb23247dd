"""Has model A converged? The two controls of the report's second section, as tables and sentences.

1. Continued training (``control`` stage): model A trained further on task A with train_b's settings. Its change
   of the task-A error at t, c(t) = mean over samples of error_control - error_a (and the log ratio), with a
   percentile-bootstrap interval over samples. Where the interval lies below 0 the task-A error still falls
   without any task change, so forgetting after task B at that t is confounded with unfinished learning; the
   no-replay forgetting f(t) beside it, and f(t) - c(t), the part no longer explained by training alone.
2. The MHN regime (``regime`` stage, ``measures.regime``): relative(t) = mean |x0_hat - D*|^2 / mean |D* - x0|^2,
   below 1 where model A acts as the Hopfield retrieval of its training images (the regime the paper's MHN
   analysis describes). At low noise D* returns the training image itself, so closeness there means reproducing
   the training images; at high noise D* is a softmax-weighted mean of many of them.
3. The training curves (``measures.curves``, written by every training stage): model A's fixed-noise denoising
   loss on a fixed task-A subset, and each task-B run's on task B and task A. The change over a run's last fifth,
   (L(N) - L(0.8 N)) / L(0.8 N), says whether the fit still improved when the run stopped.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..errors import UserError
from ..measures.forgetting import MEASURES, forgetting_by_t
from ..measures.regime import regime_by_t
from .verdicts import format_interval


def control_by_t(control: pd.DataFrame, forgetting: pd.DataFrame, *, n_boot: int = 1000, seed: int = 0,
                 level: float = 0.95) -> pd.DataFrame:
    """One row per (measure, t): the control's mean change with its interval over samples, still_learning (the
    interval's high end below 0), the no-replay forgetting (seeds averaged) and their difference."""
    rows = []
    for m in MEASURES:
        c = forgetting_by_t(control, m, n_boot=n_boot, seed=seed, level=level)
        f = forgetting.groupby("t")[m].mean()
        for r in c.itertuples():
            rows.append({"measure": m, "t": int(r.t), "control": r.mean, "lo": r.lo, "hi": r.hi,
                         "still_learning": bool(r.hi < 0), "no_replay": float(f.get(r.t, np.nan)),
                         "beyond_control": float(f.get(r.t, np.nan) - r.mean)})
    return pd.DataFrame(rows)


def control_lines(table: pd.DataFrame, steps: int, seed: int, level: float) -> list[str]:
    """The control's table and one sentence per measure: at which t the task-A error still falls by training."""
    lines = [f"Model A trained {steps} more steps on task A itself (train_b's settings, seed {seed}): the change of "
             f"its task-A error, with {level:.0%} intervals over samples, beside the forgetting after task B "
             "(no replay, mean over seeds).", "",
             "| measure | t | control: change without a task change | task B, no replay | task B minus control |",
             "|---|---|---|---|---|"]
    for r in table.itertuples():
        lines.append(f"| {r.measure} | {r.t} | {format_interval(r.control, r.lo, r.hi, 4)} | {r.no_replay:+.4f} | "
                     f"{r.beyond_control:+.4f} |")
    lines.append("")
    for m, part in table.groupby("measure", sort=False):
        falling = part.loc[part.still_learning, "t"].tolist()
        if falling:
            lines.append(f"- {m}: the task-A error still falls with more task-A training alone at t = "
                         f"{', '.join(map(str, falling))}; there, forgetting after task B is confounded with "
                         "learning model A had not finished.")
        else:
            lines.append(f"- {m}: at no measured t does the task-A error fall with more task-A training alone "
                         "(no interval lies below 0): forgetting there is not confounded with unfinished learning.")
    return lines


def regime_lines(regime: pd.DataFrame) -> list[str]:
    """The regime table per t and one sentence: where model A is close to the empirical optimal denoiser."""
    by_t = regime_by_t(regime)
    lines = ["Model A's one-step denoiser against the empirical optimal denoiser D* of the task-A images (the "
             "Hopfield retrieval at beta = SNR(t); mean squared errors over task-A samples, same noise as the "
             "forgetting measures). Relative distance = |model - D*|^2 / |D* - x0|^2: below 1, the model acts as "
             "the Hopfield retrieval of its training images (the regime of the paper's MHN analysis); at low noise "
             "D* returns the training image itself.", "",
             "| t | model error | D* error | model to D* | relative distance |", "|---|---|---|---|---|"]
    for r in by_t.itertuples():
        lines.append(f"| {int(r.t)} | {r.model_error:.4g} | {r.empirical_error:.4g} | {r.distance:.4g} | "
                     f"{r.relative:.3g} |")
    close = by_t.loc[by_t.relative < 1, "t"].astype(int).tolist()
    far = by_t.loc[~(by_t.relative < 1), "t"].astype(int).tolist()
    regime = ("relative distance below 1: it acts as the Hopfield retrieval of its training images, the regime of "
              "the paper's MHN analysis")
    if close and far:
        lines += ["", f"Model A is close to D* at t = {', '.join(map(str, close))} ({regime}) and far from it at t = "
                      f"{', '.join(map(str, far))}."]
    elif close:
        lines += ["", f"Model A is close to D* at every measured t ({regime})."]
    else:
        lines += ["", "Model A is far from D* at every measured t (relative distance at least 1): it is not in the "
                      "regime of the paper's MHN analysis."]
    return lines


def read_curves(folder: str | Path) -> pd.DataFrame:
    """Every run's training curves under ``folder`` (the dvclive folders of the training stages): one row per
    (model, metric, step) with its value; model is the run's folder relative to ``folder`` (``task_a``,
    ``task_b/seed1``, ``retrain/seed1/random-250``, ``control_a``). A file that is not a curve is named."""
    folder = Path(folder)
    rows = []
    for tsv in sorted(folder.glob("**/plots/metrics/*.tsv")):
        model = tsv.parent.parent.parent.relative_to(folder).as_posix()
        try:
            lines = tsv.read_text().splitlines()
            header = lines[0].split("\t")
            if header != ["step", tsv.stem]:
                raise ValueError(f"header {header[:3]}")
            for line in lines[1:]:
                step, value = line.split("\t")
                if not math.isfinite(float(value)) or int(step) < 0:
                    raise ValueError(f"row {line[:40]!r}")
                rows.append({"model": model, "metric": tsv.stem, "step": int(step), "value": float(value)})
        except (ValueError, IndexError, UnicodeDecodeError) as exc:
            raise UserError(f"{tsv}: not a training curve ({exc}); rerun the training stage that writes it") from None
    if not rows:
        raise UserError(f"{folder}: holds no training curves (*/plots/metrics/*.tsv); rerun the training stages")
    return pd.DataFrame(rows)


def last_fifth_change(curves: pd.DataFrame, model: str, metric: str) -> tuple[float, float, float]:
    """(value at the first point, at the last, relative change over the last fifth of the run's steps)."""
    c = curves[(curves.model == model) & (curves.metric == metric)].sort_values("step")
    if c.empty:
        return math.nan, math.nan, math.nan
    last = c.iloc[-1]
    before = c[c.step <= 0.8 * last.step].iloc[-1]
    change = (last.value - before.value) / before.value if before.value else math.nan
    return float(c.iloc[0].value), float(last.value), float(change)


def curve_lines(curves: pd.DataFrame, figure: str | None) -> list[str]:
    """One sentence for model A, one for the no-replay task-B runs: where each loss went, and its change over the
    last fifth of the run (whether the fit still improved when it stopped)."""
    lines = ["Training curves (every run's, dvclive: `dvc plots show`): the denoising loss at fixed noise of a fixed "
             "subset of each task's training images, on the weights each run saves."]
    if figure:
        lines += ["", f"![training curves]({figure})"]
    first, last, change = last_fifth_change(curves, "task_a", "eval_task_a")
    if not math.isnan(last):
        lines += ["", f"- Model A: task-A loss {first:.4f} at step 0, {last:.4f} at the end; {change:+.1%} over "
                      "its last fifth of steps."]
    runs = sorted(m for m in curves.model.unique() if m.startswith("task_b/"))
    if runs:
        own = [last_fifth_change(curves, m, "eval_task_b") for m in runs]
        old = [last_fifth_change(curves, m, "eval_task_a") for m in runs]
        lines.append(f"- Task-B models, no replay ({len(runs)} seeds): task-B loss {_span([o[0] for o in own])} at "
                     f"step 0, {_span([o[1] for o in own])} at the end ({_span([o[2] for o in own], pct=True)} over "
                     f"the last fifth); task-A loss {_span([o[0] for o in old])} at step 0, "
                     f"{_span([o[1] for o in old])} at the end (forgetting during the fine-tune).")
    return lines


def _span(values: list[float], pct: bool = False) -> str:
    lo, hi = min(values), max(values)
    fmt = (lambda v: f"{v:+.1%}") if pct else (lambda v: f"{v:.4f}")
    return fmt(lo) if lo == hi else f"{fmt(lo)} to {fmt(hi)}"


def plot_training_curves(curves: pd.DataFrame, path):
    """Left: model A's training loss and task-A curve. Right: each no-replay task-B run's task-B and task-A curves."""
    import matplotlib.pyplot as plt

    from .report import _save

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    a = curves[curves.model == "task_a"]
    for metric, style in (("train_loss", ":"), ("eval_task_a", "-")):
        c = a[a.metric == metric].sort_values("step")
        axes[0].plot(c.step, c.value, style, label=metric.replace("eval_", "fixed subset, "))
    axes[0].set_title("model A on task A")
    for ax in axes:
        ax.set_xlabel("step")
        ax.set_ylabel("denoising loss")
        ax.set_yscale("log")
    runs = sorted(m for m in curves.model.unique() if m.startswith("task_b/"))
    for i, m in enumerate(runs):
        for metric, style in (("eval_task_b", "-"), ("eval_task_a", "--")):
            c = curves[(curves.model == m) & (curves.metric == metric)].sort_values("step")
            axes[1].plot(c.step, c.value, style, color=f"C{i}", label=f"{m.split('/')[-1]}: {metric[5:]}")
    axes[1].set_title("no-replay task-B models: task B solid, task A dashed")
    for ax in axes:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)
