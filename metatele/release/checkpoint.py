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

The file format (safetensors + one JSON document, never unpickled, written atomically) is the
generic container of :mod:`metatele.storage.container`; this module adds what a checkpoint holds.

:func:`metatele.release.manifest.write_manifest` writes the small JSON manifest shipped beside checkpoints (config, seeds,
measured metrics, sha256 of each file) and :func:`metatele.release.manifest.verify_manifest` checks files against it.
"""
from __future__ import annotations

import datetime
import platform
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from .._version import __version__
from ..configs import ConfigError, to_dict
from ..meta.config import MetaTrainConfig
from ..optimizers.coordinatewise_step import SAFEGUARD_KEYS
from ..optimizers.learned import LearnedOptimizer
from ..storage.container import Container, ContainerError, PathLike, atomic_write
from ..storage.jsonable import to_json
from ..storage.provenance import git_commit, git_dirty
from ..tasks.family import TEST_SEED_OFFSET, TaskConfig
from .pretrained import REGISTRY, resolve_checkpoint

FORMAT = "metatele-checkpoint"
FORMAT_VERSION = 1
#: the container of a checkpoint: its JSON document is under the header key ``metatele``
CONTAINER = Container(FORMAT, FORMAT_VERSION, key="metatele", what="checkpoint", writer="save_checkpoint()",
                      sort_keys=True)


class CheckpointError(ContainerError):
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
        CheckpointError: the optimizer does not match ``config``, its meta-parameters are not
            finite, or the training seeds include unseen test seeds.
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
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not bool(torch.isfinite(t).all())]
    if bad:
        raise CheckpointError(f"not saving {path}: the meta-parameters {bad[:3]}{' ...' if len(bad) > 3 else ''} "
                              "are not finite")
    dtypes = sorted({str(t.dtype).removeprefix("torch.") for t in tensors.values()})
    prov = {
        "training_seeds": ranges,
        "n_training_seeds": sum(b - a for a, b in ranges),
        "meta_seed": config.seed,
        "meta_steps": None,
        "meta_steps_planned": config.meta_steps,
        "metatele_version": __version__,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "torch_version": torch.__version__,
        "python_version": platform.python_version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    prov.update(to_json(provenance, nonfinite_to_none=False))
    doc = {
        "config": config.to_dict(),
        "provenance": prov,
        "evaluation": to_json(evaluation, nonfinite_to_none=False) if evaluation is not None else None,
        "tensors": {
            "count": len(tensors),
            "parameters": sum(t.numel() for t in tensors.values()),
            "dtype": dtypes[0] if len(dtypes) == 1 else dtypes,
        },
    }
    atomic_write(path, CONTAINER.encode(tensors, doc))
    return path


# -- load ------------------------------------------------------------------------------------
def _read_document(path: Path) -> tuple[bytes, dict[str, Any]]:
    """Read the file and return its bytes and verified metadata document (tensors unchecked)."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path} (a file, or a shipped optimizer: {', '.join(REGISTRY)})")
    data = CONTAINER.read_bytes(path, CheckpointError)
    doc = CONTAINER.document(data, str(path), CheckpointError)
    for key in ("config", "provenance"):
        if key not in doc:
            raise CheckpointError(f"{path} is missing metadata field '{key}'")
    return data, doc


def read_metadata(path: PathLike) -> dict[str, Any]:
    """The verified metadata document of a checkpoint (a file or a shipped name), without building
    the optimizer."""
    return _read_document(resolve_checkpoint(path))[1]


