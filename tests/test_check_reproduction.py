"""tools.check_reproduction: a rerun reproduces the committed run when its verdicts are the same and its numbers lie
within the tolerance; it names what differs, and a file it cannot read is one line and exit 2."""

from __future__ import annotations

import copy
import json
import subprocess

import pytest

from tests.conftest import ROOT
from tools.check_reproduction import cli, compare

DETAILS = {
    "run": {"seeds": [1, 2], "score": "energy_a"},
    "verdicts": {"claim1": {"verdict": "fails", "absolute": {"effect": -0.1, "lo": -0.3, "hi": 0.1, "verdict": "fails",
                                                             "detail": "Spearman 0.074 minus ..."}}},
    "checks": {"replay_helps": {"verdict": "inconclusive", "absolute": {"effect": 0.6, "lo": None, "hi": None}}},
    "absolute": {"predictors": [{"predictor": "energy_a", "spearman": 0.074, "n": 2500},
                                {"predictor": "pixel_mass", "spearman": 0.123, "n": 2500}],
                 "arms": [{"strategy": "random", "budget": 250, "subset": "overall", "reference": "none",
                           "effect": 0.6}]},
}


def test_compare_finds_numbers_verdicts_and_entries_on_one_side():
    other = copy.deepcopy(DETAILS)
    other["absolute"]["predictors"][1]["spearman"] = 0.125
    other["verdicts"]["claim1"]["verdict"] = "inconclusive"
    other["verdicts"]["claim1"]["absolute"]["detail"] = "other text"  # text is not compared
    other["checks"]["replay_helps"]["absolute"]["lo"] = 0.1  # an interval on one side only
    other["absolute"]["arms"].append({**other["absolute"]["arms"][0], "strategy": "oracle"})
    other["absolute"]["predictors"].reverse()  # rows are matched by their keys, not their position
    other["run"]["seeds"] = [1, 2, 3]  # a plain list: by position
    del other["run"]["score"]
    numbers, verdicts, structure = compare(DETAILS, other)
    by_path = {p: (a, b) for p, a, b in numbers}
    assert by_path["/absolute/predictors[predictor=pixel_mass]/spearman"] == (0.123, 0.125)
    assert by_path["/absolute/predictors[predictor=energy_a]/n"] == (2500, 2500)
    assert by_path["/absolute/arms[strategy=random,budget=250,subset=overall,reference=none]/effect"] == (0.6, 0.6)
    assert verdicts == [("/verdicts/claim1/verdict", "fails", "inconclusive")]
    assert by_path["/run/seeds[1]"] == (2, 2) and "/run/seeds[2]" not in by_path
    assert sorted(structure) == ["/absolute/arms[strategy=oracle,budget=250,subset=overall,reference=none]",
                                 "/checks/replay_helps/absolute/lo (None vs 0.1)", "/run/score",
                                 "/run/seeds (2 vs 3 entries)"]
    assert compare(DETAILS, copy.deepcopy(DETAILS))[1:] == ([], [])


@pytest.fixture
def committed(tmp_path, monkeypatch):
    """A git repository with data/metrics/details.json committed, as the working directory."""
    monkeypatch.chdir(tmp_path)
    for cmd in (["git", "init", "-q"], ["git", "config", "user.email", "t@t"], ["git", "config", "user.name", "t"]):
        subprocess.run(cmd, check=True)
    path = tmp_path / "data" / "metrics" / "details.json"
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps(DETAILS))
    subprocess.run(["git", "add", "."], check=True)
    subprocess.run(["git", "commit", "-qm", "metrics"], check=True)
    return path


def _rerun(path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def test_a_rerun_within_the_tolerance_reproduces(committed, capsys):
    _rerun(committed, lambda d: d["absolute"]["predictors"][0].update(spearman=0.07404))
    assert cli(["--details", str(committed.relative_to(committed.parents[2]))]) == 0
    out = capsys.readouterr().out
    assert "claim1 fails, replay_helps inconclusive (every verdict the same)" in out
    assert "headline verdicts (claims and design checks): the same" in out
    assert "1 not identical, largest difference 4e-05 at /absolute/predictors[predictor=energy_a]/spearman" in out
    assert out.rstrip().endswith("reproduced") and "NOT" not in out


def test_a_number_beyond_the_tolerance_or_another_verdict_does_not(committed, capsys):
    rel = str(committed.relative_to(committed.parents[2]))
    _rerun(committed, lambda d: d["absolute"]["predictors"][1].update(spearman=0.2))
    assert cli(["--details", rel]) == 1
    out = capsys.readouterr().out
    assert "beyond the tolerance: /absolute/predictors[predictor=pixel_mass]/spearman: 0.2 here, 0.123 there" in out
    assert "headline verdicts (claims and design checks): the same" in out  # numbers moved, the headline did not
    assert "(the headline verdicts are the same: a run on another CPU model" in out
    assert cli(["--details", rel, "--tol", "0.1"]) == 0
    capsys.readouterr()
    _rerun(committed, lambda d: d["verdicts"]["claim1"].update(verdict="holds"))
    assert cli(["--details", rel, "--tol", "0.1"]) == 1
    out = capsys.readouterr().out
    assert "verdict differs: /verdicts/claim1/verdict: holds here, fails there" in out and "NOT reproduced" in out
    assert "headline verdicts (claims and design checks): differ: claim1 holds here, fails there" in out
    assert "the headline verdicts are the same" not in out
    other = committed.parent / "other.json"  # --against: a file as the reference
    other.write_text(committed.read_text())
    assert cli(["--details", rel, "--against", str(other), "--tol", "0"]) == 0


@pytest.mark.parametrize("args, message", [
    (["--details", "missing.json"], "missing.json: does not exist; run the pipeline first"),
    (["--details", "data/metrics/details.json", "--rev", "nope"], "nope:data/metrics/details.json: cannot be read"),
    (["--details", "data/metrics/details.json", "--tol", "-1"], "--tol: must be a finite number >= 0"),
    (["--against", "x.json"], "--against: compares one file"),
    (["--details", "data/metrics/damaged.json", "--against", "data/metrics/details.json"],
     "data/metrics/damaged.json: is not valid JSON"),
])
def test_bad_input_is_one_line_and_exit_2(committed, capsys, args, message):
    (committed.parent / "damaged.json").write_text('{"verdicts": ')
    assert cli(args) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.startswith(f"error: {message}") and captured.err.count("\n") == 1


def test_the_committed_run_reproduces_itself_and_one_changed_number_is_found():
    """The repository's own committed metrics, compared with themselves through git: every number identical, every
    table row matched by its keys; one arm effect changed in a copy is the one difference, named by its row."""
    proc = subprocess.run(["git", "show", "HEAD:data/metrics/details.json"], cwd=ROOT, capture_output=True)
    if proc.returncode != 0:
        pytest.skip("no committed metrics")
    numbers, verdicts, structure = compare(json.loads(proc.stdout), json.loads(proc.stdout))
    assert len(numbers) > 1000 and not verdicts and not structure and all(a == b for _, a, b in numbers)
    changed = json.loads(proc.stdout)
    row = changed["relative"]["arms"][-1]
    row["effect"] += 0.01
    numbers, verdicts, structure = compare(changed, json.loads(proc.stdout))
    differ = [(p, a, b) for p, a, b in numbers if a != b]
    name = ",".join(f"{k}={row[k]}" for k in ("strategy", "budget", "subset", "reference"))
    assert [p for p, _, _ in differ] == [f"/relative/arms[{name}]/effect"] and not structure
