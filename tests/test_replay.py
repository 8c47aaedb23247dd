"""Selectors: rankings, tie-breaking by sample_id, determinism, nested budgets, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from hopfield_replay.replay import STRATEGIES, rank_samples, register_strategy, select_replay


def test_energy_high_and_low_rank_by_score_and_break_ties_by_sample_id():
    ids = np.array([40, 10, 30, 20, 50])
    scores = np.array([1.0, 3.0, 3.0, 0.5, 1.0])
    assert rank_samples(scores, ids, "energy_high").tolist() == [10, 30, 40, 50, 20]
    assert rank_samples(scores, ids, "energy_low").tolist() == [20, 40, 50, 10, 30]


def test_rankings_do_not_depend_on_row_order():
    rng = np.random.default_rng(0)
    ids = rng.permutation(200) + 1000
    scores = rng.integers(0, 5, 200).astype(float)  # many ties
    perm = rng.permutation(200)
    for strategy in STRATEGIES:
        a = rank_samples(scores, ids, strategy, seed=3)
        b = rank_samples(scores[perm], ids[perm], strategy, seed=3)
        assert a.tolist() == b.tolist(), strategy


def test_random_is_seeded_and_budgets_are_nested():
    ids = np.arange(100)
    scores = np.zeros(100)
    a = select_replay(scores, ids, "random", 30, seed=1)
    assert a.sample_id.tolist() == select_replay(scores, ids, "random", 30, seed=1).sample_id.tolist()
    assert a.sample_id.tolist() != select_replay(scores, ids, "random", 30, seed=2).sample_id.tolist()
    small = select_replay(scores, ids, "random", 10, seed=1)
    assert small.sample_id.tolist() == a.sample_id.tolist()[:10]
    assert a["rank"].tolist() == list(range(30)) and (a.budget == 30).all() and (a.strategy == "random").all()


def test_selection_carries_scores():
    ids = np.array([5, 6, 7])
    out = select_replay(np.array([0.1, 0.9, 0.5]), ids, "energy_high", 2)
    assert out.sample_id.tolist() == [6, 7]
    assert out.score.tolist() == [0.9, 0.5]


@pytest.mark.parametrize("budget", [0, -1, 4, 2.5, True])
def test_bad_budget_names_the_field(budget):
    with pytest.raises(ValueError, match=r"select_replay.budgets: .* use an integer in \[1, 3\]"):
        select_replay(np.zeros(3), np.arange(3), "energy_high", budget)


def test_unknown_strategy_and_nan_scores():
    with pytest.raises(ValueError, match="unknown strategy 'top'"):
        rank_samples(np.zeros(3), np.arange(3), "top")
    with pytest.raises(ValueError, match="NaN"):
        rank_samples(np.array([0.0, np.nan, 1.0]), np.arange(3), "energy_high")
    with pytest.raises(ValueError, match="not unique"):
        rank_samples(np.zeros(3), np.array([1, 1, 2]), "energy_high")


def test_a_new_strategy_plugs_in():
    @register_strategy("test_abs")
    def rank_abs(scores, sample_ids, seed):
        return sample_ids[np.lexsort((sample_ids, -np.abs(scores)))]

    try:
        out = select_replay(np.array([-3.0, 1.0, 2.0]), np.array([1, 2, 3]), "test_abs", 2)
        assert out.sample_id.tolist() == [1, 3]
    finally:
        STRATEGIES.pop("test_abs")
