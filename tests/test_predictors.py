"""knn_distances and every registered predictor against an independent brute-force fp64 NumPy / scipy reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy.spatial.distance import cdist
from scipy.special import logsumexp
from scipy.stats import multivariate_normal, rankdata

from hopfield_replay import predictors as P
from hopfield_replay.energy import knn_distances

N, M, D, D_PIX = 60, 50, 12, 16
GRID = [0.1, 0.3, 3, 10, 30]
SNR = {500: 0.25, 100: 7.5}  # deliberately not in t order


def clustered(n, d, offset=3.0, seed=0, clusters=4):
    """Gaussian clusters around off-centre means; the cluster is the label."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.normal(size=(clusters, d)) + offset
    labels = rng.integers(0, clusters, size=n)
    return centres[labels] + 0.7 * rng.normal(size=(n, d)), labels


def np_energy(q, m, beta, form, exclude_self=False):
    """E = 1/2 |q|^2 - lse(beta q.x)/beta (inner) or -lse(-beta |q - x|^2 / 2)/beta (distance), dense fp64."""
    if form == "inner":
        logits, base = beta * q @ m.T, 0.5 * (q * q).sum(1)
    else:
        logits, base = -0.5 * beta * cdist(q, m, "sqeuclidean"), 0.0
    if exclude_self:
        np.fill_diagonal(logits, -np.inf)
    return base - logsumexp(logits, axis=1) / beta


def loo_sorted_distances(x):
    d = cdist(x, x)
    np.fill_diagonal(d, np.inf)
    return np.sort(d, axis=1)


def make_ctx(form="distance", dtype=torch.float64, pixels=False, **overrides):
    x_a, labels = clustered(N, D, seed=0)
    x_b, _ = clustered(M, D, offset=4.0, seed=1)
    rng = np.random.default_rng(2)
    beta = 1.0 / np.median(loo_sorted_distances(x_a)[:, 0] ** 2)
    kw = dict(
        x_a=torch.from_numpy(x_a).to(dtype), labels_a=labels, x_b=torch.from_numpy(x_b).to(dtype),
        pixels_a=torch.from_numpy(rng.uniform(-1, 1, size=(N, D_PIX))).to(dtype), model_space_is_pixels=pixels,
        beta=beta, form=form, beta_multiples=list(GRID), snr_betas=dict(SNR), knn_k=[1, 10],
        device=torch.device("cpu"),
        model_scores={"model_energy": rng.normal(size=N), "recon_error_a_t100": rng.normal(size=N),
                      "recon_error_a": rng.normal(size=N)},
    )
    kw.update(overrides)
    return P.PredictorContext(**kw)


# ---------------------------------------------------------------------------------------------- knn_distances


@pytest.mark.parametrize("chunks", [(4096, 4096), (7, 5), (1, 3), (60, 7)])
@pytest.mark.parametrize("k", [1, 3, 10])
def test_knn_distances_match_cdist(chunks, k):
    x, _ = clustered(N, D, offset=5.0, seed=3)
    kw = dict(query_chunk=chunks[0], memory_chunk=chunks[1])
    got = knn_distances(x, x, k, exclude_self=True, **kw)
    assert got.shape == (N, k) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), loo_sorted_distances(x)[:, :k], rtol=1e-12, atol=1e-12)
    q, m = x[:23] + 0.1, x[10:]
    np.testing.assert_allclose(knn_distances(q, m, k, **kw).numpy(), np.sort(cdist(q, m), 1)[:, :k],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("exclude_self", [False, True])
def test_knn_distances_with_ties_and_duplicates(exclude_self):
    """Points on a 3 x 3 x 3 grid: many equal distances and duplicate rows (distance 0 to another row)."""
    x = np.random.default_rng(4).integers(0, 3, size=(40, 3)).astype(np.float64)
    d = cdist(x, x)
    if exclude_self:
        np.fill_diagonal(d, np.inf)
    got = knn_distances(x, x, 8, exclude_self=exclude_self, query_chunk=7, memory_chunk=5)
    np.testing.assert_allclose(got.numpy(), np.sort(d, 1)[:, :8], rtol=1e-12, atol=1e-12)
    assert (got[:, 0] == 0).any() if exclude_self else (got[:, 0] == 0).all()


def test_knn_distances_fp32_carries_no_cancellation_error():
    x, _ = clustered(N, D, offset=50.0, seed=5)
    x32 = x.astype(np.float32)
    got = knn_distances(torch.from_numpy(x32), torch.from_numpy(x32), 5, exclude_self=True, memory_chunk=9)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.double().numpy(), loo_sorted_distances(x32.astype(np.float64))[:, :5], rtol=1e-5)


