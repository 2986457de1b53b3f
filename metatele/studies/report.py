"""Statistics and the written report of ``metatele benchmark`` (see :mod:`metatele.studies.benchmark`).

* :func:`combine_meta_seeds` turns one learned method's curves (one per meta-training seed, all
  on the same test seeds) into one curve whose log10-loss is, per test seed, the mean over
  meta-seeds. Paired tests on it stay paired over test seeds; :func:`method_stats` also keeps each
  meta-seed's own summary, so the noise of meta-training stays visible.
* :func:`compare_pairs` runs :func:`~metatele.evaluation.stats.paired_comparison` for the pairs a protocol
  names and adds the verdict and a one-word :func:`decision`.
* :func:`conclusions` writes plain-language sentences from those measured decisions (nothing
  is hard-coded), and :func:`render_report` writes the whole ``RESULTS.md``.

Everything here works on the JSON-ready results dict that :mod:`metatele.studies.benchmark` builds.
"""
from __future__ import annotations

import math
import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..evaluation.evaluate import Curves
from ..storage.jsonable import to_json
from ..evaluation.stats import paired_comparison, summarize, verdict

LOWER, HIGHER, NO_DIFF = "lower", "higher", "no significant difference"
D = ".3f"  # differences of log10-loss


# -- statistics -------------------------------------------------------------------------------
def combine_meta_seeds(name: str, per_seed: Sequence[Curves]) -> Curves:
    """One curve from a learned method's per-meta-seed curves on the same test seeds.

    ``log10`` of the combined loss is the mean over meta-seeds of ``log10`` loss, per test seed
    and step (a geometric mean of the losses). A test seed on which any meta-seed diverged is
    diverged in the combined curve. ``grad_sq`` is combined the same way; ``time`` is averaged.
    """
    if not per_seed:
        raise ValueError(f"{name}: no meta-seed curves to combine")
    seeds = list(per_seed[0].seeds)
    for c in per_seed[1:]:
        if list(c.seeds) != seeds or c.loss.shape != per_seed[0].loss.shape:
            raise ValueError(f"{name}: meta-seed curves must share test seeds (same order) and steps")

    def geo(arrays: list[np.ndarray]) -> np.ndarray:
        logs = np.stack([np.log10(np.maximum(a, 1e-300)) for a in arrays])
        mean = logs.mean(0)  # +inf where any meta-seed diverged
        with np.errstate(over="ignore"):
            return np.where(np.isfinite(mean), 10.0 ** mean, np.inf)

    info = {"combined_from": [c.info for c in per_seed], "meta_seeds": len(per_seed)}
    return Curves(name, seeds, geo([c.loss for c in per_seed]), geo([c.grad_sq for c in per_seed]),
                  np.mean([c.time for c in per_seed], axis=0), dict(per_seed[0].task), info,
                  next((c.overlap_warning for c in per_seed if c.overlap_warning), None))


def method_stats(curves: Curves | Sequence[Curves], steps: Sequence[int]) -> dict[str, Any]:
    """``{"summary": summarize(...), "meta_seeds": [summary per meta-seed]}``; a single curve
    (a baseline) has no ``meta_seeds`` entry; a list is combined first."""
    if isinstance(curves, Curves):
        return {"summary": summarize(curves, steps)}
    combined = combine_meta_seeds(curves[0].name, curves)
    return {"summary": summarize(combined, steps), "meta_seeds": [summarize(c, steps) for c in curves]}


def decision(comparison: Mapping[str, Any], alpha: float = 0.05) -> str:
    """``lower``, ``higher`` or ``no significant difference`` for ``a`` against ``b``.

    The same rule as :func:`~metatele.evaluation.stats.verdict`: the paired t-test decides when no seed
    diverged, the sign test over all seeds when some did.
    """
    c = comparison
    use_sign = c["n_excluded"] > 0
    p = c["p_sign"] if use_sign else c["p_value"]
    if p is None or not math.isfinite(p) or p >= alpha:
        return NO_DIFF
    lower = c["wins"] > c["losses"] if use_sign else c["mean_diff"] < 0
    return LOWER if lower else HIGHER


