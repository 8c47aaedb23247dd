"""The pixel-space DDPM: a diffusers ``UNet2DModel`` with a 1000-step linear-beta schedule and epsilon prediction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from diffusers import DDPMScheduler, UNet2DModel
from diffusers.utils import logging as diffusers_logging

from ..errors import UserError
from .base import DenoisingModel, register_family, write_pipeline_index


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


@register_family
class PixelDDPM(DenoisingModel):
    family = "ddpm"

    @classmethod
    def from_config(cls, config: DDPMConfig) -> "PixelDDPM":
        """A freshly initialised UNet (weights from torch's global RNG: seed it first) and its DDPM scheduler."""
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

    def save_pretrained(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.unet.save_pretrained(path / "unet")
        self.scheduler.save_pretrained(path / "scheduler")
        self._write_family(path)
        write_pipeline_index(path, "DDPMPipeline", unet="UNet2DModel", scheduler="DDPMScheduler")

    def pipeline(self):
        """This model as a diffusers ``DDIMPipeline`` on its noise schedule (a saved folder also loads directly with
        ``DDIMPipeline.from_pretrained(folder)`` or ``DDPMPipeline.from_pretrained(folder)``)."""
        from diffusers import DDIMPipeline, DDIMScheduler

        return DDIMPipeline(unet=self.unet, scheduler=DDIMScheduler.from_config(self.scheduler.config))

    @classmethod
    def from_pretrained(cls, path) -> "PixelDDPM":
        path = Path(path)
        verbosity = diffusers_logging.get_verbosity()
        diffusers_logging.set_verbosity_error()  # its mismatched-weights warnings: the check below gives one line
        try:
            unet, info = UNet2DModel.from_pretrained(path / "unet", local_files_only=True, use_safetensors=True,
                                                     output_loading_info=True)
        finally:
            diffusers_logging.set_verbosity(verbosity)
        wrong = {k: v for k, v in info.items() if v}
        if wrong:  # diffusers would only log it and leave those weights at their random initial values
            kind, keys = next(iter(wrong.items()))
            raise UserError(f"{path / 'unet'}: its weights do not fit its config ({kind}: {keys[0]}, ...); the model "
                            "folder is damaged or foreign: rerun the stage that wrote it")
        scheduler = DDPMScheduler.from_pretrained(path / "scheduler", local_files_only=True)
        return cls(unet, scheduler)
