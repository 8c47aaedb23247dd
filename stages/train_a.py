"""train_a: train the task-A diffusion model on task A's x0 (from encode) and save it with save_pretrained.

    model.family ddpm: a pixel-space DDPM (diffusers UNet2DModel + DDPMScheduler), built from model.*
    model.family sd:   Stable Diffusion from model.sd.pretrained: VAE and text encoder frozen, the UNet fine-tuned
Both train with the one shared loop (models.train_denoiser) on model-space x0, seeded by train_a.seed (the
UNet's initial weights too). The training curves (``curves``: model A's denoising loss on a fixed subset of task A,
dvclive) go to ``--out-curves``.
"""

from __future__ import annotations

from hopfield_replay.runtime.data_parallel import launcher
from hopfield_replay.runtime.devices import resolve_device
from hopfield_replay.models import CheckpointPolicy, TrainConfig, build_model, train_and_save
from hopfield_replay.io.tables import check_output, load_task, tensor_meta
from hopfield_replay.measures.curves import training_curves
from stages.runner import stage


@stage("x0", "samples", "out", "out-curves", relaunch=launcher("train_a"))
def main(cfg, args):
    tp = cfg.train_a
    check_output(args.out, is_dir=True)
    check_output(args.out_curves, is_dir=True)
    x0, labels, ids = load_task(args.x0, args.samples, "A", family=cfg.model.family)
    model = build_model(cfg.model, x0.shape[1:], tensor_meta(args.x0), seed=tp.seed)
    config = TrainConfig(**tp.loop_settings(), replay_fraction=0.0)
    train_and_save(model, x0, labels, config, resolve_device(cfg.device), args.out, desc="train_a",
                   checkpoints=CheckpointPolicy.from_params(cfg.execution), **tp.speed_settings(),
                   curves=training_curves(cfg.curves, {"task_a": (x0, ids, labels)}, cpu_bf16=tp.cpu_bf16),
                   curves_out=args.out_curves)


if __name__ == "__main__":
    main()
