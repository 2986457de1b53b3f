"""Snapshot selection on validation seeds for the studies (benchmark, scripts).

The selection itself is part of meta-training (:mod:`metatele.meta.snapshots`: ``validation`` in
:class:`~metatele.meta.config.MetaTrainConfig`). :func:`meta_train_selected` runs it for a study
that states its selection apart from the run's config (the benchmark protocol's ``selection:``),
so that the config saved with the checkpoint stays the study's own: it validates the current
meta-parameters (no average) every ``every`` meta-steps, before the first and at the end, and
returns the best snapshot. Test seeds are never used.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from ..configs import require
from ..meta.config import MetaTrainConfig
from ..meta.snapshots import ValidationConfig, validation_score  # noqa: F401 (re-exported)
from ..meta.train import MetaTrainResult, meta_train
from ..meta.mixture import build_engine


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

    def validation(self) -> ValidationConfig:
        """The same selection as meta-training's ``validation`` config."""
        return ValidationConfig(every=self.every, seeds=self.seeds, steps=self.steps,
                                at_steps=list(self.at_steps), average=0.0)


def meta_train_selected(
    config: MetaTrainConfig, selection: SelectionConfig | None = None, progress: bool = True
) -> tuple[MetaTrainResult, dict[str, Any], list[dict[str, Any]]]:
    """Meta-train ``config`` and return the best snapshot on validation seeds.

    Returns:
        ``(result, selected, history)``: ``result.optimizer`` holds the selected meta-parameters
        (``result.config`` is ``config``), ``selected`` says which meta-step they are from
        (``meta_step``, ``score``, ``validation_seeds`` as ``[start, end)``, ``steps``,
        ``at_steps``); ``history`` lists ``{meta_step, score, mean_log10_at, diverged_fraction}``
        of every validation run.
    """
    sel = selection or SelectionConfig()
    validating = replace(config, validation=sel.validation())
    engine = build_engine(validating)
    result = meta_train(validating, progress=progress, engine=engine)
    result.optimizer = result.selected_optimizer()
    result.config = config
    chosen = engine.snapshots.selected()
    selected = {k: chosen[k] for k in ("meta_step", "score", "validation_seeds", "steps", "at_steps")}
    history = [{"meta_step": r["meta_step"], **r["current"]} for r in engine.snapshots.history]
    return result, selected, history
