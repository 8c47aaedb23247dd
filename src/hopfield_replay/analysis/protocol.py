"""The evidence protocol applied to one run's tables: what the report stage computes, usable from a notebook.

For each forgetting measure (absolute, relative; forgetting.py), over the timesteps that carry forgetting
(``aggregate_t="forgetting"``: the t whose mean no-replay forgetting has its interval above 0 under that measure;
a t where the task-B model reconstructs task A *better* measures continued learning, not forgetting; all t when
none does, or with ``aggregate_t="all"``):
    predictors   every column of the scores table against the per-sample forgetting aggregate of each seed
                 (evidence.evaluate_predictors), and against the best baseline (evidence.compare_to_best_baseline)
    by_t         which timesteps carry forgetting without replay (forgetting.forgetting_by_t)
    agreement    how far the seeds agree on which samples are forgotten (forgetting.seed_agreement): the noise
                 ceiling of the predictor table
    by_decile    no-replay forgetting per decile of the task-A energy, with intervals (binned_means): the
                 paper's "energy tracks forgetting monotonically", read off directly
    arms         every replay arm against random at the same budget and against no replay, paired over seeds
                 (evidence.arm_effects)
    overlap      how many samples the arms' buffers share (buffer_overlap): an arm that picks the same samples as
                 another cannot be told apart from it by its effect
    composition  the share of each class in every arm's buffer (buffer_composition): a buffer skewed toward some
                 classes; the *_per_class arms hold class_balanced's shares (replay.py)
    verdicts     the paper's two claims (verdicts.claims), then combined over both measures
                 (holds only if it holds under both, fails only if it fails under both)
    checks       can the replay experiment show an effect at all (verdicts.design_checks): does random replay
                 beat no replay, and does the oracle ceiling beat random? Combined over measures like the claims
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from .evidence import arm_effects, compare_to_best_baseline, evaluate_predictors, per_sample_arms
from ..measures.forgetting import MEASURES, energy_deciles, forgetting_by_t, per_sample, seed_agreement
from ..predictors import predictor_kinds
from .stats import t_interval
from .verdicts import claims, combine_verdicts, design_checks

NOT_PREDICTORS = ("task", "label", "beta")  # columns of the scores table that are not scores


@dataclass
class Evidence:
    predictors: dict[str, pd.DataFrame]  # measure -> one row per predictor
    comparison: dict[str, pd.DataFrame]  # measure -> difference to the best baseline, per predictor
    by_t: dict[str, pd.DataFrame]  # measure -> one row per t (column used: aggregated over)
    arms: dict[str, pd.DataFrame]  # measure -> one row per (arm, budget, subset, reference)
    verdicts: dict  # claim1 / claim2 -> statement, verdict (combined), and each measure's claim
    deciles: pd.Series  # sample_id -> decile of the energy the arms rank by
    by_decile: dict[str, pd.DataFrame]  # measure -> no-replay forgetting per energy decile (binned_means)
    overlap: pd.DataFrame  # one row per (budget, arm, other arm): buffer_overlap
    composition: pd.DataFrame  # one row per (budget, arm, class): buffer_composition
    agg: dict[str, pd.Series]  # measure -> no-replay per-sample aggregate over the used t, seeds averaged
    checks: dict  # verdicts.CHECKS -> statement, verdict (combined), and each measure's check
    agreement: dict[str, dict]  # measure -> seed_agreement of the no-replay per-sample aggregates

    def headline(self) -> dict:
        """What `dvc metrics show` prints, one short row: per claim the verdict and each measure's effect (4
        decimals); the intervals behind the verdicts are in details()["verdicts"]."""
        return {key: {"verdict": claim["verdict"],
                      **{m: _number(claim[m]["effect"], ".4f") for m in MEASURES}} for key, claim in self.verdicts.items()}

    def details(self) -> dict:
        """The verdicts with their intervals and every table, as plain JSON (6 significant digits, NaN -> null)."""

        def records(df):
            rows = (df.reset_index() if df.index.name else df).to_dict(orient="records")
            return [{k: _number(v) for k, v in row.items()} for row in rows]

        return {"verdicts": _plain(self.verdicts), "checks": _plain(self.checks),
                **{m: {"predictors": records(self.predictors[m]), "vs_best_baseline": records(self.comparison[m]),
                       "forgetting_by_t": records(self.by_t[m]), "forgetting_by_decile": records(self.by_decile[m]),
                       "arms": records(self.arms[m]), "seed_agreement": _plain(self.agreement[m])} for m in MEASURES},
                "buffer_overlap": records(self.overlap), "buffer_composition": records(self.composition)}


def _number(v, fmt: str = ".6g"):
    """A float rounded to the precision it carries (None for NaN); anything else as it is."""
    if isinstance(v, (float, np.floating)):
        return float(format(float(v), fmt)) if np.isfinite(v) else None
    return v.item() if isinstance(v, np.generic) else v


def _plain(obj):
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return _number(obj)


def run_protocol(scores: pd.DataFrame, forgetting: pd.DataFrame, replay: pd.DataFrame, *, seeds: list[int],
                 energy: str, nuisance: list[str], deciles: int, top_frac: float, n_boot: int, seed: int,
                 level: float, aggregate_t: str = "forgetting") -> Evidence:
    """scores: index sample_id, a label column and one column per predictor; forgetting: the no-replay rows
    (sample_id, seed, t, error_a, error); replay: every arm's rows (plus strategy, budget, replayed)."""
    predictors = scores.drop(columns=[c for c in NOT_PREDICTORS if c in scores.columns])
    kinds = predictor_kinds(predictors.columns)
    boot = dict(n_boot=n_boot, seed=seed, level=level)
    bins = energy_deciles(scores[energy], deciles)
    tables, comparison, by_t, by_decile, arms, agg, agreement = {}, {}, {}, {}, {}, {}, {}
    per_measure, per_check = {}, {}  # measure -> claims, design checks
    for m in MEASURES:
        by_t[m] = forgetting_by_t(forgetting, m, **boot)
        real = by_t[m].loc[by_t[m]["real"], "t"].tolist() if aggregate_t == "forgetting" else []
        used = real or by_t[m]["t"].tolist()
        by_t[m]["used"] = by_t[m]["t"].isin(used)
        rows, replay_rows = forgetting[forgetting["t"].isin(used)], replay[replay["t"].isin(used)]
        targets = {s: per_sample(rows, m, seed=s)["agg"] for s in seeds}
        agg[m] = per_sample(rows, m)["agg"]
        agreement[m] = seed_agreement(targets, **boot)
        by_decile[m] = binned_means(scores[energy], agg[m], deciles, level=level)
        tables[m] = evaluate_predictors(predictors, scores["label"], targets, nuisance, kinds=kinds,
                                        top_frac=top_frac, **boot)
        comparison[m] = compare_to_best_baseline(predictors, targets, kinds, nuisance, **boot)
        arms[m] = arm_effects(replay_rows, bins, m, level=level)
        per_measure[m] = claims(tables[m], comparison[m], arms[m], predictor=energy)
        per_check[m] = design_checks(arms[m])
    return Evidence(tables, comparison, by_t, arms, _combined(per_measure), bins, by_decile, buffer_overlap(replay),
                    buffer_composition(replay, scores["label"]), agg, _combined(per_check), agreement)


