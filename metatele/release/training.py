"""Meta-train and write a checkpoint: what ``metatele train`` runs.

:func:`train_and_save` meta-trains from a :class:`~metatele.meta.config.MetaTrainConfig`
(:func:`metatele.meta.train.meta_train`), writes the checkpoint, the history and the config to a
folder (atomically), with a validated run's selected, final and averaged snapshots, its
validation history and learning curve, and logs it all to wandb (``job_type='meta-train'``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable

from ..configs import to_dict
from ..evaluation.figures import plot_learning_curve
from ..meta.config import MetaTrainConfig
from ..meta.state import CHECKPOINT_FILE
from ..meta.train import MAX_SKIPPED_SHARE, MetaTrainResult, TrainingFailed, meta_train
from ..storage.container import atomic_write
from ..storage.jsonable import to_json
from ..storage.wandb_log import init_run, log_checkpoint_artifact, resolve_mode, run_dir
from .checkpoint import CheckpointError, read_metadata, save_checkpoint


def _log(msg: str) -> None:
    print(msg, flush=True)


# -- meta-training ---------------------------------------------------------------------------
def checkpoint_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a saved checkpoint (for wandb): its path, format version, variant, task
    dims, training seeds and payload sha256; only the path for a file that is not a metatele
    checkpoint."""
    try:
        doc = read_metadata(path)
    except CheckpointError:
        return {"checkpoint": str(path)}
    cfg = doc["config"]
    return {"checkpoint": str(path), "format_version": doc["format_version"], "variant": cfg["learned"]["variant"],
            "dims": cfg["task"]["dims"], "training_seeds": doc["provenance"].get("training_seeds"),
            "payload_sha256": doc["payload_sha256"]}


def train_and_save(
    config: MetaTrainConfig,
    out: str | os.PathLike,
    wandb_mode: str | None = None,
    project: str = "metatele",
    group: str | None = None,
    progress: bool = True,
    callback: Callable[[Any, dict[str, Any]], None] | None = None,
    engine: Any = None,
    max_skipped_share: float = MAX_SKIPPED_SHARE,
) -> tuple[MetaTrainResult, Path]:
    """Meta-train and write ``out/checkpoint.safetensors``, ``out/history.json``, ``out/config.json``.

    Logs per-meta-step metrics and the checkpoint (as a ``model`` artifact) to wandb.
    Returns the result and the checkpoint path. The JSON files are written atomically, with
    ``null`` for a value that is not finite.

    Raises:
        TrainingFailed: the run learned nothing usable (:func:`metatele.meta.train.failure`); its
            history and config are written, no checkpoint is.
    """
    wandb_mode = resolve_mode(wandb_mode)  # a bad mode fails before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    run = init_run(project, group or f"train-{config.learned.variant}", "meta-train", config,
                   name=f"{config.learned.variant}-seed{config.seed}", mode=wandb_mode, dir=out)

    def log_step(engine, metrics):
        run.log({k: v for k, v in metrics.items() if k not in ("meta_step", "dims")}, step=metrics["meta_step"])
        if "val/current/score" in metrics:  # a validation: redraw the learning curve as the run goes
            plot_learning_curve(engine.snapshots.history, str(out / "validation.png"),
                                title=f"{config.learned.variant}: validation during meta-training")
        if callback is not None:
            callback(engine, metrics)

    def write_records(result: MetaTrainResult) -> None:
        if engine is not None and getattr(engine, "prior_history", None):  # a resumed run: whole history
            result.history = list(engine.prior_history) + result.history
        for name, doc in (("history.json", result.history), ("config.json", to_dict(config))):
            atomic_write(out / name, json.dumps(to_json(doc), indent=1, allow_nan=False).encode())

    try:
        try:
            result = meta_train(config, progress=progress, callback=log_step, engine=engine,
                                max_skipped_share=max_skipped_share)
        except TrainingFailed as e:
            write_records(e.result)
            raise TrainingFailed(f"{e} (no checkpoint written; history: {out / 'history.json'})", e.result) from None
        seconds = result.train_seconds  # every segment of a resumed run
        write_records(result)
        ckpt = _save_outputs(out, result, config)
        run.summary["train_seconds"] = seconds
        log_checkpoint_artifact(run, ckpt, name=f"{config.learned.variant.replace('+', '-')}-seed{config.seed}",
                                metadata=checkpoint_metadata(ckpt))
        where = run_dir(run)
    finally:
        run.finish()
    snap = result.snapshots
    if snap is not None and snap.best is not None:
        sel = snap.selected()
        _log(f"selected the {sel['kind']} meta-parameters of meta-step {sel['meta_step']} on validation seeds "
             f"(score {sel['score']:.3f}; last: {snap.history[-1]['current']['score']:.3f}); learning curve: "
             f"{out / 'validation.png'}")
    _log(f"meta-trained {config.learned.variant} in {seconds:.0f} s ({result.meta_steps} meta-steps, "
         f"{result.skipped_total} skipped, {result.diverged_total} diverged trajectories) → {ckpt}"
         + (f"; wandb run: {where}" if where else ""))
    return result, ckpt


def _save_outputs(out: Path, result: MetaTrainResult, config: MetaTrainConfig) -> Path:
    """Write the run's checkpoint(s): ``checkpoint.safetensors`` is the selected snapshot when the
    run validates (``final.safetensors`` then holds the last meta-parameters and
    ``average.safetensors`` their average), else the last meta-parameters; plus
    ``validation.json`` and the learning-curve figure ``validation.png``."""
    prov = result.provenance()
    snap = result.snapshots
    if snap is None:
        return save_checkpoint(out / CHECKPOINT_FILE, result.optimizer, config, provenance=prov)
    evaluation = {"validation_history": snap.history}
    save_checkpoint(out / "final.safetensors", result.optimizer, config,
                    provenance={**prov, "snapshot": "final"}, evaluation=evaluation)
    if snap.average is not None:
        save_checkpoint(out / "average.safetensors", snap.averaged_optimizer(result.optimizer), config,
                        provenance={**prov, "snapshot": f"average (decay {config.validation.average})"},
                        evaluation=evaluation)
    atomic_write(out / "validation.json", json.dumps(to_json(snap.history), indent=1, allow_nan=False).encode())
    plot_learning_curve(snap.history, str(out / "validation.png"),
                        title=f"{config.learned.variant}: validation during meta-training")
    if snap.best is None:
        raise ValueError("no validation of this run had a finite score: nothing to select; the last "
                         f"meta-parameters are in {out / 'final.safetensors'}")
    return save_checkpoint(out / CHECKPOINT_FILE, result.selected_optimizer(), config,
                           provenance={**prov, "selection": snap.selected()}, evaluation=evaluation)
