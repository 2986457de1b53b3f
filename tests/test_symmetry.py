"""The group action on consecutive layer pairs and teleportation (metatele.symmetry.action)."""
from __future__ import annotations

import warnings

import pytest
import torch

from metatele.tasks.mlp import loss_and_grads, mlp_loss, sigma, sigma_inv
from metatele.symmetry.action import (
    SymmetryWarning,
    apply_pinv,
    group_action,
    loss_change,
    non_symmetric_pairs,
    teleport,
)
from metatele.tasks.family import TaskConfig, sample_tasks, training_seeds

# dims = [n, d0, ..., dL] with 2..5 weight matrices and n ≤ every teleported layer's input
# width (d0 .. d_{L-2}). The last two have d_{L-1} = 6 < n = 8, which is allowed: W_L is only
# ever the U of a pair, never the V.
SYMMETRIC_DIMS = [
    [20, 20, 20, 20],  # the paper's reference size: square h, two matrices, one pair
    [8, 9, 10, 7],  # 2 matrices
    [8, 12, 10, 9, 11],  # 3
    [8, 10, 12, 9, 6, 3],  # 4
    [8, 10, 12, 9, 11, 6, 3],  # 5
]
DISTRIBUTIONS = ["uniform", "gaussian"]

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def _symmetry_warnings_are_errors():
    """Inside this module an unexpected SymmetryWarning fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", SymmetryWarning)
        yield


# --- exact teleport keeps the loss -------------------------------------------------------


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("dims", SYMMETRIC_DIMS, ids=str)
@pytest.mark.parametrize("dtype, tol", [(torch.float64, 1e-10), (torch.float32, 1e-4)], ids=["f64", "f32"])
def test_exact_teleport_keeps_every_tasks_loss(distribution, dims, dtype, tol, random_T):
    batch = sample_tasks(TaskConfig(dims, distribution), training_seeds(256), dtype=dtype)
    assert non_symmetric_pairs(batch.weights, batch.X) == []
    for norm in (1e-3, 0.1, 0.5):
        T = random_T(batch.weights, norm, seed=1)
        change = loss_change(batch.weights, batch.X, batch.Y, T)
        assert change.shape == (256,)
        worst = change.abs().max().item()
        assert worst <= tol, f"‖T‖={norm}: relative loss change {worst:.2e} > {tol}"


@pytest.mark.parametrize("distribution", DISTRIBUTIONS)
@pytest.mark.parametrize("dims", SYMMETRIC_DIMS, ids=str)
def test_exact_teleport_changes_the_gradient(distribution, dims, random_T):
    batch = sample_tasks(TaskConfig(dims, distribution), training_seeds(16), dtype=torch.float64)
    new = teleport(batch.weights, batch.X, random_T(batch.weights, 0.5, seed=2))
    _, g0 = loss_and_grads(batch.weights, batch.X, batch.Y)
    _, g1 = loss_and_grads(new, batch.X, batch.Y)
    diff = sum((a - b).square().sum(dim=(1, 2)) for a, b in zip(g0, g1)).sqrt()
    norm = sum(a.square().sum(dim=(1, 2)) for a in g0).sqrt()
    assert (diff / norm).min() > 1e-3  # every task's gradient moved
    assert all(not torch.allclose(a, b) for a, b in zip(batch.weights, new))


def test_loss_change_of_exact_teleport_is_the_measured_relative_change(random_T):
    batch = sample_tasks(TaskConfig([6, 8, 7, 5], "gaussian"), range(3), dtype=torch.float64)
    T = random_T(batch.weights, 0.2)
    before = mlp_loss(batch.weights, batch.X, batch.Y)
    after = mlp_loss(teleport(batch.weights, batch.X, T, exact=False), batch.X, batch.Y)
    torch.testing.assert_close(
        loss_change(batch.weights, batch.X, batch.Y, T, exact=False), (after - before) / before
    )


def _reference_teleport(weights, X, T, literal):
    """Loop form: literal V' = σ⁻¹(g σ(V h)) h⁺, or the minimal change V + (σ⁻¹(g σ(V h)) − V h) h⁺."""
    W = [w.clone() for w in weights]
    h = X
    for m in range(len(W) - 1):
        g = torch.eye(W[m].shape[1], dtype=torch.float64) + T[m]
        A = sigma_inv(g @ sigma(W[m] @ h))
        W[m] = A @ torch.linalg.pinv(h) if literal else W[m] + (A - W[m] @ h) @ torch.linalg.pinv(h)
        W[m + 1] = W[m + 1] @ torch.linalg.inv(g)
        h = sigma(W[m] @ h)
    return W


