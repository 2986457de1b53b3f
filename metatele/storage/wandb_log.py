"""Weights & Biases logging, offline by default.

The mode of every run is resolved as: the explicit ``mode`` argument (``online``, ``offline`` or
``disabled``) > the ``WANDB_MODE`` environment variable > ``offline``. Offline runs are written
under ``<dir>/wandb/offline-run-*`` and reach no server; ``wandb sync <run dir>`` uploads them
later. ``disabled`` writes nothing. wandb's own console output is silenced, and in offline and
disabled modes system-metric sampling (which may probe cloud metadata endpoints) is off.

* :func:`init_run` starts a run (metatele's configs are dataclasses: they are sent as dicts).
* :func:`log_history` logs a list of per-step metric rows.
* :func:`log_comparison_group` writes one run per method of an evaluation, grouped so that the
  UI overlays their curves, plus one summary run with a line-series chart and a table.
* :func:`log_checkpoint_artifact` attaches a checkpoint as a ``model`` artifact.
* :func:`read_offline_run` reads back what an offline run wrote (for tests and inspection).
"""
from __future__ import annotations

import json
import logging
import math
import os
import struct
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from .jsonable import to_json

MODES = ("online", "offline", "disabled")
DEFAULT_MODE = "offline"
log = logging.getLogger(__name__)


def resolve_mode(mode: str | None = None) -> str:
    """The wandb mode to use: ``mode`` > ``$WANDB_MODE`` > ``offline``.

    Raises:
        ValueError: the argument or the environment variable is not one of ``online``,
            ``offline``, ``disabled``.
    """
    if mode is not None:
        if mode not in MODES:
            raise ValueError(f"wandb mode must be one of {MODES}, got {mode!r}")
        return mode
    env = os.environ.get("WANDB_MODE")
    if env == "":  # set but empty means unset (wandb itself would reject it)
        os.environ.pop("WANDB_MODE")
    if env:
        if env not in MODES:
            raise ValueError(f"environment variable WANDB_MODE must be one of {MODES}, got {env!r}")
        return env
    return DEFAULT_MODE


def _plain(value: Any) -> Any:
    """Plain Python version of configs and values; NaN and inf stay (wandb plots them as gaps)."""
    return to_json(value, nonfinite_to_none=False)


def _settings(mode: str):
    import wandb

    quiet_mode = mode != "online"
    return wandb.Settings(
        silent=True,
        console="off",
        x_disable_stats=quiet_mode,
        x_disable_machine_info=quiet_mode,
    )


def init_run(
    project: str = "metatele",
    group: str | None = None,
    job_type: str = "train",
    config: Mapping[str, Any] | Any = None,
    name: str | None = None,
    mode: str | None = None,
    dir: str | os.PathLike | None = None,
    tags: Sequence[str] | None = None,
):
    """Start a wandb run (offline unless told otherwise).

    Args:
        project, group, job_type, name, tags: as in ``wandb.init``.
        config: a dict or a config dataclass (converted with :func:`metatele.configs.to_dict`).
        mode: ``online``, ``offline`` or ``disabled``; default ``$WANDB_MODE``, else ``offline``.
        dir: the folder under which wandb writes ``wandb/`` (created if missing).

    Returns:
        The ``wandb`` run; call ``run.finish()`` (or use it as a context manager) when done.
    """
    import wandb

    mode = resolve_mode(mode)
    if dir is not None:
        Path(dir).mkdir(parents=True, exist_ok=True)
    run = wandb.init(
        project=project,
        group=group,
        job_type=job_type,
        config=_plain(config) if config is not None else None,
        name=name,
        mode=mode,
        dir=os.fspath(dir) if dir is not None else None,
        tags=list(tags) if tags else None,
        reinit="create_new",
        settings=_settings(mode),
    )
    if mode == "offline":
        log.info("wandb run %s written offline to %s (upload with `wandb sync`)", run.id, run_dir(run))
    elif mode == "online":
        log.info("wandb run %s: %s", run.id, getattr(run, "url", None))
    return run


def run_dir(run) -> Path | None:
    """The local folder of a run (``.../wandb/offline-run-*``), ``None`` for a disabled run."""
    if getattr(run, "disabled", False) or run.settings.mode == "disabled":
        return None
    sync_dir = run.settings.sync_dir
    return Path(sync_dir) if sync_dir else None


def _metrics(row: Mapping[str, Any]) -> dict[str, Any]:
    """Loggable scalar metrics of a history row (non-numbers and ``None`` are dropped)."""
    out = {}
    for k, v in row.items():
        v = _plain(v)
        if isinstance(v, bool):
            v = int(v)
        if isinstance(v, (int, float)):
            out[str(k)] = v
    return out


