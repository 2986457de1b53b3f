"""Ship the benchmark's learned optimizers: checkpoints/benchmark_<method>_<setting>.* with manifests.

After ``metatele benchmark --config benchmark_retrain`` (the protocol that meta-trains its own
optimizers, ``runs/benchmark_retrain``):

    python experiments/ship_benchmark.py --results runs/benchmark_retrain/results.json
        # → checkpoints/benchmark_*.safetensors

For each setting, one meta-seed is shipped: the one whose CW(update+tele) snapshot scored best on
its validation seeds (the benchmark's selection score; test seeds play no part in the choice). Its
update-only twin CW(update) and its adam+CW(tele) of the *same* meta-seed are shipped with it, so
that the paired comparison can be rerun with ``metatele compare`` on the shipped files. Each
manifest records the config, the training / validation / test seeds, the benchmark's measured
test-seed statistics of that very checkpoint (and of all meta-seeds of the method), the selection
history, and the command that regenerates it:

    <the benchmark's command> --settings <setting> --methods "CW(update+tele)" "CW(update)" "adam+CW(tele)" \\
        --set meta_seeds=[<k>] --ablations none

(meta-training is deterministic on CPU given the seed, so that rerun reproduces the checkpoint); that
command is the first of the manifest's ``commands``.

A protocol of ``pretrained`` methods (the long runs of ``experiments/long_runs/``, evaluated by
the default protocol, ``metatele benchmark``) ships them inside the package instead, every meta-seed,
as NAME (meta-seed 0) and NAME-seedK, each manifest holding that checkpoint's test-seed numbers:

    python experiments/ship_benchmark.py --results runs/benchmark/results.json \
        --settings gaussian-20 --to-package "CW-generalist(update+tele)=generalist-update-tele" ...
        # → metatele/pretrained/generalist-update-tele{,-seed1,-seed2}.{safetensors,manifest.json}
        #   (then add the names to REGISTRY in metatele/release/pretrained.py)

Their first command is the long run's own (``python experiments/long_runs/run.py train RUN``,
repeated until the run has reached its budget); for a file shipped with other safeguard settings than
it was trained with, the next is the one that wrote it (``run.py ship RUN --as NAME --deploy ...``);
then the benchmark's.
"""
from __future__ import annotations

import argparse
import json
import re
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from metatele.evaluation.format import cell
from metatele.release.checkpoint import read_metadata
from metatele.release.manifest import headline, write_checkpoint_manifest
from metatele.release.pretrained import pretrained_dir, resolve_checkpoint

SHIPPED = ("CW(update+tele)", "CW(update)", "adam+CW(tele)")


def file_name(method: str, setting: str) -> str:
    """``CW(update+tele)``, ``gaussian-20`` → ``benchmark_cw_update_tele_gaussian-20``."""
    return "benchmark_" + re.sub(r"[^a-z0-9]+", "_", method.lower()).strip("_") + "_" + setting


