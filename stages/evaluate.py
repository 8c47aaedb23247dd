"""evaluate: reconstruction forgetting of every task-A sample under every replay arm (and the no-replay arm).

    error(arm, t) as in forgetting; forgetting = error(arm, t) - error_a(t); replayed = sample in the arm's buffer
The no-replay arm (strategy 'none', budget 0) is the task-B model's row of the forgetting table.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hopfield_replay.diffusion import load_model
from hopfield_replay.params import ForgettingParams, SelectParams, parse_section
from hopfield_replay.reconstruction import forgetting, reconstruction_error
from hopfield_replay.replay import arm_name
from hopfield_replay.tables import read_table, write_table
from stages import common

COLUMNS = ["sample_id", "label", "strategy", "budget", "t", "error_a", "error", "forgetting", "replayed"]


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--x0", default="data/prepared/model_space.safetensors",
                    help="model-space x0 in sample_id order (written by encode)")
    ap.add_argument("--samples", default="data/tables/samples.parquet")
    ap.add_argument("--forgetting", default="data/tables/forgetting.parquet")
    ap.add_argument("--selection", default="data/tables/selection.parquet")
    ap.add_argument("--models-dir", default="data/models/retrain")
    ap.add_argument("--out", default="data/tables/replay_forgetting.parquet")
    args = ap.parse_args(argv)
    raw = common.load(args)
    fp = parse_section(raw, ForgettingParams, "forgetting")
    sp = parse_section(raw, SelectParams, "select_replay")
    device, meta = common.device_and_meta(raw, sections=("forgetting", "select_replay"), seed=fp.noise_seed,
                                           table="replay_forgetting")
    base = read_table(args.forgetting)
    if sorted(base["t"].unique().tolist()) != sorted(fp.timesteps):
        raise ValueError(f"{args.forgetting} was made with other timesteps than forgetting.timesteps; rerun forgetting")
    selection = read_table(args.selection)
    x_a, labels_a, ids_a = common.load_task(args.x0, args.samples, "A")
    parts = [base.assign(strategy="none", budget=0, error=base["error_b"], replayed=False)[COLUMNS]]
    for strategy in sp.strategies:
        for budget in sp.budgets:
            name = arm_name(strategy, budget)
            path = Path(args.models_dir) / name
            model = load_model(path)
            common.check_model_space(model, args.x0)
            err = reconstruction_error(model, x_a, ids_a, fp.timesteps, labels=labels_a, seed=fp.noise_seed, space=fp.space,
                                       batch_size=fp.batch_size, device=device).double().numpy()
            buffer = set(selection.loc[(selection.strategy == strategy) & (selection.budget == budget), "sample_id"])
            arm = pd.DataFrame({"sample_id": ids_a.repeat(len(fp.timesteps)),
                                "t": list(fp.timesteps) * len(ids_a), "error": err.reshape(-1)})
            arm = arm.merge(base[["sample_id", "t", "label", "error_a"]], on=["sample_id", "t"], validate="one_to_one")
            arm["strategy"], arm["budget"] = strategy, budget
            arm["forgetting"] = forgetting(arm["error_a"], arm["error"])
            arm["replayed"] = arm["sample_id"].isin(buffer)
            parts.append(arm[COLUMNS])
            print(f"evaluate: {name}: mean forgetting {arm.forgetting.mean():.4g} "
                  f"(replayed {arm.forgetting[arm.replayed].mean():.4g}, others {arm.forgetting[~arm.replayed].mean():.4g})")
    df = pd.concat(parts, ignore_index=True)
    df["budget"] = df["budget"].astype("int64")
    df["task"] = "A"
    write_table(df, args.out, table="replay_forgetting", meta=meta)


if __name__ == "__main__":
    common.run(main)
