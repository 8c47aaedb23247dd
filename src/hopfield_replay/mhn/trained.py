"""MHN-BM: a modern Hopfield network whose memories are parameters, trained by maximum likelihood, task A then B.

Density (memories xi_mu, rows of Xi; inverse temperature beta):

    p(v) = (1/Z) sum_mu exp(beta xi_mu . v - beta |v|^2 / 2) = (1/Z) exp(-beta E(v | Xi))
    E(v | Xi) = 1/2 |v|^2 - (1/beta) logsumexp_mu(beta xi_mu . v)          (``energy.hopfield_energy``, inner form)
    Z = (2 pi / beta)^(d/2) sum_mu exp(beta |xi_mu|^2 / 2)

i.e. a Gaussian mixture with means xi_mu, covariance I / beta and weights ~ exp(beta |xi_mu|^2 / 2). The loss is
the negative log-likelihood divided by beta (same minimiser, O(1) scale), up to a constant:

    L(Xi; D) = mean_{v in D} E(v | Xi) + (1/beta) logsumexp_mu(beta |xi_mu|^2 / 2)

Training: Adam on Xi, full batch, first on task-A data, then (fresh Adam state) on task-B data. Replay arms mix a
buffer R of ``replay_budget`` task-A samples, chosen at the end of task A from E(v | Xi_A) alone, into task B:

    L_B = (1 - f) mean_{v in B} E(v | Xi) + f mean_{v in R} E(v | Xi) + (1/beta) logsumexp(beta |xi|^2 / 2)

with the same budget and fraction f in every arm (energy_high, random, energy_low: the pipeline's replay
selectors, ``replay.rank_samples``), and f = 0 for 'none'.
Forgetting of each task-A point: dE(v) = E(v | Xi after B, arm) - E(v | Xi_A).
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import torch

from ..io.mhn_params import MHNTrainedParams
from ..energy import hopfield_energy
from ..measures.forgetting import energy_deciles
from ..replay import rank_samples
from ..analysis.stats import bootstrap_ci, spearman_ci
from .geometry import DTYPE, MemorySet, gaussian_clusters, rotation_generators, rotations

# Replay arms: the pipeline's selectors (``replay.rank_samples``) on the task-A energies, and no replay.
ARMS = ("energy_high", "random", "energy_low", "none")


def nll(data: torch.Tensor, memories: torch.Tensor, beta: float, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Negative log-likelihood / beta, up to a constant: weighted mean energy + (1/beta) logsumexp(beta|xi|^2/2)."""
    energy = hopfield_energy(data, memories, beta)
    mean_energy = energy.mean() if weights is None else (weights * energy).sum()
    return mean_energy + torch.logsumexp(0.5 * beta * (memories * memories).sum(1), 0) / beta


def train_memories(memories: torch.Tensor, beta: float, data: torch.Tensor, steps: int, lr: float,
                   replay: torch.Tensor | None = None, replay_fraction: float = 0.0) -> torch.Tensor:
    """Adam (fresh state), full batch, on L = (1-f) mean_D E + f mean_R E + (1/beta) logsumexp(beta|xi|^2/2)."""
    xi = memories.detach().clone().to(DTYPE).requires_grad_(True)
    opt = torch.optim.Adam([xi], lr=lr)
    if replay is not None and len(replay) and replay_fraction > 0:
        batch = torch.cat([data, replay]).to(DTYPE)
        w = torch.cat([torch.full((len(data),), (1 - replay_fraction) / len(data), dtype=DTYPE),
                       torch.full((len(replay),), replay_fraction / len(replay), dtype=DTYPE)])
    else:
        batch, w = data.to(DTYPE), None
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        loss = nll(batch, xi, beta, w)
        loss.backward()
        opt.step()
    return xi.detach()


def replay_buffer(energy: np.ndarray, arm: str, budget: int, seed: int) -> np.ndarray:
    """Indices (ascending) of the replay buffer: the first ``budget`` of the ranking of ``replay.rank_samples``
    (energy_high: highest energies, energy_low: lowest, random: a seeded permutation; buffers of different budgets
    are nested), or none for arm 'none'."""
    if arm not in ARMS:
        raise ValueError(f"unknown replay arm {arm!r}; use one of {', '.join(ARMS)}")
    if arm == "none":
        return np.zeros(0, dtype=np.int64)
    ranking = rank_samples(energy, np.arange(len(energy), dtype=np.int64), arm, seed=seed)
    return np.sort(ranking[:budget])


