"""The evaluator: curves, divergence, seed hygiene, statistics and reports."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from metatele.optimizers.baselines import BaselineConfig, HandDesigned, run_baseline
from metatele.evaluation.evaluate import BaselineMethod, Curves, compare, evaluate
from metatele.evaluation.stats import markdown_table, mean_ci, paired_comparison, results_to_json, summarize, verdicts
from metatele.optimizers.learned import LearnedConfig, LearnedOptimizer
from metatele.optimizers.lstm import LSTMConfig
from metatele.tasks.mlp import mlp_loss
from metatele.tasks.family import TaskConfig, sample_tasks, training_seeds, unseen_seeds

SMALL = TaskConfig(dims=[6, 6, 6, 6])
PAPER = TaskConfig(dims=[20, 20, 20, 20])


class PerTaskLR:
    """A user-written method: GD with one learning rate per task (to make some tasks diverge)."""

    name = "per-task-gd"

    def __init__(self, lrs: list[float]) -> None:
        self.lrs = lrs

    def start(self, X, Y, weights):
        return HandDesigned(BaselineConfig(name="gd"), X, Y, weights, lr=torch.tensor(self.lrs, dtype=X.dtype))


@pytest.fixture(scope="module")
def paper_pair() -> dict[str, Curves]:
    """GD at the paper's rate and at a far too small one, same 12 unseen seeds, 30 steps."""
    return compare({"gd 3e-4": BaselineConfig(lr=3e-4), "gd 1e-5": BaselineConfig(lr=1e-5)},
                   PAPER, unseen_seeds(12), 30)


def test_evaluate_on_baseline_equals_run_baseline():
    seeds = unseen_seeds(4)
    config = BaselineConfig(name="adam", lr=3e-2)
    curves = evaluate(BaselineMethod(config), SMALL, seeds, 15, dtype=torch.float64)
    batch = sample_tasks(SMALL, seeds, dtype=torch.float64)
    expected = run_baseline(config, batch.X, batch.Y, batch.weights, 15).numpy()
    assert curves.loss.shape == (16, 4) and curves.grad_sq.shape == (16, 4) and curves.time.shape == (16,)
    np.testing.assert_allclose(curves.loss, expected, rtol=1e-12)
    assert curves.seeds == list(seeds) and curves.name == "adam"


def test_batched_evaluation_equals_per_seed_loop():
    seeds = list(unseen_seeds(3, start=10))
    config = BaselineConfig(name="momentum", lr=1e-3)
    together = evaluate(config, SMALL, seeds, 12, dtype=torch.float64)
    for k, s in enumerate(seeds):
        alone = evaluate(config, SMALL, [s], 12, dtype=torch.float64)
        np.testing.assert_allclose(together.loss[:, k], alone.loss[:, 0], rtol=1e-10)
        np.testing.assert_allclose(together.grad_sq[:, k], alone.grad_sq[:, 0], rtol=1e-10)


def test_grad_sq_is_the_squared_gradient_norm_along_the_trajectory():
    seeds, lr, steps = unseen_seeds(2), 3e-3, 6
    curves = evaluate(BaselineConfig(lr=lr), SMALL, seeds, steps, dtype=torch.float64)
    for k, s in enumerate(seeds):  # replay GD on one task by hand
        batch = sample_tasks(SMALL, [s], dtype=torch.float64)
        W = [w.clone() for w in batch.weights]
        for t in range(steps + 1):
            W = [w.detach().requires_grad_(True) for w in W]
            loss = mlp_loss(W, batch.X, batch.Y).sum()
            grads = torch.autograd.grad(loss, W)
            expected = sum(float(g.square().sum()) for g in grads)
            assert curves.grad_sq[t, k] == pytest.approx(expected, rel=1e-10)
            assert curves.loss[t, k] == pytest.approx(float(loss.detach()), rel=1e-12)
            W = [w - lr * g for w, g in zip(W, grads)]
    weight_norm_sq = sum(float(w.square().sum()) for w in sample_tasks(SMALL, seeds[:1]).weights)
    assert curves.grad_sq[0, 0] != pytest.approx(weight_norm_sq, rel=1e-3)


