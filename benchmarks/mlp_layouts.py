"""The coordinatewise MLP alone: forward and backward in the row layout and features first.

    python benchmarks/mlp_layouts.py [--batch-sizes 16 64] [--rounds 15] [--compile]

For m1 (9 → 32 → 32 → 2 on the 1,200 coordinates of a [20, 20, 20, 20] network per trajectory) and
m2 (10 → 32 → 32 → 2 on its 3 × 400 pair entries), at each batch size: the median CPU time of a
forward and of a forward + backward (gradients for the weights and the input, what a meta-step
needs) in the reference row layout (``net`` on ``[N, k]``) and in the features-first layout
(:func:`metatele.optimizers.coordinate_mlp.mlp_columns` on ``[k, N]``), the two alternating, and the
matrix-product rate that the features-first forward + backward reaches (3 × the forward's
multiply-adds × 2 flops). One torch thread.

``--compile`` also times ``torch.compile`` of the features-first MLP (``dynamic=False``, one
compilation per shape): the wall-clock seconds its first call takes (less when inductor's cache
already holds the graph), and its forward + backward after that.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from metatele.optimizers.coordinate_mlp import coordinate_mlp, mlp_columns


def cpu_seconds(fn) -> float:
    t0 = time.process_time()
    fn()
    return time.process_time() - t0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 64])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the features-first MLP")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(0)
    print(f"the coordinatewise MLP alone, median CPU ms of {args.rounds} (1 torch thread, torch {torch.__version__})")
    print("| MLP | B | rows N | rows: fwd | rows: fwd+bwd | features first: fwd | features first: fwd+bwd | "
          "fwd+bwd speed-up | features first: GFLOP/s |" + (" compiled: first call, wall s | compiled: fwd+bwd |"
                                                            if args.compile else ""))
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|" + ("---:|---:|" if args.compile else ""))
    for name, k in (("m1", 9), ("m2", 10)):
        net = coordinate_mlp(k, 2, 32, 2)
        with torch.no_grad():  # the zero-initialised output layer would make its backward trivial
            net[-1].weight.normal_(0, 0.1)
        macs = k * 32 + 32 * 32 + 32 * 2
        for B in args.batch_sizes:
            N = 1200 * B
            cols = torch.randn(k, N, requires_grad=True)
            rows = cols.detach().T.contiguous().requires_grad_(True)

            def fwd_rows():
                with torch.no_grad():
                    net(rows)

            def fwd_cols():
                with torch.no_grad():
                    mlp_columns(net, cols)

            def both_rows():
                torch.autograd.grad(net(rows).square().sum(), [rows, *net.parameters()])

            def both_cols():
                torch.autograd.grad(mlp_columns(net, cols).square().sum(), [cols, *net.parameters()])

            variants = [fwd_rows, both_rows, fwd_cols, both_cols]
            first_call = None
            if args.compile:
                compiled = torch.compile(lambda x: mlp_columns(net, x), dynamic=False)

                def both_compiled():
                    torch.autograd.grad(compiled(cols).square().sum(), [cols, *net.parameters()])
                t0 = time.perf_counter()  # wall: the compilation also runs in worker processes
                both_compiled()
                first_call = time.perf_counter() - t0
                variants.append(both_compiled)
            times = {f: [] for f in variants}
            for f in times:
                f()  # warm-up
            for _ in range(args.rounds):  # alternate, so that a busy machine slows every variant alike
                for f in times:
                    times[f].append(cpu_seconds(f))
            ms = {f.__name__: 1e3 * statistics.median(v) for f, v in times.items()}
            gflops = 3 * 2 * macs * N / (ms["both_cols"] / 1e3) / 1e9
            print(f"| {name} | {B} | {N:,} | {ms['fwd_rows']:.1f} | {ms['both_rows']:.1f} | {ms['fwd_cols']:.1f} | "
                  f"{ms['both_cols']:.1f} | {ms['both_rows'] / ms['both_cols']:.2f}× | {gflops:.0f} |"
                  + (f" {first_call:.1f} | {ms['both_compiled']:.1f} |" if args.compile else ""), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
