"""Checkpoints of learned optimizers: one safetensors file, JSON metadata, no pickle.

A checkpoint is a single ``.safetensors`` file. Its tensors are the meta-parameters
(``LearnedOptimizer.state_dict()``); its header metadata holds one JSON document::

    {"format": "metatele-checkpoint", "format_version": 1,
     "config": MetaTrainConfig.to_dict(),
     "provenance": {"training_seeds": [[start, end), ...], "meta_seed", "meta_steps", ...,
                    "metatele_version", "git_commit", "torch_version", "created"},
     "evaluation": {...} or null,
     "tensors": {"count", "parameters", "dtype"},
     "payload_sha256": sha256 over every tensor's name, dtype, shape and bytes}

and, beside it, ``metatele_sha256`` (the hash of that JSON text), so a flipped byte anywhere in
the file is caught: in the header as a parse or hash error, in the data as a payload mismatch.

Loading never unpickles anything: the file is parsed as safetensors, and a pickle or a
``torch.save`` archive is recognised by its first bytes and refused before any of it is read as
Python objects. Writes go to a temporary file in the target's directory, are fsynced, and then
``os.replace`` it, so a crash midway leaves any previous checkpoint intact.

:func:`metatele.release.manifest.write_manifest` writes the small JSON manifest shipped beside checkpoints (config, seeds,
measured metrics, sha256 of each file) and :func:`metatele.release.manifest.verify_manifest` checks files against it.
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import platform
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import torch

from ..configs import ConfigError, to_dict
from ..optimizers.learned import LearnedOptimizer
from ..tasks.family import TEST_SEED_OFFSET, TaskConfig
from ..meta.config import MetaTrainConfig

FORMAT = "metatele-checkpoint"
FORMAT_VERSION = 1
_META_KEY = "metatele"
_META_HASH_KEY = "metatele_sha256"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit on the header size

PathLike = str | os.PathLike


class CheckpointError(ValueError):
    """A checkpoint or manifest is missing, damaged, of an unknown format, or does not fit."""


@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        optimizer: the learned optimizer with the saved meta-parameters (eval mode).
        config: the meta-training config it was trained with.
        provenance: training seeds, meta-steps, versions, git commit, creation time.
        evaluation: the evaluation summary stored with it (``None`` if none).
        manifest: the complete metadata document of the file.
        path: where it was read from.
    """

    optimizer: LearnedOptimizer
    config: MetaTrainConfig
    provenance: dict[str, Any]
    evaluation: dict[str, Any] | None
    manifest: dict[str, Any]
    path: Path = field(default_factory=Path)

    @property
    def training_seeds(self) -> list[range]:
        """The training seeds as ``range`` objects (``[start, end)`` each)."""
        return [range(a, b) for a, b in self.provenance.get("training_seeds") or []]


# -- helpers ---------------------------------------------------------------------------------
def _git(path: PathLike | None, *args: str) -> str | None:
    """Output of ``git -C path args`` (default: this package's folder); ``None`` on any failure."""
    where = Path(path) if path is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "-C", str(where), *args], capture_output=True, text=True, timeout=5, check=False)
    except Exception:  # noqa: BLE001 - provenance must never fail a save
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def git_commit(path: PathLike | None = None) -> str | None:
    """``git rev-parse HEAD`` of the repository holding ``path`` (default: this package).

    Returns ``None`` when git is missing, ``path`` is not in a repository, or anything fails.
    """
    commit = _git(path, "rev-parse", "HEAD")
    return commit if commit and len(commit) >= 40 else None


def _git_dirty(path: PathLike | None = None) -> bool | None:
    """Whether tracked files differ from ``HEAD`` (``None`` when unknown)."""
    status = _git(path, "status", "--porcelain", "--untracked-files=no")
    return None if status is None else bool(status)


