"""Continue a long run of this folder, and bring its results back here to commit.

    OMP_NUM_THREADS=1 timeout -s TERM 2h python experiments/long_runs/run.py train generalist_update_tele_seed1
    python experiments/long_runs/run.py collect generalist_update_tele_seed1

``train NAME`` meta-trains the run NAME of ``runs.yaml`` in ``runs/NAME`` (``--work``): it first
copies the training state committed in ``experiments/long_runs/NAME/training_state/`` there, when
that folder has none, then runs ``metatele train --config CONFIG --set ... --out runs/NAME
--save-every 100 --keep 2 --resume``. Stop it at any time with SIGTERM: it saves its state.

``collect NAME`` copies the run's progress back to ``experiments/long_runs/NAME``: a finished run's
selected ``checkpoint.safetensors``, ``final`` and ``average`` meta-parameters and
``validation.json`` (and its committed training state is removed), an unfinished run's newest
training state (replacing the older one); then it draws ``validation.png`` and prints the run's
status (``experiments/training_status.py``). Commit the folder afterwards.

``ship NAME --as SHIPPED`` puts a finished run's selected checkpoint into the package as
``metatele/pretrained/SHIPPED.safetensors`` (then add SHIPPED to ``REGISTRY`` in
``metatele/release/pretrained.py``; ``experiments/ship_benchmark.py --to-package`` writes its
manifest from the benchmark's test-seed numbers). With ``--deploy KEY=VALUE ...`` it is shipped with
those coordinatewise safeguard settings instead of the ones it was trained with
(:func:`metatele.release.checkpoint.redeploy`; the meta-parameters are unchanged), e.g.
``--deploy update_safeguard=true update_backoff=0.5``.
"""
from __future__ import annotations

import argparse
import importlib.util
import shlex
import shutil
import sys
from pathlib import Path
from typing import Any

import yaml

from metatele import cli
from metatele.evaluation.figures import plot_learning_curve
from metatele.meta.state import CHECKPOINT_FILE, STATE_DIR, state_files
from metatele.release.checkpoint import DEPLOYMENT_KEYS, redeploy
from metatele.release.pretrained import pretrained_dir

HERE = Path(__file__).resolve().parent


