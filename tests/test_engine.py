"""The unroll engine: meta-gradients, batching, divergence handling, determinism."""
import math

import numpy as np
import pytest
import torch

from helpers import tiny

from metatele.meta.engine import DivergenceError, UnrollEngine
from metatele.meta.train import meta_train
from metatele.meta.config import MetaTrainConfig
from metatele.optimizers.baselines import BaselineConfig, run_baseline
from metatele.optimizers.learned import LearnedConfig, LearnedOptimizer
from metatele.optimizers.lstm import LSTMConfig, TeleportConfig
from metatele.tasks.family import TaskConfig, sample_tasks
from metatele.tasks.mlp import mlp_loss


def small_config(**kw) -> MetaTrainConfig:
    return MetaTrainConfig.from_dict(tiny(**kw))


def meta_grads(engine: UnrollEngine) -> list[torch.Tensor]:
    engine.compute_meta_gradient()
    return [p.grad.detach().clone() for p in engine.meta_parameters]


def test_meta_gradient_reaches_both_lstms():
    eng = UnrollEngine(small_config())
    eng.compute_meta_gradient()
    for name, module in [("m1", eng.optimizer.update), ("m2", eng.optimizer.teleports)]:
        grads = [p.grad for p in module.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads), name
        assert sum(g.abs().sum() for g in grads) > 0, name


@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize("variant", ["update+tele", "lr+tele"])
def test_batch_meta_gradient_is_mean_of_single_task_meta_gradients(second_order, variant):
    B = 3
    kw = {"second_order": second_order, "learned.variant": variant}
    batched = meta_grads(UnrollEngine(small_config(batch_size=B, **kw)))
    singles = [
        meta_grads(UnrollEngine(small_config(batch_size=1, trajectories=1, train_seed_start=b, **kw)))
        for b in range(B)
    ]
    for i, g in enumerate(batched):
        mean = sum(s[i] for s in singles) / B
        rel = ((g - mean).norm() / mean.norm()).item()
        assert rel <= 1e-6, (i, rel)


def test_second_order_differs_from_first_order():
    g1 = meta_grads(UnrollEngine(small_config(second_order=False)))
    g2 = meta_grads(UnrollEngine(small_config(second_order=True)))
    assert any(not torch.allclose(a, b) for a, b in zip(g1, g2))


def test_nan_in_one_trajectory_is_masked_counted_and_restarted():
    eng = UnrollEngine(small_config(trajectories=100))
    eng.trajectories.W[0][1] = float("nan")  # poison trajectory 1
    seed_before = int(eng.trajectories.seeds[1])
    metrics = eng.meta_step()
    assert metrics["diverged"] == 1 and eng.diverged_total == 1
    for p in eng.meta_parameters:
        assert torch.isfinite(p).all()
    assert int(eng.trajectories.seeds[1]) != seed_before  # restarted from a new training seed
    assert all(torch.isfinite(w).all() for w in eng.trajectories.W)
    # training goes on normally afterwards
    metrics = eng.meta_step()
    assert metrics["diverged"] == 0


def test_nan_gradient_from_one_task_does_not_reach_meta_parameters():
    eng = UnrollEngine(small_config())
    eng.trajectories.X[2] = float("inf")  # every computation of task 2 is non-finite from the start
    eng.compute_meta_gradient()
    assert all(torch.isfinite(p.grad).all() for p in eng.meta_parameters)


@pytest.mark.parametrize("options", [
    {"learned.lstm.input_norm": "rms"},  # a diverging row reads inf / inf = NaN
    {"learned.lstm.gd_skip": True},  # its update multiplies the row's non-finite gradient
    {"second_order": True, "learned.lstm.input_norm": "rms"},
], ids=["rms", "gd_skip", "rms-second-order"])
def test_a_diverging_row_does_not_poison_the_lstms_meta_gradient(options):
    """The engine masks a diverged trajectory's rows; whatever the LSTMs' input transform or the
    factor their output is multiplied by, its non-finite values must not turn the masked zeros
    into NaN in the shared weights' gradient (they did with rms and gd_skip)."""
    eng = UnrollEngine(small_config(**options))
    eng.trajectories.W[0][2] = eng.trajectories.W[0][2] * 1e30  # task 2 overflows within the unroll
    alive = eng.compute_meta_gradient().alive
    assert not alive[2] and alive.sum() == len(alive) - 1
    assert all(torch.isfinite(p.grad).all() for p in eng.meta_parameters)
    assert any(p.grad.abs().sum() > 0 for p in eng.meta_parameters)  # the live rows still teach


