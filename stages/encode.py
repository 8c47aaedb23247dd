"""encode: every prepared image in the model's space, once, in sample_id order (tensors ``x0`` and ``sample_id``).

    model.family ddpm:  x0 = the pixels in [-1, 1] (a copy: the DDPM's model space is pixel space)
    model.family sd:    x0 = vae.encode(resize(x, model.sd.resolution)).latent_dist.mean * vae.config.scaling_factor

The VAE is frozen and the posterior mean is taken (no sampling), so the latents are a pure function of the pixels;
every later stage (training, Hopfield energies, reconstruction forgetting) reads x0 from this file and the VAE
never runs in a training loop. The file's metadata records the family, the latent shape, the scaling factor and
the class names that the class prompts use (model.sd.class_names, else the dataset's, from prepare).
"""

from __future__ import annotations

import torch

from hopfield_replay.params import ModelParams, parse_section
from hopfield_replay.tables import load_tensors, save_tensors
from stages import common


def class_names_for(sd, images_meta: dict) -> list[str] | None:
    """model.sd.class_names, else the dataset's class names recorded by prepare."""
    if sd.class_names is not None:
        return list(sd.class_names)
    names = images_meta.get("class_names")
    return [str(n) for n in names] if isinstance(names, list) else None


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--images", default="data/prepared/images.safetensors")
    ap.add_argument("--out", default="data/prepared/model_space.safetensors")
    args = ap.parse_args(argv)
    raw = common.load(args)
    m = parse_section(raw, ModelParams, "model")
    device, meta = common.device_and_meta(raw, sections=("model",), seed=0, table="model_space")
    images_meta = common.tensor_meta(args.images)
    tensors = load_tensors(args.images)
    images, ids = tensors["images"], tensors["sample_id"]
    info = {"family": m.family, "provenance": meta}
    if m.family == "ddpm":
        x0 = images.clone()
        info.update(space="pixels", shape=list(x0.shape[1:]))
    else:
        names = class_names_for(m.sd, images_meta)
        model = common.build_sd_model(m.sd, names)
        model.vae.to(device)
        x0 = model.encode(images)  # chunks of encode_batch_size on the device, fp32; the result on the CPU
        info.update(space="latents", shape=list(x0.shape[1:]), resolution=model.resolution,
                    scaling_factor=float(model.vae.config.scaling_factor), pretrained=m.sd.pretrained,
                    revision=m.sd.revision, class_names=model.class_names)
        if not torch.isfinite(x0).all():
            raise ValueError(f"model.sd.pretrained: the VAE of {m.sd.pretrained} gave non-finite latents; check its weights")
    save_tensors({"x0": x0.contiguous(), "sample_id": ids.clone()}, args.out, meta=info)
    what = "pixels (copy)" if m.family == "ddpm" else f"VAE latents (x {info['scaling_factor']:g}) on {device}"
    print(f"encode: {x0.shape[0]} samples -> {m.family} model space {tuple(x0.shape[1:])}, {what} -> {args.out}")


if __name__ == "__main__":
    common.run(main)
