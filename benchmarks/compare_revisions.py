"""Meta-training throughput of a base revision and of this checkout, side by side in one run.

    python benchmarks/compare_revisions.py --base main [--rounds 5] [--batch-sizes 16 64]
        [--paper-batch 1024] [--out results.md]

The base revision's ``metatele`` package is exported with ``git archive`` into a temporary
folder. Every measurement is :func:`metatele.studies.throughput.measure` (``metatele throughput``'s
timing: one warm-up meta-step, then ``--unrolls`` timed ones) in a fresh subprocess with one torch
thread, importing one code or the other through ``PYTHONPATH``, and timed by the process's CPU
time (``--clock cpu``, the default: other processes on a shared machine then barely change the
figures; ``--clock wall`` for the wall clock). The two codes alternate within
every round (base, current, base, current, ...), so that a busy machine slows both alike, and the
tables give the median over the rounds:

``--current REV`` measures a revision in place of the working tree (so that the checkout can
change while the benchmark runs). The tables:

1. the coordinatewise optimizer, ``update`` and ``update+tele``, second order, gaussian
   [20, 20, 20, 20], in trajectory-steps/s at each batch size, and the speed-up;
2. the share of a teleporting meta-step spent on the teleport gradient (``update+tele``);
3. the paper's architecture (``update+tele``, hidden 300, uniform, first order): trajectory-steps/s
   at ``--paper-batch`` over B = 1, the same work one trajectory at a time as the paper's code
   does (``metatele throughput``'s "× vs B=1"), for both codes.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from io import BytesIO
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

MEASURE = """
import json, sys, time
kw, clock = json.loads(sys.argv[1]), sys.argv[2]
if clock == "cpu":  # measure()'s timer becomes this process's CPU time
    time.perf_counter = time.process_time
