"""Forecast per-sample forgetting before fine-tuning: from model A, the old (task-A) and new (task-B) data and at
most a short probe fine-tune on the new data, never from the outcome of the fine-tune itself. Every column is
oriented so that higher means more forgetting predicted:

    proximity_b    = -(1/k) sum_{i <= k} |x_k - b_(i)|       b_(i): the i-th nearest new sample (model space)
    grad_dot       = -g_k . g_B                               g_k = grad_theta L_k(theta_A), g_B = mean_b grad L_b
    grad_cos       = -g_k . g_B / (|g_k| |g_B|)
    probe_{s}      = L_k(theta_s) - L_k(theta_A)              theta_s: a copy of model A fine-tuned s steps on B

L_k is the denoising loss of sample k at the fixed noise of the reconstruction measures, mean over the t grid of
|eps_theta(x_t, t) - eps|^2 (``reconstruction.denoising_energy``). lr * grad_dot is the first-order rise of L_k after
one SGD step of rate lr on the new data; the probe is that step taken for real, s times, with the fine-tune's own
optimiser (MIR, Aljundi et al. 2019: replay the samples whose loss a virtual update on the new data raises most).
The per-sample gradients are exact (a vmapped backward over a chunk of old samples for a pixel-space DDPM, one
backward per old sample for Stable Diffusion; nothing kept but two numbers per sample).

    python -m hopfield_replay.forecast --model DIR --old DATA --new DATA --out forecast.parquet
    forecast_folders("DIR", "OLD_DATA", "NEW_DATA", probe_steps=[80, 400], buffer=250)   # the same, in Python

writes one row per old sample (sample_id: its index in the old data as ``prepare`` reads it; its label; every
forecast, higher = more forgetting predicted; with ``--buffer K``, ``suggested``: the K samples to replay, ranked by
``--rank-by``, the longest probe by default) for any saved model folder (DDPM or Stable Diffusion) and two data
folders in the formats ``prepare`` reads.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .energy import knn_distances
from .errors import UserError
from .measures.noise import fixed_noise
from .measures.reconstruction import denoising_energy
from .models import DenoisingModel, TrainConfig, load_model, train_denoiser

FORECASTS = ("proximity_b", "grad_dot", "grad_cos")  # plus probe_{steps} for every probe length
PER_SAMPLE_CHUNK = 16  # old samples per vmapped backward: 1.8x the one-at-a-time loop on 2 cores; 16 x 3 gradients


def _losses(model: DenoisingModel, x0: torch.Tensor, ids, timesteps: list[int], seed: int,
            labels: torch.Tensor | None) -> torch.Tensor:
    """(B,) differentiable L_k: mean over timesteps of the noise-prediction MSE at each sample's fixed noise."""
    shape, device = tuple(x0.shape[1:]), model.device
    t = torch.tensor(timesteps, dtype=torch.long, device=device).repeat_interleave(x0.shape[0])
    noise = torch.cat([fixed_noise(np.asarray(ids), int(s), shape, seed, device=device) for s in timesteps])
    clean = x0.to(device, torch.float32).repeat(len(timesteps), *([1] * len(shape)))
    y = labels.to(device).repeat(len(timesteps)) if labels is not None else None
    pred = model.predict_noise(model.scheduler.add_noise(clean, noise, t), t, y)
    per_pair = ((pred.float() - noise) ** 2).flatten(1).mean(1)
    return per_pair.view(len(timesteps), x0.shape[0]).mean(0)


