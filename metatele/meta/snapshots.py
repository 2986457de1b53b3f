"""Validation during meta-training: the best snapshot and an average of recent ones.

Meta-training is noisy: the loss a snapshot of the meta-parameters reaches on held-out tasks can
swing by orders of magnitude from one meta-step to the next, and truncated unrolls can make a
later snapshot worse at long horizons than an earlier one. With ``validation.every > 0``
(:class:`ValidationConfig`) a run therefore

* keeps an exponential moving average of its meta-parameters (``validation.average``: the decay
  per meta-step, so about ``1 / (1 − decay)`` recent meta-steps are averaged), updated on the
  device after every meta-step without a host read;
* every ``every`` meta-steps (and at meta-step 0 and at the end) runs the current meta-parameters
  and their average on validation seeds (training-split tasks that meta-training never draws,
  :func:`metatele.tasks.family.validation_seeds`) for ``steps`` inner steps, and records the mean
  log10 loss at each of ``at_steps`` together with the meta-step, the wall-clock seconds of meta-training
  (validation not counted) and the trajectory-steps spent so far;
* keeps the best of those snapshots by :func:`validation_score`.

Everything (the average, the best snapshot, the validation history) is part of the engine's
training state, so a run stopped and resumed selects exactly what an uninterrupted run selects.
Test seeds are never touched.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
import torch

from ..configs import is_int, is_number, require
from ..evaluation.evaluate import DIVERGED_LOSS, Curves, evaluate
from ..tasks.family import TaskConfig, validation_seeds

#: the snapshot kinds a validation scores
KINDS = ("current", "average")


@dataclass
class ValidationConfig:
    """Validation on held-out seeds during meta-training (``every: 0``: none).

    Attributes:
        every: meta-steps between validations (also at meta-step 0 and at the end); 0: never.
        seeds: validation seeds per validated task (``validation_seeds(seeds)``).
        steps: inner steps of each validation run.
        at_steps: the inner steps whose mean log10 losses are averaged into the score.
        average: decay of the exponential moving average of the meta-parameters, updated every
            meta-step and validated beside the current ones (0: no average).
    """

    every: int = 0
    seeds: int = 32
    steps: int = 300
    at_steps: list[int] = field(default_factory=lambda: [10, 30, 100, 300])
    average: float = 0.0

    def __post_init__(self) -> None:
        require(is_int(self.every) and self.every >= 0, "validation.every",
                f"must be a non-negative integer (meta-steps; 0: no validation), got {self.every!r}")
        require(is_int(self.seeds) and self.seeds >= 1, "validation.seeds", f"must be a positive integer, got {self.seeds!r}")
        require(is_int(self.steps) and self.steps >= 1, "validation.steps", f"must be a positive integer, got {self.steps!r}")
        require(isinstance(self.at_steps, (list, tuple)) and len(self.at_steps) > 0
                and all(is_int(s) and 0 <= s <= self.steps for s in self.at_steps), "validation.at_steps",
                f"must be a non-empty list of inner steps in [0, steps = {self.steps}], got {self.at_steps!r}")
        self.at_steps = [int(s) for s in self.at_steps]
        require(is_number(self.average) and 0 <= self.average < 1, "validation.average",
                f"must be a number in [0, 1) (0: no average), got {self.average!r}")

    @property
    def enabled(self) -> bool:
        return self.every > 0


def validation_score(curves: Curves | Sequence[Curves], at_steps: Sequence[int]) -> float:
    """Mean over ``at_steps``, seeds (and tasks) of the log10 loss, a diverged seed counting as
    ``log10(DIVERGED_LOSS)`` (so a snapshot that diverges anywhere is heavily penalised)."""
    parts = [curves] if isinstance(curves, Curves) else list(curves)
    return float(np.mean([_log10_at(c, at_steps).mean() for c in parts]))


def _log10_at(curves: Curves, at_steps: Sequence[int]) -> np.ndarray:
    loss = np.where(np.isfinite(curves.loss), curves.loss, DIVERGED_LOSS)
    return np.log10(np.clip(loss[list(at_steps)], 1e-300, DIVERGED_LOSS))


class Snapshots:
    """The average, the best snapshot and the validation history of one run (see the module).

    Args:
        validation: what to validate, and how often.
        tasks: the validated tasks (the run's task, and for a task mixture a few of its training
            architectures); each is run on the same ``validation.seeds`` validation seeds.
        optimizer: the learned optimizer being trained.
        params: its meta-parameters (the average follows them).
    """

    def __init__(self, validation: ValidationConfig, tasks: Sequence[TaskConfig], optimizer: torch.nn.Module,
                 params: Sequence[torch.nn.Parameter]) -> None:
        self.config = validation
        self.tasks = list(tasks)
        self.params = list(params)
        names = {id(p): n for n, p in optimizer.named_parameters()}
        self.names = [names[id(p)] for p in self.params]
        self.average: list[torch.Tensor] | None = (
            [p.detach().clone() for p in self.params] if validation.average > 0 else None)
        self.best: dict[str, Any] | None = None
        self.history: list[dict[str, Any]] = []
        self.trajectory_steps = 0

    # -- every meta-step ------------------------------------------------------------------------
    def after_step(self, engine: Any, slot_steps: int) -> dict[str, Any] | None:
        """Update the average (on the device) and count ``slot_steps`` trajectory-steps; validate
        when a validation is due (every ``every`` meta-steps and when the run is done) and return
        its row (``None``: no validation now)."""
        self.trajectory_steps += int(slot_steps)
        if self.average is not None:
            with torch.no_grad():
                for a, p in zip(self.average, self.params):
                    a.lerp_(p.detach(), 1.0 - self.config.average)
        step = engine.meta_step_count
        if step % self.config.every == 0 or (engine.done and (not self.history or self.history[-1]["meta_step"] != step)):
            return self.validate(engine)
        return None

    # -- validation -----------------------------------------------------------------------------
    def _run(self, opt: torch.nn.Module, engine: Any) -> dict[str, Any]:
        v = self.config
        seeds = validation_seeds(v.seeds)
        curves = []
        with torch.random.fork_rng(devices=[]):  # validation must not change the training stream
            for task in self.tasks:
                curves.append(evaluate(opt, task, seeds, v.steps, device=engine.device, dtype=engine.dtype))
        logs = np.concatenate([_log10_at(c, v.at_steps) for c in curves], axis=1)  # [at, tasks × seeds]
        return {"score": validation_score(curves, v.at_steps),
                "mean_log10_at": {int(s): float(logs[i].mean()) for i, s in enumerate(v.at_steps)},
                "diverged_fraction": float(np.mean([c.diverged[-1].mean() for c in curves]))}

    def averaged_optimizer(self, opt: torch.nn.Module) -> torch.nn.Module:
        """A copy of ``opt`` holding the averaged meta-parameters."""
        if self.average is None:
            raise ValueError("this run keeps no average (validation.average is 0)")
        avg = copy.deepcopy(opt)
        avg.output_hook = None
        with torch.no_grad():
            for name, a in zip(self.names, self.average):
                avg.get_parameter(name).copy_(a)
        return avg

    def validate(self, engine: Any) -> dict[str, Any]:
        """Score the current meta-parameters (and their average) now; keep the best."""
        opt = engine.optimizer
        hook, opt.output_hook = opt.output_hook, None
        try:
            rows = {"current": self._run(opt, engine)}
            if self.average is not None:
                rows["average"] = self._run(self.averaged_optimizer(opt), engine)
        finally:
            opt.output_hook = hook
        row = {"meta_step": engine.meta_step_count, "train_seconds": round(float(engine.train_seconds), 2),
               "trajectory_steps": self.trajectory_steps, **rows}
        self.history.append(row)
        for kind, r in rows.items():
            if math.isfinite(r["score"]) and (self.best is None or r["score"] < self.best["score"]):
                source = opt if kind == "current" else self.averaged_optimizer(opt)
                self.best = {"meta_step": engine.meta_step_count, "kind": kind, "score": r["score"],
                             "state": {k: v.detach().clone() for k, v in source.state_dict().items()}}
        return row

    def selected(self) -> dict[str, Any]:
        """What was selected: meta-step, kind (``current`` or ``average``), score, the seeds."""
        if self.best is None:
            raise ValueError("no finite validation score yet: nothing selected")
        v = self.config
        seeds = validation_seeds(v.seeds)
        return {"meta_step": self.best["meta_step"], "kind": self.best["kind"], "score": self.best["score"],
                "validation_seeds": [seeds[0], seeds[-1] + 1], "steps": v.steps, "at_steps": list(v.at_steps),
                "tasks": [{"dims": t.dims, "distribution": t.distribution, "bias": t.bias} for t in self.tasks]}

    # -- resumable state ------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"average": self.average, "best": self.best, "history": self.history,
                "trajectory_steps": self.trajectory_steps}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        if (sd["average"] is None) != (self.average is None):
            raise ValueError("the training state's snapshot average does not match validation.average")
        if self.average is not None:
            for a, s in zip(self.average, sd["average"]):
                a.copy_(s)
        self.best = sd["best"]
        if self.best is not None:
            self.best = {**self.best, "state": dict(self.best["state"])}
        self.history = [dict(r) for r in sd["history"]]
        self.trajectory_steps = int(sd["trajectory_steps"])
