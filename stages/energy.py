"""energy: per task-A sample, the modern Hopfield energy under task A (leave-one-out) and task B, their
difference (intrinsic forgetting), and the model-based energy (denoising loss) of the task-A model, all in the
model's space (encode's x0, flattened): pixels for the DDPM, scaled VAE latents for Stable Diffusion.

    energy_a    = E(x_k | X_A minus x_k)        energy_b = E(x_k | X_B)        energy_rise = energy_b - energy_a
    model_energy = mean_t |eps_theta(x_t, t) - eps|^2  over energy.model_timesteps, fixed noise per (sample, t)

beta: given (beta_rule fixed), 1 / median leave-one-out nearest-neighbour squared distance of task A
(median_nn), or SNR(beta_t) = abar / (1 - abar) of the model's schedule (snr).
"""

from __future__ import annotations

import pandas as pd

from hopfield_replay.diffusion import load_model
from hopfield_replay.energy import beta_from_data, beta_from_snr, hopfield_energy
from hopfield_replay.params import EnergyParams, parse_section
from hopfield_replay.reconstruction import denoising_energy
from hopfield_replay.tables import write_table
from stages import common


def main(argv=None):
    ap = common.parser(__doc__)
    ap.add_argument("--x0", default="data/prepared/model_space.safetensors",
                    help="model-space x0 in sample_id order (written by encode)")
    ap.add_argument("--samples", default="data/tables/samples.parquet")
    ap.add_argument("--model", default="data/models/task_a")
    ap.add_argument("--out", default="data/tables/energies.parquet")
    args = ap.parse_args(argv)
    raw = common.load(args)
    p = parse_section(raw, EnergyParams, "energy")
    device, meta = common.device_and_meta(raw, sections=("energy",), seed=p.noise_seed, table="energies")
    x_a, labels_a, ids_a = common.load_task(args.x0, args.samples, "A")
    x_b, _, _ = common.load_task(args.x0, args.samples, "B")
    model = load_model(args.model)
    common.check_model_space(model, args.x0)
    # Energies live in the model's space (encode's x0): pixels for the DDPM, VAE latents for Stable Diffusion.
    z_a = x_a.to(device).flatten(1)
    z_b = x_b.to(device).flatten(1)
    if p.beta_rule == "fixed":
        beta = float(p.beta)
    elif p.beta_rule == "median_nn":
        beta = beta_from_data(z_a)
    else:
        beta = beta_from_snr(model.scheduler.alphas_cumprod, p.beta_t)
    e_a = hopfield_energy(z_a, z_a, beta, form=p.form, exclude_self=True).double().cpu()
    e_b = hopfield_energy(z_a, z_b, beta, form=p.form).double().cpu()
    model_energy = denoising_energy(model, x_a, ids_a, p.model_timesteps, labels=labels_a, seed=p.noise_seed,
                                    batch_size=p.batch_size, device=device)
    df = pd.DataFrame({"sample_id": ids_a, "task": "A", "label": labels_a.numpy(), "energy_a": e_a.numpy(),
                       "energy_b": e_b.numpy(), "energy_rise": (e_b - e_a).numpy(),
                       "model_energy": model_energy.double().numpy(), "beta": beta})
    meta["energy"] = {"form": p.form, "beta_rule": p.beta_rule, "beta": beta, "space": model.family,
                      "dim": int(z_a.shape[1])}
    write_table(df, args.out, table="energies", meta=meta)
    print(f"energy: {len(df)} task-A samples, form={p.form}, beta={beta:.4g} ({p.beta_rule}); "
          f"energy_a mean {df.energy_a.mean():.4g}, rise mean {df.energy_rise.mean():.4g}")


if __name__ == "__main__":
    common.run(main)
