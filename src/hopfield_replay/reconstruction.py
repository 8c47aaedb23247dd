"""Per-sample reconstruction error and model-based (denoising) energy, with noise fixed per (sample, t).

For a clean sample x0 (model space), timestep t and its own fixed noise eps = eps(seed, sample_id, t):

    x_t      = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps
    x0_hat   = (x_t - sqrt(1 - abar_t) eps_theta(x_t, t)) / sqrt(abar_t)        (one-step Tweedie estimate)
    recon(t) = mean_pixels (x0_hat - x0)^2
    denoising energy = mean_t mean_pixels (eps_theta(x_t, t) - eps)^2           (over a fixed grid of t)

The noise depends only on (seed, sample_id, t), never on batch composition or device, so results do not change
with batch size and the same sample sees the same noise under every model (task-A, task-B, every replay arm).
(sample, t) pairs are batched together into large no-grad forwards.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from .devices import autocast
from .diffusion import DenoisingModel


def fixed_noise(sample_ids, t: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Standard normal noise of ``shape`` per sample, a pure function of (seed, sample_id, t), on the CPU."""
    out = torch.empty((len(sample_ids), *shape))
    for i, sid in enumerate(np.asarray(sample_ids, dtype=np.int64).tolist()):
        state = np.random.SeedSequence([int(seed), int(sid), int(t)]).generate_state(2, dtype=np.uint32)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        out[i] = torch.randn(shape, generator=g)
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T) reconstruction MSE and (N, T) noise-prediction MSE for every sample and timestep."""
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
    pairs = [(i, ti) for ti in range(len(timesteps)) for i in range(n)]
    recon = torch.empty(n, len(timesteps))
    eps_err = torch.empty(n, len(timesteps))
    ids = np.asarray(sample_ids, dtype=np.int64)
    for start in tqdm(range(0, len(pairs), bs), desc=desc, disable=not progress, mininterval=2.0):
        chunk = pairs[start : start + bs]
        rows = torch.tensor([p[0] for p in chunk])
        tcol = torch.tensor([p[1] for p in chunk])
        t_val = torch.tensor([int(timesteps[p[1]]) for p in chunk])
        noise = torch.cat(
            [fixed_noise(ids[[i]], int(timesteps[ti]), shape, seed) for i, ti in chunk]
        ).to(device)
        clean = x0[rows].to(device, torch.float32)
        a = alphas[t_val.to(device)].view(-1, *([1] * len(shape)))
        x_t = a.sqrt() * clean + (1 - a).sqrt() * noise
        y = labels[rows].to(device) if labels is not None else None
        with autocast(device):
            pred = model.predict_noise(x_t, t_val.to(device), y)
        pred = pred.float()
        x0_hat = (x_t - (1 - a).sqrt() * pred) / a.sqrt()
        dims = tuple(range(1, x_t.ndim))
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
) -> torch.Tensor:
    """(N, T) one-step reconstruction MSE of every sample at every timestep (module docstring)."""
    recon, _ = _per_pair_errors(
        model, x0, sample_ids, timesteps, labels=labels, seed=seed, batch_size=batch_size,
        device=device, desc="reconstruction", progress=progress,
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


def forgetting(error_before: torch.Tensor, error_after: torch.Tensor) -> torch.Tensor:
    """Reconstruction forgetting: error under the later model minus error under the task-A model."""
    return error_after - error_before
