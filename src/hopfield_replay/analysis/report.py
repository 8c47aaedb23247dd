"""Figures and the one-page report (matplotlib PNG files that embed in `dvc plots show`; the stage that draws picks
the Agg backend, the library never does).

The report leads with the verdicts on the paper's two claims (verdicts.claims), the checks that the replay
experiment can show an effect at all (verdicts.design_checks) and what the intervals cover, then the predictor
table (every predictor against the baselines, with partial correlations), which timesteps carry forgetting, and the
arm table (paired differences over seeds). Every number in it comes from the tables passed in.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import scipy.stats
from matplotlib.lines import Line2D

from .colours import arm_colours
from ..measures.forgetting import MEASURES
from .protocol import Evidence, binned_means
from .verdicts import CLAIM2_ARM, design_meaning

KIND_COLOUR = {"energy": "tab:red", "energy_task_b": "tab:purple", "baseline": "tab:gray"}


def _write(fig, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    return _write(fig, path)


def predictors_figure(tables: dict[str, pd.DataFrame], ceilings: dict[str, float] | None = None):
    """Forest plot: per forgetting measure, every predictor's Spearman and partial Spearman with their intervals,
    sorted by Spearman; coloured by kind (KIND_COLOUR: energies red, the task-B energies purple, baselines grey);
    dashed at +-ceilings[measure], the noise ceiling (forgetting.seed_agreement), where it is known."""
    ceilings = ceilings or {}
    fig, axes = plt.subplots(1, len(tables), figsize=(5.2 * len(tables), 0.28 * max(len(t) for t in tables.values()) + 1.6),
                             squeeze=False)
    for ax, (measure, table) in zip(axes[0], tables.items()):
        t = table.sort_values("spearman")
        y = np.arange(len(t))
        colours = [KIND_COLOUR.get(k, "tab:olive") for k in t["kind"]]
        ax.errorbar(t["spearman"], y, xerr=[t["spearman"] - t["spearman_lo"], t["spearman_hi"] - t["spearman"]],
                    fmt="none", ecolor=colours, elinewidth=1.5)
        ax.scatter(t["spearman"], y, c=colours, s=18, zorder=3)
        ax.errorbar(t["partial"], y + 0.3, xerr=[t["partial"] - t["partial_lo"], t["partial_hi"] - t["partial"]],
                    fmt="none", ecolor=colours, elinewidth=0.8, alpha=0.7)
        ax.scatter(t["partial"], y + 0.3, facecolors="none", edgecolors=colours, s=18, zorder=3)
        ax.axvline(0, color="k", lw=0.6)
        ax.set_yticks(y + 0.15, t.index, fontsize=7)
        ax.set_title(f"{measure} forgetting (aggregated over t)", fontsize=9)
        ax.set_xlabel("rank correlation with forgetting (95% interval over seeds and samples)", fontsize=8)
        handles = [Line2D([], [], color="k", marker="o", ls="", ms=4, label="Spearman"),
                   Line2D([], [], color="k", marker="o", ls="", ms=4, mfc="none",
                          label=f"partial | {t['covariates'].iloc[0] or '-'}")]
        handles += [Line2D([], [], color=c, lw=2, label=k) for k, c in KIND_COLOUR.items() if k in set(t["kind"])]
        ceiling = ceilings.get(measure, np.nan)
        if np.isfinite(ceiling):
            for x in (-ceiling, ceiling):
                ax.axvline(x, color="tab:blue", lw=0.8, ls="--")
            handles.append(Line2D([], [], color="tab:blue", lw=0.8, ls="--", label=f"noise ceiling +-{ceiling:.2f}"))
        ax.legend(handles=handles, fontsize=7, loc="lower right")
    fig.tight_layout()
    return fig


def plot_predictors(tables: dict[str, pd.DataFrame], path: Path, ceilings: dict[str, float] | None = None) -> Path:
    """predictors_figure, written to path."""
    return _write(predictors_figure(tables, ceilings), path)


def arms_by_decile_figure(curves: pd.DataFrame):
    """Mean forgetting per task-A energy decile, one line per arm with a band from the lowest to the highest seed;
    one row of panels per forgetting measure, one column per budget (the no-replay arm in every panel).
    curves: measure, strategy, budget, seed, decile, forgetting (protocol.decile_curves per measure)."""
    measures = list(dict.fromkeys(curves["measure"]))
    budgets = sorted(b for b in curves["budget"].unique() if b > 0) or [0]
    colours = arm_colours(curves["strategy"])
    fig, axes = plt.subplots(len(measures), len(budgets), figsize=(4.4 * len(budgets) + 1.8, 3.1 * len(measures)),
                             sharex=True, squeeze=False)
    for row, measure in enumerate(measures):
        for ax, budget in zip(axes[row], budgets):
            for (strategy, b), g in curves[curves["measure"] == measure].groupby(["strategy", "budget"], sort=True):
                if b not in (0, budget):
                    continue
                by = g.groupby("decile")["forgetting"]
                mean, lo, hi = by.mean(), by.min(), by.max()
                ax.plot(mean.index, mean, "--" if strategy == "none" else "-", color=colours[strategy], marker="o",
                        ms=3, label="no replay" if strategy == "none" else strategy)
                ax.fill_between(mean.index, lo, hi, color=colours[strategy], alpha=0.15, lw=0)
            ax.axhline(0, color="k", lw=0.4)
            ax.set_title(f"{measure} forgetting, replay budget K={budget}", fontsize=9)
        axes[row, 0].set_ylabel("mean forgetting (per-t standardised)", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("task-A energy decile (0 = lowest)")
    handles = {}
    for ax in axes.flat:
        handles.update(zip(*reversed(ax.get_legend_handles_labels())))
    fig.tight_layout(rect=(0, 0, 1 - 1.6 / fig.get_figwidth(), 1))
    fig.legend(handles.values(), handles.keys(), loc="center right", fontsize=8, title="arm (band: seed range)",
               title_fontsize=8, frameon=False)
    return fig


def plot_arms_by_decile(curves: pd.DataFrame, path: Path) -> Path:
    """arms_by_decile_figure, saved as a PNG."""
    return _write(arms_by_decile_figure(curves), path)


def score_vs_forgetting_figure(per_sample: pd.DataFrame, columns: list[str], *, target: str, bins: int = 10,
                               level: float = 0.95, correlations: pd.DataFrame | None = None,
                               ylabel: str | None = None):
    """Per-sample forgetting against each score in ``columns`` (the energy beside its controls), coloured by class,
    with the mean per equal-count bin of the score and its Student-t interval (protocol.binned_means); a panel's
    title gives the score's Spearman and partial Spearman from ``correlations`` (a predictor table), if given."""
    labels = per_sample["label"].to_numpy()
    tab10 = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, len(columns), figsize=(3.4 * len(columns) + 0.9, 3.3), sharey=True, squeeze=False)
    for ax, col in zip(axes[0], columns):
        ax.scatter(per_sample[col], per_sample[target], s=3, alpha=0.25, c=[tab10[int(k) % 10] for k in labels],
                   rasterized=True)
        b = binned_means(per_sample[col], per_sample[target], bins, level=level)
        ax.errorbar(b["x_median"], b["mean"], yerr=[b["mean"] - b["lo"], b["hi"] - b["mean"]], color="k",
                    marker="o", ms=3, lw=1.2, capsize=2, zorder=3)
        ax.set_xlabel(col)
        if correlations is not None and col in correlations.index:
            r = correlations.loc[col]
            ax.set_title(f"Spearman {r['spearman']:+.2f}, partial {r['partial']:+.2f}", fontsize=8)
    axes[0, 0].set_ylabel(ylabel or target, fontsize=8)
    handles = [Line2D([], [], color="k", marker="o", ms=3, label=f"mean per {bins}-quantile bin\n({level:.0%} t interval)")]
    handles += [Line2D([], [], color=tab10[int(k) % 10], marker="o", ls="", ms=4, label=f"class {k}")
                for k in sorted(set(labels.tolist()))]
    fig.suptitle("per-sample forgetting against the energy and its controls", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1 - 1.3 / fig.get_figwidth(), 1))
    fig.legend(handles=handles, loc="center right", fontsize=7, frameon=False)
    return fig


