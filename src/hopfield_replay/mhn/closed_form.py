"""The closed-form modern Hopfield experiment: intrinsic forgetting and replay gains under a small rotation.

Memories X_A (rows x_mu, task A; ``geometry``), rotated to X_B = X_A V^T by many random rotations drawn once from a
seed and shared by every eps (common random numbers). Per old sample k, with xi*_k the fixed point of
z <- X_A^T softmax(beta X_A z) reached from x_k (``dynamics``):

    dE_k      = E(xi*_k | X_B) - E(xi*_k | X_A)                              (intrinsic forgetting)
    G_{r->k}  = E(xi*_k | X_B) - E(xi*_k | X_B u {x_r})                      (replay gain, computed directly)
              = (1/beta) log(1 + p_{r|k} exp(beta dE_k))                     (identity, checked every rotation)
    G0_{r->k} = (1/beta) log(1 + p_{r|k})                                   (no-drift gain: dE = 0)
    net gain  = G - G0 ~ p/(1+p) dE_k                                       (benefit due to forgetting)

``run_closed_form`` computes them for every rotation and eps; the summary gives bootstrap intervals over rotations
of the mean rise per kind, the mean (net) gain per family, and the Spearman correlation of energy with rise (energies
equal up to rounding ranked as ties: stats.fp_ties; only with three or more distinct energies, so not in the paper
geometry, whose two energies the outlier-minus-cluster rise compares).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from ..io.mhn_params import MHNClosedFormParams
from ..energy import hopfield_energy
from ..analysis.stats import bootstrap_ci, fp_ties, spearman_ci
from .dynamics import (
    CROSS_GROUP,
    FAMILIES,
    energies_after_rotation,
    energies_with_added_memory,
    family_matrix,
    fixed_points,
    no_drift_gain,
    replay_gain_identity,
    retrieval_jacobian,
    retrieval_weights,
    spectral_radius,
)
from .geometry import DTYPE, MemorySet, gaussian_clusters, paper_geometry, rotation_generators, rotations


def memory_set_from_params(p: MHNClosedFormParams) -> MemorySet:
    """The paper geometry (n, c, d) or Gaussian clusters plus outliers, as ``p.geometry`` says."""
    if p.geometry == "paper":
        return paper_geometry(p.n, p.c, p.d)
    return gaussian_clusters(p.cluster_sizes, p.n_outliers, p.d, p.cluster_spread, p.memory_seed, p.normalize)


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


def run_closed_form(p: MHNClosedFormParams, memory: MemorySet | None = None) -> ClosedFormResult:
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
    summary, metrics = _summarise(p, per_rotation, families, energy_a.numpy())
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


def _summarise(p: MHNClosedFormParams, per_rotation: dict, families: list[str], energy_a: np.ndarray
               ) -> tuple[pd.DataFrame, dict]:
    """Per eps and quantity: the bootstrap estimate and interval over rotations (the summary table), and the
    metrics (the same numbers, the ordering checks, the rise ratio between the first two eps)."""
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
        # energies equal up to rounding are one tie (the paper geometry's cluster members come out a few ulp
        # apart); with two distinct energies a rank correlation only says where one group's rise ranks, which
        # rise_outlier_minus_cluster says with an interval over rotations, so it needs three
        tied = fp_ties(energy_a)
        if np.unique(tied).size >= 3 and np.ptp(mean_rise) > 0:
            rho = spearman_ci(tied, mean_rise, **boot)
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
