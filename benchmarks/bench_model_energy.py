"""Benchmark of the model-based energy (per-sample denoising loss over a timestep grid) and of the fixed noise.

    .venv/bin/python benchmarks/bench_model_energy.py           # 256 CIFAR-sized images x 10 timesteps
    .venv/bin/python benchmarks/bench_model_energy.py --quick   # 32 images x 4 timesteps

The cost of the fixed noise per (sample, t): the former CPU method (kept here as the baseline: numpy's
SeedSequence([seed, sample_id, t]) hashed for a segment at once, one torch.Generator re-seeded per sample, then
copied to the device) against ``fixed_noise`` (counter-based Philox4x32-10 in torch ops) on the CPU and, when
present, on CUDA. The two give different values by design (the noise changed with issue 9).

Then, in one process and interleaved (best of ``--repeats``), images x timesteps per second of
- the straightforward loop: for each timestep, for each batch of samples, the former CPU noise copied to the
  device and one forward;
- ``denoising_energy`` as it is: (sample, timestep) pairs laid end to end into full forwards of
  ``default_batch_size`` pairs, the noise made on the device;
- ``denoising_energy`` at other batch sizes (the device's best chunk size), with their largest energy difference
  from the default batch (same noise: only rounding).
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
from hopfield_replay.runtime.devices import autocast, machine_description  # noqa: E402
from hopfield_replay.models import DDPMConfig, PixelDDPM  # noqa: E402
from hopfield_replay.measures.noise import fixed_noise  # noqa: E402
from hopfield_replay.measures.reconstruction import default_batch_size, denoising_energy  # noqa: E402



# The former fixed_noise (reconstruction.py before issue 9): numpy's SeedSequence hash vectorised over samples.
_INIT_A, _MULT_A, _INIT_B, _MULT_B = 0x43B0D7E5, 0x931E8875, 0x8B51F9DD, 0x58F38DED
_MIX_MULT_L, _MIX_MULT_R, _XSHIFT, _POOL_SIZE = 0xCA01F9DD, 0x4973F715, 16, 4


def _seed_sequence_states(entropy: np.ndarray) -> np.ndarray:
    """``SeedSequence(list(row)).generate_state(2, np.uint32)`` for every row of ``entropy`` (uint32, K x 3)."""
    k, n_words = entropy.shape
    with np.errstate(over="ignore"):
        hash_const = np.full(k, _INIT_A, dtype=np.uint32)

        def hashmix(value):
            nonlocal hash_const
            value = value ^ hash_const
            hash_const = hash_const * np.uint32(_MULT_A)
            value = value * hash_const
            return value ^ (value >> np.uint32(_XSHIFT))

        def mix(x, y):
            result = np.uint32(_MIX_MULT_L) * x - np.uint32(_MIX_MULT_R) * y
            return result ^ (result >> np.uint32(_XSHIFT))

        zero = np.zeros(k, dtype=np.uint32)
        pool = [hashmix(entropy[:, i] if i < n_words else zero) for i in range(_POOL_SIZE)]
        for i_src in range(_POOL_SIZE):
            for i_dst in range(_POOL_SIZE):
                if i_src != i_dst:
                    pool[i_dst] = mix(pool[i_dst], hashmix(pool[i_src]))
        out = np.empty((k, 2), dtype=np.uint32)
        hash_b = np.uint32(_INIT_B)
        for i_dst in range(2):
            value = pool[i_dst % _POOL_SIZE] ^ hash_b
            hash_b = hash_b * np.uint32(_MULT_B)
            value = value * hash_b
            out[:, i_dst] = value ^ (value >> np.uint32(_XSHIFT))
    return out


def old_fixed_noise(sample_ids, t: int, shape, seed: int) -> torch.Tensor:
    """The former CPU noise: torch.randn from a CPU generator seeded with SeedSequence([seed, sample_id, t])."""
    ids = np.asarray(sample_ids, dtype=np.int64).reshape(-1)
    entropy = np.empty((ids.size, 3), dtype=np.uint32)
    entropy[:, 0], entropy[:, 1], entropy[:, 2] = seed, ids, t
    state = _seed_sequence_states(entropy).astype(np.uint64)
    out = torch.empty((ids.size, *shape))
    g = torch.Generator()
    for i, s in enumerate(((state[:, 0] << np.uint64(32)) | state[:, 1]).tolist()):
        g.manual_seed(s)
        torch.randn(shape, generator=g, out=out[i])
    return out


def time_noise(draw, device: torch.device, rounds: int = 3) -> float:
    """Best seconds of ``draw()`` over ``rounds`` (after a warm-up), synchronised on CUDA."""
    draw()
    best = math.inf
    for _ in range(rounds):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        draw()
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best


@torch.no_grad()
def per_timestep_loop(model, x0, ids, timesteps, seed, batch_size, device) -> torch.Tensor:
    """The straightforward loop: one timestep at a time, batches of samples, the former CPU noise copied over."""
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

    # the fixed noise: cost per (sample, t), the former CPU method (copied to the device) against fixed_noise
    probe = np.arange(0, min(n, 256))
    state = np.random.SeedSequence([7, int(probe[-1]), 123]).generate_state(2, dtype=np.uint32)
    g = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
    assert torch.equal(old_fixed_noise(probe, 123, shape, 7)[-1], torch.randn(shape, generator=g)), "baseline"
    cost = {"old (CPU SeedSequence + generator)": time_noise(
        lambda: old_fixed_noise(probe, 123, shape, 7).to(device), device)}
    cost["new fixed_noise on the CPU"] = time_noise(lambda: fixed_noise(probe, 123, shape, 7), torch.device("cpu"))
    if torch.cuda.is_available():
        cuda = torch.device("cuda")
        cost["new fixed_noise on CUDA"] = time_noise(lambda: fixed_noise(probe, 123, shape, 7, device=cuda), cuda)
    old_cost = next(iter(cost.values()))
    print(f"fixed noise per (sample, t), {len(probe)} samples of {shape}:")
    for k, seconds in cost.items():
        print(f"  {k:<40}{seconds / len(probe) * 1e6:9.1f} us   ratio old / this = {old_cost / seconds:.2f}x")

    variants = {"per-timestep loop (old CPU noise)": lambda: per_timestep_loop(model, x0, ids, timesteps, 0,
                                                                               default_bs, device),
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
    base_key, same_noise_key = list(variants)[:2]
    base = best[base_key]
    print(f"{'variant':<36}{'time':>9}{'pairs/s':>10}{'speed-up':>10}{'max |dE| vs default':>21}")
    for k in variants:
        diff = "(other noise)" if k == base_key else f"{float((outs[k] - outs[same_noise_key]).abs().max()):.2e}"
        print(f"{k:<36}{best[k]:8.2f}s{pairs / best[k]:10.1f}{base / best[k]:9.2f}x{diff:>21}")


if __name__ == "__main__":
    main()
