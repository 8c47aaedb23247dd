"""Studies (flows/study.py, hopfield_replay.analysis.study): the study file's checks, its cells, the stacked tables and the
pooled evidence; then a real study end to end: a tiny project, three cells (two good, one whose prepare stage
rejects its value) on a 2-worker local Dask cluster through Prefect, each a `dvc repro` in its own git worktree,
run twice."""

from __future__ import annotations

import importlib.util
import json
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml

from hopfield_replay.io.params_file import validate_config
from hopfield_replay.errors import UserError
from hopfield_replay.analysis.study import (AGREEMENT_COLUMNS, ARM_COLUMNS, agreement_rows, arm_rows, cell_id, evidence, expand, grid_columns,
                                   load_study, pool_seed_blocks, seed_blocks, stack_tables, verdict_rows)
from hopfield_replay.analysis.study_report import arm_plot_rows, plot_arms, study_markdown
from hopfield_replay.analysis.verdicts import format_interval
from tests.conftest import ROOT, TINY_PARAMS, make_project, run, write_params
from tests.test_protocol import finish_replay, replay_rows

GOOD, SHORT, BAD = [5, 6, 7, 8, 9], [5, 6, 7, 8], [5, 6, 7, 8, 42]  # prepare.task_b; class 42 has no samples


def write_study(path, **study):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(study, sort_keys=False))
    return path


# ------------------------------------------------------------------------------------------------ the study file
@pytest.mark.parametrize("study, key", [
    ({"grdi": {}}, "grdi: unknown key; known: description, base, grid, stages, engine"),
    ({"engine": {"workers": 0}}, "engine.workers: Input should be greater than or equal to 1"),
    ({"engine": {"runner": "spark"}}, "engine.runner: Input should be 'dask' or 'ray'"),
    ({"engine": {"gpus": [0, 1]}}, "engine.gpus_per_cell: must be >= 1 when gpus lists GPUs"),
    ({"grid": {"seeds": 3}}, "grid.seeds: Input should be a valid list"),
    ({"grid": {"seeds": []}}, "grid.seeds: the list of values is empty"),
    ({"grid": {"select_replay.budgets": [[50], [50]]}}, "grid.select_replay.budgets: [[50], [50]] lists a value twice"),
    ({"grid": {"select_replay.budgetz": [[50]]}}, "grid.select_replay.budgetz: unknown params key; known keys of "
                                                  "select_replay: arms, budgets"),
    ({"grid": {"train_a.lr.x": [1]}}, "grid.train_a.lr.x: train_a.lr holds a value, not a section"),
    ({"stages": []}, "stages: an empty list runs nothing"),
])
def test_a_bad_study_file_is_one_line_naming_the_key(tmp_path, study, key):
    path = write_study(tmp_path / "bad.yaml", **study)
    with pytest.raises(UserError) as err:
        load_study(path)
    assert str(err.value).startswith(f"{path}: {key}"), str(err.value)
    assert "\n" not in str(err.value)


