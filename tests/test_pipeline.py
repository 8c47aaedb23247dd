"""The real pipeline: `dvc repro` of every stage on the tiny config (2 seeds) in a temporary git repo, then DVC's
experiment, params, metrics and status commands, a third seed that trains only its own runs, and the Prefect flow
under prefect_test_harness."""

from __future__ import annotations

import json
import shutil
import sys

import pandas as pd
import pytest
import torch
import yaml

from hopfield_replay.analysis.verdicts import VERDICTS
from hopfield_replay.io.tables import SCHEMAS, read_meta
from tests.conftest import run, write_params
from tests.test_concurrent_stages import most_at_once

pytestmark = pytest.mark.slow

KIND = {
    "int64": pd.api.types.is_integer_dtype,
    "float64": pd.api.types.is_float_dtype,
    "bool": pd.api.types.is_bool_dtype,
    "object": lambda s: pd.api.types.is_string_dtype(s) or pd.api.types.is_object_dtype(s),
}


def reset(project):
    """Back to the committed params, lock and outputs (the tests share one reproduced project)."""
    run(["git", "checkout", "--", "."], project)  # params.yaml, dvc.lock and the uncached metrics
    run(["git", "clean", "-fdq", "--", "data/metrics", "dvc_plots"], project)  # and what `dvc plots show` wrote
    run(["dvc", "checkout", "--force", "-q"], project)
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {}


def ran_stages(stdout: str) -> list[str]:
    return [line.split("'")[1] for line in stdout.splitlines() if line.startswith("Running stage")]


