"""A study's forecasts made before fine-tuning: per cell, the report stage's forecast table (``analysis.forecasting``:
each forecast's Spearman with the forgetting its cell's fine-tunes showed, over that cell's seeds, its share of the
seed ceiling, the protocol's other columns and its compute), read from the cell's ``details.json``, so that a
published study says how accurate each forecast was over all its seeds. Cells whose report has no forecast table
(or one from before its columns were complete) have no rows here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from .forecasting import forecast_lines

TEXT = ("measure", "predictor", "kind", "forecast", "baseline")  # the other columns are numbers (JSON null: NaN)
COLUMNS = ["measure", "predictor", "kind", "forecast", "spearman", "spearman_lo", "spearman_hi", "within_class",
           "partial", "precision_at_10", "auroc_top_decile", "baseline", "minus_baseline", "minus_baseline_lo",
           "minus_baseline_hi", "ceiling", "share_of_ceiling", "cost", "train_b_ratio"]


def read_forecasts(metrics_dir: str | Path, unit: str, seeds: list[int]) -> list[dict]:
    """The forecast rows of a run's details.json (``unit`` and ``seeds`` added); [] where it has none."""
    path = Path(metrics_dir) / "details.json"
    if not path.is_file():
        return []
    rows = json.loads(path.read_text()).get("forecasts") or []
    if not rows or any(set(COLUMNS) - set(r) for r in rows):
        return []
    return [{"unit": unit, "seeds": json.dumps(seeds),
             **{k: r[k] if k in TEXT else float("nan") if r[k] is None else float(r[k]) for k in COLUMNS}}
            for r in rows]


def forecasts_markdown(forecasts: pd.DataFrame) -> list[str]:
    """The study report's section: per cell, its report's forecast table and best forecast per measure."""
    lines = []
    for unit, table in forecasts.groupby("unit", sort=False):
        reference = table.loc[~table.forecast.astype(bool), "predictor"].iloc[0]
        part = forecast_lines(table.astype({"forecast": bool}).reset_index(drop=True), reference, None)
        heading = f"## Forecasting forgetting before fine-tuning: {unit}, seeds {table.seeds.iloc[0]}"
        lines += ["", heading, *part[1:]]
    return lines
