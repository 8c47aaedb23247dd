"""Benchmark of the forecasts made before fine-tuning (``hopfield_replay.forecast``) against the fine-tune they
forecast: their seconds as a multiple of one train_b run's, and the memory of the per-sample gradients.

    .venv/bin/python benchmarks/bench_forecast.py                     # model A of the last `make run`, all its data
    .venv/bin/python benchmarks/bench_forecast.py --quick             # 256 old and 256 new samples
    .venv/bin/python benchmarks/bench_forecast.py --device cuda --out $OUT/bench_forecast.txt

In one process, on the CPU default (params.yaml: train_b's recipe and steps, forecast.probe_fractions, the
forgetting t grid; the model ``data/models/task_a`` and the prepared data when `make run` has made them, else a
random-weight default UNet on random images, said so):
- one train_b run, projected: the seconds of ``--train-steps`` steps of ``train_denoiser`` with train_b's recipe,
  times train_b.steps / ``--train-steps`` (the first step, which builds the optimiser, is not counted);
- gradient interference (``gradient_interference``: g_B in chunks, then the per-sample gradients of a chunk of
  old samples in one vmapped backward) and the probes (``probe_rises``, as ``forecast`` runs them: one fine-tune of
  a copy of the model to the longest probe, the losses measured as it passes each length; each probe's seconds as
  if alone), with their seconds as a multiple of that run. Goal (issue 30): gradient interference and the probes,
  all together, <= 1.0x one train_b run;
- the memory of the per-sample gradients: the resident memory's peak rise during ``gradient_interference`` (CPU;
  the CUDA allocator's peak on a GPU) at two sizes of the old set. The bound: g_B and a chunk of
  ``PER_SAMPLE_CHUNK`` per-sample gradients (in fp32, and in fp64 for the dot products) plus the chunk's activations
  over the t grid, and g_B's chunk (64 new samples x T) at its start; nothing grows with the number of old
  samples, so the two peaks should agree.
``--out FILE`` gets every figure line as soon as it is measured.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_train import add_run_options, start_report, sync  # noqa: E402
from hopfield_replay.forecast import PER_SAMPLE_CHUNK, gradient_interference, probe_rises  # noqa: E402
from hopfield_replay.io.params_file import read_yaml_file, validate_config  # noqa: E402
from hopfield_replay.measures.reconstruction import denoising_energy  # noqa: E402
from hopfield_replay.models import DDPMConfig, PixelDDPM, TrainConfig, load_model, train_denoiser  # noqa: E402
from hopfield_replay.models.build import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


class PeakMemory:
    """The peak rise of this process's resident memory (CPU: /proc/self/statm polled every 2 ms) or of the CUDA
    allocator's, in MiB, over a ``with`` block."""

    def __init__(self, device: torch.device):
        self.device, self.peak, self._stop = device, 0.0, threading.Event()

    @staticmethod
    def _rss() -> float:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20

    def _poll(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self._rss() - self.start)

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device) / 2**20
        else:
            self.start = self._rss()
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device) / 2**20 - self.start
        else:
            self._stop.set()
            self._thread.join()


