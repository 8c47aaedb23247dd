"""Typed, validated parameters: one dataclass per ``params.yaml`` section, one-line errors naming the field.

``parse_section(raw, Cls, "train_a")`` checks unknown keys, types and allowed values and returns a ``Cls``;
a bad value raises ``ParamsError("train_a.steps: must be an integer >= 1, got -3")``.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ParamsError(ValueError):
    """A bad parameter: the message names the field and what is accepted."""


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, also reading YAML 1.2 floats with no dot (``1e-05``, as DVC's ``-S`` writes them)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def read_yaml(text: str):
    """YAML text as the stages read params (PyYAML safe loading, plus YAML 1.2 floats such as 1e-05)."""
    return yaml.load(text, Loader=_Loader)


def load_params(path: str | Path = "params.yaml") -> dict:
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"{path}: params file not found; run from the project root or pass --params")
    try:
        raw = read_yaml(path.read_text())
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ParamsError(f"{path}: not valid YAML{where}; fix the syntax") from None
    if not isinstance(raw, dict):
        raise ParamsError(f"{path}: must be a mapping of sections (prepare:, train_a:, ...), got {type(raw).__name__}")
    return raw


def _check(value: Any, tp: Any, name: str, spec: dict) -> Any:
    if dataclasses.is_dataclass(tp):  # a nested section, e.g. model.sd
        return _parse_mapping({} if value is None else value, tp, name)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _check(value, args[0], name, spec)
    if origin is typing.Literal:
        allowed = typing.get_args(tp)
        if value not in allowed:
            raise ParamsError(f"{name}: {value!r} is not accepted; use one of {', '.join(map(str, allowed))}")
        return value
    if origin is list:
        (inner,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ParamsError(f"{name}: must be a list, got {value!r}")
        if spec.get("nonempty") and not value:
            raise ParamsError(f"{name}: must not be empty")
        return [_check(v, inner, f"{name}[{i}]", {k: v for k, v in spec.items() if k != "nonempty"})
                for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"{name}: must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"{name}: must be an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"{name}: must be a number, got {value!r}")
        value = float(value)
    elif tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"{name}: must be a string, got {value!r}")
    lo, hi = spec.get("min"), spec.get("max")
    if lo is not None and value < lo:
        raise ParamsError(f"{name}: must be >= {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ParamsError(f"{name}: must be <= {hi}, got {value!r}")
    choices = spec.get("choices")
    if choices is not None and value not in choices:
        raise ParamsError(f"{name}: {value!r} is not accepted; use one of {', '.join(map(str, choices))}")
    return value


def parse_section(raw: dict, cls: type, section: str):
    """Build dataclass ``cls`` from ``raw[section]`` (missing keys take defaults; unknown keys are errors).

    A field typed as another dataclass is a nested section (``model.sd``), parsed the same way; its errors are
    named by the dotted path (``model.sd.prompt_template: ...``).
    """
    return _parse_mapping(raw.get(section, {}), cls, section)


def _parse_mapping(data: Any, cls: type, section: str):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ParamsError(f"{section}: must be a mapping of keys, got {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        raise ParamsError(f"{section}.{unknown[0]}: unknown key; known keys: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name, f in fields.items():
        if name in data:
            values[name] = _check(data[name], hints[name], f"{section}.{name}", dict(f.metadata))
    obj = cls(**values)
    post = getattr(obj, "validate", None)
    if post is not None:
        post(section)
    return obj


def spec(default=dataclasses.MISSING, *, default_factory=dataclasses.MISSING, **checks):
    """A dataclass field with validation metadata (min, max, choices, nonempty)."""
    if default_factory is not dataclasses.MISSING:
        return field(default_factory=default_factory, metadata=checks)
    return field(default=default, metadata=checks)


# --------------------------------------------------------------------------------------------------------------
# The pipeline's sections


@dataclass
class PrepareParams:
    dataset: typing.Literal["mnist5k", "digits", "folder"] = "mnist5k"
    root: str | None = None
    task_a: list[int] = spec(default_factory=lambda: [0, 1, 2, 3, 4], nonempty=True, min=0)
    task_b: list[int] = spec(default_factory=lambda: [5, 6, 7, 8, 9], nonempty=True, min=0)
    resolution: int = spec(16, min=4, max=1024)
    max_per_class: int | None = spec(None, min=1)
    split: typing.Literal["train", "test"] = "train"

    def validate(self, section: str) -> None:
        overlap = sorted(set(self.task_a) & set(self.task_b))
        if overlap:
            raise ParamsError(f"{section}.task_b: classes {overlap} are also in task_a; the two tasks must not overlap")
        if self.dataset == "folder" and not self.root:
            raise ParamsError(f"{section}.root: dataset 'folder' needs root: the path of a local data folder")


SD_DEFAULT_TEMPLATE = "a photo of a {class}"
SD_DEFAULT_LORA_TARGETS = ("to_k", "to_q", "to_v", "to_out.0")


@dataclass
class SDParams:
    """The ``model.sd`` section (read when ``model.family`` is ``sd``): the Stable Diffusion pipeline to fine-tune
    and how (``hopfield_replay.stable_diffusion.LatentDiffusion.from_params``)."""

    pretrained: str | None = None  # local diffusers folder (model_index.json) or hub id; never a DVC output
    revision: str | None = None  # with a hub id: pin a commit hash
    variant: str | None = None  # e.g. "fp16" weight files; loaded in fp32 either way
    local_files_only: bool = True  # never download; a hub id must already be in the local HF cache
    resolution: int | None = spec(None, min=8, max=2048)  # null -> the pipeline's native size (512 for SD v1.5)
    prompt: typing.Literal["class", "empty"] = "class"
    prompt_template: str = SD_DEFAULT_TEMPLATE
    class_names: list[str] | None = None  # index = label; null -> the dataset's class names (from prepare)
    lora: bool = False  # false: full UNet fine-tuning (the paper); true: LoRA adapters through peft
    lora_rank: int = spec(4, min=1)
    lora_alpha: float | None = spec(None, min=1e-6)
    lora_targets: list[str] = spec(default_factory=lambda: list(SD_DEFAULT_LORA_TARGETS), nonempty=True)
    gradient_checkpointing: bool = False
    encode_batch_size: int = spec(32, min=1)

    def validate(self, section: str) -> None:
        if self.prompt == "class" and "{class}" not in self.prompt_template:
            raise ParamsError(
                f"{section}.prompt_template: {self.prompt_template!r} has no {{class}} placeholder; class prompts need "
                f"one (for example {SD_DEFAULT_TEMPLATE!r}) or use prompt: empty"
            )
        if self.resolution is not None and self.resolution % 8:
            raise ParamsError(f"{section}.resolution: {self.resolution} must be a multiple of 8 (the SD VAE's downsampling factor)")
        if self.revision is not None and self.pretrained is None:
            raise ParamsError(f"{section}.revision: set without pretrained; give pretrained: a hub id or local folder")
        if self.class_names is not None and len(set(self.class_names)) != len(self.class_names):
            raise ParamsError(f"{section}.class_names: {self.class_names} lists a name twice")


@dataclass
class ModelParams:
    """``model``: the family, the pixel DDPM's UNet (family ddpm) and the ``sd`` subsection (family sd)."""

    family: typing.Literal["ddpm", "sd"] = "ddpm"
    block_out_channels: list[int] = spec(default_factory=lambda: [32, 64, 64], nonempty=True, min=8)
    layers_per_block: int = spec(1, min=1)
    attention: bool = False
    norm_num_groups: int = spec(8, min=1)
    sd: SDParams = field(default_factory=SDParams)

    def validate(self, section: str) -> None:
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise ParamsError(f"{section}.block_out_channels: {bad} not divisible by norm_num_groups={self.norm_num_groups}")
        if self.family == "sd" and not self.sd.pretrained:
            raise ParamsError(f"{section}.sd.pretrained: family 'sd' needs pretrained: a local diffusers Stable Diffusion "
                              "folder (model_index.json) or a hub id with revision")


