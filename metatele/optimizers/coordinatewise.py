"""Learned optimizers that run on any LeakyReLU network: a per-coordinate m1, an equivariant m2.

The paper's LSTMs read the whole flattened gradient of one network, so they are tied to its
sizes. The two modules here share their weights across coordinates instead, which makes one
set of meta-parameters apply to any widths, any depth, with or without biases.

**m1, per coordinate** (:class:`CoordinateUpdate`). Every weight and bias coordinate keeps an
optimizer state: momenta of the gradient at several time scales ``m_β`` (β = 0.5, 0.9, 0.99 by
default) and a second moment ``v`` (β₂ = 0.999), bias-corrected as in Adam. From these a small
MLP, the same for every coordinate, reads nine scale-free features:

1. ``g / (√v̂ + ε)`` and 2–4. ``m̂_β / (√v̂ + ε)`` for each β (momenta in units of the RMS gradient);
5. ``g / rms(g)`` and 6. ``m̂_0.9 / rms(m̂_0.9)`` (normalised over the coordinate's tensor);
7. ``log √v̂ − mean log √v̂`` over the tensor (is this coordinate's gradient large for its layer);
8. ``w / rms(w)`` (the coordinate's value, normalised over its tensor);
9. ``1`` for a bias coordinate, ``0`` for a weight.

and writes two numbers ``(a, b)``. The update is
``lr · exp(s_mag · tanh a) · (d + s_dir · rms(d) · tanh b)`` with ``d = m̂_0.9 / (√v̂ + ε)`` and
``rms(d)`` its RMS over the coordinate's tensor: Adam's step with a bounded correction of its
size (a factor within ``e^{±s_mag}``) and of its direction (relative to the step, so that the
correction shrinks as the trajectory converges). The MLP's last
layer starts at zero, so an untrained m1 *is* Adam at rate ``lr``; meta-training learns a
correction and can never write an unbounded step. The per-tensor statistics are the only loop
(over the L layers); every coordinate of every task is processed in one batched MLP call.

**m2, equivariant** (:class:`EquivariantTeleport`). For a pair ``(V, U) = (W_m, W_{m+1})`` of
any width ``d`` it reads, for every entry ``(i, j)`` of a ``[d, d]`` matrix, features built from
the teleport gradient ``G`` (see :mod:`metatele.symmetry.teleport_grad`) and the pair's gradients: ``G``
and ``Gᵀ`` (normalised by their RMS), the row and column means of that normalised ``G``, a
running average of it, the gradient Gram matrices ``∇V ∇Vᵀ`` and ``∇Uᵀ ∇U`` (normalised), and
whether ``i = j``, and two scale features shared by all entries (the log RMS of the gradients
and of ``G``, so that m2 can teleport less as a trajectory converges). Every one of these maps to ``P (·) Pᵀ`` when the hidden units are permuted by
``P``, and the MLP acts on each entry with the same weights, so the output ``T`` maps to
``P T Pᵀ``: m2 is permutation-equivariant by construction and works for any width. Its
direction is ``Ĝ + s_dir · out`` (the gradient-ascent direction, corrected), its Frobenius norm
``norm_max · sigmoid(c + mean_ij out') · min(1, ‖∇‖ / ‖∇₀‖)^p``: learned and bounded, starting
at ``norm_init``, and shrinking with the pair's gradient relative to the trajectory's first step.

Every step teleports; with ``safeguard`` a teleport that would raise a task's loss is not taken
(a per-task choice on the device, no host sync). The ablations' switches
(:class:`CoordinatewiseAblation`, ``coordinatewise.ablation.*``) change this main path:
``every: k`` teleports only on steps that are multiples of ``k``, ``gate: learned`` scales ``T``
by a learned gate in (0, 1), ``learn_norm: false`` fixes the norm at ``norm_init`` (times the
gradient decay), and ``tele_gradient_input: false`` gives m2, in place of ``G``, the teleport
gradient of a linear network with the same gradients, ``2 (∇Uᵀ ∇U − ∇V ∇Vᵀ)``
(:func:`linear_teleport_gradient`; no double backward). The bound and safeguard of the local
update, the teleport's safeguard and the optimizer state at a teleport are in
:mod:`metatele.optimizers.coordinatewise_step`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, NamedTuple, Sequence

import torch
from torch import nn

from ..configs import check_fields, from_dict, require
from ..profiling import FEATURES, M1, phase
from .coordinate_mlp import coordinate_mlp, heads
from .lstm import State, flatten, log_space
from ..symmetry.strategies import normalize_frobenius

#: the number of per-coordinate features m1 reads (see the module docstring)
N_UPDATE_FEATURES = 9
#: the number of per-entry features m2 reads
N_TELEPORT_FEATURES = 10
#: clamp on every feature, so that a diverging trajectory cannot feed the MLPs huge inputs
FEATURE_CLAMP = 10.0
TINY = 1e-30
#: ``gate: learned``: the untrained gate is sigmoid(GATE_LOGIT) = 0.9 (teleports nearly as ``every``)
GATE_LOGIT = math.log(9.0)
TELEPORT_STATES = ("keep", "reset")
#: decays of the gradient momenta m1 reads (the second is its Adam direction's)
BETAS = (0.5, 0.9, 0.99)
#: decay of the second moment of m1's Adam direction (Adam's β₂)
BETA2 = 0.999
#: bound of m1's direction correction, in units of the Adam direction
DIRECTION_SCALE = 0.5
#: ``update_bound``: added to a weight tensor's RMS in quadrature, so that an all-zero tensor can move
UPDATE_BOUND_FLOOR = 1e-3
GATES = ("every", "learned")


@dataclass
class CoordinatewiseAblation:
    """Switches of the coordinatewise teleport that only ablations set: each default is the main path.

    Attributes:
        every: teleport on steps that are multiples of ``every`` (per trajectory; 1: every step).
        teleport_state: ``keep`` the local update's state (momenta, step count) at a teleport,
            or ``reset`` it to zero for the trajectories that teleported (bias correction restarts).
        tele_gradient_input: m2 reads the teleport gradient ``G``; ``False``: it reads the linear
            network's teleport gradient of the same gradients instead (the ablation without ``G``).
        gate: ``every`` (the schedule alone) or ``learned`` (``T`` also scaled by a learned
            per-trajectory gate in (0, 1); a teleport counts as taken where the gate is above ½).
        learn_norm: m2 learns ``T``'s norm; ``False``: ``tele_norm_init`` (times the gradient decay).
    """

    every: int = 1
    teleport_state: str = "keep"
    tele_gradient_input: bool = True
    gate: str = "every"
    learn_norm: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "coordinatewise.ablation")
        require(self.every >= 1, "coordinatewise.ablation.every", f"must be a positive integer, got {self.every!r}")
        require(self.teleport_state in TELEPORT_STATES, "coordinatewise.ablation.teleport_state",
                f"must be one of {TELEPORT_STATES}, got {self.teleport_state!r}")
        require(self.gate in GATES, "coordinatewise.ablation.gate", f"must be one of {GATES}, got {self.gate!r}")


@dataclass
class CoordinatewiseConfig:
    """Options of the per-coordinate m1 and the equivariant m2 (``learned.arch: coordinatewise``).

    Attributes:
        hidden: hidden units of each MLP layer (m1 and m2).
        layers: hidden layers of each MLP.
        lr: the base step size of m1 (it starts as Adam at this rate).
        eps: Adam's denominator epsilon.
        magnitude_scale: bound of m1's log step-size correction (factor within ``e^{±s}``).
        tele_norm_init, tele_norm_max: m2's initial and largest Frobenius norm of ``T``, before the
            norm is multiplied by ``min(1, ‖∇‖ / ‖∇ at step 0‖)`` for the pair's gradients (teleports
            shrink with the gradient as a trajectory converges).
        tele_beta: decay of the running average of the normalised teleport gradient.
        time_feature: m1 also reads the trajectory's step count, as ``log10(t) / 3`` (0 at the
            first step, 1 at step 1000). Every other feature is scale-free and the same at any
            point of a trajectory with the same local geometry, so without it m1 cannot learn a
            step-size schedule (large steps early, small ones late).
        safeguard: do not take a teleport that raises a task's loss.
        safeguard_tol: relative rise of the loss the safeguard tolerates: an exact teleport keeps
            the loss only up to rounding (~1e-5 relative in float32), and refusing on rounding
            noise would make the choice, and the meta-gradient, random.
        update_bound: bound each coordinate's local update by ``b · s`` (smoothly,
            ``b s tanh(u / (b s))``), ``s`` the RMS of its weight tensor per trajectory
            (``None``: unbounded). Applies to every local update (m1, the ``tele`` variant's
            base optimizer, ``lr+tele``'s and ``lr``'s ``η g``) of the coordinatewise architecture, after the
            drop-in's group scales.
        update_safeguard: do not take a local update that raises a task's loss (an extra forward
            pass; the update's state still advances, see :mod:`metatele.optimizers.coordinatewise_step`).
        update_backoff: with ``update_safeguard``, a per-trajectory step scale ``σ ∈ (0, 1]``
            multiplies the local update: a refused update multiplies ``σ`` by ``update_backoff``
            (in (0, 1)), an accepted one by ``update_regrow`` (at most back to 1). A refused step
            is then retried smaller at the next step instead of being proposed again at full size
            (the safeguard alone stalls a trajectory whose learned steps have become too large).
            ``None``: no scale (σ = 1). σ is data, carried in the update's state.
        update_regrow: the factor ``σ`` grows by after an accepted update (≥ 1).
        ablation: the switches only ablations set (:class:`CoordinatewiseAblation`: the teleport
            schedule, a learned gate, a fixed norm, m2 without the teleport gradient, the update's
            state reset at a teleport); a mapping is accepted.
    """

    #: options that were removed, each with the one value a saved config may still hold for it
    #: (its old default, whose behaviour is now fixed): ``from_dict`` drops them
    REMOVED: ClassVar[dict[str, Any]] = {"tele_direction_scale": 1.0, "tele_gradient_power": 1.0, "beta2": BETA2,
                                         "direction_scale": DIRECTION_SCALE, "betas": BETAS,
                                         "update_bound_floor": UPDATE_BOUND_FLOOR, "update_safeguard_tol": 0.0}
    #: options that moved into ``ablation``: ``from_dict`` moves them there (configs saved before)
    MOVED: ClassVar[dict[str, str]] = {k: f"ablation.{k}" for k in ("every", "teleport_state", "tele_gradient_input",
                                                                     "gate", "learn_norm")}

    hidden: int = 32
    layers: int = 2
    lr: float = 0.03
    eps: float = 1e-8
    magnitude_scale: float = 1.0
    tele_norm_init: float = 0.003
    tele_norm_max: float = 0.2
    tele_beta: float = 0.9
    time_feature: bool = False
    safeguard: bool = True
    safeguard_tol: float = 1e-4
    update_bound: float | None = None
    update_safeguard: bool = False
    update_backoff: float | None = None
    update_regrow: float = 1.1
    ablation: CoordinatewiseAblation = field(default_factory=CoordinatewiseAblation)

    def __post_init__(self) -> None:
        if isinstance(self.ablation, dict):
            self.ablation = from_dict(CoordinatewiseAblation, self.ablation, "coordinatewise.ablation")
        check_fields(self, "coordinatewise")
        require(self.hidden >= 1, "coordinatewise.hidden", f"must be ≥ 1, got {self.hidden}")
        require(self.layers >= 1, "coordinatewise.layers", f"must be ≥ 1, got {self.layers}")
        require(self.lr > 0, "coordinatewise.lr", f"must be > 0, got {self.lr}")
        require(self.eps > 0, "coordinatewise.eps", f"must be > 0, got {self.eps}")
        require(self.magnitude_scale >= 0, "coordinatewise.magnitude_scale", f"must be ≥ 0, got {self.magnitude_scale}")
        require(0 < self.tele_norm_init < self.tele_norm_max, "coordinatewise.tele_norm_init/tele_norm_max",
                f"need 0 < tele_norm_init < tele_norm_max, got {self.tele_norm_init}, {self.tele_norm_max}")
        require(0 <= self.tele_beta < 1, "coordinatewise.tele_beta", f"must be in [0, 1), got {self.tele_beta}")
        require(self.safeguard_tol >= 0, "coordinatewise.safeguard_tol", f"must be ≥ 0, got {self.safeguard_tol}")
        require(self.update_bound is None or self.update_bound > 0, "coordinatewise.update_bound",
                f"must be null or > 0, got {self.update_bound}")
        require(self.update_backoff is None or 0 < self.update_backoff < 1, "coordinatewise.update_backoff",
                f"must be null or in (0, 1), got {self.update_backoff}")
        require(self.update_backoff is None or self.update_safeguard, "coordinatewise.update_backoff",
                "shrinks the step where the update safeguard refuses it: it needs update_safeguard: true")
        require(self.update_regrow >= 1, "coordinatewise.update_regrow", f"must be ≥ 1, got {self.update_regrow}")


def _per_tensor(x: torch.Tensor, sizes: Sequence[int], fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """Apply a per-task reduction ``fn`` (``[B, p] → [B, 1]``) to each tensor's slice of ``x``
    ``[B, P]`` and broadcast it back over that tensor's coordinates: ``[B, P]``."""
    return torch.cat([fn(part).expand_as(part) for part in x.split(list(sizes), dim=1)], dim=1)


