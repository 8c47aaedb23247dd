"""The one training loop every family shares (AdamW on the epsilon loss, replay mixed into each batch) and
``train_and_save``, the training run of train_a, train_b and every replay arm.

    x_t = scheduler.add_noise(x0, eps, t) = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,    t ~ U{0..T-1}, eps ~ N(0, I)
    loss = mean over the batch of |eps_theta(x_t, t, y) - eps|^2
    theta <- AdamW(theta, clip(grad loss), lr_k),   lr_k = lr * schedule(k)   (diffusers.optimization.get_scheduler)
    ema   <- d_k ema + (1 - d_k) theta,             d_k = min(ema_decay, (1 + k) / (10 + k))   (diffusers EMAModel)

Batch indices, timesteps and noise come from one generator seeded with ``config.seed``: on the CPU a CPU generator
(drawn in the order indices, replay indices, timesteps, noise: the same draws as every earlier version, so CPU
runs are bitwise reproducible and unchanged), on CUDA a generator on the GPU, so a step needs no host work (the
same seed gives the same run on the same device). Each step's loss stays on the device and is read into a Python
float every ``log_every`` steps, before a checkpoint and at the end: no host sync per step. On CUDA, AdamW is the
fused kernel; ``torch.compile`` and channels-last are opt-in keywords; bf16 autocast is ``devices.autocast``.

Accelerate runs the processes: under ``accelerate launch --num_processes N`` the UNet is wrapped for data parallel
(DDP) and every process draws the whole batch from the same seeded generator and trains on its own contiguous
1/N of it, so the update is the one-process update of the full batch (up to the order of the gradient sum).
``grad_accumulation`` splits each process's share into that many micro-batches (loss / K each, gradients
synchronised once per step): again the same update, in less memory. With ``ema_decay`` the saved model holds the
EMA weights. Checkpoints: ``checkpoints.py``.
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..runtime.devices import autocast
from ..errors import UserError
from .base import DenoisingModel
from .checkpoints import (Checkpoint, CheckpointPolicy, restore_training_state, run_key, trainable_weights,
                          training_state)

__all__ = ["Checkpoint", "CheckpointPolicy", "TrainConfig", "run_key", "sampling_generator", "train_and_save",
           "train_denoiser"]

LR_SCHEDULES = ("constant", "constant_with_warmup", "linear", "cosine")


@dataclass
class TrainConfig:
    """The settings of one training run. The pipeline never uses these defaults: every stage builds it from the
    validated params (``TrainConfig(**cfg.train_b.loop_settings(), seed=..., replay_fraction=...)``), whose values
    all come from params.yaml. The defaults are the library's, for notebooks and tests (a short run at params.yaml's
    batch size and learning rate); they are not the pipeline's (params.yaml: train_a 600 steps, train_b 200)."""

    steps: int = 1000
    batch_size: int = 64
    lr: float = 2e-4
    weight_decay: float = 0.0
    seed: int = 0
    replay_fraction: float = 0.25
    grad_clip: float = 1.0
    lr_schedule: str = "constant"     # a diffusers.optimization schedule name (LR_SCHEDULES)
    lr_warmup_steps: int = 0
    ema_decay: float | None = None    # None: no EMA; else the saved weights are the EMA of the trained ones
    grad_accumulation: int = 1        # micro-batches per optimiser step (per process)


def _accelerator():
    """The process's Accelerator: data parallel under ``accelerate launch``, a thin no-op otherwise. Precision is
    ours (``devices.autocast``, shared with the measurements), so Accelerate's own mixed precision stays "no"
    (its state is per process and fixed at first use, and one process here may train on the CPU and on CUDA).
    Without CUDA, processes started by ``accelerate launch --multi_gpu`` (or torchrun) train data parallel on the
    CPU over gloo."""
    from accelerate import Accelerator

    return Accelerator(mixed_precision="no", device_placement=False, cpu=not torch.cuda.is_available())


