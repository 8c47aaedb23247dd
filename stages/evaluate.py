"""evaluate: reconstruction forgetting of every task-A sample under every replay arm and seed, beside the no-replay
arm (strategy 'none', budget 0: the forgetting table's rows), measured as in the forgetting stage.

    replayed = the sample is in the arm's buffer (for that seed)
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hopfield_replay.runtime.devices import resolve_device
from hopfield_replay.errors import UserError
from hopfield_replay.models import load_model
from hopfield_replay.measures.reconstruction import measure_forgetting
from hopfield_replay.io.tables import check_output, load_task, read_table, write_table
from stages.runner import provenance, stage


def check_buffers(selection: pd.DataFrame, path, cfg) -> None:
    """The selection table must hold exactly the buffers of select_replay.arms x budgets x seeds."""
    p = cfg.select_replay
    expected = {(arm, budget, seed) for arm in p.arms for budget in p.budgets for seed in cfg.seeds}
    found = {(str(a), int(b), int(s)) for a, b, s in zip(selection.strategy, selection.budget, selection.seed)}
    extra, missing = sorted(found - expected), sorted(expected - found)
    if extra or missing:
        what = (f"buffers not in the params, e.g. {extra[0][0]}-{extra[0][1]} seed {extra[0][2]}" if extra else
                f"no buffer for {missing[0][0]}-{missing[0][1]} seed {missing[0][2]}")
        raise UserError(f"{path}: holds {what}; it must hold exactly the buffers of select_replay.arms x "
                        "select_replay.budgets x seeds: rerun select_replay")


@stage("x0", "samples", "forgetting", "selection", "models-dir", "out")
def main(cfg, args):
    fp, device = cfg.forgetting, resolve_device(cfg.device)
    check_output(args.out)
    base = read_table(args.forgetting, columns=["sample_id", "task", "label", "seed", "t", "error_a", "error",
                                                "absolute", "relative"])
    selection = read_table(args.selection, columns=["sample_id", "strategy", "budget", "seed"])
    check_buffers(selection, args.selection, cfg)
    parts = [base.assign(strategy="none", budget=0, replayed=False)]
    x_a, labels_a, ids_a = load_task(args.x0, args.samples, "A", family=cfg.model.family)
    for seed in cfg.seeds:
        error_a = base.loc[base.seed == seed, ["sample_id", "task", "label", "t", "error_a"]]
        for arm in cfg.select_replay.arms:
            for budget in cfg.select_replay.budgets:
                model = load_model(Path(args.models_dir) / f"seed{seed}" / f"{arm}-{budget}")
                rows = measure_forgetting(model, x_a, ids_a, error_a, fp.timesteps, labels=labels_a, seed=fp.noise_seed,
                                          space=fp.space, batch_size=fp.batch_size, device=device)
                buffer = selection.loc[(selection.strategy == arm) & (selection.budget == budget)
                                       & (selection.seed == seed), "sample_id"]
                parts.append(rows.assign(seed=seed, strategy=arm, budget=budget, replayed=rows.sample_id.isin(buffer)))
                print(f"evaluate: seed {seed} {arm}-{budget}: mean absolute forgetting {rows.absolute.mean():.4g}, "
                      f"relative {rows.relative.mean():.4g}")
    df = pd.concat(parts, ignore_index=True)
    df["budget"] = df["budget"].astype("int64")
    write_table(df, args.out, table="replay_forgetting", meta=provenance(
        cfg, "forgetting", "seeds", "select_replay", "retrain", seed=fp.noise_seed, device=device,
        table="replay_forgetting"))


if __name__ == "__main__":
    main()
