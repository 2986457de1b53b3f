"""Experiments: the comparison of learned optimizers against baselines.

These functions glue the library stages together (evaluator → statistics → figures → wandb) so
that the command line and the scripts in ``experiments/`` stay thin. (Meta-training a checkpoint
is :func:`metatele.release.training.train_and_save`.)

* :func:`run_comparison` evaluates checkpoints and tuned baselines (each with and without a
  gradient-ascent teleport) on the same unseen seeds and writes ``results.json``,
  ``results.md``, PNG figures and one wandb run per method in one group.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch

from ..optimizers.baselines import BASELINES, BaselineConfig
from ..release.checkpoint import Checkpoint, load_checkpoint, read_metadata
from ..release.training import checkpoint_metadata
from ..configs import ConfigError, require, to_dict
from ..evaluation.evaluate import BaselineMethod, Curves, compare
from ..storage.jsonable import to_json
from ..evaluation.figures import plot_comparison
from ..evaluation.format import cell
from ..evaluation.identity import MethodId, baseline_id, learned_id
from ..evaluation.stats import markdown_table, report_steps, results_to_json, step_history, summarize
from ..storage.wandb_log import log_comparison_group, resolve_mode
from ..symmetry.strategies import TeleportSchedule
from ..tasks.family import TaskConfig, training_seeds, unseen_seeds
from ..evaluation.tuning import OBJECTIVE_TEXT, tune_all
from .aggregate import compare_pairs


def _log(msg: str) -> None:
    print(msg, flush=True)


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
        tune_seeds, tune_steps: size of the tuning problem (training seeds only); ``tune_steps``
            ``None`` (the default) tunes for ``steps``, the horizon the table reports: the best rate
            for a shorter run is not the best for the whole run.
        seeds, steps: unseen test seeds and inner steps.
        at_steps: steps reported in the table; those beyond ``steps`` are dropped and ``steps``
            itself is always reported (see :func:`~metatele.evaluation.stats.report_steps`).
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
    tune_steps: int | None = None
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
        require(self.tune_steps is None or self.tune_steps >= 1, "tune_steps", f"must be ≥ 1 or None, got {self.tune_steps}")
        require(self.dtype in ("float32", "float64"), "dtype", f"must be float32 or float64, got {self.dtype!r}")

    @property
    def tuning_steps(self) -> int:
        """The horizon the baselines are tuned for: ``tune_steps``, else ``steps``."""
        return self.tune_steps or self.steps


def _learned_method(ckpt: Checkpoint, path: str):
    opt = ckpt.optimizer
    opt.train_seeds = {s for r in ckpt.training_seeds for s in r}
    opt.checkpoint = path
    return opt


def comparison_task(config: CompareConfig) -> TaskConfig:
    """The one task a comparison runs on: ``config.task``, else the checkpoints' own.

    Raises:
        ConfigError: no task and no checkpoint, or checkpoints trained on different tasks (every
            method of a comparison runs on the same tasks; name the task to run them all on it).
    """
    if config.task is not None:
        return config.task
    require(bool(config.checkpoints), "task", "give a task or at least one checkpoint to take it from")
    tasks = {path: TaskConfig(**read_metadata(path)["config"]["task"]) for path in config.checkpoints}
    if len({json.dumps(to_dict(t), sort_keys=True) for t in tasks.values()}) > 1:
        seen = "; ".join(f"{path}: {t.distribution} {t.dims}" for path, t in tasks.items())
        raise ConfigError(f"checkpoints: they were trained on different tasks ({seen}); a comparison runs every "
                          "method on one task: compare them separately, or name the task (--dims/--distribution) "
                          "to evaluate them all on it")
    return next(iter(tasks.values()))


def build_methods(config: CompareConfig, task: TaskConfig) -> tuple[dict[str, Any], dict[str, Any], dict[str, MethodId]]:
    """Name → method for the checkpoints and the (tuned) baselines; the tuning records (name →
    :class:`~metatele.evaluation.tuning.TuneResult`); and each method's :class:`MethodId`."""
    methods: dict[str, Any] = {}
    ids: dict[str, MethodId] = {}
    for path in config.checkpoints:
        ckpt = load_checkpoint(path, task=task)
        opt = _learned_method(ckpt, str(path))
        name, candidate = opt.name, None
        if name in methods:
            candidate = Path(path).parent.name
            name = f"{name} [{candidate}]"
        methods[name] = opt
        ids[name] = learned_id(name, opt.config.variant, candidate)
    if config.paper_gd_lr is not None:
        name = f"gd(lr={config.paper_gd_lr:g})"
        methods[name] = BaselineMethod(BaselineConfig("gd", lr=config.paper_gd_lr))
        ids[name] = baseline_id(name)
    records: dict[str, Any] = {}
    if config.baselines:
        if config.tune == "none":
            tuned = {n: BaselineConfig(name=n) for n in config.baselines}
        else:
            kw = {"meta_steps": 30} if config.tune == "hypergradient" else {}
            _log(f"tuning {', '.join(config.baselines)} ({config.tune}) on {config.tune_seeds} training seeds, "
                 f"{config.tuning_steps} steps")
            tuned, records = tune_all(task, training_seeds(config.tune_seeds), config.tuning_steps,
                                      names=config.baselines, method=config.tune, **kw)
        tuned_tele: dict[str, BaselineConfig] = {}
        if config.teleport_baselines:
            # a teleport raises the gradient norm, so the rate is tuned with the teleport on
            schedule = TeleportSchedule(steps=list(config.teleport_steps), ascent_max_norm=config.teleport_max_norm)
            with_tele = {n: replace(c, teleport=schedule) for n, c in tuned.items()}
            if config.tune == "none":
                tuned_tele = with_tele
            else:
                tuned_tele, tele_records = tune_all(task, training_seeds(config.tune_seeds), config.tuning_steps,
                                                    names=config.baselines, method=config.tune, base=with_tele, **kw)
                records.update({f"{n}+tele": r for n, r in tele_records.items()})
        for n, cfg in tuned.items():
            methods[f"{n}(tuned)"] = BaselineMethod(cfg, f"{n}(tuned)")
            ids[f"{n}(tuned)"] = baseline_id(f"{n}(tuned)")
            if n in tuned_tele:
                methods[f"{n}(tuned)+tele"] = BaselineMethod(tuned_tele[n], f"{n}(tuned)+tele")
                ids[f"{n}(tuned)+tele"] = baseline_id(f"{n}(tuned)+tele", teleport=True, base=f"{n}(tuned)")
    return methods, records, ids


