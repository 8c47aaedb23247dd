"""Publish a finished study into git: its verdicts, arm effects, seed agreement and report.

    python -m flows.study studies/ddpm-mnist-cpu-budgets.yaml            # run it (results in .studies/, ignored)
    python -m tools.publish_study studies/ddpm-mnist-cpu-budgets.yaml    # -> studies/results/ddpm-mnist-cpu-budgets/

The study's small tables (verdicts, arms, agreement; generation, learned and forecasts where its cells ran
generate and forecast) and its cells' sample grids (plots/samples/) are copied as they are; its cells table loses
the columns
that name this machine (workspace, log, host, error, protocol). The report and its two figures are then
regenerated from those published tables alone, so what is committed is what the tables say (a test regenerates
the report of every published study). The per-sample tables stay in .studies/. The studies section of
docs/results.md is rendered from the published folders by `python -m tools.render_results`.

Refused with one line and exit 2, nothing written: a study that has not run, a missing or failed cell, a damaged
table.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from hopfield_replay.analysis import study_report as R
from hopfield_replay.errors import UserError
from hopfield_replay.analysis.study import load_study
from hopfield_replay.io.tables import atomic_path, read_meta, read_table, write_table
from stages.runner import draw_to_files

PUBLISHED = Path("studies/results")
TABLES = ("verdicts", "arms", "agreement")
OPTIONAL = ("generation", "learned", "forecasts")  # studies whose cells ran generate, and the forecast stage
PRIVATE = ("workspace", "log", "host", "error", "protocol")  # cells' columns that name the machine or its paths


def publish(study: Path, results: Path, out: Path) -> Path:
    """Copy a study's results folder (flows/study.py's ``results/``) to ``out``, as described above."""
    spec = load_study(study)
    cells = read_table(results / "cells.parquet", columns=["cell", "status"])
    meta = read_meta(results / "cells.parquet")
    bad = cells[cells["status"] != "completed"]
    if len(bad):
        raise UserError(f"{results / 'cells.parquet'}: cell {bad['cell'].iloc[0]} did not complete "
                        f"({bad['status'].iloc[0]}); run the study again (python -m flows.study {study}) until every "
                        "cell completes")
    tables = {name: read_table(results / f"{name}.parquet") for name in TABLES}
    tables.update({name: read_table(results / f"{name}.parquet") for name in OPTIONAL
                   if (results / f"{name}.parquet").is_file()})
    grid_keys = [k for k in spec.grid if k in cells.columns]
    meta = {**meta, "description": spec.description, "grid_keys": grid_keys}
    with atomic_path(out, is_dir=True) as tmp:
        write_table(cells.drop(columns=[c for c in PRIVATE if c in cells.columns]), tmp / "cells.parquet",
                    table="study_cells", meta=meta)
        for name, df in tables.items():
            write_table(df, tmp / f"{name}.parquet", table=f"study_{name}", meta={**meta, "table": f"study_{name}"})
        if (results / "samples").is_dir():
            shutil.copytree(results / "samples", tmp / "plots" / "samples")
        write_report(tmp)
    return out


def write_report(folder: Path) -> None:
    """report.md and plots/ of a published folder, from its tables."""
    (folder / "plots").mkdir(exist_ok=True)
    verdicts, arms = read_table(folder / "verdicts.parquet"), read_table(folder / "arms.parquet")
    if len(verdicts):
        R.plot_effects(verdicts, folder / "plots" / "effects.png")
    if len(arms):
        R.plot_arms(arms, folder / "plots" / "arms.png")
    (folder / "report.md").write_text(published_report(folder))


def published_report(folder: Path) -> str:
    """The study report of a published folder, from its tables alone."""
    cells = read_table(folder / "cells.parquet", columns=["cell", "status"])
    meta = read_meta(folder / "cells.parquet")
    grid = cells.set_index("cell")[meta["grid_keys"]]
    name = meta["study"]
    optional = {name: read_table(folder / f"{name}.parquet") if (folder / f"{name}.parquet").is_file() else None
                for name in OPTIONAL}
    return R.study_markdown(name, meta.get("description"), meta["commit"], grid, cells,
                            read_table(folder / "verdicts.parquet"), read_table(folder / "agreement.parquet"),
                            read_table(folder / "arms.parquet"), optional["generation"], optional["learned"],
                            optional["forecasts"], sample_grids(folder))


def sample_grids(folder: Path) -> list[str]:
    """The cells whose sample grid a published folder holds (plots/samples/<cell>.png), sorted."""
    return sorted(p.stem for p in (folder / "plots" / "samples").glob("*.png"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.publish_study", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("study", type=Path, help="the study file, e.g. studies/ddpm-mnist-cpu-budgets.yaml")
    ap.add_argument("--results", type=Path, help="the study's results folder (default: .studies/<name>/results)")
    ap.add_argument("--out", type=Path, help=f"where to publish (default: {PUBLISHED}/<name>)")
    args = ap.parse_args(argv)
    draw_to_files()  # the report's figures
    results = args.results or Path(".studies") / args.study.stem / "results"
    out = args.out or PUBLISHED / args.study.stem
    try:
        if not (results / "cells.parquet").is_file():
            raise UserError(f"{results}: no study results; run the study first: python -m flows.study {args.study}")
        publish(args.study, results, out)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"published {args.study.stem} to {out} (report: {out / 'report.md'}); then: python -m tools.render_results")
    return 0


if __name__ == "__main__":
    sys.exit(main())
