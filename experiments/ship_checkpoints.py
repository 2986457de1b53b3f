"""Copy the shipped meta-training runs into checkpoints/, compare them, write their manifests.

The shipped checkpoints are produced by (see README, "Shipped checkpoints"):

    metatele train --config ship/update_tele --out runs/ship/update_tele
    metatele train --config ship/update      --out runs/ship/update
    metatele train --config ship/lr_tele     --out runs/ship/lr_tele
    python experiments/ship_checkpoints.py --runs runs/ship --out checkpoints

This script copies each run's checkpoint to ``checkpoints/<name>.safetensors``, runs the comparison
against tuned baselines on 100 unseen seeds (``runs/ship/compare``), and writes
``checkpoints/<name>.manifest.json`` with the config, the seeds, the measured metrics and sha256.

The configurations selected by ``metatele search`` (experiments/SEARCH.md) are shipped the same
way, one task family per comparison, e.g.

    metatele train --config ship/selected_update_tele_uniform \
        --out runs/ship/selected_update_tele_uniform
    python experiments/ship_checkpoints.py --names selected_update_tele_uniform selected_update_uniform \
        --compare-out runs/ship/compare_selected_uniform
"""
from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from metatele.release.checkpoint import load_checkpoint
from metatele.release.manifest import headline, write_checkpoint_manifest
from metatele.studies.experiment import CompareConfig, run_comparison
from metatele.tasks.family import unseen_seeds

NAMES = ("update_tele", "update", "lr_tele")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/ship")
    p.add_argument("--out", default="checkpoints")
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--wandb", default=None)
    p.add_argument("--names", nargs="+", default=list(NAMES),
                   help="runs to ship (RUNS/<name>/checkpoint.safetensors; config ship/<name>, shipped in metatele/defaults); "
                   "compared together, so they must share a task family")
    p.add_argument("--compare-out", help="comparison folder (default: RUNS/compare)")
    args = p.parse_args(argv)
    runs, out = Path(args.runs), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    shipped = {}
    for name in args.names:
        src = runs / name / "checkpoint.safetensors"
        dst = out / f"{name}.safetensors"
        shutil.copyfile(src, dst)
        shipped[name] = dst
    compare_out = Path(args.compare_out) if args.compare_out else runs / "compare"
    cmp = run_comparison(CompareConfig(checkpoints=[str(p) for p in shipped.values()],
                                       seeds=args.seeds, steps=args.steps), compare_out, wandb_mode=args.wandb)
    results = cmp["results"]
    for name, path in shipped.items():
        ckpt = load_checkpoint(path)
        method = ckpt.optimizer.name
        metrics = {
            "summary": results["summaries"][method],
            "comparisons": [c for c in results.get("comparisons", []) if method in (c.get("a"), c.get("b"))],
            "baselines": {k: v["at_step"] for k, v in results["summaries"].items() if k != method},
            "comparison_folder": str(compare_out),
        }
        test = unseen_seeds(args.seeds)
        seeds = {"train": [list(r) for r in ckpt.provenance.get("training_seeds", [])], "test": [test[0], test[-1] + 1]}
        at_step = {s: v["mean"] for s, v in results["summaries"][method]["at_step"].items()}
        write_checkpoint_manifest(
            path, seeds=seeds, metrics=metrics, headline=headline(at_step, "test", args.seeds), check_seeds=seeds["test"],
            commands=[f"metatele train --config ship/{name} --out {runs / name}",
                      "python experiments/ship_checkpoints.py " + " ".join(sys.argv[1:] if argv is None else argv)])
        print(f"shipped {path} ({method}) with {out / f'{name}.manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