def sampling_generator(device: torch.device, seed: int) -> torch.Generator:
    """The generator of batch indices, timesteps and noise: on the training device when it is CUDA (no host work
    per step), on the CPU otherwise (the draws of every earlier version)."""
    where = device if device.type == "cuda" else torch.device("cpu")
    return torch.Generator(device=where).manual_seed(seed)


class _Losses:
    """The per-step losses: each step's loss is kept as a (device) tensor and read into Python floats, all at once,
    every ``every`` steps (then the progress bar shows their mean), before a checkpoint and at the end. Under data
    parallel, ``reduce`` averages the processes' losses (a collective: every process reads at the same steps)."""

    def __init__(self, done: list[float], every: int, bar, reduce=None):
        self.values, self.pending, self.every, self.bar, self.reduce = list(done), [], every, bar, reduce

    def add(self, loss: torch.Tensor) -> None:
        self.pending.append(loss.detach())
        if (len(self.values) + len(self.pending)) % self.every == 0:
            self.read()
            self.bar.set_postfix(loss=f"{sum(self.values[-self.every:]) / self.every:.4f}")

    def read(self) -> list[float]:
        if self.pending:
            stacked = torch.stack(self.pending)
            if self.reduce is not None:
                stacked = self.reduce(stacked)
            self.values.extend(stacked.tolist())  # float32 -> float, exactly float(loss)
            self.pending.clear()
        return self.values


def check_batch_split(config: TrainConfig, processes: int) -> int:
    """The micro-batch size: batch_size / (processes x grad_accumulation), which must divide exactly."""
    parts = processes * config.grad_accumulation
    if config.batch_size % parts:
        raise UserError(f"batch_size {config.batch_size} does not split into {processes} process(es) x "
                         f"grad_accumulation {config.grad_accumulation}; use a batch_size divisible by {parts}")
    return config.batch_size // parts


def _lr_schedule(opt, config: TrainConfig):
    from diffusers.optimization import get_scheduler

    if config.lr_schedule not in LR_SCHEDULES:
        raise ValueError(f"lr_schedule={config.lr_schedule!r}: use one of {LR_SCHEDULES}")
    return get_scheduler(config.lr_schedule, opt, num_warmup_steps=config.lr_warmup_steps,
                         num_training_steps=config.steps)


def _ema(params, config: TrainConfig, device: torch.device):
    if config.ema_decay is None:
        return None
    from diffusers.training_utils import EMAModel

    return EMAModel(params, decay=config.ema_decay, foreach=device.type == "cuda")


def _optimiser(params, config: TrainConfig, device: torch.device):
    """(AdamW, its LR schedule, the EMA of the weights or None): AdamW is the fused kernel on CUDA."""
    fused = {"fused": True} if device.type == "cuda" else {}
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay, **fused)
    return opt, _lr_schedule(opt, config), _ema(params, config, device)


class _Batches:
    """Each step's noisy batch, drawn from the sampling generator ``gen`` in the order indices, replay indices,
    timesteps, noise: round(replay_fraction * batch_size) samples of the replay buffer (when there is one) after
    the rest from ``x0``. The data sit on the training device; the draws are made on ``gen``'s device."""

    def __init__(self, model: DenoisingModel, x0, labels, replay_x0, replay_labels, config: TrainConfig,
                 gen: torch.Generator, device: torch.device, channels_last: bool):
        has_replay = replay_x0 is not None and replay_x0.shape[0] > 0
        self.n_replay = int(round(config.replay_fraction * config.batch_size)) if has_replay else 0
        self.n_new = config.batch_size - self.n_replay
        self.x0 = x0.to(device)
        self.labels = labels.to(device) if labels is not None else None
        self.replay_x0, self.replay_labels = None, None
        if has_replay:
            self.replay_x0 = replay_x0.to(device)
            self.replay_labels = replay_labels.to(device) if replay_labels is not None else None
        self.scheduler = model.scheduler
        self.num_t = model.scheduler.config.num_train_timesteps
        self.gen, self.device, self.channels_last = gen, device, channels_last

    def draw(self):
        """(x_t, t, noise, labels or None) of the next step's whole batch."""
        gen, draw_on, device = self.gen, self.gen.device, self.device
        idx = torch.randint(0, self.x0.shape[0], (self.n_new,), generator=gen, device=draw_on).to(device)
        batch = self.x0[idx]
        y = self.labels[idx] if self.labels is not None else None
        if self.n_replay:
            ridx = torch.randint(0, self.replay_x0.shape[0], (self.n_replay,), generator=gen, device=draw_on).to(device)
            batch = torch.cat([batch, self.replay_x0[ridx]])
            if y is not None:
                y = torch.cat([y, self.replay_labels[ridx]])
        t = torch.randint(0, self.num_t, (batch.shape[0],), generator=gen, device=draw_on).to(device)
        noise = torch.randn(batch.shape, generator=gen, device=draw_on).to(device)
        x_t = self.scheduler.add_noise(batch, noise, t)
        if self.channels_last and x_t.ndim == 4:
            x_t = x_t.contiguous(memory_format=torch.channels_last)
        return x_t, t, noise, y


