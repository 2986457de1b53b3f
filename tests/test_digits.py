"""The digits task family: offline data, deterministic seeds, cross-entropy, accuracy, teleport batch."""
import math

import numpy as np
import pytest
import torch

from metatele.configs import ConfigError
from metatele.symmetry.action import teleport
from metatele.tasks.digits import (
    N_IMAGES, accuracy, cross_entropy, load_digits_data, sample_digits, teleport_loss_change,
)
from metatele.tasks.family import FAMILIES, TaskBatch, TaskConfig, sample_tasks
from metatele.tasks.mlp import loss_and_grads, mlp_loss
from metatele.optimizers.baselines import HandDesigned

DIGITS = TaskConfig(family="digits", dims=[1000, 64, 16, 10, 10], bias=True)


def test_digits_load_offline_scaled_to_unit_interval():
    images, labels = load_digits_data()
    assert images.shape == (N_IMAGES, 64) and labels.shape == (N_IMAGES,)
    assert images.min() == 0.0 and images.max() == 1.0
    assert set(np.unique(labels)) == set(range(10))


def test_exposed_X_holds_the_scaled_pixels_one_image_per_column():
    images, labels = load_digits_data()
    b = sample_digits(DIGITS, [5], dtype=torch.float64)
    Xall = torch.cat([b.X, b.X_val], dim=-1)[0].T.numpy()  # [1797, 64]
    # every column is one image of the set, unchanged, and every image appears once
    rows = {tuple(r) for r in images}
    assert all(tuple(r) in rows for r in Xall)
    assert sorted(map(tuple, Xall)) == sorted(map(tuple, images))
    Yall = torch.cat([b.Y, b.Y_val], dim=-1)[0]
    assert torch.equal(Yall.sum(0), torch.ones(N_IMAGES, dtype=torch.float64))


def test_a_seed_is_deterministic_and_fixes_split_and_init():
    a = sample_digits(DIGITS, [3, 4])
    b = sample_digits(DIGITS, [4])
    assert torch.equal(a.X[1], b.X[0]) and torch.equal(a.X_val[1], b.X_val[0])
    assert all(torch.equal(x[1], y[0]) for x, y in zip(a.weights, b.weights))
    assert not torch.equal(a.X[0], a.X[1])
    assert a.X.shape == (2, 64, 1000) and a.X_val.shape == (2, 64, 797)
    assert [w.shape[1:] for w in a.weights] == [(16, 65), (10, 17), (10, 11)]


def test_family_field_defaults_to_regression_and_is_validated():
    assert TaskConfig().family == "regression"
    with pytest.raises(ConfigError, match="task.family"):
        TaskConfig(family="mnist")
    with pytest.raises(ConfigError, match="task.dims"):
        TaskConfig(family="digits", dims=[1000, 20, 10], bias=True)
    with pytest.raises(ConfigError, match="task.teleport_batch"):
        TaskConfig(family="digits", dims=[1000, 64, 16, 10, 10], bias=True, teleport_batch=18)
    with pytest.raises(ConfigError, match="task.teleport_batch"):
        TaskConfig(teleport_batch=5)


def test_sample_tasks_samples_every_family_as_its_own_sampler_does():
    a, b = sample_tasks(DIGITS, [3, 4], dtype=torch.float64), sample_digits(DIGITS, [3, 4], dtype=torch.float64)
    assert type(a) is type(b) and torch.equal(a.X, b.X) and torch.equal(a.Y, b.Y) and torch.equal(a.X_val, b.X_val)
    assert all(torch.equal(u, v) for u, v in zip(a.weights, b.weights)) and a.teleport_samples == b.teleport_samples
    regression = sample_tasks(TaskConfig([8, 5, 4, 3]), [3])
    assert type(regression) is TaskBatch and regression.X.shape == (1, 5, 8)


