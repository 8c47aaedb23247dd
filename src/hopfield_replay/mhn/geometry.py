"""Memory sets of the Hopfield experiments (patterns with a kind and a group per row) and the random rotations
that model a task change.

Geometry of the paper: n unit-norm cluster patterns x_i = sqrt(c) e_0 + sqrt(1-c) e_i (pairwise overlap c) and
one outlier x_o = e_{n+1}, in dimension d. Any other memory set (Gaussian clusters of different sizes plus
isolated outliers) goes through the same code.

Task change: every pattern is rotated, X_B = X_A V^T with V = expm(eps Omega), Omega = (W - W^T)/2, W_ij ~ N(0, 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

DTYPE = torch.float64


@dataclass
class MemorySet:
    """Patterns (M, d) in fp64, with each row's kind ('cluster' | 'outlier') and group (cluster index, -1)."""

    patterns: torch.Tensor
    kind: np.ndarray
    group: np.ndarray
    description: str = ""

    def __post_init__(self) -> None:
        self.kind = np.asarray(self.kind, dtype=object)
        self.group = np.asarray(self.group, dtype=np.int64)
        if self.patterns.ndim != 2 or self.patterns.shape[0] != len(self.kind) or len(self.kind) != len(self.group):
            raise ValueError("MemorySet: patterns, kind and group must describe the same rows")

    @property
    def size(self) -> int:
        return int(self.patterns.shape[0])

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame({"sample_id": np.arange(self.size, dtype=np.int64), "kind": self.kind.astype(str),
                             "group": self.group})


def paper_geometry(n: int = 12, c: float = 0.35, d: int = 50) -> MemorySet:
    """x_i = sqrt(c) e_0 + sqrt(1-c) e_i (i = 1..n, unit norm, x_i . x_j = c) and the outlier x_o = e_{n+1}."""
    if d < n + 2:
        raise ValueError(f"paper geometry needs d >= n + 2, got d={d}, n={n}")
    x = torch.zeros(n + 1, d, dtype=DTYPE)
    x[:n, 0] = math.sqrt(c)
    x[torch.arange(n), torch.arange(1, n + 1)] = math.sqrt(1.0 - c)
    x[n, n + 1] = 1.0
    return MemorySet(x, ["cluster"] * n + ["outlier"], [0] * n + [-1], f"paper n={n} c={c} d={d}")


def gaussian_clusters(sizes: list[int], n_outliers: int, d: int, spread: float, seed: int = 0,
                      normalize: bool = True) -> MemorySet:
    """Clusters around random unit-norm centres, members = centre + (spread / sqrt(d)) N(0, I) (so ``spread`` is
    the RMS distance of a member from its centre), plus ``n_outliers`` isolated random directions; rows rescaled
    to unit norm when ``normalize``."""
    rng = np.random.default_rng(seed)
    rows, kind, group = [], [], []
    for g, size in enumerate(sizes):
        centre = rng.standard_normal(d)
        centre /= np.linalg.norm(centre)
        rows.append(centre + spread / math.sqrt(d) * rng.standard_normal((size, d)))
        kind += ["cluster"] * size
        group += [g] * size
    if n_outliers:
        rows.append(rng.standard_normal((n_outliers, d)) / math.sqrt(d))
        kind += ["outlier"] * n_outliers
        group += [-1] * n_outliers
    x = np.concatenate(rows)
    if normalize:
        x /= np.linalg.norm(x, axis=1, keepdims=True)
    desc = f"clusters sizes={list(sizes)} outliers={n_outliers} d={d} spread={spread} seed={seed}"
    return MemorySet(torch.from_numpy(x).to(DTYPE), kind, group, desc)


def rotation_generators(rng: np.random.Generator, count: int, d: int) -> torch.Tensor:
    """Omega = (W - W^T)/2 with W_ij ~ N(0, 1), shape (count, d, d), fp64. Drawn with NumPy so that drawing in
    chunks gives the same stream as drawing at once."""
    w = torch.from_numpy(rng.standard_normal((count, d, d)))
    return (w - w.transpose(1, 2)) / 2.0


def rotations(omega: torch.Tensor, eps: float) -> torch.Tensor:
    """V = expm(eps Omega), batched (torch.linalg.matrix_exp); orthogonal since Omega is antisymmetric."""
    return torch.linalg.matrix_exp(eps * omega)

