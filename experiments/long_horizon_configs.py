"""How the benchmark's long-horizon coordinatewise configuration was chosen, on validation seeds only.

Each candidate is the retraining protocol's CW(update+tele) (metatele/defaults/benchmark_retrain.yaml, meta-seed
0) with a few keys changed. It is meta-trained exactly as the benchmark does (snapshot selection on
the 24 selection seeds, ``validation_seeds(24)``), then its selected snapshot runs 1000 steps on 48
further validation seeds (``validation_seeds(48, start=100)``), next to Adam at each rate the
benchmark's per-horizon tuning picks on training seeds. No test seed is touched.

    python experiments/long_horizon_configs.py            # ≈ 8 min with 2 processes on the 2-core CPU (15 min with another job beside it)
    python experiments/long_horizon_configs.py --rates    # only the tuned Adam rates (the ones benchmark_retrain.yaml uses)

Adam's rates are tuned here as the benchmark tunes ``adam(tuned@H)`` (a grid search on its training
seeds for H steps, :meth:`~metatele.studies.protocol.BenchmarkProtocol.tune`), not copied from a report.

Prints, per setting, a markdown table: the selection score (mean log10 loss over steps 10 … 1000
on the selection seeds; lower is better) at meta-step 0 (the untrained optimizer) and at the
selected snapshot, and the mean log10 loss on the 48 further seeds.
"""
from __future__ import annotations

import argparse
import multiprocessing
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from metatele import BaselineConfig, validation_seeds
from metatele.configs import merge_overrides
from metatele.evaluation.evaluate import BaselineMethod, evaluate
from metatele.meta.config import MetaTrainConfig
from metatele.optimizers.coordinatewise import CoordinatewiseConfig
from metatele.studies.benchmark import RETRAIN_CONFIG, load_protocol
from metatele.studies.selection import meta_train_selected

AT = (10, 30, 100, 300, 1000)
CW = "learned.coordinatewise."
# every candidate names these keys, whatever the protocol says (update_regrow at its default: it acts
# only with update_backoff, and a run without it refuses any other value)
PLAIN = {CW + "lr": 0.1, CW + "update_backoff": None, CW + "update_regrow": CoordinatewiseConfig.update_regrow}
BACKOFF = {CW + "update_backoff": 0.5, CW + "update_regrow": 1.05}
SETTINGS = ("gaussian-20", "uniform-20")


def adam_rates(protocol, setting: str) -> dict[int, float]:
    """Adam's rate for each horizon of ``AT``, tuned as the benchmark tunes ``adam(tuned@H)``."""
    task = protocol.settings[setting].task
    return {h: protocol.tune(f"adam(tuned@{h})", task).config.lr for h in AT}


def candidates(setting: str, rates: dict[int, float]) -> dict[str, dict]:
    """The candidate keys of a setting; on gaussian, m1 also starts as Adam at the rate tuned for 300 steps."""
    out = {"lr 0.1 (the previous default)": PLAIN, "lr 0.1, backoff": {**PLAIN, **BACKOFF}}
    if setting == "gaussian-20":
        out[f"lr {rates[300]:.3g} (adam tuned@300), backoff"] = {**PLAIN, **BACKOFF, CW + "lr": rates[300]}
    return out


def means(curves, at=AT) -> list[float]:
    L = np.log10(np.asarray(curves.loss))
    return [float(np.mean(L[s])) for s in at]


def candidate(setting: str, name: str, keys: dict) -> tuple[str, str, float, int, float, list[float]]:
    torch.set_num_threads(1)
    protocol, _ = load_protocol(RETRAIN_CONFIG)
    config = MetaTrainConfig.from_dict(merge_overrides(protocol.learned_config(setting, "CW(update+tele)", 0).to_dict(), keys))
    result, selected, history = meta_train_selected(config, protocol.selection(setting, "CW(update+tele)"),
                                                    progress=False)
    curves = evaluate(result.optimizer.eval(), config.task, list(validation_seeds(48, start=100)), max(AT))
    return setting, name, history[0]["score"], selected["meta_step"], selected["score"], means(curves)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS))
    p.add_argument("--rates", action="store_true", help="print the tuned Adam rates and stop")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    protocol, _ = load_protocol(RETRAIN_CONFIG)
    rates = {s: adam_rates(protocol, s) for s in args.settings}
    if args.rates:
        for s in args.settings:
            print(f"{s}: " + ", ".join(f"adam(tuned@{h}) lr = {lr!r}" for h, lr in rates[s].items()))
        return 0
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.workers, mp_context=ctx) as pool:
        futures = [pool.submit(candidate, s, n, k) for s in args.settings for n, k in candidates(s, rates[s]).items()]
        rows = [f.result() for f in futures]
    head = "| candidate | score @ meta-step 0 | selected meta-step | score there | " + " | ".join(
        f"@ {s}" for s in AT) + " |"
    for setting in args.settings:
        task = protocol.settings[setting].task
        print(f"\n### {setting}: CW(update+tele) candidates, 48 further validation seeds\n\n{head}")
        print("|---" * (4 + len(AT)) + "|")
        for s, name, score0, step, score, m in rows:
            if s == setting:
                print(f"| {name} | {score0:.2f} | {step} | {score:.2f} | " + " | ".join(f"{x:.2f}" for x in m) + " |")
        for lr in sorted(set(rates[setting].values()), reverse=True):
            c = evaluate(BaselineMethod(BaselineConfig(name="adam", lr=lr)), task, list(validation_seeds(48, start=100)),
                         max(AT))
            print(f"| Adam, lr {lr:g} | | | | " + " | ".join(f"{x:.2f}" for x in means(c)) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