def test_knn_distances_rejects_bad_k():
    x = np.random.default_rng(6).normal(size=(5, 3))
    with pytest.raises(ValueError, match="k must be >= 1"):
        knn_distances(x, x, 0)
    with pytest.raises(TypeError, match="k must be an integer"):
        knn_distances(x, x, 2.5)
    with pytest.raises(ValueError, match="needs at least 6 memories, got 5"):
        knn_distances(x, x, 6)
    with pytest.raises(ValueError, match="needs at least 6 rows, got 5"):
        knn_distances(x, x, 5, exclude_self=True)
    with pytest.raises(ValueError, match="needs queries == memories"):
        knn_distances(x, x[:4], 1, exclude_self=True)


# ---------------------------------------------------------------------------------------------- predictors


@pytest.mark.parametrize("form", ["distance", "inner"])
def test_energy_columns_match_the_dense_formula(form):
    ctx = make_ctx(form)
    x_a, x_b = ctx.x_a.numpy(), ctx.x_b.numpy()
    table = P.compute_predictors(ctx, ["energy", "energy_beta_grid", "energy_snr"])
    e_a, e_b = np_energy(x_a, x_a, ctx.beta, form, True), np_energy(x_a, x_b, ctx.beta, form)
    np.testing.assert_allclose(table["energy_a"], e_a, rtol=1e-10)
    np.testing.assert_allclose(table["energy_b"], e_b, rtol=1e-10)
    np.testing.assert_allclose(table["energy_rise"], e_b - e_a, rtol=1e-9, atol=1e-10)
    for m, column in zip(GRID, ["energy_a_beta0p1x", "energy_a_beta0p3x", "energy_a_beta3x", "energy_a_beta10x",
                                "energy_a_beta30x"]):
        np.testing.assert_allclose(table[column], np_energy(x_a, x_a, m * ctx.beta, form, True), rtol=1e-10)
    for t, beta in SNR.items():
        np.testing.assert_allclose(table[f"energy_a_snr_t{t}"], np_energy(x_a, x_a, beta, form, True), rtol=1e-10)


def test_beta_grid_and_snr_column_names():
    ctx = make_ctx(beta_multiples=[0.1, 2.5, 1, 300.0], snr_betas={750: 0.1, 100: 9.0, 250: 2.0})
    assert list(P.compute_predictors(ctx, ["energy_beta_grid", "energy_snr"]).columns) == [
        "energy_a_beta0p1x", "energy_a_beta2p5x", "energy_a_beta1x", "energy_a_beta300x",
        "energy_a_snr_t100", "energy_a_snr_t250", "energy_a_snr_t750"]


def test_knn_columns_are_mean_leave_one_out_distances():
    ctx = make_ctx(knn_k=[1, 3, 10])
    table = P.compute_predictors(ctx, ["knn"])
    ref = loo_sorted_distances(ctx.x_a.numpy())
    assert list(table.columns) == ["knn1_dist", "knn3_dist", "knn10_dist"]
    for k in (1, 3, 10):
        np.testing.assert_allclose(table[f"knn{k}_dist"], ref[:, :k].mean(1), rtol=1e-12)


def test_kde_is_the_leave_one_out_gaussian_kde_at_scotts_bandwidth():
    ctx = make_ctx()
    x = ctx.x_a.numpy()
    h2 = np.var(x, axis=0, ddof=1).mean() * N ** (-2.0 / (D + 4))
    assert P.scott_bandwidth_sq(ctx.x_a) == pytest.approx(h2, rel=1e-12)
    # log N(x_k; x_j, h^2 I) for every pair, by scipy; drop j == k; -log of the mean over the other N - 1
    logpdf = np.stack([multivariate_normal(mean=x[j], cov=h2 * np.eye(D)).logpdf(x) for j in range(N)], axis=1)
    np.fill_diagonal(logpdf, -np.inf)
    ref = -(logsumexp(logpdf, axis=1) - np.log(N - 1))
    np.testing.assert_allclose(P.compute_predictors(ctx, ["kde"])["kde_neglogdensity"], ref, rtol=1e-10)


