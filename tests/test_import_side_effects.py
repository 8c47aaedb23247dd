"""Side effects stay at the edges: importing the library, or drawing with it, leaves matplotlib's backend as the
caller chose it (a notebook that imports hopfield_replay keeps its own); the entry points that draw set Agg
(stages.runner.draw_to_files). Each check runs in a fresh interpreter, without MPLBACKEND."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

from tests.conftest import ROOT, TINY_PARAMS

IMPORT_EVERY_MODULE = """
import importlib
import json
import pkgutil

import matplotlib

before = matplotlib.rcParams._get("backend")  # no MPLBACKEND: matplotlib's "choose at first figure" marker
import hopfield_replay

names = [m.name for m in pkgutil.walk_packages(hopfield_replay.__path__, "hopfield_replay.")]
for name in names:
    importlib.import_module(name)
after = matplotlib.rcParams._get("backend")
print(json.dumps({"modules": names, "unchanged": after is before, "after": str(after)}))
"""

DRAW_UNDER_THE_CALLERS_BACKEND = """
import matplotlib

matplotlib.use("svg")  # the caller's choice (a notebook's inline backend, say)
import pandas as pd

from hopfield_replay.analysis import colours, report, study_report

rows = [{"unit": "cell-a", "claim": c, "measure": m, "measure_verdict": "inconclusive", "effect": 0.1, "lo": -0.1,
         "hi": 0.3} for c in ("claim1", "claim2") for m in ("absolute", "relative")]
study_report.plot_effects(pd.DataFrame(rows), "effects.png")
colours.arm_colours(["random", "energy_high", "a_new_arm"])
print(matplotlib.get_backend())
"""

RUN_A_STAGE = """
import sys

import matplotlib

from stages.runner import stage


@stage(figures=sys.argv[1] == "figures")
def main(cfg, args):
    print(str(matplotlib.rcParams._get("backend")).lower())  # the backend chosen so far, if any


main(["--params", sys.argv[2]])
"""


def _python(code: str, *args: str, cwd=ROOT) -> str:
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout.strip().splitlines()[-1]


def test_importing_every_library_module_leaves_the_backend_unchosen():
    out = json.loads(_python(IMPORT_EVERY_MODULE))
    assert {"hopfield_replay.analysis.report", "hopfield_replay.analysis.colours",
            "hopfield_replay.analysis.study_report", "hopfield_replay.models.training"} <= set(out["modules"])
    assert out["unchanged"], f"importing the library set matplotlib's backend to {out['after']}"


def test_drawing_with_the_library_keeps_the_callers_backend(tmp_path):
    assert _python(DRAW_UNDER_THE_CALLERS_BACKEND, cwd=tmp_path) == "svg"
    assert (tmp_path / "effects.png").read_bytes().startswith(b"\x89PNG")


def test_a_stage_that_draws_sets_agg_and_the_others_leave_the_backend_alone():
    assert _python(RUN_A_STAGE, "figures", str(TINY_PARAMS)) == "agg"
    assert _python(RUN_A_STAGE, "none", str(TINY_PARAMS)) != "agg"
