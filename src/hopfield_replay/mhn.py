"""The closed-form modern Hopfield experiment: intrinsic forgetting and replay gains under a small rotation.

Memories X_A (rows x_mu, task A). Energy (inner form, ``energy.hopfield_energy``):

    E(z | X) = 1/2 |z|^2 - (1/beta) logsumexp_mu( beta x_mu . z )

Geometry of the paper: n unit-norm cluster patterns x_i = sqrt(c) e_0 + sqrt(1-c) e_i (pairwise overlap c) and
one outlier x_o = e_{n+1}, in dimension d. Any other memory set (Gaussian clusters of different sizes plus
isolated outliers) goes through the same code.

Task change: every pattern is rotated, X_B = X_A V^T with V = expm(eps Omega), Omega = (W - W^T)/2,
W_ij ~ N(0, 1); many rotations, drawn once from a seed and shared by every eps (common random numbers).

Per old sample k, with xi*_k the fixed point of z <- X_A^T softmax(beta X_A z) reached from x_k:

    dE_k     = E(xi*_k | X_B) - E(xi*_k | X_A)                              (intrinsic forgetting)
    G_{r->k} = E(xi*_k | X_B) - E(xi*_k | X_B u {x_r})                      (replay gain, computed directly)
             = (1/beta) log(1 + p_{r|k} exp(beta dE_k)),  p_{r|k} = softmax_r(beta X_A xi*_k)   (identity)
    G0_{r->k} = (1/beta) log(1 + p_{r|k})                                   (no-drift gain: dE = 0)
    net gain  = G - G0 ~ p/(1+p) dE_k                                       (benefit due to forgetting)

Since V is orthogonal, E(z | X_A V^T) = E(V^T z | X_A): all rotations are evaluated by one call of
``hopfield_energy`` on rotated queries against the shared memory X_A. The energy with one replayed memory added
is the same energy with that memory's term log-added to the log-partition, exactly as ``hopfield_energy`` merges
memory chunks (logaddexp of partial log-sum-exps).
"""

from __future__ import annotations

import math
import time
import typing
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .energy import hopfield_energy, retrieve
from .params import ParamsError, spec
from .stats import bootstrap_ci, spearman_ci

DTYPE = torch.float64

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


# --------------------------------------------------------------------------------------------------------------
# Parameters


@dataclass
class MHNClosedFormParams:
    """``mhn_closed_form`` section of params.yaml."""

    geometry: typing.Literal["paper", "clusters"] = "paper"
    # geometry 'paper': n cluster patterns with overlap c, one orthogonal outlier, dimension d
    n: int = spec(12, min=1)
    c: float = spec(0.35, min=0.0, max=1.0)
    d: int = spec(50, min=2)
    beta: float = spec(8.0, min=1e-9)
    # geometry 'clusters': Gaussian clusters of these sizes plus isolated outliers (random directions), in d dims
    cluster_sizes: list[int] = spec(default_factory=lambda: [20, 8, 3], nonempty=True, min=1)
    cluster_spread: float = spec(0.6, min=0.0)
    n_outliers: int = spec(3, min=0)
    normalize: bool = True
    memory_seed: int = spec(0, min=0)
    # task change and estimation
    rotations: int = spec(2000, min=1)
    eps: list[float] = spec(default_factory=lambda: [0.05, 0.02], nonempty=True, min=1e-12, max=10.0)
    seed: int = spec(0, min=0)
    rotation_chunk: int = spec(500, min=1)
    fp_tol: float = spec(1e-13, min=0.0)
    fp_max_iter: int = spec(10000, min=1)
    bootstrap: int = spec(2000, min=10)
    ci_level: float = spec(0.95, min=0.5, max=0.999)
    write_gains: bool = True
    threads: int = spec(1, min=0)  # torch CPU threads for the stage (0: torch's default); 1 is fastest on a busy 2-core box

    def validate(self, section: str) -> None:
        if len(set(self.eps)) != len(self.eps):
            raise ParamsError(f"{section}.eps: {self.eps} lists a value twice")
        if self.geometry == "paper":
            if self.c >= 1.0:
                raise ParamsError(f"{section}.c: must be < 1 (c = 1 makes all cluster patterns identical), got {self.c}")
            if self.d < self.n + 2:
                raise ParamsError(f"{section}.d: the paper geometry needs d >= n + 2 = {self.n + 2}, got {self.d}")
        else:
            if sum(self.cluster_sizes) + self.n_outliers < 2:
                raise ParamsError(f"{section}.cluster_sizes: need at least 2 memories in all")


