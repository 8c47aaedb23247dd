"""report: the evidence on the paper's two claims, as metrics, figures and a one-page report.

For each forgetting measure (absolute, relative): every predictor of the scores table against forgetting
(Spearman, within-class Spearman, partial Spearman given report.nuisance, precision and AUROC at the top
report.top_frac, difference to the best baseline: intervals over seeds and samples); which t carry forgetting;
every replay arm against random and against no replay (paired over seeds); then the verdicts (evidence.claims).
data/metrics/verdicts.json holds the headline (what `dvc metrics show` prints), details.json everything else.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from hopfield_replay.evidence import arm_effects, claims, combine_verdicts, compare_to_best_baseline, evaluate_predictors
from hopfield_replay.forgetting import MEASURES, add_measures, energy_deciles, forgetting_by_t, per_sample
from hopfield_replay.predictors import predictor_kinds
from hopfield_replay.report import (markdown_report, plot_arms_by_decile, plot_image_grid, plot_predictors,
                                    plot_score_vs_forgetting, verdict_lines)
from hopfield_replay.tables import atomic_path, load_task, read_table, write_json
from stages.runner import stage


def _records(df: pd.DataFrame) -> list[dict]:
    return json.loads(df.reset_index().to_json(orient="records", double_precision=6))


@stage("images", "samples", "scores", "forgetting", "replay", "metrics-dir", "out-dir")
def main(cfg, args):
    p, energy = cfg.report, cfg.select_replay.score
    scores = read_table(args.scores, columns=["sample_id", "label", energy, *p.nuisance]).set_index("sample_id")
    predictors = scores.drop(columns=["task", "label", "beta"])
    kinds = predictor_kinds(predictors.columns)
    forgetting = add_measures(read_table(args.forgetting, columns=["sample_id", "seed", "t", "error_a", "error"]))
    replay = add_measures(read_table(args.replay, columns=["sample_id", "seed", "strategy", "budget", "t", "replayed",
                                                           "error_a", "error"]))
    deciles = energy_deciles(scores[energy], p.deciles)
    boot = dict(n_boot=p.bootstrap, seed=p.seed, level=p.level)
    tables, comparison, by_t, arms, verdicts = {}, {}, {}, {}, {}
    for measure in MEASURES:
        targets = {s: per_sample(forgetting, measure, seed=s)["agg"] for s in cfg.seeds}
        tables[measure] = evaluate_predictors(predictors, scores["label"], targets, p.nuisance, kinds=kinds,
                                              top_frac=p.top_frac, **boot)
        comparison[measure] = compare_to_best_baseline(predictors, targets, kinds, p.nuisance, **boot)
        by_t[measure] = forgetting_by_t(forgetting, measure, **boot)
        arms[measure] = arm_effects(replay, deciles, measure, level=p.level)
        verdicts[measure] = claims(tables[measure], comparison[measure], arms[measure], predictor=energy)
    verdicts = {key: {"statement": verdicts["absolute"][key]["statement"],
                      "verdict": combine_verdicts(*(verdicts[m][key]["verdict"] for m in MEASURES)),
                      **{m: verdicts[m][key] for m in MEASURES}} for key in ("claim1", "claim2")}

    per = per_sample(forgetting, "relative").join(scores[["label", energy, "pixel_mass"]])
    curves = replay.assign(value=replay["absolute"] / replay["t"].map(
        forgetting.groupby(["seed", "t"])["absolute"].std(ddof=0).groupby("t").mean()))
    curves = (curves.groupby(["strategy", "budget", "seed", "sample_id"])["value"].mean().rename("forgetting")
              .reset_index().assign(decile=lambda d: deciles.reindex(d.sample_id).to_numpy())
              .groupby(["strategy", "budget", "seed", "decile"])["forgetting"].mean().reset_index())
    order = scores[energy].sort_values()
    pixels, _, ids = load_task(args.images, args.samples, "A")
    pos = pd.Index(ids)
    with atomic_path(args.out_dir, is_dir=True) as out:
        plots = out / "plots"
        plots.mkdir(parents=True)
        curves.to_csv(plots / "arms_by_decile.csv", index=False)
        for measure in MEASURES:
            tables[measure].to_csv(plots / f"predictors_{measure}.csv")
            arms[measure].to_csv(plots / f"arms_{measure}.csv", index=False)
        figures = {
            "predictors": plot_predictors(tables, plots / "predictors.png"),
            "arms_by_decile": plot_arms_by_decile(curves, plots / "arms_by_decile.png"),
            "scatter": plot_score_vs_forgetting(per, [energy, "pixel_mass", "recon_error_a"] if "recon_error_a" in per
                                                else [energy, "pixel_mass"], plots / "energy_vs_forgetting.png",
                                                target="agg"),
            "image_grid": plot_image_grid(pixels[pos.get_indexer(order.index[::-1][:p.grid])].numpy(),
                                          pixels[pos.get_indexer(order.index[:p.grid])].numpy(),
                                          plots / "energy_extremes.png", high_energy=order.to_numpy()[::-1][:p.grid],
                                          low_energy=order.to_numpy()[:p.grid]),
        }
        run = {"n_samples": len(scores), "seeds": cfg.seeds, "arms": cfg.select_replay.arms,
               "budgets": cfg.select_replay.budgets, "level": p.level}
        (out / "report.md").write_text(markdown_report(verdicts, tables, comparison, by_t, arms,
                                                       {k: str(v.relative_to(out)) for k, v in figures.items()}, run))
        details = {"run": run, **{m: {"predictors": _records(tables[m]), "vs_best_baseline": _records(comparison[m]),
                                      "forgetting_by_t": _records(by_t[m]), "arms": _records(arms[m])}
                                  for m in MEASURES}}
        write_json(details, f"{args.metrics_dir}/details.json")
        write_json(headline(verdicts), f"{args.metrics_dir}/verdicts.json")
    print("report: verdicts\n" + "\n".join(verdict_lines(verdicts)))
    print(f"report: {args.out_dir / 'report.md'}")


def headline(verdicts: dict) -> dict:
    """What `dvc metrics show` prints: per claim the verdict and, per measure, its effect and interval."""
    out = {}
    for key, claim in verdicts.items():
        out[key] = {"verdict": claim["verdict"]}
        for m in MEASURES:
            out[key][m] = {k: (round(float(claim[m][k]), 4) if np.isfinite(claim[m][k]) else None)
                           for k in ("effect", "lo", "hi")}
    return out


if __name__ == "__main__":
    main()
