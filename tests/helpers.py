"""Small shared builders for the tests (imported as ``from helpers import ...``)."""
from __future__ import annotations

import os

import torch

from metatele import BaselineConfig, CoordinatewiseConfig, LearnedConfig
from metatele.optimizers.learned import TELEPORTING_VARIANTS


def tiny(**kw) -> dict:
    """A tiny float64 meta-training config as a dict; ``a.b=value`` keys set nested values."""
    base = {
        "task": {"dims": [6, 6, 6, 6], "distribution": "gaussian"},
        "learned": {"variant": "update+tele"},
        "trajectories": 8, "steps": 6, "unroll": 3, "batch_size": 4,
        "lr_update": 1e-3, "device": "cpu", "dtype": "float64",
    }
    for k, v in kw.items():
        node, parts = base, k.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = v
    if base["learned"]["variant"] != "update":  # m2's Adam rate: refused by a run without m2
        base.setdefault("lr_teleport", 1e-3)
    if base["learned"].get("arch", "paper") == "paper":  # small LSTMs (options of the paper's architecture only)
        base["learned"].setdefault("lstm", {}).setdefault("hidden", 16)
        if base["learned"]["variant"] in TELEPORTING_VARIANTS:  # T's norm: refused by a run that never teleports
            base["learned"].setdefault("teleport", {}).setdefault("eps", 0.05)
    return base


def coordinatewise_learned(variant: str, lr: float | None = None, **cw) -> LearnedConfig:
    """The coordinatewise ``variant`` with options ``cw``; ``lr``: the rate of its local step, m1's
    (which starts as Adam at it) or, for the ``tele`` variant, its base Adam's (default: the defaults)."""
    base = {}
    if lr is not None and variant == "tele":
        base["base"] = BaselineConfig(name="adam", lr=lr)
    elif lr is not None:
        cw["lr"] = lr
    return LearnedConfig(variant=variant, arch="coordinatewise", coordinatewise=CoordinatewiseConfig(**cw), **base)


def subprocess_env() -> dict:
    """Environment for test subprocesses: one thread, no wandb, unbuffered output."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}


def same_parameters(a, b) -> bool:
    """Two engines' (or state dicts') meta-parameters are equal bit for bit."""
    sa, sb = (x if isinstance(x, dict) else x.optimizer.state_dict() for x in (a, b))
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
