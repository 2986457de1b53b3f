"""The written report of ``metatele benchmark``: ``RESULTS.md`` (see :mod:`metatele.studies.benchmark`).

* :func:`methods_table` writes a section's methods × steps table (the best of each column
  marked), :func:`verdicts_table` every paired comparison in one table (pair × step);
  :func:`conclusions` (kept in ``results.json``) and :func:`~metatele.studies.summary.summary_lines` write
  plain-language sentences from the measured decisions (nothing is hard-coded); :func:`goal_check` states the teleport target
  (:func:`~metatele.studies.aggregate.update_target`) per setting; :func:`render_report` writes the
  whole ``RESULTS.md``.

Everything here works on the JSON-ready results dict that :mod:`metatele.studies.benchmark` builds,
with the statistics of :mod:`metatele.studies.aggregate`.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from ..evaluation.format import cell, interval, num, p_is, pct
from ..evaluation.stats import LOWER, NO_DIFF, decision
from ..evaluation.tuning import edge_note
from .aggregate import at_step, lr_target, lr_target_met, update_target
from .summary import summary_lines
from .targets import divergence_table, more_tables, targets_table, task_text, teleport_help_lines, transfer_lines

D = ".3f"  # differences of log10-loss


def _seed_means(entry: Mapping[str, Any], step: int) -> list[float | None]:
    return [(at_step(m, step) or {}).get("mean") for m in entry.get("meta_seeds", [])]


def methods_table(section: Mapping[str, Any], steps: Sequence[int]) -> str:
    """Methods × steps: mean log10-loss [95% CI] over test seeds (a learned method's seeds averaged
    over its meta-seeds first; each meta-seed's own in ``results.json``), the lowest mean of each
    column in bold, and the diverged fraction at the last step."""
    methods = [n for n, m in section["methods"].items() if m.get("summary")]
    shown = [s for s in steps if any(at_step(section["methods"][n]["summary"], s) for n in methods)]
    means = {s: [m for n in methods if (m := (at_step(section["methods"][n]["summary"], s) or {}).get("mean")) is not None
                 and math.isfinite(m)] for s in shown}
    best = {s: min(v) if v else None for s, v in means.items()}
    lines = ["| method | " + " | ".join(f"log10 loss @ {s}" for s in shown) + " | diverged |",
             "|---|" + "---|" * (len(shown) + 1)]
    for name in methods:
        summary = section["methods"][name]["summary"]
        cells = []
        for s in shown:
            st = at_step(summary, s)
            text = cell(st)
            cells.append(f"**{text}**" if st and best[s] is not None and st.get("mean") == best[s] else text)
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {pct(summary['diverged_fraction'])} |")
    return "\n".join(lines) + "\n"


def verdict_cell(c: Mapping[str, Any], alpha: float = 0.05, fmt: str = D) -> str:
    """A :func:`~metatele.evaluation.stats.paired_comparison` as ``Δ [lo, hi], p`` (where some seed
    diverged: ``a better on w/n, sign p``); bold when significant at ``alpha``."""
    if c["n_excluded"] > 0:
        text = f"a better on {c['wins']}/{c['n_seeds']}, sign {p_is(c['p_sign'])}"
    else:
        text = f"{num(c['mean_diff'], fmt)} {interval(c['ci95'], fmt)}, {p_is(c['p_value'])}"
    return text if decision(c, alpha) == NO_DIFF else f"**{text}**"


def verdicts_table(results: Mapping[str, Any]) -> str:
    """Every paired comparison in one table: a row per section and pair ``a − b``, a column per
    step, each cell ``Δ log10 [95% CI], p`` (bold: significant at α, uncorrected). A pair against a
    baseline tuned per horizon (``adam(tuned@*)``) compares, at each step, with the one tuned for it."""
    steps = results["steps"]
    lines = ["| section | a − b | " + " | ".join(f"@ {s}" for s in steps) + " |", "|---|---|" + "---|" * len(steps)]
    for name, sec in results["sections"].items():
        rows: dict[tuple[str, str], dict[int, Mapping[str, Any]]] = {}
        for c in sec["comparisons"]:
            a, b = c.get("pair") or (c["a"], c["b"])
            rows.setdefault((a, b), {})[c["step"]] = c
        for (a, b), by_step in rows.items():
            cells = [verdict_cell(by_step[s], results["alpha"]) if s in by_step else "" for s in steps]
            lines.append(f"| {name} | {a} − {b} | " + " | ".join(cells) + " |")
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


def _section_notes(sec: Mapping[str, Any], last: int) -> list[str]:
    """A section's failed meta-trainings, diverged fractions and meta-seed spread, as sentences."""
    out: list[str] = []
    for m, entry in sec["methods"].items():
        if entry.get("failed"):
            seeds = ", ".join(str(f["meta_seed"]) for f in entry["failed"])
            rest = "its results use the remaining meta-seeds" if entry.get("summary") else "it has no results"
            out.append(f"On {sec['label']}, meta-training of {m} failed for meta-seed(s) {seeds} "
                       f"({entry['failed'][0]['error'].split(';')[0]}); {rest}.")
        frac = (entry.get("summary") or {}).get("diverged_fraction")
        if frac:
            per = entry.get("meta_seeds")
            tail = f" (per meta-seed: {' / '.join(pct(x['diverged_fraction']) for x in per)})" if per else ""
            out.append(f"On {sec['label']}, {m} diverged on {pct(frac)} of the test seeds by step "
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


def run_notes(results: Mapping[str, Any]) -> list[str]:
    """The sentences of :func:`conclusions` that are not verdicts, section by section."""
    return [line for sec in results["sections"].values() for line in _section_notes(sec, results["steps"][-1])]


def conclusions(results: Mapping[str, Any]) -> list[str]:
    """Plain-language sentences generated from the measured decisions of ``results``.

    "lower"/"higher" say that the first method's log10-loss is significantly lower/higher than
    the second's at level ``alpha`` (uncorrected); every number comes from ``results``.
    """
    out: list[str] = []
    steps = results["steps"]
    last = steps[-1]
    for name, sec in results["sections"].items():
        if sec["kind"] != "ablations":
            out += _pair_sentences(f"On {sec['label']}", sec["comparisons"])
        else:
            for ab, info in sec.get("ablations", {}).items():
                cs = [c for c in sec["comparisons"] if c.get("ablation") == ab]
                if cs:
                    out += _pair_sentences(f"Ablation '{ab}' ({info['question']}) on {sec['label']}", cs)
        out += _section_notes(sec, last)
    return out


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def goal_check(results: Mapping[str, Any], a: str = "LSTM(update+tele)", b: str = "LSTM(update)",
               lr_method: str = "LSTM(lr+tele)", gd: str = "gd(tuned)", steps: Sequence[int] = (10, 30, 100)) -> list[str]:
    """Check the target of a learned teleport that reliably helps, per setting, from the numbers.

    Per setting: ``a`` against ``b`` meets :func:`~metatele.studies.aggregate.update_target` at
    ``steps`` (non-overlapping 95% CIs at each, no upward drift, no diverged seed by the last),
    and ``lr_method`` is significantly lower than ``gd`` at the last of ``steps``
    (:func:`~metatele.studies.aggregate.lr_target`). Returns one line per setting and a closing
    line.
    """
    lines, reached = [], []
    for name, sec in results["sections"].items():
        if sec["kind"] != "setting":
            continue
        ms = sec["methods"]
        sa, sb = (ms.get(x, {}).get("summary") for x in (a, b))
        if not sa or not sb:
            continue
        t = update_target(sa, sb, steps)
        parts = [f"step {s}: {cell(r['a'])} vs {cell(r['b'])} {_mark(r['separated'])}" for s, r in t["steps"].items()]
        drift = (f"no upward drift ({num(t['drift'][0])} at step {steps[-2]} → {num(t['drift'][1])} at {steps[-1]}) "
                 f"{_mark(t['no_drift'])}") if t["drift"] else "drift: n/a"
        diverged = (f"no diverged seed by step {steps[-1]} ({t['diverged']} diverged) {_mark(t['no_divergence'])}"
                    if t["diverged"] is not None else "divergence: n/a")
        lr = lr_target(sec["comparisons"], lr_method, gd, steps[-1])
        lr_ok = lr_target_met(lr)
        lr_txt = (f"{lr_method} vs {gd} at step {steps[-1]}: {_phrase(lr)} {_mark(lr_ok)}" if lr else
                  f"{lr_method} vs {gd}: not measured")
        ok = t["reached"] and lr_ok
        late = ""
        if sa.get("diverged_fraction") and sa["steps"] > steps[-1]:  # divergence after the target's steps
            late = (f" Beyond step {steps[-1]}: {a} diverges on {pct(sa['diverged_fraction'])} of the test seeds "
                    f"by step {sa['steps']} ({b}: {pct(sb.get('diverged_fraction') or 0)}).")
        lines.append(f"{sec['label']}: {a} vs {b} (non-overlapping CIs) — " + "; ".join(parts)
                     + f"; {drift}; {diverged}; {lr_txt}. **{'Reached' if ok else 'Not reached'}.**{late}")
        if ok:
            reached.append(sec["label"])
    if lines:
        lines.append(("The target is reached on: " + ", ".join(reached) + ".") if reached else
                     "No setting reaches the target; the lines above give the closest results measured.")
    return lines


# -- the report -------------------------------------------------------------------------------
def _tuning_horizon(sec: Mapping[str, Any]) -> str:
    """`` (grid search for 100 steps, objective mean_log_loss_final)`` from the section's tuning records."""
    t = next((e["tuning"] for e in sec["methods"].values() if e["kind"] == "baseline" and e.get("tuning")), None)
    if not t:
        return ""
    return f" ({t['method']} search for {t['steps']} steps, objective {t['objective']})"


def _edge_flag(tuning: Mapping[str, Any]) -> str:
    note = edge_note(tuning.get("edge"), tuning.get("extensions") or 0)
    return f" (**{note}**)" if note else ""


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


_HIDDEN = {"coordinatewise": "coordinatewise"}  #: the config section whose ``hidden`` the scale table shows


def _selected(e: Mapping[str, Any]) -> str:
    """`` | 4 / 8 / 6``: the meta-step of the snapshot kept per meta-seed (``last``: no selection)."""
    return " | " + (" / ".join("0" if x.get("initialisation") else str((x.get("selected") or {}).get("meta_step", "last"))
                               for x in e["meta_seeds_info"]) or "—")


def _scale_lines(results: Mapping[str, Any]) -> list[str]:
    sel = any(x.get("selected") for sec in results["sections"].values() for e in sec["methods"].values()
              for x in e.get("meta_seeds_info", []))  # a column only when some run selected a snapshot
    lines = ["| section | method | variant | hidden | trajectories × steps | unroll | batch | meta-steps | "
             + ("selected meta-step (validation seeds) | " if sel else "") + "meta-train time per meta-seed |",
             "|---|---|---|---|---|---|---|---|---|" + ("---|" if sel else "")]
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
            elif infos and all(x.get("initialisation") for x in infos):
                t = "not trained: the pretrained checkpoints' initialisations (meta-step 0)"
            elif infos and all(x.get("pretrained") for x in infos):
                t = "pretrained (not retrained here): " + " / ".join(
                    f"{(x['train_seconds'] or 0) / 3600:.1f} h" for x in infos)
            elif infos and all(x["reused"] for x in infos):
                t += " (checkpoints of an earlier run, --resume)"
            steps = [x["meta_steps"] for x in e["meta_seeds_info"]]
            steps = steps[:1] if len(set(steps)) == 1 else steps  # one number when all agree, else each meta-seed's
            arch = c["learned"].get("arch", "paper")
            lines.append(f"| {sec_name} | {m} | {c['learned']['variant']} | {c['learned'][_HIDDEN.get(arch, 'lstm')]['hidden']} | "
                         f"{c['trajectories']} × {c['steps']} | {unroll} | {c['batch_size']} | "
                         f"{' / '.join(map(str, steps)) if steps else '—'}{_selected(e) if sel else ''} | {t} |")
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
                st = at_step(sm, min(last, sm["steps"]))
                scored.append((st["mean"] if st and st["mean"] is not None else math.inf, info))
            best, info = min(scored, key=lambda x: x[0])
            lines.append(f"| {sec_name} | {m} | seed {info['meta_seed']} ({num(best)}) | `{info['checkpoint']}` |")
    return lines


def render_report(results: Mapping[str, Any], figures: Mapping[str, str], protocol_yaml: str) -> str:
    """The markdown of ``RESULTS.md``. ``figures``: section → figure path relative to the report."""
    steps, alpha = results["steps"], results["alpha"]
    ts, m = results["test_seeds"], results["machine"]
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
        *(["## Targets: met or missed", "", "Each declared target of the protocol, checked at each of its steps (all "
           "must hold), in each section it names (default: every setting); the numbers are on the test seeds, as "
           "described under Protocol below:", "", targets_table(results)]
          if results["protocol"].get("targets") else []),
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
        "diverged), so comparisons stay paired over test seeds; the lowest mean of each column is in bold. Each "
        f"meta-seed's own numbers, every comparison's sign test and the sentences stating each verdict are in "
        f"`{results['results_file']}`.",
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
        *([f"- {s}" for s in summary_lines(results)] or ["_No pair of the summary was measured._"]),
        "",
        "## Verdicts",
        "",
        "Every paired comparison: Δ = a − b of log10 loss on the same test seeds [95% CI], p of the paired t-test "
        f"(a sign test over all seeds where some diverged); **bold**: significant at α = {alpha} (uncorrected); "
        "negative: a is lower (better).",
        "",
        verdicts_table(results),
        "## Notes: failures, divergence, meta-training noise",
        "",
        *([f"- {s}" for s in run_notes(results)] or ["_None._"]),
        "",
        *(["## Target: a learned teleport that reliably helps", "",
           "LSTM(update+tele) below LSTM(update) with non-overlapping 95% CIs at steps 10, 30 and 100, no upward "
           "drift (step 100 ≤ step 30), no diverged seed by step 100, and LSTM(lr+tele) significantly below tuned GD at "
           "step 100:", "",
           *[f"- {s}" for s in results["goal"]], ""] if results.get("goal") else []),
        *(["## Does learning to teleport help?", "", "Generated from the paired comparisons of each method with a "
           "learned teleport against the same method without it (Δ = a − b of mean log10 loss [95% CI]; lower is "
           "better):", "", *[f"- {s}" for s in teleport_help_lines(results)], ""]
          if results["protocol"].get("teleport_help") else []),
    ]
    for name, sec in results["sections"].items():
        title = {"setting": sec["label"], "ablations": f"Ablations ({sec['label']})",
                 "transfer": f"Transfer without retraining: {sec['label']}"}[sec["kind"]]
        out += [f"## {title}", ""]
        if sec["kind"] == "transfer":
            out += transfer_lines(name, sec)
        if sec["kind"] == "setting":
            out += [f"Setting `{name}`: {task_text(sec['task'])}.", ""]
        if sec["kind"] != "ablations":
            tuned = [f"{n}: lr = {e['config']['lr']:.3g}"
                     + (f", momentum = {e['config']['momentum']:g}" if e["config"]["name"] == "momentum" else "")
                     + (f" (for {e['tuning']['steps']} steps)" if e.get("tune_steps")
                     else "") + _edge_flag(e["tuning"]) for n, e in sec["methods"].items()
                     if e["kind"] == "baseline" and e.get("tuning")]
            if tuned:
                out += [f"Tuned on training seeds{_tuning_horizon(sec)}: " + "; ".join(tuned) + ".", ""]
        else:
            out += ["Each arm changes one switch of a method and is compared (paired) with that method at the same "
                    "scale, `<method> [reference]`.", "", "| arm | compared with | question (arm vs reference) |",
                    "|---|---|---|"]
            out += [f"| {ab} | {i['reference']} | {i['question']} |" for ab, i in sec["ablations"].items()]
            out.append("")
        div = divergence_table(sec) if any(v for e in sec["methods"].values()
                                           for v in (e.get("diverged_by") or {}).values()) else ""
        out += [methods_table(sec, steps), *(["Diverged fraction of the test seeds by step (learned methods: per "
                                              "meta-seed in parentheses):", "", div] if div else []),
                *more_tables(sec, steps)]
        if name in figures:
            out += [f"![loss vs step, {title}]({figures[name]})", ""]
    out += ["## Checkpoints", "",
            "Every trained optimizer is saved (safetensors, with its training seeds and meta-steps); the best "
            "meta-seed of each method:", "", *_checkpoint_lines(results), "",
            "## Wall time per stage", "", *_timing_lines(results), "",
            f"Raw curves: `{results['curves_file']}`; all numbers: `{results['results_file']}`.", "",
            "## Protocol configuration", "", "```yaml", protocol_yaml.rstrip(), "```", ""]
    return "\n".join(out)
