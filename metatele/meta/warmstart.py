"""Warm starts: a run that begins from another run's meta-parameters (``init_from``).

A run with ``init_from: PATH`` (a training state ``state-*.safetensors`` written by
``metatele train``) starts from that state's meta-parameters and its meta-optimizer's Adam moments,
instead of a fresh initialisation. Everything else is the new run's own: its tasks and seeds, its
trajectories (started fresh), its rates, budget and validation. This continues a run under
another config, e.g. with the update safeguard on during training, which a resumed run (whose
config must be the saved one) cannot do.

The learned optimizer must be the source's, but for the safeguard settings
(:data:`~metatele.optimizers.coordinatewise_step.SAFEGUARD_KEYS`), which decide whether a step is
taken and change no meta-parameter; anything else would change what the meta-parameters mean, and
is refused. The source is recorded (:func:`warm_start`'s record: file, SHA-256, its training
seeds, meta-steps, trajectory-steps and seconds, what changed) in the engine's counters, so it
survives a resume and ends in the checkpoint's provenance (``init_from``; its training seeds are
also counted among the checkpoint's own ``training_seeds``).
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

from ..configs import ConfigError, to_dict
from ..optimizers.coordinatewise_step import SAFEGUARD_KEYS
from .config import MetaTrainConfig
from .engine import UnrollEngine
from .mixture import MixtureEngine
from .state import ResumeError, decode, flat_keys, key_differences


def learned_differences(source: MetaTrainConfig, config: MetaTrainConfig) -> tuple[list[str], list[str]]:
    """``(safeguard changes, other differences)`` between the learned optimizers of ``source`` and
    ``config``, each as ``learned.KEY (source A, now B)``."""
    diff = key_differences(flat_keys(to_dict(source.learned), "learned"), flat_keys(to_dict(config.learned), "learned"),
                           "source")
    allowed = {f"learned.coordinatewise.{k}" for k in SAFEGUARD_KEYS}
    return [d for k, d in diff if k in allowed], [d for k, d in diff if k not in allowed]


def read_source(config: MetaTrainConfig) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """``(meta-parameters, meta-optimizer state, record)`` of ``config.init_from``.

    Raises:
        ConfigError: the file is missing, is not a training state, or holds another learned
            optimizer (beyond the safeguard settings).
    """
    path = Path(config.init_from)
    if not path.is_file():
        raise ConfigError(f"init_from: {path} does not exist (give a state-*.safetensors file of a run's "
                          "training_state/ folder)")
    data = path.read_bytes()
    try:
        doc, state = decode(data, str(path))
        source = MetaTrainConfig.from_saved(doc["config"])
    except (ResumeError, KeyError, ConfigError, TypeError, ValueError) as e:
        raise ConfigError(f"init_from: {path} is not a training state written by metatele train ({e}); give a "
                          "state-*.safetensors file of a run's training_state/ folder") from None
    changed, other = learned_differences(source, config)
    if other:
        raise ConfigError(f"init_from: {path} was trained as another learned optimizer: {'; '.join(other)}. Only "
                          f"the safeguard settings ({', '.join(SAFEGUARD_KEYS)}) may differ")
    rank0 = state["ranks"][0]
    counters = rank0.get("counters", {})
    start, world = source.train_seed_start, int(doc.get("world_size", 1))
    own = [[start, start + (int(counters["next_seed"]) - start) * world]] if "next_seed" in counters else []
    earlier = (counters.get("init_source") or {}).get("training_seeds", [])
    record = {"file": str(config.init_from), "sha256": hashlib.sha256(data).hexdigest(),
              "training_seeds": [*earlier, *own],  # [start, end) ranges of the source and of its own sources
              "meta_steps": int(doc["meta_step"]),
              "trajectory_steps": rank0["snapshots"]["trajectory_steps"] if "snapshots" in rank0 else None,
              "train_seconds": round(float(counters.get("train_seconds", 0.0)), 1),
              "meta_seed": source.seed, "changed": changed, "init_from": counters.get("init_source")}
    return state["shared"]["optimizer"], state["shared"]["meta_opt"], record


def warm_start(engine: UnrollEngine | MixtureEngine, config: MetaTrainConfig) -> dict[str, Any] | None:
    """Load ``config.init_from`` into a freshly built ``engine``: the meta-parameters, and the Adam
    moments with this run's rates; the run's snapshot average starts at those meta-parameters.
    Returns the source's record (also set as ``engine.init_source``), ``None`` without
    ``init_from``. Call it only on a fresh start: a resumed run restores its own state.

    Raises:
        ConfigError: see :func:`read_source`; also when the tensors do not fit this run.
    """
    if config.init_from is None:
        return None
    params, meta_opt, record = read_source(config)
    rates = [g["lr"] for g in engine.meta_opt.param_groups]
    try:
        with torch.no_grad():
            engine.optimizer.load_state_dict(params)
        engine.meta_opt.load_state_dict(meta_opt)
    except (KeyError, ValueError, RuntimeError) as e:
        raise ConfigError(f"init_from: {config.init_from} does not fit this run: {e}") from None
    for group, lr in zip(engine.meta_opt.param_groups, rates):
        group["lr"] = lr  # this run's rates, not the source's
    if engine.snapshots is not None and engine.snapshots.average is not None:
        with torch.no_grad():
            for a, p in zip(engine.snapshots.average, engine.snapshots.params):
                a.copy_(p.detach())
    engine.init_source = record
    return record


def warm_start_totals(provenance: dict[str, Any]) -> dict[str, float]:
    """What a checkpoint's warm-start sources (its provenance's ``init_from``, and theirs) had
    trained before it: ``meta_steps``, ``trajectory_steps`` and ``train_seconds`` (zeros for a run
    trained from scratch). A warm-started run's own counts start at 0; add these for its total."""
    total = {"meta_steps": 0, "trajectory_steps": 0, "train_seconds": 0.0}
    source = provenance.get("init_from")
    while source:
        for k in total:
            total[k] += source.get(k) or 0
        source = source.get("init_from")
    return total
