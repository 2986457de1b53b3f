"""Data-parallel meta-training on ``torch.distributed``: one engine per rank, one meta-step for all.

Launch with torchrun (``experiments/train_distributed.py`` is the entry script; its options are
``metatele train``'s, see :mod:`metatele.cli`)::

    torchrun --nproc_per_node=2 experiments/train_distributed.py --config F --out DIR [--resume]

What each rank does:

* The batch ``min(batch_size, trajectories)`` is split evenly: rank r of W advances
  ``batch_size / W`` trajectories on its own training seeds, interleaved (``train_seed_start + r,
  + r + W, + r + 2W, ...``), so no two ranks ever train on the same task.
* Every rank builds the meta-parameters from the same ``seed``; :meth:`DataParallel.check_identical`
  compares them with rank 0's (a broadcast) before the first meta-step.
* After each unroll the meta-gradients are averaged with one ``all_reduce``
  (``engine.grad_reducer``), and the host counts (live trajectories, losses, a stop flag) with a
  second, tiny one (``engine.stats_reducer``). So each rank takes the same Adam step that one
  process with the whole batch would take, and the meta-parameters stay identical. (With
  lock-step trajectories the ranks' seeds together are exactly one process's; with staggered
  starts or divergences, trajectories are replaced per rank, still from disjoint seeds.)
* Rank 0 alone writes checkpoints (the other ranks' trajectories are gathered to it) and logs to
  wandb. A signal to any rank stops every rank after the same meta-step, with a checkpoint.
* ``init_process_group`` gets a finite timeout: a rank that dies or stops answering makes the
  others fail (:class:`DistributedError`) instead of hanging; restart with ``--resume``. (With
  NCCL, torch's watchdog enforces the timeout and ends the process itself.)
"""
from __future__ import annotations

import contextlib
import datetime
import os
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist

from .checkpointer import TrainingCheckpointer, resumable_callback
from .config import MetaTrainConfig, resolve_device
from .engine import UnrollEngine
from .train import MAX_SKIPPED_SHARE, MetaTrainResult, meta_train

#: how rank 0 trains: ``rank0_train(config, callback=..., engine=...)`` → the result (it may also
#: save and log, e.g. ``metatele.release.training.train_and_save`` with the output folder bound)
Rank0Train = Callable[..., MetaTrainResult]

DEFAULT_TIMEOUT_S = 300.0
_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


class DistributedError(RuntimeError):
    """A collective with the other ranks failed: a rank died, hung past the timeout, or disagrees."""


