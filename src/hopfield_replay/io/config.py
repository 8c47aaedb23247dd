"""The parameters: one typed pydantic model per ``params.yaml`` section, and one place per rule.

Each section checks its own keys (unknown ones, types without silent coercion, non-finite numbers, bounds) and its
cross-field rules; a broken rule raises ``RuleError`` naming the field. ``params_file.load_config`` reads the
file, validates every section up front and turns the first problem into one line naming the dotted field.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class RuleError(ValueError):
    """A cross-field rule broken: names the field (relative to its section) for the one-line message."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


class Section(BaseModel):
    """A params section: unknown keys, wrong types (no silent coercion) and NaN/inf are errors."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, validate_default=True)


PosInt = Annotated[int, Field(ge=1)]
NonNegInt = Annotated[int, Field(ge=0)]
Timestep = Annotated[int, Field(ge=0, le=999)]
SD_DEFAULT_TEMPLATE = "a photo of a {class}"


def _unique(values: list, what: str) -> list:
    if len(set(values)) != len(values):
        raise ValueError(f"{values} lists {what} twice")
    return values


# ---------------------------------------------------------------------------------------------------------------
# The diffusion pipeline


class PrepareParams(Section):
    dataset: Literal["mnist5k", "digits", "folder"] = "mnist5k"
    root: str | None = None
    split: Literal["train", "test"] = "train"
    task_a: Annotated[list[NonNegInt], Field(min_length=1)] = [0, 1, 2, 3, 4]
    task_b: Annotated[list[NonNegInt], Field(min_length=1)] = [5, 6, 7, 8, 9]
    resolution: Annotated[int, Field(ge=4, le=1024)] = 16
    max_per_class: PosInt | None = None

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

    pretrained: str | None = None
    revision: str | None = None
    variant: str | None = None
    local_files_only: bool = True
    resolution: Annotated[int, Field(ge=8, le=2048, multiple_of=8)] | None = None
    prompt: Literal["class", "empty"] = "class"
    prompt_template: str = SD_DEFAULT_TEMPLATE
    class_names: list[str] | None = None
    lora: bool = False
    lora_rank: PosInt = 4
    lora_alpha: Annotated[float, Field(gt=0)] | None = None
    lora_targets: Annotated[list[str], Field(min_length=1)] = ["to_k", "to_q", "to_v", "to_out.0"]
    gradient_checkpointing: bool = False
    encode_batch_size: PosInt = 32

    @field_validator("class_names")
    @classmethod
    def _names(cls, v):
        return v if v is None else _unique(v, "a name")

    @model_validator(mode="after")
    def _rules(self):
        if self.prompt == "class" and "{class}" not in self.prompt_template:
            raise RuleError("prompt_template", f"{self.prompt_template!r} has no {{class}} placeholder; class "
                               f"prompts need one (for example {SD_DEFAULT_TEMPLATE!r}) or use prompt: empty")
        if self.revision is not None and self.pretrained is None:
            raise RuleError("revision", "set without pretrained; give pretrained: a hub id or local folder")
        return self


class ModelParams(Section):
    family: Literal["ddpm", "sd"] = "ddpm"
    block_out_channels: Annotated[list[Annotated[int, Field(ge=8)]], Field(min_length=1)] = [32, 64, 64]
    layers_per_block: PosInt = 1
    attention: bool = False
    norm_num_groups: PosInt = 8
    sd: SDParams = SDParams()

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

    steps: PosInt = 800
    batch_size: PosInt = 64
    lr: Annotated[float, Field(gt=0)] = 2e-4
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    grad_clip: Annotated[float, Field(ge=0)] = 1.0
    lr_schedule: Literal["constant", "constant_with_warmup", "linear", "cosine"] = "constant"
    lr_warmup_steps: NonNegInt = 0
    ema_decay: Annotated[float, Field(gt=0, lt=1)] | None = None
    grad_accumulation: PosInt = 1
    processes: PosInt = 1  # data parallel: the stage trains as this many processes (hopfield_replay.runtime.data_parallel)
    compile_unet: bool = False  # torch.compile of the noise prediction (same method, other rounding)
    channels_last: bool = False  # channels-last UNet weights and inputs while training (same method, other rounding)

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
        """The settings of ``models.TrainConfig``: all but how the loop runs (processes, compilation, layout)."""
        return self.model_dump(exclude={"processes", "compile_unet", "channels_last"})


class TrainAParams(TrainParams):
    seed: NonNegInt = 0


class ScoresParams(Section):
    """``scores``: every per-sample predictor of forgetting (hopfield_replay.predictors)."""

    form: Literal["inner", "distance"] = "distance"
    beta_rule: Literal["fixed", "median_nn", "snr"] = "median_nn"
    beta: Annotated[float, Field(gt=0)] | None = None
    beta_t: Timestep = 500
    beta_multiples: list[Annotated[float, Field(gt=0)]] = [0.1, 0.3, 3.0, 10.0, 30.0]
    snr_energies: bool = True
    knn_k: Annotated[list[PosInt], Field(min_length=1)] = [1, 10]
    model_timesteps: Annotated[list[Timestep], Field(min_length=1)] = [50, 150, 250, 350, 450, 550, 650, 750, 850, 950]
    noise_seed: Annotated[int, Field(ge=0, lt=2**64)] = 0
    batch_size: PosInt | None = None

    @field_validator("beta_multiples", "knn_k")
    @classmethod
    def _distinct(cls, v):
        return _unique(v, "a value")

    @model_validator(mode="after")
    def _rules(self):
        if self.beta_rule == "fixed" and self.beta is None:
            raise RuleError("beta", "beta_rule 'fixed' needs beta: a number > 0")
        return self


class ForgettingParams(Section):
    timesteps: Annotated[list[Timestep], Field(min_length=1)] = [100, 250, 500, 750]
    noise_seed: Annotated[int, Field(ge=0, lt=2**64)] = 0
    batch_size: PosInt | None = None
    space: Literal["model", "pixel"] = "model"

    @field_validator("timesteps")
    @classmethod
    def _distinct(cls, v):
        return _unique(v, "a timestep")


ARM_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


class SelectParams(Section):
    """``select_replay``: the replay arms. An arm is a registered strategy (energy_high, energy_low, random,
    class_balanced, kcenter, soft, oracle, energy_high_per_class, ...) or ``<predictor>_high`` / ``_low`` /
    ``_high_per_class`` / ``_low_per_class`` for any column of the scores table (replay.parse_arm)."""

    arms: Annotated[list[str], Field(min_length=1)] = ["energy_high", "random", "pixel_mass_high", "oracle",
                                                       "class_balanced", "energy_high_per_class"]
    budgets: Annotated[list[PosInt], Field(min_length=1)] = [250]
    score: str = "energy_a"
    temperature: Annotated[float, Field(gt=0)] = 1.0
    oracle_measure: Literal["absolute", "relative"] = "relative"

    @field_validator("budgets")
    @classmethod
    def _budgets(cls, v):
        return _unique(v, "a budget")

    @field_validator("arms")
    @classmethod
    def _arms(cls, v):
        from ..replay import STRATEGIES, parse_arm

        for arm in v:
            try:
                known = bool(ARM_NAME.match(arm)) and bool(parse_arm(arm, ""))
            except ValueError:
                known = False
            if not known:
                raise ValueError(f"unknown arm {arm!r}; use one of {', '.join(STRATEGIES)} or <predictor>_high / "
                                 "_low / _high_per_class / _low_per_class (a column of the scores table)")
        return _unique(v, "an arm")


class RetrainParams(Section):
    replay_fraction: Annotated[float, Field(ge=0, le=1)] = 0.25


class ReportParams(Section):
    aggregate_t: Literal["forgetting", "all"] = "forgetting"
    bootstrap: Annotated[int, Field(ge=10)] = 1000
    level: Annotated[float, Field(gt=0.5, lt=1)] = 0.95
    deciles: Annotated[int, Field(ge=2)] = 10
    top_frac: Annotated[float, Field(gt=0, lt=1)] = 0.1
    nuisance: list[str] = ["pixel_mass", "recon_error_a"]
    grid: PosInt = 8
    seed: NonNegInt = 0


# ---------------------------------------------------------------------------------------------------------------
# The paper's Hopfield-network experiments


class MHNClosedFormParams(Section):
    """``mhn_closed_form``: the paper geometry (n patterns with overlap c + one orthogonal outlier in d dims) or
    Gaussian clusters, rotated by expm(eps Omega)."""

    geometry: Literal["paper", "clusters"] = "paper"
    n: PosInt = 12
    c: Annotated[float, Field(ge=0, le=1)] = 0.35
    d: Annotated[int, Field(ge=2)] = 50
    beta: Annotated[float, Field(gt=0)] = 8.0
    cluster_sizes: Annotated[list[PosInt], Field(min_length=1)] = [20, 8, 3]
    cluster_spread: Annotated[float, Field(ge=0)] = 0.6
    n_outliers: NonNegInt = 3
    normalize: bool = True
    memory_seed: NonNegInt = 0
    rotations: PosInt = 2000
    eps: Annotated[list[Annotated[float, Field(gt=0, le=10)]], Field(min_length=1)] = [0.05, 0.02]
    seed: NonNegInt = 0
    rotation_chunk: PosInt = 500
    fp_tol: Annotated[float, Field(ge=0)] = 1e-13
    fp_max_iter: PosInt = 10000
    bootstrap: Annotated[int, Field(ge=10)] = 2000
    ci_level: Annotated[float, Field(ge=0.5, le=0.999)] = 0.95
    write_gains: bool = True
    threads: NonNegInt = 1  # torch CPU threads (0: torch's default); 1 is fastest on a busy 2-core machine

    @field_validator("eps")
    @classmethod
    def _eps(cls, v):
        return _unique(v, "a value")

    @model_validator(mode="after")
    def _rules(self):
        if self.geometry == "paper":
            if self.c >= 1.0:
                raise RuleError("c", f"must be < 1 (c = 1 makes all cluster patterns identical), got {self.c}")
            if self.d < self.n + 2:
                raise RuleError("d", f"the paper geometry needs d >= n + 2 = {self.n + 2}, got {self.d}")
        elif sum(self.cluster_sizes) + self.n_outliers < 2:
            raise RuleError("cluster_sizes", "need at least 2 memories in all")
        return self


class MHNTrainedParams(Section):
    """``mhn_trained``: MHN-BM, memories trained by maximum likelihood on task A, then task B with replay."""

    d: Annotated[int, Field(ge=2)] = 16
    beta: Annotated[float, Field(gt=0)] = 16.0
    memories: PosInt = 64
    task_a_clusters: Annotated[list[PosInt], Field(min_length=1)] = [40, 30, 20, 10]
    task_a_outliers: NonNegInt = 12
    task_b: Literal["rotated", "new_clusters"] = "rotated"
    task_b_eps: Annotated[float, Field(ge=0, le=10)] = 0.1
    task_b_clusters: Annotated[list[PosInt], Field(min_length=1)] = [40, 30, 20, 10]
    cluster_spread: Annotated[float, Field(ge=0)] = 0.4
    steps_a: PosInt = 400
    steps_b: PosInt = 200
    lr: Annotated[float, Field(gt=0)] = 0.01
    replay_budget: PosInt = 12
    replay_fraction: Annotated[float, Field(ge=0, le=1)] = 0.1
    arms: Annotated[list[Literal["energy_high", "random", "energy_low", "none"]], Field(min_length=1)] = [
        "energy_high", "random", "energy_low", "none"]
    seeds: Annotated[list[NonNegInt], Field(min_length=1)] = [0, 1, 2, 3, 4]
    deciles: Annotated[int, Field(ge=2)] = 10
    bootstrap: Annotated[int, Field(ge=10)] = 1000
    ci_level: Annotated[float, Field(ge=0.5, le=0.999)] = 0.95
    threads: NonNegInt = 1

    @field_validator("arms", "seeds")
    @classmethod
    def _distinct(cls, v):
        return _unique(v, "a value")

    @model_validator(mode="after")
    def _rules(self):
        n_a = sum(self.task_a_clusters) + self.task_a_outliers
        if self.replay_budget >= n_a:
            raise RuleError("replay_budget", f"must be < the {n_a} task-A samples, got {self.replay_budget}")
        if self.memories > n_a:
            raise RuleError("memories", f"at most the {n_a} task-A samples (they initialise the memories), "
                               f"got {self.memories}")
        if self.deciles > n_a:
            raise RuleError("deciles", f"at most the {n_a} task-A samples, got {self.deciles}")
        return self


class MHNReportParams(Section):
    """``mhn_report``: figure resolution and the bootstrap of the trained network's decile means."""

    dpi: Annotated[int, Field(ge=30, le=600)] = 120
    bootstrap: Annotated[int, Field(ge=10)] = 500
    seed: NonNegInt = 0