def test_a_task_family_knows_its_loss_accuracy_and_teleport_batch():
    digits, regression = DIGITS.kind, TaskConfig().kind
    assert digits is FAMILIES["digits"] and regression is FAMILIES["regression"]
    assert (digits.loss, digits.accuracy, regression.loss, regression.accuracy) == (cross_entropy, accuracy, mlp_loss, None)
    assert digits.teleport_batch(DIGITS) == DIGITS.teleport_samples == 17 and regression.teleport_batch(TaskConfig()) is None
    X = torch.zeros(2, 64, DIGITS.dims[0])
    assert digits.teleport_data(DIGITS, X).shape == (2, 64, 17) and regression.teleport_data(TaskConfig(), X) is X
    assert digits.has_validation and not regression.has_validation


def test_teleport_batch_is_the_narrowest_teleported_input():
    assert DIGITS.teleport_samples == 17  # pair (W2, W3): 16 hidden units + 1 for the bias
    assert TaskConfig(family="digits", dims=[1000, 64, 16, 10, 10], teleport_batch=9).teleport_samples == 9
    assert TaskConfig(family="digits", dims=[1000, 64, 16, 10, 10], bias=False).teleport_samples == 16
    assert DIGITS.non_symmetric_pairs() == []


def test_cross_entropy_and_accuracy_on_a_hand_made_case():
    # one linear layer [W b] = [I 0] on 3 two-pixel "images": the logits are the pixels
    W = [torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=torch.float64)]
    X = torch.tensor([[[2.0, 0.0, 1.0], [0.0, 3.0, 1.0]]], dtype=torch.float64)  # [1, 2, 3]
    Y = torch.tensor([[[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)  # classes 0, 0, 1
    # predictions: 0 (right), 1 (wrong), tie → argmax picks 0 (wrong)
    assert accuracy(W, X, Y).tolist() == [pytest.approx(1 / 3)]
    expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(3.0)), np.log(2.0)])
    assert cross_entropy(W, X, Y).item() == pytest.approx(expected, rel=1e-12)


def test_loss_and_grads_takes_the_family_loss():
    b = sample_digits(DIGITS, [0, 1], dtype=torch.float64)
    assert DIGITS.kind.loss is cross_entropy and TaskConfig().kind.loss is mlp_loss
    loss, grads = loss_and_grads(b.weights, b.X, b.Y, loss_fn=cross_entropy)
    assert torch.allclose(loss, cross_entropy(b.weights, b.X, b.Y))
    W = [w.clone().requires_grad_(True) for w in b.weights]
    cross_entropy(W, b.X, b.Y).sum().backward()
    assert all(torch.allclose(g, w.grad) for g, w in zip(grads, W))


def test_teleport_on_the_teleport_batch_is_exactly_invariant_and_the_rest_is_measured():
    b = sample_digits(DIGITS, [0, 1, 2], dtype=torch.float64)
    gen = torch.Generator().manual_seed(0)
    T = [0.05 * torch.randn(3, d, d, generator=gen, dtype=torch.float64) for d in (16, 10)]
    after = teleport(b.weights, b.X_tele, T)
    change = teleport_loss_change(b, b.weights, after)
    assert change.teleport_batch.abs().max() <= 1e-10
    # the rest of the training set is not held fixed: the change there is measured, and real
    assert change.rest.abs().min() > 1e-6 and change.validation.abs().min() > 1e-6
    rest_before = cross_entropy(b.weights, b.X_rest, b.Y_rest)
    assert torch.allclose(change.rest, (cross_entropy(after, b.X_rest, b.Y_rest) - rest_before) / rest_before)


def test_validation_metrics():
    b = sample_digits(DIGITS, [0, 1])
    m = b.metrics(b.weights)
    assert m["val_loss"].shape == (2,) and torch.allclose(m["val_accuracy"], accuracy(b.weights, b.X_val, b.Y_val))