def compare_pairs(curves: Mapping[str, Curves], pairs: Iterable[Sequence[str]], steps: Sequence[int],
                  alpha: float = 0.05) -> list[dict[str, Any]]:
    """Paired comparisons ``a − b`` at every step in ``steps`` (that both curves reach), for the
    pairs whose two methods are in ``curves``. Each has ``verdict``, ``decision``, ``test`` and
    the deciding ``p``."""
    out = []
    for a, b in pairs:
        if a not in curves or b not in curves:
            continue
        for s in steps:
            if s > min(curves[a].steps, curves[b].steps):
                continue
            c = paired_comparison(curves[a], curves[b], s)
            sign = c["n_excluded"] > 0
            out.append({**c, "test": "sign" if sign else "t", "p": c["p_sign"] if sign else c["p_value"],
                        "decision": decision(c, alpha), "verdict": verdict(c, alpha)})
    return out


def save_curves(path: str | os.PathLike, curves: Mapping[str, Mapping[str, Mapping[str, Curves]]],
                test_seeds: Sequence[int]) -> None:
    """Write section → method → label → Curves into one ``.npz`` with arrays
    ``section/method/label/{loss,grad_sq,time}`` and ``test_seeds``. Every curve must be on
    exactly ``test_seeds`` (in that order), which is what makes the comparisons paired."""
    arrays: dict[str, np.ndarray] = {"test_seeds": np.asarray(test_seeds, dtype=np.int64)}
    for sec, methods in curves.items():
        for m, labelled in methods.items():
            for label, c in labelled.items():
                if list(c.seeds) != list(test_seeds):
                    raise ValueError(f"{sec}/{m}/{label} was not evaluated on the shared test seeds")
                for f in ("loss", "grad_sq", "time"):
                    arrays[f"{sec}/{m}/{label}/{f}"] = getattr(c, f)
    np.savez_compressed(path, **arrays)


def load_curves(path: str | os.PathLike) -> dict[str, dict[str, dict[str, Curves]]]:
    """Read a :func:`save_curves` file: section → method → label (``seed<k>``, ``combined`` or
    ``baseline``) → Curves."""
    out: dict[str, dict[str, dict[str, Curves]]] = {}
    with np.load(path) as z:
        seeds = [int(s) for s in z["test_seeds"]]
        for key in z.files:
            if key.endswith("/loss"):
                stem = key[: -len("/loss")]
                sec, m, label = stem.split("/")[0], "/".join(stem.split("/")[1:-1]), stem.split("/")[-1]
                out.setdefault(sec, {}).setdefault(m, {})[label] = Curves(
                    m, seeds, z[key], z[f"{stem}/grad_sq"], z[f"{stem}/time"])
    return out


#: JSON-ready copy of results (numpy values made plain, NaN/inf → ``None``, keys → ``str``).
clean = to_json


# -- formatting -------------------------------------------------------------------------------
def num(x: float | None, fmt: str = ".2f") -> str:
    """A number with a true minus sign; ``nan`` for missing values."""
    if x is None or not math.isfinite(x):
        return "nan"
    s = format(x, fmt)
    return s.replace("-", "−", 1) if s.startswith("-") else s


def pval(p: float | None) -> str:
    """A p-value to two significant digits (``< 1e-12`` below that)."""
    if p is None or not math.isfinite(p):
        return "nan"
    return "< 1e-12" if p < 1e-12 else format(p, ".2g")


def p_is(p: float | None) -> str:
    """``p = 0.0031`` or ``p < 1e-12``."""
    text = pval(p)
    return f"p {text}" if text.startswith("<") else f"p = {text}"


def _at(summary: Mapping[str, Any], step: int) -> Mapping[str, Any] | None:
    return summary["at_step"].get(str(step), summary["at_step"].get(step))


