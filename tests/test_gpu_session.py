"""The GPU session (benchmarks/gpu_session.sh) and its kit (tools/gpu_kit.py): every step runs, here on the CPU at
the benchmarks' tiny sizes, and writes what it measured to $OUT; the kit carries every package the session imports
that the lent machine lacks; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import diffusers
import pytest

from tests.conftest import ROOT
from tools import gpu_kit

SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"
# benchmark file -> ratio lines it prints at the smoke size
OURS = {"hopfield_replay", "stages", "flows", "tools", "tests"}
RATIOS = {"bench_reconstruction.txt": 1, "bench_sd.txt": 3, "bench_side_by_side.txt": 1, "bench_train.txt": 3,
          "bench_forecast.txt": 3}  # forecast --smoke: gradient interference, one probe, all together


def _session(out: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_SESSION_DEVICE": "cpu",
           "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.run(["bash", str(SCRIPT), *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


@pytest.mark.slow
def test_every_step_runs_and_writes_its_figures(tmp_path):
    out = tmp_path / "out"
    done = _session(out, "--smoke", "env", "tests", "recon", "sd", "side", "train", "stage", "forecast")
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    session = (out / "session.txt").read_text()
    for step in ("env", "tests", "recon", "sd", "side", "train", "stage", "forecast"):
        assert re.search(rf"^== {step}: exit 0 after \d+ s$", session, re.M), session[-3000:]
    assert "train-big" not in session  # only when asked for
    assert f"diffusers {diffusers.__version__}" in (out / "env.txt").read_text()
    tests = (out / "gpu_tests.txt").read_text()
    assert re.search(r"\b5 (skipped|passed)", tests) and "failed" not in tests and "error" not in tests, tests
    printed = set(session.splitlines())
    for name, ratios in RATIOS.items():
        lines = (out / name).read_text().splitlines()
        assert lines[0].startswith("CPU: "), lines  # the machine first
        assert sum(bool(re.search(r"ratio .* = [0-9.]+x", line)) for line in lines) == ratios, lines
        assert set(lines) <= printed  # every figure line was also printed
    assert re.search(r"^train_a: 2 steps on cpu, final loss [0-9.]+ -> ", (out / "stage.txt").read_text(), re.M)
    assert sorted(p.name for p in out.iterdir()) == sorted([*RATIOS, "env.txt", "gpu_tests.txt", "session.txt",
                                                            "stage.txt"])


def test_a_failed_step_leaves_the_others_running_and_the_session_fails(tmp_path):
    """A benchmark asked for CUDA on a machine without it fails; the next step still runs; exit 1 names the step."""
    out = tmp_path / "out"
    done = _session(out, "recon", "env", env={"GPU_SESSION_DEVICE": "cuda", "CUDA_VISIBLE_DEVICES": ""})
    session = (out / "session.txt").read_text()
    assert done.returncode == 1, session[-3000:]
    assert re.search(r"^== recon: exit [1-9]\d* after", session, re.M)
    assert re.search(r"^== env: exit 0 after", session, re.M) and (out / "env.txt").exists()
    assert session.splitlines()[-1] == "== failed: recon"


def test_an_unknown_step_is_one_line_and_writes_nothing(tmp_path):
    done = _session(tmp_path / "out", "env", "bench")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "unknown step 'bench'" in done.stderr and "train-big" in done.stderr
    assert not (tmp_path / "out").exists()


def _distribution(module: str, installed: dict) -> str | None:
    """The distribution (normalized name) that installs a top-level module; None for the stdlib and our own."""
    if module in sys.stdlib_module_names or module in OURS or module.startswith("bench_"):
        return None
    found = installed.get(module)
    return re.sub(r"[-_.]+", "-", found[0]).lower() if found else None


def test_the_kit_carries_what_the_session_imports_and_the_machine_lacks():
    """Static: every third-party import in the code the session runs (the library, the stages, the benchmarks, the
    params merge, the gpu tests and what they import), and every requirement of a kit wheel, is on the lent machine
    or in the kit. Control: without the kit, diffusers and pydantic would be missing."""
    files = [*(ROOT / "src").rglob("*.py"), *(ROOT / "stages").glob("*.py"), *(ROOT / "benchmarks").glob("*.py"),
             *(ROOT / "tests" / f"{name}.py" for name in ("conftest", "test_training_device", "test_noise",
                                                          "test_energy", "test_checkpoints", "test_diffusion"))]
    trees = [ast.walk(ast.parse(path.read_text())) for path in files]  # every import, lazy ones too
    # tools/params_yaml: the session uses deep_merge only; ruamel (for keeping comments) is imported lazily elsewhere
    trees.append(ast.parse((ROOT / "tools" / "params_yaml.py").read_text()).body)
    imported = set()
    for tree in trees:
        for node in tree:
            if isinstance(node, ast.Import):
                imported |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imported.add(node.module.split(".")[0])
    installed = metadata.packages_distributions()
    needed = {d for d in (_distribution(module, installed) for module in imported) if d}
    kit = {re.sub(r"[-_.]+", "-", name).lower() for name in (*gpu_kit.KIT, *gpu_kit.COMPILED)}
    for name in (*gpu_kit.KIT, *gpu_kit.COMPILED):
        for req in metadata.requires(name) or []:
            if "extra ==" not in req:
                needed.add(re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", req).group()).lower())
    assert {"torch", "diffusers", "pydantic", "pydantic-core", "pyyaml", "safetensors"} <= needed
    # dvclive (it needs DVC) is optional: where it is missing, measures/curves.py writes its files itself
    # (test_curves.py: the same bytes)
    assert needed - gpu_kit.DEVICE_HAS - kit - {"dvclive"} == set()
    assert {"diffusers", "pydantic"} <= needed - gpu_kit.DEVICE_HAS


def test_a_failed_kit_download_is_one_line_and_leaves_no_folder(tmp_path):
    """Offline (no index, an empty wheel folder), as on a machine without PyPI."""
    env = {**os.environ, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(tmp_path / "no-wheels")}
    done = subprocess.run([sys.executable, "-m", "tools.gpu_kit", str(tmp_path / "kit")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and done.stdout == "", done.stderr[-2000:]
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("gpu_kit: ERROR: ") and "diffusers" in done.stderr
    assert list(tmp_path.iterdir()) == []  # neither the kit nor its temporary folder


def test_the_default_steps_fit_one_ten_minute_call():
    """The device tool cuts a call at 600 s: the default steps' limits, plus the kit's install, must fit in it."""
    text = SCRIPT.read_text()
    limits = dict(re.findall(r"^\s+[a-z-]+\) step ([a-z-]+) (\d+) ", text, re.M))
    default = re.search(r"steps=\(([a-z -]+)\)", text).group(1).split()
    assert set(default) < set(limits) and not {"stage", "train-big", "forecast"} & set(default)
    assert sum(int(limits[s]) for s in default) <= 600 - 30  # 30 s left for installing the kit