# --------------------------------------------------------------------------------------------------------------
# Memory sets


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


def memory_set_from_params(p: MHNClosedFormParams) -> MemorySet:
    if p.geometry == "paper":
        return paper_geometry(p.n, p.c, p.d)
    return gaussian_clusters(p.cluster_sizes, p.n_outliers, p.d, p.cluster_spread, p.memory_seed, p.normalize)


# --------------------------------------------------------------------------------------------------------------
# Rotations, fixed points, energies, gains


def rotation_generators(rng: np.random.Generator, count: int, d: int) -> torch.Tensor:
    """Omega = (W - W^T)/2 with W_ij ~ N(0, 1), shape (count, d, d), fp64. Drawn with NumPy so that drawing in
    chunks gives the same stream as drawing at once."""
    w = torch.from_numpy(rng.standard_normal((count, d, d)))
    return (w - w.transpose(1, 2)) / 2.0


def rotations(omega: torch.Tensor, eps: float) -> torch.Tensor:
    """V = expm(eps Omega), batched (torch.linalg.matrix_exp); orthogonal since Omega is antisymmetric."""
    return torch.linalg.matrix_exp(eps * omega)


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


# --------------------------------------------------------------------------------------------------------------
# The experiment


@dataclass
class ClosedFormResult:
    memory: MemorySet
    fixed_points: pd.DataFrame  # per sample
    energies: pd.DataFrame  # per eps, rotation, sample
    gains: pd.DataFrame | None  # per eps, rotation, source, target
    summary: pd.DataFrame  # per eps, quantity: estimate with interval
    metrics: dict
    per_rotation: dict = field(default_factory=dict)  # eps -> {quantity: (R,) array}


def _masked_rotation_mean(values: torch.Tensor, mask: np.ndarray) -> np.ndarray:
    """Mean over the (r, k) pairs in ``mask`` for each rotation: values (B, R, K) -> (B,)."""
    m = torch.from_numpy(mask)
    return (values[:, m].mean(dim=1)).numpy()


