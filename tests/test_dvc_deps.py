"""dvc.yaml's deps cannot drift: every project file a stage imports (its import closure, lazy imports included)
is covered by the stage's deps, so a change to any of them reruns the stage, and no other code file is (a change to
it would rerun the stage for nothing). tools/dvc_deps.py computes the closures and rewrites dvc.yaml's code deps."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import ROOT
from tools.dvc_deps import code_deps, import_closure, module_file, rewrite, stage_module, stages_of

DVC_TEXT = (ROOT / "dvc.yaml").read_text()
DVC = yaml.safe_load(DVC_TEXT)


@pytest.mark.parametrize("name, cmd, deps", list(stages_of(DVC)), ids=[n for n, *_ in stages_of(DVC)])
def test_deps_cover_the_import_closure(name, cmd, deps):
    module = stage_module(cmd)
    entry = module_file(module)
    assert entry is not None, f"{name}: cannot find {module}"
    dep_paths = [(ROOT / d).resolve() for d in deps if "${" not in d]
    missing = sorted(str(f.relative_to(ROOT)) for f in import_closure(entry)
                     if not any(f == d or d in f.parents for d in dep_paths))
    assert not missing, f"stage {name} imports {missing} but does not list them in its deps"
    closure = import_closure(entry)
    code = [d for d in dep_paths if d.is_relative_to(ROOT / "src") or d.is_relative_to(ROOT / "stages")]
    unused = sorted(str(d.relative_to(ROOT)) for d in code if not any(f == d or d in f.parents for f in closure))
    assert not unused, f"stage {name} lists code deps it never imports (they rerun it for nothing): {unused}"
    folders = sorted(str(d.relative_to(ROOT)) for d in code if d.is_dir())
    assert not folders, f"stage {name} lists code folders (they cover files it never imports): {folders}"


def test_dvc_yaml_is_what_the_tool_writes():
    """`python -m tools.dvc_deps --write` leaves dvc.yaml as it is: its code deps are the closures, in its order."""
    assert rewrite(DVC_TEXT) == DVC_TEXT, "run: python -m tools.dvc_deps --write"


def test_the_rewrite_keeps_data_deps_and_comments():
    text = """# a comment
stages:
  prepare:  # the first stage
    cmd: python -m stages.prepare --params params.yaml
    deps:
      - stages/prepare.py
      - data/raw.bin  # a data file
      # a comment line in the list
      - src/hopfield_replay/models
      - data/other
    outs:
      - data/out
"""
    new = rewrite(text)
    expected = "".join(f"      - {d}\n" for d in code_deps("stages.prepare"))
    assert new == text.replace("      - stages/prepare.py\n", expected).replace(
        "      - src/hopfield_replay/models\n", "")
    assert rewrite(new) == new


def test_the_closure_finds_lazy_and_relative_imports(tmp_path):
    """The checker itself: a lazy import inside a function is found (it is what hid devices.py before)."""
    closure = import_closure(ROOT / "stages" / "runner.py")
    assert ROOT / "src" / "hopfield_replay" / "io" / "config.py" in closure
    assert ROOT / "src" / "hopfield_replay" / "runtime" / "devices.py" in closure  # imported inside provenance()
    assert ROOT / "src" / "hopfield_replay" / "errors.py" in closure  # via config's relative import
    deep = import_closure(ROOT / "stages" / "mhn_closed_form.py")  # package __init__ -> .closed_form -> ..energy
    assert ROOT / "src" / "hopfield_replay" / "mhn" / "closed_form.py" in deep
    assert ROOT / "src" / "hopfield_replay" / "energy.py" in deep


def test_the_closure_follows_modules_imported_by_name():
    """load_model imports a saved model's family module by name (models.base.FAMILY_MODULES): both families are in
    the closure of base.py alone, so a stage that loads an SD model depends on the SD code."""
    models = ROOT / "src" / "hopfield_replay" / "models"
    closure = import_closure(models / "base.py")
    assert {models / "ddpm.py", models / "sd.py", models / "sd_settings.py"} <= closure


def test_params_validation_does_not_import_the_selectors():
    """The arm names live in a leaf module: the params check (every stage's) never makes replay.py a dep."""
    src = ROOT / "src" / "hopfield_replay"
    assert src / "replay.py" not in import_closure(ROOT / "stages" / "runner.py")
    assert src / "arms.py" in import_closure(ROOT / "stages" / "runner.py")
    assert import_closure(src / "arms.py") == {src / "arms.py"}  # it imports nothing of the project
    deps = {name: deps for name, _, deps in stages_of(DVC)}
    never_select = ("prepare", "encode", "train_a", "scores", "train_b", "forgetting", "retrain", "evaluate")
    assert [name for name in never_select if "src/hopfield_replay/replay.py" in deps[name]] == []
    assert all("src/hopfield_replay/replay.py" in deps[name] for name in ("select_replay", "mhn_trained"))
