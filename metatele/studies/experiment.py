"""Experiments: meta-train-and-save, and the comparison of learned optimizers against baselines.

These functions glue the library stages together (engine → checkpoint, evaluator → statistics →
figures → wandb) so that the command line and the scripts in ``experiments/`` stay thin.

* :func:`train_and_save` meta-trains from a :class:`MetaTrainConfig`, writes the checkpoint, the
  history and the config to a folder, and logs to wandb (``job_type='meta-train'``).
* :func:`run_comparison` evaluates checkpoints and tuned baselines (each with and without a
  gradient-ascent teleport) on the same unseen seeds and writes ``results.json``,
  ``results.md``, PNG figures and one wandb run per method in one group.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from ..optimizers.baselines import BASELINES, BaselineConfig
from ..release.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from ..configs import require, to_dict
from ..evaluation.evaluate import BaselineMethod, Curves, compare
from ..evaluation.stats import markdown_table, paired_comparison, results_to_json, summarize, verdict
from ..evaluation.figures import plot_gradsq_vs_loss, plot_loss_vs_step, plot_loss_vs_time
from ..symmetry.strategies import TeleportSchedule
from ..tasks.family import TaskConfig, training_seeds, unseen_seeds
from ..meta.train import MetaTrainResult, meta_train
from ..meta.config import MetaTrainConfig
from ..evaluation.tuning import tune_all


def _log(msg: str) -> None:
    print(msg, flush=True)


# -- meta-training ---------------------------------------------------------------------------
def train_and_save(
    config: MetaTrainConfig,
    out: str | os.PathLike,
    wandb_mode: str | None = None,
    project: str = "metatele",
    group: str | None = None,
    progress: bool = True,
    callback: Callable[[Any, dict[str, Any]], None] | None = None,
    engine: Any = None,
) -> tuple[MetaTrainResult, Path]:
    """Meta-train and write ``out/checkpoint.safetensors``, ``out/history.json``, ``out/config.json``.

    Logs per-meta-step metrics and the checkpoint (as a ``model`` artifact) to wandb.
    Returns the result and the checkpoint path.
    """
    from ..storage.wandb_log import init_run, log_checkpoint_artifact, run_dir

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = init_run(project, group or f"train-{config.learned.variant}", "meta-train", config,
                   name=f"{config.learned.variant}-seed{config.seed}", mode=wandb_mode, dir=out)

    def log_step(engine, metrics):
        run.log({k: v for k, v in metrics.items() if k != "meta_step"}, step=metrics["meta_step"])
        if callback is not None:
            callback(engine, metrics)

    try:
        result = meta_train(config, progress=progress, callback=log_step, engine=engine)
        seconds = result.train_seconds  # every segment of a resumed run
        if engine is not None and getattr(engine, "prior_history", None):  # a resumed run: whole history
            result.history = list(engine.prior_history) + result.history
        ckpt = save_checkpoint(out / "checkpoint.safetensors", result.optimizer, config,
                               provenance=result.provenance())
        with open(out / "history.json", "w") as f:
            json.dump(result.history, f, indent=1)
        with open(out / "config.json", "w") as f:
            json.dump(to_dict(config), f, indent=1)
        run.summary["train_seconds"] = seconds
        log_checkpoint_artifact(run, ckpt, name=f"{config.learned.variant.replace('+', '-')}-seed{config.seed}")
        where = run_dir(run)
    finally:
        run.finish()
    _log(f"meta-trained {config.learned.variant} in {seconds:.0f} s "
         f"({result.meta_steps} meta-steps, {result.diverged_total} diverged trajectories) → {ckpt}"
         + (f"; wandb run: {where}" if where else ""))
    return result, ckpt


# -- comparison ------------------------------------------------------------------------------
@dataclass
class CompareConfig:
    """A comparison on unseen seeds.

    Attributes:
        task: the task family (default: the checkpoints' own).
        checkpoints: learned optimizers to evaluate (paths).
        baselines: hand-designed optimizers, each tuned on training seeds.
        paper_gd_lr: also run GD at this fixed rate (the paper's 3e-4); ``None`` to skip.
        teleport_baselines: also run every baseline with a gradient-ascent teleport.
        teleport_steps: the inner steps at which baselines teleport (gradient ascent, 8 steps at
            1e-7 as in the paper).
        teleport_max_norm: cap on ``‖T‖`` per ascent step, so that the ascent stays finite at
            large losses (``None``: uncapped).
        tune: ``grid``, ``hypergradient`` or ``none`` (use the default hyper-parameters).
        tune_seeds, tune_steps: size of the tuning problem (training seeds only).
        seeds, steps: unseen test seeds and inner steps.
        at_steps: steps reported in the table.
        pairs: the paired comparisons stated in the report, ``[a, b]`` by method name (pairs
            naming a method that is not in the comparison are skipped).
        allow_overlap: evaluate even on seeds a checkpoint was trained on (flagged in the output).
        dtype: ``float32`` or ``float64``.
    """

    task: TaskConfig | None = None
    checkpoints: list[str] = field(default_factory=list)
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    paper_gd_lr: float | None = 3e-4
    teleport_baselines: bool = True
    teleport_steps: list[int] = field(default_factory=lambda: [5])
    teleport_max_norm: float | None = 0.5
    tune: str = "grid"
    tune_seeds: int = 20
    tune_steps: int = 100
    seeds: int = 100
    steps: int = 100
    at_steps: list[int] = field(default_factory=lambda: [10, 30, 100])
    pairs: list[list[str]] = field(default_factory=lambda: [
        ["LSTM(update+tele)", "LSTM(update)"], ["LSTM(update+tele)", "gd(lr=0.0003)"],
        ["LSTM(update+tele)", "gd(tuned)"], ["LSTM(update)", "gd(tuned)"],
        ["LSTM(lr+tele)", "gd(tuned)"], ["LSTM(lr+tele)", "gd(lr=0.0003)"],
        ["gd(tuned)+tele", "gd(tuned)"], ["adam(tuned)+tele", "adam(tuned)"],
    ])
    allow_overlap: bool = False
    dtype: str = "float32"

    def __post_init__(self) -> None:
        if isinstance(self.task, dict):
            self.task = TaskConfig(**self.task)
        for b in self.baselines:
            require(b in BASELINES, "baselines", f"each must be one of {BASELINES}, got {b!r}")
        require(self.tune in ("grid", "hypergradient", "none"), "tune", f"must be grid, hypergradient or none, got {self.tune!r}")
        require(self.seeds >= 2, "seeds", f"need at least 2 test seeds for confidence intervals, got {self.seeds}")
        require(self.steps >= 1, "steps", f"must be ≥ 1, got {self.steps}")
        require(self.dtype in ("float32", "float64"), "dtype", f"must be float32 or float64, got {self.dtype!r}")


def _learned_method(ckpt: Checkpoint):
    opt = ckpt.optimizer
    opt.train_seeds = {s for r in ckpt.training_seeds for s in r}
    return opt


def build_methods(config: CompareConfig, task: TaskConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Name → method for the checkpoints and the (tuned) baselines; plus tuning records."""
    methods: dict[str, Any] = {}
    for path in config.checkpoints:
        ckpt = load_checkpoint(path, task=task)
        opt = _learned_method(ckpt)
        name = opt.name
        if name in methods:
            name = f"{name} [{Path(path).parent.name}]"
        methods[name] = opt
    if config.paper_gd_lr is not None:
        methods[f"gd(lr={config.paper_gd_lr:g})"] = BaselineMethod(BaselineConfig("gd", lr=config.paper_gd_lr))
    records: dict[str, Any] = {}
    if config.baselines:
        if config.tune == "none":
            tuned = {n: BaselineConfig(name=n) for n in config.baselines}
        else:
            kw = {"meta_steps": 30} if config.tune == "hypergradient" else {}
            _log(f"tuning {', '.join(config.baselines)} ({config.tune}) on {config.tune_seeds} training seeds")
            tuned, records = tune_all(task, training_seeds(config.tune_seeds), config.tune_steps,
                                      names=config.baselines, method=config.tune, **kw)
        tuned_tele: dict[str, BaselineConfig] = {}
        if config.teleport_baselines:
            # a teleport raises the gradient norm, so the rate is tuned with the teleport on
            schedule = TeleportSchedule(steps=list(config.teleport_steps), ascent_max_norm=config.teleport_max_norm)
            with_tele = {n: replace(c, teleport=schedule) for n, c in tuned.items()}
            if config.tune == "none":
                tuned_tele = with_tele
            else:
                tuned_tele, tele_records = tune_all(task, training_seeds(config.tune_seeds), config.tune_steps,
                                                    names=config.baselines, method=config.tune, base=with_tele, **kw)
                records.update({f"{n}+tele": r for n, r in tele_records.items()})
        for n, cfg in tuned.items():
            methods[f"{n}(tuned)"] = BaselineMethod(cfg, f"{n}(tuned)")
            if n in tuned_tele:
                methods[f"{n}(tuned)+tele"] = BaselineMethod(tuned_tele[n], f"{n}(tuned)+tele")
    return methods, records


def run_comparison(
    config: CompareConfig,
    out: str | os.PathLike,
    wandb_mode: str | None = None,
    project: str = "metatele",
    group: str | None = None,
) -> dict[str, Any]:
    """Evaluate every method on the same unseen seeds; write JSON, markdown, figures, wandb runs.

    Returns a dict with the results JSON (``results``), the markdown (``table``) and the paths.
    """
    from ..storage.wandb_log import log_comparison_group

    out = Path(out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    task = config.task
    if task is None:
        require(bool(config.checkpoints), "task", "give a task or at least one checkpoint to take it from")
        task = load_checkpoint(config.checkpoints[0]).config.task
    t0 = time.perf_counter()
    methods, records = build_methods(config, task)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    for m in methods.values():
        if isinstance(m, torch.nn.Module):
            m.to(dtype=dtype)
    seeds = list(unseen_seeds(config.seeds))
    _log(f"evaluating {len(methods)} methods on {len(seeds)} unseen seeds × {config.steps} steps")
    curves: dict[str, Curves] = compare(methods, task, seeds, config.steps, dtype=dtype,
                                        allow_overlap=config.allow_overlap)
    pairs = [(a, b) for a, b in config.pairs if a in curves and b in curves]
    results = results_to_json(curves, config.at_steps, tuning=records)
    results["comparisons"] = [
        {**c, "verdict": verdict(c)}
        for a, b in pairs for s in config.at_steps if s <= config.steps
        for c in [paired_comparison(curves[a], curves[b], s)]
    ]
    results["hyperparameters"] = {n: to_dict(m.config) for n, m in methods.items() if isinstance(m, BaselineMethod)}
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=1, allow_nan=False)
    table = markdown_table(curves, config.at_steps)
    if pairs:
        table += ("\nPaired t-tests of log10-loss on the same seeds (α = 0.05, no multiple-comparison "
                  "correction; Δ < 0 means the first method is lower; when seeds diverged, a sign test over "
                  "all seeds decides):\n\n" + "".join(f"- {c['verdict']}\n" for c in results["comparisons"]))
    tuned_lines = [f"- {n}: lr = {m.config.lr:.3g}" + (f", momentum = {m.config.momentum}" if m.config.name == "momentum" else "")
                   for n, m in methods.items() if isinstance(m, BaselineMethod)]
    how = [("tuned on training seeds only" if config.tune != "none" else "their defaults, not tuned")] if config.baselines else []
    how += [f"gd(lr={config.paper_gd_lr:g}) at the paper's fixed rate, not tuned"] if config.paper_gd_lr is not None else []
    label = f" ({'; '.join(how)})" if how else ""
    table += f"\nBaseline hyper-parameters{label}:\n\n" + "\n".join(tuned_lines) + "\n"
    header = (f"# Comparison on {len(seeds)} unseen seeds, {config.steps} steps\n\n"
              f"Task: dims {task.dims}, distribution {task.distribution}. Mean log10 loss with 95% CI.\n\n")
    (out / "results.md").write_text(header + table)
    figs = {
        "loss_vs_step": plot_loss_vs_step(curves, str(out / "figures" / "loss_vs_step.png")),
        "loss_vs_time": plot_loss_vs_time(curves, str(out / "figures" / "loss_vs_time.png")),
        "gradsq_vs_loss": plot_gradsq_vs_loss(curves, str(out / "figures" / "gradsq_vs_loss.png")),
    }
    rows = []
    for name, c in curves.items():
        sm = summarize(c, config.at_steps)
        for s, st in sm["at_step"].items():
            rows.append({"method": name, "step": s, "mean_log10_loss": st["mean"],
                         "ci_low": st["ci95"][0], "ci_high": st["ci95"][1], "diverged": sm["diverged_fraction"]})
    group = group or f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    dirs = log_comparison_group(
        project, group, {n: {"loss": c.loss, "grad_sq": c.grad_sq} for n, c in curves.items()}, rows,
        config={**to_dict(config), "task": to_dict(task), "seeds": [seeds[0], seeds[-1] + 1]},
        mode=wandb_mode, dir=out,
    )
    seconds = time.perf_counter() - t0
    _log(table)
    _log(f"compared {len(curves)} methods in {seconds:.0f} s")
    _log(f"results: {out / 'results.json'}, {out / 'results.md'}; figures: {out / 'figures'}")
    wandb_dir = next((d for d in dirs.values() if d is not None), None)
    if wandb_dir is not None:
        _log(f"wandb runs (group {group!r}): {Path(wandb_dir).parent}  (upload: wandb sync {Path(wandb_dir).parent}/offline-run-*)")
    return {"results": results, "table": table, "figures": figs, "wandb": dirs, "seconds": seconds}
