"""The estimator comparison's table and figure, from the runs of ``experiments/estimators/run.sh``.

    python experiments/estimators/curves.py OUT [--figure FILE] [--at SECONDS ...]

Reads ``OUT/<candidate>_seed<s>/validation.json`` of every run (the validation score, the mean
validation log10 loss over the reported steps, against the seconds of meta-training, validation not
counted) and prints a markdown table: per candidate, the meta-seeds, meta-steps and trajectory-steps
reached, and the score at the start, at each of ``--at`` seconds (the last validation at or before
it) and the best one, each the mean over meta-seeds with the meta-seeds' range; then the validation
log10 loss at each reported step of the selected and the last snapshots. It draws the curves (one
line per run, a colour per candidate) to ``--figure``.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def load_runs(out: Path) -> dict[str, list[tuple[int, list[dict]]]]:
    """``{candidate: [(meta_seed, validation history), ...]}`` for every run folder in ``out``."""
    runs: dict[str, list[tuple[int, list[dict]]]] = defaultdict(list)
    for path in sorted(out.glob("*_seed*/validation.json")):
        m = re.fullmatch(r"(.+)_seed(\d+)", path.parent.name)
        if m is None:
            continue
        history = [r for r in json.loads(path.read_text()) if r["current"]["score"] is not None]
        if history:
            runs[m.group(1)].append((int(m.group(2)), history))
    if not runs:
        raise SystemExit(f"curves.py: no <candidate>_seed<s>/validation.json under {out}")
    return dict(runs)


def score_at(history: list[dict], seconds: float) -> float:
    """The score of the last validation at or before ``seconds`` of meta-training."""
    return [r for r in history if r["train_seconds"] <= seconds][-1]["current"]["score"]


def cell(values: list[float], digits: int = 3) -> str:
    """Mean over meta-seeds, with their range when there are several."""
    mean = sum(values) / len(values)
    return (f"{mean:.{digits}f}" if len(values) == 1
            else f"{mean:.{digits}f} [{min(values):.{digits}f}, {max(values):.{digits}f}]")


def best(history: list[dict]) -> dict:
    """The validation with the lowest score (the snapshot a run selects)."""
    return min(history, key=lambda r: r["current"]["score"])


def per_step_table(runs: dict[str, list[tuple[int, list[dict]]]]) -> list[str]:
    """Mean validation log10 loss at each reported step (mean over meta-seeds): the untrained
    optimizer, then per candidate its selected (best-scoring) and its last snapshot."""
    first = next(iter(runs.values()))[0][1][0]["current"]["mean_log10_at"]
    steps = list(first)
    lines = ["| candidate | snapshot | " + " | ".join(f"@{t}" for t in steps) + " |", "|" + "---|" * (len(steps) + 2)]
    lines.append("| (untrained) | meta-step 0 | " + " | ".join(f"{first[t]:.2f}" for t in steps) + " |")
    for name, seeds in sorted(runs.items()):
        for label, pick in (("selected", best), ("last", lambda h: h[-1])):
            rows = [pick(h)["current"]["mean_log10_at"] for _, h in seeds]
            lines.append(f"| {name} | {label} | " + " | ".join(cell([r[t] for r in rows], 2) for t in steps) + " |")
    return lines


def table(runs: dict[str, list[tuple[int, list[dict]]]], at: list[float]) -> list[str]:
    """The markdown table (lower is better in every score column)."""
    head = ["candidate", "meta-seeds", "meta-steps", "trajectory-steps (M)", "score at 0 s"]
    head += [f"score at {s:g} s" for s in at] + ["best score", "best at (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, seeds in sorted(runs.items()):
        hists = [h for _, h in seeds]
        chosen = [best(h) for h in hists]
        row = [name, ", ".join(str(s) for s, _ in seeds),
               "–".join(dict.fromkeys(str(f(h[-1]["meta_step"] for h in hists)) for f in (min, max))),
               f"{sum(h[-1]['trajectory_steps'] for h in hists) / len(hists) / 1e6:.2f}",
               cell([h[0]["current"]["score"] for h in hists])]
        row += [cell([score_at(h, s) for h in hists]) for s in at]
        row += [cell([b["current"]["score"] for b in chosen]), cell([b["train_seconds"] for b in chosen], 0)]
        lines.append("| " + " | ".join(row) + " |")
    return lines


def figure(runs: dict[str, list[tuple[int, list[dict]]]], path: Path) -> None:
    """Validation score against seconds of meta-training, one line per run."""
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    for i, (name, seeds) in enumerate(sorted(runs.items())):
        for j, (seed, h) in enumerate(seeds):
            ax.plot([r["train_seconds"] for r in h], [r["current"]["score"] for r in h], color=f"C{i}",
                    marker="o", ms=3, alpha=0.85, ls="-" if j == 0 else "--", label=f"{name} (meta-seed {seed})")
    ax.set_xlabel("seconds of meta-training (one core, validation not counted)")
    ax.set_ylabel("validation score (mean log10 loss at the reported steps)")
    ax.set_title("Meta-gradient estimators at equal meta-training time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="the folder run.sh wrote")
    p.add_argument("--figure", type=Path, default=None, help="PNG of the curves (default: OUT/estimators.png)")
    p.add_argument("--at", type=float, nargs="*", default=[60.0, 120.0], help="seconds of meta-training to compare at")
    args = p.parse_args(argv)
    runs = load_runs(args.out)
    print("\n".join(table(runs, args.at)))
    print()
    print("\n".join(per_step_table(runs)))
    figure(runs, args.figure or args.out / "estimators.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
