"""Meta-training throughput benchmark (same as `metatele throughput`).

    python benchmarks/bench_meta_train.py --batch-sizes 1 64 256 1024 [--device cuda]
"""
import sys

from metatele.cli import main

if __name__ == "__main__":
    sys.exit(main(["throughput", *sys.argv[1:]]))