def gradient_interference(model: DenoisingModel, x_old: torch.Tensor, ids_old, x_new: torch.Tensor, ids_new,
                          timesteps: list[int], *, seed: int = 0, labels_old=None, labels_new=None,
                          chunk: int = 64, per_sample_chunk: int = PER_SAMPLE_CHUNK, progress: bool = False
                          ) -> dict[str, np.ndarray]:
    """grad_dot and grad_cos (module docstring): g_B accumulated over chunks of the new data, then each old
    sample's gradient against it (``per_sample_chunk`` at a time for a pixel-space DDPM, one at a time else)."""
    from tqdm.auto import tqdm

    model.eval()
    params = [p for p in model.trainable_parameters() if p.requires_grad]
    g_b = [torch.zeros_like(p) for p in params]  # the parameters' dtype: a float64 copy of an SD UNet is 7 GB
    for lo in range(0, x_new.shape[0], chunk):
        sl = slice(lo, lo + chunk)
        loss = _losses(model, x_new[sl], np.asarray(ids_new)[sl], timesteps, seed,
                       labels_new[sl] if labels_new is not None else None).sum() / x_new.shape[0]
        for acc, g in zip(g_b, torch.autograd.grad(loss, params)):
            acc += g
    norm_b = torch.sqrt(sum((g.double() ** 2).sum() for g in g_b))
    ids_old = np.asarray(ids_old)
    if model.family == "ddpm":  # a small pixel-space UNet: per-sample gradients of a chunk in one vmapped backward
        dot, norm = _dots_and_norms_vmapped(model, x_old, ids_old, timesteps, g_b, seed=seed,
                                            chunk=per_sample_chunk, progress=progress)
    else:  # a latent UNet (Stable Diffusion): a chunk of per-sample gradients would not fit; one backward each
        dot, norm = np.empty(x_old.shape[0]), np.empty(x_old.shape[0])
        for k in tqdm(range(x_old.shape[0]), desc="gradient interference", disable=not progress, mininterval=2.0):
            loss = _losses(model, x_old[k : k + 1], ids_old[k : k + 1], timesteps, seed,
                           labels_old[k : k + 1] if labels_old is not None else None).sum()
            grads = torch.autograd.grad(loss, params)
            dot[k] = float(sum((g.double() * b.double()).sum() for g, b in zip(grads, g_b)))
            norm[k] = float(torch.sqrt(sum((g.double() ** 2).sum() for g in grads)))
    with np.errstate(divide="ignore", invalid="ignore"):
        cos = np.where(norm * float(norm_b) > 0, dot / (norm * float(norm_b)), 0.0)
    return {"grad_dot": -dot, "grad_cos": -cos}


def _dots_and_norms_vmapped(model: DenoisingModel, x_old: torch.Tensor, ids_old: np.ndarray, timesteps: list[int],
                            g_b: list[torch.Tensor], *, seed: int, chunk: int, progress: bool
                            ) -> tuple[np.ndarray, np.ndarray]:
    """(g_k . g_B, |g_k|) for every old sample of an unconditional pixel-space model: the per-sample gradients of
    ``chunk`` samples at once (``torch.func.vmap`` of ``grad`` of L_k, the same loss as ``_losses``), in float64."""
    import warnings

    from torch.func import functional_call, grad, vmap
    from tqdm.auto import tqdm

    unet, device, shape = model.unet, model.device, tuple(x_old.shape[1:])
    params = {name: p.detach() for name, p in unet.named_parameters() if p.requires_grad}
    g_b = [b.double() for b in g_b]  # the order of unet.parameters(), as trainable_parameters()
    t = torch.tensor(timesteps, dtype=torch.long, device=device)

    def loss(weights, x_t, noise):  # one sample: x_t and noise (T, C, H, W), one row per timestep
        pred = functional_call(unet, weights, (x_t, t)).sample
        return ((pred.float() - noise) ** 2).flatten(1).mean(1).mean()

    per_sample_grads = vmap(grad(loss), in_dims=(None, 0, 0))
    dot, norm = np.empty(x_old.shape[0]), np.empty(x_old.shape[0])
    bar = tqdm(total=x_old.shape[0], desc="gradient interference", disable=not progress, mininterval=2.0)
    for lo in range(0, x_old.shape[0], chunk):
        ids = ids_old[lo : lo + chunk]
        noise = torch.stack([fixed_noise(ids, int(s), shape, seed, device=device) for s in timesteps], 1)
        clean = x_old[lo : lo + chunk].to(device, torch.float32).unsqueeze(1).expand_as(noise)
        x_t = model.scheduler.add_noise(clean.reshape(-1, *shape), noise.reshape(-1, *shape),
                                        t.repeat(len(ids))).view_as(noise)
        with warnings.catch_warnings():  # the attention of the mid block has no batching rule: a slower loop, exact
            warnings.filterwarnings("ignore", message=".*batching rule.*")
            grads = per_sample_grads(params, x_t, noise)
        grads = [g.double().flatten(1) for g in grads.values()]
        dot[lo : lo + len(ids)] = sum(g @ b.flatten() for g, b in zip(grads, g_b)).cpu().numpy()
        norm[lo : lo + len(ids)] = torch.sqrt(sum((g**2).sum(1) for g in grads)).cpu().numpy()
        bar.update(len(ids))
    bar.close()
    return dot, norm