def log_history(run, history: Sequence[Mapping[str, Any]], step_key: str = "step") -> None:
    """Log rows of metrics, each at ``row[step_key]`` (or its index when the key is absent).

    Values may be Python numbers, 0-d tensors or numpy scalars; other values are skipped.
    """
    for i, row in enumerate(history):
        step = row.get(step_key, i)
        step = int(_plain(step))
        run.log(_metrics(row), step=step)


def curve_statistics(loss: Any, grad_sq: Any | None = None) -> dict[str, np.ndarray]:
    """Per-step statistics of ``K`` loss curves ``[steps + 1][K]``.

    Returns arrays of length ``steps + 1``: ``mean_log10_loss`` (over the trajectories whose
    loss is finite; NaN if none), ``median_loss`` (diverged trajectories count as ``inf``),
    ``diverged_frac``, and ``mean_grad_sq`` (over finite values) when ``grad_sq`` is given.
    """
    L = np.asarray(loss, dtype=np.float64)
    if L.ndim == 1:
        L = L[:, None]
    if L.ndim != 2:
        raise ValueError(f"loss must be [steps + 1][K], got shape {L.shape}")
    finite = np.isfinite(L)
    L_inf = np.where(finite, L, np.inf)
    logs = np.where(finite, np.log10(np.maximum(np.where(finite, L, 1.0), np.finfo(np.float64).tiny)), 0.0)
    count = finite.sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        stats = {
            "mean_log10_loss": np.where(count > 0, logs.sum(1) / np.maximum(count, 1), np.nan),
            "median_loss": np.median(L_inf, axis=1),
            "diverged_frac": 1.0 - count / L.shape[1],
        }
        if grad_sq is not None:
            G = np.asarray(grad_sq, dtype=np.float64)
            if G.ndim == 1:
                G = G[:, None]
            gf = np.isfinite(G)
            stats["mean_grad_sq"] = np.where(gf.any(1), np.where(gf, G, 0.0).sum(1) / np.maximum(gf.sum(1), 1), np.nan)
    return stats


def _table(rows: Sequence[Mapping[str, Any]]):
    import wandb

    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    data = [[_plain(row.get(c)) for c in columns] for row in rows]
    return wandb.Table(columns=columns, data=data)


def log_comparison_group(
    project: str,
    group: str,
    curves_by_name: Mapping[str, Mapping[str, Any]],
    summary_rows: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any] | Any = None,
    mode: str | None = None,
    dir: str | os.PathLike | None = None,
) -> dict[str, Path | None]:
    """Write one run per method of a comparison, plus one summary run, in one group.

    Each method's run (``job_type='compare'``, name = the method) logs, at ``step=t``,
    ``loss/mean_log10``, ``loss/median``, ``loss/diverged_frac`` and (with ``grad_sq``)
    ``grad_sq/mean`` (see :func:`curve_statistics`), so the UI overlays the methods' curves.
    The summary run (``job_type='compare-summary'``) holds a ``wandb.plot.line_series`` chart of
    every method's mean log10 loss and a ``wandb.Table`` of ``summary_rows``.

    Args:
        project, group: where the runs go.
        curves_by_name: ``{method: {"loss": [steps + 1][K], "grad_sq": [steps + 1][K] (optional)}}``
            (array-likes: lists, numpy arrays or tensors).
        summary_rows: one dict per row of the summary table (e.g. per method and step).
        config: the evaluation config, sent to every run (each also gets ``method``).
        mode, dir: as in :func:`init_run`.

    Returns:
        ``{method: run folder}`` and ``"summary"`` → the summary run's folder (``None`` when
        disabled).
    """
    import wandb

    base = _plain(config) if config is not None else {}
    if not isinstance(base, dict):
        raise TypeError(f"config must be a mapping or a config dataclass, got {type(config).__name__}")
    if "summary" in curves_by_name:
        raise ValueError("'summary' is reserved for the summary run; rename that method")
    dirs: dict[str, Path | None] = {}
    means: dict[str, np.ndarray] = {}
    for method, curves in curves_by_name.items():
        if "loss" not in curves:
            raise ValueError(f"curves_by_name[{method!r}] needs a 'loss' array [steps + 1][K]")
        stats = curve_statistics(_plain(curves["loss"]), _plain(curves["grad_sq"]) if curves.get("grad_sq") is not None else None)
        means[method] = stats["mean_log10_loss"]
        run = init_run(project, group, "compare", {**base, "method": method}, name=method, mode=mode, dir=dir)
        try:
            for t in range(len(stats["mean_log10_loss"])):
                row = {
                    "loss/mean_log10": stats["mean_log10_loss"][t],
                    "loss/median": stats["median_loss"][t],
                    "loss/diverged_frac": stats["diverged_frac"][t],
                }
                if "mean_grad_sq" in stats:
                    row["grad_sq/mean"] = stats["mean_grad_sq"][t]
                run.log({k: float(v) for k, v in row.items()}, step=t)
            run.summary["final/mean_log10_loss"] = float(stats["mean_log10_loss"][-1])
            run.summary["final/median_loss"] = float(stats["median_loss"][-1])
            dirs[method] = run_dir(run)
        finally:
            run.finish()
    run = init_run(project, group, "compare-summary", {**base, "methods": list(curves_by_name)},
                   name=f"{group}-summary", mode=mode, dir=dir)
    try:
        names = list(means)
        if names:
            chart = wandb.plot.line_series(
                xs=[list(range(len(means[m]))) for m in names],
                ys=[[float(v) if math.isfinite(v) else None for v in means[m]] for m in names],
                keys=names,
                title=f"{group}: mean log10 loss on unseen seeds",
                xname="step",
            )
            run.log({"mean_log10_loss": chart})
        run.log({"summary": _table(summary_rows)})
        dirs["summary"] = run_dir(run)
    finally:
        run.finish()
    return dirs


