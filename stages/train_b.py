"""train_b: fine-tune the task-A model on task B without replay, for one seed of the task-B phase.

The no-replay arm of every comparison; each replay arm trains with the same train_b settings and the same seed, so
that only the replayed samples differ. The training curves (task B's and task A's denoising loss on fixed subsets:
the course of forgetting during the fine-tune) go to ``--out-curves``.
"""

from __future__ import annotations

from hopfield_replay.runtime.data_parallel import launcher
from hopfield_replay.runtime.devices import resolve_device
from hopfield_replay.models import CheckpointPolicy, TrainConfig, load_model, train_and_save
from hopfield_replay.io.tables import check_output, load_task
from hopfield_replay.measures.curves import training_curves
from stages.runner import stage


@stage("x0", "samples", "model", "out", "out-curves", relaunch=launcher("train_b"), seed=int)
def main(cfg, args):
    check_output(args.out, is_dir=True)
    check_output(args.out_curves, is_dir=True)
    model = load_model(args.model)
    x0, labels, ids = load_task(args.x0, args.samples, "B", family=model.family)
    x_a, labels_a, ids_a = load_task(args.x0, args.samples, "A", family=model.family)
    curves = training_curves(cfg.curves, {"task_b": (x0, ids, labels), "task_a": (x_a, ids_a, labels_a)},
                             cpu_bf16=cfg.train_b.cpu_bf16)
    config = TrainConfig(**cfg.train_b.loop_settings(), seed=args.seed, replay_fraction=0.0)
    train_and_save(model, x0, labels, config, resolve_device(cfg.device), args.out, desc=f"train_b seed {args.seed}",
                   checkpoints=CheckpointPolicy.from_params(cfg.execution), **cfg.train_b.speed_settings(),
                   curves=curves, curves_out=args.out_curves)


if __name__ == "__main__":
    main()
