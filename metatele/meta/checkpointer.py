"""The run lifecycle of resumable meta-training: periodic checkpoints, signals, ``--resume``.

``metatele train --out DIR --save-every k --keep N`` writes a training state
(:mod:`metatele.meta.state`) every ``k`` meta-steps, at the end of the run, and when SIGINT or
SIGTERM arrives (the current meta-step finishes first; a second signal aborts without saving).
``--resume`` continues from the newest file that loads cleanly, bit for bit on the same machine:
the result equals an uninterrupted run, only the work after the last checkpoint is redone.

Crash safety: files are written atomically (a checkpoint is either complete or absent), and the
loader takes the newest file that verifies, so a damaged newest file falls back to the one
before. Only the newest ``keep`` files are kept. A state whose meta-parameters or Adam moments
are non-finite, or one taken while every trajectory is diverging, is never written: the last good
checkpoint stays the newest.

One run at a time: :func:`resumable_callback` locks the folder (:class:`metatele.storage.output.FolderLock`)
until :meth:`TrainingCheckpointer.finish`, so a second run into it refuses at once, naming the first
one's pid; the lock of a killed run is taken over. A finished run's checkpoint is never replaced
unless the caller says ``overwrite``.

Data-parallel runs (:mod:`metatele.meta.distributed`) pass ``comm``: every rank's trajectories are
gathered to rank 0, which alone writes; on resume rank 0 reads the file and broadcasts it.
"""
from __future__ import annotations

import datetime
import os
import signal
import threading
from pathlib import Path
from typing import Any, Callable, Protocol

import torch

from ..configs import ConfigError, to_dict
from ..storage.container import atomic_write
from ..storage.jsonable import to_json
from ..storage.output import FolderLock, OutputFolderError, check_output_folder
from .config import MetaTrainConfig
from .engine import UnrollEngine
from .mixture import build_engine
from .state import (CHECKPOINT_FILE, SHARED, STATE_DIR, ResumeError, config_differences, decode, encode, latest_state, rank_state,
                    say, state_files)
from .schedules import seed_end
from .warmstart import warm_start


