"""Transfer: learned optimizers on networks they were never trained on, against tuned baselines.

For every target task family, GD and Adam get their learning rate tuned *on that network* on
training seeds (:func:`metatele.evaluation.tuning.grid_search`, objective: mean log10 loss over all steps),
then every checkpoint (loaded for that task without retraining, which needs the
``coordinatewise`` architecture) and the tuned baselines run on the same unseen test seeds. The
result is one table per task: mean log10 loss with 95% CIs at the chosen steps and the fraction of
seeds that diverged (:func:`metatele.evaluation.stats.markdown_table`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..optimizers.baselines import BaselineConfig
from ..release.checkpoint import load_checkpoint
from ..configs import require
from ..evaluation.evaluate import BaselineMethod, Curves, compare
from ..evaluation.stats import markdown_table, results_to_json
from ..tasks.family import TaskConfig, training_seeds, unseen_seeds
from ..evaluation.tuning import DEFAULT_LRS, grid_search
from .protocol_parts import task_label

#: the networks of the transfer study: none has the training size [20, 20, 20, 20]
TRANSFER_TASKS = (
    TaskConfig([16, 32, 32, 32, 8], "gaussian"),
    TaskConfig([20, 64, 64, 10], "gaussian", bias=True),
    TaskConfig([10, 20, 20, 20, 20, 20, 5], "gaussian", bias=True),
)


@dataclass
class TransferConfig:
    """What the transfer study runs.

    Attributes:
        checkpoints: checkpoint files (coordinatewise ones run on any task).
        tasks: the target task families (default: :data:`TRANSFER_TASKS`).
        seeds: unseen test seeds per task.
        steps: inner steps.
        tune_seeds: training seeds the baselines are tuned on (per task).
        baselines: hand-designed optimizers to tune and compare.
        at_steps: the steps of the table.
        include_training_task: also evaluate each distinct training task of the checkpoints.
    """

    checkpoints: list[str] = field(default_factory=list)
    tasks: list[TaskConfig] = field(default_factory=lambda: list(TRANSFER_TASKS))
    seeds: int = 100
    steps: int = 300
    tune_seeds: int = 20
    baselines: tuple[str, ...] = ("gd", "adam")
    at_steps: tuple[int, ...] = (10, 30, 100, 300)
    include_training_task: bool = True

    def __post_init__(self) -> None:
        require(self.seeds >= 2, "seeds", f"need ≥ 2 seeds for a confidence interval, got {self.seeds}")
        require(self.steps >= 1, "steps", f"must be ≥ 1, got {self.steps}")
        require(self.tune_seeds >= 1, "tune_seeds", f"must be ≥ 1, got {self.tune_seeds}")


def run_transfer(config: TransferConfig, device: str | torch.device = "cpu", progress: bool = True) -> dict[str, Any]:
    """Run the study; returns ``{"tasks": [{task, label, curves, tuning}], "markdown": str}``."""
    loaded = [load_checkpoint(p) for p in config.checkpoints]
    tasks = list(config.tasks)
    if config.include_training_task:
        for ck in loaded:
            if all(ck.config.task != t for t in tasks):
                tasks.insert(0, ck.config.task)
    out: dict[str, Any] = {"tasks": [], "config": {"seeds": config.seeds, "steps": config.steps,
                                                    "tune_seeds": config.tune_seeds,
                                                    "checkpoints": list(config.checkpoints)}}
    md = []
    for task in tasks:
        label = task_label(task)
        if progress:
            print(f"transfer: {label}", flush=True)
        methods: dict[str, Any] = {}
        tuning = {}
        for name in config.baselines:
            tuned = grid_search(BaselineConfig(name=name), task, training_seeds(config.tune_seeds), config.steps,
                                lrs=DEFAULT_LRS, objective="mean_log_loss", device=device)
            tuning[name] = tuned
            methods[f"{name} (lr {tuned.lr:.3g}, tuned here)"] = BaselineMethod(tuned.config)
        for path, ck in zip(config.checkpoints, loaded):
            if ck.config.learned.arch == "paper" and ck.config.task.weight_shapes != task.weight_shapes:
                continue  # the paper architecture runs only on its own network size
            opt = load_checkpoint(path, task=task, device=device).optimizer
            methods[f"{opt.name} [trained on {ck.config.task.distribution} {ck.config.task.dims}]"] = opt
        curves: dict[str, Curves] = compare(methods, task, unseen_seeds(config.seeds), config.steps, device=device)
        record = results_to_json(curves, config.at_steps, tuning=tuning, include_curves=False)
        out["tasks"].append({"task": label, "dims": task.dims, "bias": task.bias,
                             "distribution": task.distribution, **record})
        md += [f"### {label}", "", markdown_table(curves, config.at_steps)]
    out["markdown"] = "\n".join(md)
    return out
