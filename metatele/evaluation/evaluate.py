"""The evaluator: run any inner optimizer on unseen tasks, record curves, compute statistics.

A *method* is anything with a ``name`` and ``start(X, Y, weights) -> stepper`` whose
``stepper.step(weights)`` returns ``(new_weights, loss [B], grad_norm_sq [B])``, the loss and the
squared gradient norm being measured at the weights passed in. :class:`LearnedOptimizer` is one;
:class:`BaselineMethod` wraps a hand-designed optimizer. All seeds run as one batch.

A task whose loss becomes non-finite or exceeds :data:`DIVERGED_LOSS` is *diverged* from that step
on: its loss is stored as ``inf``, it is left out of the log-loss statistics (``metatele.evaluation.stats``)
and counted separately.
"""
from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Protocol, Sequence

import numpy as np
import torch

from ..optimizers.baselines import BaselineConfig, HandDesigned
from ..configs import to_dict
from ..storage.jsonable import to_json
from ..tasks.digits import MinibatchSampler, minibatch_sampler
from ..tasks.mlp import DataLoss, grad_norm_sq, loss_and_grads
from ..tasks.family import TaskConfig, is_test_seed, is_validation_seed, sample_tasks

#: a loss above this (or non-finite) marks a task as diverged from that step on.
DIVERGED_LOSS = 1e30
#: floor applied before ``log10`` of a loss or squared gradient norm, so that an exact zero stays finite.
LOG_FLOOR = 1e-300


class Stepper(Protocol):
    """Advances B tasks: ``step(weights) -> (new_weights, loss [B], grad_norm_sq [B])`` at ``weights``."""

    def step(self, weights: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]: ...


class Method(Protocol):
    """An inner optimizer the evaluator can run: a ``name`` and ``start(X, Y, weights) -> Stepper``.

    On a digits task with ``TaskConfig.minibatch`` the evaluator calls
    ``start(X, Y, weights, minibatches=sampler)`` instead, and step ``t`` of the stepper takes its
    gradient on ``sampler.select(X, Y, t)`` (:class:`~metatele.tasks.digits.MinibatchSampler`).
    """

    name: str

    def start(self, X: torch.Tensor, Y: torch.Tensor, weights: Sequence[torch.Tensor]) -> Stepper: ...


class BaselineMethod:
    """A hand-designed optimizer as an evaluator method.

    Args:
        config: the optimizer and its hyper-parameters.
        name: label in tables and figures (default: ``config.label``, e.g. ``gd``).
        task: the task family, for its loss and teleport batch (``None``: :func:`evaluate` builds
            it for the task it runs on; :meth:`start` on its own then steps on the squared error).
    """

    def __init__(self, config: BaselineConfig, name: str | None = None, task: TaskConfig | None = None) -> None:
        self.config = config
        self.name = name or config.label
        self._use(task)

    def _use(self, task: TaskConfig | None) -> None:
        self.task = task
        self.loss_fn: DataLoss | None = task.kind.loss if task is not None else None
        self.teleport_samples = task.kind.teleport_batch(task) if task is not None else None

    def for_task(self, task: TaskConfig) -> "BaselineMethod":
        """A copy (of the same class, with the same attributes) that steps with ``task``'s loss and
        teleport batch."""
        out = copy.copy(self)
        out._use(task)
        return out

    def start(self, X: torch.Tensor, Y: torch.Tensor, weights: Sequence[torch.Tensor],
              minibatches: MinibatchSampler | None = None) -> HandDesigned:
        """A fresh :class:`HandDesigned` on the tasks ``(X, Y)`` starting at ``weights`` (its
        gradients on the minibatches of ``minibatches``, if any)."""
        return HandDesigned(self.config, X, Y, weights, loss_fn=self.loss_fn, teleport_samples=self.teleport_samples,
                            minibatches=minibatches)


