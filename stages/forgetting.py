"""forgetting: reconstruction error of every task-A sample at each t under the task-B model of every seed (no
replay), beside its error under the task-A model (from the scores table), in the model's space.

    error(t) = mean |x0_hat(x_t) - x0|^2   (one-step Tweedie estimate, noise fixed per (sample, t))
    absolute = error - error_a             relative = log(error / error_a)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hopfield_replay.runtime.devices import resolve_device
from hopfield_replay.measures.reconstruction import measure_forgetting
from hopfield_replay.models import load_model
from hopfield_replay.io.tables import check_output, load_task, read_table, write_table
from stages.runner import provenance, stage


def task_a_errors(scores_path, timesteps) -> pd.DataFrame:
    """The task-A model's error per (sample_id, t), as the scores stage measured it (recon_error_a_t{t})."""
    cols = [f"recon_error_a_t{t}" for t in timesteps]
    scores = read_table(scores_path, columns=["sample_id", "task", "label", *cols])
    long = scores.melt(id_vars=["sample_id", "task", "label"], value_vars=cols, var_name="t", value_name="error_a")
    long["t"] = long["t"].str.removeprefix("recon_error_a_t").astype(np.int64)
    return long.sort_values(["sample_id", "t"], ignore_index=True)


@stage("x0", "samples", "scores", "models-dir", "out")
def main(cfg, args):
    fp, device = cfg.forgetting, resolve_device(cfg.device)
    check_output(args.out)
    error_a = task_a_errors(args.scores, fp.timesteps)
    x_a, labels_a, ids_a = load_task(args.x0, args.samples, "A", family=cfg.model.family)
    parts = []
    for seed in cfg.seeds:
        model = load_model(Path(args.models_dir) / f"seed{seed}")
        parts.append(measure_forgetting(model, x_a, ids_a, error_a, fp.timesteps, labels=labels_a, seed=fp.noise_seed,
                                        space=fp.space, batch_size=fp.batch_size, device=device).assign(seed=seed))
    df = pd.concat(parts, ignore_index=True)
    write_table(df, args.out, table="forgetting",
                meta=provenance(cfg, "forgetting", "seeds", seed=fp.noise_seed, device=device, table="forgetting"))
    means = df.groupby("t")[["absolute", "relative"]].mean()
    print("forgetting (no replay), mean over samples and seeds: " + ", ".join(
        f"t={t}: {r.absolute:.4g} abs, {r.relative:.3f} log-ratio" for t, r in means.iterrows()))


if __name__ == "__main__":
    main()
