"""Stage mhn_trained: MHN-BM (memories trained by maximum likelihood) on task A then B, with replay arms.

    python -m stages.mhn_trained --params params.yaml --out-dir data/mhn/trained

Reads the ``mhn_trained`` section. Writes, atomically (the whole folder at once): energies.parquet (per seed, arm,
task-A sample: energy after A, after B, rise, decile, replayed), summary.parquet (per arm, quantity: estimate with
bootstrap interval), metrics.json.
"""

from __future__ import annotations

import logging

import torch

from hopfield_replay.mhn.trained import run_trained
from hopfield_replay.io.tables import atomic_path, check_output, write_json, write_table
from stages.runner import provenance, stage

log = logging.getLogger(__name__)


@stage("out-dir")
def main(cfg, args):
    p = cfg.mhn_trained
    check_output(args.out_dir, is_dir=True)
    if p.threads:
        torch.set_num_threads(p.threads)
    table, summary, metrics = run_trained(p)
    meta = lambda name: provenance(cfg, "mhn_trained", seed=p.seeds[0], device="cpu", table=name)  # noqa: E731
    with atomic_path(args.out_dir, is_dir=True) as out:
        out.mkdir(parents=True, exist_ok=True)
        write_table(table, out / "energies.parquet", table="mhn_trained_energies", meta=meta("mhn_trained_energies"))
        write_table(summary, out / "summary.parquet", table="mhn_trained_summary", meta=meta("mhn_trained_summary"))
        # Wall-clock time is logged, not written: metrics must be the same for the same params and seed.
        details = {k: v for k, v in metrics.items() if k != "seconds"}
        write_json(details, out / "details.json")
        headline = ("rise_all", "rise_not_replayed", "rise_top_decile")  # 4 significant digits
        write_json({arm: {name: float(f"{details[arm][name]:.4g}") for name in headline if name in details[arm]}
                    for arm in p.arms}, out / "metrics.json")
    log.info("mhn_trained: %d seeds x %d arms, %.1f s -> %s", len(p.seeds), len(p.arms), metrics["seconds"],
             args.out_dir)
    for arm in p.arms:
        am = metrics[arm]
        log.info("  %-13s rise all %.4f [%.4f, %.4f], not replayed %.4f, top decile %.4f", arm, am["rise_all"],
                 *am["rise_all_ci"], am["rise_not_replayed"], am.get("rise_top_decile", float("nan")))


if __name__ == "__main__":
    main()
