"""Tuning hand-designed baselines on training seeds: grid search, hyper-gradients, tune_all."""
from __future__ import annotations

import json
import math

import pytest
import torch

import metatele.evaluation.tuning as tuning
from metatele.optimizers.baselines import BaselineConfig, run_baseline
from metatele.evaluation.evaluate import evaluate
from metatele.evaluation.stats import results_to_json
from metatele.tasks.family import TEST_SEED_OFFSET, TaskConfig, sample_tasks, training_seeds, unseen_seeds
from metatele.evaluation.tuning import grid_search, hypergradient_tune, tune_all

SMALL = TaskConfig(dims=[6, 6, 6, 6])
PAPER = TaskConfig(dims=[20, 20, 20, 20])


def test_grid_search_picks_the_known_good_learning_rate(monkeypatch):
    used = []
    real = tuning.sample_tasks
    monkeypatch.setattr(tuning, "sample_tasks", lambda task, seeds, **kw: (used.extend(seeds), real(task, seeds, **kw))[1])
    lrs = [1e-6, 1e-5, 1e-4, 3e-4, 1e-2]
    result = grid_search(BaselineConfig(name="gd", lr=1.0), PAPER, training_seeds(6), 30, lrs=lrs)
    score = {g["lr"]: g["score"] for g in result.grid}
    assert 1e-4 <= result.config.lr <= 3e-4  # the paper's 3e-4 region
    assert score[result.config.lr] < score[1e-6]
    assert math.isinf(score[1e-2]) and result.grid[-1]["diverged_fraction"] == 1.0
    assert result.config.name == "gd" and result.method == "grid" and len(result.grid) == len(lrs)
    assert used and all(0 <= s < TEST_SEED_OFFSET for s in used)
    assert result.seeds == list(training_seeds(6))


def test_a_pick_on_the_edge_of_the_grid_extends_it_and_a_pick_still_there_is_flagged():
    seeds = training_seeds(4)
    # far too small rates for GD on this task: the best is the largest, so the grid grows upwards
    result = grid_search(BaselineConfig(name="gd"), PAPER, seeds, 20, lrs=[1e-8, 1e-7, 1e-6])
    tried = [g["lr"] for g in result.grid]
    assert result.extensions >= 1 and max(tried) > 1e-6 and result.lr > 1e-6
    assert tried[3:5] == pytest.approx([1e-5, 1e-4])  # two points per extension, the grid's own ratio
    once = grid_search(BaselineConfig(name="gd"), PAPER, seeds, 20, lrs=[1e-8, 1e-7, 1e-6], extend=1)
    assert once.extensions == 1 and once.lr == pytest.approx(1e-4) and once.edge == "high"
    assert "high edge of the grid (after 1 extensions)" in once.edge_note()
    assert once.to_dict()["edge"] == "high"
    inside = grid_search(BaselineConfig(name="gd"), PAPER, seeds, 20, lrs=[1e-5, 1e-4, 3e-4, 1e-2])
    assert inside.extensions == 0 and inside.edge is None and inside.edge_note() == ""


def test_grid_search_refuses_test_seeds():
    with pytest.raises(ValueError, match="training seeds only"):
        grid_search(BaselineConfig(), SMALL, unseen_seeds(3), 5, lrs=[1e-3])


def test_grid_as_one_batch_matches_separate_runs():
    seeds, lrs, steps = list(training_seeds(3)), [1e-3, 1e-2], 8
    result = grid_search(BaselineConfig(name="adam"), SMALL, seeds, steps, lrs=lrs,
                         objective="mean_log_loss", dtype=torch.float64)
    batch = sample_tasks(SMALL, seeds, dtype=torch.float64)
    for g in result.grid:
        curve = run_baseline(BaselineConfig(name="adam", lr=g["lr"]), batch.X, batch.Y, batch.weights, steps)
        assert g["score"] == pytest.approx(float(curve.log10().mean()), rel=1e-10)


def test_grid_search_tunes_momentum_too():
    result = grid_search(BaselineConfig(name="momentum"), SMALL, training_seeds(3), 10,
                         lrs=[1e-4, 1e-3], momenta=[0.0, 0.9], extend=0)
    assert len(result.grid) == 4 and {g["momentum"] for g in result.grid} == {0.0, 0.9}
    best = min(result.grid, key=lambda g: g["score"])
    assert (result.config.lr, result.config.momentum) == (best["lr"], best["momentum"])
    with pytest.raises(ValueError, match="momenta"):
        grid_search(BaselineConfig(name="gd"), SMALL, training_seeds(2), 3, lrs=[1e-3], momenta=[0.9])


def test_hypergradient_moves_lr_towards_lower_loss():
    result = hypergradient_tune(BaselineConfig(), SMALL, training_seeds(4), steps=10, meta_steps=8,
                                init_lr=1e-4, meta_lr=0.2)
    traj = result.trajectory
    assert len(traj) == 8 and traj[0]["lr"] == pytest.approx(1e-4, rel=1e-5)
    assert result.config.lr > 2e-4  # 1e-4 is far too small on this task: the lr must grow
    assert traj[-1]["objective"] < traj[0]["objective"]
    # and the tuned rate is better on held-out test tasks too
    before = evaluate(BaselineConfig(lr=1e-4), SMALL, unseen_seeds(4), 10).log_loss[-1].mean()
    after = evaluate(result.config, SMALL, unseen_seeds(4), 10).log_loss[-1].mean()
    assert after < before


def test_hypergradient_halves_lr_when_the_unroll_diverges():
    result = hypergradient_tune(BaselineConfig(), SMALL, training_seeds(2), steps=10, meta_steps=2, init_lr=10.0)
    assert not math.isfinite(result.trajectory[0]["objective"])
    assert result.trajectory[1]["lr"] == pytest.approx(5.0, rel=1e-5)
    with pytest.raises(ValueError, match="training seeds only"):
        hypergradient_tune(BaselineConfig(), SMALL, unseen_seeds(2), steps=2, meta_steps=1)


def test_tune_all_returns_configs_and_json_records():
    configs, records = tune_all(SMALL, training_seeds(2), 5, names=("gd", "adam"), lrs=[1e-3, 1e-2], extend=0)
    assert set(configs) == set(records) == {"gd", "adam"}
    assert configs["adam"].name == "adam" and configs["adam"].lr in (1e-3, 1e-2)
    curves = {n: evaluate(c, SMALL, unseen_seeds(2), 3) for n, c in configs.items()}
    out = json.loads(json.dumps(results_to_json(curves, at_steps=(3,), tuning=records), allow_nan=False))
    assert out["tuning"]["gd"]["config"]["lr"] == configs["gd"].lr
    assert out["tuning"]["gd"]["seeds"] == {"start": 0, "count": 2}
