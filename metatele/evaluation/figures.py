"""PNG figures of evaluator curves (matplotlib, Agg canvas; no display and no global backend change).

Lines are the mean of ``log10`` loss over non-diverged seeds (a geometric mean on the log axis);
bands are a 95% Student-t confidence interval of that mean, or the 25–75% quantiles. Methods with
diverged seeds say so in their legend entry.
"""
from __future__ import annotations

import os
from typing import Mapping

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from scipy import stats

from .evaluate import LOG_FLOOR, Curves

BANDS = ("ci", "quantile", "none")


def _band_stats(logv: np.ndarray, band: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row of ``[T + 1, K]`` log-values: mean, lower and upper band over finite entries."""
    T = logv.shape[0]
    mean, lo, hi = np.full(T, np.nan), np.full(T, np.nan), np.full(T, np.nan)
    for t in range(T):
        v = logv[t][np.isfinite(logv[t])]
        if v.size == 0:
            continue
        mean[t] = v.mean()
        if band == "quantile":
            lo[t], hi[t] = np.quantile(v, [0.25, 0.75])
        elif band == "ci" and v.size > 1:
            half = stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size)
            lo[t], hi[t] = mean[t] - half, mean[t] + half
    return mean, lo, hi


def _label(c: Curves) -> str:
    k = int(c.diverged[-1].sum())
    return c.name + (f" ({k}/{len(c.seeds)} diverged)" if k else "")


def _styles(names) -> dict[str, dict]:
    """A distinct colour per method (tab20 beyond 10 methods); learned optimizers solid and
    thicker, teleporting baselines dashed, other baselines dotted."""
    names = list(names)
    cmap = matplotlib.colormaps["tab10" if len(names) <= 10 else "tab20"]
    out = {}
    for i, n in enumerate(names):
        learned = n.startswith("LSTM")
        style = "-" if learned else ("--" if "tele" in n else ":")
        out[n] = {"color": cmap(i % cmap.N), "linestyle": style, "linewidth": 2.0 if learned else 1.4}
    return out


def _legend(fig: Figure, ax) -> None:
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120)
    return path


def _check(curves_by_name: Mapping[str, Curves], band: str) -> None:
    if not curves_by_name:
        raise ValueError("curves_by_name is empty: nothing to plot")
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")


def loss_ylim(log_means: list[np.ndarray]) -> tuple[float, float] | None:
    """y range of a loss plot from the methods' mean log10-loss curves: one decade below the
    lowest mean; above, one decade over the highest mean but at most two over the highest start.
    So the band of a method whose seeds diverge does not squash the others (its curve leaves the
    plot instead). ``None`` when no mean is finite."""
    finite = np.concatenate([m[np.isfinite(m)] for m in log_means]) if log_means else np.array([])
    starts = [m[0] for m in log_means if m.size and np.isfinite(m[0])]
    if not finite.size or not starts:
        return None
    return 10 ** (finite.min() - 1), 10 ** min(finite.max() + 1, max(starts) + 2)


def _loss_plot(curves_by_name: Mapping[str, Curves], path: str, x_of, xlabel: str, title: str, band: str) -> str:
    _check(curves_by_name, band)
    fig = Figure(figsize=(9.0, 4.8))
    ax = fig.add_subplot()
    styles = _styles(curves_by_name)
    means = []
    for name, c in curves_by_name.items():
        x = x_of(c)
        mean, lo, hi = _band_stats(c.log_loss, band)
        means.append(mean)
        (line,) = ax.plot(x, 10 ** mean, label=_label(c), **styles[name])
        if band != "none":
            ax.fill_between(x, 10 ** lo, 10 ** hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_yscale("log")
    limits = loss_ylim(means)
    if limits is not None:
        ax.set_ylim(*limits)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("loss (geometric mean over seeds)")
    n = {len(c.seeds) for c in curves_by_name.values()}
    spread = {"ci": "95% CI", "quantile": "25–75% quantiles", "none": "no band"}[band]
    ax.set_title(f"{title} ({'/'.join(map(str, sorted(n)))} seeds, band: {spread})")
    _legend(fig, ax)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)


def plot_loss_vs_step(curves_by_name: Mapping[str, Curves], path: str, band: str = "ci", title: str = "Loss vs step") -> str:
    """Loss (log scale) against inner step, one line per method; returns ``path``.

    Args:
        band: ``ci`` (95% CI of the mean log-loss), ``quantile`` (25–75%) or ``none``.
    """
    return _loss_plot(curves_by_name, path, lambda c: np.arange(c.steps + 1), "step", title, band)


def plot_loss_vs_time(curves_by_name: Mapping[str, Curves], path: str, band: str = "ci", title: str = "Loss vs wall-clock time") -> str:
    """Loss (log scale) against the batch's cumulative wall-clock seconds; returns ``path``.

    All seeds of a method run as one batch, so the x-axis is the time of that batch (the same
    for every seed), not a per-task time.
    """
    return _loss_plot(curves_by_name, path, lambda c: np.asarray(c.time), "wall-clock time of the batch (s)", title, band)


def plot_gradsq_vs_loss(curves_by_name: Mapping[str, Curves], path: str, title: str = "Squared gradient norm vs loss", points: bool = True) -> str:
    """‖∇L‖² against loss (log–log): per method the path of the per-step geometric means, and
    (``points``) every (task, step) pair as faint dots; returns ``path``."""
    _check(curves_by_name, "none")
    fig = Figure(figsize=(9.0, 4.8))
    ax = fig.add_subplot()
    styles = _styles(curves_by_name)
    for name, c in curves_by_name.items():
        logl = c.log_loss
        logg = np.log10(np.maximum(c.grad_sq, LOG_FLOOR))
        ok = np.isfinite(logl) & np.isfinite(logg)
        mean_l = np.array([logl[t][ok[t]].mean() if ok[t].any() else np.nan for t in range(len(logl))])
        mean_g = np.array([logg[t][ok[t]].mean() if ok[t].any() else np.nan for t in range(len(logg))])
        (line,) = ax.plot(10 ** mean_l, 10 ** mean_g, marker=".", markersize=3, label=_label(c), **styles[name])
        if points:
            ax.scatter(c.loss[ok], c.grad_sq[ok], s=2, alpha=0.15, color=line.get_color())
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("loss L(W_t)")
    ax.set_ylabel("squared gradient norm ‖∇L(W_t)‖²")
    ax.set_title(title)
    _legend(fig, ax)
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    return _save(fig, path)
