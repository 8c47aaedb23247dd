"""The study report: verdicts and effects per cell, pooled over seed blocks and per grid value, the design checks,
the seed agreement and the replay arms against random replay, as markdown and two forest plots.

Reads only the study's tables (hopfield_replay.analysis.study's verdict_rows, agreement_rows, arm_rows and the cells), so a
published study (tools/publish_study.py) regenerates its report from its committed tables.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from ..measures.forgetting import MEASURES
from .study import CLAIMS
from .study_forecasts import forecasts_markdown
from .study_generation import generation_markdown
from .verdicts import CHECKS, STUDY_CHECKS_RULE, format_interval

VERDICT_COLOUR = {"holds": "tab:green", "fails": "tab:red", "inconclusive": "tab:gray"}
LABELS = {"claim1": "claim 1", "claim2": "claim 2", "replay_helps": "random beats no replay",
          "ceiling_wins": "oracle beats random", "class_control": "top-energy beats random inside classes"}
EFFECT_LABEL = {"claim1": "energy's Spearman minus the best baseline's", "claim2": "forgetting: random minus top-energy"}
NOT_RUN = "not run"  # an interval in a study table without an estimate


def _count(n: int, noun: str) -> str:
    """'1 cell', '3 cells'."""
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _unit_table(verdicts: pd.DataFrame, grid: pd.DataFrame | None, claims: tuple = CLAIMS) -> list[str]:
    keys = [k for k in grid.columns if k != "seeds"] if grid is not None else []  # seeds has its own column
    head = ["cell" if grid is not None else "cells", "seeds", *keys]
    for claim in claims:
        head += [LABELS[claim], f"{LABELS[claim]} absolute", f"{LABELS[claim]} relative"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for unit, rows in verdicts.groupby("unit", sort=False):
        cells = [unit.removeprefix("pooled:").replace("+", ", "), rows["seeds"].iloc[0],
                 *(str(grid.at[unit, k]) for k in keys)]
        for claim in claims:
            r = rows[rows["claim"] == claim].set_index("measure")
            cells += [f"**{r['verdict'].iloc[0]}**", *(format_interval(r.at[m, "effect"], r.at[m, "lo"], r.at[m, "hi"],
                                                                      missing=NOT_RUN) for m in MEASURES)]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _agreement_table(agreement: pd.DataFrame) -> list[str]:
    lines = ["| cells | seeds | absolute: Spearman (ceiling) | relative: Spearman (ceiling) |", "|---|---|---|---|"]
    for unit, rows in agreement.groupby("unit", sort=False):
        r = rows.set_index("measure")
        cells = [unit.removeprefix("pooled:").replace("+", ", "), rows["seeds"].iloc[0]]
        for m in MEASURES:
            if r.at[m, "n_seeds"] < 2:
                cells.append("one seed: none")
            else:
                ceiling = f"{r.at[m, 'ceiling']:.2f}" if pd.notna(r.at[m, "ceiling"]) else "none"
                rho = format_interval(r.at[m, "rho"], r.at[m, "lo"], r.at[m, "hi"], missing=NOT_RUN)
                cells.append(f"{rho} ({ceiling})")
        lines.append("| " + " | ".join(cells) + " |")
    return lines



def _arms_table(arms: pd.DataFrame, grid: pd.DataFrame) -> list[str]:
    keys = list(grid.columns)
    head = ["cells", *keys, "arm", "budget", "reference", *(f"{m} forgetting" for m in MEASURES),
            f"seeds agreeing ({' / '.join(MEASURES)})"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    shown = arms[(arms["reference"] != "none") | (arms["strategy"] == "random")]
    for (unit, strategy, budget, reference), rows in shown.groupby(["unit", "strategy", "budget", "reference"],
                                                                  sort=False):
        r = rows.set_index("measure")
        values = [str(grid.at[unit, k]) if unit in grid.index else "pooled" for k in keys]
        agree = " / ".join(f"{int(r.at[m, 'n_agree'])}/{int(r.at[m, 'n_seeds'])}" for m in MEASURES)
        lines.append("| " + " | ".join([unit.removeprefix("pooled:").replace("+", ", "), *values, strategy,
                                        str(budget), reference,
                                        *(format_interval(r.at[m, "effect"], r.at[m, "lo"], r.at[m, "hi"],
                                                          missing=NOT_RUN) for m in MEASURES), agree]) + " |")
    return lines


def study_markdown(name: str, description: str | None, head: str, grid: pd.DataFrame, cells: pd.DataFrame,
                   verdicts: pd.DataFrame, agreement: pd.DataFrame | None = None,
                   arms: pd.DataFrame | None = None, generation: pd.DataFrame | None = None,
                   learned: pd.DataFrame | None = None, forecasts: pd.DataFrame | None = None,
                   sample_grids: list[str] | None = None) -> str:
    """The study report: verdicts and effects (with their intervals) per cell, pooled over seed blocks and per grid
    value, the design checks, the seed agreement (agreement_rows), every replay arm against random replay
    (arm_rows), what the models generate (study_generation: learned counts and arm effects on the task-A share),
    each cell's forecast table (study_forecasts), the sample grids of the cells in ``sample_grids`` (plots/samples/
    <cell>.png), then the missing cells with their logs. cells: one row per cell (status, attempts, log, exp)."""
    done = cells[cells["status"] == "completed"]
    missing = cells[cells["status"] != "completed"]
    per_cell = verdicts[~verdicts["unit"].str.startswith("pooled:")] if len(verdicts) else verdicts
    pooled = verdicts[verdicts["unit"].str.startswith("pooled:")] if len(verdicts) else verdicts
    lines = [f"# Study {name}", ""] + ([description, ""] if description else []) + [
        f"{_count(len(cells), 'cell')} "
        f"({' x '.join(_count(grid[k].nunique(), 'value') + f' of {k}' for k in grid.columns) or 'no grid'}): "
        f"{len(done)} completed, {len(missing)} missing. Every cell started from commit {head[:10]}; each completed "
        "cell is a DVC experiment (`dvc exp show` in the repository lists it). Effects are claim 1's Spearman minus "
        "the best baseline's and claim 2's forgetting under random minus top-energy replay, with their intervals "
        "(stages/report.py's protocol and settings; docs/pipeline.md).", "", "## Verdicts per cell", ""]
    lines += _unit_table(per_cell, grid) if len(per_cell) else ["No cell produced the tables the protocol needs."]
    if len(pooled):
        lines += ["", "## Pooled over seed blocks", "", "Cells that differ only in `seeds`, as one run over all their "
                  "seeds (their scores tables are identical):", ""] + _unit_table(pooled, None)
    if len(verdicts):
        lines += ["", "## Design checks", "", STUDY_CHECKS_RULE, ""]
        lines += _unit_table(per_cell, grid, CHECKS) if len(per_cell) else []
        lines += ["", *_unit_table(pooled, None, CHECKS)] if len(pooled) else []
    if agreement is not None and len(agreement):
        lines += ["", "## Seed agreement", "", "How far the task-B seeds of each run agree on which samples are "
                  "forgotten: the Spearman between two seeds' per-sample no-replay forgetting, averaged over pairs of "
                  "seeds, with a bootstrap interval over samples. Its square root (in brackets) is about what the best "
                  "possible predictor would reach with independent seed noise: the noise ceiling of that run's "
                  "predictor table. The seeds share their task-A model, so this is reproducibility given it.", ""]
        lines += _agreement_table(agreement)
    if arms is not None and len(arms):
        lines += ["", "## Replay arms against random replay", "", "Every arm of every cell and pooled run against "
                  "random replay at the same budget (a `*_per_class` arm also against class_balanced, which has its "
                  "class shares), and random replay against no replay: forgetting of the reference minus forgetting "
                  "under the arm, over all task-A samples (> 0: the arm forgets less), with its t interval over seeds "
                  "and the seeds agreeing in sign.", "", "![arms against random](plots/arms.png)", ""]
        lines += _arms_table(arms, grid)
    if learned is not None and len(learned) and generation is not None:
        lines += generation_markdown(generation, learned)
    if forecasts is not None and len(forecasts):
        lines += forecasts_markdown(forecasts)
    if sample_grids:
        lines += sample_grids_markdown(sample_grids)
    lines += ["", "## Verdicts per grid value", ""]
    if len(per_cell) and len(grid.columns):
        lines += ["| grid key | value | cells | claim 1 holds / fails / inconclusive | claim 2 holds / fails / "
                  "inconclusive |", "|---|---|---|---|---|"]
        combined = per_cell.drop_duplicates(["unit", "claim"]).pivot(index="unit", columns="claim", values="verdict")
        for key in grid.columns:
            for value, units in grid.loc[[u for u in grid.index if u in combined.index]].groupby(
                    key, sort=False).groups.items():
                counts = [" / ".join(str((combined.loc[units, c] == v).sum()) for v in VERDICT_COLOUR)
                          for c in CLAIMS]
                lines.append(f"| {key} | {value} | {len(units)} | {counts[0]} | {counts[1]} |")
    else:
        lines.append("No grid, or no completed cell.")
    lines += ["", "## Missing cells", ""]
    if len(missing):
        lines += ["| cell | params | status | attempts | error | log |", "|---|---|---|---|---|---|"]
        for r in missing.itertuples():
            params = ", ".join(f"{k}={grid.at[r.cell, k]}" for k in grid.columns)
            error = str(r.error).replace("|", "\\|")
            lines.append(f"| {r.cell} | {params} | {r.status} | {r.attempts} | {error} | `{r.log}` |")
    else:
        lines.append("None: every cell completed.")
    lines += ["", "## Figure", "", "![effects per cell](plots/effects.png)", ""]
    return "\n".join(lines)


def sample_grids_markdown(cells: list[str]) -> list[str]:
    """The section that shows what each cell's models draw (its report's sample grid), before any number is read."""
    lines = ["", "## Sample grids", "", "What each cell's models draw: model A, the task-B model of the cell's first "
             "seed and every arm at that seed, from the same initial noise, each image titled with the classifier's "
             "class (the figure of the cell's own report). Look at these before believing a number above.", ""]
    for cell in cells:
        lines += [f"### {cell}", "", f"![samples of {cell}](plots/samples/{cell}.png)", ""]
    return lines


def plot_effects(verdicts: pd.DataFrame, path: str | Path) -> Path:
    """Forest plot: per claim (rows) and forgetting measure (columns), every cell's and pooled run's effect with
    its interval, coloured by that measure's verdict."""
    import matplotlib.pyplot as plt

    units = list(dict.fromkeys(verdicts["unit"]))
    fig, axes = plt.subplots(len(CLAIMS), len(MEASURES), figsize=(10, 1.2 + 0.32 * len(units) * len(CLAIMS)),
                             squeeze=False)
    for i, claim in enumerate(CLAIMS):
        for j, m in enumerate(MEASURES):
            ax = axes[i, j]
            rows = verdicts[(verdicts["claim"] == claim) & (verdicts["measure"] == m)].set_index("unit").loc[units]
            y = range(len(units))
            colours = [VERDICT_COLOUR[v] for v in rows["measure_verdict"]]
            err = [(rows["effect"] - rows["lo"]).fillna(0), (rows["hi"] - rows["effect"]).fillna(0)]
            ax.errorbar(rows["effect"], y, xerr=err, fmt="none", ecolor=colours)
            ax.scatter(rows["effect"], y, c=colours, s=20, zorder=3)
            ax.axvline(0, color="k", lw=0.6)
            ax.set_yticks(list(y), [u if len(u) < 40 else u[:37] + "..." for u in units], fontsize=7)
            ax.set_title(f"{claim}, {m} forgetting", fontsize=9)
            ax.set_xlabel(EFFECT_LABEL[claim], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)


