"""Plain gradient descent and the untrained ``lr`` optimizer on every training architecture of a mixture.

Why the generalist ``lr``/``lr+tele`` pair bounds its local step (docs/meta_training.md, "The
generalist"). For each training architecture of the config's ``mix`` (the reference first), on
16 validation seeds (float32, no augmentation), it prints the initial mean log10 loss and, after
``--steps`` steps, ``finite share / mean log10 loss of the finite tasks`` of

* gradient descent at each rate of ``--gd-rates`` (no bound), and
* the config's learned optimizer, untrained (its m2's output layer starts at zero, so its step
  size is the geometric mean of ``[lr_min, lr_max]``), with the config's options and ``--set``.

    OMP_NUM_THREADS=1 python experiments/lr_mixture_probe.py --config ship/generalist_lr
    OMP_NUM_THREADS=1 python experiments/lr_mixture_probe.py --config ship/generalist_lr \\
        --set learned.coordinatewise.update_bound=null --gd-rates

(about 1.5 minutes for the learned optimizer and 20 s per GD rate on one core)
"""
import argparse

import numpy as np
import torch
import yaml

from metatele import BaselineConfig, LearnedOptimizer, validation_seeds
from metatele.configs import apply_overrides, resolve_config
from metatele.evaluation.evaluate import evaluate
from metatele.meta.config import MetaTrainConfig

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--config", default="ship/generalist_lr", help="a meta-training config with a mix")
parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key")
parser.add_argument("--gd-rates", type=float, nargs="*", default=[1e-6, 1e-5, 1e-4, 1e-3, 1e-2],
                    help="plain GD rates to run (none: only the learned optimizer)")
parser.add_argument("--steps", type=int, default=300, help="inner steps")
args = parser.parse_args()
torch.manual_seed(0)
config = MetaTrainConfig.from_dict(apply_overrides(yaml.safe_load(resolve_config(args.config).read_text()), args.set))
seeds = validation_seeds(16)


def summary(loss: np.ndarray) -> str:
    """``finite share / mean log10 loss of the finite tasks`` of a final loss ``[K]`` (``inf``: diverged)."""
    ok = np.isfinite(loss)
    return f"{ok.mean():.2f} / {np.log10(loss[ok]).mean():.1f}" if ok.any() else "0.00 / –"


tele = config.learned.teleport
bound = config.learned.coordinatewise.update_bound
label = f"{config.learned.variant} untrained (η₀ = {(tele.lr_min * tele.lr_max) ** 0.5:.2g}, update_bound {bound})"
header = ["dims", "data", "initial", *(f"gd {r:g}" for r in args.gd_rates), label]
print("| " + " | ".join(header) + " |")
print("|" + " --- |" * len(header))
for task in config.mix.training_architectures(config.task):
    curves = [evaluate(BaselineConfig(name="gd", lr=r), task, seeds, args.steps) for r in args.gd_rates]
    learned = evaluate(LearnedOptimizer(task, config.learned), task, seeds, args.steps)
    initial = np.log10(learned.loss[0]).mean()
    cells = [summary(c.loss[-1]) for c in curves] + [summary(learned.loss[-1])]
    row = [str(task.dims), task.distribution + (" +bias" if task.bias else ""), f"{initial:.1f}", *cells]
    print("| " + " | ".join(row) + " |", flush=True)
