"""The flow stops cleanly: Ctrl-C (SIGINT to the terminal's whole foreground process group) or SIGTERM to
`python -m flows.pipeline` stops the running stage, marks the flow run Crashed, and leaves no Prefect server, DVC or
stage process behind."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, TINY_PARAMS, make_project, run

pytestmark = pytest.mark.slow


def _marked(marker: str) -> list[int]:
    """Live processes whose environment holds ``marker`` (every descendant of the flow inherits it)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if marker.encode() in (proc / "environ").read_bytes() and b"State:\tZ" not in (proc / "status").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _running(marker: str, module: bytes) -> bool:
    """Whether a process of the flow runs ``python -m <module>``."""
    for pid in _marked(marker):
        try:
            if module in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0"):
                return True
        except OSError:
            continue
    return False


def _wait_for(predicate, timeout: float) -> None:
    """Poll ``predicate`` every 0.2 s until it holds or ``timeout`` seconds pass (the caller asserts it)."""
    deadline = time.monotonic() + timeout
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.2)


def _start_flow(tmp_path, endless: str, *args: str):
    """The real flow on a tiny project whose ``endless`` training section runs until stopped, started as a
    terminal's job, with a marker in the environment of every process it starts."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params[endless]["steps"] = 100_000
    project = make_project(tmp_path / "project", params)
    marker = f"HOPFIELD_REPLAY_SIGNAL_TEST={uuid.uuid4().hex}"
    home = tmp_path / "prefect"
    env = {**os.environ, "PREFECT_HOME": str(home), marker.split("=")[0]: marker.split("=")[1],
           "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    env.pop("PREFECT_API_URL", None)
    flow = subprocess.Popen([sys.executable, "-m", "flows.pipeline", "--repo-root", str(project), *args], cwd=ROOT,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    return flow, marker, home, project


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_the_stage_the_flow_and_the_server(tmp_path, sig):
    flow, marker, home, project = _start_flow(tmp_path, "train_a", "--stages", "prepare", "encode", "train_a")
    try:
        _stop_and_check(flow, sig, marker, home, project)
    finally:
        for pid in _marked(marker):  # whatever a failing run left behind
            os.kill(pid, signal.SIGKILL)


def _stop_and_check(flow, sig, marker, home, project):
    seen = []
    deadline = time.monotonic() + 600
    for line in flow.stdout:
        seen.append(line)
        if "Running stage 'train_a'" in line or time.monotonic() > deadline:
            break
    assert any("Running stage 'train_a'" in line for line in seen), "".join(seen[-30:])
    _wait_for(lambda: _running(marker, b"stages.train_a"), 60)  # train_a's own process is up
    assert len(_marked(marker)) >= 4  # the flow, the Prefect server, dvc, the stage
    if sig == signal.SIGINT:
        os.killpg(flow.pid, sig)  # Ctrl-C: the terminal signals the job's whole process group
    else:
        flow.send_signal(sig)  # kill PID
    rest, _ = flow.communicate(timeout=120)
    assert flow.returncode == 128 + sig, rest[-3000:]
    assert f"stopped by {sig.name}" in rest
    _wait_for(lambda: _marked(marker) == [], 10)  # a killed process may take a moment to be reaped
    assert _marked(marker) == [], "processes outlived the flow"

    with sqlite3.connect(home / "prefect.db") as db:
        states = db.execute("select state_type from flow_run").fetchall()
    assert states == [("CRASHED",)]
    # The stopped stage is not recorded, the finished ones are, and DVC's lock is free for the next run.
    assert "train_a" not in (project / "dvc.lock").read_text() and "encode" in (project / "dvc.lock").read_text()
    assert "Stage 'encode' didn't change" in run(["dvc", "repro", "--single-item", "encode"], project).stdout


def test_sigterm_stops_every_item_running_side_by_side(tmp_path):
    """`--per-device 2`: both train_b items train at once in their own process groups; SIGTERM stops both, marks
    the run Crashed, leaves no process, and DVC records neither item (nothing was committed)."""
    flow, marker, home, project = _start_flow(tmp_path, "train_b", "--stages", "prepare", "encode", "train_a",
                                              "train_b", "--per-device", "2")
    try:
        seen = []
        for line in flow.stdout:
            seen.append(line)
            if "Stage 'train_b': 2 of 2 items to run" in line:
                break
        assert any("2 of 2 items to run" in line for line in seen), "".join(seen[-30:])
        both = lambda: sum(_running_pid(pid, b"stages.train_b") for pid in _marked(marker)) == 2  # noqa: E731
        _wait_for(both, 120)
        assert both(), "the two train_b items did not run side by side"
        flow.send_signal(signal.SIGTERM)
        rest, _ = flow.communicate(timeout=120)
        assert flow.returncode == 128 + signal.SIGTERM, rest[-3000:]
        assert "stopped by SIGTERM" in rest
        _wait_for(lambda: _marked(marker) == [], 15)
        assert _marked(marker) == [], "processes outlived the flow"
        with sqlite3.connect(home / "prefect.db") as db:
            assert db.execute("select state_type from flow_run").fetchall() == [("CRASHED",)]
        lock = (project / "dvc.lock").read_text()
        assert "train_a" in lock and "train_b" not in lock
        assert not list((project / "data" / "models" / "task_b").glob("seed*"))  # nothing half-written
    finally:
        for pid in _marked(marker):
            os.kill(pid, signal.SIGKILL)


def _running_pid(pid: int, module: bytes) -> bool:
    try:
        return module in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