def plot_score_vs_forgetting(per_sample: pd.DataFrame, columns: list[str], path: Path, **kwargs) -> Path:
    """score_vs_forgetting_figure, saved as a PNG."""
    return _write(score_vs_forgetting_figure(per_sample, columns, **kwargs), path)


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


# The text: the rules, their sentences and the one interval formatter are verdicts.py's; the functions below place them.
from .verdicts import CLAIM_RULE, format_interval  # noqa: E402


def verdict_lines(verdicts: dict) -> list[str]:
    """The verdict section (also printed by the flow): one block per claim, both forgetting measures."""
    lines = []
    for key in ("claim1", "claim2"):
        claim = verdicts[key]
        lines.append(f"- **{claim['statement']}: {claim['verdict'].upper()}**")
        for measure in MEASURES:
            m = claim[measure]
            effect = format_interval(m["effect"], m["lo"], m["hi"])
            lines.append(f"  - {measure} forgetting: {m['verdict']}, effect {effect}; {m['detail']}")
    return lines


def check_lines(checks: dict, claim2: str | None = None) -> list[str]:
    """The design checks (also printed by the flow): one block per check, both measures, then what they mean for
    claim 2 (claim2: its combined verdict)."""
    lines = []
    for check in checks.values():
        lines.append(f"- **{check['statement']}: {check['verdict'].upper()}**")
        lines += [f"  - {m} forgetting: {check[m]['verdict']}; {check[m]['detail']}" for m in MEASURES]
    return lines + ["", design_meaning(checks, claim2)]


