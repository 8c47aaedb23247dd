"""A study's evidence from what its models generate: per cell and per pooled seed block, whether the models learned
their task, and every arm's effect on the task-A share of its samples, exactly as the report stage computes them
(``analysis.generation``: the paired difference over seeds

    d_seed = s(arm, seed) - s(reference, seed),   s = the task-A share of a model's samples,

with its Student-t interval and verdict; > 0: the arm keeps more of task A). Cells whose stages do not run
``generate`` have no generation table and no rows here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ..io.tables import read_table
from .generation import arm_effects, learned_summary
from .verdicts import CLAIM2_ARM, format_interval

COLUMNS = ["model", "phase", "seed", "strategy", "budget", "learned", "task_a_share"]  # read from a cell's table
EFFECT_COLUMNS = ["unit", "seeds", "arm", "budget", "reference", "n_seeds", "effect", "lo", "hi", "verdict",
                  "positive_seeds", "all_learned"]
LEARNED_COLUMNS = ["unit", "seeds", "models", "learned", "model_a_learned", "task_b_models", "task_b_models_learned"]


def read_generation(tables_dir: str | Path) -> pd.DataFrame | None:
    """A run's generation table (the generate stage's), or None if the run has none."""
    path = Path(tables_dir) / "generation.parquet"
    return read_table(path, columns=COLUMNS)[COLUMNS] if path.is_file() else None


def pool_generation(tables: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Cells that differ only in their seeds, as one run: model A's row of the first cell (the same model in every
    cell of a seed block), then the task-B rows of every seed from the first cell that has it."""
    first = next(iter(tables.values()))
    rows, seeds = [first[first.phase == "A"]], set()
    for table in tables.values():
        b = table[table.phase == "B"]
        new = set(b.seed) - seeds
        rows.append(b[b.seed.isin(new)])
        seeds |= new
    return pd.concat(rows, ignore_index=True)


def effect_rows(generation: pd.DataFrame, unit: str, seeds: list[int], level: float) -> list[dict]:
    """One row per (arm, budget, reference): ``generation.arm_effects`` of the run."""
    return [{"unit": unit, "seeds": json.dumps(seeds), **r}
            for r in arm_effects(generation, level).to_dict("records")]


def learned_row(generation: pd.DataFrame, unit: str, seeds: list[int]) -> dict:
    """How many of the run's models pass the learned rule (``generation.learned_summary``)."""
    s = learned_summary(generation)
    return {"unit": unit, "seeds": json.dumps(seeds), **{k: s[k] for k in LEARNED_COLUMNS[2:]}}


def generation_markdown(effects: pd.DataFrame, learned: pd.DataFrame) -> list[str]:
    """The study report's section: per cell and pooled run, how many models learned, then claim 2 in what the
    models generate (top-energy against random replay) and every other arm against random and no replay."""
    lines = ["", "## What the models generate", "", "Are the models learned (the generate stage's rule: model A on "
             "task A, a task-B model on task B)? Then each arm's paired difference in the task-A share of its "
             "samples against random replay and against no replay (> 0: the arm keeps more of task A in what it "
             "generates), 95% t interval over seeds; the last column says whether every model behind the difference "
             "passed the learned rule.", "",
             "| cell | seeds | models learned | model A | no-replay task-B models learned |", "|---|---|---|---|---|"]
    for r in learned.itertuples(index=False):
        lines.append(f"| {r.unit.removeprefix('pooled:').replace('+', ', ')} | {r.seeds} | {r.learned} of {r.models} "
                     f"| {'learned' if r.model_a_learned else 'not learned'} | {r.task_b_models_learned} of "
                     f"{r.task_b_models} |")
    lines += ["", "| cell | arm | budget | against | task-A share difference | seeds > 0 | verdict | models learned |",
              "|---|---|---|---|---|---|---|---|"]
    parts = [part.assign(later=part.arm != CLAIM2_ARM).sort_values("later", kind="stable")  # claim 2's arm first
             for _, part in effects.groupby("unit", sort=False)]
    for r in (pd.concat(parts) if parts else effects).itertuples(index=False):
        lines.append(f"| {r.unit.removeprefix('pooled:').replace('+', ', ')} | {r.arm} | {r.budget} | {r.reference} | "
                     f"{format_interval(r.effect, r.lo, r.hi)} | {r.positive_seeds}/{r.n_seeds} | {r.verdict} | "
                     f"{'yes' if r.all_learned else 'no'} |")
    return lines
