"""prepare: load the dataset (never downloads), split into task A and task B by class, resize, scale to [-1, 1].

Writes the images (safetensors, sample_id order) and the samples table (sample_id, task, label, source_index).
sample_id is the sample's index in its source, so it stays the same whatever the class lists or resolution.
The images file's metadata records the dataset's class names (index = label): CIFAR-10's names (from its
batches.meta) for a CIFAR-10 folder, the subfolder names for an ImageFolder tree, else the label numbers; Stable
Diffusion's class prompts use them when model.sd.class_names is null.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hopfield_replay.data import load_dataset, resize, split_tasks, to_model_range
from hopfield_replay.params import PrepareParams, parse_section
from hopfield_replay.tables import provenance, save_tensors, write_table
from stages import common

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _cifar_names(root: Path) -> list[str] | None:
    for folder in (root, root / "cifar-10-batches-py"):
        if (folder / "data_batch_1").is_file() or (folder / "test_batch").is_file():
            meta = folder / "batches.meta"
            if meta.is_file():
                try:
                    with open(meta, "rb") as fh:
                        names = pickle.load(fh, encoding="bytes").get(b"label_names")
                    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]
                except Exception:  # a damaged meta file: the standard names
                    pass
            return list(CIFAR10_CLASSES)
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


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--out-images", default="data/prepared/images.safetensors")
    ap.add_argument("--out-samples", default="data/tables/samples.parquet")
    args = ap.parse_args(argv)
    raw = common.load(args)
    p = parse_section(raw, PrepareParams, "prepare")
    images, labels = load_dataset(p.dataset, p.root, p.split)
    idx_a, idx_b = split_tasks(labels, p.task_a, p.task_b, p.max_per_class)
    keep = np.sort(np.concatenate([idx_a, idx_b]))
    x = to_model_range(resize(images[keep], p.resolution))
    task = np.where(np.isin(keep, idx_a), "A", "B")
    samples = pd.DataFrame({"sample_id": keep.astype(np.int64), "task": task, "label": labels[keep].astype(np.int64),
                            "source_index": keep.astype(np.int64)})
    meta = provenance(common.params_of(raw, "prepare"), seed=0, device="cpu", table="samples")
    save_tensors({"images": x, "sample_id": torch.from_numpy(keep.astype(np.int64))}, args.out_images,
                 meta={"dataset": p.dataset, "resolution": p.resolution,
                       "class_names": class_names(p.dataset, p.root, p.split, labels)})
    write_table(samples, args.out_samples, table="samples", meta=meta)
    print(f"prepare: {p.dataset}: task A {len(idx_a)} samples (classes {p.task_a}), task B {len(idx_b)} "
          f"(classes {p.task_b}), {tuple(x.shape[1:])} in [-1, 1]")


if __name__ == "__main__":
    common.run(main)
