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


def _num(x: float | None, fmt: str = ".2f") -> str:
    if x is None or not math.isfinite(x):
        return "nan"
    return format(x, fmt).replace("-", "−", 1) if x < 0 else format(x, fmt)


def verdict(comparison: Mapping[str, Any], alpha: float = 0.05) -> str:
    """One line stating what a :func:`paired_comparison` measured and whether a beats b.

    The decision uses the paired t-test when no seed diverged, and the sign test over all seeds
    when some did (a diverged run is worse than any finite one, but has no log-loss difference).
    """
    c = comparison
    use_sign = c["n_excluded"] > 0
    p = c["p_sign"] if use_sign else c["p_value"]
    if math.isfinite(p) and p < alpha:
        better = c["wins"] > c["losses"] if use_sign else c["mean_diff"] < 0
        word = "better" if better else "worse"
    else:
        word = "no significant difference"
    lo, hi = c["ci95"]
    line = (f"{c['a']} vs {c['b']} at step {c['step']}: mean Δlog10 = {_num(c['mean_diff'])} "
            f"[{_num(lo)}, {_num(hi)}]")
    if use_sign:
        line += (f" over the {c['n']} seeds where neither diverged (diverged: {c['diverged_a']} vs "
                 f"{c['diverged_b']}), sign test p = {c['p_sign']:.2g}")
    else:
        line += f", p = {c['p_value']:.2g}"
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
def _cell(st: Mapping[str, Any]) -> str:
    if st["n"] == 0:
        return "all diverged"
    if st["n"] == 1:
        return f"{_num(st['mean'])} (1 seed)"
    return f"{_num(st['mean'])} [{_num(st['ci95'][0])}, {_num(st['ci95'][1])}]"


def markdown_table(
    curves: Mapping[str, Curves],
    at_steps: Sequence[int] = (10, 30, 100),
    a: str | None = None,
    b: str | Sequence[str] | None = None,
    alpha: float = 0.05,
) -> str:
    """Markdown: one row per method (mean log10-loss [95% CI] per step, diverged fraction), and
    when ``a`` is given, a section of paired-test verdicts of ``a`` against ``b``."""
    summaries = {n: summarize(c, at_steps) for n, c in curves.items()}
    shown = [s for s in at_steps if any(s in sm["at_step"] for sm in summaries.values())]
    head = "| method | seeds | " + " | ".join(f"log10 loss @ {s}" for s in shown) + " | diverged |"
    lines = [head, "|" + "---|" * (len(shown) + 3)]
    for name, sm in summaries.items():
        cells = []
        for s in shown:
            st = sm["at_step"].get(s)
            cells.append("—" if st is None else _cell(st))
        lines.append(f"| {name} | {sm['n_seeds']} | " + " | ".join(cells) + f" | {sm['diverged_fraction']:.0%} |")
    warns = [f"- {n}: {sm['overlap_warning']}" for n, sm in summaries.items() if sm["overlap_warning"]]
    if warns:
        lines += ["", "**Warning:**"] + warns
    if a is not None:
        lines += ["", f"Paired t-tests of log10-loss on the same seeds (α = {alpha}, no multiple-comparison "
                      "correction; Δ < 0 means the first method is lower; when seeds diverged, a sign test over all "
                      "seeds decides):", ""]
        lines += [f"- {v}" for v in verdicts(curves, a, b, at_steps, alpha)]
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