def probe_rise(model: DenoisingModel, x_old: torch.Tensor, ids_old, x_new: torch.Tensor, timesteps: list[int],
               config: TrainConfig, *, seed: int = 0, labels_old=None, labels_new=None,
               base_losses: np.ndarray | None = None, timing: dict | None = None) -> np.ndarray:
    """L_k after ``config.steps`` steps of fine-tuning a copy of ``model`` on the new data, minus L_k before
    (``timing["train_seconds"]``: the fine-tune's seconds alone, when a dict is given)."""
    kw = dict(labels=labels_old, seed=seed, progress=False)
    before = base_losses if base_losses is not None else denoising_energy(model, x_old, ids_old, timesteps, **kw)
    probe = copy.deepcopy(model)
    start = time.perf_counter()
    train_denoiser(probe, x_new, config, labels=labels_new, device=model.device, progress=False)
    if timing is not None:
        timing["train_seconds"] = time.perf_counter() - start
    after = denoising_energy(probe, x_old, ids_old, timesteps, **kw)
    return (np.asarray(after, dtype=np.float64) - np.asarray(before, dtype=np.float64))


def probes_share_one_run(config: TrainConfig) -> bool:
    """Whether the first s steps of a run of this recipe are the run of s steps: a constant learning rate from the
    first step and no EMA (a warmup or decay schedule is laid out over the run's length, and a run with EMA saves
    the average of its weights, not the weights it has at step s)."""
    return config.lr_schedule == "constant" and config.lr_warmup_steps == 0 and config.ema_decay is None


class _ProbeSnapshots:
    """``train_denoiser``'s curves hook, used to measure L_k of the old samples as the fine-tune passes each probe
    length (its step-0 call, on model A, is skipped: the losses before are given)."""

    def __init__(self, steps: list[int], measure):
        self.steps, self.measure_losses, self.points, self.losses = {int(s) for s in steps}, measure, [], {}
        self.started, self.measuring = time.perf_counter(), 0.0

    def due(self, step: int, steps: int) -> bool:
        return step in self.steps

    @torch.no_grad()
    def measure(self, step: int, model, train_loss):
        if step not in self.steps:
            return None
        start = time.perf_counter()
        self.losses[step] = (np.asarray(self.measure_losses(model), dtype=np.float64), start - self.started
                             - self.measuring)
        self.measuring += time.perf_counter() - start
        self.points.append({"step": step})
        return self.points[-1]


def probe_rises(model: DenoisingModel, x_old: torch.Tensor, ids_old, x_new: torch.Tensor, timesteps: list[int],
                config: TrainConfig, probe_steps: list[int], *, seed: int = 0, labels_old=None, labels_new=None,
                base_losses: np.ndarray | None = None) -> tuple[dict[int, np.ndarray], dict[int, float], float]:
    """``probe_rise`` at every length of ``probe_steps`` from one fine-tune of max(probe_steps) steps, measured as
    it passes each length: the same numbers as one fine-tune per length where the recipe allows it
    (``probes_share_one_run``; tested). Returns ({s: rise}, {s: seconds a probe of s steps alone would take: its
    training and its one measurement}, the training's seconds)."""
    if not probes_share_one_run(config):
        raise ValueError("probe_rises needs a constant learning rate without warmup and no EMA: one fine-tune per "
                         "length otherwise (probe_rise)")
    kw = dict(labels=labels_old, seed=seed, progress=False)
    before = base_losses if base_losses is not None else denoising_energy(model, x_old, ids_old, timesteps, **kw)
    before = np.asarray(before, dtype=np.float64)
    probe = copy.deepcopy(model)
    snapshots = _ProbeSnapshots(probe_steps, lambda m: denoising_energy(m, x_old, ids_old, timesteps, **kw))
    run = TrainConfig(**{**config.__dict__, "steps": int(max(probe_steps)), "replay_fraction": 0.0})
    start = time.perf_counter()
    train_denoiser(probe, x_new, run, labels=labels_new, device=model.device, progress=False, curves=snapshots)
    train_seconds = time.perf_counter() - start - snapshots.measuring
    rises, seconds = {}, {}
    for s, (after, trained) in snapshots.losses.items():
        rises[s] = after - before
        seconds[s] = trained + snapshots.measuring / len(snapshots.losses)
    return rises, seconds, train_seconds


