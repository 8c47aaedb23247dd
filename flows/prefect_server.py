"""The one way the flows start a temporary Prefect server (flows.pipeline and flows.study, when PREFECT_API_URL is
not set): `prefect server start` on a free local port, waited for until healthy, its URL exported for the processes
started after it (a study's Dask workers), stopped at the end.

It runs in a session of its own: a terminal's Ctrl-C goes to the whole foreground process group, and a server that
got it too would be gone before the flow could mark its run Crashed. The flow reports the crash, its last log lines
are sent, and only then is the server stopped (with every process it started).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from flows.stage_output import stop_group


@contextlib.contextmanager
def temporary_prefect_server():
    """PREFECT_API_URL when set (nothing started); else a temporary local Prefect server for the duration of the
    ``with`` block, waited for up to PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS (default 120)."""
    if os.environ.get("PREFECT_API_URL"):
        yield
        return
    import httpx
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/api"
    server = subprocess.Popen([str(Path(sys.executable).parent / "prefect"), "server", "start", "--host", "127.0.0.1",
                               "--port", str(port), "--no-services", "--no-ui"], start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + float(os.environ.get("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120"))
        while not _healthy(httpx, url):
            if server.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the temporary Prefect server did not start on port {port}; start one (prefect "
                                   "server start) and set PREFECT_API_URL")
            time.sleep(0.3)
        os.environ["PREFECT_API_URL"] = url
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield
            finally:
                from prefect.logging.handlers import APILogHandler

                APILogHandler().flush()  # the last log lines (a crash too) go out before the server does
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        stop_group(server)


def _healthy(httpx, url: str) -> bool:
    try:
        return httpx.get(f"{url}/health", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False
