"""The "in short" summary of ``RESULTS.md``: per setting, one plain-language line stating where each
pair of interest is significantly lower or higher, and by how much; one for the ablations (written
by :func:`metatele.studies.report.render_report`)."""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..evaluation.format import num
from ..evaluation.stats import HIGHER, LOWER, NO_DIFF


#: (a, b, what the pair measures) for the "in short" summary, in that order, where measured
SUMMARY_PAIRS = (
    ("LSTM(update+tele)", "LSTM(update)", "the learned teleport, on top of the same learned update"),
    ("LSTM(update+tele) [paper]", "LSTM(update) [paper]", "the paper's learned teleport, on top of the paper's learned update"),
    ("LSTM(update+tele)", "LSTM(update+tele) [paper]", "the selected learned teleport against the paper's"),
    ("LSTM(update)", "LSTM(update) [paper]", "the selected learned update against the paper's"),
    ("LSTM(lr+tele)", "gd(tuned)", "LSTM(lr,tele) against tuned GD"),
    ("LSTM(update+tele)", "gd(tuned)", "the selected learned teleport against tuned GD"),
    ("gd(tuned)+tele", "gd(tuned)", "a gradient-ascent teleport for tuned GD"),
)


def _finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)


def _effect(cs: Sequence[Mapping[str, Any]]) -> str:
    """``lower at steps 10 (Δ −0.09), 30 (−0.05); no significant difference at 100`` (a − b, log10)."""
    parts = []
    for d, word in ((LOWER, "lower"), (HIGHER, "higher"), (NO_DIFF, "no significant difference")):
        sel = sorted((c for c in cs if c["decision"] == d), key=lambda c: c["step"])
        if sel:
            steps = ", ".join(f"{c['step']} (Δ {num(c['mean_diff'], '+.3f')})" if _finite(c["mean_diff"]) else
                              f"{c['step']} (diverged on {c['diverged_a']} vs {c['diverged_b']} seeds)" for c in sel)
            parts.append(f"{word} at step{'s' if len(sel) > 1 else ''} {steps}")
    return "; ".join(parts)


def summary_pairs(results: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """:data:`SUMMARY_PAIRS`, then the protocol's ``teleport_help`` pairs not among them."""
    known = {(a, b) for a, b, _ in SUMMARY_PAIRS}
    helps = (results.get("protocol") or {}).get("teleport_help") or []
    return [*SUMMARY_PAIRS, *((h["a"], h["b"], h["what"]) for h in helps if (h["a"], h["b"]) not in known)]


def summary_lines(results: Mapping[str, Any]) -> list[str]:
    """Plain-language summary, generated: per setting, where each pair of :func:`summary_pairs` is significantly
    lower or higher, by how much (Δ = a − b of mean log10 loss); then which ablations lowered or raised
    the loss at the last reported step ≤ 100."""
    out = []
    for sec in results["sections"].values():
        comps = sec["comparisons"]
        if sec["kind"] != "ablations":
            rows = []
            for a, b, what in summary_pairs(results):
                cs = [c for c in comps if c["a"] == a and c["b"] == b]
                if cs:
                    rows.append(f"{what} ({a} − {b}): {_effect(cs)}")
            if rows:
                out.append(f"**{sec['label']}** — " + ". ".join(r[0].upper() + r[1:] for r in rows) + ".")
        else:
            step = max((c["step"] for c in comps if c["step"] <= 100), default=None)
            if step is None:
                continue
            at = [c for c in comps if c["step"] == step]
            better = [f"{c['ablation']} (Δ {num(c['mean_diff'], '+.3f')})" for c in at if c["decision"] == LOWER]
            worse = [f"{c['ablation']} (Δ {num(c['mean_diff'], '+.3f')})" for c in at if c["decision"] == HIGHER]
            same = [c["ablation"] for c in at if c["decision"] == NO_DIFF]
            out.append(f"**Ablations on {sec['label']}**, at step {step} against their reference: lower loss with "
                       f"{', '.join(better) or 'none'}; higher with {', '.join(worse) or 'none'}; no significant "
                       f"difference with {', '.join(same) or 'none'}.")
    return out
