"""The same DVC pipeline switched to Stable Diffusion by ``model.family: sd``: a real `dvc repro` (prepare -> encode
-> train_a -> scores -> train_b -> forgetting -> select_replay -> retrain -> evaluate -> report) on a tiny
random-weight SD pipeline built offline, and one-line errors of the stage command lines on bad SD input (slow).
The profile tool (`python -m tools.profile`) is tested in tests/test_profile.py."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch

from hopfield_replay.energy import hopfield_energy
from hopfield_replay.models.tiny_sd import build_tiny_sd_pipeline
from hopfield_replay.io.tables import load_tensors, read_meta
from tests.conftest import make_project, run, shipped_section, write_params

RES = 16  # the tiny VAE downsamples by 2: latents (4, 8, 8)
LATENT = (4, RES // 2, RES // 2)


def sd_params(tiny_params: dict, pretrained) -> dict:
    """The tiny DDPM test config with the model switched to SD, one seed and two replay arms (fast on 2 cores)."""
    params = json.loads(json.dumps(tiny_params))
    params["model"] = shipped_section("model", family="sd", sd={"pretrained": str(pretrained), "resolution": RES,
                                                                "encode_batch_size": 64})
    params["seeds"] = [1]
    params["select_replay"] = shipped_section("select_replay", arms=["energy_high", "random"], budgets=[10],
                                              score="energy_a")
    return params


@pytest.fixture(scope="module")
def one_thread_env():
    """Stage subprocesses with one OpenMP thread: tiny ops on a shared 2-core machine are much slower with two
    threads spinning against other processes. Only this module's subprocesses; restored afterwards."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("OMP_NUM_THREADS", "1")
        yield


@pytest.fixture(scope="module")
def tiny_sd(tmp_path_factory):
    path = tmp_path_factory.mktemp("sd") / "tiny-sd"
    build_tiny_sd_pipeline(path, resolution=RES, seed=0)
    return path


@pytest.fixture(scope="module")
def sd_project(tmp_path_factory, tiny_params, tiny_sd, one_thread_env):
    project = make_project(tmp_path_factory.mktemp("sdproj") / "project", sd_params(tiny_params, tiny_sd))
    run(["dvc", "repro", "report"], project)  # the diffusion pipeline (not the separate mhn_* experiments)
    return project


@pytest.mark.slow
def test_dvc_repro_runs_the_whole_sd_pipeline_on_latents(sd_project, tiny_params):
    tables = sd_project / "data" / "tables"
    n = 5 * tiny_params["prepare"]["max_per_class"]
    n_t = len(tiny_params["forgetting"]["timesteps"])
    expected_rows = {"samples": 2 * n, "scores": n, "forgetting": n * n_t, "selection": 20,
                     "replay_forgetting": 3 * n * n_t}  # the no-replay arm + energy_high-10 + random-10
    for name, rows in expected_rows.items():
        assert len(pd.read_parquet(tables / f"{name}.parquet")) == rows, name

    # encode: frozen-VAE latents of every sample, in sample_id order, with their provenance
    space = sd_project / "data" / "prepared" / "model_space.safetensors"
    x0 = load_tensors(space)
    images = load_tensors(sd_project / "data" / "prepared" / "images.safetensors")
    assert tuple(x0["x0"].shape) == (2 * n, *LATENT)
    assert torch.equal(x0["sample_id"], images["sample_id"])
    from hopfield_replay.io.tables import tensor_meta

    meta = tensor_meta(space)
    assert meta["family"] == "sd" and meta["space"] == "latents" and meta["shape"] == list(LATENT)
    assert meta["class_names"] == [str(i) for i in range(10)]  # digits: the label numbers

    # scores: the same hopfield_energy on the flattened latents, with the recorded beta; latent statistics too
    energies = pd.read_parquet(tables / "scores.parquet").sort_values("sample_id")
    assert read_meta(tables / "scores.parquet")["table"] == "scores"
    assert {"latent_mass", "latent_norm", "pixel_mass"} <= set(energies.columns)
    samples = pd.read_parquet(tables / "samples.parquet")
    ids_a = samples.loc[samples.task == "A", "sample_id"].sort_values().to_numpy()
    pos = {int(s): i for i, s in enumerate(x0["sample_id"].tolist())}
    z_a = x0["x0"][[pos[int(s)] for s in ids_a]].flatten(1)
    expected = hopfield_energy(z_a, z_a, float(energies["beta"].iloc[0]), form="distance", exclude_self=True).double()
    assert torch.allclose(torch.tensor(energies["energy_a"].to_numpy().copy()), expected, rtol=1e-5, atol=1e-6)
    assert energies["model_energy"].notna().all()

    # every model is the SD family: the fine-tuned UNet saved, the frozen VAE and text encoder referenced
    for model in ("task_a", "task_b/seed1", "retrain/seed1/energy_high-10"):
        folder = sd_project / "data" / "models" / model
        info = json.loads((folder / "hopfield_replay_model.json").read_text())
        assert info["family"] == "sd" and info["resolution"] == RES
        assert (folder / "unet" / "config.json").is_file() and not (folder / "vae").exists()
    replay = pd.read_parquet(tables / "replay_forgetting.parquet")
    assert set(replay.strategy) == {"none", "energy_high", "random"} and replay["relative"].notna().all()
    # forecasts in latent space: proximity to task B among the latents (brute force here), the gradient and probe
    # forecasts of the SD UNet, evaluated in the report as claim 1's predictors are
    forecast = pd.read_parquet(tables / "forecast.parquet").set_index("sample_id").loc[ids_a]
    z_b = x0["x0"][[pos[int(s)] for s in samples.loc[samples.task == "B", "sample_id"]]].flatten(1).double()
    k = tiny_params["forecast"]["knn_k"]
    nearest = torch.cdist(z_a.double(), z_b).sort(1).values[:, :k].mean(1)
    assert np.allclose(forecast["proximity_b"], -nearest.numpy(), rtol=1e-6)
    probes = [c for c in forecast.columns if c.startswith("probe_")]
    assert probes and forecast[["grad_dot", *probes]].std().gt(0).all() and np.isfinite(forecast.to_numpy()).all()
    report = (sd_project / "data" / "report" / "report.md").read_text()
    details = json.loads((sd_project / "data" / "metrics" / "details.json").read_text())
    assert {r["kind"] for r in details["forecasts"] if r["forecast"]} == {"forecast"}
    assert "## Forecasting forgetting before fine-tuning" in report
    assert report.startswith("# hopfield-replay")
    status = json.loads(run(["dvc", "status", "--json", "report"], sd_project).stdout)
    assert status == {}


