"""Readers of a local data folder: MNIST-style IDX, CIFAR-10 python pickles, Keras-style ``.npz`` and ImageFolder
trees, with the rules that keep a hostile folder from running code, hanging or exhausting memory.

Every reader returns ``(images, labels)``: float32 (N, C, H, W) in [0, 1], C = 1 or 3, and int64 (N,) >= 0.

What is refused (one UserError naming the file and the fix):
  - anything that is not a regular file where a data file is read (a FIFO, device or socket would block);
  - a symlink that leaves the data folder, a tree deeper than ``MAX_DEPTH`` levels or with more than ``MAX_ENTRIES``
    entries (the walk never follows a symlinked folder and skips hidden folders);
  - a size a header declares (IDX dims, ``.npy`` shapes, image width x height) that disagrees with the file's real
    length, or whose float32 images would exceed ``max_bytes`` (``execution.max_output_gb``), before allocating;
  - a pickle naming any callable outside numpy's array constructors (``read_pickle``, the one unpickler), a
    ``.npy`` of Python objects;
  - non-finite values, negative or non-integer labels, and values outside the documented ranges below.
What is converted (``to_unit_images``):
  - layouts (N, H, W) -> one channel; (N, H, W, C) with C in {1, 3} -> channels first; (N, C, H, W) kept;
  - uint8 / 255, uint16 / 65535, bool as 0/1; other values in [0, 1] kept, other values in [0, 255] with one above 1
    divided by 255;
  - images: 1/L/P-grey as grey, 16-bit grey / 65535, LA -> L, any other mode -> RGB; a folder mixing grey and colour
    images -> RGB throughout.
"""

from __future__ import annotations

import gzip
import math
import os
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import UserError

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FORMATS = "MNIST-style IDX (raw or .gz), CIFAR-10 python pickles, Keras .npz, or an ImageFolder tree"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
MAX_DEPTH = 8  # folder levels below the data folder that a walk descends
MAX_ENTRIES = 2_000_000  # files and folders a walk visits
DEFAULT_MAX_BYTES = 4 * 10**9  # execution.max_output_gb's default
CAP_FIX = "raise execution.max_output_gb on purpose, or give a smaller dataset"


def regular_file(path: Path) -> Path:
    """Only regular files are read: a FIFO, device or socket in a data folder would block or never end."""
    if not Path(path).is_file():
        raise UserError(f"{path}: not a regular file (a FIFO, device or socket); replace it with the data file")
    return Path(path)


def _damaged(path: Path, exc: Exception) -> UserError:
    detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return UserError(f"{path} is damaged or truncated ({detail[:160]}); replace the file")


def _check_budget(path: Path, n_values: int, max_bytes: int, what: str) -> None:
    if n_values * 4 > max_bytes:
        raise UserError(f"{path}: declares {what} ({n_values * 4 / 1e9:.3g} GB as float32 images), above "
                        f"execution.max_output_gb = {max_bytes / 1e9:g}; {CAP_FIX}")


def walk(root: Path) -> list[Path]:
    """Every file under ``root`` (sorted), never following a symlinked folder, skipping hidden folders; a symlinked
    file that resolves outside ``root``, a tree deeper than MAX_DEPTH or larger than MAX_ENTRIES is refused."""
    root = Path(root)
    inside, found, seen = root.resolve(), [], 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        depth = len(Path(folder).relative_to(root).parts)
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        seen += len(dirs) + len(files)
        if depth > MAX_DEPTH:
            raise UserError(f"{folder}: nested more than {MAX_DEPTH} folders below {root}; give the folder that holds "
                            "the data itself")
        if seen > MAX_ENTRIES:
            raise UserError(f"{root}: holds more than {MAX_ENTRIES} files and folders; give the folder that holds the "
                            "data itself")
        for name in files:
            path = Path(folder) / name
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                raise UserError(f"{path}: a symlink to {path.resolve()}, outside the data folder {root}; copy the file "
                                "into the folder")
            found.append(path)
    return sorted(found)


