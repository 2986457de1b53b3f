"""Resumable meta-training: periodic, atomic checkpoints of the whole training state.

``metatele train --out DIR --save-every k --keep N`` writes ``DIR/training_state/state-XXXXXXXX.safetensors``
every ``k`` meta-steps (the number is the meta-step), at the end of the run, and when SIGINT or
SIGTERM arrives (the current meta-step finishes first; a second signal aborts without saving).
``--resume`` continues from the newest file that loads cleanly, bit for bit on the same machine:
the result equals an uninterrupted run, only the work after the last checkpoint is redone.

A training-state file holds the meta-parameters, the Adam state, every trajectory (weights, data,
LSTM states, seeds, steps done), the torch and numpy RNG states, the host counters, the config and
the metrics history so far. It is a safetensors file whose header carries one JSON document (and
its sha256); a sha256 over the tensors catches damaged bytes. Loading never unpickles anything.

Crash safety: a file is written to a temporary name, fsynced and renamed (``os.replace``), so a
checkpoint is either complete or absent; the loader takes the newest file that verifies, so a
damaged newest file falls back to the one before. Only the newest ``keep`` files are kept. A state
whose meta-parameters or Adam moments are non-finite, or one taken while every trajectory is
diverging, is never written: the last good checkpoint stays the newest.

Data-parallel runs (:mod:`metatele.meta.distributed`) pass ``comm``: every rank's trajectories are
gathered to rank 0, which alone writes; on resume rank 0 reads the file and broadcasts it.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import signal
import struct
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np
import torch

from ..release.checkpoint import CheckpointError, atomic_write, payload_sha256, verified_tensors
from ..configs import ConfigError, to_dict
from .engine import UnrollEngine
from .config import MetaTrainConfig

FORMAT = "metatele-training-state"
FORMAT_VERSION = 1
STATE_DIR = "training_state"
#: config keys that may change on resume (they do not change what is computed)
RESUME_MUTABLE = ("device", "log_every")
_NAME = re.compile(r"^state-(\d{8,})\.safetensors$")
_DOC_KEY, _HASH_KEY = "metatele_training_state", "metatele_training_state_sha256"
_SHARED = ("optimizer", "meta_opt")  # identical on every rank: stored once


class ResumeError(ValueError):
    """A training state cannot be written, found, read, or does not fit the run."""


def _say(msg: str) -> None:
    print(f"metatele: {msg}", file=sys.stderr, flush=True)


# -- pickle-free encoding of nested states ----------------------------------------------------
def _pack(obj: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Nested dicts/lists/tuples of tensors, numpy arrays and scalars → JSON tree + tensors."""
    if torch.is_tensor(obj):
        name = f"t{len(tensors)}"
        tensors[name] = obj.detach().to("cpu", copy=True).contiguous()
        return {"__tensor__": name}
    if isinstance(obj, np.ndarray):
        name = f"t{len(tensors)}"
        tensors[name] = torch.from_numpy(obj.copy())
        return {"__ndarray__": name}
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple):
        return {"__tuple__": [_pack(v, tensors) for v in obj]}
    if isinstance(obj, list):
        return [_pack(v, tensors) for v in obj]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _pack(v, tensors) for k, v in obj.items()}
        return {"__items__": [[_pack(k, tensors), _pack(v, tensors)] for k, v in obj.items()]}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} in a training state: {obj!r}")


