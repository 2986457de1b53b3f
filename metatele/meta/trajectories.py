"""The per-trajectory state of the unroll engine: one structure for the B trajectories it advances.

As in learned_optimization's truncated steps, the state carries every trajectory's task, current
weights, recurrent LSTM state and progress; finished or diverged trajectories are replaced in
place (:meth:`Trajectories.reset`), and the first batch's start offsets can be staggered
(:func:`staggered_steps`) so that the batch does not run in lockstep.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..optimizers.learned import LearnedState
from ..symmetry.action import qr_factor
from ..tasks.family import TaskBatch
from ..tasks.mlp import mlp_loss


def staggered_steps(B: int, rank: int, world_size: int, steps: int, unroll: int) -> np.ndarray:
    """Start offsets ``[B]`` that spread a first batch over the horizon of ``steps`` inner steps.

    Slot ``b`` of rank ``r`` gets the offset of its place ``b·W + r`` in the whole batch of all
    ranks (as in one process), rounded down to a multiple of ``unroll``.
    """
    total = B * world_size
    return np.array([((b * world_size + rank) * steps // total) // unroll * unroll for b in range(B)], dtype=np.int64)


@dataclass
class Trajectories:
    """B trajectories: their tasks, weights, recurrent state and progress.

    Tensors live on the engine's device; ``seeds`` and ``steps_done`` are host arrays (so that
    deciding which trajectories to replace never reads the device).

    Attributes:
        X, Y: the tasks' data ``[B, d0, n]`` and targets ``[B, dL, n]``.
        W: the current weights, one ``[B, d_i, d_{i-1}]`` per layer (detached between unrolls).
        loss0: each task's loss at the start of its trajectory ``[B]`` (for ``normalize``).
        X_qr: thin QR factors of ``X`` (the data are fixed along a trajectory).
        state: the learned optimizer's recurrent state (m1's and the m2s' ``(h, c)``).
        seeds: ``[B]`` int64, each trajectory's training seed.
        steps_done: ``[B]`` int64, inner steps each trajectory has taken.
    """

    X: torch.Tensor
    Y: torch.Tensor
    W: list[torch.Tensor]
    loss0: torch.Tensor
    X_qr: tuple[torch.Tensor, ...]
    state: LearnedState
    seeds: np.ndarray
    steps_done: np.ndarray

    #: the fields saved as they are by :meth:`state_dict` (``state`` is saved as its parts)
    SAVED = ("X", "Y", "W", "loss0", "X_qr", "seeds", "steps_done")

    @classmethod
    def start(cls, tasks: TaskBatch, initial_state: Callable[[TaskBatch, list[torch.Tensor]], LearnedState],
              steps_done: np.ndarray | None = None) -> "Trajectories":
        """Trajectories at the start of ``tasks`` (``steps_done`` default 0; see :func:`staggered_steps`)."""
        W = [w.detach() for w in tasks.weights]
        B = tasks.X.shape[0]
        return cls(
            X=tasks.X, Y=tasks.Y, W=W, loss0=mlp_loss(W, tasks.X, tasks.Y).detach(), X_qr=qr_factor(tasks.X),
            state=initial_state(tasks, W),
            seeds=np.asarray(tasks.seeds, dtype=np.int64).copy(),
            steps_done=np.zeros(B, dtype=np.int64) if steps_done is None else np.asarray(steps_done, dtype=np.int64),
        )

    @property
    def B(self) -> int:
        return self.X.shape[0]

    def reset(self, slots: np.ndarray, tasks: TaskBatch) -> None:
        """Give the trajectories in ``slots`` (host indices) the fresh ``tasks`` and zero their
        recurrent state; the others are untouched."""
        idx = torch.as_tensor(slots, device=self.X.device)
        self.X = self.X.index_copy(0, idx, tasks.X)
        self.Y = self.Y.index_copy(0, idx, tasks.Y)
        self.X_qr = tuple(a.index_copy(0, idx, b) for a, b in zip(self.X_qr, qr_factor(tasks.X)))
        self.W = [w.index_copy(0, idx, t) for w, t in zip(self.W, tasks.weights)]
        self.loss0 = self.loss0.index_copy(0, idx, mlp_loss(tasks.weights, tasks.X, tasks.Y))
        keep = torch.ones(self.B, dtype=torch.bool, device=self.X.device)
        keep[idx] = False
        self.state = self.state.reset(keep)
        self.seeds[slots] = tasks.seeds
        self.steps_done[slots] = 0

    def advance(self, W: list[torch.Tensor], state: LearnedState, steps: int) -> None:
        """Carry the weights and state of an unroll of ``steps`` inner steps on (truncated: detached)."""
        self.W = [w.detach() for w in W]
        self.state = state.detach()
        self.steps_done += steps

    def state_dict(self) -> dict[str, Any]:
        """The saved fields (tensors by reference, host arrays copied) and the recurrent state's parts."""
        sd: dict[str, Any] = {}
        for name in self.SAVED:
            v = getattr(self, name)
            sd[name] = v.copy() if isinstance(v, np.ndarray) else list(v) if isinstance(v, (list, tuple)) else v
        sd["update_state"] = list(self.state.update) if self.state.update else None
        sd["teleport_state"] = [list(t) for t in self.state.teleport]
        return sd

    @classmethod
    def from_state_dict(cls, sd: dict[str, Any], device: torch.device,
                        base: Callable[["Trajectories"], Any] | None = None) -> "Trajectories":
        """Inverse of :meth:`state_dict` on ``device``; ``base(trajectories)`` rebuilds a ``tele``
        variant's hand-designed optimizer (saved only between generations, so fresh)."""
        to = lambda t: t.to(device)  # noqa: E731
        X = to(sd["X"])
        upd = tuple(to(t) for t in sd["update_state"]) if sd["update_state"] is not None else None
        out = cls(
            X=X, Y=to(sd["Y"]), W=[to(w) for w in sd["W"]], loss0=to(sd["loss0"]),
            X_qr=tuple(to(t) for t in sd["X_qr"]) if sd.get("X_qr") is not None else qr_factor(X),
            state=LearnedState(upd, [tuple(to(t) for t in s) for s in sd["teleport_state"]]),
            seeds=np.asarray(sd["seeds"], dtype=np.int64).copy(),
            steps_done=np.asarray(sd["steps_done"], dtype=np.int64).copy(),
        )
        if base is not None:
            out.state.base = base(out)
        return out
