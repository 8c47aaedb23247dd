"""generate: what every model generates, judged by the classifier (model A, each seed's task-B model, each arm).

Every model draws ``generation.samples`` images with DDIM (``generation.ddim_steps``) from the same seeded initial
noise, so arms are compared on the same noise. Per model, one row of ``generation.parquet``: the share of samples
the classifier assigns to each class (``share_<c>``), the task-A and task-B shares, the confident share of the
model's own task (confidence >= ``generation.confidence``) beside the same figure for real held-out images (the
floor), the Frechet distance in the classifier's feature space to the real images of that task beside the real
floor and the other task's real images (the scale of the learned rule), and whether the model passes the learned
rule. Model A is judged on task A, each no-replay task-B model on task B (both parts of the rule); a replay arm,
trained on task B and its task-A buffer, on both tasks' classes, by the share part alone (its class mix has no
real counterpart for a Frechet distance; the distance to task B's real images alone is recorded). The first ``generation.grid`` samples of every model go to
``grids.safetensors`` for the report's sample grids.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hopfield_replay.errors import UserError
from hopfield_replay.io.tables import atomic_path, check_output, load_tensors, read_table, save_tensors, write_table
from hopfield_replay.measures.classifier import ImageClassifier
from hopfield_replay.measures.generation import frechet_distance, is_learned, judge, sample, task_share
from hopfield_replay.models import load_model
from hopfield_replay.runtime.devices import resolve_device
from stages.runner import provenance, stage


def load_classifier(folder: Path) -> tuple[ImageClassifier, dict]:
    """The classifier stage's folder: the model and its classifier.json."""
    summary = Path(folder) / "classifier.json"
    if not summary.is_file():
        raise UserError(f"{folder}: not a classifier folder (no classifier.json); rerun the classifier stage")
    try:
        model = ImageClassifier.from_pretrained(folder, local_files_only=True, use_safetensors=True)
        info = json.loads(summary.read_text())
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"{folder}: the classifier is damaged ({type(exc).__name__}); rerun the classifier stage") \
            from None
    return model.eval(), info


def model_list(cfg, args) -> list[dict]:
    """Every model of the run: model A, each seed's task-B model, each arm x seed x budget."""
    out = [{"model": "task_a", "path": Path(args.model_a), "phase": "A", "seed": 0, "strategy": "task_a", "budget": 0}]
    for seed in cfg.seeds:
        out.append({"model": f"task_b/seed{seed}", "path": Path(args.models_b_dir) / f"seed{seed}", "phase": "B",
                    "seed": seed, "strategy": "none", "budget": 0})
        for arm in cfg.select_replay.arms:
            for budget in cfg.select_replay.budgets:
                out.append({"model": f"retrain/seed{seed}/{arm}-{budget}",
                            "path": Path(args.models_dir) / f"seed{seed}" / f"{arm}-{budget}", "phase": "B",
                            "seed": seed, "strategy": arm, "budget": budget})
    return out


def to_prepared(x: torch.Tensor, channels: int, resolution: int) -> torch.Tensor:
    """Decoded samples in the prepared images' layout: the VAE's RGB back to grey (the channel mean, the inverse of
    encode's grey-to-RGB repeat) and its resolution to the classifier's."""
    if x.shape[1] != channels:
        x = x.mean(dim=1, keepdim=True).repeat(1, channels, 1, 1)
    if x.shape[-1] != resolution:
        x = torch.nn.functional.interpolate(x, size=(resolution, resolution), mode="bilinear", antialias=True)
    return x


