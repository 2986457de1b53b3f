"""``meta_train(config)``: run the unroll engine until every trajectory of the run is trained.

A run that learned nothing does not return as if it had: :func:`meta_train` raises
:class:`TrainingFailed` when its meta-parameters are not finite at the end, when the run ended while
every trajectory was diverging, or when more than ``max_skipped_share`` of its meta-steps were
skipped (non-finite meta-gradient, or no live trajectory; it stops as soon as that share is
certain to be exceeded).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..optimizers.learned import LearnedOptimizer
from ..storage.provenance import machine_info
from .config import MetaTrainConfig, non_symmetric_pairs
from .engine import UnrollEngine
from .mixture import build_engine
from .snapshots import Snapshots
from .warmstart import warm_start


@dataclass
class MetaTrainResult:
    """What a meta-training run returns.

    Attributes:
        optimizer: the trained meta-optimizers (m1 and/or the m2s) as one module.
        history: one metrics dict per meta-step (meta-loss, mean log10 loss, divergences...).
        config: the configuration it ran with.
        train_seeds: ``[start, end)`` of the training-task seeds it consumed.
        meta_steps: meta-steps taken.
        diverged_total: trajectories masked out and restarted because they diverged.
        skipped_total: meta-steps that taught the meta-parameters nothing (non-finite meta-gradient,
            zeroed, or every trajectory diverged).
        train_seconds: wall-clock seconds of meta-training, summed over every segment of a resumed
            run (up to the checkpoint each segment was resumed from); validation and the callback (logging,
            figures, checkpoints) are not counted.
        snapshots: the run's validation history, best snapshot and average (``None`` without
            validation).
        device: where it ran.
        init_source: the warm start's record (``init_from``; :mod:`metatele.meta.warmstart`),
            ``None`` for a fresh initialisation.
    """

    optimizer: LearnedOptimizer
    history: list[dict[str, Any]]
    config: MetaTrainConfig
    train_seeds: tuple[int, int]
    meta_steps: int
    diverged_total: int
    train_seconds: float
    skipped_total: int = 0
    snapshots: Snapshots | None = None
    device: str = "cpu"
    init_source: dict[str, Any] | None = None

    def selected_optimizer(self) -> LearnedOptimizer:
        """The snapshot the run's validation selected (a copy), or the last meta-parameters when
        the run does not validate (``validation.every`` 0)."""
        if self.snapshots is None:
            return self.optimizer
        if self.snapshots.best is None:
            raise ValueError("no validation of this run has a finite score: nothing to select")
        opt = copy.deepcopy(self.optimizer)
        opt.output_hook = None
        opt.load_state_dict(self.snapshots.best["state"])
        return opt

    def provenance(self) -> dict[str, Any]:
        """What the run records in its checkpoint (``provenance`` of
        :func:`metatele.release.checkpoint.save_checkpoint`)."""
        prov: dict[str, Any] = {
            # a warm start's meta-parameters were also trained on its source's seeds
            "training_seeds": [*(self.init_source or {}).get("training_seeds", []), list(self.train_seeds)],
            "meta_steps": self.meta_steps,
            "diverged_trajectories": self.diverged_total,
            "skipped_meta_steps": self.skipped_total,
            "train_seconds": round(self.train_seconds, 1),
            "meta_seed": self.config.seed,
            "machine": {**machine_info(torch.device(self.device)), "torch_threads": torch.get_num_threads()},
        }
        if self.snapshots is not None:
            prov["trajectory_steps"] = self.snapshots.trajectory_steps
        if self.init_source is not None:  # a warm start: these counts are this run's, the source's are here
            prov["init_from"] = self.init_source
        changes = [row["teleport_loss_change"] for row in self.history if "teleport_loss_change" in row]
        if changes:  # allow_non_symmetric: the teleport was not a symmetry; how much it changed the loss
            prov["non_symmetric_teleport"] = {
                "pairs": [{"pair": m, "input_width": d} for m, d in non_symmetric_pairs(self.config.task)],
                "samples": self.config.task.dims[0],
                "max_relative_loss_change": max(changes),
            }
        return prov


class TrainingFailed(RuntimeError):
    """A meta-training run ran but learned nothing usable; ``result`` holds what it did."""

    def __init__(self, message: str, result: MetaTrainResult) -> None:
        super().__init__(message)
        self.result = result


#: the default largest share of skipped meta-steps a run may have and still count as trained
MAX_SKIPPED_SHARE = 0.5


def failure(engine: UnrollEngine, max_skipped_share: float = MAX_SKIPPED_SHARE) -> str | None:
    """Why the run of ``engine`` (finished, or stopped) learned nothing usable; ``None`` if it did.

    Reads only what every data-parallel rank agrees on (meta-parameters, skipped steps, the
    all-diverged streak), so that every rank comes to the same verdict.
    """
    steps, skipped = engine.meta_step_count, engine.skipped_total
    if not all(bool(torch.isfinite(p).all()) for p in engine.meta_parameters):
        return "the meta-parameters are not finite"
    if engine.all_dead_streak:
        return (f"the run ended while every trajectory was diverging (the last {engine.all_dead_streak} meta-step(s) "
                "had no finite trajectory)")
    if steps and skipped == steps:
        return (f"every one of its {steps} meta-steps was skipped (non-finite meta-gradient, or every trajectory "
                "diverged): the meta-parameters learned nothing")
    if skipped > max_skipped_share * steps:
        return (f"{skipped} of its {steps} meta-steps were skipped (non-finite meta-gradient, or every trajectory "
                f"diverged), more than the allowed share {max_skipped_share:g}")
    return None


def budget_spent(config: MetaTrainConfig, engine: UnrollEngine) -> bool:
    """The run's budget (``max_meta_steps`` or ``max_seconds``) is spent."""
    return ((config.max_meta_steps is not None and engine.meta_step_count >= config.max_meta_steps)
            or (config.max_seconds is not None and engine.train_seconds >= config.max_seconds))


