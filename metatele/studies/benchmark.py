"""``metatele benchmark``: the statistical protocol behind ``experiments/RESULTS.md``.

A protocol (YAML → :class:`BenchmarkProtocol`) names task *settings*, learned *methods*
(:class:`~metatele.meta.config.MetaTrainConfig` overrides on a shared ``base``), hand-designed
*baselines*, the meta-training seeds, the unseen test seeds, the steps to report, the paired
*comparisons* to state and the *ablations* (each one config switch, run on one setting).

For every setting: tune the baselines on training seeds, meta-train every learned method once
per meta-seed (saving each checkpoint), evaluate everything on the same unseen test seeds; then
the ablation arms on their setting; then the transfer targets (the protocol's baselines tuned on
each target task, the setting's checkpoints evaluated there without retraining,
:mod:`metatele.studies.transfer_section`); then statistics (:mod:`metatele.studies.aggregate`), ``results.json``,
``curves.npz``, PNG figures and the markdown report. Runs whose configs are identical (e.g. an
ablation reference equal to a main method) are trained once.

The protocol itself (dataclasses, YAML loading, how a learned run's config is assembled) is in
:mod:`metatele.studies.protocol`.

Learned runs are independent and seeded, so they run in ``workers`` processes with ``threads``
torch threads each (default: one single-thread process per CPU: on a 2-core machine far faster
than two threads in one process); a checkpoint's transfer evaluations join that pool as soon as it
is trained. The numbers do not depend on ``workers`` or on the order in which runs finish.

Files: ``OUT/results.json`` (everything but the raw curves), ``OUT/curves.npz`` (every curve, see
:func:`~metatele.studies.aggregate.load_curves`), ``OUT/checkpoints/<section>/<method>/seed<k>.safetensors``,
``<report dir>/figures/<report name>_<section>.png`` (e.g. ``results_gaussian-20.png``) and the report (``OUT/RESULTS.md`` unless the
protocol or ``--report`` says otherwise; the default protocol writes ``experiments/RESULTS.md``).
"""
from __future__ import annotations

import datetime
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import torch
import yaml
from tqdm.auto import tqdm

from ..configs import defaults_dir, require, to_dict
from ..evaluation.evaluate import BaselineMethod, Curves, evaluate
from ..evaluation.figures import plot_loss_vs_step
from ..evaluation.identity import MethodId
from ..storage.jsonable import to_json
from ..storage.provenance import available_cpus, machine_info
from ..meta.config import resolve_device
from .aggregate import combine_meta_seeds, compare_pairs, diverged_by, load_curves, method_ids, method_stats, save_curves, speedups
from .protocol import Ablation, BenchmarkProtocol, Setting, Tuning, expand, load_protocol  # noqa: F401 (re-exported)
from .report import conclusions, goal_check, render_report
from .learned_runs import Job, run_job  # noqa: F401 (Job: re-exported)
from .pool import run_calls
from .transfer_section import evaluate_transfer, transfer_calls, transfer_methods

__all__ = ["BenchmarkProtocol", "BenchmarkRun", "Job", "Setting", "Ablation", "Tuning", "load_protocol",
           "run_benchmark", "run_job", "load_curves", "render_only", "expand", "slug", "DEFAULT_CONFIG", "QUICK_CONFIG",
           "RETRAIN_CONFIG"]

DEFAULT_CONFIG, QUICK_CONFIG = defaults_dir() / "benchmark.yaml", defaults_dir() / "benchmark_quick.yaml"
#: the protocol that meta-trains its own optimizers at a small scale (the default until the shipped ones)
RETRAIN_CONFIG = defaults_dir() / "benchmark_retrain.yaml"


# -- running ----------------------------------------------------------------------------------
def slug(name: str) -> str:
    """A file-name-safe form of a method name: ``LSTM(update+tele)`` → ``LSTM-update+tele``."""
    return re.sub(r"[^A-Za-z0-9+.=_-]+", "-", name).strip("-")