def test_dvc_repro_writes_every_table(tiny_project, tiny_params):
    tables = tiny_project / "data" / "tables"
    prep, sel, seeds = tiny_params["prepare"], tiny_params["select_replay"], tiny_params["seeds"]
    n_per_task = 5 * prep["max_per_class"]
    n_t = len(tiny_params["forgetting"]["timesteps"])
    n_arms = len(sel["arms"]) * len(sel["budgets"])
    expected_rows = {
        "samples": 2 * n_per_task,
        "scores": n_per_task,
        "forgetting": len(seeds) * n_per_task * n_t,
        "selection": len(seeds) * len(sel["arms"]) * sum(sel["budgets"]),
        "replay_forgetting": len(seeds) * (n_arms + 1) * n_per_task * n_t,
        "control": n_per_task * n_t,
        "regime": n_per_task * n_t,
        "forecast": n_per_task,
    }
    for name, rows in expected_rows.items():
        df = pd.read_parquet(tables / f"{name}.parquet")
        assert len(df) == rows, name
        for col, dtype in SCHEMAS[name].items():
            assert col in df.columns, (name, col)
            assert KIND[dtype](df[col]), (name, col, df[col].dtype)
        meta = read_meta(tables / f"{name}.parquet")
        assert meta["table"] == name and len(meta["params_hash"]) == 16 and "torch" in meta["versions"]
        assert meta["device"] == "cpu"  # the device kind, no thread count
    samples = pd.read_parquet(tables / "samples.parquet")
    scores = pd.read_parquet(tables / "scores.parquet")
    assert set(scores.sample_id) == set(samples.loc[samples.task == "A", "sample_id"])
    assert (scores.energy_rise - (scores.energy_b - scores.energy_a)).abs().max() < 1e-9
    for column in ("energy_a_beta0p3x", "energy_a_beta3x", "energy_a_snr_t100", "energy_a_snr_t500", "knn1_dist",
                   "knn3_dist", "kde_neglogdensity", "dist_class_mean", "dist_global_mean", "pixel_norm",
                   "recon_error_a_t100", "recon_error_a_t500", "model_energy"):
        assert column in scores and scores[column].notna().all(), column
    forgetting = pd.read_parquet(tables / "forgetting.parquet")
    assert sorted(forgetting.seed.unique()) == seeds
    # error_a is the scores stage's task-A error, shared by every seed; error differs by seed (other training)
    merged = forgetting[forgetting.t == 100].merge(scores[["sample_id", "recon_error_a_t100"]], on="sample_id")
    assert (merged.error_a == merged.recon_error_a_t100).all()
    by_seed = forgetting.pivot_table(index=["sample_id", "t"], columns="seed", values="error")
    assert (by_seed[seeds[0]] != by_seed[seeds[1]]).any()
    replay = pd.read_parquet(tables / "replay_forgetting.parquet")
    assert set(replay.strategy) == set(sel["arms"]) | {"none"}
    selection = pd.read_parquet(tables / "selection.parquet")
    for (arm, budget, seed), g in selection.groupby(["strategy", "budget", "seed"]):
        flagged = set(replay.loc[(replay.strategy == arm) & (replay.budget == budget) & (replay.seed == seed)
                                 & replay.replayed, "sample_id"])
        assert flagged == set(g.sample_id)
        assert (tiny_project / "data" / "selection" / f"seed{seed}" / f"{arm}-{budget}.parquet").is_file()
    random = selection[selection.strategy == "random"]
    assert set(random[random.seed == seeds[0]].sample_id) != set(random[random.seed == seeds[1]].sample_id)
    for seed in seeds:
        assert (tiny_project / "data" / "models" / "task_b" / f"seed{seed}" / "unet" / "config.json").is_file()
    verdicts = json.loads((tiny_project / "data" / "metrics" / "verdicts.json").read_text())
    assert {verdicts["claim1"]["verdict"], verdicts["claim2"]["verdict"]} <= set(VERDICTS)
    details = json.loads((tiny_project / "data" / "metrics" / "details.json").read_text())
    assert details["verdicts"]["claim1"]["verdict"] == verdicts["claim1"]["verdict"]
    predictors = {r["predictor"]: r for r in details["relative"]["predictors"]}
    assert {"energy_a", "pixel_mass", "recon_error_a", "knn1_dist"} <= set(predictors)
    assert predictors["energy_a"]["covariates"] == "pixel_mass,recon_error_a"
    assert all(r["n_seeds"] == len(seeds) for r in details["absolute"]["arms"])
    report = (tiny_project / "data" / "report" / "report.md").read_text()
    assert (report.index("## Verdicts") < report.index("## Can this run show a replay effect?")
            < report.index("## Predictors") < report.index("## Replay arms"))
    assert set(details["checks"]) == {"replay_helps", "ceiling_wins", "class_control"}
    assert details["run"]["train_a_seed"] == 0
    for png in ("predictors.png", "energy_vs_forgetting.png", "arms_by_decile.png", "energy_extremes.png",
                "forecasts.png"):
        assert (tiny_project / "data" / "report" / "plots" / png).stat().st_size > 5000
    # the controls and the forecasts: the control's error_a is model A's, its error the continued model's
    control = pd.read_parquet(tables / "control.parquet").merge(forgetting[forgetting.seed == seeds[0]],
                                                                 on=["sample_id", "t"], suffixes=("", "_b"))
    assert (control.error_a == control.error_a_b).all() and (control.error != control.error_b).any()
    forecast = pd.read_parquet(tables / "forecast.parquet")
    steps = max(1, round(tiny_params["forecast"]["probe_fractions"][0] * tiny_params["train_b"]["steps"]))
    assert list(forecast.columns) == ["sample_id", "label", "proximity_b", "grad_dot", "grad_cos", f"probe_{steps}",
                                      "proximity_b_classifier"]
    assert set(forecast.sample_id) == set(scores.sample_id)
    assert report.index("## Are the models learned?") < report.index("## Has model A converged?") < report.index(
        "## Verdicts") and "## Forecasting forgetting before fine-tuning" in report
    assert {r["predictor"] for r in details["forecasts"]} == {*forecast.columns[2:], "energy_a"}
    assert {r["measure"] for r in details["controls"]["continued_training"]} == {"absolute", "relative"}
    assert all(r["cost"] is not None for r in details["forecasts"] if r["forecast"])
    # every training run's curves (dvclive), and the report's curves section and figure
    curves = tiny_project / "data" / "curves"
    runs = ["task_a", "control_a", *(f"task_b/seed{s}" for s in seeds),
            *(f"retrain/seed{s}/{a}-{b}" for s in seeds for a in sel["arms"] for b in sel["budgets"])]
    every, steps_b = tiny_params["curves"]["every"], tiny_params["train_b"]["steps"]
    for name in runs:
        summary = json.loads((curves / name / "metrics.json").read_text())
        tasks = ["task_a"] if name in ("task_a", "control_a") else ["task_a", "task_b"]
        assert set(summary) == {"step", "train_loss", *(f"eval_{t}" for t in tasks)}, name
    b_curve = (curves / f"task_b/seed{seeds[0]}/plots/metrics/eval_task_a.tsv").read_text().split("\n")
    assert [int(line.split("\t")[0]) for line in b_curve[1:] if line] == sorted({*range(0, steps_b + 1, every), steps_b})
    assert {(r["model"], r["metric"]) for r in details["controls"]["training_curves"]} >= {
        ("task_a", "eval_task_a"), (f"task_b/seed{seeds[0]}", "eval_task_a")}
    assert "## Has model A converged?" in report and "- Model A: task-A loss" in report
    assert (tiny_project / "data" / "report" / "plots" / "training_curves.png").stat().st_size > 5000


