"""retrain: one arm. Start from the task-A model and train on task B with the arm's replay buffer mixed into
every batch at retrain.replay_fraction, for the same steps and seed as train_b (only the buffer differs)."""

from __future__ import annotations

import numpy as np
import torch

from hopfield_replay.diffusion import load_model
from hopfield_replay.params import RetrainParams, TrainParams, parse_section
from hopfield_replay.replay import STRATEGIES
from hopfield_replay.tables import read_table
from stages import common


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--strategy", required=True)
    ap.add_argument("--budget", type=int, required=True)
    ap.add_argument("--x0", default="data/prepared/model_space.safetensors",
                    help="model-space x0 in sample_id order (written by encode)")
    ap.add_argument("--samples", default="data/tables/samples.parquet")
    ap.add_argument("--model", default="data/models/task_a")
    ap.add_argument("--selection", required=True, help="the arm's buffer, data/selection/<strategy>-<budget>.parquet")
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)
    raw = common.load(args)
    if args.strategy not in STRATEGIES:
        raise ValueError(f"--strategy: unknown strategy {args.strategy!r}; use one of {', '.join(STRATEGIES)}")
    tp = parse_section(raw, TrainParams, "train_b")
    rp = parse_section(raw, RetrainParams, "retrain")
    device, _ = common.device_and_meta(raw, sections=("train_b", "retrain"), seed=tp.seed, table="model")
    buffer = read_table(args.selection)
    if not ((buffer["strategy"] == args.strategy).all() and (buffer["budget"] == args.budget).all()):
        raise ValueError(f"--selection: {args.selection} is not the buffer of {args.strategy}-{args.budget}")
    x_a, labels_a, ids_a = common.load_task(args.x0, args.samples, "A")
    x_b, labels_b, _ = common.load_task(args.x0, args.samples, "B")
    keep = torch.from_numpy(np.isin(ids_a, buffer["sample_id"].to_numpy()))
    model = load_model(args.model)
    common.check_model_space(model, args.x0)
    common.train_and_save(model, x_b, labels_b, tp, device, args.out, desc=f"retrain {args.strategy}-{args.budget}",
                          replay_x0=x_a[keep], replay_labels=labels_a[keep], replay_fraction=rp.replay_fraction,
                          extra={"strategy": args.strategy, "budget": args.budget, "replayed": int(keep.sum())})


if __name__ == "__main__":
    common.run(main)
