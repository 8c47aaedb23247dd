"""``SDSettings``: everything that defines a Stable Diffusion model besides its weights, in one typed object.

It is built once (from the ``model.sd`` params with ``SDSettings.from_params``, or from keywords), passed to the
loader and the model, and written to / read from the model folder's family json (``to_dict`` / ``from_dict``).

Prompts: one per class label, ``prompt_template.replace("{class}", class_names[label])`` (``prompt="class"``), or
the empty prompt for every label (``prompt="empty"``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..io.config import SD_DEFAULT_TEMPLATE, SDParams
from ..errors import UserError

PROMPTS = ("class", "empty")
DEFAULT_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")  # the pipeline sets its own: model.sd.lora_targets


@dataclass(frozen=True)
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


@dataclass
class SDSettings:
    """A Stable Diffusion model: its base pipeline (``pretrained``: a local diffusers folder or a hub id, with
    revision and weight variant), the image resolution (None: the pipeline's native size), the prompts, full or
    LoRA fine-tuning (``lora``: None, True for the default ``LoraSettings()``, or a ``LoraSettings``), and memory
    settings. ``local_files_only`` (default True) never downloads."""

    pretrained: str | None = None
    revision: str | None = None
    variant: str | None = None
    local_files_only: bool = True
    resolution: int | None = None
    prompt: str = "class"
    prompt_template: str = SD_DEFAULT_TEMPLATE
    class_names: list[str] | None = None
    lora: LoraSettings | None = None
    gradient_checkpointing: bool = False
    encode_batch_size: int = 32

    def __post_init__(self) -> None:
        if self.lora is True:
            self.lora = LoraSettings()
        elif self.lora is False:
            self.lora = None
        if self.class_names is not None:
            self.class_names = [str(name) for name in self.class_names]

    @classmethod
    def from_params(cls, params: SDParams, *, class_names: list[str] | None = None, pretrained: str | None = None,
                    where: str = "model.sd") -> "SDSettings":
        """The ``model.sd`` params section; ``class_names``/``pretrained`` fill fields left null there (for example
        the dataset's class names, or the path of a tiny pipeline a smoke run built)."""
        source = params.pretrained or pretrained
        if source is None:
            raise UserError(f"{where}.pretrained: not set; give a local diffusers folder or a hub id with revision")
        lora = LoraSettings(params.lora_rank, params.lora_alpha, tuple(params.lora_targets)) if params.lora else None
        return cls(
            pretrained=source, revision=params.revision, variant=params.variant,
            local_files_only=params.local_files_only, resolution=params.resolution, prompt=params.prompt,
            prompt_template=params.prompt_template,
            class_names=params.class_names if params.class_names is not None else class_names,
            lora=lora, gradient_checkpointing=params.gradient_checkpointing,
            encode_batch_size=params.encode_batch_size,
        )

    def to_dict(self) -> dict:
        """Plain JSON data (the family json of a saved model)."""
        out = dataclasses.asdict(self)
        out["lora"] = self.lora.to_dict() if self.lora is not None else None
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "SDSettings":
        """Inverse of ``to_dict``; keys that are not fields (e.g. ``family``) are ignored, missing ones default."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        if values.get("lora"):
            values["lora"] = LoraSettings.from_dict(values["lora"])
        return cls(**values)

    def prompts(self, *, where: str = "model.sd") -> list[str]:
        """One prompt per class label (index = label); [] for ``prompt='empty'``. Raises on a bad template."""
        if self.prompt not in PROMPTS:
            raise UserError(f"{where}.prompt: {self.prompt!r} is not accepted; use one of {', '.join(PROMPTS)}")
        if self.prompt == "empty":
            return []
        if "{class}" not in self.prompt_template:
            raise UserError(
                f"{where}.prompt_template: {self.prompt_template!r} has no {{class}} placeholder; class prompts need "
                f"one (for example {SD_DEFAULT_TEMPLATE!r}) or use prompt: empty"
            )
        if not self.class_names:
            raise UserError(f"{where}.class_names: prompt 'class' needs class_names (one name per label, "
                            "index = label)")
        return [self.prompt_template.replace("{class}", name) for name in self.class_names]
