"""The coordinatewise step's stability options, measured (docs/coordinatewise.md, "Stability options").

Adam is tuned for the 1000-step horizon on 20 training seeds of gaussian [20, 20, 20, 20] (float64,
objective the mean log10 loss over all steps). Every method then runs 1000 steps on the same 64
validation seeds (float64):

* the ``tele`` variant on that Adam with an *untrained* m2 (a fixed teleport along the normalised
  teleport gradient, norm ``tele_norm_init`` times the gradient decay, exact action, loss
  safeguard) every k steps, with the base Adam's moments kept or reset at each teleport;
* the ``update`` variant's untrained m1 (exactly Adam at the tuned rate) with an update bound or
  the update safeguard (alone, or with its step-size backoff);
* the same at the benchmark's base rate 0.1, where the safeguard alone stalls.

``OMP_NUM_THREADS=1 python experiments/stability_options.py``; prints markdown tables and the
paired comparisons of ``reset`` against ``keep``.
"""
import torch

from metatele import (BaselineConfig, CoordinatewiseConfig, LearnedConfig, LearnedOptimizer, TaskConfig, compare,
                      grid_search, training_seeds, validation_seeds)
from metatele.evaluation.stats import markdown_table, verdicts

torch.set_flush_denormal(True)
STEPS, AT = 1000, (10, 30, 100, 300, 1000)
task = TaskConfig([20, 20, 20, 20], "gaussian")
adam = grid_search(BaselineConfig(name="adam"), task, training_seeds(20), STEPS, objective="mean_log_loss",
                   dtype=torch.float64).config
print(f"tuned Adam lr = {adam.lr:.3g}")


def learned(variant: str, **options) -> LearnedOptimizer:
    """The untrained coordinatewise ``variant``: m1 starts as Adam at its tuned rate (``update``),
    m2 teleports after the tuned Adam itself (``tele``)."""
    if variant == "tele":
        base = {"base": adam}
    else:
        base = {}
        options.setdefault("lr", adam.lr)
    config = LearnedConfig(variant=variant, arch="coordinatewise", coordinatewise=CoordinatewiseConfig(**options),
                           **base)
    return LearnedOptimizer(task, config).double()


teleports = {"adam": adam}
for norm in (0.003, 0.03):
    for every in (1, 10, 100):
        for state in ("keep", "reset"):
            teleports[f"tele ‖T‖ {norm} every {every}, {state}"] = learned(
                "tele", tele_norm_init=norm, ablation={"every": every, "teleport_state": state})
local = {"adam": adam, "m1 untrained (= adam)": learned("update"),
         "+ update_bound 0.1": learned("update", update_bound=0.1),
         "+ update_bound 0.01": learned("update", update_bound=0.01),
         "+ update_safeguard": learned("update", update_safeguard=True),
         "+ update_safeguard, backoff 0.5": learned("update", update_safeguard=True, update_backoff=0.5,
                                                    update_regrow=1.05)}
# m1's base rate in the benchmark (0.1, 3× the tuned one): the safeguard alone stalls there
fast = {"m1 untrained at lr 0.1": learned("update", lr=0.1),
        "+ update_safeguard": learned("update", lr=0.1, update_safeguard=True),
        "+ update_safeguard, backoff 0.5": learned("update", lr=0.1, update_safeguard=True, update_backoff=0.5,
                                                   update_regrow=1.05)}
seeds = validation_seeds(64)
for title, methods in (("teleport_state", teleports), ("update bound and safeguard", local),
                       ("the safeguard's backoff at lr 0.1", fast)):
    curves = compare(methods, task, seeds, STEPS, dtype=torch.float64)
    print(f"\n### {title}\n")
    print(markdown_table(curves, AT))
    if title == "teleport_state":
        for name in [n for n in curves if n.endswith("reset")]:
            print("\n".join("- " + v for v in verdicts(curves, name, name.replace("reset", "keep"), AT)))
