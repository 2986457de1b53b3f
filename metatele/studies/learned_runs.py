"""One learned run of a benchmark protocol: meta-train (or load) a checkpoint, evaluate it.

A :class:`Job` is one (setting, method, meta-seed) of :class:`~metatele.studies.benchmark.BenchmarkRun`;
:func:`run_job` carries it out, in the benchmark's process or in a worker of its pool. A protocol's
``pretrained`` method is evaluated from its checkpoint as it is, never retrained or rewritten.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..configs import to_dict
from ..evaluation.evaluate import evaluate
from ..storage.jsonable import to_json
from ..meta import train as meta_training
from ..meta.config import MetaTrainConfig, resolve_device
from ..meta.engine import DivergenceError
from ..meta.mixture import build_engine
from ..meta.warmstart import warm_start_totals
from ..release.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..release.pretrained import shipped_name
from .aggregate import method_stats
from .selection import SelectionConfig, meta_train_selected


@dataclass
class Job:
    """One learned run: meta-train ``config`` (keeping the snapshot ``selection`` picks on
    validation seeds, if set), save its checkpoint, evaluate it on the test seeds."""

    section: str
    method: str
    meta_seed: int
    config: MetaTrainConfig
    checkpoint: Path
    selection: SelectionConfig | None = field(default=None)
    #: evaluate ``checkpoint`` as it is (a protocol's ``pretrained`` method): no meta-training
    pretrained: bool = False
    #: with ``pretrained``: evaluate the checkpoint's initialisation instead (its meta-parameters
    #: before the first meta-step, rebuilt from its config)
    initialisation: bool = False

    @property
    def selection_dict(self) -> dict[str, Any] | None:
        return to_json(to_dict(self.selection)) if self.selection else None

    @property
    def cost(self) -> float:
        """Rough relative cost (the pool starts the longest first, so no worker has a long tail)."""
        c = self.config
        if self.pretrained:
            return 1.0 + c.learned.uses_m2  # evaluation only; a teleport's double backward costs about as much again
        return c.trajectories * c.steps * c.learned.lstm.hidden * (1 + c.learned.uses_m2) * (1 + c.second_order)

    @property
    def key(self) -> str:
        if self.pretrained:
            return json.dumps({"pretrained": str(self.checkpoint), "task": to_dict(self.config.task),
                               "initialisation": self.initialisation}, sort_keys=True)
        extra = {"selection": self.selection_dict} if self.selection else {}
        return json.dumps({**self.config.to_dict(), **extra}, sort_keys=True)


def run_job(job: Job, test_seeds: list[int], steps: list[int], protocol_name: str, resume: bool = False,
            progress: bool = False, threads: int | None = None) -> dict[str, Any]:
    """Meta-train (or, with ``resume``, reload a matching checkpoint), evaluate, save the checkpoint.
    With ``job.selection``, :func:`~metatele.studies.selection.meta_train_selected` keeps the
    snapshot that scores best on validation seeds (never the test seeds); ``info["selected"]``
    says which meta-step it is from.

    Returns ``{"info", "curves", "timings"}``, or ``{"error", "timings"}`` when meta-training
    diverged. A top-level function so that worker processes can run it.
    """
    if threads:
        torch.set_num_threads(threads)
    config, path = job.config, job.checkpoint
    where = {"section": job.section, "method": job.method, "meta_seed": job.meta_seed}
    device = resolve_device(config.device)
    t0 = time.perf_counter()
    ck = None
    if job.pretrained:  # a shipped optimizer: evaluated as it is, never retrained or rewritten
        try:
            ck = load_checkpoint(path, device=device)
        except CheckpointError as e:
            return {"error": f"CheckpointError: {e}", "timings": [
                {"stage": "load", **where, "seconds": time.perf_counter() - t0, "failed": True}]}
    elif resume and path.is_file():
        try:
            ck = load_checkpoint(path, device=device)
        except CheckpointError:  # damaged or foreign: train again
            ck = None
    sel = job.selection_dict
    reused = job.pretrained or (ck is not None and ck.config.to_dict() == config.to_dict()
                                and (ck.provenance.get("selection") or {}).get("config") == sel)
    selection = None
    # a warm-started checkpoint (init_from) counts its sources' meta-steps, seconds and
    # trajectory-steps, and its selected meta-step from the start of its first source
    before = warm_start_totals(ck.provenance) if ck is not None else None
    if reused:
        opt, prov = ck.optimizer, ck.provenance
        train_seeds, meta_steps = tuple(prov["training_seeds"][-1]), prov.get("meta_steps")
        diverged, train_seconds = prov.get("diverged_trajectories"), prov.get("train_seconds")
        if before["meta_steps"]:
            meta_steps, train_seconds = (meta_steps or 0) + before["meta_steps"], (train_seconds or 0.0) + before["train_seconds"]
        selection = prov.get("selection")
        if selection is not None and "selected" not in selection:  # `metatele train`'s: the selected snapshot
            selection = {"selected": selection, "history": []}       # (its validation history is not in the file)
        if selection is not None and before["meta_steps"]:
            selection = {**selection, "selected": {**selection["selected"], "meta_step": selection["selected"]["meta_step"]
                                                   + before["meta_steps"]}}
        if job.initialisation:  # meta-step 0 of the same run: the engine built from the run's own config
            opt = build_engine(ck.config, device=device).optimizer
            meta_steps, train_seconds, selection = 0, 0.0, None
    else:
        try:
            if job.selection:
                result, selected, history = meta_train_selected(config, job.selection, progress=progress)
                selection = to_json({"config": sel, "selected": selected, "history": history})
            else:  # a run that validates itself (config.validation) ships its selected snapshot
                result = meta_training.meta_train(config, device=device, progress=progress)
                result.optimizer = result.selected_optimizer()
                if result.snapshots is not None:
                    selection = to_json({"config": to_dict(config.validation), "selected": result.snapshots.selected(),
                                         "history": result.snapshots.history})
        except DivergenceError as e:
            return {"error": f"DivergenceError: {e}", "timings": [
                {"stage": "meta-train", **where, "seconds": time.perf_counter() - t0, "failed": True}]}
        opt, train_seeds, meta_steps = result.optimizer, tuple(result.train_seeds), result.meta_steps
        diverged, train_seconds = result.diverged_total, time.perf_counter() - t0
    timings = [{"stage": "meta-train", **where, "seconds": time.perf_counter() - t0, "reused": reused,
                "trajectory_steps": ((ck.provenance.get("trajectory_steps") or 0) + before["trajectory_steps"]
                                     if job.pretrained
                                     else config.trajectories * config.steps)}]
    t0 = time.perf_counter()
    curves = evaluate(opt.eval(), config.task, test_seeds, max(steps), device=device, dtype=config.torch_dtype,
                      train_seeds=range(*train_seeds))
    curves.name = job.method
    timings.append({"stage": "evaluate", **where, "seconds": time.perf_counter() - t0})
    if not reused:
        save_checkpoint(path, opt, config,
                        provenance={"training_seeds": [list(train_seeds)], "meta_steps": meta_steps,
                                    "meta_seed": job.meta_seed, "train_seconds": round(train_seconds, 1),
                                    "diverged_trajectories": diverged,
                                    "benchmark": {"protocol": protocol_name, **where},
                                    **({"selection": selection} if selection else {})},
                        evaluation={"test_seeds": [test_seeds[0], test_seeds[-1] + 1],
                                    "summary": to_json(method_stats(curves, steps)["summary"])})
    info = {"meta_seed": job.meta_seed, "checkpoint": shipped_name(path) or str(path), "train_seeds": list(train_seeds),
            "meta_steps": meta_steps, "train_seconds": train_seconds, "diverged_trajectories": diverged,
            "reused": reused, **({"pretrained": True} if job.pretrained else {}),
            **({"initialisation": True} if job.initialisation else {})}
    if selection:
        info.update(selected=selection["selected"], selection_history=selection["history"])
    return {"info": info, "curves": curves, "timings": timings}
