"""Per-sample predictors of forgetting, computed side by side (one column each) for every task-A sample x_k.

x_k, X_A = {x_j} (N samples, labels y_j), X_B (M samples) live in the model's space (pixels for the DDPM, VAE latents
for Stable Diffusion), flattened to R^d; E(z | X; beta) is ``hopfield_energy`` in the configured form.

kind "energy" (the hypothesis):
    energy_a             = E(x_k | X_A without x_k; beta)                              (leave-one-out)
    energy_a_beta{m}x    = E(x_k | X_A without x_k; m * beta)  for each multiple m      (0.1 -> energy_a_beta0p1x)
    energy_a_snr_t{t}    = E(x_k | X_A without x_k; SNR(t)),  SNR(t) = abar_t / (1 - abar_t)

kind "energy_task_b" (the theory's intrinsic forgetting; it uses task-B data, so no buffer chosen at the end of
task A can use it):
    energy_b             = E(x_k | X_B; beta)
    energy_rise          = energy_b - energy_a

kind "baseline" (what the energy must beat):
    model_energy, recon_error_a*   computed by the stage with the diffusion model, passed through ctx.model_scores
    knn{k}_dist          = (1/k) sum_{i <= k} |x_k - x_(i)|,  x_(i) the i-th nearest other task-A sample
    kde_neglogdensity    = -log( 1/(N-1) sum_{j != k} N(x_k; x_j, h^2 I) ),  Scott's rule h = sigma N^(-1/(d+4)),
                           sigma^2 = (1/d) sum_i var_i(X_A) (pooled per-dimension variance, ddof = 1)
    dist_class_mean      = |x_k - mean{x_j : y_j = y_k}|
    dist_global_mean     = |x_k - mean(X_A)|
    pixel_mass           = (1/D) sum_p u_p,          u = (x_pixels + 1) / 2 in [0, 1]
    pixel_norm           = sqrt( (1/D) sum_p u_p^2 )
    latent_mass          = (1/d) sum_i x_i           (only when the model's space is not pixels)
    latent_norm          = sqrt( (1/d) sum_i x_i^2 )

kind "forecast" (a second question beside claim 1, never one of its baselines): made before the task-B fine-tune
from model A, both tasks' data and at most short probe fine-tunes (``hopfield_replay.forecast``, the forecast stage,
which has the model and the optimiser), passed through ctx.forecasts; higher = more forgetting predicted:
    proximity_b*, grad_dot, grad_cos, probe_{steps}       (formulas: hopfield_replay.forecast)

Why Scott's bandwidth: at h^2 = 1/beta the KDE is beta * energy_a (distance form) plus a constant, a monotone
transform with identical ranks, so it would not be a baseline. Everything is streamed over chunks (no N x N matrix);
all columns are float64.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import pandas as pd
import torch

from hopfield_replay.energy import FORMS, hopfield_energy, knn_distances

KINDS = ("energy", "baseline", "forecast")
USES_TASK_B = ("energy_b", "energy_rise")  # columns of the "energy" entry with kind "energy_task_b"
_ROW_CHUNK = 1024  # rows per chunk for the fp64 statistics (temporaries of chunk x d)


@dataclass
class PredictorContext:
    """Everything a predictor may use; tensors are flattened, task-A rows in sample_id order."""

    x_a: torch.Tensor  # (N, d) task-A samples in the model's space
    labels_a: np.ndarray  # (N,) int
    x_b: torch.Tensor  # (M, d) task-B samples in the model's space
    pixels_a: torch.Tensor  # (N, D) task-A images in pixel space, values in [-1, 1]
    model_space_is_pixels: bool  # True for the pixel DDPM (latent statistics would repeat the pixel ones)
    beta: float  # the configured beta of the energy
    form: str  # "distance" | "inner"
    beta_multiples: list[float]  # grid of multiples of beta
    snr_betas: dict[int, float]  # t -> SNR(t)
    knn_k: list[int]
    device: torch.device
    model_scores: dict[str, np.ndarray] = field(default_factory=dict)  # computed by the stage, passed through
    forecasts: dict[str, np.ndarray] = field(default_factory=dict)  # the forecast stage's columns, passed through

    def __post_init__(self):
        n = self.x_a.shape[0]
        if len(self.labels_a) != n or self.pixels_a.shape[0] != n:
            raise ValueError(f"x_a has {n} rows but labels_a {len(self.labels_a)} and pixels_a "
                             f"{self.pixels_a.shape[0]}")
        if self.x_b.reshape(self.x_b.shape[0], -1).shape[1] != self.x_a.reshape(n, -1).shape[1]:
            raise ValueError("x_a and x_b have different dimensions")
        if self.form not in FORMS:
            raise ValueError(f"form={self.form!r} is not one of {FORMS}")


Predictor = Callable[[PredictorContext], dict[str, np.ndarray]]
PREDICTORS: dict[str, tuple[Predictor, str]] = {}
_COLUMNS: dict[str, tuple[str, ...]] = {}  # entry name -> fnmatch patterns of the columns it returns


def register_predictor(name: str, kind: str, columns: Iterable[str] | None = None):
    """Decorator: add ``fn(ctx) -> {column: (N,) array}`` to the registry under ``name`` (replacing one of that name).

    columns: fnmatch patterns of the column names the entry returns (default: just ``name``); ``predictor_kinds``
    maps columns to kinds through them, and ``compute_predictors`` rejects a column that matches none.
    """
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r} is not one of {KINDS}")
    patterns = (name,) if columns is None else tuple(columns)

    def decorator(fn: Predictor) -> Predictor:
        PREDICTORS[name] = (fn, kind)
        _COLUMNS[name] = patterns
        return fn

    return decorator


def compute_predictors(ctx: PredictorContext, names: list[str] | None = None) -> pd.DataFrame:
    """One row per task-A sample (sample_id order), one float64 column per predictor output, in registry order."""
    names = list(PREDICTORS) if names is None else list(names)
    unknown = [name for name in names if name not in PREDICTORS]
    if unknown:
        raise ValueError(f"unknown predictor(s) {unknown}; known: {list(PREDICTORS)}")
    n = ctx.x_a.shape[0]
    table = pd.DataFrame(index=pd.RangeIndex(n))
    for name, (fn, _kind) in PREDICTORS.items():
        if name not in names:
            continue
        for column, values in fn(ctx).items():
            values = _to_numpy(values)
            if values.shape != (n,):
                raise ValueError(f"predictor {name!r} returned column {column!r} of shape {values.shape}, not ({n},)")
            if column in table.columns:
                raise ValueError(f"predictor {name!r} returned column {column!r}, which another predictor returned")
            if not any(fnmatch.fnmatchcase(column, p) for p in _COLUMNS[name]):
                raise ValueError(f"predictor {name!r} returned column {column!r}, not matching its declared "
                                 f"columns {_COLUMNS[name]}")
            table[column] = values
    return table


def predictor_kinds(columns) -> dict[str, str]:
    """column -> kind ("energy" | "baseline" | "forecast") for the columns a registered predictor produces (others left out);
    the columns in USES_TASK_B are "energy_task_b"."""
    kinds = {}
    for column in columns:
        for name, (_fn, kind) in PREDICTORS.items():
            if any(fnmatch.fnmatchcase(str(column), p) for p in _COLUMNS[name]):
                kinds[str(column)] = "energy_task_b" if name == "energy" and column in USES_TASK_B else kind
                break
    return kinds


def beta_multiple_column(m: float) -> str:
    """energy_a_beta{m}x with m formatted by ``:g`` and '.' -> 'p' (0.1 -> energy_a_beta0p1x, 10 -> ..._beta10x)."""
    return f"energy_a_beta{m:g}x".replace(".", "p")


def scott_bandwidth_sq(x: torch.Tensor) -> float:
    """h^2 of Scott's rule with a pooled scale: h = sigma N^(-1/(d+4)), sigma^2 = mean_i var_i(x) (ddof = 1)."""
    n, d = x.shape
    if n < 2:
        raise ValueError("Scott's bandwidth needs at least 2 samples")
    mean = x.mean(0, dtype=torch.float64)
    ss = sum(float(((chunk.double() - mean) ** 2).sum()) for chunk in x.split(_ROW_CHUNK))
    sigma_sq = ss / ((n - 1) * d)
    if not sigma_sq > 0:
        raise ValueError("all samples are identical: the KDE bandwidth would be 0")
    return sigma_sq * n ** (-2.0 / (d + 4))


