"""The per-trajectory state of the unroll engine: one structure for the B trajectories it advances.

As in learned_optimization's truncated steps, the state carries every trajectory's task, current
weights, recurrent LSTM state and progress; finished or diverged trajectories are replaced in
place (:meth:`Trajectories.reset`) while the run's budget of training seeds lasts, after which
their slots fall idle (``active``); the first batch's start offsets can be staggered
(:func:`metatele.meta.schedules.start_offsets`) so that the batch does not run in lockstep.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from ..optimizers.learned import LearnedState
from ..symmetry.action import input_qr
from ..tasks.family import TaskBatch
from ..tasks.mlp import DataLoss, mlp_loss


def _same(X: torch.Tensor) -> torch.Tensor:
    return X


def hold(running: np.ndarray, new: tuple[list[torch.Tensor], LearnedState],
         old: tuple[list[torch.Tensor], LearnedState]) -> tuple[list[torch.Tensor], LearnedState]:
    """The ``new`` weights and learned-optimizer state where ``running`` (``[B]`` host bool), the
    ``old`` ones elsewhere: trajectories past their horizon take no more steps."""
    (W, state), (W0, state0) = new, old
    keep = torch.as_tensor(running).to(W[0].device, non_blocking=True)
    W = [torch.where(keep.view(-1, *(1,) * (w.dim() - 1)), w, w0) for w, w0 in zip(W, W0)]

    def pick(s, s0):  # recurrent states: trajectories on dim 1
        m = keep.view(1, -1, *(1,) * (s[0].dim() - 2))
        return torch.where(m, s[0], s0[0]), torch.where(m, s[1], s0[1])

    update = pick(state.update, state0.update) if state.update is not None and state0.update is not None \
        else state.update
    return W, LearnedState(update, [pick(s, s0) for s, s0 in zip(state.teleport, state0.teleport)])


def _qr_layout(saved: tuple[torch.Tensor, ...], W: list[torch.Tensor], X: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Saved QR factors in the memory layout :func:`input_qr` gives them (LAPACK's column-major
    matrices), as a run that never stopped holds them: the kernels that read them sum in an
    order that depends on the layout, so a resumed run is bit-identical only in the same one."""
    fresh = input_qr([w[:1] for w in W], X[:1])
    out = []
    for t, f in zip(saved, fresh):
        column_major = f.dim() >= 2 and f.shape[-1] > 1 and f.shape[-2] > 1 and f.stride(-2) == 1
        out.append(t.transpose(-1, -2).contiguous().transpose(-1, -2) if column_major else t.contiguous())
    return tuple(out)


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
        horizon: ``[B]`` int64, inner steps each trajectory is to take (its ``steps``, or a drawn
            horizon: :func:`metatele.meta.schedules.trajectory_horizon`).
        active: ``[B]`` bool, the slot holds a trajectory still to be trained (an idle slot, once
            the run's seeds are used up, is computed but masked out of the meta-loss).
        X_val, Y_val: the tasks' validation images and targets (digits), else ``None``.
        loss: the task family's loss ``(W, X, Y) -> [B]`` (squared error, or digits' cross-entropy).
        teleport_data: ``X ↦`` the samples the group action acts with (``X``, or digits' teleport
            batch), whose QR ``X_qr`` holds.
        particles: copies of every trajectory that ``W`` and ``state`` hold, stacked on the batch
            dimension (row ``b + i·B`` is copy ``i`` of trajectory ``b``): 1, or 2 for PES's
            antithetic pair (:mod:`metatele.meta.pes`). The copies share the task and progress.
        unrolls_done: ``[B]`` int64, unrolls each trajectory has taken (zeroed by :meth:`reset`):
            the length of PES's accumulated noise, whose terms are regenerated from the seed.
    """

    X: torch.Tensor
    Y: torch.Tensor
    W: list[torch.Tensor]
    loss0: torch.Tensor
    X_qr: tuple[torch.Tensor, ...]
    state: LearnedState
    seeds: np.ndarray
    steps_done: np.ndarray
    active: np.ndarray
    horizon: np.ndarray
    X_val: torch.Tensor | None = None
    Y_val: torch.Tensor | None = None
    loss: DataLoss = field(default=mlp_loss, repr=False)
    teleport_data: Callable[[torch.Tensor], torch.Tensor] = field(default=_same, repr=False)
    particles: int = 1
    unrolls_done: np.ndarray | None = None

    #: the fields saved as they are by :meth:`state_dict` (``state`` is saved as its parts;
    #: ``X_val``/``Y_val`` only when present)
    SAVED = ("X", "Y", "W", "loss0", "X_qr", "seeds", "steps_done", "active", "horizon", "unrolls_done")

    def __post_init__(self) -> None:
        if self.unrolls_done is None:
            self.unrolls_done = np.zeros(self.B, dtype=np.int64)

    @classmethod
    def start(cls, tasks: TaskBatch, state: LearnedState, horizon: np.ndarray, steps_done: np.ndarray | None = None,
              B: int | None = None, loss: DataLoss = mlp_loss,
              teleport_data: Callable[[torch.Tensor], torch.Tensor] = _same, particles: int = 1) -> "Trajectories":
        """Trajectories at the start of ``tasks`` with their ``horizon`` ``[k]`` (``steps_done``
        default 0; see :func:`metatele.meta.schedules.start_offsets`), whose learned-optimizer
        ``state`` (for the ``B`` slots) is fresh. With ``B`` larger than the number ``k`` of
        tasks, the remaining slots are idle copies of the first task (the batch keeps its size).
        With ``particles`` copies of each trajectory, ``state`` has ``particles·B`` rows."""
        k = tasks.X.shape[0]
        B = k if B is None else B
        active = np.arange(B) < k
        horizon = np.asarray(horizon, dtype=np.int64)
        horizon = np.concatenate([horizon, np.full(B - k, horizon[0], dtype=np.int64)])
        X_val, Y_val = getattr(tasks, "X_val", None), getattr(tasks, "Y_val", None)
        if B > k:
            pad = torch.cat([torch.arange(k), torch.zeros(B - k, dtype=torch.long)]).to(tasks.X.device)
            X_val, Y_val = (None, None) if X_val is None else (X_val[pad], Y_val[pad])
            tasks = TaskBatch(tasks.X[pad], tasks.Y[pad], [w[pad] for w in tasks.weights],
                              list(tasks.seeds) + [int(tasks.seeds[0])] * (B - k))
        W = [w.detach() for w in tasks.weights]
        return cls(
            X=tasks.X, Y=tasks.Y, W=[w.repeat(particles, 1, 1) for w in W], loss0=loss(W, tasks.X, tasks.Y).detach(),
            X_qr=input_qr(W, teleport_data(tasks.X)), state=state,
            seeds=np.asarray(tasks.seeds, dtype=np.int64).copy(),
            steps_done=np.zeros(B, dtype=np.int64) if steps_done is None else np.asarray(steps_done, dtype=np.int64),
            active=active, horizon=horizon, X_val=X_val, Y_val=Y_val, loss=loss, teleport_data=teleport_data,
            particles=particles,
        )

    @property
    def B(self) -> int:
        return self.X.shape[0]

    def steps_in_unroll(self, K: int) -> np.ndarray:
        """``[B]`` inner steps each trajectory takes in an unroll of ``K``: ``K``, or fewer where it
        reaches its horizon (idle slots run on, masked)."""
        return np.where(self.active, np.minimum(K, self.horizon - self.steps_done), K)

    def reset(self, slots: np.ndarray, tasks: TaskBatch | None, horizon: np.ndarray | None = None) -> None:
        """Give the first ``len(tasks)`` of ``slots`` (host indices) the fresh ``tasks`` with their
        ``horizon`` and zero their recurrent state (of every particle) and accumulated unrolls; the
        rest of ``slots`` fall idle; other slots are untouched."""
        k = 0 if tasks is None else tasks.X.shape[0]
        self.active[slots[k:]] = False
        if k == 0:
            return
        slots = slots[:k]
        idx = torch.as_tensor(slots, device=self.X.device)
        self.X = self.X.index_copy(0, idx, tasks.X)
        self.Y = self.Y.index_copy(0, idx, tasks.Y)
        if self.X_val is not None:
            self.X_val = self.X_val.index_copy(0, idx, tasks.X_val)
            self.Y_val = self.Y_val.index_copy(0, idx, tasks.Y_val)
        fresh_qr = input_qr(tasks.weights, self.teleport_data(tasks.X))
        self.X_qr = tuple(a.index_copy(0, idx, b) for a, b in zip(self.X_qr, fresh_qr))
        rows = torch.cat([idx + i * self.B for i in range(self.particles)])  # every particle's row
        self.W = [w.index_copy(0, rows, t.repeat(self.particles, 1, 1)) for w, t in zip(self.W, tasks.weights)]
        self.loss0 = self.loss0.index_copy(0, idx, self.loss(tasks.weights, tasks.X, tasks.Y))
        keep = torch.ones(self.B * self.particles, dtype=torch.bool, device=self.X.device)
        keep[rows] = False
        self.state = self.state.reset(keep)
        self.seeds[slots] = tasks.seeds
        self.steps_done[slots] = 0
        if horizon is not None:
            self.horizon[slots] = horizon
        self.unrolls_done[slots] = 0

    def particle(self, copy: int, slots: np.ndarray) -> "Trajectories":
        """Copy ``copy`` (``< particles``) of the trajectories in ``slots`` (host indices), as
        trajectories of their own (one particle each; tensors gathered, host arrays copied)."""
        host, slots = slots, torch.as_tensor(slots, device=self.X.device)
        rows = slots + copy * self.B
        pick = lambda s: (s[0].index_select(1, rows), s[1].index_select(1, rows))  # noqa: E731
        return Trajectories(
            X=self.X[slots], Y=self.Y[slots], W=[w[rows] for w in self.W], loss0=self.loss0[slots],
            X_qr=tuple(a[slots] for a in self.X_qr),
            state=LearnedState(pick(self.state.update) if self.state.update else None,
                               [pick(s) for s in self.state.teleport]),
            seeds=self.seeds[host], steps_done=self.steps_done[host], active=self.active[host],
            horizon=self.horizon[host],
            X_val=None if self.X_val is None else self.X_val[slots],
            Y_val=None if self.Y_val is None else self.Y_val[slots],
            loss=self.loss, teleport_data=self.teleport_data, unrolls_done=self.unrolls_done[host],
        )

    def advance(self, W: list[torch.Tensor], state: LearnedState, steps: int) -> None:
        """Carry the weights and state of an unroll of ``steps`` inner steps on (truncated: detached)."""
        self.W = [w.detach() for w in W]
        self.state = state.detach()
        self.steps_done += steps
        self.unrolls_done += 1

    def state_dict(self) -> dict[str, Any]:
        """The saved fields (tensors by reference, host arrays copied) and the recurrent state's parts."""
        sd: dict[str, Any] = {}
        for name in self.SAVED:
            v = getattr(self, name)
            sd[name] = v.copy() if isinstance(v, np.ndarray) else list(v) if isinstance(v, (list, tuple)) else v
        if self.X_val is not None:
            sd["X_val"], sd["Y_val"] = self.X_val, self.Y_val
        sd["update_state"] = list(self.state.update) if self.state.update else None
        sd["teleport_state"] = [list(t) for t in self.state.teleport]
        return sd

    @classmethod
    def from_state_dict(cls, sd: dict[str, Any], device: torch.device, steps: int,
                        loss: DataLoss = mlp_loss,
                        teleport_data: Callable[[torch.Tensor], torch.Tensor] = _same) -> "Trajectories":
        """Inverse of :meth:`state_dict` on ``device`` (a state saved before horizons were
        recorded runs every trajectory for ``steps``)."""
        to = lambda t: t.to(device)  # noqa: E731
        X, W = to(sd["X"]), [to(w) for w in sd["W"]]
        upd = tuple(to(t) for t in sd["update_state"]) if sd["update_state"] is not None else None
        out = cls(
            X=X, Y=to(sd["Y"]), W=W, loss0=to(sd["loss0"]),
            X_qr=_qr_layout(tuple(to(t) for t in sd["X_qr"]), W, teleport_data(X)) if sd.get("X_qr") is not None
            else input_qr(W, teleport_data(X)),
            state=LearnedState(upd, [tuple(to(t) for t in s) for s in sd["teleport_state"]]),
            seeds=np.asarray(sd["seeds"], dtype=np.int64).copy(),
            steps_done=np.asarray(sd["steps_done"], dtype=np.int64).copy(),
            active=np.asarray(sd["active"], dtype=bool).copy() if sd.get("active") is not None
            else np.ones(len(sd["seeds"]), dtype=bool),
            horizon=np.asarray(sd["horizon"], dtype=np.int64).copy() if sd.get("horizon") is not None
            else np.full(len(sd["seeds"]), steps, dtype=np.int64),
            X_val=to(sd["X_val"]) if sd.get("X_val") is not None else None,
            Y_val=to(sd["Y_val"]) if sd.get("Y_val") is not None else None,
            loss=loss, teleport_data=teleport_data, particles=W[0].shape[0] // X.shape[0],
            unrolls_done=np.asarray(sd["unrolls_done"], dtype=np.int64).copy() if sd.get("unrolls_done") is not None
            else None,
        )
        return out