def _cw(**kw) -> MetaTrainConfig:
    d = tiny(**{"learned.arch": "coordinatewise", "learned.coordinatewise.hidden": 8, **kw})
    d["learned"].pop("lstm", None)
    return MetaTrainConfig.from_dict(d)


@pytest.mark.parametrize("second_order", [False, True])
@pytest.mark.parametrize("variant", ["update+tele", "update", "lr+tele"])
def test_a_diverged_row_leaves_the_coordinatewise_meta_gradient_of_the_live_rows(variant, second_order):
    """A trajectory whose weights are non-finite is masked, and the meta-gradient is exactly that of
    the live ones: (1/B) × the sum of their single-trajectory meta-gradients. Before the features
    read a non-finite value as 0, its NaN features turned the masked zeros into NaN in the shared
    weights' gradient (0 · NaN), so every meta-step with a diverging trajectory was skipped, and a
    run (specialist_update_tele_seed2) skipped every meta-step from 959 on."""
    B, kw = 4, {"second_order": second_order, "learned.variant": variant}
    eng = UnrollEngine(_cw(batch_size=B, **kw))
    eng.trajectories.W[0][2, 0, 0] = float("inf")
    alive = eng.compute_meta_gradient().alive
    assert alive.tolist() == [True, True, False, True]
    batched = [p.grad.detach().clone() for p in eng.meta_parameters]
    singles = [meta_grads(UnrollEngine(_cw(batch_size=1, trajectories=1, train_seed_start=b, **kw))) for b in (0, 1, 3)]
    for i, g in enumerate(batched):
        assert torch.isfinite(g).all()
        expected = sum(s[i] for s in singles) / B
        if expected.norm() > 0:
            assert ((g - expected).norm() / expected.norm()).item() <= 1e-6, i
        else:
            assert g.norm() == 0, i


def test_all_trajectories_diverging_stops_with_clear_message():
    eng = UnrollEngine(small_config(trajectories=1000, diverge_patience=2))
    before = [p.detach().clone() for p in eng.meta_parameters]

    def poison():
        for w in eng.trajectories.W:
            w.fill_(float("nan"))

    poison()
    eng.meta_step()
    poison()
    with pytest.raises(DivergenceError, match="every one of the 4 trajectories diverged"):
        eng.meta_step()
    for a, b in zip(before, eng.meta_parameters):
        assert torch.equal(a, b)  # no update from all-NaN meta-steps


def test_deterministic_given_seed():
    r1 = meta_train(small_config(dtype="float32"), progress=False)
    r2 = meta_train(small_config(dtype="float32"), progress=False)
    for (k, a), (_, b) in zip(r1.optimizer.state_dict().items(), r2.optimizer.state_dict().items()):
        assert torch.equal(a, b), k
    r3 = meta_train(small_config(dtype="float32", seed=1), progress=False)
    assert not torch.equal(r1.optimizer.update.net.head.weight, r3.optimizer.update.net.head.weight)


def test_finished_trajectories_are_replaced_by_fresh_training_seeds():
    cfg = small_config(trajectories=12, steps=6, unroll=3, batch_size=4)
    res = meta_train(cfg, progress=False)
    assert res.meta_steps == cfg.meta_steps == 6
    # 3 generations of 4 trajectories finished, and no 4th one was started
    assert res.history[-1]["trajectories_finished"] == 12
    assert res.train_seeds == (0, 12)


def test_staggered_starts_spread_the_batch():
    eng = UnrollEngine(small_config(stagger=True, steps=12, unroll=3, batch_size=4, trajectories=100))
    assert len(set(eng.trajectories.steps_done.tolist())) > 1
    eng.meta_step()
    # the trajectory that started furthest along finishes first
    assert eng.trajectories_finished >= 1


def test_truncation_schedule_log_uniform_within_bounds():
    eng = UnrollEngine(small_config(truncation="log_uniform", unroll=2, unroll_max=8, trajectories=1000))
    lengths = [eng._unroll_length() for _ in range(200)]
    assert min(lengths) >= 2 and max(lengths) <= 8 and len(set(lengths)) > 3


@pytest.mark.parametrize("meta_loss,normalize", [("sum", False), ("mean_log", False), ("sum", True)])
def test_meta_training_lowers_the_meta_loss(meta_loss, normalize):
    cfg = small_config(
        trajectories=400, steps=6, unroll=3, batch_size=20, lr_update=3e-3, lr_teleport=3e-3,
        meta_loss=meta_loss, normalize=normalize, dtype="float32",
        **{"task.distribution": "uniform"},
    )
    res = meta_train(cfg, progress=False)
    first = np.mean([h["mean_log10_loss"] for h in res.history[:10]])
    last = np.mean([h["mean_log10_loss"] for h in res.history[-10:]])
    assert last < first - 0.3, (first, last)


