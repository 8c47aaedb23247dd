"""Diffusion models behind one interface (``DenoisingModel``), and the one training loop they share.

    base.py          DenoisingModel, the family registry, load_model
    ddpm.py          PixelDDPM (family ddpm) and its DDPMConfig
    sd.py            LatentDiffusion (family sd: Stable Diffusion, in VAE latent space)
    sd_settings.py   SDSettings, LoraSettings: everything of an SD model but its weights
    sd_pipeline.py   finding, checking, loading and saving the parts of an SD pipeline
    training.py      TrainConfig, train_denoiser (replay mixing, LR schedule, EMA, accumulation, Accelerate data
                     parallel), train_and_save
    checkpoints.py   CheckpointPolicy, Checkpoint, run_key: saving and resuming a training run
    build.py         build_model: the untrained model of the ``model`` params

``LatentDiffusion`` is imported on first use (it pulls in transformers and peft).
"""

from __future__ import annotations

from .base import FAMILY_FILE, DenoisingModel, load_model
from .build import build_model
from .ddpm import DDPMConfig, PixelDDPM
from .training import CheckpointPolicy, TrainConfig, train_and_save, train_denoiser

__all__ = ["FAMILY_FILE", "CheckpointPolicy", "DDPMConfig", "DenoisingModel", "LatentDiffusion", "PixelDDPM", "TrainConfig", "build_model",
           "load_model", "train_and_save", "train_denoiser"]


def __getattr__(name: str):
    if name == "LatentDiffusion":
        from .sd import LatentDiffusion

        return LatentDiffusion
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
