"""Benchmark of the reconstruction error (``reconstruction_error``) against a plain no-grad loop.

    .venv/bin/python benchmarks/bench_reconstruction.py --device cuda --big --out $OUT/bench_reconstruction.txt
    .venv/bin/python benchmarks/bench_reconstruction.py --quick --device cpu

Compares, in one process, interleaved round by round in rotating order (best of ``--repeats``), (sample,
timestep) pairs per second of
- ``ours``: ``reconstruction_error`` as it is: the fixed noise of every (seed, sample_id, t) made on the device
  (noise.fixed_noise, Philox4x32-10 in torch ops), pairs of all timesteps laid end to end into forwards of
  ``default_batch_size`` pairs, bf16 autocast on CUDA;
- ``plain``: the loop one would write first: the images moved to the device once, for each timestep and batch
  fresh noise drawn on the device, one no-grad forward, the errors kept on the device until the end;
with the same forward batch, on the CPU-default UNet (block_out_channels (32, 64, 64), 16x16x1) and, with
``--big``, the CIFAR-10 DDPM UNet (35.7M, 32x32x3). The model has random weights (throughput does not depend on
training). ``--out FILE`` gets every figure line as soon as it is measured. Goal (issue 9): ours >= 0.9x plain.
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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import Report, add_run_options, build, rotated, start_report, sync  # noqa: E402
from hopfield_replay.runtime.devices import autocast  # noqa: E402
from hopfield_replay.measures.reconstruction import default_batch_size, reconstruction_error  # noqa: E402


@torch.no_grad()
def plain_loop(model, x0: torch.Tensor, timesteps: list[int], batch_size: int, device: torch.device) -> torch.Tensor:
    """(N, T) one-step reconstruction MSE with fresh device noise: the straightforward no-grad loop."""
    model.to(device).eval()
    gen = torch.Generator(device=device).manual_seed(0)
    alphas = model.alphas_cumprod(device)
    x0 = x0.to(device)
    err = torch.empty(x0.shape[0], len(timesteps), device=device)
    for j, t in enumerate(timesteps):
        a = alphas[t]
        for s in range(0, x0.shape[0], batch_size):
            clean = x0[s : s + batch_size]
            noise = torch.randn(clean.shape, device=device, generator=gen)
            x_t = a.sqrt() * clean + (1 - a).sqrt() * noise
            tt = torch.full((clean.shape[0],), t, device=device, dtype=torch.long)
            with autocast(device):
                pred = model.predict_noise(x_t, tt, None).float()
            x0_hat = (x_t - (1 - a).sqrt() * pred) / a.sqrt()
            err[s : s + clean.shape[0], j] = ((x0_hat - clean) ** 2).mean((1, 2, 3))
    return err.cpu()


def bench_size(size: str, args, device: torch.device, report: Report) -> None:
    model, shape = build(size)
    model.to(device).eval()
    on_gpu = device.type == "cuda"
    n = args.images or (16 if args.smoke else (1024 if on_gpu else 256) if args.quick else (4096 if on_gpu else 1024))
    n_t = args.timesteps or (2 if args.smoke else (4 if args.quick else 10))
    x0 = torch.rand(n, *shape) * 2 - 1  # on the CPU, where the pipeline's stages keep it
    ids = np.arange(1000, 1000 + n)
    timesteps = [int(t) for t in np.linspace(50, 950, n_t).round()]
    bs = args.batch_size or default_batch_size(device, int(np.prod(shape)))
    pairs = n * n_t
    n_params = sum(p.numel() for p in model.unet.parameters()) / 1e6
    report(f"[{size}] UNet {n_params:.2f}M params, images {shape}, {n} images x {n_t} timesteps = {pairs} pairs, "
           f"{bs} pairs a forward, best of {args.repeats} interleaved rounds")
    variants = {
        "ours (reconstruction_error)": lambda: reconstruction_error(model, x0, ids, timesteps, seed=0, batch_size=bs,
                                                                    device=device, progress=False),
        "plain no-grad loop": lambda: plain_loop(model, x0, timesteps, bs, device),
    }
    for run in variants.values():  # warm-up
        run()
    best = {name: math.inf for name in variants}
    for r in range(args.repeats):
        for name in rotated(list(variants), r):
            run = variants[name]
            sync(device)
            t0 = time.perf_counter()
            out = run()
            sync(device)
            elapsed = time.perf_counter() - t0
            assert out.shape == (n, n_t) and bool(torch.isfinite(out).all()), name
            best[name] = min(best[name], elapsed)
            report(f"[{size}] round {r + 1}: {name:<30}{pairs / elapsed:12.1f} pairs/s")
    report(f"[{size}] {'variant':<30}{'best pairs/s':>14}")
    for name in variants:
        report(f"[{size}] {name:<30}{pairs / best[name]:14.1f}")
    ours, plain = (pairs / best[name] for name in variants)
    report(f"[{size}] ratio ours / plain no-grad loop = {ours / plain:.2f}x (goal: >= 0.9x)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="256 images (1024 on CUDA) x 4 timesteps")
    ap.add_argument("--smoke", action="store_true", help="a tiny UNet, 16 images x 2 timesteps, 1 round")
    ap.add_argument("--big", action="store_true", help="also the CIFAR-10 DDPM UNet (35.7M, 32x32x3)")
    ap.add_argument("--images", type=int, default=None)
    ap.add_argument("--timesteps", type=int, default=None, help="size of the timestep grid")
    ap.add_argument("--batch-size", type=int, default=None, help="pairs a forward (default: default_batch_size)")
    add_run_options(ap)
    args = ap.parse_args(argv)
    args.repeats = args.repeats or (1 if args.smoke else 3)
    device = torch.device(args.device)
    report = start_report(args, device)
    sizes = ["smoke"] if args.smoke else ["small"] + (["big"] if args.big else [])
    for size in sizes:
        bench_size(size, args, device, report)


if __name__ == "__main__":
    main()
