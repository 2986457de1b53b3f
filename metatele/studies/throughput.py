"""Meta-training throughput: trajectory-steps per second at several batch sizes.

One *trajectory-step* is one inner step of one trajectory inside a meta-training unroll (loss and
gradient, m1 and m2 forward, teleport) plus its share of the meta-backward and the Adam step. The
B = 1 row is the same work done one trajectory at a time, as the paper's code does.
"""
from __future__ import annotations

import platform
import time
from typing import Any

import torch

from ..meta.engine import UnrollEngine
from ..meta.config import MetaTrainConfig, resolve_device


def measure(batch_size: int, variant: str = "update+tele", hidden: int = 300, unrolls: int = 3,
            device: str = "auto", dims: list[int] | None = None, unroll: int = 10) -> dict[str, Any]:
    """Time ``unrolls`` meta-steps (after one warm-up step) at one batch size."""
    config = MetaTrainConfig.from_dict({
        "task": {"dims": dims or [20, 20, 20, 20]},
        "learned": {"variant": variant, "lstm": {"hidden": hidden}},
        "trajectories": 10**8, "steps": 100, "unroll": unroll, "batch_size": batch_size,
        "device": device, "stagger": variant != "tele",
    })
    engine = UnrollEngine(config)
    engine.meta_step()  # warm-up (allocations, kernel selection)
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    t0 = time.perf_counter()
    for _ in range(unrolls):
        engine.meta_step()  # reads its metrics back once per meta-step
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)
    seconds = time.perf_counter() - t0
    steps = batch_size * unroll * unrolls
    return {"batch_size": batch_size, "seconds": seconds, "trajectory_steps": steps,
            "trajectory_steps_per_s": steps / seconds, "device": str(engine.device)}


def run_benchmark(batch_sizes: list[int], variant: str = "update+tele", hidden: int = 300,
                  unrolls: int = 3, device: str = "auto", dims: list[int] | None = None) -> list[dict[str, Any]]:
    """Measure every batch size and print a table with the speed-up over B = 1."""
    dev = resolve_device(device)
    sizes = sorted(set([1] + list(batch_sizes)))
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"{platform.processor() or 'cpu'}, {torch.get_num_threads()} threads"
    print(f"meta-training throughput, {variant}, dims {dims or [20, 20, 20, 20]}, hidden {hidden}, unroll 10, "
          f"device {dev} ({name}), torch {torch.__version__}", flush=True)
    rows = []
    for B in sizes:
        r = measure(B, variant, hidden, unrolls if B > 1 else max(1, unrolls), str(dev), dims)
        rows.append(r)
    base = rows[0]["trajectory_steps_per_s"]
    print("| B | trajectory-steps/s | × vs B=1 |")
    print("|---:|---:|---:|")
    for r in rows:
        r["speedup"] = r["trajectory_steps_per_s"] / base
        print(f"| {r['batch_size']} | {r['trajectory_steps_per_s']:,.0f} | {r['speedup']:.1f} |", flush=True)
    return rows
