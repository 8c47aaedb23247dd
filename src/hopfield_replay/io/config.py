"""The parameters: one typed pydantic model per ``params.yaml`` section, and one place per rule.

Each section checks its own keys (unknown ones, missing ones, types without silent coercion, non-finite numbers,
bounds) and its cross-field rules; a broken rule raises ``RuleError`` naming the field. ``params_file.load_config``
reads the file, validates every section up front and turns the first problem into one line naming the dotted field.

No parameter has a default here: the params file sets every one (params.yaml, the one source of the values a run
uses; a profile is merged into it), so a partial file is an error naming the missing field, never another run than
``make run``. The one exception is the ``execution`` section (how runs execute, never a result): a params file may
leave it out, or any of its keys, and gets the defaults written below. The building blocks (``Section``,
``RuleError``, the field types) are in ``sections``, the Hopfield-network experiments' sections in ``mhn_params``.
"""

from __future__ import annotations

import re
from typing import Annotated, ClassVar, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from ..arms import STRATEGY_NAMES, is_arm_name
from .mhn_params import MHNClosedFormParams, MHNReportParams, MHNTrainedParams
from .sections import MISSING_HINT, NonNegInt, PosInt, RuleError, Section, Timestep, distinct

__all__ = ["Config", "RuleError", "Section", "SECTIONS", "OPTIONAL_SECTIONS", "MISSING_HINT", "SD_DEFAULT_TEMPLATE",
           "MHNClosedFormParams", "MHNTrainedParams", "MHNReportParams"]

SD_DEFAULT_TEMPLATE = "a photo of a {class}"


# ---------------------------------------------------------------------------------------------------------------
# The diffusion pipeline


class PrepareParams(Section):
    dataset: Literal["mnist5k", "digits", "folder"]
    root: str | None
    split: Literal["train", "test"]
    task_a: Annotated[list[NonNegInt], Field(min_length=1)]
    task_b: Annotated[list[NonNegInt], Field(min_length=1)]
    resolution: Annotated[int, Field(ge=4, le=1024)]
    max_per_class: PosInt | None

    @field_validator("task_a", "task_b")
    @classmethod
    def _distinct_classes(cls, v):
        return distinct(v, "a class")

    @model_validator(mode="after")
    def _rules(self):
        overlap = sorted(set(self.task_a) & set(self.task_b))
        if overlap:
            raise RuleError("task_b", f"classes {overlap} are also in task_a; the two tasks must not overlap")
        if self.dataset == "folder" and not self.root:
            raise RuleError("root", "dataset 'folder' needs root: the path of a local data folder")
        if self.resolution % 4:
            raise RuleError("resolution", f"{self.resolution} must be a multiple of 4 (the UNet halves it twice)")
        return self


class SDParams(Section):
    """``model.sd``: the Stable Diffusion pipeline to fine-tune and how (read when ``model.family`` is sd)."""

    pretrained: str | None
    revision: str | None
    variant: str | None
    local_files_only: bool
    resolution: Annotated[int, Field(ge=8, le=2048, multiple_of=8)] | None
    prompt: Literal["class", "empty"]
    prompt_template: str
    class_names: list[str] | None
    lora: bool
    lora_rank: PosInt
    lora_alpha: Annotated[float, Field(gt=0)] | None
    lora_targets: Annotated[list[str], Field(min_length=1)]
    gradient_checkpointing: bool
    encode_batch_size: PosInt

    @field_validator("class_names")
    @classmethod
    def _names(cls, v):
        return v if v is None else distinct(v, "a name")

    @model_validator(mode="after")
    def _rules(self):
        if self.prompt == "class" and "{class}" not in self.prompt_template:
            raise RuleError("prompt_template", f"{self.prompt_template!r} has no {{class}} placeholder; class "
                               f"prompts need one (for example {SD_DEFAULT_TEMPLATE!r}) or use prompt: empty")
        if self.revision is not None and self.pretrained is None:
            raise RuleError("revision", "set without pretrained; give pretrained: a hub id or local folder")
        return self


class ModelParams(Section):
    family: Literal["ddpm", "sd"]
    block_out_channels: Annotated[list[Annotated[int, Field(ge=8)]], Field(min_length=1)]
    layers_per_block: PosInt
    attention: bool
    norm_num_groups: PosInt
    sd: SDParams

    @model_validator(mode="after")
    def _rules(self):
        bad = [c for c in self.block_out_channels if c % self.norm_num_groups]
        if bad:
            raise RuleError("block_out_channels", f"{bad} not divisible by norm_num_groups={self.norm_num_groups}")
        if self.family == "sd" and not self.sd.pretrained:
            raise RuleError("sd.pretrained", "family 'sd' needs pretrained: a local diffusers Stable Diffusion "
                               "folder (model_index.json) or a hub id with revision")
        return self