def _resume(checkpoint: Checkpoint | None, model, opt, gen, device, lr_schedule, ema, accelerator, desc: str,
            steps: int) -> tuple[int, list[float], list[dict]]:
    """(first step, losses so far, curve points so far): restored from ``checkpoint`` when it exists and drew its
    batches on the device ``gen`` draws on; else (0, [], [])."""
    state = checkpoint.load() if checkpoint is not None else None
    if state is not None and state.get("generator_device", "cpu") != gen.device.type:
        print(f"checkpoint {checkpoint.path} drew its batches on another device; starting from step 0")
        state = None
    if state is None:
        return 0, [], []
    start, done = restore_training_state(state, model, opt, gen, device, lr_schedule=lr_schedule, ema=ema)
    if accelerator.is_main_process:
        print(f"{desc}: resumed from step {start} of {steps} ({checkpoint.path})")
    return start, done, [dict(p) for p in state.get("curves", [])]


def _curve_point(curves, step: int, model, params, ema, losses) -> None:
    """One curve point at ``step``, on the weights the run would save now (the EMA's, swapped in and back: the
    training weights are restored exactly); the training loss is the mean since the previous point."""
    values = losses.read()
    previous = curves.points[-1]["step"] if curves.points else 0
    since = values[previous:step]
    if ema is not None:
        ema.store(params)
        ema.copy_to(params)
    try:
        curves.measure(step, model, sum(since) / len(since) if since else None)
    finally:
        if ema is not None:
            ema.restore(params)
        model.train()