def _rms(x: torch.Tensor) -> torch.Tensor:
    return x.square().mean(dim=1, keepdim=True).add(TINY).sqrt()


def _mean(x: torch.Tensor) -> torch.Tensor:
    return x.mean(dim=1, keepdim=True)


def bias_mask(weights: Sequence[torch.Tensor], d0: int) -> torch.Tensor:
    """``[P]`` float: 1 for the bias coordinates of the flattened weights, 0 for weights.

    A layer is recognised as ``[W b]`` when its input width is one more than the previous
    layer's output (``d0`` for the first layer).
    """
    parts, prev = [], d0
    for W in weights:
        d_out, d_in = W.shape[1], W.shape[2]
        m = torch.zeros(d_out, d_in, dtype=W.dtype, device=W.device)
        if d_in == prev + 1:
            m[:, -1] = 1
        parts.append(m.flatten())
        prev = d_out
    return torch.cat(parts)


class CoordinateUpdate(nn.Module):
    """m1 per coordinate: the same small MLP for every weight and bias coordinate of any network.

    State per trajectory (a pair, so it is reset and detached like an LSTM state): the moments
    ``[4, B, P]`` (``m_β`` for the three betas, then ``v``) and the step count ``[1, B, 1]``,
    where ``P`` is the number of coordinates of the network.
    """

    def __init__(self, config: CoordinatewiseConfig | None = None) -> None:
        super().__init__()
        self.config = config or CoordinatewiseConfig()
        #: run the MLP in the features-first layout (:func:`mlp_columns`); ``False``: the reference
        #: layout, ``net`` on ``[B, P, k]`` rows (the same function to rounding; the tests compare them)
        self.features_first = True
        self.net = coordinate_mlp(N_UPDATE_FEATURES + int(self.config.time_feature), 2, self.config.hidden,
                                  self.config.layers)
        # decay rates of the four moments [4, 1, 1] (BETAS, BETA2); not saved
        decay = torch.tensor(list(BETAS) + [BETA2], dtype=torch.float64)
        self.register_buffer("decay", decay.view(4, 1, 1), persistent=False)

    def initial_state(self, weights: Sequence[torch.Tensor], dtype=None) -> State:
        """Zero state for the network ``weights`` (list of ``[B, d_i, d_{i-1}(+1)]``)."""
        B, P = weights[0].shape[0], sum(w[0].numel() for w in weights)
        dev, dt = weights[0].device, dtype or weights[0].dtype
        return torch.zeros(4, B, P, device=dev, dtype=dt), torch.zeros(1, B, 1, device=dev, dtype=dt)

    def features(
        self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], state: State, d0: int
    ) -> tuple[torch.Tensor, torch.Tensor, State]:
        """The nine features ``[B, P, 9]`` (ten with ``time_feature``), the Adam direction
        ``m̂_0.9 / (√v̂ + ε)`` ``[B, P]`` and the new state. ``d0`` is the network's input width (to recognise bias columns)."""
        cfg = self.config
        moments, t = state
        g = flatten(grads).to(moments.dtype)
        w = flatten(weights).to(moments.dtype)
        sizes = [x[0].numel() for x in grads]
        t = t + 1
        decay = self.decay.to(moments.dtype)
        target = torch.stack([g, g, g, g.square()])
        moments = decay * moments + (1 - decay) * target
        corrected = moments / (1 - decay ** t)  # Adam's bias correction, per trajectory
        m, v = corrected[:3], corrected[3]
        root = v.sqrt()
        denom = root + cfg.eps
        feats = [g / denom, m[0] / denom, m[1] / denom, m[2] / denom,
                 g / _per_tensor(g, sizes, _rms), m[1] / _per_tensor(m[1], sizes, _rms)]
        log_root = root.add(TINY).log()
        feats.append(log_root - _per_tensor(log_root, sizes, _mean))
        feats.append(w / _per_tensor(w, sizes, _rms))
        feats.append(bias_mask(grads, d0).to(g.dtype).expand_as(g))
        if cfg.time_feature:  # t is [1, B, 1]: one value per trajectory
            feats.append((t[0].log10() / 3).expand_as(g))
        # a diverged trajectory's non-finite features read as 0: the engine zeroes its rows' gradient at
        # the outputs, and only finite inputs keep those zeros from turning into NaN (0 · inf) in the
        # shared weights' gradient
        x = sanitize(torch.stack(feats)).clamp(-FEATURE_CLAMP, FEATURE_CLAMP)  # features first: [k, B, P]
        return x.movedim(0, -1), m[1] / denom, (moments, t)

    def forward(
        self, weights: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], state: State | None, d0: int
    ) -> tuple[list[torch.Tensor], State]:
        """``grads`` at ``weights`` (lists of ``[B, d_i, d_{i-1}(+1)]``) → updates of the same
        shapes (``W ← W − update``) and the new state (``None``: a fresh trajectory)."""
        cfg = self.config
        if state is None:
            state = self.initial_state(weights, next(self.parameters()).dtype)
        with phase(FEATURES):
            x, direction, state = self.features(weights, grads, state, d0)
        with phase(M1):
            out = heads(self.net, x, self.features_first)  # two [B, P]
            scale = torch.exp(cfg.magnitude_scale * torch.tanh(out[0]))
            # the direction correction is in units of the Adam direction's RMS over the tensor, so it
            # shrinks with the step as a trajectory converges (an absolute one would stall it)
            unit = _per_tensor(direction, [gr[0].numel() for gr in grads], _rms)
            flat = cfg.lr * scale * (direction + DIRECTION_SCALE * unit * torch.tanh(out[1]))
            updates = [u.view_as(gr).to(gr.dtype) for u, gr in zip(flat.split([gr[0].numel() for gr in grads], dim=1), grads)]
        return updates, state


