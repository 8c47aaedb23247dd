"""Checkpoints of a training run: where and how often they are saved (``CheckpointPolicy``, params ``execution``),
the file of one run (``Checkpoint``, keyed by ``run_key``) and what it holds (``training_state``).

A checkpoint holds everything the loop's next step depends on, so a run resumed from it takes the same steps as one
that never stopped: on the CPU, bitwise the same model. Its key is a hash of everything the run depends on (config,
device, inputs, initial weights, versions), so a checkpoint is never used for another run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .base import DenoisingModel


@dataclass(frozen=True)
class CheckpointPolicy:
    """Where and how often a training run saves its checkpoint (params ``execution``): after every ``every_steps``
    steps (when set) and whenever ``every_minutes`` have passed since the last save."""

    directory: Path
    every_minutes: float = 10.0
    every_steps: int | None = None

    @classmethod
    def from_params(cls, execution) -> "CheckpointPolicy":
        return cls(Path(execution.checkpoint_dir), execution.checkpoint_every_minutes,
                   execution.checkpoint_every_steps)


def run_key(*parts) -> str:
    """A hash of everything a training run depends on: tensors by their bytes, anything else by its JSON."""
    from .. import __version__

    h = hashlib.blake2b(digest_size=12)
    for part in (*parts, __version__, torch.__version__):
        if isinstance(part, torch.Tensor):
            t = part.detach().cpu().contiguous()
            h.update(f"{t.dtype}{tuple(t.shape)}".encode())
            h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


class Checkpoint:
    """The checkpoint file of one training run: ``<directory>/<desc>-<key>.pt``, written atomically (a temporary
    sibling renamed over it) and read with ``torch.load(weights_only=True)`` (tensors and plain data only)."""

    def __init__(self, policy: CheckpointPolicy, desc: str, key: str):
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", desc).strip("_")
        self.policy, self.path = policy, policy.directory / f"{slug}-{key}.pt"
        self._saved_at, self._step_saved = time.monotonic(), 0

    def load(self) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            return torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - a damaged checkpoint is only lost time: start over
            print(f"checkpoint {self.path} is unreadable ({type(exc).__name__}); starting from step 0")
            return None

    def due(self, step: int) -> bool:
        every = self.policy.every_steps
        return bool((every and step - self._step_saved >= every)
                    or time.monotonic() - self._saved_at >= 60 * self.policy.every_minutes)

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.path)
        self._saved_at, self._step_saved = time.monotonic(), state["step"]

    def remove(self) -> None:
        for path in self.path.parent.glob(f"*{self.path.name}*"):
            path.unlink(missing_ok=True)


def trainable_weights(model: DenoisingModel) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.unet.named_parameters() if p.requires_grad}


def training_state(model, opt, gen, losses, step: int, device: torch.device, *, lr_schedule=None, ema=None,
                   curves: list[dict] | None = None) -> dict:
    """Everything the loop's next step depends on: trainable weights, AdamW (and LR schedule, EMA) state, the
    sampling generator and its device, the global (and CUDA) RNG, the losses so far and the step; and the training
    curves' points so far, when the run measures them."""
    state = {"step": step, "losses": list(losses), "generator": gen.get_state(), "generator_device": gen.device.type,
             "torch_rng": torch.get_rng_state(),
             "weights": {k: v.detach().cpu().clone() for k, v in trainable_weights(model).items()},
             "optimizer": opt.state_dict()}
    if lr_schedule is not None:
        state["lr_schedule"] = lr_schedule.state_dict()
    if ema is not None:
        state["ema"] = ema.state_dict()
    if curves is not None:
        state["curves"] = [dict(p) for p in curves]
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def restore_training_state(state: dict, model, opt, gen, device: torch.device, *, lr_schedule=None, ema=None
                           ) -> tuple[int, list[float]]:
    """Put ``training_state``'s contents back; returns (step, losses so far)."""
    with torch.no_grad():
        for name, p in trainable_weights(model).items():
            p.copy_(state["weights"][name])
    opt.load_state_dict(state["optimizer"])
    if lr_schedule is not None:
        lr_schedule.load_state_dict(state["lr_schedule"])
    if ema is not None:
        ema.load_state_dict(state["ema"])
        ema.to(device)
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return int(state["step"]), list(state["losses"])
