"""The meta-loss of one truncated unroll: per step and trajectory, from the inner losses.

For each trajectory the unroll contributes its inner losses at ``W_{t+1}..W_{t+K}`` (or their
logs with ``meta_loss: mean_log``, optionally divided by the task's initial loss with
``normalize``), weighted towards late steps with ``late_weight``, and masked where the trajectory
diverged, is idle, or has passed its horizon (a trajectory stops at its horizon inside an
unroll). The engine averages these contributions over the batch
(:meth:`metatele.meta.engine.UnrollEngine.compute_meta_gradient`).
"""
from __future__ import annotations

import numpy as np
import torch

from .config import MetaTrainConfig
from .trajectories import Trajectories


def late_weights(config: MetaTrainConfig, tr: Trajectories, K: int, device: torch.device,
                 dtype: torch.dtype) -> torch.Tensor:
    """``[K, B]`` weights of the unroll's meta-loss terms towards late steps: the term of the loss
    at inner step ``s`` (``W_s``) of a trajectory of horizon ``H`` weighs ``(p + 1) (min(s, H) / H)^p``
    with ``p = late_weight`` (host integers, copied to the device without a sync)."""
    p = config.late_weight
    s = tr.steps_done[None, :] + np.arange(1, K + 1)[:, None]
    w = (p + 1) * (np.minimum(s, tr.horizon) / tr.horizon) ** p
    return torch.as_tensor(w, dtype=dtype).to(device, non_blocking=True)


def contributions(config: MetaTrainConfig, tr: Trajectories, per_step: torch.Tensor, alive: torch.Tensor,
                  taken: np.ndarray) -> torch.Tensor:
    """``[K, B]`` meta-loss terms of an unroll (with their graph), zero where not counted.

    Args:
        per_step: the inner losses at ``W_{t+1}..W_{t+K}``, ``[K, B]``.
        alive: ``[B]``, the trajectories that stayed finite (and are not idle).
        taken: ``[B]`` host integers, the steps each trajectory took before its horizon.
    """
    K, device = per_step.shape[0], per_step.device
    loss = per_step / tr.loss0 if config.normalize else per_step
    term = torch.log(loss.clamp_min(1e-30)) if config.meta_loss == "mean_log" else loss
    if config.late_weight:
        term = term * late_weights(config, tr, K, device, per_step.dtype)
    counted, short = alive.unsqueeze(0), bool((taken < K).any())
    if short:  # the terms after a trajectory's horizon are not its meta-loss
        counted = counted & torch.as_tensor(np.arange(K)[:, None] < taken).to(device, non_blocking=True)
    contrib = torch.where(counted, term, torch.zeros_like(per_step))
    if config.meta_loss == "mean_log":
        contrib = contrib / (torch.as_tensor(taken, dtype=contrib.dtype).to(device) if short else K)
    return contrib
