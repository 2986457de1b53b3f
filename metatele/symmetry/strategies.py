"""Teleport strategies: how to choose the group element (docs/symmetry.md).

A strategy maps the current stacked weights (and the task data) to teleported weights. Three
kinds exist: :class:`RandomTeleport` (``T`` random with Frobenius norm ε per pair and task),
:class:`GradientAscentTeleport` (maximise ``‖∇L(g·W)‖²`` over ``T`` with a few ascent steps, each
re-linearised at ``T = 0``) and :class:`GeometryTeleport` (in :mod:`metatele.symmetry.generalization`).
The learned teleport is m2 inside :class:`metatele.optimizers.learned.LearnedOptimizer`, which
keeps its per-trajectory state itself.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..configs import require
from ..tasks.mlp import DataLoss
from .action import teleport
from .teleport_grad import mlp_teleport_gradient, teleport_gradient

STRATEGIES = ("random", "gradient_ascent")


def normalize_frobenius(T: torch.Tensor, norm: float | torch.Tensor, tiny: float = 1e-30) -> torch.Tensor:
    """Rescale each ``[d, d]`` matrix of ``T`` (``[B, d, d]``) to Frobenius norm ``norm`` (a number
    or one per matrix ``[B]``)."""
    current = T.flatten(1).norm(dim=1).clamp_min(tiny)
    return T * (norm / current).view(-1, 1, 1)


class TeleportStrategy:
    """Base class: ``strategy(weights, X, Y, grads) -> teleported weights``.

    ``grads`` (optional) are the current gradients, which learned strategies read. Stateful
    strategies override :meth:`reset` to (re)initialise state for ``batch_size`` trajectories.
    """

    def __call__(
        self,
        weights: Sequence[torch.Tensor],
        X: torch.Tensor,
        Y: torch.Tensor,
        grads: Sequence[torch.Tensor] | None = None,
    ) -> list[torch.Tensor]:
        raise NotImplementedError

    def reset(self, batch_size: int, device: torch.device, dtype: torch.dtype) -> None:
        """Start fresh trajectories (stateless strategies ignore this)."""


class RandomTeleport(TeleportStrategy):
    """``T`` with i.i.d. Gaussian entries rescaled to Frobenius norm ``eps`` per pair and task."""

    def __init__(self, eps: float = 0.01, exact: bool = True, seed: int = 0) -> None:
        require(eps > 0, "eps", f"must be > 0, got {eps}")
        self.eps, self.exact = eps, exact
        self.generator = torch.Generator(device="cpu")
        self.generator.manual_seed(seed)

    def sample(self, weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """One random ``T`` per pair: list of ``[B, d_m, d_m]`` on the weights' device."""
        out = []
        for W in weights[:-1]:
            B, d = W.shape[0], W.shape[1]
            t = torch.randn(B, d, d, generator=self.generator, dtype=torch.float64)
            out.append(normalize_frobenius(t, self.eps).to(device=W.device, dtype=W.dtype))
        return out

    def __call__(self, weights, X, Y, grads=None):
        return teleport(weights, X, self.sample(weights), exact=self.exact)


def grad_norm_ascent_direction(
    weights: Sequence[torch.Tensor], X: torch.Tensor, Y: torch.Tensor, exact: bool = True,
    loss_fn: DataLoss | None = None,
) -> list[torch.Tensor]:
    """``∂‖∇L(g·W)‖²/∂T`` at ``T = 0`` for every pair: list of ``[B, d_m, d_m]`` (per task).

    ``loss_fn``: the loss ``(weights, X, Y) -> [B]`` (default: the regression loss).
    See :func:`metatele.symmetry.teleport_grad.teleport_gradient`.
    """
    if loss_fn is not None:
        return teleport_gradient(weights, X, lambda w: loss_fn(w, X, Y), exact=exact)[0]
    return mlp_teleport_gradient(weights, X, Y, exact=exact)


