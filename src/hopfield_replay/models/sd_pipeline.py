"""Finding, checking, loading and saving the parts of a Stable Diffusion pipeline (no download by default).

``load_components(settings)`` reads a diffusers Stable Diffusion pipeline (a local folder with model_index.json,
or a hub id + revision from the local Hugging Face cache unless ``settings.local_files_only`` is False) component
by component: UNet, VAE, CLIP text encoder and tokenizer, and a ``DDPMScheduler`` built from its scheduler config
(SD v1.5: scaled-linear betas 0.00085..0.012, 1000 steps). The safety checker and feature extractor are never
loaded. A saved model (``save_trained``) holds only the fine-tuned UNet (``unet/``) or its LoRA adapter
(``unet_lora/``) and the scheduler; the frozen VAE and text encoder are referenced by the recorded source.

Errors are one line naming the params field as ``{where}.<field>`` (``where``: the params section, ``model.sd``).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import NamedTuple

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from ..errors import UserError
from .sd_settings import SDSettings

# model_index.json entries a usable pipeline must have: component -> accepted class names
_REQUIRED = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HINT = "give a local diffusers folder or a hub id with revision"


class Components(NamedTuple):
    unet: UNet2DConditionModel
    scheduler: DDPMScheduler
    vae: AutoencoderKL
    text_encoder: torch.nn.Module
    tokenizer: object


def is_local(source: str) -> bool:
    """A local folder (existing, or anything that does not look like a hub id ``owner/name``)."""
    p = Path(source).expanduser()
    return p.exists() or not _HUB_ID.match(source) or source.startswith((".", "/", "~"))


def model_index(source: str, revision: str | None, local_files_only: bool, where: str) -> dict:
    """Read ``model_index.json`` of a local folder or (cached / downloadable) hub repo and check that it names a
    UNet2DConditionModel, an AutoencoderKL, a CLIP text encoder and tokenizer."""
    if is_local(source):
        folder = Path(source).expanduser()
        if not folder.exists():
            raise UserError(f"{where}.pretrained: {source} does not exist; {_HINT}")
        index = folder / "model_index.json"
        if not folder.is_dir() or not index.is_file():
            raise UserError(
                f"{where}.pretrained: {source} is not a Stable Diffusion pipeline folder (no model_index.json with a "
                f"UNet2DConditionModel and AutoencoderKL); {_HINT}"
            )
    else:
        from huggingface_hub import hf_hub_download

        try:
            index = Path(hf_hub_download(source, "model_index.json", revision=revision, local_files_only=local_files_only))
        except Exception as exc:  # offline cache miss, unknown repo or revision, no network
            more = (
                "it is neither an existing local folder nor a repo in the local Hugging Face cache (local_files_only "
                "is true: nothing is downloaded unless you set local_files_only: false)"
                if local_files_only
                else f"could not fetch model_index.json ({type(exc).__name__})"
            )
            raise UserError(f"{where}.pretrained: {source!r} (revision {revision!r}): {more}; {_HINT}") from None
    try:
        data = json.loads(Path(index).read_text())
    except (OSError, ValueError):
        raise UserError(f"{where}.pretrained: {index} is not valid JSON; {_HINT}") from None
    bad = [
        name for name, classes in _REQUIRED.items()
        if not (isinstance(data.get(name), list) and len(data[name]) == 2 and data[name][1] in classes)
    ]
    if bad:
        raise UserError(
            f"{where}.pretrained: {source} is not a Stable Diffusion pipeline folder (no model_index.json with a "
            f"UNet2DConditionModel and AutoencoderKL; missing or wrong: {', '.join(bad)}); {_HINT}"
        )
    return data


def load_components(settings: SDSettings, *, where: str = "model.sd", unet_dir: Path | None = None,
                    scheduler_dir: Path | None = None) -> Components:
    """The pipeline's components in fp32. ``unet_dir``/``scheduler_dir``: take the UNet/scheduler from a saved
    model instead of the base pipeline."""
    from transformers import CLIPTextModel, CLIPTokenizer

    source = settings.pretrained
    if not isinstance(source, str) or not source:
        raise UserError(f"{where}.pretrained: must be a local diffusers folder or a hub id, got {source!r}")
    model_index(source, settings.revision, settings.local_files_only, where)
    src = str(Path(source).expanduser()) if is_local(source) else source
    kw = dict(revision=settings.revision, local_files_only=settings.local_files_only)
    wkw = dict(kw, variant=settings.variant, use_safetensors=True)  # weights only from safetensors, never pickles

    def load(component: str, fn, *args, **kwargs):
        """One component; a missing or unreadable one is a one-line error naming the field."""
        try:
            return fn(*args, **kwargs)
        except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(
                f"{where}.pretrained: {source}: could not load its {component} ({type(exc).__name__}: {first}); "
                "give a complete diffusers Stable Diffusion folder or a cached hub id with revision, weights as "
                ".safetensors (never loaded from pickles: convert .bin files with save_pretrained)"
            ) from None

    if unet_dir is not None:
        unet = load("unet", UNet2DConditionModel.from_pretrained, unet_dir, local_files_only=True, use_safetensors=True)
    else:
        unet = load("unet", UNet2DConditionModel.from_pretrained, src, subfolder="unet", **wkw)
    vae = load("vae", AutoencoderKL.from_pretrained, src, subfolder="vae", **wkw)
    text_encoder = load("text_encoder", CLIPTextModel.from_pretrained, src, subfolder="text_encoder", **wkw)
    tokenizer = load("tokenizer", CLIPTokenizer.from_pretrained, src, subfolder="tokenizer", **kw)
    if scheduler_dir is not None:
        scheduler = load("scheduler", DDPMScheduler.from_pretrained, scheduler_dir, local_files_only=True)
    else:
        base = load("scheduler", DDPMScheduler.load_config, src, subfolder="scheduler", **kw)
        scheduler = DDPMScheduler.from_config(base)
    return Components(unet, scheduler, vae, text_encoder, tokenizer)


def save_trained(unet, scheduler: DDPMScheduler, settings: SDSettings, path: Path) -> None:
    """The fine-tuned UNet (``unet/``) or only its LoRA adapter (``unet_lora/``) and the DDPM scheduler."""
    if settings.lora is not None:
        unet.save_lora_adapter(path / "unet_lora")
    else:
        unet.save_pretrained(path / "unet")
    scheduler.save_pretrained(path / "scheduler")


def load_lora_weights(unet, path: Path) -> None:
    """Load the adapter weights of ``path/unet_lora`` into a UNet that already carries the (same) adapter."""
    from peft.utils import set_peft_model_state_dict
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    files = sorted((path / "unet_lora").glob("*.safetensors"))
    if not files:
        raise UserError(f"{path}/unet_lora: no LoRA weights (*.safetensors); the model folder is incomplete: rerun "
                        "the stage that wrote it")
    try:
        weights = load_file(files[0])
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{files[0]}: not a readable safetensors file ({exc}); rerun the stage that wrote the "
                        "model") from None
    result = set_peft_model_state_dict(unet, weights)
    unexpected = getattr(result, "unexpected_keys", None)
    if unexpected:
        raise UserError(f"{files[0]}: {len(unexpected)} LoRA weights do not fit the UNet (e.g. {unexpected[0]}); "
                        "the adapter belongs to another model: rerun the stage that wrote it")
