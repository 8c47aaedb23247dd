"""The bad-input catalogue: every bad input a user can give (params, data folders, damaged artefacts, command-line
misuse, selection files) is ONE line on stderr, ``error: <file or dotted field>: <what>; <fix>``, exit status 2,
and nothing at the stage's output paths (no temporary sibling left either).

One data-driven list of cases, each run in process through the stage's real ``main(argv)`` on inputs damaged from
copies of one tiny real run of the early stages (built once per session); a few again as real subprocesses, as
dvc.yaml runs them; one through a real ``dvc repro``."""

from __future__ import annotations

import copy
import gzip
import importlib
import math
import os
import pickle
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from hopfield_replay.io.tables import load_tensors, save_tensors, tensor_meta
from tests.conftest import ROOT, TINY_PARAMS, make_project, run

pytestmark = pytest.mark.usefixtures("one_thread")

WEIGHTS = "unet/diffusion_pytorch_model.safetensors"


def catalogue_params(checkpoints: Path) -> dict:
    """The tiny config with one seed and two arms (the smallest run that has every artefact)."""
    params = yaml.safe_load(TINY_PARAMS.read_text())
    params["seeds"] = [1]
    params["select_replay"] = {**params["select_replay"], "arms": ["energy_high", "random"], "budgets": [10]}
    params["execution"] = {"checkpoint_dir": str(checkpoints)}
    return params


@pytest.fixture(scope="session")
def built(tmp_path_factory) -> Path:
    """The early stages' real outputs, once: prepare .. select_replay on the tiny config (cases damage copies)."""
    root = tmp_path_factory.mktemp("catalogue-built")
    params = root / "params.yaml"
    params.write_text(yaml.safe_dump(catalogue_params(root / "checkpoints")))
    x0, samples, images = root / "x0.safetensors", root / "samples.parquet", root / "images.safetensors"
    steps = [
        ("prepare", {"out-images": images, "out-samples": samples}),
        ("encode", {"images": images, "out": x0}),
        ("train_a", {"x0": x0, "samples": samples, "out": root / "task_a", "out-curves": root / "curves" / "task_a"}),
        ("scores", {"x0": x0, "images": images, "samples": samples, "model": root / "task_a",
                    "out": root / "scores.parquet"}),
        ("train_b", {"x0": x0, "samples": samples, "model": root / "task_a", "out": root / "task_b" / "seed1",
                     "out-curves": root / "curves" / "task_b",
                     "seed": 1}),
        ("forgetting", {"x0": x0, "samples": samples, "scores": root / "scores.parquet", "models-dir": root / "task_b",
                        "out": root / "forgetting.parquet"}),
        ("classifier", {"images": images, "samples": samples, "out": root / "classifier"}),
        ("forecast", {"x0": x0, "images": images, "samples": samples, "model": root / "task_a",
                      "classifier": root / "classifier", "out": root / "forecast.parquet"}),
        ("select_replay", {"scores": root / "scores.parquet", "forecast": root / "forecast.parquet",
                           "forgetting": root / "forgetting.parquet", "x0": x0,
                           "samples": samples, "out": root / "selection.parquet", "out-dir": root / "selection"}),
    ]
    for name, args in steps:
        importlib.import_module(f"stages.{name}").main(argv(params, args))
    return root


def argv(params: Path | None, args: dict) -> list[str]:
    out = [] if params is None else ["--params", str(params)]
    for name, value in args.items():
        if value is not None:
            out += [f"--{name}", str(value)]
    return out


def default_args(stage: str, built: Path, out: Path) -> dict:
    """Good inputs for every stage (the session's artefacts) and outputs under ``out``."""
    common = {"x0": built / "x0.safetensors", "samples": built / "samples.parquet"}
    return {
        "prepare": {"out-images": out / "images.safetensors", "out-samples": out / "samples.parquet"},
        "encode": {"images": built / "images.safetensors", "out": out / "x0.safetensors"},
        "train_a": {**common, "out": out / "task_a", "out-curves": out / "curves_a"},
        "scores": {**common, "images": built / "images.safetensors", "model": built / "task_a",
                   "out": out / "scores.parquet"},
        "train_b": {**common, "model": built / "task_a", "out": out / "task_b" / "seed1", "seed": 1,
                    "out-curves": out / "curves_b"},
        "forgetting": {**common, "scores": built / "scores.parquet", "models-dir": built / "task_b",
                       "out": out / "forgetting.parquet"},
        "select_replay": {**common, "scores": built / "scores.parquet", "forecast": built / "forecast.parquet",
                          "forgetting": built / "forgetting.parquet",
                          "out": out / "selection.parquet", "out-dir": out / "selection"},
        "retrain": {**common, "model": built / "task_a", "selection": built / "selection" / "seed1" /
                    "energy_high-10.parquet", "out": out / "retrain" / "seed1" / "energy_high-10",
                    "out-curves": out / "curves_retrain",
                    "arm": "energy_high", "budget": 10, "seed": 1},
        "evaluate": {**common, "forgetting": built / "forgetting.parquet", "selection": built / "selection.parquet",
                     "models-dir": built / "retrain", "out": out / "replay_forgetting.parquet"},
    }[stage]


