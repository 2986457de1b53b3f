"""Minibatch gradients on digits (TaskConfig.minibatch): the sampler, and every optimizer, the
evaluator, the grid search and the engine stepping on it."""
import copy
import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from metatele.configs import ConfigError, from_dict, to_dict
from metatele.evaluation.evaluate import evaluate
from metatele.evaluation.tuning import grid_search
from metatele.meta.config import MetaTrainConfig
from metatele.meta.engine import UnrollEngine
from metatele.optimizers.baselines import BaselineConfig, HandDesigned
from metatele.optimizers.learned import LearnedConfig, LearnedOptimizer
from metatele.release.checkpoint import load_checkpoint, save_checkpoint
from metatele.tasks.digits import (MinibatchSampler, cross_entropy, minibatch_indices, minibatch_sampler,
                                   sample_digits)
from metatele.tasks.family import TaskConfig, training_seeds, unseen_seeds
from metatele.tasks.mlp import loss_and_grads

TASK = TaskConfig(family="digits", dims=[200, 64, 8, 8, 10], bias=True)


# -- the sampler --------------------------------------------------------------------------------
def test_indices_are_a_function_of_seed_and_step_only():
    a = minibatch_indices([5, 6, 7], 3, 200, 32)
    assert np.array_equal(a, minibatch_indices([5, 6, 7], 3, 200, 32))
    assert np.array_equal(a[1], minibatch_indices([6], 3, 200, 32)[0])  # not on the batch around it
    per_task = minibatch_indices([5, 6, 7], np.array([3, 0, 3]), 200, 32)  # one step per task
    assert np.array_equal(per_task[[0, 2]], a[[0, 2]]) and np.array_equal(per_task[1], minibatch_indices([6], 0, 200, 32)[0])
    assert not np.array_equal(a[0], a[1])  # seeds differ
    assert not np.array_equal(a[0], minibatch_indices([5], 4, 200, 32)[0])  # steps differ


def test_indices_are_sorted_distinct_and_in_range():
    idx = minibatch_indices(list(range(20)), 11, 50, 17)
    assert idx.shape == (20, 17) and idx.dtype == np.int64
    assert all(len(set(row)) == 17 for row in idx.tolist())  # without replacement
    assert idx.min() >= 0 and idx.max() < 50 and (np.diff(idx, axis=1) > 0).all()
    # over many steps every image is drawn, about equally often
    counts = np.bincount(minibatch_indices([3] * 400, np.arange(400), 50, 10).ravel(), minlength=50)
    assert counts.min() > 40 and counts.max() < 120
    assert np.array_equal(minibatch_indices([1, 2], 0, 30, 30), np.tile(np.arange(30), (2, 1)))
    for size in (0, 51):
        with pytest.raises(ValueError, match="minibatch size"):
            minibatch_indices([1], 0, 50, size)


def test_select_gathers_each_tasks_own_columns():
    b = sample_digits(TASK, [0, 1, 2], dtype=torch.float64)
    sampler = minibatch_sampler(replace(TASK, minibatch=16), b.seeds)
    Xb, Yb = sampler.select(b.X, b.Y, 4)
    idx = minibatch_indices(b.seeds, 4, 200, 16)
    assert Xb.shape == (3, 64, 16) and Yb.shape == (3, 10, 16)
    for t in range(3):
        assert torch.equal(Xb[t], b.X[t][:, idx[t]]) and torch.equal(Yb[t], b.Y[t][:, idx[t]])
    with pytest.raises(ValueError, match="batch size"):
        sampler.select(b.X[:2], b.Y[:2], 0)
    assert minibatch_sampler(TASK, b.seeds) is None


def test_minibatch_field_is_validated_and_round_trips():
    assert TaskConfig(family="digits", dims=[200, 64, 8, 8, 10], minibatch=200).minibatch == 200
    for bad in (0, 201, 2.5, True, "32"):
        with pytest.raises(ConfigError, match="task.minibatch"):
            TaskConfig(family="digits", dims=[200, 64, 8, 8, 10], minibatch=bad)
    with pytest.raises(ConfigError, match="task.minibatch.*digits"):
        TaskConfig(minibatch=4)
    task = replace(TASK, minibatch=32)
    assert from_dict(TaskConfig, to_dict(task)) == task and to_dict(task)["minibatch"] == 32
    assert from_dict(TaskConfig, {k: v for k, v in to_dict(TASK).items() if k != "minibatch"}) == TASK  # older files


