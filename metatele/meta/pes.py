"""Persistent evolution strategies (PES, Vicol et al. 2021): a meta-gradient without backpropagation.

With ``estimator: pes`` every trajectory of the unroll engine is an *antithetic pair* of particles
on the same task: each unroll, the pair's particles run with the meta-parameters ``θ + ε`` and
``θ − ε``, ``ε ~ N(0, σ² I)`` (``pes_sigma``), forward only. The pair keeps the sum of every
perturbation it has run with since it started, ``ξ = ε_1 + … + ε_t`` (the current one included),
and the estimate of the gradient of the unroll's meta-loss ``L`` is, averaged over the pairs::

    ĝ = ξ · (L⁺ − L⁻) / (2 σ²)

Because ``ξ`` covers the whole trajectory so far, not just this unroll, ĝ is an unbiased estimate
of the gradient of the (Gaussian-smoothed) meta-loss through every earlier unroll, which truncated
backpropagation (and truncated ES, ``ξ = ε_t``) drops; ``Σ_t E[ĝ_t]`` is the full-unroll gradient
of the trajectory's total meta-loss. No graph is built, so an unroll costs two forward passes per
trajectory instead of a forward and a backward pass.

Batching: the LSTMs' parameters are shared by a batched call, so the pairs are dealt round-robin
into ``pes_groups`` groups, each with its own ``ε`` per unroll and one forward pass per group and
sign. More groups: more independent directions per meta-step (lower variance), more passes.

The accumulated noise is not saved: a pair's ``ξ`` is as large as the meta-parameters (4.4
million numbers for the paper's LSTMs), per trajectory. Instead ``ε`` is a pure function of
``(seed, group, meta-step)`` (a generator seeded from them), and the trajectory state carries how
many unrolls each pair has run (:attr:`Trajectories.unrolls_done`, zeroed when the pair is
replaced, saved with the rest): that fixes ``ξ``. In memory, one ``ξ`` per *cohort* (the pairs of
a group that started at the same meta-step; one per group in a lock-step batch) is carried from
one meta-step to the next, and rebuilt from the seed, in the same order of additions, after a
resume. Resuming is therefore bitwise, and a data-parallel run draws the same noise as one
process: the group of a pair is that of its place ``b·W + r`` in the whole batch.

The estimate is written into the meta-parameters' ``.grad``; clipping, the all-reduce of a
data-parallel run and the Adam step then proceed as for truncated backpropagation. Diverged and
idle pairs (either particle non-finite) are masked out exactly as there.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from ..optimizers.learned import LearnedState
from .config import MetaTrainConfig
from .trajectories import Trajectories

#: separates PES's noise stream from every other use of the run's seed
_NOISE_TAG = 0x9E5

#: an engine's unroll of some trajectories: ``(tr, K) -> (W, state, alive [B], final [B], contributions [K, B])``
UnrollFn = Callable[[Trajectories, int], tuple[list[torch.Tensor], LearnedState, torch.Tensor, torch.Tensor,
                                               torch.Tensor]]


def _stack_states(parts: list[LearnedState], order: torch.Tensor) -> LearnedState:
    """The particles' states of several passes as one state, rows put back in slot order
    (``order``: the inverse of the passes' concatenated rows)."""
    def cat(pairs):
        return tuple(torch.cat([p[i] for p in pairs], 1).index_select(1, order) for i in range(2))

    update = cat([p.update for p in parts]) if parts[0].update is not None else None
    return LearnedState(update, [cat([p.teleport[m] for p in parts]) for m in range(len(parts[0].teleport))])


class PES:
    """The PES meta-gradient of one engine's meta-parameters.

    Args:
        config: the run's configuration (``seed``, ``pes_sigma``, ``pes_groups``).
        params: the meta-parameters, perturbed in place during an estimate and restored exactly.
        rank, world_size: the engine's place in a data-parallel run.
    """

    def __init__(self, config: MetaTrainConfig, params: list[torch.nn.Parameter], rank: int = 0,
                 world_size: int = 1) -> None:
        self.config, self.params = config, params
        self.sigma, self.seed = float(config.pes_sigma), config.seed
        self.rank, self.world_size = rank, world_size
        self.sizes = [p.numel() for p in params]
        #: ``(group, first meta-step) -> (last meta-step, ξ)`` of every cohort of pairs alive: a cache
        #: of what the seed determines, carried from one meta-step to the next, rebuilt after a resume
        self._xi: dict[tuple[int, int], tuple[int, torch.Tensor]] = {}

    def groups(self, B: int) -> list[tuple[int, np.ndarray]]:
        """``(group, slots)`` of this rank's ``B`` pairs, for every group that has some."""
        group = (np.arange(B) * self.world_size + self.rank) % self.config.pes_groups
        return [(g, np.flatnonzero(group == g)) for g in range(self.config.pes_groups) if (group == g).any()]

    def noise(self, group: int, meta_step: int) -> torch.Tensor:
        """``ε`` ``[P]`` of ``group`` at ``meta_step``, over the flattened meta-parameters: the same
        numbers every time it is asked for (on the same device)."""
        p = self.params[0]
        key = np.random.SeedSequence([self.seed, _NOISE_TAG, group, meta_step]).generate_state(1, np.uint64)[0]
        gen = torch.Generator(device=p.device).manual_seed(int(key))
        return torch.randn(sum(self.sizes), generator=gen, device=p.device, dtype=p.dtype).mul_(self.sigma)

    def _accumulated(self, group: int, start: int, meta_step: int, eps: torch.Tensor) -> torch.Tensor:
        """``ξ`` of the pairs of ``group`` that started at ``start``: the sum of the group's ``ε`` of
        meta-steps ``start..meta_step`` (``eps`` is the last), added in that order whether it is
        carried on from the previous meta-step or rebuilt from the seed (after a resume)."""
        last, xi = self._xi.get((group, start), (start - 1, None))
        if not meta_step - 1 <= last <= meta_step:  # not carried up to the previous meta-step: rebuild
            last, xi = start - 1, None
        for step in range(last + 1, meta_step + 1):
            e = eps if step == meta_step else self.noise(group, step)
            xi = e.clone() if xi is None else xi.add_(e)
        return xi

    def _set(self, flat: torch.Tensor) -> None:
        for p, v in zip(self.params, torch.split(flat, self.sizes)):
            p.copy_(v.view_as(p))

    def meta_gradient(self, tr: Trajectories, K: int, meta_step: int, unroll: UnrollFn
                      ) -> tuple[list[torch.Tensor], LearnedState, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unroll every pair of ``tr`` (``particles == 2``) for ``K`` steps at ``θ ± ε`` and leave
        the PES estimate in the meta-parameters' ``.grad``.

        Returns ``(W, state, alive [B], final [B], meta_loss)`` as the engine's unroll: both
        particles' weights and states (``2B`` rows), a pair alive when both particles are, the
        mean of its particles' final losses, and the mean over the B pairs of the particles' mean
        meta-loss (diverged pairs counting zero), detached.
        """
        B = tr.B
        dev = tr.X.device
        groups = self.groups(B)
        theta = torch.cat([p.detach().reshape(-1) for p in self.params])
        losses = torch.zeros(2, B, dtype=theta.dtype, device=dev)
        alive = torch.zeros(2, B, dtype=torch.bool, device=dev)
        final = torch.zeros(2, B, dtype=theta.dtype, device=dev)
        W_parts, state_parts, rows = [], [], []
        eps = {}
        try:
            with torch.no_grad():
                for g, slots in groups:
                    eps[g] = self.noise(g, meta_step)
                    idx = torch.as_tensor(slots, device=dev)
                    for copy, sign in enumerate((1.0, -1.0)):
                        self._set(theta + sign * eps[g])
                        W, state, ok, last, contrib = unroll(tr.particle(copy, slots), K)
                        losses[copy].index_copy_(0, idx, contrib.sum(0).to(theta.dtype))
                        alive[copy].index_copy_(0, idx, ok)
                        final[copy].index_copy_(0, idx, last.to(theta.dtype))
                        W_parts.append([w.detach() for w in W])
                        state_parts.append(state.detach())
                        rows.append(slots + copy * B)
        finally:
            with torch.no_grad():
                self._set(theta)  # exactly θ again (a copy, not θ + ε − ε)
        order = torch.as_tensor(np.argsort(np.concatenate(rows), kind="stable"), device=dev)
        W = [torch.cat([part[i] for part in W_parts]).index_select(0, order) for i in range(len(W_parts[0]))]
        state = _stack_states(state_parts, order)

        pair_alive = alive[0] & alive[1]
        zero = torch.zeros_like(losses[0])
        weight = torch.where(pair_alive, losses[0] - losses[1], zero) / (2 * self.sigma ** 2 * B)  # [B]
        grad = torch.zeros_like(theta)
        cached = {}
        for g, slots in groups:  # Σ_pairs ξ·w, one cohort (pairs of one ξ) at a time
            starts = meta_step - tr.unrolls_done[slots]
            for start in np.unique(starts):
                cohort = torch.as_tensor(slots[starts == start], device=dev)
                xi = self._accumulated(g, int(start), meta_step, eps[g])
                cached[(g, int(start))] = (meta_step, xi)
                grad.add_(xi * weight[cohort].sum())
        self._xi = cached  # the cohorts that ended are dropped
        for p, v in zip(self.params, torch.split(grad, self.sizes)):
            p.grad = v.view_as(p)
        meta_loss = torch.where(pair_alive, (losses[0] + losses[1]) / 2, zero).sum() / B
        return W, state, pair_alive, (final[0] + final[1]) / 2, meta_loss