class DataParallel:
    """The process group seen by one rank's engine and checkpointer.

    Args:
        device: where the engine's tensors live (NCCL collectives need them on the GPU; gloo
            collectives run on CPU tensors).
        timeout_s: the group's timeout (only quoted in error messages).
    """

    def __init__(self, device: torch.device | str = "cpu", timeout_s: float | None = None) -> None:
        if not dist.is_initialized():
            raise DistributedError("torch.distributed is not initialised; call init_distributed() first")
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.timeout_s = timeout_s
        self.comm_device = torch.device(device) if dist.get_backend() == "nccl" else torch.device("cpu")
        self.stop_requested = False  # a stop signal reached some rank (agreed after every meta-step)
        self.local_stop: Callable[[], bool] = lambda: False
        self.engine: UnrollEngine | None = None

    # -- error handling ------------------------------------------------------------------------
    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        try:
            yield
        except RuntimeError as e:  # gloo/NCCL errors, timeouts (DistBackendError is one)
            step = self.engine.meta_step_count if self.engine is not None else 0
            limit = f"within the {self.timeout_s:g} s timeout" if self.timeout_s else "in time"
            raise DistributedError(
                f"rank {self.rank} of {self.world_size}: {what} with the other ranks failed after meta-step "
                f"{step}: another rank died or did not answer {limit} ({type(e).__name__}: "
                f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}). Restart the same command with "
                "--resume to continue from the last checkpoint"
            ) from e

    # -- the engine's hooks --------------------------------------------------------------------
    def attach(self, engine: UnrollEngine) -> None:
        """Make ``engine`` average its meta-gradients and sum its host counts over the ranks."""
        if (engine.rank, engine.world_size) != (self.rank, self.world_size):
            raise DistributedError(f"engine built for rank {engine.rank} of {engine.world_size}, "
                                   f"but this process is rank {self.rank} of {self.world_size}")
        engine.grad_reducer = self.reduce_gradients
        engine.stats_reducer = self.reduce_stats
        self.engine = engine

    def reduce_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Average ``p.grad`` over the ranks (one flat ``all_reduce``)."""
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads]).to(self.comm_device)
        with self._collective("averaging the meta-gradients"):
            dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        flat = (flat / self.world_size).to(grads[0].device)
        offset = 0
        for p in params:
            n = p.numel()
            p.grad = flat[offset:offset + n].view_as(p)
            offset += n

    def reduce_stats(self, totals: list[float]) -> list[float]:
        """Sum the engine's host counts over the ranks; also agree on whether to stop."""
        t = torch.tensor([*totals, 1.0 if self.local_stop() else 0.0], dtype=torch.float64, device=self.comm_device)
        with self._collective("summing the meta-step statistics"):
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        values = t.cpu().tolist()
        self.stop_requested = values[-1] > 0
        return values[:-1]

    # -- what the checkpointer needs -----------------------------------------------------------
    def _int(self, value: int, op: Any, what: str) -> int:
        t = torch.tensor([int(value)], dtype=torch.int64, device=self.comm_device)
        with self._collective(what):
            dist.all_reduce(t, op=op)
        return int(t.item())

    def all_true(self, flag: bool) -> bool:
        return self._int(int(bool(flag)), dist.ReduceOp.MIN, "agreeing on a checkpoint") == 1

    def max_int(self, value: int) -> int:
        return self._int(value, dist.ReduceOp.MAX, "agreeing on the training seeds")

    def gather_bytes(self, data: bytes) -> list[bytes] | None:
        """Every rank's ``data`` on rank 0 (``None`` elsewhere)."""
        with self._collective("gathering the trajectories for a checkpoint"):
            n = torch.tensor([len(data)], dtype=torch.int64, device=self.comm_device)
            sizes = [torch.zeros_like(n) for _ in range(self.world_size)]
            dist.all_gather(sizes, n)
            lengths = [int(s.item()) for s in sizes]
            buf = torch.zeros(max(lengths), dtype=torch.uint8)
            buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
            buf = buf.to(self.comm_device)
            parts = [torch.empty_like(buf) for _ in range(self.world_size)] if self.rank == 0 else None
            dist.gather(buf, parts, dst=0)
        if parts is None:
            return None
        return [p.cpu().numpy()[:k].tobytes() for p, k in zip(parts, lengths)]

    def broadcast_bytes(self, data: bytes | None) -> bytes:
        """Rank 0's ``data`` on every rank."""
        with self._collective("receiving rank 0's decision"):
            n = torch.tensor([len(data) if self.rank == 0 else 0], dtype=torch.int64, device=self.comm_device)
            dist.broadcast(n, src=0)
            k = int(n.item())
            if self.rank == 0:
                buf = torch.frombuffer(bytearray(data), dtype=torch.uint8) if k else torch.zeros(0, dtype=torch.uint8)
            else:
                buf = torch.zeros(k, dtype=torch.uint8)
            buf = buf.to(self.comm_device)
            if k:
                dist.broadcast(buf, src=0)
        return buf.cpu().numpy().tobytes()

    def barrier(self) -> None:
        with self._collective("waiting for the other ranks to finish"):
            dist.barrier()

    def check_identical(self, params: list[torch.nn.Parameter]) -> None:
        """Raise unless every rank holds rank 0's meta-parameters, bit for bit."""
        mine = torch.cat([p.detach().reshape(-1) for p in params]).to(self.comm_device)
        ref = mine.clone()
        with self._collective("comparing the initial meta-parameters"):
            dist.broadcast(ref, src=0)
        if not self.all_true(torch.equal(ref, mine)):
            raise DistributedError(
                "the meta-parameters differ between ranks at the start (max |difference| on rank "
                f"{self.rank}: {(ref - mine).abs().max().item():.3g}); every rank must run the same code, "
                "torch version, config and seed"
            )


