"""The transfer sections of ``metatele benchmark``: trained checkpoints on other tasks, without retraining.

A protocol's ``transfer`` (:class:`~metatele.studies.protocol.Transfer`) names a setting and target
tasks. For each target, :class:`~metatele.studies.benchmark.BenchmarkRun` tunes and evaluates the
protocol's baselines on the target task (as for a setting), and :func:`transfer_methods` evaluates
every meta-seed's checkpoint of the setting's learned methods on it, on the same test seeds. A
``paper``-architecture optimizer is tied to its training network's weight shapes: on a target with
other shapes it is skipped, with the reason recorded (the ``coordinatewise`` architecture runs on
any network).
"""
from __future__ import annotations

import time
from typing import Any, Mapping, Sequence

import torch

from ..evaluation.evaluate import Curves, evaluate
from ..release.checkpoint import load_checkpoint
from .protocol import BenchmarkProtocol, TransferTarget


def cannot_transfer(protocol: BenchmarkProtocol, method: str, target: TransferTarget) -> str | None:
    """Why ``method`` of the transfer setting cannot run on ``target`` without retraining, or ``None``."""
    config = protocol.learned_config(protocol.transfer.setting, method, protocol.meta_seeds[0])
    if config.learned.arch == "paper" and config.task.weight_shapes != target.task.weight_shapes:
        return (f"the paper architecture's LSTMs are sized for the weight shapes of {config.task.dims}"
                f"{' with biases' if config.task.bias else ''}; it cannot run on {target.label} without "
                "retraining (only the coordinatewise architecture runs on any network)")
    return None


def transfer_methods(protocol: BenchmarkProtocol, section: str, target: TransferTarget,
                     source: Mapping[str, Mapping[str, Any]], methods: Sequence[str], seeds: list[int],
                     device: torch.device) -> tuple[dict[str, Any], dict[str, list[Curves]], dict[str, str], list[dict]]:
    """Evaluate the checkpoints of the transfer setting's learned ``methods`` on ``target``.

    Args:
        source: the setting's entries (method → JSON entry with ``meta_seeds_info``).
        methods: the learned methods this run includes (filtered by ``transfer.methods``).
        seeds: the shared test seeds; every curve runs to the last reported step.

    Returns:
        ``(entries, curves, skipped, timings)``: method → entry (``kind: learned``, its source
        config and meta-seed infos, marked ``shared_with`` the source runs), method → one Curves
        per meta-seed, method → the reason it was skipped, and the evaluation timings.
    """
    p = protocol
    chosen = [m for m in methods if p.transfer.methods is None or m in p.transfer.methods]
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
        dtype = p.learned_config(p.transfer.setting, m, p.meta_seeds[0]).torch_dtype
        infos, per_seed = [], []
        for info in src["meta_seeds_info"]:
            t0 = time.perf_counter()
            opt = load_checkpoint(info["checkpoint"], task=target.task, device=device).optimizer
            c = evaluate(opt.eval(), target.task, seeds, max(p.steps), device=device, dtype=dtype)
            c.name = m
            per_seed.append(c)
            infos.append({**info, "reused": True, "shared_with": f"{p.transfer.setting}/{m}"})
            timings.append({"stage": "evaluate", "section": section, "method": m, "meta_seed": info["meta_seed"],
                            "seconds": time.perf_counter() - t0})
        entries[m] = {"kind": "learned", "id": src["id"], "config": src["config"], "meta_seeds_info": infos,
                      "failed": [], "transferred_from": p.transfer.setting}
        curves[m] = per_seed
    return entries, curves, skipped, timings
