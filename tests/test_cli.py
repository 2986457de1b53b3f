"""The command line and the experiment glue, end to end on tiny problems (wandb offline into tmp)."""
import json
from pathlib import Path

import pytest
import yaml

from metatele import load_checkpoint
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
    for cmd in ("train", "eval", "compare", "demo", "bench", "benchmark"):
        assert cmd in out
    with pytest.raises(SystemExit) as e:
        main(["train", "--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "lr_update: 0.001" in out and "unroll: 10" in out and "hidden: 300" in out


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


def test_bad_config_key_is_a_clear_cli_error(offline, capsys):
    assert main(["train", "--out", str(offline / "x"), "--set", "learned.lstm.hiden=8"]) == 2
    err = capsys.readouterr().err
    assert "hiden" in err and "hidden" in err