# -- the optimizers and the evaluator ----------------------------------------------------------
def test_minibatch_gd_steps_are_hand_computed_steps_on_the_selected_columns():
    b = sample_digits(TASK, [3, 4], dtype=torch.float64)
    sampler = MinibatchSampler(tuple(b.seeds), 20)
    opt = HandDesigned(BaselineConfig("gd", lr=0.5), b.X, b.Y, b.weights, loss_fn=cross_entropy, minibatches=sampler)
    W = [w.detach() for w in b.weights]
    for t in range(2):
        idx = torch.from_numpy(minibatch_indices(b.seeds, t, 200, 20))
        Xb = torch.stack([b.X[k][:, idx[k]] for k in range(2)])
        Yb = torch.stack([b.Y[k][:, idx[k]] for k in range(2)])
        loss, grads = loss_and_grads(W, Xb, Yb, loss_fn=cross_entropy)
        new, reported, gsq = opt.step(W)
        assert all(torch.allclose(n, w - 0.5 * g, rtol=0, atol=1e-13) for n, w, g in zip(new, W, grads))
        assert torch.allclose(reported, loss.detach(), rtol=1e-13)  # the loss the optimizer saw
        assert not torch.allclose(reported, cross_entropy(W, b.X, b.Y))
        W = [w.detach() for w in new]


def test_learned_step_takes_the_minibatch_gradient_and_the_teleport_batch():
    opt = LearnedOptimizer(TASK, LearnedConfig(variant="update+tele", arch="coordinatewise")).double()
    b = sample_digits(TASK, [0, 1], dtype=torch.float64)
    sampler = minibatch_sampler(replace(TASK, minibatch=24), b.seeds)
    stepper = opt.start(b.X, b.Y, b.weights, minibatches=sampler)
    W1, loss0, _ = stepper.step(b.weights)
    Xb, Yb = sampler.select(b.X, b.Y, 0)
    assert torch.allclose(loss0, cross_entropy(b.weights, Xb, Yb), rtol=1e-13)
    _, loss1, _ = stepper.step(W1)  # the next step, the next minibatch
    assert torch.allclose(loss1, cross_entropy(W1, *sampler.select(b.X, b.Y, 1)), rtol=1e-13)
    # the same step by hand: the gradient on the minibatch, the teleport on the teleport batch
    state = opt.initial_state(2, dtype=torch.float64)
    with torch.no_grad():
        W1, loss, _, _ = opt.step(b.weights, b.X, b.Y, state, x_qr=stepper.x_qr, minibatch=(Xb, Yb))
        full, _, _, _ = opt.step(b.weights, b.X, b.Y, opt.initial_state(2, dtype=torch.float64), x_qr=stepper.x_qr)
    assert torch.equal(loss, loss0) and not all(torch.allclose(a, c) for a, c in zip(W1, full))


@pytest.mark.parametrize("method", ["adam", "adam+teleport", "learned"])
def test_minibatch_none_is_the_full_batch_run_and_all_images_equal_it(method):
    from metatele.symmetry.strategies import TeleportSchedule

    if method == "learned":
        torch.manual_seed(0)
        m = LearnedOptimizer(TASK, LearnedConfig(variant="update+tele", arch="coordinatewise"))
    else:
        tele = TeleportSchedule(steps=[1], ascent_steps=2, ascent_lr=1e12, ascent_max_norm=1e-3)
        m = BaselineConfig("adam", lr=0.05, teleport=tele if method == "adam+teleport" else None)
    seeds = list(unseen_seeds(2))
    curves = evaluate(m, TASK, seeds, 4)
    # minibatch None: today's loop (full-batch steps, the steps' own losses), bit for bit
    b = sample_digits(TASK, seeds)
    stepper = m.start(b.X, b.Y, b.weights) if method == "learned" else \
        HandDesigned(m, b.X, b.Y, b.weights, loss_fn=cross_entropy, teleport_samples=TASK.teleport_samples)
    W, losses = [w.detach() for w in b.weights], []
    for t in range(4):
        if t == 1:
            W_before_teleport = W
        W, loss, _ = stepper.step(W)
        W = [w.detach() for w in W]
        losses.append(loss.detach())
    losses.append(cross_entropy(W, b.X, b.Y).detach())
    assert np.array_equal(curves.loss, torch.stack(losses).double().numpy())
    everything = evaluate(m, replace(TASK, minibatch=200), seeds, 4)
    assert np.array_equal(everything.metrics["val_loss"], curves.metrics["val_loss"])  # the same trajectory
    # the recorded full training loss is the same but where a baseline teleported before the step:
    # there the full-batch run records the loss just after the teleport, the minibatch run the one before
    rows = [0, 2, 3, 4] if method == "adam+teleport" else list(range(5))
    assert np.array_equal(everything.loss[rows], curves.loss[rows])
    assert np.array_equal(everything.grad_sq[rows], curves.grad_sq[rows])
    if method == "adam+teleport":
        assert np.allclose(everything.loss[1], cross_entropy(W_before_teleport, b.X, b.Y).double().numpy(), rtol=1e-6)


