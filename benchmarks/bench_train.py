"""Benchmark of the training loop (``train_denoiser``) against a plain reference loop and the loop as it was.

    .venv/bin/python benchmarks/bench_train.py --device cuda --compile --big --out $OUT/bench_train.txt
    .venv/bin/python benchmarks/bench_train.py --quick --device cpu        # the CPU check: ours vs before

Compares, in one process, interleaved round by round in rotating order (best of ``--repeats``), training images
per second of
- ``before``: the loop as it was at commit 31b6283 (batch, timesteps and noise drawn on the CPU, ``float(loss)``
  every step), copied below;
- ``ours``: ``train_denoiser`` as it is (draws on the training device, losses read every 50 steps, fused AdamW on
  CUDA), eager and, with ``--compile``, with ``compile_unet=True``;
- ``plain``: a loop written the way diffusers' ``train_unconditional`` example trains (batch, timesteps and noise
  drawn on the device, bf16 autocast on CUDA, AdamW, grad clipping, no host sync per step), eager and compiled;
on the same UNet and batch: the CPU-default UNet (block_out_channels (32, 64, 64), 16x16x1, batch 64) and, with
``--big``, the CIFAR-10 DDPM UNet (35.7M parameters, 32x32x3, batch 128). On the CPU it also checks that
``before`` and ``ours`` give bitwise the same losses and weights. ``--out FILE`` gets every figure line as soon as
it is measured. Goals (issue 9): ours >= 1.1x plain eager, >= 1.5x it compiled on the small UNet (GPU); on the
CPU, ours no slower than before.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import sys
import time

import torch
from diffusers import UNet2DModel
from tqdm.auto import tqdm

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
from hopfield_replay.runtime.devices import autocast, describe, machine_description  # noqa: E402
from hopfield_replay.models import DDPMConfig, PixelDDPM, TrainConfig, train_denoiser  # noqa: E402


class Report:
    """Prints a line and appends it to ``--out`` at once (a run cut off keeps every line it had printed)."""

    def __init__(self, path: str | None):
        self.path = path

    def __call__(self, line: str = "") -> None:
        print(line, flush=True)
        if self.path:
            with open(self.path, "a") as fh:
                fh.write(line + "\n")


def rotated(names: list, r: int) -> list:
    """The variants in round r's order: each round starts one further along, so no variant always runs first."""
    k = r % len(names)
    return names[k:] + names[:k]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def before_loop(model, x0, config: TrainConfig, device: torch.device) -> list[float]:
    """``train_denoiser`` as it was at commit 31b6283 (without replay, labels or checkpoints)."""
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    model.to(device).train()
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=config.lr, weight_decay=config.weight_decay)
    num_t = model.scheduler.config.num_train_timesteps
    x0 = x0.to(device)
    losses: list[float] = []
    bar = tqdm(range(config.steps), disable=True)
    for _ in bar:
        idx = torch.randint(0, x0.shape[0], (config.batch_size,), generator=gen)
        batch = x0[idx.to(device)]
        t = torch.randint(0, num_t, (batch.shape[0],), generator=gen).to(device)
        noise = torch.randn(batch.shape, generator=gen).to(device)
        x_t = model.scheduler.add_noise(batch, noise, t)
        with autocast(device):
            pred = model.predict_noise(x_t, t, None)
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.trainable_parameters(), config.grad_clip)
        opt.step()
        losses.append(float(loss.detach()))
        if len(losses) % 50 == 0:
            bar.set_postfix(loss=f"{sum(losses[-50:]) / 50:.4f}")
    model.eval()
    return losses


