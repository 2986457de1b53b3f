"""Networks with biases: tasks, forward pass, gradients, the group action on [V b], validation."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from helpers import tiny

from metatele.optimizers.baselines import BaselineConfig, run_baseline
from metatele.configs import ConfigError
from metatele.meta.engine import UnrollEngine
from metatele.tasks.mlp import forward, join_bias, loss_and_grads, mlp_loss, split_bias
from metatele.symmetry.action import SymmetryWarning, input_qr, loss_change, non_symmetric_pairs, teleport
from metatele.tasks.family import TaskConfig, sample_tasks, training_seeds
from metatele.meta.config import MetaTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

# n ≤ d_{m-1} + 1 for every teleported pair; the first two have n = d + 1 exactly
BIAS_DIMS = [[21, 20, 20, 20], [9, 8, 10, 7], [8, 10, 12, 9, 6, 3], [8, 7, 12, 9, 11, 6, 3]]


def test_task_with_bias_is_the_bias_free_task_plus_a_bias_column():
    plain = sample_tasks(TaskConfig([5, 4, 6, 3], "gaussian"), [7], dtype=torch.float64)
    biased = sample_tasks(TaskConfig([5, 4, 6, 3], "gaussian", bias=True), [7], dtype=torch.float64)
    assert TaskConfig([5, 4, 6, 3], bias=True).weight_shapes == [(6, 5), (3, 7)]
    assert torch.equal(plain.X, biased.X) and torch.equal(plain.Y, biased.Y)
    for w, wb in zip(plain.weights, biased.weights):
        assert wb.shape == (1, w.shape[1], w.shape[2] + 1)
        assert torch.equal(wb[..., :-1], w)
        assert wb[..., -1].abs().min() > 0


def test_bias_flag_is_validated():
    with pytest.raises(ValueError, match="task.bias"):
        TaskConfig(bias="yes")


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
def test_forward_loss_and_gradient_match_an_nn_sequential_with_biases(distribution):
    task = TaskConfig([6, 4, 5, 3, 2], distribution, bias=True)
    batch = sample_tasks(task, [3], dtype=torch.float64)
    layers = []
    for W in batch.weights:
        lin = nn.Linear(W.shape[2] - 1, W.shape[1]).double()
        V, b = split_bias(W[0], W.shape[2] - 1)
        with torch.no_grad():
            lin.weight.copy_(V)
            lin.bias.copy_(b)
        layers += [lin, nn.LeakyReLU(0.1)]
    model = nn.Sequential(*layers[:-1])
    out = model(batch.X[0].T).T
    assert torch.allclose(forward(batch.weights, batch.X)[0], out, rtol=1e-12, atol=1e-12)
    ref = 0.5 * (out - batch.Y[0]).square().sum()
    ref.backward()
    loss, grads = loss_and_grads(batch.weights, batch.X, batch.Y)
    assert torch.allclose(loss[0], ref, rtol=1e-12)
    for g, lin in zip(grads, model[::2]):
        assert torch.allclose(g[0], join_bias(lin.weight.grad, lin.bias.grad), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
@pytest.mark.parametrize("dims", BIAS_DIMS, ids=str)
def test_exact_teleport_with_biases_keeps_the_loss_in_float64(distribution, dims, random_T):
    batch = sample_tasks(TaskConfig(dims, distribution, bias=True), training_seeds(64), dtype=torch.float64)
    assert non_symmetric_pairs(batch.weights, batch.X) == []
    _, g0 = loss_and_grads(batch.weights, batch.X, batch.Y)
    for norm in (1e-3, 0.1, 0.5):
        T = random_T(batch.weights, norm, seed=1)
        with warnings.catch_warnings():
            warnings.simplefilter("error", SymmetryWarning)
            change = loss_change(batch.weights, batch.X, batch.Y, T)
        assert change.abs().max().item() <= 1e-10, norm
    new = teleport(batch.weights, batch.X, T)
    _, g1 = loss_and_grads(new, batch.X, batch.Y)
    assert all(((a - b).flatten(1).norm(dim=1) > 1e-6).all() for a, b in zip(g0[:1], g1[:1]))  # a real move
    # U's own bias is unchanged (the last layer's bias column; pairs act on weight columns only)
    assert torch.equal(new[-1][..., -1], batch.weights[-1][..., -1])
    # the precomputed factorisation of [X; 1ᵀ] gives the same result
    same = teleport(batch.weights, batch.X, T, x_qr=input_qr(batch.weights, batch.X))
    assert all(torch.allclose(a, b, rtol=1e-12, atol=1e-12) for a, b in zip(new, same))


def test_identity_teleport_leaves_biased_weights_unchanged():
    batch = sample_tasks(TaskConfig([5, 8, 6, 3], "gaussian", bias=True), range(3), dtype=torch.float64)
    T = [torch.zeros(3, 6, 6, dtype=torch.float64)]
    for a, b in zip(teleport(batch.weights, batch.X, T), batch.weights):
        assert torch.allclose(a, b, rtol=0, atol=1e-13)


def test_too_many_samples_for_a_layer_with_bias_is_not_a_symmetry(random_T):
    # n = 10 > d0 + 1 = 9: not a symmetry; n = 9 = d0 + 1 is
    ok = sample_tasks(TaskConfig([9, 8, 10, 6], "gaussian", bias=True), range(4), dtype=torch.float64)
    assert non_symmetric_pairs(ok.weights, ok.X) == []
    bad = sample_tasks(TaskConfig([10, 8, 10, 6], "gaussian", bias=True), range(4), dtype=torch.float64)
    assert non_symmetric_pairs(bad.weights, bad.X) == [0]
    T = random_T(bad.weights, 0.3)
    with pytest.warns(SymmetryWarning, match="NOT a symmetry"):
        teleport(bad.weights, bad.X, T)
    assert (loss_change(bad.weights, bad.X, bad.Y, T).abs() > 1e-8).all()


@pytest.mark.parametrize("dims, bias, ok", [
    ([9, 8, 10, 6], True, True), ([10, 8, 10, 6], True, False),
    ([8, 8, 10, 6], False, True), ([9, 8, 10, 6], False, False),
])
def test_meta_training_config_refuses_too_many_samples_for_teleporting(dims, bias, ok):
    cfg = tiny(**{"task.dims": dims, "task.bias": bias})
    if ok:
        MetaTrainConfig.from_dict(cfg)
        MetaTrainConfig.from_dict(tiny(**{"task.dims": dims, "task.bias": bias, "learned.variant": "update"}))
    else:
        with pytest.raises(ConfigError, match=r"task.dims: pair 0 .*narrower than the n = \d+ samples"):
            MetaTrainConfig.from_dict(cfg)
        MetaTrainConfig.from_dict(tiny(**{"task.dims": dims, "task.bias": bias, "learned.variant": "update"}))  # no teleport


def test_adam_baseline_trains_a_network_with_biases():
    batch = sample_tasks(TaskConfig([10, 6, 8, 3], "gaussian", bias=True), range(4), dtype=torch.float64)
    curve = run_baseline(BaselineConfig("adam", lr=0.01), batch.X, batch.Y, batch.weights, 50)
    assert (curve[-1] < 0.5 * curve[0]).all()
    assert torch.allclose(curve[0], mlp_loss(batch.weights, batch.X, batch.Y))


def test_paper_optimizer_meta_trains_on_a_task_with_biases():
    eng = UnrollEngine(MetaTrainConfig.from_dict(tiny(**{"task.bias": True})))
    assert [tuple(w.shape[1:]) for w in eng.trajectories.W] == [(6, 7), (6, 7)]
    eng.compute_meta_gradient()
    grads = [p.grad for p in eng.optimizer.parameters()]
    assert all(g is not None and bool(torch.isfinite(g).all()) for g in grads)
    assert all(float(g.abs().sum()) > 0 for g in grads)
