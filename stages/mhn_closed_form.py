"""Stage mhn_closed_form: energy rises and replay gains of the closed-form MHN under random rotations.

    python -m stages.mhn_closed_form --params params.yaml --out-dir data/mhn/closed_form

Reads the ``mhn_closed_form`` section. Writes, atomically (the whole folder at once):
fixed_points.parquet (per sample), energies.parquet (per eps, rotation, sample), gains.parquet (per eps, rotation,
source, target; when write_gains), summary.parquet (per eps, quantity: estimate with bootstrap interval),
metrics.json.
"""

from __future__ import annotations

import logging

import torch

from hopfield_replay.mhn.closed_form import run_closed_form
from hopfield_replay.io.tables import atomic_path, check_output, write_json, write_table
from stages.runner import provenance, stage

log = logging.getLogger(__name__)


HEADLINE = ("rise_outlier", "rise_cluster", "frac_rotations_outlier_rise_gt_cluster", "family_order_of_means_holds")


def headline(metrics: dict) -> dict:
    """The headline: per eps the mean rises and how often the paper's orders hold (4 significant digits)."""
    return {key: {name: float(f"{em[name]:.4g}") if isinstance(em[name], float) else em[name] for name in HEADLINE}
            for key, em in metrics.items() if key.startswith("eps_")}


@stage("out-dir")
def main(cfg, args):
    p = cfg.mhn_closed_form
    check_output(args.out_dir, is_dir=True)
    if p.threads:
        torch.set_num_threads(p.threads)
    result = run_closed_form(p)
    meta = lambda table: provenance(cfg, "mhn_closed_form", seed=p.seed, device="cpu", table=table)  # noqa: E731
    with atomic_path(args.out_dir, is_dir=True) as out:
        out.mkdir(parents=True, exist_ok=True)
        write_table(result.fixed_points, out / "fixed_points.parquet", table="mhn_fixed_points",
                    meta=meta("mhn_fixed_points"))
        write_table(result.energies, out / "energies.parquet", table="mhn_energies", meta=meta("mhn_energies"))
        if result.gains is not None:
            write_table(result.gains, out / "gains.parquet", table="mhn_gains", meta=meta("mhn_gains"))
        write_table(result.summary, out / "summary.parquet", table="mhn_summary", meta=meta("mhn_summary"))
        # Wall-clock time is logged, not written: metrics must be the same for the same params and seed.
        details = {k: v for k, v in result.metrics.items() if k != "seconds"}
        write_json(details, out / "details.json")
        write_json(headline(details), out / "metrics.json")
    m = result.metrics
    log.info("mhn_closed_form: %d memories, %d rotations, %.1f s -> %s", m["memories"], m["rotations"], m["seconds"],
             args.out_dir)
    for key, em in m.items():
        if key.startswith("eps_") and "rise_outlier" in em:
            log.info("  %s: rise outlier %.5f [%.5f, %.5f], cluster %.5f [%.5f, %.5f], outlier>cluster on %.0f%%",
                     key, em["rise_outlier"], *em["rise_outlier_ci"], em["rise_cluster"], *em["rise_cluster_ci"],
                     100 * em["frac_rotations_outlier_rise_gt_cluster"])


if __name__ == "__main__":
    main()
