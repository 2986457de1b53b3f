"""The teleport gradient: what the loss geometry says about the best direction along the orbit.

Along the orbit of the group action the loss is constant, so its derivative with respect to the
Lie-algebra element ``T`` of a pair is zero at ``T = 0`` and tells a teleport nothing. The first
non-trivial signal is the derivative of the squared gradient norm along the orbit::

    G_m = ∂/∂T_m ‖∇_W L((I + T)·W)‖²   at T = 0,      one [d_m, d_m] matrix per pair m.

It is computed for every pair and every task at once by a double backward pass through the exact
group action (the tasks are independent, so the gradient of the summed objective is each task's
own). Gradient-ascent teleportation steps along ``G``; a learned teleport reads it as an input.
Under a permutation ``P`` of the hidden units of layer ``m`` (an exact symmetry of the network),
``G_m`` becomes ``P G_m Pᵀ``.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..tasks.mlp import grad_norm_sq, mlp_loss
from .action import teleport

#: a per-task loss of stacked weights: list of ``[B, d_i, d_{i-1}(+1)]`` → ``[B]``
LossFn = Callable[[Sequence[torch.Tensor]], torch.Tensor]


def squared_loss(X: torch.Tensor, Y: torch.Tensor) -> LossFn:
    """The regression loss of the tasks ``½‖Y − f(X)‖²`` as a function of the weights."""
    return lambda weights: mlp_loss(weights, X, Y)


def teleport_gradient(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    loss_fn: LossFn,
    exact: bool = True,
    x_qr: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor, list[torch.Tensor]]:
    """``G_m`` for every consecutive pair, with the loss and gradient at ``weights`` on the way.

    The weights are treated as data (detached): the result carries no graph.

    Args:
        weights: list of ``[B, d_i, d_{i-1}]`` (``+ 1`` column for a layer with a bias).
        X: ``[B, d0, n]``, the data the group action acts with.
        loss_fn: per-task loss of the weights, ``[B]`` (e.g. :func:`squared_loss`).
        exact: exact group action (default) or the paper's first-order form.
        x_qr: optional precomputed factorisation of the first layer's input (see
            :func:`metatele.symmetry.action.input_qr`).

    Returns:
        ``(G, loss, grads)``: ``G`` a list of ``L − 1`` tensors ``[B, d_m, d_m]``; ``loss``
        ``[B]`` and ``grads`` (same shapes as ``weights``) at ``weights`` (``T = 0``).
    """
    with torch.enable_grad():
        W0 = [w.detach() for w in weights]
        T = [torch.zeros(w.shape[0], w.shape[1], w.shape[1], dtype=w.dtype, device=w.device, requires_grad=True)
             for w in W0[:-1]]
        Wt = teleport(W0, X, T, exact=exact, warn=False, x_qr=x_qr)
        leaves = [w.view_as(w) for w in Wt]
        loss = loss_fn(leaves)
        grads = torch.autograd.grad(loss.sum(), leaves, create_graph=True)
        G = torch.autograd.grad(grad_norm_sq(grads).sum(), T)
    return list(G), loss.detach(), [g.detach() for g in grads]


def mlp_teleport_gradient(
    weights: Sequence[torch.Tensor], X: torch.Tensor, Y: torch.Tensor, exact: bool = True
) -> list[torch.Tensor]:
    """``G_m`` of the regression tasks ``(X, Y)``: list of ``[B, d_m, d_m]``."""
    return teleport_gradient(weights, X, squared_loss(X, Y), exact=exact)[0]
