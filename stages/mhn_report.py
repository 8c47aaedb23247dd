"""Stage mhn_report: figures of the MHN experiments (matplotlib, Agg backend).

    python -m stages.mhn_report --params params.yaml --closed-form-dir data/mhn/closed_form \
        --trained-dir data/mhn/trained --out-dir data/mhn/report

Reads the ``mhn_report`` section. Writes, atomically (the whole folder at once): rise_by_type.png (mean energy rise
of outlier vs cluster members per eps, 95% intervals), net_gain_by_family.png (net replay gain G - G0 per family
and eps, log scale), trained_rise_by_decile.png (MHN-BM: mean rise per replay arm by task-A energy decile, all
points and non-replayed points), summary.md (the numbers behind the figures).
"""

from __future__ import annotations

import logging
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from hopfield_replay.analysis.colours import arm_colours
from hopfield_replay.mhn.dynamics import FAMILIES
from hopfield_replay.analysis.stats import bootstrap_ci
from hopfield_replay.io.tables import atomic_path, check_output, read_table

from stages.runner import stage

log = logging.getLogger(__name__)


def _errorbars(df: pd.DataFrame) -> np.ndarray:
    return np.vstack([df.estimate - df.ci_low, df.ci_high - df.estimate])


def plot_rise_by_type(summary: pd.DataFrame, path: Path, dpi: int) -> None:
    eps_values = sorted(summary.eps.unique(), reverse=True)
    fig, axes = plt.subplots(1, len(eps_values), figsize=(3.2 * len(eps_values), 3.2), squeeze=False)
    for ax, eps in zip(axes[0], eps_values):
        s = summary[(summary.eps == eps) & summary.quantity.isin(["rise_outlier", "rise_cluster"])]
        s = s.set_index("quantity").reindex(["rise_outlier", "rise_cluster"]).dropna(subset=["estimate"])
        ax.bar(range(len(s)), s.estimate, yerr=_errorbars(s), color=["tab:red", "tab:blue"][: len(s)], capsize=4)
        ax.set_xticks(range(len(s)), [q.removeprefix("rise_") for q in s.index])
        ax.set_title(f"eps = {eps:g}")
        ax.set_ylabel("mean energy rise dE at fixed point")
    fig.suptitle("Intrinsic forgetting by sample type (95% bootstrap CI)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def plot_net_gain_by_family(summary: pd.DataFrame, path: Path, dpi: int) -> None:
    eps_values = sorted(summary.eps.unique(), reverse=True)
    fams = [f for f in FAMILIES if (summary.quantity == f"net_gain_{f}").any()]
    fig, ax = plt.subplots(figsize=(1.3 * len(fams) + 2.5, 3.6))
    width = 0.8 / len(eps_values)
    for i, eps in enumerate(eps_values):
        s = summary[summary.eps == eps].set_index("quantity").reindex([f"net_gain_{f}" for f in fams])
        x = np.arange(len(fams)) + (i - (len(eps_values) - 1) / 2) * width
        ax.bar(x, s.estimate.clip(lower=1e-12), width, yerr=_errorbars(s), capsize=3, label=f"eps = {eps:g}")
    ax.set_yscale("log")
    ax.set_xticks(np.arange(len(fams)), [f.replace("_", "\n") for f in fams], fontsize=8)
    ax.set_ylabel("net replay gain G - G0 (log scale)")
    ax.set_title("Net replay gain by family (source -> target), 95% CI", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def decile_table(trained: pd.DataFrame, p) -> pd.DataFrame:
    rows = []
    for subset, df in (("all", trained), ("not_replayed", trained[~trained.replayed])):
        for (arm, decile), g in df.groupby(["strategy", "decile"], sort=True):
            ci = bootstrap_ci(g.energy_rise.to_numpy(), n_boot=p.bootstrap, seed=p.seed)
            rows.append((subset, arm, int(decile), ci.estimate, ci.low, ci.high, len(g)))
    return pd.DataFrame(rows, columns=["subset", "strategy", "decile", "estimate", "ci_low", "ci_high", "n"])


def plot_trained_deciles(table: pd.DataFrame, path: Path, dpi: int) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6), sharey=True)
    colours = arm_colours(table.strategy)  # as in the DDPM report's figures
    for ax, subset in zip(axes, ("all", "not_replayed")):
        for arm, g in table[table.subset == subset].groupby("strategy", sort=False):
            g = g.sort_values("decile")
            ax.errorbar(g.decile + 1, g.estimate, yerr=_errorbars(g), marker="o", ms=3, capsize=2, label=arm,
                        color=colours[arm])
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_xlabel("task-A energy decile (1 = lowest)")
        ax.set_title(f"MHN-BM, {subset.replace('_', ' ')} task-A points", fontsize=9)
    axes[0].set_ylabel("energy rise after task B")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def summary_markdown(cf: pd.DataFrame, tr: pd.DataFrame) -> str:
    def fmt(r):
        ci = "" if np.isnan(r.ci_low) else f" [{r.ci_low:.3g}, {r.ci_high:.3g}]"
        return f"{r.estimate:.4g}{ci}"

    lines = ["# MHN experiments", "", "## Closed form", "", "| eps | quantity | estimate [95% CI] |", "|---|---|---|"]
    lines += [f"| {r.eps:g} | {r.quantity} | {fmt(r)} |" for r in cf.itertuples()]
    lines += ["", "## MHN-BM (trained)", "", "| arm | quantity | estimate [95% CI] |", "|---|---|---|"]
    lines += [f"| {r.strategy} | {r.quantity} | {fmt(r)} |" for r in tr.itertuples()]
    return "\n".join(lines) + "\n"


@stage("closed-form-dir", "trained-dir", "out-dir", figures=True)
def main(cfg, args):
    p = cfg.mhn_report
    check_output(args.out_dir, is_dir=True)
    cf = read_table(Path(args.closed_form_dir) / "summary.parquet")
    tr_summary = read_table(Path(args.trained_dir) / "summary.parquet")
    trained = read_table(Path(args.trained_dir) / "energies.parquet")
    deciles = decile_table(trained, p)
    with atomic_path(args.out_dir, is_dir=True) as out:
        out.mkdir(parents=True, exist_ok=True)
        plot_rise_by_type(cf, out / "rise_by_type.png", p.dpi)
        plot_net_gain_by_family(cf, out / "net_gain_by_family.png", p.dpi)
        plot_trained_deciles(deciles, out / "trained_rise_by_decile.png", p.dpi)
        (out / "summary.md").write_text(summary_markdown(cf, tr_summary))
    log.info("mhn_report: 3 figures and summary.md -> %s", args.out_dir)


if __name__ == "__main__":
    main()