def plain_loop(unet, scheduler, x0, config: TrainConfig, device: torch.device, forward=None) -> list[float]:
    """The reference: diffusers' train_unconditional way (draws on the device, autocast, clip, AdamW), no sync."""
    forward = forward if forward is not None else unet
    gen = torch.Generator(device=device).manual_seed(config.seed)
    unet.to(device).train()
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    x0 = x0.to(device)
    num_t = scheduler.config.num_train_timesteps
    losses = []
    for _ in range(config.steps):
        clean = x0[torch.randint(0, x0.shape[0], (config.batch_size,), device=device, generator=gen)]
        noise = torch.randn(clean.shape, device=device, generator=gen)
        t = torch.randint(0, num_t, (config.batch_size,), device=device, generator=gen)
        noisy = scheduler.add_noise(clean, noise, t)
        with autocast(device):
            pred = forward(noisy, t, return_dict=False)[0]
        loss = torch.nn.functional.mse_loss(pred.float(), noise.float())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return torch.stack(losses).tolist()


def cifar_ddpm_unet() -> UNet2DModel:
    """The UNet of google/ddpm-cifar10-32 (Ho et al. 2020), its config values typed in: 35.7M parameters."""
    return UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3, block_out_channels=(128, 256, 256, 256), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"), norm_num_groups=32, norm_eps=1e-6,
        attention_head_dim=None, downsample_padding=0, flip_sin_to_cos=False, freq_shift=1,
    )


def build(size: str) -> tuple[PixelDDPM, tuple[int, ...]]:
    torch.manual_seed(0)
    if size == "big":
        scheduler = PixelDDPM.from_config(DDPMConfig(resolution=32, channels=3)).scheduler
        return PixelDDPM(cifar_ddpm_unet(), scheduler), (3, 32, 32)
    if size == "smoke":
        return PixelDDPM.from_config(DDPMConfig(resolution=8, block_out_channels=[8, 16], norm_num_groups=4)), (1, 8, 8)
    return PixelDDPM.from_config(DDPMConfig()), (1, 16, 16)


