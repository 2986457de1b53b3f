"""The digits study behind ``experiments/DIGITS.md`` (``metatele digits``).

Three parts, each a client of the library:

1. **Standard optimizers with and without teleport** (the paper's Figure 6, on digits): AdaGrad,
   SGD with momentum, RMSProp and Adam, each tuned on training seeds (learning rate, and for
   momentum its coefficient), then a gradient-ascent teleport on a few early steps whose size is
   tuned on the same seeds. Curves of training loss against step and wall-clock, validation loss
   and accuracy on unseen seeds; the loss change each teleport causes on the teleport batch, on
   the rest of the training set and on the validation set.
2. **The correlation check**: networks trained by the tuned Adam on many seeds; Pearson
   correlation of the sharpness and of the orbit curvature at the end of training with the
   validation loss, with 95% CIs (Fisher z).
3. **Teleporting mid-training** towards higher curvature and towards lower sharpness, then
   training on; the change of validation loss against not teleporting, paired on seeds, with
   95% CIs.
4. **Learned teleport on digits**: the coordinatewise update+tele and its update-only twin
   meta-trained on digits tasks with the training loss as meta-objective, and a second
   update+tele meta-trained on the *validation* loss (learning to teleport for generalization);
   evaluated on unseen seeds against the tuned Adam with and without teleport. The checkpoints
   are written with a manifest.

:mod:`metatele.studies.digits_report` runs every part (:func:`~metatele.studies.digits_report.run_digits_study`)
and writes ``results.json``, the figures and the report.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from scipy import stats

from ..configs import from_dict, is_int, require, to_dict
from ..evaluation.evaluate import BaselineMethod, Curves, evaluate
from ..evaluation.stats import mean_ci
from ..evaluation.tuning import grid_search
from ..meta.config import MetaTrainConfig
from ..meta.train import meta_train
from ..optimizers.baselines import BaselineConfig, HandDesigned
from ..release.checkpoint import save_checkpoint
from ..release.manifest import write_manifest
from ..symmetry.generalization import RADII, GeometryTeleport, orbit_curvature, random_lie_elements, sharpness
from ..symmetry.strategies import TeleportSchedule, TeleportStrategy
from ..tasks.digits import (DigitsBatch, MinibatchSampler, cross_entropy, minibatch_sampler, sample_digits,
                            teleport_loss_change)
from ..tasks.family import TaskConfig, training_seeds, unseen_seeds
from ..storage.jsonable import to_json

OPTIMIZERS = ("adagrad", "momentum", "rmsprop", "adam")
LABELS = {"adagrad": "AdaGrad", "momentum": "SGD+momentum", "rmsprop": "RMSProp", "adam": "Adam"}


def _digits_task() -> TaskConfig:
    return TaskConfig(family="digits", dims=[1000, 64, 32, 32, 10], bias=True)


@dataclass
class DigitsStudyConfig:
    """The scale and settings of the digits study (defaults: the report's scale).

    Attributes:
        task: the digits family (network ``[n_train, 64, 32, 32, 10]`` with biases: teleport
            batch 33 images; ``task.minibatch`` images per gradient, or all of them).
        optimizers: which of AdaGrad, momentum, RMSProp, Adam to run.
        steps: inner steps per run.
        seeds: unseen test seeds for the curves (part 1).
        tune_seeds, tune_steps: training seeds and steps for tuning.
        lrs, momenta: the learning-rate (and momentum) grid.
        teleport_steps: steps before which the teleporting arm teleports (a few, early).
        teleport_norms: candidate ``‖T‖_F`` per gradient-ascent step (tuned; each ascent step
            is normalised to it).
        ascent_steps: gradient-ascent iterations per teleport.
        at_steps: steps reported in the tables.
        corr_seeds, corr_steps: networks and training steps of the correlation check.
        sharpness_directions, radii: directions per norm and the norms of the sharpness measure.
        curvature_draws: random ``M`` per network; the curvature reported is their mean.
        mid_seeds, mid_step, mid_steps_after: part 3: seeds, the step at which to teleport, and
            the training steps after it.
        geometry_steps, geometry_step_norm, geometry_directions: the sharpness / curvature
            teleport (iterations, ``‖T‖`` per iteration, sharpness directions per norm).
        learned: run part 4 (meta-training on digits).
        meta_trajectories, meta_horizon, meta_unroll, meta_batch: meta-training scale
            (trajectories, inner steps per trajectory, truncation, trajectories per batch).
        meta_lr_update, meta_lr_teleport: meta-learning rates of m1 and m2.
        learned_steps: inner steps of the part-4 evaluation (beyond the horizon: does it hold?).
    """

    task: TaskConfig = field(default_factory=_digits_task)
    optimizers: list[str] = field(default_factory=lambda: list(OPTIMIZERS))
    steps: int = 300
    seeds: int = 30
    tune_seeds: int = 5
    tune_steps: int = 300
    lrs: list[float] = field(default_factory=lambda: [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0])
    momenta: list[float] = field(default_factory=lambda: [0.5, 0.9])
    teleport_steps: list[int] = field(default_factory=lambda: [0, 10, 20])
    teleport_norms: list[float] = field(default_factory=lambda: [1e-5, 3e-5, 1e-4, 3e-4, 1e-3])
    ascent_steps: int = 8
    at_steps: list[int] = field(default_factory=lambda: [30, 100, 300])
    corr_seeds: int = 60
    corr_steps: int = 300
    sharpness_directions: int = 100
    radii: list[float] = field(default_factory=lambda: list(RADII))
    curvature_draws: int = 5
    mid_seeds: int = 30
    mid_step: int = 100
    mid_steps_after: int = 200
    geometry_steps: int = 10
    geometry_step_norm: float = 0.002
    geometry_directions: int = 10
    learned: bool = True
    meta_trajectories: int = 128
    meta_horizon: int = 100
    meta_unroll: int = 10
    meta_batch: int = 16
    meta_lr_update: float = 1e-3
    meta_lr_teleport: float = 1e-3
    learned_steps: int = 200

    def __post_init__(self) -> None:
        if isinstance(self.task, dict):
            self.task = TaskConfig(**self.task)
        require(self.task.family == "digits", "task.family", f"the digits study needs 'digits', got {self.task.family!r}")
        require(len(self.optimizers) >= 1 and all(o in OPTIMIZERS for o in self.optimizers), "optimizers",
                f"must be a non-empty list of {OPTIMIZERS}, got {self.optimizers}")
        for name in ("steps", "seeds", "tune_seeds", "tune_steps", "ascent_steps", "corr_seeds", "corr_steps",
                     "sharpness_directions", "curvature_draws", "mid_seeds", "mid_step", "mid_steps_after",
                     "geometry_steps", "geometry_directions", "meta_trajectories", "meta_horizon",
                     "meta_unroll", "meta_batch", "learned_steps"):
            v = getattr(self, name)
            require(is_int(v) and v >= 1, name, f"must be a positive integer, got {v!r}")
        require(self.seeds >= 2 and self.corr_seeds >= 4 and self.mid_seeds >= 2, "seeds/corr_seeds/mid_seeds",
                "confidence intervals need ≥ 2 seeds (≥ 4 for a correlation)")
        require(all(0 <= s < self.steps for s in self.teleport_steps), "teleport_steps",
                f"must lie in [0, steps = {self.steps}), got {self.teleport_steps}")
        require(all(0 <= s <= self.steps for s in self.at_steps), "at_steps", f"must lie in [0, {self.steps}]")
        for name in ("lrs", "momenta", "teleport_norms", "radii"):
            v = getattr(self, name)
            require(len(v) >= 1 and all(x > 0 for x in v), name, f"must be a non-empty list of positive numbers, got {v}")
        require(self.geometry_step_norm > 0, "geometry_step_norm", f"must be > 0, got {self.geometry_step_norm}")
        require(self.meta_lr_update > 0 and self.meta_lr_teleport > 0, "meta_lr_update/meta_lr_teleport", "must be > 0")

    @classmethod
    def quick(cls) -> "DigitsStudyConfig":
        """A seconds-scale version for tests (numbers mean little)."""
        return cls(task=TaskConfig(family="digits", dims=[400, 64, 12, 12, 10], bias=True),
                   optimizers=["momentum", "adam"], steps=12, seeds=3, tune_seeds=2, tune_steps=12,
                   lrs=[1e-2, 1e-1], momenta=[0.9], teleport_steps=[0, 3], teleport_norms=[1e-3, 1e-2],
                   ascent_steps=2, at_steps=[5, 12], corr_seeds=5, corr_steps=12, sharpness_directions=3,
                   radii=[0.1, 0.5], curvature_draws=2, mid_seeds=3, mid_step=6, mid_steps_after=6,
                   geometry_steps=2, geometry_directions=2, meta_trajectories=4, meta_horizon=4, meta_unroll=2,
                   meta_batch=2, learned_steps=6)


# -- part 1: standard optimizers with and without teleport --------------------------------------
def ascent_schedule(cfg: DigitsStudyConfig, norm: float) -> TeleportSchedule:
    """Gradient ascent on ‖∇L‖² at ``cfg.teleport_steps``, every ascent step of Frobenius norm ``norm``
    (a rate so large that the cap ``ascent_max_norm`` always binds: normalised steps)."""
    return TeleportSchedule(steps=list(cfg.teleport_steps), strategy="gradient_ascent",
                            ascent_steps=cfg.ascent_steps, ascent_lr=1e12, ascent_max_norm=norm)


def tune_optimizer(name: str, cfg: DigitsStudyConfig) -> dict[str, Any]:
    """Tune ``name`` on training seeds: learning rate (and momentum), then the teleport size.

    Returns ``{"plain": BaselineConfig, "teleport": BaselineConfig, "grid": [...], "teleport_grid": [...]}``.
    """
    seeds = training_seeds(cfg.tune_seeds)
    base = BaselineConfig(name)
    momenta = cfg.momenta if name == "momentum" else None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # higher's RMSprop notice
        plain = grid_search(base, cfg.task, seeds, cfg.tune_steps, lrs=cfg.lrs, momenta=momenta)
        tele_grid = []
        for norm in cfg.teleport_norms:
            c = replace(plain.config, teleport=ascent_schedule(cfg, norm))
            try:
                r = grid_search(c, cfg.task, seeds, cfg.tune_steps, lrs=[plain.config.lr],
                                momenta=[plain.config.momentum] if name == "momentum" else None)
                score = r.grid[0]["score"]
            except ValueError:  # every seed diverged at this size
                score = math.inf
            tele_grid.append({"teleport_norm": norm, "score": score})
    best = min(tele_grid, key=lambda r: r["score"])
    return {"plain": plain.config, "teleport": replace(plain.config, teleport=ascent_schedule(cfg, best["teleport_norm"])),
            "grid": plain.grid, "teleport_grid": tele_grid,
            "plain_score": min(g["score"] for g in plain.grid)}


class _Recording(TeleportStrategy):
    """Wraps a strategy and records the loss change of each call on a digits batch."""

    def __init__(self, inner: TeleportStrategy, batch: DigitsBatch) -> None:
        self.inner, self.batch, self.changes = inner, batch, []

    def __call__(self, weights, X, Y, grads=None):
        new = self.inner(weights, X, Y, grads)
        self.changes.append(teleport_loss_change(self.batch, [w.detach() for w in weights], [w.detach() for w in new]))
        return new


def measure_teleports(config: BaselineConfig, task: TaskConfig, seeds: Sequence[int]) -> dict[str, Any]:
    """Run ``config`` up to its last teleport and record each teleport's relative loss change on
    the teleport batch, the rest of the training set and the validation set (per seed, averaged
    over the teleports)."""
    batch = sample_digits(task, seeds)
    opt = HandDesigned(config, batch.X, batch.Y, batch.weights, loss_fn=cross_entropy,
                       teleport_samples=task.teleport_samples, minibatches=minibatch_sampler(task, batch.seeds))
    opt.strategy = recorder = _Recording(opt.strategy, batch)
    W = [w.detach() for w in batch.weights]
    for _ in range(max(config.teleport.steps) + 1):
        W = [w.detach() for w in opt.step(W)[0]]
    out = {}
    for part in ("teleport_batch", "rest", "validation"):
        per_seed = torch.stack([getattr(c, part) for c in recorder.changes]).to(torch.float64)  # [teleports, K]
        finite = torch.isfinite(per_seed).all(0)  # a seed that diverged is counted, not averaged
        out[part] = {"mean_ci": list(mean_ci(per_seed.mean(0).numpy())),
                     "max_abs": float(per_seed[:, finite].abs().max()) if finite.any() else math.nan,
                     "non_finite_seeds": int((~finite).sum())}
    return out


def run_optimizers(cfg: DigitsStudyConfig, log=print) -> dict[str, Any]:
    """Part 1: tuned optimizers with and without teleport on ``cfg.seeds`` unseen seeds."""
    seeds = list(unseen_seeds(cfg.seeds))
    curves: dict[str, Curves] = {}
    tuning, effects = {}, {}
    for name in cfg.optimizers:
        t0 = time.perf_counter()
        tuned = tune_optimizer(name, cfg)
        tuning[name] = tuned
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            for arm in ("plain", "teleport"):
                label = LABELS[name] + ("+teleport" if arm == "teleport" else "")
                method = BaselineMethod(tuned[arm], name=label, task=cfg.task)
                curves[label] = evaluate(method, cfg.task, seeds, cfg.steps, train_seeds=training_seeds(cfg.tune_seeds))
            effects[name] = measure_teleports(tuned["teleport"], cfg.task, seeds)
        log(f"  {LABELS[name]}: lr {tuned['plain'].lr:g}, teleport ‖T‖ per ascent step "
            f"{tuned['teleport'].teleport.ascent_max_norm:g} ({time.perf_counter() - t0:.0f} s)")
    return {"curves": curves, "tuning": tuning, "effects": effects, "seeds": seeds}


def paired_metric(a: np.ndarray, b: np.ndarray) -> dict[str, Any]:
    """Mean and 95% CI of ``a − b`` over seeds where both are finite, with the paired t-test p."""
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    m, lo, hi = mean_ci(d)
    p = float(stats.ttest_rel(a[ok], b[ok]).pvalue) if d.size >= 2 and d.std() > 0 else math.nan
    return {"mean_diff": m, "ci95": [lo, hi], "p_value": p, "n": int(d.size)}


# -- parts 2 and 3: sharpness, curvature and validation loss ------------------------------------
def train(config: BaselineConfig, batch: DigitsBatch, weights: Sequence[torch.Tensor], steps: int,
          minibatches: MinibatchSampler | None = None) -> list[torch.Tensor]:
    """``steps`` steps of ``config`` on the batch's training images (fresh optimizer state), full
    batch or on the minibatches of its steps ``0..steps−1``."""
    opt = HandDesigned(config, batch.X, batch.Y, weights, loss_fn=cross_entropy, minibatches=minibatches)
    W = [w.detach() for w in weights]
    for _ in range(steps):
        W = [w.detach() for w in opt.step(W)[0]]
    return W


def geometry(cfg: DigitsStudyConfig, batch: DigitsBatch, W: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Sharpness on the training set and mean orbit curvature (``curvature_draws`` random ``M``,
    teleport batch) at ``W``, per task ``[K]``."""
    with torch.no_grad():
        sharp = sharpness(W, batch.X, batch.Y, cross_entropy, cfg.radii, cfg.sharpness_directions, seed=1)
    kappa = torch.stack([orbit_curvature(W, batch.X_tele, random_lie_elements(W, seed=100 + i)).detach()
                         for i in range(cfg.curvature_draws)]).mean(0)
    return {"sharpness": sharp, "curvature": kappa}


def pearson(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Pearson ``r`` with a 95% CI (Fisher z) and its p-value, over finite pairs."""
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, n = x[ok], y[ok], int(ok.sum())
    r, p = stats.pearsonr(x, y)
    half = 1.959963984540054 / math.sqrt(n - 3) if n > 3 else math.inf
    z = math.atanh(max(min(float(r), 1 - 1e-12), -1 + 1e-12))
    return {"r": float(r), "ci95": [math.tanh(z - half), math.tanh(z + half)], "p_value": float(p), "n": n}


def correlation_check(cfg: DigitsStudyConfig, adam: BaselineConfig) -> dict[str, Any]:
    """Part 2: sharpness and curvature at the end of training against validation loss."""
    seeds = list(unseen_seeds(cfg.corr_seeds, start=10_000))
    batch = sample_digits(cfg.task, seeds)
    W = train(adam, batch, batch.weights, cfg.corr_steps, minibatch_sampler(cfg.task, seeds))
    geo = geometry(cfg, batch, W)
    val = batch.metrics(W)
    arrays = {"sharpness": geo["sharpness"], "curvature": geo["curvature"], "val_loss": val["val_loss"],
              "val_accuracy": val["val_accuracy"], "train_loss": cross_entropy(W, batch.X, batch.Y).detach()}
    arrays = {k: v.to(torch.float64).numpy() for k, v in arrays.items()}
    return {"seeds": seeds, "values": arrays,
            "sharpness_vs_val_loss": pearson(arrays["sharpness"], arrays["val_loss"]),
            "curvature_vs_val_loss": pearson(arrays["curvature"], arrays["val_loss"])}


MID_ARMS = {"curvature up": ("curvature", "raise"), "sharpness down": ("sharpness", "lower")}


def mid_training_teleport(cfg: DigitsStudyConfig, adam: BaselineConfig) -> dict[str, Any]:
    """Part 3: at ``mid_step`` teleport towards higher curvature / lower sharpness (or not), then
    train ``mid_steps_after`` more steps (fresh Adam state in every arm); paired on seeds."""
    seeds = list(unseen_seeds(cfg.mid_seeds, start=20_000))
    batch = sample_digits(cfg.task, seeds)
    minibatches = minibatch_sampler(cfg.task, seeds)  # every arm trains on the same minibatches after the teleport
    W_mid = train(adam, batch, batch.weights, cfg.mid_step, minibatches)
    geo_mid = geometry(cfg, batch, W_mid)
    arms = {"no teleport": W_mid}
    for label, (objective, direction) in MID_ARMS.items():
        strategy = GeometryTeleport(objective, direction, cfg.geometry_steps, cfg.geometry_step_norm,
                                    loss_fn=cross_entropy, radii=cfg.radii, directions=cfg.geometry_directions, seed=7)
        arms[label] = [w.detach() for w in strategy(W_mid, batch.X_tele, batch.Y_tele)]
    out: dict[str, Any] = {"seeds": seeds, "arms": {}}
    finals = {}
    for label, W in arms.items():
        geo = geometry(cfg, batch, W) if label != "no teleport" else geo_mid
        change = teleport_loss_change(batch, W_mid, W)
        W_end = train(adam, batch, W, cfg.mid_steps_after, minibatches)
        end = batch.metrics(W_end)
        finals[label] = {
            "val_loss_after_teleport": batch.metrics(W)["val_loss"],
            "val_loss_end": end["val_loss"], "val_accuracy_end": end["val_accuracy"],
            "train_loss_end": cross_entropy(W_end, batch.X, batch.Y).detach(),
        }
        out["arms"][label] = {
            "relative_change": {k: list(mean_ci(getattr(change, k).to(torch.float64).numpy()))
                                for k in ("teleport_batch", "rest", "validation")},
            "rest_loss_before_after": [float(cross_entropy(w_, batch.X_rest, batch.Y_rest).mean()) for w_ in (W_mid, W)],
            "max_abs_teleport_batch_change": float(change.teleport_batch.abs().max()),
            "sharpness_change": list(mean_ci((geo["sharpness"] - geo_mid["sharpness"]).to(torch.float64).numpy())),
            "curvature_change": list(mean_ci((geo["curvature"] - geo_mid["curvature"]).to(torch.float64).numpy())),
        }
    np_finals = {a: {k: v.to(torch.float64).numpy() for k, v in f.items()} for a, f in finals.items()}
    for label in MID_ARMS:
        out["arms"][label]["vs_no_teleport"] = {
            k: paired_metric(np_finals[label][k], np_finals["no teleport"][k]) for k in np_finals[label]}
    out["finals"] = np_finals
    return out


# -- part 4: learned teleport on digits --------------------------------------------------------
#: label → (variant, meta-objective) of the part-4 meta-training runs (coordinatewise architecture)
LEARNED_RUNS = {"learned update": ("update", "train"), "learned update+tele": ("update+tele", "train"),
                "learned update (val objective)": ("update", "validation"),
                "learned update+tele (val objective)": ("update+tele", "validation")}


def meta_config(cfg: DigitsStudyConfig, variant: str, objective: str) -> MetaTrainConfig:
    """The meta-training run of part 4 (training seeds from 1000 on, above the tuning seeds); m2's
    rate ``meta_lr_teleport`` is set for a variant that teleports only."""
    m2 = {"lr_teleport": cfg.meta_lr_teleport} if variant != "update" else {}
    return MetaTrainConfig.from_dict({
        "task": to_dict(cfg.task), "learned": {"arch": "coordinatewise", "variant": variant},
        "trajectories": cfg.meta_trajectories, "steps": cfg.meta_horizon, "unroll": cfg.meta_unroll,
        "batch_size": cfg.meta_batch, "meta_loss": "mean_log", "lr_update": cfg.meta_lr_update,
        **m2, "device": "cpu", "meta_objective": objective, "train_seed_start": 1000, "seed": 0,
    })


def run_learned(cfg: DigitsStudyConfig, adam: Mapping[str, BaselineConfig], checkpoints: Path, log=print) -> dict[str, Any]:
    """Part 4: meta-train the learned optimizers of :data:`LEARNED_RUNS`, save them to
    ``checkpoints/digits_*.safetensors`` with ``checkpoints/digits.manifest.json``, and evaluate
    them with the tuned Adam (± teleport) on the same unseen seeds."""
    seeds = list(unseen_seeds(cfg.seeds, start=30_000))
    curves: dict[str, Curves] = {}
    files, meta = [], {}
    for label, (variant, objective) in LEARNED_RUNS.items():
        t0 = time.perf_counter()
        mc = meta_config(cfg, variant, objective)
        result = meta_train(mc, progress=False)
        slug = variant.replace("+", "_") + ("_val" if objective == "validation" else "")  # digits_update_tele_val
        curves[label] = evaluate(result.optimizer, cfg.task, seeds, cfg.learned_steps, train_seeds=range(*result.train_seeds))
        curves[label].name = label
        summary = {"val_loss_final": mean_ci(curves[label].metrics["val_loss"][-1]),
                   "val_accuracy_final": mean_ci(curves[label].metrics["val_accuracy"][-1]),
                   "log10_train_loss_final": mean_ci(curves[label].log_loss[-1]), "seeds": [seeds[0], seeds[-1] + 1]}
        path = save_checkpoint(Path(checkpoints) / f"digits_{slug}.safetensors", result.optimizer, mc,
                               provenance={"training_seeds": result.train_seeds, "meta_steps": result.meta_steps},
                               evaluation=summary)
        files.append(path)
        meta[label] = {"config": to_dict(mc), "meta_steps": result.meta_steps, "train_seeds": list(result.train_seeds),
                       "diverged_total": result.diverged_total, "seconds": time.perf_counter() - t0,
                       "checkpoint": path.name, "final_meta_loss": result.history[-1]["meta_loss"] if result.history else None}
        log(f"  {label}: {result.meta_steps} meta-steps ({time.perf_counter() - t0:.0f} s)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        for arm, label in (("plain", "Adam"), ("teleport", "Adam+teleport")):
            curves[label] = evaluate(BaselineMethod(adam[arm], name=label, task=cfg.task), cfg.task, seeds,
                                     cfg.learned_steps, train_seeds=training_seeds(cfg.tune_seeds))
    manifest = write_manifest(Path(checkpoints) / "digits.manifest.json", files, config=to_dict(cfg),
                              seeds={"test": [seeds[0], seeds[-1] + 1]},
                              metrics={n: meta[n] for n in meta})
    return {"curves": curves, "meta": meta, "seeds": seeds, "manifest": str(manifest), "checkpoints": str(checkpoints)}


# -- figures and report --------------------------------------------------------------------------
def results_json(results: Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready copy of the results (curves as dicts, configs as dicts, arrays as lists)."""
    opt = results["optimizers"]
    tuning = {n: {**{k: v for k, v in t.items() if k not in ("plain", "teleport")},
                  "plain": to_dict(t["plain"]), "teleport": to_dict(t["teleport"])} for n, t in opt["tuning"].items()}
    return to_json({
        "config": to_dict(results["config"]), "wall_seconds": results["wall_seconds"],
        "threads": results["threads"], "device": results["device"], "command": results.get("command"),
        "optimizers": {"curves": {n: c.to_dict() for n, c in opt["curves"].items()}, "tuning": tuning,
                       "effects": opt["effects"], "seeds": opt["seeds"]},
        "correlation": results["correlation"], "mid_training": results["mid_training"],
        **({"learned": {**{k: v for k, v in results["learned"].items() if k != "curves"},
                        "curves": {n: c.to_dict() for n, c in results["learned"]["curves"].items()}}}
           if "learned" in results else {}),
    })


def load_results(path: str | Path) -> dict[str, Any]:
    """Inverse of :func:`results_json` as far as :func:`~metatele.studies.digits_report.render_digits_report` needs: configs and curves
    come back as objects, everything else as JSON values (``None`` for non-finite numbers)."""
    data = json.loads(Path(path).read_text())
    opt = data["optimizers"]
    results = {**data, "config": from_dict(DigitsStudyConfig, data["config"])}
    tuning = {n: {**t, "plain": from_dict(BaselineConfig, t["plain"]), "teleport": from_dict(BaselineConfig, t["teleport"])}
              for n, t in opt["tuning"].items()}
    results["optimizers"] = {**opt, "tuning": tuning, "curves": {n: Curves.from_dict(c) for n, c in opt["curves"].items()}}
    if "learned" in data:
        results["learned"] = {**data["learned"], "curves": {n: Curves.from_dict(c) for n, c in data["learned"]["curves"].items()}}
    return results


