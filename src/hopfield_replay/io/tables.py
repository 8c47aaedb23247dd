"""Parquet tables keyed by ``sample_id``, written atomically, with the run's provenance in the schema metadata.

Every table is long format (one row per sample and condition) and shares column names across tables
(``sample_id``, ``task``, ``label``, ``t``, ``strategy``, ``budget``, ``seed``), so they join without renaming.
The file's schema metadata holds ``hopfield_replay`` = JSON {params_hash, seed, versions, device, table}, where
params_hash covers the params sections the table was made from (so unrelated params leave its bytes unchanged).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import UserError

META_KEY = b"hopfield_replay"
VERSIONED_PACKAGES = ("hopfield-replay", "torch", "diffusers", "numpy", "pandas", "pyarrow", "dvc", "prefect")

# The columns each pipeline table must have (more may follow); checked on write and in the tests.
SCHEMAS: dict[str, dict[str, str]] = {
    "samples": {"sample_id": "int64", "task": "object", "label": "int64", "source_index": "int64"},
    "scores": {  # plus one float64 column per predictor (hopfield_replay.predictors)
        "sample_id": "int64", "task": "object", "label": "int64", "energy_a": "float64", "energy_b": "float64",
        "energy_rise": "float64", "model_energy": "float64", "recon_error_a": "float64", "pixel_mass": "float64",
        "beta": "float64",
    },
    "forgetting": {
        "sample_id": "int64", "task": "object", "label": "int64", "seed": "int64", "t": "int64", "error_a": "float64",
        "error": "float64", "absolute": "float64", "relative": "float64",
    },
    "selection": {
        "sample_id": "int64", "strategy": "object", "budget": "int64", "rank": "int64", "score": "float64",
        "seed": "int64", "score_name": "object",
    },
    "replay_forgetting": {
        "sample_id": "int64", "task": "object", "label": "int64", "seed": "int64", "strategy": "object",
        "budget": "int64", "t": "int64", "error_a": "float64", "error": "float64", "absolute": "float64",
        "relative": "float64", "replayed": "bool",
    },
    "forecast": {"sample_id": "int64", "label": "int64"},  # plus one float64 column per forecast (forecast.py)
    "regime": {"sample_id": "int64", "t": "int64", "model_error": "float64", "empirical_error": "float64",
               "distance": "float64"},
    "generation": {  # plus share_<c>: the share of samples the classifier assigns to class c
        "model": "object", "phase": "object", "seed": "int64", "strategy": "object", "budget": "int64", "n": "int64",
        "confident_share": "float64", "floor_share": "float64", "fd": "float64", "floor_fd": "float64",
        "other_task_fd": "float64",
        "learned": "bool", "task_a_share": "float64", "task_b_share": "float64",
    },
}


SCHEMAS["control"] = SCHEMAS["forgetting"]  # the control stage measures model A continued as forgetting measures

# The columns that identify a row of each table: a table read back with two rows of one key is damaged.
KEYS: dict[str, list[str]] = {
    "samples": ["sample_id"], "scores": ["sample_id"], "forgetting": ["sample_id", "seed", "t"], "control": ["sample_id", "seed", "t"],
    "selection": ["sample_id", "strategy", "budget", "seed"],
    "replay_forgetting": ["sample_id", "seed", "strategy", "budget", "t"], "generation": ["model"],
    "regime": ["sample_id", "t"], "forecast": ["sample_id"],
}
_KINDS = {"int64": "iu", "float64": "f", "bool": "b", "object": "OSU"}


def package_versions() -> dict[str, str]:
    out = {}
    for name in VERSIONED_PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not-installed"
    return out


def params_hash(params: dict) -> str:
    """sha256 of the params as canonical JSON (sorted keys): equal params give equal hashes."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


def provenance(params: dict, *, seed: int, device: str, table: str) -> dict:
    """What a table was made from: a hash of the params sections it depends on (``Config.section``), the seed,
    the device kind and the package versions."""
    return {
        "table": table,
        "params_hash": params_hash(params),
        "seed": int(seed),
        "device": device,
        "versions": package_versions(),
    }