def scope_text(run: dict) -> str:
    """What the intervals cover, and which comparisons were fixed before the run (the rest are exploratory)."""
    n = len(run["seeds"])
    if n > 1:
        q = scipy.stats.t.ppf((1 + run["level"]) / 2, n - 1)
        arms = (f"an arm's interval is Student t over the {n} task-B seeds ({n - 1} degree{'s' * (n > 2)} of freedom, "
                f"t quantile {q:.1f}); a correlation's interval resamples those seeds and the samples")
    else:
        arms = "an arm has no interval (one task-B seed); a correlation's interval resamples the samples"
    return (f"What the intervals cover: {arms}. Every seed starts from one task-A model (`train_a.seed` = "
            f"{run['train_a_seed']}), so how the verdicts vary with the task-A model is in no interval. The verdicts "
            f"test one predictor (`{run['score']}`) and one arm (`{CLAIM2_ARM}`), both fixed before the run; every "
            "other row below is exploratory, with no correction for multiple comparisons.")


def agreement_text(a: dict) -> str:
    """The noise ceiling of the predictor table (forgetting.seed_agreement), in words."""
    if a["n_seeds"] < 2 or not np.isfinite(a["rho"]):
        return ("Seed agreement: one seed, so how far per-sample forgetting repeats across seeds is unknown (the "
                "predictor table has no noise ceiling).")
    text = (f"Seed agreement (the noise ceiling): two seeds' no-replay forgetting of the same samples correlates at "
            f"Spearman {format_interval(a['rho'], a['lo'], a['hi'])} (mean over the pairs of the {a['n_seeds']} "
            "seeds; they share the task-A model and its error, which every seed's forgetting is measured against). ")
    if not np.isfinite(a["ceiling"]):
        return text + "The seeds do not agree on which samples are forgotten, so no predictor can."
    return text + (f"With independent seed noise, the best possible predictor would correlate with one seed's "
                   f"forgetting at about {a['ceiling']:.2f}: read the Spearman column against that ceiling.")