def bench_size(size: str, args, device: torch.device, report: Report) -> None:
    model, shape = build(size)
    batch = args.batch_size or {"big": 128, "smoke": 8}.get(size, 64)
    if device.type == "cuda":
        steps = (10 if args.quick else 20) if size == "big" else (20 if args.quick else 50)
    else:
        steps = 5 if args.quick else 20
    steps = args.steps or (2 if args.smoke else steps)
    n_params = sum(p.numel() for p in model.unet.parameters()) / 1e6
    x0 = (torch.rand(max(1024, 4 * batch), *shape) * 2 - 1).to(device)
    report(f"[{size}] UNet {n_params:.2f}M params, images {shape}, batch {batch}, {steps} steps a round, "
           f"best of {args.repeats} interleaved rounds")

    if device.type == "cpu":  # bitwise check: the loop as it was and ours, from the same weights and seed
        a, b = copy.deepcopy(model), copy.deepcopy(model)
        check = TrainConfig(steps=3, batch_size=batch, seed=7)
        same_losses = before_loop(a, x0, check, device) == train_denoiser(b, x0, check, device=device, progress=False)
        same_weights = all(torch.equal(p, q) for p, q in zip(a.unet.parameters(), b.unet.parameters()))
        report(f"[{size}] before and ours on the CPU: identical losses {same_losses}, identical weights {same_weights}")

    models = {}
    variants = {}

    def add(name, run):
        models[name] = copy.deepcopy(model)
        variants[name] = run

    add("before (loop at 31b6283)", lambda m, cfg: before_loop(m, x0, cfg, device))
    add("ours eager", lambda m, cfg: train_denoiser(m, x0, cfg, device=device, progress=False))
    add("plain eager", lambda m, cfg: plain_loop(m.unet, m.scheduler, x0, cfg, device))
    if args.compile:
        add("ours compiled", lambda m, cfg: train_denoiser(m, x0, cfg, device=device, progress=False,
                                                           compile_unet=True))
        add("plain compiled", lambda m, cfg: plain_loop(m.unet, m.scheduler, x0, cfg, device, forward=compiled_unet))
        compiled_unet = torch.compile(models["plain compiled"].unet)  # the lambda above runs after this line

    for name, run in variants.items():  # warm-up: cuDNN autotuning, allocator, compilation
        sync(device)
        t0 = time.perf_counter()
        run(models[name], TrainConfig(steps=3 if "compiled" in name else 1, batch_size=batch, seed=1))
        sync(device)
        if "compiled" in name:
            report(f"[{size}] warm-up of {name} (compilation): {time.perf_counter() - t0:.1f}s")

    best = {name: math.inf for name in variants}
    best_cpu = {name: math.inf for name in variants}  # process CPU time: steadier than wall time on a shared CPU
    for r in range(args.repeats):
        for name in rotated(list(variants), r):
            run = variants[name]
            cfg = TrainConfig(steps=steps, batch_size=batch, seed=100 + r)
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            losses = run(models[name], cfg)
            sync(device)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            assert len(losses) == steps and all(math.isfinite(v) for v in losses), name
            best[name], best_cpu[name] = min(best[name], elapsed), min(best_cpu[name], cpu)
            report(f"[{size}] round {r + 1}: {name:<26}{steps * batch / elapsed:10.1f} img/s")

    report(f"[{size}] {'variant':<26}{'best img/s':>12}{'steps/s':>10}{'CPU s/step':>12}")
    for name in variants:
        report(f"[{size}] {name:<26}{steps * batch / best[name]:12.1f}{steps / best[name]:10.2f}"
               f"{best_cpu[name] / steps:12.4f}")
    rate = {name: steps * batch / best[name] for name in variants}
    on_gpu = device.type == "cuda"
    before = "before (loop at 31b6283)"
    report(f"[{size}] ratio ours eager / before = {rate['ours eager'] / rate[before]:.2f}x "
           f"(goal on the CPU: >= 1.0x, no slower)")
    if not on_gpu:
        report(f"[{size}] ratio ours eager / before in process CPU time = "
               f"{best_cpu[before] / best_cpu['ours eager']:.2f}x (the same goal, steadier on a shared machine)")
    report(f"[{size}] ratio ours eager / plain eager = {rate['ours eager'] / rate['plain eager']:.2f}x "
           f"(goal on a GPU: >= 1.1x)")
    if args.compile:
        goal = " (goal on a GPU, small UNet: >= 1.5x)" if size != "big" else ""
        report(f"[{size}] ratio ours compiled / plain eager = {rate['ours compiled'] / rate['plain eager']:.2f}x{goal}")
        report(f"[{size}] ratio plain compiled / plain eager = "
               f"{rate['plain compiled'] / rate['plain eager']:.2f}x (what compilation gives the reference)")
    if not on_gpu:
        report(f"[{size}] (the GPU goals do not apply on the CPU)")


def add_run_options(ap: argparse.ArgumentParser) -> None:
    """The options every benchmark of this folder shares."""
    ap.add_argument("--repeats", type=int, default=None, help="interleaved rounds (best of)")
    ap.add_argument("--out", default=None, help="also append every figure line to this file")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")


def start_report(args, device: torch.device) -> "Report":
    """Set the CPU threads, then open the report with the machine and the device."""
    if args.threads:
        torch.set_num_threads(args.threads)
    report = Report(args.out)
    report(machine_description(device))
    report(f"device: {describe(device)}")
    return report


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer steps a round (5 on the CPU, 20 / 10 on CUDA)")
    ap.add_argument("--smoke", action="store_true", help="a tiny UNet, 2 steps, 1 round: checks the script runs")
    ap.add_argument("--big", action="store_true", help="also the CIFAR-10 DDPM UNet (35.7M, 32x32x3, batch 128)")
    ap.add_argument("--compile", action="store_true", help="also ours and plain with torch.compile")
    ap.add_argument("--steps", type=int, default=None, help="steps a round")
    ap.add_argument("--batch-size", type=int, default=None)
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
