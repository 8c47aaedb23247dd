"""The one training loop every family shares (AdamW on the epsilon loss, replay mixed into each batch), its
checkpoints, and ``train_and_save``, the training run of train_a, train_b and every replay arm.

    x_t = scheduler.add_noise(x0, eps, t) = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,    t ~ U{0..T-1}, eps ~ N(0, I)
    loss = mean |eps_theta(x_t, t, y) - eps|^2

Batch indices, timesteps and noise come from one generator seeded with ``config.seed``: on the CPU a CPU generator
(drawn in the order indices, replay indices, timesteps, noise: the same draws as every earlier version, so CPU
runs are bitwise reproducible and unchanged), on CUDA a generator on the GPU, so a step needs no host work (the
same seed gives the same run on the same device). Each step's loss stays on the device and is read into a Python
float every ``log_every`` steps, before a checkpoint and at the end: no host sync per step. On CUDA, AdamW is the
fused kernel; ``torch.compile`` and channels-last are opt-in keywords.

A checkpoint holds everything the loop's next step depends on (trainable weights, AdamW state, the sampling
generator and its device, the global RNG, the losses so far, the step), so a run resumed from it takes the same
steps as one that never stopped: on the CPU, bitwise the same model. It is keyed by a hash of everything the run
depends on (config, device, inputs, initial weights, versions), so a checkpoint is never used for another run.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..devices import autocast
from .base import DenoisingModel


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    seed: int = 0
    replay_fraction: float = 0.25
    grad_clip: float = 1.0


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


def _trainable(model: DenoisingModel) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.unet.named_parameters() if p.requires_grad}


def _state(model, opt, gen, losses, step: int, device: torch.device) -> dict:
    state = {"step": step, "losses": list(losses), "generator": gen.get_state(), "generator_device": gen.device.type,
             "torch_rng": torch.get_rng_state(),
             "weights": {k: v.detach().cpu().clone() for k, v in _trainable(model).items()},
             "optimizer": opt.state_dict()}
    if device.type == "cuda":
        state["cuda_rng"] = torch.cuda.get_rng_state(device)
    return state


def _restore(state: dict, model, opt, gen, device: torch.device) -> tuple[int, list[float]]:
    with torch.no_grad():
        for name, p in _trainable(model).items():
            p.copy_(state["weights"][name])
    opt.load_state_dict(state["optimizer"])
    gen.set_state(state["generator"])
    torch.set_rng_state(state["torch_rng"])
    if "cuda_rng" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_rng"], device)
    return int(state["step"]), list(state["losses"])


def sampling_generator(device: torch.device, seed: int) -> torch.Generator:
    """The generator of batch indices, timesteps and noise: on the training device when it is CUDA (no host work
    per step), on the CPU otherwise (the draws of every earlier version)."""
    where = device if device.type == "cuda" else torch.device("cpu")
    return torch.Generator(device=where).manual_seed(seed)


class _Losses:
    """The per-step losses: each step's loss is kept as a (device) tensor and read into Python floats, all at once,
    every ``every`` steps (then the progress bar shows their mean), before a checkpoint and at the end."""

    def __init__(self, done: list[float], every: int, bar):
        self.values, self.pending, self.every, self.bar = list(done), [], every, bar

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss.detach())
        if (len(self.values) + len(self.pending)) % self.every == 0:
            self.read()
            self.bar.set_postfix(loss=f"{sum(self.values[-self.every:]) / self.every:.4f}")

    def read(self) -> list[float]:
        if self.pending:
            self.values.extend(torch.stack(self.pending).tolist())  # float32 -> float, exactly float(loss)
            self.pending.clear()
        return self.values


def train_denoiser(
    model: DenoisingModel,
    x0: torch.Tensor,
    config: TrainConfig,
    *,
    labels: torch.Tensor | None = None,
    replay_x0: torch.Tensor | None = None,
    replay_labels: torch.Tensor | None = None,
    device: torch.device = torch.device("cpu"),
    desc: str = "train",
    progress: bool = True,
    checkpoint: Checkpoint | None = None,
    log_every: int = 50,
    compile_unet: bool = False,
    channels_last: bool = False,
) -> list[float]:
    """AdamW on the epsilon loss. With a replay buffer, each batch holds round(replay_fraction * batch_size)
    buffer samples and the rest from ``x0``; the sampling stream is seeded so arms differ only in the buffer.

    x0 and replay_x0 are in model space. With ``checkpoint``, resume from it when it exists and save it when due.
    ``log_every``: steps between reads of the losses to the host (and progress-bar updates). ``compile_unet``:
    run the noise prediction through ``torch.compile``; ``channels_last``: UNet weights and inputs in channels-last
    memory format during training (both off by default; they change the arithmetic, not the method).
    Returns the per-step losses.
    """
    if x0.shape[0] == 0:
        raise ValueError("training set is empty")
    if log_every < 1:
        raise ValueError(f"log_every={log_every}: must be >= 1")
    has_replay = replay_x0 is not None and replay_x0.shape[0] > 0
    n_replay = int(round(config.replay_fraction * config.batch_size)) if has_replay else 0
    n_new = config.batch_size - n_replay
    torch.manual_seed(config.seed)
    gen = sampling_generator(device, config.seed)
    draw_on = gen.device
    model.to(device).train()
    if channels_last:
        model.unet.to(memory_format=torch.channels_last)
    params = model.trainable_parameters()
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    predict = torch.compile(model.predict_noise) if compile_unet else model.predict_noise
    num_t = model.scheduler.config.num_train_timesteps
    x0 = x0.to(device)
    labels = labels.to(device) if labels is not None else None
    if has_replay:
        replay_x0 = replay_x0.to(device)
        replay_labels = replay_labels.to(device) if replay_labels is not None else None
    done: list[float] = []
    start = 0
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None and state.get("generator_device", "cpu") != draw_on.type:
        print(f"checkpoint {checkpoint.path} drew its batches on another device; starting from step 0")
        state = None
    if state is not None:
        start, done = _restore(state, model, opt, gen, device)
        print(f"{desc}: resumed from step {start} of {config.steps} ({checkpoint.path})")
    bar = tqdm(range(start, config.steps), desc=desc, disable=not progress, mininterval=2.0, smoothing=1.0,
               initial=start, total=config.steps)
    losses = _Losses(done, log_every, bar)
    try:
        for step in bar:
            idx = torch.randint(0, x0.shape[0], (n_new,), generator=gen, device=draw_on).to(device)
            batch = x0[idx]
            y = labels[idx] if labels is not None else None
            if n_replay:
                ridx = torch.randint(0, replay_x0.shape[0], (n_replay,), generator=gen, device=draw_on).to(device)
                batch = torch.cat([batch, replay_x0[ridx]])
                if y is not None:
                    y = torch.cat([y, replay_labels[ridx]])
            t = torch.randint(0, num_t, (batch.shape[0],), generator=gen, device=draw_on).to(device)
            noise = torch.randn(batch.shape, generator=gen, device=draw_on).to(device)
            x_t = model.scheduler.add_noise(batch, noise, t)
            if channels_last and x_t.ndim == 4:
                x_t = x_t.contiguous(memory_format=torch.channels_last)
            with autocast(device):
                pred = predict(x_t, t, y)
            loss = torch.nn.functional.mse_loss(pred.float(), noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip:
                torch.nn.utils.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            losses.add(loss)
            if checkpoint is not None and step + 1 < config.steps and checkpoint.due(step + 1):
                checkpoint.save(_state(model, opt, gen, losses.read(), step + 1, device))
    finally:
        if channels_last:
            model.unet.to(memory_format=torch.contiguous_format)
    model.eval()
    return losses.read()


def train_and_save(model: DenoisingModel, x0: torch.Tensor, labels: torch.Tensor | None, config: TrainConfig,
                   device: torch.device, out: str | Path, *, desc: str, replay_x0: torch.Tensor | None = None,
                   replay_labels: torch.Tensor | None = None, extra: dict | None = None,
                   checkpoints: CheckpointPolicy | None = None, compile_unet: bool = False,
                   channels_last: bool = False) -> list[float]:
    """Train (``train_denoiser``), then write the model (``save_pretrained``) and ``train_log.json`` (config,
    device, losses, ``extra``) to the folder ``out``, atomically. With ``checkpoints``, the run saves and resumes
    its checkpoint, and removes it once the model is written. Returns the per-step losses."""
    from ..tables import atomic_path

    checkpoint = None
    if checkpoints is not None:
        weights = sorted(_trainable(model).items())
        speed = {"compile_unet": compile_unet, "channels_last": channels_last}
        speed_key = [speed] if any(speed.values()) else []  # the defaults keep the keys of earlier checkpoints
        key = run_key(asdict(config), str(device), model.family, x0, labels, replay_x0, replay_labels,
                      [name for name, _ in weights], *(w for _, w in weights), *speed_key)
        checkpoint = Checkpoint(checkpoints, desc, key)
    losses = train_denoiser(model, x0, config, labels=labels, replay_x0=replay_x0, replay_labels=replay_labels,
                            device=device, desc=desc, checkpoint=checkpoint, compile_unet=compile_unet,
                            channels_last=channels_last)
    final = sum(losses[-50:]) / len(losses[-50:])
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        log = {"config": asdict(config), "device": str(device), "n_train": int(x0.shape[0]), "final_loss": final,
               "losses": losses, **(extra or {})}
        (Path(tmp) / "train_log.json").write_text(json.dumps(log) + "\n")
    if checkpoint is not None:
        checkpoint.remove()
    print(f"{desc}: {config.steps} steps on {device}, final loss {final:.4f} -> {out}")
    return losses
