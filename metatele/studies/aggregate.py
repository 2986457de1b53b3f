"""Statistics across meta-seeds, the paired comparisons of a protocol, and the teleport target.

* :func:`combine_meta_seeds` turns one learned method's curves (one per meta-training seed, all
  on the same test seeds) into one curve whose log10-loss is, per test seed, the mean over
  meta-seeds. Paired tests on it stay paired over test seeds; :func:`method_stats` also keeps each
  meta-seed's own summary, so the noise of meta-training stays visible.
* :func:`compare_pairs` runs :func:`~metatele.evaluation.stats.paired_comparison` for the pairs a
  protocol names and adds the verdict and the :func:`~metatele.evaluation.stats.decision`.
* :func:`update_target` and :func:`lr_target` are the one rule for "a learned teleport that
  reliably helps", used by the benchmark report and by the configuration search.
* :func:`save_curves` / :func:`load_curves` store every curve of a benchmark in one ``.npz``.

Everything here works on the JSON-ready results dict that :mod:`metatele.studies.benchmark` builds
(step keys may be ``int`` or ``str``).
"""
from __future__ import annotations

import os
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from ..configs import from_dict
from ..evaluation.evaluate import LOG_FLOOR, Curves
from ..evaluation.identity import MethodId
from ..evaluation.stats import LOWER, decision, mean_ci, paired_comparison, summarize, verdict
from .protocol import BenchmarkProtocol, at_horizon


# -- curves across meta-seeds ----------------------------------------------------------------
def combine_meta_seeds(name: str, per_seed: Sequence[Curves]) -> Curves:
    """One curve from a learned method's per-meta-seed curves on the same test seeds.

    ``log10`` of the combined loss is the mean over meta-seeds of ``log10`` loss, per test seed
    and step (a geometric mean of the losses). A test seed on which any meta-seed diverged is
    diverged in the combined curve. ``grad_sq`` is combined the same way; ``time`` is averaged, and so
    are the further ``metrics`` (a digits task's validation loss and accuracy: the mean over
    meta-seeds per test seed and step, ``inf``/``nan`` where any meta-seed's is).
    """
    if not per_seed:
        raise ValueError(f"{name}: no meta-seed curves to combine")
    seeds = list(per_seed[0].seeds)
    for c in per_seed[1:]:
        if list(c.seeds) != seeds or c.loss.shape != per_seed[0].loss.shape:
            raise ValueError(f"{name}: meta-seed curves must share test seeds (same order) and steps")

    def geo(arrays: list[np.ndarray]) -> np.ndarray:
        logs = np.stack([np.log10(np.maximum(a, LOG_FLOOR)) for a in arrays])
        mean = logs.mean(0)  # +inf where any meta-seed diverged
        with np.errstate(over="ignore"):
            return np.where(np.isfinite(mean), 10.0 ** mean, np.inf)

    info = {"combined_from": [c.info for c in per_seed], "meta_seeds": len(per_seed)}
    metrics = {k: np.mean([c.metrics[k] for c in per_seed], axis=0)
               for k in per_seed[0].metrics if all(k in c.metrics for c in per_seed)}
    return Curves(name, seeds, geo([c.loss for c in per_seed]), geo([c.grad_sq for c in per_seed]),
                  np.mean([c.time for c in per_seed], axis=0), dict(per_seed[0].task), info,
                  next((c.overlap_warning for c in per_seed if c.overlap_warning), None), metrics)


def metric_stats(curves: Curves, steps: Sequence[int]) -> dict[str, dict[int, dict[str, Any]]]:
    """The further per-step measurements of ``curves`` (a digits task's ``val_loss`` and
    ``val_accuracy``) at each of ``steps`` it reaches: metric → step → ``{"mean", "ci95": [lo, hi],
    "n"}`` over the test seeds where it is finite (a diverged seed has none); ``{}`` without metrics."""
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for k, v in curves.metrics.items():
        out[k] = {}
        for s in steps:
            if 0 <= s <= curves.steps:
                m, lo, hi = mean_ci(v[s])
                out[k][int(s)] = {"mean": m, "ci95": [lo, hi], "n": int(np.isfinite(v[s]).sum())}
    return out


def method_stats(curves: Curves | Sequence[Curves], steps: Sequence[int]) -> dict[str, Any]:
    """``{"summary": summarize(...), "meta_seeds": [summary per meta-seed]}``; a single curve
    (a baseline) has no ``meta_seeds`` entry; a list is combined first. Curves with further
    measurements (digits: validation loss and accuracy) add ``"metrics"`` (:func:`metric_stats`)
    and, for a list, ``"metrics_meta_seeds"``."""
    if isinstance(curves, Curves):
        extra = {"metrics": metric_stats(curves, steps)} if curves.metrics else {}
        return {"summary": summarize(curves, steps), **extra}
    combined = combine_meta_seeds(curves[0].name, curves)
    extra = {"metrics": metric_stats(combined, steps),
             "metrics_meta_seeds": [metric_stats(c, steps) for c in curves]} if combined.metrics else {}
    return {"summary": summarize(combined, steps), "meta_seeds": [summarize(c, steps) for c in curves], **extra}