@dataclass
class TrainParams:
    steps: int = spec(800, min=1)
    batch_size: int = spec(64, min=1)
    lr: float = spec(2e-4, min=0.0)
    weight_decay: float = spec(0.0, min=0.0)
    grad_clip: float = spec(1.0, min=0.0)
    seed: int = spec(0, min=0)


@dataclass
class EnergyParams:
    form: typing.Literal["inner", "distance"] = "distance"
    beta_rule: typing.Literal["fixed", "median_nn", "snr"] = "median_nn"
    beta: float | None = spec(None, min=1e-12)
    beta_t: int = spec(500, min=0, max=999)
    model_timesteps: list[int] = spec(default_factory=lambda: [50, 150, 250, 350, 450, 550, 650, 750, 850, 950],
                                      nonempty=True, min=0, max=999)
    noise_seed: int = spec(0, min=0)
    batch_size: int | None = spec(None, min=1)

    def validate(self, section: str) -> None:
        if self.beta_rule == "fixed" and self.beta is None:
            raise ParamsError(f"{section}.beta: beta_rule 'fixed' needs beta: a number > 0")


@dataclass
class ForgettingParams:
    timesteps: list[int] = spec(default_factory=lambda: [100, 250, 500, 750], nonempty=True, min=0, max=999)
    noise_seed: int = spec(0, min=0)
    batch_size: int | None = spec(None, min=1)
    space: typing.Literal["model", "pixel"] = "model"