def test_evaluator_records_validation_metrics_and_baselines_use_cross_entropy():
    from metatele.evaluation.evaluate import Curves, evaluate
    from metatele.optimizers.baselines import BaselineConfig
    from metatele.tasks.family import unseen_seeds

    task = TaskConfig(family="digits", dims=[300, 64, 8, 8, 10], bias=True)
    curves = evaluate(BaselineConfig("adam", lr=0.05), task, unseen_seeds(2), 5)
    assert set(curves.metrics) == {"val_loss", "val_accuracy"}
    assert curves.metrics["val_loss"].shape == (6, 2) == curves.loss.shape
    b = sample_digits(task, unseen_seeds(2))
    assert np.allclose(curves.loss[0], cross_entropy(b.weights, b.X, b.Y).numpy(), rtol=1e-6)
    assert np.allclose(curves.metrics["val_accuracy"][0], accuracy(b.weights, b.X_val, b.Y_val).numpy())
    assert curves.loss[-1].mean() < curves.loss[0].mean()
    back = Curves.from_dict(curves.to_dict())
    assert np.array_equal(back.metrics["val_loss"], curves.metrics["val_loss"])
    # regression curves carry no metrics key (their JSON is unchanged)
    reg = evaluate(BaselineConfig("gd"), TaskConfig(), unseen_seeds(2), 2)
    assert reg.metrics == {} and "metrics" not in reg.to_dict()


def test_a_baseline_method_built_without_a_task_steps_with_the_evaluated_tasks_cross_entropy():
    """``BaselineMethod(config)`` (no task) evaluated on digits steps on the cross-entropy and its
    teleport batch, as one built for the task does (not on the squared error of regression)."""
    from metatele.evaluation.evaluate import BaselineMethod, evaluate
    from metatele.optimizers.baselines import BaselineConfig
    from metatele.symmetry.strategies import TeleportSchedule
    from metatele.tasks.family import unseen_seeds

    task = TaskConfig(family="digits", dims=[200, 64, 8, 8, 10], bias=True)
    config = BaselineConfig("adam", lr=0.02, teleport=TeleportSchedule(steps=[2], ascent_steps=2, ascent_max_norm=1e-2))
    seeds = list(unseen_seeds(2))
    plain = evaluate(BaselineMethod(config, "adam"), task, seeds, 6)
    built = evaluate(BaselineMethod(config, "adam", task=task), task, seeds, 6)
    assert np.array_equal(plain.loss, built.loss) and np.array_equal(plain.metrics["val_accuracy"],
                                                                     built.metrics["val_accuracy"])
    b = sample_digits(task, seeds)
    W = HandDesigned(BaselineConfig("adam", lr=0.02), b.X, b.Y, b.weights, loss_fn=cross_entropy).step(b.weights)[0]
    assert np.allclose(plain.loss[1], cross_entropy(W, b.X, b.Y).numpy(), rtol=1e-5)
    with pytest.raises(ValueError, match="family"):  # built for regression, run on digits: refused
        evaluate(BaselineMethod(config, task=TaskConfig([8, 64, 8, 8, 10], bias=True)), task, seeds, 2)


def test_validation_metrics_are_measured_after_each_step_off_the_clock(monkeypatch):
    """The evaluator measures a digits task's validation metrics right after each step (so it keeps no
    step's weights: memory does not grow with the steps), and the clock counts the steps only."""
    import time

    from metatele.evaluation.evaluate import evaluate
    from metatele.optimizers.baselines import BaselineConfig
    from metatele.tasks.digits import DigitsBatch
    from metatele.tasks.family import unseen_seeds

    order = []
    real_metrics, real_step = DigitsBatch.metrics, HandDesigned.step

    def metrics(self, weights):
        order.append("measure")
        time.sleep(0.25)  # 1.25 s over the run
        return real_metrics(self, weights)

    def step(self, weights):
        order.append("step")
        return real_step(self, weights)
    monkeypatch.setattr(DigitsBatch, "metrics", metrics)
    monkeypatch.setattr(HandDesigned, "step", step)
    task = TaskConfig(family="digits", dims=[200, 64, 8, 8, 10], bias=True)
    curves = evaluate(BaselineConfig("adam", lr=0.02), task, unseen_seeds(2), 4)
    assert order == ["measure", "step"] * 4 + ["measure"]
    # on the clock, the measurements would add at least 4 × 0.25 s; the four steps alone take far
    # less, even on a busy machine (0.31 s measured with two benchmarks running beside the tests)
    assert curves.time[-1] < 1.0 and curves.metrics["val_accuracy"].shape == (5, 2)


