"""The fixed measurement noise: standard normals per sample, a pure function of (seed, sample_id, t), on any device.

A counter-based generator, Philox4x32-10 (Salmon, Moraes, Dror, Shaw 2011, "Parallel random numbers: as easy as
1, 2, 3"; the generator of cuRAND and of torch's CUDA RNG), written with torch int64 ops, so the noise is made
where the model runs (CPU or CUDA) with no host work per sample and no copy. For sample s, timestep t, seed:

    key       = (seed mod 2**32, seed div 2**32)                              (seed: 64 bits, two words)
    counter_b = (b, s, t, 0)                 for the sample's blocks b = 0, 1, ..., ceil(n / 4) - 1
    (w0, w1, w2, w3) = Philox4x32-10(counter_b, key)                          (4 uint32 words a block)
    Philox round:  (c0, c1, c2, c3) -> (hi(M1 c2) ^ c1 ^ k0, lo(M1 c2), hi(M0 c0) ^ c3 ^ k1, lo(M0 c0)),
                   M0 = 0xD2511F53, M1 = 0xCD9E8D57; 10 rounds, the key bumped by (0x9E3779B9, 0xBB67AE85)
                   between rounds (hi/lo: the upper/lower 32 bits of the 64-bit product)
    u_i       = (w_i + 0.5) / 2**32                                           (float64, exact, in (0, 1))
    (z0, z1)  = sqrt(-2 ln u0) (cos 2 pi u1, sin 2 pi u1)                     (Box-Muller, float64)
    (z2, z3)  = sqrt(-2 ln u2) (cos 2 pi u3, sin 2 pi u3)

The sample's noise, flattened in C order to n = prod(shape) values, is (z0, z1, z2, z3) of block 0, then of
block 1, ..., cut to n, cast to float32. So it does not depend on batch size, order, composition or chunking,
and on one device it is bitwise the same. Across devices the integer words are exact; the float32 values can
differ only where float64 log / cos / sin round differently (CUDA vs CPU: tested within 1e-6). In the products
m * x of a 32-bit multiplier and a 32-bit word, m is split in 16-bit halves so no int64 intermediate reaches
2**49 (exact on CPU and CUDA; torch has no general uint32 arithmetic).
"""

from __future__ import annotations

import math

import numpy as np
import torch

MASK32 = 0xFFFFFFFF
PHILOX_M0, PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
PHILOX_W0, PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # key bumps (Weyl sequence)
PHILOX_ROUNDS = 10
BLOCK_BUDGET = 1 << 22  # Philox blocks (4 values each) per chunk: bounds the int64 / float64 intermediates


def _mulhilo(m: int, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hi, lo): the upper and lower 32 bits of m * x, for a 32-bit constant m and an int64 tensor x of 32-bit
    words, exactly: m = mh 2**16 + ml, so m x = (mh x) 2**16 + ml x with both products < 2**48, and
    m x >> 16 = mh x + (ml x >> 16) < 2**49."""
    low = x * (m & 0xFFFF)
    mid = x * (m >> 16)
    mid += low >> 16  # m x >> 16
    hi = mid >> 16
    mid &= 0xFFFF
    mid <<= 16
    low &= 0xFFFF
    mid |= low  # (m x) mod 2**32
    return hi, mid


def philox4x32(counter: list[torch.Tensor], key: tuple[int, int], rounds: int = PHILOX_ROUNDS) -> list[torch.Tensor]:
    """Philox4x32-``rounds``: the 4 output words (int64 tensors, values in [0, 2**32)) of the 4 counter words
    (int64 tensors of 32-bit words, broadcastable to one shape) under ``key`` (two ints < 2**32)."""
    c0, c1, c2, c3 = torch.broadcast_tensors(*counter)
    k0, k1 = key
    for r in range(rounds):
        if r:
            k0, k1 = (k0 + PHILOX_W0) & MASK32, (k1 + PHILOX_W1) & MASK32
        hi0, lo0 = _mulhilo(PHILOX_M0, c0)
        hi1, lo1 = _mulhilo(PHILOX_M1, c2)
        hi1 ^= c1
        hi1 ^= k0
        hi0 ^= c3
        hi0 ^= k1
        c0, c1, c2, c3 = hi1, lo1, hi0, lo0
    return [c0, c1, c2, c3]


def words_to_normals(words: list[torch.Tensor]) -> torch.Tensor:
    """Box-Muller in float64 of the 4 words of each block (4 tensors (..., B)): normals (..., 4 B), block after
    block, each block's (z0, z1, z2, z3)."""
    z = []
    for w_radius, w_angle in ((words[0], words[1]), (words[2], words[3])):
        radius = w_radius.double().add_(0.5).mul_(2.0**-32).log_().mul_(-2.0).sqrt_()  # sqrt(-2 ln u)
        angle = w_angle.double().add_(0.5).mul_(2.0**-32 * 2.0 * math.pi)  # 2 pi u
        z += [radius * torch.cos(angle), radius * angle.sin_()]
    return torch.stack(z, dim=-1).flatten(-2)


