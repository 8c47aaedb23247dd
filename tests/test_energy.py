"""hopfield_energy, nearest_neighbour_sqdist and beta_from_data against an independent fp64 NumPy brute force."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp

from hopfield_replay.energy import beta_from_data, hopfield_energy, nearest_neighbour_sqdist

FORMS = ("inner", "distance")


def np_energy(q, m, beta, form="inner", exclude_self=False, weights=None):
    """The module docstring's equations on the full N x M matrix, in fp64 NumPy."""
    q, m = np.asarray(q, np.float64), np.asarray(m, np.float64)
    if form == "inner":
        logits, base = beta * q @ m.T, 0.5 * (q * q).sum(1)
    else:
        logits, base = -0.5 * beta * ((q[:, None, :] - m[None, :, :]) ** 2).sum(-1), np.zeros(len(q))
    if weights is not None:
        with np.errstate(divide="ignore"):
            logits = logits + np.log(np.asarray(weights, np.float64))[None, :]
    if exclude_self:
        np.fill_diagonal(logits, -np.inf)
    return base - logsumexp(logits, axis=1) / beta


def np_nn_sqdist(q, m, exclude_self=False):
    d2 = ((np.asarray(q, np.float64)[:, None] - np.asarray(m, np.float64)[None]) ** 2).sum(-1)
    if exclude_self:
        np.fill_diagonal(d2, np.inf)
    return d2.min(1)


