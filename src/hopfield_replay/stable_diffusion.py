"""The Stable Diffusion family: a frozen VAE and text encoder, a fine-tuned UNet, everything in VAE latent space.

``LatentDiffusion`` is a ``DenoisingModel`` whose *model space* is the VAE latent space:

    encode(x)  = vae.encode(resize(x)).latent_dist.mean * vae.config.scaling_factor        (deterministic)
    decode(z)  = vae.decode(z / scaling_factor).sample, clamped to [-1, 1]
    predict_noise(z_t, t, labels) = unet(z_t, t, encoder_hidden_states=text_embedding[labels]).sample

so the one training loop (``diffusion.train_denoiser``), the reconstruction error and the model-based energy
(``reconstruction``) serve it unchanged, on latents. The VAE and the CLIP text encoder are frozen and in eval mode;
only the UNet trains (all of it, or LoRA adapters only). Training uses DDPM noise with epsilon prediction: the
``DDPMScheduler`` is built from the pipeline's own scheduler config (SD v1.5: scaled-linear betas 0.00085..0.012,
1000 steps).

Prompts: one per class label, ``prompt_template.replace("{class}", class_names[label])`` (``prompt="class"``), or
the empty prompt for every label (``prompt="empty"``). The CLIP embeddings of all prompts are computed once and
cached, so ``predict_noise`` only looks them up; ``labels=None`` uses the empty prompt.

Encoding takes the *mean* of the VAE posterior, not a sample, so the latents of a sample are a pure function of
its pixels: the Hopfield energy, the replay buffer and the reconstruction error all see the same point.

Nothing here downloads: ``from_pipeline`` reads a local diffusers folder (``model_index.json``), or a hub id from
the local Hugging Face cache, unless a caller passes ``local_files_only=False`` explicitly. ``save_pretrained``
writes only the fine-tuned UNet (or the LoRA adapter) and the scheduler; the frozen VAE and text encoder are
referenced by the recorded source (+ revision), never copied.

``build_tiny_sd_pipeline`` writes a tiny random-weight SD pipeline (tests, CPU smoke runs):
``python -m hopfield_replay.stable_diffusion build-tiny DIR [--resolution 16] [--seed 0]``.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel

from .diffusion import FAMILY_FILE, DenoisingModel, register_family
from .params import SD_DEFAULT_LORA_TARGETS as DEFAULT_LORA_TARGETS
from .params import SD_DEFAULT_TEMPLATE as DEFAULT_TEMPLATE
from .params import SDParams  # noqa: F401  (the model.sd section; defined with the other params)

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
PROMPTS = ("class", "empty")

# model_index.json entries a usable pipeline must have: component -> accepted class names
_REQUIRED = {
    "unet": ("UNet2DConditionModel",),
    "vae": ("AutoencoderKL",),
    "text_encoder": ("CLIPTextModel",),
    "tokenizer": ("CLIPTokenizer", "CLIPTokenizerFast"),
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


@dataclass
class LoraSettings:
    """LoRA on the UNet's attention projections (peft ``LoraConfig``; alpha None -> alpha = rank)."""

    rank: int = 4
    alpha: float | None = None
    target_modules: tuple[str, ...] = DEFAULT_LORA_TARGETS

    def config(self):
        from peft import LoraConfig

        return LoraConfig(
            r=self.rank,
            lora_alpha=self.alpha if self.alpha is not None else self.rank,
            init_lora_weights="gaussian",
            target_modules=list(self.target_modules),
        )

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "target_modules": list(self.target_modules)}

    @classmethod
    def from_dict(cls, d: dict) -> "LoraSettings":
        return cls(rank=int(d["rank"]), alpha=d.get("alpha"), target_modules=tuple(d["target_modules"]))


