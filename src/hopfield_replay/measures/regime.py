"""How far a model's one-step denoiser is from the empirical optimal denoiser of its training set: the regime check
of the paper's modern Hopfield network (MHN) analysis.

For training images x_1..x_N (model space) and a noised query x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps (the
same fixed noise per (sample, t) as the reconstruction measures), the denoiser that is optimal for the empirical
distribution (uniform over the N images) is the posterior mean

    D*(x_t) = sum_i softmax_i(beta (q . x_i - |x_i|^2 / 2)) x_i,   q = x_t / sqrt(abar_t),   beta = SNR(t)

with SNR(t) = abar_t / (1 - abar_t): one Hopfield retrieval of the memories at inverse temperature SNR(t) (the
softmax is that of -|x_t - sqrt(abar_t) x_i|^2 / (2 (1 - abar_t)) with the query's own norm dropped). Per sample
and t this module reports

    model_error     = mean (x0_hat - x0)^2           (the model's one-step Tweedie estimate x0_hat)
    empirical_error = mean (D*(x_t) - x0)^2          (the optimal denoiser's own error)
    distance        = mean (x0_hat - D*(x_t))^2

and the report's relative distance is mean distance / mean empirical_error over samples at each t. A model close
to D* (relative distance below 1) acts as the Hopfield retrieval of its training images, the regime the MHN
analysis describes: at low noise D* returns the training image itself (closeness there is memorising), at high
noise a softmax-weighted mean of many. A model far from D* at low noise does not reproduce its training images. The softmax and the weighted mean run in float64,
streamed over query chunks (the memories stay whole: N x d float64 for one chunk's logits).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from ..models.base import DenoisingModel
from ..runtime.devices import autocast
from .noise import fixed_noise


def empirical_denoiser(x_t: torch.Tensor, memories: torch.Tensor, abar: float, *, chunk: int = 256) -> torch.Tensor:
    """D*(x_t) (module docstring) for every row of x_t (B, ...) given memories (N, ...): float64, shape of x_t."""
    if not 0.0 < abar < 1.0:
        raise ValueError(f"abar={abar}: must lie in (0, 1)")
    q = x_t.reshape(x_t.shape[0], -1).double() / abar ** 0.5
    m = memories.reshape(memories.shape[0], -1).double().to(q.device)
    if q.shape[1] != m.shape[1]:
        raise ValueError(f"queries of {q.shape[1]} values and memories of {m.shape[1]}: the shapes must match")
    beta, half_sq = abar / (1.0 - abar), 0.5 * (m * m).sum(1)
    out = torch.empty_like(q)
    for lo in range(0, q.shape[0], chunk):
        weights = torch.softmax(beta * (q[lo : lo + chunk] @ m.T - half_sq), dim=1)
        out[lo : lo + chunk] = weights @ m
    return out.reshape(x_t.shape)


@torch.no_grad()
def regime_table(model: DenoisingModel, x0: torch.Tensor, sample_ids, timesteps: list[int], *,
                 labels: torch.Tensor | None = None, seed: int = 0, batch_size: int = 256,
                 device: torch.device | None = None, progress: bool = True) -> pd.DataFrame:
    """One row per (sample_id, t): model_error, empirical_error and distance (module docstring), with x0 both the
    queries' clean images and the memories of D* (the training set the model saw)."""
    device = device or model.device
    model.to(device).eval()
    model.check_labels(labels)
    ids = np.asarray(sample_ids, dtype=np.int64)
    if len(ids) != x0.shape[0]:
        raise ValueError(f"{len(ids)} sample_ids for {x0.shape[0]} samples")
    alphas, shape, memories = model.alphas_cumprod(device), tuple(x0.shape[1:]), x0.to(device, torch.float32)
    parts = []
    for t in tqdm(timesteps, desc="regime", disable=not progress):
        abar = float(alphas[int(t)])
        cols = {k: np.empty(len(ids)) for k in ("model_error", "empirical_error", "distance")}
        for lo in range(0, len(ids), batch_size):
            hi = min(lo + batch_size, len(ids))
            clean = memories[lo:hi]
            noise = fixed_noise(ids[lo:hi], int(t), shape, seed, device=device)
            t_val = torch.full((hi - lo,), int(t), dtype=torch.long, device=device)
            x_t = model.scheduler.add_noise(clean, noise, t_val)
            with autocast(device):
                pred = model.predict_noise(x_t, t_val, labels[lo:hi].to(device) if labels is not None else None)
            x0_hat = ((x_t - (1 - abar) ** 0.5 * pred.float()) / abar ** 0.5).double()
            best = empirical_denoiser(x_t, memories, abar)
            dims = tuple(range(1, x_t.ndim))
            cols["model_error"][lo:hi] = ((x0_hat - clean.double()) ** 2).mean(dims).cpu().numpy()
            cols["empirical_error"][lo:hi] = ((best - clean.double()) ** 2).mean(dims).cpu().numpy()
            cols["distance"][lo:hi] = ((x0_hat - best) ** 2).mean(dims).cpu().numpy()
        parts.append(pd.DataFrame({"sample_id": ids, "t": np.int64(t), **cols}))
    return pd.concat(parts, ignore_index=True).sort_values(["sample_id", "t"], ignore_index=True)


def regime_by_t(table: pd.DataFrame) -> pd.DataFrame:
    """Per t: the three means over samples and relative = mean distance / mean empirical_error (inf when the
    optimal denoiser is exact at t)."""
    means = table.groupby("t")[["model_error", "empirical_error", "distance"]].mean()
    with np.errstate(divide="ignore", invalid="ignore"):
        means["relative"] = np.where(means.empirical_error > 0, means.distance / means.empirical_error, np.inf)
    return means.reset_index()
