"""Sharpness, orbit curvature, and the teleports that raise or lower them."""
import pytest
import torch

from metatele.configs import ConfigError
from metatele.symmetry.action import teleport
from metatele.symmetry.generalization import (
    GeometryTeleport, orbit_curvature, orbit_velocity_acceleration, random_lie_elements, sharpness,
)
from metatele.tasks.digits import cross_entropy, sample_digits
from metatele.tasks.family import TaskConfig, sample_tasks
from metatele.tasks.mlp import mlp_loss

DIGITS = TaskConfig(family="digits", dims=[1000, 64, 16, 10, 10], bias=True)


@pytest.fixture(scope="module")
def digits():
    return sample_digits(DIGITS, [1, 2, 3], dtype=torch.float64)


def _smooth_regression():
    # all entries U[0, 1]: every pre-activation is positive, so σ is linear around the weights and
    # finite differences of the orbit curve are accurate
    task = TaskConfig(dims=[8, 12, 12, 12], bias=True)
    return sample_tasks(task, [0, 1], dtype=torch.float64)


def test_sharpness_at_radius_zero_is_the_loss_and_is_deterministic(digits):
    b = digits
    s0 = sharpness(b.weights, b.X, b.Y, cross_entropy, radii=(0.0,), directions=3)
    assert torch.allclose(s0, cross_entropy(b.weights, b.X, b.Y), rtol=1e-12)
    a = sharpness(b.weights, b.X_tele, b.Y_tele, cross_entropy, radii=(0.5,), directions=7, seed=3)
    c = sharpness(b.weights, b.X_tele, b.Y_tele, cross_entropy, radii=(0.5,), directions=7, seed=3, chunk=2)
    assert torch.allclose(a, c, rtol=1e-12)
    assert not torch.allclose(a, s0)


def test_orbit_derivatives_match_finite_differences():
    b = _smooth_regression()
    M = random_lie_elements(b.weights, seed=1)
    v, a = orbit_velocity_acceleration(b.weights, b.X, M)
    h = 1e-3

    def curve(t):
        g = [torch.linalg.matrix_exp(t * m) - torch.eye(m.shape[-1], dtype=m.dtype) for m in M]
        return torch.cat([w.flatten(1) for w in teleport(b.weights, b.X, g, warn=False)], dim=1)

    fd_v = (curve(h) - curve(-h)) / (2 * h)
    fd_a = (curve(h) - 2 * curve(0.0) + curve(-h)) / h**2
    assert torch.allclose(v, fd_v, rtol=1e-5, atol=1e-8 * fd_v.abs().max())
    assert ((a - fd_a).norm(dim=1) / fd_a.norm(dim=1)).max() < 1e-4
    fd_k = ((fd_v.square().sum(1) * fd_a.square().sum(1) - (fd_v * fd_a).sum(1).square()).sqrt()
            / fd_v.square().sum(1).pow(1.5))
    assert torch.allclose(orbit_curvature(b.weights, b.X, M), fd_k, rtol=1e-4)


def test_curvature_does_not_depend_on_the_scale_of_M(digits):
    b = digits
    M = random_lie_elements(b.weights, seed=0)
    k1 = orbit_curvature(b.weights, b.X_tele, M)
    k2 = orbit_curvature(b.weights, b.X_tele, [3.0 * m for m in M])
    assert torch.allclose(k1, k2, rtol=1e-8)
    assert (k1 > 0).all()


@pytest.mark.parametrize("objective", ["sharpness", "curvature"])
@pytest.mark.parametrize("direction", ["raise", "lower"])
def test_geometry_teleport_moves_its_objective_at_unchanged_teleport_batch_loss(digits, objective, direction):
    b = digits
    strategy = GeometryTeleport(objective, direction, steps=4, step_norm=0.02, loss_fn=cross_entropy, directions=5)
    measure = strategy.measure(b.X_tele, b.Y_tele, b.weights)
    after = strategy(b.weights, b.X_tele, b.Y_tele)
    before_v, after_v = measure(b.weights).detach(), measure(after).detach()
    sign = 1.0 if direction == "raise" else -1.0
    assert (sign * (after_v - before_v) >= 0).all()  # never the wrong way, for any task
    assert (sign * (after_v - before_v) > 0).sum() >= 2  # and it does move
    rel = (cross_entropy(after, b.X_tele, b.Y_tele) - cross_entropy(b.weights, b.X_tele, b.Y_tele)).abs()
    assert (rel / cross_entropy(b.weights, b.X_tele, b.Y_tele)).max() <= 1e-10


def test_geometry_teleport_validates_its_options():
    with pytest.raises(ConfigError, match="objective"):
        GeometryTeleport("flatness")
    with pytest.raises(ConfigError, match="direction"):
        GeometryTeleport("curvature", "up")


def test_sharpness_works_for_the_regression_loss():
    b = _smooth_regression()
    s = sharpness(b.weights, b.X, b.Y, mlp_loss, radii=(0.1, 0.2), directions=4)
    assert s.shape == (2,) and torch.isfinite(s).all()
