"""retrain: one replay arm for one seed. Start from the task-A model and train on task B with the arm's buffer
mixed into every batch at retrain.replay_fraction, with train_b's settings and the same seed as train_b (only the
replayed samples differ). Training curves (task B and task A, as train_b's) go to ``--out-curves``."""

from __future__ import annotations

import numpy as np
import torch

from hopfield_replay.runtime.data_parallel import launcher
from hopfield_replay.runtime.devices import resolve_device
from hopfield_replay.errors import UserError
from hopfield_replay.models import CheckpointPolicy, TrainConfig, load_model, train_and_save
from hopfield_replay.io.tables import check_output, load_task, read_table
from hopfield_replay.measures.curves import training_curves
from stages.runner import stage


@stage("x0", "samples", "model", "selection", "out", "out-curves", relaunch=launcher("train_b"), arm=str, budget=int,
       seed=int)
def main(cfg, args):
    check_output(args.out, is_dir=True)
    check_output(args.out_curves, is_dir=True)
    buffer = read_table(args.selection, columns=["sample_id", "strategy", "budget", "seed"])
    if buffer.empty or set(zip(buffer.strategy, buffer.budget, buffer.seed)) != {(args.arm, args.budget, args.seed)}:
        raise UserError(f"{args.selection}: is not the buffer of arm {args.arm}, budget {args.budget}, seed "
                        f"{args.seed}; rerun select_replay")
    model = load_model(args.model)
    x_a, labels_a, ids_a = load_task(args.x0, args.samples, "A", family=model.family)
    x_b, labels_b, ids_b = load_task(args.x0, args.samples, "B", family=model.family)
    curves = training_curves(cfg.curves, {"task_b": (x_b, ids_b, labels_b), "task_a": (x_a, ids_a, labels_a)},
                             cpu_bf16=cfg.train_b.cpu_bf16)
    keep = torch.from_numpy(np.isin(ids_a, buffer["sample_id"].to_numpy()))
    config = TrainConfig(**cfg.train_b.loop_settings(), seed=args.seed,
                         replay_fraction=cfg.retrain.replay_fraction)
    train_and_save(model, x_b, labels_b, config, resolve_device(cfg.device), args.out,
                   desc=f"retrain {args.arm}-{args.budget} seed {args.seed}", replay_x0=x_a[keep],
                   replay_labels=labels_a[keep], extra={"arm": args.arm, "budget": args.budget, "seed": args.seed},
                   checkpoints=CheckpointPolicy.from_params(cfg.execution), **cfg.train_b.speed_settings(),
                   curves=curves, curves_out=args.out_curves)


if __name__ == "__main__":
    main()