class Inputs:
    """One case's workspace: the session's good artefacts (never damaged in place), copies to damage, and ``out``,
    the folder every output path of the stage lies in."""

    def __init__(self, built: Path, tmp: Path):
        self.built, self.tmp, self.out = built, tmp, tmp / "out"
        self.out.mkdir()

    def params(self, *, text: str | None = None, drop: tuple[str, ...] = (), **sections) -> Path:
        """The catalogue params with ``sections`` merged in (a dict updates the section), or raw ``text``."""
        if text is None:
            params = copy.deepcopy(catalogue_params(self.tmp / "checkpoints"))
            for name in drop:
                del params[name]
            for name, value in sections.items():
                params[name] = {**params.get(name, {}), **value} if isinstance(value, dict) else value
            text = yaml.safe_dump(params, sort_keys=False)
        path = self.tmp / "params.yaml"
        path.write_text(text)
        return path

    def copy(self, name: str) -> Path:
        src, dst = self.built / name, self.tmp / "in" / name
        dst.parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        return dst

    def truncated(self, name: str, inner: str | None = None) -> Path:
        """A copy of artefact ``name`` whose file (``name/inner`` for a folder) lost its second half."""
        path = self.copy(name)
        target = path / inner if inner else path
        data = target.read_bytes()
        target.write_bytes(data[: len(data) // 2])
        return path

    def corrupted(self, name: str) -> Path:
        """A copy of artefact ``name`` with 8 bytes in its middle overwritten (same size)."""
        path = self.copy(name)
        data = bytearray(path.read_bytes())
        mid = len(data) // 2
        data[mid:mid + 8] = b"\xff" * 8
        path.write_bytes(bytes(data))
        return path

    def file(self, name: str, content: bytes | str = b"") -> Path:
        path = self.tmp / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return path

    def table(self, name: str, df: pd.DataFrame) -> Path:
        path = self.tmp / "in" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        df.to_parquet(path)
        return path

    def data_folder(self, **params) -> Path:
        """Params for ``prepare`` reading the folder ``tmp/data`` (the case fills it)."""
        root = self.tmp / "data"
        root.mkdir(exist_ok=True)
        return self.params(prepare={"dataset": "folder", "root": str(root), **params})


# ---------------------------------------------------------------------------------------------------------------
# Builders of bad data folders (tiny: 20 images of 6x6, labels 0..9 twice)


def _idx(arr: np.ndarray) -> bytes:
    return bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(n).to_bytes(4, "big") for n in arr.shape) + arr.tobytes()


def idx_folder(w: Inputs, *, n_labels: int = 20, magic: int = 0x08, cut: int = 0, gz: bool = False) -> Path:
    """Params for an MNIST-style folder of 20 images; ``cut`` bytes off the images file's end, ``gz``: its .gz cut
    in half, ``magic``: its type byte."""
    params = w.data_folder()
    root = w.tmp / "data"
    images = _idx(np.random.default_rng(0).integers(0, 256, (20, 6, 6), dtype=np.uint8))
    images = images[:2] + bytes([magic]) + images[3:len(images) - cut]
    labels = _idx((np.arange(n_labels) % 10).astype(np.uint8))
    if gz:
        packed = gzip.compress(images)
        (root / "train-images-idx3-ubyte.gz").write_bytes(packed[: len(packed) // 2])
    else:
        (root / "train-images-idx3-ubyte").write_bytes(images)
    (root / "train-labels-idx1-ubyte").write_bytes(labels)
    return params


def image_folder(w: Inputs, damage: Callable[[Path], None] | None = None, classes: int = 10) -> Path:
    from PIL import Image

    params = w.data_folder()
    for label in range(classes):
        folder = w.tmp / "data" / f"class{label}"
        folder.mkdir()
        for i in range(2):
            Image.fromarray(np.full((6, 6), 20 * label + i, np.uint8), mode="L").save(folder / f"{i}.png")
    if damage:
        damage(w.tmp / "data" / "class3" / "1.png")
    return params


def notes_folder(w: Inputs) -> Path:
    params = w.data_folder()
    (w.tmp / "data" / "notes.txt").write_text("no images here")
    return params


def other_size(path: Path) -> None:
    from PIL import Image

    Image.new("L", (7, 5)).save(path)


def _rename_one_weight(model: Path) -> None:
    """The weight file with one tensor under another name: diffusers alone would only log it and leave that
    weight at its random initial value."""
    from safetensors.torch import load_file, save_file

    path = model / "unet" / WEIGHTS.split("/")[-1]
    tensors = load_file(path)
    name = sorted(tensors)[0]
    tensors[name + "_renamed"] = tensors.pop(name)
    save_file(tensors, path)


def truncated_png(path: Path) -> None:
    """A 6x6 PNG of noise whose image data is cut short (its header intact)."""
    from PIL import Image

    Image.fromarray(np.random.default_rng(0).integers(0, 256, (6, 6), dtype=np.uint8), mode="L").save(path)
    data = path.read_bytes()
    path.write_bytes(data[: 2 * len(data) // 3])


def cifar_batch(data=None, labels=(0, 1)) -> bytes:
    """A pickled CIFAR-10 batch (2 black images unless ``data`` is given)."""
    return pickle.dumps({b"data": np.zeros((2, 3072), np.uint8) if data is None else data, b"labels": list(labels)})


def cifar_folder(w: Inputs, payload: bytes) -> Path:
    """Params for a CIFAR-10 folder whose third batch is ``payload``."""
    params = w.data_folder()
    folder = w.tmp / "data" / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        (folder / f"data_batch_{i}").write_bytes(payload if i == 3 else cifar_batch())
    return params


def cifar_meta_folder(w: Inputs, meta: bytes) -> Path:
    """Params for a good CIFAR-10 folder whose ``batches.meta`` is ``meta``."""
    params = cifar_folder(w, cifar_batch(np.zeros((10, 3072), np.uint8), range(10)))
    (w.tmp / "data" / "cifar-10-batches-py" / "batches.meta").write_bytes(meta)
    return params


class Exploit:
    """A pickle that would run a shell command when loaded: it must be refused before anything runs."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def npz_folder(w: Inputs, write: Callable[[Path], None]) -> Path:
    params = w.data_folder()
    write(w.tmp / "data" / "d.npz")
    return params


def npz_counts(path: Path) -> None:
    np.savez(path, x_train=np.zeros((100, 4, 4), np.uint8), y_train=np.zeros(90, np.int64))


def npz_compressed_damaged(path: Path) -> None:
    """A compressed .npz whose deflate stream is damaged (the zip directory intact)."""
    np.savez_compressed(path, x_train=np.random.default_rng(0).integers(0, 256, (20, 6, 6), dtype=np.uint8),
                        y_train=np.arange(20) % 10)
    data = bytearray(path.read_bytes())
    data[200:216] = b"\xff" * 16
    path.write_bytes(bytes(data))


# ---------------------------------------------------------------------------------------------------------------
# Builders of damaged artefacts


def x0_variant(w: Inputs, name: str, *, drop_last: int = 0, meta: dict | None = None) -> Path:
    tensors = load_tensors(w.built / "x0.safetensors")
    keep = slice(0, len(tensors["sample_id"]) - drop_last)
    path = w.tmp / "in" / name
    save_tensors({k: v[keep] for k, v in tensors.items()}, path,
                 meta={**tensor_meta(w.built / "x0.safetensors"), **(meta or {})})
    return path


def model_variant(w: Inputs, name: str, edit: Callable[[Path], None]) -> Path:
    path = w.copy(name)
    edit(path)
    return path


def selection_variant(w: Inputs, edit: Callable[[pd.DataFrame], pd.DataFrame], name: str = "sel.parquet") -> Path:
    return w.table(name, edit(pd.read_parquet(w.built / "selection.parquet")))


def samples_variant(w: Inputs, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    return w.table("samples.parquet", edit(pd.read_parquet(w.built / "samples.parquet")))


def blocker(w: Inputs) -> Path:
    """A file standing where an output's folder should be."""
    path = w.out / "blocker"
    path.write_text("a file, not a folder")
    return path


def existing_folder(w: Inputs) -> Path:
    path = w.out / "existing"
    path.mkdir()
    (path / "keep.txt").write_text("the user's file")
    return path


# ---------------------------------------------------------------------------------------------------------------
# The catalogue


@dataclass(frozen=True)
class Case:
    id: str
    stage: str
    make_input: Callable[[Inputs], dict]  # argument overrides (``params`` included); None drops an argument
    expect: tuple[str, ...]  # fragments of the one error line: the file or field, and a hint of the fix
    usage: bool = False  # argparse's own usage error (exit 2, its usage lines first)
    marks: tuple = ()


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")

CASES = [
    # -- params --------------------------------------------------------------------------------------------------
    Case("params-file-missing", "prepare", lambda w: {"params": w.tmp / "nope.yaml"},
         ("nope.yaml: params file not found", "pass --params")),
    Case("params-malformed-yaml", "train_a", lambda w: {"params": w.params(text="prepare: {task_a: [0, 1\n")},
         ("params.yaml: not valid YAML (line", "fix the syntax")),
    Case("params-not-a-mapping", "prepare", lambda w: {"params": w.params(text="- 1\n- 2\n")},
         ("params.yaml: must be a mapping of sections", "prepare:")),
    Case("params-misspelt-section", "prepare", lambda w: {"params": w.params(trian_a={"steps": 3})},
         ("trian_a: unknown section", "known: device, seeds")),
    Case("params-unknown-key", "train_a", lambda w: {"params": w.params(train_a={"stepz": 3})},
         ("train_a.stepz: unknown key", "known: steps")),
    Case("params-missing-section", "train_b", lambda w: {"params": w.params(drop=("train_b",))},
         ("train_b: section missing", "copy it from the shipped params.yaml")),
    Case("params-nan-beta", "scores", lambda w: {"params": w.params(scores={"beta_rule": "fixed", "beta": math.nan})},
         ("scores.beta: Input should be a finite number", "got nan")),
    Case("params-inf-lr", "train_a", lambda w: {"params": w.params(train_a={"lr": math.inf})},
         ("train_a.lr: Input should be a finite number", "got inf")),
    Case("params-nan-replay-fraction", "retrain", lambda w: {"params": w.params(retrain={"replay_fraction": math.nan})},
         ("retrain.replay_fraction: Input should be a finite number",)),
    Case("params-resolution-7", "prepare", lambda w: {"params": w.params(prepare={"resolution": 7})},
         ("prepare.resolution: 7 must be a multiple of 4",)),
    Case("params-wrong-type", "train_a", lambda w: {"params": w.params(train_a={"steps": "many"})},
         ("train_a.steps: Input should be a valid integer", "got 'many'")),
    Case("params-bool-for-int", "train_b", lambda w: {"params": w.params(train_b={"batch_size": True})},
         ("train_b.batch_size: Input should be a valid integer", "got True")),
    Case("params-overlapping-tasks", "prepare", lambda w: {"params": w.params(prepare={"task_b": [4, 5]})},
         ("prepare.task_b: classes [4] are also in task_a", "must not overlap")),
    Case("params-unknown-arm", "select_replay", lambda w: {"params": w.params(select_replay={"arms": ["energy_top"]})},
         ("select_replay.arms: unknown arm 'energy_top'", "use one of energy_high")),
    Case("params-device-gpu", "scores", lambda w: {"params": w.params(device="gpu")},
         ("device: 'gpu' is not accepted", "use auto, cpu, cuda or cuda:N")),
    Case("params-folder-without-root", "prepare", lambda w: {"params": w.params(prepare={"dataset": "folder"})},
         ("prepare.root: dataset 'folder' needs root",)),
    Case("params-fixed-beta-without-beta", "scores", lambda w: {"params": w.params(scores={"beta_rule": "fixed"})},
         ("scores.beta: beta_rule 'fixed' needs beta",)),
    Case("params-output-too-large", "prepare",
         lambda w: {"params": w.params(prepare={"resolution": 1024, "max_per_class": None})},
         ("prepare.resolution: 1024 makes a 7.0 GiB images file", "execution.max_output_gb = 4",
          "lower prepare.resolution")),
    Case("params-cuda-without-cuda", "forgetting", lambda w: {"params": w.params(device="cuda")},
         ("device='cuda' but no CUDA device is available", "use 'auto' or 'cpu'"), marks=(NO_CUDA,)),
    # -- data folders (prepare.root) -----------------------------------------------------------------------------
    Case("data-folder-missing", "prepare",
         lambda w: {"params": w.params(prepare={"dataset": "folder", "root": str(w.tmp / "no-such-folder")})},
         ("prepare.root:", "no-such-folder does not exist", "give a local folder with MNIST-style IDX")),
    Case("data-no-known-format", "prepare", lambda w: {"params": notes_folder(w)},
         ("prepare.root:", "holds no known data format", "accepted: MNIST-style IDX")),
    Case("data-idx-gz-truncated", "prepare", lambda w: {"params": idx_folder(w, gz=True)},
         ("prepare.root:", "train-images-idx3-ubyte.gz is damaged or truncated", "replace the file")),
    Case("data-idx-bad-magic", "prepare", lambda w: {"params": idx_folder(w, magic=0x0D)},
         ("prepare.root:", "train-images-idx3-ubyte is not an unsigned-byte IDX file", "replace the file")),
    Case("data-idx-truncated-raw", "prepare", lambda w: {"params": idx_folder(w, cut=36)},
         ("prepare.root:", "train-images-idx3-ubyte holds 684 bytes of data but its header says [20, 6, 6]",
          "replace it")),
    Case("data-idx-header-truncated", "prepare", lambda w: {"params": idx_folder(w, cut=729)},
         ("prepare.root:", "train-images-idx3-ubyte ends inside its IDX header", "replace it")),
    Case("data-idx-count-mismatch", "prepare", lambda w: {"params": idx_folder(w, n_labels=19)},
         ("prepare.root:", "train-images-idx3-ubyte ((20, 6, 6)) and", "do not match", "one label per image")),
    Case("data-png-corrupt", "prepare",
         lambda w: {"params": image_folder(w, lambda p: p.write_bytes(b"\x89PNG\r\n\x1a\n not an image"))},
         ("prepare.root:", "class3/1.png is damaged or truncated", "replace the file")),
    Case("data-png-truncated", "prepare", lambda w: {"params": image_folder(w, truncated_png)},
         ("prepare.root:", "class3/1.png is damaged or truncated", "image file is truncated", "replace the file")),
    Case("data-png-mixed-sizes", "prepare",
         lambda w: {"params": image_folder(w, other_size)},
         ("prepare.root:", "have different sizes", "resize them to one size")),
    Case("data-classes-missing", "prepare", lambda w: {"params": image_folder(w, classes=3)},
         ("prepare.task_a: classes [3, 4] have no samples", "classes present: [0, 1, 2]")),
    Case("data-cifar-corrupt", "prepare", lambda w: {"params": cifar_folder(w, b"\x80\x04}K\x01a.")},
         ("prepare.root:", "data_batch_3 is damaged or truncated", "replace the file")),
    Case("data-cifar-truncated", "prepare", lambda w: {"params": cifar_folder(w, cifar_batch()[:60])},
         ("prepare.root:", "data_batch_3 is damaged or truncated", "replace the file")),
    Case("data-cifar-str-keys", "prepare",
         lambda w: {"params": cifar_folder(w, pickle.dumps({"data": np.zeros((2, 3072), np.uint8), "labels": [0]}))},
         ("prepare.root:", "data_batch_3 is not a CIFAR-10 python batch", "use the original CIFAR-10 batches")),
    Case("data-cifar-crafted-pickle", "prepare",  # the exploit would create a file in the output folder
         lambda w: {"params": cifar_folder(w, cifar_batch(Exploit(w.out / "pwned")))},
         ("prepare.root:", "data_batch_3: refused to load", "system: not part of a CIFAR-10 file",
          "use the original CIFAR-10 files")),
    Case("data-cifar-crafted-meta", "prepare",  # batches.meta beside a batch: class names are read through the same reader
         lambda w: {"params": cifar_meta_folder(w, pickle.dumps({b"label_names": Exploit(w.out / "pwned")}))},
         ("prepare.root:", "batches.meta: refused to load", "system: not part of a CIFAR-10 file",
          "use the original CIFAR-10 files")),
    Case("data-cifar-meta-garbage", "prepare", lambda w: {"params": cifar_meta_folder(w, b"\x80\x04 not a pickle")},
         ("prepare.root:", "batches.meta", "replace the file")),
    Case("data-cifar-wrong-shape", "prepare",
         lambda w: {"params": cifar_folder(w, cifar_batch(np.zeros((2, 100), np.uint8)))},
         ("prepare.root:", "data_batch_3 holds data (2, 100)", "use the original CIFAR-10 batches")),
    Case("data-npz-100-images-90-labels", "prepare", lambda w: {"params": npz_folder(w, npz_counts)},
         ("prepare.root:", "d.npz holds 100 x_train images but 90 labels", "one label per image")),
    Case("data-npz-garbage", "prepare",
         lambda w: {"params": npz_folder(w, lambda p: p.write_bytes(b"PK\x03\x04 junk"))},
         ("prepare.root:", "d.npz is damaged or truncated", "replace the file")),
    Case("data-npz-compressed-damaged", "prepare", lambda w: {"params": npz_folder(w, npz_compressed_damaged)},
         ("prepare.root:", "d.npz is damaged or truncated", "while decompressing data", "replace the file")),
    # -- damaged or foreign artefacts ----------------------------------------------------------------------------
    Case("artefact-x0-truncated", "train_a", lambda w: {"x0": w.truncated("x0.safetensors")},
         ("x0.safetensors: not a readable safetensors file", "rerun the stage that writes it")),
    Case("artefact-images-truncated-encode", "encode", lambda w: {"images": w.truncated("images.safetensors")},
         ("images.safetensors: not a readable safetensors file", "rerun the stage that writes it")),
    Case("artefact-images-truncated-scores", "scores", lambda w: {"images": w.truncated("images.safetensors")},
         ("images.safetensors: not a readable safetensors file", "rerun the stage that writes it")),
    Case("artefact-weights-truncated-scores", "scores", lambda w: {"model": w.truncated("task_a", WEIGHTS)},
         ("task_a: the model folder is damaged", "diffusion_pytorch_model.safetensors", "rerun the stage")),
    Case("artefact-weights-truncated-train_b", "train_b", lambda w: {"model": w.truncated("task_a", WEIGHTS)},
         ("task_a: the model folder is damaged", "diffusion_pytorch_model.safetensors", "rerun the stage")),
    Case("artefact-model-without-unet-config", "scores",
         lambda w: {"model": model_variant(w, "task_a", lambda p: (p / "unet" / "config.json").unlink())},
         ("task_a: the model folder is incomplete (no unet/config.json)", "rerun the stage that wrote it")),
    Case("artefact-weights-of-another-model", "scores",
         lambda w: {"model": model_variant(w, "task_a", _rename_one_weight)},
         ("task_a/unet: its weights do not fit its config", "rerun the stage that wrote it")),
    Case("artefact-model-json-bad", "train_b",
         lambda w: {"model": model_variant(
             w, "task_a", lambda p: (p / "hopfield_replay_model.json").write_text("{oops"))},
         ("hopfield_replay_model.json: not valid JSON", "rerun the stage that wrote the model")),
    Case("artefact-model-unknown-family", "forgetting",
         lambda w: {"models-dir": model_variant(
             w, "task_b", lambda p: (p / "seed1" / "hopfield_replay_model.json").write_text('{"family": "gan"}'))},
         ("seed1: unknown model family 'gan'", "known: ['ddpm', 'sd']")),
    Case("artefact-model-folder-missing", "forgetting", lambda w: {"models-dir": w.tmp / "in" / "empty"},
         ("seed1 is not a hopfield-replay model folder", "run its stage first")),
    Case("artefact-parquet-corrupted", "train_a", lambda w: {"samples": w.corrupted("samples.parquet")},
         ("samples.parquet: not a readable Parquet table", "rerun the stage that writes it")),
    Case("artefact-parquet-truncated", "forgetting", lambda w: {"scores": w.truncated("scores.parquet")},
         ("scores.parquet: not a readable Parquet table", "rerun the stage that writes it")),
    Case("artefact-scores-lacks-columns", "forgetting",
         lambda w: {"params": w.params(forgetting={"timesteps": [100, 250]})},
         ("scores.parquet: lacks columns ['recon_error_a_t250']", "rerun the stage that writes it")),
    Case("artefact-samples-without-task-b", "train_b",
         lambda w: {"samples": samples_variant(w, lambda df: df[df.task == "A"])},
         ("samples.parquet: no task 'B' samples", "rerun prepare")),
    Case("artefact-x0-of-another-family", "train_a",
         lambda w: {"x0": x0_variant(w, "x0.safetensors", meta={"family": "sd"})},
         ("x0.safetensors: holds x0 for model family 'sd' but the model is 'ddpm'", "rerun encode")),
    Case("artefact-x0-missing-samples", "scores", lambda w: {"x0": x0_variant(w, "x0.safetensors", drop_last=5)},
         ("x0.safetensors: sample_id", "is missing", "rerun encode")),
    Case("artefact-encode-input-is-x0", "encode", lambda w: {"images": w.built / "x0.safetensors"},
         ("x0.safetensors: holds no 'images' tensor", "pass the file the stage expects")),
    # -- command line --------------------------------------------------------------------------------------------
    Case("cli-x0-is-parquet", "train_b", lambda w: {"x0": w.built / "samples.parquet"},
         ("samples.parquet: not a readable safetensors file", "pass the file the stage expects")),
    Case("cli-x0-is-a-folder", "train_a", lambda w: {"x0": w.built / "task_a"},
         ("task_a: is a folder, not a tensor file", "pass the .safetensors file")),
    Case("cli-x0-is-weights", "scores", lambda w: {"x0": w.built / "task_a" / WEIGHTS},
         ("diffusion_pytorch_model.safetensors: holds no x0/images and sample_id tensors", "rerun prepare and encode")),
    Case("cli-input-missing", "train_a", lambda w: {"samples": w.tmp / "nope.parquet"},
         ("nope.parquet: table does not exist", "run the stage that writes it first")),
    Case("cli-out-parent-is-a-file-prepare", "prepare", lambda w: {"out-samples": blocker(w) / "samples.parquet"},
         ("blocker/samples.parquet: cannot be written", "blocker is a file, not a folder",
          "pass an output path inside a folder")),
    Case("cli-out-parent-is-a-file-scores", "scores", lambda w: {"out": blocker(w) / "sub" / "scores.parquet"},
         ("scores.parquet: cannot be written", "blocker is a file, not a folder")),
    Case("cli-out-parent-is-a-file-train_a", "train_a", lambda w: {"out": blocker(w) / "task_a"},
         ("task_a: cannot be written", "blocker is a file, not a folder")),
    Case("cli-out-is-an-existing-folder", "prepare", lambda w: {"out-samples": existing_folder(w)},
         ("existing: is a folder, but this output is a file", "pass a file path")),
    Case("cli-missing-argument", "train_a", lambda w: {"out": None},
         ("the following arguments are required: --out",), usage=True),
    Case("cli-seed-not-an-int", "train_b", lambda w: {"seed": "one"},
         ("argument --seed: invalid int value: 'one'",), usage=True),
    # -- replay selection ----------------------------------------------------------------------------------------
    Case("selection-arm-not-a-scores-column", "select_replay",
         lambda w: {"params": w.params(select_replay={"arms": ["knn99_dist_high"]})},
         ("select_replay.arms: arm 'knn99_dist_high' ranks by 'knn99_dist', which is not a column of",
          "use one of energy_a")),
    Case("selection-forecast-of-other-samples", "select_replay",
         lambda w: {"forecast": w.table("forecast.parquet", pd.read_parquet(w.built / "forecast.parquet").iloc[1:])},
         ("does not forecast the task-A samples of", "rerun forecast")),
    Case("selection-forecast-column-clash", "select_replay",
         lambda w: {"forecast": w.table("forecast.parquet", pd.read_parquet(w.built / "forecast.parquet").assign(energy_a=1.0))},
         ("columns ['energy_a'] are also columns of", "rerun forecast")),
    Case("selection-budget-above-samples", "select_replay",
         lambda w: {"params": w.params(select_replay={"budgets": [10, 500]})},
         ("select_replay.budgets: 500 exceeds the 200 task-A samples", "use budgets of at most 200")),
    Case("selection-forgetting-missing", "select_replay", lambda w: {"forgetting": w.tmp / "f.parquet"},
         ("f.parquet: table does not exist", "run the stage that writes it first")),
    Case("selection-table-path-fails", "select_replay",  # the buffer folder must not appear without its table
         lambda w: {"out": blocker(w) / "selection.parquet"},
         ("selection.parquet: cannot be written", "blocker is a file, not a folder")),
    Case("selection-empty-file", "retrain", lambda w: {"selection": w.file("sel.parquet")},
         ("sel.parquet: not a readable Parquet table", "rerun the stage that writes it")),
    Case("selection-no-rows", "retrain", lambda w: {"selection": selection_variant(w, lambda df: df.iloc[:0])},
         ("sel.parquet: is not the buffer of arm energy_high, budget 10, seed 1", "rerun select_replay")),
    Case("selection-extra-arms-retrain", "retrain", lambda w: {"selection": w.built / "selection.parquet"},
         ("selection.parquet: is not the buffer of arm energy_high, budget 10, seed 1", "rerun select_replay")),
    Case("selection-other-seed-retrain", "retrain", lambda w: {"selection": selection_variant(
         w, lambda df: df[df.strategy == "energy_high"].assign(seed=2))},
         ("sel.parquet: is not the buffer of arm energy_high, budget 10, seed 1", "rerun select_replay")),
    Case("selection-extra-arms-evaluate", "evaluate",
         lambda w: {"params": w.params(select_replay={"arms": ["energy_high"]})},
         ("selection.parquet: holds buffers not in the params, e.g. random-10 seed 1", "rerun select_replay")),
    Case("selection-missing-arm-evaluate", "evaluate",
         lambda w: {"params": w.params(select_replay={"arms": ["energy_high", "random", "energy_low"]})},
         ("selection.parquet: holds no buffer for energy_low-10 seed 1", "rerun select_replay")),
    Case("selection-lacks-columns-evaluate", "evaluate", lambda w: {"selection": w.built / "samples.parquet"},
         ("samples.parquet: lacks columns ['strategy', 'budget', 'seed']", "pass the table the stage expects")),
]

BY_ID = {case.id: case for case in CASES}
assert len(BY_ID) == len(CASES), "case ids are unique"


def _tree(folder: Path) -> dict[str, bytes | None]:
    """Every file (its bytes) and folder (None) under ``folder``: what the stage may not change."""
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None) for p in sorted(folder.rglob("*"))}


def _prepare(case: Case, w: Inputs) -> tuple[dict, dict]:
    """The case's arguments (defaults with its overrides) and the output folder's contents before the call."""
    overrides = case.make_input(w)
    params = overrides.pop("params") if "params" in overrides else w.params()
    args = {**default_args(case.stage, w.built, w.out), **overrides}
    return {"params": params, **args}, _tree(w.out)


def _check(case: Case, w: Inputs, code, stderr: str, before: dict) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, f"exit status {code}, stderr:\n{stderr}"
    if case.usage:  # argparse: its usage, then `prog: error: ...`
        assert lines and lines[-1].startswith(f"python -m stages.{case.stage}: error: "), stderr
    else:
        assert len(lines) == 1 and lines[0].startswith("error: "), f"not one error line:\n{stderr}"
    for fragment in case.expect:
        assert fragment in lines[-1], f"{fragment!r} not in {lines[-1]!r}"
    assert _tree(w.out) == before, "the stage wrote, changed or left something in its output folder"


def _param(case: Case):
    return pytest.param(case, id=case.id, marks=case.marks)


def test_the_catalogue_covers_every_class():
    classes = {case.id.split("-")[0] for case in CASES}
    assert classes == {"params", "data", "artefact", "cli", "selection"}
    assert len(CASES) >= 45


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_bad_input_in_process(case, built, tmp_path, capsys):
    w = Inputs(built, tmp_path)
    args, before = _prepare(case, w)
    main = importlib.import_module(f"stages.{case.stage}").main
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(argv(args.pop("params"), args))
    _check(case, w, info.value.code, capsys.readouterr().err, before)


SUBPROCESS = ["params-misspelt-section", "data-idx-gz-truncated", "cli-out-parent-is-a-file-prepare",
              "selection-arm-not-a-scores-column"]


@pytest.mark.parametrize("case", [_param(BY_ID[name]) for name in SUBPROCESS])
def test_bad_input_through_the_command_line(case, built, tmp_path):
    """The same cases as dvc.yaml runs a stage: a fresh `python -m stages.<name>` process."""
    w = Inputs(built, tmp_path)
    args, before = _prepare(case, w)
    proc = subprocess.run([sys.executable, "-m", f"stages.{case.stage}", *argv(args.pop("params"), args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    _check(case, w, proc.returncode, proc.stderr, before)


@pytest.mark.slow
def test_bad_input_through_dvc_repro(tmp_path, tiny_params):
    """A truncated IDX file under `dvc repro`: the user sees the one line, dvc fails and records nothing."""
    w = Inputs(tmp_path, tmp_path)
    params = yaml.safe_load(idx_folder(w, gz=True).read_text())
    project = make_project(tmp_path / "project", {**tiny_params, "prepare": params["prepare"]})
    proc = run(["dvc", "repro", "prepare"], project, check=False, timeout=600)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0, output
    errors = [line for line in output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "prepare.root:" in errors[0] and "is damaged or truncated" in errors[0], output
    assert "exited with 2" in output, output
    lock = project / "dvc.lock"
    assert not lock.exists() or "prepare" not in (yaml.safe_load(lock.read_text()) or {}).get("stages", {})
    assert not (project / "data" / "prepared" / "images.safetensors").exists()
    assert not (project / "data" / "tables" / "samples.parquet").exists()