def ci_below(x: Mapping[str, Any] | None, y: Mapping[str, Any] | None) -> bool:
    """Whether the 95% CI of step statistics ``x`` lies wholly below that of ``y``."""
    return bool(x and y and x["ci95"][1] is not None and y["ci95"][0] is not None and x["ci95"][1] < y["ci95"][0])


def _cell(st: Mapping[str, Any] | None) -> str:
    if st is None:
        return "—"
    if st["n"] == 0:
        return "all diverged"
    lo, hi = st["ci95"]
    return f"{num(st['mean'])} [{num(lo)}, {num(hi)}]"


def _seed_means(entry: Mapping[str, Any], step: int) -> list[float | None]:
    return [(_at(m, step) or {}).get("mean") for m in entry.get("meta_seeds", [])]


def _pct(x: float | None) -> str:
    return "nan" if x is None else f"{100 * x:.0f}%"


def methods_table(section: Mapping[str, Any], steps: Sequence[int]) -> str:
    """Methods × steps: mean log10-loss [95% CI] over test seeds (learned methods: averaged over
    meta-seeds, with each meta-seed's mean below), and the diverged fraction at the last step."""
    methods = {n: m for n, m in section["methods"].items() if m.get("summary")}
    shown = [s for s in steps if any(_at(m["summary"], s) for m in methods.values())]
    lines = ["| method | " + " | ".join(f"log10 loss @ {s}" for s in shown) + " | diverged |",
             "|---|" + "---|" * (len(shown) + 1)]
    for name, m in methods.items():
        cells = []
        for s in shown:
            cell = _cell(_at(m["summary"], s))
            means = _seed_means(m, s)
            if means:
                cell += "<br>(meta-seeds: " + " / ".join(num(v) for v in means) + ")"
            cells.append(cell)
        div = _pct(m["summary"]["diverged_fraction"])
        if m.get("meta_seeds"):
            div += "<br>(" + " / ".join(_pct(x["diverged_fraction"]) for x in m["meta_seeds"]) + ")"
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {div} |")
    return "\n".join(lines) + "\n"


