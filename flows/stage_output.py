"""A DVC stage's terminal output turned into log lines for the flow's log.

Two things a terminal shows well and a log does not:

- progress bars (tqdm) redraw one line in place with carriage returns, several times a second. A log gets one
  line per bar: its last state, e.g. ``train_a: 100%|...| 800/800 [01:09<00:00, 11.4it/s]`` (elapsed time and
  rate). A bar that clears itself when done (``leave=False``) is logged as its state before the clearing.
- DVC's hints after every stage that changed files ("To track the changes with git, run: git add ...", "To
  enable auto staging, run: dvc config core.autostage true", "Use `dvc push` to send your updates to remote
  storage.") are dropped. No DVC setting silences only these: ``core.autostage`` would run ``git add`` in the
  user's repository, the push line has no setting, and ``dvc repro --quiet`` also hides DVC's errors (including
  the "Unable to acquire lock" that the flow retries on). Blank lines are dropped too.
"""

from __future__ import annotations

import codecs
import os
import re
import signal
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

# DVC 3.x (dvc/repo/scm_context.py): a hint's header line, and how the command line under it starts.
GIT_HINTS = {
    "To track the changes with git, run:": "git add ",
    "To enable auto staging, run:": "dvc config core.autostage",
}
# DVC 3.x (dvc/commands/repro.py): after every `dvc repro` that ran a stage.
PUSH_HINT = "Use `dvc push` to send your updates to remote storage."
# Failures worth a retry: another DVC process held the repository lock.
TRANSIENT_MARKERS = ("Unable to acquire lock", "is busy", "Lock acquisition", "database is locked")


class StageFailed(RuntimeError):
    def __init__(self, stage: str, returncode: int, tail: list[str]):
        self.stage, self.returncode, self.tail = stage, returncode, tail
        self.transient = any(m in line for line in tail for m in TRANSIENT_MARKERS)
        super().__init__(f"stage {stage!r} failed (exit {returncode}):\n" + "\n".join(tail[-15:]))


class StageOutput:
    """Feed raw output text in any chunks; get back complete log lines (progress bars collapsed, hints dropped)."""

    def __init__(self):
        self._pending = ""  # text after the last line break or carriage return: a line still being written
        self._drawn = ""  # the last state of the current line drawn with carriage returns (a progress bar)
        self._hint_command: str | None = None  # the command line of a DVC hint, expected next

    def feed(self, text: str) -> list[str]:
        """The log lines completed by ``text``."""
        out: list[str] = []
        *parts, self._pending = re.split(r"([\r\n])", self._pending + text)
        for segment, end in zip(parts[::2], parts[1::2]):
            if end == "\n":
                self._emit(segment if segment.strip() else self._drawn, out)
                self._drawn = ""
            elif segment.strip():  # a redraw of the current line: remember its latest state
                self._drawn = segment
            elif segment and self._drawn:  # cleared with spaces: a bar that does not stay; log its last state
                self._emit(self._drawn, out)
                self._drawn = ""
        return out

    def close(self) -> list[str]:
        """The last, unterminated line (a process killed mid-bar ends without a line break)."""
        out: list[str] = []
        self._emit(self._pending if self._pending.strip() else self._drawn, out)
        self._pending = self._drawn = ""
        return out

    def _emit(self, line: str, out: list[str]) -> None:
        line = line.rstrip()
        if not line.strip():
            return
        if self._hint_command is not None:
            expected, self._hint_command = self._hint_command, None
            if line.strip().startswith(expected):
                return
        if line.strip() in GIT_HINTS:
            self._hint_command = GIT_HINTS[line.strip()]
            return
        if line.strip() == PUSH_HINT:
            return
        out.append(line)


# The process groups run_streamed has running now (several when stages run side by side, in threads).
_LIVE: set[subprocess.Popen] = set()
_LIVE_LOCK = threading.Lock()


def stop_all(grace_s: float = 10.0) -> None:
    """Stop every process group that run_streamed has running, from any thread (for SIGINT / SIGTERM)."""
    with _LIVE_LOCK:
        live = list(_LIVE)
    for proc in live:
        stop_group(proc, grace_s)


def stop_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """Stop ``proc`` and every process it started (its process group: DVC and the stage under it): SIGTERM, then
    SIGKILL after ``grace_s``."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            os.killpg(proc.pid, 0)  # the leader is gone: is anything of its group left?
        except ProcessLookupError:
            return
        except subprocess.TimeoutExpired:
            pass


def run_streamed(cmd: list[str], cwd: Path, env: dict, timeout_s: float,
                 log: Callable[[str], None]) -> tuple[int, list[str]]:
    """Run ``cmd`` (stderr merged into stdout), sending each log line of its output (``StageOutput``) to ``log``
    as it comes; stop it after ``timeout_s``. It runs in a process group of its own, and whatever ends this call
    early (a timeout, Ctrl-C, SIGTERM) stops the whole group: no DVC or stage process outlives it. Returns (exit
    code, the logged lines)."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    with _LIVE_LOCK:
        _LIVE.add(proc)
    timed_out = threading.Event()

    def _kill():
        timed_out.set()
        stop_group(proc, grace_s=5.0)

    timer = threading.Timer(timeout_s, _kill)
    timer.start()
    # Bytes, not text mode: text mode would turn every carriage return of a progress bar into a line of its own.
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    output = StageOutput()
    lines: list[str] = []

    def _log(new: list[str]) -> None:
        for line in new:
            lines.append(line)
            log(line)

    try:
        while chunk := proc.stdout.read1(65536):
            _log(output.feed(decoder.decode(chunk)))
        _log(output.feed(decoder.decode(b"", final=True)) + output.close())
        code = proc.wait()
    finally:
        timer.cancel()
        if proc.poll() is None:
            stop_group(proc)
        with _LIVE_LOCK:
            _LIVE.discard(proc)
    if timed_out.is_set():
        lines.append(f"killed after the {timeout_s:.0f} s timeout")
    return code, lines
