"""Per-sample reconstruction error and model-based (denoising) energy, with noise fixed per (sample, t).

For a clean sample x0 (model space), timestep t and its own fixed noise eps = eps(seed, sample_id, t):

    x_t      = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps                            (``scheduler.add_noise``)
    x0_hat   = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t)        (one-step Tweedie estimate)
    recon(t) = mean_pixels (x0_hat - x0)^2
    denoising energy = mean_t mean_pixels (eps_theta(x_t, t) - eps)^2           (over a fixed grid of t)

The noise depends only on (seed, sample_id, t), never on batch composition or device, so results do not change
with batch size and the same sample sees the same noise under every model (task-A, task-B, every replay arm).
(sample, t) pairs are batched together into large no-grad forwards (bf16 autocast on CUDA): the pairs of all
timesteps are laid end to end, so a forward is always full (``default_batch_size`` per device), and the noise of
each forward is drawn per timestep segment with the seeds hashed for all its samples at once.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from .devices import autocast
from .forgetting import add_measures
from .models.base import DenoisingModel


# numpy's SeedSequence hash (numpy/random/bit_generator.pyx), vectorised over samples; pool of 4 uint32 words.
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R, _XSHIFT, _POOL_SIZE = 0xCA01F9DD, 0x4973F715, 16, 4


def _seed_sequence_states(entropy: np.ndarray) -> np.ndarray:
    """``SeedSequence(list(row)).generate_state(2, np.uint32)`` for every row of ``entropy`` (uint32, K x 3), at once.

    Equal bit for bit to numpy's (tested); every entry must be < 2**32 (one uint32 word each).
    """
    k, n_words = entropy.shape
    with np.errstate(over="ignore"):
        hash_const = np.full(k, _INIT_A, dtype=np.uint32)

        def hashmix(value):
            nonlocal hash_const
            value = value ^ hash_const
            hash_const = hash_const * np.uint32(_MULT_A)
            value = value * hash_const
            return value ^ (value >> np.uint32(_XSHIFT))

        def mix(x, y):
            result = np.uint32(_MIX_MULT_L) * x - np.uint32(_MIX_MULT_R) * y
            return result ^ (result >> np.uint32(_XSHIFT))

        zero = np.zeros(k, dtype=np.uint32)
        pool = [hashmix(entropy[:, i] if i < n_words else zero) for i in range(_POOL_SIZE)]
        for i_src in range(_POOL_SIZE):
            for i_dst in range(_POOL_SIZE):
                if i_src != i_dst:
                    pool[i_dst] = mix(pool[i_dst], hashmix(pool[i_src]))
        for i_src in range(_POOL_SIZE, n_words):  # entropy longer than the pool (not reached with 3 words)
            for i_dst in range(_POOL_SIZE):
                pool[i_dst] = mix(pool[i_dst], hashmix(entropy[:, i_src]))
        out = np.empty((k, 2), dtype=np.uint32)
        hash_b = np.uint32(_INIT_B)
        for i_dst in range(2):
            value = pool[i_dst % _POOL_SIZE] ^ hash_b
            hash_b = hash_b * np.uint32(_MULT_B)
            value = value * hash_b
            out[:, i_dst] = value ^ (value >> np.uint32(_XSHIFT))
    return out


def _noise_seeds(sample_ids, t: int, seed: int) -> list[int]:
    """The 64-bit torch seed of every (seed, sample_id, t): from numpy's SeedSequence([seed, sample_id, t])."""
    ids = np.asarray(sample_ids, dtype=np.int64).reshape(-1)
    values = (int(seed), int(t))
    if ids.size and (ids.min() >= 0 and ids.max() < 2**32) and all(0 <= v < 2**32 for v in values):
        entropy = np.empty((ids.size, 3), dtype=np.uint32)
        entropy[:, 0], entropy[:, 1], entropy[:, 2] = values[0], ids, values[1]
        state = _seed_sequence_states(entropy).astype(np.uint64)
    else:  # multi-word or negative entries: numpy itself (which rejects negatives)
        state = np.array([np.random.SeedSequence([int(seed), int(sid), int(t)]).generate_state(2, dtype=np.uint32)
                          for sid in ids.tolist()], dtype=np.uint64).reshape(-1, 2)
    return ((state[:, 0] << np.uint64(32)) | state[:, 1]).tolist()


def fixed_noise(sample_ids, t: int, shape: tuple[int, ...], seed: int, *, out: torch.Tensor | None = None
                ) -> torch.Tensor:
    """Standard normal noise of ``shape`` per sample, a pure function of (seed, sample_id, t), on the CPU.

    Sample k's noise is torch.randn(shape) from a CPU generator seeded with SeedSequence([seed, sample_id, t]),
    so it does not depend on batch composition, order or device. The seeds are hashed for all samples at once
    and one generator is re-seeded per sample, writing straight into ``out`` (len(sample_ids), *shape) if given.
    """
    seeds = _noise_seeds(sample_ids, t, seed)
    if out is None:
        out = torch.empty((len(seeds), *shape))
    g = torch.Generator()
    for i, s in enumerate(seeds):
        g.manual_seed(s)
        torch.randn(shape, generator=g, out=out[i])
    return out