def test_baseline_teleports_with_the_teleport_batch_only():
    from metatele.optimizers.baselines import BaselineConfig, HandDesigned
    from metatele.symmetry.strategies import TeleportSchedule

    b = sample_digits(DIGITS, [0, 1], dtype=torch.float64)
    sched = TeleportSchedule(steps=[0], ascent_steps=2, ascent_lr=1e12, ascent_max_norm=1e-2)
    opt = HandDesigned(BaselineConfig("gd", lr=1e-9, teleport=sched), b.X, b.Y, b.weights,
                       loss_fn=cross_entropy, teleport_samples=DIGITS.teleport_samples)
    seen = []
    inner = opt.strategy
    opt.strategy = lambda W, X, Y: seen.append(X.shape[-1]) or inner(W, X, Y)
    opt.step(b.weights)
    assert seen == [DIGITS.teleport_samples]
    moved = inner(b.weights, b.X_tele, b.Y_tele)
    change = teleport_loss_change(b, b.weights, moved)
    assert change.teleport_batch.abs().max() <= 1e-10 and change.rest.abs().min() > 0


def test_digits_study_runs_at_quick_scale(tmp_path):
    from metatele.cli import main

    assert main(["digits", "--quick", "--out", str(tmp_path / "run")]) == 0
    report = (tmp_path / "run" / "DIGITS.md").read_text()
    for heading in ("## 1. Standard optimizers", "## 2. Sharpness", "## 3. Teleporting mid-training", "## Conclusions"):
        assert heading in report
    assert "metatele digits --quick" in report
    figures = sorted(p.name for p in (tmp_path / "run" / "figures").iterdir())
    assert figures == ["digits_correlation.png", "digits_learned_train_loss.png", "digits_learned_val_loss.png",
                       "digits_train_loss_vs_step.png", "digits_train_loss_vs_time.png",
                       "digits_val_accuracy.png", "digits_val_loss.png"]
    assert "## 4. Learned teleport on digits" in report
    from metatele.release.manifest import verify_manifest

    verify_manifest(tmp_path / "run" / "checkpoints" / "digits.manifest.json")
    from metatele.release.checkpoint import load_optimizer

    opt = load_optimizer(tmp_path / "run" / "checkpoints" / "digits_update_tele_val.safetensors")
    assert opt.task.family == "digits"
    # the report re-renders from results.json alone, to the same bytes
    (tmp_path / "run" / "DIGITS.md").unlink()
    assert main(["digits", "--render-only", "--out", str(tmp_path / "run")]) == 0
    assert (tmp_path / "run" / "DIGITS.md").read_text() == report
    import json

    data = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(data["optimizers"]["curves"]) == {"SGD+momentum", "SGD+momentum+teleport", "Adam", "Adam+teleport"}
    assert -1 <= data["correlation"]["sharpness_vs_val_loss"]["r"] <= 1


def test_digits_study_config_errors_name_the_field(capsys):
    from metatele.cli import main

    assert main(["digits", "--quick", "--set", "optimizers=[sgd]"]) == 2
    assert "optimizers" in capsys.readouterr().err


def _digits_meta_config(**kw):
    from metatele.meta.config import MetaTrainConfig

    return MetaTrainConfig.from_dict({
        "task": {"family": "digits", "dims": [200, 64, 8, 8, 10], "bias": True},
        "learned": {"arch": "coordinatewise", "variant": "update+tele"}, "trajectories": 4, "steps": 4,
        "unroll": 2, "batch_size": 2, "meta_loss": "mean_log", "device": "cpu", **kw})


@pytest.mark.parametrize("objective", ["train", "validation"])
def test_engine_meta_trains_on_digits(objective):
    from metatele.meta.engine import UnrollEngine

    eng = UnrollEngine(_digits_meta_config(meta_objective=objective))
    assert eng.trajectories.X_val.shape == (2, 64, 1797 - 200) and eng.trajectories.X_qr[0].shape[-1] == 9  # the teleport batch: 8 + 1
    before = [p.detach().clone() for p in eng.meta_parameters]
    for _ in range(3):
        stats = eng.meta_step()
    assert math.isfinite(stats["meta_loss"]) and stats["diverged_total"] == 0
    assert any(not torch.equal(a, p) for a, p in zip(before, eng.meta_parameters))


