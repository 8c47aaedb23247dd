"""What the models generate, as evidence: are they learned, and how much of task A does each arm keep?

Generation-level forgetting of task A is read from the classifier's histogram of a model's samples: the task-A
share s(model) = sum_{c in task A} h_c. An arm's effect against a reference arm is the paired difference over seeds

    d_seed = s(arm, seed) - s(reference, seed),   mean d with its Student-t interval over seeds,

(> 0: the arm keeps more of task A in what it generates), judged by ``verdicts.verdict``. The generation table
is ``generate``'s (one row per model).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .stats import t_interval
from .verdicts import CLAIM2_ARM, format_interval, verdict

GENERATION_REFERENCES = ("random", "none")  # each arm against random replay and against no replay


def arm_effects(generation: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """One row per (arm, budget, reference): the paired task-A share difference over seeds, its interval, the
    verdict, and whether every model behind it passed the learned rule."""
    b = generation[generation.phase == "B"]
    rows = []
    for (arm, budget), part in b[b.strategy != "none"].groupby(["strategy", "budget"], sort=True):
        for ref in GENERATION_REFERENCES:
            if arm == ref:
                continue
            ref_rows = b[(b.strategy == ref) & ((b.budget == budget) if ref != "none" else True)]
            merged = part.merge(ref_rows, on="seed", suffixes=("", "_ref"))
            if merged.empty:
                continue
            diff = (merged.task_a_share - merged.task_a_share_ref).to_numpy(dtype=float)
            ci = t_interval(diff, level)
            rows.append({"arm": arm, "budget": int(budget), "reference": ref, "n_seeds": int(len(diff)),
                         "effect": ci.estimate, "lo": ci.low, "hi": ci.high, "verdict": verdict(*ci),
                         "positive_seeds": int((diff > 0).sum()),
                         "all_learned": bool(merged.learned.all() and merged.learned_ref.all())})
    return pd.DataFrame(rows, columns=["arm", "budget", "reference", "n_seeds", "effect", "lo", "hi", "verdict",
                                       "positive_seeds", "all_learned"])


def claim2_generation(effects: pd.DataFrame) -> dict | None:
    """Claim 2 in what the models generate: top-energy replay against random replay, per budget; None if the run
    has no such arms."""
    rows = effects[(effects.arm == CLAIM2_ARM) & (effects.reference == "random")]
    if rows.empty:
        return None
    worst = rows.iloc[int(np.argmin(np.nan_to_num(rows.lo.to_numpy(dtype=float), nan=-np.inf)))]  # one seed: NaN
    verdicts = set(rows.verdict)
    overall = verdicts.pop() if len(verdicts) == 1 else "inconclusive"
    return {"verdict": overall, "effect": float(worst.effect), "lo": float(worst.lo), "hi": float(worst.hi),
            "budget": int(worst.budget), "all_learned": bool(rows.all_learned.all())}


def learned_lines(generation: pd.DataFrame) -> list[str]:
    """The report's opening: one line per model, does it pass the learned rule?"""
    lines = []
    for r in generation.itertuples(index=False):
        if r.strategy not in ("task_a", "none"):  # a replay arm: task B and its buffer, the share rule only
            lines.append(f"- `{r.model}`: {'**learned**' if r.learned else '**not learned**'} tasks A and B "
                         f"(confident share over both tasks' classes {r.confident_share:.2f} against "
                         f"{r.floor_share:.2f} for real images; Frechet distance {r.fd:.2f} against {r.floor_fd:.2f} "
                         f"for real images and {r.other_task_fd:.1f} for task B's alone, not part of the rule; "
                         f"task-A share of its samples {r.task_a_share:.2f})")
            continue
        task = "task A" if r.phase == "A" else "task B"
        lines.append(f"- `{r.model}`: {'**learned**' if r.learned else '**not learned**'} {task} "
                     f"(confident share {r.confident_share:.2f} against {r.floor_share:.2f} for real images; Frechet "
                     f"distance {r.fd:.2f} against {r.floor_fd:.2f} for real images and {r.other_task_fd:.1f} for the "
                     f"other task's; task-A share of its samples {r.task_a_share:.2f})")
    return lines


def learned_summary(generation: pd.DataFrame) -> dict:
    """Counts for the metrics: models, learned models, whether model A and every no-replay model learned, and how
    many of the no-replay models did."""
    a = generation[generation.phase == "A"]
    b0 = generation[(generation.phase == "B") & (generation.strategy == "none")]
    return {"models": int(len(generation)), "learned": int(generation.learned.sum()),
            "model_a_learned": bool(a.learned.all()) if len(a) else False,
            "task_b_learned": bool(b0.learned.all()) if len(b0) else False,
            "task_b_models": int(len(b0)), "task_b_models_learned": int(b0.learned.sum())}


