"""forgetting: reconstruction error of every task-A sample at each t under the task-A and task-B models, in the
model's space (encode's x0: pixels for the DDPM, VAE latents for Stable Diffusion).

    error(t) = mean |x0_hat(x_t) - x0|^2 (one-step estimate, noise fixed per (sample, t));
    forgetting = error_b - error_a
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from hopfield_replay.diffusion import load_model
from hopfield_replay.params import ForgettingParams, parse_section
from hopfield_replay.reconstruction import forgetting, reconstruction_error
from hopfield_replay.tables import write_table
from stages import common


def long_table(ids, labels, timesteps, errors: dict) -> pd.DataFrame:
    """(N, T) error matrices -> one row per (sample_id, t)."""
    n, t = len(ids), len(timesteps)
    df = pd.DataFrame({"sample_id": np.repeat(np.asarray(ids, dtype=np.int64), t),
                       "task": "A", "label": np.repeat(np.asarray(labels, dtype=np.int64), t),
                       "t": np.tile(np.asarray(timesteps, dtype=np.int64), n)})
    for name, err in errors.items():
        df[name] = err.double().numpy().reshape(-1)
    return df


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--x0", default="data/prepared/model_space.safetensors",
                    help="model-space x0 in sample_id order (written by encode)")
    ap.add_argument("--samples", default="data/tables/samples.parquet")
    ap.add_argument("--model-a", default="data/models/task_a")
    ap.add_argument("--model-b", default="data/models/task_b")
    ap.add_argument("--out", default="data/tables/forgetting.parquet")
    args = ap.parse_args(argv)
    raw = common.load(args)
    p = parse_section(raw, ForgettingParams, "forgetting")
    device, meta = common.device_and_meta(raw, sections=("forgetting",), seed=p.noise_seed, table="forgetting")
    x_a, labels_a, ids_a = common.load_task(args.x0, args.samples, "A")
    errors = {}
    for name, path in (("error_a", args.model_a), ("error_b", args.model_b)):
        model = load_model(path)
        common.check_model_space(model, args.x0)
        errors[name] = reconstruction_error(model, x_a, ids_a, p.timesteps, labels=labels_a, seed=p.noise_seed, space=p.space,
                                            batch_size=p.batch_size, device=device)
    errors["forgetting"] = forgetting(errors["error_a"], errors["error_b"])
    df = long_table(ids_a, labels_a, p.timesteps, errors)
    write_table(df, args.out, table="forgetting", meta=meta)
    means = df.groupby("t")["forgetting"].mean()
    print("forgetting: mean per t: " + ", ".join(f"t={t}: {v:.4g}" for t, v in means.items()))


if __name__ == "__main__":
    common.run(main)