def default_batch_size(device: torch.device, item_numel: int) -> int:
    """(sample, t) pairs per forward: moderate on the CPU (large chunks thrash caches), large on a GPU."""
    if device.type == "cuda":
        return max(64, min(4096, (1 << 26) // max(item_numel, 1)))
    return 64


@torch.no_grad()
def _per_pair_errors(
    model: DenoisingModel,
    x0: torch.Tensor,
    sample_ids,
    timesteps: list[int],
    *,
    labels: torch.Tensor | None,
    seed: int,
    batch_size: int | None,
    device: torch.device | None,
    desc: str,
    progress: bool,
    space: str = "model",
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) reconstruction MSE and (N, T) noise-prediction MSE for every sample and timestep.

    space='pixel' measures the reconstruction after decoding: mean (decode(x0_hat) - decode(x0))^2, so the
    VAE's own reconstruction error cancels and only the diffusion model's error remains.
    """
    if space not in ("model", "pixel"):
        raise ValueError(f"space={space!r}: use 'model' or 'pixel'")
    device = device or model.device
    model.to(device).eval()
    n = x0.shape[0]
    if len(sample_ids) != n:
        raise ValueError(f"{len(sample_ids)} sample_ids for {n} samples")
    num_t = model.scheduler.config.num_train_timesteps
    for t in timesteps:
        if not 0 <= int(t) < num_t:
            raise ValueError(f"timestep {t} is outside [0, {num_t - 1}]")
    alphas = model.alphas_cumprod(device)
    shape = tuple(x0.shape[1:])
    bs = batch_size or default_batch_size(device, int(np.prod(shape)))
    ids = np.asarray(sample_ids, dtype=np.int64)
    t_values = [int(t) for t in timesteps]
    # (sample, timestep) pairs in t-major order, pair p = (p % n, p // n), cut into forwards of ``bs`` pairs.
    total = n * len(t_values)
    recon = torch.empty(n, len(t_values))
    eps_err = torch.empty(n, len(t_values))
    t_table = torch.tensor(t_values, dtype=torch.long)
    for start in tqdm(range(0, total, bs), desc=desc, disable=not progress, mininterval=2.0, smoothing=1.0):
        stop = min(start + bs, total)
        pairs = torch.arange(start, stop)
        rows, tcol = pairs % n, pairs // n
        noise = torch.empty((stop - start, *shape))
        for j in range(start // n, (stop - 1) // n + 1):  # one noise call per timestep present in this forward
            lo, hi = max(start, j * n), min(stop, (j + 1) * n)
            fixed_noise(ids[lo - j * n : hi - j * n], t_values[j], shape, seed, out=noise[lo - start : hi - start])
        noise = noise.to(device)
        t_val = t_table[tcol].to(device)
        clean = x0[rows].to(device, torch.float32)
        x_t = model.scheduler.add_noise(clean, noise, t_val)
        a = alphas[t_val].view(-1, *([1] * len(shape)))
        sqrt_a, sqrt_1ma = a.sqrt(), (1 - a).sqrt()
        y = labels[rows].to(device) if labels is not None else None
        with autocast(device):
            pred = model.predict_noise(x_t, t_val, y)
        pred = pred.float()
        x0_hat = (x_t - sqrt_1ma * pred) / sqrt_a
        dims = tuple(range(1, x_t.ndim))
        if space == "pixel":
            recon[rows, tcol] = ((model.decode(x0_hat) - model.decode(clean)) ** 2).mean(dims).cpu()
        else:
            recon[rows, tcol] = ((x0_hat - clean) ** 2).mean(dims).cpu()
        eps_err[rows, tcol] = ((pred - noise) ** 2).mean(dims).cpu()
    return recon, eps_err


def reconstruction_error(
    model: DenoisingModel,
    x0: torch.Tensor,
    sample_ids,
    timesteps: list[int],
    *,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: torch.device | None = None,
    progress: bool = True,
    space: str = "model",
) -> torch.Tensor:
    """(N, T) one-step reconstruction MSE of every sample at every timestep (module docstring), in the model's
    space or, with space='pixel', between the decoded estimate and the decoded sample."""
    recon, _ = _per_pair_errors(
        model, x0, sample_ids, timesteps, labels=labels, seed=seed, batch_size=batch_size,
        device=device, desc="reconstruction", progress=progress, space=space,
    )
    return recon


def denoising_energy(
    model: DenoisingModel,
    x0: torch.Tensor,
    sample_ids,
    timesteps: list[int],
    *,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    device: torch.device | None = None,
    progress: bool = True,
) -> torch.Tensor:
    """(N,) model-based energy: the epsilon-prediction MSE averaged over a fixed timestep grid."""
    _, eps_err = _per_pair_errors(
        model, x0, sample_ids, timesteps, labels=labels, seed=seed, batch_size=batch_size,
        device=device, desc="denoising energy", progress=progress,
    )
    return eps_err.mean(1)


def error_table(model: DenoisingModel, x0: torch.Tensor, sample_ids, timesteps: list[int], **kwargs) -> pd.DataFrame:
    """``reconstruction_error`` in long format: a DataFrame with one row per (sample_id, t) and column ``error``."""
    err = reconstruction_error(model, x0, sample_ids, timesteps, **kwargs).double().numpy()
    ids = np.asarray(sample_ids, dtype=np.int64)
    return pd.DataFrame({"sample_id": np.repeat(ids, len(timesteps)),
                         "t": np.tile(np.asarray(timesteps, dtype=np.int64), len(ids)), "error": err.reshape(-1)})


def measure_forgetting(model, x0, sample_ids, error_a: pd.DataFrame, timesteps: list[int], **kwargs) -> pd.DataFrame:
    """A later model's error per (sample_id, t) (``error_table``; ``kwargs`` go to reconstruction_error) joined to
    the task-A error (columns sample_id, t, error_a, ...), with both forgetting measures (forgetting.add_measures)."""
    errors = error_table(model, x0, sample_ids, timesteps, **kwargs)
    return add_measures(error_a.merge(errors, on=["sample_id", "t"], validate="one_to_one"))
