"""Teleport strategies: random, gradient ascent, schedules (metatele.symmetry.strategies)."""
from __future__ import annotations

import pytest
import torch

from metatele.configs import ConfigError
from metatele.tasks.mlp import grad_norm_sq, loss_and_grads, mlp_loss
from metatele.symmetry.strategies import (
    GradientAscentTeleport,
    RandomTeleport,
    TeleportSchedule,
    TeleportStrategy,
    grad_norm_ascent_direction,
    normalize_frobenius,
)
from metatele.symmetry.action import loss_change, teleport
from metatele.tasks.family import TaskConfig, sample_tasks, training_seeds, unseen_seeds

pytestmark = pytest.mark.usefixtures("one_thread")


def _frobenius(T: torch.Tensor) -> torch.Tensor:
    return T.flatten(1).norm(dim=1)


# --- normalize_frobenius -----------------------------------------------------------------


def test_normalize_frobenius_rescales_each_matrix_to_eps():
    T = torch.randn(5, 4, 4, dtype=torch.float64) * torch.arange(1, 6, dtype=torch.float64).view(5, 1, 1)
    out = normalize_frobenius(T, 0.25)
    torch.testing.assert_close(_frobenius(out), torch.full((5,), 0.25, dtype=torch.float64))
    torch.testing.assert_close(out / _frobenius(out).view(5, 1, 1), T / _frobenius(T).view(5, 1, 1))


def test_normalize_frobenius_accepts_per_task_eps_and_keeps_zero_matrices_finite():
    T = torch.randn(3, 2, 2, dtype=torch.float64)
    T[1] = 0
    eps = torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64)
    out = normalize_frobenius(T, eps)
    assert torch.isfinite(out).all() and torch.equal(out[1], torch.zeros(2, 2, dtype=torch.float64))
    torch.testing.assert_close(_frobenius(out)[[0, 2]], eps[[0, 2]])


# --- RandomTeleport ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("eps", [0.01, 0.5])
def test_random_teleport_T_has_frobenius_norm_eps_per_pair_and_task(dtype, eps):
    batch = sample_tasks(TaskConfig([6, 8, 7, 9, 4]), range(32), dtype=dtype)
    Ts = RandomTeleport(eps, seed=3).sample(batch.weights)
    assert [tuple(t.shape) for t in Ts] == [(32, 7, 7), (32, 9, 9)]
    for t in Ts:
        assert t.dtype == dtype
        torch.testing.assert_close(_frobenius(t), torch.full((32,), eps, dtype=dtype), rtol=1e-6, atol=0)
        assert not torch.allclose(t[0], t[1])  # a different direction per task


def test_random_teleport_is_reproducible_from_its_seed_and_advances():
    batch = sample_tasks(TaskConfig([6, 8, 7, 4]), range(4), dtype=torch.float64)
    a, b = RandomTeleport(0.1, seed=7), RandomTeleport(0.1, seed=7)
    first_a, first_b = a.sample(batch.weights), b.sample(batch.weights)
    assert torch.equal(first_a[0], first_b[0])
    assert not torch.equal(a.sample(batch.weights)[0], first_a[0])
    assert not torch.equal(RandomTeleport(0.1, seed=8).sample(batch.weights)[0], first_a[0])


@pytest.mark.parametrize("distribution", ["uniform", "gaussian"])
def test_random_teleport_keeps_the_loss_and_moves_the_weights(distribution):
    batch = sample_tasks(TaskConfig([6, 8, 7, 9, 4], distribution), range(16), dtype=torch.float64)
    new = RandomTeleport(0.3, seed=0)(batch.weights, batch.X, batch.Y)
    before, after = mlp_loss(batch.weights, batch.X, batch.Y), mlp_loss(new, batch.X, batch.Y)
    assert ((after - before).abs() / before).max() < 1e-10
    assert all(not torch.allclose(a, b) for a, b in zip(batch.weights, new))