def to_unit_images(x: np.ndarray, path: Path) -> np.ndarray:
    """(N, C, H, W) float32 in [0, 1] from an array of the layouts and value ranges of the module docstring."""
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[-1] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    elif not (x.ndim == 4 and x.shape[1] in (1, 3)):
        raise UserError(f"{path}: images of shape {x.shape}; give (N, H, W), (N, H, W, C) or (N, C, H, W) with 1 or 3 "
                        "channels")
    if x.shape[0] == 0 or 0 in x.shape[2:]:
        raise UserError(f"{path}: images of shape {x.shape} hold no pixels; give at least one non-empty image")
    kind = x.dtype.kind
    if kind == "b":
        return np.ascontiguousarray(x, dtype=np.float32)
    if kind not in "iuf":
        raise UserError(f"{path}: images of dtype {x.dtype}; give integer or float pixels")
    if kind == "f" and not np.isfinite(x).all():
        raise UserError(f"{path}: images hold NaN or inf; give finite pixel values")
    lo, hi = float(x.min()), float(x.max())
    if x.dtype == np.uint8:
        scale = 255.0
    elif x.dtype == np.uint16:
        scale = 65535.0
    elif lo >= 0 and hi <= 1.0:
        scale = 1.0
    elif lo >= 0 and hi <= 255:
        scale = 255.0
    else:
        raise UserError(f"{path}: pixel values span [{lo:g}, {hi:g}]; give [0, 1] floats or [0, 255] values")
    return np.ascontiguousarray(x, dtype=np.float32) / np.float32(scale)


def to_labels(y: np.ndarray, n: int, path: Path) -> np.ndarray:
    """int64 (N,) >= 0 from (N,) or (N, 1) integer labels (floats with integer values accepted)."""
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or y.shape[0] != n:
        raise UserError(f"{path}: labels of shape {y.shape} for {n} images; give one integer label per image")
    if y.dtype.kind not in "iuf" or (y.dtype.kind == "f" and not (np.isfinite(y).all() and (y == np.round(y)).all())):
        raise UserError(f"{path}: labels of dtype {y.dtype} are not whole numbers; give integer class ids")
    if y.size and (y.min() < 0 or y.max() > 2**31):
        raise UserError(f"{path}: labels span [{y.min()}, {y.max()}]; give class ids from 0")
    return y.astype(np.int64)


# -- MNIST-style IDX -------------------------------------------------------------------------------------------

def _open(path: Path):
    regular_file(path)
    return gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")


def read_idx(path: str | Path, max_bytes: int = DEFAULT_MAX_BYTES) -> np.ndarray:
    """An IDX file (unsigned-byte data): magic 0x0000 08 ND, then ND big-endian uint32 sizes, then the bytes. The
    sizes are checked against the file's length and ``max_bytes`` before the data is read."""
    path = Path(path)
    try:
        with _open(path) as fh:
            head = fh.read(4)
            if len(head) < 4 or head[0] != 0 or head[1] != 0 or head[2] != 0x08 or not 1 <= head[3] <= 4:
                raise UserError(f"{path} is not an unsigned-byte IDX file of 1 to 4 dimensions (magic 0x00000801 to "
                                "0x00000804); replace the file")
            raw_dims = fh.read(4 * head[3])
            if len(raw_dims) < 4 * head[3]:
                raise UserError(f"{path} ends inside its IDX header; the file is damaged or truncated: replace it")
            dims = [int.from_bytes(raw_dims[4 * i : 4 * i + 4], "big") for i in range(head[3])]
            n = math.prod(dims)
            _check_budget(path, n, max_bytes, f"IDX sizes {dims}")
            if path.suffix != ".gz" and path.stat().st_size != 4 + 4 * head[3] + n:
                raise UserError(f"{path} holds {path.stat().st_size - 4 - 4 * head[3]} bytes of data but its header "
                                f"says {dims}; the file is damaged or truncated: replace it")
            data = fh.read(n + 1)
    except (OSError, EOFError, zlib.error) as exc:
        raise _damaged(path, exc) from None
    if len(data) != n:
        raise UserError(f"{path} holds {'more than ' if len(data) > n else ''}{min(len(data), n)} bytes of data but "
                        f"its header says {dims}; the file is damaged or truncated: replace it")
    return np.frombuffer(data, dtype=np.uint8).reshape(dims)


