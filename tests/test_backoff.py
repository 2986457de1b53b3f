"""The update safeguard's step-size backoff (``coordinatewise.update_backoff``).

With the safeguard alone, a trajectory whose learned steps have grown too large for its current
basin stands still forever (the refused step is proposed again, the same size). The backoff
keeps a per-trajectory scale ``σ`` in the update's state: a refusal shrinks it, an accepted step
grows it back towards 1.
"""
from __future__ import annotations

import pytest
import torch

from helpers import coordinatewise_learned, same_parameters, tiny

from metatele.meta.checkpointer import TrainingCheckpointer, resumable_callback
from metatele.meta.config import MetaTrainConfig
from metatele.meta.train import meta_train
from metatele.optimizers.coordinatewise import CoordinatewiseConfig
from metatele.optimizers.coordinatewise_step import join_step_scale, next_step_scale, split_step_scale
from metatele.optimizers.learned import LearnedOptimizer, LearnedState
from metatele.meta.engine import UnrollEngine
from metatele.tasks.family import TaskConfig, sample_tasks
from metatele.tasks.mlp import mlp_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_scale_shrinks_on_a_refusal_grows_back_to_one_and_restarts_at_one_with_a_new_trajectory():
    scale = torch.tensor([1.0, 0.5, 0.25, 1e-12], dtype=torch.float64).log().view(1, -1, 1)  # log σ
    taken = torch.tensor([True, False, True, False])
    new = next_step_scale(scale, taken, backoff=0.5, regrow=1.5)
    assert new.exp().flatten().tolist() == pytest.approx([1.0, 0.25, 0.375, 1e-12])  # capped at 1, floored
    state = (torch.zeros(4, 4, 3, dtype=torch.float64), torch.full((1, 4, 1), 7.0, dtype=torch.float64))
    joined = join_step_scale(state, new)
    assert joined[1].shape == (2, 4, 1)
    own, back = split_step_scale(joined)
    assert torch.equal(own[1], state[1]) and torch.equal(back, new) and own[0] is state[0]
    assert split_step_scale(state) == (state, None) and split_step_scale(None) == (None, None)
    # a slot that starts a new trajectory is zeroed: its σ is 1 again, the others keep theirs
    keep = torch.tensor([True, True, False, False])
    _, after = split_step_scale(LearnedState(joined, []).reset(keep).update)
    assert after.exp().flatten().tolist() == pytest.approx([1.0, 0.25, 1.0, 1.0])


def run(opt: LearnedOptimizer, batch, steps: int):
    W, state, losses, scales = batch.weights, opt.initial_state(batch.X.shape[0], dtype=torch.float64), [], []
    with torch.no_grad():
        for _ in range(steps):
            W, loss, _, state = opt.step(W, batch.X, batch.Y, state)
            losses.append(loss)
            scales.append(split_step_scale(state.update)[1])
    losses.append(mlp_loss(W, batch.X, batch.Y))
    return torch.stack(losses), scales


def adam_like(task: TaskConfig, variant: str, lr: float, **cw) -> LearnedOptimizer:
    """An untrained coordinatewise optimizer: m1 is Adam at ``lr`` (``tele``: the base Adam is)."""
    tele = {"safeguard_tol": 0.0} if variant != "update" else {}
    return LearnedOptimizer(task, coordinatewise_learned(variant, lr, update_safeguard=True, **tele, **cw)).double()


@pytest.mark.parametrize("variant", ["update", "tele"])
def test_backoff_follows_the_refusals_and_unstalls_a_too_large_step(variant):
    task = TaskConfig([6, 8, 8, 4], "gaussian")
    batch = sample_tasks(task, range(8), dtype=torch.float64)
    stalled, _ = run(adam_like(task, variant, 1.0), batch, 60)
    backed, scales = run(adam_like(task, variant, 1.0, update_backoff=0.5, update_regrow=1.25), batch, 60)
    assert not (backed[1:] > backed[:-1]).any()  # still a safeguard: no rise
    if variant == "update":  # no teleport: the loss falls exactly where the update was taken
        # the scale is exactly the product of the backoffs and regrowths of the refusals seen
        expect = torch.ones(8, dtype=torch.float64)
        for t, s in enumerate(scales):
            taken = backed[t + 1] < backed[t]
            expect = torch.where(taken, (expect * 1.25).clamp(max=1.0), expect * 0.5)
            assert torch.allclose(s.exp().flatten(), expect)
    assert (scales[-1] < 0).any()  # some trajectories did back off (log σ < 0)
    # the safeguard alone stands still on tasks where the rate is too large; the backoff goes on
    assert (stalled[-1] == stalled[-10]).any()
    assert (backed[-1] < stalled[-1]).sum() >= 6 and (backed[-1] <= stalled[-1]).all()


def test_backoff_needs_the_safeguard_and_valid_factors():
    for kw, field in (({"update_backoff": 0.5}, "update_backoff"),
                      ({"update_safeguard": True, "update_backoff": 1.0}, "update_backoff"),
                      ({"update_safeguard": True, "update_backoff": 0.0}, "update_backoff"),
                      ({"update_safeguard": True, "update_backoff": 0.5, "update_regrow": 0.9}, "update_regrow")):
        with pytest.raises(ValueError, match=f"coordinatewise.{field}"):
            CoordinatewiseConfig(**kw)


BACKOFF = {"learned.arch": "coordinatewise", "learned.coordinatewise.lr": 0.5,
           "learned.coordinatewise.update_safeguard": True, "learned.coordinatewise.update_backoff": 0.5}


def test_the_meta_gradient_flows_through_the_scaled_step_and_the_scale_is_carried():
    config = MetaTrainConfig.from_dict(tiny(**BACKOFF, steps=12, unroll=4))
    eng = UnrollEngine(config)
    eng.meta_step()
    grads = [p.grad for p in eng.optimizer.update.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads) and sum(float(g.abs().sum()) for g in grads) > 0
    count, log_scale = eng.trajectories.state.update[1]
    assert torch.all(count == 4) and torch.all(log_scale <= 0) and (log_scale < 0).any()


def test_a_run_with_backoff_resumes_bitwise(tmp_path):
    config = MetaTrainConfig.from_dict(tiny(**BACKOFF, steps=40, unroll=5, trajectories=8, batch_size=4))
    ref = meta_train(config, progress=False)
    cb = TrainingCheckpointer(config, tmp_path, every=1, keep=2, handle_signals=False)
    eng = UnrollEngine(config)
    for _ in range(3):
        cb(eng, eng.meta_step())
    assert eng.trajectories.state.update[1].shape[0] == 2  # the scale is in the saved state
    eng, cb = resumable_callback(config, tmp_path, resume=True, every=1, keep=2, handle_signals=False)
    res = meta_train(config, progress=False, callback=cb, engine=eng)
    assert same_parameters(res.optimizer.state_dict(), ref.optimizer.state_dict())
    plain = meta_train(MetaTrainConfig.from_dict(tiny(**{**BACKOFF, "learned.coordinatewise.update_backoff": None},
                                                      steps=40, unroll=5, trajectories=8, batch_size=4)),
                       progress=False)
    assert not same_parameters(plain.optimizer.state_dict(), ref.optimizer.state_dict())
