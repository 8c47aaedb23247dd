"""The typed config: the shipped params are valid; every bad value is one line naming the dotted field."""

from __future__ import annotations

import math
import subprocess

import pytest
import yaml

from hopfield_replay.io.config import SECTIONS, Config
from hopfield_replay.io.params_file import ParamsError, load_config, read_yaml, validate_config
from hopfield_replay.errors import UserError
from tests.conftest import ROOT, TINY_PARAMS


def _committed_params() -> str:
    """params.yaml as committed (not the workspace's copy, which `dvc exp run -S` may have changed)."""
    proc = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    return proc.stdout if proc.returncode == 0 else (ROOT / "params.yaml").read_text()


def test_shipped_params_are_valid_and_complete():
    raw = read_yaml(_committed_params())
    cfg = validate_config(raw)
    assert set(raw) == set(SECTIONS), "params.yaml lists every section, and only those"
    assert cfg.select_replay.arms and cfg.seeds
    load_config(TINY_PARAMS)


def test_params_error_is_a_user_error():
    assert issubclass(ParamsError, UserError)


# One case per section: an unknown key, a wrong type and a non-finite number (where the section has a float).
FLOATS = {"train_a": "lr", "train_b": "lr", "scores": "beta", "retrain": "replay_fraction", "report": "level",
          "mhn_closed_form": "beta", "mhn_trained": "beta", "prepare": None, "model": None, "forgetting": None,
          "select_replay": "temperature", "mhn_report": None, "execution": "max_output_gb"}
INTS = {"prepare": "resolution", "model": "layers_per_block", "train_a": "steps", "scores": "beta_t",
        "train_b": "batch_size", "forgetting": "noise_seed", "select_replay": "budgets", "retrain": None,
        "report": "bootstrap", "mhn_closed_form": "n", "mhn_trained": "d", "mhn_report": "dpi",
        "execution": "checkpoint_every_steps"}


@pytest.mark.parametrize("section", sorted(FLOATS))
def test_every_section_rejects_unknown_keys_wrong_types_and_non_finite_numbers(section):
    with pytest.raises(ParamsError, match=rf"^{section}\.stepz: unknown key; known: "):
        validate_config({section: {"stepz": 1}})
    if INTS[section]:
        with pytest.raises(ParamsError, match=rf"^{section}\.{INTS[section]}(\[0\])?: Input should be a valid "):
            value = ["x"] if INTS[section] == "budgets" else "x"
            validate_config({section: {INTS[section]: value}})
    if FLOATS[section]:
        for bad in (math.inf, math.nan):
            with pytest.raises(ParamsError, match=rf"^{section}\.{FLOATS[section]}: Input should be a finite number"):
                validate_config({section: {FLOATS[section]: bad}})


def test_a_missing_section_is_an_error_not_a_silent_default(tmp_path):
    raw = yaml.safe_load(TINY_PARAMS.read_text())
    del raw["scores"]
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ParamsError, match=r"params.yaml: scores: section missing; copy it from the shipped"):
        load_config(path)
    raw = yaml.safe_load(TINY_PARAMS.read_text())
    assert "execution" not in raw  # the one optional section: it changes no result
    assert load_config(TINY_PARAMS).execution.checkpoint_dir == ".checkpoints"


def test_misspelt_section_is_an_error():
    with pytest.raises(ParamsError, match=r"^trian_a: unknown section; known: device, seeds, prepare"):
        validate_config({"trian_a": {"steps": 3}})


