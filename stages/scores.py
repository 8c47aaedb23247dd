"""scores: every candidate predictor of forgetting, one row per task-A sample (hopfield_replay.predictors).

    energy_a = E(x_k | X_A without x_k), energy_b = E(x_k | X_B), energy_rise = energy_b - energy_a   (scores.form)
    energy_a at beta x scores.beta_multiples, and at beta = SNR(t) for each forgetting timestep
    model_energy = mean_t |eps_theta(x_t, t) - eps|^2 over scores.model_timesteps (the task-A model)
    recon_error_a_t{t}: the task-A model's reconstruction error at each forgetting timestep, and their mean
    baselines: kNN distances, a kernel density, distances to the class and global means, pixel mass and norm
All in the model's space (encode's x0: pixels for the DDPM, VAE latents for SD), pixel statistics in pixels.
beta: scores.beta (fixed), 1 / median leave-one-out NN squared distance of task A (median_nn), or SNR(beta_t).
"""

from __future__ import annotations

import numpy as np

from hopfield_replay.runtime.devices import resolve_device
from hopfield_replay.energy import beta_from_data, beta_from_snr
from hopfield_replay.models import load_model
from hopfield_replay.predictors import PredictorContext, compute_predictors
from hopfield_replay.measures.reconstruction import denoising_energy, reconstruction_error
from hopfield_replay.io.tables import check_output, load_task, write_table
from stages.runner import provenance, stage


@stage("x0", "images", "samples", "model", "out")
def main(cfg, args):
    p, fp, device = cfg.scores, cfg.forgetting, resolve_device(cfg.device)
    check_output(args.out)
    model = load_model(args.model)
    x_a, labels_a, ids_a = load_task(args.x0, args.samples, "A", family=model.family)
    x_b, _, _ = load_task(args.x0, args.samples, "B", family=model.family)
    pixels_a, _, _ = load_task(args.images, args.samples, "A")
    z_a, z_b = x_a.to(device).flatten(1), x_b.to(device).flatten(1)
    alphas = model.scheduler.alphas_cumprod
    beta = {"fixed": lambda: p.beta, "median_nn": lambda: beta_from_data(z_a),
            "snr": lambda: beta_from_snr(alphas, p.beta_t)}[p.beta_rule]()
    recon = reconstruction_error(model, x_a, ids_a, fp.timesteps, labels=labels_a, seed=fp.noise_seed,
                                 space=fp.space, batch_size=fp.batch_size, device=device).double().numpy()
    model_energy = denoising_energy(model, x_a, ids_a, p.model_timesteps, labels=labels_a, seed=p.noise_seed,
                                    batch_size=p.batch_size, device=device).double().numpy()
    model_scores = {"model_energy": model_energy, "recon_error_a": recon.mean(axis=1),
                    **{f"recon_error_a_t{t}": recon[:, i] for i, t in enumerate(fp.timesteps)}}
    ctx = PredictorContext(x_a=z_a, labels_a=labels_a.numpy(), x_b=z_b, pixels_a=pixels_a.flatten(1),
                           model_space_is_pixels=model.family == "ddpm", beta=float(beta), form=p.form,
                           beta_multiples=list(p.beta_multiples), knn_k=list(p.knn_k), device=device,
                           snr_betas={t: beta_from_snr(alphas, t) for t in fp.timesteps} if p.snr_energies else {},
                           model_scores=model_scores)
    table = compute_predictors(ctx)
    table.insert(0, "sample_id", ids_a.astype(np.int64))
    table.insert(1, "task", "A")
    table.insert(2, "label", labels_a.numpy().astype(np.int64))
    table["beta"] = float(beta)
    write_table(table, args.out, table="scores",
                meta=provenance(cfg, "scores", "forgetting", seed=p.noise_seed, device=device, table="scores"))
    print(f"scores: {len(table)} task-A samples x {table.shape[1] - 4} predictors; beta = {beta:.4g} ({p.beta_rule})")


if __name__ == "__main__":
    main()
