"""The profile tool (`python -m tools.profile PROFILE [--set K=V] [--exp]`): merges a profile into any valid params
file, also as DVC rewrites it after `dvc exp run -S` (block lists, empty nulls, unquoted strings, 1e-05), keeping
its comments; bad input is one line, exit 2, nothing written. Never touches the workspace's params.yaml: every
test works on its own params text below, copied into tmp_path."""

from __future__ import annotations

import copy
import re
import shlex
import subprocess
import sys
import types

import pytest
import yaml

from tests.conftest import ROOT, shipped_params
from tools import profile
from tools.params_yaml import deep_merge, render_merged

# A params file in the project's style: comments, flow lists, explicit nulls, a quoted string, a section heading.
PARAMS = """\
# test params, in the style of params.yaml
device: auto            # auto | cpu | cuda | cuda:N

prepare:
  dataset: mnist5k      # mnist5k | digits | folder
  root: null            # for dataset: folder
  task_a: [0, 1, 2, 3, 4]
  task_b: [5, 6, 7, 8, 9]
  # (a comment line after a list)
  resolution: 16        # CPU cut
  max_per_class: null   # keep at most this many per class

model:
  family: ddpm          # ddpm | sd
  block_out_channels: [32, 64, 64]   # ddpm only
  sd:                   # read when family is sd
    pretrained: null    # a local diffusers folder or a hub id
    prompt_template: "a photo of a {class}"
    class_names: null   # index = label

train_a:
  steps: 800
  lr: 0.0002

select_replay:
  arms: [energy_high, random]
  budgets: [50, 250]    # 2% and 10% of the task-A samples

retrain:
  replay_fraction: 0.25 # share of every task-B batch drawn from the buffer

# --- the Hopfield-network experiments ---
mhn_report:
  bootstrap: 500
"""

# The same file as DVC writes it back after `dvc exp run -S train_a.lr=1e-5` (block lists, empty nulls, 1e-05,
# blank and comment lines moved between a key and its list items).
DVC_STYLE = """\
# test params, in the style of params.yaml
device: auto            # auto | cpu | cuda | cuda:N

prepare:
  dataset: mnist5k      # mnist5k | digits | folder
  root:                 # for dataset: folder
  task_a:
  - 0
  - 1
  - 2
  - 3
  - 4
  task_b:
  - 5
  - 6
  - 7
  - 8
  - 9
  # (a comment line after a list)
  resolution: 16        # CPU cut
  max_per_class:        # keep at most this many per class

model:
  family: ddpm          # ddpm | sd
  block_out_channels:                # ddpm only
  - 32
  - 64
  - 64
  sd:                   # read when family is sd
    pretrained:         # a local diffusers folder or a hub id
    prompt_template: a photo of a {class}
    class_names:        # index = label

train_a:
  steps: 800
  lr: 1e-05

select_replay:
  arms:
  - energy_high
  - random
  budgets:              # 2% and 10% of the task-A samples

  - 50
  - 250
retrain:
  replay_fraction: 0.25 # share of every task-B batch drawn from the buffer

# --- the Hopfield-network experiments ---
mhn_report:
  bootstrap: 500
"""

PROFILE = """\
# a test profile
profile:
  description: SD on a local folder
  expected_run_time: a minute
device: cpu
prepare: {dataset: folder, root: /data/cifar, resolution: 32}
model:
  family: sd
  sd: {pretrained: /models/sd15, class_names: [plane, car]}
select_replay: {budgets: [25]}
retrain: {replay_fraction: 0.5}
mhn_report: {dpi: 90}   # not in the params file: added
"""

ARGS = ["--set", "train_a.steps=1200", "--set", "model.sd.prompt_template=an image of a {class}"]


def expected_after_profile(lr: float) -> dict:
    """The profile and ARGS merged by hand into PARAMS (train_a.lr as the params file has it)."""
    want = yaml.safe_load(PARAMS)
    want["device"] = "cpu"
    want["prepare"].update(dataset="folder", root="/data/cifar", resolution=32)
    want["model"]["family"] = "sd"
    want["model"]["sd"].update(pretrained="/models/sd15", class_names=["plane", "car"],
                               prompt_template="an image of a {class}")
    want["train_a"].update(steps=1200, lr=lr)
    want["select_replay"]["budgets"] = [25]
    want["retrain"]["replay_fraction"] = 0.5
    want["mhn_report"]["dpi"] = 90
    return want


@pytest.fixture(autouse=True)
def shipped_values_for_the_rest(monkeypatch):
    """The params texts above hold a few keys each (what the comment-keeping merge is tested on); the tool validates
    a whole params file (the schema has no defaults), so here the keys they leave out take the shipped values."""
    real = profile.validate_config
    monkeypatch.setattr(profile, "validate_config", lambda raw: real(deep_merge(shipped_params(), raw)))