def forecast_cost(n_old: int, n_new: int, n_timesteps: int, probe_steps: list[int], batch_size: int) -> dict:
    """The compute of each forecast in image passes: one forward and backward of one noisy image counts 1, a forward
    alone 1/3 (a backward costs about two forwards). Deterministic, unlike seconds, so it can sit in a table; one
    fine-tune of S steps at batch B costs S * B.

        proximity_b: 0 (no network pass)    grad_*: (n_old + n_new) * T    probe_s: s * B + 2 * n_old * T / 3
    """
    evals = 2 * n_old * n_timesteps / 3  # every old sample's loss before and after the probe
    cost = {"proximity_b": 0.0, "grad_dot": float((n_old + n_new) * n_timesteps),
            "grad_cos": float((n_old + n_new) * n_timesteps)}
    cost.update({f"probe_{s}": float(s * batch_size + evals) for s in probe_steps})
    return cost


def total_passes(n_old: int, n_new: int, n_timesteps: int, probe_steps: list[int], batch_size: int, *,
                 shared_probes: bool = True) -> float:
    """The image passes of all forecasts together, each shared piece once (``forecast_cost`` counts per column):
    (n_old + n_new) T for the gradients, S B for the probes' fine-tuning (S = max_s s when the probes share one
    fine-tune, ``probes_share_one_run``; sum_s s otherwise), and the old losses before (once) and after each probe,
    (1 + P) n_old T / 3."""
    steps = max(probe_steps, default=0) if shared_probes else sum(probe_steps)
    return float((n_old + n_new) * n_timesteps + batch_size * steps + (1 + len(probe_steps)) * n_old * n_timesteps / 3)


