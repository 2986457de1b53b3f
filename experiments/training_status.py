"""Where a long meta-training run stands, from its newest training state, or, for a finished run,
from its checkpoint and ``validation.json`` (no training is run).

    python experiments/training_status.py runs/generalist_update_tele [--figure FILE]

Prints the run's budget, meta-steps and trajectory-steps so far, the meta-training hours, and its
validation history (mean log10 loss on the validation seeds at each reported inner step, for the
current and the averaged meta-parameters) as a markdown table; with ``--figure`` it also draws the
learning curve (:func:`metatele.evaluation.figures.plot_learning_curve`). ``--every N`` keeps one
row in N validations (the first, the last and the selected one always).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from metatele.evaluation.figures import plot_learning_curve
from metatele.meta.config import MetaTrainConfig
from metatele.meta.state import CHECKPOINT_FILE, latest_state
from metatele.release.checkpoint import load_checkpoint


def _from_state(folder: str) -> tuple[str, list[dict], dict | None]:
    found = latest_state(folder, quarantine=False)
    if found is None:
        raise SystemExit(f"{folder}: no training state that loads cleanly, and no finished run "
                         f"({CHECKPOINT_FILE} with validation.json)")
    path, _, doc, state = found
    config = MetaTrainConfig.from_saved(doc["config"])
    snap = state["ranks"][0].get("snapshots")
    if snap is None:
        raise SystemExit(f"{path}: this run does not validate (validation.every is 0)")
    head = (f"`{path.name}`: meta-step {doc['meta_step']} of {config.max_meta_steps or config.meta_steps} "
            f"({config.learned.variant}, batch {config.batch_size} × unroll {config.unroll}); "
            f"{snap['trajectory_steps']:,} trajectory-steps; {snap['history'][-1]['train_seconds'] / 3600:.2f} h of "
            f"meta-training at the last validation; torch {doc.get('torch_version')}.")
    return head, snap["history"], snap["best"]


def _finished(folder: Path) -> tuple[str, list[dict], dict | None]:
    ck = load_checkpoint(folder / CHECKPOINT_FILE)
    if not (folder / "validation.json").is_file():
        raise SystemExit(f"{folder}: a finished run without validation.json (did it validate? validation.every)")
    history = json.loads((folder / "validation.json").read_text())
    prov, config = ck.provenance, ck.config
    head = (f"Finished: meta-step {prov['meta_steps']:,} of {config.max_meta_steps or config.meta_steps:,} "
            f"({config.learned.variant}, "
            f"batch {config.batch_size} × unroll {config.unroll}, meta-seed {config.seed}); "
            f"{prov['trajectory_steps']:,} trajectory-steps; {prov['train_seconds'] / 3600:.2f} h of meta-training; "
            f"torch {prov.get('torch_version')}.")
    return head, history, prov.get("selection")


def status(folder: str, every: int = 1) -> tuple[str, list[dict]]:
    """The markdown status of the run in ``folder`` and its validation history (one table row in
    ``every`` validations)."""
    if every < 1:
        raise ValueError(f"every: must be a positive integer, got {every}")
    done = Path(folder) / CHECKPOINT_FILE
    head, history, best = _finished(Path(folder)) if done.is_file() else _from_state(folder)
    steps = list(history[0]["current"]["mean_log10_at"])
    lines = [head, "",
             "| meta-step | trajectory-steps | hours | " + " | ".join(f"current @{s}" for s in steps) + " | current score | "
             + " | ".join(f"average @{s}" for s in steps) + " | average score |",
             "|" + "---|" * (4 + 2 * len(steps) + 1)]
    keep = {0, len(history) - 1} | {i for i, r in enumerate(history) if best and r["meta_step"] == best["meta_step"]}
    for i, r in enumerate(history):
        if i % every and i not in keep:
            continue
        cur, avg = r["current"], r.get("average", r["current"])
        lines.append(f"| {r['meta_step']} | {r['trajectory_steps']:,} | {r['train_seconds'] / 3600:.2f} | "
                     + " | ".join(f"{cur['mean_log10_at'][s]:.2f}" for s in steps) + f" | {cur['score']:.3f} | "
                     + " | ".join(f"{avg['mean_log10_at'][s]:.2f}" for s in steps) + f" | {avg['score']:.3f} |")
    if best is not None:
        what = "Selected" if done.is_file() else "Best so far"
        lines += ["", f"{what}: the {best['kind']} meta-parameters of meta-step {best['meta_step']} "
                      f"(score {best['score']:.3f}; lower is better)."]
    return "\n".join(lines), history


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the run's --out folder (training_state/, or a finished run's checkpoint)")
    p.add_argument("--figure", help="also draw the learning curve to this PNG file")
    p.add_argument("--every", type=int, default=1, help="one table row in N validations (default: every one)")
    args = p.parse_args(argv)
    if args.every < 1:
        p.error(f"--every: must be a positive integer, got {args.every}")
    text, history = status(args.folder, args.every)
    print(text)
    if args.figure:
        print(f"\nfigure: {plot_learning_curve(history, args.figure)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
