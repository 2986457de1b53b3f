"""Fair baselines: tune hand-designed optimizers on training seeds only.

A learned optimizer is meta-trained on training seeds; the hand-designed optimizers it is compared
with get the same chance. :func:`grid_search` runs a whole learning-rate grid as one batch (each
task carries its own learning rate); :func:`hypergradient_tune` follows the meta-gradient of the
log-loss with respect to ``log(lr)`` through short differentiable unrolls. Both refuse test seeds,
and both return a :class:`TuneResult` that records what was tried, so results files can state the
values used.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..optimizers.baselines import BASELINES, BaselineConfig, HandDesigned
from ..configs import to_dict
from .evaluate import LOG_FLOOR, mark_diverged
from ..tasks.digits import minibatch_sampler
from ..tasks.family import TEST_SEED_OFFSET, TaskConfig, sample_tasks

#: default learning-rate grid: half-decades from 1e-7 to 1.
DEFAULT_LRS: tuple[float, ...] = tuple(10.0 ** (k / 2) for k in range(-14, 1))
#: default momentum grid for the ``momentum`` baseline.
DEFAULT_MOMENTA: tuple[float, ...] = (0.5, 0.9, 0.99)
OBJECTIVES = ("mean_log_loss_final", "mean_log_loss")
#: what each objective minimises, in words (for reports)
OBJECTIVE_TEXT = {
    "mean_log_loss_final": "the mean over seeds of log10 loss after the last step",
    "mean_log_loss": "the mean over seeds and steps of log10 loss",
    "sum_log_loss_unroll": "the mean over seeds of log loss, summed over the unroll",
}
#: how many times :func:`grid_search` extends its learning-rate grid past an edge where the best lies
MAX_EXTENSIONS = 3


@dataclass
class TuneResult:
    """What tuning chose and what it tried.

    Attributes:
        config: the tuned configuration (the input with ``lr`` and perhaps ``momentum`` replaced).
        method: ``grid`` or ``hypergradient``.
        objective: what was minimised (mean over seeds of log10 final loss, or of log10 loss
            averaged over all steps; ``hypergradient``: mean log-loss summed over the unroll).
        seeds: the training seeds used.
        steps: unroll length per evaluation.
        grid: ``[{lr, momentum, score, diverged_fraction}]`` (``score`` = inf when any run diverged),
            including the points of any extension.
        trajectory: hypergradient only: ``[{meta_step, lr, objective}]``.
        extensions: grid only: how many times the grid was extended past an edge.
        edge: grid only: ``"low"`` or ``"high"`` when the chosen ``lr`` is still the smallest or
            largest one tried (after the extensions): the best rate may lie beyond the grid.
    """

    config: BaselineConfig
    method: str
    objective: str
    seeds: list[int]
    steps: int
    grid: list[dict[str, Any]] = field(default_factory=list)
    trajectory: list[dict[str, Any]] = field(default_factory=list)
    extensions: int = 0
    edge: str | None = None

    @property
    def lr(self) -> float:
        """The chosen learning rate."""
        return self.config.lr

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly record (infinite scores become ``None``)."""
        clean = lambda x: None if isinstance(x, float) and not math.isfinite(x) else x  # noqa: E731
        return {
            "config": to_dict(self.config), "method": self.method, "objective": self.objective,
            "seeds": _seed_summary(self.seeds), "steps": self.steps,
            "grid": [{k: clean(v) for k, v in g.items()} for g in self.grid],
            "trajectory": [{k: clean(v) for k, v in t.items()} for t in self.trajectory],
            "extensions": self.extensions, "edge": self.edge,
        }

    def edge_note(self) -> str:
        """``""``, or why the pick is doubtful: ``at the low edge of the grid (after 3 extensions)``."""
        return edge_note(self.edge, self.extensions)


def edge_note(edge: str | None, extensions: int = 0) -> str:
    """``""`` for a pick inside its grid, else ``at the <edge> edge of the grid (after n extensions)``."""
    if edge is None:
        return ""
    return f"at the {edge} edge of the grid" + (f" (after {extensions} extensions)" if extensions else "")


def _seed_summary(seeds: list[int]) -> dict[str, Any] | list[int]:
    if seeds and seeds == list(range(seeds[0], seeds[0] + len(seeds))):
        return {"start": seeds[0], "count": len(seeds)}
    return list(seeds)