def _record_of(records: Mapping[str, Any], name: str) -> Any:
    """The tuning record of method ``name`` (``adam(tuned)+tele`` → ``records["adam+tele"]``)."""
    return records.get(name.replace("(tuned)", ""))


def method_config(method: Any, record: Any = None) -> dict[str, Any]:
    """What a method's wandb run and results record about it: a baseline's hyper-parameters and
    how they were tuned (with any edge flag); a learned optimizer's config, checkpoint and sha256."""
    if isinstance(method, BaselineMethod):
        out: dict[str, Any] = {"hyperparameters": to_dict(method.config)}
        if record is not None:
            out["tuning"] = {"method": record.method, "objective": record.objective, "steps": record.steps,
                             "extensions": record.extensions, "edge": record.edge}
        return out
    out = {"learned": to_dict(method.config)}
    if getattr(method, "checkpoint", None):
        out.update(checkpoint_metadata(method.checkpoint))
    return out


def _hyperparameter_lines(methods: Mapping[str, Any], records: Mapping[str, Any], tuning_steps: int) -> list[str]:
    lines = []
    for n, m in methods.items():
        if not isinstance(m, BaselineMethod):
            continue
        line = f"- {n}: lr = {m.config.lr:.3g}" + (f", momentum = {m.config.momentum}" if m.config.name == "momentum" else "")
        rec = _record_of(records, n)
        if rec is not None and rec.edge_note():
            line += f" — **{rec.edge_note()}**: the best rate may lie beyond it"
        lines.append(line)
    some = next(iter(records.values()), None)
    if some is not None:
        lines.append(f"\nTuned by {some.method} search on {len(some.seeds)} training seeds for {tuning_steps} steps, "
                     f"minimising {OBJECTIVE_TEXT[some.objective]}" + ("; a rate that diverges on any seed is out."
                                                                      if some.method == "grid" else "."))
    return lines


