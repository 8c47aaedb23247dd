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
import tempfile
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

META_KEY = b"hopfield_replay"
VERSIONED_PACKAGES = ("hopfield-replay", "torch", "diffusers", "numpy", "pandas", "pyarrow", "dvc", "prefect")

# The columns each pipeline table must have (more may follow); checked on write and in the tests.
SCHEMAS: dict[str, dict[str, str]] = {
    "samples": {"sample_id": "int64", "task": "object", "label": "int64", "source_index": "int64"},
    "energies": {
        "sample_id": "int64", "task": "object", "label": "int64", "energy_a": "float64", "energy_b": "float64",
        "energy_rise": "float64", "model_energy": "float64", "beta": "float64",
    },
    "forgetting": {
        "sample_id": "int64", "task": "object", "label": "int64", "t": "int64", "error_a": "float64",
        "error_b": "float64", "forgetting": "float64",
    },
    "selection": {
        "sample_id": "int64", "strategy": "object", "budget": "int64", "rank": "int64", "score": "float64",
        "seed": "int64",
    },
    "replay_forgetting": {
        "sample_id": "int64", "strategy": "object", "budget": "int64", "t": "int64", "error_a": "float64",
        "error": "float64", "forgetting": "float64", "replayed": "bool",
    },
}


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
    return {
        "table": table,
        "params_hash": params_hash(params),
        "seed": int(seed),
        "device": device,
        "versions": package_versions(),
    }


@contextlib.contextmanager
def atomic_path(path: str | Path, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling path; on success rename it onto ``path``, on error remove it.

    Readers never see a half-written file or folder: the rename is atomic on one filesystem.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
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


def read_table(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"table {path} does not exist; run the stage that writes it first")
    return pd.read_parquet(path)


def read_meta(path: str | Path) -> dict:
    schema = pq.read_schema(path)
    raw = (schema.metadata or {}).get(META_KEY)
    return json.loads(raw) if raw else {}


def write_json(obj, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=float) + "\n")
    return Path(path)


def save_tensors(tensors: dict, path: str | Path, *, meta: dict | None = None) -> Path:
    """Tensors (images, latents) in one safetensors file, atomically; ``meta`` as its string metadata."""
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={k: json.dumps(v) for k, v in (meta or {}).items()})
    return Path(path)


def load_tensors(path: str | Path) -> dict:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run the stage that writes it first (dvc repro)")
    return load_file(str(path))
