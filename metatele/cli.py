"""The ``metatele`` command line: every parser of the package (the handlers that parse a config,
call the library and log are in :mod:`metatele.commands`).

Subcommands: ``train`` (meta-train from a YAML config), ``eval`` (one checkpoint against GD on
unseen seeds), ``compare`` (checkpoints against tuned baselines: JSON, table, figures, wandb),
``demo`` (the README's main job: a short meta-training of each variant, then a comparison),
``throughput`` (meta-training speed; ``bench``, its old name, is a deprecated alias), ``transfer`` (learned optimizers on networks they were not
trained on, against baselines tuned on each), ``benchmark`` (the statistical protocol behind
``experiments/RESULTS.md``), ``search`` (configuration selection on validation seeds) and
``digits`` (the real-data study behind ``experiments/DIGITS.md``).
``experiments/train_distributed.py`` (data-parallel ``train`` under torchrun) is
:func:`train_distributed_main`.

Every argument is checked before any work starts; a command that fails exits with one
``metatele <command>: error: ...`` line and status 2 (refused: bad input, a folder in use or holding
a finished checkpoint) or 3 (a training run that failed: every trajectory diverged, or it learned
nothing); 130 after Ctrl-C, 128 + N after signal N (docs/running.md, "What is guaranteed").
"""
from __future__ import annotations

import argparse
import functools
import importlib
import os
import sys
from pathlib import Path
from typing import Any, Callable

import yaml

from . import commands
from ._version import __version__
from .configs import (ConfigError, default_names, defaults_dir, field_docs, resolve_config, to_dict,
                      training_names)
from .meta.config import ESTIMATORS, MetaTrainConfig
from .meta.distributed import DEFAULT_TIMEOUT_S, DistributedError, train_distributed
from .meta.engine import DivergenceError
from .meta.state import STATE_DIR
from .meta.train import MAX_SKIPPED_SHARE, TrainingFailed
from .optimizers.baselines import BASELINES
from .optimizers.learned import ARCHS, VARIANTS
from .release.pretrained import REGISTRY, resolve_checkpoint
from .storage.container import ContainerError
from .storage.wandb_log import MODES, resolve_mode
from .studies.benchmark import DEFAULT_CONFIG, QUICK_CONFIG
from .release.training import train_and_save
from .studies.search import DEFAULT_SEARCH, SEARCH_QUICK
from .tasks.family import DISTRIBUTIONS

#: the failures a command reports as one ``error:`` line (exit status 2) instead of a traceback
USER_ERRORS = (ConfigError, ContainerError, ValueError, FileNotFoundError)
#: a training run that ran and failed: one ``error:`` line, exit status ``RUN_FAILED``
RUN_FAILURES = (DivergenceError, TrainingFailed)
RUN_FAILED = 3
#: the exit status after Ctrl-C (the shell's 128 + SIGINT)
INTERRUPTED = 130


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the epilog's layout and appends ``(default: X)`` where an option has a real default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if ("%(default)" not in text and default not in (None, False, [], argparse.SUPPRESS)
                and (action.option_strings or action.nargs in ("?", "*"))):
            text += " (default: %(default)s)"
        return text


