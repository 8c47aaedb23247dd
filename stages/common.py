"""What every stage script shares: the command line, params loading, provenance, and one-line errors.

A stage is ``python -m stages.<name> --params params.yaml <paths...>``. Bad input (params, data, paths) ends
the process with ``error: <field>: <what is wrong and what is accepted>`` on stderr and exit status 2; outputs are
written atomically, so a failed stage leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable

from hopfield_replay.params import ParamsError, TrainParams, load_params  # noqa: F401

USER_ERRORS = (ParamsError, ValueError, FileNotFoundError, NotADirectoryError, KeyError)


def parser(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--params", default="params.yaml", help="the params file (default: params.yaml)")
    return ap


def load(args) -> dict:
    return load_params(args.params)


def run(main: Callable[[list[str] | None], None]) -> None:
    """Run a stage's ``main``; turn user errors into one line on stderr and exit status 2."""
    logging.basicConfig(level=os.environ.get("HOPFIELD_REPLAY_LOG", "INFO"), format="%(message)s")
    try:
        main(None)
    except USER_ERRORS as exc:
        msg = exc.args[0] if exc.args else str(exc)
        print(f"error: {msg}", file=sys.stderr)
        sys.exit(2)


def tensor_meta(path) -> dict:
    """The JSON metadata of a tensor file written by ``tables.save_tensors`` (images, model-space x0)."""
    from pathlib import Path

    from safetensors import safe_open

    if not Path(path).is_file():
        raise FileNotFoundError(f"{path} does not exist; run the stage that writes it first (dvc repro)")
    with safe_open(str(path), framework="pt") as fh:
        raw = fh.metadata() or {}
    out = {}
    for k, v in raw.items():
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def load_task(x0_path, samples_path, task: str):
    """(x0, labels, sample_ids) of one task from a tensor file in sample_id order and the samples table.

    ``x0_path`` is the model-space file written by encode (tensor ``x0``: pixels for the DDPM, VAE latents for
    Stable Diffusion) or the prepared images (tensor ``images``).
    """
    import torch

    from hopfield_replay.tables import load_tensors, read_table

    tensors = load_tensors(x0_path)
    key = "x0" if "x0" in tensors else "images"
    if key not in tensors or "sample_id" not in tensors:
        raise ValueError(f"{x0_path}: holds no x0/images and sample_id tensors; rerun prepare and encode")
    samples = read_table(samples_path)
    ids = tensors["sample_id"]
    pos = {int(s): i for i, s in enumerate(ids.tolist())}
    rows = samples[samples["task"] == task].sort_values("sample_id")
    if rows.empty:
        raise ValueError(f"{samples_path}: no task {task!r} samples; rerun prepare")
    missing = [int(s) for s in rows["sample_id"] if int(s) not in pos]
    if missing:
        raise ValueError(f"{x0_path}: sample_id {missing[0]} of {samples_path} is missing; rerun encode (dvc repro)")
    index = torch.tensor([pos[int(s)] for s in rows["sample_id"]])
    return (
        tensors[key][index],
        torch.tensor(rows["label"].to_numpy()),
        rows["sample_id"].to_numpy(),
    )


def check_model_space(model, x0_path) -> None:
    """A model and a model-space file must be of the same family (else: a stale file, rerun encode)."""
    family = tensor_meta(x0_path).get("family")
    if family is not None and family != model.family:
        raise ValueError(f"{x0_path}: holds x0 for model family {family!r} but the model is {model.family!r}; "
                         "rerun encode (dvc repro)")


def build_sd_model(sd, class_names):
    """The ``model.sd`` pipeline (frozen VAE and text encoder, trainable UNet); class names from the dataset
    when ``model.sd.class_names`` is null. Errors name the ``model.sd.*`` field."""
    from hopfield_replay.stable_diffusion import LatentDiffusion

    return LatentDiffusion.from_params(sd, class_names=class_names, where="model.sd")


def params_of(raw: dict, *sections: str) -> dict:
    """The params sections a table depends on: what its params hash covers. Hashing only these (not the whole
    file) keeps a table's bytes, and so DVC's view of everything downstream, unchanged by unrelated params."""
    return {name: raw.get(name) for name in sections}


def device_and_meta(raw: dict, *, sections: tuple[str, ...], seed: int, table: str):
    """The run's device (from the top-level ``device`` param) and the provenance of a table written on it from
    the params ``sections``."""
    from hopfield_replay.devices import describe, resolve_device
    from hopfield_replay.params import device_param
    from hopfield_replay.tables import provenance

    device = resolve_device(device_param(raw))
    return device, provenance(params_of(raw, "device", *sections), seed=seed, device=describe(device), table=table)


def train_and_save(model, x0, labels, tp: TrainParams, device, out, *, desc, replay_x0=None, replay_labels=None,
                   replay_fraction=0.0, extra=None):
    """The training run shared by train_a, train_b and retrain: train, then save the model and its loss log."""
    from hopfield_replay.diffusion import TrainConfig, train_denoiser
    from hopfield_replay.tables import atomic_path

    config = TrainConfig(steps=tp.steps, batch_size=tp.batch_size, lr=tp.lr, weight_decay=tp.weight_decay,
                         seed=tp.seed, replay_fraction=replay_fraction, grad_clip=tp.grad_clip)
    losses = train_denoiser(model, x0, config, labels=labels, replay_x0=replay_x0, replay_labels=replay_labels,
                            device=device, desc=desc)
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        log = {"config": config.__dict__, "device": str(device), "n_train": int(x0.shape[0]),
               "final_loss": sum(losses[-50:]) / len(losses[-50:]), "losses": losses, **(extra or {})}
        (tmp / "train_log.json").write_text(json.dumps(log) + "\n")
    print(f"{desc}: {tp.steps} steps on {device}, final loss {log['final_loss']:.4f} -> {out}")
