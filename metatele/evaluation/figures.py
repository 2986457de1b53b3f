"""PNG figures of evaluator curves (matplotlib, Agg canvas; no display and no global backend change).

Lines are the mean of ``log10`` loss over non-diverged seeds (a geometric mean on the log axis);
bands are a 95% Student-t confidence interval of that mean, or the 25–75% quantiles. Methods with
diverged seeds say so in their legend entry.

Styles follow each method's :class:`~metatele.evaluation.identity.MethodId`: one colour per base
method (a method and its teleporting twin share it), a solid line without teleport and a dashed
one with it (the legend says so), thicker lines for learned optimizers. With many methods, learned
optimizers and hand-designed baselines are drawn in two panels on a shared y axis.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from scipy import stats

from .evaluate import LOG_FLOOR, Curves
from .identity import MethodId, baseline_id

BANDS = ("ci", "quantile", "none")
#: more methods than this in one figure: learned optimizers and baselines get a panel each
MAX_PER_PANEL = 7
#: saturated colours that stay distinct from one another on white (tab10, then Dark2)
PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf",
           "#7f7f7f", "#bcbd22", "#1b9e77", "#d95f02", "#7570b3", "#e7298a", "#66a61e", "#a6761d")
TELEPORT_STYLE, PLAIN_STYLE = "--", "-"


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


def _ids(curves_by_name: Mapping[str, Curves], ids: Mapping[str, MethodId] | None) -> dict[str, MethodId]:
    """Every curve's identity: from ``ids``, else a baseline of its own (its own colour, solid)."""
    return {n: (ids or {}).get(n) or baseline_id(n) for n in curves_by_name}


def styles(ids: Mapping[str, MethodId]) -> dict[str, dict]:
    """Line style per method: a colour per base method (in order of appearance), dashed when the
    method teleports, solid otherwise; learned optimizers thicker."""
    colours: dict[str, str] = {}
    for i in ids.values():
        colours.setdefault(i.base, PALETTE[len(colours) % len(PALETTE)])
    return {n: {"color": colours[i.base], "linestyle": TELEPORT_STYLE if i.teleport else PLAIN_STYLE,
                "linewidth": 2.2 if i.learned else 1.5} for n, i in ids.items()}


def panels(ids: Mapping[str, MethodId]) -> list[tuple[str, list[str]]]:
    """``[(title, method names)]``: one panel, or with more than :data:`MAX_PER_PANEL` methods of
    both kinds, learned optimizers and hand-designed baselines apart."""
    learned = [n for n, i in ids.items() if i.learned]
    baselines = [n for n, i in ids.items() if not i.learned]
    if len(ids) <= MAX_PER_PANEL or not learned or not baselines:
        return [("", list(ids))]
    return [("learned optimizers", learned), ("hand-designed baselines", baselines)]


def _legend(ax, ids: Mapping[str, MethodId], names: list[str]) -> None:
    handles, labels = ax.get_legend_handles_labels()
    kinds = {ids[n].teleport for n in names}
    if len(kinds) == 2:  # say what the line styles mean
        handles += [Line2D([], [], color="black", linestyle=PLAIN_STYLE), Line2D([], [], color="black", linestyle=TELEPORT_STYLE)]
        labels += ["solid: no teleport", "dashed: with teleport"]
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)


def _save(fig: Figure, path: str) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, format="png", dpi=120, bbox_inches="tight")
    return path


def _check(curves_by_name: Mapping[str, Curves], band: str) -> None:
    if not curves_by_name:
        raise ValueError("curves_by_name is empty: nothing to plot")
    if band not in BANDS:
        raise ValueError(f"band must be one of {BANDS}, got {band!r}")