def _find(files: list[Path], stems: list[str]) -> Path | None:
    for stem in stems:
        for name in (stem, stem + ".gz"):
            hits = [f for f in files if f.name == name]
            if hits:
                return hits[0]
    return None


def load_idx(root: Path, split: str, max_bytes: int = DEFAULT_MAX_BYTES, files: list[Path] | None = None):
    prefix = "train" if split == "train" else "t10k"
    files = walk(root) if files is None else files
    img = _find(files, [f"{prefix}-images-idx3-ubyte", f"{prefix}-images.idx3-ubyte"])
    lab = _find(files, [f"{prefix}-labels-idx1-ubyte", f"{prefix}-labels.idx1-ubyte"])
    if img is None or lab is None:
        return None
    images, labels = read_idx(img, max_bytes), read_idx(lab, max_bytes)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise UserError(f"{img} ({images.shape}) and {lab} ({labels.shape}) do not match; give the images and labels "
                        "files of one dataset, one label per image")
    return to_unit_images(images, img), labels.astype(np.int64)


# -- CIFAR-10 python pickles -----------------------------------------------------------------------------------

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
    except (pickle.UnpicklingError, OSError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError,
            MemoryError, RecursionError, UnicodeDecodeError) as exc:
        raise _damaged(path, exc) from None  # what a damaged pickle stream raises (nothing else can run in it)


def read_cifar_batch(path: Path) -> dict:
    """One CIFAR-10 python batch through the restricted unpickler: {b'data': (N, 3072) uint8, b'labels': (N,)}."""
    batch = read_pickle(path)
    if not isinstance(batch, dict) or b"data" not in batch or b"labels" not in batch:
        raise UserError(f"{path} is not a CIFAR-10 python batch (no b'data' and b'labels' entries); use the original "
                        "CIFAR-10 batches")
    data = batch[b"data"]
    try:
        labels = np.asarray(batch[b"labels"])
    except (ValueError, TypeError):
        labels = np.asarray([])
    if (not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072
            or labels.ndim != 1 or data.shape[0] != labels.shape[0] or labels.dtype.kind not in "iu"):
        raise UserError(f"{path} holds data {getattr(data, 'shape', type(data).__name__)} "
                        f"{getattr(data, 'dtype', '')} and labels {labels.shape} {labels.dtype}; a CIFAR-10 batch holds "
                        "(N, 3072) uint8 and N integer labels; use the original CIFAR-10 batches")
    return {b"data": data, b"labels": to_labels(labels, data.shape[0], path)}


def load_cifar(root: Path, split: str, max_bytes: int = DEFAULT_MAX_BYTES):
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    for folder in (root, root / "cifar-10-batches-py"):
        files = [folder / n for n in names]
        if all(f.is_file() for f in files):
            _check_budget(folder, sum(f.stat().st_size for f in files), max_bytes, "CIFAR batches")
            xs, ys = [], []
            for f in files:
                batch = read_cifar_batch(f)
                xs.append(batch[b"data"].reshape(-1, 3, 32, 32))
                ys.append(batch[b"labels"])
            return to_unit_images(np.concatenate(xs), folder), np.concatenate(ys)
    return None


def cifar_folder(root: Path) -> Path | None:
    """The folder of a CIFAR-10 tree (the root or its cifar-10-batches-py/), or None."""
    for folder in (root, root / "cifar-10-batches-py"):
        if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
            return folder
    return None


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



# -- Keras-style .npz --------------------------------------------------------------------------------------------

def _npy_header(zf: zipfile.ZipFile, member: str, path: Path, max_bytes: int) -> None:
    """Check one ``.npy`` member's declared shape and dtype against its stored length and the budget, reading only
    its header."""
    info = zf.getinfo(member)
    with zf.open(info) as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
        header = fh.tell()
    if dtype.hasobject:
        raise UserError(f"{path}: {member} holds Python objects (a pickle); save plain numeric arrays (np.savez)")
    n = math.prod(shape)
    _check_budget(path, n, max_bytes, f"{member} of shape {shape}")
    if header + n * dtype.itemsize != info.file_size:
        raise UserError(f"{path}: {member} declares shape {shape} {dtype} but stores {info.file_size - header} bytes; "
                        "the file is damaged: replace it")


