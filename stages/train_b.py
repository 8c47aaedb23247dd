"""train_b: fine-tune the task-A model (any family) on task B's model-space x0 with no replay (the 'none' arm)."""

from __future__ import annotations

from hopfield_replay.diffusion import load_model
from hopfield_replay.params import TrainParams, parse_section
from stages import common


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--x0", default="data/prepared/model_space.safetensors",
                    help="model-space x0 in sample_id order (written by encode)")
    ap.add_argument("--samples", default="data/tables/samples.parquet")
    ap.add_argument("--model", default="data/models/task_a")
    ap.add_argument("--out", default="data/models/task_b")
    args = ap.parse_args(argv)
    raw = common.load(args)
    tp = parse_section(raw, TrainParams, "train_b")
    device, _ = common.device_and_meta(raw, sections=("train_b",), seed=tp.seed, table="model")
    x0, labels, _ = common.load_task(args.x0, args.samples, "B")
    model = load_model(args.model)
    common.check_model_space(model, args.x0)
    common.train_and_save(model, x0, labels, tp, device, args.out, desc="train_b")


if __name__ == "__main__":
    common.run(main)