def run_closed_form(p: MHNClosedFormParams, memory: MemorySet | None = None, *, log=None) -> ClosedFormResult:
    """Fixed points, energies and rises, the direct gain matrix and its families for every rotation and eps."""
    t0 = time.perf_counter()
    memory = memory if memory is not None else memory_set_from_params(p)
    x = memory.patterns.to(DTYPE)
    m, d = x.shape
    beta = p.beta
    kind, group = memory.kind, memory.group
    is_out = kind == "outlier"
    is_clu = kind == "cluster"

    # Fixed points of the old memory, reached from each stored pattern; their energy, stability and weights.
    xi, n_iter = fixed_points(x, beta, tol=p.fp_tol, max_iter=p.fp_max_iter)
    energy_a = hopfield_energy(xi, x, beta)  # (M,)
    energy_pattern = hopfield_energy(x, x, beta)
    radius = spectral_radius(retrieval_jacobian(xi, x, beta))
    weights_old = retrieval_weights(xi, x, beta)  # p[k, r]
    p_rk = weights_old.T  # [source r, target k]
    gain0 = no_drift_gain(p_rk, beta)  # (R, K)
    fp = memory.frame()
    fp["energy_pattern"] = energy_pattern.numpy()
    fp["energy_a"] = energy_a.numpy()
    fp["fp_distance"] = (xi - x).norm(dim=1).numpy()
    fp["self_weight"] = torch.diagonal(weights_old).numpy()
    fp["jacobian_radius"] = radius.numpy()
    fp["fp_iterations"] = n_iter

    fam = family_matrix(kind, group)
    families = [f for f in FAMILIES if (fam == f).any()]
    masks = {f: fam == f for f in families}
    src_idx, tgt_idx = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")

    rng = np.random.default_rng(p.seed)
    energy_rows, gain_rows = [], []
    per_rot: dict[float, dict[str, list]] = {e: {} for e in p.eps}
    max_identity_err = 0.0
    for start in range(0, p.rotations, p.rotation_chunk):
        count = min(p.rotation_chunk, p.rotations - start)
        omega = rotation_generators(rng, count, d)
        rot_ids = np.arange(start, start + count, dtype=np.int64)
        for eps in p.eps:
            v = rotations(omega, eps)
            energy_b = energies_after_rotation(xi, x, v, beta)  # (B, K)
            rise = energy_b - energy_a[None, :]
            energy_union = energies_with_added_memory(xi, energy_b, x, beta)  # (B, R, K)
            gain = energy_b[:, None, :] - energy_union
            net = gain - gain0[None]
            identity = replay_gain_identity(p_rk[None], rise[:, None, :], beta)
            max_identity_err = max(max_identity_err, float((identity - gain).abs().max()))

            acc = per_rot[eps]
            rise_np = rise.numpy()
            if is_out.any():
                acc.setdefault("rise_outlier", []).append(rise_np[:, is_out].mean(1))
            if is_clu.any():
                acc.setdefault("rise_cluster", []).append(rise_np[:, is_clu].mean(1))
            for f in families:
                acc.setdefault(f"gain_{f}", []).append(_masked_rotation_mean(gain, masks[f]))
                acc.setdefault(f"net_gain_{f}", []).append(_masked_rotation_mean(net, masks[f]))
            acc.setdefault("rise_per_sample", []).append(rise_np)

            energy_rows.append(pd.DataFrame({
                "eps": np.float64(eps),
                "rotation": np.repeat(rot_ids, m),
                "sample_id": np.tile(np.arange(m, dtype=np.int64), count),
                "kind": np.tile(kind.astype(str), count),
                "group": np.tile(group, count),
                "energy_a": np.tile(energy_a.numpy(), count),
                "energy_b": energy_b.numpy().reshape(-1),
                "energy_rise": rise_np.reshape(-1),
            }))
            if p.write_gains:
                gain_rows.append(pd.DataFrame({
                    "eps": np.float64(eps),
                    "rotation": np.repeat(rot_ids, m * m),
                    "source_id": np.tile(src_idx.reshape(-1), count).astype(np.int64),
                    "target_id": np.tile(tgt_idx.reshape(-1), count).astype(np.int64),
                    "family": np.tile(fam.reshape(-1).astype(str), count),
                    "gain": gain.numpy().reshape(-1),
                    "gain_no_drift": np.tile(gain0.numpy().reshape(-1), count),
                    "net_gain": net.numpy().reshape(-1),
                }))

    per_rotation = {e: {k: np.concatenate(v) for k, v in acc.items()} for e, acc in per_rot.items()}
    summary, metrics = _summarise(p, memory, per_rotation, families, energy_a.numpy())
    metrics["fixed_points"] = {
        "max_jacobian_radius": float(radius.max()),
        "iterations": int(n_iter),
        "energy_outlier": float(energy_a[torch.from_numpy(is_out)].mean()) if is_out.any() else None,
        "energy_cluster": float(energy_a[torch.from_numpy(is_clu)].mean()) if is_clu.any() else None,
    }
    metrics["max_abs_gain_identity_error"] = max_identity_err
    metrics["memories"] = int(m)
    metrics["rotations"] = int(p.rotations)
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    energies = pd.concat(energy_rows, ignore_index=True)
    gains = pd.concat(gain_rows, ignore_index=True) if gain_rows else None
    return ClosedFormResult(memory, fp, energies, gains, summary, metrics, per_rotation)


