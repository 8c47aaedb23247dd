"""Hostile data at every reader: generated shapes, dtypes, headers, truncations and byte flips of IDX, CIFAR,
``.npz`` and ImageFolder data, Parquet tables and safetensors files. Each is either a one-line UserError naming the
file, or data that keeps the documented contract (io/formats.py: float32 (N, C, H, W) in [0, 1], C in {1, 3},
int64 labels >= 0; a table whose schema columns are finite and unique per key); never a traceback or a hang.
The budget is hypothesis's "ci" profile (tests/fuzz_profiles.py); HYPOTHESIS_PROFILE=long runs longer."""

from __future__ import annotations

import gzip
import io
import pickle
import struct
import time
import zipfile

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import example, given
from hypothesis import strategies as st
from PIL import Image

from hopfield_replay.errors import UserError
from hopfield_replay.io import formats
from hopfield_replay.io.tables import KEYS, SCHEMAS, load_tensors, read_table, save_tensors, write_table
import tests.fuzz_profiles  # noqa: F401  (loads the hypothesis budget)
from tests.conftest import ROOT




def refused(call, path) -> str:
    """The call raises one UserError: one line, naming ``path``, short."""
    with pytest.raises(UserError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message and len(message) < 500 and str(path) in message, message
    return message


def keeps_the_image_contract(out) -> None:
    x, y = out
    assert x.dtype == np.float32 and x.ndim == 4 and x.shape[1] in (1, 3) and x.shape[0] == y.shape[0]
    assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    assert y.dtype == np.int64 and (y >= 0).all()


def either(call, path):
    """A reader's outcome: the documented result, or one short line naming the file."""
    try:
        out = call()
    except UserError as exc:
        message = str(exc)
        assert "\n" not in message and len(message) < 500 and str(path) in message, message
        return None
    return out


# -- IDX --------------------------------------------------------------------------------------------------------

def idx_bytes(dims: list[int], data: bytes, magic: bytes = b"\x00\x00\x08") -> bytes:
    return magic + bytes([len(dims)]) + b"".join(struct.pack(">I", d) for d in dims) + data


@given(dims=st.lists(st.integers(0, 9), min_size=0, max_size=5), extra=st.integers(-20, 20), gz=st.booleans(),
       magic=st.sampled_from([b"\x00\x00\x08", b"\x00\x00\x0d", b"\x01\x00\x08"]))
def test_idx_headers_and_lengths(tmp_path_factory, dims, extra, gz, magic):
    n = int(np.prod(dims)) if dims else 0
    raw = idx_bytes(dims, bytes(range(256)) * (max(n + extra, 0) // 256 + 1))[: 4 + 4 * len(dims) + max(n + extra, 0)]
    raw = magic + raw[3:]
    path = tmp_path_factory.mktemp("idx") / ("f.idx" + (".gz" if gz else ""))
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = either(lambda: formats.read_idx(path), path)
    if out is not None:
        assert magic == b"\x00\x00\x08" and 1 <= len(dims) <= 4 and max(n + extra, 0) == n
        assert list(out.shape) == dims


def test_an_idx_header_declaring_terabytes_is_refused_before_reading(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(idx_bytes([2**31, 2**16, 2**16], b"\x00" * 64)))
    start = time.perf_counter()
    assert "above execution.max_output_gb" in refused(lambda: formats.read_idx(path), path)
    assert time.perf_counter() - start < 5


# -- .npz -------------------------------------------------------------------------------------------------------

DTYPES = ["uint8", "uint16", "int8", "int32", "int64", "float16", "float32", "float64", "bool", "complex64"]


@given(shape=st.lists(st.integers(0, 5), min_size=1, max_size=5), dtype=st.sampled_from(DTYPES),
       scale=st.sampled_from([1.0, 255.0, 1000.0, -1.0]), poison=st.sampled_from([None, np.nan, np.inf]),
       label_dtype=st.sampled_from(["int64", "uint8", "float32", "int8"]), label_shift=st.sampled_from([0, -1, 0.5]),
       label_rows=st.integers(-1, 1))
@example(shape=[3, 4, 4, 3], dtype="uint8", scale=255.0, poison=None, label_dtype="int64", label_shift=0, label_rows=0)
@example(shape=[3, 1, 4, 4], dtype="float32", scale=1.0, poison=None, label_dtype="int64", label_shift=0,
         label_rows=0)
def test_npz_arrays_are_converted_or_refused(tmp_path_factory, shape, dtype, scale, poison, label_dtype, label_shift,
                                             label_rows):
    g = np.random.default_rng(len(shape) * 31 + shape[0])
    x = (g.random(shape) * scale).astype(dtype)
    if poison is not None and x.size and x.dtype.kind in "fc":
        x.flat[0] = poison
    n = max(shape[0] + label_rows, 0)
    y = (np.arange(n) % 3 + label_shift).astype(label_dtype)
    path = tmp_path_factory.mktemp("npz") / "d.npz"
    np.savez(path, x_train=x, y_train=y)
    out = either(lambda: formats.load_npz(path.parent, "train"), path)
    if out is not None:
        keeps_the_image_contract(out)
        assert out[0].shape[0] == shape[0] and np.array_equal(out[1], y.astype(np.int64))


def test_an_npy_header_declaring_more_than_it_stores_is_refused_before_allocating(tmp_path):
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False,
                                                   "shape": (10**9, 28, 28)})
    path = tmp_path / "d.npz"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x_train.npy", header.getvalue() + b"\x00" * 100)
        buf = io.BytesIO()
        np.save(buf, np.zeros(3, np.int64))
        zf.writestr("y_train.npy", buf.getvalue())
    start = time.perf_counter()
    assert "above execution.max_output_gb" in refused(lambda: formats.load_npz(tmp_path, "train"), path)
    assert time.perf_counter() - start < 5
    with zipfile.ZipFile(path, "w") as zf:  # within the budget, but shorter than declared
        np.lib.format.write_array_header_1_0(header := io.BytesIO(), {"descr": "|u1", "fortran_order": False,
                                                                       "shape": (3, 8, 8)})
        zf.writestr("x_train.npy", header.getvalue() + b"\x00" * 100)
        zf.writestr("y_train.npy", buf.getvalue())
    assert "stores 100 bytes" in refused(lambda: formats.load_npz(tmp_path, "train"), path)


def flips(data: bytes):
    return st.lists(st.tuples(st.integers(0, len(data) - 1), st.integers(1, 255)), min_size=1, max_size=8)


def flipped(data: bytes, changes, cut: int | None = None) -> bytes:
    raw = bytearray(data)
    for pos, xor in changes:
        raw[pos] ^= xor
    return bytes(raw[:cut] if cut is not None else raw)


def _npz_bytes() -> bytes:
    buf = io.BytesIO()
    np.savez(buf, x_train=np.arange(48, dtype=np.uint8).reshape(3, 4, 4), y_train=np.array([0, 1, 2]))
    return buf.getvalue()


NPZ = _npz_bytes()


@given(changes=flips(NPZ), cut=st.one_of(st.none(), st.integers(0, len(NPZ))))
def test_npz_byte_flips_and_truncations(tmp_path_factory, changes, cut):
    path = tmp_path_factory.mktemp("npzflip") / "d.npz"
    path.write_bytes(flipped(NPZ, changes, cut))
    out = either(lambda: formats.load_npz(path.parent, "train"), path)
    if out is not None:
        keeps_the_image_contract(out)


# -- CIFAR pickles ----------------------------------------------------------------------------------------------

BATCH = pickle.dumps({b"data": np.arange(2 * 3072, dtype=np.uint8).reshape(2, 3072), b"labels": [3, 7]},
                     protocol=2)


@given(changes=flips(BATCH), cut=st.one_of(st.none(), st.integers(0, len(BATCH))))
def test_cifar_byte_flips_and_truncations(tmp_path_factory, changes, cut):
    path = tmp_path_factory.mktemp("cifar") / "data_batch_1"
    path.write_bytes(flipped(BATCH, changes, cut))
    out = either(lambda: formats.read_cifar_batch(path), path)
    if out is not None:
        assert out[b"data"].shape[1] == 3072 and out[b"labels"].dtype == np.int64 and (out[b"labels"] >= 0).all()


# -- ImageFolder ------------------------------------------------------------------------------------------------

MODES = ["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F", "CMYK"]


@given(modes=st.lists(st.sampled_from(MODES), min_size=1, max_size=4),
       sizes=st.lists(st.sampled_from([(4, 4), (4, 5)]), min_size=1, max_size=4))
def test_image_folders_of_every_mode_are_converted_or_refused(tmp_path_factory, modes, sizes):
    root = tmp_path_factory.mktemp("folder")
    g = np.random.default_rng(len(modes))
    for i, mode in enumerate(modes):
        w, h = sizes[i % len(sizes)]
        values = {"F": g.random((h, w)).astype(np.float32), "I": (g.random((h, w)) * 60000).astype(np.int32)}
        im = Image.fromarray(values[mode], mode) if mode in values else Image.new(mode, (w, h), color=None)
        if mode not in values:
            im.putdata([int(v) for v in g.integers(0, 2 if mode == "1" else 200, w * h)] if len(mode) == 1 or
                       mode.startswith("I;") else [tuple(int(c) for c in g.integers(0, 255, len(im.getbands())))
                                                  for _ in range(w * h)])
        (root / f"c{i % 2}").mkdir(exist_ok=True)
        im.save(root / f"c{i % 2}" / f"{i}.tiff")
    out = either(lambda: formats.load_image_folder(root, "train"), root)
    if out is not None:
        keeps_the_image_contract(out)
        assert out[0].shape[0] == len(modes)


def test_a_symlink_out_of_the_data_folder_and_a_deep_tree_are_refused(tmp_path):
    root = tmp_path / "data"
    (root / "a").mkdir(parents=True)
    Image.new("L", (4, 4)).save(root / "a" / "0.png")
    secret = tmp_path / "secret.png"
    Image.new("L", (4, 4)).save(secret)
    (root / "a" / "1.png").symlink_to(secret)
    assert "outside the data folder" in refused(lambda: formats.load_folder(root), root / "a" / "1.png")
    (root / "a" / "1.png").unlink()
    (root / "a" / "loop").symlink_to(root, target_is_directory=True)  # a symlinked folder is never followed
    keeps_the_image_contract(formats.load_folder(root))
    deep = root / "a" / "/".join(["d"] * (formats.MAX_DEPTH + 2))
    deep.mkdir(parents=True)
    assert "nested more than" in refused(lambda: formats.load_folder(root), root)


# -- Parquet tables ---------------------------------------------------------------------------------------------

def forgetting_table(n: int = 6) -> pd.DataFrame:
    return pd.DataFrame({"sample_id": np.arange(n, dtype=np.int64), "task": "A", "label": np.int64(1),
                         "seed": np.int64(1), "t": np.int64(100), "error_a": np.linspace(0.1, 0.6, n),
                         "error": np.linspace(0.2, 0.7, n), "absolute": 0.1, "relative": 0.5})


MUTATIONS = ["nan", "inf", "duplicate", "float_id", "none", "string_error"]


@given(mutation=st.sampled_from(MUTATIONS), row=st.integers(0, 5), column=st.sampled_from(list(SCHEMAS["forgetting"])))
def test_table_values_a_stage_did_not_write_are_refused(tmp_path_factory, mutation, row, column):
    df = forgetting_table()
    if mutation in ("nan", "inf", "none") and SCHEMAS["forgetting"][column] == "object":
        df.loc[row, column] = None  # a missing text value
    elif mutation in ("nan", "inf", "none"):
        df[column] = df[column].astype(float)
        df.loc[row, column] = {"nan": np.nan, "inf": np.inf, "none": None}[mutation]
    elif mutation == "duplicate":
        df.loc[row, KEYS["forgetting"]] = df.loc[(row + 1) % 6, KEYS["forgetting"]].to_numpy()
    elif mutation == "float_id":
        df["sample_id"] = df["sample_id"] + 0.5
    else:
        df["error"] = df["error"].astype(str)
    path = tmp_path_factory.mktemp("table") / "forgetting.parquet"
    write_table(df, path, table="forgetting", meta={"table": "forgetting"})
    refused(lambda: read_table(path), path)


def test_foreign_tables_are_read_as_they_are(tmp_path):
    df = pd.DataFrame({"ci_low": [np.nan, 1.0]})  # the MHN summaries hold NaN for one-seed intervals
    path = write_table(df, tmp_path / "s.parquet", table="mhn_summary", meta={"table": "mhn_summary"})
    assert read_table(path).ci_low.isna().sum() == 1


TABLE = io.BytesIO()
forgetting_table().to_parquet(TABLE)


@given(changes=flips(TABLE.getvalue()), cut=st.one_of(st.none(), st.integers(0, len(TABLE.getvalue()))))
def test_parquet_byte_flips_and_truncations(tmp_path_factory, changes, cut):
    path = tmp_path_factory.mktemp("pq") / "t.parquet"
    path.write_bytes(flipped(TABLE.getvalue(), changes, cut))
    either(lambda: read_table(path, columns=["sample_id", "error"]), path)


# -- safetensors ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tensor_bytes(tmp_path_factory) -> bytes:
    path = tmp_path_factory.mktemp("st") / "x.safetensors"
    save_tensors({"images": torch.arange(48, dtype=torch.float32).reshape(3, 1, 4, 4)}, path, meta={"a": 1})
    return path.read_bytes()


@given(data=st.data())
def test_safetensors_byte_flips_and_truncations(tmp_path_factory, tensor_bytes, data):
    changes = data.draw(flips(tensor_bytes))
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(tensor_bytes))))
    path = tmp_path_factory.mktemp("stflip") / "x.safetensors"
    path.write_bytes(flipped(tensor_bytes, changes, cut))
    either(lambda: load_tensors(path, keys=("images",)), path)


# -- study files ------------------------------------------------------------------------------------------------

STUDY = (ROOT / "studies" / "ddpm-mnist-cpu-ceiling.yaml").read_bytes()


@given(changes=flips(STUDY), cut=st.one_of(st.none(), st.integers(0, len(STUDY))))
def test_study_file_byte_flips_and_truncations(tmp_path_factory, changes, cut):
    from hopfield_replay.analysis.study import load_study

    path = tmp_path_factory.mktemp("study") / "ddpm-mnist-cpu-ceiling.yaml"
    path.write_bytes(flipped(STUDY, changes, cut))
    either(lambda: load_study(path), path)
