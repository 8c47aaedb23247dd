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
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
