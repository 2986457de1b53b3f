"""One inner step of the coordinatewise optimizer around its m1 and m2 (docs/coordinatewise.md).

:func:`teleport_outputs` runs m2 on every pair (from the teleport gradient at ``W_t``);
:func:`stable_step` then takes the local update and the teleport with the stability options of
:class:`~metatele.optimizers.coordinatewise.CoordinatewiseConfig`, each off by default (the step
is then exactly ``teleport(W − u, T)`` with the teleport's safeguard):

* ``update_bound``: every coordinate's update ``u`` becomes ``b s tanh(u / (b s))``, ``s`` the
  RMS of its weight tensor per trajectory (:func:`bounded_updates`): within ``b s`` always, the
  identity for small updates (relative change ``(u / b s)² / 3``), smooth for meta-gradients.
* ``update_safeguard``: a task whose loss the local update would raise keeps its weights
  (:func:`safeguarded_update`). The update's state (m1's momenta, the base optimizer's) still
  advances with the gradient it read: the momenta stay statistics of the gradients seen at the
  trajectory's weights, and a refused step is not repeated verbatim (with full-batch gradients,
  restoring the old state would propose the same refused update at the same weights forever).
* ``update_backoff``: with the update safeguard, a per-trajectory step scale ``σ`` multiplies
  the update; a refusal multiplies it by ``update_backoff``, an acceptance by ``update_regrow``
  (capped at 1). ``log σ`` is carried as a second row of the update state's step count
  (:func:`split_step_scale`, :func:`join_step_scale`), so it is detached, checkpointed, resumed
  and reset (to σ = 1) with the rest of the trajectory's state.
* ``safeguard`` (the teleport's): a teleport that would raise a task's loss is not taken
  (:func:`safeguarded_teleport`).
* ``ablation.teleport_state: reset``: where a teleport was actually taken (m2's schedule and gate, and
  the safeguard), the local update's state (moments and step count) is zeroed, so it restarts at
  the teleported weights with Adam's bias correction; ``keep`` (default) carries it over.

Every choice is a per-task ``torch.where`` or mask on the device: no host sync.
"""
from __future__ import annotations

import math

from typing import Callable, Sequence

import torch

from .coordinatewise import (UPDATE_BOUND_FLOOR, CoordinatewiseConfig, EquivariantTeleport, linear_teleport_gradient,
                             sanitize)
from .lstm import State, reset_state
from ..symmetry.action import teleport
from ..symmetry.teleport_grad import LossFn, teleport_gradient
from ..profiling import M2, SAFEGUARD, TELEPORT, TELEPORT_GRADIENT, UPDATE, phase

Hook = Callable[[torch.Tensor], torch.Tensor]

#: the settings of the safeguards above: they decide whether a step is taken, and change no
#: meta-parameter, so a trained optimizer may run (and be trained further) with other values
SAFEGUARD_KEYS = ("safeguard", "safeguard_tol", "update_safeguard", "update_backoff", "update_regrow")


def teleport_outputs(
    m2: EquivariantTeleport,
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    loss_fn: LossFn,
    states: Sequence[State],
    exact: bool = True,
    x_qr: tuple[torch.Tensor, torch.Tensor] | None = None,
    hook: Hook = lambda t: t,
) -> tuple[list[torch.Tensor], list[torch.Tensor], list[State], torch.Tensor]:
    """m2 on every pair of the network at ``weights``: ``(T per pair, step sizes, new states,
    active [B] bool)``, ``active`` where some pair teleports (schedule and gate).

    Reads the teleport gradient ``G`` (one batched double backward for all pairs, treated as
    data; with ``ablation.tele_gradient_input: false``, :func:`linear_teleport_gradient` and one backward)
    and the gradients at ``weights``. ``states`` empty: fresh trajectories.
    """
    with phase(TELEPORT_GRADIENT):
        if m2.config.ablation.tele_gradient_input:
            G, _, grads = teleport_gradient(weights, X, loss_fn, exact=exact, x_qr=x_qr)
        else:
            with torch.enable_grad():
                W0 = [w.detach().requires_grad_(True) for w in weights]
                grads = list(torch.autograd.grad(loss_fn(W0).sum(), W0))
            G = linear_teleport_gradient(grads)
    with phase(M2):
        G = [sanitize(g) for g in G]
        grads = [sanitize(g) for g in grads]
        T, lrs, new_states, active = [], [], [], torch.zeros(X.shape[0], dtype=torch.bool, device=X.device)
        for m in range(len(weights) - 1):
            out = m2.outputs(G[m], grads[m], grads[m + 1], states[m] if states else None)
            T.append(hook(out.T.to(weights[m].dtype)))
            if out.lr is not None:
                lrs.append(hook(out.lr))
            new_states.append(out.state)
            active = active | out.active
    return T, lrs, new_states, active


