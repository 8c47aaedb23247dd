"""Closed-form MHN experiment (mhn/geometry.py, dynamics.py, closed_form.py; stages/mhn_closed_form.py) against an
independent fp64 NumPy/SciPy reference."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.linalg
import torch
import yaml

from hopfield_replay.io.config import MHNClosedFormParams
from hopfield_replay.io.params_file import ParamsError, validate_config
from hopfield_replay.energy import hopfield_energy
from hopfield_replay.mhn import closed_form, dynamics, geometry
from hopfield_replay.mhn.closed_form import run_closed_form
from tests.conftest import TINY_PARAMS, shipped_params, shipped_section

ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------- NumPy reference
def np_energy(z, x, beta):
    logits = beta * z @ x.T
    mx = logits.max(1, keepdims=True)
    return 0.5 * (z * z).sum(1) - (mx[:, 0] + np.log(np.exp(logits - mx).sum(1))) / beta


def np_softmax(z, x, beta):
    logits = beta * z @ x.T
    e = np.exp(logits - logits.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def np_retrieve(z, x, beta):
    return np_softmax(z, x, beta) @ x


def np_paper(n=12, c=0.35, d=50):
    x = np.zeros((n + 1, d))
    for i in range(n):
        x[i, 0] = np.sqrt(c)
        x[i, i + 1] = np.sqrt(1 - c)
    x[n, n + 1] = 1.0
    return x


def np_fixed_points(x, beta, tol=1e-14):
    z = x.copy()
    for _ in range(100000):
        z_new = np_retrieve(z, x, beta)
        if np.abs(z_new - z).max() <= tol:
            return z_new
        z = z_new
    raise AssertionError("no convergence")


def np_rotations(seed, count, d, eps):
    """Same W stream as geometry.rotation_generators, but expm from SciPy."""
    w = np.random.default_rng(seed).standard_normal((count, d, d))
    omega = (w - np.transpose(w, (0, 2, 1))) / 2
    return np.stack([scipy.linalg.expm(eps * o) for o in omega])


def small(**kw):
    base = dict(rotations=40, eps=[0.05, 0.2], bootstrap=50, rotation_chunk=16)
    base.update(kw)
    return MHNClosedFormParams(**shipped_section("mhn_closed_form", **base))


# ---------------------------------------------------------------------------------------------- geometry, fixed points
def test_paper_geometry_is_exact():
    m = geometry.paper_geometry(12, 0.35, 50)
    x = m.patterns.numpy()
    gram = x @ x.T
    np.testing.assert_allclose(np.diag(gram), 1.0, atol=1e-15)
    np.testing.assert_allclose(gram[:12, :12][~np.eye(12, dtype=bool)], 0.35, atol=1e-15)
    np.testing.assert_allclose(gram[12, :12], 0.0, atol=0)
    assert list(m.kind).count("outlier") == 1 and m.patterns.dtype == torch.float64


def test_fixed_points_and_energies_match_numpy():
    x = np_paper()
    ref = np_fixed_points(x, 8.0)
    xi, iters = dynamics.fixed_points(torch.from_numpy(x), 8.0, tol=1e-14)
    np.testing.assert_allclose(xi.numpy(), ref, atol=1e-12)
    np.testing.assert_allclose(np_retrieve(xi.numpy(), x, 8.0), xi.numpy(), atol=1e-13)  # really a fixed point
    e = hopfield_energy(xi, torch.from_numpy(x), 8.0).numpy()
    np.testing.assert_allclose(e, np_energy(ref, x, 8.0), atol=1e-12)
    # the numbers the science notes quote (independent fp64 computation)
    assert e[12] == pytest.approx(-0.5005, abs=1e-4)
    assert e[0] == pytest.approx(-0.5092, abs=1e-4)
    assert iters > 1


def test_fixed_point_iteration_reports_non_convergence():
    with pytest.raises(ValueError, match="fp_max_iter"):
        dynamics.fixed_points(torch.from_numpy(np_paper()), 8.0, tol=0.0, max_iter=3)


@pytest.mark.parametrize("memory", ["paper", "clusters"])
def test_fixed_points_are_stable(memory):
    """Test (3): the retrieval map's Jacobian at each fixed point (checked by finite differences) has radius < 1."""
    if memory == "paper":
        x = np_paper()
        beta = 8.0
    else:
        x = geometry.gaussian_clusters([6, 4], 2, 20, 0.6, seed=3).patterns.numpy()
        beta = 8.0
    xi = dynamics.fixed_points(torch.from_numpy(x), beta, tol=1e-14)[0]
    jac = dynamics.retrieval_jacobian(xi, torch.from_numpy(x), beta).numpy()
    h = 1e-6
    for k in range(len(x)):
        fd = np.empty((x.shape[1], x.shape[1]))
        for j in range(x.shape[1]):
            dz = np.zeros(x.shape[1])
            dz[j] = h
            fd[:, j] = (np_retrieve((xi.numpy()[k] + dz)[None], x, beta)[0] - np_retrieve((xi.numpy()[k] - dz)[None], x, beta)[0]) / (2 * h)
        np.testing.assert_allclose(jac[k], fd, atol=1e-7)
        assert np.abs(np.linalg.eigvals(fd)).max() < 1.0
    radius = dynamics.spectral_radius(torch.from_numpy(jac)).numpy()
    assert (radius < 1.0).all() and (radius > 0).all()


