"""Loaders for every accepted format, from small files the tests write; task splits; the embedded data."""

from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from hopfield_replay.io.data import class_names, load_dataset, load_mnist5k, resize, split_tasks, to_model_range
from hopfield_replay.io.formats import load_folder, read_idx
from hopfield_replay.errors import UserError


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _fake(n=12, h=6, w=6, c=None, seed=0):
    rng = np.random.default_rng(seed)
    shape = (n, h, w) if c is None else (n, h, w, c)
    return rng.integers(0, 256, shape, dtype=np.uint8), np.arange(n) % 4


@pytest.mark.parametrize("gz", [False, True])
def test_idx_raw_and_gz(tmp_path, gz):
    images, labels = _fake()
    for name, arr in (("train-images-idx3-ubyte", images), ("train-labels-idx1-ubyte", labels)):
        data = _idx_bytes(arr)
        if gz:
            (tmp_path / f"{name}.gz").write_bytes(gzip.compress(data))
        else:
            (tmp_path / name).write_bytes(data)
    x, y = load_folder(tmp_path)
    assert x.shape == (12, 1, 6, 6) and x.dtype == np.float32
    np.testing.assert_allclose(x[:, 0] * 255.0, images, atol=1e-4)
    assert y.tolist() == labels.tolist()


def test_idx_header_is_checked(tmp_path):
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01" + (3).to_bytes(4, "big") + b"abc")
    with pytest.raises(UserError, match="not an unsigned-byte IDX"):
        read_idx(tmp_path / "bad")