def split_step_scale(state: State | None) -> tuple[State | None, torch.Tensor | None]:
    """A state that carries the step scale (its step count ``[2, B, 1]``: the count, then
    ``log σ``) → ``(the update's own state with the count [1, B, 1], log σ [1, B, 1])``;
    ``(state, None)`` for a fresh trajectory (``None``) or a state without it.

    ``log σ`` rather than ``σ``: a state zeroed for a new trajectory (:meth:`LearnedState.reset`,
    ``ablation.teleport_state: reset``) then restarts at ``σ = 1`` like everything else in it."""
    if state is None or state[1].shape[0] < 2:
        return state, None
    return (state[0], state[1][:1]), state[1][1:]


def join_step_scale(state: State, log_scale: torch.Tensor) -> State:
    """Inverse of :func:`split_step_scale`: ``log σ`` ``[1, B, 1]`` appended to the step count."""
    return state[0], torch.cat([state[1], log_scale.to(state[1].dtype)])


def next_step_scale(log_scale: torch.Tensor, taken: torch.Tensor, backoff: float, regrow: float,
                    floor: float = 1e-12) -> torch.Tensor:
    """``log σ``: ``σ · regrow`` (at most 1) where the update was ``taken`` ``[B]``, ``σ · backoff``
    (at least ``floor``) elsewhere; ``log_scale`` ``[1, B, 1]``. Data: no graph, no host sync."""
    k = taken.view(1, -1, 1)
    grown = (log_scale + math.log(regrow)).clamp(max=0.0)
    shrunk = (log_scale + math.log(backoff)).clamp(min=math.log(floor))
    return torch.where(k, grown, shrunk).detach()


def bounded_updates(
    weights: Sequence[torch.Tensor], updates: Sequence[torch.Tensor], bound: float, floor: float = UPDATE_BOUND_FLOOR
) -> list[torch.Tensor]:
    """``b s tanh(u / (b s))`` per coordinate, ``s = √(rms(W)² + floor²)`` per weight tensor and
    trajectory (``weights`` and ``updates``: lists of ``[B, d_i, d_{i-1}(+1)]``). Differentiable
    in both; ``|result| < b s``."""
    out = []
    for w, u in zip(weights, updates):
        s = w.flatten(1).square().mean(dim=1).add(floor ** 2).sqrt().view(-1, *([1] * (w.dim() - 1)))
        c = bound * s.to(u.dtype)
        out.append(c * torch.tanh(u / c))
    return out