# ---------------------------------------------------------------------------------------------- energies and gains
@pytest.fixture(scope="module")
def small_run():
    return run_closed_form(small())


def test_energies_and_gains_match_numpy_reference(small_run):
    """Test (1): the direct gain G = E(xi|X_B) - E(xi|X_B u {x_r}) equals (1/beta) log(1 + p exp(beta dE)) to 1e-10,
    with p, dE, the rotations (SciPy expm) and the energies all recomputed in NumPy."""
    p = small()
    x = np_paper()
    xi = np_fixed_points(x, p.beta)
    e_a = np_energy(xi, x, p.beta)
    prob = np_softmax(xi, x, p.beta)  # [k, r]
    energies, gains = small_run.energies, small_run.gains
    for eps in p.eps:
        rots = np_rotations(p.seed, p.rotations, p.d, eps)
        for b in (0, 17, p.rotations - 1):
            xb = x @ rots[b].T
            e_b = np_energy(xi, xb, p.beta)
            rise = e_b - e_a
            got = energies[(energies.eps == eps) & (energies.rotation == b)].sort_values("sample_id")
            np.testing.assert_allclose(got.energy_b.to_numpy(), e_b, atol=1e-12)
            np.testing.assert_allclose(got.energy_rise.to_numpy(), rise, atol=1e-12)
            g = gains[(gains.eps == eps) & (gains.rotation == b)]
            formula = np.log1p(prob[g.target_id, g.source_id] * np.exp(p.beta * rise[g.target_id])) / p.beta
            np.testing.assert_allclose(g.gain.to_numpy(), formula, atol=1e-10, rtol=0)
            no_drift = np.log1p(prob[g.target_id, g.source_id]) / p.beta
            np.testing.assert_allclose(g.net_gain.to_numpy(), formula - no_drift, atol=1e-10, rtol=0)
    assert small_run.metrics["max_abs_gain_identity_error"] < 1e-10


def test_gain_is_the_energy_drop_of_adding_the_source_memory(small_run):
    """The union energy equals hopfield_energy evaluated on the concatenated memory set X_B u {x_r}."""
    p = small()
    x = torch.from_numpy(np_paper())
    xi = dynamics.fixed_points(x, p.beta, tol=p.fp_tol)[0]
    rots = torch.from_numpy(np_rotations(p.seed, 3, p.d, p.eps[1]))
    g = small_run.gains
    for b in range(3):
        xb = x @ rots[b].T
        e_b = hopfield_energy(xi, xb, p.beta)
        for r in (0, 5, 12):
            union = hopfield_energy(xi, torch.cat([xb, x[r : r + 1]]), p.beta)
            got = g[(g.eps == p.eps[1]) & (g.rotation == b) & (g.source_id == r)].sort_values("target_id")
            np.testing.assert_allclose(got.gain.to_numpy(), (e_b - union).numpy(), atol=1e-12)


def test_energies_come_from_hopfield_energy(monkeypatch):
    """Test (5): the experiment's energies are computed by energy.hopfield_energy (spied), not a copy."""
    calls = []
    real = hopfield_energy

    def spy(queries, memories, beta, **kw):
        out = real(queries, memories, beta, **kw)
        calls.append((tuple(queries.shape), tuple(memories.shape), out.clone()))
        return out

    for module in (dynamics, closed_form):  # every module of the experiment that evaluates an energy
        monkeypatch.setattr(module, "hopfield_energy", spy)
    p = small(rotations=10, eps=[0.05], rotation_chunk=10)
    res = run_closed_form(p)
    batched = [c for c in calls if c[0] == (10 * 13, 50)]
    assert len(batched) == 1 and batched[0][1] == (13, 50)
    np.testing.assert_array_equal(res.energies.energy_b.to_numpy(), batched[0][2].numpy())
    assert any(c[0] == (13, 50) for c in calls)  # energy_a at the fixed points


