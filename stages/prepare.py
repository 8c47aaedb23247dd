"""prepare: load the dataset (never downloads), split into task A and task B by class, resize, scale to [-1, 1].

Writes the images (safetensors, sample_id order) and the samples table (sample_id, task, label, source_index).
sample_id is the sample's index in its source, so it stays the same whatever the class lists or resolution. The
images' metadata records the dataset's class names (index = label), which Stable Diffusion's class prompts use.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from hopfield_replay.io.data import class_names, load_dataset, resize, split_tasks, to_model_range
from hopfield_replay.errors import UserError
from hopfield_replay.io.tables import atomic_path, check_output, save_tensors, write_table
from stages.runner import provenance, stage


def check_size(n: int, channels: int, resolution: int, max_gb: float) -> None:
    """Refuse a prepared images file (float32) larger than ``execution.max_output_gb`` before computing it."""
    size = n * channels * resolution**2 * 4
    if size > max_gb * 2**30:
        raise UserError(f"prepare.resolution: {resolution} makes a {size / 2**30:.1f} GiB images file ({n} samples x "
                        f"{channels} x {resolution} x {resolution} float32), above execution.max_output_gb = "
                        f"{max_gb:g}; lower prepare.resolution or prepare.max_per_class, or raise "
                        "execution.max_output_gb on purpose")


@stage("out-images", "out-samples")
def main(cfg, args):
    p = cfg.prepare
    check_output(args.out_images)
    check_output(args.out_samples)
    try:
        images, labels = load_dataset(p.dataset, p.root, p.split, int(cfg.execution.max_output_gb * 1e9))
        names = class_names(p.dataset, p.root, p.split, labels)
    except UserError as exc:  # the library says what is wrong with the value; the stage names the field
        raise UserError(f"prepare.{'root' if p.dataset == 'folder' else 'dataset'}: {exc}") from None
    try:
        idx_a, idx_b = split_tasks(labels, p.task_a, p.task_b, p.max_per_class)
    except UserError as exc:  # split_tasks names its argument (task_a / task_b)
        raise UserError(f"prepare.{exc}") from None
    keep = np.sort(np.concatenate([idx_a, idx_b]))
    check_size(len(keep), images.shape[1], p.resolution, cfg.execution.max_output_gb)
    x = to_model_range(resize(images[keep], p.resolution))
    samples = pd.DataFrame({"sample_id": keep.astype(np.int64), "task": np.where(np.isin(keep, idx_a), "A", "B"),
                            "label": labels[keep].astype(np.int64), "source_index": keep.astype(np.int64)})
    # The two outputs belong together: both are written to temporaries and renamed at the end.
    with atomic_path(args.out_samples) as tmp_samples, atomic_path(args.out_images) as tmp_images:
        save_tensors({"images": x, "sample_id": torch.from_numpy(keep.astype(np.int64))}, tmp_images,
                     meta={"dataset": p.dataset, "resolution": p.resolution,
                           "class_names": names})
        write_table(samples, tmp_samples, table="samples",
                    meta=provenance(cfg, "prepare", seed=0, device="cpu", table="samples"))
    print(f"prepare: {p.dataset}: task A {len(idx_a)} samples (classes {p.task_a}), task B {len(idx_b)} "
          f"(classes {p.task_b}), {tuple(x.shape[1:])} in [-1, 1]")


if __name__ == "__main__":
    main()