def generation_markdown(generation: pd.DataFrame, effects: pd.DataFrame, grid_figure: str | None) -> list[str]:
    """The report's generation section: the task-A share per phase, the arm effects and the sample grids."""
    out = ["## What the models generate", ""]
    a = generation[generation.phase == "A"]
    b0 = generation[(generation.phase == "B") & (generation.strategy == "none")]
    if len(a) and len(b0):
        out += [f"Model A's samples are {a.task_a_share.iloc[0]:.2f} task-A digits; after task B without replay, "
                f"{b0.task_a_share.mean():.2f} (mean over {len(b0)} seeds). Each arm's paired difference in the "
                "task-A share of its samples (> 0: it keeps more of task A), 95% t interval over seeds:", ""]
    out += ["| arm | budget | against | task-A share difference | seeds > 0 | verdict | models learned |",
            "|---|---|---|---|---|---|---|"]
    for r in effects.itertuples(index=False):
        out.append(f"| {r.arm} | {r.budget} | {r.reference} | {format_interval(r.effect, r.lo, r.hi)} | "
                   f"{r.positive_seeds}/{r.n_seeds} | {r.verdict} | {'yes' if r.all_learned else 'no'} |")
    if grid_figure:
        out += ["", f"![samples]({grid_figure})", "",
                "Samples of model A, one seed's task-B model and each arm at that seed, from the same initial noise; "
                "each labelled with the classifier's class."]
    return out + [""]


def plot_sample_grids(grids: dict, names: list[str], path, *, per_row: int = 8):
    """One row of samples per model (the same initial noise across rows), each labelled with its class."""
    import matplotlib.pyplot as plt

    n = min(per_row, min(len(grids[k]) for k in names)) if names else 0
    fig, axes = plt.subplots(len(names), max(n, 1), figsize=(1.1 * max(n, 1) + 2.2, 1.2 * len(names) + 0.3),
                             squeeze=False)
    for i, name in enumerate(names):
        images, classes = grids[name].float().numpy(), grids[f"{name}:class"].numpy()
        for k in range(axes.shape[1]):
            ax = axes[i, k]
            ax.axis("off")
            if k < n:
                img = np.clip((images[k] + 1) / 2, 0, 1)
                ax.imshow(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0), cmap="gray", vmin=0, vmax=1)
                ax.set_title(str(int(classes[k])), fontsize=8, pad=2)
        axes[i, 0].text(-0.15, 0.5, name.replace(":", "/"), transform=axes[i, 0].transAxes, ha="right",
                        va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def grid_rows(generation: pd.DataFrame, seed: int | None = None) -> list[str]:
    """The models shown in the grid figure: model A, the task-B model of one seed, every arm at that seed."""
    b = generation[generation.phase == "B"]
    if seed is None:
        seed = int(b.seed.min()) if len(b) else 0
    names = list(generation[generation.phase == "A"].model)
    names += list(b[(b.seed == seed) & (b.strategy == "none")].model)
    names += list(b[(b.seed == seed) & (b.strategy != "none")].sort_values(["strategy", "budget"]).model)
    return [n.replace("/", ":") for n in names]



def learned_note(summary: dict) -> str:
    """The line after the verdicts when a verdict is drawn from models that did not all learn their task."""
    if summary["model_a_learned"] and summary["task_b_learned"]:
        return ""
    return (f"**Read these verdicts with care: they are drawn from models that did not all learn their task** (model "
            f"A {'learned' if summary['model_a_learned'] else 'did not learn'} task A; the task-B models without "
            f"replay {'all learned' if summary['task_b_learned'] else 'did not all learn'} task B; {summary['learned']} "
            f"of {summary['models']} models pass the learned rule). Forgetting measured on a model that has not "
            "learned its task says little about the paper's claims.")


def claim2_line(claim: dict | None) -> str:
    """Claim 2 in what the models generate, one sentence."""
    if claim is None:
        return "Claim 2 in what the models generate: this run has no top-energy and random arms."
    return (f"Claim 2 in what the models generate **{claim['verdict']}**: the task-A share of top-energy replay's "
            f"samples minus random replay's, {format_interval(claim['effect'], claim['lo'], claim['hi'])} (budget "
            f"{claim['budget']}, the least favourable; > 0: top-energy replay keeps more of task A)"
            + ("." if claim["all_learned"] else "; not every model behind it learned its task."))


def report_parts(generation: pd.DataFrame, effects: pd.DataFrame, grid_figure: str | None) -> dict:
    """What ``report.markdown_report`` places: the learned lines, the note after the verdicts, the section."""
    section = generation_markdown(generation, effects, grid_figure)
    section[2:2] = [claim2_line(claim2_generation(effects)), ""]
    return {"learned": learned_lines(generation), "note": learned_note(learned_summary(generation)),
            "section": section}
