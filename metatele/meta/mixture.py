"""Meta-training on a task mixture: one group of trajectories per architecture, meta-steps in turn.

A batched :class:`~metatele.meta.engine.UnrollEngine` advances trajectories that share one weight
shape. For a generalist (``mix`` in :class:`~metatele.meta.config.MetaTrainConfig`, see
:mod:`metatele.tasks.mixture`) :class:`MixtureEngine` keeps one such engine per training
architecture, all sharing the learned optimizer and its Adam state, and gives meta-step ``i`` to
group ``i mod G``: that group runs one truncated unroll of its ``batch_size`` trajectories and
takes the meta-update, while the others wait where their unrolls ended. Every meta-step therefore
costs one unroll of one batch, as in a single-task run.

Group ``g`` of ``G`` draws its training seeds ``train_seed_start + g, + g + G, ...`` (the
interleaving of data-parallel ranks), so no two groups share a seed and every task is drawn
from its own seed. The engine's state is the groups' states plus the shared ones, so a mixture
run resumes bit for bit like any other (:mod:`metatele.meta.checkpointer`).
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..configs import ConfigError
from ..optimizers.learned import LearnedOptimizer
from ..tasks.family import TaskConfig
from .config import MetaTrainConfig, resolve_device
from .engine import DivergenceError, UnrollEngine
from .schedules import seed_end
from .snapshots import Snapshots, ValidationConfig


class MixtureEngine:
    """Truncated unrolled meta-training of one optimizer on the architectures of ``config.mix``.

    Args:
        config: the run (``mix`` must be set).
        device: overrides ``config.device``.
    """

    COUNTERS = ("meta_step_count", "diverged_total", "train_seconds", "done", "next_seed", "dead_streak", "init_source")

    def __init__(self, config: MetaTrainConfig, device: torch.device | str | None = None) -> None:
        if config.mix is None:
            raise ConfigError("mix: a MixtureEngine needs a task mixture (config.mix)")
        self.config = config
        self.device = torch.device(device) if device is not None else resolve_device(config.device)
        self.dtype = config.torch_dtype
        self.architectures = config.mix.training_architectures(config.task)
        G = len(self.architectures)
        torch.manual_seed(config.seed)
        self.optimizer = LearnedOptimizer(config.task, config.learned)
        self.groups: list[UnrollEngine] = []
        for g, arch in enumerate(self.architectures):
            sub = replace(config, task=arch, mix=None, validation=ValidationConfig(), max_meta_steps=None,
                          max_seconds=None, batch_size=config.batch_size * G,
                          trajectories=max(config.trajectories, config.batch_size * G))
            self.groups.append(UnrollEngine(sub, optimizer=self.optimizer, device=self.device, rank=g, world_size=G))
        self.meta_opt = self.groups[0].meta_opt
        for e in self.groups[1:]:
            e.meta_opt = self.meta_opt  # one Adam state for every group
        self.B, self.rank, self.world_size = config.batch_size, 0, 1
        self.meta_step_count = 0
        self.diverged_total = 0
        self.dead_streak = 0  # the mixture's last meta-steps in a row with no finite trajectory
        self.train_seconds = 0.0
        self.init_source: dict[str, Any] | None = None  # the warm start's record (metatele.meta.warmstart)
        self.done = False
        self.next_seed = config.train_seed_start
        self.prior_history: list[dict[str, Any]] = []
        self.seed_end_all_ranks: int | None = None
        self.snapshots = (Snapshots(config.validation, self.validation_tasks(), self.optimizer, self.meta_parameters)
                          if config.validation.enabled else None)

    def validation_tasks(self) -> list[TaskConfig]:
        """The reference task and the first ``mix.validate_on`` drawn training architectures."""
        return self.architectures[: 1 + self.config.mix.validate_on]

    @property
    def meta_parameters(self) -> list[torch.nn.Parameter]:
        return self.groups[0].meta_parameters

    @property
    def all_dead_streak(self) -> int:
        """The mixture's most recent meta-steps in a row in which every trajectory of the stepping
        group diverged (0 after a meta-step with a finite one). One group's own streak counts its
        own meta-steps only, so it says nothing of the mixture's last meta-step."""
        return self.dead_streak

    @property
    def skipped_total(self) -> int:
        """Meta-steps of every group that taught the meta-parameters nothing (see :class:`UnrollEngine`)."""
        return sum(e.skipped_total for e in self.groups)

    @property
    def trained_seed_range(self) -> tuple[int, int]:
        return self.config.train_seed_start, self.next_seed

    def meta_step(self) -> dict[str, Any]:
        """One meta-step of the group whose turn it is; its metrics, with ``group`` and ``dims``."""
        g = self.meta_step_count % len(self.groups)
        engine = self.groups[g]
        self.optimizer.output_hook = engine._mask_dead  # the hook masks this group's diverged rows
        try:
            metrics = engine.meta_step()
        except DivergenceError as e:  # name the architecture, and the mixture's meta-step
            raise DivergenceError(f"architecture {self.architectures[g].dims} (group {g} of the mixture, its "
                                  f"meta-step {self.meta_step_count + 1}): {e}") from None
        self.dead_streak = self.dead_streak + 1 if engine.all_dead_streak else 0
        self.meta_step_count += 1
        self.diverged_total = sum(e.diverged_total for e in self.groups)
        start = self.config.train_seed_start
        self.next_seed = max(seed_end(e.next_seed, e.rank, e.world_size, start) for e in self.groups)
        self.done = all(e.done for e in self.groups)
        return {**metrics, "meta_step": self.meta_step_count, "diverged_total": self.diverged_total,
                "skipped_total": self.skipped_total,
                "group": g, "dims": self.architectures[g].dims}

    # -- resumable state --------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The shared meta-parameters and Adam state, every group's trajectories and counters."""
        shared = ("optimizer", "meta_opt")
        return {
            "optimizer": self.optimizer.state_dict(),
            "meta_opt": self.meta_opt.state_dict(),
            "groups": [{k: v for k, v in e.state_dict().items() if k not in shared} for e in self.groups],
            "counters": {k: getattr(self, k) for k in self.COUNTERS},
            "rank": 0, "world_size": 1,
            "numpy_rng": {},  # each group keeps its own truncation generator
            **({"snapshots": self.snapshots.state_dict()} if self.snapshots is not None else {}),
        }

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore from :meth:`state_dict` (same config)."""
        if len(sd.get("groups", [])) != len(self.groups):
            raise ValueError(f"the training state has {len(sd.get('groups', []))} architecture groups, this mixture "
                             f"has {len(self.groups)}")
        for e, g in zip(self.groups, sd["groups"]):
            e.load_state_dict({**g, "optimizer": sd["optimizer"], "meta_opt": sd["meta_opt"]})
        for k, v in sd["counters"].items():
            setattr(self, k, v)
        if self.snapshots is not None:
            if "snapshots" not in sd:
                raise ValueError("the training state has no validation snapshots, but the config validates")
            self.snapshots.load_state_dict(sd["snapshots"])


def build_engine(config: MetaTrainConfig, device: torch.device | str | None = None, rank: int = 0,
                 world_size: int = 1) -> UnrollEngine | MixtureEngine:
    """The engine for ``config``: a :class:`MixtureEngine` with a task mixture, else an
    :class:`UnrollEngine`."""
    if config.mix is None:
        return UnrollEngine(config, device=device, rank=rank, world_size=world_size)
    if world_size != 1:
        raise ConfigError("mix: a task mixture trains in one process (data-parallel mixture runs are not supported)")
    return MixtureEngine(config, device=device)