def _eps_key(eps: float) -> str:
    return f"eps_{eps:g}"


def _order_holds(acc: dict, families: list[str]) -> np.ndarray | None:
    """Per rotation: outlier self > cluster self > within-cluster > every cross-group family present."""
    chain = [f for f in ("outlier_self", "cluster_self", "within_cluster") if f in families]
    cross = [f for f in CROSS_GROUP if f in families]
    if len(chain) < 3 or not cross:
        return None
    a, b, c = (acc[f"net_gain_{f}"] for f in chain)
    cross_max = np.max(np.stack([acc[f"net_gain_{f}"] for f in cross]), axis=0)
    return (a > b) & (b > c) & (c > cross_max)


def _summarise(p: MHNClosedFormParams, memory: MemorySet, per_rotation: dict, families: list[str],
               energy_a: np.ndarray) -> tuple[pd.DataFrame, dict]:
    rows = []
    metrics: dict = {}
    boot = dict(n_boot=p.bootstrap, seed=p.seed, level=p.ci_level)
    for eps, acc in per_rotation.items():
        em: dict = {}
        quantities = {k: v for k, v in acc.items() if k != "rise_per_sample"}
        if "rise_outlier" in acc and "rise_cluster" in acc:
            quantities["rise_outlier_minus_cluster"] = acc["rise_outlier"] - acc["rise_cluster"]
        for name, values in quantities.items():
            ci = bootstrap_ci(values, n_boot=p.bootstrap, seed=p.seed, level=p.ci_level)
            rows.append((eps, name, ci.estimate, ci.low, ci.high, values.size))
            em[name] = ci.estimate
            em[f"{name}_ci"] = [ci.low, ci.high]
        if "rise_outlier" in acc and "rise_cluster" in acc:
            frac = float(np.mean(acc["rise_outlier"] > acc["rise_cluster"]))
            rows.append((eps, "frac_rotations_outlier_rise_gt_cluster", frac, np.nan, np.nan, acc["rise_outlier"].size))
            em["frac_rotations_outlier_rise_gt_cluster"] = frac
        order = _order_holds(acc, families)
        if order is not None:
            means = [float(acc[f"net_gain_{f}"].mean()) for f in families]
            em["family_order_of_means_holds"] = bool(_order_holds({f"net_gain_{f}": np.array([v]) for f, v in
                                                                   zip(families, means)}, families)[0])
            rows.append((eps, "frac_rotations_family_order", float(order.mean()), np.nan, np.nan, order.size))
            em["frac_rotations_family_order"] = float(order.mean())
        mean_rise = acc["rise_per_sample"].mean(0)
        if np.ptp(energy_a) > 0 and np.ptp(mean_rise) > 0:
            rho = spearman_ci(energy_a, mean_rise, **boot)
            rows.append((eps, "spearman_energy_vs_rise", rho.estimate, rho.low, rho.high, energy_a.size))
            em["spearman_energy_vs_rise"] = rho.estimate
            em["spearman_energy_vs_rise_ci"] = [rho.low, rho.high]
        metrics[_eps_key(eps)] = em
    if len(per_rotation) >= 2:
        (e1, a1), (e2, a2) = list(per_rotation.items())[:2]
        for kind in ("outlier", "cluster"):
            key = f"rise_{kind}"
            if key in a1 and key in a2 and a2[key].mean() != 0:
                metrics[f"rise_ratio_{kind}_eps{e1:g}_over_eps{e2:g}"] = float(a1[key].mean() / a2[key].mean())
        metrics["rise_ratio_expected_second_order"] = float((e1 / e2) ** 2)
    summary = pd.DataFrame(rows, columns=["eps", "quantity", "estimate", "ci_low", "ci_high", "n"])
    summary["n"] = summary["n"].astype(np.int64)
    return summary, metrics
