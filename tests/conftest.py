"""Shared helpers for the core-module tests (exposed as fixtures)."""
from __future__ import annotations

from typing import Callable, Sequence

import pytest
import torch

from metatele.symmetry.strategies import normalize_frobenius
from metatele.tasks.family import TaskBatch


def _random_T(weights: Sequence[torch.Tensor], norm: float, seed: int = 0) -> list[torch.Tensor]:
    """One Gaussian ``T`` per consecutive pair, Frobenius norm ``norm`` per task: ``[B, d_m, d_m]``."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for W in weights[:-1]:
        B, d = W.shape[0], W.shape[1]
        t = torch.randn(B, d, d, generator=gen, dtype=torch.float64)
        out.append(normalize_frobenius(t, norm).to(W.dtype))
    return out


def _single(batch: TaskBatch, i: int) -> TaskBatch:
    """Task ``i`` of ``batch`` as a batch of one."""
    return TaskBatch(
        batch.X[i : i + 1], batch.Y[i : i + 1], [w[i : i + 1] for w in batch.weights],
        None if batch.seeds is None else [batch.seeds[i]],
    )


@pytest.fixture
def random_T() -> Callable[..., list[torch.Tensor]]:
    return _random_T


@pytest.fixture
def single() -> Callable[[TaskBatch, int], TaskBatch]:
    return _single


@pytest.fixture(scope="module")
def one_thread():
    """Run a module's tests on one intra-op thread (restored afterwards).

    The tensors here are tiny; with two OpenMP threads on a busy 2-core machine the tests
    run several times slower than on one, so the core-module tests opt in to this.
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