def data(n=37, d=11, offset=0.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + offset
    w = rng.uniform(0.2, 2.0, size=n)
    w[5] = 0.0  # a memory with no mass
    return x, w


def fp32_tolerance(x, ref):
    """1e-5 relative, plus a floor of 2e-6 of the cancellation scale mean |x - c|^2 / 2 (fp32 GEMM expansion)."""
    scale = 0.5 * ((x - x.mean(0)) ** 2).sum(1).mean()
    return 1e-5 * np.abs(ref) + 2e-6 * max(scale, 1.0)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_matches_numpy_fp64(form, exclude_self, weighted):
    x, w = data()
    beta = 0.7
    ref = np_energy(x, x, beta, form, exclude_self, w if weighted else None)
    got = hopfield_energy(torch.from_numpy(x), torch.from_numpy(x), beta, form=form, exclude_self=exclude_self,
                          weights=torch.from_numpy(w) if weighted else None)
    assert got.dtype == torch.float64 and got.shape == (37,)
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("chunks", [(1, 1), (1, 37), (37, 1), (7, 5), (13, 300), (36, 36), (4096, 4096)])
def test_independent_of_chunk_sizes(form, chunks):
    x, w = data()
    q = x[:23]
    ref = np_energy(q, x, 0.4, form, False, w)
    got = hopfield_energy(q, x, 0.4, form=form, weights=w, query_chunk=chunks[0], memory_chunk=chunks[1])
    np.testing.assert_allclose(got.numpy(), ref, rtol=1e-11, atol=1e-11)
    loo = hopfield_energy(x, x, 0.4, form=form, exclude_self=True, weights=w, query_chunk=chunks[0],
                          memory_chunk=chunks[1])
    np.testing.assert_allclose(loo.numpy(), np_energy(x, x, 0.4, form, True, w), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("exclude_self", [False, True])
@pytest.mark.parametrize("offset", [0.0, 3.0])
@pytest.mark.parametrize("chunks", [(4096, 4096), (50, 70)])
def test_fp32_accuracy(form, exclude_self, offset, chunks):
    """fp32 inputs: within 1e-5 relative (plus the cancellation floor) of fp64, also on off-centre data."""
    x, w = data(n=300, d=64, offset=offset, seed=1)
    beta = 1.0 / np.median(np_nn_sqdist(x, x, exclude_self=True))
    ref = np_energy(x, x, beta, form, exclude_self, w)
    got = hopfield_energy(torch.from_numpy(x).float(), torch.from_numpy(x).float(), beta, form=form,
                          exclude_self=exclude_self, weights=torch.from_numpy(w).float(),
                          query_chunk=chunks[0], memory_chunk=chunks[1])
    assert got.dtype == torch.float32
    err = np.abs(got.double().numpy() - ref)
    assert (err <= fp32_tolerance(x, ref)).all(), float((err / np.abs(ref)).max())


def test_extreme_beta_stays_finite_and_accurate():
    """A sharp beta: logits far below 0 (no underflow to -inf), and far apart between chunks (running max)."""
    x, _ = data(n=40, d=8, seed=3)
    for beta in (1e-3, 50.0, 1e4):
        for form in FORMS:
            ref = np_energy(x, x, beta, form, True)
            got = hopfield_energy(x, x, beta, form=form, exclude_self=True, query_chunk=6, memory_chunk=9)
            np.testing.assert_allclose(got.numpy(), ref, rtol=1e-10, atol=1e-10)
            got32 = hopfield_energy(torch.from_numpy(x).float(), torch.from_numpy(x).float(), beta, form=form,
                                    exclude_self=True, memory_chunk=9)
            assert (np.abs(got32.double().numpy() - ref) <= fp32_tolerance(x, ref)).all()


def test_no_memory_left_gives_infinite_energy():
    # leave-one-out on a single sample, or only zero weights: logsumexp over nothing = -inf, energy +inf
    assert hopfield_energy(np.ones((1, 3)), np.ones((1, 3)), 1.0, exclude_self=True).item() == math.inf
    e = hopfield_energy(np.ones((2, 3)), np.ones((4, 3)), 1.0, form="distance", weights=np.zeros(4))
    assert torch.isinf(e).all() and (e > 0).all()


def test_arrays_and_images_are_flattened():
    x, _ = data(n=12, d=12)
    images = x.reshape(12, 3, 2, 2)
    np.testing.assert_allclose(hopfield_energy(images, images, 0.5, form="distance").numpy(),
                               np_energy(x, x, 0.5, "distance"), rtol=1e-11)


@pytest.mark.parametrize("form", FORMS)
def test_gradient_matches_the_dense_formula(form):
    """With inputs that require grad (the trained MHN's loss) the energy is differentiable and unchanged."""
    x, w = data(n=20, d=6, seed=4)
    mem = torch.from_numpy(x[:9]).clone().requires_grad_(True)
    q = torch.from_numpy(x)
    e = hopfield_energy(q, mem, 0.8, form=form, weights=w[:9], query_chunk=7, memory_chunk=4)
    np.testing.assert_allclose(e.detach().numpy(), np_energy(x, x[:9], 0.8, form, False, w[:9]), rtol=1e-11)
    (g,) = torch.autograd.grad(e.sum(), mem)
    mem2 = torch.from_numpy(x[:9]).clone().requires_grad_(True)
    if form == "inner":
        dense = 0.5 * (q * q).sum(1) - torch.logsumexp(0.8 * q @ mem2.T + torch.from_numpy(w[:9]).log(), 1) / 0.8
    else:
        logits = -0.4 * ((q[:, None] - mem2[None]) ** 2).sum(-1) + torch.from_numpy(w[:9]).log()
        dense = -torch.logsumexp(logits, 1) / 0.8
    (g_ref,) = torch.autograd.grad(dense.sum(), mem2)
    np.testing.assert_allclose(g.numpy(), g_ref.numpy(), rtol=1e-9, atol=1e-12)


def test_bad_input_is_rejected_with_a_clear_message():
    x = np.ones((4, 3))
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        hopfield_energy(x, x, 0.0)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        hopfield_energy(x, x, -1.0)
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        hopfield_energy(x, x, float("inf"))
    with pytest.raises(ValueError, match="dimension 3 but memories 2"):
        hopfield_energy(x, np.ones((4, 2)), 1.0)
    with pytest.raises(ValueError, match="exclude_self=True needs queries == memories"):
        hopfield_energy(x, np.ones((5, 3)), 1.0, exclude_self=True)
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        hopfield_energy(x, x, 1.0, weights=[1.0, -0.1, 1.0, 1.0])
    with pytest.raises(ValueError, match="weights has 3 entries but there are 4 memories"):
        hopfield_energy(x, x, 1.0, weights=[1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="form='cosine' is not one of"):
        hopfield_energy(x, x, 1.0, form="cosine")
    with pytest.raises(ValueError, match="query_chunk and memory_chunk must be >= 1"):
        hopfield_energy(x, x, 1.0, memory_chunk=0)
    with pytest.raises(ValueError, match="queries is empty"):
        hopfield_energy(np.ones((0, 3)), x, 1.0)


@pytest.mark.parametrize("chunks", [(4096, 4096), (1, 1), (7, 5)])
@pytest.mark.parametrize("offset", [0.0, 5.0])
def test_nearest_neighbour_sqdist_matches_numpy(chunks, offset):
    x, _ = data(n=31, d=9, offset=offset, seed=5)
    kw = dict(query_chunk=chunks[0], memory_chunk=chunks[1])
    np.testing.assert_allclose(nearest_neighbour_sqdist(x, x, exclude_self=True, **kw).numpy(),
                               np_nn_sqdist(x, x, True), rtol=1e-12)
    np.testing.assert_allclose(nearest_neighbour_sqdist(x[:10] + 0.1, x, **kw).numpy(),
                               np_nn_sqdist(x[:10] + 0.1, x), rtol=1e-12)
    # fp32: the neighbour's distance is recomputed directly, so it carries no cancellation error
    got32 = nearest_neighbour_sqdist(torch.from_numpy(x).float(), torch.from_numpy(x).float(), exclude_self=True, **kw)
    np.testing.assert_allclose(got32.double().numpy(), np_nn_sqdist(x.astype(np.float32), x.astype(np.float32), True),
                               rtol=1e-5)
    with pytest.raises(ValueError, match="at least 2 rows"):
        nearest_neighbour_sqdist(x[:1], x[:1], exclude_self=True)


def test_beta_from_data_is_one_over_the_median_nn_distance():
    x, _ = data(n=40, d=7, seed=6)
    nn = np.sort(np_nn_sqdist(x, x, True))
    lower_median = nn[(len(nn) - 1) // 2]  # torch's median: the lower middle value for an even count
    assert beta_from_data(x, query_chunk=6, memory_chunk=11) == pytest.approx(1.0 / lower_median, rel=1e-12)
    assert beta_from_data(torch.from_numpy(x).float()) == pytest.approx(1.0 / lower_median, rel=1e-5)
    with pytest.raises(ValueError, match="duplicate samples"):
        beta_from_data(np.ones((5, 3)))


@pytest.mark.gpu
@pytest.mark.parametrize("form", FORMS)
def test_cuda_fp32_and_bf16_match_fp64(form):
    """CUDA: fp32 within the CPU tolerance; bf16 inputs (fp32 accumulation) within bf16's input rounding."""
    x, w = data(n=3000, d=256, offset=1.0, seed=7)
    beta = 1.0 / np.median(np_nn_sqdist(x[:500], x[:500], True))
    ref = np_energy(x, x, beta, form, True, w)
    xc = torch.from_numpy(x).float().cuda()
    wc = torch.from_numpy(w).float().cuda()
    got = hopfield_energy(xc, xc, beta, form=form, exclude_self=True, weights=wc, memory_chunk=1000)
    assert got.device.type == "cuda" and got.dtype == torch.float32
    assert (np.abs(got.double().cpu().numpy() - ref) <= fp32_tolerance(x, ref)).all()
    # bf16 inputs: each coordinate rounded to 8 significant bits; the energy moves by about
    # 2^-8 * beta * |x - c|^2 / 2 per term, i.e. ~1e-2 of the scale: compare against fp64 of the rounded inputs.
    xb = xc.to(torch.bfloat16)
    got16 = hopfield_energy(xb, xb, beta, form=form, exclude_self=True, weights=wc, memory_chunk=1000)
    assert got16.dtype == torch.float32
    xr = xb.double().cpu().numpy()
    ref16 = np_energy(xr, xr, beta, form, True, w)
    scale = 0.5 * ((xr - xr.mean(0)) ** 2).sum(1).mean()
    assert (np.abs(got16.double().cpu().numpy() - ref16) <= 1e-2 * np.abs(ref16) + 1e-2 * scale).all()