def check_training_seeds(seeds: Iterable[int]) -> list[int]:
    """Seeds as a list; ``ValueError`` unless all lie in the training split ``[0, TEST_SEED_OFFSET)``."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("seeds is empty: tuning needs at least one training seed")
    bad = [s for s in seeds if not 0 <= s < TEST_SEED_OFFSET]
    if bad:
        raise ValueError(f"tuning may use training seeds only ([0, {TEST_SEED_OFFSET}), see "
                         f"metatele.tasks.family.training_seeds); got {len(bad)} others, e.g. {bad[:5]}")
    return seeds


def _log_losses(curve: torch.Tensor) -> torch.Tensor:
    """``[T + 1, B]`` losses → log10, +inf from each task's divergence on (the evaluator's rule)."""
    return mark_diverged(curve).clamp_min(LOG_FLOOR).log10()


def _edge(lr: float, tried: Sequence[float]) -> str | None:
    """``"low"``/``"high"`` when ``lr`` is the smallest/largest of ``tried`` (of several)."""
    if len(set(tried)) < 2:
        return None
    return "low" if lr == min(tried) else "high" if lr == max(tried) else None


def grid_search(
    config: BaselineConfig,
    task: TaskConfig,
    seeds: Iterable[int],
    steps: int,
    lrs: Sequence[float] = DEFAULT_LRS,
    momenta: Sequence[float] | None = None,
    objective: str = "mean_log_loss_final",
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
    extend: int = MAX_EXTENSIONS,
) -> TuneResult:
    """Pick the learning rate (and momentum, for ``momentum``) minimising ``objective`` on training seeds.

    Every ``(lr, seed)`` pair is one task of a single batch, run ``steps`` steps with a per-task
    ``lr`` ``[B]``. (For ``momentum`` the batch is repeated once per momentum value.) A grid point whose run diverges on any seed scores +inf.
    When the best ``lr`` is the smallest or largest tried, the grid is extended by two more
    points past that edge, with the grid's own ratio between points, up to ``extend`` times; a
    pick still on the edge is flagged in :attr:`TuneResult.edge`.

    Args:
        config: the optimizer to tune (its other hyper-parameters are kept).
        task: the task family.
        seeds: training seeds (test seeds are refused).
        steps: steps per run: the horizon whose loss is minimised; use the evaluation's own number
            of steps, since the best rate for a short run is not the best for a long one.
        lrs: learning rates to try.
        momenta: momentum values to try (``momentum`` only; default :data:`DEFAULT_MOMENTA`).
        objective: ``mean_log_loss_final`` (mean over seeds of log10 loss after ``steps``) or
            ``mean_log_loss`` (mean over seeds and steps 0..steps of log10 loss).
        extend: at most this many extensions past an edge (0: the grid as given).

    Returns:
        :class:`TuneResult` with ``config = replace(config, lr=best[, momentum=best])``.
    """
    seeds = check_training_seeds(seeds)
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    lrs = [float(x) for x in lrs]
    if not lrs or any(not x > 0 for x in lrs):
        raise ValueError(f"lrs must be a non-empty list of positive numbers, got {lrs}")
    if momenta is not None and config.name != "momentum":
        raise ValueError(f"momenta only apply to the 'momentum' baseline, not {config.name!r}")
    if config.name == "momentum":
        momenta_list: list[float | None] = [float(m) for m in (momenta if momenta is not None else DEFAULT_MOMENTA)]
    else:
        momenta_list = [None]
    batch = sample_tasks(task, seeds, device=device, dtype=dtype)
    loss_fn = task.kind.loss
    S = len(seeds)

    def run(points: list[float]) -> list[dict[str, Any]]:
        G = len(points)
        X, Y = batch.X.repeat(G, 1, 1), batch.Y.repeat(G, 1, 1)
        W0 = [w.repeat(G, 1, 1) for w in batch.weights]  # index g * S + s
        lr_t = torch.tensor(points, device=X.device, dtype=dtype).repeat_interleave(S)
        sampler = minibatch_sampler(task, list(seeds) * G)  # a seed's minibatches are the same at every grid point
        rows = []
        for mom in momenta_list:
            cfg = config if mom is None else replace(config, momentum=mom)
            opt = HandDesigned(cfg, X, Y, W0, lr=lr_t, loss_fn=loss_fn,
                               teleport_samples=task.kind.teleport_batch(task), minibatches=sampler)
            W, losses = W0, []
            for _ in range(steps):
                full = None if sampler is None else loss_fn(W, X, Y).detach()  # not the step's minibatch loss
                W, loss, _ = opt.step(W)
                W = [w.detach() for w in W]
                losses.append(loss if full is None else full)
            with torch.no_grad():
                losses.append(loss_fn(W, X, Y))
            logl = _log_losses(torch.stack(losses).to("cpu", torch.float64))  # [T + 1, G * S], one read-back
            per_task = logl[-1] if objective == "mean_log_loss_final" else logl.mean(0)
            per_task = per_task.view(G, S)
            diverged = torch.isinf(per_task).double().mean(1)
            scores = per_task.mean(1)
            for g, lr in enumerate(points):
                rows.append({"lr": lr, "momentum": mom, "score": float(scores[g]), "diverged_fraction": float(diverged[g])})
        return rows

    grid = run(lrs)
    tried = list(lrs)
    ratio = (max(lrs) / min(lrs)) ** (1 / (len(set(lrs)) - 1)) if len(set(lrs)) > 1 else math.sqrt(10.0)
    extensions = 0
    best = min(grid, key=lambda r: r["score"])
    while extensions < extend and math.isfinite(best["score"]) and _edge(best["lr"], tried):
        if _edge(best["lr"], tried) == "low":
            new = [min(tried) / ratio, min(tried) / ratio ** 2]
        else:
            new = [max(tried) * ratio, max(tried) * ratio ** 2]
        grid += run(new)
        tried += new
        extensions += 1
        best = min(grid, key=lambda r: r["score"])
    if not math.isfinite(best["score"]):
        raise ValueError(f"every grid point diverged for {config.name!r} in {steps} steps; try smaller lrs")
    tuned = replace(config, lr=best["lr"]) if best["momentum"] is None else replace(config, lr=best["lr"], momentum=best["momentum"])
    return TuneResult(tuned, "grid", objective, seeds, steps, grid=grid, extensions=extensions,
                      edge=_edge(best["lr"], tried))


def hypergradient_tune(
    config: BaselineConfig,
    task: TaskConfig,
    seeds: Iterable[int],
    steps: int,
    meta_steps: int,
    init_lr: float | None = None,
    meta_lr: float = 0.1,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> TuneResult:
    """Tune ``log(lr)`` by Adam on the meta-gradient through differentiable unrolls.

    Each meta-step unrolls ``steps`` steps of ``HandDesigned(differentiable=True)`` from the
    initial weights of the training ``seeds`` (one batch, one shared ``lr``); the meta-objective is
    the mean over tasks of ``log`` of the loss, summed over ``W_1..W_steps``. If an unroll diverges
    (non-finite objective) no gradient exists, and ``lr`` is halved instead. Short unrolls favour
    greedy step sizes (short-horizon bias): prefer :func:`grid_search` for final numbers.

    Returns:
        :class:`TuneResult` with the tuned config and ``trajectory`` ``[{meta_step, lr, objective}]``
        (``objective`` measured at that meta-step's ``lr``, before its update).
    """
    seeds = check_training_seeds(seeds)
    if steps < 1 or meta_steps < 1:
        raise ValueError(f"steps and meta_steps must be ≥ 1, got {steps}, {meta_steps}")
    init_lr = float(config.lr if init_lr is None else init_lr)
    if not init_lr > 0:
        raise ValueError(f"init_lr must be > 0, got {init_lr}")
    batch = sample_tasks(task, seeds, device=device, dtype=dtype)
    log_lr = torch.tensor(math.log(init_lr), device=batch.X.device, dtype=dtype, requires_grad=True)
    adam = torch.optim.Adam([log_lr], lr=meta_lr)
    trajectory = []
    for k in range(meta_steps):
        opt = HandDesigned(config, batch.X, batch.Y, batch.weights, differentiable=True, lr=log_lr.exp(),
                           loss_fn=task.kind.loss)
        W, total = [w.detach() for w in batch.weights], 0.0
        for t in range(steps):
            W, loss, _ = opt.step(W)  # loss at the weights before this step, with its graph
            if t > 0:
                total = total + loss.log().mean()
        total = total + task.kind.loss(W, batch.X, batch.Y).log().mean()
        value = float(total.detach())  # one host read per meta-step
        trajectory.append({"meta_step": k, "lr": float(log_lr.detach().exp()), "objective": value})
        adam.zero_grad()
        if math.isfinite(value):
            total.backward()
            adam.step()
        else:
            with torch.no_grad():
                log_lr -= math.log(2.0)
    tuned = replace(config, lr=float(log_lr.detach().exp()))
    return TuneResult(tuned, "hypergradient", "sum_log_loss_unroll", seeds, steps, trajectory=trajectory)


def tune_all(
    task: TaskConfig,
    seeds: Iterable[int],
    steps: int,
    names: Sequence[str] = BASELINES,
    method: str = "grid",
    base: Mapping[str, BaselineConfig] | None = None,
    **kwargs: Any,
) -> tuple[dict[str, BaselineConfig], dict[str, TuneResult]]:
    """Tune every baseline in ``names`` on training ``seeds``.

    Args:
        method: ``grid`` (:func:`grid_search`) or ``hypergradient`` (:func:`hypergradient_tune`,
            which needs ``meta_steps`` in ``kwargs``).
        base: starting configs by name (default ``BaselineConfig(name=name)``).
        kwargs: passed on to the tuner.

    Returns:
        ``(name → tuned BaselineConfig, name → TuneResult)``.
    """
    if method not in ("grid", "hypergradient"):
        raise ValueError(f"method must be 'grid' or 'hypergradient', got {method!r}")
    seeds = check_training_seeds(seeds)
    configs, records = {}, {}
    for name in names:
        config = (base or {}).get(name) or BaselineConfig(name=name)
        if method == "grid":
            result = grid_search(config, task, seeds, steps, **kwargs)
        else:
            result = hypergradient_tune(config, task, seeds, steps, **kwargs)
        configs[name], records[name] = result.config, result
    return configs, records