def _training_status() -> Any:
    """experiments/training_status.py as a module (loaded by path: ``experiments/`` is no package)."""
    spec = importlib.util.spec_from_file_location("training_status", HERE.parent / "training_status.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

#: what a finished run keeps in the repository (besides validation.png)
FINISHED = (CHECKPOINT_FILE, "final.safetensors", "average.safetensors", "validation.json")


def runs(path: Path = HERE / "runs.yaml") -> dict[str, dict[str, Any]]:
    """The runs listed in ``runs.yaml``: name → ``{config, set}``."""
    return yaml.safe_load(path.read_text())


def train_argv(name: str, listed: dict[str, dict[str, Any]], work: Path, *extra: str) -> list[str]:
    """``metatele train`` arguments that continue the run ``name`` in ``work``."""
    if name not in listed:
        raise SystemExit(f"{name}: not a run of runs.yaml (runs: {', '.join(listed)})")
    spec = listed[name]
    sets = [a for kv in spec.get("set", []) for a in ("--set", kv)]
    return ["train", "--config", spec["config"], *sets, "--out", str(work), "--save-every", "100", "--keep", "2",
            "--resume", *extra]


def _newest(folder: Path) -> int:
    """The meta-step of ``folder``'s newest training state (-1: none)."""
    files = state_files(folder)
    return files[0][0] if files else -1


def seed_work(committed: Path, work: Path) -> Path | None:
    """Copy the committed newest training state into ``work`` when it is newer than any there; the
    copied file (``None``: nothing to copy). A finished run is refused: it cannot be continued."""
    if (committed / CHECKPOINT_FILE).exists():
        raise SystemExit(f"{committed}: this run has finished (its {CHECKPOINT_FILE} is committed); "
                         "it cannot be continued")
    files = state_files(committed)
    if not files or files[0][0] <= _newest(work) or (work / CHECKPOINT_FILE).exists():
        return None
    (work / STATE_DIR).mkdir(parents=True, exist_ok=True)
    return Path(shutil.copy2(files[0][1], work / STATE_DIR / files[0][1].name))


def collect(work: Path, committed: Path) -> str:
    """Bring ``work``'s progress into ``committed`` (see the module docstring); the run's status."""
    if (committed / CHECKPOINT_FILE).is_file():
        raise SystemExit(f"{committed}: this run has finished and its files are committed; nothing to collect")
    committed.mkdir(parents=True, exist_ok=True)
    if (work / CHECKPOINT_FILE).is_file():
        missing = [f for f in FINISHED if not (work / f).is_file()]
        if missing:
            raise SystemExit(f"{work}: finished, but {', '.join(missing)} is missing")
        for f in FINISHED:
            shutil.copy2(work / f, committed / f)
        shutil.rmtree(committed / STATE_DIR, ignore_errors=True)
    else:
        files = state_files(work)
        if not files:
            raise SystemExit(f"{work}: no training state and no checkpoint: nothing to collect")
        if files[0][0] < _newest(committed):
            raise SystemExit(f"{work}: its newest state (meta-step {files[0][0]}) is older than the committed one "
                             f"(meta-step {_newest(committed)}); nothing collected")
        newest = files[0][1]
        (committed / STATE_DIR).mkdir(exist_ok=True)
        for _, old in state_files(committed):
            if old.name != newest.name:
                old.unlink()
        shutil.copy2(newest, committed / STATE_DIR / newest.name)
    text, history = _training_status().status(str(committed), every=4)
    plot_learning_curve(history, committed / "validation.png")
    return text


def ship(committed: Path, shipped: Path, deploy: list[str], command: str) -> Path:
    """Copy the finished run's selected checkpoint to ``shipped``, or write it there with the
    ``deploy`` settings (``KEY=VALUE``, values read as YAML), recording ``command``."""
    if not (committed / CHECKPOINT_FILE).is_file():
        raise SystemExit(f"{committed}: this run has not finished (no {CHECKPOINT_FILE}); nothing to ship")
    settings = {}
    for kv in deploy:
        key, sep, value = kv.partition("=")
        if not sep or key not in DEPLOYMENT_KEYS:
            raise SystemExit(f"--deploy {kv}: expected KEY=VALUE with KEY one of {', '.join(DEPLOYMENT_KEYS)}")
        settings[key] = yaml.safe_load(value)
    shipped.parent.mkdir(parents=True, exist_ok=True)
    if not settings:
        return Path(shutil.copyfile(committed / CHECKPOINT_FILE, shipped))
    return redeploy(committed / CHECKPOINT_FILE, shipped, settings, why=command)


def main(argv: list[str] | None = None) -> int:
    """``run.py train|collect|ship NAME``; the exit status."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=("train", "collect", "ship"))
    p.add_argument("name", help="a run of experiments/long_runs/runs.yaml")
    p.add_argument("--work", help="the working folder (default: runs/NAME)")
    p.add_argument("--runs", type=Path, default=HERE / "runs.yaml", help="the list of runs (default: runs.yaml here)")
    p.add_argument("--progress", action="store_true", help="train: show the progress bar")
    p.add_argument("--as", dest="shipped", metavar="SHIPPED", help="ship: the name in the package")
    p.add_argument("--deploy", nargs="+", default=[], metavar="KEY=VALUE",
                   help=f"ship: safeguard settings to ship it with ({', '.join(DEPLOYMENT_KEYS)})")
    p.add_argument("--package-dir", type=Path, default=None, help="ship: the folder instead of metatele/pretrained")
    args = p.parse_args(argv)
    if args.progress and args.action != "train":
        p.error("--progress applies to train only")
    if (args.shipped or args.deploy or args.package_dir) and args.action != "ship":
        p.error("--as, --deploy and --package-dir apply to ship only")
    if args.action == "ship" and not args.shipped:
        p.error("ship needs --as SHIPPED, the name in the package")
    listed = runs(args.runs)
    work, committed = Path(args.work or f"runs/{args.name}"), HERE / args.name
    if args.action == "train":
        argv = train_argv(args.name, listed, work, *([] if args.progress else ["--no-progress"]))
        copied = seed_work(committed, work)
        if copied is not None:
            print(f"continuing from the committed {copied.name}", file=sys.stderr)
        return cli.main(argv)
    train_argv(args.name, listed, work)  # refuses a name that runs.yaml does not list
    if args.action == "ship":
        command = "python experiments/long_runs/run.py " + shlex.join(sys.argv[1:] if argv is None else argv)
        dst = (args.package_dir or pretrained_dir()) / f"{args.shipped}.safetensors"
        print(ship(committed, dst, args.deploy, command))
        return 0
    print(collect(work, committed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
