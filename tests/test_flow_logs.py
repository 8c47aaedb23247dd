"""The flow's log of a stage (flows/stage_output.py): one line per progress bar, its final state with elapsed time
and rate; DVC's hints gone. Checked on real bytes: a tqdm bar drawn into a pipe by a subprocess, and a real
`dvc repro` in a throwaway git + DVC project. No Prefect involved."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

from flows.stage_output import StageOutput, run_streamed

BIN = Path(sys.executable).parent
# The final state of a bar: "train_a: 100%|##########| 40/40 [00:00<00:00, 91.3it/s]" (elapsed<remaining, rate).
FINAL_BAR = r"{desc}: 100%\|.*\| {n}/{n} \[\d\d:\d\d<00:00, +[\d.]+it/s\]$"

BARS = textwrap.dedent("""
    import time
    from tqdm.auto import tqdm
    print("before", flush=True)
    for _ in tqdm(range(40), desc="train_a", mininterval=0):
        time.sleep(0.001)
    print("between", flush=True)
    for _ in tqdm(range(7), desc="energy", mininterval=0, leave=False):
        time.sleep(0.001)
    print("after", flush=True)
""")


def _tqdm_bytes() -> bytes:
    """Real output of two tqdm bars (one kept, one cleared at the end) drawn into a pipe, stderr into stdout."""
    proc = subprocess.run([sys.executable, "-c", BARS], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=True)
    return proc.stdout


def _lines(raw: bytes, chunk: int) -> list[str]:
    """Feed ``raw`` in chunks of ``chunk`` bytes, as a pipe delivers it (UTF-8 characters split across chunks)."""
    import codecs

    decoder = codecs.getincrementaldecoder("utf-8")()
    out = StageOutput()
    lines = []
    for i in range(0, len(raw), chunk):
        lines += out.feed(decoder.decode(raw[i:i + chunk]))
    return lines + out.feed(decoder.decode(b"", final=True)) + out.close()


def test_each_progress_bar_is_one_final_line_with_elapsed_time_and_rate():
    raw = _tqdm_bytes()
    assert raw.count(b"\r") > 40  # the bars really redraw in place, dozens of times
    for chunk in (1, 7, 4096):
        lines = _lines(raw, chunk)
        assert len(lines) == 5, lines
        assert lines[0] == "before" and lines[2] == "between" and lines[4] == "after"
        assert re.match(FINAL_BAR.format(desc="train_a", n=40), lines[1]), lines[1]
        assert re.match(FINAL_BAR.format(desc="energy", n=7), lines[3]), lines[3]  # the cleared bar, before clearing


def test_dvc_hints_are_dropped_and_everything_else_kept():
    text = ("Running stage 'train_a':\n> python -m stages.train_a\n\rtrain_a:  50%| 1/2\rtrain_a: 100%| 2/2\n"
            "Updating lock file 'dvc.lock'\n\nTo track the changes with git, run:\n\n\tgit add dvc.lock data/.gitignore"
            "\n\nTo enable auto staging, run:\n\n\tdvc config core.autostage true\n"
            "Use `dvc push` to send your updates to remote storage.\n"
            "To track the changes with git, run:\nWARNING: not a hint command, kept\r\n")
    out = StageOutput()
    lines = out.feed(text) + out.close()
    assert lines == ["Running stage 'train_a':", "> python -m stages.train_a", "train_a: 100%| 2/2",
                     "Updating lock file 'dvc.lock'", "WARNING: not a hint command, kept"]


def test_a_killed_stage_logs_its_last_bar_state():
    out = StageOutput()
    assert out.feed("\rtrain_a:  10%| 1/10\rtrain_a:  20%| 2/1") == []
    assert out.close() == ["train_a:  20%| 2/1"]


def _run(cmd: list[str], cwd: Path, env: dict) -> None:
    subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True)


def test_a_real_dvc_repro_logs_one_bar_line_and_no_hints(tmp_path):
    """`dvc repro` of a stage that draws a tqdm bar, through the flow's reader: what the flow's log gets."""
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}", DVC_NO_ANALYTICS="1",
               PYTHONUNBUFFERED="1", DVC_SITE_CACHE_DIR=str(tmp_path / "site_cache"))
    project = tmp_path / "project"
    project.mkdir()
    (project / "bars.py").write_text(BARS + "open('out.txt', 'w').write('done')\n")
    (project / "dvc.yaml").write_text("stages:\n  bars:\n    cmd: python bars.py\n    deps: [bars.py]\n"
                                      "    outs: [out.txt]\n")
    _run(["git", "init", "-q"], project, env)
    _run(["dvc", "init", "-q"], project, env)
    logged = []
    code, lines = run_streamed(["dvc", "repro"], project, env, timeout_s=120, log=logged.append)
    assert code == 0 and lines == logged, lines
    assert lines[:2] == ["Running stage 'bars':", "> python bars.py"]
    assert lines[2:5] == ["before", lines[3], "between"] and lines[6] == "after"
    assert re.match(FINAL_BAR.format(desc="train_a", n=40), lines[3]) and re.match(FINAL_BAR.format(desc="energy", n=7),
                                                                                  lines[5])
    rest = lines[7:]
    assert rest and all("lock file" in line for line in rest), rest  # no git / auto-staging / push hints
    assert not any(line.strip() == "" for line in lines)


def test_a_stage_past_its_timeout_is_killed(tmp_path):
    code, lines = run_streamed([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"],
                               tmp_path, dict(os.environ), timeout_s=1, log=lambda line: None)
    assert code != 0 and lines == ["started", "killed after the 1 s timeout"]


def test_the_flow_summary_leads_with_the_verdicts(tmp_path):
    """`make run` ends with the report's verdict section (claims, verdicts, effects), then where the outputs are."""
    from flows.pipeline import summarize

    report = tmp_path / "data" / "report" / "report.md"
    report.parent.mkdir(parents=True)
    report.write_text("# title\n\nRun: ...\n\n## Verdicts\n\n- **claim one: FAILS**\n  - absolute: fails\n\n"
                      "## Can this run show a replay effect?\n\n- **random beats none: HOLDS**\n  - absolute: holds\n\n"
                      "What it means.\n\n## Predictors of forgetting\n\n| predictor rows |\n")
    lines = summarize(tmp_path).splitlines()
    assert lines[:3] == ["  - **claim one: FAILS**", "    - absolute: fails", "  design check: **random beats none: HOLDS**"]
    assert "predictor rows" not in "\n".join(lines) and lines[-2].startswith("  report: ")
    assert lines[-1].startswith("  against the committed run: python -m tools.check_reproduction")
