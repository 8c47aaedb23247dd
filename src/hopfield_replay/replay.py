"""Replay selection: a selector turns per-sample scores into a ranking; the buffer is its first K entries.

Every selector has the signature ``(scores, sample_ids, seed) -> sample_ids in rank order`` and breaks ties by
``sample_id`` (ascending), so a ranking never depends on the order rows arrive in. Buffers are nested across
budgets: the K=50 buffer is the first 50 of the K=250 buffer.

    energy_high: descending score (top-K Hopfield energy: the paper's rule)
    energy_low:  ascending score (bottom-K)
    random:      a seeded permutation of the sorted sample_ids (reservoir-style baseline)

A new strategy plugs in with ``@register_strategy("name")``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

Selector = Callable[[np.ndarray, np.ndarray, int], np.ndarray]
STRATEGIES: dict[str, Selector] = {}


def register_strategy(name: str) -> Callable[[Selector], Selector]:
    def deco(fn: Selector) -> Selector:
        STRATEGIES[name] = fn
        return fn

    return deco


@register_strategy("energy_high")
def rank_high(scores: np.ndarray, sample_ids: np.ndarray, seed: int) -> np.ndarray:
    return sample_ids[np.lexsort((sample_ids, -scores))]


@register_strategy("energy_low")
def rank_low(scores: np.ndarray, sample_ids: np.ndarray, seed: int) -> np.ndarray:
    return sample_ids[np.lexsort((sample_ids, scores))]


@register_strategy("random")
def rank_random(scores: np.ndarray, sample_ids: np.ndarray, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(np.sort(sample_ids))


def rank_samples(scores, sample_ids, strategy: str, *, seed: int = 0) -> np.ndarray:
    """All sample_ids in the order ``strategy`` would replay them."""
    if strategy not in STRATEGIES:
        raise ValueError(f"select_replay.strategies: unknown strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    scores = np.asarray(scores, dtype=np.float64)
    sample_ids = np.asarray(sample_ids, dtype=np.int64)
    if scores.shape != sample_ids.shape:
        raise ValueError(f"{scores.shape[0]} scores for {sample_ids.shape[0]} sample_ids")
    if not np.isfinite(scores).all():
        raise ValueError("replay scores contain NaN or inf; recompute the energies")
    if np.unique(sample_ids).size != sample_ids.size:
        raise ValueError("sample_ids are not unique")
    return STRATEGIES[strategy](scores, sample_ids, seed)


def select_replay(scores, sample_ids, strategy: str, budget: int, *, seed: int = 0) -> pd.DataFrame:
    """The replay buffer of ``budget`` samples: columns sample_id, strategy, budget, rank (0 = first), score, seed."""
    n = len(sample_ids)
    if isinstance(budget, bool) or not isinstance(budget, (int, np.integer)) or not 1 <= budget <= n:
        raise ValueError(f"select_replay.budgets: {budget!r} is not a valid budget; use an integer in [1, {n}] (the number of task-A samples)")
    order = rank_samples(scores, sample_ids, strategy, seed=seed)[:budget]
    score_of = dict(zip(np.asarray(sample_ids, dtype=np.int64).tolist(), np.asarray(scores, dtype=np.float64).tolist()))
    return pd.DataFrame(
        {
            "sample_id": order.astype(np.int64),
            "strategy": strategy,
            "budget": np.int64(budget),
            "rank": np.arange(budget, dtype=np.int64),
            "score": [score_of[int(s)] for s in order],
            "seed": np.int64(seed),
        }
    )


def arm_name(strategy: str, budget: int) -> str:
    return f"{strategy}-{budget}"
