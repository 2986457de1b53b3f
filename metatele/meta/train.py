"""``meta_train(config)``: run the unroll engine until every trajectory of the run is trained."""
from __future__ import annotations

from dataclasses import dataclass
from time import perf_counter
from typing import Any, Callable

import torch
from tqdm.auto import tqdm

from ..optimizers.learned import LearnedOptimizer
from .config import MetaTrainConfig, non_symmetric_pairs
from .engine import UnrollEngine


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
    """

    optimizer: LearnedOptimizer
    history: list[dict[str, Any]]
    config: MetaTrainConfig
    train_seeds: tuple[int, int]
    meta_steps: int
    diverged_total: int
    train_seconds: float

    def provenance(self) -> dict[str, Any]:
        """What the run records in its checkpoint (``provenance`` of
        :func:`metatele.release.checkpoint.save_checkpoint`)."""
        prov: dict[str, Any] = {
            "training_seeds": [list(self.train_seeds)],
            "meta_steps": self.meta_steps,
            "diverged_trajectories": self.diverged_total,
            "train_seconds": round(self.train_seconds, 1),
            "meta_seed": self.config.seed,
        }
        changes = [row["teleport_loss_change"] for row in self.history if "teleport_loss_change" in row]
        if changes:  # allow_non_symmetric: the teleport was not a symmetry; how much it changed the loss
            prov["non_symmetric_teleport"] = {
                "pairs": [{"pair": m, "input_width": d} for m, d in non_symmetric_pairs(self.config.task)],
                "samples": self.config.task.dims[0],
                "max_relative_loss_change": max(changes),
            }
        return prov


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

    Raises:
        engine.DivergenceError: every trajectory diverged for ``diverge_patience`` meta-steps.
    """
    engine = engine or UnrollEngine(config, device=device)
    total = config.meta_steps
    history: list[dict[str, Any]] = []
    bar = tqdm(total=total, initial=engine.meta_step_count, disable=not progress, desc=f"meta-train {config.learned.variant}",
               unit="meta-step", dynamic_ncols=True)
    t0, before = perf_counter(), engine.train_seconds  # a resumed engine carries its earlier time
    try:
        while not engine.done:
            metrics = engine.meta_step()
            engine.train_seconds = before + perf_counter() - t0
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
    )
