"""``meta_train(config)``: run the unroll engine until every trajectory of the run is trained."""
from __future__ import annotations

import copy
import os
import platform
from dataclasses import dataclass
from time import perf_counter
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..optimizers.learned import LearnedOptimizer
from .config import MetaTrainConfig, non_symmetric_pairs
from .engine import UnrollEngine
from .mixture import build_engine
from .snapshots import Snapshots


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
        train_seconds: wall-clock seconds of meta-training, summed over every segment of a resumed
            run (up to the checkpoint each segment was resumed from).
        snapshots: the run's validation history, best snapshot and average (``None`` without
            validation).
        device: where it ran.
    """

    optimizer: LearnedOptimizer
    history: list[dict[str, Any]]
    config: MetaTrainConfig
    train_seeds: tuple[int, int]
    meta_steps: int
    diverged_total: int
    train_seconds: float
    snapshots: Snapshots | None = None
    device: str = "cpu"

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
            "training_seeds": [list(self.train_seeds)],
            "meta_steps": self.meta_steps,
            "diverged_trajectories": self.diverged_total,
            "train_seconds": round(self.train_seconds, 1),
            "meta_seed": self.config.seed,
            "machine": machine(self.device),
        }
        if self.snapshots is not None:
            prov["trajectory_steps"] = self.snapshots.trajectory_steps
        changes = [row["teleport_loss_change"] for row in self.history if "teleport_loss_change" in row]
        if changes:  # allow_non_symmetric: the teleport was not a symmetry; how much it changed the loss
            prov["non_symmetric_teleport"] = {
                "pairs": [{"pair": m, "input_width": d} for m, d in non_symmetric_pairs(self.config.task)],
                "samples": self.config.task.dims[0],
                "max_relative_loss_change": max(changes),
            }
        return prov


def machine(device: str) -> dict[str, Any]:
    """Where a run ran: device, CPU, cores, torch threads and version (recorded in provenance)."""
    info: dict[str, Any] = {"device": device, "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
                            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                            "torch": torch.__version__}
    if device.startswith("cuda") and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return info


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
) -> MetaTrainResult:
    """Meta-train the learned optimizer described by ``config``.

    Args:
        config: the run (task family, variant, trajectories × steps, unroll, rates...).
        device: overrides ``config.device`` (``auto``: CUDA when available).
        progress: show a tqdm progress bar.
        callback: called after every meta-step with the engine and that step's metrics
            (logging, checkpointing).
        engine: continue an existing (e.g. resumed) engine instead of building a new one.

    Returns:
        :class:`MetaTrainResult` with the trained optimizer and the per-meta-step history.

    The run ends when every trajectory is trained, or when its budget (``max_meta_steps``,
    ``max_seconds``) is spent. With ``validation.every > 0`` the engine's
    :class:`~metatele.meta.snapshots.Snapshots` validates the run as it goes; the result's
    optimizer holds the *last* meta-parameters, and :meth:`MetaTrainResult.selected_optimizer` the best snapshot.

    Raises:
        engine.DivergenceError: every trajectory diverged for ``diverge_patience`` meta-steps.
    """
    engine = engine or build_engine(config, device=device)
    total = config.meta_steps
    slots = engine.B * engine.world_size
    history: list[dict[str, Any]] = []
    bar = tqdm(total=total, initial=engine.meta_step_count, disable=not progress, desc=f"meta-train {config.learned.variant}",
               unit="meta-step", dynamic_ncols=True)
    t0, before = perf_counter(), engine.train_seconds  # a resumed engine carries its earlier time
    snapshots = engine.snapshots
    if snapshots is not None and not snapshots.history:  # the untrained optimizer is a candidate too
        snapshots.validate(engine)
    try:
        while not engine.done:
            metrics = engine.meta_step()
            engine.train_seconds = before + perf_counter() - t0
            if budget_spent(config, engine):
                engine.done = True
            if snapshots is not None:  # average, validation, best snapshot (resumable with the engine)
                row = snapshots.after_step(engine, slots * metrics["unroll"])
                if row is not None:
                    metrics.update(validation_metrics(row))
                    bar.set_postfix(val=f"{row['current']['score']:.3f}", best=f"{snapshots.best['score']:.3f}"
                                    if snapshots.best else "-")
            history.append(metrics)
            if callback is not None:
                callback(engine, metrics)
            bar.update(1)
            if engine.meta_step_count % config.log_every == 0:
                bar.set_postfix(log10_loss=f"{metrics['mean_log10_loss']:.3f}", diverged=metrics["diverged_total"])
    finally:
        bar.close()
    return MetaTrainResult(
        optimizer=engine.optimizer,
        history=history,
        config=config,
        train_seeds=engine.trained_seed_range,
        meta_steps=engine.meta_step_count,
        diverged_total=engine.diverged_total,
        train_seconds=engine.train_seconds,
        snapshots=engine.snapshots,
        device=str(engine.device),
    )
