"""The one JSON cleaner: turn configs, tensors, numpy values and ranges into plain JSON values.

Every file and log that metatele writes (checkpoint and training-state metadata, manifests,
``results.json`` of evaluations and benchmarks, wandb configs and metrics) goes through
:func:`to_json`, so a value is written the same way everywhere.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping

import numpy as np
import torch

from ..configs import to_dict


def to_json(value: Any, nonfinite_to_none: bool = True) -> Any:
    """A plain-JSON copy of ``value``.

    * dataclasses (configs) → dicts (:func:`metatele.configs.to_dict`), mappings → dicts with
      ``str`` keys, lists / tuples / sets → lists;
    * ``range(a, b)`` → ``[[a, b]]``: a list of ``[start, end)`` pairs, the form in which
      checkpoints and manifests store sets of seeds (a range with a step is listed);
    * tensors and numpy arrays → (nested) lists, 0-d tensors and numpy scalars → Python numbers;
    * paths → strings;
    * with ``nonfinite_to_none`` (default), NaN and ±inf floats → ``None``, so that the result
      is strict JSON (``json.dumps(..., allow_nan=False)`` accepts it: results files); without
      it they stay floats (checkpoint metadata and manifests round-trip them as ``Infinity``/``NaN``,
      wandb plots them as gaps).

    Other objects (``str``, ``int``, ``bool``, ``None``, wandb media) are returned as they are.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(to_dict(value), nonfinite_to_none)
    if isinstance(value, Mapping):
        return {str(k): to_json(v, nonfinite_to_none) for k, v in value.items()}
    if isinstance(value, range):
        return ([[value.start, value.stop]] if len(value) else []) if value.step == 1 else list(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json(v, nonfinite_to_none) for v in value]
    if torch.is_tensor(value):
        return to_json(value.detach().cpu().tolist(), nonfinite_to_none)
    if isinstance(value, (np.ndarray, np.generic)):
        return to_json(value.tolist(), nonfinite_to_none)
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, float) and nonfinite_to_none and not math.isfinite(value):
        return None
    return value