def _check_ids(sample_ids, device: torch.device) -> torch.Tensor:
    """The sample ids as an int64 tensor on ``device``, each in [0, 2**32) (ValueError otherwise)."""
    if isinstance(sample_ids, torch.Tensor):
        if sample_ids.dtype.is_floating_point or sample_ids.dtype.is_complex or sample_ids.dtype == torch.bool:
            raise ValueError(f"sample_ids: integer ids expected, got a {sample_ids.dtype} tensor")
        ids = sample_ids.reshape(-1).to(device=device, dtype=torch.int64)
        bad = ids[(ids < 0) | (ids > MASK32)]
        if bad.numel():
            raise ValueError(f"sample_ids: {int(bad[0])} is outside [0, 2**32); ids must be non-negative 32-bit ints")
        return ids
    values = np.asarray(sample_ids).reshape(-1)
    if values.dtype.kind == "O" and all(isinstance(v, (int, np.integer)) for v in values.tolist()):
        bad = [int(v) for v in values.tolist() if not 0 <= v <= MASK32]  # ints beyond 64 bits
    elif values.dtype.kind in "iu" or not values.size:
        bad = values[(values < 0) | (values > MASK32)].tolist()
    else:
        raise ValueError(f"sample_ids: integer ids expected, got {values.dtype} values")
    if bad:
        raise ValueError(f"sample_ids: {bad[0]} is outside [0, 2**32); ids must be non-negative 32-bit ints")
    return torch.as_tensor(values.astype(np.int64), device=device)


def _check_int(name: str, value, bits: int) -> int:
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or not 0 <= value < 2**bits:
        raise ValueError(f"{name}={value!r}: must be an int in [0, 2**{bits})")
    return int(value)


def fixed_noise(sample_ids, t: int, shape: tuple[int, ...], seed: int, *, device: torch.device | str | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """(len(sample_ids), *shape) float32 standard normals, sample k's a pure function of (seed, sample_ids[k], t)
    (module docstring), made on ``device`` (default: ``out``'s device, else the CPU), written into ``out`` if given.

    sample_ids: ints in [0, 2**32) (sequence, numpy array or tensor); t: int in [0, 2**32); seed: int in [0, 2**64).
    """
    t, seed = _check_int("t", t, 32), _check_int("seed", seed, 64)
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape):
        raise ValueError(f"shape={shape}: sizes must be non-negative")
    numel = math.prod(shape)
    n_blocks = -(-numel // 4)
    if n_blocks > MASK32 + 1:
        raise ValueError(f"shape={shape}: {numel} values a sample exceed the 2**34 one counter word can index")
    device = torch.device("cpu" if device is None and out is None else device or out.device)
    if out is not None:
        on_device = out.device.type == device.type and device.index in (None, out.device.index)
        if (not on_device or out.dtype != torch.float32 or out.shape != (len(sample_ids), *shape)
                or not out.is_contiguous()):
            raise ValueError(f"out: {tuple(out.shape)} {out.dtype} on {out.device} given, a contiguous "
                             f"{(len(sample_ids), *shape)} float32 tensor on {device} expected")
        device = out.device
    ids = _check_ids(sample_ids, device)
    if out is None:
        out = torch.empty((ids.numel(), *shape), dtype=torch.float32, device=device)
    if not numel or not ids.numel():
        return out
    flat = out.view(ids.numel(), numel)
    key = (seed & MASK32, seed >> 32)
    t_word, zero = torch.tensor(t, device=device), torch.tensor(0, device=device)
    step = max(1, BLOCK_BUDGET // n_blocks)
    for start in range(0, ids.numel(), step):
        rows = ids[start : start + step, None]
        for b0 in range(0, n_blocks, BLOCK_BUDGET):  # one sample above the budget: its blocks in pieces
            blocks = torch.arange(b0, min(b0 + BLOCK_BUDGET, n_blocks), dtype=torch.int64, device=device)[None, :]
            normals = words_to_normals(philox4x32([blocks, rows, t_word, zero], key))
            lo, hi = 4 * b0, min(4 * (b0 + BLOCK_BUDGET), numel)
            flat[start : start + step, lo:hi] = normals[:, : hi - lo]
    return out
