"""Long-horizon meta-training: per-trajectory horizons, the unroll curriculum, task augmentation
and the late-step meta-loss weighting; all deterministic host-side schedules."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from helpers import same_parameters, tiny

from metatele.configs import ConfigError
from metatele.meta.checkpointer import TrainingCheckpointer, resumable_callback
from metatele.meta.config import MetaTrainConfig
from metatele.meta.engine import UnrollEngine
from metatele.meta.metaloss import late_weights
from metatele.meta.schedules import (planned_meta_steps, trajectory_horizon, truncation_lengths, unroll_cap,
                                     unroll_length)
from metatele.meta.train import meta_train
from metatele.tasks.augment import augment, scale_factors
from metatele.tasks.family import TaskConfig, sample_tasks
from metatele.tasks.mlp import mlp_loss

pytestmark = pytest.mark.usefixtures("one_thread")


def config(**kw) -> MetaTrainConfig:
    return MetaTrainConfig.from_dict(tiny(**kw))


# -- horizons -------------------------------------------------------------------------------------
def test_log_uniform_horizons_are_deterministic_per_seed_in_range_and_spread_log_uniformly():
    hs = np.array([trajectory_horizon("log_uniform", 1000, 10, 0, s) for s in range(4000)])
    assert hs.min() >= 10 and hs.max() <= 1000
    again = [trajectory_horizon("log_uniform", 1000, 10, 0, s) for s in range(50)]
    assert again == hs[:50].tolist()
    assert [trajectory_horizon("log_uniform", 1000, 10, 1, s) for s in range(50)] != again  # the run's seed counts
    # log-uniform on [10, 1000]: the median is the geometric mean 100, a third of them lie below ~46
    assert 85 < np.median(hs) < 118
    assert abs(np.mean(hs < 10 * 100 ** (1 / 3)) - 1 / 3) < 0.04
    assert trajectory_horizon("fixed", 1000, 10, 0, 7) == 1000


def test_each_trajectory_runs_exactly_to_its_own_horizon_on_exactly_the_recorded_seeds():
    cfg = config(trajectories=12, steps=20, steps_min=2, horizon="log_uniform", unroll=2, batch_size=4,
                 stagger=True)
    eng = UnrollEngine(cfg)
    ran: dict[int, int] = {}
    while not eng.done:
        before = eng.trajectories
        seeds, horizon = before.seeds.copy(), before.horizon.copy()
        active = before.active.copy()
        eng.meta_step()
        for b in np.flatnonzero(active):  # a trajectory that ended (replaced or idle) stopped at its horizon
            ended = eng.trajectories.seeds[b] != seeds[b] or not eng.trajectories.active[b]
            if ended:
                ran[int(seeds[b])] = int(horizon[b])
    assert sorted(ran) == list(range(12)) and eng.trained_seed_range == (0, 12)
    assert ran == {s: trajectory_horizon("log_uniform", 20, 2, cfg.seed, s) for s in range(12)}
    assert len(set(ran.values())) > 3
    assert eng.meta_step_count == cfg.meta_steps  # the plan simulates the same schedule


# -- truncations and the curriculum --------------------------------------------------------------
def test_the_curriculum_grows_the_unroll_geometrically_and_the_engine_follows_the_plan():
    caps = [unroll_cap(5, 80, 40, i) for i in range(60)]
    assert caps[0] == 5 and caps[40] == pytest.approx(80) and caps[-1] == pytest.approx(80)
    assert caps[20] == pytest.approx(20)  # halfway in log space
    assert all(a <= b for a, b in zip(caps, caps[1:]))
    fixed = truncation_lengths("fixed", 5, 80, 0, curriculum=40)
    assert [next(fixed) for _ in range(41)][::20] == [5, 20, 80]
    rng = np.random.default_rng(3)
    drawn = [unroll_length(rng, "log_uniform", 5, 80, 40, i) for i in range(200)]
    assert all(5 <= k <= round(unroll_cap(5, 80, 40, i)) for i, k in enumerate(drawn))
    assert max(drawn[:10]) < 12 and max(drawn[100:]) > 40
    # without a curriculum the draws are the ones of before (same generator calls)
    r1, r2 = np.random.default_rng(9), np.random.default_rng(9)
    assert [unroll_length(r1, "log_uniform", 5, 80) for _ in range(20)] == \
        [int(round(math.exp(r2.uniform(math.log(5), math.log(80))))) for _ in range(20)]
    cfg = config(trajectories=10, steps=40, unroll=2, unroll_max=16, truncation="log_uniform", curriculum=6,
                 batch_size=4)
    eng = UnrollEngine(cfg)
    lengths = []
    while not eng.done:
        lengths.append(eng.meta_step()["unroll"])
    want = truncation_lengths("log_uniform", 2, 16, cfg.seed, curriculum=6)
    drawn = [next(want) for _ in lengths]
    assert len(lengths) == cfg.meta_steps
    # the engine draws the planned lengths; an unroll is cut only where it would run past the
    # longest horizon left (every trajectory then ends in it, so the plan's count is unchanged)
    assert all(k == d or k < d for k, d in zip(lengths, drawn)) and lengths[:8] == drawn[:8]


def test_plan_counts_meta_steps_with_every_schedule_option():
    args = dict(trajectories=30, B=8, steps=50, unroll=5, truncation="log_uniform", unroll_max=20, stagger=True, seed=0)
    base = planned_meta_steps(**args)
    assert planned_meta_steps(**args, horizon="log_uniform", steps_min=5) < base  # shorter trajectories on average
    assert planned_meta_steps(**args, curriculum=30) > base  # shorter unrolls early


# -- augmentation --------------------------------------------------------------------------------
def test_augmentation_rescales_each_task_by_its_own_deterministic_factors():
    task = TaskConfig([5, 6, 6, 4], "gaussian")
    seeds = [3, 8, 11]
    batch = sample_tasks(task, seeds, dtype=torch.float64)
    assert augment(batch, seeds, 1.0, 0) is batch
    out = augment(batch, seeds, 10.0, 0)
    for i, s in enumerate(seeds):
        f = scale_factors(0, s, 10.0, len(batch.weights))
        assert len(f) == 2 + len(batch.weights) and ((f >= 0.1) & (f <= 10)).all()
        torch.testing.assert_close(out.X[i], batch.X[i] * f[0])
        torch.testing.assert_close(out.Y[i], batch.Y[i] * f[1])
        for w, w0, c in zip(out.weights, batch.weights, f[2:]):
            torch.testing.assert_close(w[i], w0[i] * c)
    alone = augment(sample_tasks(task, [8], dtype=torch.float64), [8], 10.0, 0)  # independent of the batch
    assert torch.equal(alone.X[0], out.X[1]) and torch.equal(alone.weights[1][0], out.weights[1][1])
    other = augment(batch, seeds, 10.0, 1)
    assert not torch.equal(other.X, out.X)  # the run's seed counts
    spread = np.log10(np.stack([scale_factors(0, s, 10.0, 3) for s in range(2000)]))
    assert abs(spread.mean()) < 0.03 and spread.min() < -0.95 and spread.max() > 0.95  # log-uniform on [-1, 1]
    # the losses of the augmented tasks span orders of magnitude
    losses = mlp_loss(out.weights, out.X, out.Y)
    assert torch.isfinite(losses).all() and not torch.allclose(losses, mlp_loss(batch.weights, batch.X, batch.Y))
    with pytest.raises(ValueError, match="≥ 1"):
        scale_factors(0, 1, 0.5, 3)


def test_engine_trains_on_augmented_tasks_and_records_their_initial_losses():
    cfg = config(augment_scale=4.0)
    eng = UnrollEngine(cfg)
    plain = UnrollEngine(config())
    assert (eng.trajectories.seeds == plain.trajectories.seeds).all()
    assert not torch.allclose(eng.trajectories.loss0, plain.trajectories.loss0)
    tr = eng.trajectories
    torch.testing.assert_close(tr.loss0, mlp_loss(tr.W, tr.X, tr.Y))
    res = meta_train(cfg, progress=False)
    assert math.isfinite(res.history[-1]["meta_loss"])


# -- the meta-loss weighting ---------------------------------------------------------------------
def test_late_weights_grow_towards_the_horizon_average_one_and_change_the_meta_gradient():
    cfg = config(steps=12, unroll=12, late_weight=2.0)
    eng = UnrollEngine(cfg)
    w = late_weights(cfg, eng.trajectories, 12, eng.device, eng.dtype).numpy()  # a whole trajectory in one unroll
    assert w.shape == (12, eng.B) and (np.diff(w, axis=0) > 0).all()
    assert w[-1] == pytest.approx(3.0) and w.mean() == pytest.approx(1.0, abs=0.2)  # (p+1)∫x^p = 1
    grads = {}
    for p in (0.0, 2.0):
        e = UnrollEngine(config(steps=12, unroll=12, late_weight=p))
        e.compute_meta_gradient()
        grads[p] = torch.cat([q.grad.flatten() for q in e.meta_parameters])
    assert torch.isfinite(grads[2.0]).all() and not torch.allclose(grads[0.0], grads[2.0])


# -- determinism, resume, validation -------------------------------------------------------------
LONG = dict(trajectories=6, steps=1000, steps_min=100, horizon="log_uniform", unroll=50, unroll_max=200,
            truncation="log_uniform", curriculum=4, augment_scale=3.0, late_weight=1.0, batch_size=3,
            stagger=True, **{"learned.lstm.hidden": 8, "task.dims": [4, 5, 5, 3]})


def test_long_horizon_run_is_deterministic_and_resumes_bitwise(tmp_path):
    cfg = config(**LONG)
    ref = meta_train(cfg, progress=False)
    assert same_parameters(ref.optimizer.state_dict(), meta_train(cfg, progress=False).optimizer.state_dict())
    assert max(h["unroll"] for h in ref.history) > 50
    cb = TrainingCheckpointer(cfg, tmp_path, every=1, keep=3, handle_signals=False)
    eng = UnrollEngine(cfg)
    for _ in range(4):
        cb(eng, eng.meta_step())
    assert (eng.trajectories.steps_done > 0).all() and len(set(eng.trajectories.horizon)) > 1
    eng, cb = resumable_callback(cfg, tmp_path, resume=True, every=1, keep=3, handle_signals=False)
    res = meta_train(cfg, progress=False, callback=cb, engine=eng)
    assert same_parameters(res.optimizer.state_dict(), ref.optimizer.state_dict())
    other = meta_train(config(**{**LONG, "seed": 1}), progress=False)
    assert not same_parameters(other.optimizer.state_dict(), ref.optimizer.state_dict())


@pytest.mark.parametrize("key, value, field", [
    ("horizon", "random", "horizon"), ("steps_min", 0, "steps_min"), ("steps_min", 10**6, "steps_min"),
    ("curriculum", -1, "curriculum"), ("augment_scale", 0.5, "augment_scale"), ("late_weight", -1, "late_weight"),
])
def test_bad_schedule_options_are_refused_naming_the_field(key, value, field):
    with pytest.raises(ConfigError, match=field):
        config(**{key: value})
