"""Atomic Parquet/JSON/tensor writes with provenance in the schema metadata."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from hopfield_replay.errors import UserError
from hopfield_replay.io.tables import (atomic_path, load_tensors, params_hash, provenance, read_meta, read_table,
                                    save_tensors, tensor_meta, write_table)


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
        write_table(pd.DataFrame({"sample_id": [1]}), tmp_path / "scores.parquet", table="scores", meta={})
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
    with pytest.raises(UserError, match="run the stage"):
        load_tensors(tmp_path / "missing.safetensors")


def test_tensor_files_are_byte_stable_and_damage_is_one_user_error(tmp_path):
    """safetensors writes metadata entries in hash-map order: the project writes ONE sorted-JSON entry, so the
    same tensors and metadata give the same bytes in every process."""
    import subprocess
    import sys

    code = ("import torch, sys; from hopfield_replay.io.tables import save_tensors; "
            "save_tensors({'x': torch.arange(6.0)}, sys.argv[1], meta={'b': 1, 'a': [1, 2], 'c': 'z', 'd': None})")
    paths = [tmp_path / f"{i}.safetensors" for i in range(3)]
    for path in paths:
        subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    assert len({p.read_bytes() for p in paths}) == 1
    assert tensor_meta(paths[0]) == {"a": [1, 2], "b": 1, "c": "z", "d": None}
    damaged = tmp_path / "damaged.safetensors"
    damaged.write_bytes(paths[0].read_bytes()[:40])
    with pytest.raises(UserError, match="damaged.safetensors: not a readable safetensors file"):
        load_tensors(damaged)
    with pytest.raises(UserError, match="is a folder"):
        load_tensors(tmp_path)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not really parquet")
    with pytest.raises(UserError, match="bad.parquet: not a readable Parquet table"):
        read_table(bad)
    good = write_table(pd.DataFrame({"sample_id": [1]}), tmp_path / "t.parquet", table="x", meta={})
    with pytest.raises(UserError, match=r"t.parquet: lacks columns \['label'\]"):
        read_table(good, columns=["sample_id", "label"])