def test_random_teleport_first_order_flag_reaches_the_group_action():
    batch = sample_tasks(TaskConfig(), training_seeds(4), dtype=torch.float64)
    exact = RandomTeleport(0.05, exact=True, seed=1)(batch.weights, batch.X, batch.Y)
    paper = RandomTeleport(0.05, exact=False, seed=1)(batch.weights, batch.X, batch.Y)
    loss0 = mlp_loss(batch.weights, batch.X, batch.Y)
    assert ((mlp_loss(exact, batch.X, batch.Y) - loss0).abs() / loss0).max() < 1e-12
    assert ((mlp_loss(paper, batch.X, batch.Y) - loss0).abs() / loss0).min() > 1e-9


@pytest.mark.parametrize("eps", [0.0, -0.1])
def test_random_teleport_rejects_non_positive_eps(eps):
    with pytest.raises(ConfigError, match="eps"):
        RandomTeleport(eps)


# --- GradientAscentTeleport --------------------------------------------------------------


def _after_gd_steps(batch, steps=5, lr=1e-4):
    """The paper protocol teleports at step 5 of GD (lr 1e-4) on the reference task."""
    W = list(batch.weights)
    for _ in range(steps):
        _, grads = loss_and_grads(W, batch.X, batch.Y)
        W = [w - lr * g for w, g in zip(W, grads)]
    return W


def test_gradient_ascent_raises_grad_norm_and_keeps_loss_on_reference_protocol():
    batch = sample_tasks(TaskConfig(), unseen_seeds(16), dtype=torch.float64)
    W = _after_gd_steps(batch)
    loss0, g0 = loss_and_grads(W, batch.X, batch.Y)
    new = GradientAscentTeleport(steps=8, lr=1e-7)(W, batch.X, batch.Y)
    loss1, g1 = loss_and_grads(new, batch.X, batch.Y)
    assert ((loss1 - loss0).abs() / loss0).max() < 1e-10
    assert (grad_norm_sq(g1) > 1.01 * grad_norm_sq(g0)).all()


def test_gradient_ascent_raises_grad_norm_for_every_task_on_a_deep_gaussian_net():
    batch = sample_tasks(TaskConfig([10, 10, 10, 10, 10], "gaussian"), training_seeds(32), dtype=torch.float64)
    loss0, g0 = loss_and_grads(batch.weights, batch.X, batch.Y)
    new = GradientAscentTeleport(steps=3, lr=1e-9)(batch.weights, batch.X, batch.Y)
    loss1, g1 = loss_and_grads(new, batch.X, batch.Y)
    assert ((loss1 - loss0).abs() / loss0).max() < 1e-10
    assert (grad_norm_sq(g1) > grad_norm_sq(g0)).all()


def test_ascent_direction_is_the_gradient_of_grad_norm_over_T():
    """Central differences of ‖∇L(g·W)‖² along the direction match ‖direction‖², for every
    task and every pair of a three-pair network."""
    batch = sample_tasks(TaskConfig([10, 10, 10, 10, 10, 10], "gaussian"), training_seeds(16), dtype=torch.float64)
    direction = grad_norm_ascent_direction(batch.weights, batch.X, batch.Y)
    assert [tuple(d.shape) for d in direction] == [(16, 10, 10)] * 3

    def objective(T):
        return grad_norm_sq(loss_and_grads(teleport(batch.weights, batch.X, T), batch.X, batch.Y)[1])

    lr = 1e-9
    for m in range(3):
        plus = objective([lr * d if k == m else None for k, d in enumerate(direction)])
        minus = objective([-lr * d if k == m else None for k, d in enumerate(direction)])
        ratio = (plus - minus) / (2 * lr * direction[m].square().sum(dim=(1, 2)))
        assert ((ratio > 0.95) & (ratio < 1.05)).all(), (m, ratio)


def test_gradient_ascent_batched_equals_a_loop_over_single_tasks(single):
    batch = sample_tasks(TaskConfig([6, 8, 7, 9, 4], "gaussian"), range(5), dtype=torch.float64)
    strategy = GradientAscentTeleport(steps=3, lr=1e-4)
    batched = strategy(batch.weights, batch.X, batch.Y)
    for i in range(5):
        one = single(batch, i)
        alone = strategy(one.weights, one.X, one.Y)
        for a, b in zip(batched, alone):
            torch.testing.assert_close(a[i : i + 1], b, rtol=1e-10, atol=1e-12)