def forecast(model: DenoisingModel, x_old: torch.Tensor, x_new: torch.Tensor, *, timesteps: list[int],
             probe: TrainConfig, probe_steps: list[int], knn_k: int = 5, seed: int = 0, ids_old=None, ids_new=None,
             labels_old=None, labels_new=None, progress: bool = False,
             timing: dict | None = None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Every forecast of the module docstring, one row per old sample (in order), and the seconds each column took
    on this machine (``probe`` gives the probe's recipe; its steps are replaced by each of ``probe_steps``). When a
    ``timing`` dict is given, it gets ``train_seconds_per_step``: the probes' fine-tuning seconds per step."""
    if x_old.shape[1:] != x_new.shape[1:]:
        raise UserError(f"old samples of shape {tuple(x_old.shape[1:])} and new of {tuple(x_new.shape[1:])}: give "
                        "data of one size (the model's)")
    ids_old = np.arange(x_old.shape[0]) if ids_old is None else np.asarray(ids_old)
    ids_new = np.arange(x_new.shape[0]) + 2**31 if ids_new is None else np.asarray(ids_new)
    out, cost = {}, {}
    start = time.perf_counter()
    flat = x_old.reshape(x_old.shape[0], -1).double()
    out["proximity_b"] = -knn_distances(flat, x_new.reshape(x_new.shape[0], -1).double(),
                                        min(knn_k, x_new.shape[0])).mean(1).numpy()
    cost["proximity_b"] = time.perf_counter() - start
    start = time.perf_counter()
    out.update(gradient_interference(model, x_old, ids_old, x_new, ids_new, timesteps, seed=seed,
                                     labels_old=labels_old, labels_new=labels_new, progress=progress))
    cost["grad_dot"] = cost["grad_cos"] = time.perf_counter() - start
    start = time.perf_counter()
    base = denoising_energy(model, x_old, ids_old, timesteps, labels=labels_old, seed=seed, progress=False)
    shared = time.perf_counter() - start
    if probes_share_one_run(probe) and probe_steps:  # one fine-tune, measured as it passes each probe length
        rises, seconds, train_seconds = probe_rises(model, x_old, ids_old, x_new, timesteps, probe, probe_steps,
                                                    seed=seed, labels_old=labels_old, labels_new=labels_new,
                                                    base_losses=base)
        for steps in probe_steps:
            out[f"probe_{steps}"] = rises[int(steps)]
            cost[f"probe_{steps}"] = seconds[int(steps)] + shared
        if timing is not None:
            timing["train_seconds_per_step"] = train_seconds / max(probe_steps)
        probe_steps = []
    for steps in probe_steps:  # a schedule or EMA that depends on the run's length: one fine-tune per length
        start = time.perf_counter()
        config = TrainConfig(**{**probe.__dict__, "steps": int(steps), "replay_fraction": 0.0})
        probe_timing = {}
        out[f"probe_{steps}"] = probe_rise(model, x_old, ids_old, x_new, timesteps, config, seed=seed,
                                           labels_old=labels_old, labels_new=labels_new, base_losses=base,
                                           timing=probe_timing)
        cost[f"probe_{steps}"] = time.perf_counter() - start + shared
        if timing is not None:
            timing["train_seconds_per_step"] = probe_timing["train_seconds"] / steps
    return pd.DataFrame({k: np.asarray(v, dtype=np.float64) for k, v in out.items()}), cost


# -- the command line --------------------------------------------------------------------------------------------

def _model_space(model: DenoisingModel, folder: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A data folder at the model's resolution in its space: grey and colour converted to the DDPM's channels,
    encoded by the VAE for Stable Diffusion. Data the model cannot take is a UserError naming both."""
    from .io.data import resize, to_model_range
    from .io.formats import load_folder

    images, labels = load_folder(folder)
    resolution = int(getattr(model, "resolution", None) or model.unet.config.sample_size)
    pixels = to_model_range(resize(torch.from_numpy(images), resolution))
    if model.family == "ddpm":
        channels = int(model.unet.config.in_channels)
        if pixels.shape[1] == 3 and channels == 1:
            pixels = pixels.mean(1, keepdim=True)
        elif pixels.shape[1] == 1 and channels == 3:
            pixels = pixels.repeat(1, 3, 1, 1)
        elif pixels.shape[1] != channels:
            raise UserError(f"{folder}: images of {pixels.shape[1]} channel(s), but the model takes {channels}; give "
                            "grey or colour images for a model of 1 or 3 channels")
    with torch.no_grad():
        x = model.encode(pixels)
    side = int(model.unet.config.sample_size)
    expected = (int(model.unet.config.in_channels), side, side)
    if tuple(x.shape[1:]) != expected:
        raise UserError(f"{folder}: its samples are {tuple(x.shape[1:])} in the model's space, but the model's UNet "
                        f"takes {expected}; the model folder's VAE and UNet do not fit each other: save the model "
                        "again (save_pretrained) from one pipeline")
    return x, torch.from_numpy(labels)


def estimate_seconds(model: DenoisingModel, x_old: torch.Tensor, x_new: torch.Tensor, *, timesteps: list[int],
                     probe_steps: list[int], batch_size: int, labels_old=None, seed: int = 0,
                     shared_probes: bool = True) -> float:
    """The seconds ``forecast`` will take here, from two timed primitives (each run twice, the second timed): one
    old sample's gradient over the t grid (s_g: its share of one vmapped chunk of ``PER_SAMPLE_CHUNK`` samples for
    a pixel-space DDPM, one backward of the per-sample loop otherwise, as ``gradient_interference`` computes them)
    and one forward and backward of a batch of B noisy images (s_B, one training step):

        n_old * s_g + (n_new * T / B) * s_B             gradient interference (g_B in batches)
        + S * s_B + (1 + P) (n_old T / B) s_B / 3        the P probes: S = max_s s when they share one fine-tune
                                                         (``shared_probes``), sum_s s otherwise; the losses before,
                                                         once, and after each (a forward costs about 1/3)
    """
    n_old, n_new, n_t = x_old.shape[0], x_new.shape[0], len(timesteps)
    params = [p for p in model.trainable_parameters() if p.requires_grad]
    ids = np.arange(min(batch_size, n_old))
    model.eval()

    def timed(run) -> float:
        for _ in range(2):
            start = time.perf_counter()
            run()
            seconds = time.perf_counter() - start
        return seconds

    def backward(n: int, t: list[int]):
        labels = labels_old[:n] if labels_old is not None else None
        return lambda: torch.autograd.grad(_losses(model, x_old[:n], ids[:n], t, seed, labels).sum(), params)

    if model.family == "ddpm":  # as gradient_interference: one vmapped backward per chunk of old samples
        n = min(PER_SAMPLE_CHUNK, n_old)
        zeros = [torch.zeros_like(p) for p in params]
        per_sample = timed(lambda: _dots_and_norms_vmapped(model, x_old[:n], np.arange(n), timesteps, zeros,
                                                           seed=seed, chunk=n, progress=False)) / n
    else:
        per_sample = timed(backward(1, timesteps))
    batch = timed(backward(len(ids), timesteps[:1])) * batch_size / len(ids)
    steps = max(probe_steps, default=0) if shared_probes else sum(probe_steps)
    return (n_old * per_sample + n_new * n_t / batch_size * batch + steps * batch
            + (1 + len(probe_steps)) * n_old * n_t / batch_size * batch / 3)


def forecast_folders(model: str | Path, old: str | Path, new: str | Path, *, timesteps=(100, 250, 500, 750),
                     probe_steps=(20,), lr: float = 1e-3, batch_size: int = 64, knn: int = 5, seed: int = 0,
                     buffer: int = 0, rank_by: str | None = None, fine_tune_steps: int | None = None,
                     progress: bool = False) -> pd.DataFrame:
    """The command line's forecast as a table: a saved model folder (DDPM or Stable Diffusion) and two data folders
    in the formats ``prepare`` reads -> one row per old sample (sample_id: its index in the old data, label, every
    forecast; with ``buffer`` K, ``suggested``: the K highest of ``rank_by``, the longest probe by default). Prints
    the sizes, the compute and a time estimate before it starts. ``table.attrs``: cost_passes, seconds (per column,
    this machine) and rank_by. Bad input is a UserError naming the option (as the command line spells it)."""
    timesteps, probe_steps = [int(t) for t in timesteps], [int(s) for s in probe_steps]
    if any(s < 1 for s in probe_steps) or knn < 1 or batch_size < 1 or not lr > 0:
        raise UserError("--probe-steps, --knn and --batch-size must be >= 1 and --lr > 0")
    if fine_tune_steps is not None and (fine_tune_steps < 1 or max(probe_steps, default=0) > fine_tune_steps):
        raise UserError(f"--probe-steps {max(probe_steps, default=0)} is longer than the fine-tune it forecasts "
                        f"(--fine-tune-steps {fine_tune_steps}); give probes of at most that many steps, and "
                        "--fine-tune-steps >= 1")
    columns = [*FORECASTS, *(f"probe_{s}" for s in probe_steps)]
    rank_by = rank_by or (f"probe_{max(probe_steps)}" if probe_steps else "grad_dot")
    if rank_by not in columns:
        raise UserError(f"--rank-by {rank_by}: not a forecast of this run; use one of {', '.join(columns)}")
    model = load_model(model)
    x_old, y_old = _model_space(model, old)
    if not 0 <= buffer <= len(x_old):
        raise UserError(f"--buffer {buffer}: the old data {old} hold {len(x_old)} samples; use a K from 0 to "
                        f"{len(x_old)}")
    x_new, y_new = _model_space(model, new)
    conditional = model.family != "ddpm"
    probe = TrainConfig(batch_size=batch_size, lr=lr, seed=seed)
    shared = probes_share_one_run(probe)
    passes = forecast_cost(len(x_old), len(x_new), len(timesteps), probe_steps, batch_size)
    estimate = estimate_seconds(model, x_old, x_new, timesteps=timesteps, probe_steps=probe_steps,
                                batch_size=batch_size, labels_old=y_old if conditional else None, seed=seed,
                                shared_probes=shared)
    total = total_passes(len(x_old), len(x_new), len(timesteps), probe_steps, batch_size, shared_probes=shared)
    share = (f", {total / (fine_tune_steps * batch_size):.2f} x the image passes of the {fine_tune_steps}-step "
             "fine-tune" if fine_tune_steps else "")
    print(f"forecast: {len(x_old)} old and {len(x_new)} new samples on {model.device}; {total:.0f} image passes "
          f"in all{share}; estimated {estimate / 60:.1f} min here", flush=True)
    table, seconds = forecast(model, x_old, x_new, timesteps=timesteps, knn_k=knn, seed=seed,
                              probe=probe, probe_steps=probe_steps,
                              labels_old=y_old if conditional else None, labels_new=y_new if conditional else None,
                              progress=progress)
    table.insert(0, "label", y_old.numpy().astype(np.int64))
    table.insert(0, "sample_id", np.arange(len(table), dtype=np.int64))  # the index in the old data
    if buffer:  # the K highest forecasts (ties: the earlier sample), as the _high arms rank
        suggested = np.zeros(len(table), dtype=bool)
        suggested[np.argsort(-table[rank_by].to_numpy(), kind="stable")[:buffer]] = True
        table["suggested"] = suggested
    table.attrs.update(cost_passes=passes, seconds=seconds, rank_by=rank_by)
    return table


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m hopfield_replay.forecast", description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="a saved model folder (DDPM or Stable Diffusion)")
    ap.add_argument("--old", required=True, help="the data the model has learned (a folder prepare reads)")
    ap.add_argument("--new", required=True, help="the data it is about to be fine-tuned on")
    ap.add_argument("--out", required=True, type=Path, help="the Parquet table to write")
    ap.add_argument("--timesteps", type=int, nargs="+", default=[100, 250, 500, 750])
    ap.add_argument("--probe-steps", type=int, nargs="*", default=[20], help="probe lengths (steps on the new data)")
    ap.add_argument("--lr", type=float, default=1e-3, help="the probe's learning rate (the fine-tune's)")
    ap.add_argument("--fine-tune-steps", type=int, metavar="N",
                    help="the length of the fine-tune being forecast: no probe may be longer, and the cost is also "
                         "printed as a share of it")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--knn", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--buffer", type=int, default=0, metavar="K",
                    help="mark the K old samples to replay in a column 'suggested' (0: no buffer)")
    ap.add_argument("--rank-by", help="the forecast the buffer ranks by, high first (default: the longest probe, MIR)")
    args = ap.parse_args(argv)
    try:
        from .io.tables import check_output, write_table

        check_output(args.out)
        table = forecast_folders(args.model, args.old, args.new, timesteps=args.timesteps,
                                 probe_steps=args.probe_steps, lr=args.lr, batch_size=args.batch_size, knn=args.knn,
                                 seed=args.seed, buffer=args.buffer, rank_by=args.rank_by,
                                 fine_tune_steps=args.fine_tune_steps, progress=True)
        attrs, table.attrs = table.attrs, {}  # the seconds are this machine's: printed, never in the table
        write_table(table, args.out, table="forecast",
                    meta={"table": "forecast", "cost_passes": attrs["cost_passes"], "model": str(args.model),
                          "old": str(args.old), "new": str(args.new)})
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    seconds, columns = attrs["seconds"], list(attrs["seconds"])
    print(f"forecast: {len(table)} old samples, columns {', '.join(columns)} -> {args.out}; seconds: "
          + ", ".join(f"{k} {seconds[k]:.1f}" for k in columns)
          + (f"; suggested buffer: the {args.buffer} highest {attrs['rank_by']}" if args.buffer else ""))


if __name__ == "__main__":
    main()