def test_validation_meta_objective_sums_validation_losses():
    from metatele.meta.engine import UnrollEngine

    losses = {}
    for objective in ("train", "validation"):
        eng = UnrollEngine(_digits_meta_config(meta_objective=objective, unroll=1))
        X, Y, Xv, Yv = eng.trajectories.X, eng.trajectories.Y, eng.trajectories.X_val, eng.trajectories.Y_val
        u = eng.compute_meta_gradient()  # K = 1: the meta-loss is the mean log-loss at W_1
        data = (Xv, Yv) if objective == "validation" else (X, Y)
        expected = cross_entropy(u.W, *data).log().mean()
        assert torch.allclose(u.meta_loss, expected.detach(), rtol=1e-5)
        losses[objective] = u.meta_loss
    assert not torch.allclose(losses["train"], losses["validation"])


def test_validation_objective_needs_validation_data():
    from metatele.meta.config import MetaTrainConfig

    with pytest.raises(ConfigError, match="meta_objective"):
        MetaTrainConfig.from_dict({"meta_objective": "validation"})
    with pytest.raises(ConfigError, match="meta_objective"):
        _digits_meta_config(meta_objective="test")


def test_learned_step_on_digits_uses_cross_entropy_and_the_teleport_batch():
    from metatele.optimizers.learned import LearnedConfig, LearnedOptimizer

    task = TaskConfig(family="digits", dims=[200, 64, 8, 8, 10], bias=True)
    opt = LearnedOptimizer(task, LearnedConfig(variant="update+tele", arch="coordinatewise")).double()
    b = sample_digits(task, [0, 1], dtype=torch.float64)
    assert opt.teleport_data(b.X).shape[-1] == task.teleport_samples
    stepper = opt.start(b.X, b.Y, b.weights)
    W, loss, _ = stepper.step(b.weights)
    assert torch.allclose(loss, cross_entropy(b.weights, b.X, b.Y))
    # the tele variant (a hand-designed base plus m2) trains digits too: its first step is its
    # base optimizer's, then a teleport that the safeguard lets through only if it does not raise
    # the full training loss (it acts with the teleport batch, so it may change the loss)
    tele = LearnedOptimizer(task, LearnedConfig(variant="tele", arch="coordinatewise")).double()
    base = HandDesigned(tele.config.base, b.X, b.Y, b.weights, loss_fn=cross_entropy)
    W_tele, _, _ = tele.start(b.X, b.Y, b.weights).step(b.weights)
    W_base, _, _ = base.step(b.weights)
    after, plain = cross_entropy(W_tele, b.X, b.Y), cross_entropy(W_base, b.X, b.Y)
    assert (after <= plain * (1 + 1e-4)).all() and not torch.equal(W_tele[0], W_base[0])
    from metatele.evaluation.evaluate import evaluate
    from metatele.tasks.family import unseen_seeds

    regression_opt = LearnedOptimizer(TaskConfig([8, 64, 8, 8, 10], bias=True), LearnedConfig(arch="coordinatewise"))
    with pytest.raises(ValueError, match="family"):
        evaluate(regression_opt, task, unseen_seeds(2), 2)


def test_digits_engine_state_round_trips_with_its_validation_images():
    from metatele.meta.engine import UnrollEngine

    config = _digits_meta_config(meta_objective="validation", trajectories=8)
    a = UnrollEngine(config)
    a.meta_step()
    b = UnrollEngine(config)
    b.load_state_dict(a.state_dict())
    assert torch.equal(a.trajectories.X_val, b.trajectories.X_val) and torch.equal(a.trajectories.Y_val, b.trajectories.Y_val)
    sa, sb = a.meta_step(), b.meta_step()
    assert sa["meta_loss"] == sb["meta_loss"]
