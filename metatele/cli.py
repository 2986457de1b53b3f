"""The ``metatele`` command line: thin wrappers that parse a config, call the library and log.

Subcommands: ``train`` (meta-train from a YAML config), ``eval`` (one checkpoint against GD on
unseen seeds), ``compare`` (checkpoints against tuned baselines: JSON, table, figures, wandb),
``demo`` (the README's main job: a short meta-training of each variant, then a comparison),
``bench`` (meta-training throughput), ``benchmark`` (the statistical protocol behind
``experiments/RESULTS.md``), ``search`` (configuration selection on validation seeds) and
``digits`` (the real-data study behind ``experiments/DIGITS.md``).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from ._version import __version__
from .configs import ConfigError, to_dict

WANDB_HELP = "wandb mode: online, offline or disabled (default: $WANDB_MODE, else offline)"


def _config_help() -> str:
    import yaml

    from .meta.config import MetaTrainConfig

    doc = yaml.safe_dump(to_dict(MetaTrainConfig()), sort_keys=False, default_flow_style=None)
    return ("configuration keys and their defaults (the paper's values); any can be set in the YAML "
            "file or with --set key=value (nested: --set learned.lstm.hidden=64):\n\n  "
            + doc.replace("\n", "\n  "))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="metatele",
        description="Learning to teleport: meta-train LSTM optimizers that update and teleport "
        "LeakyReLU networks, evaluate them on unseen seeds, and compare against baselines.",
    )
    parser.add_argument("--version", action="version", version=f"metatele {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("train", help="meta-train a learned optimizer from a YAML config",
                       epilog=_config_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML config (experiments/configs/*.yaml); default: the paper's update+tele")
    p.add_argument("--out", required=True, help="output folder (checkpoint, history, config, wandb)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:1 ... (overrides the config)")
    p.add_argument("--seed", type=int, help="meta-parameter seed (overrides the config)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest training-state checkpoint that loads "
                        "cleanly (a fresh start if there is none); the config must be the saved one")
    p.add_argument("--save-every", type=int, default=50,
                   help="meta-steps between training-state checkpoints (also written at the end and on "
                        "SIGINT/SIGTERM) in --out/training_state")
    p.add_argument("--keep", type=int, default=3, help="training-state checkpoints to keep")
    p.add_argument("--wandb", help=WANDB_HELP)
    p.add_argument("--project", default="metatele")
    p.add_argument("--group")
    p.add_argument("--no-progress", action="store_true")

    p = sub.add_parser("eval", help="evaluate one checkpoint against GD on unseen seeds")
    p.add_argument("checkpoint")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=100, help="number of unseen test seeds")
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--allow-overlap", action="store_true", help="allow test seeds the checkpoint was trained on")
    p.add_argument("--wandb", help=WANDB_HELP)
    p.add_argument("--project", default="metatele")
    p.add_argument("--group")

    p = sub.add_parser("compare", help="compare checkpoints against tuned baselines (JSON, table, figures, wandb)")
    p.add_argument("checkpoints", nargs="*", help="checkpoint files")
    p.add_argument("--out", required=True)
    p.add_argument("--seeds", type=int, default=100)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--baselines", nargs="*", default=None, help="hand-designed optimizers (default: all)")
    p.add_argument("--tune", default="grid", choices=["grid", "hypergradient", "none"])
    p.add_argument("--no-teleport-baselines", action="store_true", help="skip baselines with gradient-ascent teleport")
    p.add_argument("--dims", type=int, nargs="+", help="task dims (default: the checkpoints')")
    p.add_argument("--distribution", choices=["uniform", "gaussian"])
    p.add_argument("--allow-overlap", action="store_true")
    p.add_argument("--wandb", help=WANDB_HELP)
    p.add_argument("--project", default="metatele")
    p.add_argument("--group")

    p = sub.add_parser("demo", help="the main job: short meta-training of each variant, then a comparison")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--wandb", help=WANDB_HELP)
    p.add_argument("--project", default="metatele")

    p = sub.add_parser("benchmark", help="the statistical benchmark protocol behind experiments/RESULTS.md",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="see `metatele benchmark --help`")

    p = sub.add_parser("search", help="configuration search on validation seeds (experiments/SEARCH.md)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="see `metatele search --help`")

    p = sub.add_parser("digits", help="the digits study: optimizers ± teleport, sharpness/curvature (experiments/DIGITS.md)",
                       add_help=False)
    p.add_argument("rest", nargs=argparse.REMAINDER, help="see `metatele digits --help`")

    p = sub.add_parser("bench", help="meta-training throughput (trajectory-steps/s) at several batch sizes")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 64, 256, 1024])
    p.add_argument("--variant", default="update+tele")
    p.add_argument("--hidden", type=int, default=300)
    p.add_argument("--unrolls", type=int, default=3, help="timed meta-steps per batch size")
    p.add_argument("--device", default="auto")
    return parser


def _train(args) -> int:
    from .meta.config import load_config, MetaTrainConfig
    from .configs import apply_overrides

    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.config:
        config = load_config(args.config, overrides)
    else:
        config = MetaTrainConfig.from_dict(apply_overrides({}, overrides))
    from .meta.resume import resumable_callback
    from .studies.experiment import train_and_save  # after the config is validated: a bad one fails fast

    engine, callback = resumable_callback(config, Path(args.out), resume=args.resume,
                                          every=args.save_every, keep=args.keep)
    try:
        train_and_save(config, args.out, wandb_mode=args.wandb, project=args.project, group=args.group,
                       progress=not args.no_progress, callback=callback, engine=engine)
    finally:
        callback.close()  # restore the SIGINT/SIGTERM handlers
    return 0


def _compare(args, checkpoints, baselines, out, tune="grid", teleport=True) -> int:
    from .studies.experiment import CompareConfig, run_comparison
    from .tasks.family import TaskConfig

    task = None
    if getattr(args, "dims", None) or getattr(args, "distribution", None):
        from .release.checkpoint import load_checkpoint

        ref = load_checkpoint(checkpoints[0]).config.task if checkpoints else TaskConfig()
        task = TaskConfig(dims=args.dims or ref.dims, distribution=args.distribution or ref.distribution)
    cfg = CompareConfig(task=task, checkpoints=list(checkpoints), baselines=baselines, tune=tune,
                        teleport_baselines=teleport, seeds=args.seeds, steps=args.steps,
                        at_steps=[s for s in (10, 30, 100, 300) if s <= args.steps],
                        allow_overlap=args.allow_overlap)
    run_comparison(cfg, out, wandb_mode=args.wandb, project=args.project, group=args.group)
    return 0


def _demo(args) -> int:
    from .studies.experiment import CompareConfig, run_comparison, train_and_save
    from .studies.demo import demo_configs

    out = Path(args.out)
    ckpts = []
    for name, cfg in demo_configs().items():
        _, path = train_and_save(cfg, out / name, wandb_mode=args.wandb, project=args.project, group="demo-train")
        ckpts.append(str(path))
    cfg = CompareConfig(checkpoints=ckpts, seeds=100, steps=100, tune="grid", tune_steps=50,
                        baselines=["adam", "momentum"], teleport_baselines=True)
    run_comparison(cfg, out / "compare", wandb_mode=args.wandb, project=args.project, group="demo-compare")
    print(f"\nDone. Figures: {out / 'compare' / 'figures'}; table: {out / 'compare' / 'results.md'}; "
          f"wandb runs (offline unless --wandb online): {out}/*/wandb")
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["benchmark"]:  # its own parser (metatele.studies.benchmark) owns every option
        from .studies.benchmark import main as benchmark_main

        return benchmark_main(argv[1:])
    if argv[:1] == ["search"]:  # likewise (metatele.studies.search)
        from .studies.search import main as search_main

        return search_main(argv[1:])
    if argv[:1] == ["digits"]:  # likewise (metatele.studies.digits)
        from .studies.digits import main as digits_main

        return digits_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    os.environ.setdefault("WANDB_SILENT", "true")
    try:
        if args.command == "train":
            return _train(args)
        if args.command == "eval":
            args.dims = args.distribution = None
            return _compare(args, [args.checkpoint], [], args.out, tune="none", teleport=False)
        if args.command == "compare":
            from .optimizers.baselines import BASELINES

            baselines = list(BASELINES) if args.baselines is None else args.baselines
            return _compare(args, args.checkpoints, baselines, args.out, tune=args.tune,
                            teleport=not args.no_teleport_baselines)
        if args.command == "demo":
            return _demo(args)
        if args.command == "bench":
            from .studies.throughput import run_benchmark

            run_benchmark(args.batch_sizes, variant=args.variant, hidden=args.hidden,
                          unrolls=args.unrolls, device=args.device)
            return 0
    except (ConfigError, FileNotFoundError) as e:
        print(f"metatele {args.command}: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # clear one-line errors for the library's own failures
        from .release.checkpoint import CheckpointError
        from .meta.engine import DivergenceError

        if isinstance(e, (CheckpointError, DivergenceError, ValueError)):
            print(f"metatele {args.command}: error: {e}", file=sys.stderr)
            return 2
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
