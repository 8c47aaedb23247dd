"""Atomic Parquet/JSON/tensor writes with provenance in the schema metadata."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from hopfield_replay.tables import (atomic_path, load_tensors, params_hash, provenance, read_meta, read_table,
                                    save_tensors, write_table)


def test_write_read_with_metadata(tmp_path):
    df = pd.DataFrame({"sample_id": [3, 1], "task": ["A", "A"], "label": [0, 1], "source_index": [3, 1]})
    meta = provenance({"a": 1}, seed=7, device="cpu", table="samples")
    path = write_table(df, tmp_path / "t" / "samples.parquet", table="samples", meta=meta)
    pd.testing.assert_frame_equal(read_table(path), df)
    got = read_meta(path)
    assert got["seed"] == 7 and got["params_hash"] == params_hash({"a": 1}) and "torch" in got["versions"]
    assert list(tmp_path.joinpath("t").iterdir()) == [path]  # no temporary left behind


def test_params_hash_is_order_independent():
    assert params_hash({"a": 1, "b": [1, 2]}) == params_hash({"b": [1, 2], "a": 1}) != params_hash({"a": 2, "b": [1, 2]})


def test_schema_is_checked_and_nothing_is_written(tmp_path):
    with pytest.raises(ValueError, match="lacks columns"):
        write_table(pd.DataFrame({"sample_id": [1]}), tmp_path / "energies.parquet", table="energies", meta={})
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("stage crashed")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    with atomic_path(tmp_path / "dir", is_dir=True) as tmp:
        (tmp / "a").write_text("x")
    assert (tmp_path / "dir" / "a").read_text() == "x"


def test_tensors_round_trip(tmp_path):
    x = torch.randn(4, 1, 3, 3)
    path = save_tensors({"images": x, "sample_id": torch.arange(4)}, tmp_path / "x.safetensors", meta={"k": 1})
    got = load_tensors(path)
    assert torch.equal(got["images"], x) and got["sample_id"].tolist() == [0, 1, 2, 3]
    with pytest.raises(FileNotFoundError, match="run the stage"):
        load_tensors(tmp_path / "missing.safetensors")