def check_output(path: str | Path, *, is_dir: bool = False) -> Path:
    """Fail before any work if ``path`` cannot be written: a file stands where a folder of its path should be, a
    file output names an existing folder or a folder output an existing file (either would be replaced), or the
    path is something other than a regular file or folder (a device, FIFO or socket). Replacing a previous output of
    the same kind is allowed. Stages check every output path up front."""
    path = Path(path)
    if path.exists():
        mode = path.stat().st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
            raise UserError(f"{path}: is not a regular file or folder (a device, FIFO or socket); pass another output "
                            "path (it is kept)")
        if is_dir and stat.S_ISREG(mode):
            raise UserError(f"{path}: is a file, but this output is a folder; pass a folder path (the file is kept)")
    parent = next((p for p in path.parents if p.exists()), None)
    if parent is not None and not parent.is_dir():
        raise UserError(f"{path}: cannot be written: {parent} is a file, not a folder; pass an output path inside a "
                        "folder")
    if not is_dir and path.is_dir():
        raise UserError(f"{path}: is a folder, but this output is a file; pass a file path (the folder is kept)")
    return path


@contextlib.contextmanager
def atomic_path(path: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path``, on error remove it.

    Readers never see a half-written file or folder: the rename is atomic on one filesystem.
    """
    path = check_output(path, is_dir=is_dir)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise UserError(f"{path}: cannot be written ({exc.strerror or exc}); pass a writable output path") from None
    target = tmp if is_dir else tmp / path.name
    try:
        yield target
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        os.replace(target, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def check_schema(df: pd.DataFrame, table: str) -> None:
    expected = SCHEMAS.get(table)
    if expected is None:
        return
    missing = [c for c in expected if c not in df.columns]
    if missing:
        raise ValueError(f"table {table!r} lacks columns {missing}")


def write_table(df: pd.DataFrame, path: str | Path, *, table: str, meta: dict) -> Path:
    """Write ``df`` as Parquet atomically, with ``meta`` (see ``provenance``) in the schema metadata."""
    check_schema(df, table)
    arrow = pa.Table.from_pandas(df.reset_index(drop=True), preserve_index=False)
    merged = dict(arrow.schema.metadata or {})
    merged[META_KEY] = json.dumps(meta, sort_keys=True).encode()
    arrow = arrow.replace_schema_metadata(merged)
    with atomic_path(path) as tmp:
        pq.write_table(arrow, tmp)
    return Path(path)


def _exists(path: Path, what: str) -> None:
    if not path.exists():
        raise UserError(f"{path}: {what} does not exist; run the stage that writes it first (dvc repro)")


def read_table(path: str | Path, *, columns: list[str] | None = None) -> pd.DataFrame:
    """A Parquet table; a missing, damaged or foreign file is a UserError naming it."""
    path = Path(path)
    _exists(path, "table")
    try:
        df = pd.read_parquet(path)
    except (OSError, pa.ArrowException, ValueError, TypeError) as exc:  # TypeError: damaged pandas metadata
        first = (str(exc).strip().splitlines() or [""])[0].split(". ")[0][:160]
        raise UserError(f"{path}: not a readable Parquet table ({type(exc).__name__}: {first}); pass the table the "
                        "stage expects, or rerun the stage that writes it (dvc repro --force <stage>)") from None
    missing = [c for c in columns or [] if c not in df.columns]
    if missing:
        raise UserError(f"{path}: lacks columns {missing}; pass the table the stage expects, or rerun the stage that "
                        "writes it (it may be from another version)")
    try:
        table = read_meta(path).get("table")
    except (ValueError, AttributeError):  # metadata that is not a JSON object: a foreign table, checked as such
        table = None
    check_values(df, path, table if isinstance(table, str) else None)
    return df


def check_values(df: pd.DataFrame, path: Path, table: str | None) -> None:
    """A table read back holds what its writer promised, else a UserError naming the file and the column: every
    column of its schema of the right kind, with no missing value, every float column finite, and one row per key
    (``KEYS``). The library's own checks would otherwise raise ValueError deep inside a stage."""
    if table not in SCHEMAS:  # a foreign or free-form table (the MHN summaries hold NaN for one-seed intervals)
        return
    fix = "the file is damaged or was edited: rerun the stage that writes it (dvc repro --force <stage>)"
    for col, dtype in SCHEMAS[table].items():
        if col in df.columns and df[col].dtype.kind not in _KINDS[dtype]:
            raise UserError(f"{path}: column {col!r} holds {df[col].dtype}, not {dtype}; {fix}")
    for col in df.columns:
        values = df[col]
        if values.dtype.kind in "fc" and not np.isfinite(values.to_numpy()).all():
            raise UserError(f"{path}: column {col!r} holds non-finite values (NaN or inf) in row "
                            f"{int(np.flatnonzero(~np.isfinite(values.to_numpy()))[0])}; {fix}")
        if col in SCHEMAS[table] and values.isna().any():
            raise UserError(f"{path}: column {col!r} has missing values; {fix}")
    key = [c for c in KEYS.get(table, []) if c in df.columns]
    if key and len(key) == len(KEYS[table]) and df.duplicated(key).any():
        row = df.loc[df.duplicated(key, keep=False), key].iloc[0].to_dict()
        raise UserError(f"{path}: two rows for {row}; {fix}")


def read_meta(path: str | Path) -> dict:
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


def write_json(obj, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
    return Path(path)


def save_tensors(tensors: dict, path: str | Path, *, meta: dict | None = None) -> Path:
    """Tensors (images, latents) in one safetensors file, atomically; ``meta`` as ONE sorted-JSON metadata entry
    (safetensors writes several entries in hash-map order, which would change the file's bytes run to run)."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={META_KEY.decode(): json.dumps(meta or {}, sort_keys=True)})
    return Path(path)


def load_tensors(path: str | Path, *, keys: tuple[str, ...] = ()) -> dict:
    """The tensors of a safetensors file; a missing, damaged or foreign file (one without ``keys``) is a UserError."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    _exists(path, "tensor file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a tensor file; pass the .safetensors file")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc}); pass the file the stage expects, "
                        "or rerun the stage that writes it") from None
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise UserError(f"{path}: holds no {' and no '.join(map(repr, missing))} tensor (it holds {sorted(tensors)}); "
                        "pass the file the stage expects, or rerun the stage that writes it")
    return tensors


def tensor_meta(path: str | Path) -> dict:
    """The metadata written by ``save_tensors`` (images, model-space x0)."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    _exists(path, "tensor file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder, not a tensor file; pass the .safetensors file")
    try:
        with safe_open(str(path), framework="pt") as fh:
            raw = (fh.metadata() or {}).get(META_KEY.decode())
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{path}: not a readable safetensors file ({exc}); pass the file the stage expects, "
                        "or rerun the stage that writes it") from None
    return json.loads(raw) if raw else {}


def load_task(x0_path, samples_path, task: str, *, family: str | None = None):
    """(x0, labels, sample_ids) of one task, in sample_id order, from a tensor file (``x0`` written by encode:
    pixels for the DDPM, VAE latents for Stable Diffusion; or ``images`` written by prepare) and the samples
    table. With ``family``, the file must hold x0 of that model family (else it is stale: rerun encode)."""
    import torch

    tensors = load_tensors(x0_path)
    key = "x0" if "x0" in tensors else "images"
    if key not in tensors or "sample_id" not in tensors:
        raise UserError(f"{x0_path}: holds no x0/images and sample_id tensors; rerun prepare and encode")
    if family is not None:
        stored = tensor_meta(x0_path).get("family")
        if stored is not None and stored != family:
            raise UserError(f"{x0_path}: holds x0 for model family {stored!r} but the model is {family!r}; "
                            "rerun encode (dvc repro)")
    samples = read_table(samples_path, columns=["sample_id", "task", "label"])
    pos = {int(s): i for i, s in enumerate(tensors["sample_id"].tolist())}
    rows = samples[samples["task"] == task].sort_values("sample_id")
    if rows.empty:
        raise UserError(f"{samples_path}: no task {task!r} samples; rerun prepare")
    missing = [int(s) for s in rows["sample_id"] if int(s) not in pos]
    if missing:
        raise UserError(f"{x0_path}: sample_id {missing[0]} of {samples_path} is missing; rerun encode (dvc repro)")
    index = torch.tensor([pos[int(s)] for s in rows["sample_id"]])
    return tensors[key][index], torch.tensor(rows["label"].to_numpy()), rows["sample_id"].to_numpy()
