"""Teleporting for generalization: sharpness, orbit curvature, and teleports that raise or lower them.

Every point of an orbit has the same loss on the data the group action acts with, but not the
same neighbourhood. Two measures of the neighbourhood (see ``docs/generalization.md``):

* **sharpness** (:func:`sharpness`): the mean loss at ``W + δ`` over random directions ``δ`` of
  Frobenius norms ``t ∈ {0.1, ..., 0.9}`` over all coordinates of the network (weights and
  biases), ``directions`` of each norm. The directions come from a CPU generator re-seeded on
  every call, so the measure is a deterministic, differentiable function of the weights
  (common random numbers: a teleport that lowers it lowers it for the same ``δ``).
* **orbit curvature** (:func:`orbit_curvature`): the curvature at ``t = 0`` of the curve
  ``γ(t) = exp(t M) · W`` along the orbit, for a random Lie-algebra element ``M`` per pair,
  ``κ = sqrt(‖γ'‖² ‖γ''‖² − (γ'·γ'')²) / ‖γ'‖³`` over the flattened weights. ``γ'`` and ``γ''``
  are exact derivatives of the group action (by automatic differentiation; σ'' = 0 for the
  piecewise-linear σ, so no such term appears). ``exp(t M)`` is replaced by ``I + t M + t² M²/2``,
  which has the same first and second derivatives at ``t = 0``. κ does not depend on the scale
  of ``M``.

:class:`GeometryTeleport` teleports by normalised gradient steps on ``T`` of either measure,
upwards or downwards, each step re-linearised at ``T = 0`` like gradient-ascent teleportation.
The group action keeps the loss on the data it acts with (the teleport batch) exactly.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..configs import require
from ..tasks.mlp import DataLoss, mlp_loss
from .action import teleport
from .strategies import TeleportStrategy

#: the norms of the random directions of :func:`sharpness` (the paper's values)
RADII = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
GEOMETRY_OBJECTIVES = ("sharpness", "curvature")
DIRECTIONS = ("raise", "lower")
_TINY = 1e-30


def sharpness(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    Y: torch.Tensor,
    loss_fn: DataLoss = mlp_loss,
    radii: Sequence[float] = RADII,
    directions: int = 100,
    seed: int = 0,
    chunk: int = 10,
) -> torch.Tensor:
    """Mean loss at ``W + δ`` over ``directions`` random ``δ`` of each Frobenius norm in ``radii``.

    Args:
        weights: list of ``[B, d_i, d_{i-1}(+1)]`` (differentiable: the graph is kept).
        X, Y: the data ``[B, d0, n]``, ``[B, dL, n]`` the loss is measured on.
        loss_fn: ``(weights, X, Y) -> [B]`` (e.g. :func:`metatele.tasks.digits.cross_entropy`).
        radii: norms of ``δ`` over all coordinates of a network.
        directions: random directions per norm (Gaussian, rescaled to the norm; one set per task).
        seed: seed of the directions (the same seed gives the same ``δ``).
        chunk: directions evaluated in one batched call (memory ``∝ chunk · B``).

    Returns:
        ``[B]``.
    """
    require(len(radii) >= 1 and all(r >= 0 for r in radii), "radii", f"must be non-negative norms, got {radii}")
    require(directions >= 1, "directions", f"must be ≥ 1, got {directions}")
    require(chunk >= 1, "chunk", f"must be ≥ 1, got {chunk}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    B = X.shape[0]
    shapes = [tuple(w.shape[1:]) for w in weights]
    sizes = [w[0].numel() for w in weights]
    total = torch.zeros(B, dtype=weights[0].dtype, device=weights[0].device)
    for r in radii:
        for start in range(0, directions, chunk):
            c = min(chunk, directions - start)
            delta = torch.randn(c, B, sum(sizes), generator=gen, dtype=torch.float64)
            delta = (delta * (r / delta.norm(dim=2, keepdim=True).clamp_min(_TINY))).to(total)
            moved = [(w.unsqueeze(0) + d.view(c, B, *s)).reshape(c * B, *s)
                     for w, d, s in zip(weights, delta.split(sizes, dim=2), shapes)]
            expand = lambda t: t.unsqueeze(0).expand(c, *t.shape).reshape(c * B, *t.shape[1:])  # noqa: E731
            total = total + loss_fn(moved, expand(X), expand(Y)).view(c, B).sum(0)
    return total / (len(radii) * directions)


def random_lie_elements(weights: Sequence[torch.Tensor], seed: int = 0) -> list[torch.Tensor]:
    """One Gaussian ``M`` per consecutive pair and task, unit Frobenius norm: list of ``[B, d_m, d_m]``."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    out = []
    for W in weights[:-1]:
        B, d = W.shape[0], W.shape[1]
        M = torch.randn(B, d, d, generator=gen, dtype=torch.float64)
        out.append((M / M.flatten(1).norm(dim=1).view(-1, 1, 1)).to(W))
    return out