# ---------------------------------------------------------------------------------------------------------------
# How runs execute (never changes a result: no table's provenance covers it, no stage lists it in dvc.yaml)


class ExecutionParams(Section):
    """``execution``: training checkpoints (every ``checkpoint_every_steps`` steps or ``checkpoint_every_minutes``
    minutes, whichever comes first, under ``checkpoint_dir``, kept until the run succeeds) and the guard on the
    size of a prepared data file."""

    checkpoint_dir: Annotated[str, Field(min_length=1)] = ".checkpoints"
    checkpoint_every_minutes: Annotated[float, Field(gt=0)] = 10.0
    checkpoint_every_steps: PosInt | None = None
    max_output_gb: Annotated[float, Field(gt=0)] = 4.0


# ---------------------------------------------------------------------------------------------------------------
# The whole file


class Config(Section):
    """All of params.yaml. ``seeds`` are the task-B phase's seeds: one train_b run, one set of seeded replay
    buffers and one run per replay arm for each."""

    device: str = "auto"
    seeds: Annotated[list[NonNegInt], Field(min_length=1)] = [1, 2, 3]
    prepare: PrepareParams = PrepareParams()
    model: ModelParams = ModelParams()
    train_a: TrainAParams = TrainAParams()
    scores: ScoresParams = ScoresParams()
    train_b: TrainParams = TrainParams(steps=300)
    forgetting: ForgettingParams = ForgettingParams()
    select_replay: SelectParams = SelectParams()
    retrain: RetrainParams = RetrainParams()
    report: ReportParams = ReportParams()
    mhn_closed_form: MHNClosedFormParams = MHNClosedFormParams()
    mhn_trained: MHNTrainedParams = MHNTrainedParams()
    mhn_report: MHNReportParams = MHNReportParams()
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
        return _unique(v, "a seed")

    def section(self, name: str) -> dict:
        """One section (or top-level value) as plain data: what a table's provenance hash covers."""
        value = getattr(self, name)
        return value.model_dump(mode="json") if isinstance(value, BaseModel) else value


SECTIONS = tuple(name for name in Config.model_fields)
OPTIONAL_SECTIONS = ("execution",)  # the only section a params file may leave out (it changes no result)
