"""The Stable Diffusion family: a frozen VAE and text encoder, a fine-tuned UNet, everything in VAE latent space.

``LatentDiffusion`` is a ``DenoisingModel`` whose *model space* is the VAE latent space:

    encode(x)  = vae.encode(resize(x)).latent_dist.mean * vae.config.scaling_factor        (deterministic)
    decode(z)  = vae.decode(z / scaling_factor).sample, clamped to [-1, 1]
    predict_noise(z_t, t, labels) = unet(z_t, t, encoder_hidden_states=text_embedding[labels]).sample

so the one training loop (``models.train_denoiser``), the reconstruction error and the model-based energy
(``reconstruction``) serve it unchanged, on latents. The VAE and the CLIP text encoder are frozen and in eval mode;
only the UNet trains (all of it, or LoRA adapters only). Training uses DDPM noise with epsilon prediction.

Everything but the weights is one ``SDSettings`` (``models.sd_settings``); loading and saving the pipeline's
parts is ``models.sd_pipeline``. The CLIP embeddings of all prompts are computed once and cached, so
``predict_noise`` only looks them up; ``labels=None`` uses the empty prompt. Encoding takes the *mean* of the VAE
posterior, not a sample, so the latents of a sample are a pure function of its pixels: the Hopfield energy, the
replay buffer and the reconstruction error all see the same point.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from ..io.config import SDParams
from ..errors import UserError
from .base import DenoisingModel, read_model_meta, register_family
from .sd_pipeline import load_components, load_lora_weights, save_trained
from .sd_settings import LoraSettings, SDSettings


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell along one side: 2 ** (number of VAE blocks - 1) (8 for SD v1.5)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


@register_family
class LatentDiffusion(DenoisingModel):
    """Stable Diffusion behind the ``DenoisingModel`` interface (module docstring). Build it with
    ``from_pipeline`` / ``from_settings`` / ``from_params`` (a pretrained pipeline) or ``from_pretrained`` (a folder
    written by ``save_pretrained``)."""

    family = "sd"

    def __init__(self, unet: UNet2DConditionModel, scheduler: DDPMScheduler, vae: AutoencoderKL,
                 text_encoder: torch.nn.Module, tokenizer, settings: SDSettings | None = None, *,
                 where: str = "model.sd"):
        super().__init__(unet, scheduler)
        settings = settings if settings is not None else SDSettings()
        if scheduler.config.prediction_type != "epsilon":
            raise UserError(
                f"{where}.pretrained: the scheduler predicts {scheduler.config.prediction_type!r}; this project trains "
                "and measures with epsilon prediction only (use an epsilon model such as SD v1.5)"
            )
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        factor = vae_scale_factor(vae)
        resolution = settings.resolution if settings.resolution is not None else int(unet.config.sample_size) * factor
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < factor or resolution % factor:
            raise UserError(
                f"{where}.resolution: {resolution!r} cannot be taken by the VAE: it must be a positive multiple of its "
                f"downsampling factor {factor} (2 ** (len(vae.config.block_out_channels) - 1))"
            )
        if settings.encode_batch_size < 1:
            raise UserError(f"{where}.encode_batch_size: must be >= 1, got {settings.encode_batch_size}")
        self.settings = dataclasses.replace(settings, resolution=resolution)
        self.prompts = self.settings.prompts(where=where)
        if settings.lora is not None and not getattr(unet, "_hf_peft_config_loaded", False):
            unet.requires_grad_(False)
            with torch.random.fork_rng(devices=[]):  # same adapter init every time, caller's RNG untouched
                torch.manual_seed(0)
                unet.add_adapter(settings.lora.config())
        if settings.gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self._embeddings = self._embed_prompts()

    @property
    def resolution(self) -> int:
        return self.settings.resolution

    @property
    def class_names(self) -> list[str] | None:
        return self.settings.class_names

    @property
    def lora(self) -> LoraSettings | None:
        return self.settings.lora

    # -- building -----------------------------------------------------------------------------------------------
    @classmethod
    def from_settings(cls, settings: SDSettings, *, where: str = "model.sd", _unet_dir: Path | None = None,
                      _scheduler_dir: Path | None = None) -> "LatentDiffusion":
        """Load the base pipeline ``settings.pretrained`` (``sd_pipeline.load_components``) and wrap it; the UNet and
        the scheduler come from a saved model instead when ``_unet_dir``/``_scheduler_dir`` are given."""
        settings.prompts(where=where)  # a bad prompt setting fails before loading gigabytes
        parts = load_components(settings, where=where, unet_dir=_unet_dir, scheduler_dir=_scheduler_dir)
        return cls(*parts, settings, where=where)

    @classmethod
    def from_pipeline(cls, source: str, *, where: str = "model.sd", **settings) -> "LatentDiffusion":
        """``from_settings(SDSettings(pretrained=source, **settings))``: any ``SDSettings`` field as a keyword."""
        return cls.from_settings(SDSettings(pretrained=source, **settings), where=where)

    @classmethod
    def from_params(cls, params: SDParams, *, class_names: list[str] | None = None, pretrained: str | None = None,
                    where: str = "model.sd") -> "LatentDiffusion":
        """Build from a ``model.sd`` params section (``SDSettings.from_params``: ``class_names``/``pretrained`` fill
        fields left null there)."""
        settings = SDSettings.from_params(params, class_names=class_names, pretrained=pretrained, where=where)
        return cls.from_settings(settings, where=where)

    # -- saving and loading --------------------------------------------------------------------------------------
    def save_pretrained(self, path) -> None:
        """The fine-tuned UNet or its LoRA adapter, the DDPM scheduler, and the family json with the settings (the
        base pipeline's source and revision: the VAE and text encoder are referenced, never copied)."""
        if self.settings.pretrained is None:
            raise ValueError("save_pretrained: this model has no recorded base pipeline (settings.pretrained); build "
                             "it with LatentDiffusion.from_settings so that from_pretrained can find the VAE")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        save_trained(self.unet, self.scheduler, self.settings, path)
        self._write_family(path, self.settings.to_dict())

    @classmethod
    def from_pretrained(cls, path) -> "LatentDiffusion":
        """Restore a model written by ``save_pretrained``: the base VAE/text encoder/tokenizer (and, with LoRA, the
        base UNet) from the recorded source with local_files_only=True, the trained weights from ``path``."""
        path = Path(path)
        meta = read_model_meta(path)
        if meta["family"] != cls.family:
            raise UserError(f"{path}: model family {meta['family']!r}, not {cls.family!r}; use load_model")
        settings = dataclasses.replace(SDSettings.from_dict(meta), local_files_only=True)
        model = cls.from_settings(settings, _unet_dir=None if settings.lora is not None else path / "unet",
                                  _scheduler_dir=path / "scheduler")
        if settings.lora is not None:
            load_lora_weights(model.unet, path)
        return model

    def pipeline(self):
        """This model as a diffusers ``StableDiffusionPipeline``: its VAE, text encoder and tokenizer, the fine-tuned
        UNet (with its LoRA adapter) and a DDIM scheduler on its noise schedule, so that a saved folder samples with
        ``load_model(folder).pipeline()(prompt, num_inference_steps=50)``. No safety checker (none is loaded)."""
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoder, tokenizer=self.tokenizer,
                                       unet=self.unet, scheduler=DDIMScheduler.from_config(self.scheduler.config),
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)

    # -- prompts ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _embed_prompts(self) -> torch.Tensor:
        """(n_prompts + 1, seq, dim): the class prompts in label order, then the empty prompt (last row)."""
        max_len = min(int(self.tokenizer.model_max_length), int(self.text_encoder.config.max_position_embeddings))
        ids = self.tokenizer(
            self.prompts + [""], padding="max_length", max_length=max_len, truncation=True, return_tensors="pt"
        ).input_ids
        device = next(self.text_encoder.parameters()).device
        return self.text_encoder(ids.to(device))[0].float()

    def text_embeddings(self, labels: torch.Tensor | None, batch: int, device: torch.device) -> torch.Tensor:
        """encoder_hidden_states for a batch: per-label prompt embeddings (empty prompt for labels=None or 'empty')."""
        emb = self._embeddings.to(device)
        if labels is None or not self.prompts:
            return emb[-1:].expand(batch, -1, -1)
        labels = labels.to(device).long().view(-1)
        if labels.numel() != batch:
            raise ValueError(f"{labels.numel()} labels for a batch of {batch}")
        if labels.device.type == "cpu":  # on a GPU the check would sync every forward: the training loop and the
            self.check_labels(labels)    # measurements check all their labels once, up front (check_labels)
        return emb[labels]

    def check_labels(self, labels: torch.Tensor | None) -> None:
        n = len(self.prompts)
        if labels is None or not n:
            return
        labels = labels.long().view(-1)
        bad = (labels < 0) | (labels >= n)
        if bad.any():
            raise UserError(f"label {int(labels[bad][0])} has no prompt: class_names has {n} names (index = label)")

    # -- the DenoisingModel interface ---------------------------------------------------------------------------
    def predict_noise(self, x_t, t, labels=None):
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        hidden = self.text_embeddings(labels, x_t.shape[0], x_t.device)
        return self.unet(x_t, t, encoder_hidden_states=hidden).sample

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], (N, C, H, W) with C in {1, 3} -> scaled latents (N, 4, R/f, R/f), fp32, on the input's
        device. Grey images are repeated to RGB, other sizes resized (bicubic, antialiased) to the model's
        resolution R; the VAE runs in fp32 (even inside a caller's autocast) in batches of ``encode_batch_size``,
        and its posterior *mean* is taken (no sampling: the same pixels always give the same latents)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"encode: images must be (N, 1 or 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        scale = float(self.vae.config.scaling_factor)
        size = (self.resolution, self.resolution)

        def one(x: torch.Tensor) -> torch.Tensor:
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            if tuple(x.shape[-2:]) != size:
                x = F.interpolate(x, size=size, mode="bicubic", antialias=True, align_corners=False).clamp(-1, 1)
            return self.vae.encode(x).latent_dist.mean * scale

        return self._batched(images, one, (0, *self.latent_shape))

    @torch.no_grad()
    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled latents -> RGB pixels in [-1, 1] at the model's resolution (fp32, on the input's device)."""
        scale = float(self.vae.config.scaling_factor)
        return self._batched(x, lambda z: self.vae.decode(z / scale).sample.clamp(-1, 1),
                             (0, 3, self.resolution, self.resolution))

    def _batched(self, x: torch.Tensor, fn, empty_shape) -> torch.Tensor:
        """fn over chunks of ``encode_batch_size`` on the VAE's device in fp32; the result on x's device."""
        device = next(self.vae.parameters()).device
        step = self.settings.encode_batch_size
        out = []
        with torch.autocast(device.type, enabled=False):
            for start in range(0, x.shape[0], step):
                out.append(fn(x[start : start + step].to(device, torch.float32)).float().to(x.device))
        return torch.cat(out) if out else x.new_zeros(empty_shape, dtype=torch.float32)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        side = self.resolution // vae_scale_factor(self.vae)
        return (int(self.vae.config.latent_channels), side, side)

    def trainable_parameters(self):
        """All UNet parameters (full fine-tuning) or only the LoRA adapter's (LoRA on); never the VAE/text encoder."""
        if self.lora is not None:
            return [p for n, p in self.unet.named_parameters() if "lora_" in n and p.requires_grad]
        return [p for p in self.unet.parameters() if p.requires_grad]

    def to(self, device: torch.device) -> "LatentDiffusion":
        self.unet.to(device)
        self.vae.to(device)
        self.text_encoder.to(device)
        self._embeddings = self._embeddings.to(device)
        return self

    def train(self, mode: bool = True) -> "LatentDiffusion":
        self.unet.train(mode)  # the VAE and the text encoder stay in eval mode
        return self
