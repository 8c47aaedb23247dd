"""Benchmark of Stable Diffusion v1.5-shaped training and VAE encoding (random weights, no download).

    .venv/bin/python benchmarks/bench_sd.py --device cuda --out $OUT/bench_sd.txt
    .venv/bin/python benchmarks/bench_sd.py --quick --device cpu      # a scaled-down config, about a minute

Builds a ``UNet2DConditionModel`` and an ``AutoencoderKL`` from SD v1.5's published config values (typed in below;
860M and 84M parameters) with random weights, and measures, in one process:
- training samples per second and peak GPU memory (fp32 master weights, bf16 autocast on CUDA, AdamW, grad
  clipping), at 256 px (latents 4x32x32, batch 64) and 512 px (4x64x64, batch 16), without and with gradient
  checkpointing, for
  ``ours``: ``train_denoiser`` on a ``DenoisingModel`` that looks the text embeddings up by label, checking the
  labels once before the loop, as ``LatentDiffusion`` does on CUDA (``check_labels``: no sync per step);
  ``ours, check every forward``: checking the labels in every forward, as ``LatentDiffusion`` did before
  (one host sync a step);
  ``plain``: a loop the way diffusers' examples train (draws on the device, no host sync per step);
  interleaved round by round in rotating order, best of ``--repeats``;
- VAE encode images per second (fp32, as the ``encode`` stage runs it) at 256 and 512 px.
On the CPU, ``--quick`` uses a scaled-down config (same block types, fewer channels, 64 and 128 px). ``--out FILE``
gets every figure line as soon as it is measured. Reference (issue 9, H100 80GB, plain loop): 293 samples/s at 256
batch 64 (33.8 GiB peak), 191 with checkpointing (18.0 GiB); 71 and 50 at 512 batch 16; VAE 449 and 104 images/s.
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import sys
import time

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_train import add_run_options, rotated, start_report, sync  # noqa: E402
from hopfield_replay.runtime.devices import autocast  # noqa: E402
from hopfield_replay.models import DenoisingModel, TrainConfig, train_denoiser  # noqa: E402

# runwayml/stable-diffusion-v1-5: unet/config.json, vae/config.json, scheduler/scheduler_config.json
SD15_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32, norm_eps=1e-5, act_fn="silu",
    downsample_padding=1, flip_sin_to_cos=True, freq_shift=0, mid_block_scale_factor=1, center_input_sample=False,
)
SD15_VAE = dict(
    in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, block_out_channels=(128, 256, 512, 512),
    down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4, norm_num_groups=32,
    act_fn="silu", sample_size=512, scaling_factor=0.18215,
)
SD15_SCHEDULER = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                      prediction_type="epsilon", clip_sample=False)
TOKENS = 77  # CLIP's sequence length
# (unet overrides, vae overrides, [(px, batch)], VAE encode batch per px)
CONFIGS = {
    "sd15": ({}, {}, [(256, 64), (512, 16)], {256: 32, 512: 8}),
    "scaled": (dict(block_out_channels=(32, 64, 128, 128), layers_per_block=1, cross_attention_dim=64),
               dict(block_out_channels=(32, 64, 64, 64), layers_per_block=1), [(64, 8), (128, 2)], {64: 8, 128: 2}),
    "smoke": (dict(block_out_channels=(32, 32), layers_per_block=1, cross_attention_dim=32, attention_head_dim=4,
                   down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                   up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=8),
              dict(block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8,
                   down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2),
              [(16, 2)], {16: 2}),
}
H100 = {("train", 256, False): 293, ("train", 256, True): 191, ("train", 512, False): 71, ("train", 512, True): 50,
        ("encode", 256): 449, ("encode", 512): 104}


class TextConditioned(DenoisingModel):
    """A UNet2DConditionModel whose text condition is a fixed random embedding per label (as LatentDiffusion's
    cached prompt embeddings), with or without its per-forward label check."""

    family = "sd-bench"

    def __init__(self, unet, scheduler, embeddings: torch.Tensor, check_every_forward: bool):
        super().__init__(unet, scheduler)
        self.embeddings, self.check_every_forward = embeddings, check_every_forward

    def check_labels(self, labels):
        if labels is not None and bool(((labels < 0) | (labels >= self.embeddings.shape[0])).any()):
            raise ValueError("label out of range")

    def predict_noise(self, x_t, t, labels=None):
        if self.check_every_forward:
            self.check_labels(labels)
        return self.unet(x_t, t, encoder_hidden_states=self.embeddings[labels]).sample


def plain_loop(unet, scheduler, x0, labels, embeddings, config: TrainConfig, device: torch.device) -> list[float]:
    """The reference: draws on the device, bf16 autocast, AdamW, clipping, no host sync per step."""
    gen = torch.Generator(device=device).manual_seed(config.seed)
    unet.train()
    opt = torch.optim.AdamW(unet.parameters(), lr=config.lr)
    losses = []
    for _ in range(config.steps):
        idx = torch.randint(0, x0.shape[0], (config.batch_size,), device=device, generator=gen)
        latents = x0[idx]
        noise = torch.randn(latents.shape, device=device, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (config.batch_size,), device=device, generator=gen)
        noisy = scheduler.add_noise(latents, noise, t)
        with autocast(device):
            pred = unet(noisy, t, encoder_hidden_states=embeddings[labels[idx]]).sample
        loss = torch.nn.functional.mse_loss(pred.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), config.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach())
    return torch.stack(losses).tolist()


def peak_gib(device: torch.device) -> float:
    """Peak GPU memory allocated since the last ``reset_peak``, GiB (NaN on the CPU: not measured)."""
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else math.nan


def gib(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.1f} GiB"


def reset_peak(device: torch.device, unet=None) -> None:
    """Free what the last run left (its gradients, its optimizer) and restart the peak-memory count."""
    if unet is not None:
        unet.zero_grad(set_to_none=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def bench_training(name, unet, scheduler, px, batch, factor, args, device, report) -> dict:
    r = px // factor
    x0 = torch.randn(4 * batch, 4, r, r, device=device)
    labels = torch.randint(0, 10, (4 * batch,), device=device)
    embeddings = torch.randn(10, TOKENS, unet.config.cross_attention_dim, device=device)
    checked = TextConditioned(unet, scheduler, embeddings, check_every_forward=True)
    unchecked = TextConditioned(unet, scheduler, embeddings, check_every_forward=False)
    variants = {
        "ours": lambda cfg: train_denoiser(unchecked, x0, cfg, labels=labels, device=device, progress=False),
        "ours, check every fwd": lambda cfg: train_denoiser(checked, x0, cfg, labels=labels, device=device,
                                                            progress=False),
        "plain": lambda cfg: plain_loop(unet, scheduler, x0, labels, embeddings, cfg, device),
    }
    steps = args.steps or (1 if args.smoke else 2 if device.type == "cpu" else 5 if args.quick else 10)
    results, peaks = {}, {}
    for ckpt in (False, True):
        if ckpt:
            unet.enable_gradient_checkpointing()
        else:
            unet.disable_gradient_checkpointing()
        tag = f"[{name} {px}px batch {batch}{', checkpointing' if ckpt else ''}]"
        for run in variants.values():  # warm-up (cuDNN autotuning, allocator)
            run(TrainConfig(steps=1, batch_size=batch, seed=0))
        best, peak = {v: math.inf for v in variants}, {}
        for rnd in range(args.repeats):
            for v in rotated(list(variants), rnd):
                run = variants[v]
                reset_peak(device, unet)
                sync(device)
                t0 = time.perf_counter()
                losses = run(TrainConfig(steps=steps, batch_size=batch, seed=rnd))
                sync(device)
                elapsed = time.perf_counter() - t0
                assert len(losses) == steps and all(math.isfinite(x) for x in losses), v
                best[v], peak[v] = min(best[v], elapsed), peak_gib(device)
                report(f"{tag} round {rnd + 1}: {v:<22}{steps * batch / elapsed:9.2f} samples/s, peak {gib(peak[v])}")
        for v in variants:
            report(f"{tag} best: {v:<22}{steps * batch / best[v]:9.2f} samples/s, peak {gib(peak[v])}")
            results[(v, ckpt)], peaks[(v, ckpt)] = steps * batch / best[v], peak[v]
        report(f"{tag} ratio ours / plain = {results[('ours', ckpt)] / results[('plain', ckpt)]:.2f}x, "
               f"ours checking labels every forward / plain = "
               f"{results[('ours, check every fwd', ckpt)] / results[('plain', ckpt)]:.2f}x")
    unet.disable_gradient_checkpointing()
    cost = results[("plain", True)] / results[("plain", False)]
    memory = peaks[("plain", True)] / peaks[("plain", False)]
    memory_text = "" if math.isnan(memory) else f", {memory:.2f}x peak memory"
    report(f"[{name} {px}px] ratio checkpointing / none, plain = {cost:.2f}x samples/s{memory_text}")
    return results


@torch.no_grad()
def bench_encode(name, vae, px, batch, args, device, report) -> float:
    images = torch.rand(batch, 3, px, px, device=device) * 2 - 1
    vae.to(device).eval()
    rounds = 1 if args.smoke else 2 if device.type == "cpu" else 5
    _ = vae.encode(images).latent_dist.mean  # warm-up
    best = math.inf
    reset_peak(device)
    for _ in range(args.repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(rounds):
            _ = vae.encode(images).latent_dist.mean
        sync(device)
        best = min(best, time.perf_counter() - t0)
    rate = rounds * batch / best
    report(f"[{name} VAE {px}px batch {batch}] encode (fp32): {rate:.1f} images/s, peak {gib(peak_gib(device))}")
    return rate


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--quick", action="store_true", help="fewer steps; on the CPU the scaled-down config")
    ap.add_argument("--smoke", action="store_true", help="a tiny config, 1 step, 1 round: checks the script runs")
    ap.add_argument("--config", choices=sorted(CONFIGS), default=None, help="default: sd15 on CUDA, else scaled")
    ap.add_argument("--steps", type=int, default=None, help="training steps a round")
    add_run_options(ap)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    args.repeats = args.repeats or (1 if args.smoke else 2 if args.quick else 3)
    name = args.config or ("smoke" if args.smoke else "sd15" if device.type == "cuda" or not args.quick else "scaled")
    unet_over, vae_over, sizes, encode_batch = CONFIGS[name]
    report = start_report(args, device)
    torch.manual_seed(0)
    unet = UNet2DConditionModel(**{**SD15_UNET, **unet_over}).to(device)
    vae = AutoencoderKL(**{**SD15_VAE, **vae_over})
    scheduler = DDPMScheduler(**SD15_SCHEDULER)
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    report(f"[{name}] UNet {sum(p.numel() for p in unet.parameters()) / 1e6:.1f}M params, VAE "
           f"{sum(p.numel() for p in vae.parameters()) / 1e6:.1f}M params, latents {factor}x smaller, "
           f"best of {args.repeats} interleaved rounds")
    on_h100_scale = name == "sd15" and device.type == "cuda"
    for px, batch in sizes:
        results = bench_training(name, unet, scheduler, px, batch, factor, args, device, report)
        if on_h100_scale:
            for ckpt in (False, True):
                ref = H100[("train", px, ckpt)]
                report(f"[{name} {px}px{', checkpointing' if ckpt else ''}] ratio ours / issue 9's H100 plain "
                       f"({ref}/s) = {results[('ours', ckpt)] / ref:.2f}x"
                       + (" (goal at 256 on an H100: >= 1.0x)" if px == 256 and not ckpt else ""))
    unet.to("cpu")
    del unet
    for px, _ in sizes:
        rate = bench_encode(name, vae, px, encode_batch[px], args, device, report)
        if on_h100_scale:
            report(f"[{name} VAE {px}px] ratio encode / issue 9's H100 ({H100[('encode', px)]}/s) = "
                   f"{rate / H100[('encode', px)]:.2f}x")


if __name__ == "__main__":
    main()
