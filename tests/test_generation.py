"""What models generate: the classifier, DDIM sampling, the Frechet distance, the learned rule and the arm effects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import stats as sps

from hopfield_replay.analysis.generation import arm_effects, claim2_generation, grid_rows, learned_summary
from hopfield_replay.io.data import load_digits, to_model_range
from hopfield_replay.measures.classifier import ImageClassifier, holdout_split, train_classifier
from hopfield_replay.measures.generation import (extract, frechet_distance, frechet_distance_of_features, is_learned,
                                                 judge, sample, task_share)
from hopfield_replay.models.ddpm import DDPMConfig, PixelDDPM

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def digits():
    images, labels = load_digits()
    return to_model_range(torch.from_numpy(images)), labels


@pytest.fixture(scope="module")
def classifier(digits):
    x, y = digits
    return train_classifier(x, y, steps=400, batch_size=64, lr=5e-3, holdout_fraction=0.2, seed=0, width=32)


def _tiny_ddpm(seed: int = 0) -> PixelDDPM:
    torch.manual_seed(seed)
    return PixelDDPM.from_config(DDPMConfig(resolution=8, block_out_channels=[8, 16], norm_num_groups=4))


def test_the_classifier_of_the_tiny_data_is_above_its_floor_and_deterministic(digits, classifier):
    x, y = digits
    assert classifier.accuracy >= 0.9  # the tiny config's floor (classifier.min_accuracy in tests/tiny_params.yaml)
    assert set(classifier.per_class) == set(range(10))
    again = train_classifier(x, y, steps=400, batch_size=64, lr=5e-3, holdout_fraction=0.2, seed=0, width=32)
    for a, b in zip(classifier.model.state_dict().values(), again.model.state_dict().values()):
        assert torch.equal(a, b)


def test_holdout_split_keeps_a_share_of_every_class():
    labels = np.repeat(np.arange(3), [10, 5, 1])
    train, held = holdout_split(labels, 0.2, seed=3)
    assert sorted(np.concatenate([train, held])) == list(range(16))
    assert [int(np.sum(labels[held] == c)) for c in range(3)] == [2, 1, 1]


def test_the_classifier_round_trips_with_save_pretrained(classifier, digits, tmp_path):
    classifier.model.save_pretrained(tmp_path)
    back = ImageClassifier.from_pretrained(tmp_path, local_files_only=True, use_safetensors=True).eval()
    x = digits[0][:16]
    assert torch.equal(classifier.model(x), back(x))


def test_frechet_distance_matches_an_independent_fp64_computation(classifier, digits):
    x, y = digits
    a, b = x[torch.from_numpy(y < 5)], x[torch.from_numpy(y >= 5)]
    fd = frechet_distance(classifier.model, a, b)
    reference = frechet_distance_of_features(extract(classifier.model, a), extract(classifier.model, b))
    assert fd == pytest.approx(reference, rel=1e-5, abs=1e-6)
    assert frechet_distance(classifier.model, a, a) == pytest.approx(0.0, abs=1e-4)


def test_the_fp64_reference_is_the_gaussian_closed_form():
    """For Gaussians with diagonal covariances FD = |mu_a - mu_b|^2 + sum (sd_a - sd_b)^2."""
    rng = np.random.default_rng(0)
    sd_a, sd_b, mu = np.array([1.0, 2.0, 0.5]), np.array([0.5, 1.0, 1.5]), np.array([1.0, -1.0, 0.0])
    a, b = rng.normal(size=(200_000, 3)) * sd_a, rng.normal(size=(200_000, 3)) * sd_b + mu
    closed = float((mu**2).sum() + ((sd_a - sd_b) ** 2).sum())
    assert frechet_distance_of_features(a, b) == pytest.approx(closed, rel=0.02)


def test_sampling_is_identical_for_the_same_seed_and_model_and_shares_noise_across_models():
    model = _tiny_ddpm(0)
    one = sample(model, (1, 8, 8), 5, steps=4, seed=7, batch_size=2)
    assert torch.equal(one, sample(model, (1, 8, 8), 5, steps=4, seed=7, batch_size=2))
    two = sample(model, (1, 8, 8), 5, steps=4, seed=7, batch_size=5)  # batching changes only the last bits
    assert torch.allclose(one, two, atol=1e-4)
    assert one.shape == (5, 1, 8, 8) and one.abs().max() <= 1
    assert not torch.equal(one, sample(model, (1, 8, 8), 5, steps=4, seed=8))
    same_model_other_weights = _tiny_ddpm(1)
    assert not torch.equal(one, sample(same_model_other_weights, (1, 8, 8), 5, steps=4, seed=7))


def test_every_saved_ddpm_loads_as_a_diffusers_pipeline(tmp_path):
    from diffusers import DDIMPipeline, DDIMScheduler, DDPMPipeline

    model = _tiny_ddpm(0)
    model.save_pretrained(tmp_path)
    ddpm = DDPMPipeline.from_pretrained(tmp_path, local_files_only=True)
    assert all(torch.equal(a, b) for a, b in zip(ddpm.unet.state_dict().values(), model.unet.state_dict().values()))
    ddim = DDIMPipeline.from_pretrained(tmp_path, local_files_only=True)
    assert isinstance(ddim.scheduler, DDIMScheduler)
    out = ddim(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0), output_type="np")
    assert out.images.shape == (2, 8, 8, 1)
    again = model.pipeline()(batch_size=2, num_inference_steps=3, generator=torch.Generator().manual_seed(0),
                             output_type="np")
    assert np.array_equal(again.images, out.images)  # the in-memory model samples as its saved folder does


def test_judge_counts_classes_and_confident_shares(classifier, digits):
    x, y = digits
    held = x[torch.from_numpy(classifier.holdout)]
    j = judge(classifier.model, held, [0, 1, 2, 3, 4], threshold=0.0)
    truth = np.bincount(y[classifier.holdout], minlength=10) / len(classifier.holdout)
    assert j.histogram.sum() == pytest.approx(1.0)
    assert np.abs(j.histogram - truth).max() < 0.05  # an accurate classifier recovers the class mix
    assert j.confident_share == pytest.approx(task_share(j.histogram, [0, 1, 2, 3, 4]))
    strict = judge(classifier.model, held, [0, 1, 2, 3, 4], threshold=0.999)
    assert strict.confident_share <= j.confident_share


@pytest.mark.parametrize("share, floor, fd, other_fd, expected", [
    (0.80, 0.90, 12.0, 140.0, True),   # 0.80 >= 0.85 * 0.90 and 12 <= 0.1 * 140
    (0.70, 0.90, 12.0, 140.0, False),  # too few confident samples
    (0.80, 0.90, 15.0, 140.0, False),  # too far from the real images, on the scale of the other task's
    (0.95, 0.95, 0.0, 0.0, True),      # the real data itself
])
def test_the_learned_rule(share, floor, fd, other_fd, expected):
    assert is_learned(share, floor, fd, other_fd, min_ratio=0.85, max_fd_share=0.1) is expected


def _generation_table() -> pd.DataFrame:
    rows = [{"model": "task_a", "phase": "A", "seed": 0, "strategy": "task_a", "budget": 0, "task_a_share": 0.95,
             "learned": True}]
    shares = {"none": [0.10, 0.20, 0.15], "random": [0.40, 0.45, 0.35], "energy_high": [0.30, 0.40, 0.20]}
    for arm, values in shares.items():
        for seed, v in zip((1, 2, 3), values):
            name = f"task_b/seed{seed}" if arm == "none" else f"retrain/seed{seed}/{arm}-10"
            rows.append({"model": name, "phase": "B", "seed": seed, "strategy": arm, "budget": 0 if arm == "none" else 10,
                         "task_a_share": v, "learned": not (arm == "energy_high" and seed == 2)})
    return pd.DataFrame(rows)


def test_arm_effects_are_paired_differences_with_t_intervals():
    effects = arm_effects(_generation_table())
    row = effects[(effects.arm == "energy_high") & (effects.reference == "random")].iloc[0]
    d = np.array([0.30 - 0.40, 0.40 - 0.45, 0.20 - 0.35])
    half = sps.t.ppf(0.975, 2) * d.std(ddof=1) / np.sqrt(3)
    assert row.effect == pytest.approx(d.mean()) and row.lo == pytest.approx(d.mean() - half)
    assert row.hi == pytest.approx(d.mean() + half) and row.positive_seeds == 0
    assert row.verdict == ("fails" if d.mean() + half < 0 else "inconclusive")
    assert not row.all_learned  # one energy_high model failed the learned rule
    vs_none = effects[(effects.arm == "random") & (effects.reference == "none")].iloc[0]
    assert vs_none.effect == pytest.approx(np.mean([0.30, 0.25, 0.20])) and vs_none.verdict == "holds"
    claim = claim2_generation(effects)
    assert claim["verdict"] == row.verdict and claim["all_learned"] is False


def test_learned_summary_and_grid_rows():
    g = _generation_table()
    assert learned_summary(g) == {"models": 10, "learned": 9, "model_a_learned": True, "task_b_learned": True,
                                  "task_b_models": 3, "task_b_models_learned": 3}
    assert grid_rows(g) == ["task_a", "task_b:seed1", "retrain:seed1:energy_high-10", "retrain:seed1:random-10"]


def test_one_seed_gives_no_interval_and_an_inconclusive_claim():
    g = _generation_table()
    g = g[g.seed.isin([0, 1])]
    claim = claim2_generation(arm_effects(g))
    assert claim["verdict"] == "inconclusive" and np.isnan(claim["lo"])
    assert claim["effect"] == pytest.approx(0.30 - 0.40)