class TrainParams(Section):
    """A training run (train_b's section is also every replay arm's: only the buffer differs)."""

    steps: PosInt
    batch_size: PosInt
    lr: Annotated[float, Field(gt=0)]
    weight_decay: Annotated[float, Field(ge=0)]
    grad_clip: Annotated[float, Field(ge=0)]
    lr_schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"]
    lr_warmup_steps: NonNegInt
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None
    grad_accumulation: PosInt
    processes: PosInt  # data parallel: the stage trains as this many processes (hopfield_replay.runtime.data_parallel)
    compile_unet: bool  # torch.compile of the noise prediction (same method, other rounding)
    channels_last: bool  # channels-last UNet weights and inputs while training (same method, other rounding)
    cpu_bf16: bool  # bf16 autocast of the noise prediction when training on the CPU (same method, other rounding)
    threads: NonNegInt  # torch CPU threads of a run on the CPU (0: torch's default, every core); other rounding

    @model_validator(mode="after")
    def _rules(self):
        if self.lr_warmup_steps >= self.steps:
            raise RuleError("lr_warmup_steps", f"{self.lr_warmup_steps} is not below steps={self.steps}")
        if self.lr_warmup_steps and self.lr_schedule == "constant":
            raise RuleError("lr_schedule", "'constant' has no warmup; use constant_with_warmup (or "
                               "lr_warmup_steps: 0)")
        if self.batch_size % self.grad_accumulation:
            raise RuleError("grad_accumulation", f"{self.grad_accumulation} does not divide batch_size="
                               f"{self.batch_size}; use a divisor of it")
        if self.batch_size % (self.processes * self.grad_accumulation):
            raise RuleError("processes", f"batch_size={self.batch_size} does not split into {self.processes} "
                               f"processes x grad_accumulation {self.grad_accumulation}; use a batch_size "
                               f"divisible by {self.processes * self.grad_accumulation}")
        return self

    def loop_settings(self) -> dict:
        """The settings of ``models.TrainConfig``: all but how the loop runs (processes, ``speed_settings``)."""
        return self.model_dump(exclude={"processes", *self.speed_settings()})

    def speed_settings(self) -> dict:
        """How the loop computes (``train_and_save``'s keywords): compilation, layout, CPU bf16, CPU threads; other
        rounding, same method."""
        return {"compile_unet": self.compile_unet, "channels_last": self.channels_last, "cpu_bf16": self.cpu_bf16,
                "threads": self.threads}


class TrainAParams(TrainParams):
    seed: NonNegInt


class ScoresParams(Section):
    """``scores``: every per-sample predictor of forgetting (hopfield_replay.predictors)."""

    form: Literal["inner", "distance"]
    beta_rule: Literal["fixed", "median_nn", "snr"]
    beta: Annotated[float, Field(gt=0)] | None
    beta_t: Timestep
    beta_multiples: list[Annotated[float, Field(gt=0)]]
    snr_energies: bool
    knn_k: Annotated[list[PosInt], Field(min_length=1)]
    model_timesteps: Annotated[list[Timestep], Field(min_length=1)]
    noise_seed: Annotated[int, Field(ge=0, lt=2**64)]
    batch_size: PosInt | None

    @field_validator("beta_multiples", "knn_k")
    @classmethod
    def _distinct(cls, v):
        return distinct(v, "a value")

    @model_validator(mode="after")
    def _rules(self):
        if self.beta_rule == "fixed" and self.beta is None:
            raise RuleError("beta", "beta_rule 'fixed' needs beta: a number > 0")
        return self


class ForgettingParams(Section):
    timesteps: Annotated[list[Timestep], Field(min_length=1)]
    noise_seed: Annotated[int, Field(ge=0, lt=2**64)]
    batch_size: PosInt | None
    space: Literal["model", "pixel"]

    @field_validator("timesteps")
    @classmethod
    def _distinct(cls, v):
        return distinct(v, "a timestep")


class CurvesParams(Section):
    """``curves``: the training curves of every training run (measures.curves): the denoising loss of a fixed,
    seeded subset of each task's images at fixed noise on a timestep grid, every ``every`` steps."""

    every: PosInt
    samples: PosInt
    timesteps: Annotated[list[Timestep], Field(min_length=1)]
    seed: Annotated[int, Field(ge=0, lt=2**63)]

    @field_validator("timesteps")
    @classmethod
    def _distinct(cls, v):
        return distinct(v, "a timestep")


class SelectParams(Section):
    """``select_replay``: the replay arms. An arm is a registered strategy (energy_high, energy_low, random,
    class_balanced, kcenter, soft, oracle, energy_high_per_class, ...) or ``<predictor>_high`` / ``_low`` /
    ``_high_per_class`` / ``_low_per_class`` for any column of the scores table (arms.parse_arm)."""

    arms: Annotated[list[str], Field(min_length=1)]
    budgets: Annotated[list[PosInt], Field(min_length=1)]
    score: str
    temperature: Annotated[float, Field(gt=0)]
    oracle_measure: Literal["absolute", "relative"]

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v):
        return distinct(v, "a budget")

    @field_validator("arms")
    @classmethod
    def _arms(cls, v):
        for arm in v:
            if not is_arm_name(arm):
                raise ValueError(f"unknown arm {arm!r}; use one of {', '.join(STRATEGY_NAMES)} or <predictor>_high / "
                                 "_low / _high_per_class / _low_per_class (a column of the scores table)")
        return distinct(v, "an arm")