def seed_ranges(seeds: Iterable[int] | range | Sequence[Sequence[int]]) -> list[list[int]]:
    """Normalise seeds to sorted, merged ``[start, end)`` pairs.

    Accepts a ``range``, a ``(start, end)`` tuple of two integers (what
    ``engine.trained_seed_range`` returns), a list or other iterable of integer seeds, or a list
    of ``[start, end)`` pairs / ranges. Large ranges are never expanded.
    """
    if isinstance(seeds, tuple) and len(seeds) == 2 and all(isinstance(s, int) for s in seeds):
        seeds = [seeds]
    if isinstance(seeds, range):
        seeds = [seeds] if seeds.step == 1 else list(seeds)
    intervals: list[tuple[int, int]] = []
    for s in seeds:
        if isinstance(s, range):
            if s.step != 1:
                intervals.extend((int(x), int(x) + 1) for x in s)
            elif len(s):
                intervals.append((s.start, s.stop))
        elif isinstance(s, (list, tuple)):
            if len(s) != 2 or int(s[1]) < int(s[0]):
                raise ValueError(f"seed range must be [start, end) with start <= end, got {list(s)}")
            if int(s[1]) > int(s[0]):
                intervals.append((int(s[0]), int(s[1])))
        else:
            intervals.append((int(s), int(s) + 1))
    out: list[list[int]] = []
    for a, b in sorted(intervals):
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out


def _jsonable(value: Any) -> Any:
    """Plain-JSON version of ``value`` (tensors, numpy values, ranges, paths, dataclasses)."""
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, range):
        return seed_ranges(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if torch.is_tensor(value):
        return value.detach().cpu().tolist()
    if hasattr(value, "tolist"):  # numpy arrays and scalars
        return value.tolist()
    if hasattr(value, "__dataclass_fields__"):
        return to_dict(value)
    raise TypeError(f"cannot store a {type(value).__name__} in checkpoint metadata: {value!r}")


def _dumps(doc: Any) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"))


def payload_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over every tensor's name, dtype, shape and bytes, in sorted name order."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}\0{str(t.dtype).removeprefix('torch.')}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def verified_tensors(data: bytes, sha256: str, where: str, error: type[Exception] = CheckpointError,
                     word: str = "corrupted") -> dict[str, torch.Tensor]:
    """The tensors of a safetensors payload, checked against their recorded ``sha256``.

    Raises ``error`` ("<where> is <word>: ...") when the payload cannot be read or does not match.
    """
    from safetensors.torch import load

    try:
        tensors = load(data)
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error types
        raise error(f"{where} is {word}: cannot read its tensors ({e})") from None
    if payload_sha256(tensors) != sha256:
        raise error(f"{where} is {word}: its tensors do not match the recorded sha256")
    return tensors