def test_the_command_line_prints_one_error_line_and_exits_2(tmp_path, capsys):
    from flows.study import main

    assert main([str(write_study(tmp_path / "bad.yaml", engine={"retries": "once"})), "--list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "engine.retries" in err
    # a cell whose params the config rejects: the file, the cell and the dotted field, before anything runs
    path = write_study(tmp_path / "lr.yaml", base=str(TINY_PARAMS), grid={"train_a.lr": [0.001, -1.0]})
    assert main([str(path), "--list"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and '{"train_a.lr": -1.0}' in err and "train_a.lr: Input should be greater" in err
    path = write_study(tmp_path / "st.yaml", stages=["reprot"])
    assert main([str(path), "--list"]) == 2
    assert "stages: unknown stage 'reprot'" in capsys.readouterr().err


def test_ray_without_prefect_ray_names_the_extra(capsys, monkeypatch):
    monkeypatch.chdir(ROOT)  # the shipped studies name their base relative to the repository's root
    if importlib.util.find_spec("prefect_ray"):
        pytest.skip("prefect-ray is installed")
    from flows.study import main

    assert main([str(ROOT / "studies" / "tiny.yaml"), "--engine", "ray"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install -e .[ray]" in err


def test_an_existing_dask_cluster_must_offer_the_gpus_cells_need():
    from distributed import LocalCluster

    from flows.study_engine import check_dask_cluster
    from hopfield_replay.analysis.study import EngineSpec

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cpu:
        check_dask_cluster(EngineSpec(address=cpu.scheduler_address))  # CPU cells: any worker will do
        with pytest.raises(UserError, match=r"engine.gpus_per_cell: no worker of .* offers GPU=1; start workers "
                                            r"with --resources GPU=1"):
            check_dask_cluster(EngineSpec(address=cpu.scheduler_address, gpus_per_cell=1))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None,
                      resources={"GPU": 1}) as gpu:
        check_dask_cluster(EngineSpec(address=gpu.scheduler_address, gpus_per_cell=1))


def test_a_cell_stops_what_an_interrupted_study_left_in_its_worktree(tmp_path):
    import os
    import time

    from flows.study import stop_leftovers

    # an orphan leading its own process group (as `dvc repro` is) and a live child of this process, both in tmp_path
    pid = int(subprocess.run(["bash", "-c", "setsid sleep 300 > /dev/null 2>&1 & echo $!"], cwd=tmp_path,
                             capture_output=True, text=True).stdout)
    live = subprocess.Popen(["sleep", "300"], cwd=tmp_path, start_new_session=True)
    try:
        time.sleep(0.2)
        if int(open(f"/proc/{pid}/stat").read().split()[3]) != 1:
            pytest.skip("orphans are re-parented to a subreaper here, not to init")
        assert stop_leftovers(tmp_path) == 1
        time.sleep(0.2)
        assert not os.path.exists(f"/proc/{pid}") or open(f"/proc/{pid}/stat").read().split()[2] == "Z"
        assert live.poll() is None  # a process whose parent lives is not a leftover
    finally:
        live.kill()
        subprocess.run(["kill", "-9", str(pid)], capture_output=True)


def _worker_env():
    import os

    from flows.study import cell_env

    return os.environ.get("MALLOC_TRIM_THRESHOLD_"), cell_env().get("MALLOC_TRIM_THRESHOLD_")


def test_a_cell_does_not_inherit_the_memory_trimming_a_dask_nanny_sets_for_its_worker():
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster, \
            Client(cluster) as client:
        worker, cell = client.submit(_worker_env).result(timeout=60)
    assert worker is not None and cell is None  # the nanny set it for its worker; the cell's dvc repro lacks it


def test_the_shipped_studies_expand_into_valid_cells(capsys, monkeypatch):
    from flows.study import main

    monkeypatch.chdir(ROOT)
    assert main([str(ROOT / "studies" / "tiny.yaml"), "--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [json.loads(line.split("\t")[1]) for line in lines] == [{"seeds": [1, 2]}, {"seeds": [3, 4]}]
    assert main([str(ROOT / "studies" / "ddpm-mnist-seeds.yaml"), "--list"]) == 0
    ids = [line.split("\t")[0] for line in capsys.readouterr().out.splitlines()]
    assert len(ids) == len(set(ids)) == 8


# ------------------------------------------------------------------------------------------------------ the cells
def test_cells_are_the_cartesian_product_with_stable_ids(tiny_params):
    cells = expand({"seeds": [[1, 2], [3, 4]], "select_replay.budgets": [[10], [20], [30]]})
    assert len(cells) == 6 and cells[0] == {"seeds": [1, 2], "select_replay.budgets": [10]}
    assert cells[1] == {"seeds": [1, 2], "select_replay.budgets": [20]}  # the first key varies slowest
    assert expand({}) == [{}]
    params = validate_config(tiny_params).model_dump(mode="json")
    ids = {cell_id(c, {**params, "seeds": c["seeds"]}) for c in cells}
    assert len(ids) == 6
    a = cell_id({"seeds": [1, 2]}, params)
    assert a == cell_id({"seeds": [1, 2]}, dict(params)) and a.startswith("seeds-1.2-")  # readable and stable
    assert cell_id({"seeds": [1, 2]}, {**params, "device": "cuda"}) != a  # any other params: another id


def test_stacked_tables_carry_the_cell_and_its_grid_values():
    grid = grid_columns({"a": {"seeds": [1, 2], "train_a.lr": 0.1}, "b": {"seeds": [3], "train_a.lr": 0.2}})
    assert grid.loc["a", "seeds"] == "[1, 2]" and grid["train_a.lr"].dtype == float  # lists as JSON, scalars kept
    frames = {"a": pd.DataFrame({"sample_id": [1, 2], "x": [0.5, 0.6]}), "b": pd.DataFrame({"sample_id": [1], "x": [0.7]})}
    stacked = stack_tables(frames, grid)
    assert list(stacked.columns) == ["cell", "seeds", "train_a.lr", "sample_id", "x"]
    assert stacked["cell"].tolist() == ["a", "a", "b"] and stacked["train_a.lr"].tolist() == [0.1, 0.1, 0.2]
    assert stacked["x"].tolist() == [0.5, 0.6, 0.7]
    assert list(stack_tables({}, grid).columns) == ["cell", "seeds", "train_a.lr"]


def _run_tables(seeds, n=120, ts=(100, 500)):
    """One synthetic run (as tests/test_protocol.py): top-energy replay protects its buffer in every seed."""
    rng = np.random.default_rng(0)
    ids = np.arange(n)
    mass = rng.random(n)
    scores = pd.DataFrame({"label": rng.integers(0, 3, n), "energy_a": mass + 0.3 * rng.normal(size=n),
                           "pixel_mass": mass, "recon_error_a": 1 + 0.1 * rng.random(n)}, index=pd.Index(ids, name="sample_id"))
    high = set(scores["energy_a"].nlargest(12).index)
    rows = []
    for s in seeds:
        noise = np.random.default_rng(s)
        for t in ts:
            error_a = scores["recon_error_a"].to_numpy() * t / 100
            base = error_a * np.exp(0.5 + 0.05 * noise.normal(size=n))
            rows += replay_rows(ids, s, t, error_a, base, high, noise, budget=12, protect_random=0.95)
    return finish_replay(scores, rows)


def test_seed_blocks_pool_into_one_run_with_an_interval_over_all_seeds(tiny_params, tmp_path):
    params = {"a": {"seeds": [1], "x": 1}, "b": {"seeds": [2], "x": 1}, "c": {"seeds": [3], "x": 1},
              "d": {"seeds": [1], "x": 2}}
    assert seed_blocks(params) == [["a", "b", "c"]]
    runs = {c: _run_tables([s]) for c, s in (("a", 1), ("b", 2), ("c", 3))}
    scores, forgetting, replay, seeds = pool_seed_blocks(runs)
    assert seeds == [1, 2, 3] and sorted(forgetting["seed"].unique()) == [1, 2, 3]
    cfg = validate_config({**tiny_params, "report": {**tiny_params["report"], "nuisance": ["pixel_mass"]}})
    ev_one, ev = evidence(*runs["a"], cfg, [1]), evidence(scores, forgetting, replay, cfg, seeds)  # once each
    one = verdict_rows(ev_one, "a", [1])
    pooled = verdict_rows(ev, "pooled:a+b+c", seeds)
    claim2 = [r for r in pooled if r["claim"] == "claim2" and r["measure"] == "absolute"][0]
    assert np.isnan([r for r in one if r["claim"] == "claim2"][0]["lo"])
    assert claim2["lo"] > 0 and claim2["verdict"] == "holds"  # one seed has no interval; three give one above 0
    checks = {(r["claim"], r["measure"]): r for r in pooled if r["claim"] in ("replay_helps", "ceiling_wins")}
    assert len(checks) == 4 and checks[("ceiling_wins", "relative")]["verdict"] == "not run"  # no oracle arm
    assert np.isnan(checks[("ceiling_wins", "relative")]["effect"])
    replay_helps = ev.checks["replay_helps"]
    assert checks[("replay_helps", "absolute")]["effect"] == replay_helps["absolute"]["effect"]
    assert checks[("replay_helps", "absolute")]["verdict"] == replay_helps["verdict"]
    # the seed agreement: one row per measure, the run's own numbers; none with one seed
    agreement = pd.DataFrame(agreement_rows(ev_one, "a", [1])
                             + agreement_rows(ev, "pooled:a+b+c", seeds), columns=AGREEMENT_COLUMNS)
    rows = agreement.set_index(["unit", "measure"])
    for m in ("absolute", "relative"):
        assert rows.at[("pooled:a+b+c", m), "rho"] == ev.agreement[m]["rho"]
        assert rows.at[("pooled:a+b+c", m), "n_seeds"] == 3
        assert np.isnan(rows.at[("a", m), "rho"]) and rows.at[("a", m), "n_seeds"] == 1
    report = study_markdown("s", None, "0" * 10, pd.DataFrame(index=["a"]),
                            pd.DataFrame({"cell": ["a"], "status": ["completed"]}),
                            pd.DataFrame(one + pooled), agreement)
    assert "1 cell (no grid): 1 completed, 0 missing." in report  # the count's noun agrees with it
    section = report.split("## Seed agreement")[1].split("## ")[0]
    want = []
    for a in (ev.agreement["absolute"], ev.agreement["relative"]):  # no ceiling where the seeds do not agree
        ceiling = "none" if np.isnan(a["ceiling"]) else f"{a['ceiling']:.2f}"
        want.append(f"{a['rho']:+.3f} [{a['lo']:+.3f}, {a['hi']:+.3f}] ({ceiling})")
    assert "| a | [1] | one seed: none | one seed: none |" in section
    assert f"| a, b, c | [1, 2, 3] | {want[0]} | {want[1]} |" in section
    # the arm table: the protocol's own arm effects over all samples, every reference, one row each
    arms = pd.DataFrame(arm_rows(ev, "pooled:a+b+c", seeds), columns=ARM_COLUMNS)
    for m in ("absolute", "relative"):
        want = ev.arms[m][ev.arms[m]["subset"] == "overall"]
        got = arms[arms["measure"] == m]
        assert len(got) == len(want) == 3  # energy_high vs random and vs none, random vs none
        assert got[["strategy", "reference"]].values.tolist() == want[["strategy", "reference"]].values.tolist()
        assert np.allclose(got[["effect", "lo", "hi"]].to_numpy(), want[["effect", "lo", "hi"]].to_numpy())
    vs_random = arms[(arms.reference == "random") & (arms.measure == "absolute")].iloc[0]
    report = study_markdown("s", None, "0" * 10, pd.DataFrame(index=["a"]),
                            pd.DataFrame({"cell": ["a"], "status": ["completed"]}), pd.DataFrame(pooled), agreement,
                            arms)
    assert (f"| a, b, c | energy_high | 12 | random | {vs_random['effect']:+.3f} [{vs_random['lo']:+.3f}, "
            f"{vs_random['hi']:+.3f}] |") in report
    assert plot_arms(arms, tmp_path / "arms.png").stat().st_size > 5000
    other = _run_tables([4])
    with pytest.raises(ValueError, match="different scores tables"):
        pool_seed_blocks({"a": runs["a"], "x": (other[0] * 2, *other[1:])})


def _generation(seeds, shift=0.0, learned_b=True):
    """A generate-stage table: model A, then per seed no replay, random and top-energy replay (budget 10) with
    task-A shares 0.2, 0.5 and 0.5 + 0.1 * seed + shift."""
    rows = [{"model": "task_a", "phase": "A", "seed": 0, "strategy": "none", "budget": 0, "learned": True,
             "task_a_share": 0.9}]
    for s in seeds:
        rows += [{"model": f"task_b/seed{s}", "phase": "B", "seed": s, "strategy": "none", "budget": 0,
                  "learned": learned_b, "task_a_share": 0.2},
                 {"model": f"retrain/seed{s}/random-10", "phase": "B", "seed": s, "strategy": "random", "budget": 10,
                  "learned": True, "task_a_share": 0.5},
                 {"model": f"retrain/seed{s}/energy_high-10", "phase": "B", "seed": s, "strategy": "energy_high",
                  "budget": 10, "learned": True, "task_a_share": 0.5 + 0.1 * s + shift}]
    return pd.DataFrame(rows)


def test_a_study_says_what_its_models_generate_per_cell_and_pooled(tmp_path):
    """Seed blocks pool their generate tables (model A once, each seed once); the effects are the report stage's
    (analysis.generation.arm_effects) and the report and the results page say how many models learned."""
    from hopfield_replay.analysis import study_generation as G
    from hopfield_replay.analysis.generation import arm_effects
    from tools.render_results import study_generation_text

    cells = {"a": _generation([1]), "b": _generation([2], learned_b=False), "c": _generation([3, 1], shift=5.0)}
    pooled = G.pool_generation(cells)
    assert pooled.model.tolist().count("task_a") == 1 and sorted(pooled[pooled.phase == "B"].seed.unique()) == [1, 2, 3]
    assert pooled.loc[(pooled.seed == 1) & (pooled.strategy == "energy_high"), "task_a_share"].item() == pytest.approx(0.6)
    effects = pd.DataFrame(G.effect_rows(pooled, "pooled:a+b+c", [1, 2, 3], 0.95), columns=G.EFFECT_COLUMNS)
    want = arm_effects(pooled, 0.95)
    assert effects[["arm", "reference", "effect", "lo", "hi", "verdict"]].values.tolist() == \
        want[["arm", "reference", "effect", "lo", "hi", "verdict"]].values.tolist()
    claim = effects[(effects.arm == "energy_high") & (effects.reference == "random")].iloc[0]
    assert claim.effect == pytest.approx((0.1 + 0.2 + 5.3) / 3) and claim.n_seeds == 3 and claim.positive_seeds == 3
    assert claim.all_learned  # only the replay models behind it; seed 2's no-replay model did not learn:
    assert not effects[(effects.arm == "energy_high") & (effects.reference == "none")].all_learned.item()
    learned = pd.DataFrame([G.learned_row(cells["a"], "a", [1]), G.learned_row(pooled, "pooled:a+b+c", [1, 2, 3])],
                           columns=G.LEARNED_COLUMNS)
    assert learned.set_index("unit").loc["pooled:a+b+c", ["models", "learned", "task_b_models",
                                                          "task_b_models_learned"]].tolist() == [10, 9, 3, 2]
    one = pd.DataFrame(G.effect_rows(cells["a"], "a", [1], 0.95), columns=G.EFFECT_COLUMNS)
    report = study_markdown("s", None, "0" * 10, pd.DataFrame(index=["a"]),
                            pd.DataFrame({"cell": ["a"], "status": ["completed"]}), pd.DataFrame(columns=["unit"]),
                            None, None, pd.concat([one, effects]), learned)
    section = report.split("## What the models generate")[1].split("## ")[0]
    assert "| a, b, c | [1, 2, 3] | 9 of 10 | learned | 2 of 3 |" in section
    assert (f"| a, b, c | energy_high | 10 | random | {format_interval(claim.effect, claim.lo, claim.hi)} | 3/3 | "
            f"{claim.verdict} | yes |") in section
    rows = [line for line in section.splitlines() if line.startswith("| a, b, c | ")][1:]
    assert rows[0].startswith("| a, b, c | energy_high | 10 | random |")  # claim 2's arm first
    text = study_generation_text(learned, pd.concat([one, effects]), lambda u: "pooled" if "+" in u else u)
    assert text.startswith("What the models generate: a: 4 of 4 models learned (model A learned; 1 of 1 no-replay")
    assert (f"pooled: 9 of 10 models learned (model A learned; 2 of 3 no-replay task-B models); claim 2 in the task-A "
            f"share of their samples (top-energy minus random replay): budget 10: **{claim.verdict}**, "
            f"{format_interval(claim.effect, claim.lo, claim.hi)}.") in text


def test_a_study_reads_each_cells_forecast_table_only_when_it_is_complete(tmp_path):
    from hopfield_replay.analysis.study_forecasts import COLUMNS, forecasts_markdown, read_forecasts

    row = {k: 0.5 for k in COLUMNS} | {"measure": "relative", "predictor": "probe_8", "kind": "forecast",
                                       "forecast": True, "baseline": "pixel_mass", "cost": 64.0}
    ref = row | {"predictor": "energy_a", "kind": "energy", "forecast": False, "cost": None, "train_b_ratio": None,
                 "within_class": None}  # JSON null: NaN (one seed, a class too small)
    both = [r | {"measure": m} for m in ("absolute", "relative") for r in (row, ref)]
    (tmp_path / "details.json").write_text(json.dumps({"forecasts": both}))
    rows = read_forecasts(tmp_path, "a", [1, 2])
    assert [r["predictor"] for r in rows] == ["probe_8", "energy_a"] * 2 and rows[0]["seeds"] == "[1, 2]"
    lines = forecasts_markdown(pd.DataFrame(rows))
    assert lines[1] == "## Forecasting forgetting before fine-tuning: a, seeds [1, 2]"
    assert any(line.startswith("| relative | probe_8 | +0.500 [+0.500, +0.500] | 0.50 |") for line in lines)
    assert any("the best forecast before fine-tuning is `probe_8`" in line for line in lines)
    old = {k: v for k, v in row.items() if k not in ("within_class", "minus_baseline")}  # an older report
    (tmp_path / "details.json").write_text(json.dumps({"forecasts": [old, ref]}))
    assert read_forecasts(tmp_path, "a", [1]) == [] and read_forecasts(tmp_path / "none", "a", [1]) == []


# --------------------------------------------------------------------------------------------------- end to end
def run_study(study, project, *extra):
    cmd = [sys.executable, "-m", "flows.study", str(study), "--repo-root", str(project), *extra]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=1500)


def exp_show(project) -> dict:
    """{experiment name: (prepare.task_b, verdicts metrics)} from `dvc exp show --json` in the main project."""
    out = run(["dvc", "exp", "show", "--json"], project).stdout
    rows = json.loads(out[out.index("["):])
    exps = {}
    for row in rows:
        for exp in row.get("experiments") or []:
            for rev in exp["revs"]:
                data = rev["data"]
                params = data["params"]["params.yaml"]["data"]
                metrics = data["metrics"]["data/metrics/verdicts.json"]["data"]
                exps[rev["name"]] = (params["prepare"]["task_b"], metrics)
    return exps


def snapshot(root, project, proc):
    cells = pd.read_parquet(root / "results" / "cells.parquet").set_index("cell")
    logs = {c: (root / "logs" / f"{c}.log").read_text() for c in cells.index}
    return {"proc": proc, "cells": cells, "logs": logs, "exps": exp_show(project),
            "report": (root / "report" / "report.md").read_text(),
            "tables": {t: pd.read_parquet(root / "results" / f"{t}.parquet")
                       for t in ("scores", "forgetting", "replay_forgetting", "verdicts", "agreement", "arms",
                                 "generation", "learned", "forecasts")}}


@pytest.fixture(scope="module")
def study_runs(tmp_path_factory, tiny_params):
    """The study run twice: first on a fresh project; then with one good cell's worktree deleted, at most one cell
    at a time."""
    tmp = tmp_path_factory.mktemp("study")
    project = make_project(tmp / "project", tiny_params)
    base = write_params(tmp / "base.yaml", {"seeds": [1], "select_replay": {"arms": ["energy_high", "random"]}})
    study = write_study(tmp / "studies" / "e2e.yaml", description="two good cells and one that fails",
                        base=str(base), grid={"prepare.task_b": [GOOD, SHORT, BAD]}, stages=["report"],
                        engine={"workers": 2, "retries": 1})
    root = project / ".studies" / "e2e"
    first = snapshot(root, project, run_study(study, project))
    short = first["cells"].index[first["cells"]["prepare.task_b"] == json.dumps(SHORT)][0]
    shutil.rmtree(first["cells"].at[short, "workspace"])  # lost (or on another machine): rebuilt from the cache
    second = snapshot(root, project, run_study(study, project, "--max-parallel", "1"))
    return {"project": project, "root": root, "first": first, "second": second, "short": short}


def cell_of(cells, value):
    return cells.index[cells["prepare.task_b"] == json.dumps(value)][0]


@pytest.mark.slow
def test_every_good_cell_is_a_dvc_experiment_and_the_bad_one_is_reported(study_runs):
    first, project = study_runs["first"], study_runs["project"]
    proc, cells = first["proc"], first["cells"]
    assert proc.returncode == 1, proc.stderr[-3000:]  # a cell failed: the study finished and says so
    good, short, bad = (cell_of(cells, v) for v in (GOOD, SHORT, BAD))
    assert f"missing: {bad}" in proc.stdout and "classes [42] have no samples" in proc.stdout
    assert cells.loc[[good, short], "status"].tolist() == ["completed", "completed"]
    assert cells.at[bad, "status"] == "failed" and cells.at[bad, "attempts"] == 2  # retried once
    assert first["logs"][bad].count("=== attempt ") == 2 and first["logs"][bad].count("error: prepare.task_b") == 2
    # the two good cells ran side by side, each the whole chain up to report in its own worktree
    (s1, f1), (s2, f2) = cells.loc[[good, short], ["started", "finished"]].to_numpy()
    assert max(s1, s2) < min(f1, f2)
    for cell in (good, short):
        assert "report" in json.loads(cells.at[cell, "ran"]) and cells.at[cell, "experiment"] == "saved"
        ws = cells.at[cell, "workspace"]
        assert run(["dvc", "cache", "dir"], ws).stdout.strip() == str(project / ".dvc" / "cache")  # one cache
    exps = first["exps"]
    assert set(exps) == {f"e2e-{good}", f"e2e-{short}"}
    assert exps[f"e2e-{good}"][0] == GOOD and exps[f"e2e-{short}"][0] == SHORT
    assert exps[f"e2e-{good}"][1]["claim1"]["verdict"] in ("holds", "fails", "inconclusive")
    assert run(["git", "status", "--porcelain"], project).stdout == ""  # worktrees and results stay out of git


@pytest.mark.slow
def test_the_study_table_and_report(study_runs):
    first = study_runs["first"]
    cells, tables = first["cells"], first["tables"]
    good, short, bad = (cell_of(cells, v) for v in (GOOD, SHORT, BAD))
    scores = tables["scores"]
    assert list(scores.columns[:2]) == ["cell", "prepare.task_b"] and "energy_a" in scores
    assert scores.groupby("cell").size().to_dict() == {good: 200, short: 200}  # task A: 5 classes x 40
    assert set(scores.loc[scores.cell == short, "prepare.task_b"]) == {json.dumps(SHORT)}
    assert tables["forgetting"].groupby("cell").size().to_dict() == {good: 400, short: 400}  # 1 seed x 2 t
    assert tables["replay_forgetting"].groupby("cell").size().to_dict() == {good: 1200, short: 1200}  # 3 arms
    verdicts = tables["verdicts"]
    assert set(verdicts.unit) == {good, short} and len(verdicts) == 2 * 5 * 2  # cells x (claims + checks) x measures
    # the protocol as the report stage applies it: the same verdicts and effects as each cell's own metrics
    for cell in (good, short):
        own = json.loads((study_runs["root"] / cell / "data" / "metrics" / "verdicts.json").read_text())
        for claim in ("claim1", "claim2"):
            rows = verdicts[(verdicts.unit == cell) & (verdicts.claim == claim)].set_index("measure")
            assert rows["verdict"].iloc[0] == own[claim]["verdict"]
            assert rows.at["relative", "effect"] == pytest.approx(own[claim]["relative"], abs=1e-4)
        own_checks = json.loads((study_runs["root"] / cell / "data" / "metrics" / "details.json").read_text())["checks"]
        for check in ("replay_helps", "ceiling_wins"):
            rows = verdicts[(verdicts.unit == cell) & (verdicts.claim == check)].set_index("measure")
            assert rows["verdict"].iloc[0] == own_checks[check]["verdict"]
    agreement = tables["agreement"]  # one seed per cell: no agreement to measure
    assert len(agreement) == 2 * 2 and (agreement["n_seeds"] == 1).all() and agreement["rho"].isna().all()
    report = first["report"]
    assert report.index("## Verdicts per cell") < report.index("## Design checks") < report.index(
        "## Seed agreement") < report.index("## Verdicts per grid value") < report.index("## Missing cells")
    assert f"| {good} | [1] | one seed: none | one seed: none |" in report
    missing = report.split("## Missing cells")[1]
    assert bad in missing and str(study_runs["root"] / "logs" / f"{bad}.log") in missing and good not in missing
    assert (study_runs["root"] / "report" / "plots" / "effects.png").stat().st_size > 5000
    # every arm against its references: the report stage's own arm table of each cell, over all samples
    arms = tables["arms"]
    for cell in (good, short):
        own = json.loads((study_runs["root"] / cell / "data" / "metrics" / "details.json").read_text())
        for m in ("absolute", "relative"):
            want = [r for r in own[m]["arms"] if r["subset"] == "overall"]
            got = arms[(arms.unit == cell) & (arms.measure == m)]
            assert len(got) == len(want) == 3  # energy_high vs random and vs none, random vs none
            for r in want:
                row = got[(got.strategy == r["strategy"]) & (got.reference == r["reference"])].iloc[0]
                assert row["effect"] == pytest.approx(r["effect"], rel=1e-5) and row["n_seeds"] == r["n_seeds"] == 1
    assert report.index("## Seed agreement") < report.index("## Replay arms against random replay") < report.index(
        "## Verdicts per grid value")
    row = arms[(arms.unit == good) & (arms.strategy == "energy_high") & (arms.reference == "random")].set_index(
        "measure")
    assert (f"| {good} | {json.dumps(GOOD)} | energy_high | 10 | random | {row.at['absolute', 'effect']:+.3f} [no "
            f"interval] | {row.at['relative', 'effect']:+.3f} [no interval] | 1/1 / 1/1 |") in report
    assert (study_runs["root"] / "report" / "plots" / "arms.png").stat().st_size > 5000
    # what the models generate: each cell's own generation effects and learned counts (its report stage's)
    for cell in (good, short):
        own = json.loads((study_runs["root"] / cell / "data" / "metrics" / "details.json").read_text())["generation"]
        got = tables["generation"][tables["generation"].unit == cell]
        assert len(got) == len(own["effects"]) > 0
        for r in own["effects"]:
            row = got[(got.arm == r["arm"]) & (got.reference == r["reference"]) & (got.budget == r["budget"])]
            assert row.effect.item() == pytest.approx(r["effect"]) and row.verdict.item() == r["verdict"]
        learned = tables["learned"].set_index("unit").loc[cell]
        assert [learned.models, learned.learned] == [own["learned"]["models"], own["learned"]["learned"]]
    assert report.index("## Replay arms against random replay") < report.index("## What the models generate") < \
        report.index("## Verdicts per grid value")
    # each cell's forecast table, as its report stage wrote it
    for cell in (good, short):
        own = json.loads((study_runs["root"] / cell / "data" / "metrics" / "details.json").read_text())["forecasts"]
        got = tables["forecasts"][tables["forecasts"].unit == cell]
        assert got.predictor.tolist() == [r["predictor"] for r in own] and len(own) > 2
        assert np.allclose(got.spearman, [r["spearman"] for r in own]) and (got.seeds == "[1]").all()
        assert f"## Forecasting forgetting before fine-tuning: {cell}, seeds [1]" in report
    # each cell's sample grid, the figure of its own report, beside the study's numbers
    for cell in (good, short):
        own = (study_runs["root"] / cell / "data" / "report" / "plots" / "samples.png").read_bytes()
        assert (study_runs["root"] / "results" / "samples" / f"{cell}.png").read_bytes() == own
        assert (study_runs["root"] / "report" / "plots" / "samples" / f"{cell}.png").read_bytes() == own
        assert f"![samples of {cell}](plots/samples/{cell}.png)" in report
    assert sorted(p.stem for p in (study_runs["root"] / "results" / "samples").iterdir()) == sorted([good, short])
    assert report.index("## What the models generate") < report.index("## Sample grids") < report.index(
        "## Verdicts per grid value")


@pytest.mark.slow
def test_a_rerun_recomputes_nothing_and_respects_the_concurrency_limit(study_runs):
    second, short = study_runs["second"], study_runs["short"]
    cells = second["cells"]
    good, bad = cell_of(cells, GOOD), cell_of(cells, BAD)
    assert second["proc"].returncode == 1
    for cell in (good, short):
        assert cells.at[cell, "status"] == "completed" and json.loads(cells.at[cell, "ran"]) == []
        assert "Running stage" not in second["logs"][cell]
        assert cells.at[cell, "experiment"] == "kept"  # the experiment from the first run stands
    assert cells.at[good, "workspace_state"] == "reused" and cells.at[short, "workspace_state"] == "created"
    assert cells.at[short, "restored"] == 16  # every stage (generate, control, regime, forecast too) from the run-cache
    assert "is cached - skipping run" in second["logs"][short]
    assert cells.at[bad, "status"] == "failed" and cells.at[bad, "attempts"] == 2
    (s1, f1), (s2, f2) = cells.loc[[good, short], ["started", "finished"]].to_numpy()
    assert min(f1, f2) <= max(s1, s2)  # --max-parallel 1: one cell at a time
    assert second["exps"] == study_runs["first"]["exps"]
    assert second["tables"]["verdicts"].equals(study_runs["first"]["tables"]["verdicts"])


# ------------------------------------------------------------------------------------------------ publishing
def publish(*args):
    cmd = [sys.executable, "-m", "tools.publish_study", *map(str, args)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_a_study_with_a_failed_cell_is_not_published(study_runs, tmp_path):
    root, out = study_runs["root"], tmp_path / "published"
    bad = cell_of(study_runs["first"]["cells"], BAD)
    proc = publish(study_runs["project"].parent / "studies" / "e2e.yaml", "--results", root / "results", "--out", out)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"cell {bad} did not complete (failed); run the study again" in proc.stderr and not out.exists()


@pytest.mark.slow
def test_a_published_study_is_its_tables_without_machine_paths_and_a_report_made_from_them(study_runs, tmp_path):
    from tools.publish_study import PRIVATE, published_report
    from tools.render_results import render_study

    root, out = study_runs["root"], tmp_path / "published"
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    cells = pd.read_parquet(results / "cells.parquet")
    done = cells[cells["status"] == "completed"]
    from hopfield_replay.io.tables import read_meta, write_table

    write_table(done, results / "cells.parquet", table="study_cells", meta=read_meta(root / "results" / "cells.parquet"))
    proc = publish(study_runs["project"].parent / "studies" / "e2e.yaml", "--results", results, "--out", out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["agreement.parquet", "arms.parquet", "cells.parquet",
                                                    "forecasts.parquet", "generation.parquet", "learned.parquet",
                                                    "plots", "report.md", "verdicts.parquet"]
    published = pd.read_parquet(out / "cells.parquet")
    assert not set(PRIVATE) & set(published.columns) and published["cell"].tolist() == done["cell"].tolist()
    assert published["prepare.task_b"].tolist() == done["prepare.task_b"].tolist()
    for table in ("verdicts", "arms", "agreement", "generation", "learned", "forecasts"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / f"{table}.parquet"), study_runs["first"]["tables"][table])
    report = (out / "report.md").read_text()
    assert report == published_report(out)
    assert "2 cells" in report and "None: every cell completed." in report and "## Replay arms against random" in report
    for path in out.rglob("*"):  # nothing names this machine's folders
        if path.is_file() and path.suffix in (".md", ".parquet"):
            text = path.read_bytes()
            assert str(tmp_path).encode() not in text and str(study_runs["project"]).encode() not in text, path
    assert (out / "plots" / "arms.png").stat().st_size > 5000 and (out / "plots" / "effects.png").is_file()
    for cell in done["cell"]:  # the sample grids travel with the tables, and the report shows them
        assert (out / "plots" / "samples" / f"{cell}.png").read_bytes() == (results / "samples" / f"{cell}.png").read_bytes()
        assert f"![samples of {cell}](plots/samples/{cell}.png)" in report
    readme = render_study(out)
    verdicts = study_runs["first"]["tables"]["verdicts"]
    for cell in done["cell"]:
        claim2 = verdicts[(verdicts.unit == cell) & (verdicts.claim == "claim2")]["verdict"].iloc[0]
        value = done.set_index("cell").at[cell, "prepare.task_b"]
        assert f"| {value} | **{claim2}** |" in readme
    assert "What the models generate: " in readme and "claim 2 in the task-A share of their samples" in readme
    assert "Best forecast made before fine-tuning: " in readme and "of the seed ceiling" in readme


def test_publishing_without_results_or_with_a_damaged_table_is_one_line_and_writes_nothing(tmp_path):
    from hopfield_replay.io.tables import write_table

    study = write_study(tmp_path / "studies" / "s.yaml", grid={"seeds": [[1], [2]]})
    out = tmp_path / "published"
    proc = publish(study, "--results", tmp_path / "none", "--out", out)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "run the study first" in proc.stderr
    results = tmp_path / "results"
    write_table(pd.DataFrame({"cell": ["a", "b"], "status": ["completed"] * 2, "seeds": ["[1]", "[2]"],
                              "workspace": ["/x/a", "/x/b"]}), results / "cells.parquet", table="study_cells",
                meta={"study": "s", "commit": "0" * 40})
    (results / "verdicts.parquet").write_bytes(b"not parquet")
    proc = publish(study, "--results", results, "--out", out)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert f"{results / 'verdicts.parquet'}: not a readable Parquet table" in proc.stderr and not out.exists()
    assert not list(tmp_path.glob(".published*"))  # no half-written folder beside it


def test_the_committed_published_studies_are_their_tables():
    from tools.publish_study import PRIVATE, PUBLISHED, published_report
    from tools.render_results import STUDIES_BEGIN, STUDIES_END, render_studies, splice

    folders = sorted(p.parent for p in (ROOT / PUBLISHED).glob("*/cells.parquet"))
    for folder in folders:
        assert (folder / "report.md").read_text() == published_report(folder), f"{folder}: rerun tools.publish_study"
        assert not set(PRIVATE) & set(pd.read_parquet(folder / "cells.parquet").columns)
        assert (ROOT / "studies" / f"{folder.name}.yaml").is_file()  # its study file is committed beside it
    results = (ROOT / "docs" / "results.md").read_text()
    section = render_studies(ROOT / PUBLISHED)
    assert splice(results, section, STUDIES_BEGIN, STUDIES_END) == results, "run python -m tools.render_results"


def test_the_arms_figure_shows_every_arm_against_random_and_the_class_control(tmp_path):
    arms = pd.DataFrame([{"unit": "a", "budget": 5, "measure": m, "strategy": s, "reference": r, "effect": e,
                          "lo": e - 0.1, "hi": e + 0.1}
                         for m in ("absolute", "relative")
                         for s, r, e in (("energy_high", "random", -0.2), ("energy_high", "none", 0.3),
                                         ("random", "none", 0.5), ("energy_high_per_class", "random", -0.1),
                                         ("energy_high_per_class", "class_balanced", -0.25),
                                         ("class_balanced", "random", 0.05))])
    rows = arm_plot_rows(arms)
    assert sorted(set(rows["strategy"])) == ["class_balanced", "energy_high", "energy_high_per_class",
                                             "energy_high_per_class vs class_balanced"]
    control = rows[rows["strategy"] == "energy_high_per_class vs class_balanced"]
    assert len(control) == 2 and (control["effect"] == -0.25).all()  # both measures, the control's own effect
    assert plot_arms(arms, tmp_path / "arms.png").stat().st_size > 5000


def test_study_report_shows_seeds_once_when_seeds_is_a_grid_key():
    """A study whose grid varies `seeds` (one cell over five seeds) shows the seeds column once, not twice."""
    rows = [{"unit": "c", "seeds": "[1, 2]", "claim": claim, "verdict": "fails", "measure": m,
             "measure_verdict": "fails", "effect": -0.1, "lo": -0.2, "hi": -0.05, "statement": ""}
            for claim in ("claim1", "claim2", "replay_helps", "ceiling_wins", "class_control")
            for m in ("absolute", "relative")]
    grid = pd.DataFrame({"seeds": ["[1, 2]"], "select_replay.arms": ['["random"]']}, index=["c"])
    report = study_markdown("s", None, "0" * 10, grid, pd.DataFrame({"cell": ["c"], "status": ["completed"]}),
                            pd.DataFrame(rows))
    for section in ("## Verdicts per cell", "## Design checks"):
        head = report.split(section)[1].split("\n| ")[1].split(" |")
        assert [c.strip() for c in head].count("seeds") == 1, head
        assert "select_replay.arms" in [c.strip() for c in head]
    assert "| c | [1, 2] | [\"random\"] | **fails** | -0.100 [-0.200, -0.050]" in report
