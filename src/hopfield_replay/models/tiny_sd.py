"""Test and smoke-run helpers: a tiny random-weight Stable Diffusion pipeline, written without any download.

    python -m hopfield_replay.models.tiny_sd build-tiny-sd DIR [--resolution 16] [--seed 0]

``build_tiny_sd_pipeline`` is what the tests and the CPU smoke profile (profiles/sd-smoke.yaml) load in place of
SD v1.5: same layout (diffusers folder with model_index.json), same component classes, a few thousand weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch


def _tiny_tokenizer(max_length: int = 77):
    """A byte-level CLIP BPE tokenizer with a 514-token vocabulary (256 byte symbols, each also as word end, plus
    <|startoftext|> and <|endoftext|>) and no merges: any text tokenizes, one token per character."""
    from transformers import CLIPTokenizer

    # GPT-2 / CLIP byte -> printable unicode symbol table
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    extra = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(extra))]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_tiny_sd_pipeline(path: str | Path, *, resolution: int = 16, seed: int = 0):
    """Write a tiny Stable Diffusion pipeline with random weights to ``path`` (diffusers layout, model_index.json)
    and return it. VAE: 2 blocks (downsampling 2, 4 latent channels); UNet: 2 blocks with cross-attention on a
    2-layer CLIP text encoder (width 32); SD v1.5's PNDM scheduler config. Loads with
    ``StableDiffusionPipeline.from_pretrained(path, local_files_only=True)`` or ``LatentDiffusion.from_pipeline``."""
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if resolution < 8 or resolution % 8:
        raise ValueError(f"resolution: {resolution} must be a multiple of 8 (>= 8) for the tiny pipeline")
    torch.manual_seed(seed)
    tokenizer = _tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_attention_heads=4, num_hidden_layers=2,
        max_position_embeddings=77, projection_dim=32, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=resolution,
    )
    unet = UNet2DConditionModel(
        sample_size=resolution // 2, in_channels=4, out_channels=4, block_out_channels=(16, 32), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32, attention_head_dim=4, norm_num_groups=8,
    )
    scheduler = PNDMScheduler(  # SD v1.5's scheduler config
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, prediction_type="epsilon",
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(path)
    return pipe


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hopfield_replay.models.tiny_sd")
    sub = parser.add_subparsers(dest="cmd", required=True)
    tiny = sub.add_parser("build-tiny-sd", help="write a tiny random-weight SD pipeline (no download)")
    tiny.add_argument("path")
    tiny.add_argument("--resolution", type=int, default=16)
    tiny.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "build-tiny-sd":
        build_tiny_sd_pipeline(args.path, resolution=args.resolution, seed=args.seed)
        print(f"wrote a tiny Stable Diffusion pipeline ({args.resolution}x{args.resolution}) to {args.path}")


if __name__ == "__main__":
    main()
