"""report: metrics for `dvc metrics show`, CSV plot data, PNG figures, and a one-page Markdown report.

Metrics: Spearman rho (bootstrap 95% CI) of task-A energy, energy rise and model energy vs reconstruction
forgetting, per t and for the mean over t; mean forgetting by energy decile; per arm, mean forgetting overall,
for replayed and non-replayed samples, and in the top energy decile.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hopfield_replay.forgetting import arm_summary, energy_deciles, per_sample_forgetting, correlation
from hopfield_replay.params import ReportParams, parse_section
from hopfield_replay.report import markdown_report, plot_arms_by_decile, plot_energy_vs_forgetting, plot_image_grid
from hopfield_replay.tables import atomic_path, load_tensors, read_table, write_json
from stages import common

MEASURES = {"energy_a": "Hopfield energy (task A, LOO)", "energy_rise": "energy rise (B - A)",
            "model_energy": "model energy (denoising loss)"}


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--images", default="data/prepared/images.safetensors")
    ap.add_argument("--energies", default="data/tables/energies.parquet")
    ap.add_argument("--forgetting", default="data/tables/forgetting.parquet")
    ap.add_argument("--replay", default="data/tables/replay_forgetting.parquet")
    ap.add_argument("--metrics", default="data/metrics/report.json")
    ap.add_argument("--out-dir", default="data/report")
    args = ap.parse_args(argv)
    raw = common.load(args)
    p = parse_section(raw, ReportParams, "report")
    energies = read_table(args.energies).set_index("sample_id").sort_index()
    per = per_sample_forgetting(read_table(args.forgetting)).join(energies[list(MEASURES)], how="inner")
    replay = read_table(args.replay)

    correlations = {}
    for measure in MEASURES:
        correlations[measure] = {
            col: correlation(per[measure], per[col], n_boot=p.bootstrap, seed=p.seed)
            for col in [c for c in per.columns if c.startswith("t=")] + ["mean"]
        }
    per["decile"] = energy_deciles(per["energy_a"], p.deciles)
    fcols = [c for c in per.columns if c.startswith("t=")] + ["mean"]
    deciles = per.groupby("decile").agg(energy_a_mean=("energy_a", "mean"), **{c: (c, "mean") for c in fcols})
    deciles = deciles.reset_index()
    arms = arm_summary(replay, energies.reset_index(), p.deciles)
    replay_ps = replay.groupby(["strategy", "budget", "sample_id"], sort=False)["forgetting"].mean().reset_index()
    replay_ps["decile"] = per["decile"].reindex(replay_ps["sample_id"]).to_numpy()
    arm_deciles = replay_ps.groupby(["strategy", "budget", "decile"], sort=False)["forgetting"].mean().reset_index()

    metrics = {
        "spearman": {m: {t: {k: round(v, 5) if isinstance(v, float) else v for k, v in r.items()}
                         for t, r in per_t.items()} for m, per_t in correlations.items()},
        "forgetting_by_energy_decile": {f"d{int(r.decile)}": round(float(r.mean), 6) for r in deciles.itertuples()},
        "arms": {r.arm: {k: (None if np.isnan(getattr(r, k)) else round(float(getattr(r, k)), 6))
                         for k in ("mean", "replayed", "not_replayed", "top_decile")} for r in arms.itertuples()},
    }
    high = per.sort_values("energy_a", ascending=False).head(p.grid)
    low = per.sort_values("energy_a").head(p.grid)
    tensors = load_tensors(args.images)
    pos = {int(s): i for i, s in enumerate(tensors["sample_id"].tolist())}
    images = tensors["images"].numpy()

    with atomic_path(args.out_dir, is_dir=True) as out:
        plots = out / "plots"
        plots.mkdir()
        per.reset_index()[["sample_id", "energy_a", "energy_rise", "model_energy", *fcols]].to_csv(
            plots / "energy_forgetting.csv", index=False)
        deciles.to_csv(plots / "forgetting_by_decile.csv", index=False)
        arm_deciles.assign(arm=arm_deciles.strategy + "-" + arm_deciles.budget.astype(str)).to_csv(
            plots / "arms_by_decile.csv", index=False)
        arms.to_csv(plots / "arms.csv", index=False)
        figures = {
            "energy_vs_forgetting": plot_energy_vs_forgetting(per, deciles, plots / "energy_vs_forgetting.png"),
            "arms_by_decile": plot_arms_by_decile(arm_deciles, plots / "arms_by_decile.png"),
            "image_grid": plot_image_grid(images[[pos[int(s)] for s in high.index]], images[[pos[int(s)] for s in low.index]],
                                          plots / "energy_extremes.png", high_energy=high["energy_a"].to_numpy(),
                                          low_energy=low["energy_a"].to_numpy()),
        }
        summary = {"correlations": {MEASURES[m]: v for m, v in correlations.items()}}
        text = markdown_report(summary, {k: str(v.relative_to(out)) for k, v in figures.items()}, arms,
                               "hopfield-replay: energy vs forgetting, and replay")
        (out / "report.md").write_text(text)
    write_json(metrics, args.metrics)
    rho = correlations["energy_a"]["mean"]
    print(f"report: Spearman(energy_a, forgetting mean over t) = {rho['rho']:.3f} [{rho['lo']:.3f}, {rho['hi']:.3f}]")
    for r in arms.itertuples():
        print(f"report: arm {r.arm:>18}: mean forgetting {r.mean:.4g}, top energy decile {r.top_decile:.4g}")
    print(f"report: {Path(args.out_dir) / 'report.md'}")


if __name__ == "__main__":
    common.run(main)