def loo_kde_neglogdensity(x: torch.Tensor, bandwidth_sq: float) -> torch.Tensor:
    """-log( 1/(N-1) sum_{j != k} N(x_k; x_j, h^2 I) ) per row, as a streamed distance-form energy at beta = 1/h^2:

        -log p(x_k) = beta * E_distance(x_k | X without x_k; beta) + log(N - 1) + (d/2) log(2 pi h^2)
    """
    n, d = x.shape
    beta = 1.0 / bandwidth_sq
    energy = hopfield_energy(x, x, beta, form="distance", exclude_self=True).double()
    return beta * energy + math.log(n - 1) + 0.5 * d * math.log(2.0 * math.pi * bandwidth_sq)


def _to_numpy(values) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _flat(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    x = torch.as_tensor(x, device=device)
    return x.reshape(x.shape[0], -1)


def _loo_energy(ctx: PredictorContext, beta: float) -> torch.Tensor:
    x_a = _flat(ctx.x_a, ctx.device)
    return hopfield_energy(x_a, x_a, beta, form=ctx.form, exclude_self=True)


def _row_distances(x: torch.Tensor, centres: torch.Tensor, which: torch.Tensor) -> torch.Tensor:
    """|x_k - centres[which[k]]| in fp64, chunk by chunk."""
    parts = [(chunk.double() - centres[idx]).pow(2).sum(1).sqrt()
             for chunk, idx in zip(x.split(_ROW_CHUNK), which.split(_ROW_CHUNK))]
    return torch.cat(parts)


def _mass_and_rms(x: torch.Tensor, scale: float = 1.0, shift: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean_i u_i, sqrt(mean_i u_i^2)) per row of u = scale * x + shift, in fp64, chunk by chunk."""
    mass, rms = [], []
    for chunk in x.split(_ROW_CHUNK):
        u = chunk.double() * scale + shift
        mass.append(u.mean(1))
        rms.append(u.pow(2).mean(1).sqrt())
    return torch.cat(mass), torch.cat(rms)


@register_predictor("energy", "energy", columns=("energy_a", "energy_b", "energy_rise"))
def energy(ctx: PredictorContext) -> dict[str, np.ndarray]:
    energy_a = _to_numpy(_loo_energy(ctx, ctx.beta))
    energy_b = _to_numpy(hopfield_energy(_flat(ctx.x_a, ctx.device), _flat(ctx.x_b, ctx.device), ctx.beta,
                                         form=ctx.form))
    return {"energy_a": energy_a, "energy_b": energy_b, "energy_rise": energy_b - energy_a}


@register_predictor("energy_beta_grid", "energy", columns=("energy_a_beta*x",))
def energy_beta_grid(ctx: PredictorContext) -> dict[str, np.ndarray]:
    return {beta_multiple_column(m): _loo_energy(ctx, m * ctx.beta) for m in ctx.beta_multiples}


@register_predictor("energy_snr", "energy", columns=("energy_a_snr_t*",))
def energy_snr(ctx: PredictorContext) -> dict[str, np.ndarray]:
    return {f"energy_a_snr_t{t}": _loo_energy(ctx, ctx.snr_betas[t]) for t in sorted(ctx.snr_betas)}


@register_predictor("model_scores", "baseline", columns=("model_energy*", "recon_error*"))
def model_scores(ctx: PredictorContext) -> dict[str, np.ndarray]:
    return dict(ctx.model_scores)


@register_predictor("forecast", "forecast", columns=("proximity_b*", "grad_dot", "grad_cos", "probe_*"))
def forecasts(ctx: PredictorContext) -> dict[str, np.ndarray]:
    return dict(ctx.forecasts)


@register_predictor("knn", "baseline", columns=("knn*_dist",))
def knn(ctx: PredictorContext) -> dict[str, np.ndarray]:
    if not ctx.knn_k:
        return {}
    x_a = _flat(ctx.x_a, ctx.device)
    dist = knn_distances(x_a, x_a, max(ctx.knn_k), exclude_self=True).double()
    return {f"knn{k}_dist": dist[:, :k].mean(1) for k in ctx.knn_k}


@register_predictor("kde", "baseline", columns=("kde_neglogdensity",))
def kde(ctx: PredictorContext) -> dict[str, np.ndarray]:
    x_a = _flat(ctx.x_a, ctx.device)
    return {"kde_neglogdensity": loo_kde_neglogdensity(x_a, scott_bandwidth_sq(x_a))}


@register_predictor("class_mean", "baseline", columns=("dist_class_mean",))
def class_mean(ctx: PredictorContext) -> dict[str, np.ndarray]:
    x_a = _flat(ctx.x_a, ctx.device)
    classes, inverse = np.unique(np.asarray(ctx.labels_a), return_inverse=True)
    which = torch.as_tensor(inverse.reshape(-1), dtype=torch.long, device=x_a.device)
    sums = torch.zeros(len(classes), x_a.shape[1], dtype=torch.float64, device=x_a.device)
    for chunk, idx in zip(x_a.split(_ROW_CHUNK), which.split(_ROW_CHUNK)):
        sums.index_add_(0, idx, chunk.double())
    counts = torch.bincount(which, minlength=len(classes)).double()
    return {"dist_class_mean": _row_distances(x_a, sums / counts[:, None], which)}


@register_predictor("global_mean", "baseline", columns=("dist_global_mean",))
def global_mean(ctx: PredictorContext) -> dict[str, np.ndarray]:
    x_a = _flat(ctx.x_a, ctx.device)
    mean = x_a.mean(0, dtype=torch.float64)[None, :]
    which = torch.zeros(x_a.shape[0], dtype=torch.long, device=x_a.device)
    return {"dist_global_mean": _row_distances(x_a, mean, which)}


@register_predictor("pixel_stats", "baseline", columns=("pixel_mass", "pixel_norm"))
def pixel_stats(ctx: PredictorContext) -> dict[str, np.ndarray]:
    mass, norm = _mass_and_rms(_flat(ctx.pixels_a, ctx.device), scale=0.5, shift=0.5)  # u = (x + 1) / 2
    return {"pixel_mass": mass, "pixel_norm": norm}


@register_predictor("latent_stats", "baseline", columns=("latent_mass", "latent_norm"))
def latent_stats(ctx: PredictorContext) -> dict[str, np.ndarray]:
    if ctx.model_space_is_pixels:
        return {}
    mass, norm = _mass_and_rms(_flat(ctx.x_a, ctx.device))
    return {"latent_mass": mass, "latent_norm": norm}
