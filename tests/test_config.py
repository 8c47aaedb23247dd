"""The typed config: the shipped params are valid; every bad value is one line naming the dotted field."""

from __future__ import annotations

import math
import re
import subprocess

import pytest
import yaml
from pydantic import BaseModel

from hopfield_replay.io.config import SECTIONS, Config
from hopfield_replay.io.params_file import ParamsError, load_config, read_yaml, validate_config
from hopfield_replay.errors import UserError
from tests.conftest import ROOT, TINY_PARAMS, shipped_params


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
        validate_config(shipped_params(**{section: {"stepz": 1}}))
    if INTS[section]:
        with pytest.raises(ParamsError, match=rf"^{section}\.{INTS[section]}(\[0\])?: Input should be a valid "):
            value = ["x"] if INTS[section] == "budgets" else "x"
            validate_config(shipped_params(**{section: {INTS[section]: value}}))
    if FLOATS[section]:
        for bad in (math.inf, math.nan):
            with pytest.raises(ParamsError, match=rf"^{section}\.{FLOATS[section]}: Input should be a finite number"):
                validate_config(shipped_params(**{section: {FLOATS[section]: bad}}))


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
        validate_config(shipped_params(**raw))
    assert "\n" not in str(info.value)


def test_arm_names_follow_the_replay_grammar():
    arms = ["energy_high_per_class", "oracle_per_class", "pixel_mass_high_per_class", "knn10_dist_low_per_class",
            "class_balanced", "recon_error_a_t250_high"]
    assert validate_config(shipped_params(select_replay={"arms": arms})).select_replay.arms == arms


def test_int_for_float_and_no_defaults():
    cfg = validate_config(shipped_params(train_a={"lr": 1}))
    assert cfg.train_a.lr == 1.0 and isinstance(cfg.train_a.lr, float)
    assert isinstance(cfg, Config)
    with pytest.raises(ParamsError, match=r"^device: missing; every parameter is set in the params file"):
        validate_config({})


