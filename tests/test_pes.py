"""PES (estimator: pes): unbiased for the full-unroll gradient where truncated ES is not,
deterministic, bitwise resumable mid-trajectory, data-parallel like one process, validated config."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from helpers import tiny

from metatele.configs import ConfigError
from metatele.meta.checkpointer import TrainingCheckpointer, resumable_callback
from metatele.meta.config import MetaTrainConfig
from metatele.meta.engine import UnrollEngine
from metatele.meta.pes import PES
from metatele.meta.state import state_files
from metatele.meta.train import meta_train

pytestmark = pytest.mark.usefixtures("one_thread")


def config(**kw) -> MetaTrainConfig:
    return MetaTrainConfig.from_dict(tiny(**{"estimator": "pes", **kw}))


def flat_grad(engine: UnrollEngine) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in engine.meta_parameters])


def carry_on(engine: UnrollEngine, u) -> None:
    """Advance the trajectories past an unroll without a meta-update (θ stays fixed)."""
    engine.trajectories.advance(u.W, u.state, u.K)
    engine.meta_step_count += 1


def z_scores(samples: list[torch.Tensor], target: torch.Tensor, directions: dict[str, torch.Tensor]) -> dict[str, float]:
    """(sample mean − target) / standard error, along each unit direction."""
    S = torch.stack(samples)
    out = {}
    for name, d in directions.items():
        proj = S @ d
        out[name] = ((proj.mean() - target @ d) / (proj.std() / math.sqrt(len(proj)))).item()
    return out


def test_pes_is_unbiased_for_the_full_unroll_gradient_where_truncated_es_is_not():
    """Two unrolls of 2 steps (a 4-step trajectory). Target: the gradient of the second unroll's
    meta-loss through the whole trajectory, from second-order backpropagation through all 4 steps
    minus that through the first 2 (the ``sum`` meta-loss adds over unrolls). PES perturbs the
    meta-parameters, so it sees every dependence (the inner gradient's too): the target is the
    second-order one. 20 repetitions × 16 pairs, each pair with its own noise (pes_groups = B).

    σ = 1e-4: the antithetic estimate's smoothing bias is O(σ²) (the even Taylor terms cancel),
    far below its standard error here, so the mean must agree with the exact gradient within 4
    standard errors along the gradient, along the truncation bias and along a random direction.
    The truncation bias (the part of the gradient that flows through the first unroll) is ~58% of
    the gradient's norm here: truncated ES (the same perturbations, ξ = the current ε only) and a
    sign-flipped PES must fail the same check.
    """
    B, reps = 16, 20
    base = dict(batch_size=B, trajectories=B, steps=4, unroll=2, meta_loss="sum")
    exact = lambda **kw: UnrollEngine(MetaTrainConfig.from_dict(tiny(**{**base, "second_order": True, **kw})))  # noqa: E731
    full = exact(unroll=4)
    full.compute_meta_gradient()
    trunc = exact()
    u = trunc.compute_meta_gradient()
    g_first = flat_grad(trunc)
    target = flat_grad(full) - g_first  # d(meta-loss of unroll 2)/dθ through both unrolls
    carry_on(trunc, u)
    trunc.compute_meta_gradient()
    bias = target - flat_grad(trunc)  # what truncated backpropagation misses
    assert bias.norm() > 0.3 * target.norm()  # the check below can tell the estimators apart

    cfg = config(**base, pes_sigma=1e-4, pes_groups=B)
    pes, truncated_es = [], []
    for r in range(reps):
        eng = UnrollEngine(cfg)
        eng.pes = PES(dataclasses.replace(cfg, seed=100 + r), eng.meta_parameters)  # fresh noise, same θ
        carry_on(eng, eng.compute_meta_gradient())
        eng.compute_meta_gradient()
        pes.append(flat_grad(eng))
        eng.trajectories.unrolls_done[:] = 0  # forget the first unroll's noise: truncated ES
        eng.compute_meta_gradient()
        truncated_es.append(flat_grad(eng))
    gen = torch.Generator().manual_seed(0)
    directions = {"gradient": target / target.norm(), "truncation bias": bias / bias.norm(),
                  "random": torch.nn.functional.normalize(torch.randn(target.numel(), generator=gen,
                                                                      dtype=target.dtype), dim=0)}
    z = z_scores(pes, target, directions)
    assert all(abs(v) < 4 for v in z.values()), z
    z_tes = z_scores(truncated_es, target, directions)
    assert abs(z_tes["truncation bias"]) > 4, z_tes
    z_flip = z_scores([-g for g in pes], target, directions)
    assert abs(z_flip["gradient"]) > 4, z_flip


def test_an_estimate_leaves_the_meta_parameters_exactly_as_they_were_and_masks_a_diverged_pair():
    eng = UnrollEngine(config(pes_groups=2))
    before = [p.detach().clone() for p in eng.meta_parameters]
    eng.trajectories.W[0][1 + eng.B] = float("nan")  # the second particle of pair 1 diverges
    u = eng.compute_meta_gradient()
    assert all(torch.equal(a, p) for a, p in zip(before, eng.meta_parameters))  # θ + ε − ε would not be
    assert u.alive.tolist() == [True, False, True, True]
    assert torch.isfinite(u.meta_loss) and torch.isfinite(flat_grad(eng)).all() and flat_grad(eng).abs().sum() > 0
    assert len(u.W[0]) == 2 * eng.B and u.state.update[0].shape[1] == 2 * eng.B  # both particles carried on


def test_both_particles_of_a_finished_pair_restart_together_with_zero_noise():
    eng = UnrollEngine(config(steps=6, unroll=3, trajectories=100, stagger=True))
    tr = eng.trajectories
    assert (tr.unrolls_done == 0).all() and tr.particles == 2
    eng.meta_step()
    tr = eng.trajectories
    restarted = np.flatnonzero(tr.steps_done == 0)  # the pairs that finished and got fresh tasks
    assert len(restarted) and (tr.unrolls_done[restarted] == 0).all() and (np.delete(tr.unrolls_done, restarted) == 1).all()
    for b in restarted:
        for w in tr.W:
            assert torch.equal(w[b], w[b + eng.B])  # same fresh weights for + and −
        h, c = tr.state.update
        assert not h[:, [b, b + eng.B]].any() and not c[:, [b, b + eng.B]].any()
    running = np.delete(np.arange(eng.B), restarted)
    assert any(not torch.equal(tr.W[0][b], tr.W[0][b + eng.B]) for b in running)  # θ+ε and θ−ε moved apart


def test_pes_meta_training_is_deterministic_given_the_seed():
    cfg = config(dtype="float32", pes_groups=2, trajectories=12)
    r1, r2 = meta_train(cfg, progress=False), meta_train(cfg, progress=False)
    a, b = r1.optimizer.state_dict(), r2.optimizer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["meta_loss"] for h in r1.history] == [h["meta_loss"] for h in r2.history]
    # another seed: another initialisation and other perturbations
    r3 = meta_train(dataclasses.replace(cfg, seed=1), progress=False)
    assert not torch.equal(r3.optimizer.update.net.head.weight, r1.optimizer.update.net.head.weight)
    # the same initialisation, another seed only for the noise: a different run
    eng = UnrollEngine(cfg)
    eng.pes = PES(dataclasses.replace(cfg, seed=1), eng.meta_parameters)
    meta_train(cfg, progress=False, engine=eng)
    assert not torch.equal(eng.optimizer.update.net.head.weight, r1.optimizer.update.net.head.weight)


def test_a_long_horizon_pes_run_resumes_bitwise_mid_trajectory(tmp_path):
    """24-step trajectories in unrolls of 2–4 steps (staggered): when the state is saved every
    pair is mid-trajectory with several unrolls of accumulated noise."""
    cfg = config(trajectories=8, steps=24, unroll=2, truncation="log_uniform", unroll_max=4, stagger=True,
                 pes_groups=3)
    ref = meta_train(cfg, progress=False)
    cb = TrainingCheckpointer(cfg, tmp_path, every=1, keep=2, handle_signals=False)
    eng = UnrollEngine(cfg)
    for _ in range(4):
        cb(eng, eng.meta_step())
    tr = eng.trajectories
    assert (tr.steps_done % cfg.steps != 0).all() and (tr.unrolls_done >= 2).any()  # noise spans unrolls
    assert [s for s, _ in state_files(tmp_path)] == [4, 3]
    eng, cb = resumable_callback(cfg, tmp_path, resume=True, every=1, keep=2, handle_signals=False)
    assert (eng.trajectories.unrolls_done == tr.unrolls_done).all() and eng.trajectories.particles == 2
    res = meta_train(cfg, progress=False, callback=cb, engine=eng)
    a, b = res.optimizer.state_dict(), ref.optimizer.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [h["meta_loss"] for h in cb.history] == [h["meta_loss"] for h in ref.history]  # saved + resumed


def test_ranks_average_to_the_single_process_estimate():
    """Each pair's noise is keyed by its place in the whole batch, so the all-reduced mean of
    two ranks' estimates is the one-process estimate."""
    cfg = config(batch_size=8, trajectories=40, pes_groups=3)
    single = UnrollEngine(cfg)
    single.compute_meta_gradient()
    ranks = [UnrollEngine(cfg, rank=r, world_size=2) for r in range(2)]
    for e in ranks:
        e.compute_meta_gradient()
    mean = (flat_grad(ranks[0]) + flat_grad(ranks[1])) / 2
    torch.testing.assert_close(mean, flat_grad(single), rtol=1e-9, atol=0)


@pytest.mark.parametrize("over,field", [
    ({"estimator": "es"}, "estimator"),
    ({"pes_sigma": 0.0}, "pes_sigma"),
    ({"pes_sigma": float("nan")}, "pes_sigma"),
    ({"pes_sigma": "0.1"}, "pes_sigma"),
    ({"pes_groups": 0}, "pes_groups"),
    ({"pes_groups": 5}, "pes_groups"),  # more groups than the batch of 4
    ({"pes_groups": 1.5}, "pes_groups"),
    ({"second_order": True}, "second_order"),
])
def test_config_errors_name_the_field(over, field):
    with pytest.raises(ConfigError, match=rf"^{field}: "):
        MetaTrainConfig.from_dict(tiny(**{"estimator": "pes", **over}))


def test_truncated_backpropagation_is_the_default_and_ignores_the_pes_keys():
    cfg = MetaTrainConfig.from_dict(tiny(pes_sigma=0.5, pes_groups=2))
    eng = UnrollEngine(cfg)
    assert cfg.estimator == "tbptt" and eng.pes is None and eng.trajectories.particles == 1


DIGITS = {"task": {"family": "digits", "dims": [200, 64, 8, 8, 10], "bias": True},
          "learned": {"arch": "coordinatewise", "variant": "update+tele"}, "trajectories": 4, "steps": 4,
          "unroll": 2, "batch_size": 2, "meta_loss": "mean_log", "meta_objective": "validation"}


@pytest.mark.parametrize("over", [{"learned.variant": "tele"}, {"learned.variant": "lr+tele"},
                                  {"learned.arch": "coordinatewise"}, DIGITS],
                         ids=["tele", "lr+tele", "coordinatewise", "digits-validation"])
def test_pes_trains_every_variant_architecture_and_task_family(over):
    cfg = config(pes_groups=2, **over)
    eng = UnrollEngine(cfg)
    before = [p.detach().clone() for p in eng.meta_parameters]
    while not eng.done:
        m = eng.meta_step()
        assert math.isfinite(m["meta_loss"]) and m["diverged"] == 0
    assert eng.meta_step_count == cfg.meta_steps
    assert all(torch.isfinite(p).all() for p in eng.meta_parameters)
    assert all(not torch.equal(a, p) for a, p in zip(before, eng.meta_parameters))
