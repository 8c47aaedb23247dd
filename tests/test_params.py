"""params.yaml parsing: the shipped defaults are valid; each bad value is a one-line error naming the field."""

from __future__ import annotations

import pytest

from hopfield_replay.params import (ParamsError, PrepareParams, SelectParams, TrainParams, load_params,
                                    parse_section, validate_all)
from tests.conftest import ROOT, TINY_PARAMS


def test_shipped_params_are_valid():
    for path in (ROOT / "params.yaml", TINY_PARAMS):
        validate_all(load_params(path))


@pytest.mark.parametrize("section, cls, value, message", [
    ("select_replay", SelectParams, {"strategies": ["energy_top"]}, "select_replay.strategies: unknown strategy 'energy_top'; use one of"),
    ("select_replay", SelectParams, {"budgets": [-5]}, "select_replay.budgets: -5 is not a valid budget"),
    ("select_replay", SelectParams, {"budgets": []}, "select_replay.budgets: must not be empty"),
    ("prepare", PrepareParams, {"task_a": []}, "prepare.task_a: must not be empty"),
    ("prepare", PrepareParams, {"task_a": [1, 2], "task_b": [2, 3]}, r"prepare.task_b: classes \[2\] are also in task_a"),
    ("prepare", PrepareParams, {"dataset": "imagenet"}, "prepare.dataset: 'imagenet' is not accepted; use one of mnist5k"),
    ("prepare", PrepareParams, {"resolution": "big"}, "prepare.resolution: must be an integer"),
    ("train_a", TrainParams, {"steps": 0}, "train_a.steps: must be >= 1"),
    ("train_a", TrainParams, {"stepz": 10}, "train_a.stepz: unknown key; known keys: steps"),
])
def test_bad_values(section, cls, value, message):
    with pytest.raises(ParamsError, match=message) as info:
        parse_section({section: value}, cls, section)
    assert "\n" not in str(info.value)


def test_malformed_yaml(tmp_path):
    (tmp_path / "params.yaml").write_text("prepare:\n  task_a: [0, 1\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML \(line \d+\)"):
        load_params(tmp_path / "params.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="must be a mapping"):
        load_params(tmp_path / "list.yaml")
    with pytest.raises(ParamsError, match="params file not found"):
        load_params(tmp_path / "missing.yaml")
