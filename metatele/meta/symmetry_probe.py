"""The loss change of a teleport that is not a symmetry (``allow_non_symmetric: true``).

Where a teleported pair's layer input is narrower than the number of samples, the group action
changes the loss (:func:`metatele.meta.config.non_symmetric_pairs`). A run that trains anyway
measures by how much, every meta-step: fixed random teleports of m2's norm
(:attr:`~metatele.optimizers.learned.LearnedConfig.teleport_norm`: ``teleport.eps`` for the paper's
m2, ``coordinatewise.tele_norm_init`` for the coordinatewise one; one per pair, drawn
from their own generator so that the run's random stream is untouched) are applied to the
current weights, and the largest relative loss change over the trajectories is recorded as
``teleport_loss_change``.
"""
from __future__ import annotations

import warnings

import torch

from ..symmetry.action import SymmetryWarning, loss_change
from ..symmetry.strategies import normalize_frobenius
from .config import MetaTrainConfig, describe_non_symmetric, non_symmetric_pairs


class SymmetryProbe:
    """Fixed teleports ``T`` (``[1, d, d]`` per pair) of m2's norm for ``config``'s task."""

    def __init__(self, config: MetaTrainConfig, device: torch.device, dtype: torch.dtype) -> None:
        gen = torch.Generator().manual_seed(config.seed)
        self.T = [normalize_frobenius(torch.randn(1, d, d, generator=gen, dtype=torch.float64),
                                      config.learned.teleport_norm).to(device, dtype) for d in config.task.dims[2:-1]]
        self.exact = config.learned.teleport.exact

    @classmethod
    def for_run(cls, config: MetaTrainConfig, device: torch.device, dtype: torch.dtype) -> "SymmetryProbe | None":
        """A probe when ``config`` teleports where the action is not a symmetry (warning once
        that it is), else ``None``."""
        pairs = non_symmetric_pairs(config.task)
        if not (config.learned.uses_teleport and pairs):
            return None
        warnings.warn(
            f"{describe_non_symmetric(config.task, pairs)}: the teleport is not a symmetry of the loss "
            "(allow_non_symmetric: true); the relative loss change of a teleport of m2's norm is recorded "
            "every meta-step as 'teleport_loss_change'", SymmetryWarning, stacklevel=4)
        return cls(config, device, dtype)

    def __call__(self, W: list[torch.Tensor], X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """Max over the B trajectories of ``|ΔL / L|`` of the probe teleport at weights ``W``."""
        with torch.no_grad():
            T = [t.expand(X.shape[0], -1, -1) for t in self.T]
            change = loss_change(W, X, Y, T, exact=self.exact).abs()
            return torch.where(torch.isfinite(change), change, torch.zeros_like(change)).max()
