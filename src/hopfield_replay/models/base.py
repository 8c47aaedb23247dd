"""The ``DenoisingModel`` interface every diffusion family implements, the family registry and ``load_model``.

A ``DenoisingModel`` predicts the noise eps added to a clean sample x0 in its *model space* (pixels for the DDPM,
VAE latents for Stable Diffusion):

    x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps   (``scheduler.add_noise``),   loss = |eps_theta(x_t, t, y) - eps|^2

Every other part of the library (training, reconstruction, model-based energy) only calls ``predict_noise``,
``encode``/``decode`` and the scheduler (``add_noise``, ``alphas_cumprod``), so a new family plugs in by subclassing
``DenoisingModel``, decorating the class with ``@register_family`` and naming its module in ``FAMILY_MODULES``.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from diffusers import DDPMScheduler

from ..errors import UserError

FAMILY_FILE = "hopfield_replay_model.json"


class DenoisingModel:
    """Base class: a noise-prediction network plus its DDPM noise schedule."""

    family: str = "base"

    def __init__(self, unet: torch.nn.Module, scheduler: DDPMScheduler):
        self.unet = unet
        self.scheduler = scheduler

    # -- what every family provides -------------------------------------------------------------------------
    def predict_noise(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
        raise NotImplementedError

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """Pixels in [-1, 1] -> model space (identity for pixel-space models)."""
        return images

    def decode(self, x: torch.Tensor) -> torch.Tensor:
        """Model space -> pixels in [-1, 1] (identity for pixel-space models)."""
        return x

    def check_labels(self, labels: torch.Tensor | None) -> None:
        """Raise a UserError for labels the model cannot condition on; called once per run on all labels (not per
        forward, where it would cost a device sync). Unconditional models accept any."""

    def trainable_parameters(self):
        return [p for p in self.unet.parameters() if p.requires_grad]

    def save_pretrained(self, path: str | Path) -> None:
        raise NotImplementedError

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "DenoisingModel":
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def to(self, device: torch.device) -> "DenoisingModel":
        self.unet.to(device)
        return self

    def train(self, mode: bool = True) -> "DenoisingModel":
        self.unet.train(mode)
        return self

    def eval(self) -> "DenoisingModel":
        return self.train(False)

    def alphas_cumprod(self, device: torch.device | None = None) -> torch.Tensor:
        return self.scheduler.alphas_cumprod.to(device or self.device, torch.float32)

    def _write_family(self, path: Path, extra: dict | None = None) -> None:
        (path / FAMILY_FILE).write_text(json.dumps({"family": self.family, **(extra or {})}, indent=2) + "\n")


def write_pipeline_index(path: Path, pipeline: str, **components: str) -> None:
    """``model_index.json``: the folder is then a diffusers pipeline, so ``DDPMPipeline.from_pretrained(path)`` (or
    ``DDIMPipeline``, which swaps in a DDIM scheduler of the same schedule) samples from it."""
    import diffusers

    index = {"_class_name": pipeline, "_diffusers_version": diffusers.__version__,
             **{name: ["diffusers", cls] for name, cls in sorted(components.items())}}
    (Path(path) / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")


# --------------------------------------------------------------------------------------------------------------
# Families


FAMILIES: dict[str, type[DenoisingModel]] = {}
# The module of each family, imported only when the family is first asked for (it registers itself), so that
# ``load_model`` works in a fresh process without every caller importing every family.
FAMILY_MODULES: dict[str, str] = {"ddpm": "hopfield_replay.models.ddpm", "sd": "hopfield_replay.models.sd"}


def register_family(cls: type[DenoisingModel]) -> type[DenoisingModel]:
    FAMILIES[cls.family] = cls
    return cls


def family_class(family: str, *, where: str = "model.family") -> type[DenoisingModel]:
    """The ``DenoisingModel`` subclass of a family name, importing its module on first use."""
    if family not in FAMILIES and family in FAMILY_MODULES:
        importlib.import_module(FAMILY_MODULES[family])
    if family not in FAMILIES:
        known = sorted(set(FAMILIES) | set(FAMILY_MODULES))
        raise UserError(f"{where}: unknown model family {family!r}; known: {known}")
    return FAMILIES[family]


def read_model_meta(path: str | Path) -> dict:
    """The family json of a model folder written by ``save_pretrained`` (family name and family settings)."""
    meta = Path(path) / FAMILY_FILE
    if not meta.is_file():
        raise UserError(f"{path} is not a hopfield-replay model folder (no {FAMILY_FILE}); run its stage first")
    try:
        data = json.loads(meta.read_text())
    except (OSError, ValueError):
        raise UserError(f"{meta}: not valid JSON; rerun the stage that wrote the model") from None
    if not isinstance(data, dict) or "family" not in data:
        raise UserError(f"{meta}: names no model family; rerun the stage that wrote the model")
    return data


def _check_parts(path: Path) -> None:
    """Every family saves ``scheduler/`` and ``unet/`` (or an SD LoRA adapter, ``unet_lora/``)."""
    needed = ["scheduler/scheduler_config.json"]
    if not (path / "unet_lora").is_dir():
        needed += ["unet/config.json"]
    missing = [name for name in needed if not (path / name).is_file()]
    if missing:
        raise UserError(f"{path}: the model folder is incomplete (no {missing[0]}); rerun the stage that wrote it "
                        "(dvc repro --force <stage>)")


def load_model(path: str | Path) -> DenoisingModel:
    """Load any model saved by ``save_pretrained`` here; the family is read from the folder. A missing, damaged
    or incomplete folder is a UserError naming it."""
    path = Path(path)
    family = read_model_meta(path)["family"]
    cls = family_class(family, where=str(path))
    _check_parts(path)
    try:
        return cls.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError, NotImplementedError) as exc:  # diffusers on unreadable weights,
        # a damaged config (a wrong type, a missing entry, an unknown schedule) or weights of another shape
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise UserError(f"{path}: the model folder is damaged ({type(exc).__name__}: {first}); rerun the stage that "
                        "wrote it (dvc repro --force <stage>)") from None