def loss_ylim(log_means: list[np.ndarray], margin: float = 0.1) -> tuple[float, float] | None:
    """y range of a loss plot from the methods' mean log10-loss curves: from the lowest mean to
    the highest, but at most one decade above the highest start, with ``margin`` of the span
    (in decades, at least 0.1) on each side. So the range is set by the data, and a method whose
    seeds diverge does not squash the others (its curve leaves the plot instead). ``None`` when
    no mean is finite."""
    finite = np.concatenate([m[np.isfinite(m)] for m in log_means]) if log_means else np.array([])
    starts = [m[0] for m in log_means if m.size and np.isfinite(m[0])]
    if not finite.size or not starts:
        return None
    lo, hi = finite.min(), min(finite.max(), max(starts) + 1)
    pad = max(margin * (hi - lo), 0.1)
    return 10 ** (lo - pad), 10 ** (hi + pad)


def _figure(n_panels: int) -> tuple[Figure, list]:
    fig = Figure(figsize=(6.4 * n_panels, 5.6))
    axes = [fig.add_subplot(1, n_panels, 1)]
    for k in range(1, n_panels):
        axes.append(fig.add_subplot(1, n_panels, k + 1, sharey=axes[0]))
    return fig, axes


def _loss_plot(curves_by_name: Mapping[str, Curves], path: str, x_of: Callable[[Curves], np.ndarray], xlabel: str,
               title: str, band: str, ids: Mapping[str, MethodId] | None) -> str:
    _check(curves_by_name, band)
    ids = _ids(curves_by_name, ids)
    style = styles(ids)
    groups = panels(ids)
    fig, axes = _figure(len(groups))
    means = []
    for ax, (panel, names) in zip(axes, groups):
        for name in names:
            c = curves_by_name[name]
            x = x_of(c)
            mean, lo, hi = _band_stats(c.log_loss, band)
            means.append(mean)
            (line,) = ax.plot(x, 10 ** mean, label=_label(c), **style[name])
            if band != "none":
                ax.fill_between(x, 10 ** lo, 10 ** hi, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        if panel:
            ax.set_title(panel, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        _legend(ax, ids, names)
    limits = loss_ylim(means)
    if limits is not None:
        axes[0].set_ylim(*limits)
    axes[0].set_ylabel("loss (geometric mean over seeds)")
    n = {len(c.seeds) for c in curves_by_name.values()}
    spread = {"ci": "95% CI", "quantile": "25–75% quantiles", "none": "no band"}[band]
    fig.suptitle(f"{title} ({'/'.join(map(str, sorted(n)))} seeds, band: {spread})")
    return _save(fig, path)


def plot_loss_vs_step(curves_by_name: Mapping[str, Curves], path: str, band: str = "ci", title: str = "Loss vs step",
                      ids: Mapping[str, MethodId] | None = None) -> str:
    """Loss (log scale) against inner step, one line per method; returns ``path``.

    Args:
        band: ``ci`` (95% CI of the mean log-loss), ``quantile`` (25–75%) or ``none``.
        ids: each method's identity (colour by base method, dashed when it teleports); a method
            without one gets its own colour and a solid line.
    """
    return _loss_plot(curves_by_name, path, lambda c: np.arange(c.steps + 1), "step", title, band, ids)


def plot_loss_vs_time(curves_by_name: Mapping[str, Curves], path: str, band: str = "ci",
                      title: str = "Loss vs wall-clock time", ids: Mapping[str, MethodId] | None = None) -> str:
    """Loss (log scale) against the batch's cumulative wall-clock seconds; returns ``path``.

    All seeds of a method run as one batch, so the x-axis is the time of that batch (the same
    for every seed), not a per-task time.
    """
    return _loss_plot(curves_by_name, path, lambda c: np.asarray(c.time), "wall-clock time of the batch (s)", title,
                      band, ids)


def _binned_median(logl: np.ndarray, logg: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    """Median and 25–75% quantiles of ``logg`` in ``bins`` equal bins of ``logl`` (bins with
    fewer than 3 points are dropped); returns ``(bin centre, median, q25, q75)``."""
    edges = np.linspace(logl.min(), logl.max(), bins + 1)
    if edges[0] == edges[-1]:
        return (np.array([edges[0]]), *np.quantile(logg, [0.5, 0.25, 0.75])[:, None])
    which = np.clip(np.digitize(logl, edges) - 1, 0, bins - 1)
    rows = [(np.median(logl[which == b]), *np.quantile(logg[which == b], [0.5, 0.25, 0.75]))
            for b in range(bins) if (which == b).sum() >= 3]
    return tuple(np.array(r) for r in zip(*rows)) if rows else (np.array([]),) * 4


def plot_gradsq_vs_loss(curves_by_name: Mapping[str, Curves], path: str, title: str = "Squared gradient norm vs loss",
                        ids: Mapping[str, MethodId] | None = None, bins: int = 30) -> str:
    """‖∇L‖² against loss (log–log): per method, the median of ‖∇L(W_t)‖² over all (task, step)
    pairs whose loss falls in each of ``bins`` log-spaced loss bins, with its 25–75% band;
    returns ``path``."""
    _check(curves_by_name, "none")
    ids = _ids(curves_by_name, ids)
    style = styles(ids)
    groups = panels(ids)
    fig, axes = _figure(len(groups))
    for ax, (panel, names) in zip(axes, groups):
        for name in names:
            c = curves_by_name[name]
            logl = c.log_loss
            logg = np.log10(np.maximum(c.grad_sq, LOG_FLOOR))
            ok = np.isfinite(logl) & np.isfinite(logg)
            if not ok.any():
                continue
            x, med, q25, q75 = _binned_median(logl[ok], logg[ok], bins)
            if not len(x):  # too few (loss, gradient) pairs for one bin: a run of a few steps
                continue
            (line,) = ax.plot(10 ** x, 10 ** med, label=_label(c), **style[name])
            ax.fill_between(10 ** x, 10 ** q25, 10 ** q75, color=line.get_color(), alpha=0.15, linewidth=0)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("loss L(W_t)")
        if panel:
            ax.set_title(panel, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        _legend(ax, ids, names)
    axes[0].set_ylabel("squared gradient norm ‖∇L(W_t)‖² (median, 25–75%)")
    fig.suptitle(title)
    return _save(fig, path)


def plot_comparison(curves_by_name: Mapping[str, Curves], folder: str | os.PathLike,
                    ids: Mapping[str, MethodId] | None = None) -> dict[str, str]:
    """The three figures of a comparison in ``folder``: ``loss_vs_step.png``, ``loss_vs_time.png``
    and ``gradsq_vs_loss.png``; returns name → path."""
    folder = Path(folder)
    return {
        "loss_vs_step": plot_loss_vs_step(curves_by_name, str(folder / "loss_vs_step.png"), ids=ids),
        "loss_vs_time": plot_loss_vs_time(curves_by_name, str(folder / "loss_vs_time.png"), ids=ids),
        "gradsq_vs_loss": plot_gradsq_vs_loss(curves_by_name, str(folder / "gradsq_vs_loss.png"), ids=ids),
    }


def plot_learning_curve(history: list[dict], path: str, title: str = "Validation during meta-training") -> str:
    """The validation history of a meta-training run (:class:`~metatele.meta.snapshots.Snapshots`):
    mean log10 loss on the validation seeds at each reported inner step, against meta-steps (left)
    and against wall-clock seconds of meta-training (right); solid for the current
    meta-parameters, dashed for their average."""
    if not history:
        raise ValueError("no validation rows to plot")
    fig = Figure(figsize=(12, 4.5))
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, 2, i + 1) for i in range(2)]
    steps = list(history[0]["current"]["mean_log10_at"])
    x_of = {"meta-step": [r["meta_step"] for r in history], "meta-training seconds": [r["train_seconds"] for r in history]}
    for ax, (xlabel, x) in zip(axes, x_of.items()):
        for i, s in enumerate(steps):
            colour = PALETTE[i % len(PALETTE)]
            for kind, style in (("current", PLAIN_STYLE), ("average", TELEPORT_STYLE)):
                if kind in history[0]:
                    y = [r[kind]["mean_log10_at"][s] for r in history]
                    ax.plot(x, y, style, color=colour, label=f"inner step {s} ({kind})")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("mean log10 loss, validation seeds")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7, ncol=2)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)