def spread_table(section: Mapping[str, Any], steps: Sequence[int]) -> str:
    """Per learned method and step: the spread of meta-seed means (max − min, and their std)."""
    learned = {n: m for n, m in section["methods"].items() if m.get("meta_seeds")}
    if not learned:
        return ""
    lines = ["| method | meta-seeds | " + " | ".join(f"spread @ {s}" for s in steps) + " |",
             "|---|---|" + "---|" * len(steps)]
    for name, m in learned.items():
        cells = []
        for s in steps:
            v = np.array([x for x in _seed_means(m, s) if x is not None], dtype=float)
            cells.append("—" if v.size == 0 else
                         f"{num(float(np.ptp(v)))} (sd {num(float(v.std(ddof=1)) if v.size > 1 else None)})")
        lines.append(f"| {name} | {len(m['meta_seeds'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def comparisons_table(comparisons: Sequence[Mapping[str, Any]]) -> str:
    """One row per paired comparison: Δ = a − b with its CI, both p-values, wins/n, decision."""
    if not comparisons:
        return "_No paired comparisons in this section._\n"
    lines = ["| a | b | step | Δ log10 (a − b) [95% CI] | p (paired t) | p (sign) | a better on | "
             "excluded (diverged) | verdict |", "|---|---|---|---|---|---|---|---|---|"]
    for c in comparisons:
        lo, hi = c["ci95"]
        word = {LOWER: "**a lower**", HIGHER: "**a higher**"}.get(c["decision"], "no sig. difference")
        lines.append(f"| {c['a']} | {c['b']} | {c['step']} | {num(c['mean_diff'], D)} [{num(lo, D)}, {num(hi, D)}] | "
                     f"{pval(c['p_value'])} | {pval(c['p_sign'])} | {c['wins']}/{c['n_seeds']} | "
                     f"{c['n_excluded']} | {word} ({'sign' if c['test'] == 'sign' else 't'}-test) |")
    return "\n".join(lines) + "\n"


# -- conclusions ------------------------------------------------------------------------------
def _phrase(c: Mapping[str, Any]) -> str:
    lo, hi = c["ci95"]
    d = c["decision"]
    if d == NO_DIFF:
        return (f"no significant difference at step {c['step']} (Δ = {num(c['mean_diff'], D)} "
                f"[{num(lo, D)}, {num(hi, D)}], {p_is(c['p'])})")
    if c["test"] == "sign":
        return (f"{d} at step {c['step']} (sign test {p_is(c['p'])}, better on {c['wins']}/{c['n_seeds']} "
                f"test seeds; diverged {c['diverged_a']} vs {c['diverged_b']})")
    size, a, b = (-c["mean_diff"], -hi, -lo) if d == LOWER else (c["mean_diff"], lo, hi)
    return f"{d} at step {c['step']} by {num(size, D)} log10 [{num(a, D)}, {num(b, D)}], {p_is(c['p'])}"


def _pair_sentences(head: str, comparisons: Sequence[Mapping[str, Any]]) -> list[str]:
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for c in comparisons:
        groups.setdefault((c["a"], c["b"]), []).append(c)
    out = []
    for (a, b), cs in groups.items():
        cs = sorted(cs, key=lambda c: c["step"])
        out.append(f"{head}, {a} vs {b}: " + "; ".join(_phrase(c) for c in cs) + ".")
    return out


def conclusions(results: Mapping[str, Any]) -> list[str]:
    """Plain-language sentences generated from the measured decisions of ``results``.

    "lower"/"higher" say that the first method's log10-loss is significantly lower/higher than
    the second's at level ``alpha`` (uncorrected); every number comes from ``results``.
    """
    out: list[str] = []
    steps = results["steps"]
    last = steps[-1]
    for name, sec in results["sections"].items():
        if sec["kind"] == "setting":
            out += _pair_sentences(f"On {sec['label']}", sec["comparisons"])
        else:
            for ab, info in sec.get("ablations", {}).items():
                cs = [c for c in sec["comparisons"] if c.get("ablation") == ab]
                if cs:
                    out += _pair_sentences(f"Ablation '{ab}' ({info['question']}) on {sec['label']}", cs)
        for m, entry in sec["methods"].items():
            if entry.get("failed"):
                seeds = ", ".join(str(f["meta_seed"]) for f in entry["failed"])
                rest = "its results use the remaining meta-seeds" if entry.get("summary") else "it has no results"
                out.append(f"On {sec['label']}, meta-training of {m} failed for meta-seed(s) {seeds} "
                           f"({entry['failed'][0]['error'].split(';')[0]}); {rest}.")
            frac = (entry.get("summary") or {}).get("diverged_fraction")
            if frac:
                per = entry.get("meta_seeds")
                tail = f" (per meta-seed: {' / '.join(_pct(x['diverged_fraction']) for x in per)})" if per else ""
                out.append(f"On {sec['label']}, {m} diverged on {_pct(frac)} of the test seeds by step "
                           f"{entry['summary']['steps']}{tail}.")
        spreads = []
        for m, entry in sec["methods"].items():
            v = [x for x in _seed_means(entry, last) if x is not None]
            if len(v) > 1:
                spreads.append(f"{m} {num(max(v) - min(v))} ({' / '.join(num(x) for x in v)})")
        if spreads:
            out.append(f"Meta-training noise on {sec['label']}: the meta-seed means of log10 loss at step "
                       f"{last} span " + "; ".join(spreads) + ".")
    return out


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


def summary_lines(results: Mapping[str, Any]) -> list[str]:
    """Plain-language summary, generated: per setting, where each pair of :data:`SUMMARY_PAIRS`
    is significantly lower or higher and by how much (Δ = a − b of mean log10 loss); then which
    ablations lowered or raised the loss at the last reported step ≤ 100."""
    out = []
    for sec in results["sections"].values():
        comps = sec["comparisons"]
        if sec["kind"] == "setting":
            rows = []
            for a, b, what in SUMMARY_PAIRS:
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


def goal_check(results: Mapping[str, Any], a: str = "LSTM(update+tele)", b: str = "LSTM(update)",
               lr_method: str = "LSTM(lr+tele)", gd: str = "gd(tuned)", steps: Sequence[int] = (10, 30, 100)) -> list[str]:
    """Check the target of a learned teleport that reliably helps, per setting, from the numbers.

    Per setting: ``a`` beats ``b`` with non-overlapping 95% CIs at each of ``steps``; ``a`` does
    not drift upward (mean log10 loss at the last of ``steps`` ≤ at the one before); ``lr_method``
    is significantly lower than ``gd`` at the last of ``steps``. Returns one line per setting and a
    closing line.
    """
    lines, reached = [], []
    for name, sec in results["sections"].items():
        if sec["kind"] != "setting":
            continue
        ms = sec["methods"]
        sa, sb = (ms.get(x, {}).get("summary") for x in (a, b))
        if not sa or not sb:
            continue
        parts, ok = [], True
        for s in steps:
            x, y = _at(sa, s), _at(sb, s)
            if x is None or y is None:
                continue
            sep = ci_below(x, y)
            ok &= sep
            parts.append(f"step {s}: {_cell(x)} vs {_cell(y)} {'✓' if sep else '✗'}")
        x0, x1 = _at(sa, steps[-2]), _at(sa, steps[-1])
        drift_ok = x0 is not None and x1 is not None and x1["mean"] <= x0["mean"]
        ok &= drift_ok
        drift = (f"no upward drift ({num(x0['mean'])} at step {steps[-2]} → {num(x1['mean'])} at {steps[-1]}) "
                 f"{'✓' if drift_ok else '✗'}") if x0 and x1 else "drift: n/a"
        lr = [c for c in sec["comparisons"] if c["a"] == lr_method and c["b"] == gd and c["step"] == steps[-1]]
        if lr:
            lr_ok = lr[0]["decision"] == LOWER
            ok &= lr_ok
            lr_txt = f"{lr_method} vs {gd} at step {steps[-1]}: {_phrase(lr[0])} {'✓' if lr_ok else '✗'}"
        else:
            lr_txt = f"{lr_method} vs {gd}: not measured"
        late = ""
        if sa.get("diverged_fraction") and sa["steps"] > steps[-1]:  # divergence after the target's steps
            late = (f" Beyond step {steps[-1]}: {a} diverges on {_pct(sa['diverged_fraction'])} of the test seeds "
                    f"by step {sa['steps']} ({b}: {_pct(sb.get('diverged_fraction') or 0)}).")
        lines.append(f"{sec['label']}: {a} vs {b} (non-overlapping CIs) — " + "; ".join(parts)
                     + f"; {drift}; {lr_txt}. **{'Reached' if ok else 'Not reached'}.**{late}")
        if ok:
            reached.append(sec["label"])
    if lines:
        lines.append(("The target is reached on: " + ", ".join(reached) + ".") if reached else
                     "No setting reaches the target; the lines above give the closest results measured.")
    return lines


# -- the report -------------------------------------------------------------------------------
def _timing_lines(results: Mapping[str, Any]) -> list[str]:
    lines = ["| phase | wall time |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} s |" for k, v in results["phases"].items()]
    lines.append(f"| **total (command start to report)** | **{results['wall_seconds']:.0f} s "
                 f"({results['wall_seconds'] / 60:.1f} min)** |")
    totals: dict[str, float] = {}
    for t in results["timings"]:
        totals[t["stage"]] = totals.get(t["stage"], 0.0) + t["seconds"]
    m = results["machine"]
    lines += ["", f"Summed over runs ({m['workers']} worker process(es) × {m['torch_threads']} torch thread(s)): "
              + ", ".join(f"{k} {v:.0f} s" for k, v in totals.items()) + "."]
    return lines


def _scale_lines(results: Mapping[str, Any]) -> list[str]:
    lines = ["| section | method | variant | hidden | trajectories × steps | unroll | batch | meta-steps | "
             "meta-train time per meta-seed |", "|---|---|---|---|---|---|---|---|---|"]
    for sec_name, sec in results["sections"].items():
        for m, e in sec["methods"].items():
            if e["kind"] != "learned":
                continue
            c = e["config"]
            unroll = str(c["unroll"]) if c["truncation"] == "fixed" else f"log-uniform [{c['unroll']}, {c['unroll_max']}]"
            secs = [x["train_seconds"] or 0.0 for x in e["meta_seeds_info"]]
            t = (f"{np.mean(secs):.0f} s" if np.mean(secs) >= 10 else f"{np.mean(secs):.1f} s") if secs else "—"
            infos = e["meta_seeds_info"]
            if infos and all(x.get("shared_with") for x in infos):
                t = f"same runs as {infos[0]['shared_with']}"
            elif infos and all(x["reused"] for x in infos):
                t += " (checkpoints of an earlier run, --resume)"
            steps = [x["meta_steps"] for x in e["meta_seeds_info"]]
            lines.append(f"| {sec_name} | {m} | {c['learned']['variant']} | {c['learned']['lstm']['hidden']} | "
                         f"{c['trajectories']} × {c['steps']} | {unroll} | {c['batch_size']} | "
                         f"{steps[0] if steps else '—'} | {t} |")
    return lines


def _checkpoint_lines(results: Mapping[str, Any]) -> list[str]:
    last = results["steps"][-1]
    lines = ["| section | method | best meta-seed (mean log10 loss at its last step) | checkpoint |", "|---|---|---|---|"]
    for sec_name, sec in results["sections"].items():
        for m, e in sec["methods"].items():
            if e["kind"] != "learned" or not e.get("meta_seeds"):
                continue
            scored = []
            for info, sm in zip(e["meta_seeds_info"], e.get("meta_seeds", [])):
                st = _at(sm, min(last, sm["steps"]))
                scored.append((st["mean"] if st and st["mean"] is not None else math.inf, info))
            best, info = min(scored, key=lambda x: x[0])
            lines.append(f"| {sec_name} | {m} | seed {info['meta_seed']} ({num(best)}) | `{info['checkpoint']}` |")
    return lines


def render_report(results: Mapping[str, Any], figures: Mapping[str, str], protocol_yaml: str) -> str:
    """The markdown of ``RESULTS.md``. ``figures``: section → figure path relative to the report."""
    steps, alpha = results["steps"], results["alpha"]
    ts = results["test_seeds"]
    m = results["machine"]
    out = [
        f"# metatele benchmark: {results['protocol_name']}",
        "",
        "_Generated by the command below; do not edit by hand (re-run it instead)._",
        "",
        *([str(results["protocol"]["description"]).strip(), ""] if results["protocol"].get("description") else []),
        "```",
        results["command"],
        "```",
        "",
        f"Started {results['started']}, finished {results['finished']}; wall time "
        f"**{results['wall_seconds'] / 60:.1f} min** on {m['processor']} ({m['cpus_available']} CPUs available; "
        f"{m['workers']} worker process(es) × {m['torch_threads']} torch thread(s); load average at start "
        f"{m['load_average_start']}, at end {m.get('load_average_end')}), torch {m['torch']}, "
        f"device {m['device']}, metatele {m['metatele']} (git {m['git_commit'] or 'unknown'}"
        f"{', uncommitted changes' if m.get('git_dirty') else ''}).",
        "",
        "## Protocol",
        "",
        (f"- Every method is run on the same **{ts['count']} unseen test seeds** " if ts.get("split", "test") == "test"
         else f"- **Validation run** (configuration selection, not a test result): \"test seeds\" below are "
         f"the same **{ts['count']} validation seeds** (training-split tasks no meta-training draws) ") +
        f"[{ts['start']}, {ts['start'] + ts['count']}) for {max(steps)} steps; learned methods are meta-trained "
        f"once per meta-seed ({', '.join(map(str, results['meta_seeds']))}) on training seeds only, and "
        "hand-designed baselines marked *(tuned)* are grid-tuned on training seeds.",
        "- Numbers are **mean log10 loss [95% Student-t CI] over test seeds**. For a learned method each test "
        "seed's log10 loss is first averaged over meta-seeds (a seed on which any meta-seed diverged counts as "
        "diverged), so comparisons stay paired over test seeds; each meta-seed's own mean is shown below it.",
        f"- Paired comparisons: Δ = a − b of log10 loss on the same test seeds, paired t-test (sign test over all "
        f"seeds when some diverged); α = {alpha}, no multiple-comparison correction. A loss that is non-finite or "
        "above 1e30 marks a seed as diverged from that step on.",
        "",
        "### Scale",
        "",
        *_scale_lines(results),
        "",
        "## In short: where learned teleportation helps, and by how much",
        "",
        "Generated from the paired comparisons below (Δ = a − b of mean log10 loss over the test seeds; lower is "
        "better; significant at α without correction).",
        "",
        *[f"- {s}" for s in summary_lines(results)],
        "",
        "## Conclusions (generated from the measured verdicts)",
        "",
        *[f"- {s}" for s in results["conclusions"]],
        "",
        *(["## Target: a learned teleport that reliably helps", "",
           "LSTM(update+tele) below LSTM(update) with non-overlapping 95% CIs at steps 10, 30 and 100, no upward "
           "drift (step 100 ≤ step 30), and LSTM(lr+tele) significantly below tuned GD at step 100:", "",
           *[f"- {s}" for s in results["goal"]], ""] if results.get("goal") else []),
    ]
    for name, sec in results["sections"].items():
        title = sec["label"] if sec["kind"] == "setting" else f"Ablations ({sec['label']})"
        out += [f"## {title}", ""]
        if sec["kind"] == "setting":
            out += [f"Setting `{name}`: task dims {sec['task']['dims']}, distribution {sec['task']['distribution']}.", ""]
            tuned = [f"{n}: lr = {e['config']['lr']:.3g}" for n, e in sec["methods"].items()
                     if e["kind"] == "baseline" and e.get("tuning")]
            if tuned:
                out += ["Tuned on training seeds: " + "; ".join(tuned) + ".", ""]
        else:
            out += ["Each arm changes one switch of a method and is compared (paired) with that method at the same "
                    "scale, `<method> [reference]`.", "", "| arm | compared with | question (arm vs reference) |",
                    "|---|---|---|"]
            out += [f"| {ab} | {i['reference']} | {i['question']} |" for ab, i in sec["ablations"].items()]
            out.append("")
        out += [methods_table(sec, steps), "Meta-seed spread (max − min of the meta-seed means, log10):", "",
                spread_table(sec, steps) or "_No learned methods._\n", "Paired comparisons:", "",
                comparisons_table(sec["comparisons"])]
        if name in figures:
            out += [f"![loss vs step, {title}]({figures[name]})", ""]
    out += ["## Checkpoints", "",
            "Every trained optimizer is saved (safetensors, with its training seeds and meta-steps); the best "
            "meta-seed of each method:", "", *_checkpoint_lines(results), "",
            "## Wall time per stage", "", *_timing_lines(results), "",
            f"Raw curves: `{results['curves_file']}`; all numbers: `{results['results_file']}`.", "",
            "## Protocol configuration", "", "```yaml", protocol_yaml.rstrip(), "```", ""]
    return "\n".join(out)