def stage(project, module, params, *args):
    """Run a stage's command line with its own params file; (returncode, stderr)."""
    path = write_params(project / f"bad-{module}.yaml", params)
    proc = subprocess.run([sys.executable, "-m", f"stages.{module}", "--params", str(path), *args], cwd=project,
                          capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stderr


def assert_one_line_error(code, stderr, field):
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert code == 2, stderr[-2000:]
    assert len(errors) == 1 and field in errors[0], stderr[-2000:]
    assert "Traceback" not in stderr


@pytest.mark.slow
@pytest.mark.parametrize("case, field", [
    ("missing", "model.sd.pretrained: "),
    ("not_a_pipeline", "model.sd.pretrained: "),
    ("resolution", "model.sd.resolution: "),  # checked with the whole params file, before anything is read
    ("template", "model.sd.prompt_template: "),
])
def test_encode_rejects_bad_sd_input_in_one_line(sd_project, tiny_params, tiny_sd, case, field):
    params = sd_params(tiny_params, tiny_sd)
    sd = params["model"]["sd"]
    if case == "missing":
        sd["pretrained"] = str(sd_project / "no-such-model")
    elif case == "not_a_pipeline":
        sd["pretrained"] = str(sd_project / "data" / "models" / "task_a")  # a model folder, not a pipeline
    elif case == "resolution":
        sd["resolution"] = 12
    else:
        sd["prompt_template"] = "a photo"
    out = sd_project / f"bad-{case}.safetensors"
    code, stderr = stage(sd_project, "encode", params, "--images", "data/prepared/images.safetensors", "--out", str(out))
    assert_one_line_error(code, stderr, field)
    assert not out.exists() and not list(sd_project.glob(f"bad-{case}.safetensors*"))


@pytest.mark.slow
def test_train_a_rejects_a_pipeline_that_is_not_sd(sd_project, tiny_params, tiny_sd, tmp_path):
    params = sd_params(tiny_params, tiny_sd)
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"]}))
    params["model"]["sd"]["pretrained"] = str(tmp_path)
    out = tmp_path / "task_a"
    code, stderr = stage(sd_project, "train_a", params, "--x0", "data/prepared/model_space.safetensors",
                         "--samples", "data/tables/samples.parquet", "--out", str(out),
                         "--out-curves", str(tmp_path / "curves"))
    assert_one_line_error(code, stderr, "model.sd.pretrained: ")
    assert "not a Stable Diffusion pipeline" in stderr and not out.exists()