def test_repro_is_up_to_date_after_a_run(tiny_project):
    """Nothing left to run after `dvc repro` (the determinism of a rerun: the fresh-clone test below)."""
    status = run(["dvc", "status", "--json"], tiny_project)
    assert json.loads(status.stdout) == {}
    assert ran_stages(run(["dvc", "repro"], tiny_project).stdout) == []


def test_dvc_commands_work(tiny_project):
    plots = run(["dvc", "plots", "show", "--json"], tiny_project)
    assert "predictors.png" in plots.stdout
    assert "data/curves/task_a/plots/metrics/eval_task_a.tsv" in plots.stdout  # the training curves, per run
    assert list((tiny_project / "dvc_plots").glob("*predictors.png"))  # the images the JSON points to
    metrics = run(["dvc", "metrics", "show"], tiny_project)
    assert "claim1.verdict" in metrics.stdout and "eval_task_a" in metrics.stdout  # verdicts and training curves
    shown = json.loads(run(["dvc", "metrics", "show", "--json"], tiny_project).stdout)
    verdicts = next(v["data"]["data/metrics/verdicts.json"]["data"] for v in shown.values())
    flat = pd.json_normalize(verdicts).columns
    assert len(flat) <= 12, list(flat)  # the headline stays one short row; the rest is in details.json
    exp = run(["dvc", "exp", "run", "-S", "report.deciles=4"], tiny_project)
    assert ran_stages(exp.stdout) == ["report"], exp.stdout
    diff = run(["dvc", "params", "diff", "--json"], tiny_project)
    assert json.loads(diff.stdout)["params.yaml"]["report.deciles"]["new"] == 4
    reset(tiny_project)
    # A new budget only adds arms: the existing arms stay up to date.
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["select_replay"]["budgets"] = params["select_replay"]["budgets"] + [15]
    write_params(tiny_project / "params.yaml", params)
    run(["dvc", "repro", "--single-item", "select_replay"], tiny_project)
    status = json.loads(run(["dvc", "status", "--json"], tiny_project).stdout)
    retrain = {k.split(":")[-1] for k in status if "retrain@" in k}
    assert retrain == {f"retrain@{s}-{a}-15" for s in params["seeds"] for a in params["select_replay"]["arms"]}, status
    reset(tiny_project)


def test_class_stratified_arms_through_the_select_replay_stage(tiny_project, tmp_path):
    """The stage on the reproduced tables with the class-stratified arms: every class gets budget / classes samples,
    energy_high_per_class takes each class's top energies, oracle_per_class each class's most forgotten."""
    from hopfield_replay.measures.forgetting import per_sample

    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["select_replay"]["arms"] = ["energy_high_per_class", "oracle_per_class", "pixel_mass_low_per_class"]
    write_params(tmp_path / "params.yaml", params)
    data = tiny_project / "data"
    run([sys.executable, "-m", "stages.select_replay", "--params", str(tmp_path / "params.yaml"),
         "--scores", str(data / "tables/scores.parquet"), "--forecast", str(data / "tables/forecast.parquet"),
         "--forgetting", str(data / "tables/forgetting.parquet"),
         "--x0", str(data / "prepared/model_space.safetensors"), "--samples", str(data / "tables/samples.parquet"),
         "--out", str(tmp_path / "selection.parquet"), "--out-dir", str(tmp_path / "selection")], tiny_project)
    selection = pd.read_parquet(tmp_path / "selection.parquet")
    scores = pd.read_parquet(data / "tables/scores.parquet").set_index("sample_id")
    forgetting = pd.read_parquet(data / "tables/forgetting.parquet")
    budget, classes = params["select_replay"]["budgets"][0], sorted(params["prepare"]["task_a"])
    per_class = budget // len(classes)
    for (arm, seed), buffer in selection.groupby(["strategy", "seed"]):
        labels = scores.loc[buffer.sample_id, "label"]
        assert labels.value_counts().to_dict() == {c: per_class for c in classes}, (arm, seed)
        assert labels.tolist()[:len(classes)] == classes  # round-robin in ascending label
        column = {"energy_high_per_class": "energy_a", "pixel_mass_low_per_class": "pixel_mass"}.get(arm)
        key = (scores[column] if column else per_sample(forgetting, "relative", seed=seed)["agg"]).rename("key")
        key = key if arm != "pixel_mass_low_per_class" else -key
        expected = scores[["label"]].join(key).reset_index().sort_values(["key", "sample_id"], ascending=[False, True])
        expected = expected.groupby("label").head(per_class)
        assert set(buffer.sample_id) == set(expected.sample_id), (arm, seed)
    assert set(selection.strategy) == set(params["select_replay"]["arms"])


