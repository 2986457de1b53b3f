"""The generated verdicts of the benchmark report: declared targets, the teleport question, divergence.

* :func:`check_target` decides one declared :class:`~metatele.studies.protocol.Target` in one
  section from the recorded statistics, and :func:`targets_table` writes the table
  "target | section | met/missed | the numbers" (means, CIs, and by how much a target is missed);
* :func:`teleport_help_lines` writes the section "Does learning to teleport help?": per setting, a
  verdict from the paired comparisons of each :class:`~metatele.studies.protocol.HelpPair`, with
  effect sizes and CIs, naming the steps where the teleport does not help;
* :func:`divergence_table` states each method's diverged fraction by the protocol's
  ``divergence_steps`` (per meta-seed too); :func:`transfer_lines` describes a transfer section;
  :func:`validation_table` gives a digits section's validation accuracy at the reported steps and
  :func:`more_tables` the tables a section shows after its methods table.

Everything here reads the JSON-ready results dict (step keys may be ``int`` or ``str``) and the
protocol recorded in it, so ``--render-only`` recomputes the same text. Nothing is hand-written.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

from ..evaluation.format import cell, num, p_is, pct
from ..evaluation.stats import HIGHER, LOWER, NO_DIFF
from ..tasks.digits import N_IMAGES
from ..tasks.family import TaskConfig
from .aggregate import at_step, ci_below
from .protocol import HelpPair, Target, at_horizon, parse_named

D = ".3f"  # differences of log10-loss


def _by_step(d: Mapping[Any, Any] | None, step: int) -> Any:
    return None if not d else d.get(str(step), d.get(step))


def _comparison(sec: Mapping[str, Any], a: str, b: str, step: int) -> Mapping[str, Any] | None:
    return next((c for c in sec["comparisons"] if c["a"] == a and c["b"] == b and c["step"] == step), None)


def _delta(c: Mapping[str, Any]) -> str:
    """``Δ −0.120 [−0.200, −0.050], p = 0.001`` (sign test: wins and p)."""
    if c["test"] == "sign":
        return (f"better on {c['wins']}/{c['n_seeds']} seeds (sign test {p_is(c['p'])}; diverged "
                f"{c['diverged_a']} vs {c['diverged_b']})")
    lo, hi = c["ci95"]
    return f"Δ {num(c['mean_diff'], '+.3f')} [{num(lo, '+.3f')}, {num(hi, '+.3f')}], {p_is(c['p'])}"


def _diverged(entry: Mapping[str, Any], step: int) -> tuple[float | None, list[float | None]]:
    """The diverged fraction of a method by ``step`` and per meta-seed (from ``diverged_by``,
    else from its summary at that step)."""
    frac = _by_step(entry.get("diverged_by"), step)
    if frac is None:
        frac = (at_step(entry.get("summary"), step) or {}).get("diverged_fraction")
    per = [_by_step(d, step) for d in entry.get("diverged_by_meta_seed", [])]
    return frac, per


def check_target(target: Target, sec: Mapping[str, Any]) -> dict[str, Any] | None:
    """Whether ``target`` is met in section ``sec``: ``{"met", "steps": [{step, ok, text}]}``,
    or ``None`` when the section lacks its methods."""
    ms = sec["methods"]
    if not (ms.get(target.a) or {}).get("summary"):
        return None
    if target.b is not None and not any(at_horizon(target.b, s) in ms for s in target.steps):
        return None
    rows = []
    for s in target.steps:
        b = at_horizon(target.b, s) if target.b else None
        if target.rule == "diverged_at_most":
            frac, per = _diverged(ms[target.a], s)
            ok = frac is not None and frac <= target.at_most
            text = (f"step {s}: {pct(frac)} diverged (limit {pct(target.at_most)})" if frac is not None else
                    f"step {s}: not measured")
            if per:
                text += " (meta-seeds " + " / ".join(pct(x) if x is not None else "—" for x in per) + ")"
            if frac is not None and not ok:
                text += f", missed by {pct(frac - target.at_most)}"
        elif target.rule == "ci_below":
            x, y = at_step(ms[target.a].get("summary"), s), at_step((ms.get(b) or {}).get("summary"), s)
            ok = ci_below(x, y)
            text = f"step {s}: {cell(x)} vs {b} {cell(y)}"
            if x and y and x["ci95"][1] is not None and y["ci95"][0] is not None:
                gap = x["ci95"][1] - y["ci95"][0]
                text += (f", CIs apart by {num(-gap, D)}" if ok else f", missed by {num(gap, D)} log10 "
                         "(a's upper CI bound − b's lower)")
        else:  # no_worse
            c = _comparison(sec, target.a, b, s)
            x, y = at_step(ms[target.a].get("summary"), s), at_step((ms.get(b) or {}).get("summary"), s)
            floor = bool(x and y and x["mean"] is not None and y["mean"] is not None
                         and x["mean"] <= target.floor and y["mean"] <= target.floor)
            ok = c is not None and (c["decision"] != HIGHER or floor)
            text = f"step {s}: {cell(x)} vs {b} {cell(y)}" + (f", {_delta(c)}" if c else ", not compared")
            if floor:
                text += f", both at the float32 floor (mean ≤ {target.floor:g})"
            elif c is not None and c["decision"] == HIGHER:
                text += f", significantly higher: missed by Δ {num(c['mean_diff'], D)}"
        rows.append({"step": s, "ok": ok, "text": text})
    return {"met": all(r["ok"] for r in rows), "steps": rows}


def _targets(results: Mapping[str, Any]) -> list[Target]:
    return [parse_named(Target, t, f"targets[{i}]") for i, t in enumerate(results["protocol"].get("targets") or [])]


def targets_table(results: Mapping[str, Any]) -> str:
    """The table of declared targets: one row per target and section where it is measured."""
    targets = _targets(results)
    if not targets:
        return ""
    lines = ["| target | section | met/missed | the numbers |", "|---|---|---|---|"]
    for t in targets:
        rule = {"ci_below": f"95% CI of {t.a} wholly below {t.b}'s",
                "no_worse": f"{t.a} not significantly higher than {t.b} (or both at the float32 floor)",
                "diverged_at_most": f"{t.a} diverged on ≤ {pct(t.at_most)} of the test seeds"}[t.rule]
        names = t.sections or [n for n, s in results["sections"].items() if s["kind"] == "setting"]
        measured = False
        for name in names:
            sec = results["sections"].get(name)
            r = check_target(t, sec) if sec else None
            if r is None:
                continue
            measured = True
            lines.append(f"| {t.name} ({rule}, steps {', '.join(map(str, t.steps))}) | {sec['label']} | "
                         f"{'**met**' if r['met'] else '**missed**'} | " + "; ".join(x["text"] for x in r["steps"]) + " |")
        if not measured:
            lines.append(f"| {t.name} ({rule}) | — | not measured | its methods are not in any of its sections |")
    return "\n".join(lines) + "\n"


def _pair_rows(sec: Mapping[str, Any], pair: HelpPair) -> list[Mapping[str, Any]]:
    return sorted((c for c in sec["comparisons"] if c["a"] == pair.a and c.get("pair", [c["a"], c["b"]])[1] == pair.b),
                  key=lambda c: c["step"])


def teleport_help_lines(results: Mapping[str, Any]) -> list[str]:
    """The generated answer to "Does learning to teleport help?": one line per setting (and
    transfer section) with a verdict over the ``teleport_help`` pairs, then each pair's effect
    (Δ = a − b of mean log10 loss with its 95% CI) at the steps where it helps and where not."""
    pairs = [parse_named(HelpPair, h, f"teleport_help[{i}]")
             for i, h in enumerate(results["protocol"].get("teleport_help") or [])]
    out = []
    for sec in results["sections"].values():
        if sec["kind"] == "ablations":
            continue
        parts, helped, total = [], 0, 0
        for pair in pairs:
            cs = _pair_rows(sec, pair)
            if not cs:
                continue
            good = [c for c in cs if c["decision"] == LOWER]
            bad = [c for c in cs if c["decision"] != LOWER]
            helped, total = helped + len(good), total + len(cs)
            b = pair.b if "@*" not in pair.b else f"{pair.b} (at each step, the one tuned for it)"
            head = ("helps at every reported step" if not bad else "does not help at any reported step" if not good
                    else f"helps at step{'s' if len(good) > 1 else ''} {', '.join(str(c['step']) for c in good)} only")
            text = f"{pair.what} ({pair.a} − {b}) {head}"
            if good:
                text += ": lower at " + "; ".join(f"step {c['step']} ({_delta(c)})" for c in good)
            if bad:
                words = {HIGHER: "higher (worse)", NO_DIFF: "no significant difference"}
                text += ("; it does not help at " if good else ": ") + "; ".join(
                    f"step {c['step']} ({words[c['decision']]}, {_delta(c)})" for c in bad)
            parts.append(text)
        if not parts:
            continue
        verdict = ("learning to teleport helps in every comparison at every reported step" if helped == total else
                   "learning to teleport does not help in any comparison at any reported step" if helped == 0 else
                   f"learning to teleport helps in {helped} of {total} step-comparisons")
        where = f" (checkpoints of {sec['from']}, no retraining)" if sec["kind"] == "transfer" else ""
        out.append(f"**{sec['label']}**{where}: {verdict}. " + ". ".join(p[0].upper() + p[1:] for p in parts) + ".")
    return out


def divergence_table(sec: Mapping[str, Any]) -> str:
    """Method × ``divergence_steps``: the fraction of test seeds diverged by each step (for a
    learned method: any meta-seed diverged; each meta-seed's own fraction in parentheses)."""
    ms = {n: e for n, e in sec["methods"].items() if e.get("diverged_by")}
    if not ms:
        return ""
    steps = sorted({int(s) for e in ms.values() for s in e["diverged_by"]})
    lines = ["| method | " + " | ".join(f"diverged by step {s}" for s in steps) + " |", "|---|" + "---|" * len(steps)]
    for n, e in ms.items():
        cells = []
        for s in steps:
            frac, per = _diverged(e, s)
            cells.append((pct(frac) if frac is not None else "—")
                         + (f"<br>({' / '.join(pct(x) if x is not None else '—' for x in per)})" if per else ""))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def task_text(t: Mapping[str, Any]) -> str:
    """A section's task (as recorded) in words: dims, data, biases; for digits the split, the
    teleport batch and the minibatch."""
    bias = ", with biases" if t.get("bias") else ""
    if t.get("family", "regression") == "regression":
        return f"task dims {t['dims']}, distribution {t['distribution']}{bias}"
    task = parse_named(TaskConfig, dict(t), "task")
    text = f"task family {task.family}, dims {task.dims}{bias}"
    if task.family == "digits":
        steps = f"minibatches of {task.minibatch}" if task.minibatch else "full-batch steps"
        text += (f" (scikit-learn's 8×8 digits, cross-entropy: {task.dims[0]} training images per task, the other "
                 f"{N_IMAGES - task.dims[0]} validate; teleport batch {task.teleport_samples} images; {steps})")
    return text + "; the log10 losses are training losses"


def transfer_lines(name: str, sec: Mapping[str, Any]) -> list[str]:
    """What a transfer section is, and which learned methods could not be transferred (and why)."""
    out = [f"Transfer target `{name}`: {task_text(sec['task'])}. The learned methods are the checkpoints "
           f"meta-trained on setting `{sec['from']}`, run here without retraining; the baselines are tuned on "
           "this task.", ""]
    skipped = sec.get("skipped") or {}
    if skipped:
        out += ["Not transferred: " + "; ".join(f"{m} — {why}" for m, why in skipped.items()) + ".", ""]
    return out



def speedup_table(sec: Mapping[str, Any]) -> str:
    """The section's speed-up rows (:func:`metatele.studies.aggregate.speedups`) as a table: the
    step at which a method first reaches the best tuned baseline's mean log10 loss at step ``h``,
    the speed-up in steps, and each one's seconds per inner step of one trajectory."""
    lines = ["Speed-up (the field's headline metric): the step at which a method first reaches the mean log10 loss "
             "that the best tuned baseline reaches at step h, and the seconds per inner step of one trajectory "
             "(evaluation wall time / steps / seeds) of each:", "",
             "| method | h | best baseline at h | its log10 loss | reached at step | speed-up (steps) | s/step method | s/step baseline |",
             "|---|---|---|---|---|---|---|---|"]
    for r in sec.get("speedup", []):
        reached = "not reached" if r["reached_at"] is None else str(r["reached_at"])
        speed = "–" if r["speedup"] is None else f"{r['speedup']:.2f}×"
        lines.append(f"| {r['method']} | {r['step']} | {r['baseline']} | {r['target_log10']:.2f} | {reached} | {speed} "
                     f"| {r['seconds_per_step']:.2e} | {r['baseline_seconds_per_step']:.2e} |")
    return "\n".join(lines + [""])


def validation_table(sec: Mapping[str, Any], steps: Sequence[int]) -> str:
    """Methods × ``steps``: the validation accuracy (digits: on each task's held-out images) of the
    weights at each step, mean [95% CI] over the test seeds (a learned method's first averaged
    over its meta-seeds; a diverged seed has none), with the highest mean of each column in bold;
    ``""`` when the section's methods have no validation measurements."""
    ms = {n: e["metrics"]["val_accuracy"] for n, e in sec["methods"].items() if (e.get("metrics") or {}).get("val_accuracy")}
    shown = [s for s in steps if any(_by_step(v, s) for v in ms.values())]
    if not shown:
        return ""
    best = {s: max((x["mean"] for v in ms.values() if (x := _by_step(v, s)) and x["mean"] is not None
                    and math.isfinite(x["mean"])), default=None) for s in shown}
    lines = ["Validation accuracy (on the images held out of each task's training set), mean [95% CI] over the "
             "test seeds that did not diverge; the highest mean of each column in bold:", "",
             "| method | " + " | ".join(f"val accuracy @ {s}" for s in shown) + " |", "|---|" + "---|" * len(shown)]
    for n, v in ms.items():
        cells = []
        for s in shown:
            x = _by_step(v, s)
            text = cell(x, ".3f")
            cells.append(f"**{text}**" if x and best[s] is not None and x["mean"] == best[s] else text)
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def more_tables(sec: Mapping[str, Any], steps: Sequence[int]) -> list[str]:
    """The tables a section's report shows after its methods × steps table, where it has their
    measurements: :func:`validation_table` (digits), then :func:`speedup_table`."""
    return [t for t in (validation_table(sec, steps), speedup_table(sec) if sec.get("speedup") else "") if t]
