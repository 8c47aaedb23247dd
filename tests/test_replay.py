"""Selectors: rankings vs independent NumPy / SciPy references, tie-breaking by sample_id, determinism and seeds,
nested budgets, class balance, soft sampling probabilities, metadata, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats
from scipy.spatial.distance import cdist

from hopfield_replay.replay import (
    STRATEGIES,
    STRATEGY_INFO,
    SelectionInputs,
    rank_inputs,
    rank_samples,
    register_strategy,
    select_replay,
)


def _inputs(n=60, d=4, n_classes=3, seed=0, **kw):
    """Shuffled, non-contiguous ids with tied scores, labels and continuous features."""
    rng = np.random.default_rng(seed)
    return SelectionInputs(scores=rng.integers(0, 6, n).astype(float), sample_ids=rng.permutation(n) * 7 + 100,
                           labels=rng.integers(0, n_classes, n), features=rng.normal(size=(n, d)), **kw)


def _permuted(inp: SelectionInputs, perm: np.ndarray, **kw) -> SelectionInputs:
    return SelectionInputs(inp.scores[perm], inp.sample_ids[perm], inp.labels[perm], inp.features[perm],
                           **{"seed": inp.seed, "temperature": inp.temperature, **kw})


# --- the paper's arms and the generic high / low -----------------------------------------------------------

def test_energy_high_and_low_rank_by_score_and_break_ties_by_sample_id():
    ids = np.array([40, 10, 30, 20, 50])
    scores = np.array([1.0, 3.0, 3.0, 0.5, 1.0])
    assert rank_samples(scores, ids, "energy_high").tolist() == [10, 30, 40, 50, 20]
    assert rank_samples(scores, ids, "energy_low").tolist() == [20, 40, 50, 10, 30]
    assert rank_samples(scores, ids, "high").tolist() == [10, 30, 40, 50, 20]
    assert rank_samples(scores, ids, "low").tolist() == [20, 40, 50, 10, 30]
    assert rank_samples(scores, ids, "energy_high", budget=2).tolist() == [10, 30]
    rng = np.random.default_rng(8)  # many ties, many rows: reference = Python's sort on (score, id) tuples
    ids, scores = rng.permutation(500) * 3, rng.integers(0, 5, 500).astype(float)
    rows = list(zip(scores.tolist(), ids.tolist()))
    assert rank_samples(scores, ids, "high").tolist() == [i for _, i in sorted(rows, key=lambda r: (-r[0], r[1]))]
    assert rank_samples(scores, ids, "low").tolist() == [i for _, i in sorted(rows)]


def test_oracle_takes_exactly_the_most_forgotten_k():
    rng = np.random.default_rng(4)
    forgetting = rng.normal(size=300)
    ids = rng.permutation(300) + 5000
    inp = SelectionInputs(forgetting, ids)
    for k in (1, 10, 75, 300):
        expected = ids[np.argsort(-forgetting)[:k]]  # continuous scores: no ties
        assert rank_inputs(inp, "oracle", k).tolist() == expected.tolist()
    assert STRATEGY_INFO["oracle"].uses_task_b and STRATEGY_INFO["oracle_per_class"].uses_task_b
    assert not any(info.uses_task_b for name, info in STRATEGY_INFO.items() if not name.startswith("oracle"))


# --- every strategy: row order, nesting, seeds -------------------------------------------------------------

@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_rankings_do_not_depend_on_row_order(strategy):
    inp = _inputs(seed=1)
    perm = np.random.default_rng(9).permutation(len(inp))
    for seed in (0, 3):
        a = rank_inputs(_permuted(inp, np.arange(len(inp)), seed=seed), strategy)
        b = rank_inputs(_permuted(inp, perm, seed=seed), strategy)
        assert a.tolist() == b.tolist()
        assert sorted(a.tolist()) == sorted(inp.sample_ids.tolist())


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_budgets_are_nested(strategy):
    inp = _inputs(seed=2)
    for seed in (0, 5):
        inp_s = _permuted(inp, np.arange(len(inp)), seed=seed)
        full = rank_inputs(inp_s, strategy).tolist()
        for k in (1, 7, 25, 59):
            assert rank_inputs(inp_s, strategy, k).tolist() == full[:k], k
            assert select_replay(inp_s, strategy, k).sample_id.tolist() == full[:k], k


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_seeded_strategies_depend_on_the_seed_and_only_they_do(strategy):
    inp = _inputs(seed=3)
    same = rank_inputs(_permuted(inp, np.arange(len(inp)), seed=11), strategy, 20).tolist()
    assert same == rank_inputs(_permuted(inp, np.arange(len(inp)), seed=11), strategy, 20).tolist()
    others = [rank_inputs(_permuted(inp, np.arange(len(inp)), seed=s), strategy, 20).tolist() for s in (12, 13)]
    if STRATEGY_INFO[strategy].seeded:
        assert all(o != same for o in others)
    else:
        assert all(o == same for o in others)


def test_random_is_seeded_and_budgets_are_nested():
    ids, scores = np.arange(100), np.zeros(100)
    a = select_replay(SelectionInputs(scores, ids, seed=1), "random", 30)
    assert a.sample_id.tolist() == np.random.default_rng(1).permutation(ids)[:30].tolist()  # unchanged behaviour
    assert a.sample_id.tolist() != select_replay(SelectionInputs(scores, ids, seed=2), "random", 30).sample_id.tolist()
    small = select_replay(SelectionInputs(scores, ids, seed=1), "random", 10)
    assert small.sample_id.tolist() == a.sample_id.tolist()[:10]
    assert a["rank"].tolist() == list(range(30)) and (a.budget == 30).all() and (a.strategy == "random").all()
    assert (a.seed == 1).all()


def test_selection_carries_scores():
    inp = SelectionInputs(np.array([0.1, 0.9, 0.5]), np.array([5, 6, 7]))
    out = select_replay(inp, "energy_high", 2)
    assert out.sample_id.tolist() == [6, 7]
    assert out.score.tolist() == [0.9, 0.5]
    assert list(out.columns) == ["sample_id", "strategy", "budget", "rank", "score", "seed"]
    named = select_replay(inp, "high", 2, score_name="pixel_mass")
    assert (named.score_name == "pixel_mass").all() and named.sample_id.tolist() == [6, 7]
    # the score of a selected sample follows its id, whatever row it came from
    inp2 = _inputs(seed=6)
    table = select_replay(inp2, "kcenter", 15)
    score_of = pd.Series(inp2.scores, index=inp2.sample_ids)
    assert table.score.tolist() == score_of.loc[table.sample_id].tolist()


# --- class_balanced ----------------------------------------------------------------------------------------

def test_class_balanced_prefixes_hold_floor_or_ceil_per_class():
    sizes = np.array([10, 7, 12])
    classes = np.array([0, 4, 9])
    labels = np.repeat(classes, sizes)
    rng = np.random.default_rng(0)
    perm = rng.permutation(labels.size)
    ids = rng.choice(10_000, labels.size, replace=False)
    label_of = dict(zip(ids.tolist(), labels[perm].tolist()))
    first_classes = set()
    for seed in range(6):
        inp = SelectionInputs(np.zeros(labels.size), ids, labels=labels[perm], seed=seed)
        order = rank_inputs(inp, "class_balanced")
        got = np.array([label_of[i] for i in order.tolist()])
        first_classes.add(int(got[0]))
        for k in range(1, labels.size + 1):
            counts = np.array([(got[:k] == c).sum() for c in classes])
            if k <= len(classes) * sizes.min():
                assert counts.min() == k // 3 and counts.max() == -(-k // 3), (seed, k, counts)
            # as balanced as possible: a class is more than 1 behind another only once it has run out
            for a in range(3):
                for b in range(3):
                    assert counts[a] <= counts[b] + 1 or counts[b] == sizes[b], (seed, k, counts)
            assert rank_inputs(inp, "class_balanced", k).tolist() == order[:k].tolist()
    assert len(first_classes) > 1  # the class order is seeded


def test_class_balanced_is_random_within_a_class():
    labels = np.repeat([0, 1], 50)
    ids = np.arange(100)
    firsts = {int(rank_inputs(SelectionInputs(np.zeros(100), ids, labels=labels, seed=s), "class_balanced", 2).min())
              for s in range(20)}
    assert len(firsts) > 5


# --- kcenter and herding vs brute-force fp64 references ------------------------------------------------------

def _kcenter_reference(x: np.ndarray, k: int) -> list[int]:
    d = cdist(x, x)
    chosen = [int(np.argmin(cdist(x, x.mean(axis=0, keepdims=True))[:, 0]))]
    while len(chosen) < k:
        m = d[:, chosen].min(axis=1)
        m[chosen] = -np.inf
        chosen.append(int(np.argmax(m)))
    return chosen


def _herding_reference(x: np.ndarray, k: int) -> list[int]:
    mu = x.mean(axis=0, keepdims=True)
    chosen: list[int] = []
    while len(chosen) < k:
        means = (x[chosen].sum(axis=0) + x) / (len(chosen) + 1)
        cost = cdist(means, mu)[:, 0]
        cost[chosen] = np.inf
        chosen.append(int(np.argmin(cost)))
    return chosen


@pytest.mark.parametrize("strategy,reference", [("kcenter", _kcenter_reference), ("herding", _herding_reference)])
def test_diversity_selectors_match_brute_force(strategy, reference):
    rng = np.random.default_rng(7)
    x = rng.normal(size=(40, 5)) * rng.uniform(0.5, 3, 5)
    ids = np.arange(40) * 3 + 1  # sorted ids, so reference row indices map straight to ids
    inp = SelectionInputs(rng.normal(size=40), ids, features=x)
    assert rank_inputs(inp, strategy, 40).tolist() == ids[reference(x, 40)].tolist()
    # shuffled rows give the same buffer
    perm = rng.permutation(40)
    inp_p = SelectionInputs(inp.scores[perm], ids[perm], features=x[perm])
    assert rank_inputs(inp_p, strategy, 12).tolist() == ids[reference(x, 12)].tolist()


def test_kcenter_ties_go_to_the_smaller_sample_id():
    # corners of a square: all equidistant from the mean; then the opposite corner; then two equidistant corners
    x = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    ids = np.array([30, 20, 40, 10])
    assert rank_inputs(SelectionInputs(np.zeros(4), ids, features=x), "kcenter").tolist() == [10, 30, 20, 40]


def test_kcenter_with_duplicate_points_never_repeats_a_sample():
    x = np.repeat(np.eye(3), 4, axis=0)  # 3 distinct points, each 4 times
    out = rank_inputs(SelectionInputs(np.zeros(12), np.arange(12), features=x), "kcenter")
    assert sorted(out.tolist()) == list(range(12))
    assert {int(i) // 4 for i in out[:3]} == {0, 1, 2}  # the first 3 cover the 3 distinct points


# --- soft sampling ------------------------------------------------------------------------------------------

def test_soft_first_pick_and_top2_inclusion_follow_softmax():
    scores = np.array([0.3, -1.2, 2.0, 0.9, -0.1])
    ids = np.array([11, 12, 13, 14, 15])
    tau = 0.7
    z = (scores - scores.mean()) / scores.std()
    p = np.exp(z / tau) / np.exp(z / tau).sum()
    draws = 4000
    top2 = np.array([rank_samples(scores, ids, "soft", seed=s, budget=2, temperature=tau) for s in range(draws)])
    first = np.array([(top2[:, 0] == i).sum() for i in ids])
    assert stats.chisquare(first, p * draws).pvalue > 1e-3
    # sequential sampling without replacement: P(i in top 2) = p_i + sum_{j != i} p_j p_i / (1 - p_j)
    p_in2 = np.array([p[i] + sum(p[j] * p[i] / (1 - p[j]) for j in range(5) if j != i) for i in range(5)])
    emp = np.array([(top2 == i).any(axis=1).mean() for i in ids])
    assert np.abs(emp - p_in2).max() < 4 * np.sqrt(0.25 / draws)


def test_soft_temperature_limits_and_scale_invariance():
    rng = np.random.default_rng(5)
    scores = rng.normal(size=30)
    ids = np.arange(30)
    high = rank_samples(scores, ids, "high")
    for s in range(5):
        assert rank_samples(scores, ids, "soft", seed=s, temperature=1e-9).tolist() == high.tolist()
        # z-scoring makes tau unit-free: an affine change of the score changes nothing
        assert (rank_samples(scores, ids, "soft", seed=s).tolist()
                == rank_samples(1e6 * scores - 3.0, ids, "soft", seed=s).tolist())
    firsts = np.array([rank_samples(scores[:5], ids[:5], "soft", seed=s, budget=1, temperature=1e6)[0]
                       for s in range(2000)])
    assert stats.chisquare(np.bincount(firsts, minlength=5)).pvalue > 1e-3  # ~uniform
    constant = np.array([rank_samples(np.ones(5), ids[:5], "soft", seed=s, budget=1)[0] for s in range(2000)])
    assert stats.chisquare(np.bincount(constant, minlength=5)).pvalue > 1e-3  # std 0 -> uniform


# --- class-stratified rankings ------------------------------------------------------------------------------

def _per_class_reference(scores, ids, labels, descending: bool) -> list:
    """Independent reference: each class sorted by (score, id) in plain Python, then dealt out round-robin, the
    classes in ascending label in every round."""
    by_class = {}
    for s, i, c in sorted(zip(scores.tolist(), ids.tolist(), labels.tolist()),
                          key=lambda r: ((-r[0] if descending else r[0]), r[1])):
        by_class.setdefault(c, []).append(i)
    out = []
    for r in range(max(len(v) for v in by_class.values())):
        out += [by_class[c][r] for c in sorted(by_class) if r < len(by_class[c])]
    return out


@pytest.mark.parametrize("strategy,descending", [("high_per_class", True), ("low_per_class", False),
                                                 ("energy_high_per_class", True), ("oracle_per_class", True)])
def test_per_class_rankings_match_a_round_robin_of_sorted_classes(strategy, descending):
    rng = np.random.default_rng(5)
    for n, n_classes in ((40, 3), (300, 5)):  # unequal class sizes, tied scores, shuffled ids
        labels = rng.choice(np.array([7, 2, 4, 9, 0])[:n_classes], n, p=np.linspace(1, 2, n_classes) / np.linspace(
            1, 2, n_classes).sum())
        scores, ids = rng.integers(0, 8, n).astype(float), rng.permutation(n) * 5 + 3
        got = rank_samples(scores, ids, strategy, labels=labels)
        assert got.tolist() == _per_class_reference(scores, ids, labels, descending)
        if descending:  # inside each class: exactly the class's own top-K order
            for c in np.unique(labels):
                members = set(ids[labels == c].tolist())
                mine = [i for i in got.tolist() if i in members]
                assert mine == rank_samples(scores[labels == c], ids[labels == c], "high").tolist()


def test_per_class_buffers_have_class_balanced_shares():
    rng = np.random.default_rng(6)
    labels = np.repeat([0, 1, 2, 3], [30, 50, 45, 60])
    ids, scores = rng.permutation(labels.size) + 10, rng.normal(size=labels.size) + 3 * (labels == 1)
    order = rank_samples(scores, ids, "high_per_class", labels=labels)
    top = rank_samples(scores, ids, "high", budget=40)
    label_of = dict(zip(ids.tolist(), labels.tolist()))
    for k in range(1, 121):  # until the smallest class runs out: floor or ceil of k / 4 per class
        counts = np.bincount([label_of[i] for i in order[:k].tolist()], minlength=4)
        assert counts.min() == k // 4 and counts.max() == -(-k // 4), (k, counts)
        if k % 4 == 0:
            balanced = rank_samples(scores, ids, "class_balanced", labels=labels, seed=3, budget=k)
            assert (np.bincount([label_of[i] for i in balanced.tolist()], minlength=4) == counts).all()
    assert np.bincount([label_of[i] for i in top.tolist()], minlength=4)[1] > 20  # the plain top-K is skewed


# --- registry, metadata and bad input ---------------------------------------------------------------------

def test_metadata_covers_every_strategy():
    assert set(STRATEGY_INFO) == set(STRATEGIES)
    assert {n for n, i in STRATEGY_INFO.items() if i.seeded} == {"random", "class_balanced", "soft"}
    assert {n for n, i in STRATEGY_INFO.items() if i.needs_features} == {"kcenter", "herding"}
    assert {n for n, i in STRATEGY_INFO.items() if i.needs_labels} == {
        "class_balanced", "high_per_class", "low_per_class", "energy_high_per_class", "oracle_per_class"}
    assert all(i.doc for i in STRATEGY_INFO.values())


@pytest.mark.parametrize("budget", [0, -1, 4, 2.5, True])
def test_bad_budget_says_what_is_accepted(budget):
    with pytest.raises(ValueError, match=r"not a valid budget; use an integer in \[1, 3\]"):
        select_replay(SelectionInputs(np.zeros(3), np.arange(3)), "energy_high", budget)
    with pytest.raises(ValueError, match=r"use an integer in \[1, 3\]"):
        rank_samples(np.zeros(3), np.arange(3), "energy_high", budget=budget)


def test_unknown_strategy_and_bad_inputs():
    with pytest.raises(ValueError, match="unknown strategy 'top'"):
        rank_samples(np.zeros(3), np.arange(3), "top")
    with pytest.raises(ValueError, match="NaN"):
        rank_samples(np.array([0.0, np.nan, 1.0]), np.arange(3), "energy_high")
    with pytest.raises(ValueError, match="not unique"):
        rank_samples(np.zeros(3), np.array([1, 1, 2]), "energy_high")
    with pytest.raises(ValueError, match="2 scores|scores for"):
        SelectionInputs(np.zeros(2), np.arange(3))
    with pytest.raises(ValueError, match=r"features have shape \(2, 4\); expected .* \(3, d\)"):
        SelectionInputs(np.zeros(3), np.arange(3), features=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"labels have shape"):
        SelectionInputs(np.zeros(3), np.arange(3), labels=np.zeros(4))
    with pytest.raises(ValueError, match="temperature"):
        SelectionInputs(np.zeros(3), np.arange(3), temperature=0.0)
    with pytest.raises(TypeError, match="SelectionInputs"):
        select_replay(np.zeros(3), "energy_high", 2)


@pytest.mark.parametrize("strategy,missing", [("class_balanced", "labels"), ("kcenter", "features"),
                                              ("herding", "features")])
def test_missing_labels_or_features_are_named(strategy, missing):
    with pytest.raises(ValueError, match=f"strategy '{strategy}' needs {missing}"):
        rank_samples(np.zeros(3), np.arange(3), strategy)


def test_a_new_strategy_plugs_in():
    @register_strategy("test_abs", doc="descending |score|")
    def rank_abs(inputs, budget):
        return inputs.sample_ids[np.lexsort((inputs.sample_ids, -np.abs(inputs.scores)))][:budget]

    @register_strategy("test_broken")
    def rank_broken(inputs, budget):
        return inputs.sample_ids[:1]

    try:
        inp = SelectionInputs(np.array([-3.0, 1.0, 2.0]), np.array([1, 2, 3]))
        assert select_replay(inp, "test_abs", 2).sample_id.tolist() == [1, 3]
        assert rank_samples(inp.scores, inp.sample_ids, "test_abs").tolist() == [1, 3, 2]
        assert STRATEGY_INFO["test_abs"].doc == "descending |score|" and not STRATEGY_INFO["test_abs"].seeded
        with pytest.raises(ValueError, match="already registered"):
            register_strategy("test_abs")(rank_abs)
        with pytest.raises(ValueError, match="'test_broken' returned 1 ids; expected 2"):
            rank_inputs(inp, "test_broken", 2)
    finally:
        for name in ("test_abs", "test_broken"):
            STRATEGIES.pop(name)
            STRATEGY_INFO.pop(name)


def test_arm_names_are_the_registered_strategies():
    """arms.py (the leaf module params validation reads) and the selectors registered here cannot drift: the same
    names in the same order (the order error messages list them in), the same ceilings."""
    from hopfield_replay import arms

    assert tuple(STRATEGIES) == arms.STRATEGY_NAMES
    assert {n for n, i in STRATEGY_INFO.items() if i.uses_task_b} == set(arms.ORACLE_STRATEGIES)
    assert {n for n in STRATEGIES if n.endswith(arms.PER_CLASS)} == {n for n, i in STRATEGY_INFO.items()
                                                                       if i.needs_labels} - {"class_balanced"}
    assert {strategy for _, strategy in arms.SUFFIXES} <= set(STRATEGIES)


def test_parse_arm_maps_names_to_strategy_and_score_column():
    from hopfield_replay.arms import parse_arm

    assert parse_arm("energy_high", "energy_a") == ("energy_high", "energy_a")
    assert parse_arm("soft", "energy_rise") == ("soft", "energy_rise")
    assert parse_arm("random", "energy_a") == ("random", "energy_a")
    assert parse_arm("oracle", "energy_a") == ("oracle", "oracle")
    assert parse_arm("pixel_mass_high", "energy_a") == ("high", "pixel_mass")
    assert parse_arm("recon_error_a_low", "energy_a") == ("low", "recon_error_a")
    assert parse_arm("energy_high_per_class", "energy_a") == ("energy_high_per_class", "energy_a")
    assert parse_arm("oracle_per_class", "energy_a") == ("oracle_per_class", "oracle")
    assert parse_arm("pixel_mass_high_per_class", "energy_a") == ("high_per_class", "pixel_mass")
    assert parse_arm("knn10_dist_low_per_class", "energy_a") == ("low_per_class", "knn10_dist")
    for bad in ("top", "_high", "highest", "_high_per_class", "per_class"):
        with pytest.raises(ValueError, match=f"unknown arm '{bad}'"):
            parse_arm(bad, "energy_a")