def test_malformed_files(tmp_path):
    (tmp_path / "params.yaml").write_text("prepare:\n  task_a: [0, 1\n")
    with pytest.raises(ParamsError, match=r"params.yaml: not valid YAML \(line \d+\)"):
        load_config(tmp_path / "params.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ParamsError, match="must be a mapping"):
        load_config(tmp_path / "list.yaml")
    with pytest.raises(ParamsError, match="params file not found"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(shipped_params(train_a={"lr": ".inf"})).replace("'.inf'", ".inf"))
    with pytest.raises(ParamsError, match=r"bad.yaml: train_a.lr: Input should be a finite number"):
        load_config(tmp_path / "bad.yaml")


def test_dvc_style_floats_are_read():
    assert read_yaml("lr: 1e-05\n") == {"lr": 1e-05}


# --- one source for every value: params.yaml sets every parameter, the schema has no defaults -------------------


def defaulted_fields(model: type[BaseModel], prefix: str = "") -> set[str]:
    """The dotted fields of the schema that have a default (a value a params file may leave to the code)."""
    out = set()
    for name, field in model.model_fields.items():
        if not field.is_required():
            out.add(prefix + name)
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            out |= defaulted_fields(field.annotation, f"{prefix}{name}.")
    return out


def unset_fields(value: BaseModel, prefix: str = "") -> list[str]:
    """The dotted fields a validated config took from a default: not in the file."""
    out = []
    for name in type(value).model_fields:
        if name not in value.model_fields_set:
            out.append(prefix + name)
        elif isinstance(getattr(value, name), BaseModel):
            out += unset_fields(getattr(value, name), f"{prefix}{name}.")
    return out


def test_no_parameter_has_a_default_but_how_runs_execute():
    """A default in the schema would be a second source of values (a partial params file would silently run with
    it): only the execution section, which changes no result, has them (and params.yaml's values)."""
    execution = {"execution", "execution.checkpoint_dir", "execution.checkpoint_every_minutes",
                 "execution.checkpoint_every_steps", "execution.max_output_gb"}
    assert defaulted_fields(Config) == execution
    shipped = shipped_params()["execution"]
    assert Config.model_fields["execution"].default.model_dump() == shipped


def profile_params(name: str) -> dict:
    """A shipped profile as `python -m tools.profile` makes it: merged into the committed params.yaml."""
    from tools.params_yaml import deep_merge
    from tools.profile import read_profile, set_dotted, tiny_spec

    overrides, meta = read_profile(ROOT / name)
    if meta.get("build_tiny_sd") is not None:
        set_dotted(overrides, "model.sd.pretrained", str(tiny_spec(meta["build_tiny_sd"])[0]))
    return deep_merge(shipped_params(), overrides)


PROFILES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("name", ["params.yaml", "tests/tiny_params.yaml", *PROFILES])
def test_shipped_params_files_set_every_parameter(name):
    """params.yaml, the tests' complete tiny file and every profile (an overlay of params.yaml) leave nothing to a
    default; the tiny file leaves out only the execution section."""
    if name == "params.yaml":
        cfg, expected = validate_config(shipped_params()), []
    elif name == "tests/tiny_params.yaml":
        cfg, expected = load_config(TINY_PARAMS), ["execution"]
    else:
        cfg, expected = validate_config(profile_params(name)), []
    assert unset_fields(cfg) == expected


@pytest.mark.parametrize("section, key", [("train_b", "steps"), ("mhn_closed_form", "bootstrap"),
                                          ("model", "sd.lora_targets"), ("prepare", "max_per_class")])
def test_a_missing_parameter_is_one_line_naming_it(tmp_path, capsys, section, key):
    """Every parameter must be in the file (the defaults used to disagree with params.yaml: train_b.steps 300 in
    the code, 200 in the file): one line naming the dotted field, exit status 2 from a stage."""
    from stages.runner import stage

    raw = yaml.safe_load(TINY_PARAMS.read_text())
    parent = raw[section]
    *path, last = key.split(".")
    for part in path:
        parent = parent[part]
    del parent[last]
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(raw))
    message = (rf"^{re.escape(str(params))}: {section}\.{key}: missing; every parameter is set in the params "
               r"file \(none has a default\): copy it from the shipped params.yaml \(git show HEAD:params.yaml\)$")
    with pytest.raises(ParamsError, match=message):
        load_config(params)

    @stage()
    def never_runs(cfg, args):
        raise AssertionError("a params file with a missing key reached the stage")

    with pytest.raises(SystemExit) as info:
        never_runs(["--params", str(params)])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {params}: {section}.{key}: missing; ")


def test_an_unknown_key_is_named_before_a_missing_one():
    """A misspelt key is reported as unknown (what the user wrote), not as the key it was meant to be."""
    raw = yaml.safe_load(TINY_PARAMS.read_text())
    raw["train_b"]["stepz"] = raw["train_b"].pop("steps")
    with pytest.raises(ParamsError, match=r"^train_b\.stepz: unknown key; known: steps, batch_size, "):
        validate_config(raw)


def test_the_training_loop_takes_every_setting_from_the_params():
    """The stages build TrainConfig from the params (loop_settings, plus the seed and the replay share), so none of
    TrainConfig's own defaults (the library's, for notebooks) reaches a pipeline run."""
    from dataclasses import fields

    from hopfield_replay.models import TrainConfig

    cfg = validate_config(shipped_params())
    names = {f.name for f in fields(TrainConfig)}
    assert names == set(cfg.train_a.loop_settings()) | {"replay_fraction"}
    assert names == set(cfg.train_b.loop_settings()) | {"seed", "replay_fraction"}


@pytest.mark.parametrize("section", ["train_a", "train_b"])
def test_loop_and_speed_settings_split_a_training_section(section):
    """Every key of a training section goes to the loop (TrainConfig), to how it computes (train_and_save's speed
    keywords) or is `processes` (the launcher's): none is dropped, none goes to both."""
    tp = getattr(validate_config(shipped_params()), section)
    loop, speed = set(tp.loop_settings()), set(tp.speed_settings())
    assert not loop & speed
    assert loop | speed | {"processes"} == set(type(tp).model_fields)
    assert speed == {"compile_unet", "channels_last", "cpu_bf16", "threads"}