def pair_features(
    G: torch.Tensor, grad_v: torch.Tensor, grad_u: torch.Tensor, avg: torch.Tensor
) -> torch.Tensor:
    """Per-entry features of one pair, ``[B, d, d, 10]``; every one maps to ``P (·) Pᵀ``.

    The last two are the same for every entry (so permutation-invariant): the logs of the RMS of
    the pair's gradients and of ``G`` (divided by 10), the only scale-aware inputs, which let m2
    teleport less (or more) as a trajectory converges.

    Args:
        G: the pair's teleport gradient ``[B, d, d]``.
        grad_v: gradient of ``W_m`` ``[B, d, d_{m-1}(+1)]``; grad_u: of ``W_{m+1}``, weight
            columns only, ``[B, d_{m+1}, d]``.
        avg: running average of the normalised ``G`` ``[B, d, d]``.
    """
    d = G.shape[-1]
    nrm = lambda x: x / x.flatten(1).square().mean(1).add(TINY).sqrt().view(-1, 1, 1)  # noqa: E731
    Gn = nrm(G)
    rows = Gn.mean(dim=2, keepdim=True).expand_as(Gn)
    cols = Gn.mean(dim=1, keepdim=True).expand_as(Gn)
    gram_v = nrm(grad_v @ grad_v.mT)
    gram_u = nrm(grad_u.mT @ grad_u)
    eye = torch.eye(d, dtype=G.dtype, device=G.device).expand_as(G)
    rms = lambda x: x.flatten(1).square().mean(1).add(TINY).sqrt()  # noqa: E731
    g_scale = (0.5 * (rms(grad_v).square() + rms(grad_u).square())).sqrt().log().div(10).view(-1, 1, 1).expand_as(G)
    G_scale = rms(G).log().div(10).view(-1, 1, 1).expand_as(G)
    x = torch.stack([Gn, Gn.mT, rows, cols, avg, gram_v, gram_u, eye, g_scale, G_scale])  # features first
    return sanitize(x).clamp(-FEATURE_CLAMP, FEATURE_CLAMP).movedim(0, -1)  # (non-finite: see features)