@pytest.mark.parametrize("dims,tasks,literal,tol", [
    ([5, 6, 7, 4, 3], 2, False, 1e-9),  # pair by pair, h recomputed; U' = U g⁻¹; V' h = σ⁻¹(g σ(V h))
    ([6, 6, 6, 6, 3], 3, True, 1e-8),   # square inputs: equals the paper's formula V' = σ⁻¹(g σ(V h)) h⁻¹
])
def test_teleport_matches_the_reference_group_action(random_T, dims, tasks, literal, tol):
    batch = sample_tasks(TaskConfig(dims, "gaussian"), range(tasks), dtype=torch.float64)
    T = random_T(batch.weights, 0.3)
    new = teleport(batch.weights, batch.X, T)
    for a, b in zip(new, _reference_teleport(batch.weights, batch.X, T, literal=literal)):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_identity_element_leaves_weights_unchanged_when_n_below_width():
    """g = I is the identity even for n < d (no projection of V onto the data span)."""
    batch = sample_tasks(TaskConfig([4, 8, 7, 6, 3], "gaussian"), range(3), dtype=torch.float64)
    T = [torch.zeros(3, w.shape[1], w.shape[1], dtype=torch.float64) for w in batch.weights[:-1]]
    for a, b in zip(teleport(batch.weights, batch.X, T), batch.weights):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_teleport_does_not_modify_its_input(random_T):
    batch = sample_tasks(TaskConfig([4, 5, 5, 3]), range(2), dtype=torch.float64)
    copies = [w.clone() for w in batch.weights]
    teleport(batch.weights, batch.X, random_T(batch.weights, 0.3))
    assert all(torch.equal(a, b) for a, b in zip(copies, batch.weights))


# --- first-order (paper) form ------------------------------------------------------------


@pytest.mark.parametrize(
    "distribution, dims", [("uniform", [20, 20, 20, 20]), ("gaussian", [8, 12, 10, 9, 11])]
)
def test_first_order_loss_change_scales_with_norm_squared(distribution, dims, random_T):
    batch = sample_tasks(TaskConfig(dims, distribution), training_seeds(16), dtype=torch.float64)
    direction = random_T(batch.weights, 1.0, seed=3)
    for eps in (0.02, 0.01):
        full = loss_change(batch.weights, batch.X, batch.Y, [eps * d for d in direction], exact=False)
        half = loss_change(batch.weights, batch.X, batch.Y, [eps / 2 * d for d in direction], exact=False)
        ratio = full / half
        assert ((ratio > 3) & (ratio < 5)).all(), ratio
        exact = loss_change(batch.weights, batch.X, batch.Y, [eps * d for d in direction])
        assert (full.abs() > 1e3 * exact.abs().clamp_min(1e-300)).all()  # first order is far off


def test_first_order_form_uses_u_times_identity_minus_T(random_T):
    batch = sample_tasks(TaskConfig([5, 6, 4, 3]), range(2), dtype=torch.float64)
    T = random_T(batch.weights, 0.1)
    exact = teleport(batch.weights, batch.X, T, exact=True)
    paper = teleport(batch.weights, batch.X, T, exact=False)
    torch.testing.assert_close(paper[0], exact[0])  # V' is the same formula
    I = torch.eye(4, dtype=torch.float64)
    torch.testing.assert_close(paper[1], batch.weights[1] @ (I - T[0]))
    torch.testing.assert_close(exact[1], batch.weights[1] @ torch.linalg.inv(I + T[0]))


def test_reference_first_order_change_is_small_but_not_zero(random_T):
    """docs/symmetry.md: about −0.14 on a loss of 5e5 at ‖T‖ = 0.01 (order 1e-7 relative)."""
    batch = sample_tasks(TaskConfig(), training_seeds(8), dtype=torch.float64)
    change = loss_change(batch.weights, batch.X, batch.Y, random_T(batch.weights, 0.01), exact=False)
    assert (change.abs() > 1e-9).all() and (change.abs() < 1e-5).all()


# --- group_action ------------------------------------------------------------------------


def test_group_action_with_g_equals_teleport_with_g_minus_identity(random_T):
    batch = sample_tasks(TaskConfig([6, 8, 7, 9, 4], "gaussian"), range(5), dtype=torch.float64)
    g = [torch.linalg.matrix_exp(t) for t in random_T(batch.weights, 0.4)]
    via_g = group_action(batch.weights, batch.X, g)
    via_T = teleport(batch.weights, batch.X, [gm - torch.eye(gm.shape[-1], dtype=gm.dtype) for gm in g])
    for a, b in zip(via_g, via_T):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    assert loss_change(batch.weights, batch.X, batch.Y, [gm - torch.eye(gm.shape[-1], dtype=gm.dtype) for gm in g]).abs().max() < 1e-10


def test_group_action_with_identity_is_identity_for_square_inputs():
    batch = sample_tasks(TaskConfig([7, 7, 7, 7, 3], "gaussian"), range(3), dtype=torch.float64)
    g = [torch.eye(7, dtype=torch.float64).expand(3, 7, 7)] * 2
    for a, b in zip(group_action(batch.weights, batch.X, g), batch.weights):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


