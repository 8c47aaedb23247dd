"""forecast: predict each task-A sample's forgetting before any task-B fine-tune, from model A, the task-A and
task-B data and short probe fine-tunes (hopfield_replay.forecast): proximity_b, grad_dot, grad_cos and probe_<steps>
for each of forecast.probe_fractions x train_b.steps, with the compute each takes (image passes, deterministic; the
seconds on this machine are printed). Plus proximity_b_classifier: proximity_b in the feature space of the
classifier stage's model (the prepared images' features; no pass of the diffusion model).

The probes train a copy of model A on task B with train_b's settings at a constant learning rate (a short run has no
room for warmup and decay), seed = the first of `seeds`; losses at the fixed noise and t grid of `forgetting`. The
report measures each forecast against the forgetting the full fine-tunes then showed, and against the seed ceiling.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hopfield_replay.energy import knn_distances
from hopfield_replay.forecast import estimate_seconds, forecast, forecast_cost, probes_share_one_run
from hopfield_replay.io.tables import check_output, load_task, write_table
from hopfield_replay.measures.classifier import extract_features
from hopfield_replay.models import TrainConfig, load_model
from hopfield_replay.runtime.devices import resolve_device
from stages.generate import load_classifier
from stages.runner import provenance, stage


@stage("x0", "images", "samples", "model", "classifier", "out")
def main(cfg, args):
    fp, tb, device = cfg.forgetting, cfg.train_b, resolve_device(cfg.device)
    check_output(args.out)
    model = load_model(args.model).to(device)
    x_a, labels_a, ids_a = load_task(args.x0, args.samples, "A", family=model.family)
    x_b, labels_b, ids_b = load_task(args.x0, args.samples, "B", family=model.family)
    steps = sorted({max(1, round(f * tb.steps)) for f in cfg.forecast.probe_fractions})
    recipe = TrainConfig(**{**tb.loop_settings(), "lr_schedule": "constant", "lr_warmup_steps": 0,
                            "ema_decay": None}, seed=cfg.seeds[0], replay_fraction=0.0)
    conditional, timing = model.family != "ddpm", {}
    estimate = estimate_seconds(model, x_a, x_b, timesteps=fp.timesteps, probe_steps=steps, batch_size=tb.batch_size,
                                labels_old=labels_a if conditional else None, seed=fp.noise_seed,
                                shared_probes=probes_share_one_run(recipe))
    print(f"forecast: {len(x_a)} task-A and {len(x_b)} task-B samples, probes of {steps} steps; estimated "
          f"{estimate / 60:.1f} min here", flush=True)
    table, seconds = forecast(model, x_a, x_b, timesteps=fp.timesteps, probe=recipe, probe_steps=steps,
                              knn_k=cfg.forecast.knn_k, seed=fp.noise_seed, ids_old=ids_a, ids_new=ids_b,
                              labels_old=labels_a if conditional else None,
                              labels_new=labels_b if conditional else None, progress=True, timing=timing)
    classifier, _ = load_classifier(args.classifier)
    pixels_a, _, pix_ids_a = load_task(args.images, args.samples, "A")
    pixels_b, _, _ = load_task(args.images, args.samples, "B")
    features_a = extract_features(classifier, pixels_a).double()
    k = min(cfg.forecast.knn_k, len(pixels_b))
    table["proximity_b_classifier"] = (-knn_distances(features_a, extract_features(classifier, pixels_b).double(), k)
                                       .mean(1).numpy()[pd.Index(pix_ids_a).get_indexer(ids_a)])
    # the table holds the deterministic compute (image passes); the seconds are this machine's, printed only
    per_step = timing.get("train_seconds_per_step", float("nan"))
    table.insert(0, "label", np.asarray(labels_a, dtype=np.int64))
    table.insert(0, "sample_id", np.asarray(ids_a, dtype=np.int64))
    meta = provenance(cfg, "forecast", "forgetting", "train_b", "seeds", seed=fp.noise_seed, device=device,
                      table="forecast")
    passes = {**forecast_cost(len(ids_a), len(ids_b), len(fp.timesteps), steps, tb.batch_size),
              "proximity_b_classifier": 0.0}  # the small classifier's forward only: no pass of the diffusion model
    write_table(table, args.out, table="forecast",
                meta={**meta, "cost_passes": passes, "train_b_passes": tb.steps * tb.batch_size, "probe_steps": steps})
    print("forecast: seconds here: " + ", ".join(f"{k} {v:.1f}" for k, v in seconds.items())
          + f"; one train_b run ~{per_step * tb.steps:.0f} s (projected from the probes' steps)")


if __name__ == "__main__":
    main()