def test_evaluator_records_the_full_training_loss_of_minibatch_runs():
    task = replace(TASK, minibatch=16)
    seeds = list(unseen_seeds(3))
    curves = evaluate(BaselineConfig("gd", lr=0.5), task, seeds, 3)
    b = sample_digits(task, seeds)
    opt = HandDesigned(BaselineConfig("gd", lr=0.5), b.X, b.Y, b.weights, loss_fn=cross_entropy,
                       minibatches=minibatch_sampler(task, seeds))
    W = [w.detach() for w in b.weights]
    for t in range(4):
        loss, grads = loss_and_grads(W, b.X, b.Y, loss_fn=cross_entropy)
        assert np.allclose(curves.loss[t], loss.detach().double().numpy(), rtol=1e-6)
        assert np.allclose(curves.grad_sq[t], sum((g ** 2).sum((1, 2)) for g in grads).double().numpy(), rtol=1e-5)
        assert np.allclose(curves.metrics["val_loss"][t], b.metrics(W)["val_loss"].double().numpy(), rtol=1e-6)
        if t < 3:
            W = [w.detach() for w in opt.step(W)[0]]
    assert not np.array_equal(curves.loss, evaluate(BaselineConfig("gd", lr=0.5), TASK, seeds, 3).loss)


def test_grid_search_scores_the_full_training_loss_of_minibatch_runs():
    task = replace(TASK, minibatch=16)
    seeds = list(training_seeds(2))
    r = grid_search(BaselineConfig("adam"), task, seeds, 4, lrs=[1e-2, 1e-1], objective="mean_log_loss", extend=0)
    for row in r.grid:
        with pytest.warns(UserWarning, match="NOT unseen"):  # training seeds, on purpose
            c = evaluate(BaselineConfig("adam", lr=row["lr"]), task, seeds, 4, allow_overlap=True)
        assert row["score"] == pytest.approx(float(c.log_loss.mean()), rel=1e-5)


# -- the engine -----------------------------------------------------------------------------------
def _meta_config(**kw):
    return MetaTrainConfig.from_dict({
        "task": {"family": "digits", "dims": [200, 64, 8, 8, 10], "bias": True, "minibatch": 16},
        "learned": {"arch": "coordinatewise", "variant": "update+tele"}, "trajectories": 4, "steps": 4,
        "unroll": 2, "batch_size": 2, "meta_loss": "mean_log", "device": "cpu", **kw})


def test_engine_meta_trains_on_minibatches_of_each_trajectorys_step():
    eng = UnrollEngine(_meta_config())
    seen = []
    step = eng.optimizer.step

    def spy(W, X, Y, state, **kw):
        seen.append((kw["minibatch"], X, Y, eng.trajectories.seeds.copy()))
        return step(W, X, Y, state, **kw)

    eng.optimizer.step = spy
    before = [p.detach().clone() for p in eng.meta_parameters]
    stats = [eng.meta_step() for _ in range(3)]
    assert all(math.isfinite(s["meta_loss"]) for s in stats) and stats[-1]["diverged_total"] == 0
    assert any(not torch.equal(a, p) for a, p in zip(before, eng.meta_parameters))
    # unroll k of meta-step i is step 2i + k of the trajectories (finished ones restart at 0)
    for n, (batch, X, Y, seeds) in enumerate(seen):
        expected = MinibatchSampler(tuple(seeds.tolist()), 16).select(X, Y, n % 4)
        assert torch.equal(batch[0], expected[0]) and torch.equal(batch[1], expected[1])


def test_minibatch_engine_resumes_bitwise_and_its_checkpoint_keeps_the_field(tmp_path):
    config = _meta_config(trajectories=8)
    a = UnrollEngine(config)
    a.meta_step()
    b = UnrollEngine(config)
    b.load_state_dict(copy.deepcopy(a.state_dict()))  # a copy, as from a file: a's next step must not touch it
    sa, sb = a.meta_step(), b.meta_step()
    assert sa["meta_loss"] == sb["meta_loss"]
    assert all(torch.equal(p, q) for p, q in zip(a.meta_parameters, b.meta_parameters))
    path = save_checkpoint(tmp_path / "mb.safetensors", a.optimizer, config)
    assert load_checkpoint(path).config.task.minibatch == 16


def test_digits_command_accepts_and_checks_the_option(capsys):
    from metatele.cli import main

    assert main(["digits", "--quick", "--set", "task.minibatch=0"]) == 2
    assert "task.minibatch" in capsys.readouterr().err
