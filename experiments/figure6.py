"""The paper's Figure 6 on unseen seeds, plus tuned baselines with and without teleport.

GD (lr 3e-4), LSTM(lr,tele), LSTM(update) and LSTM(update,tele) from the shipped checkpoints,
and GD, momentum, Adam, RMSProp and AdaGrad tuned on training seeds, each with and without a
gradient-ascent teleport at step 5. Writes results.json, results.md, PNG figures and offline wandb
runs (one per method, grouped) into --out:

    python experiments/figure6.py --out runs/figure6 [--seeds 100] [--steps 100]
"""
import argparse
import sys

from metatele.studies.experiment import CompareConfig, run_comparison

CHECKPOINTS = ["checkpoints/update_tele.safetensors", "checkpoints/update.safetensors", "checkpoints/lr_tele.safetensors"]

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="runs/figure6")
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--wandb", default=None, help="online, offline or disabled (default: $WANDB_MODE, else offline)")
    a = p.parse_args()
    at = [s for s in (10, 30, 100, 300) if s <= a.steps]
    run_comparison(CompareConfig(checkpoints=CHECKPOINTS, seeds=a.seeds, steps=a.steps, at_steps=at),
                   a.out, wandb_mode=a.wandb, group="figure6")
    sys.exit(0)
