"""Weights & Biases logging, offline by default.

The mode of every run is resolved as: the explicit ``mode`` argument (``online``, ``offline`` or
``disabled``) > the ``WANDB_MODE`` environment variable > ``offline``. Offline runs are written
under ``<dir>/wandb/offline-run-*`` and reach no server; ``wandb sync <run dir>`` uploads them
later. ``disabled`` writes nothing. wandb's own console output is silenced, and in offline and
disabled modes system-metric sampling (which may probe cloud metadata endpoints) is off.

* :func:`init_run` starts a run (metatele's configs are dataclasses: they are sent as dicts).
* :func:`log_history` logs a list of per-step metric rows.
* :func:`log_comparison_group` writes one run per method of an evaluation (its per-step metrics
  and config), grouped so that the UI overlays their curves, plus one summary run with a
  line-series chart and a table.
* :func:`log_checkpoint_artifact` attaches a checkpoint as a ``model`` artifact.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

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


class DisabledRun:
    """What :func:`init_run` returns for ``mode='disabled'``: a run that records nothing, so that a
    run with wandb disabled works where wandb is not installed (wandb itself is not imported)."""

    disabled = True
    id = None

    def __init__(self) -> None:
        self.summary: dict[str, Any] = {}

    def log(self, *args: Any, **kwargs: Any) -> None:
        """Record nothing."""

    def log_artifact(self, *args: Any, **kwargs: Any) -> None:
        """Record nothing."""

    def finish(self) -> None:
        """Nothing to close."""


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
        The ``wandb`` run; call ``run.finish()`` when done. For ``disabled``, a
        :class:`DisabledRun` (wandb is then not imported).
    """
    mode = resolve_mode(mode)
    if mode == "disabled":
        return DisabledRun()
    import wandb

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
    histories: Mapping[str, Sequence[Mapping[str, Any]]],
    summary_rows: Sequence[Mapping[str, Any]],
    config: Mapping[str, Any] | Any = None,
    method_configs: Mapping[str, Mapping[str, Any]] | None = None,
    mode: str | None = None,
    dir: str | os.PathLike | None = None,
) -> dict[str, Path | None]:
    """Write one run per method of a comparison, plus one summary run, in one group.

    Each method's run (``job_type='compare'``, name = the method) logs its ``history``, row ``t``
    at ``step=t`` (e.g. :func:`metatele.evaluation.stats.step_history`: mean log10 loss with its
    95% CI, median, diverged fraction, mean ‖∇L‖², the measured wall-clock time), so the UI
    overlays the methods' curves; its summary holds the last row under ``final/``. The summary
    run (``job_type='compare-summary'``) holds a ``wandb.plot.line_series`` chart of every
    method's ``loss/mean_log10`` and a ``wandb.Table`` of ``summary_rows``.

    Args:
        project, group: where the runs go.
        histories: ``{method: [metrics at step 0, at step 1, ...]}`` (numbers; others are skipped).
        summary_rows: one dict per row of the summary table (e.g. per method and step).
        config: the evaluation config, sent to every run (each also gets ``method``).
        method_configs: per method, more config for its own run (e.g. its tuned hyper-parameters,
            its checkpoint and sha256).
        mode, dir: as in :func:`init_run`.

    Returns:
        ``{method: run folder}`` and ``"summary"`` → the summary run's folder (``None`` when
        disabled).
    """
    base = _plain(config) if config is not None else {}
    if not isinstance(base, dict):
        raise TypeError(f"config must be a mapping or a config dataclass, got {type(config).__name__}")
    if "summary" in histories:
        raise ValueError("'summary' is reserved for the summary run; rename that method")
    mode = resolve_mode(mode)
    if mode == "disabled":  # nothing to write (and wandb need not be installed)
        return {**{method: None for method in histories}, "summary": None}
    import wandb

    dirs: dict[str, Path | None] = {}
    means: dict[str, list[float]] = {}
    for method, history in histories.items():
        rows = [_metrics(row) for row in history]
        means[method] = [float(r.get("loss/mean_log10", math.nan)) for r in rows]
        extra = _plain((method_configs or {}).get(method) or {})
        run = init_run(project, group, "compare", {**base, **extra, "method": method}, name=method, mode=mode, dir=dir)
        try:
            for t, row in enumerate(rows):
                run.log(row, step=t)
            for k, v in (rows[-1] if rows else {}).items():
                run.summary[f"final/{k}"] = v
            dirs[method] = run_dir(run)
        finally:
            run.finish()
    run = init_run(project, group, "compare-summary", {**base, "methods": list(histories)},
                   name=f"{group}-summary", mode=mode, dir=dir)
    try:
        names = list(means)
        if names:
            chart = wandb.plot.line_series(
                xs=[list(range(len(means[m]))) for m in names],
                ys=[[v if math.isfinite(v) else None for v in means[m]] for m in names],
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
    """Log a checkpoint file (or folder) as a wandb artifact of type ``model`` with ``metadata``
    (e.g. its format version, variant, dims, training seeds and payload sha256).

    Returns:
        The logged ``wandb.Artifact`` (``None`` for a :class:`DisabledRun`).
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"checkpoint to log not found: {path}")
    if isinstance(run, DisabledRun):
        return None
    import wandb

    artifact = wandb.Artifact(name, type="model", metadata=dict(_plain(metadata) or {}))
    if path.is_dir():
        artifact.add_dir(os.fspath(path))
    else:
        artifact.add_file(os.fspath(path))
    run.log_artifact(artifact)
    return artifact
