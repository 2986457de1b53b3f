"""How numbers are written in tables, reports and logs: one formatter per kind of number.

Every table cell, sentence and printed line of metatele goes through these functions, so a mean,
a confidence interval or a p-value reads the same in ``results.md``, ``RESULTS.md``,
``SEARCH.md`` and on the console. Missing or non-finite values are written ``nan``; negative
numbers get a true minus sign (``−``).
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence


def num(x: float | None, fmt: str = ".2f") -> str:
    """A number with a true minus sign; ``nan`` for missing or non-finite values."""
    if x is None or not math.isfinite(x):
        return "nan"
    s = format(x, fmt)
    return s.replace("-", "−", 1) if s.startswith("-") else s


def interval(ci: Sequence[float | None], fmt: str = ".2f") -> str:
    """A confidence interval ``[lo, hi]`` (e.g. ``[1.24, 1.31]``)."""
    lo, hi = ci
    return f"[{num(lo, fmt)}, {num(hi, fmt)}]"


def pval(p: float | None) -> str:
    """A p-value to two significant digits (``< 1e-12`` below that)."""
    if p is None or not math.isfinite(p):
        return "nan"
    return "< 1e-12" if p < 1e-12 else format(p, ".2g")


def p_is(p: float | None) -> str:
    """``p = 0.0031`` or ``p < 1e-12``."""
    text = pval(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def pct(x: float | None) -> str:
    """A fraction as a whole percentage (``0.02`` → ``2%``)."""
    return "nan" if x is None else f"{100 * x:.0f}%"


def cell(st: Mapping[str, Any] | None, fmt: str = ".2f") -> str:
    """A table cell for one step's statistics (``summarize(...)["at_step"][s]``, or any dict with
    ``mean``, ``ci95`` and ``n``): ``mean [lo, hi]`` (of log10 loss, unless it is another
    measurement); ``—`` when not measured, ``all diverged`` when no seed is left, ``(1 seed)``
    when a single seed gives no interval."""
    if st is None:
        return "—"
    if st["n"] == 0:
        return "all diverged"
    if st["n"] == 1:
        return f"{num(st['mean'], fmt)} (1 seed)"
    return f"{num(st['mean'], fmt)} {interval(st['ci95'], fmt)}"
