"""A study's results, the last step of flows/study.py: the cells' per-sample tables stacked, one row per cell, the
verdicts, seed agreement and arm effects per cell and per pooled seed block, and the study report with its figures
(the folder that tools/publish_study.py publishes)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from hopfield_replay.analysis.study import StudySpec
from hopfield_replay.errors import UserError
from hopfield_replay.io.params_file import validate_config
from hopfield_replay.io.tables import atomic_path

if TYPE_CHECKING:
    from flows.study import Cell

CELL_COLUMNS = ["cell", "status", "attempts", "error", "exp", "experiment", "workspace", "workspace_state", "log",
                "ran", "restored", "started", "finished", "seconds", "prepare_s", "save_s", "host", "gpus", "protocol"]


def aggregate(name: str, spec: StudySpec, cells: list[Cell], records: dict, root: Path, head: str) -> dict:
    """The study's results folder: the stacked per-sample tables, one row per cell (cells.parquet), the verdicts per
    cell and per seed-block pool (verdicts.parquet), their seed agreement (agreement.parquet), every replay arm
    against random replay (arms.parquet), what the models generate (generation.parquet: every arm's effect on the
    task-A share of its samples; learned.parquet: how many models learned; when the cells ran generate), each
    cell's forecast table (forecasts.parquet, from its report), each cell's sample grid (samples/<cell>.png, its
    report's figure, when it ran generate), and report/ (report.md, plots/effects.png, plots/arms.png,
    plots/samples/)."""
    import pandas as pd
    from prefect import get_run_logger

    from hopfield_replay.analysis import study as S
    from hopfield_replay.analysis import study_forecasts as F
    from hopfield_replay.analysis import study_generation as G
    from hopfield_replay.analysis import study_report as R
    from hopfield_replay.io.tables import package_versions, params_hash, read_table, write_table

    grid = S.grid_columns({c.id: c.values for c in cells})
    done = [c for c in cells if records[c.id]["status"] == "completed"]
    tables_dir = {c.id: c.workspace / "data" / "tables" for c in done}
    meta = {"study": name, "commit": head, "cells": [c.id for c in done], "params_hash": params_hash(spec.grid),
            "versions": package_versions()}
    out = root / "results"
    for table in S.TABLES:
        frames = {c.id: read_table(S.table_paths(tables_dir[c.id])[table]) for c in done
                  if S.table_paths(tables_dir[c.id])[table].is_file()}
        write_table(S.stack_tables(frames, grid), out / f"{table}.parquet", table=f"study_{table}",
                    meta={**meta, "table": f"study_{table}"})
    verdicts, agreement, arms, inputs = [], [], [], {}
    generation, learned, generated, forecasts = [], [], {}, []  # generated: cell -> its generation table
    configs = {c.id: validate_config(c.params) for c in done}
    for c in done:
        forecasts += F.read_forecasts(c.workspace / "data" / "metrics", c.id, configs[c.id].seeds)
        table = G.read_generation(tables_dir[c.id])
        if table is not None:
            generated[c.id] = table
            generation += G.effect_rows(table, c.id, configs[c.id].seeds, configs[c.id].report.level)
            learned.append(G.learned_row(table, c.id, configs[c.id].seeds))
        if not all(p.is_file() for p in S.table_paths(tables_dir[c.id]).values()):
            records[c.id]["protocol"] = "not applied: the cell's stages do not write " + ", ".join(S.TABLES)
            continue
        try:
            inputs[c.id] = S.protocol_inputs(tables_dir[c.id], configs[c.id])
        except UserError as exc:
            records[c.id]["protocol"] = f"not applied: {exc}"
            continue
        ev = S.evidence(*inputs[c.id], configs[c.id], configs[c.id].seeds)
        verdicts += S.verdict_rows(ev, c.id, configs[c.id].seeds)
        agreement += S.agreement_rows(ev, c.id, configs[c.id].seeds)
        arms += S.arm_rows(ev, c.id, configs[c.id].seeds)
    for group in S.seed_blocks({c.id: c.params for c in done if c.id in inputs}):
        try:
            scores, forgetting, replay, seeds = S.pool_seed_blocks({c: inputs[c] for c in group})
        except ValueError as exc:  # e.g. bf16 on different GPUs: scores equal only up to rounding
            get_run_logger().warning(f"seed blocks {', '.join(group)} not pooled: {exc}")
            continue
        ev = S.evidence(scores, forgetting, replay, configs[group[0]], seeds)
        verdicts += S.verdict_rows(ev, "pooled:" + "+".join(group), seeds)
        agreement += S.agreement_rows(ev, "pooled:" + "+".join(group), seeds)
        arms += S.arm_rows(ev, "pooled:" + "+".join(group), seeds)
        if all(c in generated for c in group):
            pooled = G.pool_generation({c: generated[c] for c in group})
            generation += G.effect_rows(pooled, "pooled:" + "+".join(group), seeds, configs[group[0]].report.level)
            learned.append(G.learned_row(pooled, "pooled:" + "+".join(group), seeds))
    columns = ["unit", "seeds", "claim", "verdict", "measure", "measure_verdict", "effect", "lo", "hi", "statement"]
    verdicts = pd.DataFrame(verdicts, columns=columns)
    agreement = pd.DataFrame(agreement, columns=S.AGREEMENT_COLUMNS)
    arms = pd.DataFrame(arms, columns=S.ARM_COLUMNS)
    generation = pd.DataFrame(generation, columns=G.EFFECT_COLUMNS)
    learned = pd.DataFrame(learned, columns=G.LEARNED_COLUMNS)
    forecasts = pd.DataFrame(forecasts, columns=["unit", "seeds", *F.COLUMNS])
    table = pd.DataFrame([records[c.id] for c in cells], columns=CELL_COLUMNS).set_index("cell").join(grid)
    table = table.reset_index()
    table["ran"] = [json.dumps(v) if isinstance(v, list) else None for v in table["ran"]]
    write_table(table, out / "cells.parquet", table="study_cells", meta={**meta, "table": "study_cells"})
    write_table(verdicts, out / "verdicts.parquet", table="study_verdicts", meta={**meta, "table": "study_verdicts"})
    write_table(agreement, out / "agreement.parquet", table="study_agreement", meta={**meta, "table": "study_agreement"})
    write_table(arms, out / "arms.parquet", table="study_arms", meta={**meta, "table": "study_arms"})
    write_table(generation, out / "generation.parquet", table="study_generation",
                meta={**meta, "table": "study_generation"})
    write_table(learned, out / "learned.parquet", table="study_learned", meta={**meta, "table": "study_learned"})
    write_table(forecasts, out / "forecasts.parquet", table="study_forecasts",
                meta={**meta, "table": "study_forecasts"})
    grids = {c.id: c.workspace / "data" / "report" / "plots" / "samples.png" for c in sorted(done, key=lambda c: c.id)}
    grids = {cell: path for cell, path in grids.items() if path.is_file()}
    with atomic_path(out / "samples", is_dir=True) as tmp:
        copy_sample_grids(grids, tmp)
    with atomic_path(root / "report", is_dir=True) as tmp:
        (tmp / "plots").mkdir(parents=True)
        copy_sample_grids(grids, tmp / "plots" / "samples")
        if len(verdicts):
            R.plot_effects(verdicts, tmp / "plots" / "effects.png")
        if len(arms):
            R.plot_arms(arms, tmp / "plots" / "arms.png")
        report = R.study_markdown(name, spec.description, head, grid, table, verdicts, agreement, arms,
                                  generation, learned, forecasts, list(grids))
        (tmp / "report.md").write_text(report)
    return {"results": str(out), "report": str(root / "report" / "report.md")}


def copy_sample_grids(grids: dict[str, Path], folder: Path) -> None:
    """{cell: its report's samples.png} -> folder/<cell>.png (the folder made here)."""
    folder.mkdir(parents=True, exist_ok=True)
    for cell, path in grids.items():
        shutil.copyfile(path, folder / f"{cell}.png")