def comments(text: str) -> list[str]:
    return [m.group(0).strip() for m in re.finditer(r"#.*", text)]


def setup_files(tmp_path, params_text: str):
    params = tmp_path / "params.yaml"
    params.write_text(params_text)
    prof = tmp_path / "test-profile.yaml"
    prof.write_text(PROFILE)
    return params, prof


@pytest.mark.parametrize("style", ["project", "dvc"])
def test_profile_merges_values_and_keeps_comments(tmp_path, capsys, style):
    text = PARAMS if style == "project" else DVC_STYLE
    params, prof = setup_files(tmp_path, text)
    assert profile.cli(["--params", str(params), str(prof), *ARGS]) == 0
    assert "merged into" in capsys.readouterr().out
    out = params.read_text()
    assert yaml.safe_load(out) == expected_after_profile(lr=0.0002 if style == "project" else 1e-5)  # plain PyYAML
    assert [c for c in comments(text) if c not in out] == []  # every comment kept, the heading included
    assert out.index("# --- the Hopfield-network experiments ---") < out.index("mhn_report:")
    # DVC's restyling undone: flow lists, explicit nulls, floats that YAML 1.1 reads as floats
    assert "  task_a: [0, 1, 2, 3, 4]\n" in out
    assert "  budgets: [25]         # 2% and 10% of the task-A samples\n\nretrain:\n" in out  # the layout, too
    assert "  max_per_class: null   # keep at most" in out
    assert "1e-05" not in out
    assert "  steps: 1200\n" in out and "  class_names: [plane, car] # index = label" in out


def test_profile_after_a_real_dvc_exp_run_rewrite(tmp_path):
    """The README's `dvc exp run -S ...` rewrites params.yaml with DVC's own code; the tool still round-trips it."""
    from dvc.utils.hydra import apply_overrides  # what `dvc exp run -S` calls on params.yaml

    params, prof = setup_files(tmp_path, PARAMS)
    apply_overrides(str(params), ["train_a.lr=1e-5"])
    assert params.read_text() == DVC_STYLE  # the sample above is what this DVC writes
    assert profile.cli(["--params", str(params), str(prof), *ARGS]) == 0
    out = params.read_text()
    assert yaml.safe_load(out) == expected_after_profile(lr=1e-5)
    assert [c for c in comments(PARAMS) if c not in out] == []


def test_exp_prints_the_same_merge_as_dvc_overrides_and_writes_nothing(tmp_path, capsys):
    """--exp prints `dvc exp run -S ...`; DVC applying exactly those overrides gives the values the merge gives."""
    from dvc.utils.hydra import apply_overrides

    params, prof = setup_files(tmp_path, PARAMS)
    assert profile.cli(["--params", str(params), str(prof), "--exp", *ARGS]) == 0
    command = capsys.readouterr().out.strip().splitlines()[-1]
    assert params.read_text() == PARAMS
    words = shlex.split(command)
    assert words[:3] == ["dvc", "exp", "run"] and set(words[3::2]) == {"-S"}
    assert "model.sd.prompt_template=an image of a {class}" not in words  # quoted for Hydra
    apply_overrides(str(params), words[4::2])
    assert yaml.safe_load(params.read_text()) == expected_after_profile(lr=0.0002)


@pytest.mark.parametrize("args, message", [
    (["--set", "model.sd.prompt_template=nope"], r"^error: model\.sd\.prompt_template: 'nope' has no \{class\}"),
    (["--set", "retrain.replay_fraction=2"], r"^error: retrain\.replay_fraction: "),
    (["--set", "train_a.steps"], r"^error: --set: 'train_a.steps' is not KEY=VALUE"),
    (["--set", "train_a.steps=[1"], r"^error: --set: the value of train_a.steps is not valid YAML"),
])
def test_bad_values_are_one_line_exit_2_and_nothing_written(tmp_path, capsys, args, message):
    params, prof = setup_files(tmp_path, DVC_STYLE)
    assert profile.cli(["--params", str(params), str(prof), *args]) == 2
    err = capsys.readouterr().err
    assert re.match(message, err) and err.count("\n") == 1, err
    assert params.read_text() == DVC_STYLE


