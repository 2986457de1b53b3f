"""The handlers of the ``metatele`` subcommands (:mod:`metatele.cli` holds their parsers): each
turns parsed arguments into a config, calls the library and reports; none holds mathematics.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import shlex
from pathlib import Path
from typing import Any, Iterator

import torch

from .configs import (ConfigError, apply_overrides, from_dict, load_yaml_mapping, to_dict)
from .meta.checkpointer import resumable_callback
from .meta.config import MetaTrainConfig, load_config
from .meta.state import STATE_DIR
from .optimizers.baselines import BASELINES
from .release.checkpoint import read_metadata
from .release.pretrained import REGISTRY, describe, pretrained_dir
from .studies.benchmark import DEFAULT_CONFIG, QUICK_CONFIG, BenchmarkRun, load_protocol, render_only, run_benchmark
from .studies.demo import demo_configs
from .studies.digits import DigitsStudyConfig, load_results
from .studies.digits_report import digits_conclusions, render_digits_report
from .studies.digits_report import run_digits_study, write_figures
from .release.training import train_and_save
from .studies.experiment import CompareConfig, run_comparison
from .studies.search import DEFAULT_SEARCH, SEARCH_QUICK, run_search
from .studies.throughput import run_profile, run_throughput
from .studies.transfer import TransferConfig, run_transfer
from .storage.container import atomic_write
from .storage.output import FolderLock, check_output_folder
from .tasks.family import TaskConfig


def train_config(args: argparse.Namespace) -> MetaTrainConfig:
    """The run's config: the YAML (or the defaults), ``--set``, ``--device`` and ``--seed``."""
    overrides = list(args.overrides)
    if args.device:
        overrides.append(f"device={args.device}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.config:
        return load_config(args.config, overrides)
    return MetaTrainConfig.from_dict(apply_overrides({}, overrides))


@contextlib.contextmanager
def no_debris(out: Path) -> Iterator[None]:
    """On failure, remove the folders this command created (``out``, its parents, ``out/STATE_DIR``)
    if they are still empty."""
    created = [p for p in (out / STATE_DIR, out, *out.parents) if not p.exists()]  # innermost first
    try:
        yield
    except BaseException:
        for folder in created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds on an empty folder
        raise


@contextlib.contextmanager
def locked(out: Path, command: str) -> Iterator[None]:
    """Hold the lock on ``out`` (created if needed) for the block; on failure leave no empty folders."""
    with no_debris(out), FolderLock(out, f"metatele {command}"):
        yield


def train(args: argparse.Namespace) -> int:
    config = train_config(args)
    out = Path(args.out)
    with no_debris(out):
        engine, callback = resumable_callback(config, out, resume=args.resume, every=args.save_every, keep=args.keep,
                                              overwrite=args.overwrite)
        try:
            train_and_save(config, out, wandb_mode=args.wandb, project=args.project, group=args.group,
                           progress=not args.no_progress, callback=callback, engine=engine,
                           max_skipped_share=args.max_skipped_share)
        finally:
            callback.finish()  # restore the SIGINT/SIGTERM handlers, unlock the folder
    return 0


def check_checkpoints(paths: list[str]) -> list[dict[str, Any]]:
    """Every checkpoint's verified metadata, before any tuning or evaluation starts."""
    return [read_metadata(p) for p in paths]


def compare(args: argparse.Namespace, checkpoints: list[str], baselines: list[str], tune: str,
             teleport: bool, paper_gd: bool = True) -> int:
    out = Path(args.out)
    check_output_folder(out)  # before any work: a file, or a folder that cannot be written
    docs = check_checkpoints(checkpoints)
    task = None
    if args.dims or args.distribution:
        ref = TaskConfig(**docs[0]["config"]["task"]) if docs else TaskConfig()
        task = TaskConfig(dims=args.dims or ref.dims, distribution=args.distribution or ref.distribution)
    cfg = CompareConfig(task=task, checkpoints=list(checkpoints), baselines=baselines, tune=tune,
                        teleport_baselines=teleport, seeds=args.seeds, steps=args.steps,
                        at_steps=[s for s in (10, 30, 100, 300) if s <= args.steps],
                        allow_overlap=args.allow_overlap)
    with locked(out, args.command):
        run_comparison(cfg, out, wandb_mode=args.wandb, project=args.project, group=args.group)
    return 0


def eval_checkpoint(args: argparse.Namespace) -> int:
    args.dims = args.distribution = None
    return compare(args, [args.checkpoint], [], tune="none", teleport=False)


def compare_checkpoints(args: argparse.Namespace) -> int:
    baselines = list(BASELINES) if args.baselines is None else args.baselines
    return compare(args, args.checkpoints, baselines, tune=args.tune, teleport=not args.no_teleport_baselines)


def pretrained() -> int:
    """``metatele pretrained``: one line per shipped optimizer."""
    for name in REGISTRY:
        print(describe(name))
    print(f"\n(in {pretrained_dir()}; load one with mt.load_optimizer(NAME), or pass NAME to metatele eval / compare)")
    return 0


def demo(args: argparse.Namespace) -> int:
    configs = {name: MetaTrainConfig.from_dict(apply_overrides(cfg.to_dict(), args.overrides))
               for name, cfg in demo_configs().items()}  # every config checked before the first run
    out = Path(args.out)
    ckpts = []
    with locked(out, "demo"):
        for name, cfg in configs.items():
            _, path = train_and_save(cfg, out / name, wandb_mode=args.wandb, project=args.project, group="demo-train")
            ckpts.append(str(path))
        cfg = CompareConfig(checkpoints=ckpts, seeds=100, steps=100, tune="grid", tune_steps=50,
                            baselines=["adam", "momentum"], teleport_baselines=True)
        run_comparison(cfg, out / "compare", wandb_mode=args.wandb, project=args.project, group="demo-compare")
    print(f"\nDone. Figures: {out / 'compare' / 'figures'}; table: {out / 'compare' / 'results.md'}; "
          f"wandb runs (offline unless --wandb online): {out}/*/wandb")
    return 0


def benchmark(args: argparse.Namespace, argv: list[str]) -> int:
    config = args.config or str(QUICK_CONFIG if args.quick else DEFAULT_CONFIG)
    ablations = None if args.ablations is None else [a for a in args.ablations if a != "none"]
    protocol, raw = load_protocol(config, args.overrides)
    out = Path(args.out or protocol.out)
    runner = BenchmarkRun(protocol, out, False, False, args.settings, ablations, methods=args.methods)
    report = Path(args.report) if args.report else (Path(protocol.report) if protocol.report else out / "RESULTS.md")
    if args.dry_run:
        stages = runner.stages()
        print("\n".join(stages))
        print(f"{len(stages)} stages ({len(runner.settings)} for baselines, {len(stages) - len(runner.settings)} distinct "
              f"learned runs for {len(runner.jobs())} table entries); out {out}; report {report}")
        return 0
    if args.render_only:
        with locked(out, "benchmark --render-only"):
            return render_only(out, report)
    command = "metatele benchmark" + (" " + shlex.join(argv) if argv else "")
    with locked(out, "benchmark"):
        results = run_benchmark(protocol, out, report, command=command, raw=raw, progress=not args.no_progress,
                                resume=args.resume, settings=args.settings, ablations=ablations,
                                workers=args.workers, threads=args.threads, methods=args.methods)
    print("\n".join(results["conclusions"]))
    print(f"\nreport: {report}; results: {out / 'results.json'}; wall time {results['wall_seconds'] / 60:.1f} min")
    return 0


def search(args: argparse.Namespace, argv: list[str]) -> int:
    config = args.config or str(SEARCH_QUICK if args.quick else DEFAULT_SEARCH)
    protocol, _ = load_protocol(config, args.overrides)
    out = Path(args.out or protocol.out)
    report = Path(args.report) if args.report else (out / "SEARCH.md" if args.quick else Path("experiments/SEARCH.md"))
    selected = Path(args.selected) if args.selected else report.parent / "search_selected.yaml"
    if args.render_only and not (out / "results.json").is_file():
        raise ConfigError(f"--render-only: no results at {out / 'results.json'}; run the search first")
    tables = args.tables or (out / "RESULTS.md" if args.quick else None)
    with locked(out, "search"):
        chosen = run_search(config, out, report, selected, args.overrides, progress=not args.no_progress,
                            resume=args.resume, render_only=args.render_only,
                            command="metatele search" + (" " + shlex.join(argv) if argv else ""), tables=tables)
    for key, sel in chosen.items():
        print(f"{key}: selected candidate [{sel['tag']}] ({sel['met']}/{sel['total']} criteria on validation seeds)")
    print(f"report: {report}; selection: {selected}")
    return 0


def bench(args: argparse.Namespace) -> int:
    if args.profile:
        run_profile(args.batch_sizes, variant=args.variant, meta_steps=args.unrolls, device=args.device, dims=args.dims,
                    arch=args.arch, bias=args.bias, distribution=args.distribution, second_order=args.second_order,
                    hidden=args.hidden, estimator=args.estimator, pes_groups=args.pes_groups)
        return 0
    run_throughput(args.batch_sizes, variant=args.variant, hidden=args.hidden, unrolls=args.unrolls,
                   device=args.device, dims=args.dims, arch=args.arch, bias=args.bias,
                   distribution=args.distribution, second_order=args.second_order,
                   estimator=args.estimator, pes_groups=args.pes_groups)
    return 0


def transfer(args: argparse.Namespace) -> int:
    torch.set_flush_denormal(True)  # CPU: denormal floats slow the inner loops down many times
    cfg = TransferConfig(checkpoints=list(args.checkpoints), seeds=args.seeds, steps=args.steps,
                         tune_seeds=args.tune_seeds, include_training_task=not args.no_training_task,
                         at_steps=tuple(s for s in (10, 30, 100, 300) if s <= args.steps))
    out = Path(args.out)
    check_output_folder(out)
    result = run_transfer(cfg)
    with locked(out, "transfer"):
        atomic_write(out / "transfer.md", result["markdown"].encode())
        atomic_write(out / "transfer.json", json.dumps(result, indent=1, allow_nan=False).encode())
    print(result["markdown"])
    print(f"wrote {out / 'transfer.md'} and {out / 'transfer.json'}")
    return 0


def digits(args: argparse.Namespace, argv: list[str]) -> int:
    base = to_dict(DigitsStudyConfig.quick() if args.quick else DigitsStudyConfig())
    if args.config:
        base.update(load_yaml_mapping(args.config, "digits config"))
    cfg = from_dict(DigitsStudyConfig, apply_overrides(base, args.overrides))
    out = Path(args.out)
    with locked(out, "digits"):
        return _digits(args, argv, cfg, out)


def _digits(args: argparse.Namespace, argv: list[str], cfg: DigitsStudyConfig, out: Path) -> int:
    if args.render_only:
        results = load_results(out / "results.json")
        report = Path(args.report) if args.report else out / "DIGITS.md"
        write_figures(results, report.parent / "figures")
        report.write_text(render_digits_report(results, results["command"]))
        print(f"re-rendered {report} from {out / 'results.json'}")
        return 0
    command = "metatele digits" + (" " + shlex.join(argv) if argv else "")
    results = run_digits_study(cfg, out, command, args.report, args.checkpoints)
    print("\n".join(digits_conclusions(results)))
    print(f"\nreport: {args.report or out / 'DIGITS.md'}; wall time {results['wall_seconds'] / 60:.1f} min")
    return 0
