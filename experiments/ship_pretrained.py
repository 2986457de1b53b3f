"""Ship a learned optimizer inside the package, or bring a checkpoint's manifest into the one shape.

    python experiments/ship_pretrained.py checkpoints/coordinatewise_update_tele_gaussian.safetensors \
        --name cw-update-tele-gaussian
        # → metatele/pretrained/cw-update-tele-gaussian.{safetensors,manifest.json}
        #   (then add the name to REGISTRY in metatele/release/pretrained.py)

    python experiments/ship_pretrained.py checkpoints/*.safetensors --restamp
        # rewrites each checkpoint's manifest in place, in the one shape

Both write through :func:`metatele.release.manifest.write_checkpoint_manifest`: the seeds, metrics
and commands of the source manifest are kept, its headline numbers are named, and its ``check``
is the manifest's own cheapest measurement (the mean log10 loss at step 10 on the seeds it was
measured on), recomputed now: the script stops if it does not reproduce. Source manifests written
before the one shape (by older versions of ``ship_checkpoints.py``, ``ship_benchmark.py``,
``train_coordinatewise.py``) are read as they are.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path
from typing import Any

from metatele.release.manifest import headline, manifest_path, reference_check, write_checkpoint_manifest
from metatele.release.pretrained import pretrained_path

CHECK_STEP = 10


def span(seeds: list[int]) -> int:
    return int(seeds[1]) - int(seeds[0])


def source_record(doc: dict[str, Any]) -> dict[str, Any]:
    """What a source manifest says: seeds, metrics, headline, commands, extra, and the measured
    mean log10 loss at step 10 with its seeds (the number the check must reproduce)."""
    metrics, extra = doc.get("metrics") or {}, dict(doc.get("extra") or {})
    if "headline" in doc:  # the one shape already
        check = doc["check"]
        return {"seeds": doc["seeds"], "metrics": metrics, "headline": doc["headline"], "commands": doc["commands"],
                "extra": extra, "measured": (check["seeds"], check["steps"], check["mean_log10_loss"])}
    seeds = {k: v for k, v in doc["seeds"].items() if k != "meta_seed"}
    if "this_checkpoint" in metrics:  # ship_benchmark.py: the benchmark's test-seed numbers of this file
        at = metrics["this_checkpoint"]["at_step"]
        head = headline({s: v["mean"] for s, v in at.items()}, "test", span(seeds["test"]), doc["config"]["task"])
        commands = [extra.pop("rerun"), "python experiments/ship_benchmark.py"]
        measured = (seeds["test"], CHECK_STEP, at[str(CHECK_STEP)]["mean"])
    elif "validation_history" in metrics:  # train_coordinatewise.py: the selected snapshot's validation numbers
        sel = metrics["selection"]
        at = next(r for r in metrics["validation_history"] if r["meta_step"] == sel["meta_step"])["mean_log10_at"]
        head = headline(at, "validation", span(sel["validation_seeds"]))
        commands = extra.pop("commands")
        measured = (sel["validation_seeds"], CHECK_STEP, at[str(CHECK_STEP)])
    else:  # ship_checkpoints.py: the comparison's test-seed numbers
        at = metrics["summary"]["at_step"]
        head = headline({s: v["mean"] for s, v in at.items()}, "test", span(seeds["test"]))
        commands = extra.pop("commands")
        extra.pop("provenance", None)  # the checkpoint's own, stored again by the one shape
        measured = (seeds["test"], CHECK_STEP, at[str(CHECK_STEP)]["mean"])
    extra["manifest_before"] = {"created": doc.get("created"), "git_commit": doc.get("git_commit")}
    return {"seeds": seeds, "metrics": metrics, "headline": head, "commands": commands, "extra": extra,
            "measured": measured}


def ship(src: Path, dst: Path, command: str) -> Path:
    """Write ``dst``'s manifest from ``src``'s (copying the file when they differ)."""
    record = source_record(json.loads(manifest_path(src).read_text()))
    if dst != src:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)
    seeds, steps, value = record["measured"]
    check = reference_check(dst, seeds=seeds, steps=steps)
    if abs(check["mean_log10_loss"] - value) > 1e-6:
        raise SystemExit(f"{src}: the manifest's {value} at step {steps} does not reproduce ({check['mean_log10_loss']})")
    commands = record["commands"] + ([command] if command not in record["commands"] else [])
    return write_checkpoint_manifest(dst, commands=commands, seeds=record["seeds"], metrics=record["metrics"],
                                     headline=record["headline"], extra=record["extra"] or None, check=check)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("checkpoints", nargs="+", type=Path, help="checkpoint files, each with NAME.manifest.json beside it")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--name", help="ship the one checkpoint as metatele/pretrained/NAME.safetensors")
    how.add_argument("--restamp", action="store_true", help="rewrite each checkpoint's manifest in place")
    args = p.parse_args(argv)
    if args.name and len(args.checkpoints) != 1:
        p.error("--name ships one checkpoint")
    for src in args.checkpoints:
        dst = pretrained_path(args.name) if args.name else src
        command = f"python experiments/ship_pretrained.py {src} " + (f"--name {args.name}" if args.name else "--restamp")
        print(f"{src} → {ship(src, dst, command)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
