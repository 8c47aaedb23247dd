"""report: the evidence on the paper's two claims (hopfield_replay.analysis.protocol), as metrics, figures and a report.

For each forgetting measure (absolute, relative): every predictor of the scores table against forgetting
(Spearman, within-class Spearman, partial Spearman given report.nuisance, precision and AUROC at the top
report.top_frac, difference to the best baseline; intervals over seeds and samples); which t carry forgetting;
every replay arm against random and against no replay (paired over seeds); then the verdicts, and the checks that
the replay experiment can show an effect at all (random vs no replay, the oracle ceiling vs random).
data/metrics/verdicts.json holds the headline (what `dvc metrics show` prints), details.json every table.
"""

from __future__ import annotations

import pandas as pd

from hopfield_replay.measures.forgetting import MEASURES, add_measures
from hopfield_replay.analysis.protocol import decile_curves, run_protocol
from hopfield_replay.analysis.report import (markdown_report, plot_arms_by_decile, plot_image_grid, plot_predictors,
                                    plot_score_vs_forgetting, check_lines, verdict_lines)
from hopfield_replay.analysis.generation import (arm_effects, claim2_generation, grid_rows, learned_summary,
                                                 plot_sample_grids, report_parts)
from hopfield_replay.analysis.convergence import (control_by_t, control_lines, curve_lines, last_fifth_change,
                                                  plot_training_curves, read_curves, regime_lines)
from hopfield_replay.analysis.forecasting import evaluate_forecasts, forecast_lines, plot_forecasts
from hopfield_replay.measures.regime import regime_by_t
from hopfield_replay.io.tables import (atomic_path, check_output, load_task, load_tensors, read_meta, read_table,
                                       write_json)
from stages.runner import stage


@stage("images", "samples", "scores", "forgetting", "replay", "generation", "grids", "control", "regime", "forecast",
       "curves", "metrics-dir", "out-dir", figures=True)