def load_npz(root: Path, split: str, max_bytes: int = DEFAULT_MAX_BYTES):
    for f in sorted(root.glob("*.npz")):
        keys = (f"x_{split}", f"y_{split}")
        try:
            regular_file(f)
            with zipfile.ZipFile(f) as zf:
                names = set(zf.namelist())
                if not all(k + ".npy" in names for k in keys):
                    continue
                for k in keys:
                    _npy_header(zf, k + ".npy", f, max_bytes)
            with np.load(f) as z:
                x, y = z[keys[0]], z[keys[1]]
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error, NotImplementedError,
                SyntaxError) as exc:  # NotImplementedError: zipfile on a damaged header's "method"
            raise _damaged(f, exc) from None
        if x.ndim < 1 or y.ndim < 1:
            raise UserError(f"{f}: x_{split} of shape {x.shape} and y_{split} of shape {y.shape}; give arrays of images "
                            "and of labels")
        if x.shape[0] != y.shape[0]:
            raise UserError(f"{f} holds {x.shape[0]} x_{split} images but {y.shape[0]} labels; give one label per image")
        return to_unit_images(x, f), to_labels(y, x.shape[0], f)
    return None


# -- ImageFolder trees ------------------------------------------------------------------------------------------

def _decode(f: Path, max_bytes: int, used: int) -> np.ndarray:
    """One image as float32 (H, W) or (H, W, 3) in [0, 1] (module docstring's modes), its size checked first."""
    from PIL import Image

    regular_file(f)
    with Image.open(f) as im:
        _check_budget(f, used + im.width * im.height * 3, max_bytes, f"{im.width} x {im.height} pixels, with the "
                      "images before it,")
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            a = np.asarray(im, dtype=np.float64)
            if a.min() < 0 or a.max() > 65535:
                raise UserError(f"{f}: 32-bit grey values span [{a.min():g}, {a.max():g}]; give 8- or 16-bit images")
            return (a / 65535.0).astype(np.float32)
        if im.mode == "F":
            return to_unit_images(np.asarray(im)[None], f)[0, 0]
        grey = im.mode in ("1", "L", "LA")
        return np.asarray(im.convert("L" if grey else "RGB"), dtype=np.float32) / np.float32(255.0)


def load_image_folder(root: Path, split: str, max_bytes: int = DEFAULT_MAX_BYTES):
    from PIL import Image

    base = root / split if (root / split).is_dir() else root
    classes = sorted(p for p in base.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith("."))
    files = [(f, label) for label, c in enumerate(classes) for f in walk(c) if f.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        return None
    images, used = [], 0
    for f, _ in files:
        try:
            images.append(_decode(f, max_bytes, used))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:  # PIL: OSError mostly
            raise _damaged(f, exc) from None
        used += images[-1].size
    if any(a.ndim == 3 for a in images):  # a folder mixing grey and colour: colour throughout
        images = [a if a.ndim == 3 else np.repeat(a[..., None], 3, axis=2) for a in images]
    shapes = {a.shape for a in images}
    if len(shapes) != 1:
        raise UserError(f"images in {base} have different sizes {sorted(shapes)[:3]}; resize them to one size")
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(x), np.asarray([label for _, label in files], dtype=np.int64)


def load_folder(root: str | Path, split: str = "train", max_bytes: int = DEFAULT_MAX_BYTES):
    """Detect the format of a local data folder and load its ``split``; never downloads."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} does not exist or is not a folder; give a local folder with {FORMATS}")
    out = (load_idx(root, split, max_bytes) or load_cifar(root, split, max_bytes) or load_npz(root, split, max_bytes)
           or load_image_folder(root, split, max_bytes))
    if out is None:
        raise UserError(f"{root} holds no known data format for split {split!r}; accepted: {FORMATS}")
    return out