class BenchmarkRun:
    """Carries out a protocol: :meth:`run`, then :meth:`sections` for the statistics.

    Args:
        settings, ablations, methods: run only these (default: all; ``methods`` names learned
            methods and baselines).
        workers: processes for the learned runs (each with ``threads`` torch threads); 1 runs
            them here, one after the other. Results do not depend on it (every run is seeded).
    """

    def __init__(self, protocol: BenchmarkProtocol, out: Path, progress: bool = True, resume: bool = False,
                 settings: list[str] | None = None, ablations: list[str] | None = None,
                 workers: int = 1, threads: int = 1, methods: list[str] | None = None) -> None:
        self.p, self.out, self.progress, self.resume = protocol, Path(out), progress, resume
        self.workers, self.threads = max(1, workers), max(1, threads)
        methods = None if methods is None else protocol.method_names(methods)
        for what, names, have in (("settings", settings, protocol.settings), ("ablations", ablations, protocol.ablations),
                                  ("methods", methods, {**protocol.methods, **protocol.baselines})):
            unknown = sorted(set(names or []) - set(have))
            require(not unknown, f"--{what}", f"unknown {unknown}; the protocol has {sorted(have)}")
        self.settings = list(protocol.settings) if settings is None else [s for s in protocol.settings if s in settings]
        self.ablations = list(protocol.ablations) if ablations is None else [a for a in protocol.ablations if a in ablations]
        self.methods = list(protocol.methods) if methods is None else [m for m in protocol.methods if m in methods]
        self.baselines = list(protocol.baselines) if methods is None else [b for b in protocol.baselines if b in methods]
        self.device = resolve_device(protocol.device)
        self.seeds = protocol.eval_seeds()
        self.timings: list[dict[str, Any]] = []
        self.curves: dict[str, dict[str, Any]] = {}  # section → method → Curves | [Curves per meta-seed]
        self.entries: dict[str, dict[str, dict[str, Any]]] = {}  # section → method → JSON entry
        self.skipped: dict[str, dict[str, str]] = {}  # transfer section → method → why it is not there
        tr = protocol.transfer  # transfer sections, when their source setting runs
        self.transfers = protocol.transfer_sections() if tr and tr.setting in self.settings else {}

    def jobs(self) -> list[Job]:
        """Every learned run, in report order (identical configs appear more than once)."""
        p, out = self.p, []
        ck = self.out / "checkpoints"
        for s in self.settings:
            out += [Job(s, m, k, p.learned_config(s, m, k),
                        p.pretrained(m, k) or ck / s / slug(m) / f"seed{k}.safetensors",
                        p.selection(s, m), pretrained=p.pretrained(m, k) is not None,
                        initialisation=p.initialisation(m))
                    for m in self.methods for k in p.meta_seeds]
        for arm, (m, ab, ref) in p.ablation_arms(self.ablations).items():
            out += [Job("ablations", arm, k, p.learned_config(p.ablation_setting, m, k, ab, ref),
                        ck / "ablations" / slug(arm) / f"seed{k}.safetensors",
                        p.selection(p.ablation_setting, m, ab, ref)) for k in p.meta_seeds]
        return out

    def stages(self) -> list[str]:
        """Labels of the stages: one per setting's (and transfer target's) baselines, one per
        distinct learned run, one per transfer target's learned methods."""
        seen: set[str] = set()
        runs = [j for j in self.jobs() if not (j.key in seen or seen.add(j.key))]
        return ([f"{s}: baselines" for s in [*self.settings, *self.transfers]]
                + [f"{j.section}: {j.method} seed {j.meta_seed}" for j in runs]
                + [f"{t}: learned methods of {self.p.transfer.setting}" for t in self.transfers])

    def _baselines(self, section: str, task: Any) -> None:
        p = self.p
        tuned: dict[str, Any] = {}
        for name in self.baselines:
            cfg, tune = p.baseline(name)
            record = None
            if tune:  # with its teleport on, if any: a teleport raises the gradient norm
                key = json.dumps([to_dict(cfg), p.tune_steps(name)], sort_keys=True)
                if key not in tuned:
                    t0 = time.perf_counter()
                    tuned[key] = p.tune(name, task, device=self.device)
                    self.timings.append({"stage": "tune", "section": section, "method": name,
                                         "seconds": time.perf_counter() - t0})
                record = tuned[key]
                cfg = record.config  # its lr (and, for momentum, its coefficient) as tuned
            t0 = time.perf_counter()
            c = evaluate(BaselineMethod(cfg, name, task=task), task, self.seeds, max(p.steps), device=self.device)
            self.timings.append({"stage": "evaluate", "section": section, "method": name,
                                 "seconds": time.perf_counter() - t0})
            self.curves.setdefault(section, {})[name] = c
            self.entries.setdefault(section, {})[name] = {
                "kind": "baseline", "id": p.method_id(name).to_dict(), "config": to_dict(cfg),
                "tuning": record.to_dict() if record else None,
                **({"tune_steps": p.tune_steps(name)} if (p.baselines[name] or {}).get("tune_steps") else {})}

    def run(self) -> dict[str, float]:
        """Tune and evaluate the baselines, then run every distinct learned job and, as soon as a checkpoint
        is trained, its transfer evaluations (in one worker pool, or here); returns each phase's wall seconds."""
        torch.set_num_threads(self.threads)
        bar = tqdm(total=len(self.stages()), desc="benchmark", unit="stage", disable=not self.progress,
                   dynamic_ncols=True)
        phases = {}
        t0 = time.perf_counter()
        tasks = {**{s: self.p.settings[s].task for s in self.settings}, **{t: x.task for t, x in self.transfers.items()}}
        for s, task in tasks.items():
            bar.set_postfix_str(f"{s}: baselines")
            self._baselines(s, task)
            bar.update(1)
        phases["baselines: tune + evaluate"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        jobs, distinct = self.jobs(), {}
        for j in jobs:
            distinct.setdefault(j.key, j)
        args = (self.seeds, self.p.steps, self.p.name, self.resume)
        inline = self.workers == 1  # else: the longest first, so that no worker is left with a long tail
        calls = {key: (run_job, (j, *args, self.progress and inline and sys.stderr.isatty(), self.threads))
                 for key, j in (distinct.items() if inline else sorted(distinct.items(), key=lambda kv: -kv[1].cost))}
        then = transfer_calls(self.p, self.transfers, self.methods, jobs)  # run key → its transfer evaluations
        def follow(key: Any, r: dict[str, Any]) -> dict[Any, Any]:  # a checkpoint's transfer evaluations
            return {} if isinstance(key, tuple) or "error" in r else {
                (t, m, k): (evaluate_transfer, (r["info"]["checkpoint"], self.transfers[t].task, self.seeds,
                                                max(self.p.steps), m, self.device, dtype, self.threads))
                for t, m, k, dtype in then.get(key, [])}

        def done(key: Any) -> None:  # the bar counts learned runs (the transfer targets: below)
            if not isinstance(key, tuple):
                bar.set_postfix_str("done {0.section}: {0.method} seed {0.meta_seed}".format(distinct[key]))
                bar.update(1)
        results = run_calls(calls, self.workers, follow, done)
        evaluated = {t: {key[1:]: r for key, r in results.items() if isinstance(key, tuple) and key[0] == t}
                     for t in self.transfers}  # target → (method, meta-seed) → its evaluation
        n = len(results) - len(distinct)  # the transfer evaluations
        what, runs = (" + transfer evaluate", f" + {n} transfer evaluations") if self.transfers else ("", "")
        phases[f"learned: meta-train + evaluate{what} ({len(distinct)} runs{runs}, {self.workers} worker"
               f"{'s' if self.workers > 1 else ''})"] = time.perf_counter() - t0
        for j in jobs:  # in report order; a run shared by two entries is recorded in both
            r = results[j.key]
            first = distinct[j.key] is j
            if first:
                self.timings += r["timings"]
            entry = self.entries.setdefault(j.section, {}).setdefault(j.method, {
                "kind": "learned", "id": self.p.method_id(j.method, j.section).to_dict(), "meta_seeds_info": [], "failed": [],
                "config": {k: v for k, v in j.config.to_dict().items() if k not in ("seed", "train_seed_start")}})
            per_seed = self.curves.setdefault(j.section, {}).setdefault(j.method, [])
            if "error" in r:
                entry["failed"].append({"meta_seed": j.meta_seed, "error": r["error"]})
                continue
            shared = {} if first else {"shared_with": f"{distinct[j.key].section}/{distinct[j.key].method}"}
            entry["meta_seeds_info"].append({**r["info"], **shared})
            per_seed.append(r["curves"])
        for t, target in self.transfers.items():  # in report order, whichever finished first
            entries, curves, self.skipped[t], timings = transfer_methods(
                self.p, t, target, self.entries.get(self.p.transfer.setting, {}), self.methods, evaluated[t])
            self.entries.setdefault(t, {}).update(entries)
            self.curves.setdefault(t, {}).update(curves)
            self.timings += timings
            bar.update(1)
        bar.close()
        return phases

    # -- assembling -------------------------------------------------------------------------
    def sections(self) -> dict[str, dict[str, Any]]:
        """Per section: kind, label, task, methods (entries with statistics), comparisons."""
        p, out = self.p, {}
        div = p.report_divergence_steps()
        for name, methods in self.curves.items():
            abl, transfer = name == "ablations", self.transfers.get(name)
            setting = transfer or p.settings[p.ablation_setting if abl else name]
            for m, c in methods.items():  # a method whose every meta-seed failed has no curves
                self.entries[name][m].update(method_stats(c, p.steps) if c else {"summary": None})
                if div and c:
                    self.entries[name][m].update(diverged_by(c, div))
            flat = self.flat_curves(name)
            sec = {"kind": "ablations" if abl else "transfer" if transfer else "setting", "task": to_dict(setting.task),
                   "label": setting.label, "methods": self.entries[name]}
            if transfer:
                sec.update({"from": p.transfer.setting, "skipped": self.skipped.get(name, {})})
            if abl:
                chosen = {ab: a for ab, a in p.ablations.items() if ab in self.ablations}
                sec["ablations"] = {ab: {"method": a.method, "reference": f"{a.method} [reference]",
                                         "question": a.question} for ab, a in chosen.items()}
                sec["comparisons"] = [{**c, "ablation": ab} for ab, a in chosen.items()
                                      for c in compare_pairs(flat, [[ab, f"{a.method} [reference]"]], p.steps, p.alpha)]
            else:
                sec["comparisons"] = compare_pairs(flat, p.comparisons + p.extra_pairs(), p.steps, p.alpha)
                rows = [dict(r, method=x.a) for x in p.speedup for r in speedups(flat, x.a, x.baselines, x.at)]
                if rows:
                    sec["speedup"] = rows
            out[name] = sec
        return out

    def flat_curves(self, section: str) -> dict[str, Curves]:
        """Method → one curve (learned methods combined over meta-seeds)."""
        return {m: (combine_meta_seeds(m, c) if isinstance(c, list) else c)
                for m, c in self.curves[section].items() if c}

    def labelled_curves(self) -> dict[str, dict[str, dict[str, Curves]]]:
        """section → method → ``seed<k>`` / ``combined`` / ``baseline`` → Curves (for :func:`save_curves`)."""
        out: dict[str, dict[str, dict[str, Curves]]] = {}
        for sec, methods in self.curves.items():
            for m, c in methods.items():
                if isinstance(c, Curves):
                    out.setdefault(sec, {})[m] = {"baseline": c}
                elif c:
                    infos = self.entries[sec][m]["meta_seeds_info"]
                    out.setdefault(sec, {})[m] = {**{f"seed{i['meta_seed']}": x for i, x in zip(infos, c)},
                                                  "combined": combine_meta_seeds(m, c)}
        return out


def _figure_title(name: str, section: Mapping[str, Any]) -> str:
    return section["label"] + (" — ablations" if name == "ablations" else "")


def run_benchmark(protocol: BenchmarkProtocol, out: str | os.PathLike, report: str | os.PathLike | None = None,
                  command: str = "", raw: Mapping[str, Any] | None = None, progress: bool = True,
                  resume: bool = False, settings: list[str] | None = None, ablations: list[str] | None = None,
                  workers: int | None = None, threads: int | None = None,
                  methods: list[str] | None = None) -> dict[str, Any]:
    """Run ``protocol``; write ``OUT/results.json``, ``OUT/curves.npz``, ``OUT/checkpoints/``,
    figures next to the report (``<report dir>/figures/``) and the report (default
    ``OUT/RESULTS.md``). Returns the results dict.

    ``workers``/``threads`` default to the protocol's, else one worker per available CPU (one on
    CUDA) with one torch thread each.
    """
    t0, started = time.perf_counter(), datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    out = Path(out)
    report = Path(report) if report is not None else out / "RESULTS.md"
    out.mkdir(parents=True, exist_ok=True)
    cuda = resolve_device(protocol.device).type == "cuda"
    workers = workers or protocol.workers or (1 if cuda else available_cpus())
    threads = threads or protocol.threads or max(1, available_cpus() // workers)
    runner = BenchmarkRun(protocol, out, progress, resume, settings, ablations, workers, threads, methods)
    machine = {**machine_info(runner.device), "workers": workers, "torch_threads": threads}
    phases = runner.run()
    t1 = time.perf_counter()
    sections = runner.sections()
    figures = {}
    for name in sections:
        if not runner.flat_curves(name):  # e.g. a transfer section whose methods this run left out
            continue
        path = report.parent / "figures" / f"{slug(report.stem.lower())}_{slug(name)}.png"  # one set per report
        plot_loss_vs_step(runner.flat_curves(name), str(path), title=_figure_title(name, sections[name]),
                          ids={m: MethodId.from_dict(e["id"]) for m, e in sections[name]["methods"].items()})
        figures[name] = os.path.relpath(path, report.parent)
    save_curves(out / "curves.npz", runner.labelled_curves(), runner.seeds)
    results = to_json({
        "format": "metatele-benchmark-results", "format_version": 1, "command": command,
        "protocol_name": protocol.name, "protocol": raw if raw is not None else to_dict(protocol),
        "machine": machine, "started": started, "meta_seeds": protocol.meta_seeds,
        "test_seeds": {"start": runner.seeds[0], "count": len(runner.seeds), "split": protocol.eval_split},
        "steps": protocol.steps, "alpha": protocol.alpha, "sections": sections,
        "curves_file": str(out / "curves.npz"), "results_file": str(out / "results.json"),
        "figures": {k: str(report.parent / v) for k, v in figures.items()},
    })
    results["conclusions"] = conclusions(results)
    results["goal"] = goal_check(results)
    phases["statistics, figures, report"] = time.perf_counter() - t1
    results["phases"] = phases
    results["timings"] = to_json(runner.timings)
    results["finished"] = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    results["wall_seconds"] = time.perf_counter() - t0
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None
    with open(out / "results.json", "w") as f:
        json.dump(results, f, indent=1, allow_nan=False)
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_report(results, figures, yaml.safe_dump(results["protocol"], sort_keys=False,
                                                                     allow_unicode=True)))
    return results


def render_only(out: Path, report: Path) -> int:
    """Re-render ``report`` from ``out/results.json`` (recomputing the generated sentences), and
    redraw its figures from ``out/curves.npz`` when that file is there."""
    try:
        results = json.loads((out / "results.json").read_text())
    except FileNotFoundError:
        print(f"metatele benchmark: error: no results at {out / 'results.json'}; run the benchmark first", file=sys.stderr)
        return 2
    if (out / "curves.npz").is_file():
        saved = load_curves(out / "curves.npz")
        for name, path in results.get("figures", {}).items():
            sec = results["sections"][name]
            curves = {m: saved[name][m].get("combined") or saved[name][m].get("baseline")
                      for m in sec["methods"] if m in saved.get(name, {})}
            plot_loss_vs_step({m: c for m, c in curves.items() if c is not None}, path, title=_figure_title(name, sec),
                              ids=method_ids(results, name))
    results["conclusions"] = conclusions(results)
    results["goal"] = goal_check(results)
    figures = {k: os.path.relpath(v, report.parent) for k, v in results.get("figures", {}).items()}
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(render_report(results, figures, yaml.safe_dump(results["protocol"], sort_keys=False,
                                                                     allow_unicode=True)))
    print(f"report: {report} (re-rendered from {out / 'results.json'})")
    return 0