def pick_meta_seed(entry: dict[str, Any]) -> dict[str, Any]:
    """The meta-seed info whose selected snapshot has the lowest validation score."""
    infos = [i for i in entry["meta_seeds_info"] if i.get("selected")]
    if not infos:
        raise SystemExit(f"{entry.get('id', {}).get('name', 'method')}: no meta-seed with a validation selection "
                         "to choose from")
    return min(infos, key=lambda i: i["selected"]["score"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--results", default="runs/benchmark/results.json", help="the benchmark's results.json")
    p.add_argument("--out", default="checkpoints")
    p.add_argument("--settings", nargs="+", default=None, help="default: every setting of the benchmark")
    p.add_argument("--methods", nargs="+", default=list(SHIPPED))
    p.add_argument("--to-package", nargs="+", metavar="METHOD=NAME", default=None,
                   help="ship every meta-seed of these pretrained methods as metatele/pretrained/NAME[-seedK]")
    p.add_argument("--package-dir", type=Path, default=None,
                   help="with --to-package: the folder instead of the package's metatele/pretrained")
    args = p.parse_args(argv)
    results_path = Path(args.results)
    if not results_path.is_file():
        print(f"no {results_path}: run `metatele benchmark` first", file=sys.stderr)
        return 2
    results = json.loads(results_path.read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = args.settings or [s for s, sec in results["sections"].items() if sec["kind"] == "setting"]
    if args.to_package:
        return to_package(results, results_path, settings, args.to_package, args.package_dir or pretrained_dir(), argv)
    lead = args.methods[0]
    rows = []
    for setting in settings:
        methods = results["sections"][setting]["methods"]
        missing = [m for m in args.methods if m not in methods]
        if missing:
            print(f"{setting}: the benchmark has no {missing}", file=sys.stderr)
            return 2
        chosen = pick_meta_seed(methods[lead])
        k = chosen["meta_seed"]
        for m in args.methods:
            entry = methods[m]
            done = [i["meta_seed"] for i in entry["meta_seeds_info"]]
            if k not in done:
                print(f"{setting}/{m}: meta-seed {k} failed in the benchmark", file=sys.stderr)
                return 2
            index = done.index(k)
            info = entry["meta_seeds_info"][index]
            src = resolve_checkpoint(info["checkpoint"])  # a path, or a shipped name
            dst = out / f"{file_name(m, setting)}.safetensors"
            rerun = (f"{results['command']} --settings {setting} --methods " + " ".join(f'"{x}"' for x in args.methods)
                     + f" --set meta_seeds=[{k}] --ablations none")  # the benchmark's own command, narrowed
            manifest = ship_one(results, results_path, setting, m, index, src, dst, [rerun], argv,
                                chosen_by=f"the lowest validation score of {lead}'s selected snapshot over the "
                                          f"meta-seeds ({', '.join(str(i['meta_seed']) for i in methods[lead]['meta_seeds_info'])})")
            print(f"{setting}/{m} (meta-seed {k}) → {dst}, {manifest}")
            rows.append((dst.stem, setting, m, k, entry["meta_seeds"][index]))
    print(table(rows, results["steps"]))
    return 0


def ship_one(results: dict[str, Any], results_path: Path, setting: str, method: str, index: int, src: Path,
             dst: Path, commands: list[str], argv: list[str] | None, chosen_by: str) -> Path:
    """Copy meta-seed ``index`` of ``method``'s checkpoint to ``dst`` and write its manifest: its
    seeds, the benchmark's test-seed statistics of that very checkpoint, and the commands."""
    entry = results["sections"][setting]["methods"][method]
    info, stats = entry["meta_seeds_info"][index], entry["meta_seeds"][index]
    dst.parent.mkdir(parents=True, exist_ok=True)
    if not (dst.exists() and dst.resolve() == src.resolve()):  # (a shipped optimizer is already in place)
        shutil.copyfile(src, dst)
    sel, test = info.get("selected") or {}, results["test_seeds"]
    return write_checkpoint_manifest(
        dst, seeds={"train": info["train_seeds"], "validation": sel.get("validation_seeds"),
                    "test": [test["start"], test["start"] + test["count"]]},
        metrics={"this_checkpoint": stats, "diverged_by": entry["diverged_by_meta_seed"][index],
                 "all_meta_seeds": entry["summary"]},
        headline=headline({s: v["mean"] for s, v in stats["at_step"].items()}, "test", test["count"],
                          task=results["sections"][setting].get("task")),
        check_seeds=[test["start"], test["start"] + test["count"]],
        commands=[*commands, "python experiments/ship_benchmark.py " + shlex.join(sys.argv[1:] if argv is None else argv)],
        extra={"benchmark": {"protocol": results["protocol_name"], "setting": setting, "method": method,
                             "meta_seed": info["meta_seed"], "git_commit": results["machine"].get("git_commit"),
                             "command": results["command"], "results": str(results_path)},
               "chosen_by": chosen_by, "selection": {"selected": sel, "history": info.get("selection_history")}})


def long_run_commands(checkpoint: Path) -> list[str]:
    """The commands that made ``checkpoint``: those of the run it was warm-started from, if any
    (:func:`first_phase`), the long run's own (the run in whose folder,
    ``.../long_runs/RUN/``, it is, or, for a shipped file, the run of ``experiments/long_runs/``
    whose selected checkpoint has the same meta-parameters), then, for a file shipped with other
    safeguard settings than it was trained with, the command that wrote it (``run.py ship ...
    --deploy``)."""
    if checkpoint.parent.parent.name == "long_runs":
        runs = [checkpoint]
    else:
        mine = load_file(checkpoint)
        runs = [c for c in sorted(Path("experiments/long_runs").glob("*/checkpoint.safetensors"))
                if _same_tensors(load_file(c), mine)]
    if not runs:
        raise SystemExit(f"{checkpoint}: not the checkpoint of a long run (experiments/long_runs/RUN/), nor a copy of one")
    name = runs[0].parent.name
    out = [*first_phase(name), f"python experiments/long_runs/run.py train {name}  # repeated until it has reached its budget"]
    deployed = read_metadata(checkpoint)["provenance"].get("deployment")
    return out + ([deployed["why"]] if deployed else [])


def first_phase(run: str, listed: Path = Path("experiments/long_runs/runs.yaml")) -> list[str]:
    """For a warm-started long run (``after: SOURCE`` and ``init_from`` in ``runs.yaml``), the
    command of the run it starts from (and so on back); ``[]`` for a run trained from scratch."""
    spec = (yaml.safe_load(listed.read_text()) if listed.is_file() else {}).get(run) or {}
    if "after" not in spec:
        return []
    init = next(kv.partition("=")[2] for kv in spec.get("set", []) if kv.startswith("init_from="))
    return [*first_phase(spec["after"], listed), f"python experiments/long_runs/run.py train {spec['after']}  # "
            f"repeated until it has reached its budget; {run} starts from its training state {init} (committed)"]


def _same_tensors(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def to_package(results: dict[str, Any], results_path: Path, settings: list[str], pairs: list[str], folder: Path,
               argv: list[str] | None) -> int:
    """Ship every meta-seed of each pretrained ``METHOD=NAME`` into the package (``--to-package``)."""
    if len(settings) != 1:
        print("--to-package: give the one setting whose test-seed numbers the manifests hold (--settings)",
              file=sys.stderr)
        return 2
    setting, rows = settings[0], []
    for pair in pairs:
        method, sep, name = pair.partition("=")
        entry = results["sections"][setting]["methods"].get(method)
        if not sep or not name or entry is None or not all(i.get("pretrained") for i in entry["meta_seeds_info"]):
            print(f"--to-package {pair}: expected METHOD=NAME with METHOD a pretrained method of {setting}",
                  file=sys.stderr)
            return 2
        for index, info in enumerate(entry["meta_seeds_info"]):
            k = info["meta_seed"]
            dst = folder / f"{name if k == 0 else f'{name}-seed{k}'}.safetensors"
            src = resolve_checkpoint(info["checkpoint"])  # a path, or a shipped name
            manifest = ship_one(results, results_path, setting, method, index, src, dst,
                                [*long_run_commands(src), results["command"]], argv,
                                chosen_by=f"meta-seed {k} of the protocol's {len(entry['meta_seeds_info'])}; its snapshot "
                                          "was selected on validation seeds during its long run")
            print(f"{setting}/{method} (meta-seed {k}) → {dst}, {manifest}")
            rows.append((dst.stem, setting, method, k, entry["meta_seeds"][index]))
    print(table(rows, results["steps"]))
    return 0


def table(rows: list[tuple[str, str, str, int, dict]], steps: list[int]) -> str:
    """The shipped files' test-seed numbers (mean log10 loss [95% CI] of that very checkpoint)."""
    out = ["| file | setting | method | meta-seed | " + " | ".join(f"@ {s}" for s in steps) + " |",
           "|---" * (4 + len(steps)) + "|"]
    for stem, setting, m, k, stats in rows:
        cells = [cell(stats["at_step"].get(str(s))) for s in steps]
        out.append(f"| `{stem}` | {setting} | {m} | {k} | " + " | ".join(cells) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
