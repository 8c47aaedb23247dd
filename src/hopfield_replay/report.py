"""Figures and the one-page report (matplotlib, Agg backend; PNG files that embed in `dvc plots show`)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

ARM_STYLE = {"none": ("black", "--"), "energy_high": ("tab:red", "-"), "energy_low": ("tab:blue", "-"),
             "random": ("tab:gray", "-")}


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_energy_vs_forgetting(per_sample: pd.DataFrame, decile_means: pd.DataFrame, path: Path, *, x: str = "energy_a") -> Path:
    """Scatter of forgetting against energy per timestep, with the decile means on top."""
    cols = [c for c in per_sample.columns if c.startswith("t=")] + ["mean"]
    fig, axes = plt.subplots(1, len(cols), figsize=(3.2 * len(cols), 3.2), sharex=True)
    for ax, col in zip(np.atleast_1d(axes), cols):
        ax.scatter(per_sample[x], per_sample[col], s=3, alpha=0.25, color="tab:blue", rasterized=True)
        ax.plot(decile_means.sort_values(f"{x}_mean")[f"{x}_mean"], decile_means.sort_values(f"{x}_mean")[col], "o-", color="tab:red", ms=4, label="decile mean")
        ax.axhline(0, color="k", lw=0.5)
        ax.set_title(f"forgetting, {col}" if col != "mean" else "forgetting, mean over t")
        ax.set_xlabel(f"Hopfield {x.replace('_', ' ')}")
    np.atleast_1d(axes)[0].set_ylabel("recon. error after B - after A")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    return _save(fig, path)


def plot_arms_by_decile(arm_deciles: pd.DataFrame, path: Path) -> Path:
    """Mean forgetting per task-A energy decile, one line per arm, one panel per budget."""
    budgets = sorted(b for b in arm_deciles["budget"].unique() if b > 0)
    fig, axes = plt.subplots(1, max(1, len(budgets)), figsize=(4.2 * max(1, len(budgets)), 3.4), sharey=True)
    for ax, budget in zip(np.atleast_1d(axes), budgets or [0]):
        for (strategy, b), g in arm_deciles.groupby(["strategy", "budget"]):
            if b not in (0, budget):
                continue
            g = g.sort_values("decile")
            color, ls = ARM_STYLE.get(strategy, (None, "-"))
            label = "no replay" if strategy == "none" else strategy
            ax.plot(g["decile"], g["forgetting"], ls, color=color, marker="o", ms=3, label=label)
        ax.set_title(f"replay budget K={budget}")
        ax.set_xlabel("task-A energy decile (0 = lowest)")
    np.atleast_1d(axes)[0].set_ylabel("mean forgetting")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    return _save(fig, path)


def plot_image_grid(high: np.ndarray, low: np.ndarray, path: Path, *, high_energy=None, low_energy=None) -> Path:
    """Rows of the highest- and lowest-energy task-A images (values in [-1, 1], (N, C, H, W))."""
    n = max(len(high), len(low))
    fig, axes = plt.subplots(2, n, figsize=(1.1 * n, 2.6), squeeze=False)
    for row, (imgs, energies, name) in enumerate(((high, high_energy, "highest"), (low, low_energy, "lowest"))):
        for j in range(n):
            ax = axes[row, j]
            ax.axis("off")
            if j >= len(imgs):
                continue
            img = (np.clip(imgs[j], -1, 1) + 1) / 2
            ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
            if energies is not None:
                ax.set_title(f"{energies[j]:.3g}", fontsize=7)
        axes[row, 0].text(-0.3, 0.5, name, transform=axes[row, 0].transAxes, rotation=90, va="center", ha="right")
    fig.suptitle("task-A images by Hopfield energy (leave-one-out)", fontsize=9)
    return _save(fig, path)


def markdown_report(summary: dict, figures: dict[str, str], arms: pd.DataFrame, title: str) -> str:
    """One page: the headline numbers, the arm table, and the figures (paths relative to the report)."""
    lines = [f"# {title}", ""]
    lines += ["## Does task-A energy track forgetting?", "",
              "| measure | t | Spearman rho | 95% CI | n |", "|---|---|---|---|---|"]
    for measure, per_t in summary["correlations"].items():
        for t, r in per_t.items():
            lines.append(f"| {measure} | {t} | {r['rho']:.3f} | [{r['lo']:.3f}, {r['hi']:.3f}] | {r['n']} |")
    lines += ["", f"![energy vs forgetting]({figures['energy_vs_forgetting']})", "",
              "## Which replay helps most?", "",
              "Mean reconstruction forgetting of task-A samples (lower is better), averaged over timesteps.", "",
              "| arm | mean | replayed | not replayed | top energy decile |", "|---|---|---|---|---|"]
    for r in arms.itertuples():
        lines.append(f"| {r.arm} | {r.mean:.4g} | {r.replayed:.4g} | {r.not_replayed:.4g} | {r.top_decile:.4g} |")
    lines += ["", f"![forgetting per arm by energy decile]({figures['arms_by_decile']})", "",
              "## Highest- and lowest-energy task-A samples", "", f"![image grid]({figures['image_grid']})", ""]
    return "\n".join(lines)
