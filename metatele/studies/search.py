"""``metatele search``: choose the learned-teleport configuration on validation seeds.

A search is a benchmark protocol (:mod:`metatele.studies.protocol`) with ``eval_split: validation``,
whose learned methods are named ``LSTM(<variant>) [<candidate>]``: a *candidate* is one set of
switches applied to ``LSTM(update)`` and ``LSTM(update+tele)`` (and to ``LSTM(lr+tele)`` where
it applies). :func:`run_search` runs the protocol (:func:`metatele.studies.benchmark.run_benchmark`, so
every run is meta-trained on training seeds and evaluated on validation seeds, never on the test
seeds), then ranks the candidates on the target of a learned teleport that reliably helps:

* update+tele candidates (:func:`rank_update_candidates`): per setting, ``update+tele`` below
  ``update`` with non-overlapping 95% CIs at each reported step, no upward drift (mean at the
  last step ≤ at the one before) and no diverged validation seed; ranked by the number of those
  criteria met over all settings, then by the mean difference ``update+tele − update``;
* lr+tele candidates (:func:`rank_lr_candidates`): significantly lower than tuned GD at the last
  step (paired test) in each setting; ranked by that count, then by the mean difference.

The winners are written to ``experiments/SEARCH.md`` (tables of every candidate's criteria; the
search's full tables and figures in ``experiments/search/``) and ``search_selected.yaml`` beside
the report (their switches). The benchmark protocol and the shipped configs use the selection
shipped as package data, ``metatele/defaults/search_selected.yaml``: copy a new one there to adopt it.
"""
from __future__ import annotations

import json
import math
import os
import shlex
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from ..configs import ConfigError, defaults_dir
from ..evaluation.format import cell, num, pval
from ..evaluation.identity import MethodId
from .aggregate import lr_target, lr_target_met, method_ids, update_target
from .benchmark import render_only as render_tables
from .benchmark import run_benchmark
from .protocol import load_protocol

__all__ = ["rank_update_candidates", "rank_lr_candidates", "rankings", "render_search", "selection",
           "run_search", "DEFAULT_SEARCH", "SEARCH_QUICK"]

DEFAULT_SEARCH, SEARCH_QUICK = defaults_dir() / "search.yaml", defaults_dir() / "search_quick.yaml"


