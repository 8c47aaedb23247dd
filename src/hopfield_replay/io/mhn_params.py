"""The params sections of the paper's Hopfield-network experiments: ``mhn_closed_form``, ``mhn_trained`` and
``mhn_report`` (docs/mhn-experiments.md)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from .sections import NonNegInt, PosInt, RuleError, Section, distinct


class MHNClosedFormParams(Section):
    """``mhn_closed_form``: the paper geometry (n patterns with overlap c + one orthogonal outlier in d dims) or
    Gaussian clusters, rotated by expm(eps Omega)."""

    geometry: Literal["paper", "clusters"]
    n: PosInt
    c: Annotated[float, Field(ge=0, le=1)]
    d: Annotated[int, Field(ge=2)]
    beta: Annotated[float, Field(gt=0)]
    cluster_sizes: Annotated[list[PosInt], Field(min_length=1)]
    cluster_spread: Annotated[float, Field(ge=0)]
    n_outliers: NonNegInt
    normalize: bool
    memory_seed: NonNegInt
    rotations: PosInt
    eps: Annotated[list[Annotated[float, Field(gt=0, le=10)]], Field(min_length=1)]
    seed: NonNegInt
    rotation_chunk: PosInt
    fp_tol: Annotated[float, Field(ge=0)]
    fp_max_iter: PosInt
    bootstrap: Annotated[int, Field(ge=10)]
    ci_level: Annotated[float, Field(ge=0.5, le=0.999)]
    write_gains: bool
    threads: NonNegInt  # torch CPU threads (0: torch's default); 1 is fastest on a busy 2-core machine

    @field_validator("eps")
    @classmethod
    def _eps(cls, v):
        return distinct(v, "a value")

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

    d: Annotated[int, Field(ge=2)]
    beta: Annotated[float, Field(gt=0)]
    memories: PosInt
    task_a_clusters: Annotated[list[PosInt], Field(min_length=1)]
    task_a_outliers: NonNegInt
    task_b: Literal["rotated", "new_clusters"]
    task_b_eps: Annotated[float, Field(ge=0, le=10)]
    task_b_clusters: Annotated[list[PosInt], Field(min_length=1)]
    cluster_spread: Annotated[float, Field(ge=0)]
    steps_a: PosInt
    steps_b: PosInt
    lr: Annotated[float, Field(gt=0)]
    replay_budget: PosInt
    replay_fraction: Annotated[float, Field(ge=0, le=1)]
    arms: Annotated[list[Literal["energy_high", "random", "energy_low", "none"]], Field(min_length=1)]
    seeds: Annotated[list[NonNegInt], Field(min_length=1)]
    deciles: Annotated[int, Field(ge=2)]
    bootstrap: Annotated[int, Field(ge=10)]
    ci_level: Annotated[float, Field(ge=0.5, le=0.999)]
    threads: NonNegInt

    @field_validator("arms", "seeds")
    @classmethod
    def _distinct(cls, v):
        return distinct(v, "a value")

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

    dpi: Annotated[int, Field(ge=30, le=600)]
    bootstrap: Annotated[int, Field(ge=10)]
    seed: NonNegInt
