"""Diffusion models behind one interface, and the one training loop (with replay mixing) they share.

A ``DenoisingModel`` predicts the noise eps added to a clean sample x0 in its *model space* (pixels for the DDPM,
VAE latents for Stable Diffusion):

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps,        loss = |eps_theta(x_t, t, y) - eps|^2

Every other part of the library (training, reconstruction, model-based energy) only calls ``predict_noise``,
``encode`` and the scheduler's ``alphas_cumprod``, so a new family plugs in by subclassing ``DenoisingModel``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from diffusers import DDPMScheduler, UNet2DModel
from tqdm.auto import tqdm

from .devices import autocast

FAMILY_FILE = "hopfield_replay_model.json"


class DenoisingModel:
    """Base class: a noise-prediction network plus its DDPM noise schedule."""

    family: str = "base"

    def __init__(self, unet: torch.nn.Module, scheduler: DDPMScheduler):
        self.unet = unet
        self.scheduler = scheduler

    # -- what every family provides -------------------------------------------------------------------------
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> model space (identity for pixel-space models)."""
        return images

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> pixels in [-1, 1] (identity for pixel-space models)."""
        return x

    def trainable_parameters(self):
        return [p for p in self.unet.parameters() if p.requires_grad]

    def save_pretrained(self, path: str | Path) -> None:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device) -> "DenoisingModel":
        self.unet.to(device)
        return self

    def train(self, mode: bool = True) -> "DenoisingModel":
        self.unet.train(mode)
        return self

    def eval(self) -> "DenoisingModel":
        return self.train(False)

    def alphas_cumprod(self, device: torch.device | None = None) -> torch.Tensor:
        return self.scheduler.alphas_cumprod.to(device or self.device, torch.float32)

    def _write_family(self, path: Path, extra: dict | None = None) -> None:
        (path / FAMILY_FILE).write_text(json.dumps({"family": self.family, **(extra or {})}, indent=2) + "\n")


@dataclass
class DDPMConfig:
    """A pixel-space ``UNet2DModel`` with a 1000-step linear-beta DDPM schedule and epsilon prediction."""

    resolution: int = 16
    channels: int = 1
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 64])
    layers_per_block: int = 1
    attention: bool = False
    norm_num_groups: int = 8
    num_train_timesteps: int = 1000
    beta_start: float = 1e-4
    beta_end: float = 0.02


class PixelDDPM(DenoisingModel):
    family = "ddpm"

    @classmethod
    def from_config(cls, config: DDPMConfig) -> "PixelDDPM":
        n = len(config.block_out_channels)
        down = ["DownBlock2D"] * n
        up = ["UpBlock2D"] * n
        if config.attention:  # attention at the lowest resolution only
            down[-1], up[0] = "AttnDownBlock2D", "AttnUpBlock2D"
        unet = UNet2DModel(
            sample_size=config.resolution,
            in_channels=config.channels,
            out_channels=config.channels,
            block_out_channels=tuple(config.block_out_channels),
            layers_per_block=config.layers_per_block,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            norm_num_groups=config.norm_num_groups,
        )
        scheduler = DDPMScheduler(
            num_train_timesteps=config.num_train_timesteps,
            beta_schedule="linear",
            beta_start=config.beta_start,
            beta_end=config.beta_end,
            prediction_type="epsilon",
        )
        return cls(unet, scheduler)

    def predict_noise(self, x_t, t, labels=None):
        return self.unet(x_t, t).sample

    def save_pretrained(self, path):
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet")
        self.scheduler.save_pretrained(path / "scheduler")
        self._write_family(path)

    @classmethod
    def from_pretrained(cls, path) -> "PixelDDPM":
        path = Path(path)
        unet = UNet2DModel.from_pretrained(path / "unet", local_files_only=True)
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
        return cls(unet, scheduler)


FAMILIES: dict[str, type[DenoisingModel]] = {"ddpm": PixelDDPM}
# Families whose module is imported only when first asked for (it registers itself with ``register_family``), so
# that ``load_model`` works in a fresh process without every caller importing every family.
LAZY_FAMILIES: dict[str, str] = {"sd": "hopfield_replay.stable_diffusion"}


def register_family(cls: type[DenoisingModel]) -> type[DenoisingModel]:
    FAMILIES[cls.family] = cls
    return cls


def family_class(family: str, *, where: str = "model.family") -> type[DenoisingModel]:
    """The ``DenoisingModel`` subclass of a family name, importing its module on first use."""
    if family not in FAMILIES and family in LAZY_FAMILIES:
        import importlib

        importlib.import_module(LAZY_FAMILIES[family])
    if family not in FAMILIES:
        raise ValueError(f"{where}: unknown model family {family!r}; known: {sorted(set(FAMILIES) | set(LAZY_FAMILIES))}")
    return FAMILIES[family]


def load_model(path: str | Path) -> DenoisingModel:
    """Load any model saved by ``save_pretrained`` here; the family is read from the folder."""
    path = Path(path)
    meta = path / FAMILY_FILE
    if not meta.is_file():
        raise FileNotFoundError(f"{path} is not a hopfield-replay model folder (no {FAMILY_FILE}); run its stage first")
    family = json.loads(meta.read_text())["family"]
    return family_class(family, where=str(path)).from_pretrained(path)


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
    alphas = model.alphas_cumprod(device)
    num_t = alphas.shape[0]
    x0 = x0.to(device)
    labels = labels.to(device) if labels is not None else None
    if has_replay:
        replay_x0 = replay_x0.to(device)
        replay_labels = replay_labels.to(device) if replay_labels is not None else None
    losses: list[float] = []
    bar = tqdm(range(config.steps), desc=desc, disable=not progress, mininterval=2.0)
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
        a = alphas[t].view(-1, *([1] * (batch.ndim - 1)))
        x_t = a.sqrt() * batch + (1 - a).sqrt() * noise
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


def config_dict(config) -> dict:
    return asdict(config)