# -- signals -----------------------------------------------------------------------------------
class StopSignal:
    """SIGINT/SIGTERM → a flag checked after each meta-step; a second signal aborts at once."""

    def __init__(self) -> None:
        self.signum = 0
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signal handlers can only be set from the main thread
        for s in (signal.SIGINT, signal.SIGTERM):
            self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum: int, frame: Any) -> None:
        if self.signum:  # second signal: give up without saving
            self.uninstall()
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            raise SystemExit(128 + signum)
        self.signum = signum
        say(f"received {signal.Signals(signum).name}: finishing this meta-step, then saving the "
            "training state (signal again to abort without saving)")

    def uninstall(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous.clear()


class Comm(Protocol):
    """What the checkpointer needs from a data-parallel group (see :mod:`metatele.meta.distributed`)."""

    rank: int
    world_size: int
    stop_requested: bool  # some rank received a stop signal (agreed once per meta-step)
    local_stop: Callable[[], bool]  # whether this rank received one (set by resumable_callback)

    def gather_bytes(self, data: bytes) -> list[bytes] | None: ...
    def broadcast_bytes(self, data: bytes | None) -> bytes: ...
    def all_true(self, flag: bool) -> bool: ...
    def max_int(self, value: int) -> int: ...
    def attach(self, engine: UnrollEngine) -> None: ...
    def check_identical(self, params: list[torch.nn.Parameter]) -> None: ...


# -- the checkpointer --------------------------------------------------------------------------
class TrainingCheckpointer:
    """The ``meta_train`` callback that saves the training state.

    Args:
        config: the run's config (stored in every file, checked on resume).
        out: the run's folder; files go to ``out/training_state``.
        every: meta-steps between checkpoints.
        keep: newest checkpoints kept.
        history: metrics of the meta-steps before this process (resumed runs).
        comm: a data-parallel group; ``None`` for one process.
        handle_signals: turn SIGINT/SIGTERM into "save, then exit with 128 + signal".
        lock: the held lock on ``out``, released by :meth:`finish`.
    """

    def __init__(self, config: MetaTrainConfig, out: str | os.PathLike, every: int = 50, keep: int = 3,
                 history: list[dict[str, Any]] | None = None, comm: Comm | None = None,
                 handle_signals: bool = True, lock: FolderLock | None = None) -> None:
        self.config, self.every, self.keep, self.comm, self.lock = config, every, keep, comm, lock
        self.folder = Path(out) / STATE_DIR
        self.history: list[dict[str, Any]] = list(history or [])
        self.is_writer = comm is None or comm.rank == 0
        self.saved_step: int | None = None
        self.stop = StopSignal()
        if handle_signals:
            self.stop.install()

    # the callback
    def __call__(self, engine: UnrollEngine, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        step, total = engine.meta_step_count, self.config.meta_steps
        stop = self.comm.stop_requested if self.comm is not None else bool(self.stop.signum)
        if step % self.every == 0 or engine.done or stop:
            try:
                self.save(engine)
            except BaseException:
                self.close()
                raise
        if stop:
            self.close()
            signum = self.stop.signum or signal.SIGTERM
            if self.is_writer:
                say(f"stopped by a signal after meta-step {step}/{total}; kept the training state of meta-step "
                    f"{self.saved_step} in {self.folder}. Continue with the same command and --resume.")
            raise SystemExit(128 + signum)
        if engine.done:
            if self.comm is not None:  # the seeds any rank used, for the final checkpoint
                engine.seed_end_all_ranks = self.comm.max_int(
                    seed_end(engine.next_seed, engine.rank, engine.world_size, engine.config.train_seed_start))
            self.close()

    def close(self) -> None:
        """Restore the signal handlers that were there before."""
        self.stop.uninstall()

    def finish(self) -> None:
        """The run is over (its last files written, or it failed): restore the signal handlers and
        release the lock on the folder."""
        self.close()
        if self.lock is not None:
            self.lock.release()

    # saving
    def _good(self, engine: UnrollEngine) -> str | None:
        """Why the engine's state must not be saved now (``None``: it may)."""
        if engine.all_dead_streak > 0:
            return f"every trajectory diverged in the last {engine.all_dead_streak} meta-step(s)"
        for p in engine.meta_parameters:
            if not bool(torch.isfinite(p).all()):
                return "the meta-parameters are not finite"
        for st in engine.meta_opt.state.values():
            if any(torch.is_tensor(v) and not bool(torch.isfinite(v).all()) for v in st.values()):
                return "the meta-optimizer state is not finite"
        return None

    def save(self, engine: UnrollEngine) -> Path | None:
        """Write the training state now (collective with ``comm``); ``None`` if refused as bad."""
        step = engine.meta_step_count
        why = self._good(engine)
        ok = why is None if self.comm is None else self.comm.all_true(why is None)
        if not ok:
            if self.is_writer:
                say(f"not saving the training state at meta-step {step}: {why or 'another rank refused'}; "
                    f"the last good checkpoint ({self.saved_step or 'none yet'}) stays the newest")
            return None
        ranks = self._gather_ranks(engine)
        path = self.folder / f"state-{step:08d}.safetensors"
        error = self._write(engine, ranks, path) if self.is_writer else ""
        if self.comm is not None:  # every rank learns whether rank 0's write worked
            error = self.comm.broadcast_bytes(error.encode() if self.is_writer else None).decode()
        if error:
            raise ResumeError(error)
        self.saved_step = step
        return path

    def _gather_ranks(self, engine: UnrollEngine) -> list[dict[str, Any]]:
        """Every rank's :func:`rank_state` on the writer (``[]`` on the other ranks)."""
        mine = rank_state(engine)
        if self.comm is None:
            return [mine]
        blobs = self.comm.gather_bytes(encode({}, mine))
        return [decode(b, f"rank {r}'s state")[1] for r, b in enumerate(blobs)] if blobs is not None else []

    def _write(self, engine: UnrollEngine, ranks: list[dict[str, Any]], path: Path) -> str:
        """Write the file (writer only); the error message if that failed, else ``""``."""
        sd = engine.state_dict()
        start = self.config.train_seed_start
        end = max((seed_end(r["counters"]["next_seed"], r["rank"], engine.world_size, start) for r in ranks),
                  default=start)
        doc = {
            "meta_step": engine.meta_step_count, "meta_steps_planned": self.config.meta_steps,
            "world_size": engine.world_size, "config": to_dict(self.config),
            "training_seeds": [[start, end]], "history": to_json(self.history),  # strict JSON: null, not NaN
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "torch_version": torch.__version__,
        }
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            atomic_write(path, encode(doc, {"shared": {k: sd[k] for k in SHARED}, "ranks": ranks}))
        except OSError as e:
            prev = f"the previous checkpoint (meta-step {self.saved_step}) is intact" if self.saved_step \
                else "no earlier checkpoint of this run exists"
            return f"could not write the training state {path}: {e}; {prev}"
        self._prune(keep_path=path)
        return ""

    def _prune(self, keep_path: Path) -> None:
        for i, (_, p) in enumerate(state_files(self.folder.parent)):
            if i >= self.keep and p != keep_path:
                try:
                    p.unlink()
                except OSError as e:
                    say(f"could not remove old training state {p}: {e}")


# -- preparing a run ---------------------------------------------------------------------------
def _find_state(out: Path, config: MetaTrainConfig, resume: bool, world: int,
                overwrite: bool) -> tuple[Path, bytes, dict[str, Any], Any] | None:
    """Rank 0's look at ``out``: the training state to resume from (``None``: start fresh).

    Raises :class:`ResumeError` when ``out`` is not writable, holds a finished checkpoint (without
    ``overwrite``), holds a state without ``resume``, holds only damaged states, or holds a state of
    another config or world size.
    """
    if (out / CHECKPOINT_FILE).exists() and not overwrite:
        raise ResumeError(f"{out / CHECKPOINT_FILE} already holds a finished run's checkpoint; pass --overwrite to "
                          "replace it when this run ends, or choose another --out")
    try:
        check_output_folder(out / STATE_DIR, create=True)
    except OutputFolderError as e:
        raise ResumeError(str(e)) from None
    for stale in (out / STATE_DIR).glob(".state-*.tmp"):  # left by a killed writer
        stale.unlink(missing_ok=True)
    existing = state_files(out)
    if not resume:
        if existing:
            raise ResumeError(f"{out} already holds a training state (meta-step {existing[0][0]}); "
                              "pass --resume to continue it, or choose another --out")
        return None
    found = latest_state(out)
    if found is None:
        if existing:
            raise ResumeError(f"--resume: none of the {len(existing)} training states in {out / STATE_DIR} "
                              "loads cleanly (see above); move them away to start afresh")
        return None
    path, _, doc, state = found
    diff = config_differences(doc["config"], config)
    if diff:
        raise ResumeError(f"--resume: the config differs from the one the run in {out} was started "
                          f"with: {'; '.join(diff)}. Resume with the original config, or start a "
                          "new run in another --out")
    _check_budget(config, doc, state["ranks"][0].get("counters", {}), path)
    if doc["world_size"] != world:
        raise ResumeError(f"--resume: {path} was written by a run on {doc['world_size']} "
                          f"rank(s); resume it on {doc['world_size']} (this run has {world})")
    return found


def _check_budget(config: MetaTrainConfig, doc: dict[str, Any], counters: dict[str, Any], path: Path) -> None:
    """Refuse a resume whose budget is already spent, or that changes the budget of a run that has
    ended (its last state is final: it would take no further meta-step)."""
    if config.max_meta_steps is not None and doc["meta_step"] >= config.max_meta_steps:
        raise ResumeError(f"--resume: max_meta_steps={config.max_meta_steps} is spent: the training state "
                          f"{path.name} is at meta-step {doc['meta_step']}. Give a larger budget to continue")
    spent = counters.get("train_seconds", 0.0)
    if config.max_seconds is not None and spent >= config.max_seconds:
        raise ResumeError(f"--resume: max_seconds={config.max_seconds:g} is spent: the training state {path.name} "
                          f"has {spent:.0f} s of meta-training. Give a larger budget to continue")
    saved = (doc["config"].get("max_meta_steps"), doc["config"].get("max_seconds"))
    if counters.get("done") and saved != (config.max_meta_steps, config.max_seconds):
        raise ResumeError(f"--resume: the run ended at meta-step {doc['meta_step']} ({path.name} is its final "
                          "state), so a new budget cannot continue it; start a new run in another --out")


def _share_verdict(comm: Comm, error: str, data: bytes) -> tuple[str, bytes]:
    """Rank 0's ``(error, state bytes)`` on every rank."""
    reply = comm.broadcast_bytes(b"E" + error.encode() if error else b"D" + data)
    return (reply[1:].decode(), b"") if reply[:1] == b"E" else ("", reply[1:])


def resumable_callback(
    config: MetaTrainConfig,
    out: str | os.PathLike,
    resume: bool = False,
    every: int = 50,
    keep: int = 3,
    *,
    comm: Comm | None = None,
    device: torch.device | str | None = None,
    handle_signals: bool = True,
    overwrite: bool = False,
    lock: bool = True,
) -> tuple[UnrollEngine | None, TrainingCheckpointer]:
    """Prepare a (possibly resumed) meta-training run in ``out``.

    Args:
        config: the run's config.
        out: the run's folder.
        resume: continue from the newest training state in ``out`` (start fresh, with a notice,
            if there is none). Without it, ``out`` must not hold a training state already.
        every, keep: checkpoint period (meta-steps) and number of checkpoints kept.
        comm: a data-parallel group (:class:`metatele.meta.distributed.DataParallel`); the engine is
            then always built, for this rank, and attached to the group.
        device: overrides ``config.device`` for the engine.
        handle_signals: install the SIGINT/SIGTERM handlers (main thread only).
        overwrite: allow a run into a folder that holds a finished checkpoint (``CHECKPOINT_FILE``),
            which the run's end then replaces.
        lock: lock ``out`` (rank 0) until ``callback.finish()``.

    Returns:
        ``(engine, callback)``: pass both to :func:`metatele.meta.train.meta_train` (or to a
        trainer that calls it), and call ``callback.finish()`` when the run is over. ``engine`` is
        ``None`` when a single process starts fresh (the trainer builds it).

    Raises:
        ConfigError: ``every`` or ``keep`` below 1.
        ResumeError: ``out`` is not writable; another run holds its lock
            (:class:`~metatele.storage.output.FolderBusyError`'s message); it holds a finished
            checkpoint and ``overwrite`` is off; it holds a state but ``resume`` is off; the saved
            config differs from ``config``; the state was written with another world size.
    """
    if not (isinstance(every, int) and every >= 1):
        raise ConfigError(f"--save-every: must be a positive number of meta-steps, got {every!r}")
    if not (isinstance(keep, int) and keep >= 1):
        raise ConfigError(f"--keep: must keep at least 1 checkpoint, got {keep!r}")
    out = Path(out)
    rank, world = (comm.rank, comm.world_size) if comm is not None else (0, 1)

    # 1. rank 0 locks and looks at the folder; every rank gets its verdict and the state's bytes
    found, error, held = None, "", None
    if rank == 0:
        try:
            if lock:
                check_output_folder(out)
                held = FolderLock(out, "metatele train").acquire()
            found = _find_state(out, config, resume, world, overwrite)
        except (ResumeError, OutputFolderError) as e:
            error = str(e)
            if held is not None:
                held.release()
                held = None
    data = found[1] if found is not None else b""
    if comm is not None:
        error, data = _share_verdict(comm, error, data)
    if error:
        raise ResumeError(error)
    try:
        return _prepare(config, out, resume, every, keep, comm, device, handle_signals, found, data, held)
    except BaseException:
        if held is not None:
            held.release()
        raise


def _prepare(config: MetaTrainConfig, out: Path, resume: bool, every: int, keep: int, comm: Comm | None,
             device: torch.device | str | None, handle_signals: bool,
             found: tuple[Path, bytes, dict[str, Any], Any] | None, data: bytes,
             held: FolderLock | None) -> tuple[UnrollEngine | None, TrainingCheckpointer]:
    """Steps 2-4 of :func:`resumable_callback`: the engine, its restored state, the callback."""
    rank, world = (comm.rank, comm.world_size) if comm is not None else (0, 1)
    # 2. the engine: built here when resuming or data-parallel, else left to the trainer
    engine = None
    if data or comm is not None:
        engine = build_engine(config, device=device, rank=rank, world_size=world)
        if not data:  # a fresh data-parallel start (a resumed run restores its own meta-parameters)
            warm_start(engine, config)
        if comm is not None:
            comm.attach(engine)

    # 3. restore the saved state into it
    history: list[dict[str, Any]] = []
    if data:
        doc, state = found[2:] if found is not None else decode(data, "the broadcast training state")
        try:
            engine.load_state_dict({**state["shared"], **state["ranks"][rank]})
        except (KeyError, ValueError, RuntimeError) as e:
            raise ResumeError(f"the training state does not fit this run: {e}") from None
        history = doc["history"]
        engine.prior_history = list(history)
        if rank == 0:
            say(f"resuming from meta-step {doc['meta_step']} of {config.meta_steps} "
                f"({found[0] if found is not None else 'training state'})")
    elif resume and rank == 0:
        say(f"--resume: no training state in {out / STATE_DIR}; starting a fresh run")
    if comm is not None:
        comm.check_identical(engine.meta_parameters)

    # 4. the callback that saves from now on
    callback = TrainingCheckpointer(config, out, every=every, keep=keep, history=history, comm=comm,
                                    handle_signals=handle_signals, lock=held)
    if comm is not None:  # a signal to this rank stops every rank (agreed in stats_reducer)
        comm.local_stop = lambda: bool(callback.stop.signum)
    if data:
        callback.saved_step = engine.meta_step_count
    return engine, callback