def test_gradient_ascent_output_stays_differentiable_in_the_input_weights():
    batch = sample_tasks(TaskConfig([6, 8, 7, 4], "gaussian"), range(3), dtype=torch.float64)
    W = [w.clone().requires_grad_(True) for w in batch.weights]
    new = GradientAscentTeleport(steps=2, lr=1e-4)(W, batch.X, batch.Y)
    assert all(w.requires_grad for w in new)
    grads = torch.autograd.grad(mlp_loss(new, batch.X, batch.Y).sum(), W)
    assert all(torch.isfinite(g).all() and g.abs().sum() > 0 for g in grads)


def test_gradient_ascent_first_order_mode_changes_the_loss_only_slightly():
    batch = sample_tasks(TaskConfig(), unseen_seeds(4), dtype=torch.float64)
    W = _after_gd_steps(batch)
    new = GradientAscentTeleport(steps=8, lr=1e-7, exact=False)(W, batch.X, batch.Y)
    loss0, loss1 = mlp_loss(W, batch.X, batch.Y), mlp_loss(new, batch.X, batch.Y)
    relative = (loss1 - loss0).abs() / loss0
    assert (relative > 1e-12).all() and (relative < 1e-1).all()


@pytest.mark.parametrize("kwargs, field", [({"steps": 0}, "steps"), ({"lr": 0.0}, "lr"), ({"lr": -1e-7}, "lr")])
def test_gradient_ascent_rejects_bad_settings(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        GradientAscentTeleport(**kwargs)


# --- base class and schedule -------------------------------------------------------------


def test_base_strategy_must_be_subclassed():
    batch = sample_tasks(TaskConfig([4, 3, 3, 2]), range(1))
    with pytest.raises(NotImplementedError):
        TeleportStrategy()(batch.weights, batch.X, batch.Y)
    TeleportStrategy().reset(1, torch.device("cpu"), torch.float32)  # stateless: no-op


def test_schedule_defaults_are_the_papers_and_steps_are_sorted():
    schedule = TeleportSchedule(steps=[10, 5, 0])
    assert schedule.steps == [0, 5, 10]
    assert (schedule.strategy, schedule.eps, schedule.ascent_steps, schedule.ascent_lr) == (
        "gradient_ascent", 0.01, 8, 1e-7,
    )
    assert schedule.exact is True
    assert TeleportSchedule().steps == []


def test_schedule_builds_the_named_strategy():
    ascent = TeleportSchedule(steps=[5], ascent_steps=3, ascent_lr=1e-6, exact=False).build()
    assert isinstance(ascent, GradientAscentTeleport)
    assert (ascent.steps, ascent.lr, ascent.exact) == (3, 1e-6, False)
    random = TeleportSchedule(steps=[5], strategy="random", eps=0.2, seed=4).build()
    assert isinstance(random, RandomTeleport) and random.eps == 0.2
    batch = sample_tasks(TaskConfig([4, 5, 5, 3]), range(2), dtype=torch.float64)
    torch.testing.assert_close(random.sample(batch.weights)[0], RandomTeleport(0.2, seed=4).sample(batch.weights)[0])


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"steps": [3, -1]}, "teleport.steps"),
        ({"strategy": "learned"}, "teleport.strategy"),
        ({"eps": 0.0}, "teleport.eps"),
        ({"ascent_steps": 0}, "teleport.ascent_steps"),
        ({"ascent_lr": 0.0}, "teleport.ascent_lr"),
    ],
)
def test_schedule_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        TeleportSchedule(**kwargs)


def test_loss_change_of_a_random_teleport_is_measured_per_task():
    batch = sample_tasks(TaskConfig([6, 8, 7, 4], "gaussian"), range(3), dtype=torch.float64)
    T = RandomTeleport(0.1, seed=0).sample(batch.weights)
    assert loss_change(batch.weights, batch.X, batch.Y, T).shape == (3,)
