"""``build_model``: the untrained task-A model of the ``model`` params for model-space x0 of a given shape."""

from __future__ import annotations

import torch

from ..io.config import ModelParams
from ..errors import UserError
from .base import DenoisingModel
from .ddpm import DDPMConfig, PixelDDPM


def build_model(params: ModelParams, x0_shape, x0_meta: dict | None = None, *, seed: int) -> DenoisingModel:
    """``model.family`` ddpm: a fresh pixel DDPM for x0 of shape (C, H, W), its UNet initialised from ``seed``;
    sd: the ``model.sd`` pipeline (class names from ``x0_meta`` when ``model.sd.class_names`` is null), whose
    latents must have the shape of x0. ``x0_meta``: the metadata of the model-space file (written by encode)."""
    x0_meta = x0_meta or {}
    shape = tuple(int(s) for s in x0_shape)
    if x0_meta.get("family", params.family) != params.family:
        raise UserError(f"model.family: {params.family!r} but the model-space file holds {x0_meta['family']!r} x0; "
                        "rerun encode (dvc repro)")
    torch.manual_seed(seed)  # the UNet's initial weights come from the global RNG
    if params.family == "ddpm":
        return PixelDDPM.from_config(DDPMConfig(
            resolution=shape[-1], channels=shape[0], block_out_channels=list(params.block_out_channels),
            layers_per_block=params.layers_per_block, attention=params.attention,
            norm_num_groups=params.norm_num_groups,
        ))
    from .sd import LatentDiffusion

    model = LatentDiffusion.from_params(params.sd, class_names=x0_meta.get("class_names"))
    if tuple(model.latent_shape) != shape:
        raise UserError(f"model.sd: the pipeline's latents are {tuple(model.latent_shape)} but the model-space file "
                        f"holds {shape}; rerun encode (dvc repro)")
    return model