def compare_pairs(curves: Mapping[str, Curves], pairs: Iterable[Sequence[str]], steps: Sequence[int],
                  alpha: float = 0.05) -> list[dict[str, Any]]:
    """Paired comparisons ``a − b`` at every step in ``steps`` (that both curves reach), for the
    pairs whose two methods are in ``curves``. Each has ``verdict``, ``decision``, ``test`` and
    the deciding ``p``. A name with ``@*`` (see :func:`~metatele.studies.protocol.at_horizon`)
    stands, at each step, for the baseline tuned for that step; such rows carry ``pair``, the
    names as given."""
    out = []
    for pa, pb in pairs:
        for s in steps:  # a ``@*`` pattern names, at step s, the baseline tuned for s steps
            a, b = at_horizon(pa, s), at_horizon(pb, s)
            if a not in curves or b not in curves or s > min(curves[a].steps, curves[b].steps):
                continue
            c = paired_comparison(curves[a], curves[b], s)
            sign = c["n_excluded"] > 0
            out.append({**c, "test": "sign" if sign else "t", "p": c["p_sign"] if sign else c["p_value"],
                        "decision": decision(c, alpha), "verdict": verdict(c, alpha),
                        **({"pair": [pa, pb]} if (a, b) != (pa, pb) else {})})
    return out


def mean_log10(curves: Curves) -> np.ndarray:
    """``[steps + 1]`` mean over the test seeds of ``log10`` loss (``inf`` from the first step at
    which any seed has diverged)."""
    with np.errstate(divide="ignore"):
        return np.log10(np.maximum(curves.loss, LOG_FLOOR)).mean(axis=1)


def seconds_per_step(curves: Curves) -> float:
    """Wall-clock seconds per inner step of one trajectory (the batch's time / steps / seeds)."""
    steps = len(curves.time) - 1
    return float(curves.time[-1]) / max(steps, 1) / max(len(curves.seeds), 1)


def speedups(curves: Mapping[str, Curves], a: str, baselines: Sequence[str], at: Sequence[int]) -> list[dict[str, Any]]:
    """The field's headline metric (Celo's): for each ``h`` in ``at``, the best of ``baselines``
    (``@*`` patterns read as the one tuned for ``h``) at step ``h`` sets a target mean log10 loss;
    ``a`` reaches it first at step ``s`` (``None``: not within its curve), a speed-up of ``h / s``
    in steps. Each row also gives both methods' wall-clock seconds per inner step of one
    trajectory, so that a step-count speed-up can be read against its cost."""
    if a not in curves:
        return []
    ours = mean_log10(curves[a])
    rows = []
    for h in at:
        names = [at_horizon(b, h) if "@*" in b else b for b in baselines]
        scored = [(float(mean_log10(curves[n])[h]), n) for n in names if n in curves and h < len(curves[n].loss)]
        if not scored or h >= len(ours):
            continue
        target, best = min(scored)
        hit = np.flatnonzero(ours <= target)
        first = int(hit[0]) if hit.size else None
        rows.append({"step": h, "baseline": best, "target_log10": target, "reached_at": first,
                     "speedup": h / first if first else None,  # None: not reached, or already at step 0
                     "seconds_per_step": seconds_per_step(curves[a]),
                     "baseline_seconds_per_step": seconds_per_step(curves[best])})
    return rows


def diverged_by(curves: Curves | Sequence[Curves], steps: Sequence[int]) -> dict[str, Any]:
    """The fraction of test seeds diverged by each of ``steps`` (that the curve reaches):
    ``{"diverged_by": {step: fraction}}``, plus ``"meta_seeds": [{step: fraction}]`` for a
    learned method's per-meta-seed curves (combined first: a seed on which any meta-seed diverged
    counts as diverged)."""
    def fractions(c: Curves) -> dict[int, float]:
        return {int(s): float(c.diverged[s].mean()) for s in steps if s <= c.steps}

    if isinstance(curves, Curves):
        return {"diverged_by": fractions(curves)}
    return {"diverged_by": fractions(combine_meta_seeds(curves[0].name, curves)),
            "diverged_by_meta_seed": [fractions(c) for c in curves]}


# -- reading results -------------------------------------------------------------------------
def method_ids(results: Mapping[str, Any], section: str) -> dict[str, MethodId]:
    """Method name → :class:`MethodId` in one section of ``results``: the ``id`` each entry
    carries; for results written before entries carried one, rebuilt from the recorded protocol
    (:meth:`~metatele.studies.protocol.BenchmarkProtocol.method_id`)."""
    out: dict[str, MethodId] = {}
    protocol = None
    for m, entry in results["sections"][section]["methods"].items():
        if entry.get("id"):
            out[m] = MethodId.from_dict(entry["id"])
        else:
            protocol = protocol or from_dict(BenchmarkProtocol, dict(results["protocol"]))
            out[m] = protocol.method_id(m, section)
    return out


