"""The training-state file: everything a meta-training run needs to continue bit for bit.

``metatele train --out DIR`` keeps its training states in ``DIR/training_state/state-XXXXXXXX.safetensors``
(the number is the meta-step). A file holds the meta-parameters, the Adam state, every trajectory
(weights, data, LSTM states, seeds, steps done), the torch and numpy RNG states, the host counters,
the config and the metrics history so far. It is a :mod:`metatele.storage.container` file: its
tensors, and one JSON document (with the nested structure of the state, the tensors referred to
by name) in its header; nothing is ever unpickled.

A data-parallel run stores rank 0's copy of what every rank shares (meta-parameters, Adam state)
once, and every rank's trajectories: ``state = {"shared": {...}, "ranks": [rank 0's, ...]}``.

When and how the files are written, rotated and read back on ``--resume`` is
:mod:`metatele.meta.checkpointer`.
"""
from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..configs import ConfigError, to_dict
from ..storage.container import Container, ContainerError
from .config import MetaTrainConfig
from .engine import UnrollEngine
from .mixture import build_engine

FORMAT = "metatele-training-state"
FORMAT_VERSION = 1
CONTAINER = Container(FORMAT, FORMAT_VERSION, key="metatele_training_state", what="training state",
                      writer="metatele train")
STATE_DIR = "training_state"
#: the finished run's checkpoint in the run folder (beside ``STATE_DIR``, ``history.json``, ``config.json``)
CHECKPOINT_FILE = "checkpoint.safetensors"
#: config keys that may change on resume: they do not change what is computed (the budget only says
#: when the run ends, so a run in progress given more, or less, continues bit for bit up to the
#: earlier end; the checkpointer refuses a spent budget and a new budget for a run that has ended)
RESUME_MUTABLE = ("device", "log_every", "max_meta_steps", "max_seconds")
#: parts of :meth:`UnrollEngine.state_dict` that are identical on every rank: stored once
SHARED = ("optimizer", "meta_opt")
_NAME = re.compile(r"^state-(\d{8,})\.safetensors$")


class ResumeError(ContainerError):
    """A training state cannot be written, found, read, or does not fit the run."""


def say(msg: str) -> None:
    """A notice of the run's lifecycle (saving, resuming, stopping) on stderr."""
    print(f"metatele: {msg}", file=sys.stderr, flush=True)


# -- pickle-free encoding of nested states ----------------------------------------------------
def _pack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested dicts/lists/tuples of tensors, numpy arrays and scalars → JSON tree + tensors."""
    if torch.is_tensor(obj):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(obj.copy())
        return {"__ndarray__": name}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _pack(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_pack(k, tensors), _pack(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state: {obj!r}")


def _unpack(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [_unpack(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return tensors[tree["__ndarray__"]].numpy()
        if "__tuple__" in tree:
            return tuple(_unpack(v, tensors) for v in tree["__tuple__"])
        if "__items__" in tree:
            return {_unpack(k, tensors): _unpack(v, tensors) for k, v in tree["__items__"]}
        return {k: _unpack(v, tensors) for k, v in tree.items()}
    return tree


def encode(doc: dict[str, Any], state: Any) -> bytes:
    """Bytes of a training-state file: ``state``'s tensors, and ``doc`` plus its JSON tree."""
    tensors: dict[str, torch.Tensor] = {}
    tree = _pack(state, tensors)
    return CONTAINER.encode(tensors, {**doc, "state": tree})


def decode(data: bytes, where: str = "training state") -> tuple[dict[str, Any], Any]:
    """``(doc, state)`` from :func:`encode`'s bytes, verified; never unpickles.

    Raises:
        ResumeError: truncated, damaged, foreign (e.g. a pickle) or of an unknown version.
    """
    doc, tensors = CONTAINER.decode(data, where, ResumeError)
    if "state" not in doc:
        raise ResumeError(f"{where} is missing metadata field 'state'")
    return doc, _unpack(doc.pop("state"), tensors)


def rank_state(engine: UnrollEngine) -> dict[str, Any]:
    """This rank's part of :meth:`UnrollEngine.state_dict` (trajectories, RNGs, counters)."""
    sd = engine.state_dict()
    sd["numpy_rng"] = json.loads(json.dumps(sd["numpy_rng"]))  # plain dict (128-bit ints stay exact)
    return {k: v for k, v in sd.items() if k not in SHARED}


# -- files -------------------------------------------------------------------------------------
def state_files(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(meta_step, path)`` of the training-state files in ``out``, newest first."""
    folder = Path(out) / STATE_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def latest_state(out: str | os.PathLike, quarantine: bool = True) -> tuple[Path, bytes, dict[str, Any], Any] | None:
    """The newest training state in ``out`` that loads cleanly: ``(path, bytes, doc, state)``.

    Damaged newer files are reported and, with ``quarantine``, renamed ``*.damaged`` so that they
    leave the rotation (a run resuming from an older file must never prune good files for them).
    """
    files = state_files(out)
    for i, (_, path) in enumerate(files):
        try:
            data = path.read_bytes()
            doc, state = decode(data, str(path))
        except (OSError, ResumeError) as e:
            say(f"skipping {path}: {e}")
            continue
        for _, bad in files[:i] if quarantine else []:
            try:
                bad.rename(bad.with_name(bad.name + ".damaged"))
            except OSError:
                pass
        return path, data, doc, state
    return None


def flat_keys(d: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config dict as ``{"a.b.c": value}``."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(flat_keys(v, f"{prefix}.{k}" if prefix else k))
    return out


def config_differences(saved: dict[str, Any], config: MetaTrainConfig) -> list[str]:
    """``key (saved A, now B)`` for every config key that differs (``RESUME_MUTABLE`` ignored)."""
    try:  # keys added to the config since the state was written take their defaults
        saved = to_dict(MetaTrainConfig.from_saved(saved))
    except (ConfigError, TypeError, ValueError):
        pass  # compare as saved
    return [d for k, d in key_differences(flat_keys(saved), flat_keys(to_dict(config)), "saved")
            if k not in RESUME_MUTABLE]


def key_differences(a: dict[str, Any], b: dict[str, Any], first: str) -> list[tuple[str, str]]:
    """``(key, "key (FIRST A, now B)")`` for every key of the flat dicts ``a`` and ``b`` (of
    :func:`flat_keys`) whose values differ, sorted by key."""
    return [(k, f"{k} ({first} {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r})")
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def load_training_state(out: str | os.PathLike, config: MetaTrainConfig | None = None,
                        device: torch.device | str | None = None) -> tuple[UnrollEngine, dict[str, Any]]:
    """The engine (single process) restored from the newest training state in ``out``, and its doc.

    ``config`` defaults to the saved one. Raises :class:`ResumeError` if none loads.
    """
    found = latest_state(out, quarantine=False)
    if found is None:
        raise ResumeError(f"no training state that loads cleanly in {Path(out) / STATE_DIR}")
    path, _, doc, state = found
    config = config or MetaTrainConfig.from_saved(doc["config"])
    if doc["world_size"] != 1:
        raise ResumeError(f"{path} holds {doc['world_size']} ranks' states; load it with metatele.meta.distributed")
    engine = build_engine(config, device=device)
    engine.load_state_dict({**state["shared"], **state["ranks"][0]})
    engine.prior_history = list(doc["history"])
    return engine, doc
