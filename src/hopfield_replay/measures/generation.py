"""What a model generates, judged by the classifier of the prepared data.

Sampling is DDIM (diffusers' ``DDIMScheduler`` built from the model's own scheduler config, eta = 0, exactly as
``DDIMPipeline.from_pretrained(model_folder)`` samples it: x0 clipped to [-1, 1] where the config says so) from a seeded
initial noise, so that two models sampled with the same seed start from the same noise. In latent space (Stable
Diffusion) the samples are decoded by the model's VAE and resized to the classifier's resolution.

Per model, over its N samples and the classifier's probabilities p(c | x):
  - the class histogram h_c = (1/N) #{n : argmax_c p(c | x_n) = c};
  - the confident share  s = (1/N) #{n : argmax p(. | x_n) in C and max_c p(c | x_n) >= threshold}, C the model's
    trained classes (the same figure for real held-out images of C is the floor);
  - the Frechet distance in the classifier's feature space to real images of C (beside the same distance for real
    held-out images of C, the floor, and for real images of the other task, the scale of the learned rule),
        FD = |mu_g - mu_r|^2 + tr(S_g + S_r - 2 (S_g S_r)^(1/2))   (torchmetrics, float64).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from diffusers import DDIMScheduler

from .classifier import ImageClassifier, extract_features, predict_proba


@torch.no_grad()
def sample(model, shape: tuple[int, ...], n: int, *, steps: int, seed: int, batch_size: int = 64,
           labels: torch.Tensor | None = None, progress: bool = False) -> torch.Tensor:
    """``n`` DDIM samples of a ``DenoisingModel`` (pixels in [-1, 1], decoded from latents where the model works in
    latent space), float32 on the CPU. The initial noise of sample i depends only on (seed, i): the same seed gives
    the same noise to every model of one shape."""
    scheduler = DDIMScheduler.from_config(model.scheduler.config)  # as DDIMPipeline samples the saved model
    scheduler.set_timesteps(steps)
    noise = torch.randn((n, *shape), generator=torch.Generator().manual_seed(seed))
    out = []
    model.eval()
    from tqdm.auto import tqdm

    for start in tqdm(range(0, n, batch_size), desc="sampling", disable=not progress, mininterval=2.0):
        x = noise[start:start + batch_size].to(model.device)
        y = None if labels is None else labels[start:start + batch_size].to(model.device)
        for t in scheduler.timesteps:
            eps = model.predict_noise(x, t.expand(len(x)).to(model.device), y)
            x = scheduler.step(eps.float(), t, x).prev_sample
        out.append(model.decode(x).float().clamp(-1, 1).cpu())
    return torch.cat(out)


class _Features(torch.nn.Module):
    """The classifier's feature layer as torchmetrics' ``feature`` module (it reads ``num_features``)."""

    def __init__(self, classifier: ImageClassifier):
        super().__init__()
        self.classifier = classifier
        self.num_features = classifier.config.feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.features(x)


def frechet_distance(classifier: ImageClassifier, generated: torch.Tensor, real: torch.Tensor) -> float:
    """FD between two image sets in the classifier's feature space: torchmetrics' FrechetInceptionDistance with the
    classifier as its feature module (no Inception weights, nothing downloaded), statistics in float64."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=_Features(classifier).eval(), normalize=True)
    for i in range(0, len(real), 512):
        fid.update(real[i:i + 512].float(), real=True)
    for i in range(0, len(generated), 512):
        fid.update(generated[i:i + 512].float(), real=False)
    return float(fid.compute())


def frechet_distance_of_features(a: np.ndarray, b: np.ndarray) -> float:
    """The same distance from two feature matrices, in float64 with scipy's matrix square root (the reference the
    tests compare torchmetrics with)."""
    from scipy.linalg import sqrtm

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    mu_a, mu_b = a.mean(0), b.mean(0)
    s_a, s_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root = sqrtm(s_a @ s_b).real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(s_a + s_b - 2 * root))


@dataclass
class Judgement:
    histogram: np.ndarray        # (num_classes,) share of samples assigned to each class
    confident_share: float       # share assigned to a trained class with confidence >= threshold
    predicted: np.ndarray        # (N,) argmax class of each sample
    confidence: np.ndarray       # (N,) its probability


def judge(classifier: ImageClassifier, images: torch.Tensor, classes: list[int], threshold: float) -> Judgement:
    """The classifier's verdict on a set of images: class histogram and the confident share in ``classes``."""
    proba = predict_proba(classifier, images).numpy()
    predicted, confidence = proba.argmax(1), proba.max(1)
    hist = np.bincount(predicted, minlength=proba.shape[1]) / max(len(predicted), 1)
    ok = np.isin(predicted, classes) & (confidence >= threshold)
    return Judgement(hist, float(ok.mean()) if len(ok) else 0.0, predicted, confidence)


def task_share(histogram: np.ndarray, classes: list[int]) -> float:
    """The share of samples assigned to any of ``classes`` (generation-level retention of a task)."""
    return float(np.asarray(histogram)[list(classes)].sum())


def is_learned(confident_share: float, floor_share: float, fd: float, other_fd: float, *, min_ratio: float,
               max_fd_share: float) -> bool:
    """The learned rule: the model's confident share of its task reaches ``min_ratio`` of real held-out images'
    share, and its Frechet distance to the task's real images is at most ``max_fd_share`` of the distance of the
    other task's real images to them (scale-free: 0 is the real data, 1 is as far as the wrong task)."""
    return confident_share >= min_ratio * floor_share and fd <= max_fd_share * other_fd


def extract(classifier: ImageClassifier, images: torch.Tensor) -> np.ndarray:
    return extract_features(classifier, images).numpy().astype(np.float64)