@pytest.mark.parametrize("raw, message", [
    ({"select_replay": {"arms": ["energy_top"]}}, r"select_replay.arms: unknown arm 'energy_top'; use one of"),
    ({"select_replay": {"arms": ["_high_per_class"]}}, r"unknown arm '_high_per_class'; .* / _high_per_class / "),
    ({"select_replay": {"arms": ["Energy_high"]}}, r"select_replay.arms: unknown arm 'Energy_high'"),
    ({"select_replay": {"budgets": [-5]}}, r"select_replay.budgets\[0\]: Input should be greater than or equal to 1"),
    ({"select_replay": {"budgets": []}}, r"select_replay.budgets: List should have at least 1 item"),
    ({"select_replay": {"arms": ["random", "random"]}}, r"select_replay.arms: \['random', 'random'\] lists an arm twice"),
    ({"prepare": {"task_a": []}}, r"prepare.task_a: List should have at least 1 item"),
    ({"prepare": {"task_a": [1, 2], "task_b": [2, 3]}}, r"prepare.task_b: classes \[2\] are also in task_a"),
    ({"prepare": {"dataset": "imagenet"}}, r"prepare.dataset: Input should be 'mnist5k', 'digits' or 'folder'"),
    ({"prepare": {"dataset": "folder"}}, r"prepare.root: dataset 'folder' needs root"),
    ({"prepare": {"resolution": 7}}, r"prepare.resolution: 7 must be a multiple of 4"),
    ({"model": {"family": "sd"}}, r"model.sd.pretrained: family 'sd' needs pretrained"),
    ({"model": {"sd": {"prompt_template": "a {thing}"}}}, r"model.sd.prompt_template: 'a \{thing\}' has no \{class\}"),
    ({"model": {"sd": {"resolution": 12}}}, r"model.sd.resolution: Input should be a multiple of 8"),
    ({"model": {"block_out_channels": [12]}}, r"model.block_out_channels: \[12\] not divisible by norm_num_groups=8"),
    ({"scores": {"beta_rule": "fixed"}}, r"scores.beta: beta_rule 'fixed' needs beta"),
    ({"train_a": {"lr": 0}}, r"train_a.lr: Input should be greater than 0"),
    ({"train_a": {"steps": True}}, r"train_a.steps: Input should be a valid integer, got True"),
    ({"device": "gpu"}, r"device: 'gpu' is not accepted; use auto, cpu, cuda or cuda:N"),
    ({"seeds": [1, 1]}, r"seeds: \[1, 1\] lists a seed twice"),
    ({"mhn_trained": {"arms": ["top_energy"]}}, r"mhn_trained.arms\[0\]: Input should be 'energy_high'"),
    ({"mhn_trained": {"replay_budget": 500}}, r"mhn_trained.replay_budget: must be < the 112 task-A samples"),
    ({"mhn_closed_form": {"d": 5}}, r"mhn_closed_form.d: the paper geometry needs d >= n \+ 2 = 14"),
])
def test_bad_values_name_the_field(raw, message):
    with pytest.raises(ParamsError, match=message) as info:
        validate_config(raw)
    assert "\n" not in str(info.value)


def test_arm_names_follow_the_replay_grammar():
    arms = ["energy_high_per_class", "oracle_per_class", "pixel_mass_high_per_class", "knn10_dist_low_per_class",
            "class_balanced", "recon_error_a_t250_high"]
    assert validate_config({"select_replay": {"arms": arms}}).select_replay.arms == arms


def test_defaults_and_int_for_float():
    cfg = validate_config({"train_a": {"lr": 1}})
    assert cfg.train_a.lr == 1.0 and isinstance(cfg.train_a.lr, float)
    assert isinstance(validate_config({}), Config)


def test_malformed_files(tmp_path):
    (tmp_path / "params.yaml").write_text("prepare:\n  task_a: [0, 1\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML \(line \d+\)"):
        load_config(tmp_path / "params.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ParamsError, match="params file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"train_a": {"lr": ".inf"}}).replace("'.inf'", ".inf"))
    with pytest.raises(ParamsError, match=r"bad.yaml: train_a.lr: Input should be a finite number"):
        load_config(tmp_path / "bad.yaml")


def test_dvc_style_floats_are_read():
    assert read_yaml("lr: 1e-05\n") == {"lr": 1e-05}