def orbit_velocity_acceleration(
    weights: Sequence[torch.Tensor], X: torch.Tensor, M: Sequence[torch.Tensor], exact: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(γ'(0), γ''(0))`` of ``γ(t) = exp(t M) · W``, flattened over all layers: ``[B, P]`` each.

    Computed by the double-backward trick (a Jacobian-vector product from two vector-Jacobian
    products), applied twice; the graph to ``weights`` is kept, so the result is differentiable.
    """
    with torch.enable_grad():
        W = list(weights)
        t = torch.zeros(X.shape[0], dtype=W[0].dtype, device=W[0].device, requires_grad=True)
        tt = t.view(-1, 1, 1)
        # I + tM + t²M²/2 - I = the Lie-algebra element teleport() expects; same γ', γ'' as exp(tM)
        T = [tt * m + 0.5 * tt.square() * (m @ m) for m in M]
        curve = torch.cat([w.flatten(1) for w in teleport(W, X, T, exact=exact, warn=False)], dim=1)

        def d_dt(f: torch.Tensor) -> torch.Tensor:  # df/dt per task, [B, P], keeping the graph
            u = torch.zeros_like(f, requires_grad=True)
            (vjp,) = torch.autograd.grad((u * f).sum(), t, create_graph=True)
            return torch.autograd.grad(vjp.sum(), u, create_graph=True)[0]

        velocity = d_dt(curve)
        return velocity, d_dt(velocity)


def orbit_curvature(
    weights: Sequence[torch.Tensor], X: torch.Tensor, M: Sequence[torch.Tensor], exact: bool = True
) -> torch.Tensor:
    """Curvature ``κ`` at ``t = 0`` of the orbit curve ``γ(t) = exp(t M) · W``: ``[B]``.

    Args:
        weights: list of ``[B, d_i, d_{i-1}(+1)]``.
        X: ``[B, d0, n]``, the data the group action acts with.
        M: one Lie-algebra element per pair, ``[B, d_m, d_m]`` (e.g. :func:`random_lie_elements`).
    """
    v, a = orbit_velocity_acceleration(weights, X, M, exact=exact)
    vv, aa, va = v.square().sum(1), a.square().sum(1), (v * a).sum(1)
    return (vv * aa - va.square()).clamp_min(_TINY).sqrt() / vv.clamp_min(_TINY).pow(1.5)


class GeometryTeleport(TeleportStrategy):
    """Teleport to raise or lower the sharpness or the orbit curvature of the weights.

    Each of ``steps`` iterations takes ``G = ∂ objective((I + T)·W) / ∂T`` at ``T = 0`` for every
    pair and teleports with ``T = ± s · G / ‖G‖`` (``‖G‖`` over all pairs, per task), ``s``
    starting at ``step_norm``. A step that would not move a task's objective the asked way is
    not taken and halves that task's ``s``, so the objective moves monotonically.

    Args:
        objective: ``"sharpness"`` or ``"curvature"``.
        direction: ``"raise"`` or ``"lower"``.
        steps, step_norm: iterations and the Frobenius norm of each step's ``T``.
        loss_fn: the loss sharpness is measured with.
        radii, directions: of :func:`sharpness` (fewer directions than a measurement: each step
            differentiates through them).
        seed: seed of the sharpness directions and of the curvature's ``M``.
        exact: exact group action (default) or the paper's first-order form.

    ``strategy(weights, X, Y)`` teleports with the data ``(X, Y)`` (the teleport batch); the loss
    on it is unchanged and the objective is measured on it.
    """

    def __init__(
        self,
        objective: str = "curvature",
        direction: str = "raise",
        steps: int = 5,
        step_norm: float = 0.05,
        loss_fn: DataLoss = mlp_loss,
        radii: Sequence[float] = RADII,
        directions: int = 10,
        seed: int = 0,
        exact: bool = True,
    ) -> None:
        require(objective in GEOMETRY_OBJECTIVES, "objective", f"must be one of {GEOMETRY_OBJECTIVES}, got {objective!r}")
        require(direction in DIRECTIONS, "direction", f"must be one of {DIRECTIONS}, got {direction!r}")
        require(steps >= 1, "steps", f"must be ≥ 1, got {steps}")
        require(step_norm > 0, "step_norm", f"must be > 0, got {step_norm}")
        self.objective, self.direction = objective, direction
        self.steps, self.step_norm, self.loss_fn = steps, step_norm, loss_fn
        self.radii, self.directions, self.seed, self.exact = tuple(radii), directions, seed, exact

    def measure(self, X: torch.Tensor, Y: torch.Tensor, like: Sequence[torch.Tensor]) -> Callable[[Sequence[torch.Tensor]], torch.Tensor]:
        """The objective as a function of the weights, ``[B]``, on the data ``(X, Y)``."""
        if self.objective == "sharpness":
            return lambda W: sharpness(W, X, Y, self.loss_fn, self.radii, self.directions, self.seed)
        M = random_lie_elements(like, self.seed)
        return lambda W: orbit_curvature(W, X, M, exact=self.exact)

    def __call__(self, weights, X, Y, grads=None):
        sign = 1.0 if self.direction == "raise" else -1.0
        objective = self.measure(X, Y, weights)
        W = list(weights)
        B = X.shape[0]
        step = torch.full((B,), self.step_norm, dtype=W[0].dtype, device=W[0].device)
        with torch.no_grad():
            current = objective(W)
        for _ in range(self.steps):
            with torch.enable_grad():
                W0 = [w.detach() for w in W]
                T0 = [torch.zeros(w.shape[0], w.shape[1], w.shape[1], dtype=w.dtype, device=w.device, requires_grad=True)
                      for w in W0[:-1]]
                G = torch.autograd.grad(objective(teleport(W0, X, T0, exact=self.exact, warn=False)).sum(), T0)
            norm = torch.sqrt(sum(g.flatten(1).square().sum(1) for g in G)).clamp_min(_TINY)
            scale = (sign * step / norm).view(-1, 1, 1)
            new = teleport(W, X, [scale * g for g in G], exact=self.exact, warn=False)
            with torch.no_grad():
                value = objective(new)
            # a step that does not move the objective the asked way is not taken, and that
            # task's step is halved (per task, on the device: no host sync)
            better = torch.isfinite(value) & (sign * (value - current) > 0)
            keep = better.view(-1, 1, 1)
            W = [torch.where(keep, a, b) for a, b in zip(new, W)]
            current = torch.where(better, value, current)
            step = torch.where(better, step, 0.5 * step)
        return W
