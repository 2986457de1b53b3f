"""The inner LeakyReLU network: forward, loss and per-task gradients (metatele.tasks.mlp)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from metatele.tasks.mlp import (
    NEGATIVE_SLOPE,
    forward,
    grad_norm_sq,
    layer_inputs,
    loss_and_grads,
    mlp_loss,
    sigma,
    sigma_inv,
)
from metatele.symmetry.action import teleport
from metatele.tasks.family import TaskConfig, sample_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def batch():
    return sample_tasks(TaskConfig([5, 6, 7, 4, 3], "gaussian"), range(4), dtype=torch.float64)


def _reference_loss(weights, X, Y):
    """One task ``[d_i, d_{i-1}]`` at a time, written out from docs/tasks.md."""
    h = X
    for W in weights[:-1]:
        z = W @ h
        h = torch.where(z > 0, z, 0.1 * z)
    return 0.5 * ((Y - weights[-1] @ h) ** 2).sum()


def test_sigma_is_leaky_relu_0_1_and_sigma_inv_inverts_it():
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)
    assert NEGATIVE_SLOPE == 0.1
    assert torch.equal(sigma(x), F.leaky_relu(x, 0.1))
    torch.testing.assert_close(sigma_inv(sigma(x)), x, rtol=1e-15, atol=1e-15)
    torch.testing.assert_close(sigma(sigma_inv(x)), x, rtol=1e-15, atol=1e-15)


def test_loss_matches_spec_formula_for_every_task(batch):
    losses = mlp_loss(batch.weights, batch.X, batch.Y)
    assert losses.shape == (4,)
    for i in range(4):
        expected = _reference_loss([w[i] for w in batch.weights], batch.X[i], batch.Y[i])
        torch.testing.assert_close(losses[i], expected, rtol=1e-13, atol=0)


def test_forward_and_layer_inputs_shapes_and_consistency(batch):
    hs = layer_inputs(batch.weights, batch.X)
    assert [tuple(h.shape) for h in hs] == [(4, 6, 5), (4, 7, 5), (4, 4, 5)]
    assert torch.equal(hs[0], batch.X)
    torch.testing.assert_close(hs[2], sigma(batch.weights[1] @ hs[1]))
    torch.testing.assert_close(forward(batch.weights, batch.X), batch.weights[-1] @ hs[-1])


def test_batched_gradients_equal_each_tasks_own_gradient(batch):
    loss, grads = loss_and_grads(batch.weights, batch.X, batch.Y)
    for i in range(4):
        ws = [w[i].clone().requires_grad_(True) for w in batch.weights]
        expected_loss = _reference_loss(ws, batch.X[i], batch.Y[i])
        expected = torch.autograd.grad(expected_loss, ws)
        torch.testing.assert_close(loss[i], expected_loss.detach(), rtol=1e-13, atol=0)
        for g, e in zip(grads, expected):
            torch.testing.assert_close(g[i], e, rtol=1e-12, atol=1e-12)


def test_tasks_are_independent(batch):
    _, before = loss_and_grads(batch.weights, batch.X, batch.Y)
    changed = [w.clone() for w in batch.weights]
    changed[0][0] += 1.0  # perturb task 0 only
    _, after = loss_and_grads(changed, batch.X, batch.Y)
    assert not torch.allclose(after[0][0], before[0][0])
    for g_before, g_after in zip(before, after):
        assert torch.equal(g_before[1:], g_after[1:])


def test_grad_norm_sq_sums_all_layers_per_task(batch):
    _, grads = loss_and_grads(batch.weights, batch.X, batch.Y)
    expected = torch.stack([sum((g[i] ** 2).sum() for g in grads) for i in range(4)])
    torch.testing.assert_close(grad_norm_sq(grads), expected)


def test_first_order_grads_are_detached_but_loss_keeps_its_graph(batch):
    weights = [w.clone().requires_grad_(True) for w in batch.weights]
    loss, grads = loss_and_grads(weights, batch.X, batch.Y)
    assert all(not g.requires_grad for g in grads)
    (dloss,) = torch.autograd.grad(loss.sum(), weights[0])
    torch.testing.assert_close(dloss, grads[0])


def test_create_graph_gives_second_order_gradients(batch):
    weights = [w.clone().requires_grad_(True) for w in batch.weights]
    _, grads = loss_and_grads(weights, batch.X, batch.Y, create_graph=True)
    assert all(g.requires_grad for g in grads)
    (hvp,) = torch.autograd.grad(grad_norm_sq(grads).sum(), weights[-1])
    assert torch.isfinite(hvp).all() and hvp.abs().sum() > 0


def test_gradients_at_teleported_weights_are_partial_derivatives(batch, random_T):
    """After a teleport W_{m+1} is computed from W_m; the gradient must still be ∂L/∂W_i."""
    weights = [w.clone().requires_grad_(True) for w in batch.weights]
    moved = teleport(weights, batch.X, random_T(weights, 0.3))
    _, through_graph = loss_and_grads(moved, batch.X, batch.Y)
    _, detached = loss_and_grads([w.detach() for w in moved], batch.X, batch.Y)
    for a, b in zip(through_graph, detached):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_loss_and_grads_works_under_no_grad(batch):
    with torch.no_grad():
        loss, grads = loss_and_grads(batch.weights, batch.X, batch.Y)
    assert loss.shape == (4,) and all(g.abs().sum() > 0 for g in grads)
