"""Task families: seeding, splits, distributions and input validation (metatele.tasks.family)."""
from __future__ import annotations

import math

import pytest
import torch

from metatele.configs import ConfigError
from metatele.tasks.mlp import mlp_loss
from metatele.tasks.family import (
    TEST_SEED_OFFSET,
    TaskBatch,
    TaskConfig,
    check_problem,
    is_test_seed,
    sample_tasks,
    training_seeds,
    unseen_seeds,
    validate_dims,
)

pytestmark = pytest.mark.usefixtures("one_thread")


# --- determinism -------------------------------------------------------------------------


def test_seed_gives_identical_task_alone_or_inside_a_batch_of_1000():
    config = TaskConfig()
    seeds = list(training_seeds(500)) + list(unseen_seeds(500))
    batch = sample_tasks(config, seeds)
    for position in (0, 7, 499, 500, 731, 999):
        alone = sample_tasks(config, [seeds[position]])
        assert torch.equal(alone.X[0], batch.X[position])
        assert torch.equal(alone.Y[0], batch.Y[position])
        for w_alone, w_batch in zip(alone.weights, batch.weights):
            assert torch.equal(w_alone[0], w_batch[position])


def test_seed_gives_identical_task_regardless_of_order_and_neighbours():
    config = TaskConfig([6, 5, 4, 3], "gaussian")
    a = sample_tasks(config, [3, 11, 42])
    b = sample_tasks(config, [42, 99, 3])
    assert torch.equal(a.X[2], b.X[0]) and torch.equal(a.X[0], b.X[2])
    assert all(torch.equal(wa[0], wb[2]) for wa, wb in zip(a.weights, b.weights))


def test_float32_task_is_the_float64_task_rounded():
    config = TaskConfig([5, 4, 3, 2], "gaussian")
    t32 = sample_tasks(config, [5, 6], dtype=torch.float32)
    t64 = sample_tasks(config, [5, 6], dtype=torch.float64)
    assert t32.X.dtype == torch.float32 and t64.X.dtype == torch.float64
    assert torch.equal(t64.X.float(), t32.X)
    assert all(torch.equal(a.float(), b) for a, b in zip(t64.weights, t32.weights))


def test_different_seeds_give_different_tasks():
    batch = sample_tasks(TaskConfig(), [0, 1])
    assert not torch.equal(batch.X[0], batch.X[1])
    assert not torch.equal(batch.weights[0][0], batch.weights[0][1])


def test_batch_records_its_seeds():
    seeds = list(unseen_seeds(3))
    assert sample_tasks(TaskConfig(), seeds).seeds == seeds


# --- seed splits -------------------------------------------------------------------------


def test_training_and_unseen_seed_ranges_are_disjoint():
    train = training_seeds(1000, start=TEST_SEED_OFFSET - 1000)  # the last training seeds
    test = unseen_seeds(1000)  # the first test seeds
    assert max(train) < min(test)
    assert not set(train) & set(test)
    assert not any(is_test_seed(s) for s in train)
    assert all(is_test_seed(s) for s in test)


def test_seed_split_boundaries():
    assert not is_test_seed(0)
    assert not is_test_seed(TEST_SEED_OFFSET - 1)
    assert is_test_seed(TEST_SEED_OFFSET)
    assert is_test_seed(2 * TEST_SEED_OFFSET - 1)
    assert not is_test_seed(2 * TEST_SEED_OFFSET)
    assert list(training_seeds(3, start=5)) == [5, 6, 7]
    assert list(unseen_seeds(2, start=4)) == [TEST_SEED_OFFSET + 4, TEST_SEED_OFFSET + 5]


@pytest.mark.parametrize(
    "make",
    [
        lambda: training_seeds(2, start=TEST_SEED_OFFSET - 1),  # would cross into test seeds
        lambda: training_seeds(1, start=-1),
        lambda: unseen_seeds(2, start=TEST_SEED_OFFSET - 1),  # would leave the test split
        lambda: unseen_seeds(1, start=-1),
    ],
)
def test_seed_ranges_outside_their_split_are_rejected(make):
    with pytest.raises(ValueError):
        make()


@pytest.mark.parametrize("seed", [-1, 2 * TEST_SEED_OFFSET, 2 * TEST_SEED_OFFSET + 5])
def test_out_of_range_seed_is_rejected(seed):
    with pytest.raises(ValueError, match=f"seed {seed}"):
        sample_tasks(TaskConfig(), [0, seed])


def test_empty_seed_list_is_rejected():
    with pytest.raises(ValueError, match="seeds"):
        sample_tasks(TaskConfig(), [])


# --- distributions and shapes ------------------------------------------------------------


def test_uniform_task_shapes_and_entries_in_unit_interval():
    config = TaskConfig([7, 5, 4, 3], "uniform")
    batch = sample_tasks(config, range(4), dtype=torch.float64)
    assert batch.X.shape == (4, 5, 7) and batch.Y.shape == (4, 3, 7)
    assert [tuple(w.shape) for w in batch.weights] == [(4, 4, 5), (4, 3, 4)]
    for t in [batch.X, batch.Y, *batch.weights]:
        assert t.min() >= 0 and t.max() <= 1