def _backward(predict, model, accelerator, x_t, t, noise, y, *, first: int, micro: int, accumulation: int,
              device: torch.device, cpu_bf16: bool = False) -> torch.Tensor:
    """Loss and backward of this process's share of the batch (rows ``first`` on), in ``accumulation``
    micro-batches of ``micro`` rows, each loss / accumulation; under data parallel the gradients are synchronised
    at the last micro-batch only. Returns the step's loss (detached, the sum of the micro-batches' losses)."""
    step_loss = None
    for k in range(accumulation):
        part = slice(first + k * micro, first + (k + 1) * micro)
        last = k == accumulation - 1
        with contextlib.nullcontext() if last or accelerator.num_processes == 1 else accelerator.no_sync(model.unet):
            with autocast(device, cpu_bf16=cpu_bf16):
                pred = predict(x_t[part], t[part], y[part] if y is not None else None)
            loss = torch.nn.functional.mse_loss(pred.float(), noise[part])
            if accumulation > 1:
                loss = loss / accumulation
            accelerator.backward(loss)
        step_loss = loss.detach() if step_loss is None else step_loss + loss.detach()
    return step_loss


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
    cpu_bf16: bool = False,
    curves=None,
) -> list[float]:
    """AdamW on the epsilon loss. With a replay buffer, each batch holds round(replay_fraction * batch_size)
    buffer samples and the rest from ``x0``; the sampling stream is seeded so arms differ only in the buffer.

    x0 and replay_x0 are in model space. With ``checkpoint``, resume from it when it exists and save it when due.
    ``log_every``: steps between reads of the losses to the host (and progress-bar updates). ``compile_unet``:
    run the noise prediction through ``torch.compile``; ``channels_last``: UNet weights and inputs in channels-last
    memory format during training; ``cpu_bf16``: bf16 autocast of the noise prediction on the CPU (all three off by
    default; they change the arithmetic, not the method). Under
    ``accelerate launch`` the model trains on the process's device (``accelerator.device``), data parallel.
    ``curves`` (``measures.curves.TrainingCurves``): its points are measured at the steps it says are due (at step
    0 too), on the weights the run would save (the EMA's when kept), without touching the training's state.
    Returns the per-step losses (of the whole batch, averaged over processes).
    """
    if x0.shape[0] == 0:
        raise ValueError("training set is empty")
    if log_every < 1:
        raise ValueError(f"log_every={log_every}: must be >= 1")
    # Set up: processes and batch split, seeds, the model on its device, optimiser, data parallel, data, resume.
    accelerator = _accelerator()
    processes, rank = accelerator.num_processes, accelerator.process_index
    micro = check_batch_split(config, processes)
    if processes > 1:
        device = accelerator.device
    model.check_labels(labels)
    model.check_labels(replay_labels)
    torch.manual_seed(config.seed)
    gen = sampling_generator(device, config.seed)
    model.to(device).train()
    if channels_last:
        model.unet.to(memory_format=torch.channels_last)
    params = model.trainable_parameters()
    opt, lr_schedule, ema = _optimiser(params, config, device)
    unet = model.unet
    if processes > 1:
        model.unet = accelerator.prepare_model(unet)  # DDP: gradients averaged over processes in backward
    predict = torch.compile(model.predict_noise) if compile_unet else model.predict_noise
    batches = _Batches(model, x0, labels, replay_x0, replay_labels, config, gen, device, channels_last)
    start, done, points = _resume(checkpoint, model, opt, gen, device, lr_schedule, ema, accelerator, desc,
                                  config.steps)
    bar = tqdm(range(start, config.steps), desc=desc, disable=not (progress and accelerator.is_main_process),
               mininterval=2.0, smoothing=1.0, initial=start, total=config.steps)
    losses = _Losses(done, log_every, bar, reduce=(lambda v: accelerator.reduce(v, "mean")) if processes > 1 else None)
    first = rank * micro * config.grad_accumulation  # this process's share of the batch starts here
    if curves is not None:
        curves.points = points
        if start == 0:
            _curve_point(curves, 0, model, params, ema, losses)
    # Train: for each step, batch -> loss and backward -> clip -> step -> EMA -> log -> checkpoint.
    try:
        for step in bar:
            x_t, t, noise, y = batches.draw()
            opt.zero_grad(set_to_none=True)
            step_loss = _backward(predict, model, accelerator, x_t, t, noise, y, first=first, micro=micro,
                                  accumulation=config.grad_accumulation, device=device, cpu_bf16=cpu_bf16)
            if config.grad_clip:
                accelerator.clip_grad_norm_(params, config.grad_clip)
            opt.step()
            lr_schedule.step()
            if ema is not None:
                ema.step(params)
            losses.add(step_loss)
            if curves is not None and curves.due(step + 1, config.steps):
                _curve_point(curves, step + 1, model, params, ema, losses)
            if checkpoint is not None and step + 1 < config.steps and _save_now(accelerator, checkpoint, step + 1):
                state = training_state(model, opt, gen, losses.read(), step + 1, device, lr_schedule=lr_schedule,
                                       ema=ema, curves=curves.points if curves is not None else None)
                if accelerator.is_main_process:
                    checkpoint.save(state)
    finally:
        model.unet = unet
        if channels_last:
            model.unet.to(memory_format=torch.contiguous_format)
    # Finish: the EMA weights into the model (when kept), eval mode, every step's loss.
    if ema is not None:
        ema.copy_to(params)
    model.eval()
    return losses.read()


