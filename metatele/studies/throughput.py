"""Meta-training throughput: trajectory-steps per second at several batch sizes.

One *trajectory-step* is one inner step of one trajectory inside a meta-training unroll (loss and
gradient, m1 and m2 forward, teleport) plus its share of the meta-backward and the Adam step. The
B = 1 row is the same work done one trajectory at a time, as the paper's code does. With
``estimator="pes"`` a trajectory-step is the forward step of both particles of its antithetic pair
(no meta-backward; :mod:`metatele.meta.pes`).

For a teleporting variant of the ``coordinatewise`` architecture the table also gives the share
of the time spent on the teleport gradient ``G`` (the double backward through the group action
that m2 reads): ``G`` is data to the meta-gradient, so its cost is its forward computation,
timed alone on the same trajectories (``K`` calls per meta-step) and divided by the time of a
meta-step.
"""
from __future__ import annotations

import platform
import time
from typing import Any

import torch

from ..meta.engine import UnrollEngine
from ..symmetry.teleport_grad import squared_loss, teleport_gradient
from ..meta.config import MetaTrainConfig, resolve_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def teleport_gradient_seconds(engine: UnrollEngine, repeats: int = 3) -> float:
    """Seconds of one :func:`~metatele.symmetry.teleport_grad.teleport_gradient` call on the engine's
    current trajectories (after one warm-up call)."""
    loss_fn = squared_loss(engine.trajectories.X, engine.trajectories.Y)
    teleport_gradient(engine.trajectories.W, engine.trajectories.X, loss_fn, x_qr=engine.trajectories.X_qr)
    _sync(engine.device)
    t0 = time.perf_counter()
    for _ in range(repeats):
        teleport_gradient(engine.trajectories.W, engine.trajectories.X, loss_fn, x_qr=engine.trajectories.X_qr)
    _sync(engine.device)
    return (time.perf_counter() - t0) / repeats


def measure(batch_size: int, variant: str = "update+tele", hidden: int = 300, unrolls: int = 3,
            device: str = "auto", dims: list[int] | None = None, unroll: int = 10,
            arch: str = "paper", bias: bool = False, distribution: str = "uniform",
            second_order: bool = False, estimator: str = "tbptt", pes_groups: int = 1) -> dict[str, Any]:
    """Time ``unrolls`` meta-steps (after one warm-up step) at one batch size.

    ``teleport_gradient_share`` (coordinatewise teleporting variants; ``None`` otherwise) is
    ``unroll × (seconds of one teleport-gradient call) / (seconds of one meta-step)``.
    """
    config = MetaTrainConfig.from_dict({
        "task": {"dims": dims or [20, 20, 20, 20], "bias": bias, "distribution": distribution},
        "learned": {"variant": variant, "lstm": {"hidden": hidden}, "arch": arch},
        "trajectories": 10**8, "steps": 100, "unroll": unroll, "batch_size": batch_size,
        "device": device, "second_order": second_order, "estimator": estimator,
        "pes_groups": min(pes_groups, batch_size),
    })
    engine = UnrollEngine(config)
    engine.meta_step()  # warm-up (allocations, kernel selection)
    _sync(engine.device)
    t0 = time.perf_counter()
    for _ in range(unrolls):
        engine.meta_step()  # reads its metrics back once per meta-step
    _sync(engine.device)
    seconds = time.perf_counter() - t0
    steps = batch_size * unroll * unrolls
    share = None
    if arch == "coordinatewise" and config.learned.uses_teleport:
        share = unroll * teleport_gradient_seconds(engine) / (seconds / unrolls)
    return {"batch_size": batch_size, "seconds": seconds, "trajectory_steps": steps,
            "trajectory_steps_per_s": steps / seconds, "device": str(engine.device),
            "teleport_gradient_share": share}


def run_throughput(batch_sizes: list[int], variant: str = "update+tele", hidden: int = 300,
                  unrolls: int = 3, device: str = "auto", dims: list[int] | None = None,
                  arch: str = "paper", bias: bool = False, distribution: str = "uniform",
                  second_order: bool = False, estimator: str = "tbptt", pes_groups: int = 1) -> list[dict[str, Any]]:
    """Measure every batch size and print a table with the speed-up over B = 1."""
    dev = resolve_device(device)
    sizes = sorted(set([1] + list(batch_sizes)))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    what = f"hidden {hidden}" if arch == "paper" else "coordinatewise"
    print(f"meta-training throughput, {variant}, {what}, dims {dims or [20, 20, 20, 20]}"
          f"{' with biases' if bias else ''}, {distribution}, unroll 10{', second order' if second_order else ''}"
          f"{f', PES with {pes_groups} group(s)' if estimator == 'pes' else ''}, "
          f"device {dev} ({name}), torch {torch.__version__}", flush=True)
    rows = []
    for B in sizes:
        r = measure(B, variant, hidden, unrolls if B > 1 else max(1, unrolls), str(dev), dims,
                    arch=arch, bias=bias, distribution=distribution, second_order=second_order,
                    estimator=estimator, pes_groups=pes_groups)
        rows.append(r)
    base = rows[0]["trajectory_steps_per_s"]
    print("| B | trajectory-steps/s | × vs B=1 | teleport-gradient share |")
    print("|---:|---:|---:|---:|")
    for r in rows:
        r["speedup"] = r["trajectory_steps_per_s"] / base
        share = "–" if r["teleport_gradient_share"] is None else f"{100 * r['teleport_gradient_share']:.0f}%"
        print(f"| {r['batch_size']} | {r['trajectory_steps_per_s']:,.0f} | {r['speedup']:.1f} | {share} |", flush=True)
    return rows
