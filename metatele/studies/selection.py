"""Snapshot selection on validation seeds during meta-training.

Meta-training a learned optimizer is noisy: the loss its snapshots reach on held-out tasks can
swing by orders of magnitude from one meta-step to the next. :func:`meta_train_selected` runs
:func:`metatele.meta.train.meta_train` and, every ``every`` meta-steps (and before the first), runs the
current meta-parameters on a fixed set of validation seeds (training-split tasks that
meta-training never draws, see :func:`metatele.tasks.family.validation_seeds`) for ``steps`` inner
steps. The snapshot with the best :func:`validation_score` is kept and loaded into the returned
optimizer. Test seeds are never used.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch

from ..configs import require
from ..meta.engine import UnrollEngine
from ..evaluation.evaluate import DIVERGED_LOSS, Curves, evaluate
from ..tasks.family import validation_seeds
from ..meta.train import MetaTrainResult, meta_train
from ..meta.config import MetaTrainConfig


@dataclass
class SelectionConfig:
    """How snapshots are scored and kept.

    Attributes:
        every: meta-steps between validation runs.
        seeds: number of validation seeds (``validation_seeds(seeds)``).
        steps: inner steps of each validation run.
        at_steps: the steps whose mean log10 losses are averaged into the score.
    """

    every: int = 25
    seeds: int = 32
    steps: int = 300
    at_steps: tuple[int, ...] = (10, 30, 100, 300)

    def __post_init__(self) -> None:
        self.at_steps = tuple(int(s) for s in self.at_steps)
        require(self.every >= 1, "selection.every", f"must be ≥ 1, got {self.every}")
        require(self.seeds >= 1, "selection.seeds", f"must be ≥ 1, got {self.seeds}")
        require(all(0 <= s <= self.steps for s in self.at_steps), "selection.at_steps",
                f"must lie in [0, steps = {self.steps}], got {self.at_steps}")


def validation_score(curves: Curves, at_steps: Sequence[int]) -> float:
    """Mean over ``at_steps`` and seeds of log10 loss, a diverged seed counting as
    ``log10(DIVERGED_LOSS)`` (so a snapshot that diverges anywhere is heavily penalised)."""
    loss = np.where(np.isfinite(curves.loss), curves.loss, DIVERGED_LOSS)
    logl = np.log10(np.clip(loss[list(at_steps)], 1e-300, DIVERGED_LOSS))
    return float(logl.mean())


def meta_train_selected(
    config: MetaTrainConfig, selection: SelectionConfig | None = None, progress: bool = True
) -> tuple[MetaTrainResult, dict[str, Any], list[dict[str, Any]]]:
    """Meta-train ``config`` and return the best snapshot on validation seeds.

    Returns:
        ``(result, selected, history)``: ``result.optimizer`` holds the selected meta-parameters,
        ``selected`` says which meta-step they are from (``meta_step``, ``score``,
        ``validation_seeds`` as ``[start, end)``, ``steps``, ``at_steps``); ``history`` lists
        ``{meta_step, score, mean_log10_at, diverged_fraction}`` of every validation run.
    """
    sel = selection or SelectionConfig()
    seeds = validation_seeds(sel.seeds)
    engine = UnrollEngine(config)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"score": math.inf}

    def validate(eng: UnrollEngine) -> None:
        opt = eng.optimizer
        with torch.random.fork_rng(devices=[]):  # validation must not change the training stream
            opt.output_hook, hook = None, opt.output_hook
            try:
                curves = evaluate(opt, config.task, seeds, sel.steps, device=eng.device, dtype=eng.dtype)
            finally:
                opt.output_hook = hook
        score = validation_score(curves, sel.at_steps)
        logl = np.log10(np.clip(np.where(np.isfinite(curves.loss), curves.loss, DIVERGED_LOSS), 1e-300, None))
        row = {"meta_step": eng.meta_step_count, "score": score,
               "mean_log10_at": {int(s): float(logl[s].mean()) for s in sel.at_steps},
               "diverged_fraction": float(curves.diverged[-1].mean())}
        history.append(row)
        if score < best["score"]:
            best.update(score=score, meta_step=eng.meta_step_count, state=copy.deepcopy(opt.state_dict()))

    def callback(eng: UnrollEngine, metrics: dict[str, Any]) -> None:
        if eng.meta_step_count % sel.every == 0 or eng.meta_step_count == config.meta_steps:
            validate(eng)

    validate(engine)  # the untrained optimizer is a candidate too
    result = meta_train(config, progress=progress, callback=callback, engine=engine)
    result.optimizer.load_state_dict(best["state"])
    selected = {"meta_step": best["meta_step"], "score": best["score"],
                "validation_seeds": [seeds[0], seeds[-1] + 1], "steps": sel.steps,
                "at_steps": list(sel.at_steps)}
    return result, selected, history
