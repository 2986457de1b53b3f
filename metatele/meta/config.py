"""The meta-training configuration (SPEC §4): one dataclass, defaults = the paper's values.

The same object is read from YAML (``experiments/configs/*.yaml``), overridden from the command
line (``--set key=value``), saved inside checkpoints and sent to wandb as ``config``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..configs import ConfigError, from_dict, require, to_dict
from ..optimizers.learned import LearnedConfig
from ..tasks.family import VALIDATION_SEED_OFFSET, TaskConfig

META_LOSSES = ("sum", "mean_log")
#: what the meta-loss sums: the training loss of the inner problem, or (digits) its validation loss
META_OBJECTIVES = ("train", "validation")
TRUNCATIONS = ("fixed", "log_uniform")
DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass
class MetaTrainConfig:
    """Everything a meta-training run needs.

    Attributes:
        task: the inner problems (dims, distribution).
        learned: the variant and its LSTMs.
        trajectories: training trajectories (each starts from a fresh training seed; paper: 700
            for update+tele, 600 for update, 30 for lr+tele).
        steps: inner steps per trajectory (paper: 100, or 300 for lr+tele).
        unroll: truncation length K (paper: 10).
        truncation: ``fixed`` (every unroll has K steps) or ``log_uniform`` (each unroll's
            length drawn log-uniformly in ``[unroll, unroll_max]``).
        unroll_max: upper bound of the log-uniform truncation schedule.
        batch_size: B trajectories advanced together.
        lr_update, lr_teleport: Adam rates of m1 and m2 (paper: 1e-3, 1e-4).
        meta_loss: ``sum`` of inner losses over the unroll (paper) or ``mean_log`` (mean of
            log-losses).
        normalize: divide every task's losses by its loss at the start of its trajectory.
        second_order: differentiate through the gradient the LSTMs read (``create_graph``).
        stagger: spread the first trajectories' start steps so that the batch is not in lockstep.
        grad_clip: clip the meta-gradient norm (``None``: no clipping).
        diverge_patience: stop after this many consecutive meta-steps in which every
            trajectory diverged.
        seed: seed of the meta-parameter initialisation (and anything else random).
        train_seed_start: first training-task seed; trajectory i uses ``train_seed_start + i``.
        device: ``auto`` (CUDA when present), ``cpu``, ``cuda``, ``cuda:1``...
        dtype: ``float32`` or ``float64``.
        log_every: meta-steps between host reads of the metrics (and progress updates).
        meta_objective: ``train`` (the inner training loss) or ``validation`` (digits: the loss
            on each task's validation images, i.e. learning to teleport for generalization).
    """

    task: TaskConfig = field(default_factory=TaskConfig)
    learned: LearnedConfig = field(default_factory=LearnedConfig)
    trajectories: int = 700
    steps: int = 100
    unroll: int = 10
    truncation: str = "fixed"
    unroll_max: int = 100
    batch_size: int = 100
    lr_update: float = 1e-3
    lr_teleport: float = 1e-4
    meta_loss: str = "sum"
    normalize: bool = False
    second_order: bool = False
    stagger: bool = False
    grad_clip: float | None = None
    diverge_patience: int = 3
    seed: int = 0
    train_seed_start: int = 0
    device: str = "auto"
    dtype: str = "float32"
    log_every: int = 1
    meta_objective: str = "train"

    def __post_init__(self) -> None:
        if isinstance(self.task, dict):
            self.task = from_dict(TaskConfig, self.task, "task")
        if isinstance(self.learned, dict):
            self.learned = from_dict(LearnedConfig, self.learned, "learned")
        for name in ("trajectories", "steps", "unroll", "batch_size", "unroll_max", "log_every", "diverge_patience"):
            v = getattr(self, name)
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name,
                    f"must be a positive integer, got {v!r}")
        require(self.truncation in TRUNCATIONS, "truncation", f"must be one of {TRUNCATIONS}, got {self.truncation!r}")
        require(self.unroll_max >= self.unroll, "unroll_max", f"must be ≥ unroll ({self.unroll}), got {self.unroll_max}")
        require(self.lr_update > 0, "lr_update", f"must be > 0, got {self.lr_update}")
        require(self.lr_teleport > 0, "lr_teleport", f"must be > 0, got {self.lr_teleport}")
        require(self.meta_loss in META_LOSSES, "meta_loss", f"must be one of {META_LOSSES}, got {self.meta_loss!r}")
        require(self.grad_clip is None or self.grad_clip > 0, "grad_clip", f"must be > 0 or null, got {self.grad_clip}")
        require(self.dtype in DTYPES, "dtype", f"must be one of {tuple(DTYPES)}, got {self.dtype!r}")
        require(isinstance(self.seed, int) and self.seed >= 0, "seed", f"must be a non-negative integer, got {self.seed!r}")
        require(0 <= self.train_seed_start < VALIDATION_SEED_OFFSET, "train_seed_start",
                f"must lie in the training split below the validation seeds, [0, {VALIDATION_SEED_OFFSET}), "
                f"got {self.train_seed_start}")
        require(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "device",
                f"must be auto, cpu, cuda[:i] or mps, got {self.device!r}")
        require(self.meta_objective in META_OBJECTIVES, "meta_objective",
                f"must be one of {META_OBJECTIVES}, got {self.meta_objective!r}")
        require(self.meta_objective == "train" or self.task.family == "digits", "meta_objective",
                f"'validation' needs a task family with validation data (digits), got {self.task.family!r}")
        bad = self.task.non_symmetric_pairs()
        require(not (self.learned.uses_teleport and bad), "task.dims",
                f"variant {self.learned.variant!r} teleports, but pairs {bad} have layer inputs that cannot "
                f"hold n = {self.task.n_samples} samples (need n ≤ d_(m-1){' + 1 with biases' if self.task.bias else ''}"
                f"; dims {self.task.dims}): the group action would not be a symmetry of the loss")
        if self.learned.variant == "tele":
            require(not self.stagger, "stagger",
                    "the 'tele' variant runs its hand-designed base optimizer in lock-step; set stagger: false")
            require(self.truncation == "fixed", "truncation", "the 'tele' variant supports only fixed truncation")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def meta_steps(self) -> int:
        """Meta-steps needed to run ``trajectories × steps`` trajectory-steps with B × K per step."""
        B = min(self.batch_size, self.trajectories)
        total = self.trajectories * self.steps
        return -(-total // (B * self.unroll))

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "MetaTrainConfig":
        return from_dict(cls, data)


def load_config(path: str, overrides: list[str] | None = None) -> MetaTrainConfig:
    """Read a YAML config file, apply ``key=value`` overrides, validate."""
    from ..configs import apply_overrides, load_yaml_mapping

    data = load_yaml_mapping(path, "config")
    return MetaTrainConfig.from_dict(apply_overrides(data, overrides or []))


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available on this machine")
    return dev
