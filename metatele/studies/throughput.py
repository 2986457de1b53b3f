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

:func:`profile_meta_step` splits a meta-step's time by phase (``metatele throughput --profile``): the
phases of the inner step (:mod:`metatele.profiling`), the meta-backward and the meta-optimizer's
step, from :mod:`torch.profiler` ranges.
"""
from __future__ import annotations

import platform
import time
from typing import Any, Iterable

import torch
from torch.autograd.profiler_util import FunctionEvent

from ..meta.engine import UnrollEngine
from ..profiling import PHASES, PREFIX
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


def bench_engine(batch_size: int, variant: str = "update+tele", hidden: int = 300, device: str = "auto",
                 dims: list[int] | None = None, unroll: int = 10, arch: str = "paper", bias: bool = False,
                 distribution: str = "uniform", second_order: bool = False, estimator: str = "tbptt",
                 pes_groups: int = 1) -> UnrollEngine:
    """The engine the benchmark times, after one warm-up meta-step (allocations, kernel selection)."""
    config = MetaTrainConfig.from_dict({
        "task": {"dims": dims or [20, 20, 20, 20], "bias": bias, "distribution": distribution},
        "learned": {"variant": variant, "lstm": {"hidden": hidden}, "arch": arch},
        "trajectories": 10**8, "steps": 100, "unroll": unroll, "batch_size": batch_size,
        "device": device, "second_order": second_order, "estimator": estimator,
        "pes_groups": min(pes_groups, batch_size),
    })
    engine = UnrollEngine(config)
    engine.meta_step()
    return engine


def measure(batch_size: int, variant: str = "update+tele", hidden: int = 300, unrolls: int = 3,
            device: str = "auto", dims: list[int] | None = None, unroll: int = 10,
            arch: str = "paper", bias: bool = False, distribution: str = "uniform",
            second_order: bool = False, estimator: str = "tbptt", pes_groups: int = 1) -> dict[str, Any]:
    """Time ``unrolls`` meta-steps (after one warm-up step) at one batch size.

    ``teleport_gradient_share`` (coordinatewise teleporting variants; ``None`` otherwise) is
    ``unroll × (seconds of one teleport-gradient call) / (seconds of one meta-step)``.
    """
    engine = bench_engine(batch_size, variant, hidden, device, dims, unroll, arch, bias, distribution,
                          second_order, estimator, pes_groups)
    config = engine.config
    _sync(engine.device)
    t0 = time.perf_counter()
    for _ in range(unrolls):
        engine.meta_step()  # reads its metrics back once per meta-step
    _sync(engine.device)
    seconds = time.perf_counter() - t0
    steps = batch_size * unroll * unrolls
    share = None
    if arch == "coordinatewise" and config.learned.uses_m2:  # m2 reads the teleport gradient
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


#: the phases outside the inner step, after :data:`metatele.profiling.PHASES`
META_BACKWARD, META_OPTIMIZER, OTHER = "meta-backward", "meta-optimizer step", "other (meta-loss, bookkeeping)"


def _phase_of(event: FunctionEvent) -> str | None:
    """The phase a profiler range opens: a :func:`metatele.profiling.phase`, the meta-optimizer's
    step (torch.optim's own range), or one node of a backward pass (``None``: none of these)."""
    name = event.name
    if name.startswith(PREFIX):
        return name[len(PREFIX):]
    if name.startswith(("Optimizer.step#", "Optimizer.zero_grad#")):
        return META_OPTIMIZER
    if name.startswith("autograd::engine::evaluate_function"):
        return META_BACKWARD
    return None


def phase_seconds(events: Iterable[FunctionEvent]) -> dict[str, float]:
    """Seconds per phase of the profiler ``events``, each range less the phases nested in it.

    A backward node inside a phase (the teleport gradient's double backward) belongs to that
    phase; only the backward nodes outside every phase make the meta-backward.
    """
    seconds: dict[str, float] = {}
    for event in events:
        phase = _phase_of(event)
        if phase is None:
            continue
        parent = event.cpu_parent
        while parent is not None and _phase_of(parent) is None:
            parent = parent.cpu_parent
        if phase == META_BACKWARD and parent is not None:
            continue  # part of the phase it runs in
        elapsed = event.time_range.elapsed_us() * 1e-6
        seconds[phase] = seconds.get(phase, 0.0) + elapsed
        if parent is not None:
            outer = _phase_of(parent)
            seconds[outer] = seconds.get(outer, 0.0) - elapsed
    return seconds


def profile_meta_step(batch_size: int, variant: str = "update+tele", meta_steps: int = 3, device: str = "auto",
                      dims: list[int] | None = None, arch: str = "coordinatewise", bias: bool = False,
                      distribution: str = "gaussian", second_order: bool = True, hidden: int = 300,
                      estimator: str = "tbptt", pes_groups: int = 1) -> dict[str, Any]:
    """Time ``meta_steps`` meta-steps without and then with :mod:`torch.profiler`, and split the
    profiled time by phase.

    Returns ``{"batch_size", "seconds" (a meta-step without the profiler), "cpu_seconds" (its
    CPU time: this process's, all threads), "profiled_seconds" (with the profiler), "phases":
    {phase: seconds per meta-step}}``; the phases are
    :data:`metatele.profiling.PHASES`, :data:`META_BACKWARD`, :data:`META_OPTIMIZER` and
    :data:`OTHER` (the rest of the profiled wall time) and add up to ``profiled_seconds``.
    """
    engine = bench_engine(batch_size, variant, hidden, device, dims, arch=arch, bias=bias, distribution=distribution,
                          second_order=second_order, estimator=estimator, pes_groups=pes_groups)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(meta_steps):
        engine.meta_step()
    _sync(engine.device)
    plain, cpu = (time.perf_counter() - t0) / meta_steps, (time.process_time() - c0) / meta_steps
    activities = [torch.profiler.ProfilerActivity.CPU]
    with torch.profiler.profile(activities=activities) as prof:
        t0 = time.perf_counter()
        for _ in range(meta_steps):
            engine.meta_step()
        _sync(engine.device)
        profiled = (time.perf_counter() - t0) / meta_steps
    phases = {k: v / meta_steps for k, v in phase_seconds(prof.events()).items()}
    phases = {k: phases.get(k, 0.0) for k in (*PHASES, META_BACKWARD, META_OPTIMIZER)}
    phases[OTHER] = profiled - sum(phases.values())
    return {"batch_size": batch_size, "seconds": plain, "cpu_seconds": cpu, "profiled_seconds": profiled,
            "phases": phases}


def run_profile(batch_sizes: list[int], variant: str = "update+tele", meta_steps: int = 3, device: str = "auto",
                dims: list[int] | None = None, arch: str = "coordinatewise", bias: bool = False,
                distribution: str = "gaussian", second_order: bool = True, hidden: int = 300,
                estimator: str = "tbptt", pes_groups: int = 1) -> list[dict[str, Any]]:
    """:func:`profile_meta_step` at every batch size; prints one table (ms per meta-step and share)."""
    dev = resolve_device(device)
    print(f"profile of one meta-step, {variant}, {arch}, dims {dims or [20, 20, 20, 20]}"
          f"{' with biases' if bias else ''}, {distribution}, unroll 10{', second order' if second_order else ''}"
          f"{f', PES with {pes_groups} group(s)' if estimator == 'pes' else ''}, "
          f"device {dev}, {torch.get_num_threads()} torch thread(s), torch {torch.__version__}", flush=True)
    rows = [profile_meta_step(B, variant, meta_steps, str(dev), dims, arch, bias, distribution, second_order, hidden,
                              estimator, pes_groups) for B in batch_sizes]
    print("| phase | " + " | ".join(f"B={r['batch_size']}: ms (share)" for r in rows) + " |")
    print("|---|" + "---:|" * len(rows))
    for phase in rows[0]["phases"]:
        cells = [f"{1e3 * r['phases'][phase]:.1f} ({100 * r['phases'][phase] / r['profiled_seconds']:.0f}%)"
                 for r in rows]
        print(f"| {phase} | " + " | ".join(cells) + " |")
    print("| **meta-step, profiled** | " + " | ".join(f"{1e3 * r['profiled_seconds']:.1f}" for r in rows) + " |")
    print("| meta-step, no profiler | " + " | ".join(f"{1e3 * r['seconds']:.1f}" for r in rows) + " |")
    print("| its CPU time (all threads) | " + " | ".join(f"{1e3 * r['cpu_seconds']:.1f}" for r in rows) + " |",
          flush=True)
    return rows