def log_checkpoint_artifact(run, path: str | os.PathLike, name: str, metadata: Mapping[str, Any] | None = None):
    """Log a checkpoint file (or folder) as a wandb artifact of type ``model``.

    For a metatele checkpoint its format version, variant, dims, training seeds and payload
    sha256 are added to ``metadata``.

    Returns:
        The logged ``wandb.Artifact``.
    """
    import wandb

    from ..release.checkpoint import CheckpointError, read_metadata

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint to log not found: {path}")
    meta = dict(_plain(metadata) or {})
    if path.is_file():
        try:
            doc = read_metadata(path)
        except CheckpointError:
            doc = None
        if doc is not None:
            cfg = doc["config"]
            meta.setdefault("format_version", doc["format_version"])
            meta.setdefault("variant", cfg["learned"]["variant"])
            meta.setdefault("dims", cfg["task"]["dims"])
            meta.setdefault("training_seeds", doc["provenance"].get("training_seeds"))
            meta.setdefault("payload_sha256", doc["payload_sha256"])
    artifact = wandb.Artifact(name, type="model", metadata=meta)
    if path.is_dir():
        artifact.add_dir(os.fspath(path))
    else:
        artifact.add_file(os.fspath(path))
    run.log_artifact(artifact)
    return artifact


# -- reading offline runs ----------------------------------------------------------------------
_BLOCK = 32768
_HEADER = 7  # ":W&B", magic 0xBEE1, version byte


def _records(path: Path) -> list[bytes]:
    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a wandb transaction log")
    out, buf, pos = [], b"", _HEADER
    while pos + 7 <= len(data):
        space = _BLOCK - pos % _BLOCK
        if space < 7:
            pos += space
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk = data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind == 1:  # full
            out.append(chunk)
        elif kind == 2:  # first
            buf = chunk
        elif kind == 3:  # middle
            buf += chunk
        elif kind == 4:  # last
            out.append(buf + chunk)
            buf = b""
        else:
            break
    return out


def _set(target: dict, item) -> None:
    keys = list(item.nested_key) or [item.key]
    node = target
    for k in keys[:-1]:
        node = node.setdefault(k, {})
    node[keys[-1]] = json.loads(item.value_json)


def read_offline_run(path: str | os.PathLike) -> dict[str, Any]:
    """Read back an offline run's identity, config, summary, history and artifacts.

    Args:
        path: the run folder (``.../wandb/offline-run-*``) or its ``run-*.wandb`` file.

    Returns:
        ``{"id", "project", "group", "job_type", "name", "config", "summary", "history",
        "artifacts"}``; ``history`` is a list of metric dicts (with ``_step``), ``artifacts`` a
        list of ``{"name", "type", "metadata"}``.

    This parses wandb's transaction log with wandb's own protobuf definitions; it is meant for
    tests and quick inspection, not as a stable interface of wandb. wandb finishes writing the
    log shortly after ``run.finish()`` returns: call ``wandb.teardown()`` first when reading a run
    that this process has just finished.
    """
    from wandb.proto import wandb_internal_pb2 as pb

    path = Path(path)
    if path.is_dir():
        files = sorted(path.glob("run-*.wandb"))
        if not files:
            raise FileNotFoundError(f"no run-*.wandb file in {path}")
        path = files[0]
    out: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "artifacts": []}
    for raw in _records(path):
        record = pb.Record.FromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            out.update(id=r.run_id, project=r.project, group=r.run_group, job_type=r.job_type, name=r.display_name)
            for item in r.config.update:
                _set(out["config"], item)
        elif kind == "config":
            for item in record.config.update:
                _set(out["config"], item)
        elif kind == "summary":
            for item in record.summary.update:
                _set(out["summary"], item)
        elif kind == "history":
            row: dict[str, Any] = {}
            for item in record.history.item:
                _set(row, item)
            out["history"].append(row)
        elif kind == "artifact":
            a = record.artifact
            out["artifacts"].append({"name": a.name, "type": a.type, "metadata": json.loads(a.metadata or "{}")})
    return out
