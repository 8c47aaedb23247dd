"""The real pipeline: `dvc repro` of every stage on the tiny config in a temporary git repo, then DVC's
experiment, params, metrics and status commands, and the Prefect flow under prefect_test_harness."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from hopfield_replay.tables import SCHEMAS, read_meta
from tests.conftest import run, write_params

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
    run(["dvc", "checkout", "--force", "-q"], project)
    assert json.loads(run(["dvc", "status", "--json"], project).stdout) == {}


def test_dvc_repro_writes_every_table(tiny_project, tiny_params):
    tables = tiny_project / "data" / "tables"
    prep = tiny_params["prepare"]
    n_per_task = 5 * prep["max_per_class"]
    sel = tiny_params["select_replay"]
    n_t = len(tiny_params["forgetting"]["timesteps"])
    n_arms = len(sel["strategies"]) * len(sel["budgets"])
    expected_rows = {
        "samples": 2 * n_per_task,
        "energies": n_per_task,
        "forgetting": n_per_task * n_t,
        "selection": len(sel["strategies"]) * sum(sel["budgets"]),
        "replay_forgetting": (n_arms + 1) * n_per_task * n_t,
    }
    for name, rows in expected_rows.items():
        df = pd.read_parquet(tables / f"{name}.parquet")
        assert len(df) == rows, name
        for col, dtype in SCHEMAS[name].items():
            assert col in df.columns, (name, col)
            assert KIND[dtype](df[col]), (name, col, df[col].dtype)
        meta = read_meta(tables / f"{name}.parquet")
        assert meta["table"] == name and len(meta["params_hash"]) == 16 and "torch" in meta["versions"]
        assert meta["device"].startswith("cpu")
    samples = pd.read_parquet(tables / "samples.parquet")
    assert samples["sample_id"].is_unique
    assert set(samples.loc[samples.task == "A", "label"]) == set(prep["task_a"])
    energies = pd.read_parquet(tables / "energies.parquet")
    assert set(energies.sample_id) == set(samples.loc[samples.task == "A", "sample_id"])
    assert (energies.energy_rise - (energies.energy_b - energies.energy_a)).abs().max() < 1e-9
    replay = pd.read_parquet(tables / "replay_forgetting.parquet")
    assert set(replay.strategy) == set(sel["strategies"]) | {"none"}
    # Every arm's replayed flags match its buffer in the selection table.
    selection = pd.read_parquet(tables / "selection.parquet")
    for (strategy, budget), g in selection.groupby(["strategy", "budget"]):
        flagged = set(replay.loc[(replay.strategy == strategy) & (replay.budget == budget) & replay.replayed, "sample_id"])
        assert flagged == set(g.sample_id)
    for model in ("task_a", "task_b"):
        assert (tiny_project / "data" / "models" / model / "unet" / "config.json").is_file()
    metrics = json.loads((tiny_project / "data" / "metrics" / "report.json").read_text())
    assert set(metrics["arms"]) == {"none-0"} | {f"{s}-{b}" for s in sel["strategies"] for b in sel["budgets"]}
    assert -1 <= metrics["spearman"]["energy_a"]["mean"]["rho"] <= 1
    report = tiny_project / "data" / "report"
    assert (report / "report.md").read_text().count("![") == 3
    for png in ("energy_vs_forgetting.png", "arms_by_decile.png", "energy_extremes.png"):
        assert (report / "plots" / png).stat().st_size > 5000


def test_repro_is_deterministic_and_then_up_to_date(tiny_project):
    status = run(["dvc", "status", "--json"], tiny_project)
    assert json.loads(status.stdout) == {}
    again = run(["dvc", "repro"], tiny_project)
    assert "Running stage" not in again.stdout
    # Same params and seed on the same device: rerunning training and the energy gives identical outputs.
    weights = tiny_project / "data" / "models" / "task_a" / "unet" / "diffusion_pytorch_model.safetensors"
    before = {p: p.read_bytes() for p in (weights, tiny_project / "data" / "tables" / "energies.parquet")}
    for stage in ("train_a", "energy"):
        run(["dvc", "repro", "--force", "--single-item", stage], tiny_project)
    for path, old in before.items():
        assert path.read_bytes() == old, path.name
    assert json.loads(run(["dvc", "status", "--json"], tiny_project).stdout) == {}


def test_dvc_commands_work(tiny_project):
    plots = run(["dvc", "plots", "show", "--json"], tiny_project)
    assert "energy_vs_forgetting.png" in plots.stdout
    metrics = run(["dvc", "metrics", "show", "--json"], tiny_project)
    assert "spearman" in metrics.stdout
    exp = run(["dvc", "exp", "run", "-S", "report.deciles=4"], tiny_project)
    assert json.loads((tiny_project / "data" / "metrics" / "report.json").read_text())["forgetting_by_energy_decile"].keys() == {"d0", "d1", "d2", "d3"}
    ran = [line for line in exp.stdout.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'report':"], exp.stdout
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
    assert retrain == {f"retrain@{s}-15" for s in params["select_replay"]["strategies"]}, status
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