# -- setting up a rank --------------------------------------------------------------------------
def rank_device(config: MetaTrainConfig, local_rank: int) -> torch.device:
    """This rank's device: ``cuda:LOCAL_RANK`` when the config asks for CUDA, else the config's."""
    dev = resolve_device(config.device)
    return torch.device("cuda", local_rank) if dev.type == "cuda" else dev


def init_distributed(device: torch.device, backend: str | None = None,
                     timeout_s: float = DEFAULT_TIMEOUT_S) -> tuple[int, int]:
    """Join the process group described by torchrun's environment; returns ``(rank, world_size)``.

    ``backend`` defaults to NCCL for CUDA devices and gloo otherwise. Collectives (and the
    rendezvous) fail after ``timeout_s`` seconds instead of waiting forever.
    """
    missing = [k for k in _ENV if k not in os.environ]
    if missing:
        raise DistributedError(
            f"environment variables {', '.join(missing)} are not set: launch with torchrun, e.g. "
            "torchrun --nproc_per_node=2 experiments/train_distributed.py --config F --out DIR"
        )
    if not (timeout_s > 0):
        raise DistributedError(f"--timeout: must be > 0 seconds, got {timeout_s}")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kw = {"device_id": device} if backend == "nccl" else {}
    try:
        dist.init_process_group(backend, init_method="env://", timeout=datetime.timedelta(seconds=timeout_s), **kw)
    except RuntimeError as e:
        where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
        raise DistributedError(f"rank {os.environ['RANK']}: could not join the process group at {where} "
                               f"within {timeout_s:g} s: {e}") from e
    return dist.get_rank(), dist.get_world_size()


def train_distributed(
    config: MetaTrainConfig,
    out: str | os.PathLike,
    resume: bool = False,
    every: int = 50,
    keep: int = 3,
    rank0_train: Rank0Train | None = None,
    progress: bool = True,
    backend: str | None = None,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    overwrite: bool = False,
    max_skipped_share: float = MAX_SKIPPED_SHARE,
) -> MetaTrainResult:
    """Meta-train ``config`` data-parallel over torchrun's ranks; rank 0 writes ``out``.

    Args:
        config: the run's config.
        out: the run's folder: training states (rank 0 writes them), and whatever ``rank0_train``
            writes.
        resume, every, keep: as for :func:`metatele.meta.checkpointer.resumable_callback`.
        rank0_train: rank 0's trainer, called as ``rank0_train(config, callback=callback,
            engine=engine)``; it must call :func:`metatele.meta.train.meta_train` with them (and may
            save the checkpoint, log...). Default: ``meta_train`` itself. Other ranks always run
            ``meta_train`` without a progress bar.
        progress: rank 0's progress bar (for the default ``rank0_train``).
        backend, timeout_s: as for :func:`init_distributed`.
        overwrite: as for :func:`metatele.meta.checkpointer.resumable_callback`.
        max_skipped_share: as for :func:`metatele.meta.train.meta_train` (every rank's, so that
            all stop alike; ``rank0_train`` must pass the same to ``meta_train``).

    Returns:
        The :class:`metatele.meta.train.MetaTrainResult` (its history is this rank's view: global
        meta-loss and gradient norm, this rank's divergence counts).
    """
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = rank_device(config, local_rank)
    rank, _ = init_distributed(device, backend, timeout_s)
    try:
        comm = DataParallel(device, timeout_s)
        engine, callback = resumable_callback(config, Path(out), resume=resume, every=every, keep=keep,
                                              comm=comm, device=device, overwrite=overwrite)
        try:
            result = _train_rank(rank, config, engine, callback, rank0_train, progress, max_skipped_share)
        finally:
            callback.finish()
        comm.barrier()  # leave together, once rank 0 has written the final files
        return result
    finally:
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


def _train_rank(rank: int, config: MetaTrainConfig, engine: UnrollEngine | None, callback: TrainingCheckpointer,
                rank0_train: Rank0Train | None, progress: bool, max_skipped_share: float) -> MetaTrainResult:
    if rank == 0 and rank0_train is not None:
        return rank0_train(config, callback=callback, engine=engine)
    return meta_train(config, progress=progress and rank == 0, callback=callback, engine=engine,
                      max_skipped_share=max_skipped_share)