def test_a_params_file_missing_a_key_is_refused(tmp_path, capsys, monkeypatch):
    """The tool itself validates the whole merged file: a key neither the params file nor the profile sets is one
    line naming it, exit 2, nothing written (no default fills it in)."""
    monkeypatch.undo()  # the tool's own validation, without the shipped values of the fixture above
    params, prof = setup_files(tmp_path, PARAMS)
    assert profile.cli(["--params", str(params), str(prof)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: seeds: missing; every parameter is set in the params file") and err.count("\n") == 1
    assert params.read_text() == PARAMS


def test_the_command_line_exits_2_with_one_line(tmp_path):
    params, _ = setup_files(tmp_path, PARAMS)
    proc = subprocess.run([sys.executable, "-m", "tools.profile", "--params", str(params),
                           str(tmp_path / "no-such.yaml")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and proc.stdout == ""
    assert re.fullmatch(r"error: profile: \S*no-such.yaml does not exist; known profiles: .*\n", proc.stderr)
    assert params.read_text() == PARAMS


def test_bad_profile_files_are_user_errors(tmp_path, capsys):
    params, prof = setup_files(tmp_path, PARAMS)
    for text, message in [("prepare: [1\n", "is not valid YAML"), ("- 1\n", "must be a mapping"),
                          ("profile: {colour: red}\n", "profile.colour: unknown key"),
                          ("profile: {build_tiny_sd: {path: x, resolution: 12}}\n", "must be a multiple of 8")]:
        prof.write_text(text)
        assert profile.cli(["--params", str(params), str(prof)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1, err
    assert params.read_text() == PARAMS


def test_build_tiny_sd_builds_once_and_points_the_model_at_it(tmp_path, monkeypatch, capsys):
    built = []

    def fake_build(path, *, resolution, seed):  # the real builder is tested with the SD pipeline
        built.append((resolution, seed))
        (path / "model_index.json").write_text("{}")

    monkeypatch.setitem(sys.modules, "hopfield_replay.models.tiny_sd", types.SimpleNamespace(build_tiny_sd_pipeline=fake_build))
    params, prof = setup_files(tmp_path, PARAMS)
    tiny = tmp_path / "cache" / "sd-tiny"
    prof.write_text(f"profile: {{build_tiny_sd: {{path: {tiny}, resolution: 16, seed: 3}}}}\nmodel: {{family: sd}}\n")
    assert profile.cli(["--params", str(params), str(prof), "--set", "model.sd.prompt_template=x"]) == 2
    assert built == [] and not tiny.exists() and params.read_text() == PARAMS  # invalid: nothing built or written
    for _ in range(2):
        assert profile.cli(["--params", str(params), str(prof)]) == 0
    assert built == [(16, 3)] and (tiny / "model_index.json").is_file()
    raw = yaml.safe_load(params.read_text())
    assert raw["model"]["family"] == "sd" and raw["model"]["sd"]["pretrained"] == str(tiny)
    assert "already at" in capsys.readouterr().out


def test_a_file_with_a_key_given_twice_is_refused():
    """Duplicate keys: the stages' reader refuses them (plain YAML would keep the last silently), and so does the
    merge, instead of writing a file the stages would refuse."""
    text = "train_a: {steps: 1}  # first\ntrain_a: {steps: 2, lr: 0.5}\n"
    with pytest.raises(yaml.YAMLError, match="the key 'train_a' is given twice"):
        render_merged(text, {"train_a": {"lr": 0.1}})


def test_every_edit_of_every_value_keeps_the_file_valid_and_commented():
    """Each leaf replaced by a value of another kind (list, string, null, small float, mapping), in both styles."""
    for text in (PARAMS, DVC_STYLE):
        base = yaml.safe_load(text.replace("1e-05", "1.0e-05"))
        for section, values in base.items():
            keys = list(values) if isinstance(values, dict) else [None]
            for key in keys:
                for new in ([7, 8], "x y", None, 3.5e-07, {"a": 1}):
                    over = {section: {key: new}} if key is not None else {section: new}
                    want = copy.deepcopy(base)
                    if key is None:
                        want[section] = new
                    elif isinstance(new, dict) and isinstance(values[key], dict):  # mappings merge
                        want[section][key] = {**values[key], **new}
                    else:
                        want[section][key] = new
                    out, kept = render_merged(text, over)
                    assert kept and yaml.safe_load(out) == want, (section, key, new, out)
                    if isinstance(values, dict) and isinstance(values[key], dict):  # its inner comments go with it
                        kept_comments = comments(next(line for line in text.splitlines()
                                                      if line.strip().startswith(f"{key}:")))
                    else:
                        kept_comments = comments(text)
                    assert kept_comments and [c for c in kept_comments if c not in out] == [], (section, key, new)


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "profiles").glob("*.yaml")))
def test_every_shipped_profile_gives_valid_params(name):
    """Each profile of profiles/, merged into the shipped params.yaml, passes the whole-file validation."""
    from hopfield_replay.io.params_file import read_yaml, validate_config

    overrides = read_yaml((ROOT / "profiles" / name).read_text())
    overrides.pop("profile", None)
    shipped = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    base = shipped.stdout if shipped.returncode == 0 else (ROOT / "params.yaml").read_text()
    text, _ = render_merged(base, overrides)
    cfg = validate_config(read_yaml(text))
    for section, values in overrides.items():
        if isinstance(values, dict):
            for key, value in values.items():
                if not isinstance(value, dict):
                    assert getattr(getattr(cfg, section), key) == value, (section, key)