def test_cifar_pickles(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(1, 6):
        data = rng.integers(0, 256, (4, 3072), dtype=np.uint8)
        with open(folder / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"data": data, b"labels": [i % 10, 1, 2, 3]}, fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({b"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), b"labels": [7, 8]}, fh)
    x, y = load_folder(tmp_path)
    assert x.shape == (20, 3, 32, 32) and y[:4].tolist() == [1, 1, 2, 3]
    xt, yt = load_folder(tmp_path, "test")
    assert xt.shape == (2, 3, 32, 32) and yt.tolist() == [7, 8]


def test_keras_npz(tmp_path):
    images, labels = _fake(c=3)
    np.savez(tmp_path / "data.npz", x_train=images, y_train=labels, x_test=images[:2], y_test=labels[:2])
    x, y = load_folder(tmp_path)
    assert x.shape == (12, 3, 6, 6)
    np.testing.assert_allclose(x.transpose(0, 2, 3, 1) * 255.0, images, atol=1e-4)
    assert load_folder(tmp_path, "test")[0].shape == (2, 3, 6, 6)


def test_image_folder(tmp_path):
    from PIL import Image

    images, labels = _fake(n=6)
    for i, (img, label) in enumerate(zip(images, labels)):
        d = tmp_path / f"class_{label}"
        d.mkdir(exist_ok=True)
        Image.fromarray(img, mode="L").save(d / f"{i}.png")
    x, y = load_folder(tmp_path)
    assert x.shape == (6, 1, 6, 6)
    assert sorted(y.tolist()) == sorted(labels.tolist())


def test_missing_and_unknown_folders(tmp_path):
    with pytest.raises(UserError, match=".* does not exist or is not a folder"):
        load_folder(tmp_path / "nope")
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match=".* holds no known data format"):
        load_folder(tmp_path)
    with pytest.raises(UserError, match="dataset 'folder' needs root"):
        load_dataset("folder", None)


def test_embedded_mnist5k_is_real_mnist():
    x, y = load_mnist5k()
    assert x.shape == (5000, 1, 28, 28) and np.bincount(y).tolist() == [500] * 10
    assert 0.0 <= x.min() and x.max() <= 1.0
    assert 0.08 < x.mean() < 0.2  # MNIST's mean intensity is ~0.13


def test_split_tasks_and_errors():
    labels = np.array([0, 1, 2, 0, 1, 2, 3, 3])
    a, b = split_tasks(labels, [0, 1], [2, 3])
    assert a.tolist() == [0, 1, 3, 4] and b.tolist() == [2, 5, 6, 7]
    a, _ = split_tasks(labels, [0, 1], [2, 3], max_per_class=1)
    assert a.tolist() == [0, 1]
    with pytest.raises(UserError, match="task_a: empty class list"):
        split_tasks(labels, [], [2])
    with pytest.raises(UserError, match=r"task_b: classes \[9\] have no samples"):
        split_tasks(labels, [0], [9])
    with pytest.raises(UserError, match=r"task_b: classes \[1\] are also in task_a"):
        split_tasks(labels, [0, 1], [1, 2])


def test_resize_and_range():
    x = np.random.default_rng(0).random((3, 1, 28, 28)).astype(np.float32)
    small = resize(x, 16)
    assert tuple(small.shape) == (3, 1, 16, 16)
    assert abs(float(small.mean()) - float(x.mean())) < 0.02  # antialiased: preserves mean intensity
    scaled = to_model_range(small)
    assert float(scaled.min()) >= -1 and float(scaled.max()) <= 1


def test_class_names_follow_the_detected_format(tmp_path):
    from PIL import Image

    from hopfield_replay.io.data import CIFAR10_CLASSES, class_names

    labels = np.array([0, 1, 2])
    assert class_names("digits", None, "train", labels) == ["0", "1", "2"]
    cifar = tmp_path / "c" / "cifar-10-batches-py"
    cifar.mkdir(parents=True)
    (cifar / "data_batch_1").write_bytes(b"")
    assert class_names("folder", str(tmp_path / "c"), "train", np.arange(10)) == CIFAR10_CLASSES
    tree = tmp_path / "tree"
    for name in ("cat", "ant", "bee"):
        (tree / name).mkdir(parents=True)
        Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(tree / name / "x.png")
    assert class_names("folder", str(tree), "train", labels) == ["ant", "bee", "cat"]


def _cifar_folder(tmp_path, batch_bytes: bytes) -> Path:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    good = pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(batch_bytes if i == 3 else good)
    return folder


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_crafted_cifar_pickle_is_refused_and_runs_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folder = _cifar_folder(tmp_path, pickle.dumps({b"data": _Exploit(), b"labels": [0]}))
    with pytest.raises(UserError, match=r"data_batch_3: refused to load (posix|os)\.system"):
        load_folder(folder)
    assert not (tmp_path / "pwned").exists()


def _meta_folder(tmp_path, meta: bytes | None, beside: str = "data_batch_1") -> Path:
    """A folder with one (possibly empty) CIFAR file and a ``batches.meta`` of the given bytes."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    (folder / beside).write_bytes(b"")
    if meta is not None:
        (folder / "batches.meta").write_bytes(meta)
    return tmp_path


@pytest.mark.parametrize("beside", ["data_batch_1", "test_batch"])
def test_a_crafted_cifar_meta_is_refused_and_runs_nothing(tmp_path, monkeypatch, beside):
    """batches.meta goes through the same restricted reader as the batches (it used to be a plain pickle.load whose
    every error was swallowed), even beside an empty batch file and an .npz."""
    monkeypatch.chdir(tmp_path)
    root = _meta_folder(tmp_path, pickle.dumps({b"label_names": _Exploit()}), beside)
    np.savez(root / "d.npz", x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.zeros(2, np.int64))
    with pytest.raises(UserError, match=r"batches.meta: refused to load (posix|os)\.system"):
        class_names("folder", str(root), "train", np.arange(10))
    assert not (tmp_path / "pwned").exists()


def test_cifar_meta_names_are_read_and_a_damaged_meta_is_named(tmp_path):
    names = [f"class{i}".encode() for i in range(10)]
    good = _meta_folder(tmp_path / "good", pickle.dumps({b"label_names": names, b"num_vis": 3072}))
    assert class_names("folder", str(good), "train", np.arange(10)) == [n.decode() for n in names]
    assert class_names("folder", str(_meta_folder(tmp_path / "none", None)), "train", np.arange(10))[0] == "airplane"
    for name, meta, message in [("garbage", b"\x80\x04 junk", "damaged or truncated"),
                                ("no-names", pickle.dumps({b"other": 1}), "not a CIFAR-10 batches.meta"),
                                ("bad-utf8", pickle.dumps({b"label_names": [b"\xff\xfe"]}), "not UTF-8")]:
        with pytest.raises(UserError, match=rf"batches.meta.*{message}"):
            class_names("folder", str(_meta_folder(tmp_path / name, meta)), "train", np.arange(10))


def test_nothing_but_the_restricted_reader_unpickles():
    """No project code calls pickle, or torch.load / np.load in a form that unpickles: data.read_pickle is the one
    reader, through the restricted unpickler."""
    import ast

    root = Path(__file__).resolve().parents[1]
    found = []
    for folder in ("src", "stages", "flows", "tools", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            tree = ast.parse(path.read_text(), filename=str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                    name = f"{node.value.id}.{node.attr}"
                    if node.value.id in ("pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve", "marshal"):
                        found.append((path.relative_to(root).as_posix(), name))
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                    kw = {k.arg: k.value for k in node.keywords}
                    owner = getattr(node.func.value, "id", "")
                    if owner == "torch" and not (isinstance(kw.get("weights_only"), ast.Constant)
                                                 and kw["weights_only"].value is True):
                        found.append((path.relative_to(root).as_posix(), "torch.load without weights_only=True"))
                    if owner == "np" and isinstance(kw.get("allow_pickle"), ast.Constant) and kw["allow_pickle"].value:
                        found.append((path.relative_to(root).as_posix(), "np.load(allow_pickle=True)"))
    allowed = {("src/hopfield_replay/io/formats.py", "pickle.Unpickler"), ("src/hopfield_replay/io/formats.py", "pickle.UnpicklingError")}
    assert sorted(set(found) - allowed) == []
    assert allowed <= set(found)  # the scan sees the reader itself


@pytest.mark.parametrize("name, payload, message", [
    ("str keys", pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0, 1]}), "not a CIFAR-10 python batch"),
    ("truncated", pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]})[:50], "truncated"),
    ("wrong shape", pickle.dumps({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}), r"holds data \(2, 100\)"),
])
def test_damaged_cifar_batches_are_one_user_error(tmp_path, name, payload, message):
    with pytest.raises(UserError, match=message):
        load_folder(_cifar_folder(tmp_path, payload))


def test_damaged_files_of_every_format_are_named(tmp_path):
    idx = tmp_path / "idx"
    idx.mkdir()
    images = gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2]) + bytes(8))
    (idx / "train-images-idx3-ubyte.gz").write_bytes(images[: len(images) // 2])
    (idx / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 2, 0, 1]))
    with pytest.raises(UserError, match=r"train-images-idx3-ubyte.gz is damaged or truncated"):
        load_folder(idx)
    npz = tmp_path / "npz"
    npz.mkdir()
    np.savez(npz / "d.npz", x_train=np.zeros((100, 4, 4), np.uint8), y_train=np.zeros(90, np.int64))
    with pytest.raises(UserError, match=r"d.npz holds 100 x_train images but 90 labels"):
        load_folder(npz)
    (npz / "d.npz").write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(UserError, match=r"d.npz is damaged or truncated"):
        load_folder(npz)
    png = tmp_path / "png" / "cat"
    png.mkdir(parents=True)
    (png / "a.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    with pytest.raises(UserError, match=r"a.png is damaged or truncated"):
        load_folder(tmp_path / "png")


@pytest.mark.parametrize("name", ["train-images-idx3-ubyte", "d.npz", "class0/x.png"])
def test_a_fifo_in_a_data_folder_is_refused_without_blocking(tmp_path, name):
    """A FIFO where a data file is expected would block the reader forever: it is refused in one line (a 10 s
    alarm turns a hang into a failure)."""
    import signal

    target = tmp_path / name
    target.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(target)
    if name.startswith("train-images"):
        (tmp_path / "train-labels-idx1-ubyte").write_bytes(bytes([0, 0, 8, 1, 0, 0, 0, 1, 0]))

    def hung(*_):
        raise AssertionError(f"reading a folder with a FIFO {name} blocked")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        with pytest.raises(UserError, match="not a regular file"):
            load_folder(tmp_path)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
