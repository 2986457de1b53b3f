"""A task distribution for a generalist learned optimizer: many LeakyReLU MLP architectures.

A :class:`TaskMix` describes a family of regression networks: 2 to 5 weight layers of widths 8 to
64 (log-uniform), with or without biases, on gaussian or uniform data, with ``n`` samples no more
than the narrowest teleported layer input allows, so that every teleport is a symmetry of the
loss. From its ``seed`` it draws, deterministically,

* ``held_out`` architectures first: they are never trained on, only evaluated
  (:meth:`TaskMix.held_out_architectures`), and
* ``pool`` training architectures, distinct from the held-out ones
  (:meth:`TaskMix.training_architectures`), to which the run's own ``task`` (the reference, e.g.
  gaussian ``[20, 20, 20, 20]``) is added as the first.

Each task of an architecture is then drawn from its seed as usual
(:func:`metatele.tasks.family.sample_tasks`). A batched engine needs one weight shape per batch,
so meta-training keeps one group of trajectories per training architecture and gives the
meta-steps to the groups in turn (:class:`metatele.meta.mixture.MixtureEngine`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..configs import is_int, require
from .family import DISTRIBUTIONS, TaskConfig


def architecture_key(task: TaskConfig) -> tuple:
    """What makes two regression tasks the same architecture: dims, bias and distribution."""
    return tuple(task.dims), task.bias, task.distribution


@dataclass
class TaskMix:
    """A distribution of regression architectures (see the module).

    Attributes:
        layers: ``[min, max]`` weight layers (inclusive).
        widths: ``[min, max]`` layer widths (inclusive), drawn log-uniformly.
        bias: the bias settings drawn from (``[false, true]``: both, equally likely).
        distributions: the data distributions drawn from.
        pool: training architectures drawn (the run's own task is added to them).
        held_out: architectures drawn first and never trained on (evaluation only).
        seed: the seed of the draw.
        max_samples: an upper bound on ``n`` (samples per task); ``n`` is drawn in
            ``[ceil(limit / 2), limit]`` where ``limit`` is the narrowest teleported layer
            input (+1 with biases), capped at ``max_samples``.
        validate_on: validation during meta-training (``validation.every > 0``) runs on the
            reference task and the first ``validate_on`` drawn training architectures.
    """

    layers: list[int] = field(default_factory=lambda: [2, 5])
    widths: list[int] = field(default_factory=lambda: [8, 64])
    bias: list[bool] = field(default_factory=lambda: [False, True])
    distributions: list[str] = field(default_factory=lambda: ["gaussian", "uniform"])
    pool: int = 12
    held_out: int = 3
    seed: int = 0
    max_samples: int = 32
    validate_on: int = 2

    def __post_init__(self) -> None:
        for name, lo in (("layers", 2), ("widths", 1)):
            v = getattr(self, name)
            require(isinstance(v, (list, tuple)) and len(v) == 2 and all(is_int(x) for x in v) and lo <= v[0] <= v[1],
                    f"mix.{name}", f"must be [min, max] integers with {lo} ≤ min ≤ max, got {v!r}")
            setattr(self, name, [int(x) for x in v])
        require(isinstance(self.bias, (list, tuple)) and len(self.bias) > 0 and all(isinstance(b, bool) for b in self.bias),
                "mix.bias", f"must be a non-empty list of true/false, got {self.bias!r}")
        require(isinstance(self.distributions, (list, tuple)) and len(self.distributions) > 0
                and all(d in DISTRIBUTIONS for d in self.distributions), "mix.distributions",
                f"must be a non-empty list of {DISTRIBUTIONS}, got {self.distributions!r}")
        require(is_int(self.validate_on) and 0 <= self.validate_on <= self.pool, "mix.validate_on",
                f"must be an integer in [0, pool = {self.pool}], got {self.validate_on!r}")
        for name in ("pool", "held_out", "seed", "max_samples"):
            v = getattr(self, name)
            require(is_int(v) and v >= (1 if name in ("pool", "max_samples") else 0), f"mix.{name}",
                    f"must be a {'positive' if name in ('pool', 'max_samples') else 'non-negative'} integer, got {v!r}")

    # -- drawing architectures ----------------------------------------------------------------
    def _draw(self, rng: np.random.Generator) -> TaskConfig:
        L = int(rng.integers(self.layers[0], self.layers[1] + 1))
        lo, hi = math.log(self.widths[0]), math.log(self.widths[1] + 1)
        widths = [min(int(math.exp(rng.uniform(lo, hi))), self.widths[1]) for _ in range(L + 1)]
        bias = bool(self.bias[int(rng.integers(len(self.bias)))])
        distribution = str(self.distributions[int(rng.integers(len(self.distributions)))])
        # every teleported pair's layer input (the data for the first) must be at least n wide
        limit = min(min(widths[: L - 1]) + int(bias), self.max_samples)
        n = int(rng.integers((limit + 1) // 2, limit + 1))
        return TaskConfig(dims=[n, *widths], distribution=distribution, bias=bias)

    def _draws(self, count: int, rng: np.random.Generator, exclude: set) -> list[TaskConfig]:
        out: list[TaskConfig] = []
        for _ in range(1000 * max(count, 1)):
            if len(out) == count:
                return out
            task = self._draw(rng)
            key = architecture_key(task)
            if key not in exclude:
                exclude.add(key)
                out.append(task)
        raise ValueError(f"mix: could not draw {count} distinct architectures from layers {self.layers}, widths "
                         f"{self.widths}; widen the ranges or draw fewer")

    def held_out_architectures(self, reference: TaskConfig | None = None) -> list[TaskConfig]:
        """The ``held_out`` architectures (never trained on), distinct from ``reference``."""
        exclude = {architecture_key(reference)} if reference is not None else set()
        return self._draws(self.held_out, np.random.default_rng([self.seed, 1]), exclude)

    def training_architectures(self, reference: TaskConfig) -> list[TaskConfig]:
        """``reference`` followed by the ``pool`` drawn training architectures; none of them is
        held out (the draw skips the held-out ones and repeats)."""
        exclude = {architecture_key(t) for t in self.held_out_architectures(reference)}
        exclude.add(architecture_key(reference))
        return [reference, *self._draws(self.pool, np.random.default_rng([self.seed, 2]), exclude)]

    def describe(self, reference: TaskConfig) -> dict[str, list[dict]]:
        """Both lists as plain dicts (for manifests and reports)."""
        as_dict = lambda t: {"dims": t.dims, "distribution": t.distribution, "bias": t.bias}  # noqa: E731
        return {"training": [as_dict(t) for t in self.training_architectures(reference)],
                "held_out": [as_dict(t) for t in self.held_out_architectures(reference)]}
