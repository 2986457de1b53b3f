"""The report of the digits study: figures, ``DIGITS.md``, and :func:`run_digits_study`, which runs
every part of :mod:`metatele.studies.digits` and writes ``results.json``, the figures and the report.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from ..evaluation.evaluate import Curves
from ..evaluation.figures import plot_loss_vs_step, plot_loss_vs_time
from ..evaluation.stats import mean_ci, paired_comparison
from ..optimizers.baselines import BaselineConfig
from .digits import (LABELS, LEARNED_RUNS, MID_ARMS, DigitsStudyConfig, ascent_schedule, correlation_check,
                     mid_training_teleport, paired_metric, results_json, run_learned, run_optimizers)
from .report import verdict_cell


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


#: how to read the verdict tables
VERDICTS_KEY = ("each cell Δ [95% CI] and p of the paired t-test (a sign test where some seed diverged); "
                "**bold**: significant at 0.05 (uncorrected).")


def _metric_cells(a: Curves, b: Curves) -> str:
    """``Δ val loss | Δ val accuracy`` at the last step, paired on seeds (bold: the CI excludes 0)."""
    cells = []
    for key in ("val_loss", "val_accuracy"):
        d = paired_metric(a.metrics[key][-1], b.metrics[key][-1])
        text = f"{_ci(d['mean_diff'], *d['ci95'])}, p = {_f(d['p_value'], '.2g')}"
        cells.append(f"**{text}**" if _excludes_zero(d["ci95"]) else text)
    return " | ".join(cells)


def render_digits_report(results: Mapping[str, Any], command: str, figures_rel: str = "figures") -> str:
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
          f"initialisation. "
          + ("Full-batch gradients. " if task.minibatch is None else
             f"Minibatch gradients ({task.minibatch} training images per step). ")
          + "The group action acts with a teleport batch of "
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
    L += ["", "Teleport against no teleport, paired on seeds (Δ = with − without); " + VERDICTS_KEY, "",
          "| optimizer | " + " | ".join(f"Δ log10 train loss @ {s}" for s in cfg.at_steps)
          + f" | Δ val loss @ {cfg.steps} | Δ val accuracy @ {cfg.steps} |", "|---|" + "---|" * (len(cfg.at_steps) + 2)]
    for name in cfg.optimizers:
        a, b = curves[LABELS[name] + "+teleport"], curves[LABELS[name]]
        L.append(f"| {LABELS[name]} | " + " | ".join(verdict_cell(paired_comparison(a, b, s), fmt=".2f")
                                                    for s in cfg.at_steps) + " | " + _metric_cells(a, b) + " |")
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
    L += ["In detail:", ""] + [f"- {c}" for c in digits_conclusions(results)]
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
    s = cfg.learned_steps
    L += ["", f"Paired on seeds at step {s} (Δ = a − b); " + VERDICTS_KEY, "",
          f"| a − b | Δ log10 train loss @ {s} | Δ val loss @ {s} | Δ val accuracy @ {s} |", "|---|---|---|---|"]
    pairs = [(n, "Adam") for n in LEARNED_RUNS] + [("learned update+tele", "learned update"),
                                                   ("learned update+tele (val objective)", "learned update (val objective)"),
                                                   ("learned update+tele (val objective)", "learned update+tele")]
    for a, b in pairs:
        L.append(f"| {a} − {b} | {verdict_cell(paired_comparison(curves[a], curves[b], s), fmt='.2f')} | "
                 + _metric_cells(curves[a], curves[b]) + " |")
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


def digits_conclusions(results: Mapping[str, Any]) -> list[str]:
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
    report.write_text(render_digits_report(results, command, figures_rel="figures"))
    return results


