"""The command line and the experiment glue, end to end on tiny problems (wandb offline into tmp)."""
import argparse
import json
from pathlib import Path

import pytest
import yaml

from metatele import commands, load_checkpoint
from metatele.cli import main
from metatele.configs import defaults_dir
from metatele.studies.demo import QUICK, demo_configs

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return tmp_path


def test_help_lists_subcommands_and_config_defaults(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    for cmd in ("train", "eval", "compare", "demo", "throughput", "benchmark"):
        assert cmd in out
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "lr_update: 0.001" in out and "unroll: 10" in out and "hidden: 300" in out
    # the coordinatewise switches only ablations set: one group, its keys indented under it
    group = out[out.index("\n      ablation:"):]
    assert "the switches only ablations set" in group.splitlines()[1]
    for key in ("every: 1", "teleport_state: keep", "tele_gradient_input: true", "gate: every", "learn_norm: true"):
        assert f"\n        {key}" in group.split("\n  trajectories:")[0], key


def test_quick_yaml_is_the_embedded_demo_config():
    with open(defaults_dir() / "quick.yaml") as f:
        assert yaml.safe_load(f) == QUICK
    assert set(demo_configs()) == {"update", "update+tele", "lr+tele"}


@pytest.mark.parametrize("name", ["update_tele", "update", "lr_tele", "quick", "fast_update_tele",
                                  "ship/update_tele", "ship/update", "ship/lr_tele"])
def test_shipped_configs_are_valid(name):
    from metatele import load_config

    config = load_config(name)
    assert config.task.dims == [20, 20, 20, 20]


def test_paper_configs_match_the_paper_protocol():
    from metatele import load_config

    sizes = {"update_tele": (700, 100), "update": (600, 100), "lr_tele": (30, 300)}
    for name, (trajectories, steps) in sizes.items():
        c = load_config(name)
        assert (c.trajectories, c.steps, c.unroll, c.learned.lstm.hidden) == (trajectories, steps, 10, 300)


def test_train_then_compare_end_to_end(offline, capsys):
    out = offline / "run"
    tiny = ["task.dims=[6,6,6,6]", "learned.lstm.hidden=8", "trajectories=8", "steps=6", "unroll=3",
            "batch_size=4", "device=cpu"]
    args = ["train", "--out", str(out), "--no-progress", "--wandb", "offline"]
    for t in tiny:
        args += ["--set", t]
    assert main(args) == 0
    ckpt = out / "checkpoint.safetensors"
    loaded = load_checkpoint(ckpt)
    assert loaded.provenance["meta_steps"] == 4
    history = json.loads((out / "history.json").read_text())
    assert len(history) == 4 and all("meta_loss" in h for h in history)
    assert list((out / "wandb").glob("offline-run-*"))

    cmp_out = offline / "cmp"
    assert main(["compare", str(ckpt), "--out", str(cmp_out), "--seeds", "6", "--steps", "12",
                 "--baselines", "gd", "--tune", "none", "--wandb", "offline"]) == 0
    results = json.loads((cmp_out / "results.json").read_text())
    names = set(results["summaries"])
    assert {"LSTM(update+tele)", "gd(lr=0.0003)", "gd(tuned)", "gd(tuned)+tele"} <= names
    table = (cmp_out / "results.md").read_text()
    assert "LSTM(update+tele)" in table and "log10 loss @ 10" in table
    for fig in ("loss_vs_step", "loss_vs_time", "gradsq_vs_loss"):
        assert (cmp_out / "figures" / f"{fig}.png").read_bytes()[:4] == b"\x89PNG"
    runs = list((cmp_out / "wandb").glob("offline-run-*"))
    assert len(runs) == len(names) + 1  # one run per method plus the summary run
    printed = capsys.readouterr().out
    assert "figures" in printed and "wandb" in printed


def test_eval_refuses_training_seeds_unless_overridden(offline, capsys):
    out = offline / "run"
    args = ["train", "--out", str(out), "--no-progress", "--wandb", "disabled",
            "--set", "task.dims=[6,6,6,6]", "--set", "learned.lstm.hidden=8", "--set", "trajectories=4",
            "--set", "steps=3", "--set", "unroll=3", "--set", "batch_size=4", "--set", "device=cpu"]
    assert main(args) == 0
    from metatele.evaluation.evaluate import evaluate

    learned = load_checkpoint(out / "checkpoint.safetensors").optimizer
    learned.train_seeds = {0, 1, 2, 3}
    from metatele import TaskConfig

    with pytest.raises(ValueError, match="overlap|training|test seed"):
        evaluate(learned, TaskConfig([6, 6, 6, 6]), [0, 1, 2], 3)
    assert main(["eval", str(out / "checkpoint.safetensors"), "--out", str(offline / "ev"), "--seeds", "4",
                 "--steps", "3", "--wandb", "disabled"]) == 0
    assert (offline / "ev" / "results.json").exists()
    table = (offline / "ev" / "results.md").read_text()  # the paper's GD is not called tuned
    assert "gd(lr=0.0003) at the paper's fixed rate, not tuned" in table and "tuned on training seeds" not in table


def test_bad_config_key_is_a_clear_cli_error(offline, capsys):
    assert main(["train", "--out", str(offline / "x"), "--set", "learned.lstm.hiden=8"]) == 2
    err = capsys.readouterr().err
    assert "hiden" in err and "hidden" in err


# -- help and messages -------------------------------------------------------------------------
def _parsers():
    from metatele.cli import build_distributed_parser, build_parser

    top = build_parser()
    (sub,) = [a for a in top._actions if isinstance(a, argparse._SubParsersAction)]
    return {"metatele": top, **{f"metatele {k}": v for k, v in sub.choices.items()},
            "train_distributed.py": build_distributed_parser()}


def test_every_option_of_every_command_has_help_and_shows_its_default():
    for name, parser in _parsers().items():
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        text = parser.format_help()
        for action in parser._actions:
            if action.option_strings and action.default not in (None, False, [], argparse.SUPPRESS) \
                    and action.dest != "help":
                assert f"(default: {action.default}" in " ".join(text.split()), (name, action.dest)


def test_train_help_explains_the_config_keys_from_the_dataclass_docstrings(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "normalize: false # divide every task's losses by its loss at the start of its trajectory" in out
    assert "stagger: false # spread the first trajectories' start steps" in out
    assert "base: # the hand-designed optimizer under a tele variant" in out
    assert "--save-every SAVE_EVERY meta-steps between training-state checkpoints" in out and "(default: 50)" in out
    assert str(defaults_dir()) in out  # where the shipped configs are


def test_higher_rmsprop_warning_does_not_leak():
    import warnings

    import metatele as mt

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mt.evaluate(mt.BaselineMethod(mt.BaselineConfig("rmsprop", lr=1e-3)), mt.TaskConfig(dims=[4, 6, 6, 6]),
                    list(mt.unseen_seeds(2)), 2)
    assert not [w for w in caught if "RMSprop" in str(w.message)]


# -- arguments checked before any work; no debris ---------------------------------------------------
def test_a_bad_wandb_mode_fails_before_any_work_and_leaves_no_folder(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(out), "--wandb", "onlin", "--set", "trajectories=4"])
    assert e.value.code == 2 and "--wandb: invalid choice: 'onlin'" in capsys.readouterr().err
    assert not out.exists()
    monkeypatch.setenv("WANDB_MODE", "onlin")  # the same mistake in the environment
    assert main(["train", "--out", str(out), "--set", "trajectories=4", "--no-progress"]) == 2
    assert "WANDB_MODE must be one of" in capsys.readouterr().err
    assert not out.exists()


def test_a_failed_train_leaves_no_empty_folders(tmp_path, monkeypatch, capsys):
    from metatele import cli
    from metatele.meta.engine import DivergenceError

    def diverges(*args, **kwargs):
        raise DivergenceError("every one of the trajectories diverged")

    monkeypatch.setattr(commands, "train_and_save", diverges)
    out = tmp_path / "deep" / "out"
    assert main(["train", "--out", str(out), "--set", "trajectories=4", "--wandb", "disabled"]) == 3  # a failed run
    assert "diverged" in capsys.readouterr().err
    assert not (tmp_path / "deep").exists()  # nor the parent it created


@pytest.mark.parametrize("argv,message", [
    (["eval", "missing.safetensors"], "no such file or shipped optimizer: missing.safetensors"),
    (["compare", "missing.safetensors"], "no such file or shipped optimizer: missing.safetensors"),
    (["eval", "CKPT", "--steps", "0"], "--steps: must be ≥ 1"),
    (["compare", "CKPT", "--seeds", "1"], "--seeds: need at least 2 seeds"),
    (["compare", "CKPT", "--baselines", "sgd"], "invalid choice: 'sgd'"),
    (["throughput", "--batch-sizes", "0"], "--batch-sizes: must be ≥ 1"),
    (["train", "--seed", "-1"], "--seed: must be ≥ 0"),
])
def test_bad_arguments_are_refused_by_the_parser(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    Path("CKPT").write_bytes(b"not read: the parser refuses first")
    with pytest.raises(SystemExit) as e:
        main(argv + ["--out", str(tmp_path / "out")] if argv[0] != "throughput" else argv)
    assert e.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_damaged_checkpoint_is_refused_before_tuning_or_writing(tmp_path, capsys):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04 a pickle")
    out = tmp_path / "out"
    assert main(["compare", str(bad), "--out", str(out), "--wandb", "disabled"]) == 2
    assert "never unpickles" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("command", ["eval", "compare"])
def test_eval_and_compare_check_out_before_any_work(command, tmp_path, monkeypatch, capsys):
    from metatele.meta.config import MetaTrainConfig
    from metatele.optimizers.learned import LearnedOptimizer
    from metatele.release.checkpoint import save_checkpoint

    config = MetaTrainConfig.from_dict({"task": {"dims": [4, 6, 5, 3]}, "learned": {"lstm": {"hidden": 8}},
                                        "trajectories": 4})
    ckpt = save_checkpoint(tmp_path / "c.safetensors", LearnedOptimizer(config.task, config.learned), config)

    def no_work(*a, **k):
        raise AssertionError("no tuning or evaluation may start")

    monkeypatch.setattr(commands, "check_checkpoints", no_work)
    monkeypatch.setattr(commands, "run_comparison", no_work)
    (tmp_path / "taken").write_text("a file")
    rc = main([command, str(ckpt), "--out", str(tmp_path / "taken"), "--wandb", "disabled"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1
    assert err.startswith(f"metatele {command}: error: output folder {tmp_path / 'taken'} is a file, not a folder")


def test_train_offers_only_training_configs(tmp_path, capsys):
    assert main(["train", "--config", "nope", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "training config file not found: nope" in err and "quick" in err and "benchmark_quick" not in err
    assert main(["train", "--config", "benchmark_quick", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "benchmark_quick is a shipped file of another kind (a study protocol" in err
    assert "unknown config key" not in err and not (tmp_path / "o").exists()


def test_train_records_exactly_the_trajectories_and_seeds_it_trained(tmp_path):
    """10 trajectories in batches of 4: 10 are trained (the last batch is partial), seeds [0, 10)."""
    out = tmp_path / "run"
    args = ["train", "--out", str(out), "--no-progress", "--wandb", "disabled"]
    for t in ("task.dims=[6,6,6,6]", "learned.lstm.hidden=8", "trajectories=10", "steps=4", "unroll=2",
              "batch_size=4", "device=cpu"):
        args += ["--set", t]
    assert main(args) == 0
    prov = load_checkpoint(out / "checkpoint.safetensors").provenance
    assert prov["training_seeds"] == [[0, 10]] and prov["n_training_seeds"] == 10
    history = json.loads((out / "history.json").read_text())
    assert history[-1]["trajectories_started"] == history[-1]["trajectories_finished"] == 10


@pytest.mark.parametrize("item", ["lr_update=.inf", "learned.lstm.hidden=2.5", "learned.base.lr=nan"])
def test_a_mistyped_or_non_finite_value_is_one_line_and_exit_2(offline, capsys, item):
    assert main(["train", "--out", str(offline / "x"), "--set", item]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"metatele train: error: {item.split('=')[0]}: must be") and "\n" not in err
    assert not (offline / "x").exists()


def test_an_option_that_does_not_apply_is_a_one_line_cli_error_naming_it(offline, capsys):
    assert main(["train", "--config", "quick", "--out", str(offline / "x"), "--set", "learned.arch=coordinatewise",
                 "--set", "learned.lstm.hidden=64"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("metatele train: error: learned.lstm.hidden: does not apply to this run") and "\n" not in err


def test_throughput_is_the_command_and_bench_its_deprecated_alias(monkeypatch, capsys):
    seen = []
    monkeypatch.setattr(commands, "bench", lambda args: seen.append(args.batch_sizes) or 0)
    assert main(["throughput", "--batch-sizes", "2"]) == 0 and capsys.readouterr().err == ""
    assert main(["bench", "--batch-sizes", "3"]) == 0
    err = capsys.readouterr().err
    assert seen == [[2], [3]] and "renamed 'metatele throughput'" in err and "next release" in err
