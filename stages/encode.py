"""encode: every prepared image in the model's space, once, in sample_id order (tensors ``x0`` and ``sample_id``).

    model.family ddpm:  x0 = the pixels in [-1, 1] (a copy: the DDPM's model space is pixel space)
    model.family sd:    x0 = vae.encode(resize(x, model.sd.resolution)).latent_dist.mean * vae.config.scaling_factor

The VAE is frozen and the posterior mean is taken, so the latents are a pure function of the pixels; every later
stage reads x0 from this file. Its metadata records the family, the shape and the class names of the prompts.
"""

from __future__ import annotations

import torch

from hopfield_replay.runtime.devices import resolve_device
from hopfield_replay.errors import UserError
from hopfield_replay.models import LatentDiffusion
from hopfield_replay.io.tables import check_output, load_tensors, save_tensors, tensor_meta
from stages.runner import stage


@stage("images", "out")
def main(cfg, args):
    m = cfg.model
    check_output(args.out)
    tensors = load_tensors(args.images, keys=("images", "sample_id"))
    images, ids = tensors["images"], tensors["sample_id"]
    info = {"family": m.family}
    if m.family == "ddpm":
        x0 = images.clone()
        info.update(space="pixels", shape=list(x0.shape[1:]))
    else:
        names = m.sd.class_names or [str(n) for n in tensor_meta(args.images).get("class_names") or []] or None
        model = LatentDiffusion.from_params(m.sd, class_names=names)
        model.vae.to(resolve_device(cfg.device))
        x0 = model.encode(images)  # chunks of encode_batch_size on the device, fp32; the result on the CPU
        info.update(space="latents", shape=list(x0.shape[1:]), resolution=model.resolution,
                    scaling_factor=float(model.vae.config.scaling_factor), pretrained=m.sd.pretrained,
                    revision=m.sd.revision, class_names=model.class_names)
        if not torch.isfinite(x0).all():
            raise UserError(f"model.sd.pretrained: the VAE of {m.sd.pretrained} gave non-finite latents; check its weights")
    save_tensors({"x0": x0.contiguous(), "sample_id": ids.clone()}, args.out, meta=info)
    print(f"encode: {x0.shape[0]} samples -> {m.family} model space {tuple(x0.shape[1:])} -> {args.out}")


if __name__ == "__main__":
    main()
