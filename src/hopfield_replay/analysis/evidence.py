"""Evidence for the paper's two claims: predictors of forgetting against baselines, replay arms against random
replay over seeds (the verdicts on them: verdicts.py).

Predictors (evaluate_predictors, compare_to_best_baseline). Per seed s, with f_s the per-sample forgetting target:
    rho_s(p)     = Spearman(p, f_s)
    partial_s(p) = Spearman(p, f_s | nuisance)            (stats.partial_spearman; p is never its own covariate)
    estimate     = mean_s rho_s(p)
Interval: samples and seeds are crossed (every seed forgets the same task-A samples), so each of the n_boot
resamples draws the seeds with replacement AND the samples with replacement (one sample draw shared by the drawn
seeds), and its statistic is the mean over the drawn seeds of the per-seed statistic on the drawn samples; the
percentile interval of those is reported. With one seed this is the ordinary bootstrap over samples.

Arms (arm_effects). Per seed, arm and sample i: v_i = mean_t f_{i,t} / scale_t, scale_t = per-sample sd of the
no-replay arm's forgetting at t (averaged over seeds), so every t counts equally and all arms share one scale.
    effect_s = mean_{i in subset} (v_i(reference) - v_i(arm))   (paired: same seed and samples; > 0: arm forgets less)
    effect   = mean_s effect_s  with a Student-t interval over seeds (stats.t_interval).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.stats

from ..measures.forgetting import MEASURES, add_measures
from ..arms import PER_CLASS
from .stats import auroc, percentile_interval, precision_at, t_interval, top_k
from .verdicts import verdict

NUISANCE = ("pixel_mass", "recon_error_a")
ARM_COLUMNS = ["strategy", "budget", "subset", "reference", "effect", "lo", "hi", "n_seeds", "n_agree", "forgetting",
               "reference_forgetting", "n_samples", "verdict"]
_CHUNK_ELEMENTS = 4_000_000  # rank matrices are built for about this many entries at a time


# ----------------------------------------------------------------------------------------------------- predictors
def _align(scores: pd.DataFrame, targets: dict) -> tuple[np.ndarray, np.ndarray]:
    """(P, n) predictor matrix and (S, n) target matrix, both in the order of scores.index."""
    if not targets:
        raise ValueError("targets must hold at least one seed")
    x = scores.to_numpy(dtype=float).T
    y = np.stack([pd.Series(t).reindex(scores.index).to_numpy(dtype=float) for t in targets.values()])
    if not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
        raise ValueError("scores and every seed's target must be finite and cover every sample_id of scores")
    if x.shape[1] < 3:
        raise ValueError(f"need at least 3 samples, got {x.shape[1]}")
    return x, y


def _covariate_groups(names: list, nuisance) -> list[tuple[list[int], list[int]]]:
    """[(predictor indices, covariate indices)]: the nuisance columns, leaving each predictor out of its own."""
    missing = [c for c in nuisance if c not in names]
    if missing:
        raise ValueError(f"nuisance column(s) {missing} are not among the predictors {names}")
    cov = [names.index(c) for c in nuisance]
    groups = [([i for i in range(len(names)) if i not in cov], cov)]
    groups += [([j], [c for c in cov if c != j]) for j in cov]
    return [(members, covs) for members, covs in groups if members]


def _corr_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a (c, P, n), b (c, S, n) -> (c, S, P) Pearson correlation of every a row with every b row; NaN if constant."""
    a = a - a.mean(-1, keepdims=True)
    b = b - b.mean(-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = a / np.linalg.norm(a, axis=-1, keepdims=True)
        b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return np.einsum("cpn,csn->csp", a, b)


def _residualise(r: np.ndarray, z: np.ndarray) -> np.ndarray:
    """r (c, m, n) minus its least-squares fit on [1, z], z (c, k, n):  e = r~ - (pinv(z~ z~^T) z~ r~^T)^T z~ with
    ~ = centred along n. A residual that is rounding noise of an exact fit is set to 0 (its correlation is NaN)."""
    r = r - r.mean(-1, keepdims=True)
    if z.shape[1] == 0:
        return r
    z = z - z.mean(-1, keepdims=True)
    coef = np.linalg.pinv(z @ z.transpose(0, 2, 1), rcond=1e-10, hermitian=True) @ (z @ r.transpose(0, 2, 1))
    e = r - coef.transpose(0, 2, 1) @ z
    exact = np.linalg.norm(e, axis=-1) <= 1e-9 * np.linalg.norm(r, axis=-1)
    e[exact] = 0.0
    return e


def _rank_statistics(rx: np.ndarray, ry: np.ndarray, groups) -> tuple[np.ndarray, np.ndarray]:
    """Ranks rx (c, P, n), ry (c, S, n) -> Spearman and partial Spearman, each (c, S, P)."""
    rho = _corr_rows(rx, ry)
    partial = np.full_like(rho, np.nan)
    for members, covs in groups:
        z = rx[:, covs]
        partial[:, :, members] = _corr_rows(_residualise(rx[:, members], z), _residualise(ry, z))
    return rho, partial


def _bootstrap(x: np.ndarray, y: np.ndarray, groups, n_boot: int, seed: int):
    """Point estimates (P,) and bootstrap draws (n_boot, P) of the seed-mean Spearman and partial Spearman."""
    if not (isinstance(n_boot, (int, np.integer)) and n_boot >= 1):
        raise ValueError(f"n_boot must be an integer >= 1, got {n_boot!r}")
    (p, n), s = x.shape, y.shape[0]
    rank = scipy.stats.rankdata
    rho, partial = _rank_statistics(rank(x, axis=-1)[None], rank(y, axis=-1)[None], groups)
    # Ranks are invariant under monotone maps: resamples are ranked as small-integer codes (sorted ~4x faster).
    code = np.int16 if n < np.iinfo(np.int16).max else np.int64
    x, y = rank(x, axis=-1, method="dense").astype(code), rank(y, axis=-1, method="dense").astype(code)
    point = (rho[0].mean(0), partial[0].mean(0))
    draws = (np.empty((n_boot, p)), np.empty((n_boot, p)))
    rng = np.random.default_rng(seed)
    chunk = max(1, _CHUNK_ELEMENTS // ((p + s) * n))
    for start in range(0, n_boot, chunk):
        c = min(chunk, n_boot - start)
        seeds = rng.integers(0, s, size=(c, s, 1))
        idx = rng.integers(0, n, size=(c, n))
        rx = rank(x[:, idx].transpose(1, 0, 2), axis=-1)
        ry = rank(y[:, idx].transpose(1, 0, 2), axis=-1)
        for out, per_seed in zip(draws, _rank_statistics(rx, ry, groups)):
            out[start:start + c] = np.take_along_axis(per_seed, seeds, axis=1).mean(1)
    return point, draws


def _within_class(x: np.ndarray, y: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(P,) mean over seeds of the mean over classes (>= 3 samples) of the within-class Spearman."""
    per_class = []
    for c in np.unique(labels):
        m = labels == c
        if m.sum() >= 3:
            rx, ry = scipy.stats.rankdata(x[:, m], axis=-1), scipy.stats.rankdata(y[:, m], axis=-1)
            per_class.append(_corr_rows(rx[None], ry[None])[0])  # (S, P)
    if not per_class:
        return np.full(x.shape[0], np.nan)
    with np.errstate(invalid="ignore"):
        return np.nanmean(np.stack(per_class), axis=0).mean(0)


def evaluate_predictors(scores: pd.DataFrame, labels: pd.Series, targets: dict, nuisance=NUISANCE, *, kinds=None,
                        n_boot: int = 1000, seed: int = 0, top_frac: float = 0.1, level: float = 0.95) -> pd.DataFrame:
    """One row per predictor (index ``predictor``): how well each column of ``scores`` ranks forgetting.

    scores: index sample_id, one column per predictor; labels: Series sample_id -> class; targets: {seed: Series
    sample_id -> per-sample forgetting}; nuisance: columns of scores controlled for; kinds: {predictor: kind}.
    Columns: kind (with kinds), spearman(_lo/_hi), within_class (mean over classes of the within-class rho), partial(_lo/_hi),
    precision_at_10 and auroc_top_decile (positives = top ``top_frac`` of the target; the names assume 0.1), all
    means over seeds; covariates (what the partial controls for), n_samples, n_seeds.
    """
    names = list(scores.columns)
    x, y = _align(scores, targets)
    groups = _covariate_groups(names, list(nuisance))
    (rho, partial), (rho_b, partial_b) = _bootstrap(x, y, groups, n_boot, seed)
    lab = pd.Series(labels).reindex(scores.index)
    if lab.isna().any():
        raise ValueError("labels must give a class for every sample_id of scores")
    lab = lab.to_numpy()
    prec = np.array([[precision_at(xp, ys, top_frac) for xp in x] for ys in y]).mean(0)
    positives = [np.isin(np.arange(y.shape[1]), top_k(ys, top_frac)) for ys in y]
    auc = np.array([[auroc(xp, pos) for xp in x] for pos in positives]).mean(0)
    within = _within_class(x, y, lab)
    rows = []
    for j, name in enumerate(names):
        (rho_lo, rho_hi), (part_lo, part_hi) = (percentile_interval(b[:, j], level) for b in (rho_b, partial_b))
        rows.append({"predictor": name, **({"kind": kinds.get(name)} if kinds is not None else {}),
                     "spearman": rho[j], "spearman_lo": rho_lo, "spearman_hi": rho_hi, "within_class": within[j],
                     "partial": partial[j], "partial_lo": part_lo, "partial_hi": part_hi,
                     "precision_at_10": prec[j], "auroc_top_decile": auc[j],
                     "covariates": ",".join(c for c in nuisance if c != name),
                     "n_samples": x.shape[1], "n_seeds": y.shape[0]})
    return pd.DataFrame(rows).set_index("predictor")


def compare_to_best_baseline(scores: pd.DataFrame, targets: dict, kinds: dict, nuisance=NUISANCE, *,
                             n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Per predictor (index ``predictor``), paired bootstrap (same resamples as evaluate_predictors with the same
    arguments) of   diff = rho(p) - s* rho(b*),  b* = argmax_{kind == "baseline"} |rho(b)|,  s* = sign rho(b*)
    (a baseline's direction is arbitrary: a distance ranks like a negated density, so the best baseline is the
    one that ranks forgetting best in either direction, counted in its better direction; the predictor's own rho
    keeps its sign, since the claim is that high energy means more forgetting). Likewise partial_diff against the
    baseline with the largest |partial Spearman|.

    Columns: baseline, diff, lo, hi, partial_baseline, partial_diff, partial_lo, partial_hi.
    """
    names = list(scores.columns)
    base = [j for j, name in enumerate(names) if kinds.get(name) == "baseline"]
    if not base:
        raise ValueError(f"no predictor of kind 'baseline' among {names}")
    x, y = _align(scores, targets)
    (rho, partial), (rho_b, partial_b) = _bootstrap(x, y, _covariate_groups(names, list(nuisance)), n_boot, seed)
    best, best_p = (base[int(np.argmax(np.nan_to_num(np.abs(v[base]), nan=-np.inf)))] for v in (rho, partial))
    sign, sign_p = (1.0 if not v[b] < 0 else -1.0 for v, b in ((rho, best), (partial, best_p)))
    rows = []
    for j, name in enumerate(names):
        lo, hi = percentile_interval(rho_b[:, j] - sign * rho_b[:, best], level)
        plo, phi = percentile_interval(partial_b[:, j] - sign_p * partial_b[:, best_p], level)
        rows.append({"predictor": name, "baseline": names[best] if sign > 0 else f"-{names[best]}",
                     "diff": rho[j] - sign * rho[best], "lo": lo, "hi": hi,
                     "partial_baseline": names[best_p] if sign_p > 0 else f"-{names[best_p]}",
                     "partial_diff": partial[j] - sign_p * partial[best_p], "partial_lo": plo, "partial_hi": phi})
    return pd.DataFrame(rows).set_index("predictor")


# ----------------------------------------------------------------------------------------------------------- arms
def per_sample_arms(replay: pd.DataFrame, measure: str, standardise: bool = True) -> pd.DataFrame:
    """Per-sample forgetting of every arm and seed: index (strategy, budget, seed, sample_id) -> value, replayed.

        value = mean_t  f(t) / s(t),   s(t) = mean_seeds sd_samples(f of the no-replay arm at t)

    (s = 1 with standardise=False), so every t weighs alike whatever its scale; the arm table and the
    arms-by-decile figure both read it."""
    df = replay if measure in replay.columns else add_measures(replay)
    none = df[df["strategy"] == "none"]
    if none.empty:
        raise ValueError("the replay table has no no-replay arm (strategy 'none')")
    n_t = df["t"].nunique()
    per_t = df.groupby(["strategy", "budget", "seed", "sample_id"])["t"]
    if (per_t.nunique() != n_t).any() or (per_t.size() != n_t).any():
        raise ValueError(f"every (arm, seed, sample) needs one row for each of the {n_t} timesteps")
    value = df[measure].astype(float)
    if standardise:
        scale = none.groupby(["seed", "t"])[measure].std(ddof=0).groupby("t").mean()
        value = value / df["t"].map(scale.where(scale > 0, np.inf))
    return (df.assign(value=value).groupby(["strategy", "budget", "seed", "sample_id"])
            .agg(value=("value", "mean"), replayed=("replayed", "any")))


def arm_effects(replay: pd.DataFrame, deciles: pd.Series, measure: str, *, standardise: bool = True,
                level: float = 0.95) -> pd.DataFrame:
    """Paired effect of every replay arm against random replay at the same budget and against no replay; a
    class-stratified arm (name ending in ``_per_class``) also against class_balanced at the same budget, which
    has its class shares.

    replay: columns sample_id, seed, strategy, budget, t, replayed and ``measure`` (or error_a/error); strategy
    "none" (budget 0) is no replay, one per seed. deciles: sample_id -> energy decile (top = highest value).
    Per-sample forgetting is the mean over t of the measure, each t divided by the no-replay arm's per-sample sd
    at t (standardise=True; else the plain mean). Subsets are defined by the arm (its replayed samples in that
    seed) and applied to both arm and reference: overall, replayed, not_replayed, top_decile.

    Columns: strategy, budget, subset, reference ("random" | "none" | "class_balanced"), effect =
    forgetting(reference) - forgetting(arm) (> 0: the arm forgets less), lo, hi (t interval over seeds; NaN with
    one seed), n_seeds, n_agree (seeds whose effect has the sign of the mean), forgetting, reference_forgetting
    (means over seeds), n_samples (mean subset size), verdict.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    per = per_sample_arms(replay, measure, standardise)
    dec = pd.Series(deciles)
    arms = per.index.droplevel(["seed", "sample_id"]).unique()
    rows = []
    for strategy, budget in arms:
        if strategy == "none":
            continue
        refs = [("none", ("none", 0))] + ([("random", ("random", budget))] if strategy != "random" else [])
        if strategy.endswith(PER_CLASS):  # a class-stratified arm: also against random within the same class shares
            refs.append(("class_balanced", ("class_balanced", budget)))
        for ref_name, ref in refs:
            if ref not in arms:
                continue
            rows += _paired_rows(per, (strategy, budget), ref, ref_name, dec, level)
    return pd.DataFrame(rows, columns=ARM_COLUMNS)


def _paired_rows(per: pd.DataFrame, arm: tuple, ref: tuple, ref_name: str, deciles: pd.Series, level: float) -> list:
    arm_t, ref_t = per.loc[arm], per.loc[ref]
    seeds = sorted(set(arm_t.index.get_level_values("seed")) & set(ref_t.index.get_level_values("seed")))
    stats = {s: [] for s in ("overall", "replayed", "not_replayed", "top_decile")}
    for seed in seeds:
        a = arm_t.loc[seed]
        r = ref_t.loc[seed]["value"].reindex(a.index)
        top = deciles.reindex(a.index)
        if r.isna().any() or top.isna().any():
            raise ValueError(f"seed {seed}: arm {arm} has samples missing from {ref} or from the deciles")
        masks = {"overall": np.ones(len(a), bool), "replayed": a["replayed"].to_numpy(),
                 "not_replayed": ~a["replayed"].to_numpy(), "top_decile": (top == deciles.max()).to_numpy()}
        for subset, m in masks.items():
            if m.any():
                arm_f, ref_f = float(a["value"].to_numpy()[m].mean()), float(r.to_numpy()[m].mean())
                stats[subset].append((ref_f - arm_f, arm_f, ref_f, int(m.sum())))
    rows = []
    for subset, per_seed in stats.items():
        if not per_seed:
            continue
        eff, arm_f, ref_f, n = (np.array(v, dtype=float) for v in zip(*per_seed))
        est, lo, hi = t_interval(eff, level)
        rows.append({"strategy": arm[0], "budget": int(arm[1]), "subset": subset, "reference": ref_name,
                     "effect": est, "lo": lo, "hi": hi, "n_seeds": eff.size,
                     "n_agree": int(np.sum(np.sign(eff) == np.sign(est))), "forgetting": arm_f.mean(),
                     "reference_forgetting": ref_f.mean(), "n_samples": n.mean(), "verdict": verdict(est, lo, hi)})
    return rows