import torch
import metatele
from metatele.studies.throughput import measure
torch.set_num_threads(1)
r = measure(**kw)
r["package"] = metatele.__file__
print(json.dumps(r))
"""


def export_revision(rev: str, into: Path) -> Path:
    """``git archive`` of the ``metatele`` package at ``rev`` into ``into`` (created); returns the
    folder to put on ``PYTHONPATH``."""
    into.mkdir(parents=True)
    data = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev, "metatele"],
                          check=True, capture_output=True).stdout
    with tarfile.open(fileobj=BytesIO(data)) as tar:
        tar.extractall(into, filter="data")
    return into


def measure_in(path: Path, clock: str, **kw) -> dict:
    """:func:`measure` with the ``metatele`` package under ``path``, in a fresh one-thread process,
    timed by ``clock`` (``cpu``: the process's CPU time; ``wall``)."""
    env = {**os.environ, "PYTHONPATH": str(path), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", MEASURE, json.dumps(kw), clock], env=env, check=True,
                         capture_output=True, text=True, cwd=path).stdout
    r = json.loads(out.strip().splitlines()[-1])
    if not Path(r["package"]).resolve().is_relative_to(path.resolve()):
        raise RuntimeError(f"measured {r['package']}, not the code under {path}")
    return r


def interleaved(codes: dict[str, Path], rounds: int, clock: str, **kw) -> dict[str, list[dict]]:
    """``rounds`` measurements of every code, alternating within each round."""
    runs: dict[str, list[dict]] = {name: [] for name in codes}
    for _ in range(rounds):
        for name, path in codes.items():
            runs[name].append(measure_in(path, clock, **kw))
    return runs


def median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", help="the revision to compare with (default: where this branch left main, "
                   "git merge-base HEAD main)")
    p.add_argument("--current", help="a revision to measure instead of this checkout's working tree")
    p.add_argument("--rounds", type=int, default=5, help="measurements of each code per setting")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64], help="coordinatewise batch sizes")
    p.add_argument("--unrolls", type=int, default=3, help="timed meta-steps per measurement")
    p.add_argument("--paper-batch", type=int, default=1024, help="the paper architecture's batch size (0: skip)")
    p.add_argument("--paper-rounds", type=int, default=2, help="measurements of each code for the paper rows")
    p.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                   help="time by the measuring process's CPU time (default: robust to other processes on a "
                        "shared machine) or by the wall clock")
    p.add_argument("--out", help="also write the tables (and the raw runs as JSON beside them) here")
    args = p.parse_args(argv)
    if args.base is None:
        args.base = subprocess.run(["git", "-C", str(ROOT), "merge-base", "HEAD", "main"], check=True,
                                   capture_output=True, text=True).stdout.strip()

    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "metatele"], check=True,
                           capture_output=True, text=True).stdout.strip()
    base_rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.base], check=True,
                              capture_output=True, text=True).stdout.strip()
    current = f"{head}{' + uncommitted changes' if dirty else ''}"
    if args.current is not None:
        current = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.current], check=True,
                                 capture_output=True, text=True).stdout.strip()
    lines = [f"`python benchmarks/compare_revisions.py --base {base_rev}"
             f"{f' --current {current}' if args.current else ''} --rounds {args.rounds} "
             f"--batch-sizes {' '.join(map(str, args.batch_sizes))} --unrolls {args.unrolls} "
             f"--paper-batch {args.paper_batch} --paper-rounds {args.paper_rounds} --clock {args.clock}`: "
             f"base {base_rev} against {current}; one torch thread, medians of {args.rounds} interleaved runs "
             f"({args.unrolls} timed meta-steps each), trajectory-steps per "
             f"{'CPU-second of the measuring process' if args.clock == 'cpu' else 'second of wall-clock time'}", ""]
    raw: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        codes = {"base": export_revision(args.base, Path(tmp) / "base"),
                 "current": ROOT if args.current is None else export_revision(args.current, Path(tmp) / "current")}
        lines += ["| coordinatewise, second order, gaussian [20]^4 | B | base: trajectory-steps/s | "
                  "current: trajectory-steps/s | speed-up |", "|---|---:|---:|---:|---:|"]
        shares = {}
        for variant in ("update", "update+tele"):
            for B in args.batch_sizes:
                runs = interleaved(codes, args.rounds, args.clock, batch_size=B, variant=variant, unrolls=args.unrolls,
                                   device="cpu", arch="coordinatewise", distribution="gaussian", second_order=True)
                raw[f"{variant} B={B}"] = runs
                base, cur = (median(runs[k], "trajectory_steps_per_s") for k in ("base", "current"))
                lines.append(f"| {variant} | {B} | {base:,.0f} | {cur:,.0f} | {cur / base:.2f}× |")
                print(lines[-1], flush=True)
                if variant == "update+tele":
                    shares[B] = {k: median(runs[k], "teleport_gradient_share") for k in runs}
        lines += ["", "| teleport-gradient share of an update+tele meta-step | B | base | current |",
                  "|---|---:|---:|---:|"]
        lines += [f"| | {B} | {100 * s['base']:.0f}% | {100 * s['current']:.0f}% |" for B, s in shares.items()]
        if args.paper_batch:
            lines += ["", f"| paper architecture, update+tele, hidden 300 | base | current |", "|---|---:|---:|"]
            tps = {}
            for B in (1, args.paper_batch):
                runs = interleaved(codes, args.paper_rounds, args.clock, batch_size=B, variant="update+tele",
                                   unrolls=args.unrolls if B > 1 else max(3, args.unrolls), device="cpu",
                                   arch="paper")
                raw[f"paper B={B}"] = runs
                tps[B] = {k: median(runs[k], "trajectory_steps_per_s") for k in runs}
                lines.append(f"| trajectory-steps/s at B={B} | {tps[B]['base']:,.0f} | {tps[B]['current']:,.0f} |")
                print(lines[-1], flush=True)
            ratio = {k: tps[args.paper_batch][k] / tps[1][k] for k in ("base", "current")}
            lines.append(f"| × vs B=1 (the paper's code) at B={args.paper_batch} | {ratio['base']:.1f}× | "
                         f"{ratio['current']:.1f}× |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
        Path(args.out).with_suffix(".json").write_text(json.dumps(raw, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
