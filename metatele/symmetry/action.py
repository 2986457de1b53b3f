"""The group action of GL(d_m) on consecutive layer pairs, and teleportation (docs/symmetry.md).

For a pair ``V = W_m``, ``U = W_{m+1}`` with layer input ``h = h_{m-1}`` and ``g ∈ GL(d_m)``::

    V' = σ⁻¹(g · σ(V h)) · h⁺          U' = U · g⁻¹

If ``h`` (``[d_{m-1}, n]``) has full column rank, ``h⁺ h = I`` and the loss is unchanged. We
compute ``V'`` as ``V + (σ⁻¹(g σ(V h)) − V h) h⁺``: the same ``V' h`` (so the same loss), equal to
the formula above when ``h`` is square (the paper's reference task), and for ``n < d`` the
minimal change of ``V`` rather than its projection onto the data span, so that ``g = I`` leaves
the weights (and every gradient) unchanged, as a group action must. The
pseudo-inverse is applied through a thin QR factorisation of ``h`` (``A h⁺ = A R⁻¹ Qᵀ``, a
triangular solve), which stays accurate for ill-conditioned inputs where solving against the
Gram matrix ``h hᵀ`` would square the condition number. If ``n > d_{m-1}`` the action is not a
symmetry: a :class:`SymmetryWarning` says so, and the SVD pseudo-inverse gives the least-squares
``V'``.

``exact=True`` (default) uses ``U g⁻¹`` by a linear solve; ``exact=False`` is the paper's
first-order form ``U (2I − g)`` = ``U (I − T)`` for ``g = I + T``, which changes the loss by
O(‖T‖²). Both share this one implementation.

Biases (a layer stored as the augmented ``[V b]``, see :mod:`metatele.tasks.mlp`): the pair action
treats ``[V b]`` as one matrix acting on the augmented input ``[h; 1ᵀ]``, so
``[V' b'] = [V b] + (σ⁻¹(g σ(V h + b 1ᵀ)) − (V h + b 1ᵀ)) [h; 1ᵀ]⁺``, and ``U' = U g⁻¹`` acts on
``U``'s weight columns only (its own bias is unchanged). The loss is invariant when ``[h; 1ᵀ]``
has full column rank, which needs ``n ≤ d_{m-1} + 1``: a layer with a bias admits one sample
more than one without.
"""
from __future__ import annotations

import warnings
from typing import Sequence

import torch

from ..tasks.mlp import affine, append_ones_row, check_problem, has_bias, join_bias, mlp_loss, sigma, sigma_inv, split_bias


class SymmetryWarning(UserWarning):
    """The requested action is not a symmetry of the loss (``n > d_{m-1}`` for some pair)."""


def non_symmetric_pairs(weights: Sequence[torch.Tensor], X: torch.Tensor) -> list[int]:
    """Indices ``m`` (0-based pair index) whose layer input is narrower than the sample count.

    The input width of ``W_m`` counts the bias column, so a layer with a bias is symmetric up
    to ``n = d_{m-1} + 1`` samples.
    """
    n = X.shape[-1]
    return [m for m in range(len(weights) - 1) if weights[m].shape[-1] < n]