# -- argument types: checked by argparse, before any work ------------------------------------------
def _int_at_least(minimum: int, kind: str) -> Callable[[str], int]:
    """An argparse type: an integer ≥ ``minimum`` (``kind`` names it in the error)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind} integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be ≥ {minimum}, got {value}")
        return value
    parse.__name__ = f"{kind.replace('-', '_')}_int"  # argparse names the type in its messages
    return parse


#: an integer ≥ 1, an integer ≥ 0 (argparse types)
positive_int = _int_at_least(1, "positive")
nonnegative_int = _int_at_least(0, "non-negative")


def at_least_two(text: str) -> int:
    """An integer ≥ 2 (argparse type; confidence intervals need two seeds)."""
    value = positive_int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"need at least 2 seeds for confidence intervals, got {value}")
    return value


def output_folder(text: str) -> str:
    """A non-empty output folder path (argparse type; ``""`` would mean the current folder)."""
    if not text.strip():
        raise argparse.ArgumentTypeError("an empty path; name an output folder")
    return text


def seconds(text: str) -> float:
    """A finite number of seconds > 0 (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {text!r}") from None
    if not (0 < value < float("inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number of seconds > 0, got {text}")
    return value


def share(text: str) -> float:
    """A number in [0, 1] (argparse type)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must lie in [0, 1], got {text}")
    return value


def checkpoint_file(text: str) -> str:
    """A checkpoint: an existing file, or the name of a shipped optimizer (argparse type; the
    file's path is returned)."""
    path = resolve_checkpoint(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"no such file or shipped optimizer: {text} (shipped: {', '.join(REGISTRY)}; "
                                         "`metatele pretrained` lists them)")
    return str(path)


# -- shared options ------------------------------------------------------------------------------
def _config_keys_help() -> str:
    """The config keys, their defaults (the paper's values) and meanings, from the dataclasses."""
    lines = ["configuration keys, their defaults (the paper's values) and meanings; any can be set in the "
             "YAML file or with --set key=value (nested: --set learned.lstm.hidden=64):", ""]

    def walk(cls: type, value: Any, indent: str) -> None:
        docs = field_docs(cls)
        for name, v in vars(value).items():
            meaning = " ".join(docs.get(name, "").replace("``", "").split())
            if hasattr(v, "__dataclass_fields__"):
                lines.append(f"{indent}{name}:  # {meaning}" if meaning else f"{indent}{name}:")
                walk(type(v), v, indent + "  ")
            else:
                shown = yaml.safe_dump(to_dict(v), default_flow_style=True).strip().removesuffix("...").strip()
                lines.append(f"{indent}{name}: {shown}" + (f"  # {meaning}" if meaning else ""))

    walk(MetaTrainConfig, MetaTrainConfig(), "  ")
    return "\n".join(lines)


def _shipped_help(prefix: str = "") -> str:
    """The shipped names starting with ``prefix`` (none: the training configs) and where they are."""
    names = [n for n in default_names() if n != "search_selected" and n.startswith(prefix)] if prefix \
        else training_names()
    return f"shipped: {', '.join(names)}; in {defaults_dir()}"


def _add_wandb_options(p: argparse.ArgumentParser, group: bool = True) -> None:
    p.add_argument("--wandb", choices=MODES, help="wandb mode (default: $WANDB_MODE, else offline; offline runs "
                   "are written under the output folder and uploaded later with `wandb sync`)")
    p.add_argument("--project", default="metatele", help="wandb project")
    if group:
        p.add_argument("--group", help="wandb group of the run(s) (default: one named after the command)")


def add_train_options(p: argparse.ArgumentParser) -> None:
    """The options of ``metatele train`` (also those of ``experiments/train_distributed.py``)."""
    p.add_argument("--config", help="YAML config: a file, or a shipped default by name, e.g. update_tele "
                   f"({_shipped_help()}). Default: the paper's update+tele (the defaults below)")
    p.add_argument("--out", required=True, type=output_folder,
                   help="output folder: checkpoint.safetensors, history.json, "
                   f"config.json, {STATE_DIR}/, wandb/ (locked while the run lasts)")
    p.add_argument("--overwrite", action="store_true",
                   help="allow a run into an --out that holds a finished checkpoint.safetensors (replaced when "
                        "this run ends)")
    p.add_argument("--max-skipped-share", type=share, default=MAX_SKIPPED_SHARE,
                   help="fail (exit 3, no checkpoint) when more than this share of the meta-steps were skipped "
                        "(non-finite meta-gradient, or every trajectory diverged)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable; keys below)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (overrides the config's device)")
    p.add_argument("--seed", type=nonnegative_int, help="meta-parameter seed (overrides the config's seed)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest training-state checkpoint that loads "
                        "cleanly (a fresh start if there is none); the config must be the saved one")
    p.add_argument("--save-every", type=positive_int, default=50,
                   help=f"meta-steps between training-state checkpoints in --out/{STATE_DIR} (also written at "
                        "the end and on SIGINT/SIGTERM)")
    p.add_argument("--keep", type=positive_int, default=3, help="training-state checkpoints to keep")
    _add_wandb_options(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_compare_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, type=output_folder,
                   help="output folder: results.json, results.md, figures/, wandb/")
    p.add_argument("--seeds", type=at_least_two, default=100, help="number of unseen test seeds")
    p.add_argument("--steps", type=positive_int, default=100, help="inner steps of every optimizer")
    p.add_argument("--allow-overlap", action="store_true",
                   help="evaluate even on test seeds a checkpoint was trained on (flagged in the output)")


def _add_study_options(p: argparse.ArgumentParser, what: str, default: Path, quick: Path) -> None:
    p.add_argument("--config", help=f"{what} YAML: a file or a shipped name (default: {default.stem}, or "
                   f"{quick.stem} with --quick; {_shipped_help(default.stem)})")
    p.add_argument("--quick", action="store_true", help=f"the tiny {what} (seconds; used by the tests)")
    p.add_argument("--out", help="output folder (default: the protocol's 'out')")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a protocol key, e.g. --set base.trajectories=500 --set meta_seeds=[0,1,2,3] "
                   "(repeatable)")
    p.add_argument("--resume", action="store_true", help="reuse checkpoints in OUT whose config matches "
                   "(evaluation reruns)")
    p.add_argument("--render-only", action="store_true", help="re-write the report from OUT/results.json "
                   "(no training or evaluation; keeps the recorded times)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def build_parser() -> argparse.ArgumentParser:
    """The ``metatele`` parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="metatele", formatter_class=HelpFormatter,
        description="Learning to teleport: meta-train LSTM optimizers that update and teleport "
        "LeakyReLU networks, evaluate them on unseen seeds, and compare against baselines.",
        epilog=f"Shipped default configs and protocols (package data): {defaults_dir()}")
    parser.add_argument("--version", action="version", version=f"metatele {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub_kw = {"formatter_class": HelpFormatter}

    p = sub.add_parser("train", help="meta-train a learned optimizer from a YAML config",
                       epilog=_config_keys_help(), **sub_kw)
    add_train_options(p)

    p = sub.add_parser("eval", help="evaluate one checkpoint against GD at the paper's rate on unseen seeds",
                       description="Evaluate one checkpoint and plain GD at the paper's fixed rate (3e-4, not "
                       "tuned) on the same unseen test seeds.", **sub_kw)
    p.add_argument("checkpoint", type=checkpoint_file, help="checkpoint file (.safetensors) or shipped name")
    _add_compare_options(p)
    _add_wandb_options(p)

    p = sub.add_parser("compare", help="compare checkpoints against tuned baselines (JSON, table, figures, wandb)",
                       **sub_kw)
    p.add_argument("checkpoints", nargs="*", type=checkpoint_file, help="checkpoint files or shipped names")
    _add_compare_options(p)
    p.add_argument("--baselines", nargs="*", default=None, choices=BASELINES, metavar="NAME",
                   help=f"hand-designed optimizers, each tuned on training seeds ({', '.join(BASELINES)}; "
                   "default: all)")
    p.add_argument("--tune", default="grid", choices=["grid", "hypergradient", "none"],
                   help="how the baselines' hyper-parameters are tuned on training seeds (none: their defaults)")
    p.add_argument("--no-teleport-baselines", action="store_true", help="skip baselines with gradient-ascent teleport")
    p.add_argument("--dims", type=positive_int, nargs="+", help="task dims (default: the checkpoints')")
    p.add_argument("--distribution", choices=["uniform", "gaussian"], help="task distribution (default: the checkpoints')")
    _add_wandb_options(p)

    sub.add_parser("pretrained", help="list the learned optimizers shipped with the package, one line each: "
                   "what it was trained on and its headline numbers", **sub_kw)

    p = sub.add_parser("demo", help="the main job: short meta-training of each variant, then a comparison", **sub_kw)
    p.add_argument("--out", default="runs/demo", help="output folder (one subfolder per run, compare/)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a key of every demo run's config, e.g. --set trajectories=100 (repeatable)")
    _add_wandb_options(p, group=False)

    p = sub.add_parser("benchmark", help="the statistical benchmark protocol behind experiments/RESULTS.md",
                       description="The statistical benchmark protocol: meta-train every learned method on several "
                       "meta-seeds, tune baselines on training seeds, evaluate all on the same unseen test seeds, and "
                       "write RESULTS.md (tables with 95% CIs, paired tests, figures, conclusions), results.json, "
                       "curves.npz and checkpoints.", **sub_kw)
    _add_study_options(p, "protocol", DEFAULT_CONFIG, QUICK_CONFIG)
    p.add_argument("--report", help="report path (default: the protocol's 'report', else OUT/RESULTS.md)")
    p.add_argument("--settings", nargs="+", metavar="NAME", help="run only these settings")
    p.add_argument("--methods", nargs="+", metavar="NAME", help="run only these learned methods and baselines "
                   "(ablations still train their own arms)")
    p.add_argument("--ablations", nargs="+", metavar="NAME", help="run only these ablations ('none': skip all)")
    p.add_argument("--workers", type=positive_int, help="processes for the learned runs (default: protocol "
                   "'workers', else one per available CPU; 1 on CUDA). Results do not depend on it")
    p.add_argument("--threads", type=positive_int, help="torch threads per worker (default: protocol 'threads', "
                   "else CPUs / workers)")
    p.add_argument("--dry-run", action="store_true", help="validate the protocol and print the stages, then exit")

    p = sub.add_parser("search", help="configuration search on validation seeds (experiments/SEARCH.md)",
                       description="Configuration search on validation seeds: run a search protocol (a benchmark "
                       "protocol with eval_split: validation and methods named 'LSTM(<variant>) [<candidate>]'), rank "
                       "the candidates on the learned-teleport target, write SEARCH.md and the selected switches.",
                       **sub_kw)
    _add_study_options(p, "search protocol", DEFAULT_SEARCH, SEARCH_QUICK)
    p.add_argument("--report", help="selection report (default: experiments/SEARCH.md; OUT/SEARCH.md with --quick)")
    p.add_argument("--tables", help="the search's full tables and figures (default: <report dir>/search/"
                   "RESULTS.md; OUT/RESULTS.md with --quick)")
    p.add_argument("--selected", help="selected switches YAML (default: <report dir>/search_selected.yaml; the "
                   "shipped selection that the benchmark and ship configs use is "
                   f"{defaults_dir() / 'search_selected.yaml'}: copy a new selection there to adopt it)")

    p = sub.add_parser("throughput", aliases=["bench"], help="meta-training throughput (trajectory-steps/s) at several "
                       "batch sizes ('bench', its old name, still works until the next release)", **sub_kw)
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 64, 256, 1024],
                   help="batch sizes B to time")
    p.add_argument("--variant", default="update+tele", choices=list(VARIANTS),
                   help="learned optimizer variant")
    p.add_argument("--hidden", type=positive_int, default=300, help="LSTM hidden units")
    p.add_argument("--unrolls", type=positive_int, default=3, help="timed meta-steps per batch size")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1 ...")
    p.add_argument("--arch", default="paper", choices=list(ARCHS), help="learned.arch")
    p.add_argument("--dims", type=positive_int, nargs="+", help="task dims [n, d0, ..., dL] (default: 20 20 20 20)")
    p.add_argument("--bias", action="store_true", help="layers with biases")
    p.add_argument("--distribution", default="uniform", choices=list(DISTRIBUTIONS), help="task distribution")
    p.add_argument("--second-order", action="store_true", help="second-order unrolls (what coordinatewise training uses)")
    p.add_argument("--estimator", default="tbptt", choices=list(ESTIMATORS), help="meta-gradient estimator")
    p.add_argument("--pes-groups", type=positive_int, default=1, help="PES: independent perturbations per meta-step")
    p.add_argument("--profile", action="store_true",
                   help="instead of the throughput table, the time of a meta-step by phase (torch.profiler) at each "
                        "batch size (B=1 only if given), over --unrolls meta-steps")

    p = sub.add_parser("transfer", help="checkpoints on networks they were not trained on, against GD/Adam tuned on each",
                       **sub_kw)
    p.add_argument("checkpoints", nargs="+", type=checkpoint_file,
                   help="checkpoint files or shipped names (coordinatewise ones run on any network)")
    p.add_argument("--out", required=True, help="folder for transfer.md and transfer.json")
    p.add_argument("--seeds", type=positive_int, default=100, help="unseen test seeds per network")
    p.add_argument("--steps", type=positive_int, default=300, help="inner steps per evaluation")
    p.add_argument("--tune-seeds", type=positive_int, default=20, help="training seeds the baselines are tuned on")
    p.add_argument("--no-training-task", action="store_true", help="only the transfer networks, not the training one")

    p = sub.add_parser("digits", help="the digits study: optimizers ± teleport, sharpness/curvature, learned teleport "
                       "(experiments/DIGITS.md)", **sub_kw)
    p.add_argument("--config", type=resolve_config, help="YAML of DigitsStudyConfig keys: a file or a shipped name "
                   f"(default: the dataclass defaults, equal to {defaults_dir() / 'digits.yaml'})")
    p.add_argument("--quick", action="store_true", help="seconds-scale run for testing (numbers mean little); "
                   "a --config file's keys override it")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set seeds=40")
    p.add_argument("--out", default="runs/digits", help="folder for results.json")
    p.add_argument("--report", help="where to write the report (default OUT/DIGITS.md; figures go next to it)")
    p.add_argument("--checkpoints", help="folder for the learned checkpoints and their manifest (default OUT/checkpoints)")
    p.add_argument("--render-only", action="store_true",
                   help="re-render the report and figures from OUT/results.json without running anything")
    return parser


def build_distributed_parser() -> argparse.ArgumentParser:
    """The parser of ``experiments/train_distributed.py``: ``metatele train``'s options, plus
    ``--backend`` and ``--timeout``."""
    p = argparse.ArgumentParser(
        prog="train_distributed.py", formatter_class=HelpFormatter, epilog=_config_keys_help(),
        description="Data-parallel meta-training (launch with torchrun; each rank uses cuda:LOCAL_RANK when the "
                    "config asks for CUDA). Same options as `metatele train` (rank 0 writes --out and logs to "
                    "wandb), plus --backend and --timeout.")
    add_train_options(p)
    p.add_argument("--backend", choices=["gloo", "nccl"], help="default: nccl on CUDA, gloo on CPU")
    p.add_argument("--timeout", type=seconds, default=DEFAULT_TIMEOUT_S,
                   help="seconds before a silent rank makes the others fail")
    return p


# -- handlers --------------------------------------------------------------------------------------


#: old command name → its new name (the old one still works, with a warning, until the next release)
DEPRECATED_COMMANDS = {"bench": "throughput"}


def main(argv: list[str] | None = None) -> int:
    """``metatele ARGS``; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    os.environ.setdefault("WANDB_SILENT", "true")
    rest = argv[argv.index(args.command) + 1:]  # the subcommand's own arguments, as typed
    handlers: dict[str, Callable[[], int]] = {
        "train": lambda: commands.train(args), "eval": lambda: commands.eval_checkpoint(args), "compare": lambda: commands.compare_checkpoints(args),
        "demo": lambda: commands.demo(args), "benchmark": lambda: commands.benchmark(args, rest),
        "search": lambda: commands.search(args, rest), "throughput": lambda: commands.bench(args),
        "transfer": lambda: commands.transfer(args),
        "pretrained": commands.pretrained, "digits": lambda: commands.digits(args, rest),
    }
    if args.command in DEPRECATED_COMMANDS:
        new = DEPRECATED_COMMANDS[args.command]
        print(f"metatele {args.command}: warning: renamed 'metatele {new}' (so that it is not mistaken for "
              f"'metatele benchmark'); '{args.command}' will be removed in the next release", file=sys.stderr)
        args.command = new
    try:
        if hasattr(args, "wandb"):
            resolve_mode(args.wandb)  # a bad $WANDB_MODE fails now, not after the training
        return handlers[args.command]()
    except USER_ERRORS as e:
        print(f"metatele {args.command}: error: {e}", file=sys.stderr)
        return 2
    except RUN_FAILURES as e:
        print(f"metatele {args.command}: error: {e}", file=sys.stderr)
        return RUN_FAILED
    except KeyboardInterrupt:
        print(f"metatele {args.command}: interrupted", file=sys.stderr)
        return INTERRUPTED
    except BrokenPipeError:  # e.g. `metatele pretrained | head`: the reader has gone, as it meant to
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # (no error when Python flushes at exit)
        return 0


def train_distributed_main(argv: list[str] | None = None) -> int:
    """Entry point of ``experiments/train_distributed.py`` (run under torchrun); returns the exit status.

    A failed collective (a rank died or hung past ``--timeout``) ends the process with status 1
    without returning: see the comment at that branch."""
    args = build_distributed_parser().parse_args(argv)
    rank = os.environ.get("RANK", "0")
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        config = commands.train_config(args)
        # wandb's slow import before the group forms, so that no rank waits on it (none when disabled)
        if rank == "0" and resolve_mode(args.wandb) != "disabled":
            importlib.import_module("wandb")
        save = functools.partial(train_and_save, out=args.out, wandb_mode=args.wandb, project=args.project,
                                 group=args.group, progress=not args.no_progress,
                                 max_skipped_share=args.max_skipped_share)
        train_distributed(config, args.out, resume=args.resume, every=args.save_every, keep=args.keep,
                          rank0_train=lambda cfg, callback, engine: save(cfg, callback=callback, engine=engine)[0],
                          progress=not args.no_progress, backend=args.backend, timeout_s=args.timeout,
                          overwrite=args.overwrite, max_skipped_share=args.max_skipped_share)
    except DistributedError as e:
        print(f"train_distributed [rank {rank}]: error: {e}", file=sys.stderr, flush=True)
        # A failed collective leaves the backend's threads waiting on the lost peer, and tearing them
        # down at interpreter exit can abort the process (SIGABRT, "terminate called without an
        # active exception") instead of exiting with 1. Nothing is left to do: the training states
        # were written as the run went, and the `finally` blocks of train_distributed released the
        # output folder and the process group; so end the process here.
        sys.stdout.flush()
        os._exit(1)
    except USER_ERRORS + RUN_FAILURES as e:
        if rank == "0":  # the same on every rank: say it once
            print(f"train_distributed: error: {e}", file=sys.stderr, flush=True)
        return 2 if isinstance(e, USER_ERRORS) else RUN_FAILED
    except KeyboardInterrupt:
        print(f"train_distributed [rank {rank}]: interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED
    return 0


if __name__ == "__main__":
    sys.exit(main())