def arm_plot_rows(arms: pd.DataFrame) -> pd.DataFrame:
    """The rows of plot_arms: every arm against random replay (named by its strategy) and against class_balanced
    (named "<arm> vs class_balanced"); the effects against no replay are the report's design check, not plotted."""
    rows = arms[arms["reference"] != "none"]
    return rows.assign(strategy=[s if r == "random" else f"{s} vs {r}" for s, r in zip(rows["strategy"],
                                                                                      rows["reference"])])


def plot_arms(arms: pd.DataFrame, path: str | Path) -> Path:
    """Forest plot: per forgetting measure (columns), every arm's effect against random replay at its budget (and a
    ``*_per_class`` arm's against class_balanced, the class control), with its interval over seeds, grouped by cell
    and budget; filled markers where the interval excludes 0."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    rows = arm_plot_rows(arms)
    groups = list(dict.fromkeys(zip(rows["unit"], rows["budget"])))
    strategies = sorted(set(rows["strategy"]))
    colours = dict(zip(strategies, plt.get_cmap("tab10").colors * 3))
    n = len(groups) * (len(strategies) + 1)
    fig, axes = plt.subplots(1, len(MEASURES), figsize=(11, 1.5 + 0.16 * n), squeeze=False, sharey=True)
    for j, m in enumerate(MEASURES):
        ax = axes[0, j]
        ticks, labels = [], []
        for g, (unit, budget) in enumerate(groups):
            base = g * (len(strategies) + 1)
            ticks.append(base + (len(strategies) - 1) / 2)
            label = unit.removeprefix("pooled:")
            labels.append(f"{label if len(label) < 34 else label[:31] + '...'}, K={budget}")
            sel = rows[(rows["unit"] == unit) & (rows["budget"] == budget) & (rows["measure"] == m)].set_index(
                "strategy")
            for k, strategy in enumerate(strategies):
                if strategy not in sel.index:
                    continue
                r, y = sel.loc[strategy], base + k
                excludes = pd.notna(r["lo"]) and (r["lo"] > 0 or r["hi"] < 0)
                if pd.notna(r["lo"]):
                    ax.plot([r["lo"], r["hi"]], [y, y], color=colours[strategy], lw=1.2)
                ax.scatter([r["effect"]], [y], color=colours[strategy], s=22, zorder=3,
                           facecolors=colours[strategy] if excludes else "white")
        ax.axvline(0, color="k", lw=0.6)
        ax.set_yticks(ticks, labels, fontsize=7)
        ax.set_title(f"{m} forgetting\nreference minus arm (> 0: the arm forgets less)", fontsize=9)
    axes[0, 0].invert_yaxis()  # the panels share y: inverting each would flip it back; first cell on top
    # the legend: one hollow key per arm (its colour), then what a filled marker means
    handles = [Line2D([], [], color=colours[s], lw=1.2, marker="o", markersize=4.5, markerfacecolor="white")
               for s in strategies]
    handles += [Line2D([], [], color="k", lw=0, marker="o", markersize=4.5, markerfacecolor=fill)
                for fill in ("k", "white")]
    names = [*strategies, "filled: the 95% interval excludes 0", "hollow: it includes 0"]
    legend_rows = -(-len(names) // 4)
    fig.legend(handles, names, fontsize=7, loc="lower center", ncol=4, frameon=False)
    fig.tight_layout(rect=(0, (0.1 + 0.15 * legend_rows) / fig.get_figheight(), 1, 1))  # room for the legend
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return Path(path)