def test_a_third_seed_trains_only_its_own_runs(tiny_project):
    """A seed added: `dvc repro select_replay` trains task B for it alone (and redoes the cheap per-seed tables);
    then, with the new selection recorded, the only retrain items left to run are the new seed's."""
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["seeds"] = params["seeds"] + [7]
    write_params(tiny_project / "params.yaml", params)
    ran = ran_stages(run(["dvc", "repro", "select_replay"], tiny_project).stdout)
    assert {s for s in ran if s.startswith(("train_a", "train_b@", "retrain@"))} == {"train_b@7"}, ran
    assert {"forgetting", "select_replay"} <= set(ran)
    status = json.loads(run(["dvc", "status", "--json"], tiny_project).stdout)
    retrain = {k.split(":")[-1] for k in status if "retrain@" in k}
    assert retrain == {f"retrain@7-{a}-{b}" for a in params["select_replay"]["arms"]
                       for b in params["select_replay"]["budgets"]}, status
    shutil.rmtree(tiny_project / "data" / "models" / "task_b" / "seed7")  # an output of a stage the reset drops
    reset(tiny_project)


def test_prefect_flow_runs_each_stage_as_a_task(tiny_project):
    from prefect.testing.utilities import prefect_test_harness

    from flows.pipeline import dvc_stages, pipeline

    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["report"]["grid"] = 3  # only report depends on this
    write_params(tiny_project / "params.yaml", params)
    grid = tiny_project / "data" / "report" / "plots" / "energy_extremes.png"
    before = grid.read_bytes()
    with prefect_test_harness(server_startup_timeout=180):
        results = pipeline(repo_root=str(tiny_project))
        assert list(results) == dvc_stages(tiny_project)
        assert results["report"] == "ran"
        assert all(v == "up to date" for k, v in results.items() if k != "report")
        assert pipeline(repo_root=str(tiny_project)) == {k: "up to date" for k in results}
    assert grid.read_bytes() != before  # the report really was rebuilt with the new grid size
    reset(tiny_project)


def test_a_fresh_clone_reproduces_the_committed_outputs_byte_for_byte(tiny_project, tmp_path):
    """What `make run` does on a fresh clone (no DVC cache: every stage runs again), with the items of train_b and
    retrain two at a time (`--per-device 2`), leaves `git status` clean: the same dvc.lock hashes as the fixture's
    `dvc repro`, so the same bytes in every output, and in every file git tracks (metrics, figures). This is the
    suite's determinism check: same params and seed on the same device, the same bytes."""
    clone = tmp_path / "clone"
    run(["git", "clone", "-q", str(tiny_project), str(clone)], tmp_path)
    flow = run([sys.executable, "-m", "flows.pipeline", "--repo-root", str(clone), "--per-device", "2"], clone)
    out = flow.stdout + flow.stderr
    assert "Running stage 'train_a'" in out  # really recomputed
    assert "Stage 'train_b': 2 of 2 items to run, 2 at a time." in out
    assert "Stage 'retrain': 6 of 6 items to run, 2 at a time." in out
    assert "restored from DVC's run-cache" not in out  # a fresh clone has no cache
    if not torch.cuda.is_available():
        assert "No GPU: the items share the CPU cores" in out  # the warning: slower than one at a time there
    assert most_at_once(out, "retrain") == 2  # side by side: two items at once, never more
    assert run(["git", "status", "--porcelain"], clone).stdout == ""
    assert json.loads(run(["dvc", "status", "--json"], clone).stdout) == {}