def main(cfg, args):
    p, energy = cfg.report, cfg.select_replay.score
    check_output(args.out_dir, is_dir=True)
    for name in ("details.json", "verdicts.json"):
        check_output(args.metrics_dir / name)
    scores = read_table(args.scores, columns=["sample_id", "label", energy, *p.nuisance]).set_index("sample_id")
    forgetting = add_measures(read_table(args.forgetting, columns=["sample_id", "seed", "t", "error_a", "error"]))
    replay = add_measures(read_table(args.replay, columns=["sample_id", "seed", "strategy", "budget", "t", "replayed",
                                                           "error_a", "error"]))
    generation = read_table(args.generation, columns=["model", "phase", "seed", "strategy", "budget", "learned",
                                                      "confident_share", "floor_share", "fd", "floor_fd", "other_task_fd",
                                                      "task_a_share", "task_b_share"])
    grids = load_tensors(args.grids)
    control = control_by_t(add_measures(read_table(args.control, columns=["sample_id", "seed", "t", "error_a",
                                                                           "error"])),
                           forgetting, n_boot=p.bootstrap, seed=p.seed, level=p.level)
    regime = read_table(args.regime, columns=["sample_id", "t", "model_error", "empirical_error", "distance"])
    training_curves = read_curves(args.curves)
    curve_summary = [dict(zip(("model", "metric", "first", "last", "last_fifth_change"),
                              (m, k, *last_fifth_change(training_curves, m, k))))
                     for (m, k), _ in training_curves.groupby(["model", "metric"]) if k != "train_loss"]
    controls = [*control_lines(control, cfg.train_b.steps, cfg.seeds[0], p.level), "", *regime_lines(regime)]
    effects = arm_effects(generation, p.level)
    ev = run_protocol(scores, forgetting, replay, seeds=cfg.seeds, energy=energy, nuisance=p.nuisance,
                      deciles=p.deciles, top_frac=p.top_frac, n_boot=p.bootstrap, seed=p.seed, level=p.level,
                      aggregate_t=p.aggregate_t)
    used = {m: ev.by_t[m].loc[lambda d: d.used, "t"] for m in MEASURES}
    forecast_table = read_table(args.forecast).set_index("sample_id").drop(columns="label")
    forecast_meta = read_meta(args.forecast)
    forecasts = evaluate_forecasts(
        forecast_table, scores, forgetting,
        used_t={m: used[m].tolist() for m in MEASURES}, seeds=cfg.seeds,
        ceilings={m: ev.agreement[m]["ceiling"] for m in MEASURES}, cost=forecast_meta.get("cost_passes", {}),
        train_b_cost=forecast_meta.get("train_b_passes", float("nan")), nuisance=p.nuisance, reference=energy,
        n_boot=p.bootstrap, seed=p.seed, level=p.level, top_frac=p.top_frac)
    curves = pd.concat([decile_curves(replay[replay.t.isin(used[m])], ev.deciles, m).assign(measure=m)
                        for m in MEASURES], ignore_index=True)
    per = ev.agg["relative"].to_frame().join(scores)
    order = scores[energy].sort_values()
    high, low = order.index[::-1][:p.grid], order.index[:p.grid]
    pixels, _, ids = load_task(args.images, args.samples, "A")
    rows = pd.Index(ids)
    run = {"n_samples": len(scores), "seeds": cfg.seeds, "arms": cfg.select_replay.arms,
           "budgets": cfg.select_replay.budgets, "level": p.level, "score": energy, "train_a_seed": cfg.train_a.seed}
    with atomic_path(args.out_dir, is_dir=True) as out:
        plots = out / "plots"
        plots.mkdir(parents=True)
        curves.to_csv(plots / "arms_by_decile.csv", index=False)
        for m in MEASURES:
            ev.predictors[m].to_csv(plots / f"predictors_{m}.csv")
            ev.arms[m].to_csv(plots / f"arms_{m}.csv", index=False)
            ev.by_decile[m].to_csv(plots / f"forgetting_by_decile_{m}.csv", index=False)
        figures = {
            "predictors": plot_predictors(ev.predictors, plots / "predictors.png",
                                          ceilings={m: ev.agreement[m]["ceiling"] for m in MEASURES}),
            "arms_by_decile": plot_arms_by_decile(curves, plots / "arms_by_decile.png"),
            "scatter": plot_score_vs_forgetting(per, [energy, *p.nuisance], plots / "energy_vs_forgetting.png",
                                                target="agg", bins=p.deciles, level=p.level,
                                                correlations=ev.predictors["relative"],
                                                ylabel="relative forgetting (per-t standardised)"),
            "image_grid": plot_image_grid(pixels[rows.get_indexer(high)].numpy(), pixels[rows.get_indexer(low)].numpy(),
                                          plots / "energy_extremes.png", high_energy=order[high].to_numpy(),
                                          low_energy=order[low].to_numpy()),
            "samples": plot_sample_grids(grids, grid_rows(generation), plots / "samples.png"),
            "forecasts": plot_forecasts(forecasts, plots / "forecasts.png", energy),
            "training_curves": plot_training_curves(training_curves, plots / "training_curves.png"),
        }
        forecasts.to_csv(plots / "forecasts.csv", index=False)
        figures = {k: str(v.relative_to(out)) for k, v in figures.items()}
        controls = [*curve_lines(training_curves, figures["training_curves"]), "", *controls]
        (out / "report.md").write_text(markdown_report(ev, figures, run,
                                                       report_parts(generation, effects, figures["samples"]),
                                                       controls, forecast_lines(forecasts, energy,
                                                                                figures["forecasts"])))
        summary, claim = learned_summary(generation), claim2_generation(effects)
        write_json({"run": run, **ev.details(),
                    "generation": {"models": generation.to_dict("records"), "effects": effects.to_dict("records"),
                                   "learned": summary, "claim2": claim},
                    "forecasts": forecasts.astype(object).where(forecasts.notna(), None).to_dict("records"),
                    "controls": {"training_curves": curve_summary, "continued_training": control.to_dict("records"),
                                 "regime": regime_by_t(regime).to_dict("records")}}, args.metrics_dir / "details.json")
        write_json({**ev.headline(), "generation": {"claim2": claim["verdict"] if claim else None,
                                                    "models_learned": f"{summary['learned']}/{summary['models']}"}},
                   args.metrics_dir / "verdicts.json")  # one short row in `dvc metrics show`; the rest: details
    print("report: are the models learned?\n" + "\n".join(report_parts(generation, effects, None)["learned"])
          + "\nreport: has model A converged?\n" + "\n".join(l for l in controls if l.startswith(("- ", "Model A is")))
          + "\nreport: verdicts\n" + "\n".join(verdict_lines(ev.verdicts)) + "\nreport: design checks\n"
          + "\n".join(check_lines(ev.checks, ev.verdicts["claim2"]["verdict"]))
          + f"\nreport: {args.out_dir / 'report.md'}")


if __name__ == "__main__":
    main()
