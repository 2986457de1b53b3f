"""Where a long meta-training run stands, from its newest training state (no training is run).

    python experiments/training_status.py runs/generalist_update_tele [--figure FILE]

Prints the run's budget, meta-steps and trajectory-steps so far, the wall-clock seconds, and its
validation history (mean log10 loss on the validation seeds at each reported inner step, for the
current and the averaged meta-parameters) as a markdown table; with ``--figure`` it also draws the
learning curve (:func:`metatele.evaluation.figures.plot_learning_curve`).
"""
from __future__ import annotations

import argparse
import sys

from metatele.evaluation.figures import plot_learning_curve
from metatele.meta.config import MetaTrainConfig
from metatele.meta.state import latest_state


def status(folder: str) -> tuple[str, list[dict]]:
    """The markdown status of the run in ``folder`` and its validation history."""
    found = latest_state(folder, quarantine=False)
    if found is None:
        raise SystemExit(f"no training state that loads cleanly in {folder}/training_state")
    path, _, doc, state = found
    config = MetaTrainConfig.from_saved(doc["config"])
    snap = state["ranks"][0].get("snapshots")
    if snap is None:
        raise SystemExit(f"{path}: this run does not validate (validation.every is 0)")
    history = snap["history"]
    steps = list(history[0]["current"]["mean_log10_at"])
    lines = [f"`{path.name}`: meta-step {doc['meta_step']} of {config.max_meta_steps or config.meta_steps} "
             f"({config.learned.variant}, batch {config.batch_size} × unroll {config.unroll}); "
             f"{snap['trajectory_steps']:,} trajectory-steps; {history[-1]['train_seconds'] / 3600:.2f} h of "
             f"meta-training at the last validation; torch {doc.get('torch_version')}.", "",
             "| meta-step | trajectory-steps | hours | " + " | ".join(f"current @{s}" for s in steps) + " | current score | "
             + " | ".join(f"average @{s}" for s in steps) + " | average score |",
             "|" + "---|" * (4 + 2 * len(steps) + 1)]
    for r in history:
        cur, avg = r["current"], r.get("average", r["current"])
        lines.append(f"| {r['meta_step']} | {r['trajectory_steps']:,} | {r['train_seconds'] / 3600:.2f} | "
                     + " | ".join(f"{cur['mean_log10_at'][s]:.2f}" for s in steps) + f" | {cur['score']:.3f} | "
                     + " | ".join(f"{avg['mean_log10_at'][s]:.2f}" for s in steps) + f" | {avg['score']:.3f} |")
    best = snap["best"]
    if best is not None:
        lines += ["", f"Best so far: the {best['kind']} meta-parameters of meta-step {best['meta_step']} "
                      f"(score {best['score']:.3f}; lower is better)."]
    return "\n".join(lines), history


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="the run's --out folder (holding training_state/)")
    p.add_argument("--figure", help="also draw the learning curve to this PNG file")
    args = p.parse_args(argv)
    text, history = status(args.folder)
    print(text)
    if args.figure:
        print(f"\nfigure: {plot_learning_curve(history, args.figure)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