def setting(args, device: torch.device):
    """(model, task-A data, task-B data, the config, where they came from)."""
    cfg = validate_config(read_yaml_file(ROOT / "params.yaml"))
    model_dir, x0 = ROOT / "data/models/task_a", ROOT / "data/prepared/model_space.safetensors"
    samples = ROOT / "data/tables/samples.parquet"
    if args.smoke:
        torch.manual_seed(0)
        model = PixelDDPM.from_config(DDPMConfig(resolution=8, block_out_channels=[8, 16], norm_num_groups=4))
        x = torch.rand(2 * args.n, 1, 8, 8) * 2 - 1
        return model, x[: args.n], x[args.n:], cfg, "a tiny random-weight UNet on random 8x8 images (--smoke)"
    if model_dir.exists() and x0.exists() and samples.exists():
        from hopfield_replay.io.tables import load_task

        model = load_model(model_dir)
        x_a, _, _ = load_task(x0, samples, "A", family=model.family)
        x_b, _, _ = load_task(x0, samples, "B", family=model.family)
        n = args.n or len(x_a)
        return model, x_a[:n], x_b[:n], cfg, f"{model_dir.relative_to(ROOT)} on the prepared data"
    n, side = args.n or 2500, cfg.prepare.resolution
    model = build_model(cfg.model, (2 * n, 1, side, side), seed=0)
    x = torch.rand(2 * n, 1, side, side, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return model, x[:n], x[n:], cfg, "a random-weight default UNet on random images (no `make run` output here)"


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="256 old and 256 new samples, 10 timed train_b steps")
    ap.add_argument("--smoke", action="store_true", help="a tiny UNet on 16 random samples: checks the script runs")
    ap.add_argument("--n", type=int, default=None, help="old (and new) samples (default: all of task A and B)")
    ap.add_argument("--train-steps", type=int, default=None, help="train_b steps timed (default 30; --quick 10)")
    add_run_options(ap)
    args = ap.parse_args(argv)
    args.n = args.n or (16 if args.smoke else 256 if args.quick else None)
    train_steps = args.train_steps or (2 if args.smoke else 10 if args.quick else 30)
    device = torch.device(args.device)
    report = start_report(args, device)
    model, x_old, x_new, cfg, source = setting(args, device)
    model.to(device)
    tb, timesteps = cfg.train_b, cfg.forgetting.timesteps
    train_b_steps = 4 if args.smoke else tb.steps
    probes = sorted({max(1, round(f * train_b_steps)) for f in cfg.forecast.probe_fractions})
    batch = min(tb.batch_size, len(x_new))
    n_params = sum(p.numel() for p in model.trainable_parameters())
    report(f"model: {source}; {n_params / 1e6:.2f}M trainable parameters ({n_params * 4 / 2**20:.1f} MiB fp32); "
           f"{len(x_old)} old and {len(x_new)} new samples of {tuple(x_old.shape[1:])}; t grid {timesteps}; "
           f"batch {batch}")

    recipe = TrainConfig(**{**tb.loop_settings(), "lr_schedule": "constant", "lr_warmup_steps": 0, "ema_decay": None,
                            "batch_size": batch}, seed=cfg.seeds[0], replay_fraction=0.0)
    # one train_b run, projected from timed steps (1 step first: optimiser and allocator warm-up, not counted)
    copy_a = copy.deepcopy(model)
    train_denoiser(copy_a, x_new, TrainConfig(**{**recipe.__dict__, "steps": 1}), device=device, progress=False)
    sync(device)
    start = time.perf_counter()
    train_denoiser(copy_a, x_new, TrainConfig(**{**recipe.__dict__, "steps": train_steps}), device=device,
                   progress=False)
    sync(device)
    per_step = (time.perf_counter() - start) / train_steps
    run = per_step * train_b_steps
    report(f"one train_b run ({train_b_steps} steps, projected from {train_steps} timed): {run:.2f} s "
           f"({per_step:.3f} s/step)")

    ids_old, ids_new = np.arange(len(x_old)), np.arange(len(x_new)) + 2**31
    sizes = sorted({max(1, len(x_old) // 8), len(x_old)})
    grad_seconds = None
    for n in sizes:  # the memory bound: the peak does not grow with the old set
        with PeakMemory(device) as memory:
            start = time.perf_counter()
            gradient_interference(model, x_old[:n], ids_old[:n], x_new, ids_new, timesteps, seed=0)
            sync(device)
            seconds = time.perf_counter() - start
        bound = (1 + 3 * PER_SAMPLE_CHUNK) * n_params * 4 / 2**20  # g_B; a chunk's gradients in fp32 and fp64
        report(f"gradient interference, {n} old samples: {seconds:.1f} s; peak memory rise {memory.peak:.1f} MiB "
               f"(g_B and {PER_SAMPLE_CHUNK} per-sample gradients in fp32 and fp64: {bound:.1f} MiB)")
        grad_seconds = seconds
    report(f"gradient interference: ratio to one train_b run = {grad_seconds / run:.3f}x")
    start = time.perf_counter()  # the losses before the probes: once, shared by all (as forecast() does)
    before = denoising_energy(model, x_old, ids_old, timesteps, seed=0, progress=False)
    sync(device)
    shared = time.perf_counter() - start
    report(f"the old samples' losses before the probes (shared by all probes): {shared:.1f} s")
    start = time.perf_counter()  # the probes as forecast() runs them: one fine-tune, measured at each length
    _, alone, _ = probe_rises(model, x_old, ids_old, x_new, timesteps, recipe, probes, seed=0, base_losses=before)
    sync(device)
    probes_seconds = time.perf_counter() - start
    for steps in probes:
        report(f"probe_{steps} ({steps} steps and the losses after, as if alone): {alone[steps]:.1f} s; ratio to "
               f"one train_b run = {alone[steps] / run:.3f}x")
    report(f"the {len(probes)} probes as one fine-tune of {max(probes)} steps, measured at each length: "
           f"{probes_seconds:.1f} s")
    total = grad_seconds + shared + probes_seconds
    verdict = "met" if total <= run else "NOT met"
    report(f"all forecasts together: {total:.1f} s; ratio to one train_b run = {total / run:.3f}x (goal <= 1.0x: "
           f"{verdict})")


if __name__ == "__main__":
    main()