def safeguarded_update(
    weights: Sequence[torch.Tensor], new: Sequence[torch.Tensor], loss_fn: LossFn, tol: float = 0.0
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """``new`` for the tasks whose loss it does not raise by more than the relative ``tol``,
    ``weights`` for the others (NaN counts as a rise): ``(chosen weights, their loss [B], taken
    [B] bool)``. The comparison is data; the meta-gradient flows through the chosen branch."""
    with torch.no_grad(), phase(SAFEGUARD):
        before, after = loss_fn(weights), loss_fn(new)
        take = after <= before * (1 + tol)
    k = take.view(-1, 1, 1)
    return [torch.where(k, a, b) for a, b in zip(new, weights)], torch.where(take, after, before), take


def safeguarded_teleport(
    weights: Sequence[torch.Tensor],
    X: torch.Tensor,
    T: Sequence[torch.Tensor],
    loss_fn: LossFn | None,
    exact: bool = True,
    x_qr: tuple[torch.Tensor, torch.Tensor] | None = None,
    tol: float = 0.0,
    loss_before: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Teleport ``weights`` by ``T``; with ``loss_fn`` given, a task whose loss the teleport
    would raise by more than the relative ``tol`` keeps its weights (a per-task
    ``torch.where``, no host sync). ``loss_before``: ``loss_fn(weights)`` if already known.

    Returns ``(new weights, taken [B] bool)``.
    """
    with phase(TELEPORT):
        new = teleport(weights, X, T, exact=exact, warn=False, x_qr=x_qr)
    if loss_fn is None:
        return new, torch.ones(X.shape[0], dtype=torch.bool, device=X.device)
    with torch.no_grad(), phase(SAFEGUARD):
        before = loss_fn(weights) if loss_before is None else loss_before
        take = loss_fn(new) <= before * (1 + tol)  # NaN after the teleport: not taken
    k = take.view(-1, 1, 1)
    return [torch.where(k, a, b) for a, b in zip(new, weights)], take


def stable_step(
    config: CoordinatewiseConfig,
    weights: Sequence[torch.Tensor],
    updates: Sequence[torch.Tensor],
    T: Sequence[torch.Tensor],
    active: torch.Tensor | None,
    update_state: State | None,
    X: torch.Tensor,
    loss_fn: LossFn | None,
    exact: bool = True,
    x_qr: tuple[torch.Tensor, torch.Tensor] | None = None,
    step_scale: torch.Tensor | None = None,
) -> tuple[list[torch.Tensor], State | None]:
    """``W ← teleport(W − σ u, T)`` with the stability options of ``config`` (module docstring).

    Args:
        weights: ``W_t``, list of ``[B, d_i, d_{i-1}(+1)]``; updates: ``u`` of the same shapes.
        T: m2's ``T`` per pair (empty: no teleport); active: ``[B]``, where m2 teleports.
        update_state: the local update's new state ``(moments [k, B, P], t [1, B, 1])``, or ``None``.
        X, exact, x_qr: the data, the form and the factorisation the group action uses.
        loss_fn: the per-task loss ``[B]`` the safeguards compare (needed by either safeguard).
        step_scale: with ``update_backoff``, the trajectories' ``log σ`` ``[1, B, 1]`` before
            this step (from :func:`split_step_scale` of the previous state; ``None``: σ = 1).

    Returns:
        ``(new weights, the update's state after the teleport)``; with ``update_backoff``, the
        state carries the new ``σ`` (:func:`join_step_scale`).
    """
    if loss_fn is None and (config.update_safeguard or (T and config.safeguard)):
        raise ValueError("coordinatewise.update_safeguard and coordinatewise.safeguard need loss_fn")
    backoff = config.update_backoff is not None
    if backoff and update_state is None:
        raise ValueError("coordinatewise.update_backoff carries its step scale in the local update's state: "
                         "it needs a local update with a state (m1 or the tele variant's base optimizer)")
    with phase(UPDATE):
        if config.update_bound is not None:
            updates = bounded_updates(weights, updates, config.update_bound)
        if backoff:
            if step_scale is None:  # log σ = 0
                step_scale = torch.zeros(1, weights[0].shape[0], 1, device=weights[0].device,
                                         dtype=update_state[1].dtype)
            sigma = step_scale[0].exp()
            updates = [sigma.view(-1, *([1] * (u.dim() - 1))).to(u.dtype) * u for u in updates]
        new = [w - u for w, u in zip(weights, updates)]
    loss = None
    if config.update_safeguard:
        new, loss, accepted = safeguarded_update(weights, new, loss_fn)
    if T:
        new, taken = safeguarded_teleport(new, X, T, loss_fn if config.safeguard else None, exact, x_qr,
                                          config.safeguard_tol, loss)
        if config.ablation.teleport_state == "reset" and update_state is not None:
            update_state = reset_state(update_state, ~(taken & active))
    if backoff:
        update_state = join_step_scale(update_state, next_step_scale(step_scale, accepted, config.update_backoff,
                                                                     config.update_regrow))
    return new, update_state