def test_rotation_chunking_does_not_change_results():
    a = run_closed_form(small(rotations=30, eps=[0.05], rotation_chunk=7, write_gains=False))
    b = run_closed_form(small(rotations=30, eps=[0.05], rotation_chunk=30, write_gains=False))
    pd.testing.assert_frame_equal(a.energies, b.energies, check_exact=False, atol=1e-14, rtol=0)


def test_rotations_are_orthogonal_and_match_scipy():
    omega = geometry.rotation_generators(np.random.default_rng(0), 4, 10)
    assert torch.allclose(omega, -omega.transpose(1, 2))
    v = geometry.rotations(omega, 0.3)
    eye = torch.eye(10, dtype=torch.float64).expand(4, 10, 10)
    assert torch.allclose(v @ v.transpose(1, 2), eye, atol=1e-13)
    np.testing.assert_allclose(v.numpy(), np_rotations(0, 4, 10, 0.3), atol=1e-13)


def test_rise_is_second_order_in_eps():
    """Test (2): halving eps divides the mean rise by 4 (within 10%), for the outlier and the cluster members."""
    res = run_closed_form(MHNClosedFormParams(**shipped_section("mhn_closed_form", rotations=1000, eps=[0.04, 0.02],
                                                                bootstrap=20, write_gains=False)))
    for kind in ("outlier", "cluster"):
        big = res.per_rotation[0.04][f"rise_{kind}"].mean()
        half = res.per_rotation[0.02][f"rise_{kind}"].mean()
        assert big / half == pytest.approx(4.0, rel=0.10), kind


# ---------------------------------------------------------------------------------------------- the paper's claims
@pytest.fixture(scope="module")
def default_run():
    return run_closed_form(MHNClosedFormParams(**shipped_section("mhn_closed_form", write_gains=False, bootstrap=1000)))


def test_defaults_reproduce_reference_numbers(default_run):
    s = default_run.summary.set_index(["eps", "quantity"]).estimate
    assert s[(0.05, "rise_outlier")] == pytest.approx(0.030, rel=0.08)
    assert s[(0.05, "rise_cluster")] == pytest.approx(0.026, rel=0.08)
    assert s[(0.02, "rise_outlier")] == pytest.approx(0.0049, rel=0.08)
    assert s[(0.02, "rise_cluster")] == pytest.approx(0.0043, rel=0.08)
    assert 0.6 < s[(0.05, "frac_rotations_outlier_rise_gt_cluster")] < 0.8
    assert default_run.metrics["fixed_points"]["max_jacobian_radius"] < 1.0


def test_energy_rise_spearman_ranks_energies_equal_up_to_rounding_as_ties(default_run):
    """The paper geometry makes the 12 cluster members equivalent: their energies are one value, a few ulp apart
    after rounding. Ranked by that rounding, the Spearman of energy with rise moved 0.54 -> 0.35 between two CPUs.
    With one tie and the outlier, the energy has two values: no Spearman (the outlier-minus-cluster rise compares
    them). With three levels and rounding noise: scipy's Spearman of the exact levels, whichever way rounding fell."""
    energy = default_run.fixed_points["energy_a"].to_numpy()
    assert np.ptp(energy[:12]) > 0  # the rounding really is there
    s = default_run.summary.set_index(["eps", "quantity"])
    for eps in (0.05, 0.02):
        assert (eps, "spearman_energy_vs_rise") not in s.index and (eps, "rise_outlier_minus_cluster") in s.index
        assert "spearman_energy_vs_rise" not in default_run.metrics[f"eps_{eps:g}"]
    levels = np.array([-0.5092321] * 6 + [-0.5090] * 6 + [-0.5005143])  # three levels: a rank question again
    p = MHNClosedFormParams(**shipped_section("mhn_closed_form", write_gains=False, bootstrap=200))
    rng = np.random.default_rng(1)
    results = []
    for _ in range(3):  # other roundings of the same energies: the same rank statistics
        noisy = levels + rng.integers(-4, 5, levels.size) * np.spacing(levels)
        summary, _ = closed_form._summarise(p, default_run.per_rotation, [], noisy)
        results.append(summary[summary.quantity == "spearman_energy_vs_rise"].reset_index(drop=True))
    for eps, row in results[0].set_index("eps").iterrows():
        mean_rise = default_run.per_rotation[eps]["rise_per_sample"].mean(0)
        assert row["estimate"] == pytest.approx(scipy.stats.spearmanr(levels, mean_rise).statistic, abs=1e-12)
    assert len(results[0]) == 2
    for other in results[1:]:
        pd.testing.assert_frame_equal(other, results[0])


