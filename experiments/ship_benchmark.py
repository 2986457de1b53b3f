"""Ship the benchmark's learned optimizers: checkpoints/benchmark_<method>_<setting>.* with manifests.

After ``metatele benchmark`` (default protocol, ``runs/benchmark``):

    python experiments/ship_benchmark.py                      # → checkpoints/benchmark_*.safetensors

For each setting, one meta-seed is shipped: the one whose CW(update+tele) snapshot scored best on
its validation seeds (the benchmark's selection score; test seeds play no part in the choice). Its
update-only twin CW(update) and its adam+CW(tele) of the *same* meta-seed are shipped with it, so
that the paired comparison can be rerun with ``metatele compare`` on the shipped files. Each
manifest records the config, the training / validation / test seeds, the benchmark's measured
test-seed statistics of that very checkpoint (and of all meta-seeds of the method), the selection
history, and the command that regenerates it:

    metatele benchmark --settings <setting> --methods "CW(update+tele)" "CW(update)" "adam+CW(tele)" \\
        --set meta_seeds=[<k>] --ablations none

(meta-training is deterministic on CPU given the seed, so that rerun reproduces the checkpoint); that
command is the first of the manifest's ``commands``.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
from pathlib import Path
from typing import Any

from metatele.evaluation.format import cell
from metatele.release.manifest import headline, write_checkpoint_manifest

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
    args = p.parse_args(argv)
    results_path = Path(args.results)
    if not results_path.is_file():
        print(f"no {results_path}: run `metatele benchmark` first", file=sys.stderr)
        return 2
    results = json.loads(results_path.read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = args.settings or [s for s, sec in results["sections"].items() if sec["kind"] == "setting"]
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
            src = Path(info["checkpoint"])
            dst = out / f"{file_name(m, setting)}.safetensors"
            shutil.copyfile(src, dst)
            sel = info.get("selected") or {}
            test = results["test_seeds"]
            stats = entry["meta_seeds"][index]
            rerun = (f"metatele benchmark --settings {setting} --methods " + " ".join(f'"{x}"' for x in args.methods)
                     + f" --set meta_seeds=[{k}] --ablations none")
            manifest = write_checkpoint_manifest(
                dst, seeds={"train": info["train_seeds"], "validation": sel.get("validation_seeds"),
                            "test": [test["start"], test["start"] + test["count"]]},
                metrics={"this_checkpoint": stats, "diverged_by": entry["diverged_by_meta_seed"][index],
                         "all_meta_seeds": entry["summary"]},
                headline=headline({s: v["mean"] for s, v in stats["at_step"].items()}, "test", test["count"],
                                  task=results["sections"][setting].get("task")),
                check_seeds=[test["start"], test["start"] + test["count"]],
                commands=[rerun, "python experiments/ship_benchmark.py " + " ".join(sys.argv[1:] if argv is None else argv)],
                extra={"benchmark": {"protocol": results["protocol_name"], "setting": setting, "method": m,
                                     "meta_seed": k, "git_commit": results["machine"].get("git_commit"),
                                     "command": results["command"], "results": str(results_path)},
                       "chosen_by": f"the lowest validation score of {lead}'s selected snapshot over the meta-seeds "
                                    f"({', '.join(str(i['meta_seed']) for i in methods[lead]['meta_seeds_info'])})",
                       "selection": {"selected": sel, "history": info.get("selection_history")}})
            print(f"{setting}/{m} (meta-seed {k}) → {dst}, {manifest}")
            rows.append((dst.stem, setting, m, k, entry["meta_seeds"][index]))
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
