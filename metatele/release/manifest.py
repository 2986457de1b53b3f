"""Manifests of shipped files: config, seeds, measured metrics and the sha256 of every file.

``checkpoints/<name>.manifest.json`` are written by ``experiments/ship_checkpoints.py``;
:func:`verify_manifest` checks that the files still match.
"""
from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from .._version import __version__
from ..configs import to_dict
from ..meta.config import MetaTrainConfig
from ..storage.container import PathLike, atomic_write, file_sha256
from ..storage.jsonable import to_json
from ..storage.provenance import git_commit
from .checkpoint import CheckpointError, read_metadata

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

