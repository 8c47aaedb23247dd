"""Bad input through the real stage command lines: one `error:` line naming the field, exit 2, no output."""

from __future__ import annotations

import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, TINY_PARAMS


def _stage(tmp_path, name, params: dict | str, *args):
    path = tmp_path / "params.yaml"
    path.write_text(params if isinstance(params, str) else yaml.safe_dump(params))
    return subprocess.run([sys.executable, "-m", f"stages.{name}", "--params", str(path), *args],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def _assert_one_line_error(proc, *fragments):
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def _tiny():
    return yaml.safe_load(TINY_PARAMS.read_text())


@pytest.mark.parametrize("prepare, fragments", [
    ({"task_a": [0, 1], "task_b": [1, 2]}, ["prepare.task_b", "also in task_a"]),
    ({"task_a": []}, ["prepare.task_a", "must not be empty"]),
    ({"dataset": "folder", "root": "no/such/folder"}, ["prepare.root", "does not exist", "IDX"]),
    ({"dataset": "folder", "root": "tests"}, ["prepare.root", "holds no known data format"]),
])
def test_prepare_bad_input(tmp_path, prepare, fragments):
    params = _tiny()
    params["prepare"] = {**params["prepare"], **prepare}
    out = tmp_path / "out"
    proc = _stage(tmp_path, "prepare", params, "--out-images", str(out / "i.safetensors"),
                  "--out-samples", str(out / "s.parquet"))
    _assert_one_line_error(proc, *fragments)
    assert not out.exists() or not any(out.iterdir())


def test_malformed_params_file(tmp_path):
    proc = _stage(tmp_path, "prepare", "prepare: {task_a: [0, 1\n", "--out-images", str(tmp_path / "i"),
                  "--out-samples", str(tmp_path / "s"))
    _assert_one_line_error(proc, "not valid YAML")


@pytest.mark.parametrize("select, fragments", [
    ({"strategies": ["energy_top"]}, ["select_replay.strategies", "unknown strategy 'energy_top'", "energy_high"]),
    ({"budgets": [-3]}, ["select_replay.budgets", "-3"]),
    ({"budgets": [10, 500]}, ["select_replay.budgets", "[500] exceed the 20 task-A samples"]),
])
def test_select_replay_bad_input(tmp_path, select, fragments):
    energies = tmp_path / "energies.parquet"
    pd.DataFrame({"sample_id": range(20), "energy_a": [float(i % 7) for i in range(20)]}).to_parquet(energies)
    params = _tiny()
    params["select_replay"] = {**params["select_replay"], **select}
    out = tmp_path / "sel"
    proc = _stage(tmp_path, "select_replay", params, "--energies", str(energies), "--out", str(out / "s.parquet"),
                  "--out-dir", str(out / "arms"))
    _assert_one_line_error(proc, *fragments)
    assert not out.exists()
