"""Studies: the pipeline over a grid of params. The study file's model, its cells, and the study's evidence.

A study file (``studies/<name>.yaml``) names a ``base`` profile (or none: the committed params.yaml), a ``grid``
of dotted params keys, each with a list of values (the cells are their cartesian product), optional DVC
``stages`` to run, and the ``engine`` that fans the cells out (flows/study.py). This module knows nothing of DVC,
Prefect or Dask: it validates the file, expands the grid, and turns the cells' tables into study tables and
verdicts, applying the evidence protocol (protocol.run_protocol) exactly as the report stage does, per cell and
pooled over cells that differ only in their ``seeds`` (seed blocks).
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..io.config import Config, RuleError
from ..errors import UserError
from ..measures.forgetting import MEASURES, add_measures
from ..io.params_file import read_yaml_file, validation_line
from .protocol import Evidence, run_protocol
from ..io.tables import params_hash, read_table
from .verdicts import CHECKS

TABLES = ("scores", "forgetting", "replay_forgetting")  # the per-sample tables a study stacks
CLAIMS = ("claim1", "claim2")  # rows of the verdicts table, then the design checks (verdicts.CHECKS)
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # a study name: a folder name and part of a git ref


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class EngineSpec(_Strict):
    """How the cells fan out: Prefect task runners on Dask (default) or Ray."""

    runner: Literal["dask", "ray"] = "dask"
    address: str | None = None  # a running Dask scheduler (tcp://host:8786) or Ray cluster; null: a local cluster
    workers: Annotated[int, Field(ge=1)] = 2  # local Dask cluster without GPUs: worker processes, 1 thread each
    gpus: list[Annotated[int, Field(ge=0)]] = []  # local cluster: the GPU ids to use (one worker per gpus_per_cell)
    gpus_per_cell: Annotated[int, Field(ge=0)] = 0  # Dask resource GPU / Ray num_gpus that one cell holds
    max_parallel: Annotated[int, Field(ge=1)] | None = None  # at most this many cells at once (Prefect tag limit)
    retries: Annotated[int, Field(ge=0, le=5)] = 1  # a failed cell is run again this many times
    timeout_h: Annotated[float, Field(gt=0)] = 24.0  # one attempt of one cell is killed after this

    @model_validator(mode="after")
    def _gpus(self):
        if len(set(self.gpus)) != len(self.gpus):
            raise RuleError("gpus", f"{self.gpus} lists a GPU twice")
        if self.gpus and self.gpus_per_cell == 0:
            raise RuleError("gpus_per_cell", "must be >= 1 when gpus lists GPUs (one cell per gpus_per_cell GPUs)")
        if self.gpus and len(self.gpus) < self.gpus_per_cell:
            raise RuleError("gpus_per_cell", f"{self.gpus_per_cell} is more than the {len(self.gpus)} GPUs listed")
        if self.gpus_per_cell and not self.gpus and not self.address and self.runner == "dask":
            raise RuleError("gpus", "list the local GPU ids (e.g. [0, 1, 2, 3]) or give address, a Dask scheduler "
                            "whose workers offer the resource GPU")
        return self


class StudySpec(_Strict):
    """A study file."""

    description: str | None = None
    base: str | None = None  # a profile file (profiles/<name>.yaml) merged into the committed params.yaml
    grid: dict[str, list[Any]] = {}
    stages: list[str] | None = None  # DVC stage names (`dvc repro <stages>`: with what they depend on); null: all
    engine: EngineSpec = EngineSpec()

    @field_validator("grid")
    @classmethod
    def _grid(cls, grid):
        for key, values in grid.items():
            if not values:
                raise RuleError(key, "the list of values is empty; give at least one")
            texts = [json.dumps(v, sort_keys=True) for v in values]
            if len(set(texts)) != len(texts):
                raise RuleError(key, f"{values} lists a value twice (two identical cells)")
        return grid

    @field_validator("stages")
    @classmethod
    def _stages(cls, stages):
        if stages is not None and not stages:
            raise ValueError("an empty list runs nothing; leave stages out to run every stage")
        return stages


def validate_engine(raw: dict, where: str) -> EngineSpec:
    """Engine settings (the study file's, with command-line overrides) as one UserError line on a problem."""
    try:
        return EngineSpec(**raw)
    except ValidationError as exc:
        raise UserError(f"{where}: {validation_line(exc, EngineSpec)}") from None


def params_key_error(dotted: str) -> str | None:
    """Why ``dotted`` is not a params key (None when it is one): every part must name a field of Config."""
    model: Any = Config
    for i, part in enumerate(dotted.split(".")):
        fields = getattr(model, "model_fields", None)
        if fields is None:
            return f"{'.'.join(dotted.split('.')[:i])} holds a value, not a section"
        if part not in fields:
            where = ".".join(dotted.split(".")[:i]) or "params"
            return f"unknown params key; known keys of {where}: {', '.join(fields)}"
        model = fields[part].annotation
    return None


def load_study(path: str | Path) -> StudySpec:
    """Read and validate a study file; any problem is one UserError line naming the file and the key."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: study file not found; studies live in studies/<name>.yaml")
    if not NAME.match(path.stem):
        raise UserError(f"{path}: the study name {path.stem!r} may hold only letters, digits, '_', '.' and '-'")
    raw = read_yaml_file(path)
    if not isinstance(raw, dict):
        raise UserError(f"{path}: must be a mapping (base:, grid:, stages:, engine:), got {type(raw).__name__}")
    try:
        spec = StudySpec(**raw)
    except ValidationError as exc:
        raise UserError(f"{path}: {validation_line(exc, StudySpec)}") from None
    for key in spec.grid:
        problem = params_key_error(key)
        if problem:
            raise UserError(f"{path}: grid.{key}: {problem}")
    return spec


# --------------------------------------------------------------------------------------------------- the cells
def expand(grid: dict[str, list]) -> list[dict[str, Any]]:
    """The cells of a grid: one {dotted key: value} per combination, the first key varying slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _slug(value) -> str:
    """A value as a few safe characters for a folder and git ref name: [5, 6, 7] -> 5.6.7."""
    text = value if isinstance(value, str) else json.dumps(value)
    return re.sub(r"[^A-Za-z0-9_-]+", ".", text).strip(".") or "x"


def cell_id(values: dict[str, Any], params: dict) -> str:
    """A readable, stable id: the grid values (sorted by key) and a hash of the cell's whole params, so that the same
    params give the same id in every run and any other params another id."""
    slug = "_".join(f"{k.rsplit('.', 1)[-1]}-{_slug(v)}" for k, v in sorted(values.items()))[:48].strip("_.-")
    digest = params_hash(params)[:8]
    return f"{slug}-{digest}" if slug else digest


def grid_columns(cells: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per cell id, one column per grid key (named by the dotted key). A key whose values are all scalars
    of one type keeps them; any other (lists, mappings, mixed types) is written as JSON text, e.g. "[1, 2]"."""
    keys = list(dict.fromkeys(k for values in cells.values() for k in values))
    out = pd.DataFrame(index=pd.Index(list(cells), name="cell"))
    for key in keys:
        values = [cells[c].get(key) for c in cells]
        kinds = {type(v) for v in values if v is not None}
        plain = len(kinds) <= 1 and not kinds & {list, dict}
        out[key] = values if plain else [json.dumps(v) for v in values]
    return out


# --------------------------------------------------------------------------------------------------- the tables
def table_paths(tables_dir: str | Path) -> dict[str, Path]:
    return {name: Path(tables_dir) / f"{name}.parquet" for name in TABLES}


def stack_tables(frames: dict[str, pd.DataFrame], grid: pd.DataFrame) -> pd.DataFrame:
    """One table from the cells' tables of one kind ({cell id: frame}): columns cell, the grid columns, then the
    table's own; rows in the order of ``frames``."""
    parts = []
    for cell, frame in frames.items():
        clash = set(grid.columns) & set(frame.columns)
        if clash:
            raise ValueError(f"grid keys {sorted(clash)} clash with table columns")
        head = pd.DataFrame({"cell": cell, **{k: [grid.at[cell, k]] * len(frame) for k in grid.columns}},
                            index=frame.index)
        parts.append(pd.concat([head, frame], axis=1))
    if not parts:
        return pd.DataFrame(columns=["cell", *grid.columns])
    return pd.concat(parts, ignore_index=True)


# ------------------------------------------------------------------------------------------------- the evidence
def protocol_inputs(tables_dir: str | Path, cfg: Config) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(scores, forgetting, replay) read from a run's tables exactly as the report stage reads them."""
    paths, energy = table_paths(tables_dir), cfg.select_replay.score
    scores = read_table(paths["scores"], columns=["sample_id", "label", energy, *cfg.report.nuisance])
    forgetting = read_table(paths["forgetting"], columns=["sample_id", "seed", "t", "error_a", "error"])
    replay = read_table(paths["replay_forgetting"], columns=["sample_id", "seed", "strategy", "budget", "t",
                                                             "replayed", "error_a", "error"])
    return scores.set_index("sample_id"), add_measures(forgetting), add_measures(replay)


def evidence(scores: pd.DataFrame, forgetting: pd.DataFrame, replay: pd.DataFrame, cfg: Config,
             seeds: list[int]) -> Evidence:
    """The evidence protocol with the run's report settings: the call of stages/report.py."""
    p = cfg.report
    return run_protocol(scores, forgetting, replay, seeds=seeds, energy=cfg.select_replay.score, nuisance=p.nuisance,
                        deciles=p.deciles, top_frac=p.top_frac, n_boot=p.bootstrap, seed=p.seed, level=p.level,
                        aggregate_t=p.aggregate_t)


def pool_seed_blocks(runs: dict[str, tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]]) -> tuple:
    """Cells that differ only in their seeds, as one run: the shared scores table (identical in every cell, since
    it does not depend on the seeds; else a ValueError), and the forgetting and replay rows of every seed, each
    seed's rows from the first cell that has it. Returns (scores, forgetting, replay, seeds)."""
    (first, (scores, _, _)), *rest = runs.items()
    for cell, (other, _, _) in rest:
        if not other.sort_index().equals(scores.sort_index()):
            raise ValueError(f"cells {first} and {cell} have different scores tables; they are not seed blocks")
    forgetting, replay, seeds = [], [], []
    for _, f, r in runs.values():
        new = sorted(set(f["seed"]) - set(seeds))
        seeds += new
        forgetting.append(f[f["seed"].isin(new)])
        replay.append(r[r["seed"].isin(new)])
    return scores, pd.concat(forgetting, ignore_index=True), pd.concat(replay, ignore_index=True), sorted(seeds)


def seed_blocks(params: dict[str, dict]) -> list[list[str]]:
    """Groups (of two or more cell ids) whose params are equal but for ``seeds``."""
    groups: dict[str, list[str]] = {}
    for cell, p in params.items():
        groups.setdefault(params_hash({k: v for k, v in p.items() if k != "seeds"}), []).append(cell)
    return [cells for cells in groups.values() if len(cells) > 1]


def verdict_rows(ev: Evidence, unit: str, seeds: list[int]) -> list[dict]:
    """One row per claim or design check (column ``claim``) and forgetting measure: the combined verdict, the
    measure's verdict, effect, interval (a check's effect: its budget with the lowest lower bound, NaN if not run)."""
    rows = []
    entries = {**ev.verdicts, **ev.checks}
    for claim in (*CLAIMS, *CHECKS):
        c = entries[claim]
        for m in MEASURES:
            rows.append({"unit": unit, "seeds": json.dumps(seeds), "claim": claim, "verdict": c["verdict"],
                         "measure": m, "measure_verdict": c[m]["verdict"], "effect": float(c[m]["effect"]),
                         "lo": float(c[m]["lo"]), "hi": float(c[m]["hi"]), "statement": c["statement"]})
    return rows


AGREEMENT_COLUMNS = ["unit", "seeds", "measure", "rho", "lo", "hi", "ceiling", "n_seeds"]


def agreement_rows(ev: Evidence, unit: str, seeds: list[int]) -> list[dict]:
    """One row per forgetting measure: how far the run's seeds agree on which samples are forgotten
    (forgetting.seed_agreement: the mean pairwise Spearman of the seeds' per-sample no-replay forgetting, its
    bootstrap interval over samples, and the noise ceiling sqrt(rho) of the predictor table; NaN with one seed)."""
    return [{"unit": unit, "seeds": json.dumps(seeds), "measure": m,
             **{k: float(ev.agreement[m][k]) for k in ("rho", "lo", "hi", "ceiling")},
             "n_seeds": int(ev.agreement[m]["n_seeds"])} for m in MEASURES]


ARM_COLUMNS = ["unit", "seeds", "measure", "strategy", "budget", "reference", "effect", "lo", "hi", "n_seeds",
               "n_agree", "forgetting", "reference_forgetting"]


def arm_rows(ev: Evidence, unit: str, seeds: list[int]) -> list[dict]:
    """One row per forgetting measure, replay arm, budget and reference (random, none, class_balanced): the arm
    table of the report (evidence.arm_effects) over all samples, effect = forgetting(reference) - forgetting(arm)
    with its t interval over seeds (> 0: the arm forgets less)."""
    rows = []
    for m in MEASURES:
        table = ev.arms[m]
        for r in table[table["subset"] == "overall"].itertuples():
            rows.append({"unit": unit, "seeds": json.dumps(seeds), "measure": m, "strategy": r.strategy,
                         "budget": int(r.budget), "reference": r.reference,
                         **{k: float(getattr(r, k)) for k in ("effect", "lo", "hi")},
                         "n_seeds": int(r.n_seeds), "n_agree": int(r.n_agree), "forgetting": float(r.forgetting),
                         "reference_forgetting": float(r.reference_forgetting)})
    return rows