class TeleportOutput(NamedTuple):
    """One m2 step on a pair: ``T`` ``[B, d, d]``, the step size ``[B]`` (or ``None``), the new
    state, and ``active`` ``[B]`` bool: the schedule (and a learned gate, above ½) teleports."""

    T: torch.Tensor
    lr: torch.Tensor | None
    state: State
    active: torch.Tensor


class EquivariantTeleport(nn.Module):
    """m2 for pairs of any width: one MLP over the entries ``(i, j)`` of ``[d_m, d_m]`` matrices.

    Outputs per entry: a direction correction, a norm logit (averaged over the entries, so it is
    permutation-invariant), for ``lr+tele`` and ``lr`` a step-size logit and with ``ablation.gate: learned`` a
    gate logit (averaged likewise). State per pair and trajectory: the running average of the
    normalised ``G`` ``[1, B, d²]`` and the step count ``[1, B, 1]``.

    Args:
        config: the coordinatewise options.
        lr_range: ``(lr_min, lr_max)`` of the emitted step size (``None``: no step size).
    """

    def __init__(self, config: CoordinatewiseConfig | None = None, lr_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        self.config = config or CoordinatewiseConfig()
        self.lr_range = lr_range
        c = self.config
        n_out = 2 + int(lr_range is not None) + int(c.ablation.gate == "learned")  # the gate is the last output
        self.net = coordinate_mlp(N_TELEPORT_FEATURES, n_out, c.hidden, c.layers)
        #: the MLP's layout, as :attr:`CoordinateUpdate.features_first`
        self.features_first = True
        # sigmoid(offset) · norm_max = norm_init at the start
        self.register_buffer("norm_offset", torch.tensor(math.log(c.tele_norm_init / (c.tele_norm_max - c.tele_norm_init))))

    def initial_state(self, G: torch.Tensor) -> State:
        """Zero state for a pair whose teleport gradient is ``G`` ``[B, d, d]``: the running
        average ``[1, B, d²]`` and ``[1, B, 2]`` = (step count, gradient RMS at the first step)."""
        B, d = G.shape[0], G.shape[-1]
        z = torch.zeros(1, B, d * d, dtype=self.norm_offset.dtype, device=G.device)
        return z, torch.zeros(1, B, 2, dtype=z.dtype, device=G.device)

    def forward(
        self, G: torch.Tensor, grad_v: torch.Tensor, grad_u: torch.Tensor, state: State | None
    ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """→ ``(T [B, d, d], step size [B] or None, new state)``; ``T`` is zero on the steps the
        schedule skips. ``grad_u`` is the gradient of ``W_{m+1}`` (its bias column is ignored)."""
        return tuple(self.outputs(G, grad_v, grad_u, state)[:3])

    def outputs(self, G: torch.Tensor, grad_v: torch.Tensor, grad_u: torch.Tensor, state: State | None) -> TeleportOutput:
        """:meth:`forward` and whether the step teleports (``active``, see :class:`TeleportOutput`)."""
        cfg, ablation = self.config, self.config.ablation
        if state is None:
            state = self.initial_state(G)
        B, d = G.shape[0], G.shape[-1]
        avg_flat, counters = state
        t, g0 = counters[0, :, 0], counters[0, :, 1]
        dt = avg_flat.dtype
        G, grad_v, grad_u = G.to(dt), grad_v.to(dt), grad_u[..., :d].to(dt)
        Gn = G / G.flatten(1).square().mean(1).add(TINY).sqrt().view(-1, 1, 1)
        g_rms = (0.5 * (grad_v.square().mean(dim=(1, 2)) + grad_u.square().mean(dim=(1, 2)))).sqrt()
        g0 = torch.where(t == 0, g_rms, g0)
        # T's norm shrinks with the pair's gradient as a trajectory converges (a fixed-size
        # teleport near a minimum undoes the optimizer's progress: its momenta refer to the
        # weights before the teleport)
        progress = (g_rms / (g0 + TINY)).clamp(max=1.0)
        avg = cfg.tele_beta * avg_flat.view(B, d, d) + (1 - cfg.tele_beta) * Gn
        x = pair_features(G, grad_v, grad_u, avg)
        out = heads(self.net, x, self.features_first)  # k outputs [B, d, d]
        direction = Gn + out[0]
        if ablation.learn_norm:
            norm = cfg.tele_norm_max * torch.sigmoid(self.norm_offset + out[1].mean(dim=(1, 2))) * progress
        else:
            norm = cfg.tele_norm_init * progress
        on = (torch.remainder(t, ablation.every) == 0).to(dt)  # teleport on steps 0, k, 2k, ...
        active = on > 0
        if ablation.gate == "learned":
            gate = torch.sigmoid(GATE_LOGIT + out[-1].mean(dim=(1, 2)))
            on, active = on * gate, active & (gate > 0.5)
        T = normalize_frobenius(direction, norm * on)
        lr = None
        if self.lr_range is not None:
            lr = log_space(out[2].mean(dim=(1, 2)), *self.lr_range)
        new_state = (avg.reshape(1, B, d * d), torch.stack([t + 1, g0], dim=-1).unsqueeze(0))
        return TeleportOutput(T, lr, new_state, active)


def linear_teleport_gradient(grads: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """``2 (∇Uᵀ ∇U − ∇V ∇Vᵀ)`` per pair ``(V, U)``: the teleport gradient of a linear network
    with these gradients (``V' = gV``, ``U' = U g⁻¹``), from the gradients alone, ``[B, d, d]``.

    ``∇V`` includes a bias column, ``∇U`` is its weight columns. It maps to ``P (·) Pᵀ`` like
    ``G``; on gaussian [20, 20, 20, 20] tasks its cosine with the exact ``G`` is ~0.9.
    """
    out = []
    for gv, gu in zip(grads[:-1], grads[1:]):
        gu = gu[..., : gv.shape[1]]
        out.append(2 * (gu.mT @ gu - gv @ gv.mT))
    return out


def sanitize(t: torch.Tensor) -> torch.Tensor:
    """Replace non-finite entries by 0 (what the networks read for a diverged trajectory)."""
    return torch.where(torch.isfinite(t), t, torch.zeros_like(t))
