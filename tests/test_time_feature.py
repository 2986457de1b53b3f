"""The coordinatewise m1's optional step-count feature (``time_feature``): what lets it learn a
step-size schedule (every other feature is scale-free and blind to the point of a trajectory)."""
from __future__ import annotations

import math

import torch

from metatele.optimizers.coordinatewise import CoordinatewiseConfig, CoordinateUpdate
from metatele.tasks.family import TaskConfig, sample_tasks
from metatele.tasks.mlp import loss_and_grads


def test_m1_reads_log10_of_the_step_count_and_schedules_its_step_with_it():
    batch = sample_tasks(TaskConfig([8, 5, 6, 3], "gaussian"), range(2), dtype=torch.float64)
    W = batch.weights
    _, grads = loss_and_grads(W, batch.X, batch.Y)
    m1 = CoordinateUpdate(CoordinatewiseConfig(time_feature=True)).double()
    plain = CoordinateUpdate(CoordinatewiseConfig()).double()
    P = sum(w[0].numel() for w in W)
    for t in (0, 9, 999):  # the state after t steps: the features are those of step t + 1
        state = m1.initial_state(W)
        state = (state[0], torch.full_like(state[1], float(t)))
        x, _, _ = m1.features(W, grads, state, batch.X.shape[1])
        assert x.shape == (2, P, 10)
        assert torch.allclose(x[..., -1], torch.full((2, P), math.log10(t + 1) / 3, dtype=torch.float64))
        x_plain, _, _ = plain.features(W, grads, state, batch.X.shape[1])
        assert torch.equal(x[..., :-1], x_plain)  # the nine features of before, unchanged
    # with the step-count input's weights at zero, m1 is the plain m1 with the same other weights;
    # with them non-zero, the same gradients, moments and step count give a different step
    torch.manual_seed(0)
    with torch.no_grad():
        for p in m1.net.parameters():
            p.add_(0.3 * torch.randn_like(p))
        for mine, theirs in zip(m1.net.parameters(), plain.net.parameters()):
            theirs.copy_(mine[:, :-1] if mine.shape != theirs.shape else mine)
    state = m1.initial_state(W)
    state = (state[0], torch.full_like(state[1], 999.0))
    x, _, _ = m1.features(W, grads, state, batch.X.shape[1])
    with_time, without = m1.net(x), plain.net(x[..., :-1])  # m1's raw outputs: step size and direction
    assert (with_time - without).abs().max() > 1e-3
    with torch.no_grad():
        m1.net[0].weight[:, -1] = 0
    torch.testing.assert_close(m1.net(x), without, rtol=1e-12, atol=0)