def _combined(per_measure: dict) -> dict:
    """key -> statement, the verdict combined over the measures (holds / fails only under both; "not run" if
    not run under some measure), and each measure's entry."""
    out = {}
    for key in per_measure[MEASURES[0]]:
        vs = [per_measure[m][key]["verdict"] for m in MEASURES]
        out[key] = {"statement": per_measure[MEASURES[0]][key]["statement"],
                    "verdict": "not run" if "not run" in vs else combine_verdicts(*vs),
                    **{m: per_measure[m][key] for m in MEASURES}}
    return out


def buffer_overlap(replay: pd.DataFrame) -> pd.DataFrame:
    """Per budget and ordered pair of arms (A, B) with buffers of that budget, the share of A's buffer that is also
    in B's, from the ``replayed`` flags of the replay table, averaged over the seeds both ran:

        overlap(A, B) = mean_s |R_A,s & R_B,s| / |R_A,s|

    Columns: budget, arm, other, overlap, n_seeds (one row per pair, the diagonal included, arms in sorted order).
    """
    rows = replay.loc[replay["replayed"] & (replay["budget"] > 0), ["seed", "strategy", "budget", "sample_id"]]
    buffers: dict[tuple, dict] = {}  # (budget, arm) -> {seed: the buffer's sample ids}
    for (budget, arm, seed), g in rows.groupby(["budget", "strategy", "seed"]):
        buffers.setdefault((int(budget), arm), {})[seed] = set(g["sample_id"])
    out = []
    for (budget, a), mine in sorted(buffers.items()):
        for (other_budget, b), theirs in sorted(buffers.items()):
            if other_budget != budget:
                continue
            shares = [len(mine[s] & theirs[s]) / len(mine[s]) for s in sorted(mine.keys() & theirs.keys())]
            out.append({"budget": budget, "arm": a, "other": b, "overlap": float(np.mean(shares)) if shares else np.nan,
                        "n_seeds": len(shares)})
    return pd.DataFrame(out, columns=["budget", "arm", "other", "overlap", "n_seeds"])