def test_gaussian_weights_have_variance_one_over_fan_in():
    config = TaskConfig([10, 40, 30, 20], "gaussian")
    batch = sample_tasks(config, range(200), dtype=torch.float64)
    for w in batch.weights:
        fan_in = w.shape[-1]
        assert abs(w.var().item() * fan_in - 1) < 0.05
        assert abs(w.mean().item()) < 0.01
    assert abs(batch.X.var().item() - 1) < 0.05 and (batch.X < 0).any()
    assert abs(batch.Y.var().item() - 1) < 0.05


def test_reference_task_initial_loss_is_about_5e5():
    batch = sample_tasks(TaskConfig(), unseen_seeds(20), dtype=torch.float64)
    median = mlp_loss(batch.weights, batch.X, batch.Y).median().item()
    assert 3e5 < median < 7e5  # docs/tasks.md: "about 4.5e5"; mean at step 0 over 5 seeds 4.8e5


def test_task_config_derived_sizes():
    config = TaskConfig([8, 5, 4, 3, 2])
    assert config.n_samples == 8
    assert config.widths == [5, 4, 3, 2]
    assert config.weight_shapes == [(4, 5), (3, 4), (2, 3)]
    assert config.n_pairs == 2


def test_task_batch_to_changes_dtype_and_keeps_seeds():
    batch = sample_tasks(TaskConfig([4, 3, 3, 2]), [1, 2]).to(dtype=torch.float64)
    assert batch.X.dtype == torch.float64 and all(w.dtype == torch.float64 for w in batch.weights)
    assert batch.seeds == [1, 2] and batch.batch_size == 2


# --- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "dims, fragment",
    [
        ([20, 20], "at least 3 entries"),
        ([20], "at least 3 entries"),
        ([20, 0, 20], "entry 1"),
        ([20, 20, -3], "entry 2"),
        ([0, 20, 20], "entry 0"),
        ([20, 2.5, 20], "entry 1"),
        ([20, True, 20], "entry 1"),
    ],
)
def test_bad_dims_raise_config_error_naming_the_field(dims, fragment):
    with pytest.raises(ConfigError, match="task.dims") as info:
        TaskConfig(dims)
    assert fragment in str(info.value)
    assert isinstance(info.value, ValueError)


def test_validate_dims_names_the_given_field_and_rejects_non_lists():
    with pytest.raises(ConfigError, match="my.dims"):
        validate_dims([3, 3], "my.dims")
    with pytest.raises(ValueError, match="dims"):
        validate_dims("20,20,20")
    assert validate_dims((4, 3, 2)) == [4, 3, 2]


def test_unknown_distribution_raises_config_error_naming_the_field():
    with pytest.raises(ConfigError, match="task.distribution"):
        TaskConfig(distribution="laplace")


def _problem(B=2, n=5, widths=(4, 3, 2)):
    X = torch.randn(B, widths[0], n)
    weights = [torch.randn(B, widths[i + 1], widths[i]) for i in range(len(widths) - 1)]
    Y = torch.randn(B, widths[-1], n)
    return weights, X, Y


def test_check_problem_accepts_consistent_shapes():
    weights, X, Y = _problem()
    check_problem(weights, X, Y)
    check_problem(weights, X)


@pytest.mark.parametrize(
    "corrupt, name",
    [
        (lambda w, X, Y: (w, X[0], Y), "X"),
        (lambda w, X, Y: ([w[0][:1], w[1]], X, Y), r"weights\[0\].*batch size"),
        (lambda w, X, Y: ([w[0], w[1][:, :, :2]], X, Y), r"weights\[1\].*input width"),
        (lambda w, X, Y: ([w[0], w[1][0]], X, Y), r"weights\[1\]"),
        (lambda w, X, Y: (w, X, Y[:, :, :3]), "Y"),
        (lambda w, X, Y: (w, X, Y[:1]), "Y"),
        (lambda w, X, Y: ([], X, Y), "weights"),
    ],
)
def test_mismatched_shapes_raise_value_error_naming_the_tensor(corrupt, name):
    weights, X, Y = corrupt(*_problem())
    with pytest.raises(ValueError, match=name):
        check_problem(weights, X, Y)
    with pytest.raises(ValueError, match=name):
        mlp_loss(weights, X, Y)


def test_task_batch_validates_shapes_on_construction():
    weights, X, Y = _problem()
    with pytest.raises(ValueError, match="Y"):
        TaskBatch(X, Y[:, :1], weights)


@pytest.mark.parametrize(
    "target, name", [("X", "X"), ("Y", "Y"), ("w0", r"weights\[0\]"), ("w1", r"weights\[1\]")]
)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_check_finite_names_the_tensor_and_task(target, name, bad):
    batch = sample_tasks(TaskConfig([4, 3, 3, 2]), range(3))
    tensor = {"X": batch.X, "Y": batch.Y, "w0": batch.weights[0], "w1": batch.weights[1]}[target]
    tensor[2, 0, 1] = bad
    with pytest.raises(ValueError, match=name) as info:
        batch.check_finite()
    assert "tasks [2]" in str(info.value)


def test_check_finite_passes_on_finite_data():
    sample_tasks(TaskConfig(), range(3)).check_finite()
