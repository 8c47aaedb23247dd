"""The one training loop every family shares (AdamW on the epsilon loss, replay mixed into each batch), and
``train_and_save``, the training run of train_a, train_b and every replay arm.

    x_t = scheduler.add_noise(x0, eps, t) = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,    t ~ U{0..T-1}, eps ~ N(0, I)
    loss = mean |eps_theta(x_t, t, y) - eps|^2
"""

from __future__ import annotations

import json
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
) -> list[float]:
    """AdamW on the epsilon loss. With a replay buffer, each batch holds round(replay_fraction * batch_size)
    buffer samples and the rest from ``x0``; the sampling stream is seeded so arms differ only in the buffer.

    x0 and replay_x0 are in model space. Returns the per-step losses.
    """
    if x0.shape[0] == 0:
        raise ValueError("training set is empty")
    has_replay = replay_x0 is not None and replay_x0.shape[0] > 0
    n_replay = int(round(config.replay_fraction * config.batch_size)) if has_replay else 0
    n_new = config.batch_size - n_replay
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)  # on the CPU so that indices match across devices
    model.to(device).train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay)
    num_t = model.scheduler.config.num_train_timesteps
    x0 = x0.to(device)
    labels = labels.to(device) if labels is not None else None
    if has_replay:
        replay_x0 = replay_x0.to(device)
        replay_labels = replay_labels.to(device) if replay_labels is not None else None
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc=desc, disable=not progress, mininterval=2.0, smoothing=1.0)
    for _ in bar:
        idx = torch.randint(0, x0.shape[0], (n_new,), generator=gen)
        batch = x0[idx.to(device)]
        y = labels[idx.to(device)] if labels is not None else None
        if n_replay:
            ridx = torch.randint(0, replay_x0.shape[0], (n_replay,), generator=gen).to(device)
            batch = torch.cat([batch, replay_x0[ridx]])
            if y is not None:
                y = torch.cat([y, replay_labels[ridx]])
        t = torch.randint(0, num_t, (batch.shape[0],), generator=gen).to(device)
        noise = torch.randn(batch.shape, generator=gen).to(device)
        x_t = model.scheduler.add_noise(batch, noise, t)
        with autocast(device):
            pred = model.predict_noise(x_t, t, y)
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    model.eval()
    return losses


def train_and_save(model: DenoisingModel, x0: torch.Tensor, labels: torch.Tensor | None, config: TrainConfig,
                   device: torch.device, out: str | Path, *, desc: str, replay_x0: torch.Tensor | None = None,
                   replay_labels: torch.Tensor | None = None, extra: dict | None = None) -> list[float]:
    """Train (``train_denoiser``), then write the model (``save_pretrained``) and ``train_log.json`` (config,
    device, losses, ``extra``) to the folder ``out``, atomically. Returns the per-step losses."""
    from ..tables import atomic_path

    losses = train_denoiser(model, x0, config, labels=labels, replay_x0=replay_x0, replay_labels=replay_labels,
                            device=device, desc=desc)
    final = sum(losses[-50:]) / len(losses[-50:])
    with atomic_path(out, is_dir=True) as tmp:
        model.save_pretrained(tmp)
        log = {"config": asdict(config), "device": str(device), "n_train": int(x0.shape[0]), "final_loss": final,
               "losses": losses, **(extra or {})}
        (Path(tmp) / "train_log.json").write_text(json.dumps(log) + "\n")
    print(f"{desc}: {config.steps} steps on {device}, final loss {final:.4f} -> {out}")
    return losses