class RetrainParams(Section):
    replay_fraction: Annotated[float, Field(ge=0, le=1)]


class ReportParams(Section):
    aggregate_t: Literal["forgetting", "all"]
    bootstrap: Annotated[int, Field(ge=10)]
    level: Annotated[float, Field(gt=0.5, lt=1)]
    deciles: Annotated[int, Field(ge=2)]
    top_frac: Annotated[float, Field(gt=0, lt=1)]
    nuisance: list[str]
    grid: PosInt
    seed: NonNegInt


class ClassifierParams(Section):
    """``classifier``: the judge of what every model generates, a small CNN on every class of the prepared images."""

    steps: PosInt
    batch_size: PosInt
    lr: Annotated[float, Field(gt=0)]
    width: PosInt
    holdout_fraction: Annotated[float, Field(gt=0, lt=1)]
    min_accuracy: Annotated[float, Field(ge=0, le=1)]
    seed: NonNegInt


class ForecastParams(Section):
    """``forecast``: predictors of forgetting made before fine-tuning (hopfield_replay.forecast), a second question
    beside claim 1, never among its baselines."""

    probe_fractions: list[Annotated[float, Field(gt=0, le=1)]]
    knn_k: PosInt

    @field_validator("probe_fractions")
    @classmethod
    def _distinct(cls, v):
        return distinct(v, "a probe fraction")


class GenerationParams(Section):
    """``generation``: DDIM samples of every model, judged by the classifier, and the learned rule."""

    samples: Annotated[int, Field(ge=2, le=100_000)]
    ddim_steps: Annotated[int, Field(ge=1, le=1000)]
    batch_size: PosInt
    seed: NonNegInt
    confidence: Annotated[float, Field(ge=0, lt=1)]
    learned_min_share_ratio: Annotated[float, Field(gt=0, le=1)]
    learned_max_fd_share: Annotated[float, Field(gt=0, le=1)]
    grid: PosInt

    @model_validator(mode="after")
    def _rules(self):
        if self.grid > self.samples:
            raise RuleError("grid", f"{self.grid} samples per model in the grid, but only {self.samples} are drawn "
                                    "(generation.samples); lower generation.grid or raise generation.samples")
        return self


# ---------------------------------------------------------------------------------------------------------------
# How runs execute (never changes a result: no table's provenance covers it, no stage lists it in dvc.yaml)


class ExecutionParams(Section):
    """``execution``: training checkpoints (every ``checkpoint_every_steps`` steps or ``checkpoint_every_minutes``
    minutes, whichever comes first, under ``checkpoint_dir``, kept until the run succeeds) and the guard on the
    size of a prepared data file. The one section with defaults (params.yaml's values): it changes no result, so a
    params file may leave it out, or any of its keys."""

    checkpoint_dir: Annotated[str, Field(min_length=1)] = ".checkpoints"
    checkpoint_every_minutes: Annotated[float, Field(gt=0)] = 10.0
    checkpoint_every_steps: PosInt | None = None
    max_output_gb: Annotated[float, Field(gt=0)] = 4.0


# ---------------------------------------------------------------------------------------------------------------
# The whole file


class Config(Section):
    """All of params.yaml, every section and key required but ``execution``. ``seeds`` are the task-B phase's
    seeds: one train_b run, one set of seeded replay buffers and one run per replay arm for each."""

    unknown_key: ClassVar[str] = "unknown section"

    device: str
    seeds: Annotated[list[NonNegInt], Field(min_length=1)]
    prepare: PrepareParams
    model: ModelParams
    train_a: TrainAParams
    scores: ScoresParams
    train_b: TrainParams
    curves: CurvesParams
    forgetting: ForgettingParams
    select_replay: SelectParams
    retrain: RetrainParams
    report: ReportParams
    classifier: ClassifierParams
    generation: GenerationParams
    forecast: ForecastParams
    mhn_closed_form: MHNClosedFormParams
    mhn_trained: MHNTrainedParams
    mhn_report: MHNReportParams
    execution: ExecutionParams = ExecutionParams()

    @field_validator("device")
    @classmethod
    def _device(cls, v):
        if v not in ("auto", "cpu", "cuda") and not re.fullmatch(r"cuda:\d+", v):
            raise ValueError(f"{v!r} is not accepted; use auto, cpu, cuda or cuda:N")
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        return distinct(v, "a seed")

    def section(self, name: str) -> dict:
        """One section (or top-level value) as plain data: what a table's provenance hash covers."""
        value = getattr(self, name)
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


SECTIONS = tuple(name for name in Config.model_fields)
# The sections a params file may leave out: those with a default (execution alone: it changes no result).
OPTIONAL_SECTIONS = tuple(name for name, field in Config.model_fields.items() if not field.is_required())