def test_none_entry_skips_a_pair(random_T):
    batch = sample_tasks(TaskConfig([6, 8, 7, 9, 5, 4], "gaussian"), range(3), dtype=torch.float64)
    T = random_T(batch.weights, 0.3)
    only_second = teleport(batch.weights, batch.X, [None, T[1], None])
    assert torch.equal(only_second[0], batch.weights[0])  # pair 0 untouched
    assert not torch.allclose(only_second[1], batch.weights[1])
    assert not torch.allclose(only_second[2], batch.weights[2])
    assert torch.equal(only_second[3], batch.weights[3])
    nothing = group_action(batch.weights, batch.X, [None, None, None])
    assert all(torch.equal(a, b) for a, b in zip(nothing, batch.weights))
    assert loss_change(batch.weights, batch.X, batch.Y, [None, T[1], None]).abs().max() < 1e-10


def test_batched_teleport_equals_a_loop_over_single_tasks(random_T, single):
    batch = sample_tasks(TaskConfig([6, 8, 7, 9, 4], "gaussian"), range(6), dtype=torch.float64)
    T = random_T(batch.weights, 0.3)
    batched = teleport(batch.weights, batch.X, T)
    for i in range(6):
        one = single(batch, i)
        alone = teleport(one.weights, one.X, [t[i : i + 1] for t in T])
        for a, b in zip(batched, alone):
            torch.testing.assert_close(a[i : i + 1], b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "bad_g, fragment",
    [
        (lambda B: [torch.eye(5).expand(B, 5, 5).clone(), None], r"pair 0 must be \[B, d_m, d_m\]"),
        (lambda B: [None, torch.eye(4).expand(B + 1, 4, 4).clone()], r"pair 1 must be \[B, d_m, d_m\]"),
        (lambda B: [torch.eye(6)], "one group element per consecutive pair"),
        (lambda B: [None, None, None], "one group element per consecutive pair"),
        (lambda B: [torch.eye(6)[None].expand(B, 6, 6)[..., :5], None], "pair 0"),
    ],
)
def test_wrong_group_element_shapes_raise_value_error(bad_g, fragment):
    batch = sample_tasks(TaskConfig([4, 5, 6, 4, 3]), range(2))
    with pytest.raises(ValueError, match=fragment):
        group_action(batch.weights, batch.X, bad_g(2))


def test_group_action_rejects_mismatched_weights():
    batch = sample_tasks(TaskConfig([4, 5, 6, 4]), range(2))
    with pytest.raises(ValueError, match=r"weights\[1\]"):
        group_action([batch.weights[0], batch.weights[1][:1]], batch.X, [None])


# --- not a symmetry: n > d_{m-1} ---------------------------------------------------------


def test_non_symmetric_pair_warns_and_loss_change_measures_the_change(random_T):
    batch = sample_tasks(TaskConfig([12, 8, 10, 6], "gaussian"), range(4), dtype=torch.float64)
    assert non_symmetric_pairs(batch.weights, batch.X) == [0]
    T = random_T(batch.weights, 0.3)
    with pytest.warns(SymmetryWarning, match="NOT a symmetry"):
        teleport(batch.weights, batch.X, T)
    with pytest.warns(SymmetryWarning):
        group_action(batch.weights, batch.X, [torch.eye(10, dtype=torch.float64) + T[0]])
    change = loss_change(batch.weights, batch.X, batch.Y, T)  # no warning: it measures
    assert (change.abs() > 1e-6).all()


def test_warning_is_only_for_teleported_non_symmetric_pairs(random_T):
    # pair 0 has input width 12 ≥ n = 10; pair 1 has input width 8 < n
    batch = sample_tasks(TaskConfig([10, 12, 8, 9, 5], "gaussian"), range(3), dtype=torch.float64)
    assert non_symmetric_pairs(batch.weights, batch.X) == [1]
    T = random_T(batch.weights, 0.3)
    teleport(batch.weights, batch.X, [T[0], None])  # symmetric: no warning (errors here)
    assert loss_change(batch.weights, batch.X, batch.Y, [T[0], None]).abs().max() < 1e-10
    with pytest.warns(SymmetryWarning, match=r"pairs \[1\]"):
        teleport(batch.weights, batch.X, [None, T[1]])
    assert (loss_change(batch.weights, batch.X, batch.Y, [None, T[1]]).abs() > 1e-6).all()


def test_warn_false_silences_the_warning(random_T):
    batch = sample_tasks(TaskConfig([12, 8, 10, 6]), range(2), dtype=torch.float64)
    T = random_T(batch.weights, 0.1)
    with pytest.warns(SymmetryWarning):  # 12 samples through a layer input of width 8: the action warns...
        teleport(batch.weights, batch.X, T)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # ...and with warn=False any warning would fail this test
        teleport(batch.weights, batch.X, T, warn=False)


# --- pseudo-inverse ----------------------------------------------------------------------


@pytest.mark.parametrize("d, n", [(9, 5), (6, 6), (4, 7)])
def test_apply_pinv_equals_a_times_pinv_h(d, n):
    gen = torch.Generator().manual_seed(0)
    A = torch.randn(3, 5, n, generator=gen, dtype=torch.float64)
    h = torch.randn(3, d, n, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(apply_pinv(A, h), A @ torch.linalg.pinv(h), rtol=1e-9, atol=1e-9)
