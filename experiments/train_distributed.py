"""Data-parallel meta-training; launch with torchrun (one process per GPU, or per CPU slot).

    torchrun --nproc_per_node=2 experiments/train_distributed.py --config experiments/configs/update_tele.yaml --out runs/ut
    torchrun --nproc_per_node=2 experiments/train_distributed.py --config ... --out runs/ut --resume

Same options as ``metatele train`` plus ``--backend`` and ``--timeout``; see metatele/distributed.py.
"""
import sys

from metatele.meta.distributed import main

if __name__ == "__main__":
    sys.exit(main())
