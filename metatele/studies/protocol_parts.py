"""The parts of a benchmark protocol beyond settings, methods and ablations: transfer without
retraining (:class:`Transfer`), declared targets (:class:`Target`), the pairs of the "Does learning
to teleport help?" section (:class:`HelpPair`), and the names of per-horizon tuned baselines.

See :class:`metatele.studies.protocol.BenchmarkProtocol`, which holds them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..configs import ConfigError, from_dict, is_int, require
from ..tasks.family import TaskConfig


def parse_named(cls: type, data: Any, where: str) -> Any:
    """``from_dict`` whose errors name where in the protocol they come from."""
    try:
        return from_dict(cls, data, where)
    except ConfigError as e:
        raise ConfigError(str(e) if where in str(e) else f"{where}: {e}") from None
    except TypeError as e:
        raise ConfigError(f"{where}: {e}") from None


def horizon_name(name: str, step: int | str) -> str:
    """The name of ``name`` tuned for ``step`` steps: ``adam(tuned)`` → ``adam(tuned@300)``,
    ``adam`` → ``adam@300`` (``step="*"`` gives the pattern ``adam(tuned@*)``)."""
    return f"{name[:-1]}@{step})" if name.endswith(")") else f"{name}@{step}"


def at_horizon(name: str, step: int) -> str:
    """``name`` at reported step ``step``: ``adam(tuned@*)`` → ``adam(tuned@300)``; other names unchanged."""
    return name.replace("@*", f"@{step}")


def task_label(task: TaskConfig) -> str:
    """How a report names a task: ``gaussian [20, 20, 20, 20]``, ``uniform [4, 6, 6, 6] with biases``,
    ``digits [1000, 64, 32, 32, 10] with biases`` (a family other than regression by its name)."""
    kind = task.distribution if task.family == "regression" else task.family
    return f"{kind} {task.dims}{' with biases' if task.bias else ''}"


@dataclass
class TransferTarget:
    """A task that the checkpoints of :attr:`Transfer.setting` are evaluated on, without retraining."""

    task: TaskConfig = field(default_factory=TaskConfig)
    label: str = ""

    def __post_init__(self) -> None:
        if isinstance(self.task, dict):
            self.task = from_dict(TaskConfig, self.task, "task")
        self.label = self.label or task_label(self.task)


@dataclass
class Transfer:
    """Transfer without retraining: the learned methods' checkpoints of ``setting`` on other tasks.

    Attributes:
        setting: the setting whose checkpoints are evaluated.
        targets: name → :class:`TransferTarget`; each is a report section ``transfer-<name>``,
            with the protocol's baselines tuned on that task and the same comparisons.
        methods: the learned methods to transfer (``None``: all). A ``paper``-architecture method
            runs only on its own network sizes; on other sizes it is skipped, with the reason.
    """

    setting: str = ""
    targets: dict[str, Any] = field(default_factory=dict)
    methods: list[str] | None = None

    def __post_init__(self) -> None:
        self.targets = {k: v if isinstance(v, TransferTarget) else parse_named(TransferTarget, v, f"transfer.targets.{k}")
                        for k, v in (self.targets or {}).items()}
        require(bool(self.targets), "transfer.targets", "name at least one target task")


TARGET_RULES = ("ci_below", "no_worse", "diverged_at_most")


@dataclass
class Target:
    """One declared target, checked by the report in every section that has its methods.

    Attributes:
        name: what the report calls it.
        a, b: method names (``b`` may be a ``@*`` pattern; ``diverged_at_most`` uses only ``a``).
        steps: the steps it is checked at (each must be met).
        rule: ``ci_below`` (a's 95% CI wholly below b's), ``no_worse`` (a not significantly
            higher than b, or both means at or below ``floor``) or ``diverged_at_most`` (the
            fraction of test seeds on which ``a`` diverged by the step is ≤ ``at_most``).
        at_most: the largest diverged fraction of ``diverged_at_most``.
        floor: the float32 floor of ``no_worse``, in log10 loss.
        sections: the sections it is checked in (``None``: every setting).
    """

    name: str = ""
    a: str = ""
    b: str | None = None
    steps: list[int] = field(default_factory=list)
    rule: str = "ci_below"
    at_most: float = 0.0
    floor: float = -7.0
    sections: list[str] | None = None

    def __post_init__(self) -> None:
        require(self.rule in TARGET_RULES, f"targets.{self.name}.rule", f"must be one of {TARGET_RULES}, got {self.rule!r}")
        require(bool(self.steps) and all(is_int(s) and s >= 0 for s in self.steps),
                f"targets.{self.name}.steps", f"must be a non-empty list of steps, got {self.steps!r}")
        require(self.rule == "diverged_at_most" or bool(self.b), f"targets.{self.name}.b", f"rule {self.rule} needs b")
        require(0 <= self.at_most <= 1, f"targets.{self.name}.at_most", f"must be a fraction in [0, 1], got {self.at_most}")
        self.name = self.name or f"{self.a} {self.rule} {self.b or ''}".strip()


@dataclass
class Speedup:
    """The speed-up rows of the report (:func:`metatele.studies.aggregate.speedups`): the step at
    which method ``a`` first reaches the loss the best of ``baselines`` reaches at each step of
    ``at`` (``@*`` patterns: the baseline tuned for that step)."""

    a: str = ""
    baselines: list[str] = field(default_factory=list)
    at: list[int] = field(default_factory=lambda: [100, 300, 1000])

    def __post_init__(self) -> None:
        require(isinstance(self.baselines, list) and len(self.baselines) > 0, "speedup.baselines",
                f"must be a non-empty list of baselines, got {self.baselines!r}")
        require(isinstance(self.at, list) and len(self.at) > 0 and all(isinstance(h, int) and h >= 1 for h in self.at),
                "speedup.at", f"must be a non-empty list of positive steps, got {self.at!r}")


@dataclass
class HelpPair:
    """One comparison of the generated "Does learning to teleport help?" section: ``a`` (with a
    learned teleport) against ``b`` (the same without it; may be a ``@*`` pattern)."""

    a: str = ""
    b: str = ""
    what: str = ""

    def __post_init__(self) -> None:
        self.what = self.what or f"{self.a} against {self.b}"
