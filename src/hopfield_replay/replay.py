"""Replay selection: a selector turns per-sample scores (and optionally labels / features) into a ranking of
sample_ids; the replay buffer of budget K is the first K entries of that ranking.

One interface for every selector (Avalanche style, scores in, ranked ids out)::

    Selector = Callable[[SelectionInputs, int], np.ndarray]   # (inputs, K) -> first K sample_ids in rank order

Before a selector runs, the rows are put in ascending ``sample_id`` order, so a ranking never depends on the
order rows arrive in and every tie (equal scores, equal distances) goes to the smaller ``sample_id``. Every
selector is greedy or ranks by a fixed key, so buffers are nested: the K=50 buffer is the first 50 of the K=250
buffer (for the seeded selectors: with the same seed). s_i is the arm's score, x_i its feature row, y_i its label.

    high, energy_high:  descending s_i (top-K; energy_high is the paper's rule on the Hopfield energy)
    low, energy_low:    ascending s_i (bottom-K)
    oracle:             descending s_i where the pipeline sets s_i = measured forgetting without replay. It uses
                        task-B information: a ceiling, never a method (STRATEGY_INFO[...].uses_task_b)
    random:             a seeded permutation of the sorted sample_ids (reservoir-style baseline)
    class_balanced:     a seeded random order within each class, classes visited round-robin in a seeded order,
                        so any prefix of K holds floor(K/C) or ceil(K/C) per class (until a class runs out)
    high_per_class, low_per_class, energy_high_per_class, oracle_per_class:
                        the same ranking inside each class (descending / ascending s_i), classes visited
                        round-robin in ascending label: round r takes the r-th of every class, so any prefix of
                        K holds floor(K/C) or ceil(K/C) per class, as class_balanced's, and differs from it only in
                        which samples of a class it holds (the control for a top-K buffer skewed toward some classes)
    kcenter:            farthest-first traversal: x_1 = argmin_i ||x_i - mean(x)||, then
                        x_{t+1} = argmax_i min_{j<=t} ||x_i - x_j||  (running min distances: O(N K d), never N x N)
    herding:            Welling / iCaRL herding toward mu = mean(x):
                        x_{t+1} = argmin_{i not chosen} ||mu - (x_1 + ... + x_t + x_i) / (t+1)||
    soft:               sampling without replacement with P(i) = softmax(z_i / tau), z = (s - mean s) / std s
                        (z-scored inside the selector, so the temperature tau is unit-free; std 0 -> uniform).
                        Gumbel-top-k: key_i = z_i / tau + g_i, g_i ~ Gumbel(0, 1) from the seed, rank by key
                        descending; this is exactly sequential sampling without replacement. tau -> 0 gives high,
                        tau -> inf gives uniform random.

An arm of the pipeline is ``(strategy, score column)``, written as a strategy name (it ranks by the default score;
the oracle by the measured forgetting) or as ``<column>_high`` / ``<column>_low`` / ``<column>_high_per_class`` /
``<column>_low_per_class`` (``parse_arm``). The arm names and their grammar live in ``arms.py`` (a leaf module, so
that checking params does not import the selectors). A new strategy plugs in with
``@register_strategy("name", needs_labels=..., needs_features=..., seeded=...)``; as an arm of the pipeline its name
also goes into ``arms.STRATEGY_NAMES``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class SelectionInputs:
    """Everything a selector may look at; all arrays in the same row order (any order: rows are sorted by id)."""

    scores: np.ndarray  # (N,) float64: the arm's score (an energy, a baseline predictor, or measured forgetting)
    sample_ids: np.ndarray  # (N,) int64, unique
    labels: np.ndarray | None = None  # (N,) class of each sample, for class_balanced
    features: np.ndarray | None = None  # (N, d) float64 model-space vectors, for kcenter / herding
    seed: int = 0
    temperature: float = 1.0  # tau of the soft selector, in units of the score's standard deviation

    def __post_init__(self):
        scores = np.asarray(self.scores, dtype=np.float64)
        ids = np.asarray(self.sample_ids, dtype=np.int64)
        n = ids.shape[0] if ids.ndim == 1 else -1
        if ids.ndim != 1 or scores.shape != ids.shape:
            raise ValueError(f"{scores.shape} scores for {ids.shape} sample_ids; give one score per sample_id (1-D)")
        if not np.isfinite(scores).all():
            raise ValueError("replay scores contain NaN or inf; recompute the scores")
        if np.unique(ids).size != n:
            raise ValueError("sample_ids are not unique")
        object.__setattr__(self, "scores", scores)
        object.__setattr__(self, "sample_ids", ids)
        if self.labels is not None:
            labels = np.asarray(self.labels)
            if labels.shape != (n,):
                raise ValueError(f"labels have shape {labels.shape}; expected one label per sample, shape ({n},)")
            object.__setattr__(self, "labels", labels)
        if self.features is not None:
            feats = np.asarray(self.features, dtype=np.float64)
            if feats.ndim != 2 or feats.shape[0] != n:
                raise ValueError(f"features have shape {feats.shape}; expected one row per sample, shape ({n}, d)")
            if not np.isfinite(feats).all():
                raise ValueError("replay features contain NaN or inf")
            object.__setattr__(self, "features", feats)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed {self.seed!r} is not valid; use an integer >= 0")
        if not (np.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature {self.temperature!r} is not valid; use a finite number > 0")

    def __len__(self) -> int:
        return int(self.sample_ids.shape[0])


@dataclass(frozen=True)
class StrategyInfo:
    needs_labels: bool = False
    needs_features: bool = False
    seeded: bool = False  # the ranking depends on SelectionInputs.seed
    uses_task_b: bool = False  # looks at task-B information: a ceiling, never a method
    doc: str = ""


Selector = Callable[[SelectionInputs, int], np.ndarray]
STRATEGIES: dict[str, Selector] = {}
STRATEGY_INFO: dict[str, StrategyInfo] = {}


def register_strategy(name: str, *, needs_labels: bool = False, needs_features: bool = False, seeded: bool = False,
                      uses_task_b: bool = False, doc: str | None = None) -> Callable[[Selector], Selector]:
    """Register ``fn(inputs, budget) -> first budget sample_ids`` under ``name`` (doc: its docstring's first line)."""

    def deco(fn: Selector) -> Selector:
        if name in STRATEGIES:
            raise ValueError(f"replay strategy {name!r} is already registered")
        STRATEGIES[name] = fn
        text = doc if doc is not None else (fn.__doc__ or "").strip().split("\n")[0]
        STRATEGY_INFO[name] = StrategyInfo(needs_labels, needs_features, seeded, uses_task_b, text)
        return fn

    return deco


def _by_key(keys: np.ndarray, inputs: SelectionInputs, budget: int) -> np.ndarray:
    """sample_ids in ascending ``keys``, ties by ascending sample_id."""
    return inputs.sample_ids[np.lexsort((inputs.sample_ids, keys))][:budget]


def rank_high(inputs: SelectionInputs, budget: int) -> np.ndarray:
    return _by_key(-inputs.scores, inputs, budget)


def rank_low(inputs: SelectionInputs, budget: int) -> np.ndarray:
    return _by_key(inputs.scores, inputs, budget)


register_strategy("energy_high", doc="descending Hopfield energy (top-K): the paper's rule")(rank_high)
register_strategy("energy_low", doc="ascending Hopfield energy (bottom-K)")(rank_low)


@register_strategy("random", seeded=True)
def rank_random(inputs: SelectionInputs, budget: int) -> np.ndarray:
    """a seeded permutation of the sorted sample_ids (reservoir-style baseline)"""
    return np.random.default_rng(inputs.seed).permutation(np.sort(inputs.sample_ids))[:budget]


register_strategy("high", doc="descending score (top-K), ties by sample_id")(rank_high)
register_strategy("low", doc="ascending score (bottom-K), ties by sample_id")(rank_low)


@register_strategy("class_balanced", needs_labels=True, seeded=True)
def rank_class_balanced(inputs: SelectionInputs, budget: int) -> np.ndarray:
    """random within each class, classes interleaved round-robin in a seeded order"""
    rng = np.random.default_rng(inputs.seed)
    classes = np.unique(inputs.labels)
    class_pos = np.empty(classes.size, dtype=np.int64)
    class_pos[rng.permutation(classes.size)] = np.arange(classes.size)  # visiting position of each class
    rows = np.searchsorted(classes, inputs.labels)
    within = np.empty(len(inputs), dtype=np.int64)  # random rank of each sample inside its class
    for c in range(classes.size):
        members = np.flatnonzero(rows == c)  # ascending sample_id (rows are sorted by id)
        within[members] = rng.permutation(members.size)
    order = np.lexsort((class_pos[rows], within))  # round r = within-rank, then class order inside the round
    return inputs.sample_ids[order][:budget]


@register_strategy("kcenter", needs_features=True)
def rank_kcenter(inputs: SelectionInputs, budget: int) -> np.ndarray:
    """k-center greedy (farthest-first) from the sample nearest the feature mean"""
    x = inputs.features
    chosen = np.empty(budget, dtype=np.int64)
    chosen[0] = np.argmin(((x - x.mean(axis=0)) ** 2).sum(axis=1))  # argmin/argmax: first (smallest id) on ties
    min_d2 = ((x - x[chosen[0]]) ** 2).sum(axis=1)
    min_d2[chosen[0]] = -np.inf
    for t in range(1, budget):
        chosen[t] = np.argmax(min_d2)
        np.minimum(min_d2, ((x - x[chosen[t]]) ** 2).sum(axis=1), out=min_d2)
        min_d2[chosen[t]] = -np.inf  # never re-pick (duplicates of chosen points also sit at 0)
    return inputs.sample_ids[chosen]


@register_strategy("herding", needs_features=True)
def rank_herding(inputs: SelectionInputs, budget: int) -> np.ndarray:
    """herding: each pick keeps the running mean of the buffer closest to the feature mean"""
    x = inputs.features
    mu = x.mean(axis=0)
    total = np.zeros_like(mu)
    taken = np.zeros(len(inputs), dtype=bool)
    chosen = np.empty(budget, dtype=np.int64)
    for t in range(budget):
        # ||mu - (total + x_i)/(t+1)|| is minimised by the x_i nearest (t+1) mu - total
        cost = (((t + 1) * mu - total - x) ** 2).sum(axis=1)
        cost[taken] = np.inf
        chosen[t] = np.argmin(cost)
        taken[chosen[t]] = True
        total += x[chosen[t]]
    return inputs.sample_ids[chosen]


@register_strategy("soft", seeded=True)
def rank_soft(inputs: SelectionInputs, budget: int) -> np.ndarray:
    """sampling without replacement with P ~ softmax(zscore(score) / tau) (Gumbel-top-k)"""
    s = inputs.scores
    sd = s.std()
    z = (s - s.mean()) / sd if sd > 0 else np.zeros_like(s)
    gumbel = np.random.default_rng(inputs.seed).gumbel(size=len(inputs))
    return _by_key(-(z / inputs.temperature + gumbel), inputs, budget)


register_strategy("oracle", uses_task_b=True,
                  doc="descending measured forgetting without replay (a ceiling)")(rank_high)


def _per_class(keys: np.ndarray, inputs: SelectionInputs, budget: int) -> np.ndarray:
    """Ascending ``keys`` inside each class (ties by sample_id), classes round-robin in ascending label: the r-th
    of every class before the (r+1)-th of any, so a prefix of K holds floor(K/C) or ceil(K/C) per class."""
    classes, rows = np.unique(inputs.labels, return_inverse=True)
    order = np.lexsort((inputs.sample_ids, keys))  # every sample in ascending key
    within = np.empty(len(inputs), dtype=np.int64)  # rank of each sample inside its class
    for c in range(classes.size):
        members = order[rows[order] == c]
        within[members] = np.arange(members.size)
    return inputs.sample_ids[np.lexsort((rows, within))][:budget]  # round = within-class rank, then class


def rank_high_per_class(inputs: SelectionInputs, budget: int) -> np.ndarray:
    return _per_class(-inputs.scores, inputs, budget)


def rank_low_per_class(inputs: SelectionInputs, budget: int) -> np.ndarray:
    return _per_class(inputs.scores, inputs, budget)


register_strategy("high_per_class", needs_labels=True,
                  doc="descending score inside each class, classes round-robin (class_balanced's shares)")(
    rank_high_per_class)
register_strategy("low_per_class", needs_labels=True,
                  doc="ascending score inside each class, classes round-robin (class_balanced's shares)")(
    rank_low_per_class)
register_strategy("energy_high_per_class", needs_labels=True,
                  doc="the paper's rule inside each class: descending energy, classes round-robin")(
    rank_high_per_class)
register_strategy("oracle_per_class", needs_labels=True, uses_task_b=True,
                  doc="descending measured forgetting inside each class, classes round-robin (a ceiling)")(
    rank_high_per_class)


def _check_budget(budget, n: int) -> int:
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not 1 <= budget <= n:
        raise ValueError(f"{budget!r} is not a valid budget; use an integer in [1, {n}] (the number of task-A samples)")
    return int(budget)


def rank_inputs(inputs: SelectionInputs, strategy: str, budget: int | None = None) -> np.ndarray:
    """The first ``budget`` sample_ids (all when None) in the order ``strategy`` would replay them."""
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    info = STRATEGY_INFO[strategy]
    if info.needs_labels and inputs.labels is None:
        raise ValueError(f"strategy {strategy!r} needs labels (one class per sample); none were given")
    if info.needs_features and inputs.features is None:
        raise ValueError(f"strategy {strategy!r} needs features (an (N, d) array, one row per sample); none were given")
    n = len(inputs)
    budget = n if budget is None else _check_budget(budget, n)
    order = np.argsort(inputs.sample_ids)
    canonical = dataclasses.replace(  # rows in ascending sample_id: row order never matters, ties go to small ids
        inputs, scores=inputs.scores[order], sample_ids=inputs.sample_ids[order],
        labels=None if inputs.labels is None else inputs.labels[order],
        features=None if inputs.features is None else inputs.features[order])
    out = np.asarray(STRATEGIES[strategy](canonical, budget), dtype=np.int64)
    if out.shape != (budget,) or np.unique(out).size != budget or not np.isin(out, canonical.sample_ids).all():
        raise ValueError(f"strategy {strategy!r} returned {out.shape[0]} ids; "
                         f"expected {budget} distinct known sample_ids")
    return out


def rank_samples(scores, sample_ids, strategy: str, *, seed: int = 0, budget: int | None = None,
                 **context) -> np.ndarray:
    """All sample_ids (or the first ``budget``) in rank order; ``context``: labels, features, temperature."""
    if strategy not in STRATEGIES:  # before building the inputs, so a typo is reported first
        raise ValueError(f"unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    return rank_inputs(SelectionInputs(scores, sample_ids, seed=seed, **context), strategy, budget)


def select_replay(inputs: SelectionInputs, strategy: str, budget: int, *,
                  score_name: str | None = None) -> pd.DataFrame:
    """The replay buffer of ``budget`` samples: columns sample_id, strategy, budget, rank (0 = first), score (the
    arm's score of each sample), seed; plus score_name (the score column the arm ranks by) when given."""
    if not isinstance(inputs, SelectionInputs):
        raise TypeError(f"select_replay takes a SelectionInputs, not {type(inputs).__name__}")
    budget = _check_budget(budget, len(inputs))
    order = rank_inputs(inputs, strategy, budget)
    sorted_ids = np.argsort(inputs.sample_ids)
    rows = sorted_ids[np.searchsorted(inputs.sample_ids, order, sorter=sorted_ids)]
    table = pd.DataFrame({
        "sample_id": order,
        "strategy": strategy,
        "budget": np.int64(budget),
        "rank": np.arange(budget, dtype=np.int64),
        "score": inputs.scores[rows],
        "seed": np.int64(inputs.seed),
    })
    if score_name is not None:
        table["score_name"] = score_name
    return table


def arm_name(strategy: str, budget: int) -> str:
    return f"{strategy}-{budget}"
