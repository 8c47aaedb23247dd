"""A real local Prefect server, the pipeline served as a deployment with a cron schedule: scheduled runs appear."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _post(url: str, body: dict) -> list | dict:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def _wait(predicate, timeout: float, what: str, procs=()):
    deadline = time.time() + timeout
    while time.time() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise AssertionError(f"{what}: process exited early ({p.returncode}): {p.stdout.read()[-3000:]}")
        try:
            result = predicate()
            if result:
                return result
        except OSError:
            pass
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}")


def _stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_serve_creates_scheduled_runs(tmp_path):
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = dict(os.environ, PREFECT_HOME=str(tmp_path / "prefect"), PREFECT_API_URL=api)
    bin_dir = os.path.dirname(sys.executable)
    server = subprocess.Popen([os.path.join(bin_dir, "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port), "--analytics-off"], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    served = None
    try:
        _wait(lambda: urllib.request.urlopen(f"{api}/health", timeout=5).status == 200, 180, "server health", [server])
        served = subprocess.Popen([sys.executable, "-m", "flows.serve", "--name", "test", "--cron", "*/5 * * * *"],
                                  env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  start_new_session=True)
        deployments = _wait(lambda: _post(f"{api}/deployments/filter", {}), 120, "the deployment", [server, served])
        assert [d["name"] for d in deployments] == ["test"]
        assert deployments[0]["schedules"][0]["schedule"]["cron"] == "*/5 * * * *"
        runs = _wait(lambda: _post(f"{api}/flow_runs/filter", {"flow_runs": {"state": {"type": {"any_": ["SCHEDULED"]}}}}),
                     150, "scheduled runs", [server, served])
        assert all(r["deployment_id"] == deployments[0]["id"] for r in runs)
        assert all(r["state_type"] == "SCHEDULED" for r in runs)
        assert runs[0]["parameters"]["repo_root"] == str(ROOT)
    finally:
        if served is not None:
            _stop(served)
        _stop(server)


def test_serve_needs_an_api_url():
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.run([sys.executable, "-m", "flows.serve"], env=env, cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: PREFECT_API_URL")