def written_by(provenance: dict[str, Any]) -> str:
    """``"; it was written by metatele V (git C), ..."``: the end of the error for a checkpoint whose
    architecture this metatele no longer builds."""
    commit = provenance.get("git_commit")
    return (f"; it was written by metatele {provenance.get('metatele_version', '(unknown version)')}"
            + (f" (git {commit[:12]})" if commit else "")
            + f", whose architecture this metatele ({__version__}) no longer builds: use that version, "
            "or retrain it with the command in its manifest")


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
        path: the checkpoint file, or the name of an optimizer shipped with the package
            (``metatele pretrained`` lists them; a file that exists wins).
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
    path = resolve_checkpoint(path)
    data, doc = _read_document(path)
    try:
        config = MetaTrainConfig.from_saved(doc["config"])
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path} holds an invalid config: {e}") from None
    if task is not None:
        _check_task(path, config, task)
    tensors = CONTAINER.tensors(data, doc, str(path), CheckpointError)
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
            + written_by(doc["provenance"])
        )
    wrong = [f"{k}: saved {tuple(tensors[k].shape)}, config builds {tuple(v.shape)}"
             for k, v in expected.items() if tuple(tensors[k].shape) != tuple(v.shape)]
    if wrong:
        raise CheckpointError(f"{path} does not match its config: wrong tensor shapes: " + "; ".join(wrong)
                              + written_by(doc["provenance"]))
    dtypes = {t.dtype for t in tensors.values()}
    name = lambda t: str(t.dtype).removeprefix("torch.")  # noqa: E731
    wrong = [f"{k}: {name(t)}" for k, t in tensors.items() if t.dtype not in (torch.float32, torch.float64)]
    if wrong or len(dtypes) > 1:
        found = "; ".join(wrong[:3]) + (" ..." if len(wrong) > 3 else "") if wrong else \
            "mixed " + ", ".join(sorted({name(t) for t in tensors.values()}))
        raise CheckpointError(f"{path} holds tensors of the wrong dtype ({found}): meta-parameters are float32 or "
                              "float64, all of one dtype, and are never cast on load")
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
    """The learned optimizer stored at ``path``, a file or a shipped name (see :func:`load_checkpoint`)."""
    return load_checkpoint(path, task=task, device=device).optimizer


# -- deployment settings ----------------------------------------------------------------------
#: the coordinatewise settings a checkpoint may be shipped with other than the ones it was trained
#: with: the safeguards, which decide whether a step is taken but change no meta-parameter
DEPLOYMENT_KEYS = SAFEGUARD_KEYS


def deployed_copy(optimizer: LearnedOptimizer, settings: dict[str, Any], what: str = "optimizer") -> LearnedOptimizer:
    """A new coordinatewise optimizer with ``optimizer``'s task and meta-parameters and its
    safeguard settings changed to ``settings`` (keys of :data:`DEPLOYMENT_KEYS`).

    Raises:
        CheckpointError: ``optimizer`` is not coordinatewise, a key is not a deployment setting, or
            the resulting settings are invalid (e.g. ``update_backoff`` without ``update_safeguard``).
    """
    if optimizer.config.arch != "coordinatewise":
        raise CheckpointError(f"{what}: only a coordinatewise optimizer has deployment settings "
                              f"({', '.join(DEPLOYMENT_KEYS)}); this one is {optimizer.config.arch!r}")
    unknown = sorted(set(settings) - set(DEPLOYMENT_KEYS))
    if unknown:
        raise CheckpointError(f"{unknown}: not deployment settings; only {', '.join(DEPLOYMENT_KEYS)} may differ "
                              "from training (the others change what the meta-parameters mean)")
    try:
        learned = replace(optimizer.config, coordinatewise=replace(optimizer.config.coordinatewise, **settings))
    except (ConfigError, TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: deployment settings {settings}: {e}") from None
    out = LearnedOptimizer(optimizer.task, learned).to(next(optimizer.parameters()).dtype)
    out.load_state_dict(optimizer.state_dict())
    return out.eval()


def redeploy(src: PathLike, dst: PathLike, settings: dict[str, Any], why: str) -> Path:
    """Write the checkpoint ``src`` (a file or a shipped name) to ``dst`` with its coordinatewise
    safeguard settings changed to ``settings`` (keys of :data:`DEPLOYMENT_KEYS`), the
    meta-parameters, config and provenance otherwise unchanged. The provenance records the
    settings it was trained with, the new ones and ``why`` (e.g. the command that measured them),
    under ``deployment``.

    Raises:
        CheckpointError: ``src`` is not a coordinatewise checkpoint, or a key is not a deployment
            setting, or the resulting settings are invalid (e.g. ``update_backoff`` without
            ``update_safeguard``).
    """
    ck = load_checkpoint(src)
    trained = ck.config.learned.coordinatewise
    as_trained = ck.provenance.get("deployment", {}).get("as_trained") or {k: getattr(trained, k) for k in DEPLOYMENT_KEYS}
    optimizer = deployed_copy(ck.optimizer, settings, str(src))
    learned = optimizer.config
    config = replace(ck.config, learned=learned)
    deployed = {k: getattr(learned.coordinatewise, k) for k in DEPLOYMENT_KEYS}
    provenance = {**ck.provenance, "deployment": {
        "as_trained": as_trained, "deployed": deployed, "why": why, "metatele_version": __version__,
        "git_commit": git_commit(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}}
    return save_checkpoint(dst, optimizer, config, provenance, ck.evaluation)
