"""The coordinatewise optimizer's fast path equals its reference path (docs/performance.md).

The fast path runs m1's and m2's MLPs with the features first
(:func:`metatele.optimizers.coordinate_mlp.mlp_columns`); the reference path is the row layout the
optimizer had before (``features_first = False``, which tests/test_stability.py holds bit for bit
to a stored reference). The two compute the same function in a different summation order, so they
agree to rounding: the meta-gradients of a five-step second-order unroll to 1e-12 relative in
float64, and in float32 to 1e-5 (measured: at most 9e-7, about 15 float32 roundings).
"""
from __future__ import annotations

import pytest
import torch

from metatele.optimizers.baselines import BaselineConfig
from metatele.optimizers.coordinatewise import CoordinatewiseConfig
from metatele.optimizers.learned import LearnedConfig, LearnedOptimizer
from metatele.symmetry.action import input_qr
from metatele.tasks.family import TaskConfig, sample_tasks

pytestmark = pytest.mark.usefixtures("one_thread")


def unroll(variant: str, features_first: bool, dtype: torch.dtype, **cw) -> dict[str, torch.Tensor]:
    """Five second-order steps of a perturbed coordinatewise optimizer on 3 tasks: the final
    weights and the meta-gradient of the summed log losses, by parameter name."""
    torch.manual_seed(0)
    task = TaskConfig([8, 6, 7, 4], "gaussian", bias=True)
    config = LearnedConfig(variant=variant, arch="coordinatewise", base=BaselineConfig(name="adam", lr=0.01),
                           coordinatewise=CoordinatewiseConfig(**cw))
    opt = LearnedOptimizer(task, config).to(dtype)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # trained-looking meta-parameters: the output layers start at zero
        for p in opt.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=dtype))
    for m in opt.modules():
        if hasattr(m, "features_first"):
            m.features_first = features_first
    batch = sample_tasks(task, range(3), dtype=dtype)
    W, state, total = batch.weights, opt.initial_state(3, dtype=dtype), 0.0
    x_qr = input_qr(W, batch.X)
    for _ in range(5):
        W, loss, _, state = opt.step(W, batch.X, batch.Y, state, second_order=True, x_qr=x_qr)
        total = total + loss.log().sum()
    names = [n for n, _ in opt.named_parameters()]
    out = dict(zip(names, torch.autograd.grad(total, list(opt.parameters()))))
    out.update({f"weights.{i}": w.detach() for i, w in enumerate(W)})
    return out


@pytest.mark.parametrize("variant", ["update", "update+tele", "lr+tele"])
@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.float64, 1e-12)])
def test_fast_path_meta_gradients_equal_the_reference_paths(variant, dtype, tol):
    fast, ref = unroll(variant, True, dtype), unroll(variant, False, dtype)
    assert fast.keys() == ref.keys()
    for k in ref:
        rel = float((fast[k] - ref[k]).norm() / ref[k].norm())
        assert rel <= tol, (k, rel)
    # the layouts do differ (a test that could not tell them apart would prove nothing)
    assert any(not torch.equal(fast[k], ref[k]) for k in ref)


def test_fast_path_with_the_stability_options_and_a_learned_gate():
    options = dict(update_bound=0.5, update_safeguard=True, update_backoff=0.5, time_feature=True,
                   ablation={"gate": "learned"})
    fast, ref = unroll("update+tele", True, torch.float64, **options), unroll("update+tele", False, torch.float64, **options)
    for k in ref:
        assert float((fast[k] - ref[k]).norm() / ref[k].norm()) <= 1e-12, k
