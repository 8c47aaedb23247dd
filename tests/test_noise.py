"""The fixed measurement noise (noise.py): Philox4x32-10 against Random123's known answers and an independent
pure-Python reference, Box-Muller against numpy in fp64, the (seed, sample_id, t) contract, statistics, CUDA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from hopfield_replay.measures import noise
from hopfield_replay.models import DDPMConfig, PixelDDPM
from hopfield_replay.measures.noise import fixed_noise, philox4x32, words_to_normals
from hopfield_replay.measures.reconstruction import denoising_energy, reconstruction_error

pytestmark = pytest.mark.usefixtures("one_thread")

MASK = 2**32 - 1
# Random123 tests/kat_vectors (github.com/DEShawResearch/random123), the "philox4x32 10" lines: counter, key, output.
KAT = [
    ((0x00000000, 0x00000000, 0x00000000, 0x00000000), (0x00000000, 0x00000000),
     (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF),
     (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]


def reference_philox(counter, key, rounds=10):
    """Philox4x32 with Python ints (full-width products), written from the paper, independent of noise.py."""
    c, (k0, k1) = list(counter), key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + 0x9E3779B9) & MASK, (k1 + 0xBB67AE85) & MASK
        p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
        c = [(p1 >> 32) ^ c[1] ^ k0, p1 & MASK, (p0 >> 32) ^ c[3] ^ k1, p0 & MASK]
    return tuple(c)


def reference_noise(sample_id, t, numel, seed):
    """A sample's noise (n values, float64) by the module docstring: reference words, numpy Box-Muller."""
    words = np.array([reference_philox((b, sample_id, t, 0), (seed & MASK, seed >> 32)) for b in range(-(-numel // 4))],
                     dtype=np.float64)
    u = (words + 0.5) / 2.0**32
    radius, angle = np.sqrt(-2.0 * np.log(u[:, 0::2])), 2.0 * np.pi * u[:, 1::2]
    z = np.stack([radius[:, 0] * np.cos(angle[:, 0]), radius[:, 0] * np.sin(angle[:, 0]),
                  radius[:, 1] * np.cos(angle[:, 1]), radius[:, 1] * np.sin(angle[:, 1])], axis=1)
    return z.reshape(-1)[:numel]


def torch_words(counters, key, device="cpu"):
    words = philox4x32([torch.tensor(col, dtype=torch.int64, device=device) for col in zip(*counters)], key)
    return list(zip(*(w.cpu().tolist() for w in words)))


@pytest.mark.parametrize("counter, key, want", KAT)
def test_known_answers_of_random123(counter, key, want):
    assert reference_philox(counter, key) == want
    assert torch_words([counter], key) == [want]


def test_torch_philox_equals_the_reference_word_for_word():
    rng = np.random.default_rng(0)
    edges = [0, 1, 0xFFFF, 0x10000, 2**31, MASK - 1, MASK]
    counters = [tuple(int(v) for v in rng.choice(edges, 4)) for _ in range(100)]
    counters += [tuple(int(v) for v in row) for row in rng.integers(0, 2**32, (300, 4))]
    keys = [(0, 0), (MASK, MASK), (0, MASK), (MASK, 0)]
    keys += [tuple(int(v) for v in k) for k in rng.integers(0, 2**32, (4, 2))]
    for key in keys:
        assert torch_words(counters, key) == [reference_philox(c, key) for c in counters]
    assert torch_words(counters[:50], keys[-1]) != torch_words(counters[:50], keys[-2])  # the key matters


def test_normals_follow_the_documented_map():
    rng = np.random.default_rng(1)
    table = np.concatenate([rng.integers(0, 2**32, (4, 500)), [[0, MASK], [MASK, 0], [MASK, 0], [0, MASK]]], axis=1)
    got = words_to_normals([torch.from_numpy(row) for row in table]).numpy()  # with the extremes of u
    u = (table.astype(np.float64) + 0.5) / 2.0**32
    r01, r23 = np.sqrt(-2 * np.log(u[0])), np.sqrt(-2 * np.log(u[2]))
    want = np.stack([r01 * np.cos(2 * np.pi * u[1]), r01 * np.sin(2 * np.pi * u[1]),
                     r23 * np.cos(2 * np.pi * u[3]), r23 * np.sin(2 * np.pi * u[3])], axis=-1).reshape(-1)
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-15)
    assert np.abs(got).max() < math.sqrt(-2 * math.log(0.5 / 2**32)) + 1e-9  # u never 0: finite normals


@pytest.mark.parametrize("shape, seed", [((1, 3, 5), 7), ((2, 4, 4), 2**40 + 5), ((6,), 0)])
def test_fixed_noise_is_the_documented_layout(shape, seed):
    ids, t = [0, 3, MASK], 999
    got = fixed_noise(ids, t, shape, seed)
    assert got.shape == (3, *shape) and got.dtype == torch.float32 and got.device.type == "cpu"
    for row, sid in zip(got, ids):
        want = reference_noise(sid, t, math.prod(shape), seed)
        np.testing.assert_allclose(row.reshape(-1).double().numpy(), want, rtol=1e-6, atol=1e-6)


def test_noise_is_a_function_of_seed_sample_and_t_only(monkeypatch):
    shape, t, seed = (2, 5, 3), 250, 11
    ids = np.random.default_rng(2).permutation(1000)[:64]
    full = fixed_noise(ids, t, shape, seed)
    # batch composition, size and order do not matter; nor the id container
    for batch in (ids[:7], ids[7:14], ids[::-1], ids[[5]]):
        rows = [int(np.flatnonzero(ids == i)[0]) for i in batch]
        assert torch.equal(fixed_noise(batch, t, shape, seed), full[rows])
    assert torch.equal(fixed_noise(ids.tolist(), t, shape, seed), full)
    assert torch.equal(fixed_noise(torch.from_numpy(ids), t, shape, seed), full)
    # nor the chunking of the computation, nor the thread count
    monkeypatch.setattr(noise, "BLOCK_BUDGET", 3)
    assert torch.equal(fixed_noise(ids, t, shape, seed), full)
    monkeypatch.undo()
    torch.set_num_threads(2)
    try:
        assert torch.equal(fixed_noise(ids, t, shape, seed), full)
    finally:
        torch.set_num_threads(1)
    # into a given buffer
    buf = torch.full((64, *shape), float("nan"))
    assert fixed_noise(ids, t, shape, seed, out=buf) is buf and torch.equal(buf, full)
    # each of the three changes every value
    for other in (fixed_noise(ids, t + 1, shape, seed), fixed_noise(ids, t, shape, seed + 1),
                  fixed_noise(ids, t, shape, seed + 2**32), fixed_noise(ids + 1, t, shape, seed)):
        assert not torch.isclose(other, full).any()
    assert fixed_noise([], t, shape, seed).shape == (0, *shape)


def test_results_through_the_measurement_do_not_depend_on_batch_or_order():
    """On a tiny real diffusers UNet: batch 7 vs 64 and a shuffled sample order give the same errors."""
    torch.manual_seed(0)
    model = PixelDDPM.from_config(DDPMConfig(resolution=8, block_out_channels=[8, 16], norm_num_groups=4))
    x0 = torch.rand(20, 1, 8, 8) * 2 - 1
    ids, ts = np.arange(500, 520), [10, 400, 900]
    kwargs = dict(seed=3, progress=False)
    ref = reconstruction_error(model, x0, ids, ts, batch_size=64, **kwargs)
    energy = denoising_energy(model, x0, ids, ts, batch_size=64, **kwargs)
    perm = np.random.default_rng(3).permutation(20)
    torch.testing.assert_close(reconstruction_error(model, x0, ids, ts, batch_size=7, **kwargs), ref,
                               rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reconstruction_error(model, x0[perm], ids[perm], ts, batch_size=7, **kwargs),
                               ref[perm], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(denoising_energy(model, x0[perm], ids[perm], ts, batch_size=7, **kwargs),
                               energy[perm], rtol=1e-5, atol=1e-6)
    # the noise is the sample's own: other ids, other errors
    other = reconstruction_error(model, x0, ids + 100, ts, batch_size=64, **kwargs)
    assert not torch.isclose(other, ref, rtol=1e-3).all()


def test_statistics_of_the_noise():
    n_ids, numel = 100, 1000
    z = fixed_noise(range(n_ids), 500, (numel,), 0).double()
    flat = z.reshape(-1).numpy()
    assert abs(flat.mean()) < 0.015 and abs(flat.std() - 1) < 0.015  # standard errors 0.003, 0.002
    assert scipy.stats.kstest(flat, "norm").pvalue > 1e-3
    for part in range(4):  # each Box-Muller output (cos and sin of both pairs) on its own
        assert scipy.stats.kstest(flat.reshape(-1, 4)[:, part], "norm").pvalue > 1e-3
    # no correlation between neighbouring samples, timesteps, seeds, or neighbouring values of one sample
    neighbours = [
        (z[:-1], z[1:]),
        (z, fixed_noise(range(n_ids), 501, (numel,), 0).double()),
        (z, fixed_noise(range(n_ids), 500, (numel,), 1).double()),
        (z[:, :-1], z[:, 1:]),
        (z[:, 0::4], z[:, 1::4]),  # the cos / sin outputs of one Box-Muller pair
    ]
    neighbours.append((z[:, 0::4] ** 2, z[:, 1::4] ** 2))  # squares too: a shared radius would correlate them
    for a, b in neighbours:
        r = np.corrcoef(a.reshape(-1).numpy(), b.reshape(-1).numpy())[0, 1]
        assert abs(r) < 5 / math.sqrt(a.numel()), r  # 5 standard errors of r under independence


@pytest.mark.parametrize("call, message", [
    (lambda: fixed_noise([1], -1, (2,), 0), r"t=-1: must be an int in \[0, 2\*\*32\)"),
    (lambda: fixed_noise([1], 2**32, (2,), 0), r"t=4294967296"),
    (lambda: fixed_noise([1], 1.5, (2,), 0), r"t=1.5"),
    (lambda: fixed_noise([1], 0, (2,), -3), r"seed=-3: must be an int in \[0, 2\*\*64\)"),
    (lambda: fixed_noise([1], 0, (2,), 2**64), r"seed=18446744073709551616"),
    (lambda: fixed_noise([1, -2], 0, (2,), 0), r"sample_ids: -2 is outside \[0, 2\*\*32\)"),
    (lambda: fixed_noise(np.array([2**32]), 0, (2,), 0), r"sample_ids: 4294967296 is outside"),
    (lambda: fixed_noise([2**70], 0, (2,), 0), r"sample_ids: 1180591620717411303424 is outside"),
    (lambda: fixed_noise(torch.tensor([5, 2**33]), 0, (2,), 0), r"sample_ids: 8589934592 is outside"),
    (lambda: fixed_noise([0.5], 0, (2,), 0), r"sample_ids: integer ids expected"),
    (lambda: fixed_noise([1], 0, (2, -1), 0), r"shape=\(2, -1\)"),
    (lambda: fixed_noise([1, 2], 0, (2,), 0, out=torch.empty(2, 3)), r"out: \(2, 3\) torch.float32 on cpu given"),
    (lambda: fixed_noise([1, 2], 0, (2,), 0, out=torch.empty(2, 2, dtype=torch.float64)), r"float64 on cpu given"),
    (lambda: fixed_noise([1, 2], 0, (2,), 0, out=torch.empty(2, 2).t()), r"a contiguous \(2, 2\) float32 tensor"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


@pytest.mark.gpu
def test_cuda_noise_equals_the_cpu_noise():
    cuda = torch.device("cuda")
    rng = np.random.default_rng(4)
    counters = [tuple(int(v) for v in row) for row in rng.integers(0, 2**32, (5000, 4))] + [(MASK,) * 4, (0,) * 4]
    for key in [(0, 0), (MASK, MASK), (123456789, 987654321)]:
        assert torch_words(counters, key, device=cuda) == torch_words(counters, key)
    ids, shape = rng.permutation(10_000)[:512], (4, 16, 16)
    for t, seed in [(0, 0), (999, 2**40 + 3)]:
        cpu = fixed_noise(ids, t, shape, seed)
        gpu = fixed_noise(ids, t, shape, seed, device="cuda")
        assert gpu.device.type == "cuda" and gpu.dtype == torch.float32
        torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=1e-6)
        buf = torch.empty((100, *shape), device=cuda)
        assert fixed_noise(ids[:100], t, shape, seed, out=buf) is buf
        assert torch.equal(buf, gpu[:100])  # the same device: batch composition does not matter
