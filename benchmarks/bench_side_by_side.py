"""Benchmark of many small training runs on one device: k runs side by side (k processes at once, as
``python -m flows.pipeline --per-device k`` runs the items of train_b and retrain) against one run alone.

    .venv/bin/python benchmarks/bench_side_by_side.py --device cuda --runs 6 --out $OUT/bench_side_by_side.txt
    .venv/bin/python benchmarks/bench_side_by_side.py --device cpu --runs 2 --quick

Each run is ``train_denoiser`` on the CPU-default UNet (block_out_channels (32, 64, 64), 16x16x1, batch 64; with
``--big`` the CIFAR-10 DDPM UNet, 32x32x3, batch 128) on random data, in a process of its own (spawned, so it
pays its imports and CUDA start as a stage does; the timing starts after a warm-up step). It measures, in one run,
training steps per second of
- ``alone``: one run on the device (on the CPU with every core, as a stage runs under plain ``dvc repro``);
- ``side by side``: ``--runs`` runs at once (on the CPU each with every core, as ``--per-device`` leaves the threads
  as `dvc repro` has them: CPU results depend on the thread count; ``--split-threads`` gives each cores / runs
  instead), the steps of all runs over the wall time from the first start to the last end;
and prints their ratio. Goal (issue 9): six runs side by side at >= 3x the steps/s of one run alone (GPU).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import add_run_options, build, start_report, sync  # noqa: E402

from hopfield_replay.models import TrainConfig, train_denoiser  # noqa: E402


def one_run(size: str, device: str, steps: int, batch: int, threads: int, seed: int, ready, start, done) -> None:
    """A training run in its own process: build, warm up one step, say so, wait for the start, train ``steps``."""
    torch.set_num_threads(threads)
    model, shape = build(size)
    dev = torch.device(device)
    x0 = torch.randn(2048, *shape, generator=torch.Generator().manual_seed(seed))
    train_denoiser(model, x0, TrainConfig(steps=1, batch_size=batch, seed=seed), device=dev, progress=False)
    ready.put(seed)
    start.wait()
    t0 = time.perf_counter()
    losses = train_denoiser(model, x0, TrainConfig(steps=steps, batch_size=batch, seed=seed), device=dev,
                            progress=False)
    sync(dev)
    done.put((seed, t0, time.perf_counter(), len(losses)))


def measure(k: int, args, threads: int) -> float:
    """Training steps per second of k runs at once: all steps over the wall time from first start to last end."""
    ctx = mp.get_context("spawn")
    ready, start, done = ctx.Queue(), ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=one_run, args=(args.size, args.device, args.steps, args.batch_size, threads, seed,
                                               ready, start, done)) for seed in range(k)]
    for p in procs:
        p.start()
    for _ in procs:  # every process built its model and ran its warm-up step
        ready.get(timeout=1800)
    start.set()
    results = [done.get(timeout=3600) for _ in procs]
    for p in procs:
        p.join()
        if p.exitcode:
            raise RuntimeError(f"a run exited with {p.exitcode}")
    first, last = min(r[1] for r in results), max(r[2] for r in results)
    return sum(r[3] for r in results) / (last - first)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--runs", type=int, default=6, help="runs side by side (the six arms of one seed)")
    ap.add_argument("--steps", type=int, default=None, help="steps per run")
    ap.add_argument("--big", action="store_true", help="the CIFAR-10 DDPM UNet (35.7M, 32x32x3) instead")
    ap.add_argument("--quick", action="store_true", help="fewer steps (20 on the CPU, 200 on CUDA)")
    ap.add_argument("--smoke", action="store_true", help="a tiny UNet, 2 steps: checks the script runs")
    ap.add_argument("--split-threads", action="store_true", help="on the CPU, cores / runs threads for each run")
    add_run_options(ap)
    args = ap.parse_args(argv)
    cuda = args.device.startswith("cuda")
    args.size = "smoke" if args.smoke else "big" if args.big else "small"
    args.batch_size = {"smoke": 8, "small": 64, "big": 128}[args.size]
    args.steps = args.steps or (2 if args.smoke else (200 if args.quick else 1000) if cuda else
                                (20 if args.quick else 60))
    args.repeats = args.repeats or 1
    report = start_report(args, torch.device(args.device))
    cores = os.cpu_count() or 1
    alone_threads = cores if not cuda else 1
    each_threads = (max(1, cores // args.runs) if args.split_threads else cores) if not cuda else 1
    for rnd in range(args.repeats):
        alone = measure(1, args, alone_threads)
        report(f"[{args.size}, batch {args.batch_size}, {args.steps} steps] round {rnd + 1}: alone "
               f"{alone:8.2f} steps/s ({alone_threads} threads)")
        together = measure(args.runs, args, each_threads)
        report(f"[{args.size}, batch {args.batch_size}, {args.steps} steps] round {rnd + 1}: {args.runs} side by "
               f"side {together:8.2f} steps/s in all ({each_threads} threads each)")
        report(f"ratio {args.runs} side by side / alone = {together / alone:.2f}x (goal on a GPU, 6 runs: >= 3x)")


if __name__ == "__main__":
    main()