def overlap_lines(overlap: pd.DataFrame) -> list[str]:
    """Per budget, a matrix: the share of the row arm's buffer that is also in the column arm's (mean over seeds)."""
    lines = []
    for budget, g in overlap.groupby("budget", sort=True):
        table = g.pivot(index="arm", columns="other", values="overlap")
        lines += [f"Budget {budget}:", "", "| arm | " + " | ".join(table.columns) + " |",
                  "|---|" + "---|" * len(table.columns)]
        lines += [f"| {arm} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for arm, row in table.iterrows()]
        lines.append("")
    return lines


def composition_lines(composition: pd.DataFrame) -> list[str]:
    """Per budget, a matrix: the share of each class (columns) in each arm's buffer (rows), task A's first."""
    task_a = composition[composition["arm"] == "task A"]
    lines = []
    for budget, g in composition[composition["budget"] > 0].groupby("budget", sort=True):
        table = pd.concat([task_a, g]).pivot(index="arm", columns="label", values="share")
        table = table.reindex(["task A", *sorted(g["arm"].unique())])
        lines += [f"Budget {budget}:", "", "| arm | " + " | ".join(f"class {c}" for c in table.columns) + " |",
                  "|---|" + "---|" * len(table.columns)]
        lines += [f"| {arm} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for arm, row in table.iterrows()]
        lines.append("")
    return lines


def markdown_report(ev: Evidence, figures: dict[str, str], run: dict, generation: dict | None = None,
                    controls: list[str] | None = None, forecasts: list[str] | None = None) -> str:
    """One page: verdicts first, then the design checks and what the intervals cover, predictors, forgetting by t
    and by energy decile, arms, buffer overlap and the figures (paths relative). run: n_samples, seeds, arms,
    budgets, level, score (the arms' ranking score), train_a_seed. generation (what the models generate, from
    ``analysis.generation``): ``learned`` (one line per model, shown before the verdicts), ``note`` (a line after
    the verdicts when some model did not learn its task, else empty) and ``section`` (its lines). controls: the
    lines of "Has model A converged?" (``analysis.convergence``), placed before the verdicts. forecasts: the lines of
    the forecasting section (``analysis.forecasting``), placed after the predictors."""
    verdicts, predictors, comparison, by_t, arms = ev.verdicts, ev.predictors, ev.comparison, ev.by_t, ev.arms
    by_decile = ev.by_decile
    lines = ["# hopfield-replay: does the Hopfield energy predict forgetting, and does top-energy replay help?", "",
             f"Run: {run['n_samples']} task-A samples, seeds {run['seeds']}, arms {', '.join(run['arms'])}, "
             f"budgets {run['budgets']}; intervals are {run['level']:.0%} (bootstrap over seeds and samples for "
             "correlations; Student t over seeds for arm effects).", ""]
    if generation:
        lines += ["## Are the models learned?", "", *generation["learned"], ""]
    if controls:
        lines += ["## Has model A converged? Continued training and the MHN regime", "", *controls, ""]
    lines += ["## Verdicts", ""]
    lines += verdict_lines(verdicts)
    if generation and generation["note"]:
        lines += ["", generation["note"]]
    lines += ["", CLAIM_RULE, "", "## Can this run show a replay effect? Does claim 2 survive equal class shares?", ""]
    lines += check_lines(ev.checks, verdicts["claim2"]["verdict"])
    lines += ["", scope_text(run), ""]
    if generation:
        lines += generation["section"]
    lines += ["## Predictors of forgetting", ""]
    for measure, table in predictors.items():
        comp = comparison[measure]
        lines += [f"### {measure} forgetting (per-t standardised, averaged over the used t)", "",
                  f"Best baseline by Spearman: `{comp['baseline'].iloc[0]}`. Partial Spearman controls for "
                  f"{table['covariates'].iloc[0] or 'nothing'} (a predictor is never its own covariate)."
                  + (" Kind `energy_task_b`: computed with task-B data (the theory's intrinsic forgetting), so no "
                     "buffer chosen at the end of task A can use it; never a baseline."
                     if (table["kind"] == "energy_task_b").any() else ""), "", agreement_text(ev.agreement[measure]),
                  "", "| predictor | kind | Spearman | within class | partial | minus best baseline | precision@10% | AUROC top 10% |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, r in table.sort_values("spearman", ascending=False).iterrows():
            c = comp.loc[name]
            spearman = format_interval(r["spearman"], r["spearman_lo"], r["spearman_hi"])
            partial = format_interval(r["partial"], r["partial_lo"], r["partial_hi"])
            lines.append(f"| {name} | {r['kind']} | {spearman} | {r['within_class']:+.3f} | {partial} | "
                         f"{format_interval(c['diff'], c['lo'], c['hi'])} | {r['precision_at_10']:.3f} | "
                         f"{r['auroc_top_decile']:.3f} |")
        lines.append("")
    lines += [f"![predictors]({figures['predictors']})", "", f"![energy and controls]({figures['scatter']})", ""]
    lines += forecasts or []
    lines += ["## Which timesteps carry forgetting (no replay)", "",
              "Per-sample forgetting (the predictor and arm tables) is aggregated over the t marked *used*: those "
              "that carry forgetting (report.aggregate_t).", "",
              "| measure | t | mean [interval] | share > 0 | forgets? | used |", "|---|---|---|---|---|---|"]
    for measure, table in by_t.items():
        for r in table.itertuples():
            lines.append(f"| {measure} | {r.t} | {format_interval(r.mean, r.lo, r.hi, 5)} | {r.share_positive:.2f} | "
                         f"{'yes' if r.real else 'no'} | {'yes' if r.used else 'no'} |")
    score = run["score"]
    lines += ["", "## Forgetting by task-A energy decile (no replay)", "",
              "The paper reports that forgetting rises monotonically with the task-A energy. Per decile of "
              f"`{score}` (the score the arms rank by; equal counts, 0 = lowest): the mean of the per-sample "
              "forgetting aggregate (per-t standardised, so the mean over all samples is 0; seeds averaged) with its "
              "Student-t interval over the decile's samples.",
              "", f"| decile | {score} | " + " | ".join(f"{m} forgetting" for m in by_decile) + " |",
              "|---|---|" + "---|" * len(by_decile)]
    first = next(iter(by_decile.values()))
    for i, r in enumerate(first.itertuples()):
        cells = [format_interval(t.iloc[i]["mean"], t.iloc[i]["lo"], t.iloc[i]["hi"]) for t in by_decile.values()]
        lines.append(f"| {r.bin} | {r.x_lo:.4g} to {r.x_hi:.4g} | " + " | ".join(cells) + " |")
    lines += ["", "## Replay arms: paired differences over seeds", "",
              "effect = forgetting(reference) - forgetting(arm), per seed on the same samples, averaged over seeds "
              "(> 0: the arm forgets less); forgetting is per-t standardised by the no-replay arm's spread.", "",
              "| measure | arm | budget | vs | overall | replayed | not replayed | top energy decile | seeds agreeing |",
              "|---|---|---|---|---|---|---|---|---|"]
    for measure, table in arms.items():
        for (strategy, budget, ref), g in table.groupby(["strategy", "budget", "reference"], sort=False):
            cells = {r.subset: format_interval(r.effect, r.lo, r.hi) for r in g.itertuples()}
            overall = g[g.subset == "overall"].iloc[0]
            lines.append(f"| {measure} | {strategy} | {budget} | {ref} | {cells.get('overall', '-')} | "
                         f"{cells.get('replayed', '-')} | {cells.get('not_replayed', '-')} | "
                         f"{cells.get('top_decile', '-')} | {overall.n_agree}/{overall.n_seeds} |")
    lines += ["", "The oracle ranks by the forgetting measured without replay: it uses task-B information and is a "
              "ceiling, not a method.", "", f"![arms by decile]({figures['arms_by_decile']})", "",
              "## Buffer class composition", "",
              "The share of each task-A class in each arm's buffer, mean over seeds (task A's own shares first). A "
              "buffer skewed toward some classes protects those and leaves the others, so its effect mixes which "
              "samples it holds with which classes; an arm ending in `_per_class` ranks inside each class with "
              "class_balanced's shares, and the arm table compares it with class_balanced.", ""]
    lines += composition_lines(ev.composition)
    lines += ["## Buffer overlap", "",
              "The share of the row arm's buffer that is also in the column arm's buffer, mean over seeds: two arms "
              "whose buffers mostly coincide test nearly the same thing, whatever their names.", ""]
    lines += overlap_lines(ev.overlap)
    lines += ["## Highest- and lowest-energy task-A samples", "", f"![image grid]({figures['image_grid']})", ""]
    return "\n".join(lines)