@stage("images", "samples", "x0", "classifier", "model-a", "models-b-dir", "models-dir", "out", "out-grids")
def main(cfg, args):
    g, device = cfg.generation, resolve_device(cfg.device)
    check_output(args.out)
    check_output(args.out_grids)
    clf, info = load_classifier(args.classifier)
    models = model_list(cfg, args)
    for m in models:  # every model folder before any sampling
        if not m["path"].is_dir():
            raise UserError(f"{m['path']}: no such model folder; rerun the stage that writes it (dvc repro)")
    images = load_tensors(args.images, keys=("images", "sample_id"))
    samples = read_table(args.samples, columns=["sample_id", "task", "label"]).set_index("sample_id")
    ids = images["sample_id"].numpy()
    labels = samples.label.reindex(ids).to_numpy()
    held = np.isin(ids, info["holdout_sample_ids"])
    shape = tuple(load_tensors(args.x0, keys=("x0",))["x0"].shape[1:])
    tasks = {"A": list(cfg.prepare.task_a), "B": list(cfg.prepare.task_b)}
    tasks["A+B"] = tasks["A"] + tasks["B"]  # what a replay arm trained on: task B and its task-A buffer
    real = {k: (images["images"][torch.from_numpy(np.isin(labels, c) & ~held)],
                images["images"][torch.from_numpy(np.isin(labels, c) & held)]) for k, c in tasks.items()}
    floors = {}
    for k, c in tasks.items():
        ref, hold = real[k]
        other = real["A" if k == "B" else "B"][1]  # for A+B: task B alone, as a model that forgot task A draws
        floors[k] = (judge(clf, hold, c, g.confidence).confident_share, frechet_distance(clf, hold, ref),
                     frechet_distance(clf, other, ref))
    rows, grids = [], {}
    resolution = images["images"].shape[-1]
    for m in models:
        judged = m["phase"] if m["strategy"] in ("task_a", "none") else "A+B"
        classes = tasks[judged]
        model = load_model(m["path"]).to(device)
        prompt_labels = torch.tensor(classes).repeat(g.samples // len(classes) + 1)[: g.samples]
        x = sample(model, shape, g.samples, steps=g.ddim_steps, seed=g.seed, batch_size=g.batch_size,
                   labels=prompt_labels)
        x = to_prepared(x, images["images"].shape[1], resolution)
        j = judge(clf, x, classes, g.confidence)
        ref, _ = real[judged]
        fd = frechet_distance(clf, x, ref)
        floor_share, floor_fd, other_fd = floors[judged]
        # a replay arm's class mix (task B and its buffer) has no real counterpart: the share rule only
        learned = is_learned(j.confident_share, floor_share, fd, other_fd, min_ratio=g.learned_min_share_ratio,
                             max_fd_share=g.learned_max_fd_share if judged != "A+B" else math.inf)
        rows.append({**{k: v for k, v in m.items() if k != "path"}, "n": g.samples,
                     "confident_share": j.confident_share, "floor_share": floor_share, "fd": fd, "floor_fd": floor_fd,
                     "other_task_fd": other_fd,
                     "learned": learned, "task_a_share": task_share(j.histogram, tasks["A"]),
                     "task_b_share": task_share(j.histogram, tasks["B"]),
                     **{f"share_{c}": float(v) for c, v in enumerate(j.histogram)}})
        grids[m["model"].replace("/", ":")] = x[: g.grid].contiguous()
        grids[m["model"].replace("/", ":") + ":class"] = torch.from_numpy(j.predicted[: g.grid].astype(np.int64))
        print(f"generate: {m['model']}: confident share {j.confident_share:.2f} (real {floor_share:.2f}), FD {fd:.2f} "
              f"(real {floor_fd:.2f}, other task {other_fd:.1f}), task-A share {rows[-1]['task_a_share']:.2f}: "
              f"{'learned' if learned else 'NOT learned'}")
    df = pd.DataFrame(rows)
    meta = provenance(cfg, "generation", "classifier", seed=g.seed, device=device, table="generation")
    with atomic_path(args.out) as tmp_table, atomic_path(args.out_grids) as tmp_grids:
        write_table(df, tmp_table, table="generation", meta=meta)
        save_tensors(grids, tmp_grids, meta={"classifier_accuracy": info["accuracy"]})


if __name__ == "__main__":
    main()
