"""Quick exploration: meta-train one config (one meta-seed) and print its mean log10 loss on 100
unseen seeds next to GD at a fixed rate. Used for the configuration search notes; e.g.

    python experiments/explore.py --gd-lr 1e-2 task.distribution=gaussian learned.variant=update \
        learned.lstm.output_scale=0.01

Arguments are `key=value` overrides of a base of 2,000 × 100 trajectories, 50 per batch, mean
log-loss meta-objective (the shipped configs' settings).
"""
import argparse

import torch

from metatele import BaselineConfig, MetaTrainConfig, evaluate, meta_train, unseen_seeds
from metatele.configs import apply_overrides

BASE = {"learned": {"variant": "update+tele"}, "trajectories": 2000, "steps": 100, "batch_size": 50,
        "meta_loss": "mean_log", "device": "cpu"}

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--gd-lr", type=float, default=3e-4)
    p.add_argument("--steps", type=int, nargs="+", default=[0, 10, 30, 99])
    a = p.parse_args()
    config = MetaTrainConfig.from_dict(apply_overrides(BASE, a.overrides))
    result = meta_train(config, progress=False)
    seeds = unseen_seeds(100)
    T = max(a.steps)
    for name, method in [("learned", result.optimizer), (f"gd({a.gd_lr:g})", BaselineConfig("gd", lr=a.gd_lr))]:
        curves = evaluate(method, config.task, seeds, T)
        ll = torch.as_tensor(curves.log_loss)
        means = [float(ll[s].mean()) for s in a.steps]
        finite = [float(ll[s][torch.isfinite(ll[s])].mean()) for s in a.steps]
        diverged = int((~torch.isfinite(ll[T])).sum())
        print(f"{name:10s} mean log10 loss at steps {a.steps}: " + " / ".join(f"{m:.2f}" for m in means)
              + " (finite only: " + " / ".join(f"{m:.2f}" for m in finite) + f"; diverged by step {T}: {diverged})")