def test_kde_at_bandwidth_one_over_beta_is_rank_identical_to_the_energy():
    """Why the KDE uses Scott's rule: at h^2 = 1/beta it is beta * energy_a + const, the same ranking."""
    ctx = make_ctx("distance")
    energy_a = P.compute_predictors(ctx, ["energy"])["energy_a"].to_numpy()
    kde_at_beta = P.loo_kde_neglogdensity(ctx.x_a, 1.0 / ctx.beta).numpy()
    np.testing.assert_array_equal(rankdata(kde_at_beta), rankdata(energy_a))
    kde_scott = P.compute_predictors(ctx, ["kde"])["kde_neglogdensity"].to_numpy()
    assert not np.array_equal(rankdata(kde_scott), rankdata(energy_a))


def test_distances_to_class_and_global_means():
    ctx = make_ctx(labels_a=np.random.default_rng(7).choice([3, 8, 9], size=N))  # non-contiguous labels
    x, y = ctx.x_a.numpy(), ctx.labels_a
    table = P.compute_predictors(ctx, ["class_mean", "global_mean"])
    class_ref = np.array([np.linalg.norm(x[k] - x[y == y[k]].mean(0)) for k in range(N)])
    np.testing.assert_allclose(table["dist_class_mean"], class_ref, rtol=1e-12)
    np.testing.assert_allclose(table["dist_global_mean"], np.linalg.norm(x - x.mean(0), axis=1), rtol=1e-12)


def test_pixel_and_latent_statistics():
    ctx = make_ctx()
    table = P.compute_predictors(ctx, ["pixel_stats", "latent_stats"])
    u = (ctx.pixels_a.numpy() + 1.0) / 2.0
    np.testing.assert_allclose(table["pixel_mass"], u.mean(1), rtol=1e-12)
    np.testing.assert_allclose(table["pixel_norm"], np.sqrt((u**2).mean(1)), rtol=1e-12)
    x = ctx.x_a.numpy()
    np.testing.assert_allclose(table["latent_mass"], x.mean(1), rtol=1e-12)
    np.testing.assert_allclose(table["latent_norm"], np.sqrt((x**2).mean(1)), rtol=1e-12)
    assert list(P.compute_predictors(make_ctx(pixels=True), ["pixel_stats", "latent_stats"]).columns) == [
        "pixel_mass", "pixel_norm"]


EXPECTED_COLUMNS = [
    "energy_a", "energy_b", "energy_rise",
    "energy_a_beta0p1x", "energy_a_beta0p3x", "energy_a_beta3x", "energy_a_beta10x", "energy_a_beta30x",
    "energy_a_snr_t100", "energy_a_snr_t500",
    "model_energy", "recon_error_a_t100", "recon_error_a",
    "knn1_dist", "knn10_dist", "kde_neglogdensity", "dist_class_mean", "dist_global_mean",
    "pixel_mass", "pixel_norm", "latent_mass", "latent_norm",
]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_compute_predictors_table(dtype):
    ctx = make_ctx(dtype=dtype)
    table = P.compute_predictors(ctx)
    assert list(table.columns) == EXPECTED_COLUMNS
    assert table.shape == (N, len(EXPECTED_COLUMNS)) and (table.dtypes == np.float64).all()
    assert isinstance(table.index, pd.RangeIndex) and table.index[0] == 0
    for name, values in ctx.model_scores.items():
        np.testing.assert_array_equal(table[name], values)
    if dtype == torch.float32:  # fp32 inputs: close to the fp64 table
        ref = P.compute_predictors(make_ctx(dtype=torch.float64))
        np.testing.assert_allclose(table.to_numpy(), ref.to_numpy(), rtol=2e-4, atol=2e-4)
    # a subset asked in another order still comes in registry order
    subset = P.compute_predictors(ctx, ["pixel_stats", "knn", "energy"])
    assert list(subset.columns) == ["energy_a", "energy_b", "energy_rise", "knn1_dist", "knn10_dist",
                                    "pixel_mass", "pixel_norm"]
    assert P.compute_predictors(ctx, []).shape == (N, 0)


