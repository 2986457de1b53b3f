"""The embedded quick configuration behind ``metatele demo`` (the README's main job).

A short meta-training of each of the paper's three variants on the reference task
(dims [20, 20, 20, 20], uniform), small enough for about a minute each on a 2-core CPU. The
same settings are shipped as ``metatele/defaults/quick.yaml`` (``--config quick``).
"""
from __future__ import annotations

from ..configs import apply_overrides
from ..meta.config import MetaTrainConfig

QUICK = {
    "task": {"dims": [20, 20, 20, 20], "distribution": "uniform"},
    "learned": {"variant": "update+tele", "lstm": {"hidden": 300, "layers": 2}},
    "trajectories": 1000,
    "steps": 100,
    "unroll": 10,
    "batch_size": 50,
    "meta_loss": "mean_log",
    "lr_update": 1e-3,
    "lr_teleport": 1e-4,
    "seed": 0,
}


def demo_configs() -> dict[str, MetaTrainConfig]:
    """The three quick runs: ``update``, ``update+tele`` and ``lr+tele``."""
    return {
        "update": MetaTrainConfig.from_dict(apply_overrides(QUICK, ["learned.variant=update"])),
        "update+tele": MetaTrainConfig.from_dict(QUICK),
        "lr+tele": MetaTrainConfig.from_dict(apply_overrides(
            QUICK, ["learned.variant=lr+tele", "learned.teleport.lr_log_space=true", "lr_teleport=1e-3"])),
    }
