"""train_a: train the task-A diffusion model on task A's x0 (from encode) and save it with save_pretrained.

    model.family ddpm: a pixel-space DDPM (diffusers UNet2DModel + DDPMScheduler), built from model.*
    model.family sd:   Stable Diffusion from model.sd.pretrained (a local folder, or a hub id + revision read with
                       local_files_only): VAE and text encoder frozen, the UNet fine-tuned (all of it, or LoRA)

Both train with the one shared loop (diffusion.train_denoiser) on model-space x0; every later stage reloads the
model with diffusion.load_model, whatever its family.
"""

from __future__ import annotations

import torch

from hopfield_replay.diffusion import DDPMConfig, DenoisingModel, PixelDDPM
from hopfield_replay.params import ModelParams, TrainParams, parse_section
from stages import common


def build_model(raw: dict, x0, x0_meta: dict | None = None) -> DenoisingModel:
    """The untrained task-A model of ``model.family`` for model-space x0 of shape (N, C, H, W)."""
    m = parse_section(raw, ModelParams, "model")
    x0_meta = x0_meta or {}
    if x0_meta.get("family", m.family) != m.family:
        raise ValueError(f"model.family: {m.family!r} but the model-space file holds {x0_meta['family']!r} x0; "
                         "rerun encode (dvc repro)")
    if m.family == "ddpm":
        config = DDPMConfig(resolution=int(x0.shape[-1]), channels=int(x0.shape[1]),
                            block_out_channels=m.block_out_channels, layers_per_block=m.layers_per_block,
                            attention=m.attention, norm_num_groups=m.norm_num_groups)
        return PixelDDPM.from_config(config)
    model = common.build_sd_model(m.sd, x0_meta.get("class_names"))
    if tuple(model.latent_shape) != tuple(x0.shape[1:]):
        raise ValueError(f"model.sd: the pipeline's latents are {tuple(model.latent_shape)} but the model-space file "
                         f"holds {tuple(x0.shape[1:])}; rerun encode (dvc repro)")
    return model


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--x0", default="data/prepared/model_space.safetensors",
                    help="model-space x0 in sample_id order (written by encode)")
    ap.add_argument("--samples", default="data/tables/samples.parquet")
    ap.add_argument("--out", default="data/models/task_a")
    args = ap.parse_args(argv)
    raw = common.load(args)
    parse_section(raw, ModelParams, "model")  # bad model params fail before any data is read
    tp = parse_section(raw, TrainParams, "train_a")
    device, _ = common.device_and_meta(raw, sections=("model", "train_a"), seed=tp.seed, table="model")
    x0, labels, _ = common.load_task(args.x0, args.samples, "A")
    torch.manual_seed(tp.seed)  # the UNet's initial weights come from the global RNG: seed them too
    model = build_model(raw, x0, common.tensor_meta(args.x0))
    common.train_and_save(model, x0, labels, tp, device, args.out, desc="train_a")


if __name__ == "__main__":
    common.run(main)
