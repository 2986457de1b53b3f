"""Data-parallel meta-training; launch with torchrun (one process per GPU, or per CPU slot).

    torchrun --nproc_per_node=2 experiments/train_distributed.py --config update_tele --out runs/ut
    torchrun --nproc_per_node=2 experiments/train_distributed.py --config update_tele --out runs/ut --resume

Same options as ``metatele train`` plus ``--backend`` and ``--timeout`` (``--help``); the parser is
:func:`metatele.cli.build_distributed_parser`, the trainer :func:`metatele.meta.distributed.train_distributed`.
"""
import sys

from metatele.cli import train_distributed_main

if __name__ == "__main__":
    sys.exit(train_distributed_main())
