"""Task augmentation by random rescaling (Lv et al. 2017, "Learning gradient descent: better
generalization and longer horizons").

A learned optimizer meta-trained on tasks of one scale learns that scale: its steps are right for
the gradients it saw and wrong for larger or smaller ones. Rescaling every training task by random
factors, ``X ← a X``, ``Y ← b Y`` (regression only: digits' targets are labels) and every initial
weight matrix ``W_i ← c_i W_i``, shows it a range of loss and gradient scales. Each factor is drawn
log-uniformly in ``[1/r, r]`` from the task's own seed (and the run's), so augmentation is
deterministic, independent of the batch a task is drawn in, and needs no saved state.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np
import torch

from .family import TaskBatch

#: mixed into a task seed's generator so that its factors are independent of anything else drawn from it
_AUGMENT_STREAM = 0x415547


def scale_factors(seed: int, task_seed: int, scale: float, layers: int) -> np.ndarray:
    """``[a, b, c_1..c_L]`` for the task on ``task_seed``: log-uniform in ``[1/scale, scale]``."""
    if scale < 1:
        raise ValueError(f"augmentation scale must be ≥ 1, got {scale}")
    u = np.random.default_rng([seed, task_seed, _AUGMENT_STREAM]).uniform(-1.0, 1.0, size=2 + layers)
    return np.exp(u * math.log(scale))


def augment(batch: TaskBatch, seeds: Sequence[int], scale: float, seed: int, scale_targets: bool = True) -> TaskBatch:
    """``batch`` with every task rescaled by its :func:`scale_factors` (``scale == 1``: ``batch``
    itself). Validation data (digits' ``X_val``) is rescaled like ``X``; ``scale_targets=False``
    leaves ``Y`` (and ``Y_val``) alone."""
    if scale == 1:
        return batch
    L = len(batch.weights)
    f = torch.as_tensor(np.stack([scale_factors(seed, s, scale, L) for s in seeds]), dtype=batch.X.dtype)
    f = f.to(batch.X.device)
    col = lambda i: f[:, i].view(-1, 1, 1)  # noqa: E731
    changes = {"X": batch.X * col(0), "weights": [w * col(2 + i) for i, w in enumerate(batch.weights)]}
    if scale_targets:
        changes["Y"] = batch.Y * col(1)
    if getattr(batch, "X_val", None) is not None:
        changes["X_val"] = batch.X_val * col(0)
        if scale_targets:
            changes["Y_val"] = batch.Y_val * col(1)
    return dataclasses.replace(batch, **changes)
