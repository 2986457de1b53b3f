"""Statistics of evaluation curves: confidence intervals, paired comparisons, tables, JSON.

Statistics are over seeds, on ``log10`` of the loss: mean, median, std and a Student-t 95%
confidence interval per step; paired t-tests (and a sign test when seeds diverged) compare two
methods on the same seeds. Diverged tasks (see :func:`metatele.evaluation.evaluate.mark_diverged`) are left
out of the log-loss statistics and counted separately.
"""
from __future__ import annotations

import json
import math
import warnings
from typing import Any, Mapping, Sequence

import numpy as np
from scipy import stats

from ..storage.jsonable import to_json
from .evaluate import Curves
from .format import cell, interval, num, p_is, pct

#: the three outcomes of a paired comparison of ``a`` against ``b`` (see :func:`decision`)
LOWER, HIGHER, NO_DIFF = "lower", "higher", "no significant difference"


# -- statistics -------------------------------------------------------------------------------
def mean_ci(values: np.ndarray, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval ``(mean, lo, hi)`` of finite ``values`` (NaN if n < 2)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = v.size
    if n == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if n < 2:
        return m, math.nan, math.nan
    half = float(stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return m, m - half, m + half


def summarize(curves: Curves, at_steps: Sequence[int] = (10, 30, 100), threshold: float | None = None) -> dict[str, Any]:
    """Statistics of one method over its seeds.

    Returns a dict with ``name``, ``n_seeds``, ``steps``, ``diverged_fraction`` (at the last
    step), ``at_step`` (``{step: {mean, median, std, ci95: [lo, hi], n, n_diverged,
    diverged_fraction}}`` of log10-loss over non-diverged seeds; steps beyond the curve are
    skipped), optionally ``threshold`` (``{value, fraction_reached, median_steps,
    median_steps_if_reached}``; ``median_steps`` counts never-reached tasks as never, so it is
    ``None`` when fewer than half reach), and ``overlap_warning``.
    """
    logl = curves.log_loss
    K = logl.shape[1]
    out: dict[str, Any] = {
        "name": curves.name, "n_seeds": K, "steps": curves.steps,
        "diverged_fraction": float(curves.diverged[-1].mean()),
        "n_diverged": int(curves.diverged[-1].sum()),
        "at_step": {}, "overlap_warning": curves.overlap_warning,
    }
    for s in at_steps:
        if not 0 <= s <= curves.steps:
            continue
        v = logl[s][np.isfinite(logl[s])]
        m, lo, hi = mean_ci(v)
        out["at_step"][int(s)] = {
            "mean": m, "median": float(np.median(v)) if v.size else math.nan,
            "std": float(v.std(ddof=1)) if v.size > 1 else math.nan, "ci95": [lo, hi],
            "n": int(v.size), "n_diverged": int(K - v.size), "diverged_fraction": float(1 - v.size / K),
        }
    if threshold is not None:
        hit = curves.loss <= threshold
        reached = hit.any(axis=0)
        first = np.where(reached, hit.argmax(axis=0), np.inf).astype(np.float64)
        med = float(np.median(first))
        out["threshold"] = {
            "value": float(threshold), "fraction_reached": float(reached.mean()),
            "median_steps": med if math.isfinite(med) else None,
            "median_steps_if_reached": float(np.median(first[reached])) if reached.any() else None,
        }
    return out


def report_steps(at_steps: Sequence[int], steps: int) -> list[int]:
    """The steps a table of a ``steps``-step run reports: those of ``at_steps`` in ``1..steps``,
    and always ``steps`` itself (so a 5-step run reports step 5, not an empty table)."""
    return sorted({int(s) for s in at_steps if 0 < s <= steps} | {int(steps)})


def step_statistics(curves: Curves, level: float = 0.95) -> dict[str, np.ndarray]:
    """Per-step statistics of one method over its seeds, arrays of length ``steps + 1``.

    ``mean_log10_loss`` with its Student-t ``ci_low``/``ci_high`` (over the seeds not diverged;
    NaN when none, or fewer than two for the interval), ``median_loss`` (a diverged seed counts
    as ``inf``), ``diverged_frac``, ``mean_grad_sq`` (over finite values) and ``seconds`` (the
    evaluator's measured wall-clock time of the batch).
    """
    logl, T = curves.log_loss, curves.steps + 1
    mean, lo, hi = (np.full(T, np.nan) for _ in range(3))
    for t in range(T):
        mean[t], lo[t], hi[t] = mean_ci(logl[t], level)
    g = np.where(np.isfinite(curves.grad_sq), curves.grad_sq, np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a step where every seed diverged
        mean_g = np.nanmean(g, axis=1)
    return {"mean_log10_loss": mean, "ci_low": lo, "ci_high": hi, "median_loss": np.median(curves.loss, axis=1),
            "diverged_frac": curves.diverged.mean(1).astype(np.float64), "mean_grad_sq": mean_g,
            "seconds": np.asarray(curves.time, dtype=np.float64)}


def step_history(curves: Curves) -> list[dict[str, float]]:
    """:func:`step_statistics` as one row of metrics per step (``loss/mean_log10``,
    ``loss/ci95_low``, ``loss/ci95_high``, ``loss/median``, ``loss/diverged_frac``,
    ``grad_sq/mean``, ``time/seconds``), for logging a curve to wandb."""
    st = step_statistics(curves)
    keys = {"loss/mean_log10": "mean_log10_loss", "loss/ci95_low": "ci_low", "loss/ci95_high": "ci_high",
            "loss/median": "median_loss", "loss/diverged_frac": "diverged_frac", "grad_sq/mean": "mean_grad_sq",
            "time/seconds": "seconds"}
    return [{k: float(st[v][t]) for k, v in keys.items()} for t in range(curves.steps + 1)]


def _aligned(a: Curves, b: Curves) -> tuple[np.ndarray, np.ndarray]:
    if sorted(a.seeds) != sorted(b.seeds):
        raise ValueError(f"paired comparison needs the same seeds: {a.name!r} and {b.name!r} differ")
    order = [b.seeds.index(s) for s in a.seeds]
    return a.log_loss, b.log_loss[:, order]


def paired_comparison(curves_a: Curves, curves_b: Curves, step: int) -> dict[str, Any]:
    """Paired comparison of log10-loss at ``step`` over the same seeds (``a − b``; negative: a lower).

    The mean difference, its 95% CI and the paired t-test (``scipy.stats.ttest_rel``) use the
    seeds where neither method diverged (the others are counted in ``n_excluded``). ``wins``
    counts seeds where a's loss < b's over all seeds (a finite loss beats a diverged one), and
    ``p_sign`` is a two-sided sign test (binomial, ties dropped) on those wins and losses.

    Returns ``{a, b, step, n_seeds, n, n_excluded, diverged_a, diverged_b, mean_diff,
    ci95: [lo, hi], p_value, p_sign, wins, losses, ties}``.
    """
    la, lb = _aligned(curves_a, curves_b)
    if not 0 <= step <= min(curves_a.steps, curves_b.steps):
        raise ValueError(f"step {step} is outside both curves (0..{min(curves_a.steps, curves_b.steps)})")
    a, b = la[step], lb[step]
    ok = np.isfinite(a) & np.isfinite(b)
    d = a[ok] - b[ok]
    m, lo, hi = mean_ci(d)
    p = math.nan
    if d.size >= 2:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # zero variance → NaN p-value
            p = float(stats.ttest_rel(a[ok], b[ok]).pvalue)
    wins, losses = int((a < b).sum()), int((a > b).sum())
    p_sign = float(stats.binomtest(wins, wins + losses).pvalue) if wins + losses else math.nan
    return {
        "a": curves_a.name, "b": curves_b.name, "step": int(step), "n_seeds": int(a.size),
        "n": int(d.size), "n_excluded": int(a.size - d.size),
        "diverged_a": int((~np.isfinite(a)).sum()), "diverged_b": int((~np.isfinite(b)).sum()),
        "mean_diff": m, "ci95": [lo, hi], "p_value": p, "p_sign": p_sign,
        "wins": wins, "losses": losses, "ties": int(a.size - wins - losses),
    }


def decision(comparison: Mapping[str, Any], alpha: float = 0.05) -> str:
    """:data:`LOWER`, :data:`HIGHER` or :data:`NO_DIFF`: whether ``a``'s log10-loss is significantly
    lower or higher than ``b``'s in a :func:`paired_comparison`, at level ``alpha``.

    The paired t-test decides when no seed diverged; when some did, the sign test over all seeds
    decides (a diverged run is worse than any finite one, but has no log-loss difference). A
    missing or non-finite p-value is no significant difference.
    """
    c = comparison
    use_sign = c["n_excluded"] > 0
    p = c["p_sign"] if use_sign else c["p_value"]
    if p is None or not math.isfinite(p) or p >= alpha:
        return NO_DIFF
    lower = c["wins"] > c["losses"] if use_sign else c["mean_diff"] < 0
    return LOWER if lower else HIGHER


def verdict(comparison: Mapping[str, Any], alpha: float = 0.05) -> str:
    """One line stating what a :func:`paired_comparison` measured and its :func:`decision`, ending
    in ``→ better``, ``→ worse`` or ``→ no significant difference`` (for ``a``)."""
    c = comparison
    word = {LOWER: "better", HIGHER: "worse"}.get(decision(c, alpha), NO_DIFF)
    line = f"{c['a']} vs {c['b']} at step {c['step']}: mean Δlog10 = {num(c['mean_diff'])} {interval(c['ci95'])}"
    if c["n_excluded"] > 0:
        line += (f" over the {c['n']} seeds where neither diverged (diverged: {c['diverged_a']} vs "
                 f"{c['diverged_b']}), sign test {p_is(c['p_sign'])}")
    else:
        line += f", {p_is(c['p_value'])}"
    return line + f", better on {c['wins']}/{c['n_seeds']} seeds → {word}"


def verdicts(
    curves: Mapping[str, Curves],
    a: str,
    b: str | Sequence[str] | None = None,
    steps: Sequence[int] = (10, 30, 100),
    alpha: float = 0.05,
) -> list[str]:
    """Lines "A vs B at step s: ... → better / worse / no significant difference".

    ``b`` defaults to every other method; steps beyond either curve are skipped.
    """
    if a not in curves:
        raise ValueError(f"unknown method {a!r}; have {list(curves)}")
    others = [n for n in curves if n != a] if b is None else ([b] if isinstance(b, str) else list(b))
    lines = []
    for name in others:
        if name not in curves:
            raise ValueError(f"unknown method {name!r}; have {list(curves)}")
        for s in steps:
            if s <= min(curves[a].steps, curves[name].steps):
                lines.append(verdict(paired_comparison(curves[a], curves[name], s), alpha))
    return lines


# -- reports ----------------------------------------------------------------------------------
def paired_tests_note(alpha: float = 0.05) -> str:
    """The sentence that introduces a list of :func:`verdict` lines in a report."""
    return (f"Paired t-tests of log10-loss on the same seeds (α = {alpha}, no multiple-comparison correction; "
            "Δ < 0 means the first method is lower; when seeds diverged, a sign test over all seeds decides):")


def markdown_table(
    curves: Mapping[str, Curves],
    at_steps: Sequence[int] = (10, 30, 100),
    a: str | None = None,
    b: str | Sequence[str] | None = None,
    alpha: float = 0.05,
    comparisons: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """Markdown: one row per method (mean log10-loss [95% CI] per step, diverged fraction), and a
    section of paired-test verdicts: of ``a`` against ``b`` when ``a`` is given, else of
    ``comparisons`` (each with a ``verdict``) when given and not empty."""
    summaries = {n: summarize(c, at_steps) for n, c in curves.items()}
    shown = [s for s in at_steps if any(s in sm["at_step"] for sm in summaries.values())]
    head = ["method", "seeds", *(f"log10 loss @ {s}" for s in shown), "diverged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, sm in summaries.items():
        cells = [cell(sm["at_step"].get(s)) for s in shown]
        lines.append("| " + " | ".join([name, str(sm["n_seeds"]), *cells, pct(sm["diverged_fraction"])]) + " |")
    warns = [f"- {n}: {sm['overlap_warning']}" for n, sm in summaries.items() if sm["overlap_warning"]]
    if warns:
        lines += ["", "**Warning:**"] + warns
    said = verdicts(curves, a, b, at_steps, alpha) if a is not None else [c["verdict"] for c in comparisons or []]
    if said:
        lines += ["", paired_tests_note(alpha), ""] + [f"- {v}" for v in said]
    return "\n".join(lines) + "\n"


def results_to_json(
    curves: Mapping[str, Curves],
    at_steps: Sequence[int] = (10, 30, 100),
    threshold: float | None = None,
    a: str | None = None,
    b: str | Sequence[str] | None = None,
    tuning: Mapping[str, Any] | None = None,
    include_curves: bool = True,
    path: str | None = None,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """A JSON-ready dict of summaries, paired comparisons (when ``a`` is given), tuning records
    (``name → TuneResult`` or dict) and optionally the full curves; written to ``path`` if given.
    Non-finite numbers are stored as ``null``."""
    out: dict[str, Any] = {
        "summaries": {n: summarize(c, at_steps, threshold) for n, c in curves.items()},
    }
    if a is not None:
        others = [n for n in curves if n != a] if b is None else ([b] if isinstance(b, str) else list(b))
        comps = [paired_comparison(curves[a], curves[n], s) for n in others for s in at_steps
                 if s <= min(curves[a].steps, curves[n].steps)]
        out["comparisons"] = [{**c, "verdict": verdict(c, alpha)} for c in comps]
    if tuning:
        out["tuning"] = {n: (t.to_dict() if hasattr(t, "to_dict") else t) for n, t in tuning.items()}
    if include_curves:
        out["curves"] = {n: c.to_dict() for n, c in curves.items()}
    out = to_json(out)
    if path is not None:
        with open(path, "w") as f:
            json.dump(out, f, indent=1, allow_nan=False)
    return out
