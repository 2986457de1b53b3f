"""The meta-training part of ``benchmarks/gpu_check.sh``: train for a fixed wall-clock time, save a
checkpoint, and load it back where there is no GPU.

    python benchmarks/gpu_check.py train --device cuda --seconds 120 --batch-size 256 --out DIR
    CUDA_VISIBLE_DEVICES= python benchmarks/gpu_check.py load DIR/checkpoint.safetensors

``train`` meta-trains the coordinatewise ``update+tele`` optimizer (second order, gaussian
[20, 20, 20, 20]) for ``--seconds`` of meta-steps on ``--device``, writes
``DIR/checkpoint.safetensors`` and prints one line of figures (meta-steps, trajectory-steps/s, the
meta-loss at the start and the end). ``load`` reads the checkpoint on the CPU, checks that every
meta-parameter is a finite CPU tensor, and runs the optimizer for 30 steps on 8 unseen tasks.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from metatele.evaluation.evaluate import evaluate
from metatele.meta.config import MetaTrainConfig
from metatele.meta.engine import UnrollEngine
from metatele.release.checkpoint import load_checkpoint, save_checkpoint
from metatele.tasks.family import unseen_seeds


def train(args: argparse.Namespace) -> dict:
    config = MetaTrainConfig.from_dict({
        "task": {"dims": [20, 20, 20, 20], "distribution": "gaussian"},
        "learned": {"variant": "update+tele", "arch": "coordinatewise"},
        # 10 meta-steps per trajectory of 100 steps: room for 2,000 meta-steps, far more than two
        # minutes take (the checkpoint records the planned count, computed from this)
        "trajectories": 200 * args.batch_size, "steps": 100, "unroll": 10, "batch_size": args.batch_size,
        "second_order": True, "device": args.device,
    })
    engine = UnrollEngine(config)
    first = engine.meta_step()  # also the warm-up
    t0 = time.perf_counter()
    metrics = first
    while time.perf_counter() - t0 < args.seconds and not engine.done:
        metrics = engine.meta_step()  # reads its metrics back: the device has finished the step
    seconds = time.perf_counter() - t0
    steps = engine.meta_step_count - 1
    out = Path(args.out)
    path = save_checkpoint(out / "checkpoint.safetensors", engine.optimizer, config,
                           provenance={"meta_steps": engine.meta_step_count, "note": "benchmarks/gpu_check.py"})
    figures = {"device": str(engine.device), "batch_size": args.batch_size, "meta_steps": steps,
               "seconds": round(seconds, 1), "trajectory_steps_per_s": round(steps * args.batch_size * 10 / seconds),
               "meta_loss_first": first["meta_loss"], "meta_loss_last": metrics["meta_loss"],
               "diverged_total": metrics["diverged_total"], "checkpoint": str(path)}
    print(json.dumps(figures))
    return figures


def load(args: argparse.Namespace) -> dict:
    ck = load_checkpoint(args.checkpoint, device="cpu")
    for name, p in ck.optimizer.state_dict().items():
        if p.device.type != "cpu" or not torch.isfinite(p).all():
            raise SystemExit(f"gpu_check load: {name} is not a finite CPU tensor")
    curves = evaluate(ck.optimizer, ck.config.task, unseen_seeds(8), 30)
    final = float(np.median(curves.log_loss[30]))
    figures = {"loaded_on": "cpu", "cuda_available": torch.cuda.is_available(),
               "median_log10_loss_at_step_30": round(final, 3)}
    print(json.dumps(figures))
    return figures


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train")
    t.add_argument("--device", default="cuda")
    t.add_argument("--seconds", type=float, default=120.0)
    t.add_argument("--batch-size", type=int, default=256)
    t.add_argument("--out", required=True)
    ld = sub.add_parser("load")
    ld.add_argument("checkpoint")
    args = p.parse_args(argv)
    (train if args.command == "train" else load)(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
