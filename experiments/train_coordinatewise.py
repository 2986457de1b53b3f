"""Meta-train a coordinatewise optimizer, keep the best snapshot on validation seeds, ship it.

    python experiments/train_coordinatewise.py \
        --config ship/coordinatewise_update_tele_gaussian \
        --out checkpoints/coordinatewise_update_tele_gaussian.safetensors

Writes the checkpoint (its provenance records the training seeds, the selected meta-step and the
validation seeds) and ``<out>.manifest.json`` beside it (config, seeds, the validation history,
the command). Selection uses validation seeds only (``metatele.studies.selection``); test seeds are
never touched here.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from metatele.release.checkpoint import save_checkpoint
from metatele.release.manifest import headline, write_checkpoint_manifest
from metatele.studies.selection import SelectionConfig, meta_train_selected
from metatele.meta.config import load_config


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True)
    p.add_argument("--out", required=True, help="checkpoint file (.safetensors)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--select-every", type=int, default=20, help="meta-steps between validation runs")
    p.add_argument("--select-seeds", type=int, default=32)
    p.add_argument("--select-steps", type=int, default=300)
    args = p.parse_args(argv)
    torch.set_flush_denormal(True)  # CPU: denormal floats slow the inner loop down many times
    config = load_config(args.config, args.overrides)
    at = tuple(s for s in (10, 30, 100, 300, 1000, 3000) if s <= args.select_steps)
    selection = SelectionConfig(every=args.select_every, seeds=args.select_seeds, steps=args.select_steps, at_steps=at)
    t0 = time.time()
    result, sel, history = meta_train_selected(config, selection, progress=False)
    seconds = time.time() - t0
    for row in history:
        print(f"meta-step {row['meta_step']:4d}  validation score {row['score']:.3f}  "
              + "  ".join(f"@{k}: {v:.2f}" for k, v in row["mean_log10_at"].items())
              + f"  diverged {row['diverged_fraction']:.2f}", flush=True)
    print(f"selected meta-step {sel['meta_step']} (score {sel['score']:.3f}); {seconds:.0f} s")
    out = Path(args.out)
    save_checkpoint(out, result.optimizer, config,
                    provenance={"training_seeds": range(*result.train_seeds), "meta_steps": result.meta_steps,
                                "selection": sel, "seconds": round(seconds, 1)},
                    evaluation={"validation_history": history})
    command = "python experiments/train_coordinatewise.py " + " ".join(sys.argv[1:] if argv is None else argv)
    chosen = next(row for row in history if row["meta_step"] == sel["meta_step"])
    write_checkpoint_manifest(out, seeds={"train": range(*result.train_seeds), "validation": sel["validation_seeds"]},
                              metrics={"selection": sel, "validation_history": history,
                                       "meta_train_seconds": round(seconds, 1)},
                              headline=headline(chosen["mean_log10_at"], "validation", args.select_seeds),
                              commands=[command], check_seeds=sel["validation_seeds"])
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
