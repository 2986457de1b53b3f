"""Did meta-training learn? A meta-trained checkpoint against its own initialisation, or against
its twin, on validation seeds.

    python experiments/learned_vs_init.py CHECKPOINT [--against TWIN] [--seeds 100] [--steps 1000]
        [--at 10 30 100 300 1000] [--seed-start K] [--figure FILE] [--json FILE]

The initialisation is rebuilt from the checkpoint's own config: the meta-training engine is built
from it (same variant, architecture, task mixture and meta-seed), and its meta-parameters before
the first meta-step are the untrained optimizer. Both run the same validation seeds of the
reference task (``metatele.tasks.family.validation_seeds``: training-split tasks that meta-training
never draws; test seeds are not touched). By default they start right after the seeds the run's
own validation selected its snapshot on (``validation.seeds``). The script prints, at each ``--at`` step, each
one's mean log10 loss with its 95% CI and the paired difference (trained − initialisation) with
its CI and p-value, and whether the trained mean's CI lies below the untrained one's, above it,
or overlaps it ("it learns" where it lies below).

With ``--against TWIN`` the reference is another checkpoint instead, on the same seeds of the same
task: e.g. a teleporting optimizer against its teleport-free twin (the twins' validation seeds
are the same, so the default start skips the seeds both were selected on).
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


def compare_with_init(checkpoint: str, seeds: int, steps: int, at: list[int], seed_start: int | None,
                      against: str | None = None) -> dict:
    """Evaluate the checkpoint and its rebuilt initialisation (or the checkpoint ``against``) on
    the same validation seeds (from index ``seed_start``; ``None``: right after the seeds the run
    validated on)."""
    ck = load_checkpoint(checkpoint, device="cpu")
    config = ck.config
    twin = None if against is None else load_checkpoint(against, device="cpu")
    if seed_start is None:  # after every seed either run selected its snapshot on
        seed_start = max(c.validation.seeds if c.validation.enabled else 0
                         for c in (config, *([twin.config] if twin else [])))
    if twin is None:
        names = ("trained", "initialisation")
        reference = build_engine(config, device="cpu").optimizer  # meta-step 0 of the same run
    else:
        if twin.config.task != config.task or twin.config.dtype != config.dtype:
            raise SystemExit(f"--against: {against} was trained with reference task {twin.config.task} in "
                             f"{twin.config.dtype}, not {config.task} in {config.dtype}")
        names = (config.learned.variant, twin.config.learned.variant)
        if names[0] == names[1]:
            names = ("checkpoint", "against")
        reference = twin.optimizer
    a, b = names
    task, val = config.task, list(validation_seeds(seeds, start=seed_start))
    dtype = config.torch_dtype  # the run's precision
    curves = {a: evaluate(ck.optimizer, task, val, steps, dtype=dtype), b: evaluate(reference, task, val, steps, dtype=dtype)}
    rows = []
    for t in at:
        ms = {name: mean_ci(c.log_loss[t]) for name, c in curves.items()}
        pc = paired_comparison(curves[a], curves[b], t)
        rows.append({"step": t, **{f"{n}_mean_ci": list(v) for n, v in ms.items()},
                     "diff": pc["mean_diff"], "diff_ci95": pc["ci95"], "p_value": pc["p_value"],
                     # the "it learns" criterion: the trained CI lies wholly below the untrained one
                     f"{a}_ci_below": bool(ms[a][2] < ms[b][1]),
                     f"{a}_ci_above": bool(ms[a][1] > ms[b][2]),
                     "diverged": {n: float(np.mean(~np.isfinite(c.log_loss[t]))) for n, c in curves.items()}})
    return {"checkpoint": str(checkpoint), "against": against, "names": list(names), "variant": config.learned.variant,
            "task": {"family": task.family, "dims": task.dims, "distribution": task.distribution, "bias": task.bias},
            "validation_seeds": [val[0], val[-1] + 1], "steps": steps, "rows": rows,
            "curves": {n: c.log_loss for n, c in curves.items()}}


def table(result: dict) -> list[str]:
    """Markdown: per step, both means [CI], the paired difference [CI], p, and the verdict."""
    a, b = result["names"]
    lines = [f"| step | {a} | {b} | {a} − {b} [95% CI] | p | CIs |", "|---:|---|---|---|---|---|"]
    for r in result["rows"]:
        x, y = r[f"{a}_mean_ci"], r[f"{b}_mean_ci"]
        verdict = f"{a} below" if r[f"{a}_ci_below"] else f"{a} above" if r[f"{a}_ci_above"] else "overlap"
        lines.append(f"| {r['step']} | {x[0]:.2f} [{x[1]:.2f}, {x[2]:.2f}] | {y[0]:.2f} [{y[1]:.2f}, {y[2]:.2f}] | "
                     f"{r['diff']:+.2f} [{r['diff_ci95'][0]:+.2f}, {r['diff_ci95'][1]:+.2f}] | {r['p_value']:.1e} | "
                     f"{verdict} |")
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
    a, b = result["names"]
    ax.set_title(f"{result['variant']}: {a} against {b}, validation seeds" if result["against"]
                 else f"{result['variant']}: trained against its initialisation, validation seeds")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint")
    p.add_argument("--against", default=None, help="compare with this checkpoint (its twin) instead of the initialisation")
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
    result = compare_with_init(args.checkpoint, args.seeds, args.steps, args.at, args.seed_start, args.against)
    print(f"{result['variant']} {args.checkpoint}: validation seeds {result['validation_seeds']}, task {result['task']}")
    print("\n".join(table(result)))
    if args.figure:
        figure(result, args.figure)
    if args.json:
        args.json.write_text(json.dumps({k: v for k, v in result.items() if k != "curves"}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
