"""Does the update safeguard, with its step-size backoff, keep a shipped generalist from diverging,
and what does it cost? Measured on validation seeds of the architectures it was trained on.

The shipped generalists were meta-trained and are shipped without the update safeguard
(``coordinatewise.update_safeguard: false``). On the held-out architecture
gaussian [24, 25, 42, 59, 9, 13] with biases, meta-seed 0 of update+tele diverges on every test seed
by step 1,000 (experiments/RESULTS.md). Whether to ship it with the safeguard on may not be decided
on those test seeds, nor on the held-out architectures at all (they are for evaluation only). So
this script runs each checkpoint as shipped and with ``update_safeguard: true`` and
``update_backoff`` (a refused local update keeps the weights and halves the trajectory's step
scale, which then regrows by ``update_regrow`` after each accepted step) on the *validation* seeds
of the reference task and of every training architecture of its mixture (the run's own
``mix.seed``), and prints, for each architecture, the share of seeds that diverged and the mean
log10 loss at the reported steps, with the paired difference (safeguarded − as shipped).

    OMP_NUM_THREADS=1 python experiments/safeguard_probe.py generalist-update-tele \\
        --seeds 16 --steps 1000 --out experiments/safeguard

writes ``NAME.md`` and ``NAME.json`` under ``--out``. Nothing here reads a test seed.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from tqdm import tqdm

from metatele import LearnedOptimizer, TaskConfig, evaluate, load_checkpoint, validation_seeds
from metatele.evaluation.stats import paired_comparison, summarize

AT = (10, 30, 100, 300, 1000, 3000)


def guarded(opt: LearnedOptimizer, task: TaskConfig, backoff: float) -> LearnedOptimizer:
    """``opt`` (a coordinatewise optimizer) with the update safeguard and its backoff on, same
    meta-parameters."""
    cw = opt.config.coordinatewise
    if opt.config.arch != "coordinatewise" or opt.config.local_update == "lr":
        raise SystemExit("the update safeguard's backoff applies to a coordinatewise update or update+tele optimizer")
    config = replace(opt.config, coordinatewise=replace(cw, update_safeguard=True, update_backoff=backoff))
    out = LearnedOptimizer(task, config)
    out.load_state_dict(opt.state_dict())
    return out


def label(task: TaskConfig) -> str:
    return f"{task.distribution} {list(task.dims)}{' with biases' if task.bias else ''}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="a shipped name or a checkpoint file of a generalist (a run with `mix`)")
    ap.add_argument("--seeds", type=int, default=16, help="validation seeds per architecture (default: 16)")
    ap.add_argument("--steps", type=int, default=1000, help="inner steps (default: 1000)")
    ap.add_argument("--backoff", type=float, default=0.5, help="update_backoff of the safeguarded run (default: 0.5)")
    ap.add_argument("--out", type=Path, default=Path("experiments/safeguard"))
    args = ap.parse_args(argv)
    torch.set_flush_denormal(True)
    ck = load_checkpoint(args.checkpoint)
    if ck.config.mix is None:
        raise SystemExit(f"{args.checkpoint}: not a generalist (its config has no `mix`)")
    archs = ck.config.mix.training_architectures(ck.config.task)
    seeds = list(validation_seeds(args.seeds))
    at = [s for s in AT if s <= args.steps]
    rows, t0 = [], time.perf_counter()
    for task in tqdm(archs, desc=str(args.checkpoint), unit="architecture"):
        plain = load_checkpoint(args.checkpoint, task=task).optimizer
        curves = {"as shipped": evaluate(plain, task, seeds, args.steps),
                  "safeguarded": evaluate(guarded(plain, task, args.backoff), task, seeds, args.steps)}
        row = {"task": label(task), "dims": list(task.dims), "bias": task.bias, "distribution": task.distribution}
        for run, c in curves.items():
            row[run] = summarize(c, at)
        row["safeguarded - as shipped"] = {s: paired_comparison(curves["safeguarded"], curves["as shipped"], s)
                                           for s in at}
        rows.append(row)
    seconds = time.perf_counter() - t0
    name = Path(str(args.checkpoint)).stem
    args.out.mkdir(parents=True, exist_ok=True)
    command = "OMP_NUM_THREADS=1 python experiments/safeguard_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = {"command": command, "checkpoint": str(args.checkpoint), "validation_seeds": [seeds[0], seeds[-1] + 1],
           "steps": args.steps, "backoff": args.backoff, "seconds": seconds, "machine": platform.processor()
           or platform.machine(), "torch": torch.__version__, "architectures": rows}
    (args.out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# The update safeguard on {name}: validation seeds of its training architectures", "",
             f"`{command}` ({seconds / 60:.1f} min; validation seeds [{seeds[0]}, {seeds[-1] + 1}); "
             f"backoff {args.backoff}). Mean log10 loss [95% CI]; Δ = safeguarded − as shipped, paired "
             "(negative: the safeguard helps); a seed whose loss is non-finite or above 1e30 at the "
             "last step counts as diverged.", "",
             "| architecture | run | diverged | " + " | ".join(f"@{s}" for s in at) + " |",
             "|---|---|---|" + "---|" * len(at)]
    for row in rows:
        for run in ("as shipped", "safeguarded"):
            cells = [_fmt(row[run]["at_step"][s]) for s in at]
            lines.append(f"| {row['task']} | {run} | {row[run]['diverged_fraction']:.0%} | " + " | ".join(cells) + " |")
        cells = [_delta(row["safeguarded - as shipped"][s]) for s in at]
        lines.append(f"| | Δ | | " + " | ".join(cells) + " |")
    (args.out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def _fmt(s: dict) -> str:
    """``mean [lo, hi]`` of the seeds not diverged (and how many diverged)."""
    if s["n"] == 0:
        return "all diverged"
    lo, hi = s["ci95"]
    return f"{s['mean']:.2f} [{lo:.2f}, {hi:.2f}]" + (f" ({s['n_diverged']} div.)" if s["n_diverged"] else "")


def _delta(c: dict) -> str:
    """The paired difference, or the sign test's wins when a seed diverged."""
    if c["n_excluded"]:
        return f"better on {c['wins']}/{c['n_seeds']} (div. {c['diverged_a']} vs {c['diverged_b']})"
    lo, hi = c["ci95"]
    return f"{c['mean_diff']:+.2f} [{lo:+.2f}, {hi:+.2f}]"


if __name__ == "__main__":
    main()
