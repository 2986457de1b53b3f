"""Does the update safeguard, with its step-size backoff, keep a shipped generalist from diverging,
and what does it cost? Measured on validation seeds of the architectures it was trained on.

The generalists were meta-trained without the update safeguard
(``coordinatewise.update_safeguard: false``); this probe is why they are shipped with it, and why
the primary pair's second phase trains with it. On the held-out architecture
gaussian [24, 25, 42, 59, 9, 13] with biases, meta-seed 0 of update+tele diverges on every test seed
by step 1,000 (experiments/RESULTS.md). Whether to ship it with the safeguard on may not be decided
on those test seeds, nor on the held-out architectures at all (they are for evaluation only). So
this script runs each checkpoint as trained and with ``update_safeguard: true`` and
``update_backoff`` (a refused local update keeps the weights and halves the trajectory's step
scale, which then regrows by ``update_regrow`` after each accepted step) on the *validation* seeds
of the reference task and of every training architecture of its mixture (the run's own
``mix.seed``), and prints, for each architecture, the share of seeds that diverged and the mean
log10 loss at the reported steps, with the paired difference (safeguarded − as trained).

    OMP_NUM_THREADS=1 python experiments/safeguard_probe.py \\
        experiments/long_runs/generalist_update_tele/checkpoint.safetensors \\
        --seeds 16 --steps 1000 --out experiments/safeguard

(meta-seed 0's first phase, trained without the safeguard) writes ``NAME.md`` and ``NAME.json``
under ``--out``: NAME is the shipped name, or the file's stem, or for a long run's
``checkpoint.safetensors`` its run's folder. Nothing here reads a test seed.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from metatele import TaskConfig, evaluate, load_checkpoint, validation_seeds
from metatele.evaluation.stats import paired_comparison, summarize
from metatele.release.checkpoint import DEPLOYMENT_KEYS, deployed_copy

AT = (10, 30, 100, 300, 1000, 3000)


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
    cw = ck.config.learned.coordinatewise
    as_trained = ck.provenance.get("deployment", {}).get("as_trained") or {k: getattr(cw, k) for k in DEPLOYMENT_KEYS}
    seeds = list(validation_seeds(args.seeds))
    at = [s for s in AT if s <= args.steps]
    rows, t0 = [], time.perf_counter()
    for task in tqdm(archs, desc=str(args.checkpoint), unit="architecture"):
        # as trained: a shipped file may carry other safeguard settings (its provenance's deployment)
        plain = deployed_copy(load_checkpoint(args.checkpoint, task=task).optimizer, as_trained, str(args.checkpoint))
        curves = {"as trained": evaluate(plain, task, seeds, args.steps),
                  "safeguarded": evaluate(deployed_copy(plain, {"update_safeguard": True, "update_backoff": args.backoff},
                                                        str(args.checkpoint)), task, seeds, args.steps)}
        row = {"task": label(task), "dims": list(task.dims), "bias": task.bias, "distribution": task.distribution}
        for run, c in curves.items():
            row[run] = summarize(c, at)
        row["safeguarded - as trained"] = {s: paired_comparison(curves["safeguarded"], curves["as trained"], s)
                                           for s in at}
        rows.append(row)
    seconds = time.perf_counter() - t0
    path = Path(str(args.checkpoint))
    name = path.parent.name if path.name == "checkpoint.safetensors" else path.stem
    args.out.mkdir(parents=True, exist_ok=True)
    command = "OMP_NUM_THREADS=1 python experiments/safeguard_probe.py " + " ".join(sys.argv[1:] if argv is None else argv)
    doc = {"command": command, "checkpoint": str(args.checkpoint), "validation_seeds": [seeds[0], seeds[-1] + 1],
           "steps": args.steps, "backoff": args.backoff, "seconds": seconds, "machine": platform.processor()
           or platform.machine(), "torch": torch.__version__, "architectures": rows}
    (args.out / f"{name}.json").write_text(json.dumps(doc, indent=1))
    lines = [f"# The update safeguard on {name}: validation seeds of its training architectures", "",
             f"`{command}` ({seconds / 60:.1f} min; validation seeds [{seeds[0]}, {seeds[-1] + 1}); "
             f"backoff {args.backoff}). Mean log10 loss [95% CI]; Δ = safeguarded − as trained, paired "
             "(negative: the safeguard helps); a seed whose loss is non-finite or above 1e30 at the "
             "last step counts as diverged.", "",
             "| architecture | run | diverged | " + " | ".join(f"@{s}" for s in at) + " |",
             "|---|---|---|" + "---|" * len(at)]
    for row in rows:
        for run in ("as trained", "safeguarded"):
            cells = [_fmt(row[run]["at_step"][s]) for s in at]
            lines.append(f"| {row['task']} | {run} | {row[run]['diverged_fraction']:.0%} | " + " | ".join(cells) + " |")
        cells = [_delta(row["safeguarded - as trained"][s]) for s in at]
        lines.append("| | Δ | | " + " | ".join(cells) + " |")
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