def test_outlier_rises_more_and_family_order_holds(default_run):
    """Test (4): outlier rise > cluster rise with a 95% interval excluding 0; net gains ordered
    outlier self > cluster self > within-cluster cross > cross-group (both directions)."""
    s = default_run.summary.set_index(["eps", "quantity"])
    for eps in (0.05, 0.02):
        diff = s.loc[(eps, "rise_outlier_minus_cluster")]
        assert diff.ci_low > 0 and diff.estimate > 0
        net = {f: s.loc[(eps, f"net_gain_{f}")] for f in ("outlier_self", "cluster_self", "within_cluster",
                                                           "outlier_to_cluster", "cluster_to_outlier")}
        assert net["outlier_self"].estimate > net["cluster_self"].estimate > net["within_cluster"].estimate
        assert net["within_cluster"].estimate > max(net["outlier_to_cluster"].estimate,
                                                    net["cluster_to_outlier"].estimate)
        # adjacent intervals do not overlap
        assert net["outlier_self"].ci_low > net["cluster_self"].ci_high
        assert net["cluster_self"].ci_low > net["within_cluster"].ci_high
        assert default_run.metrics[f"eps_{eps:g}"]["family_order_of_means_holds"]


def test_general_memory_set_runs_and_ranks():
    p = MHNClosedFormParams(**shipped_section("mhn_closed_form", geometry="clusters", cluster_sizes=[8, 4],
                                              n_outliers=3, d=20, rotations=50, eps=[0.05], bootstrap=50))
    res = run_closed_form(p)
    assert res.memory.size == 15
    np.testing.assert_allclose(res.memory.patterns.norm(dim=1).numpy(), 1.0, atol=1e-12)
    fams = set(res.gains.family)
    assert {"outlier_self", "cluster_self", "within_cluster", "cross_cluster", "outlier_to_outlier"} <= fams
    assert (res.summary.quantity == "spearman_energy_vs_rise").any()
    assert res.metrics["max_abs_gain_identity_error"] < 1e-10
    assert (res.fixed_points.jacobian_radius < 1).all()


def test_params_validation():
    with pytest.raises(ParamsError, match=r"mhn_closed_form\.d: .*n \+ 2"):
        validate_config(shipped_params(mhn_closed_form={"d": 10}))
    with pytest.raises(ParamsError, match=r"mhn_closed_form\.eps\[0\]"):
        validate_config(shipped_params(mhn_closed_form={"eps": [-0.1]}))
    with pytest.raises(ParamsError, match="twice"):
        validate_config(shipped_params(mhn_closed_form={"eps": [0.1, 0.1]}))


# ---------------------------------------------------------------------------------------------- the stage
def run_stage(module, params: dict, tmp_path: Path, *extra):
    pfile = tmp_path / "params.yaml"  # a complete params file (a missing key is an error): the tiny config, each
    # section of ``params`` the shipped section with those values changed
    sections = {name: shipped_section(name, **values) for name, values in params.items()}
    pfile.write_text(yaml.safe_dump({**yaml.safe_load(TINY_PARAMS.read_text()), **sections}))
    env = dict(os.environ, MPLCONFIGDIR=str(tmp_path / "mpl"), HOPFIELD_REPLAY_LOG="INFO")
    return subprocess.run([sys.executable, "-m", module, "--params", str(pfile), *extra], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


def test_stage_writes_tables(tmp_path):
    out = tmp_path / "cf"
    params = {"mhn_closed_form": {"rotations": 20, "bootstrap": 20, "eps": [0.05, 0.02]}}
    proc = run_stage("stages.mhn_closed_form", params, tmp_path, "--out-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    for name in ("fixed_points", "energies", "gains", "summary"):
        assert (out / f"{name}.parquet").is_file()
    energies = pd.read_parquet(out / "energies.parquet")
    assert len(energies) == 2 * 20 * 13
    assert len(pd.read_parquet(out / "gains.parquet")) == 2 * 20 * 13 * 13
    details = json.loads((out / "details.json").read_text())
    assert details["rotations"] == 20 and "eps_0.05" in details
    headline = json.loads((out / "metrics.json").read_text())  # what `dvc metrics show` prints: a few numbers
    assert set(headline) == {"eps_0.05", "eps_0.02"} and len(headline["eps_0.05"]) == 4
    assert headline["eps_0.05"]["rise_outlier"] == float(f"{details['eps_0.05']['rise_outlier']:.4g}")
    assert "rise outlier" in proc.stderr + proc.stdout


def test_stage_bad_param_is_one_line_error(tmp_path):
    out = tmp_path / "cf"
    proc = run_stage("stages.mhn_closed_form", {"mhn_closed_form": {"rotations": 0}}, tmp_path, "--out-dir", str(out))
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "mhn_closed_form.rotations: " in lines[0]
    assert not out.exists()
