"""The error contract through the real stage command lines: a user error (params, data, paths, damaged files) is
one `error:` line naming the field or file, exit 2, no output; anything else is a bug and shows its traceback."""

from __future__ import annotations

import errno
import importlib
import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from tests.conftest import ROOT, TINY_PARAMS


def _params(tmp_path, params: dict | str):
    path = tmp_path / "params.yaml"
    path.write_text(params if isinstance(params, str) else yaml.safe_dump(params))
    return path


def _subprocess(tmp_path, name, params: dict | str, *args):
    """The real command line, as dvc.yaml runs it."""
    return subprocess.run([sys.executable, "-m", f"stages.{name}", "--params", str(_params(tmp_path, params)),
                           *map(str, args)], cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.fixture
def stage(tmp_path, capfd):
    """In process through the stage's main(argv) (fast): returns an object like subprocess.run's."""

    def call(name, params: dict | str, *args):
        main = importlib.import_module(f"stages.{name}").main
        code = 0
        try:
            main(["--params", str(_params(tmp_path, params)), *map(str, args)])
        except SystemExit as exc:
            code = exc.code
        out, err = capfd.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return call


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
    ({"task_a": []}, ["prepare.task_a", "at least 1 item"]),
    ({"dataset": "folder", "root": "no/such/folder"}, ["prepare.root", "does not exist", "IDX"]),
    ({"dataset": "folder", "root": "tests"}, ["prepare.root", "holds no known data format"]),
])
def test_prepare_bad_input(tmp_path, prepare, fragments):
    params = _tiny()
    params["prepare"] = {**params["prepare"], **prepare}
    out = tmp_path / "out"
    proc = _subprocess(tmp_path, "prepare", params, "--out-images", out / "i.safetensors", "--out-samples", out / "s.parquet")
    _assert_one_line_error(proc, *fragments)
    assert not out.exists() or not any(out.iterdir())


@pytest.mark.parametrize("text, fragments", [
    ("prepare: {task_a: [0, 1\n", ["not valid YAML"]),
    ("trian_a: {steps: 3}\n", ["trian_a: unknown section"]),
    ("train_a: {lr: .inf}\n", ["train_a.lr: Input should be a finite number"]),
    ("report: {bootstrap: many}\n", ["report.bootstrap"]),  # a bad report value fails before any training
])
def test_the_whole_params_file_is_validated_up_front(tmp_path, stage, text, fragments):
    from tools.params_yaml import deep_merge

    out = tmp_path / "out"
    try:  # the text's values in the complete tiny params (the schema has no defaults); bad YAML as it is
        params = deep_merge(_tiny(), yaml.safe_load(text))
    except yaml.YAMLError:
        params = text
    proc = stage("train_a", params, "--x0", tmp_path / "x0", "--samples", tmp_path / "s", "--out", out,
                 "--out-curves", tmp_path / "curves")
    _assert_one_line_error(proc, *fragments)
    assert not out.exists()


def _select(tmp_path, stage, select: dict, n: int = 20):
    scores = tmp_path / "scores.parquet"
    pd.DataFrame({"sample_id": range(n), "task": "A", "label": [i % 5 for i in range(n)],
                  "energy_a": [float(i % 7) for i in range(n)], "beta": 1.0}).to_parquet(scores)
    forecast = tmp_path / "forecast.parquet"
    pd.DataFrame({"sample_id": range(n), "label": [i % 5 for i in range(n)],
                  "grad_dot": [float(-i) for i in range(n)]}).to_parquet(forecast)
    params = _tiny()
    params["select_replay"] = {**params["select_replay"], **select}
    out = tmp_path / "sel"
    proc = stage("select_replay", params, "--scores", scores, "--forecast", forecast, "--forgetting", tmp_path / "f.parquet",
                  "--x0", tmp_path / "x0", "--samples", tmp_path / "s", "--out", out / "s.parquet",
                  "--out-dir", out / "arms")
    return proc, out


@pytest.mark.parametrize("select, fragments", [
    ({"arms": ["energy_top"]}, ["select_replay.arms", "unknown arm 'energy_top'", "energy_high"]),
    ({"arms": ["knn99_dist_high"]}, ["select_replay.arms", "'knn99_dist'", "is not a column of", "energy_a"]),
    ({"budgets": [-3]}, ["select_replay.budgets[0]", "-3"]),
    ({"arms": ["energy_high"], "budgets": [10, 500]}, ["select_replay.budgets", "500 exceeds the 20 task-A samples"]),
    ({"arms": ["energy_high"], "budgets": [5]}, ["f.parquet", "does not exist"]),
])
def test_select_replay_bad_input(tmp_path, stage, select, fragments):
    proc, out = _select(tmp_path, stage, select)
    _assert_one_line_error(proc, *fragments)
    assert not out.exists()