def validation_metrics(row: dict[str, Any]) -> dict[str, float]:
    """A validation row of :class:`~metatele.meta.snapshots.Snapshots` as flat metrics
    (``val/current/score``, ``val/current/log10_at_100``, ``val/average/...``) for the history
    and wandb."""
    out: dict[str, float] = {}
    for kind in ("current", "average"):
        if kind in row:
            out[f"val/{kind}/score"] = row[kind]["score"]
            out.update({f"val/{kind}/log10_at_{s}": v for s, v in row[kind]["mean_log10_at"].items()})
            out[f"val/{kind}/diverged"] = row[kind]["diverged_fraction"]
    return out


def meta_train(
    config: MetaTrainConfig,
    device: torch.device | str | None = None,
    progress: bool = True,
    callback: Callable[[UnrollEngine, dict[str, Any]], None] | None = None,
    engine: UnrollEngine | None = None,
    max_skipped_share: float = MAX_SKIPPED_SHARE,
) -> MetaTrainResult:
    """Meta-train the learned optimizer described by ``config``.

    Args:
        config: the run (task family, variant, trajectories × steps, unroll, rates...).
        device: overrides ``config.device`` (``auto``: CUDA when available).
        progress: show a tqdm progress bar.
        callback: called after every meta-step with the engine and that step's metrics
            (logging, checkpointing).
        engine: continue an existing (e.g. resumed) engine instead of building a new one.
        max_skipped_share: the largest share of skipped meta-steps (non-finite meta-gradient, or
            every trajectory diverged) the run may have; it stops as soon as more is certain.

    Returns:
        :class:`MetaTrainResult` with the trained optimizer and the per-meta-step history.

    The run ends when every trajectory is trained, or when its budget (``max_meta_steps``,
    ``max_seconds``) is spent. With ``validation.every > 0`` the engine's
    :class:`~metatele.meta.snapshots.Snapshots` validates the run as it goes; the result's
    optimizer holds the *last* meta-parameters, and :meth:`MetaTrainResult.selected_optimizer` the best snapshot.

    Raises:
        engine.DivergenceError: every trajectory diverged for ``diverge_patience`` meta-steps.
        TrainingFailed: the run learned nothing usable (see :func:`failure`); its ``result``
            holds the history.
    """
    if not (0 <= max_skipped_share <= 1):
        raise ValueError(f"max_skipped_share: must lie in [0, 1], got {max_skipped_share!r}")
    if engine is None:
        engine = build_engine(config, device=device)
        warm_start(engine, config)
    total = config.meta_steps
    slots = engine.B * engine.world_size
    history: list[dict[str, Any]] = []
    bar = tqdm(total=total, initial=engine.meta_step_count, disable=not progress, desc=f"meta-train {config.learned.variant}",
               unit="meta-step", dynamic_ncols=True)
    snapshots = engine.snapshots
    if snapshots is not None and not snapshots.history:  # the untrained optimizer is a candidate too
        snapshots.validate(engine)
    # a resumed engine carries its earlier time; validation and the callback are not meta-training
    t0, before, not_training = perf_counter(), engine.train_seconds, 0.0
    try:
        while not engine.done:
            metrics = engine.meta_step()
            engine.train_seconds = before + perf_counter() - t0 - not_training
            if budget_spent(config, engine):
                engine.done = True
            if snapshots is not None:  # average, validation, best snapshot (resumable with the engine)
                tv = perf_counter()
                row = snapshots.after_step(engine, slots * metrics["unroll"])
                not_training += perf_counter() - tv
                if row is not None:
                    metrics.update(validation_metrics(row))
                    bar.set_postfix(val=f"{row['current']['score']:.3f}", best=f"{snapshots.best['score']:.3f}"
                                    if snapshots.best else "-")
            history.append(metrics)
            if callback is not None:  # logging, figures, checkpoints: not meta-training either
                tc = perf_counter()
                callback(engine, metrics)
                not_training += perf_counter() - tc
            bar.update(1)
            if engine.meta_step_count % config.log_every == 0:
                loss = metrics["mean_log10_loss"]
                bar.set_postfix(log10_loss="-" if loss is None else f"{loss:.3f}", diverged=metrics["diverged_total"],
                                skipped=metrics["skipped_total"])
            # more skipped meta-steps than the share allows of the planned run (a run is never
            # longer than planned): stop now rather than after hours
            if engine.skipped_total > max_skipped_share * total:
                break
    finally:
        bar.close()
    result = MetaTrainResult(
        optimizer=engine.optimizer,
        history=history,
        config=config,
        train_seeds=engine.trained_seed_range,
        meta_steps=engine.meta_step_count,
        diverged_total=engine.diverged_total,
        train_seconds=engine.train_seconds,
        skipped_total=engine.skipped_total,
        snapshots=engine.snapshots,
        device=str(engine.device),
        init_source=engine.init_source,
    )
    why = failure(engine, max_skipped_share)
    if why is not None:
        raise TrainingFailed(f"meta-training failed after {engine.meta_step_count} of {total} meta-steps: {why}. "
                             "Lower lr_update/lr_teleport, enable grad_clip, normalize the meta-loss, or use "
                             "meta_loss: mean_log", result)
    return result