def make_tasks(p: MHNTrainedParams, seed: int) -> tuple[MemorySet, torch.Tensor]:
    """Task A: Gaussian clusters plus isolated outliers (unit-norm rows in R^d). Task B: 'rotated' = the task-A
    samples rotated by V = expm(task_b_eps Omega) (the closed-form task change, applied to the data);
    'new_clusters' = fresh clusters around new random centres."""
    a = gaussian_clusters(p.task_a_clusters, p.task_a_outliers, p.d, p.cluster_spread, seed=2 * seed + 1)
    if p.task_b == "rotated":
        omega = rotation_generators(np.random.default_rng(2 * seed + 2), 1, p.d)
        b = a.patterns @ rotations(omega, p.task_b_eps)[0].T
    else:
        b = gaussian_clusters(p.task_b_clusters, 0, p.d, p.cluster_spread, seed=2 * seed + 2).patterns
    return a, b


def run_seed(p: MHNTrainedParams, seed: int) -> tuple[pd.DataFrame, dict]:
    """Train on A, pick the buffers, train on B per arm; one row per (arm, task-A sample)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    task_a, xb = make_tasks(p, seed)
    xa = task_a.patterns
    init = xa[torch.from_numpy(rng.choice(len(xa), size=p.memories, replace=False))]
    xi_a = train_memories(init, p.beta, xa, p.steps_a, p.lr)
    with torch.no_grad():
        energy_a = hopfield_energy(xa, xi_a, p.beta).numpy()
        energy_b_data = hopfield_energy(xb, xi_a, p.beta).numpy()
    decile = np.asarray(energy_deciles(energy_a, p.deciles), dtype=np.int64)
    frames = []
    info = {"nll_a": float(nll(xa, xi_a, p.beta)), "mean_energy_task_b_before": float(energy_b_data.mean())}
    for arm in p.arms:
        buffer = replay_buffer(energy_a, arm, p.replay_budget, seed)
        xi_b = train_memories(xi_a, p.beta, xb, p.steps_b, p.lr, replay=xa[torch.from_numpy(buffer)],
                              replay_fraction=p.replay_fraction)
        with torch.no_grad():
            energy_after = hopfield_energy(xa, xi_b, p.beta).numpy()
            info[f"nll_b_{arm}"] = float(nll(xb, xi_b, p.beta))
        replayed = np.zeros(len(xa), dtype=bool)
        replayed[buffer] = True
        frames.append(pd.DataFrame({
            "seed": np.int64(seed), "strategy": arm, "budget": np.int64(0 if arm == "none" else p.replay_budget),
            "sample_id": np.arange(len(xa), dtype=np.int64), "kind": task_a.kind.astype(str), "group": task_a.group,
            "energy_a": energy_a, "energy_after_b": energy_after, "energy_rise": energy_after - energy_a,
            "decile": decile, "replayed": replayed,
        }))
    return pd.concat(frames, ignore_index=True), info


def summarise(p: MHNTrainedParams, table: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Per arm: mean rise over all task-A points, over non-replayed points, by kind and in the top energy decile,
    with bootstrap intervals over (seed, sample) points; Spearman of energy_a vs rise per arm."""
    boot = dict(n_boot=p.bootstrap, seed=0, level=p.ci_level)
    rows, metrics = [], {}
    top = p.deciles - 1
    for arm, df in table.groupby("strategy", sort=False):
        subsets = {
            "rise_all": df, "rise_not_replayed": df[~df.replayed], "rise_outlier": df[df.kind == "outlier"],
            "rise_cluster": df[df.kind == "cluster"], "rise_top_decile": df[df.decile == top],
            "rise_bottom_decile": df[df.decile == 0],
        }
        am = {}
        for name, sub in subsets.items():
            if len(sub) == 0:
                continue
            ci = bootstrap_ci(sub.energy_rise.to_numpy(), **boot)
            rows.append((arm, name, ci.estimate, ci.low, ci.high, len(sub)))
            am[name] = ci.estimate
            am[f"{name}_ci"] = [ci.low, ci.high]
        rho = spearman_ci(df.energy_a.to_numpy(), df.energy_rise.to_numpy(), **boot)
        rows.append((arm, "spearman_energy_vs_rise", rho.estimate, rho.low, rho.high, len(df)))
        am["spearman_energy_vs_rise"] = rho.estimate
        am["spearman_energy_vs_rise_ci"] = [rho.low, rho.high]
        metrics[arm] = am
    summary = pd.DataFrame(rows, columns=["strategy", "quantity", "estimate", "ci_low", "ci_high", "n"])
    summary["n"] = summary["n"].astype(np.int64)
    return summary, metrics


def run_trained(p: MHNTrainedParams) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """All seeds and arms: (per-sample table, summary table, metrics)."""
    t0 = time.perf_counter()
    frames, infos = [], {}
    for seed in p.seeds:
        df, info = run_seed(p, seed)
        frames.append(df)
        infos[f"seed_{seed}"] = info
    table = pd.concat(frames, ignore_index=True)
    summary, metrics = summarise(p, table)
    metrics["training"] = infos
    metrics["seconds"] = round(time.perf_counter() - t0, 3)
    return table, summary, metrics
