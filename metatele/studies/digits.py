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

:func:`run_digits_study` computes everything and writes ``results.json``, the figures and the
report; :func:`render_report` turns the results into markdown.
"""
from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from ..configs import ConfigError, apply_overrides, from_dict, load_yaml_mapping, require, to_dict
from ..evaluation.evaluate import BaselineMethod, Curves, evaluate, to_json
from ..evaluation.figures import plot_loss_vs_step, plot_loss_vs_time
from ..evaluation.stats import mean_ci, paired_comparison, verdict
from ..evaluation.tuning import grid_search
from ..meta.config import MetaTrainConfig
from ..meta.train import meta_train
from ..optimizers.baselines import BaselineConfig, HandDesigned
from ..release.checkpoint import save_checkpoint
from ..release.manifest import write_manifest
from ..symmetry.generalization import RADII, GeometryTeleport, orbit_curvature, random_lie_elements, sharpness
from ..symmetry.strategies import TeleportSchedule, TeleportStrategy
from ..tasks.digits import DigitsBatch, cross_entropy, sample_digits, teleport_loss_change
from ..tasks.family import TaskConfig, training_seeds, unseen_seeds

OPTIMIZERS = ("adagrad", "momentum", "rmsprop", "adam")
LABELS = {"adagrad": "AdaGrad", "momentum": "SGD+momentum", "rmsprop": "RMSProp", "adam": "Adam"}


def _digits_task() -> TaskConfig:
    return TaskConfig(family="digits", dims=[1000, 64, 32, 32, 10], bias=True)


@dataclass
class DigitsStudyConfig:
    """The scale and settings of the digits study (defaults: the report's scale).

    Attributes:
        task: the digits family (network ``[n_train, 64, 32, 32, 10]`` with biases: teleport
            batch 33 images).
        optimizers: which of AdaGrad, momentum, RMSProp, Adam to run.
        steps: full-batch inner steps per run.
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
            require(isinstance(v, int) and not isinstance(v, bool) and v >= 1, name, f"must be a positive integer, got {v!r}")
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
                       teleport_samples=task.teleport_samples)
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
def train(config: BaselineConfig, batch: DigitsBatch, weights: Sequence[torch.Tensor], steps: int) -> list[torch.Tensor]:
    """``steps`` full-batch steps of ``config`` on the batch's training images (fresh optimizer state)."""
    opt = HandDesigned(config, batch.X, batch.Y, weights, loss_fn=cross_entropy)
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
    W = train(adam, batch, batch.weights, cfg.corr_steps)
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
    W_mid = train(adam, batch, batch.weights, cfg.mid_step)
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
        W_end = train(adam, batch, W, cfg.mid_steps_after)
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
    """The meta-training run of part 4 (training seeds from 1000 on, above the tuning seeds)."""
    return MetaTrainConfig.from_dict({
        "task": to_dict(cfg.task), "learned": {"arch": "coordinatewise", "variant": variant},
        "trajectories": cfg.meta_trajectories, "steps": cfg.meta_horizon, "unroll": cfg.meta_unroll,
        "batch_size": cfg.meta_batch, "meta_loss": "mean_log", "lr_update": cfg.meta_lr_update,
        "lr_teleport": cfg.meta_lr_teleport, "device": "cpu", "meta_objective": objective,
        "train_seed_start": 1000, "seed": 0,
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
def _save(fig: Figure, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=110)
    return str(path)


def plot_metric_vs_step(curves: Mapping[str, Curves], metric: str, ylabel: str, path: Path) -> str:
    """Mean over seeds of ``curves[·].metrics[metric]`` against step, with a 95% CI band."""
    fig = Figure(figsize=(9.0, 4.8))
    ax = fig.add_subplot()
    for i, (name, c) in enumerate(curves.items()):
        v = c.metrics[metric]
        stats_t = np.array([mean_ci(row) for row in v])  # [T + 1, 3]
        x = np.arange(v.shape[0])
        (line,) = ax.plot(x, stats_t[:, 0], label=name, color=f"C{i // 2}", linestyle="--" if "teleport" in name else "-")
        ax.fill_between(x, stats_t[:, 1], stats_t[:, 2], color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_xlabel("step")
    ax.set_ylabel(ylabel)
    ax.set_title(f"{ylabel} on unseen seeds (mean, 95% CI)")
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_correlation(corr: Mapping[str, Any], path: Path) -> str:
    v = corr["values"]
    fig = Figure(figsize=(9.0, 3.8))
    for j, key in enumerate(("sharpness", "curvature")):
        ax = fig.add_subplot(1, 2, j + 1)
        ax.scatter(v[key], v["val_loss"], s=12)
        r = corr[f"{key}_vs_val_loss"]
        ax.set_xlabel(key + (" (training set)" if key == "sharpness" else " (orbit, mean over M)"))
        ax.set_ylabel("validation loss")
        ax.set_title(f"r = {r['r']:.2f} [{r['ci95'][0]:.2f}, {r['ci95'][1]:.2f}], n = {r['n']}")
        ax.grid(True, alpha=0.3)
    return _save(fig, path)


def write_figures(results: Mapping[str, Any], figures: Path) -> list[str]:
    curves = results["optimizers"]["curves"]
    return [
        plot_loss_vs_step(curves, str(figures / "digits_train_loss_vs_step.png"), title="Digits: training loss vs step"),
        plot_loss_vs_time(curves, str(figures / "digits_train_loss_vs_time.png"), title="Digits: training loss vs wall-clock"),
        plot_metric_vs_step(curves, "val_accuracy", "validation accuracy", figures / "digits_val_accuracy.png"),
        plot_metric_vs_step(curves, "val_loss", "validation loss", figures / "digits_val_loss.png"),
        plot_correlation(results["correlation"], figures / "digits_correlation.png"),
    ] + ([
        plot_loss_vs_step(results["learned"]["curves"], str(figures / "digits_learned_train_loss.png"),
                          title="Digits: learned optimizers vs Adam, training loss"),
        plot_metric_vs_step(results["learned"]["curves"], "val_loss", "validation loss",
                            figures / "digits_learned_val_loss.png"),
    ] if "learned" in results else [])


def _f(x: float, fmt: str = ".3f") -> str:
    return "nan" if x is None or not math.isfinite(x) else format(x, fmt)


def _ci(m: float, lo: float, hi: float, fmt: str = ".3f") -> str:
    return f"{_f(m, fmt)} [{_f(lo, fmt)}, {_f(hi, fmt)}]"


def _excludes_zero(ci: Sequence[float | None]) -> bool:
    return all(x is not None and math.isfinite(x) for x in ci) and (ci[0] > 0 or ci[1] < 0)


def render_report(results: Mapping[str, Any], command: str, figures_rel: str = "figures") -> str:
    """The markdown of ``DIGITS.md`` from :func:`run_digits_study`'s results."""
    cfg: DigitsStudyConfig = results["config"]
    opt = results["optimizers"]
    curves: dict[str, Curves] = opt["curves"]
    task = cfg.task
    L = []
    L += ["# Digits: teleportation on real data", "",
          f"Generated by `{command}` in {results['wall_seconds'] / 60:.1f} min "
          f"({results['threads']} thread(s), {results['device']}). Do not edit by hand.", "",
          f"Task: scikit-learn's 8×8 digits, network {task.dims[1:]} with biases, LeakyReLU(0.1), cross-entropy; "
          f"per seed a random split of {task.dims[0]} training / {1797 - task.dims[0]} validation images and a He "
          f"initialisation. Full-batch gradients. The group action acts with a teleport batch of "
          f"{task.teleport_samples} training images (the narrowest teleported layer input, with its bias): "
          "the loss on it is invariant, the loss elsewhere is not.", "",
          "All intervals are 95% Student-t confidence intervals over seeds (correlations: Fisher z). "
          "Seeds: tuning on training seeds, everything reported on unseen (test) seeds.", ""]

    # part 1
    L += ["## 1. Standard optimizers with and without teleport", "",
          f"Each optimizer's learning rate{' (and momentum)' if 'momentum' in cfg.optimizers else ''} is tuned on "
          f"{cfg.tune_seeds} training seeds (grid {cfg.lrs}; final log10 training loss after {cfg.tune_steps} steps). "
          f"The teleporting arm adds gradient ascent over the group on ‖∇L‖² of the teleport-batch loss before steps "
          f"{cfg.teleport_steps} ({cfg.ascent_steps} ascent steps, each of Frobenius norm tuned over {cfg.teleport_norms} "
          f"on the same seeds). {cfg.seeds} unseen seeds, {cfg.steps} steps. The wall-clock column is the time of the "
          "whole batch of seeds (one process).", "",
          "Tuning on the training seeds (mean final log10 training loss; lower is better):", "",
          "| optimizer | without teleport | with teleport, per ‖T‖ |", "|---|---|---|"]
    for name in cfg.optimizers:
        t = opt["tuning"][name]
        grid = ", ".join(f"{g['teleport_norm']:g}: {_f(g['score'], '.2f')}" for g in t["teleport_grid"])
        L.append(f"| {LABELS[name]} | {_f(t['plain_score'], '.2f')} | {grid} |")
    L += [""]
    L += ["| optimizer | lr | teleport ‖T‖/ascent step | " + " | ".join(f"log10 train loss @ {s}" for s in cfg.at_steps)
          + f" | val loss @ {cfg.steps} | val accuracy @ {cfg.steps} | wall-clock s |", "|" + "---|" * (len(cfg.at_steps) + 6)]
    for name in cfg.optimizers:
        t = opt["tuning"][name]
        for arm in ("plain", "teleport"):
            label = LABELS[name] + ("+teleport" if arm == "teleport" else "")
            c = curves[label]
            cells = [_ci(*mean_ci(c.log_loss[s]), ".2f") for s in cfg.at_steps]
            norm = _f(t["teleport"].teleport.ascent_max_norm, "g") if arm == "teleport" else "—"
            mom = f" (β {t['plain'].momentum:g})" if name == "momentum" else ""
            L.append(f"| {label} | {t['plain'].lr:g}{mom} | {norm} | " + " | ".join(cells)
                     + f" | {_ci(*mean_ci(c.metrics['val_loss'][-1]))} | {_ci(*mean_ci(c.metrics['val_accuracy'][-1]))}"
                     + f" | {c.time[-1]:.2f} |")
    L += ["", "Teleport against no teleport, paired on seeds (Δ = with − without):", ""]
    for name in cfg.optimizers:
        a, b = curves[LABELS[name] + "+teleport"], curves[LABELS[name]]
        for s in cfg.at_steps:
            L.append(f"- {verdict(paired_comparison(a, b, s))} (training loss)")
        for key, what in (("val_loss", "validation loss"), ("val_accuracy", "validation accuracy")):
            d = paired_metric(a.metrics[key][-1], b.metrics[key][-1])
            L.append(f"- {a.name} vs {b.name}: Δ {what} @ {cfg.steps} = {_ci(d['mean_diff'], *d['ci95'])}, p = {_f(d['p_value'], '.2g')}")
    L += ["", "The loss change one teleport causes (relative, mean over the teleports of a run; mean [CI] over seeds):", "",
          "| optimizer | teleport batch (max abs) | rest of training set | validation set |", "|---|---|---|---|"]
    for name in cfg.optimizers:
        e = opt["effects"][name]
        bad = e["teleport_batch"]["non_finite_seeds"]
        L.append(f"| {LABELS[name]} | {_f(e['teleport_batch']['max_abs'], '.1e')}{f' ({bad} seeds diverged)' if bad else ''} | "
                 f"{_ci(*e['rest']['mean_ci'], '.4f')} | "
                 f"{_ci(*e['validation']['mean_ci'], '.4f')} |")
    L += ["", f"![training loss vs step]({figures_rel}/digits_train_loss_vs_step.png)",
          f"![training loss vs wall-clock]({figures_rel}/digits_train_loss_vs_time.png)",
          f"![validation accuracy]({figures_rel}/digits_val_accuracy.png)",
          f"![validation loss]({figures_rel}/digits_val_loss.png)", ""]

    # part 2
    corr = results["correlation"]
    L += ["## 2. Sharpness, curvature and validation loss", "",
          f"{cfg.corr_seeds} unseen seeds trained by the tuned Adam for {cfg.corr_steps} steps. Sharpness: mean training "
          f"loss at W + δ over {cfg.sharpness_directions} random directions for each norm in {cfg.radii}. Curvature: of "
          f"the orbit curve exp(tM)·W at t = 0 (teleport batch), mean over {cfg.curvature_draws} random unit M.", "",
          "| quantity | Pearson r with validation loss [95% CI] | p | n |", "|---|---|---|---|"]
    for key in ("sharpness", "curvature"):
        r = corr[f"{key}_vs_val_loss"]
        L.append(f"| {key} | {_ci(r['r'], *r['ci95'], '.2f')} | {_f(r['p_value'], '.2g')} | {r['n']} |")
    L += ["", f"![correlation]({figures_rel}/digits_correlation.png)", ""]

    # part 3
    mid = results["mid_training"]
    L += ["## 3. Teleporting mid-training for generalization", "",
          f"{cfg.mid_seeds} unseen seeds: tuned Adam for {cfg.mid_step} steps, then a teleport by {cfg.geometry_steps} "
          f"normalised gradient steps on T (‖T‖ = {cfg.geometry_step_norm} each, a step that does not move the objective "
          f"is refused and halved) raising the orbit curvature or lowering the sharpness (measured on the teleport "
          f"batch, {cfg.geometry_directions} directions per norm), then {cfg.mid_steps_after} more Adam steps (fresh "
          "state in every arm, also without teleport).", "",
          "| arm | Δ sharpness (train) | Δ curvature | rel. Δ loss teleport batch (max abs) | loss on the rest: before → after (mean) | rel. Δ loss rest | rel. Δ val loss |",
          "|---|---|---|---|---|---|---|"]
    for label in MID_ARMS:
        a = mid["arms"][label]
        L.append(f"| {label} | {_ci(*a['sharpness_change'], '.4f')} | {_ci(*a['curvature_change'], '.2e')} | "
                 f"{_f(a['max_abs_teleport_batch_change'], '.1e')} | {_f(a['rest_loss_before_after'][0], '.4f')} → "
                 f"{_f(a['rest_loss_before_after'][1], '.4f')} | {_ci(*a['relative_change']['rest'], '.4f')} | "
                 f"{_ci(*a['relative_change']['validation'], '.4f')} |")
    L += ["", f"Against not teleporting, paired on seeds (Δ = teleport − none) after the {cfg.mid_steps_after} further steps:", "",
          "| arm | Δ val loss right after teleport | Δ val loss at end | Δ val accuracy at end | Δ train loss at end |",
          "|---|---|---|---|---|"]
    for label in MID_ARMS:
        v = mid["arms"][label]["vs_no_teleport"]
        cells = [_ci(v[k]["mean_diff"], *v[k]["ci95"], ".4f") for k in
                 ("val_loss_after_teleport", "val_loss_end", "val_accuracy_end", "train_loss_end")]
        L.append(f"| {label} | " + " | ".join(cells) + " |")

    if "learned" in results:
        L += learned_section(results, figures_rel)
    L += ["", "## Conclusions", ""] + [x for line in summary(results) for x in (line, "")]
    L += ["In detail:", ""] + [f"- {c}" for c in conclusions(results)]
    L += ["", "## Reproduce", "", "```", command, "```", "",
          "Numbers are deterministic given the seeds on one machine and thread count; wall-clock columns are not.", ""]
    return "\n".join(L)


def learned_section(results: Mapping[str, Any], figures_rel: str) -> list[str]:
    """Section 4 of the report: learned optimizers on digits against the tuned Adam."""
    cfg: DigitsStudyConfig = results["config"]
    lr = results["learned"]
    curves: dict[str, Curves] = lr["curves"]
    steps = sorted({s for s in (10, 30, cfg.meta_horizon, cfg.learned_steps) if s <= cfg.learned_steps})
    L = ["", "## 4. Learned teleport on digits", "",
         f"Coordinatewise optimizers (per-coordinate m1 that starts as Adam, equivariant m2) meta-trained on "
         f"{cfg.meta_trajectories} training tasks × {cfg.meta_horizon} steps (truncation {cfg.meta_unroll}, "
         f"{cfg.meta_batch} trajectories per batch, mean log-loss), with the training loss as meta-objective, or "
         f"(val objective) the loss on each task's validation images. Evaluated on {cfg.seeds} unseen seeds for {cfg.learned_steps} steps against the tuned Adam "
         "(same rate and teleport as in part 1). Every task splits the same 1,797 images differently, so the "
         "validation images of an unseen task were among the images of the meta-training tasks; the optimizers "
         f"see no image directly, only per-coordinate gradients. Checkpoints: `{lr['checkpoints']}/digits_*.safetensors` "
         f"with `{lr['checkpoints']}/digits.manifest.json`.", "",
         "| method | meta-steps | " + " | ".join(f"log10 train loss @ {s}" for s in steps)
         + " | " + " | ".join(f"val loss @ {s}" for s in steps) + f" | val accuracy @ {cfg.learned_steps} |",
         "|" + "---|" * (2 * len(steps) + 3)]
    for name, c in curves.items():
        ms = lr["meta"].get(name, {}).get("meta_steps", "—")
        L.append(f"| {name} | {ms} | " + " | ".join(_ci(*mean_ci(c.log_loss[s]), ".2f") for s in steps) + " | "
                 + " | ".join(_ci(*mean_ci(c.metrics["val_loss"][s])) for s in steps)
                 + f" | {_ci(*mean_ci(c.metrics['val_accuracy'][-1]))} |")
    if any((c.loss == 0).any() for c in curves.values()):
        L += ["", "A log10 training loss far below −10 means that the float32 loss reached exactly 0 on some seeds "
                  "(the log is floored at 1e-300): those optimizers fit the training images perfectly."]
    L += ["", f"Paired on seeds at step {cfg.learned_steps} (Δ = first − second):", ""]
    pairs = [(n, "Adam") for n in LEARNED_RUNS] + [("learned update+tele", "learned update"),
                                                   ("learned update+tele (val objective)", "learned update (val objective)"),
                                                   ("learned update+tele (val objective)", "learned update+tele")]
    for a, b in pairs:
        va = paired_metric(curves[a].metrics["val_loss"][-1], curves[b].metrics["val_loss"][-1])
        aa = paired_metric(curves[a].metrics["val_accuracy"][-1], curves[b].metrics["val_accuracy"][-1])
        L.append(f"- {verdict(paired_comparison(curves[a], curves[b], cfg.learned_steps))} (training loss); "
                 f"Δ val loss {_ci(va['mean_diff'], *va['ci95'])}; Δ val accuracy {_ci(aa['mean_diff'], *aa['ci95'])}")
    L += ["", f"![learned, training loss]({figures_rel}/digits_learned_train_loss.png)",
          f"![learned, validation loss]({figures_rel}/digits_learned_val_loss.png)"]
    return L


def summary(results: Mapping[str, Any]) -> list[str]:
    """A short paragraph: where teleportation helps on digits, where it does not, by how much."""
    cfg: DigitsStudyConfig = results["config"]
    opt, T = results["optimizers"], cfg.at_steps[-1]
    helped, hurt, flat = [], [], []
    for name in cfg.optimizers:
        a, b = opt["curves"][LABELS[name] + "+teleport"], opt["curves"][LABELS[name]]
        c = paired_comparison(a, b, T)
        if int(a.diverged[-1].sum()) > int(b.diverged[-1].sum()):
            hurt.append(f"{LABELS[name]} (diverged on {int(a.diverged[-1].sum())} seeds)")
        elif _excludes_zero(c["ci95"]):
            (helped if c["mean_diff"] < 0 else hurt).append(f"{LABELS[name]} (×{10 ** c['mean_diff']:.2f})")
        else:
            flat.append(LABELS[name])
    acc = [paired_metric(opt["curves"][LABELS[n] + "+teleport"].metrics["val_accuracy"][-1],
                         opt["curves"][LABELS[n]].metrics["val_accuracy"][-1]) for n in cfg.optimizers]
    finite = [d for d in acc if d["mean_diff"] is not None and math.isfinite(d["mean_diff"])]
    biggest = max(finite, key=lambda d: abs(d["mean_diff"])) if finite else None
    n_sig = sum(_excludes_zero(d["ci95"]) for d in finite)
    verdict_acc = ("" if biggest is None else
                   f" On validation accuracy the largest mean change is {100 * biggest['mean_diff']:+.1f} points, and "
                   f"{n_sig} of {len(finite)} changes have a 95% CI excluding 0"
                   + (": below one point, too small to matter." if abs(biggest["mean_diff"]) < 0.01 else "."))
    lines = [f"Gradient-ascent teleports early in training, with the exact group action on a teleport batch of "
             f"{cfg.task.teleport_samples} images, change the final training loss (step {T}, ratio with/without) "
             f"of: lower for {', '.join(helped) or 'none'}; higher or less stable for {', '.join(hurt) or 'none'}; "
             f"no detectable change for {', '.join(flat) or 'none'}.{verdict_acc}"]
    corr, mid = results["correlation"], results["mid_training"]["arms"]
    lines.append(f"Across {corr['sharpness_vs_val_loss']['n']} trained networks, sharpness and orbit curvature at the end of "
                 f"training correlate with validation loss at r = {corr['sharpness_vs_val_loss']['r']:.2f} and "
                 f"r = {corr['curvature_vs_val_loss']['r']:.2f} (95% CIs in section 2); teleporting mid-training "
                 f"towards higher curvature changes the final validation loss by "
                 f"{mid['curvature up']['vs_no_teleport']['val_loss_end']['mean_diff']:+.3f} and towards lower sharpness by "
                 f"{mid['sharpness down']['vs_no_teleport']['val_loss_end']['mean_diff']:+.3f} (section 3; CIs there). The "
                 "group action is a symmetry of the loss on the teleport batch only, so every teleport here also "
                 "moves the loss on the other training images (the rest-of-training-set columns).")
    if "learned" in results:
        c = results["learned"]["curves"]
        v = paired_metric(c["learned update+tele (val objective)"].metrics["val_loss"][-1], c["Adam"].metrics["val_loss"][-1])
        t = paired_metric(c["learned update+tele (val objective)"].metrics["val_loss"][-1],
                          c["learned update (val objective)"].metrics["val_loss"][-1])
        tr = paired_comparison(c["learned update+tele"], c["Adam"], cfg.learned_steps)
        vt = paired_metric(c["learned update+tele"].metrics["val_loss"][-1], c["Adam"].metrics["val_loss"][-1])
        own = ("its teleport's own contribution (against the update-only twin meta-trained the same way) is not "
               "detectable" if not _excludes_zero(t["ci95"]) else
               f"its teleport {'lowers' if t['mean_diff'] < 0 else 'raises'} the validation loss by "
               f"{abs(t['mean_diff']):.3f} against the update-only twin meta-trained the same way"
               + ("" if t["mean_diff"] < 0 else ", so the gain comes from the learned update, not from teleporting"))
        lines.append(f"Meta-trained on the training loss, the learned update+tele ends at a training loss "
                     f"{10 ** tr['mean_diff']:.2g}× Adam's and a validation loss {vt['mean_diff']:+.3f} from Adam's "
                     f"(step {cfg.learned_steps}); meta-trained on the validation loss, its validation loss is "
                     f"{v['mean_diff']:+.3f} from Adam's, and {own}.")
    return lines


def conclusions(results: Mapping[str, Any]) -> list[str]:
    """Plain statements read off the results (signs decided by whether a 95% CI excludes 0)."""
    cfg: DigitsStudyConfig = results["config"]
    opt, out = results["optimizers"], []
    for name in cfg.optimizers:
        a, b = opt["curves"][LABELS[name] + "+teleport"], opt["curves"][LABELS[name]]
        s = cfg.at_steps[-1]
        c = paired_comparison(a, b, s)
        d = paired_metric(a.metrics["val_accuracy"][-1], b.metrics["val_accuracy"][-1])
        if _excludes_zero(c["ci95"]):
            word = f"{'lowers' if c['mean_diff'] < 0 else 'raises'} the training loss at step {s} by a factor {10 ** abs(c['mean_diff']):.2f}"
        else:
            word = f"does not change the training loss at step {s} detectably (Δlog10 {_ci(c['mean_diff'], *c['ci95'], '.2f')})"
        acc = (f"validation accuracy {'+' if d['mean_diff'] >= 0 else ''}{100 * d['mean_diff']:.1f} points"
               + (" (significant)" if _excludes_zero(d["ci95"]) else " (not significant)"))
        rest = opt["effects"][name]["rest"]["mean_ci"]
        gone = int(a.diverged[-1].sum()) - int(b.diverged[-1].sum())
        div = f" ({gone} of {len(a.seeds)} seeds diverged with the teleport, not without; the loss ratio is over the others)" if gone > 0 else ""
        out.append(f"{LABELS[name]}: gradient-ascent teleport {word}{div}; {acc}; each teleport changes the loss on the "
                   f"rest of the training set by {100 * rest[0]:+.2f}% (relative).")
    corr = results["correlation"]
    for key, paper in (("sharpness", "positive"), ("curvature", "negative")):
        r = corr[f"{key}_vs_val_loss"]
        sign = "positive" if r["r"] > 0 else "negative"
        sig = _excludes_zero(r["ci95"])
        out.append(f"{key.capitalize()} vs validation loss: r = {r['r']:.2f} {[round(x, 2) for x in r['ci95']]} — "
                   + (f"{sign}, " if sig else "not significantly different from 0, ")
                   + ("as in the paper" if sig and sign == paper else f"the paper reports {paper}") + ".")
    for label in MID_ARMS:
        v = results["mid_training"]["arms"][label]["vs_no_teleport"]["val_loss_end"]
        eff = ("lowers" if v["mean_diff"] < 0 else "raises") if _excludes_zero(v["ci95"]) else "does not detectably change"
        out.append(f"Teleporting mid-training ({label}) {eff} the final validation loss "
                   f"(Δ {_ci(v['mean_diff'], *v['ci95'], '.4f')}).")
    if "learned" in results:
        curves, T = results["learned"]["curves"], cfg.learned_steps
        for a, b, what in (("learned update+tele", "learned update", "the learned teleport (training objective)"),
                           ("learned update+tele (val objective)", "learned update+tele",
                            "meta-training on the validation loss instead of the training loss"),
                           ("learned update+tele (val objective)", "learned update (val objective)",
                            "the learned teleport when both are meta-trained on the validation loss"),
                           ("learned update+tele (val objective)", "Adam",
                            "the update+tele meta-trained on the validation loss against tuned Adam"),
                           ("learned update+tele", "Adam", "the learned update+tele against tuned Adam")):
            v = paired_metric(curves[a].metrics["val_loss"][-1], curves[b].metrics["val_loss"][-1])
            c = paired_comparison(curves[a], curves[b], T)
            tr = (("lower" if c["mean_diff"] < 0 else "higher") + " training loss" if _excludes_zero(c["ci95"])
                  else "no detectable training-loss difference")
            va = (("lower" if v["mean_diff"] < 0 else "higher") + " validation loss" if _excludes_zero(v["ci95"])
                  else "no detectable validation-loss difference")
            out.append(f"At step {T}, {what}: {tr} (Δlog10 {_ci(c['mean_diff'], *c['ci95'], '.2f')}), {va} "
                       f"(Δ {_ci(v['mean_diff'], *v['ci95'])}).")
    return out


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
    """Inverse of :func:`results_json` as far as :func:`render_report` needs: configs and curves
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


def run_digits_study(cfg: DigitsStudyConfig, out: str | Path, command: str = "metatele digits",
                     report: str | Path | None = None, checkpoints: str | Path | None = None,
                     log=print) -> dict[str, Any]:
    """Run every part; write ``out/results.json``, the report (``report``, default
    ``out/DIGITS.md``) with ``figures/digits_*.png`` next to it, and the part-4 checkpoints with
    their manifest (``checkpoints``, default ``out/checkpoints``). Returns the results."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    log("digits 1/4: standard optimizers with and without teleport")
    results: dict[str, Any] = {"config": cfg, "optimizers": run_optimizers(cfg, log)}
    adam = results["optimizers"]["tuning"]["adam"]["plain"] if "adam" in cfg.optimizers else BaselineConfig("adam", lr=1e-2)
    log("digits 2/4: sharpness and curvature against validation loss")
    results["correlation"] = correlation_check(cfg, adam)
    log("digits 3/4: mid-training teleports")
    results["mid_training"] = mid_training_teleport(cfg, adam)
    if cfg.learned:
        log("digits 4/4: learned teleport on digits (meta-training)")
        tuned = results["optimizers"]["tuning"].get("adam") or {"plain": adam, "teleport": replace(adam, teleport=ascent_schedule(cfg, cfg.teleport_norms[0]))}
        results["learned"] = run_learned(cfg, tuned, Path(checkpoints) if checkpoints else out / "checkpoints", log)
    results["wall_seconds"] = time.perf_counter() - t0
    results["threads"], results["device"], results["command"] = torch.get_num_threads(), "cpu", command
    report = Path(report) if report else out / "DIGITS.md"
    figures = report.parent / "figures"
    write_figures(results, figures)
    tmp = out / "results.json.tmp"
    tmp.write_text(json.dumps(results_json(results), indent=1, allow_nan=False))
    tmp.replace(out / "results.json")
    report.write_text(render_report(results, command, figures_rel="figures"))
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="metatele digits",
                                description="The digits study: standard optimizers ± teleport, sharpness and "
                                            "curvature vs validation loss, mid-training teleports (DIGITS.md).")
    p.add_argument("--config", help="YAML with DigitsStudyConfig keys (e.g. experiments/configs/digits.yaml)")
    p.add_argument("--quick", action="store_true", help="seconds-scale run for testing (numbers mean little)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set seeds=40")
    p.add_argument("--out", default="runs/digits", help="folder for results.json (default runs/digits)")
    p.add_argument("--report", help="where to write the report (default OUT/DIGITS.md; figures go next to it)")
    p.add_argument("--checkpoints", help="folder for the learned checkpoints and their manifest (default OUT/checkpoints)")
    p.add_argument("--render-only", action="store_true",
                   help="re-render the report and figures from OUT/results.json without running anything")
    return p


def main(argv: list[str]) -> int:
    """``metatele digits ARGS``; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        base = to_dict(DigitsStudyConfig.quick() if args.quick else DigitsStudyConfig())
        if args.config:
            base.update(load_yaml_mapping(args.config, "digits config"))
        cfg = from_dict(DigitsStudyConfig, apply_overrides(base, args.overrides))
    except ConfigError as e:
        print(f"metatele digits: error: {e}", file=sys.stderr)
        return 2
    if args.render_only:
        results = load_results(Path(args.out) / "results.json")
        report = Path(args.report) if args.report else Path(args.out) / "DIGITS.md"
        write_figures(results, report.parent / "figures")
        report.write_text(render_report(results, results["command"]))
        print(f"re-rendered {report} from {Path(args.out) / 'results.json'}")
        return 0
    command = "metatele digits" + (" " + shlex.join(argv) if argv else "")
    results = run_digits_study(cfg, args.out, command, args.report, args.checkpoints)
    print("\n".join(conclusions(results)))
    print(f"\nreport: {args.report or Path(args.out) / 'DIGITS.md'}; wall time {results['wall_seconds'] / 60:.1f} min")
    return 0
