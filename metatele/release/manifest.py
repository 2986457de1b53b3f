"""Manifests of shipped files: config, seeds, measured metrics and the sha256 of every file.

:func:`write_manifest` writes the generic document (any files). Every script that ships one
learned optimizer (``experiments/ship_checkpoints.py``, ``ship_benchmark.py``,
``train_coordinatewise.py``, ``ship_pretrained.py``) writes its ``<name>.manifest.json`` through
:func:`write_checkpoint_manifest`, in one shape:

* ``config``, ``provenance``: read from the checkpoint itself;
* ``seeds``: ``train`` / ``validation`` / ``test`` as ``[start, end)`` pairs;
* ``metrics``: what was measured (the script's own record);
* ``headline``: the few numbers that say what it does (:func:`headline`), listed by
  ``metatele pretrained``;
* ``check``: a cheap number anyone can reproduce (:func:`reference_check`: a few seeds, a few
  steps), which ``tests/test_shipped.py`` recomputes for every shipped file;
* ``commands``: the commands that made the file, in order.

:func:`verify_manifest` checks that the files still match.
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from .._version import __version__
from ..configs import to_dict
from ..evaluation.evaluate import evaluate
from ..evaluation.stats import summarize
from ..meta.config import MetaTrainConfig
from ..storage.container import PathLike, atomic_write, file_sha256
from ..storage.jsonable import to_json
from ..storage.provenance import git_commit
from ..tasks.family import TEST_SEED_OFFSET, TaskConfig
from .checkpoint import CheckpointError, load_checkpoint, read_metadata

MANIFEST_FORMAT = "metatele-manifest"
MANIFEST_VERSION = 1


def _checkpoint_summary(path: Path) -> dict[str, Any] | None:
    try:
        doc = read_metadata(path)
    except CheckpointError:
        return None
    cfg = doc["config"]
    return {
        "format_version": doc["format_version"],
        "variant": cfg.get("learned", {}).get("variant"),
        "dims": cfg.get("task", {}).get("dims"),
        "distribution": cfg.get("task", {}).get("distribution"),
        "training_seeds": doc["provenance"].get("training_seeds"),
        "meta_seed": doc["provenance"].get("meta_seed"),
        "payload_sha256": doc["payload_sha256"],
        "evaluation": doc.get("evaluation"),
    }


def write_manifest(
    path: PathLike,
    files: Sequence[PathLike],
    config: MetaTrainConfig | Mapping[str, Any] | None = None,
    seeds: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    sections: Mapping[str, Any] | None = None,
) -> Path:
    """Write a JSON manifest describing shipped files (atomically).

    Args:
        path: the manifest file (e.g. ``checkpoints/MANIFEST.json``); a directory means
            ``path/MANIFEST.json``.
        files: the files it covers; stored relative to the manifest's folder, each with its
            sha256 and size, and, for metatele checkpoints, their variant, dims, training seeds
            and stored evaluation.
        config: the config that produced them (a dataclass or a dict).
        seeds: seeds used (e.g. ``{"train": range(0, 700), "test": range(10**9, 10**9 + 100)}``;
            ranges are stored as ``[start, end)`` pairs).
        metrics: measured metrics (JSON-able; tensors and numpy values are converted).
        extra: anything else worth recording.
        sections: further top-level sections (``provenance``, ``headline``, ``check``,
            ``commands``: see :func:`write_checkpoint_manifest`).

    Returns:
        The manifest path.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "MANIFEST.json"
    root = path.parent.resolve()
    entries = []
    for f in files:
        f = Path(f)
        if not f.is_file():
            raise CheckpointError(f"manifest entry {f} is not a file")
        entry: dict[str, Any] = {
            "path": Path(os.path.relpath(f.resolve(), root)).as_posix(),
            "sha256": file_sha256(f),
            "bytes": f.stat().st_size,
        }
        summary = _checkpoint_summary(f)
        if summary is not None:
            entry["checkpoint"] = summary
        entries.append(entry)
    if config is not None and not isinstance(config, Mapping):
        config = to_dict(config)
    doc = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "metatele_version": __version__,
        "git_commit": git_commit(),
        "config": to_json(config, nonfinite_to_none=False),
        "seeds": to_json(seeds, nonfinite_to_none=False),
        "metrics": to_json(metrics, nonfinite_to_none=False),
        "files": entries,
    }
    doc.update(to_json(dict(sections or {}), nonfinite_to_none=False))
    if extra:
        doc["extra"] = to_json(extra, nonfinite_to_none=False)
    atomic_write(path, (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode())
    return path


def verify_manifest(path: PathLike) -> dict[str, Any]:
    """Check every file listed in a manifest against its recorded sha256.

    Returns:
        The manifest document.

    Raises:
        CheckpointError: the manifest is unreadable, or a file is missing or has changed.
    """
    path = Path(path)
    if path.is_dir():
        path = path / "MANIFEST.json"
    try:
        doc = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"manifest not found: {path}") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise CheckpointError(f"manifest {path} is not valid JSON: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != MANIFEST_FORMAT:
        raise CheckpointError(f"{path} is not a metatele manifest")
    if doc.get("format_version") != MANIFEST_VERSION:
        raise CheckpointError(f"{path} has manifest version {doc.get('format_version')!r}; this metatele reads {MANIFEST_VERSION}")
    problems = []
    for entry in doc.get("files", []):
        f = path.parent / entry["path"]
        if not f.is_file():
            problems.append(f"{entry['path']}: missing")
        elif file_sha256(f) != entry["sha256"]:
            problems.append(f"{entry['path']}: sha256 differs from the manifest")
    if problems:
        raise CheckpointError(f"manifest {path}: " + "; ".join(problems))
    return doc


# -- one shipped learned optimizer -----------------------------------------------------------------
def manifest_path(checkpoint: PathLike) -> Path:
    """``dir/name.safetensors`` → ``dir/name.manifest.json``."""
    checkpoint = Path(checkpoint)
    return checkpoint.with_name(checkpoint.name.removesuffix(".safetensors") + ".manifest.json")


def headline(at_step: Mapping[Any, float], seeds: str, n_seeds: int, task: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The headline numbers of a shipped optimizer: mean log10 loss at a few steps.

    Args:
        at_step: step → mean log10 loss over the seeds.
        seeds: which seeds they were measured on (``"test"``: unseen; ``"validation"``: the seeds
            a snapshot was selected on).
        n_seeds: how many.
        task: the task they were measured on (default: the one it was trained on).
    """
    return {"mean_log10_loss_at": {str(k): float(v) for k, v in at_step.items()}, "seeds": seeds,
            "n_seeds": int(n_seeds), "task": dict(task) if task is not None else None}


#: the seeds of a check unless the manifest's own numbers were measured on others: the first 4 test seeds
CHECK_SEEDS = (TEST_SEED_OFFSET, TEST_SEED_OFFSET + 4)


def reference_check(checkpoint: PathLike, seeds: Sequence[int] = CHECK_SEEDS, steps: int = 10,
                    task: TaskConfig | None = None) -> dict[str, Any]:
    """A number anyone can reproduce from a checkpoint in seconds: its mean log10 loss after
    ``steps`` steps on the seeds ``[start, end)`` (default: the first 4 unseen test seeds) of
    ``task`` (default: its training task), float32 on the CPU. Stored under ``check`` in its
    manifest; :func:`rerun_check` recomputes it. Where a manifest's own measurement is that cheap,
    the shipping scripts record it (the same seeds and step), so the check reproduces it."""
    task = task or TaskConfig(**read_metadata(checkpoint)["config"]["task"])
    start, end = (int(s) for s in seeds)
    with torch.random.fork_rng(devices=[]):
        curves = evaluate(load_checkpoint(checkpoint, task=task).optimizer, task, range(start, end), steps,
                          device="cpu", dtype=torch.float32)
    at = summarize(curves, [steps])["at_step"][steps]
    return {"task": to_dict(task), "seeds": [start, end], "steps": int(steps), "mean_log10_loss": at["mean"],
            "n_diverged": at["n_diverged"],
            "how": f"mean log10 loss after {steps} steps on seeds [{start}, {end}), over the seeds that did not "
                   "diverge (float32, CPU)"}


def rerun_check(checkpoint: PathLike, check: Mapping[str, Any]) -> float:
    """Recompute the ``check`` number of a manifest for ``checkpoint`` (see :func:`reference_check`)."""
    task = TaskConfig(**check["task"])
    return reference_check(checkpoint, seeds=check["seeds"], steps=check["steps"], task=task)["mean_log10_loss"]


def write_checkpoint_manifest(
    checkpoint: PathLike,
    *,
    commands: Sequence[str],
    seeds: Mapping[str, Any],
    metrics: Mapping[str, Any],
    headline: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
    check: Mapping[str, Any] | None = None,
    check_seeds: Sequence[int] | None = None,
) -> Path:
    """Write ``<name>.manifest.json`` beside one shipped learned optimizer, in the one shape.

    The config and provenance come from the checkpoint itself, and the ``check`` number is
    measured now by :func:`reference_check` unless one is given.

    Args:
        checkpoint: the shipped ``.safetensors`` file.
        commands: the commands that made it, in order (each one rerunnable).
        seeds: ``train`` / ``validation`` / ``test`` seeds (ranges or ``[start, end)`` pairs).
        metrics: what was measured on it.
        headline: see :func:`headline`.
        extra: anything else worth recording (how it was chosen, ...).
        check: a precomputed :func:`reference_check` record.
        check_seeds: ``[start, end)`` of the seeds the check runs on (default: the first 4 test
            seeds); give the headline's, so that the check reproduces its number at step 10.

    Returns:
        The manifest path.
    """
    doc = read_metadata(checkpoint)
    sections = {"provenance": doc["provenance"], "headline": headline,
                "check": dict(check) if check is not None else reference_check(checkpoint, check_seeds or CHECK_SEEDS),
                "commands": list(commands)}
    return write_manifest(manifest_path(checkpoint), [checkpoint], config=doc["config"], seeds=seeds,
                          metrics=metrics, extra=extra, sections=sections)
