"""Shared fixtures: one tiny CPU config (tests/tiny_params.yaml) and a tiny real DVC project built from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
TINY_PARAMS = ROOT / "tests" / "tiny_params.yaml"
_SCRATCH = Path(tempfile.mkdtemp(prefix="hopfield-replay-tests-"))

# Offline and project-local tools, before anything imports Prefect or DVC.
os.environ.update({
    "DO_NOT_TRACK": "1",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DVC_NO_ANALYTICS": "1",
    "HF_HUB_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "PREFECT_HOME": str(_SCRATCH / "prefect"),
    "DVC_SITE_CACHE_DIR": str(_SCRATCH / "dvc_site_cache"),
    "MPLCONFIGDIR": str(_SCRATCH / "mpl"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "PREFECT_LOGGING_TO_API_BATCH_INTERVAL": "0.3",
})
# Byte code: with PYTHONDONTWRITEBYTECODE set and a venv installed without .pyc files (uv's default), every stage,
# DVC, Prefect and Dask process would compile torch, diffusers and transformers from source again: ~10 s of CPU per
# process start, hundreds of starts. Cache it in the session's scratch folder instead; the source trees stay free of
# __pycache__ (a dvc.yaml dep such as src/hopfield_replay/models is a whole folder).
if sys.dont_write_bytecode or os.environ.get("PYTHONDONTWRITEBYTECODE"):
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    os.environ.setdefault("PYTHONPYCACHEPREFIX", str(_SCRATCH / "pycache"))
    sys.pycache_prefix, sys.dont_write_bytecode = os.environ["PYTHONPYCACHEPREFIX"], False
# dvc.yaml's `python` and the `dvc` command must be this environment's.
os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")

torch.set_num_threads(min(2, torch.get_num_threads()))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on a busy 2-core machine two OpenMP threads spin against
    other processes (seen: 20x slower). Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_params() -> dict:
    return yaml.safe_load(TINY_PARAMS.read_text())


def shipped_params(**changes) -> dict:
    """params.yaml as committed (not the workspace's copy, which `dvc exp run -S` or a profile may have changed),
    with ``changes`` (section -> values) merged in as a profile is: mappings key by key. The params schema has no
    defaults, so a test that changes a few values starts from these."""
    from tools.params_yaml import deep_merge

    proc = subprocess.run(["git", "show", "HEAD:params.yaml"], cwd=ROOT, capture_output=True, text=True)
    return deep_merge(yaml.safe_load(proc.stdout if proc.returncode == 0 else (ROOT / "params.yaml").read_text()),
                      changes)


def shipped_section(name: str, **values) -> dict:
    """One section of the shipped params, ``values`` changed in it."""
    return shipped_params(**{name: values})[name]


def write_params(path: Path, params: dict) -> Path:
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: float = 1800) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_project(dest: Path, params: dict, *, extra_params: dict | None = None) -> Path:
    """A real git + DVC project: the repo's dvc.yaml, stages/, flows/ and library sources, with ``params``."""
    dest.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore"):
        shutil.copy(ROOT / name, dest / name)
    for name in ("stages", "flows", "src"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    merged = {**params, **(extra_params or {})}  # never the workspace's params.yaml: tests use their own
    write_params(dest / "params.yaml", merged)
    run(["git", "init", "-q"], dest)
    run(["git", "config", "user.email", "tests@example.com"], dest)
    run(["git", "config", "user.name", "tests"], dest)
    run(["dvc", "init", "-q"], dest)
    run(["git", "add", "-A"], dest)
    run(["git", "commit", "-q", "-m", "tiny project"], dest)
    return dest


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory, tiny_params) -> Path:
    """The tiny project after one real `dvc repro` of the whole pipeline (shared by the integration tests)."""
    project = make_project(tmp_path_factory.mktemp("tiny") / "project", tiny_params)
    run(["dvc", "repro"], project)
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", "reproduced"], project)
    return project
