"""Benchmark of the model-based energy (per-sample denoising loss over a timestep grid).

    .venv/bin/python benchmarks/bench_model_energy.py           # 256 CIFAR-sized images x 10 timesteps
    .venv/bin/python benchmarks/bench_model_energy.py --quick   # 32 images x 4 timesteps

Compares, in one process and interleaved (best of ``--repeats``), images x timesteps per second of
- the straightforward loop: for each timestep, for each batch of samples, draw the noise sample by sample
  (the former ``fixed_noise``: one SeedSequence and one new torch.Generator per sample) and run one forward;
- ``denoising_energy`` as it is: (sample, timestep) pairs laid end to end into full forwards of
  ``default_batch_size`` pairs, noise seeds hashed for a whole segment at once, one reused generator;
- ``denoising_energy`` at other batch sizes (the device's best chunk size).
Also: the cost of ``fixed_noise`` per (sample, t), old and new, and that both give identical noise and energies.
The model is a pixel-space DDPM UNet with random weights (throughput does not depend on training).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from hopfield_replay.devices import autocast, machine_description  # noqa: E402
from hopfield_replay.models import DDPMConfig, PixelDDPM  # noqa: E402
from hopfield_replay.reconstruction import default_batch_size, denoising_energy, fixed_noise  # noqa: E402



def old_fixed_noise(sample_ids, t: int, shape, seed: int) -> torch.Tensor:
    """The former implementation (the reference the new one must equal)."""
    out = torch.empty((len(sample_ids), *shape))
    for i, sid in enumerate(np.asarray(sample_ids, dtype=np.int64).tolist()):
        state = np.random.SeedSequence([int(seed), int(sid), int(t)]).generate_state(2, dtype=np.uint32)
        g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
        out[i] = torch.randn(shape, generator=g)
    return out


@torch.no_grad()
def per_timestep_loop(model, x0, ids, timesteps, seed, batch_size, device) -> torch.Tensor:
    """The straightforward loop: one timestep at a time, batches of samples, noise drawn sample by sample."""
    model.to(device).eval()
    alphas = model.alphas_cumprod(device)
    shape = tuple(x0.shape[1:])
    err = torch.empty(len(x0), len(timesteps))
    for j, t in enumerate(timesteps):
        for s in range(0, len(x0), batch_size):
            clean = x0[s : s + batch_size].to(device)
            noise = old_fixed_noise(ids[s : s + batch_size], t, shape, seed).to(device)
            a = alphas[t]
            x_t = a.sqrt() * clean + (1 - a).sqrt() * noise
            tt = torch.full((len(clean),), t, device=device, dtype=torch.long)
            with autocast(device):
                pred = model.predict_noise(x_t, tt, None).float()
            err[s : s + len(clean), j] = ((pred - noise) ** 2).mean((1, 2, 3)).cpu()
    return err.mean(1)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="32 images x 4 timesteps")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--timesteps", type=int, default=None, help="size of the timestep grid")
    ap.add_argument("--resolution", type=int, default=32)
    ap.add_argument("--channels", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 128, 256])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args(argv)
    n = args.images or (32 if args.quick else 256)
    n_t = args.timesteps or (4 if args.quick else 10)
    device = torch.device(args.device)
    print(machine_description(device))
    torch.manual_seed(0)
    model = PixelDDPM.from_config(DDPMConfig(resolution=args.resolution, channels=args.channels,
                                             block_out_channels=[32, 64, 64]))
    model.to(device).eval()
    shape = (args.channels, args.resolution, args.resolution)
    x0 = torch.rand(n, *shape) * 2 - 1
    ids = np.arange(1000, 1000 + n)
    timesteps = [int(t) for t in np.linspace(50, 950, n_t).round()]
    pairs = n * n_t
    default_bs = default_batch_size(device, int(np.prod(shape)))
    print(f"DDPM UNet {sum(p.numel() for p in model.unet.parameters()) / 1e6:.2f}M params, images {shape}, "
          f"{n} images x {n_t} timesteps = {pairs} pairs, default batch {default_bs}")

    # fixed_noise: identical values, cost per (sample, t)
    probe = np.arange(0, min(n, 256))
    assert torch.equal(old_fixed_noise(probe, 123, shape, 7), fixed_noise(probe, 123, shape, 7)), "noise changed"
    best_old = best_new = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        old_fixed_noise(probe, 123, shape, 7)
        t1 = time.perf_counter()
        fixed_noise(probe, 123, shape, 7)
        t2 = time.perf_counter()
        best_old, best_new = min(best_old, t1 - t0), min(best_new, t2 - t1)
    print(f"fixed_noise per (sample, t): old {best_old / len(probe) * 1e6:.1f} us, new {best_new / len(probe) * 1e6:.1f} us"
          f" ({best_old / best_new:.2f}x); identical values: True")

    variants = {"per-timestep loop (old noise)": lambda: per_timestep_loop(model, x0, ids, timesteps, 0, default_bs, device),
                f"denoising_energy (default, {default_bs})": lambda: denoising_energy(
                    model, x0, ids, timesteps, seed=0, device=device, progress=False)}
    for bs in args.batch_sizes:
        if bs != default_bs:
            variants[f"denoising_energy batch {bs}"] = lambda bs=bs: denoising_energy(
                model, x0, ids, timesteps, seed=0, batch_size=bs, device=device, progress=False)
    best = {k: math.inf for k in variants}
    outs = {}
    for r in range(args.repeats):
        for k, f in variants.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            outs[k] = f()
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[k] = min(best[k], time.perf_counter() - t0)
    base_key = next(iter(variants))
    base = best[base_key]
    print(f"{'variant':<36}{'time':>9}{'pairs/s':>10}{'speed-up':>10}{'max |dE| vs loop':>18}")
    for k in variants:
        diff = float((outs[k] - outs[base_key]).abs().max())
        print(f"{k:<36}{best[k]:8.2f}s{pairs / best[k]:10.1f}{base / best[k]:9.2f}x{diff:18.2e}")


if __name__ == "__main__":
    main()
