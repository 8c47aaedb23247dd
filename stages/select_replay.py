"""select_replay: for each strategy and budget, the K task-A samples to replay, ranked from task-A scores only.

Writes the selection table (all arms) and one file per arm (``<out-dir>/<strategy>-<budget>.parquet``), so that
each retrain arm depends on its own buffer only and reruns only when that buffer changes.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hopfield_replay.params import SelectParams, parse_section
from hopfield_replay.replay import arm_name, select_replay
from hopfield_replay.tables import atomic_path, provenance, read_table, write_table
from stages import common


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--energies", default="data/tables/energies.parquet")
    ap.add_argument("--out", default="data/tables/selection.parquet")
    ap.add_argument("--out-dir", default="data/selection")
    args = ap.parse_args(argv)
    raw = common.load(args)
    p = parse_section(raw, SelectParams, "select_replay")
    energies = read_table(args.energies)
    if p.score not in energies.columns:
        raise ValueError(f"select_replay.score: {p.score!r} is not a column of {args.energies}")
    n = len(energies)
    too_big = [b for b in p.budgets if b > n]
    if too_big:
        raise ValueError(f"select_replay.budgets: {too_big} exceed the {n} task-A samples; use budgets in [1, {n}]")
    arms = [select_replay(energies[p.score].to_numpy(), energies["sample_id"].to_numpy(), s, b, seed=p.seed)
            for s in p.strategies for b in p.budgets]
    with atomic_path(args.out_dir, is_dir=True) as tmp:
        for arm in arms:
            strategy, budget = arm["strategy"].iat[0], int(arm["budget"].iat[0])
            # An arm's file depends on its own identity only, so adding an arm leaves the others byte-identical
            # and DVC retrains only the new arms.
            arm_params = {"select_replay": {"strategy": strategy, "budget": budget, "score": p.score, "seed": p.seed}}
            write_table(arm, Path(tmp) / f"{arm_name(strategy, budget)}.parquet", table="selection",
                        meta=provenance(arm_params, seed=p.seed, device="cpu", table="selection"))
    meta = provenance(common.params_of(raw, "select_replay"), seed=p.seed, device="cpu", table="selection")
    table = pd.concat(arms, ignore_index=True)
    write_table(table, args.out, table="selection", meta=meta)
    print(f"select_replay: {len(arms)} arms ({', '.join(p.strategies)} x budgets {p.budgets}) by {p.score}")


if __name__ == "__main__":
    common.run(main)