def file_sha256(path: PathLike) -> str:
    """sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a fsynced temporary file and ``os.replace``.

    A failure at any point (full disk, kill) leaves whatever was at ``path`` before untouched and
    removes the temporary file. The file gets the usual permissions (``0o666`` less the umask).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with open(tmp, "wb") as f:
            for i in range(0, len(data), 1 << 22):
                f.write(data[i:i + (1 << 22)])
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    try:  # make the rename itself durable (best effort; not possible on every platform)
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def _encode(tensors: Mapping[str, torch.Tensor], doc: dict[str, Any]) -> bytes:
    """The bytes of a checkpoint file: safetensors with the JSON document and its hash."""
    from safetensors.torch import save

    text = _dumps(doc)
    metadata = {
        "format": FORMAT,
        _META_KEY: text,
        _META_HASH_KEY: hashlib.sha256(text.encode()).hexdigest(),
    }
    return save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)


# -- save ------------------------------------------------------------------------------------
def save_checkpoint(
    path: PathLike,
    optimizer: LearnedOptimizer,
    config: MetaTrainConfig,
    provenance: dict[str, Any] | None = None,
    evaluation: dict[str, Any] | None = None,
) -> Path:
    """Write ``optimizer``'s meta-parameters and metadata to ``path`` atomically.

    Args:
        path: the file to write (``.safetensors`` by convention); parent folders are created.
        optimizer: the learned optimizer; it must have been built from ``config.task`` and
            ``config.learned`` (the loader rebuilds it from them).
        config: the meta-training config.
        provenance: extra provenance merged over the defaults. ``training_seeds`` (a ``range``,
            a ``(start, end)`` tuple, a list of seeds or of ``[start, end)`` pairs; default
            ``[train_seed_start, train_seed_start + trajectories)``) is stored as ``[start, end)``
            pairs and must lie in the training split; ``meta_steps`` (default ``None``) should be
            the meta-steps actually taken.
        evaluation: a JSON-able evaluation summary (tensors and numpy values are converted).

    Returns:
        The path written.

    Raises:
        CheckpointError: the optimizer does not match ``config``, or the training seeds include
            unseen test seeds.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory; give the checkpoint's file name, e.g. {path / 'optimizer.safetensors'}")
    if [tuple(s) for s in optimizer.task.weight_shapes] != [tuple(s) for s in config.task.weight_shapes]:
        raise CheckpointError(
            f"optimizer was built for task dims {optimizer.task.dims} but config.task.dims is {config.task.dims}"
        )
    if to_dict(optimizer.config) != to_dict(config.learned):
        raise CheckpointError(
            f"optimizer.config {to_dict(optimizer.config)} differs from config.learned "
            f"{to_dict(config.learned)}; the loader rebuilds the optimizer from config.learned"
        )
    provenance = dict(provenance or {})
    seeds = provenance.pop(
        "training_seeds", range(config.train_seed_start, config.train_seed_start + config.trajectories)
    )
    ranges = seed_ranges(seeds)
    outside = [r for r in ranges if r[0] < 0 or r[1] > TEST_SEED_OFFSET]
    if outside:
        raise CheckpointError(
            f"training_seeds {outside} leave the training split [0, {TEST_SEED_OFFSET}); seeds from "
            "the unseen test split must never be trained on"
        )
    tensors = {k: v.detach().cpu().contiguous() for k, v in optimizer.state_dict().items()}
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    prov = {
        "training_seeds": ranges,
        "n_training_seeds": sum(b - a for a, b in ranges),
        "meta_seed": config.seed,
        "meta_steps": None,
        "meta_steps_planned": config.meta_steps,
        "metatele_version": _version(),
        "git_commit": git_commit(),
        "git_dirty": _git_dirty(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    prov.update(_jsonable(provenance))
    doc = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": config.to_dict(),
        "provenance": prov,
        "evaluation": _jsonable(evaluation) if evaluation is not None else None,
        "tensors": {
            "count": len(tensors),
            "parameters": sum(t.numel() for t in tensors.values()),
            "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        },
        "payload_sha256": payload_sha256(tensors),
    }
    atomic_write(path, _encode(tensors, doc))
    return path


def _version() -> str:
    from .._version import __version__

    return __version__


# -- load ------------------------------------------------------------------------------------
def _read_document(path: Path) -> tuple[bytes, dict[str, Any]]:
    """Read the file and return its bytes and verified metadata document (tensors unchecked)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    data = path.read_bytes()
    if len(data) <= 8:
        raise CheckpointError(f"{path} is truncated or not a checkpoint: {len(data)} bytes")
    (n,) = struct.unpack("<Q", data[:8])
    if n > _MAX_HEADER or data[8:9] != b"{":  # not safetensors: say what it is, never parse it
        if data[:4] == b"PK\x03\x04":
            raise CheckpointError(
                f"{path} is a zip archive (the torch.save format, which holds a pickle); metatele "
                "never unpickles files. Checkpoints are safetensors files written by save_checkpoint()"
            )
        if data[0] == 0x80 and 2 <= data[1] <= 5:
            raise CheckpointError(
                f"{path} is a Python pickle; metatele never unpickles files (it could run arbitrary "
                "code). Checkpoints are safetensors files written by save_checkpoint()"
            )
        raise CheckpointError(
            f"{path} is not a safetensors checkpoint (corrupted, or a foreign file such as a "
            "pickle, which metatele never unpickles)"
        )
    if n > len(data) - 8:
        raise CheckpointError(f"{path} is truncated: its header needs {n} bytes, the file has {len(data) - 8}")
    try:
        header = json.loads(data[8:8 + n].decode("utf-8"))
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
        meta = header.get("__metadata__") or {}
        ends = [int(v["data_offsets"][1]) for k, v in header.items() if k != "__metadata__"]
    except (UnicodeDecodeError, ValueError, TypeError, KeyError, IndexError) as e:
        raise CheckpointError(f"{path} is corrupted: cannot parse its header ({e})") from None
    if meta.get("format") != FORMAT or _META_KEY not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not a metatele checkpoint (no '{FORMAT}' metadata)")
    size = len(data) - 8 - n
    need = max(ends, default=0)
    if size < need:
        raise CheckpointError(f"{path} is truncated: the tensors need {need} bytes after the header, the file has {size}")
    if size > need:
        raise CheckpointError(f"{path} is corrupted: {size - need} unexpected bytes after the tensors")
    text = meta[_META_KEY]
    if hashlib.sha256(text.encode()).hexdigest() != meta.get(_META_HASH_KEY):
        raise CheckpointError(f"{path} is corrupted: its metadata does not match the recorded sha256")
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise CheckpointError(f"{path} is corrupted: cannot parse its metadata ({e})") from None
    version = doc.get("format_version")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}; this metatele ({_version()}) reads "
            f"version {FORMAT_VERSION}"
        )
    for key in ("config", "provenance", "payload_sha256"):
        if key not in doc:
            raise CheckpointError(f"{path} is missing metadata field '{key}'")
    return data, doc


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The verified metadata document of a checkpoint, without building the optimizer."""
    return _read_document(Path(path))[1]


def _check_task(path: Path, trained: MetaTrainConfig, task: TaskConfig) -> None:
    if trained.learned.arch != "paper":  # shared per-coordinate networks run on any task
        return
    if [tuple(s) for s in task.weight_shapes] != [tuple(s) for s in trained.task.weight_shapes]:
        raise CheckpointError(
            f"{path} was trained on task dims {trained.task.dims} (weight shapes "
            f"{trained.task.weight_shapes}); it cannot run on the requested task dims {task.dims} "
            f"(weight shapes {task.weight_shapes}): the paper architecture's LSTMs read and write "
            "vectors of one network's size. A learned.arch: coordinatewise checkpoint runs on any network"
        )


def load_checkpoint(path: PathLike, task: TaskConfig | None = None, device: torch.device | str | None = None) -> Checkpoint:
    """Read, verify and rebuild a checkpoint written by :func:`save_checkpoint`.

    Args:
        path: the checkpoint file.
        task: if given, the task the optimizer will run on. For the ``paper`` architecture its
            weight shapes (``dims[1:]`` and ``bias``) must equal the training task's; the sample
            count ``n`` and the distribution may differ (evaluation off the training
            distribution), and ``optimizer.task`` stays the training task. A ``coordinatewise``
            optimizer is built for ``task`` whatever its sizes (``optimizer.task`` is ``task``).
        device: where to put the meta-parameters (default: CPU). Their dtype is the saved one.

    Raises:
        CheckpointError: missing or truncated file, corrupted bytes, a pickle or ``torch.save``
            file, an unknown format version, an invalid config, missing/unexpected tensors or
            wrong shapes, or a task whose dims do not fit.
    """
    path = Path(path)
    data, doc = _read_document(path)
    try:
        config = MetaTrainConfig.from_dict(doc["config"])
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an invalid config: {e}") from None
    if task is not None:
        _check_task(path, config, task)
    tensors = verified_tensors(data, doc["payload_sha256"], str(path))
    build_for = task if task is not None and config.learned.arch == "coordinatewise" else config.task
    with torch.random.fork_rng(devices=[]):  # building must not consume the caller's random stream
        optimizer = LearnedOptimizer(build_for, config.learned)
    expected = optimizer.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{path} does not match its config ({config.learned.variant}, hidden "
            f"{config.learned.lstm.hidden}): missing tensors {missing}, unexpected tensors {unexpected}"
        )
    wrong = [f"{k}: saved {tuple(tensors[k].shape)}, config builds {tuple(v.shape)}"
             for k, v in expected.items() if tuple(tensors[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{path} does not match its config: wrong tensor shapes: " + "; ".join(wrong))
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) == 1:
        optimizer.to(dtypes.pop())
    optimizer.load_state_dict(tensors)
    if device is not None:
        optimizer.to(device)
    optimizer.eval()
    evaluation = doc.get("evaluation")
    return Checkpoint(optimizer, config, doc["provenance"], evaluation, doc, path)


def load_optimizer(
    path: PathLike, task: TaskConfig | None = None, device: torch.device | str | None = None
) -> LearnedOptimizer:
    """The learned optimizer stored at ``path`` (see :func:`load_checkpoint`)."""
    return load_checkpoint(path, task=task, device=device).optimizer
