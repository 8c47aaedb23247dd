"""select_replay: for each seed, arm and budget, the K task-A samples to replay (hopfield_replay.replay).

An arm is a registered strategy (energy_high and energy_low rank by select_replay.score; soft samples in
proportion to softmax(z-scored score / temperature); random, class_balanced, kcenter, herding; oracle ranks by
the forgetting measured without replay for that seed: a ceiling that uses task-B information; energy_high_per_class
and oracle_per_class rank the same way inside each class, with class_balanced's class shares) or
``<predictor>_high`` / ``_low`` / ``_high_per_class`` / ``_low_per_class`` for any column of the scores table or
of the forecast table (forecasts made before fine-tuning: ``probe_<steps>_high`` is maximally interfered retrieval,
MIR: replay the samples whose loss a short probe fine-tune on task B raises most; ``grad_dot_high``, the samples
whose gradient conflicts most with task B's).
Writes one file per buffer, ``<out-dir>/seed<s>/<arm>-<budget>.parquet``, whose bytes depend only on that buffer,
so adding an arm, budget or seed retrains only the new arms; and the selection table of all buffers.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hopfield_replay.errors import UserError
from hopfield_replay.measures.forgetting import per_sample
from hopfield_replay.arms import parse_arm
from hopfield_replay.replay import STRATEGY_INFO, SelectionInputs, select_replay
from hopfield_replay.io.tables import atomic_path, check_output, load_task, provenance, read_table, write_table
from stages.runner import stage


@stage("scores", "forecast", "forgetting", "x0", "samples", "out", "out-dir")
def main(cfg, args):
    p = cfg.select_replay
    check_output(args.out)
    check_output(args.out_dir, is_dir=True)
    scores = read_table(args.scores, columns=["sample_id", "label"]).sort_values("sample_id", ignore_index=True)
    forecast = read_table(args.forecast, columns=["sample_id"]).drop(columns="label", errors="ignore")
    if sorted(forecast["sample_id"]) != scores["sample_id"].tolist():
        raise UserError(f"{args.forecast}: does not forecast the task-A samples of {args.scores}; rerun forecast")
    shared = sorted(set(forecast.columns) & set(scores.columns) - {"sample_id"})
    if shared:
        raise UserError(f"{args.forecast}: columns {shared} are also columns of {args.scores}; rerun forecast")
    scores = scores.merge(forecast, on="sample_id", how="left", validate="one_to_one")
    arms = {arm: parse_arm(arm, p.score) for arm in p.arms}
    for arm, (_, column) in arms.items():
        if column != "oracle" and column not in scores.columns:
            choices = [c for c in scores.columns if c not in ("sample_id", "task", "label", "beta")]
            raise UserError(f"select_replay.arms: arm {arm!r} ranks by {column!r}, which is not a column of "
                            f"{args.scores} or {args.forecast}; use one of {', '.join(choices)}")
    if max(p.budgets) > len(scores):
        raise UserError(f"select_replay.budgets: {max(p.budgets)} exceeds the {len(scores)} task-A samples of "
                        f"{args.scores}; use budgets of at most {len(scores)}")
    features = None
    if any(STRATEGY_INFO[s].needs_features for s, _ in arms.values()):
        x0, _, ids = load_task(args.x0, args.samples, "A")
        features = x0.flatten(1).double().numpy()[pd.Index(ids).get_indexer(scores["sample_id"])]
    forgetting = read_table(args.forgetting, columns=["sample_id", "seed", "t", "error_a", "error"])
    buffers = []
    # The table and the buffer folder belong together: both are written to temporaries and renamed at the end.
    with atomic_path(args.out) as tmp_table, atomic_path(args.out_dir, is_dir=True) as tmp:
        for seed in cfg.seeds:
            oracle = per_sample(forgetting, p.oracle_measure, seed=seed)["agg"].reindex(scores["sample_id"])
            for arm, (strategy, column) in arms.items():
                values = oracle.to_numpy() if column == "oracle" else scores[column].to_numpy()
                inputs = SelectionInputs(values, scores["sample_id"].to_numpy(), labels=scores["label"].to_numpy(),
                                         features=features, seed=seed, temperature=p.temperature)
                for budget in p.budgets:
                    buffer = select_replay(inputs, strategy, budget, score_name=column).assign(strategy=arm)
                    identity = {"arm": arm, "budget": budget, "seed": seed, "score": column,
                                "temperature": p.temperature if strategy == "soft" else None,
                                "oracle_measure": p.oracle_measure if column == "oracle" else None}
                    write_table(buffer, Path(tmp) / f"seed{seed}" / f"{arm}-{budget}.parquet", table="selection",
                                meta=provenance({"select_replay": identity}, seed=seed, device="cpu", table="selection"))
                    buffers.append(buffer)
        table = pd.concat(buffers, ignore_index=True)
        write_table(table, tmp_table, table="selection",
                    meta=provenance({"select_replay": cfg.section("select_replay"), "seeds": cfg.seeds},
                                    seed=cfg.seeds[0], device="cpu", table="selection"))
    print(f"select_replay: {len(buffers)} buffers: arms {', '.join(p.arms)} x budgets {p.budgets} x seeds {cfg.seeds}")


if __name__ == "__main__":
    main()