def buffer_composition(replay: pd.DataFrame, labels: pd.Series) -> pd.DataFrame:
    """Per budget and arm, the share of each class in the buffer, mean over seeds; first the task-A samples
    themselves (arm "task A", budget 0). labels: sample_id -> class.

        share(A, c) = mean_s |{i in R_A,s : y_i = c}| / |R_A,s|

    A top-K buffer skewed toward some classes protects those and leaves the others, so its effect mixes which
    samples it holds with which classes. Columns: budget, arm, label, share, n_seeds."""
    classes = np.sort(labels.unique())
    out = [{"budget": 0, "arm": "task A", "label": c, "share": float(np.mean(labels == c)), "n_seeds": 0}
           for c in classes]
    rows = replay.loc[replay["replayed"] & (replay["budget"] > 0), ["seed", "strategy", "budget", "sample_id"]]
    rows = rows.drop_duplicates().assign(label=lambda d: d["sample_id"].map(labels))
    for (budget, arm), g in rows.groupby(["budget", "strategy"], sort=True):
        shares = g.groupby("seed")["label"].value_counts(normalize=True).unstack(fill_value=0.0)
        shares = shares.reindex(columns=classes, fill_value=0.0)
        out += [{"budget": int(budget), "arm": arm, "label": c, "share": float(shares[c].mean()),
                 "n_seeds": len(shares)} for c in classes]
    return pd.DataFrame(out, columns=["budget", "arm", "label", "share", "n_seeds"])


def binned_means(x: pd.Series, y: pd.Series, bins: int, level: float = 0.95) -> pd.DataFrame:
    """The mean of y in each of ``bins`` equal-count bins of x (forgetting.energy_deciles: by rank, bin 0 =
    lowest x), with the Student-t interval over the bin's samples (stats.t_interval)

        mean_b +- t_{(1+level)/2, n_b-1} * sd_b / sqrt(n_b)

    x and y are Series on the same index (sample_id). Columns: bin, x_lo, x_hi, x_median, mean, lo, hi, n.
    """
    y = y.reindex(x.index)
    if x.index.has_duplicates or y.isna().any():
        raise ValueError("binned_means: y needs one value for each sample of x (one x per sample)")
    b = energy_deciles(x, bins).to_numpy()
    rows = []
    for k in range(bins):
        xs, ys = x.to_numpy()[b == k], y.to_numpy()[b == k]
        ci = t_interval(ys, level)
        rows.append({"bin": k, "x_lo": float(xs.min()), "x_hi": float(xs.max()), "x_median": float(np.median(xs)),
                     "mean": ci.estimate, "lo": ci.low, "hi": ci.high, "n": int(ys.size)})
    return pd.DataFrame(rows)


def decile_curves(replay: pd.DataFrame, deciles: pd.Series, measure: str = "absolute") -> pd.DataFrame:
    """Mean forgetting per (arm, budget, seed, energy decile): the per-sample forgetting of the arm table
    (evidence.per_sample_arms: each t scaled by the no-replay arm's per-sample sd, then averaged over t), averaged
    within each decile. The data of the arms-by-decile figure. Columns: strategy, budget, seed, decile, forgetting."""
    per = per_sample_arms(replay, measure)["value"].rename("forgetting").reset_index()
    per["decile"] = deciles.reindex(per["sample_id"]).to_numpy()
    return per.groupby(["strategy", "budget", "seed", "decile"])["forgetting"].mean().reset_index()