@dataclass
class SelectParams:
    strategies: list[str] = spec(default_factory=lambda: ["energy_high", "energy_low", "random"], nonempty=True)
    budgets: list[int] = spec(default_factory=lambda: [50, 250], nonempty=True)
    score: typing.Literal["energy_a", "energy_rise", "model_energy"] = "energy_a"
    seed: int = spec(0, min=0)

    def validate(self, section: str) -> None:
        from .replay import STRATEGIES  # the registry lives with the selectors

        for s in self.strategies:
            if s not in STRATEGIES:
                raise ParamsError(f"{section}.strategies: unknown strategy {s!r}; use one of {', '.join(STRATEGIES)}")
        if len(set(self.strategies)) != len(self.strategies):
            raise ParamsError(f"{section}.strategies: {self.strategies} lists a strategy twice")
        for b in self.budgets:
            if b < 1:
                raise ParamsError(f"{section}.budgets: {b} is not a valid budget; use integers >= 1 (the no-replay arm is train_b)")
        if len(set(self.budgets)) != len(self.budgets):
            raise ParamsError(f"{section}.budgets: {self.budgets} lists a budget twice")


@dataclass
class RetrainParams:
    replay_fraction: float = spec(0.25, min=0.0, max=1.0)


@dataclass
class ReportParams:
    bootstrap: int = spec(1000, min=10)
    deciles: int = spec(10, min=2)
    grid: int = spec(8, min=1)
    seed: int = spec(0, min=0)


SECTIONS = {
    "prepare": PrepareParams,
    "model": ModelParams,
    "train_a": TrainParams,
    "energy": EnergyParams,
    "train_b": TrainParams,
    "forgetting": ForgettingParams,
    "select_replay": SelectParams,
    "retrain": RetrainParams,
    "report": ReportParams,
}


def device_param(raw: dict) -> str:
    device = raw.get("device", "auto")
    if not isinstance(device, str) or not (device in ("auto", "cpu") or device.startswith("cuda")):
        raise ParamsError(f"device: {device!r} is not accepted; use auto, cpu, cuda or cuda:N")
    return device


def validate_all(raw: dict) -> dict[str, Any]:
    """Parse every known section (used by ``python -m stages.check_params`` and the tests)."""
    out = {name: parse_section(raw, cls, name) for name, cls in SECTIONS.items()}
    out["device"] = device_param(raw)
    return out
