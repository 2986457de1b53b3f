"""`metatele eval` / `compare` (studies.experiment.run_comparison): tables for any run length, one
task per comparison, nothing written on failure, flagged tuning picks, and the wandb runs."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest

import metatele.studies.experiment as experiment
from metatele.cli import main
from metatele.configs import ConfigError
from metatele.evaluation.evaluate import Curves
from metatele.evaluation.stats import report_steps, step_statistics
from metatele.meta.config import MetaTrainConfig
from metatele.optimizers.learned import LearnedConfig, LearnedOptimizer
from metatele.optimizers.lstm import LSTMConfig
from metatele.release.checkpoint import save_checkpoint
from metatele.studies.experiment import CompareConfig, run_comparison
from metatele.tasks.family import TaskConfig


def _checkpoint(path, distribution="uniform", variant="update+tele"):
    config = MetaTrainConfig(task=TaskConfig(dims=[6, 6, 6, 6], distribution=distribution),
                             learned=LearnedConfig(variant=variant, lstm=LSTMConfig(hidden=8)), trajectories=8)
    return save_checkpoint(path, LearnedOptimizer(config.task, config.learned), config)


@pytest.fixture
def ckpt(tmp_path):
    return _checkpoint(tmp_path / "u" / "opt.safetensors")


def _cells(line):
    return line.strip().strip("|").split("|")


def test_report_steps_keep_the_run_inside_and_always_report_its_last_step():
    assert report_steps([10, 30, 100], 100) == [10, 30, 100]
    assert report_steps([10, 30, 100], 5) == [5]
    assert report_steps([10, 30, 100, 300], 50) == [10, 30, 50]


def test_a_five_step_eval_writes_a_well_formed_table_with_paired_tests(ckpt, tmp_path):
    out = tmp_path / "ev"
    assert main(["eval", str(ckpt), "--out", str(out), "--seeds", "4", "--steps", "5", "--wandb", "disabled"]) == 0
    text = (out / "results.md").read_text()
    table = [line for line in text.splitlines() if line.startswith("|")]
    head, sep, rows = table[0], table[1], table[2:]
    assert _cells(head) == [" method ", " seeds ", " log10 loss @ 5 ", " diverged "]
    assert len(_cells(sep)) == len(_cells(head)) and all(len(_cells(r)) == len(_cells(head)) for r in rows)
    assert all(c.strip() for r in rows for c in _cells(r))  # no empty cell
    assert "Paired t-tests" in text and re.search(r"- LSTM\(update\+tele\) vs gd\(lr=0.0003\) at step 5: ", text)
    assert json.loads((out / "results.json").read_text())["steps_reported"] == [5]


def test_checkpoints_of_different_tasks_are_refused_naming_both(ckpt, tmp_path, monkeypatch):
    gauss = _checkpoint(tmp_path / "g" / "opt.safetensors", distribution="gaussian")
    monkeypatch.setattr(experiment, "compare", lambda *a, **k: pytest.fail("evaluated mixed tasks"))
    out = tmp_path / "mixed"
    with pytest.raises(ConfigError, match=r"different tasks.*uniform \[6, 6, 6, 6\].*gaussian \[6, 6, 6, 6\]") as e:
        run_comparison(CompareConfig(checkpoints=[str(ckpt), str(gauss)], baselines=[], seeds=4, steps=3), out,
                       wandb_mode="disabled")
    assert str(ckpt) in str(e.value) and str(gauss) in str(e.value)
    assert not out.exists()
    assert main(["compare", str(ckpt), str(gauss), "--out", str(out), "--seeds", "4", "--steps", "3",
                 "--baselines", "--wandb", "disabled"]) == 2


def test_a_bad_wandb_mode_fails_before_any_tuning_or_evaluation_and_leaves_no_folder(ckpt, tmp_path, monkeypatch):
    monkeypatch.setattr(experiment, "tune_all", lambda *a, **k: pytest.fail("tuned despite a bad wandb mode"))
    monkeypatch.setattr(experiment, "compare", lambda *a, **k: pytest.fail("evaluated despite a bad wandb mode"))
    out = tmp_path / "new" / "cmp"
    with pytest.raises(ValueError, match="wandb mode must be one of"):
        run_comparison(CompareConfig(checkpoints=[str(ckpt)], baselines=["gd"], seeds=4, steps=3), out, wandb_mode="onlin")
    assert not (tmp_path / "new").exists()


def test_a_failure_while_writing_removes_what_the_comparison_created(ckpt, tmp_path, monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(experiment, "plot_comparison", broken)
    fresh = tmp_path / "fresh"
    cfg = CompareConfig(checkpoints=[str(ckpt)], baselines=[], seeds=4, steps=3)
    with pytest.raises(RuntimeError, match="disk full"):
        run_comparison(cfg, fresh, wandb_mode="disabled")
    assert not fresh.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError, match="disk full"):
        run_comparison(cfg, kept, wandb_mode="disabled")
    assert sorted(p.name for p in kept.iterdir()) == ["notes.txt"]


@pytest.fixture
def offline(tmp_path, monkeypatch):
    for var in ("WANDB_DIR", "WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    wandb = pytest.importorskip("wandb")
    yield tmp_path
    wandb.teardown()


def test_an_edge_pick_is_flagged_and_the_wandb_runs_hold_what_a_researcher_needs(ckpt, offline, monkeypatch):
    import wandb
    from wandb_reader import read_offline_run

    real = experiment.tune_all
    # a grid far below the useful rates, extended once: the pick stays on its high edge
    monkeypatch.setattr(experiment, "tune_all", lambda *a, **k: real(*a, **k, lrs=[1e-9, 1e-8], extend=1))
    out = offline / "cmp"
    res = run_comparison(CompareConfig(checkpoints=[str(ckpt)], baselines=["gd"], seeds=4, steps=6, tune_seeds=3),
                         out, wandb_mode="offline", group="g")
    wandb.teardown()
    results = json.loads((out / "results.json").read_text())
    tuning = results["methods"]["gd(tuned)"]["tuning"]
    assert tuning["edge"] == "high" and tuning["extensions"] == 1
    assert results["tuning"]["gd"]["edge"] == "high"
    assert "gd(tuned): lr = 1e-06 — **at the high edge of the grid (after 1 extensions)**" in res["table"]
    assert "for 6 steps" in res["table"]  # tuned for the run's own horizon
    runs = {r["name"]: r for r in map(read_offline_run, (out / "wandb").glob("offline-run-*"))}
    gd = runs["gd(tuned)"]["config"]
    assert gd["hyperparameters"]["lr"] == pytest.approx(1e-6) and gd["tuning"]["edge"] == "high"
    learned = runs["LSTM(update+tele)"]["config"]
    assert learned["checkpoint"] == str(ckpt) and len(learned["payload_sha256"]) == 64
    assert learned["id"]["teleport"] and learned["id"]["variant"] == "update+tele"
    present = set(results["summaries"])
    pairs = runs["g-summary"]["config"]["pairs"]
    assert pairs and all(a in present and b in present for a, b in pairs)
    assert ["LSTM(lr+tele)", "gd(tuned)"] not in pairs
    history = runs["LSTM(update+tele)"]["history"]
    assert len(history) == 7
    times = [row["time/seconds"] for row in history]
    assert times[0] == 0 and times == sorted(times) and times[-1] > 0
    for row in history[1:]:
        assert row["loss/ci95_low"] <= row["loss/mean_log10"] <= row["loss/ci95_high"]


def test_step_statistics_give_mean_ci_median_divergence_and_time():
    loss = np.array([[10.0, 100.0, 1000.0], [1.0, 10.0, np.inf]])
    c = Curves("m", [0, 1, 2], loss, np.array([[1.0, 3.0, 5.0], [2.0, 4.0, np.inf]]), np.array([0.0, 0.5]))
    st = step_statistics(c)
    np.testing.assert_allclose(st["mean_log10_loss"], [2.0, 0.5])
    assert st["ci_low"][0] < 2.0 < st["ci_high"][0]
    np.testing.assert_allclose(st["median_loss"], [100.0, 10.0])
    np.testing.assert_allclose(st["diverged_frac"], [0.0, 1 / 3])
    np.testing.assert_allclose(st["mean_grad_sq"], [3.0, 3.0])
    np.testing.assert_allclose(st["seconds"], [0.0, 0.5])
