"""The transfer sections of ``metatele benchmark``: trained checkpoints on other tasks, without retraining.

A protocol's ``transfer`` (:class:`~metatele.studies.protocol.Transfer`) names a setting and target
tasks. For each target, :class:`~metatele.studies.benchmark.BenchmarkRun` tunes and evaluates the
protocol's baselines on the target task (as for a setting), and evaluates every meta-seed's
checkpoint of the setting's learned methods on it, on the same test seeds. A
``paper``-architecture optimizer is tied to its training network's weight shapes: on a target
with other shapes it is skipped, with the reason recorded (the ``coordinatewise`` architecture
runs on any network).

Each evaluation (one checkpoint on one target) is :func:`evaluate_transfer`, a top-level function,
so that :class:`~metatele.studies.benchmark.BenchmarkRun` can run it in its worker pool as soon as
the checkpoint's meta-training has finished (:func:`transfer_calls` says which); :func:`transfer_methods`
then assembles the section from those results in report order.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from ..evaluation.evaluate import Curves, evaluate
from ..release.checkpoint import load_checkpoint
from ..tasks.family import TaskConfig
from .protocol import BenchmarkProtocol, TransferTarget


def cannot_transfer(protocol: BenchmarkProtocol, method: str, target: TransferTarget) -> str | None:
    """Why ``method`` of the transfer setting cannot run on ``target`` without retraining, or ``None``."""
    config = protocol.learned_config(protocol.transfer.setting, method, protocol.meta_seeds[0])
    if config.learned.arch == "paper" and config.task.weight_shapes != target.task.weight_shapes:
        return (f"the paper architecture's LSTMs are sized for the weight shapes of {config.task.dims}"
                f"{' with biases' if config.task.bias else ''}; it cannot run on {target.label} without "
                "retraining (only the coordinatewise architecture runs on any network)")
    return None


def transferred_methods(protocol: BenchmarkProtocol, methods: Sequence[str]) -> list[str]:
    """The learned ``methods`` of this run that the protocol transfers (``transfer.methods``), in order."""
    return [m for m in methods if protocol.transfer.methods is None or m in protocol.transfer.methods]


def evaluate_transfer(checkpoint: str | Path, task: TaskConfig, seeds: list[int], steps: int, name: str,
                      device: torch.device | str, dtype: torch.dtype, threads: int | None = None) -> dict[str, Any]:
    """Evaluate the optimizer saved at ``checkpoint`` on ``task`` (its test ``seeds``, ``steps`` steps).

    Returns ``{"curves", "seconds"}``. A top-level function so that worker processes can run it;
    ``threads`` sets the torch threads there (as :func:`~metatele.studies.benchmark.run_job` does).
    """
    if threads:
        torch.set_num_threads(threads)
    t0 = time.perf_counter()
    device = torch.device(device)
    opt = load_checkpoint(checkpoint, task=task, device=device).optimizer
    c = evaluate(opt.eval(), task, seeds, steps, device=device, dtype=dtype)
    c.name = name
    return {"curves": c, "seconds": time.perf_counter() - t0}


def transfer_methods(protocol: BenchmarkProtocol, section: str, target: TransferTarget,
                     source: Mapping[str, Mapping[str, Any]], methods: Sequence[str],
                     evaluated: Mapping[tuple[str, int], Mapping[str, Any]],
                     ) -> tuple[dict[str, Any], dict[str, list[Curves]], dict[str, str], list[dict]]:
    """The transfer section of ``target``: the checkpoints of the transfer setting's learned
    ``methods``, evaluated on it (by :func:`evaluate_transfer`, in the benchmark's worker pool).

    Args:
        source: the setting's entries (method → JSON entry with ``meta_seeds_info``).
        methods: the learned methods this run includes (filtered by ``transfer.methods``).
        evaluated: (method, meta-seed) → the :func:`evaluate_transfer` result for this target,
            for every checkpoint that :func:`transfer_calls` named.

    Returns:
        ``(entries, curves, skipped, timings)``: method → entry (``kind: learned``, its source
        config and meta-seed infos, marked ``shared_with`` the source runs), method → one Curves
        per meta-seed, method → the reason it was skipped, and the evaluation timings.
    """
    p = protocol
    chosen = transferred_methods(p, methods)
    entries: dict[str, Any] = {}
    curves: dict[str, list[Curves]] = {}
    skipped: dict[str, str] = {}
    timings: list[dict[str, Any]] = []
    for m in chosen:
        why = cannot_transfer(p, m, target)
        if why:
            skipped[m] = why
            continue
        src = source.get(m)
        if not src or not src["meta_seeds_info"]:
            skipped[m] = f"no trained checkpoint in {p.transfer.setting} (meta-training failed)"
            continue
        infos, per_seed = [], []
        for info in src["meta_seeds_info"]:
            r = evaluated[(m, info["meta_seed"])]
            per_seed.append(r["curves"])
            infos.append({**info, "reused": True, "shared_with": f"{p.transfer.setting}/{m}"})
            timings.append({"stage": "evaluate", "section": section, "method": m, "meta_seed": info["meta_seed"],
                            "seconds": r["seconds"]})
        entries[m] = {"kind": "learned", "id": src["id"], "config": src["config"], "meta_seeds_info": infos,
                      "failed": [], "transferred_from": p.transfer.setting}
        curves[m] = per_seed
    return entries, curves, skipped, timings


def transfer_calls(protocol: BenchmarkProtocol, targets: Mapping[str, TransferTarget], methods: Sequence[str],
                   jobs: Sequence[Any]) -> dict[str, list[tuple[str, str, int, torch.dtype]]]:
    """Which transfer evaluations each learned run's checkpoint feeds: run key → ``[(target
    section, method, meta-seed, dtype)]``, for the transfer setting's ``jobs`` (objects with
    ``section``, ``method``, ``meta_seed``, ``config`` and ``key``, as
    :class:`~metatele.studies.benchmark.Job`) of the methods that are transferred and can run there."""
    out: dict[str, list[tuple[str, str, int, torch.dtype]]] = {}
    chosen = transferred_methods(protocol, methods) if targets else []
    for j in jobs:
        if j.method in chosen and j.section == protocol.transfer.setting:
            out.setdefault(j.key, []).extend((t, j.method, j.meta_seed, j.config.torch_dtype)
                                             for t, x in targets.items() if not cannot_transfer(protocol, j.method, x))
    return out
