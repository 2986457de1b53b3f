"""The inner network: a LeakyReLU MLP on stacked weights (docs/tasks.md).

``h_0 = X``, ``h_i = σ(W_i h_{i-1})`` for ``i < L``, output ``W_L h_{L-1}``, loss
``½‖Y − W_L h_{L-1}‖_F²`` per task. All functions take a leading batch dimension ``B``.

Biases: a layer with a bias is stored as one augmented matrix ``[V b]`` of shape
``[B, d_i, d_{i-1} + 1]`` (the bias is the last column) acting on the augmented input
``[h; 1ᵀ]``, so ``[V b] [h; 1ᵀ] = V h + b 1ᵀ``. Whether a layer has a bias is read from its
shape (input width one more than the previous layer's output), so every function here, the
group action, the optimizers and the gradients take either form (and a mix of both) without
a flag, and a bias-free network computes exactly what it did before biases existed.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F

#: negative slope of σ; σ⁻¹ is LeakyReLU with slope 1 / NEGATIVE_SLOPE.
NEGATIVE_SLOPE = 0.1


def check_problem(weights: Sequence[torch.Tensor], X: torch.Tensor, Y: torch.Tensor | None = None) -> None:
    """Validate shapes of stacked weights and data (no host sync: shapes only).

    Raises ``ValueError`` naming the offending tensor and the expected shape.
    """
    if not isinstance(weights, (list, tuple)) or len(weights) == 0:
        raise ValueError("weights must be a non-empty list of [B, d_i, d_{i-1}] tensors")
    if X.dim() != 3:
        raise ValueError(f"X must be [B, d0, n], got shape {tuple(X.shape)}")
    B, d0, n = X.shape
    prev = d0
    for i, w in enumerate(weights):
        if w.dim() != 3:
            raise ValueError(f"weights[{i}] must be [B, d_out, d_in], got shape {tuple(w.shape)}")
        if w.shape[0] != B:
            raise ValueError(f"weights[{i}] has batch size {w.shape[0]} but X has {B}")
        if w.shape[2] not in (prev, prev + 1):  # prev + 1: an augmented [W b] with a bias column
            raise ValueError(
                f"weights[{i}] has input width {w.shape[2]} but the previous layer "
                f"({'X' if i == 0 else f'weights[{i - 1}]'}) gives {prev} (or {prev + 1} for [W b] with a bias)"
            )
        prev = w.shape[1]
    if Y is not None:
        if Y.dim() != 3 or Y.shape != (B, prev, n):
            raise ValueError(f"Y must be [B, dL, n] = {(B, prev, n)}, got shape {tuple(Y.shape)}")


def sigma(x: torch.Tensor) -> torch.Tensor:
    """σ = LeakyReLU(0.1)."""
    return F.leaky_relu(x, NEGATIVE_SLOPE)


def sigma_inv(x: torch.Tensor) -> torch.Tensor:
    """σ⁻¹ = LeakyReLU(10), the exact inverse of :func:`sigma`."""
    return F.leaky_relu(x, 1.0 / NEGATIVE_SLOPE)


def has_bias(W: torch.Tensor, h: torch.Tensor) -> bool:
    """Whether ``W`` (``[B, d_out, d_in(+1)]``) is an augmented ``[V b]`` for the input ``h`` ``[B, d_in, n]``."""
    return W.shape[-1] == h.shape[-2] + 1


def append_ones_row(h: torch.Tensor) -> torch.Tensor:
    """``[h; 1ᵀ]``: a layer input ``[B, d, n]`` with a row of ones appended, ``[B, d + 1, n]``."""
    return torch.cat([h, torch.ones_like(h[..., :1, :])], dim=-2)


def affine(W: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
    """Pre-activation ``W h`` (bias-free) or ``V h + b 1ᵀ`` (``W = [V b]``): ``[B, d_out, n]``."""
    if has_bias(W, h):
        return W[..., :-1] @ h + W[..., -1:]
    return W @ h


def split_bias(W: torch.Tensor, d_in: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``[V b]`` → ``(V [B, d_out, d_in], b [B, d_out])``; a bias-free ``W`` gives ``(W, None)``."""
    if W.shape[-1] == d_in + 1:
        return W[..., :-1], W[..., -1]
    return W, None


def join_bias(V: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """``(V [B, d_out, d_in], b [B, d_out])`` → the augmented ``[V b]`` (``V`` itself when ``b`` is None)."""
    return V if b is None else torch.cat([V, b.unsqueeze(-1)], dim=-1)


def layer_inputs(weights: Sequence[torch.Tensor], X: torch.Tensor) -> list[torch.Tensor]:
    """``[h_0, ..., h_{L-1}]``, each ``[B, d_{i}, n]`` (``h_0 = X``)."""
    hs = [X]
    for W in weights[:-1]:
        hs.append(sigma(affine(W, hs[-1])))
    return hs


def forward(weights: Sequence[torch.Tensor], X: torch.Tensor) -> torch.Tensor:
    """Network output ``W_L h_{L-1}`` (plus ``b_L`` with a bias): ``[B, dL, n]``."""
    h = X
    for W in weights[:-1]:
        h = sigma(affine(W, h))
    return affine(weights[-1], h)


def mlp_loss(weights: Sequence[torch.Tensor], X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Per-task loss ``½‖Y − W_L h_{L-1}‖_F²``.

    Args:
        weights: list of ``[B, d_i, d_{i-1}]`` (``[B, d_i, d_{i-1} + 1]`` for a layer with a bias).
        X: ``[B, d0, n]``.  Y: ``[B, dL, n]``.

    Returns:
        ``[B]``.
    """
    check_problem(weights, X, Y)
    r = Y - forward(weights, X)
    return 0.5 * r.square().sum(dim=(1, 2))


#: a loss of stacked weights on data: ``(weights, X, Y) -> [B]`` (:func:`mlp_loss`, or the
#: digits cross-entropy :func:`metatele.tasks.digits.cross_entropy`)
DataLoss = Callable[[Sequence[torch.Tensor], torch.Tensor, torch.Tensor], torch.Tensor]


def loss_and_grads(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    Y: torch.Tensor,
    create_graph: bool = False,
    loss_fn: DataLoss | None = None,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Per-task losses ``[B]`` and each task's own gradient (one backward of the summed loss).

    The tasks are independent, so the gradient of ``loss.sum()`` w.r.t. the stacked weights is
    every task's gradient. With ``create_graph=False`` the returned gradients are detached data
    while the loss keeps its graph to the weights (what a first-order meta-gradient needs).
    ``loss_fn`` is the loss (default :func:`mlp_loss`, the regression loss).
    """
    loss_fn = loss_fn or mlp_loss
    with torch.enable_grad():
        # Differentiate w.r.t. fresh aliases of the weights: after a teleport, W_{m+1} is
        # computed from W_m (through h_m), and autograd.grad w.r.t. the weights themselves
        # would return total derivatives through the group action instead of ∂L/∂W_i.
        leaves = [w.view_as(w) if w.requires_grad else w.detach().requires_grad_(True) for w in weights]
        loss = loss_fn(leaves, X, Y)
        grads = torch.autograd.grad(loss.sum(), leaves, create_graph=create_graph, retain_graph=True)
    if not create_graph:
        grads = tuple(g.detach() for g in grads)
    return loss, list(grads)


def grad_norm_sq(grads: Sequence[torch.Tensor]) -> torch.Tensor:
    """Squared gradient norm over all layers, per task: ``[B]``."""
    return sum(g.square().sum(dim=(1, 2)) for g in grads)