def _save_now(accelerator, checkpoint: Checkpoint, step: int) -> bool:
    """Whether to save a checkpoint now: the main process's clock decides, and every process follows it (the
    losses are read collectively before a save)."""
    due = checkpoint.due(step) if accelerator.is_main_process else False
    if accelerator.num_processes == 1:
        return due
    from accelerate.utils import broadcast

    return bool(broadcast(torch.tensor([int(due)], device=accelerator.device), from_process=0).item())


@contextlib.contextmanager
def torch_threads(n: int):
    """torch computes with ``n`` CPU threads inside (0: as it is), and with as many as before after."""
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n:
            torch.set_num_threads(before)


def train_and_save(model: DenoisingModel, x0: torch.Tensor, labels: torch.Tensor | None, config: TrainConfig,
                   device: torch.device, out: str | Path, *, desc: str, replay_x0: torch.Tensor | None = None,
                   replay_labels: torch.Tensor | None = None, extra: dict | None = None,
                   checkpoints: CheckpointPolicy | None = None, compile_unet: bool = False,
                   channels_last: bool = False, cpu_bf16: bool = False, threads: int = 0, curves=None,
                   curves_out: str | Path | None = None) -> list[float]:
    """Train (``train_denoiser``), then write the model (``save_pretrained``: the EMA weights when ``ema_decay`` is
    set) and ``train_log.json`` (config, device, losses, ``extra``) to the folder ``out``, atomically; under data
    parallel only the main process writes. With ``checkpoints``, the run saves and resumes its checkpoint, and
    removes it once the model is written. With ``curves`` (``measures.curves.TrainingCurves``) and ``curves_out``,
    the training curves go to that folder (dvclive), atomically with the model. ``threads`` > 0 on the CPU: torch
    trains with that many threads, and with as many as before after (CPU results depend on the count, so it is part
    of the run's key). Returns the per-step losses."""
    from ..io.tables import atomic_path

    cpu_threads = threads if device.type == "cpu" else 0  # a GPU run's results do not depend on the CPU threads

    procs = _accelerator().state
    processes = procs.num_processes
    speed = {"compile_unet": compile_unet, "channels_last": channels_last, "cpu_bf16": cpu_bf16}
    checkpoint = None
    if checkpoints is not None:
        weights = sorted(trainable_weights(model).items())
        speed_key = [speed] if any(speed.values()) else []
        parallel_key = [{"processes": processes}] if processes > 1 else []
        parallel_key += [{"threads": cpu_threads}] if cpu_threads else []
        curves_key = [curves.key()] if curves is not None else []
        key = run_key(asdict(config), str(device), model.family, x0, labels, replay_x0, replay_labels,
                      [name for name, _ in weights], *(w for _, w in weights), *speed_key, *parallel_key,
                      *curves_key)
        checkpoint = Checkpoint(checkpoints, desc, key)
    with torch_threads(cpu_threads):
        losses = train_denoiser(model, x0, config, labels=labels, replay_x0=replay_x0, replay_labels=replay_labels,
                                device=device, desc=desc, checkpoint=checkpoint, compile_unet=compile_unet,
                                channels_last=channels_last, cpu_bf16=cpu_bf16, curves=curves)
    final = sum(losses[-50:]) / len(losses[-50:])
    if procs.is_main_process:
        with atomic_path(out, is_dir=True) as tmp, \
                (atomic_path(curves_out, is_dir=True) if curves_out else contextlib.nullcontext()) as curves_tmp:
            if curves_out:
                curves.write(curves_tmp)
            model.save_pretrained(tmp)
            log = {"config": asdict(config), "device": str(model.device), "n_train": int(x0.shape[0]),
                   "final_loss": final, "losses": losses, **({"processes": processes} if processes > 1 else {}),
                   **({"threads": cpu_threads} if cpu_threads else {}),
                   **{name: True for name, on in speed.items() if on}, **(extra or {})}
            (Path(tmp) / "train_log.json").write_text(json.dumps(log) + "\n")
        if checkpoint is not None:
            checkpoint.remove()
        print(f"{desc}: {config.steps} steps on {device}, final loss {final:.4f} -> {out}")
    procs.wait_for_everyone()
    return losses