def qr_factor(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Thin QR of a layer input ``h`` ``[B, d, n]``: ``Q`` ``[B, d, n]``, ``R`` ``[B, n, n]`` for
    ``n ≤ d``; for ``n > d``, of ``hᵀ``: ``Q`` ``[B, n, d]``, ``R`` ``[B, d, d]``.

    Lower-precision inputs (float32, half) are factorised in float64 (and :func:`apply_pinv`
    solves in the factors' dtype): the error grows like ``eps · cond(h)``, square Gaussian
    inputs reach cond(h) ~ 2e5, and a float32 solve then changes the loss by ~2e-4 relative.
    """
    if h.dtype in (torch.float32, torch.float16, torch.bfloat16):
        h = h.double()
    if h.shape[-1] > h.shape[-2]:  # n > d (not a symmetry): factor hᵀ = QR, Q [B, n, d], R [B, d, d]
        return torch.linalg.qr(h.mT, mode="reduced")
    return torch.linalg.qr(h, mode="reduced")


def apply_pinv(
    A: torch.Tensor, h: torch.Tensor, qr: tuple[torch.Tensor, torch.Tensor] | None = None
) -> torch.Tensor:
    """``A h⁺`` for ``A`` ``[B, p, n]`` and ``h`` ``[B, d, n]``; returns ``[B, p, d]``.

    For ``n ≤ d`` uses the thin QR ``h = QR``: ``A h⁺ = (A R⁻¹) Qᵀ``, with ``A R⁻¹`` from a
    triangular solve. This is accurate to ``eps · cond(h)`` (forming the Gram matrix ``h hᵀ``
    would square the condition number, and forming ``h⁺`` explicitly first loses digits too).
    ``qr`` may pass a precomputed :func:`qr_factor` of ``h``. For ``n > d`` (not a symmetry) the
    least-squares solution ``A Q R⁻ᵀ`` from the QR of ``hᵀ`` (what ``torch.linalg.pinv`` gives
    for ``h`` of full row rank). Batched; no host sync.
    """
    d, n = h.shape[-2], h.shape[-1]
    Q, R = qr if qr is not None else qr_factor(h)
    if n > d:  # hᵀ = QR, so h⁺ = Q R⁻ᵀ (h of full row rank): no SVD, which syncs and fails on non-finite input
        return torch.linalg.solve_triangular(R, (A.to(R.dtype) @ Q).mT, upper=True).mT.to(A.dtype)
    # A R⁻¹ = (R⁻ᵀ Aᵀ)ᵀ: the left-sided solve has a much cheaper backward than left=False
    out = torch.linalg.solve_triangular(R.mT, A.mT.to(R.dtype), upper=False).mT @ Q.mT
    return out.to(A.dtype)


def input_qr(weights: Sequence[torch.Tensor], X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`qr_factor` of the first layer's input: ``X`` ``[B, d0, n]``, or ``[X; 1ᵀ]`` when
    ``weights[0]`` is an augmented ``[W b]`` (what :func:`group_action` takes as ``x_qr``)."""
    return qr_factor(append_ones_row(X) if has_bias(weights[0], X) else X)


def _identity_like(T: torch.Tensor) -> torch.Tensor:
    return torch.eye(T.shape[-1], dtype=T.dtype, device=T.device).expand_as(T)


def group_action(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    g: Sequence[torch.Tensor | None],
    exact: bool = True,
    warn: bool = True,
    x_qr: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Apply group elements ``g[m]`` (``[B, d_m, d_m]``, one per consecutive pair) in order.

    Pairs are processed for ``m = 1..L−1``; each uses the layer input recomputed from the
    already-transformed weights. ``g[m] = None`` leaves pair ``m`` untouched.

    Args:
        weights: list of ``[B, d_i, d_{i-1}]`` (``[B, d_i, d_{i-1} + 1]`` for ``[W b]`` with a bias).
        X: ``[B, d0, n]``.
        g: ``L − 1`` group elements (or ``None``).
        exact: ``U g⁻¹`` by a linear solve (default) or the first-order ``U (2I − g)``.
        warn: emit :class:`SymmetryWarning` when a pair's input is narrower than ``n``.
        x_qr: optional precomputed :func:`qr_factor` of the first layer's input (``X``, or
            ``[X; 1ᵀ]`` when the first layer has a bias: see :func:`input_qr`); the data do not
            change along a trajectory, so callers that teleport often factor it once. A
            factorisation of the wrong height is ignored (recomputed).

    Returns:
        The new weights (the input list is not modified).
    """
    check_problem(weights, X)
    L = len(weights)
    if len(g) != L - 1:
        raise ValueError(f"need one group element per consecutive pair ({L - 1}), got {len(g)}")
    bad = non_symmetric_pairs(weights, X)
    if warn and any(g[m] is not None for m in bad):
        warnings.warn(
            f"pairs {bad}: layer input width < n = {X.shape[-1]} samples, so h has no left inverse "
            "and this group action is NOT a symmetry of the loss; use symmetry.loss_change() to "
            "measure the change",
            SymmetryWarning,
            stacklevel=2,
        )
    new = list(weights)
    h = X
    for m in range(L - 1):
        gm = g[m]
        if gm is not None:
            d = new[m].shape[1]
            if gm.shape != (X.shape[0], d, d):
                raise ValueError(
                    f"group element for pair {m} must be [B, d_m, d_m] = {(X.shape[0], d, d)}, "
                    f"got {tuple(gm.shape)}"
                )
            V, U = new[m], new[m + 1]
            Vh = affine(V, h)
            A = sigma_inv(gm @ sigma(Vh))
            # V' = V + (A − V h) h⁺: V' h = A whenever h⁺ h = I (the spec's V' = A h⁺ then), and
            # V' = V at g = I even when n < d (A h⁺ alone would project V onto the data span).
            # With a bias, V is [V b] and h is the augmented [h; 1ᵀ].
            h_in = append_ones_row(h) if has_bias(V, h) else h
            qr = x_qr if m == 0 and x_qr is not None and x_qr[0].shape[-2] == h_in.shape[-2] else None
            new[m] = V + apply_pinv(A - Vh, h_in, qr)
            U_w, U_b = split_bias(U, d)  # g acts on U's weight columns; its bias stays
            if exact:
                # solve_ex: no error check, so no host sync and no exception on a singular element
                U_w = torch.linalg.solve_ex(gm, U_w, left=False)[0]
            else:
                U_w = U_w @ (2 * _identity_like(gm) - gm)
            new[m + 1] = join_bias(U_w, U_b)
        h = sigma(affine(new[m], h))
    return new


def teleport(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    T: Sequence[torch.Tensor | None],
    exact: bool = True,
    warn: bool = True,
    x_qr: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> list[torch.Tensor]:
    """Teleport with Lie-algebra elements: ``g = I + T[m]`` for each consecutive pair.

    ``T`` is a list of ``L − 1`` tensors ``[B, d_m, d_m]`` (``None`` skips a pair).
    ``exact=False`` is the paper's first-order form ``U' = U (I − T)``. See :func:`group_action`.
    """
    g = [None if t is None else _identity_like(t) + t for t in T]
    return group_action(weights, X, g, exact=exact, warn=warn, x_qr=x_qr)


def loss_change(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    Y: torch.Tensor,
    T: Sequence[torch.Tensor | None],
    exact: bool = True,
) -> torch.Tensor:
    """Per-task relative loss change ``(L(g·W) − L(W)) / L(W)`` of a teleport: ``[B]``."""
    before = mlp_loss(weights, X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SymmetryWarning)
        after = mlp_loss(teleport(weights, X, T, exact=exact, warn=False), X, Y)
    return (after - before) / before
