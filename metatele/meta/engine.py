"""The unroll engine: B trajectories advanced in lock-step, truncated unrolls, meta-steps.

Read top to bottom, one meta-step (:meth:`UnrollEngine.meta_step`) is:

1. ``K`` inner steps of every trajectory at once: loss and gradient at ``W_t`` (on the minibatch of
   step ``t`` with ``task.minibatch``), then the learned optimizer's update and teleport
   (:meth:`LearnedOptimizer.step`). No host sync happens here:
   divergence is tracked as a device mask ``alive`` (loss, gradient or weights non-finite).
2. The meta-loss (:mod:`metatele.meta.metaloss`): per trajectory the terms of its inner losses at
   ``W_{t+1}..W_{t+K}``, averaged over the B trajectories, so the meta-gradient of a batch is the
   mean of the single-trajectory ones. With minibatches the loss at ``W_s`` is the one on step
   s's minibatch (drawn independently of ``W_s``: an unbiased estimate).
3. Backward, optional clipping, one Adam step (separate rates for m1 and m2). Gradient hooks on
   the LSTM outputs zero a diverged trajectory's contribution, so a NaN in one task never reaches
   the shared meta-parameters. A meta-step with a non-finite (zeroed) meta-gradient or no live
   trajectory is counted as skipped (``skipped_total``).
4. Truncation: weights and LSTM states are detached and carried on. Here (once per meta-step) the
   host reads the metrics; trajectories that finished their horizon (``steps``, or their own drawn
   horizon, exactly: the unroll that reaches it holds it there and drops its later meta-loss terms)
   or diverged are replaced by fresh
   tasks from the next training seeds (their LSTM state zeroed; optionally rescaled,
   ``augment_scale``) until ``trajectories`` have started; their slots then fall idle (masked like
   diverged ones), and the run is :attr:`done` when the last trajectory has finished. Horizons,
   truncation lengths and the curriculum are host-side schedules (:mod:`metatele.meta.schedules`).

With ``estimator: pes`` steps 1–3 are replaced by persistent evolution strategies
(:mod:`metatele.meta.pes`): every trajectory is an antithetic pair of particles unrolled forward
at perturbed meta-parameters, and the estimate is written into ``.grad`` for the same clipping and
Adam step.

The engine's full state (meta-parameters, Adam state, every trajectory, counters) is in
:meth:`state_dict`, so a run can be resumed bit-for-bit (files: :mod:`metatele.meta.state`; when
and how they are written: :mod:`metatele.meta.checkpointer`).

Data-parallel training (:mod:`metatele.meta.distributed`) runs one engine per rank with
``rank``/``world_size``: each rank advances ``batch_size / world_size`` trajectories on its own
interleaved training seeds (rank r of W uses ``train_seed_start + r, + r + W, + r + 2W, ...``),
``grad_reducer`` averages the meta-gradients and ``stats_reducer`` sums the host counts, so
every rank takes the same meta-step as one process with the whole batch would.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..configs import ConfigError
from ..optimizers.learned import LearnedOptimizer, LearnedState
from ..tasks.digits import minibatch_sampler
from ..tasks.family import VALIDATION_SEED_OFFSET, TaskBatch, sample_tasks
from ..tasks.augment import augment
from .config import MetaTrainConfig, resolve_device
from .schedules import staggered, start_offsets, trajectory_horizon, unroll_length
from .metaloss import contributions
from .pes import PES
from .snapshots import Snapshots
from .symmetry_probe import SymmetryProbe
from .trajectories import Trajectories, hold


class DivergenceError(RuntimeError):
    """Every trajectory diverged for ``diverge_patience`` consecutive meta-steps."""


def _finite_rows(t: torch.Tensor) -> torch.Tensor:
    """``[B, ...]`` → ``[B]`` bool: every entry of the row is finite."""
    return torch.isfinite(t).flatten(1).all(1)


@dataclass
class Unroll:
    """The result of one truncated unroll (before the trajectories are advanced)."""

    W: list[torch.Tensor]
    state: LearnedState
    alive: torch.Tensor  # [B] bool: trajectory stayed finite during the unroll
    final: torch.Tensor  # [B] loss at the last weights
    meta_loss: torch.Tensor  # scalar, detached
    K: int


class UnrollEngine:
    """Truncated unrolled meta-training of one :class:`LearnedOptimizer` over B trajectories.

    Args:
        config: the run's configuration.
        optimizer: the learned optimizer to train (built from ``config`` when omitted).
        device: overrides ``config.device``.
        rank, world_size: this process's place in a data-parallel run (``0``, ``1``: alone). The
            batch ``min(batch_size, trajectories)`` is split evenly over the ranks.
    """

    #: the host counters saved by :meth:`state_dict`
    COUNTERS = ("meta_step_count", "next_seed", "trajectories_started", "trajectories_finished",
                "diverged_total", "all_dead_streak", "train_seconds", "done", "skipped_total", "init_source")

    def __init__(
        self,
        config: MetaTrainConfig,
        optimizer: LearnedOptimizer | None = None,
        device: torch.device | str | None = None,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if not (isinstance(rank, int) and isinstance(world_size, int) and 0 <= rank < world_size):
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank!r}, world_size={world_size!r}")
        batch = min(config.batch_size, config.trajectories)
        if batch % world_size:
            raise ConfigError(
                f"batch_size: the batch of {batch} trajectories (min(batch_size, trajectories)) must split "
                f"evenly over the {world_size} data-parallel ranks; use a multiple of {world_size}"
            )
        self.rank, self.world_size = rank, world_size
        self.config = config
        self.device = torch.device(device) if device is not None else resolve_device(config.device)
        self.dtype = config.torch_dtype
        torch.manual_seed(config.seed)
        self.optimizer = optimizer or LearnedOptimizer(config.task, config.learned)
        self.optimizer.to(device=self.device, dtype=self.dtype)
        groups = []
        if self.config.learned.uses_update:  # a learned m1 (the tele variant's base has no parameters)
            groups.append({"params": list(self.optimizer.update.parameters()), "lr": config.lr_update})
        if len(self.optimizer.teleports):
            groups.append({"params": list(self.optimizer.teleports.parameters()), "lr": config.lr_teleport})
        self.meta_opt = torch.optim.Adam(groups)
        #: the PES estimator (``estimator: pes``), ``None`` for truncated backpropagation
        self.pes = PES(config, self.meta_parameters, rank, world_size) if config.estimator == "pes" else None
        self.trajectories: Trajectories  # set by _start_all below
        self.optimizer.output_hook = self._mask_dead
        self.B = batch // world_size  # this rank's trajectories
        self.rng = np.random.default_rng(config.seed)  # truncation lengths only
        # host-side counters (deterministic, never read from the device)
        self.meta_step_count = 0
        #: next position in this rank's seed stream, offset by ``train_seed_start`` (the next seed
        #: itself when ``world_size == 1``; see :meth:`_seed_of`)
        self.next_seed = config.train_seed_start
        #: one past the last position of this rank's stream: its share of the ``trajectories`` seeds
        self.seed_limit = config.train_seed_start + len(range(rank, config.trajectories, world_size))
        #: every trajectory of the run (on every rank) has been trained: the run is over
        self.done = False
        self.trajectories_started = 0
        self.trajectories_finished = 0
        self.diverged_total = 0
        self.all_dead_streak = 0
        #: meta-steps that taught the meta-parameters nothing: the meta-gradient was non-finite
        #: (zeroed) or every trajectory had diverged (no update)
        self.skipped_total = 0
        #: wall-clock seconds of meta-training so far, over every segment of a resumed run (kept
        #: by :func:`metatele.meta.train.meta_train`)
        self.train_seconds = 0.0
        self.init_source: dict[str, Any] | None = None  # the warm start's record (metatele.meta.warmstart)
        self._alive_for_backward: torch.Tensor | None = None
        #: called with the meta-parameters after backward, before clipping (distributed all-reduce)
        self.grad_reducer: Callable[[list[torch.nn.Parameter]], None] | None = None
        #: called once per meta-step with this rank's host sums ``[live trajectories, meta-loss
        #: sum, log10-loss sum, slots active after the step]``; returns the sums over all ranks
        #: (distributed runs)
        self.stats_reducer: Callable[[list[float]], list[float]] | None = None
        #: set by a data-parallel run: one past the largest training seed any rank has used
        self.seed_end_all_ranks: int | None = None
        #: metrics of the meta-steps taken before this engine was restored from a checkpoint
        self.prior_history: list[dict[str, Any]] = []
        #: fixed teleports of norm eps (one per pair) whose loss change is measured every meta-step
        #: when the config allows a teleport that is not a symmetry (``None`` otherwise)
        self.symmetry_probe = SymmetryProbe.for_run(config, self.device, self.dtype)
        #: validation, the best snapshot and the average of the meta-parameters (``None`` when
        #: ``validation.every`` is 0); called by :func:`metatele.meta.train.meta_train`
        self.snapshots = (Snapshots(config.validation, [config.task], self.optimizer, self.meta_parameters)
                          if config.validation.enabled else None)
        self._start_all()

    # -- trajectories ------------------------------------------------------------------------
    def _seed_of(self, position: int) -> int:
        """The training seed at ``position`` (≥ ``train_seed_start``) of this rank's stream."""
        start = self.config.train_seed_start
        return start + (position - start) * self.world_size + self.rank

    @property
    def seeds_left(self) -> int:
        """Training seeds of this rank's share of ``trajectories`` not started yet."""
        return self.seed_limit - self.next_seed

    def _fresh(self, count: int) -> TaskBatch | None:
        """Tasks from the next ``count`` training seeds, fewer when the run's seeds run out (``None``: none left)."""
        count = min(count, self.seeds_left)
        if count == 0:
            return None
        seeds = [self._seed_of(p) for p in range(self.next_seed, self.next_seed + count)]
        if seeds[-1] >= VALIDATION_SEED_OFFSET:  # host-side integers: no device sync
            raise ValueError(f"training seed {seeds[-1]} reached the validation seeds (≥ {VALIDATION_SEED_OFFSET}); "
                             "lower train_seed_start")
        self.next_seed += count
        self.trajectories_started += count
        c = self.config
        tasks = sample_tasks(c.task, seeds, device=self.device, dtype=self.dtype)
        return augment(tasks, seeds, c.augment_scale, c.seed, scale_targets=c.task.kind.scale_targets)

    def _horizons(self, tasks: TaskBatch | None) -> np.ndarray | None:
        """Each task's horizon (host integers from its seed)."""
        if tasks is None:
            return None
        c = self.config
        return np.array([trajectory_horizon(c.horizon, c.steps, c.steps_min, c.seed, s) for s in tasks.seeds],
                        dtype=np.int64)

    def _loss(self, W: list[torch.Tensor], X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
        """The task family's loss ``[B]`` (regression: squared error; digits: cross-entropy)."""
        return self.config.task.kind.loss(W, X, Y)

    def _start_all(self) -> None:
        """Start a whole batch of trajectories from the next training seeds (the slots beyond the
        seeds left stay idle)."""
        c = self.config
        tasks = self._fresh(self.B)
        horizon = self._horizons(tasks)
        stagger = None
        if c.stagger:
            offsets = start_offsets(self.B, self.rank, self.world_size, c.steps, c.unroll)
            k = len(horizon)
            stagger = np.concatenate([staggered(offsets[:k], horizon), offsets[k:]])
        particles = 2 if self.pes is not None else 1  # PES: an antithetic pair per trajectory
        state = self.optimizer.initial_state(self.B * particles, self.device, self.dtype)
        self.trajectories = Trajectories.start(tasks, state, horizon, stagger, B=self.B,
                                               loss=self._loss, teleport_data=self.optimizer.teleport_data,
                                               particles=particles)

    def _replace(self, slots: np.ndarray) -> None:
        """Give the trajectories in ``slots`` fresh tasks and zero their recurrent state; once the
        run's seeds are used up, the slots fall idle."""
        if len(slots):
            tasks = self._fresh(len(slots))
            self.trajectories.reset(slots, tasks, self._horizons(tasks))

    def _active_after(self, alive: np.ndarray, K: int) -> int:
        """How many slots will hold a trajectory after this meta-step's replacements (host only)."""
        tr = self.trajectories
        ending = int((tr.active & ~(alive & (tr.steps_done + K < tr.horizon))).sum())
        return int(tr.active.sum()) - ending + min(ending, self.seeds_left)

    # -- one meta-step -----------------------------------------------------------------------
    def _mask_dead(self, grad: torch.Tensor) -> torch.Tensor:
        """Gradient hook on every LSTM output: zero the rows of diverged trajectories."""
        alive = self._alive_for_backward
        if alive is None:
            return grad
        shape = (-1,) + (1,) * (grad.dim() - 1)
        return torch.where(alive.view(shape), grad, torch.zeros_like(grad))

    def _unroll_length(self) -> int:
        c = self.config
        return unroll_length(self.rng, c.truncation, c.unroll, c.unroll_max, c.curriculum, self.meta_step_count)

    def compute_meta_gradient(self) -> "Unroll":
        """Run one truncated unroll from the current trajectories and backpropagate the meta-loss.

        Leaves the meta-gradient in the meta-parameters' ``.grad`` (not yet clipped or applied)
        and does not advance the trajectories; :meth:`meta_step` does both. With ``estimator: pes``
        the estimate comes from antithetic forward unrolls instead, with no backward
        (:meth:`metatele.meta.pes.PES.meta_gradient`).
        """
        K = self._unroll_length()
        if self.trajectories.active.any():  # never past the longest horizon left (host integers)
            K = int(self.trajectories.steps_in_unroll(K)[self.trajectories.active].max())
        if self.pes is not None:
            W, state, alive, final, meta_loss = self.pes.meta_gradient(self.trajectories, K, self.meta_step_count,
                                                                       self._unroll)
            return Unroll(W, state, alive, final, meta_loss, K)
        W, state, alive, final, contrib = self._unroll(self.trajectories, K)
        meta_loss = contrib.sum() / self.B

        self._alive_for_backward = alive
        self.meta_opt.zero_grad(set_to_none=True)
        meta_loss.backward()
        self._alive_for_backward = None
        return Unroll(W, state, alive, final, meta_loss.detach(), K)

    def _unroll(self, tr: Trajectories, K: int) -> tuple[list[torch.Tensor], LearnedState, torch.Tensor,
                                                         torch.Tensor, torch.Tensor]:
        """``K`` inner steps of the trajectories ``tr`` from their current weights and state.

        Returns ``(W, state, alive [B], final loss [B], contributions [K, B])``: the meta-loss
        terms of every step and trajectory, zero where masked (diverged or idle), with their graph.
        """
        c = self.config
        W, state = tr.W, tr.state
        if tr.active.all():
            alive = torch.ones(tr.B, dtype=torch.bool, device=self.device)
        else:  # idle slots (the run's seeds are used up) are masked like diverged ones
            alive = torch.as_tensor(tr.active, device=self.device)
        validation = c.meta_objective == "validation"
        terms, val_terms = [], []
        sampler = minibatch_sampler(c.task, tr.seeds)  # None: full batch
        taken = tr.steps_in_unroll(K)  # host integers: a trajectory stops at its horizon
        for k in range(K):  # step k of the unroll is step steps_done + k of each trajectory (host integers)
            before = W, state
            W, loss, grad_sq, state = self.optimizer.step(
                W, tr.X, tr.Y, state, second_order=c.second_order, x_qr=tr.X_qr,
                minibatch=sampler.select(tr.X, tr.Y, tr.steps_done + k) if sampler is not None else None)
            if (taken <= k).any():  # trajectories past their horizon keep their weights and state
                W, state = hold(taken > k, (W, state), before)
            alive = alive & torch.isfinite(loss) & torch.isfinite(grad_sq)
            terms.append(loss)
            if validation:  # learning for generalization: the validation loss at W_{t+1}
                val_terms.append(c.task.kind.loss(W, tr.X_val, tr.Y_val))
        final = self._loss(W, tr.X, tr.Y)
        for w in W:
            alive = alive & _finite_rows(w)
        alive = alive & torch.isfinite(final)
        # losses at W_{t+1}..W_{t+K}: drop the loss at the (detached) start, add the final one
        per_step = torch.stack(val_terms if validation else terms[1:] + [final])  # [K, B]
        if validation:
            alive = alive & torch.isfinite(per_step).all(0)
        contrib = contributions(c, tr, per_step, alive, taken)
        return W, state, alive, final, contrib

    @property
    def meta_parameters(self) -> list[torch.nn.Parameter]:
        return [p for g in self.meta_opt.param_groups for p in g["params"]]

    def meta_step(self) -> dict[str, Any]:
        """Run one truncated unroll and one meta-update; returns host-side metrics."""
        c = self.config
        t0 = time.perf_counter()
        tr = self.trajectories
        probe = self.symmetry_probe([w[: self.B] for w in tr.W], tr.X, tr.Y) if self.symmetry_probe else None
        u = self.compute_meta_gradient()
        W, state, alive, final, meta_loss, K = u.W, u.state, u.alive, u.final, u.meta_loss, u.K
        if self.grad_reducer is not None:  # e.g. all-reduce across data-parallel ranks
            self.grad_reducer(self.meta_parameters)
        params = self.meta_parameters
        if c.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip)
        else:
            norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        finite_grad = torch.isfinite(norm)
        for p in params:  # belt and braces: never let a non-finite meta-gradient through
            if p.grad is not None:
                p.grad = torch.where(finite_grad, p.grad, torch.zeros_like(p.grad))

        with torch.no_grad():
            log_loss = torch.where(alive, final.clamp_min(1e-30).log10(), torch.zeros_like(final)).sum()
            stats = torch.stack([meta_loss, norm.detach().to(meta_loss.dtype), log_loss, finite_grad.to(meta_loss.dtype)]
                                + ([probe.to(meta_loss.dtype)] if probe is not None else []))
        # --- host sync: once per meta-step -------------------------------------------------
        alive_host = alive.cpu().numpy()
        meta_loss_h, norm_h, log_loss_h, finite_h, *probe_h = stats.cpu().tolist()
        n_alive = int(alive_host.sum())
        totals = [float(n_alive), meta_loss_h * self.B, log_loss_h, float(self._active_after(alive_host, K))]
        if self.stats_reducer is not None:  # sums over data-parallel ranks: every rank decides alike
            totals = self.stats_reducer(totals)
        n_alive = int(round(totals[0]))
        self.done = round(totals[3]) == 0  # no slot of any rank holds a trajectory any more
        if n_alive > 0:
            self.meta_opt.step()
            self.all_dead_streak = 0
        else:
            self.all_dead_streak += 1
        skipped = n_alive == 0 or not finite_h  # the gradient was zeroed, or there was none
        self.skipped_total += int(skipped)
        self.meta_step_count += 1
        self.trajectories.advance(W, state, K)
        dead = np.flatnonzero(~alive_host & self.trajectories.active)  # this rank's slots (idle ones are not dead)
        finished = np.flatnonzero(alive_host & (self.trajectories.steps_done >= self.trajectories.horizon))
        self.diverged_total += len(dead)
        self.trajectories_finished += len(finished)
        metrics = {
            "meta_step": self.meta_step_count,
            # no live trajectory: no meta-loss (None, never a 0.0 that reads like a perfect loss)
            "meta_loss": totals[1] / n_alive if n_alive else None,
            "mean_log10_loss": totals[2] / n_alive if n_alive else None,
            "meta_grad_norm": norm_h if math.isfinite(norm_h) else None,
            "skipped": skipped,
            "skipped_total": self.skipped_total,
            "diverged": int(len(dead)),
            "diverged_total": self.diverged_total,
            "trajectories_started": self.trajectories_started,
            "trajectories_finished": self.trajectories_finished,
            "unroll": K,
            "seconds": time.perf_counter() - t0,
        }
        if probe_h:  # a teleport that is not a symmetry (allow_non_symmetric): what it changes
            metrics["teleport_loss_change"] = probe_h[0]
        if self.all_dead_streak >= c.diverge_patience:
            raise DivergenceError(
                f"every one of the {self.B * self.world_size} trajectories diverged (non-finite loss, gradient or "
                f"weights) in {self.all_dead_streak} consecutive meta-steps (up to meta-step {self.meta_step_count}); "
                "the meta-parameters were not updated in those steps. Lower lr_update/lr_teleport, "
                "enable grad_clip, normalize the meta-loss, or use meta_loss: mean_log."
            )
        self._replace(np.union1d(dead, finished).astype(np.int64))
        return metrics

    # -- resumable state ---------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue bit-for-bit: tensors and host counters.

        Tensors are references (not copies); numpy arrays and the numpy generator state are
        returned as they are (:mod:`metatele.meta.state` converts them for a pickle-free file).
        """
        return {
            "optimizer": self.optimizer.state_dict(),
            "meta_opt": self.meta_opt.state_dict(),
            **self.trajectories.state_dict(),
            "counters": {k: getattr(self, k) for k in self.COUNTERS},
            "rank": self.rank, "world_size": self.world_size,
            "numpy_rng": self.rng.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            **({"snapshots": self.snapshots.state_dict()} if self.snapshots is not None else {}),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (same config, same rank and world size)."""
        where = (sd.get("rank", 0), sd.get("world_size", 1))
        if where != (self.rank, self.world_size):
            raise ValueError(
                f"state of rank {where[0]} of {where[1]} cannot be loaded into rank {self.rank} of {self.world_size}"
            )
        self.optimizer.load_state_dict(sd["optimizer"])
        self.meta_opt.load_state_dict(sd["meta_opt"])
        self.trajectories = Trajectories.from_state_dict(sd, self.device, self.config.steps, loss=self._loss,
                                                         teleport_data=self.optimizer.teleport_data)
        for k, v in sd["counters"].items():
            setattr(self, k, v)
        self.rng.bit_generator.state = sd["numpy_rng"]
        torch.set_rng_state(sd["torch_rng"])
        if sd.get("cuda_rng") is not None and self.device.type == "cuda":
            torch.cuda.set_rng_state(sd["cuda_rng"], self.device)
        if self.snapshots is not None:
            if "snapshots" not in sd:
                raise ValueError("the training state has no validation snapshots, but the config validates")
            self.snapshots.load_state_dict(sd["snapshots"])

    @property
    def trained_seed_range(self) -> tuple[int, int]:
        """``[start, end)`` of the training seeds consumed so far.

        With several ranks: the range this rank's interleaved seeds span (as if every rank
        started as many trajectories), or ``seed_end_all_ranks`` when the run has set it.
        """
        start = self.config.train_seed_start
        if self.seed_end_all_ranks is not None:
            return start, self.seed_end_all_ranks
        return start, start + (self.next_seed - start) * self.world_size
