"""Pretrained learned optimizers shipped inside the package, loadable by name after ``pip install``.

Each one is package data in ``metatele/pretrained/``: ``NAME.safetensors`` (10–20 KB) and
``NAME.manifest.json`` (config, seeds, headline numbers, a reproducible check, the commands that
made it; :func:`metatele.release.manifest.write_checkpoint_manifest`). Adding one is its two files
(``python experiments/ship_pretrained.py CHECKPOINT --name NAME`` writes them) and one line in
:data:`REGISTRY`. ``mt.load_optimizer(NAME)``, ``metatele eval NAME`` and ``metatele compare NAME
...`` take a shipped name wherever they take a checkpoint file; ``metatele pretrained`` lists them.
"""
from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

from ..storage.container import PathLike

#: the shipped optimizers, in the order ``metatele pretrained`` lists them: name → what it is
REGISTRY: dict[str, str] = {
    # the recommended ones: the long runs of experiments/long_runs/, evaluated by `metatele benchmark`
    "generalist-update-tele": "recommended: coordinatewise update+tele meta-trained on a mixture of LeakyReLU MLPs "
                              "(2-5 weight layers, widths 8-64, with and without biases, gaussian and uniform data) "
                              "for 10,450 meta-steps (5.0 M trajectory-steps; the last 1,350 with the update safeguard "
                              "on, as it runs); snapshot chosen on validation seeds. On gaussian [20,20,20,20] alone, "
                              "specialist-update-tele is better",
    "generalist-update": "its update-only twin (same mixture, seeds and training; 11,750 meta-steps, 5.6 M "
                         "trajectory-steps)",
    "generalist-lr-tele": "a learned per-coordinate step-size GD with the learned teleport, on the same mixture "
                          "(2,100 meta-steps, 1.0 M trajectory-steps)",
    "generalist-lr": "its twin without the teleport (same mixture, seeds and budget)",
    **{f"{name}-seed{k}": f"meta-seed {k} of {name} (2,100 meta-steps, 1.0 M trajectory-steps)"
       for name in ("generalist-update-tele", "generalist-update", "generalist-lr-tele", "generalist-lr") for k in (1, 2)},
    # the generalist pair's config trained on the reference task alone, beside it in `metatele benchmark`
    "specialist-update-tele": "for gaussian [20,20,20,20]-like tasks: coordinatewise update+tele with the generalist's "
                              "config, meta-trained on that task alone (2,100 meta-steps, 1.0 M trajectory-steps); "
                              "snapshot chosen on validation seeds; runs with the update safeguard",
    "specialist-update": "its update-only twin (same task, seeds and budget)",
    **{f"{name}-seed{k}": f"meta-seed {k} of {name} (2,100 meta-steps, 1.0 M trajectory-steps)"
       for name in ("specialist-update-tele", "specialist-update") for k in (1, 2)},
    # earlier ones: single-task specialists with 300-step horizons, and the retraining benchmark's
    "cw-update-tele-gaussian": "coordinatewise update+tele meta-trained on gaussian [20,20,20,20] tasks, "
                               "300-step horizons; snapshot chosen on validation seeds",
    "cw-update-gaussian": "its update-only twin (same config and seeds)",
    "cw-update-tele-uniform": "coordinatewise update+tele meta-trained on uniform [20,20,20,20] tasks, "
                              "300-step horizons; snapshot chosen on validation seeds",
    "cw-update-uniform": "its update-only twin (same config and seeds)",
    "bench-cw-update-tele-gaussian": "the long-horizon benchmark's CW(update+tele) on gaussian [20,20,20,20]; "
                                     "no snapshot beat meta-step 0, so it is its initialisation: Adam at lr 0.0316 "
                                     "with the update safeguard and its backoff, and an untrained teleport",
    "bench-cw-update-gaussian": "its update-only twin CW(update), same meta-seed",
}


def pretrained_dir() -> Path:
    """The folder of the shipped optimizers (package data ``metatele/pretrained``)."""
    return Path(str(importlib.resources.files("metatele") / "pretrained"))


def pretrained_path(name: str) -> Path:
    """The checkpoint file of the shipped optimizer ``name``."""
    return pretrained_dir() / f"{name}.safetensors"


def resolve_checkpoint(path_or_name: PathLike) -> Path:
    """A checkpoint file: ``path_or_name`` itself when it exists (a file wins over a shipped
    name), else the shipped optimizer of that name; otherwise the path unchanged (the loader then
    says it is missing, listing the shipped names)."""
    path = Path(path_or_name)
    if not path.exists() and str(path_or_name) in REGISTRY:
        return pretrained_path(str(path_or_name))
    return path


def shipped_name(path: PathLike) -> str | None:
    """The name of the shipped optimizer whose file ``path`` is (``None``: not one), so that
    reports name it rather than a path on one machine."""
    path = Path(path)
    if path.stem in REGISTRY and path.resolve() == pretrained_path(path.stem).resolve():
        return path.stem
    return None


def manifest(name: str) -> dict[str, Any]:
    """The manifest of the shipped optimizer ``name``."""
    return json.loads((pretrained_dir() / f"{name}.manifest.json").read_text())


def describe(name: str) -> str:
    """One line: the name, what it is, and its headline numbers from its manifest."""
    head = manifest(name).get("headline") or {}
    at = head.get("mean_log10_loss_at") or {}
    numbers = " / ".join(f"{v:.2f}" for v in at.values())
    where = f"{head.get('n_seeds')} {head.get('seeds')} seeds"
    return f"{name}: {REGISTRY[name]}. log10 loss @ {' / '.join(at)} = {numbers} ({where})"