def test_tele_variant_on_a_hand_designed_base_gets_meta_gradients():
    cfg = small_config(**{"learned.variant": "tele", "learned.base": {"name": "adam", "lr": 0.01}})
    eng = UnrollEngine(cfg)
    eng.compute_meta_gradient()
    grads = [p.grad for p in eng.optimizer.teleports.parameters()]
    assert all(torch.isfinite(g).all() for g in grads)
    assert sum(g.abs().sum() for g in grads) > 0
    res = meta_train(cfg, progress=False)
    assert res.meta_steps == cfg.meta_steps
    assert math.isfinite(res.history[-1]["meta_loss"])


def test_tele_variant_is_its_base_optimizer_composed_with_the_learned_teleport():
    """With a negligible teleport (eps 1e-12) the tele variant's trajectory is the base
    optimizer's (a torch.optim-exact Adam); with the default eps it differs, at the same first
    loss change (a teleport keeps the loss)."""
    task = TaskConfig([5, 6, 6, 4], "gaussian")
    base = BaselineConfig("adam", lr=0.01)
    batch = sample_tasks(task, [0, 1, 2], dtype=torch.float64)
    want = run_baseline(base, batch.X, batch.Y, batch.weights, 12)
    curves = {}
    for eps in (1e-12, 0.05):
        torch.manual_seed(0)
        learned = LearnedOptimizer(task, LearnedConfig(variant="tele", base=base, lstm=LSTMConfig(hidden=8),
                                                       teleport=TeleportConfig(eps=eps))).double()
        stepper, W, losses = learned.start(batch.X, batch.Y, batch.weights), batch.weights, []
        for _ in range(12):
            W, loss, _ = stepper.step(W)
            losses.append(loss)
        losses.append(mlp_loss(W, batch.X, batch.Y))
        curves[eps] = torch.stack(losses)
    torch.testing.assert_close(curves[1e-12], want, rtol=1e-8, atol=0)
    torch.testing.assert_close(curves[0.05][:2], want[:2], rtol=1e-10, atol=0)
    assert (curves[0.05][-1] - want[-1]).abs().max() > 1e-6


@pytest.mark.parametrize("over", [{}, {"stagger": True}, {"truncation": "log_uniform", "unroll_max": 5},
                                  {"learned.variant": "tele"},
                                  {"learned.variant": "tele", "stagger": True, "truncation": "log_uniform",
                                   "unroll_max": 5}])
def test_exactly_the_configured_trajectories_are_trained_on_exactly_the_recorded_seeds(over):
    """batch_size 4 with 10 trajectories: the last batch is partial (its idle slots are masked),
    every trajectory runs its steps, and the recorded seeds are exactly [0, 10)."""
    cfg = small_config(trajectories=10, steps=6, unroll=2, batch_size=4, **over)
    eng = UnrollEngine(cfg)
    started, seen = set(), []
    while not eng.done:
        tr = eng.trajectories
        started.update(int(s) for s, a in zip(tr.seeds, tr.active) if a)
        seen.append(int(tr.active.sum()))
        eng.meta_step()
    assert eng.meta_step_count == cfg.meta_steps  # the plan is the schedule
    assert started == set(range(10)) and eng.trajectories_started == 10
    assert eng.trained_seed_range == (0, 10)
    assert not eng.trajectories.active.any() and min(seen) < 4  # the tail ran with idle slots
    if not over or "learned.variant" in over:
        assert eng.trajectories_finished == 10  # each of them ran all of its steps


def test_a_partial_last_batch_keeps_idle_slots_out_of_the_meta_loss():
    cfg = small_config(trajectories=6, steps=2, unroll=2, batch_size=4)  # a batch of 4, then one of 2
    eng = UnrollEngine(cfg)
    eng.meta_step()
    assert eng.trajectories.active.tolist() == [True, True, False, False]
    eng.trajectories.W[0][2:] = float("nan")  # idle slots may hold anything
    m = eng.meta_step()
    assert m["diverged"] == 0 and math.isfinite(m["meta_loss"]) and eng.done


