"""Task families: batches of inner problems generated from integer seeds.

A task family is a :class:`TaskFamily` object, registered by name in :data:`FAMILIES`
(``TaskConfig.family`` names it): it validates its configs, samples its tasks and knows their
loss, accuracy and teleport batch, so that the rest of the library asks the family instead of
branching on its name. This module defines the synthetic LeakyReLU regression family
(``regression``); :mod:`metatele.tasks.digits` registers the real-image one (``digits``).

A task is ``(X, Y, W_1..W_L)`` for sizes ``dims = [n, d0, d1, ..., dL]`` (docs/tasks.md):
``X`` is ``[d0, n]``, ``Y`` is ``[dL, n]`` and ``W_i`` is ``[d_i, d_{i-1}]``. Tasks are stacked
along a leading batch dimension ``B``. With ``bias=True`` every layer has a bias, stored as the
last column of an augmented ``[W_i b_i]`` of shape ``[d_i, d_{i-1} + 1]`` (see :mod:`metatele.tasks.mlp`).

Each task is drawn from its own CPU generator seeded with its integer seed, then moved to the
target device, so seed ``s`` yields bit-identical data whether it is sampled alone or inside a
batch of 1000, on any device.

Seeds are split into disjoint ranges: training seeds ``[0, TEST_SEED_OFFSET)`` and test
("unseen") seeds ``[TEST_SEED_OFFSET, 2 * TEST_SEED_OFFSET)``. Meta-training draws only from the
first, the evaluator only from the second, and checkpoints record which training seeds they used.
The last million training seeds, ``[VALIDATION_SEED_OFFSET, TEST_SEED_OFFSET)``, are the
validation seeds: never drawn by meta-training (which starts at ``train_seed_start`` and
consumes a few thousand), used to select configurations without looking at the test seeds.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import torch

from ..configs import check_fields, is_int, require
from .mlp import DataLoss, check_problem, mlp_loss

#: first seed of the test split; training seeds are ``[0, TEST_SEED_OFFSET)``.
TEST_SEED_OFFSET = 1_000_000_000
#: first validation seed (inside the training split, above every seed meta-training draws).
VALIDATION_SEED_OFFSET = TEST_SEED_OFFSET - 1_000_000
DISTRIBUTIONS = ("uniform", "gaussian")


def validate_dims(dims: Sequence[int], field_name: str = "dims") -> list[int]:
    """Check ``dims = [n, d0, ..., dL]`` (at least one weight matrix, all positive integers)."""
    if isinstance(dims, (str, bytes)) or not isinstance(dims, Sequence):
        raise ValueError(f"{field_name} must be a list [n, d0, d1, ..., dL], got {dims!r}")
    dims = list(dims)
    require(
        len(dims) >= 3,
        field_name,
        f"needs at least 3 entries [n, d0, d1] (samples, input width, one layer), got {dims}",
    )
    for i, d in enumerate(dims):
        require(
            is_int(d) and d > 0,
            field_name,
            f"entry {i} must be a positive integer, got {d!r} in {dims}",
        )
    return dims


@dataclass
class TaskConfig:
    """The family of inner problems.

    Attributes:
        dims: ``[n, d0, d1, ..., dL]``; the paper uses ``[20, 20, 20, 20]``.
        distribution: ``"uniform"`` (paper: every entry U[0, 1]) or ``"gaussian"``
            (weights N(0, 1/fan_in), data and targets N(0, 1)).
        bias: every layer has a bias (the paper's network has none). Biases are drawn after the
            weights and data from the same seed (U[0, 1], or N(0, 1/fan_in) for ``gaussian``),
            so a task with biases is the bias-free task of the same seed plus a bias column.
        family: ``"regression"`` (the synthetic tasks of this module) or ``"digits"``
            (scikit-learn's 8×8 digits, ``dims = [n_train, 64, h_1, ..., 10]``, cross-entropy;
            see :mod:`metatele.tasks.digits`, which samples them).
        teleport_batch: digits only: images the group action acts with (the first of each
            task's training images); ``None``: as many as the narrowest teleported layer input
            allows (``d_{m-1}``, + 1 with biases).
        minibatch: digits only: training images per gradient step, a fresh random subset every
            step fixed by the task's seed and the step (``metatele.tasks.digits.MinibatchSampler``);
            ``None``: full batch, all of them.
    """

    dims: list[int] = field(default_factory=lambda: [20, 20, 20, 20])
    distribution: str = "uniform"
    bias: bool = False
    family: str = "regression"
    teleport_batch: int | None = None
    minibatch: int | None = None

    def __post_init__(self) -> None:
        check_fields(self, "task")
        self.dims = validate_dims(self.dims, "task.dims")
        require(
            self.distribution in DISTRIBUTIONS,
            "task.distribution",
            f"must be one of {DISTRIBUTIONS}, got {self.distribution!r}",
        )
        require(isinstance(self.bias, bool), "task.bias", f"must be true or false, got {self.bias!r}")
        require(self.family in FAMILIES, "task.family", f"must be one of {tuple(FAMILIES)}, got {self.family!r}")
        self.kind.validate(self)

    @property
    def kind(self) -> "TaskFamily":
        """The task family object named by ``family`` (:data:`FAMILIES`)."""
        return FAMILIES[self.family]

    @property
    def n_samples(self) -> int:
        return self.dims[0]

    @property
    def teleport_samples(self) -> int:
        """Samples the group action acts with: ``n`` (regression), the teleport batch (digits)."""
        return self.kind.teleport_batch(self) or self.n_samples

    @property
    def widths(self) -> list[int]:
        """``[d0, d1, ..., dL]``."""
        return self.dims[1:]

    @property
    def weight_shapes(self) -> list[tuple[int, int]]:
        """``[(d1, d0), (d2, d1), ...]``; with biases ``[(d1, d0 + 1), (d2, d1 + 1), ...]``."""
        w, b = self.widths, int(self.bias)
        return [(w[i + 1], w[i] + b) for i in range(len(w) - 1)]

    def non_symmetric_pairs(self) -> list[int]:
        """Pairs (0-based) whose layer input cannot have full column rank: ``n > d_{m-1}``
        (``n > d_{m-1} + 1`` with biases). Teleporting those changes the loss."""
        return [m for m in range(self.n_pairs) if self.weight_shapes[m][1] < self.teleport_samples]

    @property
    def n_pairs(self) -> int:
        """Number of teleportable consecutive pairs ``L - 1``."""
        return len(self.weight_shapes) - 1


@dataclass
class TaskBatch:
    """B stacked tasks.

    Attributes:
        X: ``[B, d0, n]``; Y: ``[B, dL, n]``; weights: list of ``[B, d_i, d_{i-1}]``.
        seeds: the integer seed of each task (``None`` for user-built tasks).
    """

    X: torch.Tensor
    Y: torch.Tensor
    weights: list[torch.Tensor]
    seeds: list[int] | None = None

    def __post_init__(self) -> None:
        check_problem(self.weights, self.X, self.Y)

    @property
    def batch_size(self) -> int:
        return self.X.shape[0]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "TaskBatch":
        return TaskBatch(
            self.X.to(device=device, dtype=dtype),
            self.Y.to(device=device, dtype=dtype),
            [w.to(device=device, dtype=dtype) for w in self.weights],
            self.seeds,
        )

    def check_finite(self) -> None:
        """Raise ``ValueError`` naming the first tensor containing NaN or inf (host sync)."""
        for name, t in [("X", self.X), ("Y", self.Y)] + [
            (f"weights[{i}]", w) for i, w in enumerate(self.weights)
        ]:
            if not bool(torch.isfinite(t).all()):
                bad = (~torch.isfinite(t)).flatten(1).any(1).nonzero().flatten().tolist()
                raise ValueError(f"{name} contains NaN or inf (tasks {bad[:10]})")


def _sample_one(config: TaskConfig, seed: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor, list[torch.Tensor]]:
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    n, widths = config.n_samples, config.widths
    shapes = [(widths[i + 1], widths[i]) for i in range(len(widths) - 1)]  # without the bias column
    if config.distribution == "uniform":
        weights = [torch.rand(s, generator=gen, dtype=torch.float64) for s in shapes]
        X = torch.rand(widths[0], n, generator=gen, dtype=torch.float64)
        Y = torch.rand(widths[-1], n, generator=gen, dtype=torch.float64)
    else:
        weights = [torch.randn(s, generator=gen, dtype=torch.float64) / math.sqrt(s[1]) for s in shapes]
        X = torch.randn(widths[0], n, generator=gen, dtype=torch.float64)
        Y = torch.randn(widths[-1], n, generator=gen, dtype=torch.float64)
    if config.bias:  # drawn last, so the weights and data equal the bias-free task's
        if config.distribution == "uniform":
            biases = [torch.rand(s[0], 1, generator=gen, dtype=torch.float64) for s in shapes]
        else:
            biases = [torch.randn(s[0], 1, generator=gen, dtype=torch.float64) / math.sqrt(s[1]) for s in shapes]
        weights = [torch.cat([w, b], dim=1) for w, b in zip(weights, biases)]
    return X.to(dtype), Y.to(dtype), [w.to(dtype) for w in weights]


def as_seed_list(seeds: Iterable[int]) -> list[int]:
    """The seeds as a list of ints; ``ValueError`` when empty or outside ``[0, 2 · TEST_SEED_OFFSET)``."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: need at least one task")
    for s in seeds:
        if not 0 <= s < 2 * TEST_SEED_OFFSET:
            raise ValueError(f"seed {s} is outside [0, {2 * TEST_SEED_OFFSET})")
    return seeds


def sample_tasks(
    config: TaskConfig,
    seeds: Iterable[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> TaskBatch:
    """Draw one task of ``config``'s family per seed and stack them (a :class:`TaskBatch`, or the
    family's subclass of it: a digits batch also holds validation images).

    Every family draws a task from its seed alone (not from the batch or the device).
    """
    return config.kind.sample(config, seeds, device=device, dtype=dtype)


def sample_regression(
    config: TaskConfig,
    seeds: Iterable[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> TaskBatch:
    """Draw one regression task per seed and stack them (:func:`sample_tasks` of ``regression``).

    Data are drawn in float64 on the CPU from ``torch.Generator().manual_seed(seed)`` and then
    cast and moved, so a task depends only on its seed (not on the batch or the device).
    """
    seeds = as_seed_list(seeds)
    parts = [_sample_one(config, s, dtype) for s in seeds]
    X = torch.stack([p[0] for p in parts]).to(device)
    Y = torch.stack([p[1] for p in parts]).to(device)
    weights = [torch.stack([p[2][i] for p in parts]).to(device) for i in range(len(parts[0][2]))]
    return TaskBatch(X, Y, weights, seeds)


def training_seeds(count: int, start: int = 0) -> range:
    """``count`` consecutive training seeds starting at ``start`` (inside the training split)."""
    if start < 0 or start + count > TEST_SEED_OFFSET:
        raise ValueError(f"training seeds must lie in [0, {TEST_SEED_OFFSET}), got [{start}, {start + count})")
    return range(start, start + count)


def unseen_seeds(count: int, start: int = 0) -> range:
    """``count`` unseen test seeds: ``TEST_SEED_OFFSET + start + [0, count)``."""
    if start < 0 or start + count > TEST_SEED_OFFSET:
        raise ValueError(f"test seed offsets must lie in [0, {TEST_SEED_OFFSET}), got [{start}, {start + count})")
    return range(TEST_SEED_OFFSET + start, TEST_SEED_OFFSET + start + count)


def validation_seeds(count: int, start: int = 0) -> range:
    """``count`` validation seeds: ``VALIDATION_SEED_OFFSET + start + [0, count)``.

    Training-split tasks that meta-training never draws; select configurations on these.
    """
    span = TEST_SEED_OFFSET - VALIDATION_SEED_OFFSET
    if start < 0 or start + count > span:
        raise ValueError(f"validation seed offsets must lie in [0, {span}), got [{start}, {start + count})")
    return range(VALIDATION_SEED_OFFSET + start, VALIDATION_SEED_OFFSET + start + count)


def is_test_seed(seed: int) -> bool:
    return TEST_SEED_OFFSET <= seed < 2 * TEST_SEED_OFFSET


def is_validation_seed(seed: int) -> bool:
    return VALIDATION_SEED_OFFSET <= seed < TEST_SEED_OFFSET


class TaskFamily:
    """What a task family knows about its tasks; one instance per family in :data:`FAMILIES`.

    Attributes:
        name: the ``TaskConfig.family`` that names it.
        sample: ``(config, seeds, device=None, dtype=torch.float32) -> TaskBatch``: one task per
            seed, stacked (what :func:`sample_tasks` returns; a family may return a subclass).
        loss: the tasks' loss ``(weights, X, Y) -> [B]``.
        accuracy: the tasks' accuracy ``(weights, X, Y) -> [B]`` (``None``: not a classification).
        has_validation: its tasks carry validation data (``X_val``, ``Y_val``), so the
            ``validation`` meta-objective and the evaluator's validation metrics apply.
        scale_targets: task augmentation rescales the targets too (regression values, not labels).
    """

    name: str = ""
    sample: Callable[..., TaskBatch]
    loss: DataLoss = staticmethod(mlp_loss)
    accuracy: DataLoss | None = None
    has_validation: bool = False
    scale_targets: bool = True

    def validate(self, config: TaskConfig) -> None:
        """Raise :class:`~metatele.configs.ConfigError` naming the field of ``config`` that this
        family cannot run. The options of another family must be unset."""
        require(config.teleport_batch is None, "task.teleport_batch",
                f"applies to family 'digits' only, got {config.teleport_batch!r}")
        require(config.minibatch is None, "task.minibatch",
                f"applies to family 'digits' only ({self.name} steps are full batch), got {config.minibatch!r}")

    def teleport_batch(self, config: TaskConfig) -> int | None:
        """``k`` when the group action acts with the first ``k`` samples only (``X[..., :k]``);
        ``None``: with all of them."""
        return None

    def teleport_data(self, config: TaskConfig, X: torch.Tensor) -> torch.Tensor:
        """The samples the group action acts with: ``X`` ``[B, d0, n]`` or its first ``k`` columns."""
        k = self.teleport_batch(config)
        return X if k is None else X[..., :k]

    def __repr__(self) -> str:
        return f"<task family {self.name!r}>"


class RegressionFamily(TaskFamily):
    """Synthetic LeakyReLU regression (the paper's tasks): squared error, full batch."""

    name = "regression"
    sample = staticmethod(sample_regression)


#: task family name → its :class:`TaskFamily` (``digits`` is added by :mod:`metatele.tasks.digits`,
#: which the package ``metatele.tasks`` imports)
FAMILIES: dict[str, TaskFamily] = {}


def register_family(family: TaskFamily) -> TaskFamily:
    """Add ``family`` to :data:`FAMILIES` under its name (an error if the name is taken)."""
    if family.name in FAMILIES:
        raise ValueError(f"task family {family.name!r} is already registered")
    FAMILIES[family.name] = family
    return family


register_family(RegressionFamily())
