"""Retrieval dynamics and energies of a modern Hopfield network with fixed memories X (rows x_mu), fp64.

Energy (inner form, ``energy.hopfield_energy``) and retrieval update (``energy.retrieve``):

    E(z | X) = 1/2 |z|^2 - (1/beta) logsumexp_mu( beta x_mu . z ),      T(z) = X^T softmax(beta X z)

After a rotation V of every memory, E(z | X V^T) = E(V^T z | X) (V orthogonal), so all rotations are evaluated by
one ``hopfield_energy`` call on rotated queries. The energy with one replayed memory x_r added is the same energy
with that memory's term log-added to the log-partition, and the replay gain has a closed form:

    G_{r->k}  = E(xi*_k | X_B) - E(xi*_k | X_B u {x_r}) = (1/beta) log(1 + p_{r|k} exp(beta dE_k))
    G0_{r->k} = (1/beta) log(1 + p_{r|k})                     (no drift: dE = 0),   p_{r|k} = softmax_r(beta X xi*_k)

Pairs (source r, target k) fall into families by the kinds and groups of r and k (``family_matrix``).
"""

from __future__ import annotations

import numpy as np
import torch

from ..energy import hopfield_energy, retrieve
from .geometry import DTYPE

# Families of (source r, target k) pairs. The paper's geometry has the first five; general memory sets may
# also have pairs of different clusters and pairs of different outliers.
FAMILIES = (
    "outlier_self",
    "cluster_self",
    "within_cluster",
    "outlier_to_cluster",
    "cluster_to_outlier",
    "cross_cluster",
    "outlier_to_outlier",
)
CROSS_GROUP = ("outlier_to_cluster", "cluster_to_outlier", "cross_cluster", "outlier_to_outlier")


def fixed_points(memories: torch.Tensor, beta: float, start: torch.Tensor | None = None, *, tol: float = 1e-13,
                 max_iter: int = 10000) -> tuple[torch.Tensor, int]:
    """Iterate the retrieval update z <- X^T softmax(beta X z) (``energy.retrieve``, all queries at once) from
    ``start`` (default: the memories themselves) until max |z_new - z| <= tol. Returns (fixed points, iterations)."""
    z = (memories if start is None else start).to(DTYPE).clone()
    x = memories.to(DTYPE)
    for it in range(1, max_iter + 1):
        z_new = retrieve(z, x, beta)
        step = float((z_new - z).abs().max())
        z = z_new
        if step <= tol:
            return z, it
    raise ValueError(f"fixed-point iteration did not reach tol={tol} in {max_iter} steps (last step {step:.3g}); "
                     "raise fp_max_iter or tol")


def retrieval_weights(queries: torch.Tensor, memories: torch.Tensor, beta: float) -> torch.Tensor:
    """p[k, r] = softmax_r(beta x_r . z_k): the retrieval weight of memory r at query k."""
    return torch.softmax(beta * (queries.to(DTYPE) @ memories.to(DTYPE).T), dim=1)


def retrieval_jacobian(z: torch.Tensor, memories: torch.Tensor, beta: float) -> torch.Tensor:
    """Jacobian of T(z) = X^T softmax(beta X z): J = beta X^T (diag p - p p^T) X, shape (K, d, d), symmetric PSD."""
    x = memories.to(DTYPE)
    p = retrieval_weights(z, x, beta)  # (K, M)
    cov = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
    return beta * torch.einsum("mi,kmn,nj->kij", x, cov, x)


def spectral_radius(jac: torch.Tensor) -> torch.Tensor:
    """Largest |eigenvalue| of each (symmetric) Jacobian in a batch."""
    return torch.linalg.eigvalsh(jac).abs().amax(dim=-1)


def energies_after_rotation(queries: torch.Tensor, memories: torch.Tensor, rot: torch.Tensor, beta: float
                            ) -> torch.Tensor:
    """E(z_k | X V_b^T) for every rotation b and query k, shape (B, K).

    Uses E(z | X V^T) = E(V^T z | X) (V orthogonal): one ``hopfield_energy`` call on the B*K rotated queries.
    """
    b, k, d = rot.shape[0], queries.shape[0], queries.shape[1]
    rotated = torch.einsum("bji,kj->bki", rot, queries.to(DTYPE))  # V_b^T z_k
    return hopfield_energy(rotated.reshape(b * k, d), memories.to(DTYPE), beta).reshape(b, k)


def energies_with_added_memory(queries: torch.Tensor, energy_new: torch.Tensor, added: torch.Tensor, beta: float
                               ) -> torch.Tensor:
    """E(z_k | X_B u {a_r}) for every rotation b, added memory r and query k, shape (B, R, K).

    The energy of the union re-evaluated from its parts: the log-partition of X_B, recovered from the energy
    E(z | X_B) = |z|^2 / 2 - L_B / beta, log-added to the new memory's term beta a_r . z.
    """
    q = queries.to(DTYPE)
    half_sq = 0.5 * (q * q).sum(1)  # (K,)
    lse_new = beta * (half_sq[None, :] - energy_new)  # (B, K)
    added_logits = beta * (added.to(DTYPE) @ q.T)  # (R, K)
    lse_union = torch.logaddexp(lse_new[:, None, :], added_logits[None, :, :])  # (B, R, K)
    return half_sq[None, None, :] - lse_union / beta


def replay_gain_identity(p: torch.Tensor, rise: torch.Tensor, beta: float) -> torch.Tensor:
    """The closed formula G = (1/beta) log(1 + p exp(beta dE)) (for checks; the experiment computes G directly)."""
    return torch.log1p(p * torch.exp(beta * rise)) / beta


def no_drift_gain(p: torch.Tensor, beta: float) -> torch.Tensor:
    """G0 = (1/beta) log(1 + p): the gain of re-adding x_r when nothing moved (dE = 0)."""
    return torch.log1p(p) / beta


def family_matrix(kind: np.ndarray, group: np.ndarray) -> np.ndarray:
    """(M, M) array of family names indexed [source r, target k]."""
    m = len(kind)
    out = np.empty((m, m), dtype=object)
    for r in range(m):
        for k in range(m):
            src, tgt = kind[r], kind[k]
            if r == k:
                out[r, k] = f"{tgt}_self"
            elif src == "cluster" and tgt == "cluster":
                out[r, k] = "within_cluster" if group[r] == group[k] else "cross_cluster"
            else:
                out[r, k] = f"{src}_to_{tgt}"
    return out