# -- a run that learned nothing says so; every trajectory takes exactly its horizon ----------------
def test_non_finite_meta_gradients_are_counted_as_skipped_and_a_run_of_them_fails():
    from metatele.meta.train import TrainingFailed

    cfg = small_config(trajectories=40)  # 20 meta-steps planned
    original = UnrollEngine.compute_meta_gradient

    def nan_gradient(self):  # every meta-gradient is non-finite (and is zeroed)
        u = original(self)
        for p in self.meta_parameters:
            p.grad.fill_(float("nan"))
        return u

    eng = UnrollEngine(cfg)
    eng.compute_meta_gradient = nan_gradient.__get__(eng)
    metrics = eng.meta_step()
    assert metrics["skipped"] and metrics["skipped_total"] == 1 and metrics["meta_grad_norm"] is None
    with pytest.raises(TrainingFailed, match=r"after 11 of 20 meta-steps: every one of its 11 meta-steps was skipped") as e:
        meta_train(cfg, progress=False, engine=eng)  # stops once more than half of the plan is certain to be skipped
    assert e.value.result.skipped_total == 11 and len(e.value.result.history) == 10
    assert all(torch.isfinite(p).all() for p in e.value.result.optimizer.parameters())


def test_a_share_of_skipped_meta_steps_over_the_limit_fails_and_under_it_passes():
    from metatele.meta.train import TrainingFailed

    cfg = small_config(trajectories=16)  # 8 meta-steps
    original = UnrollEngine.compute_meta_gradient

    def every_other(self):
        u = original(self)
        if self.meta_step_count % 2:
            for p in self.meta_parameters:
                p.grad.fill_(float("inf"))
        return u

    UnrollEngine.compute_meta_gradient = every_other
    try:
        result = meta_train(cfg, progress=False)  # 4 of 8 skipped: not more than half
        assert result.skipped_total == 4 and [h["skipped"] for h in result.history] == [False, True] * 4
        with pytest.raises(TrainingFailed, match="more than the allowed share 0.25"):
            meta_train(cfg, progress=False, max_skipped_share=0.25)
    finally:
        UnrollEngine.compute_meta_gradient = original


def test_a_run_ending_while_every_trajectory_diverges_fails_before_the_patience_runs_out():
    from metatele.meta.train import TrainingFailed

    cfg = small_config(trajectories=4, steps=6, unroll=3)  # 2 meta-steps, patience 3
    original = UnrollEngine.compute_meta_gradient

    def diverge(self):
        if self.meta_step_count == 1:
            for w in self.trajectories.W:
                w.fill_(float("nan"))
        return original(self)

    UnrollEngine.compute_meta_gradient = diverge
    try:
        with pytest.raises(TrainingFailed, match="ended while every trajectory was diverging") as e:
            meta_train(cfg, progress=False, max_skipped_share=1.0)
    finally:
        UnrollEngine.compute_meta_gradient = original
    last = e.value.result.history[-1]
    assert last["meta_loss"] is None and last["mean_log10_loss"] is None  # not a 0.0 that reads as perfect


@pytest.mark.parametrize("extra", [{}, {"meta_loss": "mean_log"}, {"estimator": "pes"}])
def test_steps_not_a_multiple_of_unroll_train_exactly_steps(extra):
    """steps 5 with unroll 10 is the same run as unroll 5 (it used to train 10 steps, recording 5)."""
    from helpers import same_parameters

    a = meta_train(small_config(steps=5, unroll=10, **extra), progress=False)
    b = meta_train(small_config(steps=5, unroll=5, **extra), progress=False)
    c = meta_train(small_config(steps=10, unroll=10, **extra), progress=False)
    assert [h["unroll"] for h in a.history] == [5, 5]
    assert same_parameters(a.optimizer.state_dict(), b.optimizer.state_dict())
    assert not same_parameters(a.optimizer.state_dict(), c.optimizer.state_dict())


def test_a_trajectory_reaching_its_horizon_inside_an_unroll_stops_there():
    # stagger: slot 3 starts at step 3 of 4, so the first unroll of 3 steps takes it 1 step only
    cfg = small_config(trajectories=4, batch_size=4, steps=4, unroll=3, stagger=True)
    eng = UnrollEngine(cfg)
    tr = eng.trajectories
    assert list(tr.steps_done) == [0, 0, 0, 3]
    W0, state0 = [w.clone() for w in tr.W], eng.optimizer.initial_state(tr.B, eng.device, eng.dtype)
    u = eng.compute_meta_gradient()
    with torch.no_grad():
        one, _, _, state = eng.optimizer.step(W0, tr.X, tr.Y, state0, x_qr=tr.X_qr)
        three = one
        for _ in range(2):
            three, _, _, state = eng.optimizer.step(three, tr.X, tr.Y, state, x_qr=tr.X_qr)
    for w, w1, w3 in zip(u.W, one, three):
        torch.testing.assert_close(w[3], w1[3], rtol=1e-12, atol=0)  # one step, then held
        assert not torch.allclose(w[3], w3[3])
