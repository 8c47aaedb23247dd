"""regime: how far model A's one-step denoiser is from the empirical optimal denoiser of task A at each
forgetting t (hopfield_replay.measures.regime), with the noise of the reconstruction measures.

    D*(x_t) = sum_i softmax_i(SNR(t) (x_t / sqrt(abar_t) . x_i - |x_i|^2 / 2)) x_i      over the task-A images
    relative(t) = mean |x0_hat - D*|^2 / mean |D* - x0|^2

Relative below 1: the model acts as the Hopfield retrieval of its training images (the regime of the paper's MHN
analysis); at low noise D* returns the training image itself, so closeness there is memorising.
"""

from __future__ import annotations

from hopfield_replay.io.tables import check_output, load_task, write_table
from hopfield_replay.measures.regime import regime_by_t, regime_table
from hopfield_replay.models import load_model
from hopfield_replay.runtime.devices import resolve_device
from stages.runner import provenance, stage


@stage("x0", "samples", "model", "out")
def main(cfg, args):
    fp, device = cfg.forgetting, resolve_device(cfg.device)
    check_output(args.out)
    model = load_model(args.model)
    x_a, labels_a, ids_a = load_task(args.x0, args.samples, "A", family=model.family)
    df = regime_table(model, x_a, ids_a, fp.timesteps, labels=labels_a, seed=fp.noise_seed, device=device)
    write_table(df, args.out, table="regime",
                meta=provenance(cfg, "forgetting", seed=fp.noise_seed, device=device, table="regime"))
    print("regime: model A against the empirical optimal denoiser of task A, relative distance: " + ", ".join(
        f"t={int(r.t)}: {r.relative:.3g}" for r in regime_by_t(df).itertuples()))


if __name__ == "__main__":
    main()