def test_time_is_cumulative_from_zero():
    curves = evaluate(BaselineConfig(lr=1e-3), SMALL, unseen_seeds(2), 5)
    assert curves.time[0] == 0 and np.all(np.diff(curves.time) >= 0) and curves.time[-1] > 0


def test_diverged_tasks_stay_inf_and_are_counted():
    method = PerTaskLR([3e-3, 1.0, 3e-3])
    curves = evaluate(method, SMALL, unseen_seeds(3), 20, dtype=torch.float64)
    first = int(np.argmax(~np.isfinite(curves.loss[:, 1])))
    assert first > 0 and np.all(np.isinf(curves.loss[first:, 1])) and np.all(np.isinf(curves.grad_sq[first:, 1]))
    assert np.all(np.isfinite(curves.loss[:, [0, 2]]))
    summary = summarize(curves, at_steps=(0, 20))
    assert summary["diverged_fraction"] == pytest.approx(1 / 3) and summary["n_diverged"] == 1
    assert summary["at_step"][20]["n"] == 2 and summary["at_step"][20]["n_diverged"] == 1
    assert math.isfinite(summary["at_step"][20]["mean"])
    assert summary["at_step"][0]["n"] == 3


def test_refuses_seeds_that_overlap_training_seeds():
    seeds = list(unseen_seeds(4))
    with pytest.raises(ValueError, match=str(seeds[2])):
        evaluate(BaselineConfig(), SMALL, seeds, 2, train_seeds={seeds[2], 5})
    with pytest.raises(ValueError, match="neither test nor validation seeds"):
        evaluate(BaselineConfig(), SMALL, training_seeds(3), 2)

    class Trained(BaselineMethod):
        train_seeds = range(seeds[0], seeds[0] + 1)  # e.g. recorded by a checkpoint

    with pytest.raises(ValueError, match="used in training"):
        evaluate(Trained(BaselineConfig()), SMALL, seeds, 2)


def test_allow_overlap_warns_and_records_it():
    seeds = list(unseen_seeds(3))
    with pytest.warns(UserWarning, match="NOT unseen"):
        curves = evaluate(BaselineConfig(), SMALL, seeds, 3, train_seeds=seeds[:1], allow_overlap=True)
    assert "used in training" in curves.overlap_warning
    assert summarize(curves)["overlap_warning"] == curves.overlap_warning
    assert "Warning" in markdown_table({"gd": curves}, at_steps=(3,))
    assert results_to_json({"gd": curves})["summaries"]["gd"]["overlap_warning"] == curves.overlap_warning
    with pytest.warns(UserWarning):
        curves = evaluate(BaselineConfig(), SMALL, training_seeds(2), 3, allow_overlap=True)
    assert "neither test nor validation seeds" in curves.overlap_warning
    clean = evaluate(BaselineConfig(), SMALL, seeds, 3)
    assert clean.overlap_warning is None


def test_confidence_interval_contains_mean_and_shrinks_with_more_seeds():
    few = summarize(evaluate(BaselineConfig(lr=3e-3), SMALL, unseen_seeds(5), 10), at_steps=(10,))["at_step"][10]
    many = summarize(evaluate(BaselineConfig(lr=3e-3), SMALL, unseen_seeds(60), 10), at_steps=(10,))["at_step"][10]
    for st in (few, many):
        assert st["ci95"][0] < st["mean"] < st["ci95"][1]
    assert many["ci95"][1] - many["ci95"][0] < few["ci95"][1] - few["ci95"][0]
    values = np.array([1.0, 2.0, 4.0, 7.0])
    m, lo, hi = mean_ci(values)
    half = 3.182446305284263 * values.std(ddof=1) / 2  # t_{0.975, 3}
    assert (m, lo, hi) == pytest.approx((3.5, 3.5 - half, 3.5 + half))


def test_summarize_threshold_and_skips_steps_beyond_the_curve():
    loss = np.array([[100.0, 100.0, 100.0], [50.0, 9.0, 80.0], [8.0, 5.0, 70.0]])
    curves = Curves("x", [1, 2, 3], loss, loss.copy(), np.arange(3.0))
    s = summarize(curves, at_steps=(1, 2, 50), threshold=10.0)
    assert sorted(s["at_step"]) == [1, 2]
    assert s["at_step"][2]["median"] == pytest.approx(math.log10(8.0))
    assert s["threshold"]["fraction_reached"] == pytest.approx(2 / 3)
    assert s["threshold"]["median_steps"] == 2.0  # steps (2, 1, never) → median 2
    assert s["threshold"]["median_steps_if_reached"] == 1.5


