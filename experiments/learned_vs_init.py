"""Did meta-training learn? A meta-trained checkpoint against its own initialisation, on validation seeds.

    python experiments/learned_vs_init.py CHECKPOINT [--seeds 100] [--steps 1000] [--at 10 30 100 300 1000]
        [--seed-start K] [--figure FILE] [--json FILE]

The initialisation is rebuilt from the checkpoint's own config: the meta-training engine is built
from it (same variant, architecture, task mixture and meta-seed), and its meta-parameters before
the first meta-step are the untrained optimizer. Both run the same validation seeds of the
reference task (``metatele.tasks.family.validation_seeds``: training-split tasks that meta-training
never draws; test seeds are not touched). By default they start right after the seeds the run's
own validation selected its snapshot on (``validation.seeds``). The script prints, at each ``--at`` step, each
one's mean log10 loss with its 95% CI and the paired difference (trained − initialisation) with
its CI and p-value, and whether the trained mean's CI lies below the untrained one's, above it,
or overlaps it ("it learns" where it lies below).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from metatele.evaluation.evaluate import evaluate  # noqa: E402
from metatele.evaluation.stats import mean_ci, paired_comparison  # noqa: E402
from metatele.meta.mixture import build_engine  # noqa: E402
from metatele.release.checkpoint import load_checkpoint  # noqa: E402
from metatele.tasks.family import validation_seeds  # noqa: E402


def compare_with_init(checkpoint: str, seeds: int, steps: int, at: list[int], seed_start: int | None) -> dict:
    """Evaluate the checkpoint and its rebuilt initialisation on the same validation seeds
    (from index ``seed_start``; ``None``: right after the seeds the run validated on)."""
    ck = load_checkpoint(checkpoint, device="cpu")
    config = ck.config
    if seed_start is None:
        seed_start = config.validation.seeds if config.validation.enabled else 0
    untrained = build_engine(config, device="cpu").optimizer  # meta-step 0 of the same run
    task, val = config.task, list(validation_seeds(seeds, start=seed_start))
    curves = {"trained": evaluate(ck.optimizer, task, val, steps), "initialisation": evaluate(untrained, task, val, steps)}
    rows = []
    for t in at:
        ms = {name: mean_ci(c.log_loss[t]) for name, c in curves.items()}
        pc = paired_comparison(curves["trained"], curves["initialisation"], t)
        rows.append({"step": t, **{f"{n}_mean_ci": list(v) for n, v in ms.items()},
                     "diff": pc["mean_diff"], "diff_ci95": pc["ci95"], "p_value": pc["p_value"],
                     # the "it learns" criterion: the trained CI lies wholly below the untrained one
                     "trained_ci_below": bool(ms["trained"][2] < ms["initialisation"][1]),
                     "trained_ci_above": bool(ms["trained"][1] > ms["initialisation"][2]),
                     "diverged": {n: float(np.mean(~np.isfinite(c.log_loss[t]))) for n, c in curves.items()}})
    return {"checkpoint": str(checkpoint), "variant": config.learned.variant, "task": {"family": task.family,
            "dims": task.dims, "distribution": task.distribution, "bias": task.bias}, "validation_seeds": [val[0], val[-1] + 1],
            "steps": steps, "rows": rows, "curves": {n: c.log_loss for n, c in curves.items()}}


def table(result: dict) -> list[str]:
    """Markdown: per step, both means [CI], the paired difference [CI], p, and the verdict."""
    lines = ["| step | trained | initialisation | trained − init [95% CI] | p | CIs |", "|---:|---|---|---|---|---|"]
    for r in result["rows"]:
        a, b = r["trained_mean_ci"], r["initialisation_mean_ci"]
        lines.append(f"| {r['step']} | {a[0]:.2f} [{a[1]:.2f}, {a[2]:.2f}] | {b[0]:.2f} [{b[1]:.2f}, {b[2]:.2f}] | "
                     f"{r['diff']:+.2f} [{r['diff_ci95'][0]:+.2f}, {r['diff_ci95'][1]:+.2f}] | {r['p_value']:.1e} | "
                     f"{'trained below' if r['trained_ci_below'] else 'trained above' if r['trained_ci_above'] else 'overlap'} |")
    return lines


def figure(result: dict, path: Path) -> None:
    """Mean log10 loss against the inner step, with 95% CI bands, for both."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for name, logl in result["curves"].items():
        cis = np.array([mean_ci(logl[t]) for t in range(logl.shape[0])])  # [step, seed]
        x = np.arange(logl.shape[0])
        ax.plot(x, cis[:, 0], label=name)
        ax.fill_between(x, cis[:, 1], cis[:, 2], alpha=0.25)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("inner step")
    ax.set_ylabel("mean log10 loss (95% CI)")
    ax.set_title(f"{result['variant']}: trained against its initialisation, validation seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--seeds", type=int, default=100, help="validation seeds (default: 100)")
    p.add_argument("--seed-start", type=int, default=None,
                   help="first validation seed index (default: after the seeds the run selected its snapshot on)")
    p.add_argument("--steps", type=int, default=1000, help="inner steps (default: 1000)")
    p.add_argument("--at", type=int, nargs="+", default=[10, 30, 100, 300, 1000])
    p.add_argument("--figure", type=Path, default=None, help="PNG of both curves with CI bands")
    p.add_argument("--json", type=Path, default=None, help="the rows as JSON")
    args = p.parse_args(argv)
    if args.seeds < 2 or args.steps < 1 or any(not 0 <= t <= args.steps for t in args.at):
        p.error("need --seeds ≥ 2, --steps ≥ 1 and every --at step within [0, --steps]")
    result = compare_with_init(args.checkpoint, args.seeds, args.steps, args.at, args.seed_start)
    print(f"{result['variant']} {args.checkpoint}: validation seeds {result['validation_seeds']}, task {result['task']}")
    print("\n".join(table(result)))
    if args.figure:
        figure(result, args.figure)
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in result.items() if k != "curves"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