@dataclass
class Curves:
    """Per-step measurements of one method on K tasks (host arrays).

    Attributes:
        name: the method's label.
        seeds: the K task seeds, in column order.
        loss: ``[steps + 1, K]``; row ``t`` is the loss at ``W_t`` (``inf`` once diverged), on the
            whole training set also when the steps take minibatch gradients.
        grad_sq: ``[steps + 1, K]``; squared gradient norm ``‖∇L(W_t)‖²`` of that loss (``inf``
            once diverged).
        time: ``[steps + 1]``; cumulative wall-clock seconds of the whole batch after ``t`` steps
            (``time[0] = 0``).
        task: the task family (as a dict).
        info: what was run (e.g. the method's config as a dict), device and dtype.
        overlap_warning: set when the seeds were allowed to overlap training / non-test seeds.
        metrics: further per-step measurements ``[steps + 1, K]`` by name; digits tasks record
            ``val_loss`` and ``val_accuracy`` (``inf`` and ``nan`` once diverged); empty otherwise.
    """

    name: str
    seeds: list[int]
    loss: np.ndarray
    grad_sq: np.ndarray
    time: np.ndarray
    task: dict[str, Any] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)
    overlap_warning: str | None = None
    metrics: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def steps(self) -> int:
        """Number of inner steps (rows − 1)."""
        return self.loss.shape[0] - 1

    @property
    def diverged(self) -> np.ndarray:
        """``[steps + 1, K]`` bool: task diverged at or before step ``t``."""
        return ~np.isfinite(self.loss)

    @property
    def log_loss(self) -> np.ndarray:
        """``log10`` of the loss, ``[steps + 1, K]`` (``inf`` where diverged)."""
        return np.log10(np.maximum(self.loss, LOG_FLOOR))

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict; non-finite numbers (diverged entries) become ``None``."""
        out = {
            "name": self.name, "seeds": list(self.seeds),
            "loss": _json_array(self.loss), "grad_sq": _json_array(self.grad_sq),
            "time": _json_array(self.time), "task": self.task, "info": self.info,
            "overlap_warning": self.overlap_warning,
        }
        if self.metrics:  # only tasks with validation data have them
            out["metrics"] = {k: _json_array(v) for k, v in self.metrics.items()}
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Curves":
        """Inverse of :meth:`to_dict` (``None`` entries come back as ``inf``)."""
        arr = lambda v: np.array([[np.inf if x is None else x for x in row] for row in v], dtype=np.float64)  # noqa: E731
        return cls(
            name=data["name"], seeds=[int(s) for s in data["seeds"]],
            loss=arr(data["loss"]), grad_sq=arr(data["grad_sq"]),
            time=np.array([np.inf if x is None else x for x in data["time"]], dtype=np.float64),
            task=dict(data.get("task") or {}), info=dict(data.get("info") or {}),
            overlap_warning=data.get("overlap_warning"),
            metrics={k: arr(v) for k, v in (data.get("metrics") or {}).items()},
        )


def _json_array(a: np.ndarray) -> list:
    return to_json(np.asarray(a, dtype=np.float64).tolist())


# -- seeds ------------------------------------------------------------------------------------
def check_seeds(
    seeds: Iterable[int], train_seeds: Iterable[int] | None = None, allow_overlap: bool = False
) -> tuple[list[int], str | None]:
    """Validate evaluation seeds; return ``(seeds, overlap_warning or None)``.

    Raises ``ValueError`` when seeds are empty or repeated, and, unless ``allow_overlap``, when a
    seed is neither a test seed (:func:`~metatele.tasks.family.is_test_seed`) nor a validation seed
    (:func:`~metatele.tasks.family.is_validation_seed`, for selecting configurations) or lies in
    ``train_seeds``.
    With ``allow_overlap`` the same findings become a ``UserWarning`` and a returned message.
    """
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: need at least one evaluation seed")
    if len(set(seeds)) != len(seeds):
        dup = sorted({s for s in seeds if seeds.count(s) > 1})
        raise ValueError(f"seeds contain duplicates {dup[:10]}: each task must be counted once")
    problems = []
    if train_seeds is not None:
        pool = train_seeds if isinstance(train_seeds, (range, set, frozenset)) else set(int(s) for s in train_seeds)
        overlap = [s for s in seeds if s in pool]
        if overlap:
            problems.append(f"{len(overlap)} of {len(seeds)} evaluation seeds were used in training "
                            f"(e.g. {overlap[:5]})")
    not_test = [s for s in seeds if not (is_test_seed(s) or is_validation_seed(s))]
    if not_test:
        problems.append(f"{len(not_test)} of {len(seeds)} evaluation seeds are neither test nor validation seeds "
                        f"(e.g. {not_test[:5]}; use metatele.tasks.family.unseen_seeds or validation_seeds)")
    if not problems:
        return seeds, None
    message = "; ".join(problems)
    if not allow_overlap:
        raise ValueError(f"refusing to evaluate: {message}. Pass allow_overlap=True to override "
                         "(the results are then not on unseen initializations).")
    note = f"NOT unseen initializations: {message}"
    warnings.warn(note, UserWarning, stacklevel=3)
    return seeds, note


# -- the evaluator ----------------------------------------------------------------------------
def mark_diverged(loss: torch.Tensor) -> torch.Tensor:
    """Losses ``[T + 1, B]`` with ``inf`` from each task's first non-finite or above
    :data:`DIVERGED_LOSS` entry on (no host sync)."""
    bad = ~torch.isfinite(loss) | (loss > DIVERGED_LOSS)
    bad = torch.cummax(bad.to(torch.uint8), dim=0).values.bool()
    return torch.where(bad, torch.full_like(loss, math.inf), loss)


class _Clock:
    """Cumulative seconds of the steps. CPU: ``perf_counter``. CUDA: events read at the end (no
    per-step sync), or ``perf_counter`` after a synchronize when ``sync=True``.

    :meth:`mark` ends a step (and starts the next one there); :meth:`restart` starts the next step
    now instead, so that what ran since the mark (the evaluator's measurements) is off the clock."""

    def __init__(self, device: torch.device, sync: bool) -> None:
        self.events = device.type == "cuda" and not sync
        self.sync = device.type == "cuda" and sync
        self.starts: list[Any] = [self._now()]
        self.ends: list[Any] = []

    def _now(self) -> Any:
        if self.events:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        if self.sync:
            torch.cuda.synchronize()
        return time.perf_counter()

    def mark(self) -> None:
        now = self._now()
        self.ends.append(now)
        self.starts.append(now)

    def restart(self) -> None:
        self.starts[-1] = self._now()

    def seconds(self) -> np.ndarray:
        if self.events:
            torch.cuda.synchronize()
            spans = [a.elapsed_time(b) / 1000.0 for a, b in zip(self.starts, self.ends)]
        else:
            spans = [b - a for a, b in zip(self.starts, self.ends)]
        return np.concatenate([[0.0], np.cumsum(spans)])


def _describe(method: Any) -> dict[str, Any]:
    config = getattr(method, "config", None)
    try:
        return {"config": to_dict(config)} if config is not None else {}
    except Exception:  # a config that is not a dataclass: keep its repr
        return {"config": repr(config)}


def _check_module_placement(method: Any, device: torch.device, dtype: torch.dtype) -> None:
    params = list(method.parameters()) if isinstance(method, torch.nn.Module) else []
    if params and (params[0].dtype != dtype or params[0].device.type != device.type):
        raise ValueError(f"method {method.name!r} has parameters of dtype {params[0].dtype} on "
                         f"{params[0].device}, but the tasks are {dtype} on {device}; move the method "
                         "(e.g. method.to(device, dtype)) or pass matching device/dtype")


def evaluate(
    method: Method | BaselineConfig,
    task: TaskConfig,
    seeds: Iterable[int],
    steps: int,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    train_seeds: Iterable[int] | None = None,
    allow_overlap: bool = False,
    sync_timing: bool = False,
) -> Curves:
    """Run ``method`` for ``steps`` steps on the tasks of ``seeds`` (one batch) and record curves.

    Args:
        method: a method (``name``, ``start``) or a :class:`BaselineConfig`; a :class:`BaselineMethod`
            built without a task steps with ``task``'s loss and teleport batch.
        task: the task family.
        seeds: test seeds (see :func:`check_seeds` for what is refused).
        steps: inner steps; the curves have ``steps + 1`` rows (the last is measured after the
            final step).
        device, dtype: where the tasks live (a learned method must already be there).
        train_seeds: seeds the method was trained (or tuned) on; defaults to the method's
            ``train_seeds`` attribute when it has one. Overlap is refused unless ``allow_overlap``.
        allow_overlap: evaluate anyway; the result carries ``overlap_warning``.
        sync_timing: on CUDA, synchronize after every step and use host time instead of CUDA
            events (measures host overhead too, at the cost of one sync per step).

    With ``task.minibatch`` (digits) every step's gradient is taken on that step's minibatch
    (:func:`~metatele.tasks.digits.minibatch_sampler`), while ``loss`` and ``grad_sq`` record the
    full training loss and its gradient at every ``W_t``. Those and a digits task's validation
    metrics are measured right after each step, off the clock (``time`` counts the steps only),
    and no step's weights are kept: memory does not grow with ``steps``. (A full-batch run records the steps' own
    losses, so where a hand-designed optimizer teleports before step ``t``, its row ``t`` is the
    loss just after the teleport, which on digits changes the loss off the teleport batch.)

    Returns:
        :class:`Curves` with ``loss``, ``grad_sq`` ``[steps + 1, K]`` and ``time`` ``[steps + 1]``.
    """
    if isinstance(method, BaselineConfig):
        method = BaselineMethod(method, task=task)
    elif isinstance(method, BaselineMethod) and method.task is None:  # the task's loss and teleport batch
        method = method.for_task(task)
    if not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be a non-negative integer, got {steps!r}")
    if train_seeds is None:
        train_seeds = getattr(method, "train_seeds", None)
    seeds, note = check_seeds(seeds, train_seeds, allow_overlap)
    device = torch.device(device) if device is not None else torch.device("cpu")
    _check_module_placement(method, device, dtype)
    validation = task.kind.has_validation  # digits: validation loss and accuracy at every step
    method_task = getattr(method, "task", None)  # a method built for a task steps with that task's loss
    if isinstance(method_task, TaskConfig) and method_task.family != task.family:
        raise ValueError(f"method {method.name!r} was built for family {method_task.family!r} but the tasks are "
                         f"{task.family!r}; rebuild it for this task (e.g. load_optimizer(path, task=task))")
    batch = sample_tasks(task, seeds, device=device, dtype=dtype)
    X, Y, W = batch.X, batch.Y, [w.detach() for w in batch.weights]

    sampler = minibatch_sampler(task, seeds)
    stepper = method.start(X, Y, W) if sampler is None else method.start(X, Y, W, minibatches=sampler)
    losses, grads_sq = [], []
    full_losses, full_grads_sq, per_step = [], [], []  # measured at every W_t, off the clock

    def measure(w: list[torch.Tensor]) -> None:
        """Off the clock: the full training loss of a minibatch run and the validation metrics at ``w``
        (one step at a time, so that no step's weights are kept)."""
        if sampler is not None:  # the steps report their minibatches' losses: the full one at every W_t instead
            with torch.no_grad():
                loss, grads = loss_and_grads(w, X, Y, loss_fn=task.kind.loss)
            full_losses.append(loss.detach())
            full_grads_sq.append(grad_norm_sq(grads))
        if validation:
            per_step.append(batch.metrics(w))

    measure(W)
    clock = _Clock(device, sync_timing)
    for _ in range(steps):
        W, loss, gsq = stepper.step(W)
        W = [w.detach() for w in W]
        losses.append(loss.detach())
        grads_sq.append(gsq.detach())
        clock.mark()
        if sampler is not None or validation:
            measure(W)
            clock.restart()
    seconds = clock.seconds()
    if sampler is not None:
        losses, grads_sq = full_losses, full_grads_sq
    else:  # the loss and gradient after the last step
        with torch.no_grad():
            loss, grads = loss_and_grads(W, X, Y, loss_fn=task.kind.loss)
        losses.append(loss.detach())
        grads_sq.append(grad_norm_sq(grads))

    loss_t = mark_diverged(torch.stack(losses).to("cpu", torch.float64))  # the one read-back
    gsq_t = torch.where(torch.isinf(loss_t), loss_t, torch.stack(grads_sq).to("cpu", torch.float64))
    loss_np, gsq_np = loss_t.numpy(), gsq_t.numpy()
    metrics = {}
    if validation:
        gone = torch.isinf(loss_t)
        for name, fill in (("val_loss", math.inf), ("val_accuracy", math.nan)):
            m = torch.stack([p[name] for p in per_step]).to("cpu", torch.float64)
            metrics[name] = torch.where(gone | ~torch.isfinite(m), torch.full_like(m, fill), m).numpy()
    info = {**_describe(method), "device": str(device), "dtype": str(dtype).replace("torch.", "")}
    return Curves(method.name, seeds, loss_np, gsq_np, seconds, to_dict(task), info, note, metrics)


def compare(
    methods: Mapping[str, Method | BaselineConfig],
    task: TaskConfig,
    seeds: Iterable[int],
    steps: int,
    **kwargs: Any,
) -> dict[str, Curves]:
    """:func:`evaluate` every method on the same seeds; keys of ``methods`` become the names."""
    seeds = list(seeds)
    out = {}
    for name, method in methods.items():
        curves = evaluate(method, task, seeds, steps, **kwargs)
        curves.name = name
        out[name] = curves
    return out