def run_comparison(
    config: CompareConfig,
    out: str | os.PathLike,
    wandb_mode: str | None = None,
    project: str = "metatele",
    group: str | None = None,
) -> dict[str, Any]:
    """Evaluate every method on the same unseen seeds; write JSON, markdown, figures, wandb runs.

    Nothing is written before every method is tuned and evaluated: a bad wandb mode, mixed-task
    checkpoints or a failed evaluation leave ``out`` as it was, and a failure while writing
    removes what this call created.

    Returns a dict with the results JSON (``results``), the markdown (``table``) and the paths.
    """
    mode = resolve_mode(wandb_mode)  # before hours of work
    out = Path(out)
    task = comparison_task(config)
    t0 = time.perf_counter()
    methods, records, ids = build_methods(config, task)
    dtype = torch.float64 if config.dtype == "float64" else torch.float32
    for m in methods.values():
        if isinstance(m, torch.nn.Module):
            m.to(dtype=dtype)
    seeds = list(unseen_seeds(config.seeds))
    shown = report_steps(config.at_steps, config.steps)
    _log(f"evaluating {len(methods)} methods on {len(seeds)} unseen seeds × {config.steps} steps")
    curves: dict[str, Curves] = compare(methods, task, seeds, config.steps, dtype=dtype,
                                        allow_overlap=config.allow_overlap)
    pairs = [[a, b] for a, b in config.pairs if a in curves and b in curves]
    results = results_to_json(curves, shown, tuning=records)
    results["comparisons"] = compare_pairs(curves, pairs, shown)
    results["steps_reported"] = shown
    results["methods"] = {n: {"id": ids[n].to_dict(), **method_config(m, _record_of(records, n))}
                          for n, m in methods.items()}
    results["hyperparameters"] = {n: to_dict(m.config) for n, m in methods.items() if isinstance(m, BaselineMethod)}
    results = to_json(results)
    table = markdown_table(curves, shown, comparisons=results["comparisons"])
    how = [("tuned on training seeds only" if config.tune != "none" else "their defaults, not tuned")] if config.baselines else []
    how += [f"gd(lr={config.paper_gd_lr:g}) at the paper's fixed rate, not tuned"] if config.paper_gd_lr is not None else []
    label = f" ({'; '.join(how)})" if how else ""
    table += (f"\nBaseline hyper-parameters{label}:\n\n"
              + "\n".join(_hyperparameter_lines(methods, records, config.tuning_steps)) + "\n")
    header = (f"# Comparison on {len(seeds)} unseen seeds, {config.steps} steps\n\n"
              f"Task: dims {task.dims}, distribution {task.distribution}. Mean log10 loss with 95% CI.\n\n")
    rows = []
    for name, c in curves.items():
        for s, st in summarize(c, shown)["at_step"].items():
            rows.append({"method": name, "step": s, "log10 loss [95% CI]": cell(st), "mean_log10_loss": st["mean"],
                         "ci_low": st["ci95"][0], "ci_high": st["ci95"][1], "diverged": st["diverged_fraction"]})
    group = group or f"compare-{time.strftime('%Y%m%d-%H%M%S')}"
    run_config = {**to_dict(config), "task": to_dict(task), "seeds": [seeds[0], seeds[-1] + 1], "pairs": pairs,
                  "at_steps": shown, "tune_steps": config.tuning_steps}
    created = [p for p in (out, *out.parents) if not p.exists()]
    written: list[Path] = []
    try:
        out.mkdir(parents=True, exist_ok=True)
        for name, text in (("results.json", json.dumps(results, indent=1, allow_nan=False)),
                           ("results.md", header + table)):
            written.append(out / name)
            (out / name).write_text(text)
        written.append(out / "figures")
        figs = plot_comparison(curves, out / "figures", ids)
        written.append(out / "wandb")
        dirs = log_comparison_group(
            project, group, {n: step_history(c) for n, c in curves.items()}, rows, config=run_config,
            method_configs={n: {"id": ids[n].to_dict(), **results["methods"][n]} for n in curves},
            mode=mode, dir=out)
    except BaseException:
        for p in written:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        for p in created:  # innermost first
            shutil.rmtree(p, ignore_errors=True)
        raise
    seconds = time.perf_counter() - t0
    _log(table)
    _log(f"compared {len(curves)} methods in {seconds:.0f} s")
    _log(f"results: {out / 'results.json'}, {out / 'results.md'}; figures: {out / 'figures'}")
    wandb_dir = next((d for d in dirs.values() if d is not None), None)
    if wandb_dir is not None:
        _log(f"wandb runs (group {group!r}): {Path(wandb_dir).parent}  (upload: wandb sync {Path(wandb_dir).parent}/offline-run-*)")
    return {"results": results, "table": table, "figures": figs, "wandb": dirs, "seconds": seconds}