def build_prompts(prompt: str, prompt_template: str, class_names: list[str] | None, *, where: str = "model.sd") -> list[str]:
    """One prompt per class label (index = label); [] for ``prompt='empty'``. Raises on a bad template."""
    if prompt not in PROMPTS:
        raise ValueError(f"{where}.prompt: {prompt!r} is not accepted; use one of {', '.join(PROMPTS)}")
    if prompt == "empty":
        return []
    if "{class}" not in prompt_template:
        raise ValueError(
            f"{where}.prompt_template: {prompt_template!r} has no {{class}} placeholder; class prompts need one "
            f"(for example {DEFAULT_TEMPLATE!r}) or use prompt: empty"
        )
    if not class_names:
        raise ValueError(f"{where}.class_names: prompt 'class' needs class_names (one name per label, index = label)")
    return [prompt_template.replace("{class}", str(name)) for name in class_names]


# --------------------------------------------------------------------------------------------------------------
# Finding and checking a pipeline


def _is_local(source: str) -> bool:
    p = Path(source).expanduser()
    return p.exists() or not _HUB_ID.match(source) or source.startswith((".", "/", "~"))


def _model_index(source: str, revision: str | None, local_files_only: bool, where: str) -> dict:
    """Read ``model_index.json`` of a local folder or (cached / downloadable) hub repo, with one-line errors."""
    hint = "give a local diffusers folder or a hub id with revision"
    if _is_local(source):
        folder = Path(source).expanduser()
        if not folder.exists():
            raise FileNotFoundError(f"{where}.pretrained: {source} does not exist; {hint}")
        index = folder / "model_index.json"
        if not folder.is_dir() or not index.is_file():
            raise ValueError(
                f"{where}.pretrained: {source} is not a Stable Diffusion pipeline folder (no model_index.json with a "
                f"UNet2DConditionModel and AutoencoderKL); {hint}"
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
            raise FileNotFoundError(f"{where}.pretrained: {source!r} (revision {revision!r}): {more}; {hint}") from None
    try:
        data = json.loads(Path(index).read_text())
    except (OSError, ValueError):
        raise ValueError(f"{where}.pretrained: {index} is not valid JSON; {hint}") from None
    bad = [
        name for name, classes in _REQUIRED.items()
        if not (isinstance(data.get(name), list) and len(data[name]) == 2 and data[name][1] in classes)
    ]
    if bad:
        raise ValueError(
            f"{where}.pretrained: {source} is not a Stable Diffusion pipeline folder (no model_index.json with a "
            f"UNet2DConditionModel and AutoencoderKL; missing or wrong: {', '.join(bad)}); {hint}"
        )
    return data


def vae_scale_factor(vae: AutoencoderKL) -> int:
    """Pixels per latent cell along one side: 2 ** (number of VAE blocks - 1) (8 for SD v1.5)."""
    return 2 ** (len(vae.config.block_out_channels) - 1)


# --------------------------------------------------------------------------------------------------------------
# The model


@register_family
class LatentDiffusion(DenoisingModel):
    """Stable Diffusion behind the ``DenoisingModel`` interface (module docstring). Build it with
    ``from_pipeline`` (a pretrained pipeline) or ``from_pretrained`` (a folder written by ``save_pretrained``)."""

    family = "sd"

    def __init__(
        self,
        unet: UNet2DConditionModel,
        scheduler: DDPMScheduler,
        vae: AutoencoderKL,
        text_encoder: torch.nn.Module,
        tokenizer,
        *,
        resolution: int | None = None,
        prompt: str = "class",
        prompt_template: str = DEFAULT_TEMPLATE,
        class_names: list[str] | None = None,
        lora: LoraSettings | None = None,
        gradient_checkpointing: bool = False,
        encode_batch_size: int = 32,
        source: str | None = None,
        revision: str | None = None,
        variant: str | None = None,
        where: str = "model.sd",
    ):
        super().__init__(unet, scheduler)
        if scheduler.config.prediction_type != "epsilon":
            raise ValueError(
                f"{where}.pretrained: the scheduler predicts {scheduler.config.prediction_type!r}; this project trains "
                "and measures with epsilon prediction only (use an epsilon model such as SD v1.5)"
            )
        self.vae = vae.eval().requires_grad_(False)
        self.text_encoder = text_encoder.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        factor = vae_scale_factor(vae)
        if resolution is None:
            resolution = int(unet.config.sample_size) * factor
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < factor or resolution % factor:
            raise ValueError(
                f"{where}.resolution: {resolution!r} cannot be taken by the VAE: it must be a positive multiple of its "
                f"downsampling factor {factor} (2 ** (len(vae.config.block_out_channels) - 1))"
            )
        if encode_batch_size < 1:
            raise ValueError(f"{where}.encode_batch_size: must be >= 1, got {encode_batch_size}")
        self.resolution = resolution
        self.prompt = prompt
        self.prompt_template = prompt_template
        self.class_names = list(class_names) if class_names is not None else None
        self.prompts = build_prompts(prompt, prompt_template, self.class_names, where=where)
        self.lora = lora
        self.gradient_checkpointing = gradient_checkpointing
        self.encode_batch_size = encode_batch_size
        self.source, self.revision, self.variant = source, revision, variant
        if lora is not None and not getattr(unet, "_hf_peft_config_loaded", False):
            unet.requires_grad_(False)
            with torch.random.fork_rng(devices=[]):  # same adapter init every time, caller's RNG untouched
                torch.manual_seed(0)
                unet.add_adapter(lora.config())
        if gradient_checkpointing:
            unet.enable_gradient_checkpointing()
        self._embeddings = self._embed_prompts()

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
        n = len(self.prompts)
        bad = (labels < 0) | (labels >= n)
        if bad.any():  # one device sync per forward
            raise ValueError(f"label {int(labels[bad][0])} has no prompt: class_names has {n} names (index = label)")
        return emb[labels]

    # -- the DenoisingModel interface ---------------------------------------------------------------------------
    def predict_noise(self, x_t, t, labels=None):
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        hidden = self.text_embeddings(labels, x_t.shape[0], x_t.device)
        return self.unet(x_t, t, encoder_hidden_states=hidden).sample

    def _vae_device(self) -> torch.device:
        return next(self.vae.parameters()).device

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1], (N, C, H, W) with C in {1, 3} -> scaled latents (N, 4, R/f, R/f), fp32, on the input's
        device. Grey images are repeated to RGB, other sizes resized (bicubic, antialiased) to the model's
        resolution R; the VAE runs in fp32 (even inside a caller's autocast) in batches of ``encode_batch_size``,
        and its posterior *mean* is taken (no sampling: the same pixels always give the same latents)."""
        if images.ndim != 4 or images.shape[1] not in (1, 3):
            raise ValueError(f"encode: images must be (N, 1 or 3, H, W) in [-1, 1], got shape {tuple(images.shape)}")
        scale = float(self.vae.config.scaling_factor)

        def one(x: torch.Tensor) -> torch.Tensor:
            if x.shape[1] == 1:
                x = x.repeat(1, 3, 1, 1)
            if tuple(x.shape[-2:]) != (self.resolution, self.resolution):
                x = F.interpolate(x, size=(self.resolution, self.resolution), mode="bicubic", antialias=True,
                                  align_corners=False).clamp(-1, 1)
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
        device = self._vae_device()
        out = []
        with torch.autocast(device.type, enabled=False):
            for start in range(0, x.shape[0], self.encode_batch_size):
                out.append(fn(x[start : start + self.encode_batch_size].to(device, torch.float32)).float().to(x.device))
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

    # -- settings, saving, loading ------------------------------------------------------------------------------
    def settings(self) -> dict:
        """What ``from_pretrained`` needs besides the saved weights (also written to the family json)."""
        return {
            "pretrained": self.source,
            "revision": self.revision,
            "variant": self.variant,
            "resolution": self.resolution,
            "prompt": self.prompt,
            "prompt_template": self.prompt_template,
            "class_names": self.class_names,
            "lora": self.lora.to_dict() if self.lora is not None else None,
            "gradient_checkpointing": self.gradient_checkpointing,
            "encode_batch_size": self.encode_batch_size,
        }

    def save_pretrained(self, path) -> None:
        """The fine-tuned UNet (``unet/``) or only its LoRA adapter (``unet_lora/``), the DDPM scheduler, and the
        family json with the base pipeline's source/revision and the prompt settings (VAE/text encoder not copied)."""
        if self.source is None:
            raise ValueError("save_pretrained: this model has no recorded base pipeline (source); build it with "
                             "LatentDiffusion.from_pipeline so that from_pretrained can find the VAE and text encoder")
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        if self.lora is not None:
            self.unet.save_lora_adapter(path / "unet_lora")
        else:
            self.unet.save_pretrained(path / "unet")
        self.scheduler.save_pretrained(path / "scheduler")
        self._write_family(path, self.settings())

    @classmethod
    def from_pretrained(cls, path) -> "LatentDiffusion":
        """Restore a model written by ``save_pretrained``: the base VAE/text encoder/tokenizer (and, with LoRA, the
        base UNet) from the recorded source with local_files_only=True, the trained weights from ``path``."""
        path = Path(path)
        meta_file = path / FAMILY_FILE
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} is not a hopfield-replay model folder (no {FAMILY_FILE}); run its stage first")
        meta = json.loads(meta_file.read_text())
        if meta.get("family") != cls.family:
            raise ValueError(f"{path}: model family {meta.get('family')!r}, not {cls.family!r}; use load_model")
        lora = LoraSettings.from_dict(meta["lora"]) if meta.get("lora") else None
        unet_dir = None if lora is not None else path / "unet"
        model = cls.from_pipeline(
            meta["pretrained"],
            revision=meta.get("revision"),
            variant=meta.get("variant"),
            local_files_only=True,
            resolution=meta.get("resolution"),
            prompt=meta.get("prompt", "class"),
            prompt_template=meta.get("prompt_template", DEFAULT_TEMPLATE),
            class_names=meta.get("class_names"),
            lora=lora,
            gradient_checkpointing=meta.get("gradient_checkpointing", False),
            encode_batch_size=meta.get("encode_batch_size", 32),
            _unet_dir=unet_dir,
            _scheduler_dir=path / "scheduler",
        )
        if lora is not None:
            from peft.utils import set_peft_model_state_dict
            from safetensors.torch import load_file

            files = sorted((path / "unet_lora").glob("*.safetensors"))
            if not files:
                raise FileNotFoundError(f"{path}/unet_lora: no LoRA weights (*.safetensors); the model folder is incomplete")
            result = set_peft_model_state_dict(model.unet, load_file(files[0]))
            unexpected = getattr(result, "unexpected_keys", None)
            if unexpected:
                raise ValueError(f"{files[0]}: {len(unexpected)} LoRA weights do not fit the UNet (e.g. {unexpected[0]})")
        return model

    @classmethod
    def from_pipeline(
        cls,
        source: str,
        *,
        revision: str | None = None,
        variant: str | None = None,
        local_files_only: bool = True,
        resolution: int | None = None,
        prompt: str = "class",
        prompt_template: str = DEFAULT_TEMPLATE,
        class_names: list[str] | None = None,
        lora: LoraSettings | bool | None = None,
        gradient_checkpointing: bool = False,
        encode_batch_size: int = 32,
        where: str = "model.sd",
        _unet_dir: Path | None = None,
        _scheduler_dir: Path | None = None,
    ) -> "LatentDiffusion":
        """Load a diffusers Stable Diffusion pipeline (a local folder with model_index.json, or a hub id + revision)
        component by component: UNet, VAE, CLIP text encoder and tokenizer, and a DDPMScheduler from its scheduler
        config. The safety checker and feature extractor are never loaded. ``local_files_only=True`` (the default)
        never downloads: a hub id must then already be in the local Hugging Face cache. ``lora=True`` means
        ``LoraSettings()``; error messages name the params field as ``{where}.<field>``."""
        from transformers import CLIPTextModel, CLIPTokenizer

        if not isinstance(source, str) or not source:
            raise ValueError(f"{where}.pretrained: must be a local diffusers folder or a hub id, got {source!r}")
        build_prompts(prompt, prompt_template, class_names, where=where)  # fail before loading gigabytes
        _model_index(source, revision, local_files_only, where)
        if lora is True:
            lora = LoraSettings()
        elif lora is False:
            lora = None
        src = str(Path(source).expanduser()) if _is_local(source) else source
        kw = dict(revision=revision, local_files_only=local_files_only)
        wkw = dict(kw, variant=variant)

        def load(component: str, fn, *args, **kwargs):
            """One component; a missing or unreadable one is a one-line error naming the field."""
            try:
                return fn(*args, **kwargs)
            except (OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
                first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
                raise ValueError(
                    f"{where}.pretrained: {source}: could not load its {component} ({type(exc).__name__}: {first}); "
                    "give a complete diffusers Stable Diffusion folder or a cached hub id with revision"
                ) from None

        if _unet_dir is not None:
            unet = load("unet", UNet2DConditionModel.from_pretrained, _unet_dir, local_files_only=True)
        else:
            unet = load("unet", UNet2DConditionModel.from_pretrained, src, subfolder="unet", **wkw)
        vae = load("vae", AutoencoderKL.from_pretrained, src, subfolder="vae", **wkw)
        text_encoder = load("text_encoder", CLIPTextModel.from_pretrained, src, subfolder="text_encoder", **wkw)
        tokenizer = load("tokenizer", CLIPTokenizer.from_pretrained, src, subfolder="tokenizer", **kw)
        if _scheduler_dir is not None:
            scheduler = load("scheduler", DDPMScheduler.from_pretrained, _scheduler_dir, local_files_only=True)
        else:
            base = load("scheduler", DDPMScheduler.load_config, src, subfolder="scheduler", **kw)
            scheduler = DDPMScheduler.from_config(base)
        return cls(
            unet, scheduler, vae, text_encoder, tokenizer,
            resolution=resolution, prompt=prompt, prompt_template=prompt_template, class_names=class_names,
            lora=lora, gradient_checkpointing=gradient_checkpointing, encode_batch_size=encode_batch_size,
            source=source, revision=revision, variant=variant, where=where,
        )

    @classmethod
    def from_params(cls, params: "SDParams", *, class_names: list[str] | None = None,
                    pretrained: str | None = None, where: str = "model.sd") -> "LatentDiffusion":
        """Build from a ``model.sd`` params section; ``class_names``/``pretrained`` fill fields left null there
        (for example the dataset's class names, or the path of a tiny pipeline a smoke stage built)."""
        source = params.pretrained or pretrained
        if source is None:
            raise ValueError(f"{where}.pretrained: not set; give a local diffusers folder or a hub id with revision")
        lora = LoraSettings(params.lora_rank, params.lora_alpha, tuple(params.lora_targets)) if params.lora else None
        return cls.from_pipeline(
            source, revision=params.revision, variant=params.variant, local_files_only=params.local_files_only,
            resolution=params.resolution, prompt=params.prompt, prompt_template=params.prompt_template,
            class_names=params.class_names if params.class_names is not None else class_names,
            lora=lora, gradient_checkpointing=params.gradient_checkpointing,
            encode_batch_size=params.encode_batch_size, where=where,
        )


# --------------------------------------------------------------------------------------------------------------
# A tiny random-weight pipeline (no download)


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
    from diffusers import PNDMScheduler, StableDiffusionPipeline
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
    parser = argparse.ArgumentParser(prog="python -m hopfield_replay.stable_diffusion")
    sub = parser.add_subparsers(dest="cmd", required=True)
    tiny = sub.add_parser("build-tiny", help="write a tiny random-weight SD pipeline (no download)")
    tiny.add_argument("path")
    tiny.add_argument("--resolution", type=int, default=16)
    tiny.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "build-tiny":
        build_tiny_sd_pipeline(args.path, resolution=args.resolution, seed=args.seed)
        print(f"wrote a tiny Stable Diffusion pipeline ({args.resolution}x{args.resolution}) to {args.path}")


if __name__ == "__main__":
    main()
