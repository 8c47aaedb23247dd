"""A small CNN classifier of the prepared images: the independent judge of what a model generates.

It is trained on every class of the prepared data (both tasks), with a held-out part of each class for its
accuracy, and saved like a diffusers model (``save_pretrained``: ``config.json`` + safetensors weights). Its
penultimate layer is the feature space of the Frechet distance (``generation.frechet_distance``).

    logits = head(features(x)),  features(x) = relu(W pool(conv3(conv2(conv1(x)))))  in R^feature_dim
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin


class ImageClassifier(ModelMixin, ConfigMixin):
    """Three 3x3 convolutions (stride 1, 2, 2), global average pooling, a feature layer and a linear head.
    Inputs are images in the model range [-1, 1], (N, C, H, W), any H, W >= 4."""

    @register_to_config
    def __init__(self, in_channels: int = 1, num_classes: int = 10, width: int = 32, feature_dim: int = 64):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(in_channels, width, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.conv3 = torch.nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)
        self.feature = torch.nn.Linear(2 * width, feature_dim)
        self.head = torch.nn.Linear(feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        return F.relu(self.feature(h.mean(dim=(2, 3))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


@dataclass
class ClassifierResult:
    model: ImageClassifier
    accuracy: float                 # on the held-out images of every class
    per_class: dict[int, float]     # held-out accuracy per class
    holdout: np.ndarray             # indices (into the images given) of the held-out images


def holdout_split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, held-out) indices: a seeded ``fraction`` of every class held out (at least one per class)."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for c in np.unique(labels):
        idx = np.flatnonzero(labels == c)
        idx = idx[rng.permutation(len(idx))]
        k = max(1, int(round(fraction * len(idx))))
        held.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(held))


@torch.no_grad()
def predict_proba(model: ImageClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """softmax(logits) of every image, (N, num_classes), float32, in chunks."""
    model.eval()
    out = [torch.softmax(model(images[i:i + batch_size].float()), dim=1) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, model.config.num_classes)


@torch.no_grad()
def extract_features(model: ImageClassifier, images: torch.Tensor, batch_size: int = 512) -> torch.Tensor:
    """The penultimate-layer features of every image, (N, feature_dim), float32."""
    model.eval()
    out = [model.features(images[i:i + batch_size].float()) for i in range(0, len(images), batch_size)]
    return torch.cat(out) if out else torch.empty(0, model.config.feature_dim)


def train_classifier(images: torch.Tensor, labels: np.ndarray, *, steps: int, batch_size: int, lr: float,
                     holdout_fraction: float, seed: int, width: int = 32, feature_dim: int = 64,
                     progress: bool = False) -> ClassifierResult:
    """Adam on cross-entropy with random shifts of up to one pixel (the only augmentation); deterministic on the
    CPU for a seed (weights from a seeded generator, batches and shifts from another)."""
    labels = np.asarray(labels, dtype=np.int64)
    classes = int(labels.max()) + 1
    train_idx, held_idx = holdout_split(labels, holdout_fraction, seed)
    torch.manual_seed(seed)
    model = ImageClassifier(in_channels=images.shape[1], num_classes=classes, width=width, feature_dim=feature_dim)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    gen = torch.Generator().manual_seed(seed + 1)
    x_train, y_train = images[torch.from_numpy(train_idx)], torch.from_numpy(labels[train_idx])
    from tqdm.auto import tqdm

    model.train()
    for _ in tqdm(range(steps), desc="classifier", disable=not progress, mininterval=2.0):
        pick = torch.randint(len(x_train), (batch_size,), generator=gen)
        shift = torch.randint(-1, 2, (2,), generator=gen).tolist()
        x = torch.roll(x_train[pick], shifts=shift, dims=(2, 3))
        loss = F.cross_entropy(model(x), y_train[pick])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    pred = predict_proba(model, images[torch.from_numpy(held_idx)]).argmax(1).numpy()
    truth = labels[held_idx]
    per_class = {int(c): float(np.mean(pred[truth == c] == c)) for c in np.unique(truth)}
    return ClassifierResult(model.eval(), float(np.mean(pred == truth)), per_class, held_idx)