def _settings(results: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {n: s for n, s in results["sections"].items() if s["kind"] == "setting"}


def _method_ids(results: Mapping[str, Any]) -> dict[str, MethodId]:
    """Method name → :class:`MethodId` over every setting of ``results``."""
    out: dict[str, MethodId] = {}
    for sname in _settings(results):
        out = {**method_ids(results, sname), **out}
    return out


def _candidates(ids: Mapping[str, MethodId], variant: str) -> dict[str, str]:
    """Candidate → method name, for the learned methods of ``variant`` (in results order)."""
    return {i.candidate: name for name, i in ids.items() if i.variant == variant and i.candidate is not None}


def rank_update_candidates(results: Mapping[str, Any], steps: Sequence[int] | None = None) -> list[dict[str, Any]]:
    """Every candidate with both an ``update+tele`` and an ``update`` method, best first.

    Each entry: ``tag`` (the candidate), ``a``/``b`` (its two method names), ``met`` and
    ``total`` (criteria of :func:`~metatele.studies.aggregate.update_target`, summed over
    settings), ``reached``, ``mean_diff`` (mean over settings and steps of ``update+tele −
    update``, ``None`` if a mean is missing) and ``settings``: per setting the target's record
    (per-step statistics and separation, drift, divergence) and its ``label``.
    """
    steps = list(steps or results["steps"])
    ids = _method_ids(results)
    plain = _candidates(ids, "update")
    out = []
    for tag, a in _candidates(ids, "update+tele").items():
        if tag not in plain:
            continue
        b = plain[tag]
        entry: dict[str, Any] = {"tag": tag, "a": a, "b": b, "met": 0, "total": 0, "settings": {}}
        diffs: list[float] = []
        for sname, sec in _settings(results).items():
            ms = sec["methods"]
            row = update_target(ms.get(a, {}).get("summary"), ms.get(b, {}).get("summary"), steps)
            for r in row["steps"].values():
                x, y = r["a"], r["b"]
                ok = x and y and x["mean"] is not None and y["mean"] is not None
                diffs.append(x["mean"] - y["mean"] if ok else math.nan)
            entry["met"] += row["met"]
            entry["total"] += row["total"]
            entry["settings"][sname] = {"label": sec["label"], **row}
        entry["mean_diff"] = sum(diffs) / len(diffs) if diffs and all(math.isfinite(d) for d in diffs) else None
        entry["reached"] = entry["met"] == entry["total"]
        out.append(entry)
    out.sort(key=lambda e: (-e["met"], e["mean_diff"] if e["mean_diff"] is not None else math.inf))
    return out


def rank_lr_candidates(results: Mapping[str, Any], gd: str = "gd(tuned)") -> list[dict[str, Any]]:
    """Every ``lr+tele`` candidate compared with ``gd`` at the last step, best first.

    Each entry: ``tag``, ``met``/``total`` (settings where it is significantly lower,
    :func:`~metatele.studies.aggregate.lr_target`), ``mean_diff`` (mean over settings of the
    paired mean difference) and per-setting comparisons.
    """
    last = results["steps"][-1]
    out = []
    for tag, a in _candidates(_method_ids(results), "lr+tele").items():
        entry: dict[str, Any] = {"tag": tag, "a": a, "b": gd, "met": 0, "total": 0, "settings": {}}
        diffs = []
        for sname, sec in _settings(results).items():
            c = lr_target(sec["comparisons"], a, gd, last)
            entry["total"] += 1
            if c is None:
                diffs.append(math.nan)
                continue
            entry["met"] += lr_target_met(c)
            diffs.append(c["mean_diff"] if c["mean_diff"] is not None else math.nan)
            entry["settings"][sname] = {"label": sec["label"], "comparison": c}
        entry["mean_diff"] = sum(diffs) / len(diffs) if diffs and all(math.isfinite(d) for d in diffs) else None
        entry["reached"] = entry["met"] == entry["total"]
        out.append(entry)
    out.sort(key=lambda e: (-e["met"], e["mean_diff"] if e["mean_diff"] is not None else math.inf))
    return out


def rankings(results: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    """``{"update+tele": rank_update_candidates(...), "lr+tele": rank_lr_candidates(...)}``."""
    return {"update+tele": rank_update_candidates(results), "lr+tele": rank_lr_candidates(results)}


def selection(ranked_by: Mapping[str, list[dict[str, Any]]], protocol: Mapping[str, Any]) -> dict[str, Any]:
    """The winners of :func:`rankings` and their switches: ``{"update+tele": {...}, "lr+tele": {...}}``
    where each has ``tag``, ``reached`` and ``methods`` (variant → the protocol's overrides of that
    method, plus its per-setting overrides)."""
    out: dict[str, Any] = {}
    for key, ranked in ranked_by.items():
        if not ranked:
            continue
        best = ranked[0]
        names = {"update+tele": best["a"], "update": best["b"]} if key == "update+tele" else {key: best["a"]}
        methods = {}
        for v, name in names.items():
            methods[f"LSTM({v})"] = {
                "overrides": protocol["methods"][name],
                "setting_overrides": {s: spec["method_overrides"][name]
                                      for s, spec in protocol["settings"].items()
                                      if name in (spec.get("method_overrides") or {})}}
        out[key] = {"tag": best["tag"], "reached": best["reached"], "met": best["met"], "total": best["total"],
                    "mean_diff": best["mean_diff"], "methods": methods}
    return out


def _mark(ok: bool) -> str:
    return "✓" if ok else "✗"


def render_search(results: Mapping[str, Any], command: str, ranked_by: Mapping[str, list[dict[str, Any]]],
                  chosen: Mapping[str, Any], report_rel: str) -> str:
    """The markdown of ``experiments/SEARCH.md`` from :func:`rankings` and :func:`selection`."""
    steps = results["steps"]
    ts = results["test_seeds"]
    lines = [
        "# Configuration search (validation seeds)", "",
        f"Generated by `{command}` on {results['started']} in {results['wall_seconds'] / 60:.1f} min "
        f"({results['machine']['processor']}, {results['machine']['workers']} worker(s)"
        + ("; `--resume` reused the meta-training of earlier runs with identical configs, so this time covers only "
           "the new runs and the re-evaluation of all" if "--resume" in command else "")
        + "). Every learned run is "
        f"meta-trained on training seeds ({len(results['meta_seeds'])} meta-seeds: "
        f"{', '.join(map(str, results['meta_seeds']))}) and evaluated on the same **{ts['count']} validation "
        f"seeds** [{ts['start']}, {ts['start'] + ts['count']}) — training-split tasks that meta-training never "
        "draws. The test seeds of `experiments/RESULTS.md` are not used here. Full tables (per meta-seed, paired "
        f"tests, figures): [{report_rel}]({report_rel}).", "",
        "## LSTM(update+tele) against LSTM(update), per candidate", "",
        "Criteria per setting: update+tele below update with non-overlapping 95% CIs at steps "
        f"{', '.join(map(str, steps))}; no upward drift (step {steps[-1]} ≤ step {steps[-2]}); no diverged "
        "validation seed. Ranked by criteria met, then by the mean difference (update+tele − update, log10).", "",
    ]
    ranked = ranked_by["update+tele"]
    settings = _settings(results)
    head = "| rank | candidate | criteria met | mean Δ | " + " | ".join(
        f"{settings[s]['label']}: step {st} (tele vs no tele)" for s in settings for st in steps) + " | drift / diverged |"
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for i, e in enumerate(ranked, 1):
        cells = []
        for s in settings:
            row = e["settings"][s]
            cells += [f"{cell(row['steps'][st]['a'])} vs {cell(row['steps'][st]['b'])} "
                      f"{_mark(row['steps'][st]['separated'])}" for st in steps]
        dd = "; ".join(f"{_mark(r['no_drift'])} / {r['diverged']}" for r in e["settings"].values())
        lines.append(f"| {i} | {e['tag']} | {e['met']}/{e['total']} | {num(e['mean_diff'], '+.3f')} | "
                     + " | ".join(cells) + f" | {dd} |")
    lines += ["", "## LSTM(lr+tele) against tuned GD, per candidate", "",
              f"Criterion per setting: significantly lower than gd(tuned) at step {steps[-1]} (paired test: t-test, "
              "sign test when a seed diverged).", "",
              "| rank | candidate | settings met | mean Δ | " + " | ".join(settings[s]["label"] for s in settings) + " |",
              "|" + "---|" * (4 + len(settings))]
    for i, e in enumerate(ranked_by["lr+tele"], 1):
        cells = []
        for s in settings:
            c = e["settings"].get(s, {}).get("comparison")
            cells.append("–" if c is None else f"Δ {num(c['mean_diff'], '+.3f')}, {c['test']} p {pval(c['p'])}, "
                         f"{c['decision']} (diverged {c['diverged_a']} vs {c['diverged_b']})")
        lines.append(f"| {i} | {e['tag']} | {e['met']}/{e['total']} | {num(e['mean_diff'], '+.3f')} | "
                     + " | ".join(cells) + " |")
    lines += ["", "## Selected", ""]
    for key, sel in chosen.items():
        lines.append(f"- **{key}**: candidate `{sel['tag']}` ({sel['met']}/{sel['total']} criteria on validation "
                     f"seeds; the target {'is' if sel['reached'] else 'is **not**'} met on validation seeds). Switches:")
        for m, spec in sel["methods"].items():
            extra = "".join(f"; on {s}: {o}" for s, o in spec["setting_overrides"].items())
            lines.append(f"  - {m}: {spec['overrides']}{extra}")
    lines += ["", "The selected switches are written to `search_selected.yaml` beside this report; shipped as "
              "`metatele/defaults/search_selected.yaml`, the benchmark protocol (`metatele/defaults/benchmark.yaml`) "
              "uses them for its main methods, and "
              "`experiments/RESULTS.md` reports them on the test seeds.", ""]
    return "\n".join(lines)


def run_search(config: str | Path, out: str | Path | None = None, report: str | Path = "experiments/SEARCH.md",
               selected: str | Path | None = None, overrides: list[str] | None = None,
               progress: bool = True, resume: bool = False, render_only: bool = False,
               command: str = "metatele search", tables: str | Path | None = None) -> dict[str, Any]:
    """Run (or, with ``render_only``, re-read) a search protocol, rank, write the report and the
    selection; returns the selection.

    ``tables``: where the full benchmark-style report of the search goes (per-meta-seed tables,
    paired tests; its figures in ``<tables dir>/figures``); default ``<report dir>/search/RESULTS.md``.
    ``selected``: where the selected switches go; default ``<report dir>/search_selected.yaml``,
    beside the report that explains them (the shipped selection, ``metatele/defaults/search_selected.yaml``,
    is package data: copy a new selection there to make it the default).
    """
    protocol, raw = load_protocol(config, overrides)
    if protocol.eval_split != "validation":
        raise ConfigError(f"eval_split: a search must select on validation seeds, {config} says {protocol.eval_split!r}")
    out, report = Path(out or protocol.out), Path(report)
    selected = Path(selected) if selected is not None else report.parent / "search_selected.yaml"
    tables = Path(tables) if tables else report.parent / "search" / "RESULTS.md"
    if render_only:
        results = json.loads((out / "results.json").read_text())
        figures = {}
        for name, path in results.get("figures", {}).items():  # move the figures next to the tables
            dst = tables.parent / "figures" / Path(path).name
            if Path(path).resolve() != dst.resolve() and Path(path).is_file():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, dst)
            figures[name] = str(dst)
        results["figures"] = figures
        (out / "results.json").write_text(json.dumps(results, indent=1, allow_nan=False))
        render_tables(out, tables)
    else:
        results = run_benchmark(protocol, out, tables, command=command, raw=raw, progress=progress, resume=resume)
    ranked_by = rankings(results)
    chosen = selection(ranked_by, results["protocol"])
    report.parent.mkdir(parents=True, exist_ok=True)
    rel = os.path.relpath(tables, report.parent)
    report.write_text(render_search(results, results.get("command") or command, ranked_by, chosen, rel))
    selected.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# Written by `{results.get('command') or command}` from {out / 'results.json'}: the candidates ranked "
              f"best on validation seeds (see {report}).\n")
    selected.write_text(header + yaml.safe_dump(chosen, sort_keys=False, allow_unicode=True))
    return chosen
