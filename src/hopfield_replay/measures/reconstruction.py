"""Per-sample reconstruction error and model-based (denoising) energy, with noise fixed per (sample, t).

For a clean sample x0 (model space), timestep t and its own fixed noise eps = eps(seed, sample_id, t):

    x_t      = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps                            (``scheduler.add_noise``)
    x0_hat   = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t)        (one-step Tweedie estimate)
    recon(t) = mean_pixels (x0_hat - x0)^2
    denoising energy = mean_t mean_pixels (eps_theta(x_t, t) - eps)^2           (over a fixed grid of t)

The noise (``noise.fixed_noise``, counter-based Philox4x32-10) depends only on (seed, sample_id, t), never on
batch composition, so results do not change with batch size and the same sample sees the same noise under every
model (task-A, task-B, every replay arm). (sample, t) pairs are batched together into large no-grad forwards (bf16
autocast on CUDA): the pairs of all timesteps are laid end to end, so a forward is always full
(``default_batch_size`` per device), and the noise of each forward is made on the model's device, one call per
timestep segment, with no host work per sample and no copy.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..runtime.devices import autocast
from .forgetting import add_measures
from ..models.base import DenoisingModel
from .noise import fixed_noise


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
    model.check_labels(labels)
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
        noise = torch.empty((stop - start, *shape), device=device)
        for j in range(start // n, (stop - 1) // n + 1):  # one noise call per timestep present in this forward
            lo, hi = max(start, j * n), min(stop, (j + 1) * n)
            fixed_noise(ids[lo - j * n : hi - j * n], t_values[j], shape, seed, device=device,
                        out=noise[lo - start : hi - start])
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