def test_unknown_predictor_is_rejected():
    with pytest.raises(ValueError, match=r"unknown predictor\(s\) \['herding'\]"):
        P.compute_predictors(make_ctx(), ["energy", "herding"])


def test_predictor_kinds():
    kinds = P.predictor_kinds(EXPECTED_COLUMNS + ["sample_id", "forgetting"])
    assert set(kinds) == set(EXPECTED_COLUMNS)
    assert {c for c, kind in kinds.items() if kind == "energy"} == {c for c in EXPECTED_COLUMNS if "energy_a" in c}
    assert {c for c, kind in kinds.items() if kind == "energy_task_b"} == {"energy_b", "energy_rise"}
    assert {c for c, kind in kinds.items() if kind == "baseline"} == {c for c in EXPECTED_COLUMNS if "energy_" not in c}


def test_forecasts_pass_through_the_registry_as_their_own_kind():
    """The forecast stage's columns are kind "forecast": never a baseline of claim 1, and absent unless given."""
    assert "forecast" in P.KINDS
    forecast_columns = ["proximity_b", "proximity_b_classifier", "grad_dot", "grad_cos", "probe_16", "probe_400"]
    assert P.predictor_kinds(forecast_columns) == dict.fromkeys(forecast_columns, "forecast")
    assert list(P.compute_predictors(make_ctx(), ["forecast"]).columns) == []
    ctx = make_ctx()
    ctx.forecasts = {"probe_16": np.arange(N, dtype=float)}
    table = P.compute_predictors(ctx, ["forecast", "pixel_stats"])
    assert list(table.columns) == ["probe_16", "pixel_mass", "pixel_norm"]
    np.testing.assert_array_equal(table["probe_16"], np.arange(N))
    ctx.forecasts = {"energy_like": np.zeros(N)}  # a column the entry does not declare
    with pytest.raises(ValueError, match="not matching its declared columns"):
        P.compute_predictors(ctx, ["forecast"])


@pytest.fixture
def restore_registry():
    saved, saved_columns = dict(P.PREDICTORS), dict(P._COLUMNS)
    yield
    P.PREDICTORS.clear(), P.PREDICTORS.update(saved)
    P._COLUMNS.clear(), P._COLUMNS.update(saved_columns)


def test_register_predictor_adds_a_user_predictor(restore_registry):
    @P.register_predictor("first_coordinate", "energy")
    def first_coordinate(ctx):
        return {"first_coordinate": ctx.x_a[:, 0]}

    table = P.compute_predictors(make_ctx())
    assert list(table.columns) == EXPECTED_COLUMNS + ["first_coordinate"]
    np.testing.assert_array_equal(table["first_coordinate"], make_ctx().x_a[:, 0].numpy())
    assert P.predictor_kinds(["first_coordinate"]) == {"first_coordinate": "energy"}

    @P.register_predictor("bad_name", "baseline")
    def bad_name(ctx):
        return {"something_else": np.zeros(N)}

    with pytest.raises(ValueError, match="not matching its declared columns"):
        P.compute_predictors(make_ctx(), ["bad_name"])

    @P.register_predictor("bad_shape", "baseline")
    def bad_shape(ctx):
        return {"bad_shape": np.zeros(N + 1)}

    with pytest.raises(ValueError, match=r"of shape \(61,\), not \(60,\)"):
        P.compute_predictors(make_ctx(), ["bad_shape"])
    with pytest.raises(ValueError, match="kind='oracle' is not one of"):
        P.register_predictor("x", "oracle")


def test_context_rejects_mismatched_inputs():
    with pytest.raises(ValueError, match="x_a has 60 rows but labels_a 59"):
        make_ctx(labels_a=np.zeros(N - 1, dtype=int))
    with pytest.raises(ValueError, match="different dimensions"):
        make_ctx(x_b=torch.zeros(M, D + 1, dtype=torch.float64))
    with pytest.raises(ValueError, match="form='cosine'"):
        make_ctx(form="cosine")