def test_paired_comparison_detects_the_better_learning_rate(paper_pair):
    good, slow = paper_pair["gd 3e-4"], paper_pair["gd 1e-5"]
    c = paired_comparison(good, slow, 30)
    assert c["mean_diff"] < -0.5 and c["p_value"] < 1e-4
    assert c["ci95"][0] < c["mean_diff"] < c["ci95"][1] < 0
    assert c["wins"] == 12 and c["losses"] == 0
    r = paired_comparison(slow, good, 30)
    assert r["mean_diff"] == pytest.approx(-c["mean_diff"])
    assert r["ci95"] == pytest.approx([-c["ci95"][1], -c["ci95"][0]])
    assert r["p_value"] == pytest.approx(c["p_value"])
    assert r["wins"] == 0 and r["losses"] == 12


def test_paired_comparison_needs_the_same_seeds(paper_pair):
    other = evaluate(BaselineConfig(lr=3e-4), PAPER, unseen_seeds(12, start=100), 2)
    with pytest.raises(ValueError, match="same seeds"):
        paired_comparison(paper_pair["gd 3e-4"], other, 1)


def test_verdicts_and_markdown_table(paper_pair):
    lines = verdicts(paper_pair, a="gd 3e-4", b="gd 1e-5", steps=(10, 30, 100))
    assert len(lines) == 2  # step 100 is beyond the 30-step curves
    assert lines[1].startswith("gd 3e-4 vs gd 1e-5 at step 30: mean Δlog10 = −")
    assert lines[1].endswith("better on 12/12 seeds → better")
    assert verdicts(paper_pair, a="gd 1e-5", b="gd 3e-4", steps=(30,))[0].endswith("→ worse")
    table = markdown_table(paper_pair, at_steps=(10, 30), a="gd 3e-4")
    rows = [l for l in table.splitlines() if l.startswith("| gd")]
    assert len(rows) == 2 and "log10 loss @ 30" in table and "→ better" in table


def test_diverged_comparator_is_decided_by_sign_test_and_json_is_strict():
    seeds = unseen_seeds(8)
    curves = compare({"gd": BaselineConfig(lr=3e-3), "too fast": BaselineConfig(lr=1.0)}, SMALL, seeds, 10)
    line = verdicts(curves, a="gd", steps=(10,))[0]
    assert "sign test" in line and line.endswith("→ better")
    assert "all diverged" in markdown_table(curves, at_steps=(10,))
    out = results_to_json(curves, at_steps=(10,), a="gd", tuning={"gd": {"lr": 3e-3}})
    text = json.dumps(out, allow_nan=False)
    assert json.loads(text)["summaries"]["too fast"]["diverged_fraction"] == 1.0
    back = Curves.from_dict(json.loads(text)["curves"]["too fast"])
    np.testing.assert_array_equal(back.loss, curves["too fast"].loss)
    np.testing.assert_array_equal(back.time, curves["too fast"].time)
    assert back.seeds == list(seeds)


def test_untrained_learned_optimizer_runs_through_evaluate():
    torch.manual_seed(0)
    method = LearnedOptimizer(SMALL, LearnedConfig(variant="update+tele", lstm=LSTMConfig(hidden=16)))
    curves = evaluate(method, SMALL, unseen_seeds(3), 5)
    assert curves.name == "LSTM(update+tele)" and curves.loss.shape == (6, 3)
    assert curves.info["config"]["variant"] == "update+tele"
    gd = evaluate(BaselineConfig(), SMALL, unseen_seeds(3), 1)
    np.testing.assert_allclose(curves.loss[0], gd.loss[0], rtol=1e-6)  # same initial tasks
    np.testing.assert_allclose(curves.grad_sq[0], gd.grad_sq[0], rtol=1e-5)
    with pytest.raises(ValueError, match="dtype"):
        evaluate(method, SMALL, unseen_seeds(3), 1, dtype=torch.float64)