def at_step(summary: Mapping[str, Any] | None, step: int) -> Mapping[str, Any] | None:
    """The statistics of ``summary`` (a :func:`~metatele.evaluation.stats.summarize` dict, maybe
    read back from JSON) at ``step``; ``None`` when not measured."""
    if not summary:
        return None
    return summary["at_step"].get(str(step), summary["at_step"].get(step))


def ci_below(x: Mapping[str, Any] | None, y: Mapping[str, Any] | None) -> bool:
    """Whether the 95% CI of step statistics ``x`` lies wholly below that of ``y``."""
    return bool(x and y and x["ci95"][1] is not None and y["ci95"][0] is not None and x["ci95"][1] < y["ci95"][0])


# -- the target of a learned teleport --------------------------------------------------------
def update_target(tele: Mapping[str, Any] | None, plain: Mapping[str, Any] | None, steps: Sequence[int]) -> dict[str, Any]:
    """Whether a learned teleport reliably helps the learned update it is added to, in one setting.

    ``tele`` and ``plain`` are the summaries of ``LSTM(update+tele)`` and ``LSTM(update)`` (or a
    candidate's pair). The criteria: at each of ``steps``, ``tele``'s 95% CI lies wholly below
    ``plain``'s (a step either did not reach fails); no upward drift (``tele``'s mean at the last
    of ``steps`` ≤ at the one before); no seed of ``tele`` diverged by the last of ``steps``.

    Returns ``{"steps": {s: {"a", "b", "separated"}}, "no_drift", "drift": (mean before, mean
    last) or None, "diverged": count or None, "no_divergence", "met", "total", "reached"}``.
    """
    steps = list(steps)
    out: dict[str, Any] = {"steps": {}}
    for s in steps:
        x, y = at_step(tele, s), at_step(plain, s)
        out["steps"][s] = {"a": x, "b": y, "separated": ci_below(x, y)}
    x0, x1 = (at_step(tele, steps[-2]), at_step(tele, steps[-1])) if len(steps) > 1 else (None, None)
    measured = bool(x0 and x1 and x0["mean"] is not None and x1["mean"] is not None)
    out["drift"] = (x0["mean"], x1["mean"]) if measured else None
    out["no_drift"] = measured and x1["mean"] <= x0["mean"]
    last = at_step(tele, steps[-1])
    out["diverged"] = last["n_diverged"] if last else None
    out["no_divergence"] = out["diverged"] == 0
    checks = [r["separated"] for r in out["steps"].values()] + [out["no_drift"], out["no_divergence"]]
    out.update(met=sum(checks), total=len(checks), reached=all(checks))
    return out


def lr_target(comparisons: Sequence[Mapping[str, Any]], a: str, gd: str, step: int) -> Mapping[str, Any] | None:
    """The paired comparison of the learned-rate teleport ``a`` against tuned GD ``gd`` at ``step``
    (``None`` when not measured); the target is its decision being ``lower``
    (see :func:`lr_target_met`)."""
    return next((c for c in comparisons if c["a"] == a and c["b"] == gd and c["step"] == step), None)


def lr_target_met(comparison: Mapping[str, Any] | None) -> bool:
    """Whether a :func:`lr_target` comparison is significantly lower."""
    return comparison is not None and comparison["decision"] == LOWER


# -- files -----------------------------------------------------------------------------------
METRIC = "metric:"  #: the prefix of a further measurement's array name in :func:`save_curves` files


def save_curves(path: str | os.PathLike, curves: Mapping[str, Mapping[str, Mapping[str, Curves]]],
                test_seeds: Sequence[int]) -> None:
    """Write section → method → label → Curves into one ``.npz`` with arrays
    ``section/method/label/{loss,grad_sq,time}``, ``section/method/label/metric:<name>`` for each
    further measurement (digits: ``val_loss``, ``val_accuracy``) and ``test_seeds``. Every curve
    must be on exactly ``test_seeds`` (in that order), which is what makes the comparisons paired."""
    arrays: dict[str, np.ndarray] = {"test_seeds": np.asarray(test_seeds, dtype=np.int64)}
    for sec, methods in curves.items():
        for m, labelled in methods.items():
            for label, c in labelled.items():
                if list(c.seeds) != list(test_seeds):
                    raise ValueError(f"{sec}/{m}/{label} was not evaluated on the shared test seeds")
                for f in ("loss", "grad_sq", "time"):
                    arrays[f"{sec}/{m}/{label}/{f}"] = getattr(c, f)
                for k, v in c.metrics.items():
                    arrays[f"{sec}/{m}/{label}/{METRIC}{k}"] = v
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
                head = f"{stem}/{METRIC}"
                metrics = {k[len(head):]: z[k] for k in z.files if k.startswith(head)}
                out.setdefault(sec, {}).setdefault(m, {})[label] = Curves(
                    m, seeds, z[key], z[f"{stem}/grad_sq"], z[f"{stem}/time"], metrics=metrics)
    return out