class GradientAscentTeleport(TeleportStrategy):
    """Gradient ascent on ``‖∇L‖²`` over the group (the teleportation of Zhao et al. 2022).

    Each of ``steps`` iterations computes ``∂‖∇L(g·W)‖²/∂T`` at ``T = 0`` and teleports with
    ``T = lr · that``; the loss stays unchanged (exact mode) while the gradient norm grows.

    The ascent direction scales with the loss (cubically for the reference task), so a rate that
    suits a loss of ~300 (the paper: 1e-7 at step 5 of GD at 1e-4) gives ``‖T‖ ≫ 1`` and a
    numerically singular ``g`` at a loss of ~1e4. ``max_norm`` caps ``‖T‖_F`` per ascent step and
    task (``None``: no cap, the paper's rule).
    """

    def __init__(self, steps: int = 8, lr: float = 1e-7, exact: bool = True, max_norm: float | None = None,
                 loss_fn: DataLoss | None = None) -> None:
        require(steps >= 1, "steps", f"must be ≥ 1, got {steps}")
        require(lr > 0, "lr", f"must be > 0, got {lr}")
        require(max_norm is None or max_norm > 0, "max_norm", f"must be > 0 or None, got {max_norm}")
        self.steps, self.lr, self.exact, self.max_norm = steps, lr, exact, max_norm
        self.loss_fn = loss_fn  # None: the regression loss

    def __call__(self, weights, X, Y, grads=None):
        # The ascent direction is computed on detached weights (treated as data); the group
        # action itself is applied to ``weights`` so that gradients still flow through it.
        W = list(weights)
        for _ in range(self.steps):
            T = [self.lr * d for d in grad_norm_ascent_direction(W, X, Y, exact=self.exact, loss_fn=self.loss_fn)]
            if self.max_norm is not None:
                T = [t * (self.max_norm / t.flatten(1).norm(dim=1).clamp_min(self.max_norm)).view(-1, 1, 1) for t in T]
            W = teleport(W, X, T, exact=self.exact, warn=False)
        return W


@dataclass
class TeleportSchedule:
    """When and how a hand-designed optimizer teleports.

    Attributes:
        steps: the inner steps (0-based) before whose update the weights are teleported.
        strategy: ``"random"`` or ``"gradient_ascent"``.
        eps: Frobenius norm of ``T`` for the random strategy.
        ascent_steps, ascent_lr: gradient-ascent iterations and rate (reference task: 8, 1e-7).
        ascent_max_norm: cap on ``‖T‖_F`` per ascent step (``None``: the paper's uncapped rule).
        exact: exact group action (default) or the paper's first-order form.
        seed: seed of the random strategy.
    """

    steps: list[int] | None = None
    strategy: str = "gradient_ascent"
    eps: float = 0.01
    ascent_steps: int = 8
    ascent_lr: float = 1e-7
    ascent_max_norm: float | None = None
    exact: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        self.steps = sorted(int(s) for s in (self.steps or []))
        require(all(s >= 0 for s in self.steps), "teleport.steps", f"must be ≥ 0, got {self.steps}")
        require(self.strategy in STRATEGIES, "teleport.strategy",
                f"must be one of {STRATEGIES}, got {self.strategy!r}")
        require(self.eps > 0, "teleport.eps", f"must be > 0, got {self.eps}")
        require(self.ascent_steps >= 1, "teleport.ascent_steps", f"must be ≥ 1, got {self.ascent_steps}")
        require(self.ascent_lr > 0, "teleport.ascent_lr", f"must be > 0, got {self.ascent_lr}")
        require(self.ascent_max_norm is None or self.ascent_max_norm > 0, "teleport.ascent_max_norm",
                f"must be > 0 or null, got {self.ascent_max_norm}")

    def build(self, loss_fn: DataLoss | None = None) -> TeleportStrategy:
        """The strategy; ``loss_fn`` is the task loss gradient ascent differentiates (default: regression)."""
        if self.strategy == "random":
            return RandomTeleport(self.eps, self.exact, self.seed)
        return GradientAscentTeleport(self.ascent_steps, self.ascent_lr, self.exact, self.ascent_max_norm, loss_fn)
