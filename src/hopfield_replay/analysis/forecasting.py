"""How good is a forecast made before fine-tuning, and what does it cost? A second question beside claim 1, never
mixed into its baselines.

Each forecast column (``hopfield_replay.forecast``, kind "forecast" in the predictor registry, oriented so that
higher = more forgetting) is evaluated exactly as the predictors of claim 1, against the same per-sample targets,
in one bootstrap with the scores table's columns: Spearman with its interval over seeds and samples, the
within-class Spearman, partial Spearman given the nuisances, precision and AUROC for the top 10%
(``evidence.evaluate_predictors``), and its Spearman minus the best task-A baseline's, paired
(``evidence.compare_to_best_baseline``; the baselines are the scores table's, the forecasts are never among them).
Plus

    share of the ceiling = Spearman / seed ceiling         (the ceiling: how well one seed's forgetting ranks another's)
    cost                 = image passes (``forecast.forecast_cost``), and as a multiple of one train_b run's
                           (train_b.steps x batch size); seconds depend on the machine, so tables hold passes
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..measures.forgetting import MEASURES, per_sample
from ..predictors import predictor_kinds
from .evidence import compare_to_best_baseline, evaluate_predictors
from .verdicts import format_interval


def evaluate_forecasts(forecasts: pd.DataFrame, scores: pd.DataFrame, forgetting: pd.DataFrame, *,
                       used_t: dict[str, list[int]], seeds: list[int], ceilings: dict[str, float],
                       cost: dict[str, float], train_b_cost: float, nuisance: list[str], reference: str,
                       n_boot: int = 1000, seed: int = 0, level: float = 0.95, top_frac: float = 0.1) -> pd.DataFrame:
    """One row per (measure, predictor): every forecast column of ``forecasts`` (index sample_id) and the
    ``reference`` column of ``scores`` (claim 1's predictor, for scale), with the share of the ceiling, the cost and
    the difference to the best baseline among the predictor columns of ``scores`` (index sample_id, plus label)."""
    columns = [c for c in forecasts.columns if c not in ("label",)]
    predictors = scores.drop(columns=[c for c in ("label", "task", "beta") if c in scores.columns])
    clash = sorted(set(columns) & set(predictors.columns))
    if clash:
        raise ValueError(f"forecast columns {clash} are also columns of the scores table")
    kinds = predictor_kinds([*predictors.columns, *columns])
    if any(kinds.get(c) != "forecast" for c in columns):
        raise ValueError(f"forecast columns {[c for c in columns if kinds.get(c) != 'forecast']} are not of kind "
                         "'forecast' in the predictor registry (hopfield_replay.predictors)")
    frame = predictors.join(forecasts[columns], how="inner")
    boot = dict(n_boot=n_boot, seed=seed, level=level)
    rows = []
    for m in MEASURES:
        kept = forgetting[forgetting.t.isin(used_t[m])]
        targets = {s: per_sample(kept, m, seed=s)["agg"] for s in seeds}
        table = evaluate_predictors(frame, scores["label"], targets, nuisance, kinds=kinds, top_frac=top_frac, **boot)
        versus = compare_to_best_baseline(frame, targets, kinds, nuisance, **boot)
        for name in [*columns, reference]:
            r, v = table.loc[name], versus.loc[name]
            passes = cost.get(name, np.nan)
            rows.append({"measure": m, "predictor": name, "kind": kinds.get(name), "forecast": name != reference,
                         "spearman": r.spearman, "spearman_lo": r.spearman_lo, "spearman_hi": r.spearman_hi,
                         "within_class": r.within_class, "partial": r.partial,
                         "precision_at_10": r.precision_at_10, "auroc_top_decile": r.auroc_top_decile,
                         "baseline": v.baseline, "minus_baseline": v["diff"], "minus_baseline_lo": v.lo,
                         "minus_baseline_hi": v.hi, "ceiling": ceilings[m],
                         "share_of_ceiling": r.spearman / ceilings[m] if ceilings[m] > 0 else np.nan,
                         "cost": passes, "train_b_ratio": passes / train_b_cost if train_b_cost > 0 else np.nan})
    return pd.DataFrame(rows)


def best_forecast(table: pd.DataFrame, measure: str) -> pd.Series:
    part = table[(table.measure == measure) & table.forecast]
    return part.loc[part.spearman.idxmax()]


def forecast_lines(table: pd.DataFrame, reference: str, figure: str | None) -> list[str]:
    """The report's section: the table, then per measure the best forecast, its share of the ceiling and its cost."""
    lines = ["## Forecasting forgetting before fine-tuning (a second question, beside claim 1)", "",
             "Each forecast is made before the task-B fine-tune, from model A, both tasks' data and short probe "
             "fine-tunes (`hopfield_replay.forecast`; higher = more forgetting predicted), and measured against the "
             "forgetting the fine-tunes then showed, as the predictors of claim 1 are. The seed ceiling is how well "
             "one seed's forgetting ranks another's. Cost: compute in image passes (one forward and backward of one "
             "noisy image; a forward alone counts 1/3) and as a multiple of one train_b run's; the stage prints the "
             f"seconds on its machine. `{reference}` (claim 1's predictor, from task A alone) is shown for scale.", "",
             "| measure | predictor | Spearman | share of the ceiling | within class | partial | precision@10% | "
             "AUROC top 10% | minus the best baseline | image passes | x one train_b run |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in table.itertuples():
        cost = "-" if pd.isna(r.cost) else f"{r.cost:.0f}"
        ratio = "-" if pd.isna(r.train_b_ratio) else f"{r.train_b_ratio:.2f}"
        lines.append(f"| {r.measure} | {r.predictor} | {format_interval(r.spearman, r.spearman_lo, r.spearman_hi)} | "
                     f"{r.share_of_ceiling:.2f} | {r.within_class:+.3f} | {r.partial:+.3f} | "
                     f"{r.precision_at_10:.2f} | {r.auroc_top_decile:.2f} | "
                     f"{format_interval(r.minus_baseline, r.minus_baseline_lo, r.minus_baseline_hi)} | {cost} | "
                     f"{ratio} |")
    lines.append("")
    for m in MEASURES:
        best, ref = best_forecast(table, m), table[(table.measure == m) & ~table.forecast].iloc[0]
        lines.append(f"- {m}: the best forecast before fine-tuning is `{best.predictor}`, Spearman "
                     f"{format_interval(best.spearman, best.spearman_lo, best.spearman_hi)}, "
                     f"{best.share_of_ceiling:.2f} of the seed ceiling ({best.ceiling:.2f}), at "
                     f"{best.train_b_ratio:.2f} x the compute of one train_b run; minus the best task-A baseline "
                     f"(`{best.baseline}`): {format_interval(best.minus_baseline, best.minus_baseline_lo, best.minus_baseline_hi)}; "
                     f"`{reference}`: {ref.spearman:+.3f}.")
    if figure:
        lines += ["", f"![forecasts: accuracy against cost]({figure})"]
    return lines + [""]


def plot_forecasts(table: pd.DataFrame, path, reference: str):
    """Per measure: Spearman (with its interval) against compute in train_b runs, the seed ceiling as a line, the
    reference dashed (a forecast of no network pass sits at the left edge)."""
    import matplotlib.pyplot as plt

    from .report import _save

    fig, axes = plt.subplots(1, len(MEASURES), figsize=(5 * len(MEASURES), 3.6), squeeze=False)
    for ax, m in zip(axes[0], MEASURES):
        part = table[(table.measure == m) & table.forecast]
        ref = table[(table.measure == m) & ~table.forecast].iloc[0]
        err = np.vstack([part.spearman - part.spearman_lo, part.spearman_hi - part.spearman])
        x = part.train_b_ratio.clip(lower=1e-3)
        ax.errorbar(x, part.spearman, yerr=err, fmt="o", capsize=3)
        for i, (xi, r) in enumerate(zip(x, part.itertuples())):  # alternate sides: equal-cost points (grad_dot,
            ax.annotate(r.predictor, (xi, r.spearman), textcoords="offset points",  # grad_cos) keep readable labels
                        xytext=(4, 4) if i % 2 == 0 else (4, -10), fontsize=7)
        ax.axhline(ref.ceiling, color="k", lw=1, label=f"seed ceiling {ref.ceiling:.2f}")
        ax.axhline(ref.spearman, color="grey", lw=1, ls="--", label=f"{reference} {ref.spearman:+.2f}")
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xscale("log")
        ax.set_xlabel("compute, in train_b runs (no network pass: 0.001)")
        ax.set_ylabel(f"Spearman with {m} forgetting")
        ax.set_title(f"{m} forgetting")
        ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)