def test_damaged_input_file_is_named(tmp_path, stage):
    x0 = tmp_path / "x0.safetensors"
    x0.write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":1}")  # a truncated header
    proc = stage("train_a", _tiny(), "--x0", x0, "--samples", tmp_path / "s", "--out", tmp_path / "out",
                 "--out-curves", tmp_path / "curves")
    _assert_one_line_error(proc, "x0.safetensors", "not a readable safetensors file")


def test_a_missing_path_argument_is_a_usage_error(tmp_path):
    proc = _subprocess(tmp_path, "train_a", _tiny(), "--x0", tmp_path / "x0")
    assert proc.returncode == 2 and "the following arguments are required: --samples, --out, --out-curves" in proc.stderr
    assert "usage: python -m stages.train_a " in proc.stderr and "__main__" not in proc.stderr


def test_an_unexpected_exception_is_a_bug_with_its_traceback(tmp_path):
    """A bug is not dressed up as user error: the traceback shows and the exit status is not 2."""
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(_tiny()))
    code = ("import sys, hopfield_replay.io.data as data, stages.prepare as stage\n"
            "def broken(*args, **kwargs):\n    raise KeyError('sample_id')\n"
            "stage.load_dataset = broken\n"
            f"stage.main(['--params', {str(params)!r}, '--out-images', 'i', '--out-samples', 's'])\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode not in (0, 2)
    assert "Traceback (most recent call last)" in proc.stderr and "KeyError: 'sample_id'" in proc.stderr
    assert not (tmp_path / "i").exists()


def _dvc_stage_commands() -> dict[str, list[str]]:
    """Every stage's command line as dvc.yaml writes it (foreach / matrix templates unexpanded), with the paths of
    its declared outputs and metrics: {stage module: [tokens after the module, ...]}, plus the outputs."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    commands = {}
    for spec in stages.values():
        spec = spec.get("do", spec)
        tokens = spec["cmd"].split()
        module = tokens[tokens.index("-m") + 1].removeprefix("stages.")
        outs = [next(iter(o)) if isinstance(o, dict) else o for o in spec.get("outs", []) + spec.get("metrics", [])]
        commands[module] = (tokens[tokens.index("-m") + 2:], outs)
    return commands


# the work a stage without input paths starts with: it must not start when an output path is bad
FIRST_WORK = {"prepare": "load_dataset", "mhn_closed_form": "run_closed_form", "mhn_trained": "run_trained"}
OPTIONS = {"--seed": "1", "--arm": "energy_high", "--budget": "10"}


def _argv_with(tokens, outs, inputs_under, out_value):
    """A stage's dvc.yaml arguments with every input under ``inputs_under`` and each output set by
    ``out_value(flag, i)``; also returns the input paths."""
    argv, inputs = [], []
    for flag, value in zip(tokens[::2], tokens[1::2]):
        if flag == "--params":
            continue
        if flag in OPTIONS:
            argv += [flag, OPTIONS[flag]]
        elif any(o == value or o.startswith(value + "/") for o in outs):
            argv += [flag, out_value(flag, len(argv))]
        else:
            path = inputs_under / flag.removeprefix("--")
            inputs.append(path)
            argv += [flag, path]
    return argv, inputs


@pytest.mark.parametrize("name", sorted(_dvc_stage_commands()))
def test_every_stage_checks_its_outputs_before_reading_or_computing(tmp_path, stage, monkeypatch, name):
    """Each stage of dvc.yaml, run with its real arguments but every output under a file (not a folder) and every
    input missing, fails on the output path: it checks its outputs before it reads an input or computes anything,
    so a bad --out costs a second, not a training run."""
    tokens, outs = _dvc_stage_commands()[name]
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where a folder should be")
    argv, _ = _argv_with(tokens, outs, tmp_path / "missing", lambda flag, i: blocker / flag.removeprefix("--"))
    assert any(str(blocker) in str(a) for a in argv), f"{name}: no output argument found in dvc.yaml's command"
    if name in FIRST_WORK:
        def must_not_run(*args, **kwargs):
            raise AssertionError(f"{name} started its work before checking its outputs")

        monkeypatch.setattr(importlib.import_module(f"stages.{name}"), FIRST_WORK[name], must_not_run)
    proc = stage(name, _tiny(), *argv)
    _assert_one_line_error(proc, "cannot be written", "blocker is a file, not a folder")
    assert not (tmp_path / "missing").exists() and blocker.read_text() == "a file where a folder should be"


@pytest.mark.parametrize("name", sorted(_dvc_stage_commands()))
def test_an_output_that_is_an_input_or_another_output_is_refused(tmp_path, stage, name):
    """Every stage of dvc.yaml refuses, before anything is read, an output path equal to one of its inputs (the
    first output is pointed at the first input, or at the params file for stages without inputs) and two outputs
    given the same path."""
    tokens, outs = _dvc_stage_commands()[name]
    first = {}

    def same_as_input(flag, i):
        first.setdefault("flag", flag)
        return (tmp_path / "in" / "x0") if flag == first["flag"] else tmp_path / "out" / flag

    argv, inputs = _argv_with(tokens, outs, tmp_path / "in", same_as_input)
    target = inputs[0] if inputs else tmp_path / "params.yaml"  # the fixture writes the params file there
    argv = [target if (a == tmp_path / "in" / "x0") else a for a in argv]
    proc = stage(name, _tiny(), *argv)
    _assert_one_line_error(proc, "an output must not be an input, the params file or another output")
    assert not (tmp_path / "out").exists()
    n_outs = sum(1 for f, v in zip(tokens[::2], tokens[1::2])
                 if any(o == v or o.startswith(v + "/") for o in outs))
    if n_outs > 1:
        argv, _ = _argv_with(tokens, outs, tmp_path / "in", lambda flag, i: tmp_path / "out" / "same")
        _assert_one_line_error(stage(name, _tiny(), *argv), "is also --", "another output")
        assert not (tmp_path / "out").exists()


def test_outputs_of_the_wrong_kind_and_special_files_are_refused_and_kept(tmp_path):
    """check_output: a folder output where a file stands, a file output where a folder stands, and a FIFO are
    refused and left as they are; a previous output of the same kind may be replaced."""
    from hopfield_replay.errors import UserError
    from hopfield_replay.io.tables import atomic_path, check_output

    file, folder, fifo = tmp_path / "file", tmp_path / "folder", tmp_path / "fifo"
    file.write_text("keep")
    folder.mkdir()
    os.mkfifo(fifo)
    with pytest.raises(UserError, match="is a file, but this output is a folder"):
        check_output(file, is_dir=True)
    with pytest.raises(UserError, match="is a folder, but this output is a file"):
        check_output(folder)
    for is_dir in (False, True):
        with pytest.raises(UserError, match="not a regular file or folder"):
            check_output(fifo, is_dir=is_dir)
    assert file.read_text() == "keep" and folder.is_dir() and fifo.exists()
    with atomic_path(file) as tmp:
        tmp.write_text("new")
    with atomic_path(folder, is_dir=True) as tmp:
        (tmp / "x").write_text("new")
    assert file.read_text() == "new" and (folder / "x").read_text() == "new"


def test_paths_the_file_system_refuses_are_one_line_and_leave_nothing(tmp_path, stage, monkeypatch):
    """Too long, not text, or a full disk: one line naming the path and the fix, exit 2, no output left."""
    out = tmp_path / "out"
    args = ("--out-samples", out / "s.parquet")
    proc = stage("prepare", _tiny(), "--out-images", out / ("x" * 300 + ".safetensors"), *args)
    _assert_one_line_error(proc, "File name too long", "pass a shorter path")
    proc = stage("prepare", _tiny(), "--out-images", out / "i\udcff.safetensors", *args)  # bytes that are not text
    assert proc.returncode == 0 and os.fsencode(out / "i\udcff.safetensors") in [os.fsencode(p) for p in out.iterdir()]
    for p in out.iterdir():
        p.unlink()
    proc = stage("prepare", _tiny(), "--out-images", out / "i.safetensors", "--out-samples", out / "s\udcff.parquet")
    _assert_one_line_error(proc, "not text", "rename it to UTF-8")  # pyarrow takes text paths only
    assert not any(out.iterdir())
    import pyarrow.parquet as pq

    def full_disk(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / "s.parquet"))

    monkeypatch.setattr(pq, "write_table", full_disk)
    proc = stage("prepare", _tiny(), "--out-images", out / "i.safetensors", *args)
    _assert_one_line_error(proc, "s.parquet: No space left on device", "free disk space")
    assert not out.exists() or not any(out.iterdir())  # the two outputs are written together or not at all


def test_a_forecast_column_ranks_a_buffer(tmp_path, stage):
    """``<forecast column>_high`` (here grad_dot, decreasing with sample_id) replays the top of the forecast table."""
    n = 20
    forgetting = tmp_path / "f.parquet"
    pd.DataFrame({"sample_id": list(range(n)) * 4, "seed": [1] * 2 * n + [2] * 2 * n,
                  "t": ([100] * n + [500] * n) * 2, "error_a": 1.0, "error": 2.0}).to_parquet(forgetting)
    proc, out = _select(tmp_path, stage, {"arms": ["grad_dot_high", "grad_dot_low"], "budgets": [5]})
    assert proc.returncode == 0, proc.stderr
    table = pd.read_parquet(out / "s.parquet")
    high = table[(table.strategy == "grad_dot_high") & (table.seed == 1)]
    low = table[(table.strategy == "grad_dot_low") & (table.seed == 1)]
    assert sorted(high.sample_id) == [0, 1, 2, 3, 4] and sorted(low.sample_id) == [15, 16, 17, 18, 19]
