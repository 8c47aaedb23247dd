"""MHN-BM (mhn/trained.py, stages/mhn_trained.py) and the report stage."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import hopfield_replay.mhn.trained as mt
from hopfield_replay.io.config import MHNTrainedParams
from hopfield_replay.io.params_file import ParamsError, validate_config
from hopfield_replay.mhn.trained import nll, replay_buffer, run_seed, train_memories
from tests.conftest import TINY_PARAMS, shipped_params, shipped_section

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(seeds=[0], steps_a=60, steps_b=40, memories=24, bootstrap=50)


def trained(**values) -> MHNTrainedParams:
    """The shipped mhn_trained params with ``values`` changed."""
    return MHNTrainedParams(**shipped_section("mhn_trained", **values))


pytestmark = pytest.mark.usefixtures("one_thread")


def np_mixture_logpdf(v, xi, beta):
    """log p(v) of the Gaussian mixture N(xi_mu, I/beta) with weights ~ exp(beta |xi_mu|^2 / 2), in NumPy."""
    d = v.shape[1]
    logw = 0.5 * beta * (xi**2).sum(1)
    logw -= np.logaddexp.reduce(logw)
    sq = ((v[:, None, :] - xi[None]) ** 2).sum(-1)
    comp = -0.5 * beta * sq + 0.5 * d * np.log(beta / (2 * np.pi))
    return np.logaddexp.reduce(logw[None] + comp, axis=1)


def test_nll_is_the_mixture_likelihood():
    rng = np.random.default_rng(0)
    v, xi, beta = rng.normal(size=(30, 5)), rng.normal(size=(7, 5)), 3.0
    got = float(nll(torch.from_numpy(v), torch.from_numpy(xi), beta))
    ref = -np_mixture_logpdf(v, xi, beta).mean() / beta - 0.5 * 5 * math.log(2 * math.pi / beta) / beta
    assert got == pytest.approx(ref, abs=1e-12)
    # weighted form: the weights replace the uniform mean
    w = torch.full((30,), 1 / 30, dtype=torch.float64)
    assert float(nll(torch.from_numpy(v), torch.from_numpy(xi), beta, w)) == pytest.approx(got, abs=1e-13)


def test_training_lowers_the_nll_and_leaves_input_untouched():
    p = trained(**TINY)
    task_a, _ = mt.make_tasks(p, 0)
    init = task_a.patterns[:p.memories].clone()
    before = float(nll(task_a.patterns, init, p.beta))
    xi = train_memories(init, p.beta, task_a.patterns, 80, p.lr)
    assert float(nll(task_a.patterns, xi, p.beta)) < before - 1e-3
    assert torch.equal(init, task_a.patterns[:p.memories])


def test_replay_buffer_arms():
    e = np.array([0.3, -1.0, 2.0, 0.1, 5.0, -3.0])
    assert replay_buffer(e, "energy_high", 2, seed=0).tolist() == [2, 4]
    assert replay_buffer(e, "energy_low", 2, seed=0).tolist() == [1, 5]
    r = replay_buffer(e, "random", 3, seed=0)
    assert len(set(r.tolist())) == 3 and r.max() < 6
    assert replay_buffer(e, "none", 3, seed=0).size == 0
    with pytest.raises(ValueError, match="unknown replay arm"):
        replay_buffer(e, "herding", 2, seed=0)


def test_replay_buffers_are_the_pipeline_selectors_and_nested():
    """Each arm's buffer is the first K of replay.rank_samples' ranking, so smaller budgets are subsets."""
    from hopfield_replay.replay import rank_samples

    e = np.random.default_rng(2).normal(size=40)
    ids = np.arange(40)
    for arm in ("energy_high", "energy_low", "random"):
        for k in (3, 10):
            first_k = rank_samples(e, ids, arm, seed=7)[:k]
            assert replay_buffer(e, arm, k, seed=7).tolist() == sorted(first_k.tolist())
        assert set(replay_buffer(e, arm, 3, seed=7)) <= set(replay_buffer(e, arm, 10, seed=7))
    assert replay_buffer(e, "random", 10, seed=7).tolist() != replay_buffer(e, "random", 10, seed=8).tolist()
    # the top-K by energy, from an independent argsort
    assert replay_buffer(e, "energy_high", 5, seed=0).tolist() == sorted(np.argsort(-e)[:5].tolist())


@pytest.fixture(scope="module")
def tiny_seed():
    calls = []
    real = mt.hopfield_energy

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    mt.hopfield_energy = spy
    try:
        df, info = run_seed(trained(**TINY), 0)
    finally:
        mt.hopfield_energy = real
    return df, info, len(calls)


def test_run_seed_table(tiny_seed):
    df, info, n_calls = tiny_seed
    p = trained(**TINY)
    n_a = sum(p.task_a_clusters) + p.task_a_outliers
    assert n_calls > p.steps_a  # the loss and the energies go through energy.hopfield_energy
    assert set(df.strategy) == set(p.arms) and len(df) == len(p.arms) * n_a
    np.testing.assert_allclose(df.energy_rise, df.energy_after_b - df.energy_a, atol=1e-15)
    replayed = df.groupby("strategy").replayed.sum()
    assert replayed["none"] == 0 and all(replayed[a] == p.replay_budget for a in ("energy_high", "random", "energy_low"))
    top = df[df.strategy == "energy_high"]
    assert top[top.replayed].energy_a.min() >= top[~top.replayed].energy_a.max()
    bottom = df[df.strategy == "energy_low"]
    assert bottom[bottom.replayed].energy_a.max() <= bottom[~bottom.replayed].energy_a.min()
    # energy_a is the same task-A model in every arm
    assert df.groupby("sample_id").energy_a.nunique().max() == 1
    # deciles of energy_a: balanced and monotone
    one = df[df.strategy == "none"]
    counts = np.bincount(one.decile)
    assert counts.size == p.deciles and counts.max() - counts.min() <= 1
    assert all(one.energy_a[one.decile == i].max() < one.energy_a[one.decile == i + 1].min()
               for i in range(p.deciles - 1))


def test_replay_protects_the_replayed_samples():
    """Samples in the top-energy buffer rise less than the same samples without replay (default model sizes)."""
    p = trained(seeds=[0], bootstrap=50, arms=["energy_high", "none"])
    df, _ = run_seed(p, 0)
    top = df[df.strategy == "energy_high"].set_index("sample_id")
    none = df[df.strategy == "none"].set_index("sample_id")
    ids = top.index[top.replayed]
    assert top.loc[ids, "energy_rise"].mean() < none.loc[ids, "energy_rise"].mean() - 0.01
    assert none.energy_rise.mean() > 0  # the task change causes forgetting


def test_trained_params_validation():
    with pytest.raises(ParamsError, match=r"mhn_trained\.arms\[0\]"):
        validate_config(shipped_params(mhn_trained={"arms": ["oracle"]}))
    with pytest.raises(ParamsError, match=r"mhn_trained\.replay_budget"):
        validate_config(shipped_params(mhn_trained={"replay_budget": 10000}))


def run_stage(module, params, tmp_path, *extra):
    pfile = tmp_path / "params.yaml"  # a complete params file (a missing key is an error): the tiny config, each
    # section of ``params`` the shipped section with those values changed
    sections = {name: shipped_section(name, **values) for name, values in params.items()}
    pfile.write_text(yaml.safe_dump({**yaml.safe_load(TINY_PARAMS.read_text()), **sections}))
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"))
    return subprocess.run([sys.executable, "-m", module, "--params", str(pfile), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_trained_stage_writes_tables(tmp_path):
    tr = tmp_path / "tr"
    params = {"mhn_trained": {**TINY, "steps_a": 20, "steps_b": 10}}
    proc = run_stage("stages.mhn_trained", params, tmp_path, "--out-dir", str(tr))
    assert proc.returncode == 0, proc.stderr
    table = pd.read_parquet(tr / "energies.parquet")
    assert set(table.strategy) == {"energy_high", "random", "energy_low", "none"}
    assert len(table) == 4 * (sum(trained().task_a_clusters) + trained().task_a_outliers)
    assert set(pd.read_parquet(tr / "summary.parquet").quantity) >= {"rise_all", "rise_not_replayed"}
    assert "none" in json.loads((tr / "metrics.json").read_text())


def test_report_stage_writes_figures(tmp_path, tiny_seed):
    from hopfield_replay.io.config import MHNClosedFormParams
    from hopfield_replay.mhn.closed_form import run_closed_form
    from hopfield_replay.io.tables import write_table

    cf, tr, rep = tmp_path / "cf", tmp_path / "tr", tmp_path / "rep"
    res = run_closed_form(MHNClosedFormParams(**shipped_section("mhn_closed_form", rotations=20, bootstrap=20,
                                                                write_gains=False)))
    write_table(res.summary, cf / "summary.parquet", table="mhn_summary", meta={})
    df = tiny_seed[0]
    summary, _ = mt.summarise(trained(**TINY), df)
    write_table(df, tr / "energies.parquet", table="mhn_trained_energies", meta={})
    write_table(summary, tr / "summary.parquet", table="mhn_trained_summary", meta={})
    proc = run_stage("stages.mhn_report", {"mhn_report": {"bootstrap": 20, "dpi": 40}}, tmp_path,
                     "--closed-form-dir", str(cf), "--trained-dir", str(tr), "--out-dir", str(rep))
    assert proc.returncode == 0, proc.stderr
    for name in ("rise_by_type.png", "net_gain_by_family.png", "trained_rise_by_decile.png"):
        assert (rep / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "outlier_self" in (rep / "summary.md").read_text()


def test_trained_stage_bad_param(tmp_path):
    out = tmp_path / "tr"
    proc = run_stage("stages.mhn_trained", {"mhn_trained": {"lr": "fast"}}, tmp_path, "--out-dir", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "mhn_trained.lr: " in lines[0]
    assert not out.exists()


def test_report_stage_missing_input(tmp_path):
    proc = run_stage("stages.mhn_report", {}, tmp_path, "--closed-form-dir", str(tmp_path / "nope"),
                     "--trained-dir", str(tmp_path / "nope"), "--out-dir", str(tmp_path / "rep"))
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "table does not exist" in proc.stderr
    assert not (tmp_path / "rep").exists()