def _unpack(tree: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(tree, list):
        return [_unpack(v, tensors) for v in tree]
    if isinstance(tree, dict):
        if "__tensor__" in tree:
            return tensors[tree["__tensor__"]]
        if "__ndarray__" in tree:
            return tensors[tree["__ndarray__"]].numpy()
        if "__tuple__" in tree:
            return tuple(_unpack(v, tensors) for v in tree["__tuple__"])
        if "__items__" in tree:
            return {_unpack(k, tensors): _unpack(v, tensors) for k, v in tree["__items__"]}
        return {k: _unpack(v, tensors) for k, v in tree.items()}
    return tree


def encode(doc: dict[str, Any], state: Any) -> bytes:
    """Bytes of a training-state file: ``state``'s tensors, and ``doc`` plus its JSON tree."""
    from safetensors.torch import save

    tensors: dict[str, torch.Tensor] = {}
    tree = _pack(state, tensors)
    text = json.dumps({**doc, "format": FORMAT, "format_version": FORMAT_VERSION, "state": tree,
                       "payload_sha256": payload_sha256(tensors)}, separators=(",", ":"))
    meta = {"format": FORMAT, _DOC_KEY: text, _HASH_KEY: hashlib.sha256(text.encode()).hexdigest()}
    return save(tensors, metadata=meta)


def decode(data: bytes, where: str = "training state") -> tuple[dict[str, Any], Any]:
    """``(doc, state)`` from :func:`encode`'s bytes, verified; never unpickles.

    Raises:
        ResumeError: truncated, damaged, foreign (e.g. a pickle) or of an unknown version.
    """
    if len(data) < 10:
        raise ResumeError(f"{where} is truncated ({len(data)} bytes)")
    (n,) = struct.unpack("<Q", data[:8])
    if n > len(data) - 8 or data[8:9] != b"{":
        raise ResumeError(f"{where} is truncated or not a safetensors file (never unpickled)")
    try:
        meta = json.loads(data[8:8 + n].decode("utf-8")).get("__metadata__") or {}
        text = meta[_DOC_KEY]
    except (ValueError, KeyError, AttributeError, UnicodeDecodeError) as e:
        raise ResumeError(f"{where} is damaged or not a metatele training state ({e!r})") from None
    if hashlib.sha256(text.encode()).hexdigest() != meta.get(_HASH_KEY):
        raise ResumeError(f"{where} is damaged: its metadata does not match the recorded sha256")
    doc = json.loads(text)
    if doc.get("format") != FORMAT or doc.get("format_version") != FORMAT_VERSION:
        raise ResumeError(f"{where} has format {doc.get('format')!r} version {doc.get('format_version')!r}; "
                          f"this metatele reads {FORMAT!r} version {FORMAT_VERSION}")
    tensors = verified_tensors(data, doc["payload_sha256"], where, ResumeError, "damaged")
    return doc, _unpack(doc.pop("state"), tensors)


def rank_state(engine: UnrollEngine) -> dict[str, Any]:
    """This rank's part of :meth:`UnrollEngine.state_dict` (trajectories, RNGs, counters)."""
    sd = engine.state_dict()
    sd["numpy_rng"] = json.loads(json.dumps(sd["numpy_rng"]))  # plain dict (128-bit ints stay exact)
    return {k: v for k, v in sd.items() if k not in _SHARED}


# -- files -------------------------------------------------------------------------------------
def state_files(out: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(meta_step, path)`` of the training-state files in ``out``, newest first."""
    folder = Path(out) / STATE_DIR
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found, reverse=True)


def latest_state(out: str | os.PathLike, quarantine: bool = True) -> tuple[Path, bytes, dict[str, Any], Any] | None:
    """The newest training state in ``out`` that loads cleanly: ``(path, bytes, doc, state)``.

    Damaged newer files are reported and, with ``quarantine``, renamed ``*.damaged`` so that they
    leave the rotation (a run resuming from an older file must never prune good files for them).
    """
    files = state_files(out)
    for i, (_, path) in enumerate(files):
        try:
            data = path.read_bytes()
            doc, state = decode(data, str(path))
        except (OSError, ResumeError) as e:
            _say(f"skipping {path}: {e}")
            continue
        for _, bad in files[:i] if quarantine else []:
            try:
                bad.rename(bad.with_name(bad.name + ".damaged"))
            except OSError:
                pass
        return path, data, doc, state
    return None


def config_differences(saved: dict[str, Any], config: MetaTrainConfig) -> list[str]:
    """``key (saved A, now B)`` for every config key that differs (``RESUME_MUTABLE`` ignored)."""
    def flat(d: Any, prefix: str = "") -> dict[str, Any]:
        if not isinstance(d, dict):
            return {prefix: d}
        out: dict[str, Any] = {}
        for k, v in d.items():
            out.update(flat(v, f"{prefix}.{k}" if prefix else k))
        return out

    a, b = flat(saved), flat(to_dict(config))
    return [f"{k} (saved {a.get(k, '<absent>')!r}, now {b.get(k, '<absent>')!r})"
            for k in sorted(set(a) | set(b)) if k not in RESUME_MUTABLE and a.get(k) != b.get(k)]


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
        _say(f"received {signal.Signals(signum).name}: finishing this meta-step, then saving the "
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
    """

    def __init__(self, config: MetaTrainConfig, out: str | os.PathLike, every: int = 50, keep: int = 3,
                 history: list[dict[str, Any]] | None = None, comm: Comm | None = None,
                 handle_signals: bool = True) -> None:
        self.config, self.every, self.keep, self.comm = config, every, keep, comm
        self.folder = Path(out) / STATE_DIR
        self.history: list[dict[str, Any]] = list(history or [])
        self.is_writer = comm is None or comm.rank == 0
        self.saved_step: int | None = None
        self._pending = False
        self.stop = StopSignal()
        if handle_signals:
            self.stop.install()

    # the callback
    def __call__(self, engine: UnrollEngine, metrics: dict[str, Any]) -> None:
        self.history.append(metrics)
        step, total = engine.meta_step_count, self.config.meta_steps
        stop = self.comm.stop_requested if self.comm is not None else bool(self.stop.signum)
        self._pending |= step % self.every == 0 or step >= total or stop
        if self._pending and engine.checkpointable:
            try:
                self.save(engine)
            except BaseException:
                self.close()
                raise
            self._pending = False
        if stop:
            self.close()
            signum = self.stop.signum or signal.SIGTERM
            where = (f"the training state of meta-step {self.saved_step} in {self.folder}" if self.saved_step
                     else f"no new training state (the newest in {self.folder} stays)")
            if self.is_writer:
                _say(f"stopped by a signal after meta-step {step}/{total}; kept {where}. "
                     "Continue with the same command and --resume.")
            raise SystemExit(128 + signum)
        if step >= total:
            if self.comm is not None:  # the seeds any rank used, for the final checkpoint
                engine.seed_end_all_ranks = self.comm.max_int(_seed_end(engine))
            self.close()

    def close(self) -> None:
        """Restore the signal handlers that were there before."""
        self.stop.uninstall()

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
                _say(f"not saving the training state at meta-step {step}: {why or 'another rank refused'}; "
                     f"the last good checkpoint ({self.saved_step or 'none yet'}) stays the newest")
            return None
        mine = rank_state(engine)
        if self.comm is None:
            ranks = [mine]
        else:
            blobs = self.comm.gather_bytes(encode({}, mine))
            ranks = [decode(b, f"rank {r}'s state")[1] for r, b in enumerate(blobs)] if blobs is not None else []
        error = ""
        path = self.folder / f"state-{step:08d}.safetensors"
        if self.is_writer:
            sd = engine.state_dict()
            state = {"shared": {k: sd[k] for k in _SHARED}, "ranks": ranks}
            start = self.config.train_seed_start
            end = max((_seed_end_of(r, engine.world_size, start) for r in ranks), default=start)
            doc = {
                "meta_step": step, "meta_steps_planned": self.config.meta_steps,
                "world_size": engine.world_size, "config": to_dict(self.config),
                "training_seeds": [[start, end]], "history": self.history,
                "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                "torch_version": torch.__version__,
            }
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                atomic_write(path, encode(doc, state))
            except OSError as e:
                prev = f"the previous checkpoint (meta-step {self.saved_step}) is intact" if self.saved_step \
                    else "no earlier checkpoint of this run exists"
                error = f"could not write the training state {path}: {e}; {prev}"
            else:
                self._prune(keep_path=path)
        if self.comm is not None:  # every rank learns whether rank 0's write worked
            error = self.comm.broadcast_bytes(error.encode() if self.is_writer else None).decode()
        if error:
            raise ResumeError(error)
        self.saved_step = step
        return path

    def _prune(self, keep_path: Path) -> None:
        for i, (_, p) in enumerate(state_files(self.folder.parent)):
            if i >= self.keep and p != keep_path:
                try:
                    p.unlink()
                except OSError as e:
                    _say(f"could not remove old training state {p}: {e}")


def _seed_end_of(rank_sd: dict[str, Any], world_size: int, start: int) -> int:
    """One past the largest training seed a rank's saved state has used."""
    position = rank_sd["counters"]["next_seed"]
    return start if position <= start else start + (position - 1 - start) * world_size + rank_sd["rank"] + 1


def _seed_end(engine: UnrollEngine) -> int:
    return _seed_end_of({"counters": {"next_seed": engine.next_seed}, "rank": engine.rank},
                        engine.world_size, engine.config.train_seed_start)


def _check_writable(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.", suffix=".tmp")
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ResumeError(f"output folder {folder.parent} is not writable ({e}); choose another --out") from None


# -- entry point used by the CLI and the distributed launcher ------------------------------------
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

    Returns:
        ``(engine, callback)``: pass both to :func:`metatele.studies.experiment.train_and_save` or
        :func:`metatele.meta.train.meta_train`. ``engine`` is ``None`` when a single process starts
        fresh (the trainer builds it).

    Raises:
        ConfigError: ``every`` or ``keep`` below 1.
        ResumeError: ``out`` is not writable; it holds a state but ``resume`` is off; the saved
            config differs from ``config``; the state was written with another world size.
    """
    if not (isinstance(every, int) and every >= 1):
        raise ConfigError(f"--save-every: must be a positive number of meta-steps, got {every!r}")
    if not (isinstance(keep, int) and keep >= 1):
        raise ConfigError(f"--keep: must keep at least 1 checkpoint, got {keep!r}")
    out = Path(out)
    rank, world = (comm.rank, comm.world_size) if comm is not None else (0, 1)
    found, error = None, ""
    if rank == 0:
        try:
            _check_writable(out / STATE_DIR)
            for stale in (out / STATE_DIR).glob(".state-*.tmp"):  # left by a killed writer
                stale.unlink(missing_ok=True)
            found = latest_state(out) if resume else None
            if resume and found is None and state_files(out):
                raise ResumeError(f"--resume: none of the {len(state_files(out))} training states in "
                                  f"{out / STATE_DIR} loads cleanly (see above); move them away to start afresh")
            if not resume and state_files(out):
                raise ResumeError(f"{out} already holds a training state (meta-step {state_files(out)[0][0]}); "
                                  "pass --resume to continue it, or choose another --out")
            if found is not None:
                doc = found[2]
                diff = config_differences(doc["config"], config)
                if diff:
                    raise ResumeError(f"--resume: the config differs from the one the run in {out} was started "
                                      f"with: {'; '.join(diff)}. Resume with the original config, or start a "
                                      "new run in another --out")
                if doc["world_size"] != world:
                    raise ResumeError(f"--resume: {found[0]} was written by a run on {doc['world_size']} "
                                      f"rank(s); resume it on {doc['world_size']} (this run has {world})")
        except (ResumeError, CheckpointError) as e:
            error = str(e)
    data = found[1] if found is not None else b""
    if comm is not None:  # rank 0 decides; every rank gets the same verdict and bytes
        reply = comm.broadcast_bytes(b"E" + error.encode() if error else b"D" + data)
        error, data = (reply[1:].decode(), b"") if reply[:1] == b"E" else ("", reply[1:])
    if error:
        raise ResumeError(error)

    engine = None
    history: list[dict[str, Any]] = []
    if data or comm is not None:
        engine = UnrollEngine(config, device=device, rank=rank, world_size=world)
        if comm is not None:
            comm.attach(engine)
    if data:
        doc, state = found[2:] if found is not None else decode(data, "the broadcast training state")
        sd = {**state["shared"], **state["ranks"][rank]}
        try:
            engine.load_state_dict(sd)
        except (KeyError, ValueError, RuntimeError) as e:
            raise ResumeError(f"the training state does not fit this run: {e}") from None
        history = doc["history"]
        engine.prior_history = list(history)
        if rank == 0:
            _say(f"resuming from meta-step {doc['meta_step']} of {config.meta_steps} "
                 f"({found[0] if found is not None else 'training state'})")
    elif resume and rank == 0:
        _say(f"--resume: no training state in {out / STATE_DIR}; starting a fresh run")
    if comm is not None:
        comm.check_identical(engine.meta_parameters)
    callback = TrainingCheckpointer(config, out, every=every, keep=keep, history=history, comm=comm,
                                    handle_signals=handle_signals)
    if comm is not None:  # a signal to this rank stops every rank (agreed in stats_reducer)
        comm.local_stop = lambda: bool(callback.stop.signum)
    if data:
        callback.saved_step = engine.meta_step_count
    return engine, callback


def load_training_state(out: str | os.PathLike, config: MetaTrainConfig | None = None,
                        device: torch.device | str | None = None) -> tuple[UnrollEngine, dict[str, Any]]:
    """The engine (single process) restored from the newest training state in ``out``, and its doc.

    ``config`` defaults to the saved one. Raises :class:`ResumeError` if none loads.
    """
    found = latest_state(out, quarantine=False)
    if found is None:
        raise ResumeError(f"no training state that loads cleanly in {Path(out) / STATE_DIR}")
    path, _, doc, state = found
    config = config or MetaTrainConfig.from_dict(doc["config"])
    if doc["world_size"] != 1:
        raise ResumeError(f"{path} holds {doc['world_size']} ranks' states; load it with metatele.meta.distributed")
    engine = UnrollEngine(config, device=device)
    engine.load_state_dict({**state["shared"], **state["ranks"][0]})
    engine.prior_history = list(doc["history"])
    return engine, doc


