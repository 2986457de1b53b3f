"""The coordinatewise architecture: per-coordinate m1, permutation-equivariant m2, any network."""
from __future__ import annotations

import pytest
import torch

from helpers import tiny

from metatele.release.checkpoint import CheckpointError, load_optimizer, save_checkpoint
from metatele.optimizers.coordinatewise import CoordinatewiseConfig, CoordinateUpdate, EquivariantTeleport
from metatele.optimizers.coordinatewise_step import safeguarded_teleport
from metatele.meta.engine import UnrollEngine
from metatele.optimizers.learned import LearnedConfig, LearnedOptimizer
from metatele.tasks.mlp import loss_and_grads, mlp_loss
from metatele.tasks.family import TaskConfig, sample_tasks, training_seeds, unseen_seeds
from metatele.symmetry.teleport_grad import mlp_teleport_gradient, squared_loss
from metatele.meta.config import MetaTrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    """Give the zero-initialised output layers random weights, so that the networks do something."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def cw_config(**kw) -> MetaTrainConfig:
    return MetaTrainConfig.from_dict(tiny(**{"learned.arch": "coordinatewise", **kw}))


# --- the teleport gradient and m2 equivariance -------------------------------------------------


@pytest.mark.parametrize("bias", [False, True])
def test_teleport_gradient_and_m2_are_permutation_equivariant(bias):
    batch = sample_tasks(TaskConfig([6, 7, 9, 5], "gaussian", bias=bias), range(3), dtype=torch.float64)
    V, U = batch.weights
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(1))
    P = torch.eye(9, dtype=torch.float64)[perm]
    Vp = P @ V  # hidden unit i of the permuted net is unit perm[i] (its bias row moves too)
    Up = torch.cat([U[..., :9] @ P.T, U[..., 9:]], dim=-1)
    assert torch.allclose(mlp_loss([Vp, Up], batch.X, batch.Y), mlp_loss(batch.weights, batch.X, batch.Y), rtol=1e-12)
    G = mlp_teleport_gradient(batch.weights, batch.X, batch.Y)[0]
    Gp = mlp_teleport_gradient([Vp, Up], batch.X, batch.Y)[0]
    assert G.abs().max() > 0
    assert torch.allclose(Gp, P @ G @ P.T, rtol=1e-8, atol=1e-10 * float(G.abs().max()))

    m2 = EquivariantTeleport(CoordinatewiseConfig(tele_beta=0.5), lr_range=(1e-4, 1e-1)).double()
    perturb(m2)
    _, grads = loss_and_grads(batch.weights, batch.X, batch.Y)
    _, grads_p = loss_and_grads([Vp, Up], batch.X, batch.Y)
    s, sp = None, None
    with torch.no_grad():
        for _ in range(3):  # also through the running-average state
            T, lr, s = m2(G, grads[0], grads[1], s)
            Tp, lrp, sp = m2(Gp, grads_p[0], grads_p[1], sp)
    assert T.shape == (3, 9, 9) and T.abs().max() > 0
    assert torch.allclose(Tp, P @ T @ P.T, rtol=1e-6, atol=1e-6 * float(T.abs().max()))
    assert torch.allclose(lr, lrp, rtol=1e-6)


def test_m2_writes_a_bounded_norm_for_any_width():
    cfg = CoordinatewiseConfig(tele_norm_init=0.02, tele_norm_max=0.1)
    m2 = EquivariantTeleport(cfg).double()
    for d in (3, 16, 40):
        G = torch.randn(2, d, d, dtype=torch.float64)
        T, _, _ = m2(G, torch.randn(2, d, 4, dtype=torch.float64), torch.randn(2, 5, d, dtype=torch.float64), None)
        assert torch.allclose(T.flatten(1).norm(dim=1), torch.full((2,), 0.02, dtype=torch.float64))
        # untrained: the normalised gradient-ascent direction
        assert torch.allclose(T / 0.02, G / G.flatten(1).norm(dim=1).view(-1, 1, 1))
    perturb(m2, scale=5.0)
    T, _, _ = m2(G, torch.randn(2, d, 4, dtype=torch.float64), torch.randn(2, 5, d, dtype=torch.float64), None)
    assert (T.flatten(1).norm(dim=1) <= 0.1 + 1e-12).all()


def test_teleport_schedule_every_k_steps():
    m2 = EquivariantTeleport(CoordinatewiseConfig(ablation={"every": 3})).double()
    G, gv, gu = torch.randn(2, 4, 4).double(), torch.randn(2, 4, 3).double(), torch.randn(2, 2, 4).double()
    s, norms = None, []
    for _ in range(7):
        T, _, s = m2(G, gv, gu, s)
        norms.append(float(T.detach().norm()))
    assert [n > 0 for n in norms] == [True, False, False, True, False, False, True]


def test_safeguard_refuses_a_teleport_that_raises_the_loss():
    # n = 12 > d0 = 8: pair 0 is not a symmetry, so a large teleport changes every loss
    batch = sample_tasks(TaskConfig([12, 8, 10, 6], "gaussian"), range(8), dtype=torch.float64)
    T = [0.5 * torch.randn(8, 10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)]
    before = mlp_loss(batch.weights, batch.X, batch.Y)
    raw = mlp_loss(safeguarded_teleport(batch.weights, batch.X, T, None)[0], batch.X, batch.Y)
    safe_w, taken = safeguarded_teleport(batch.weights, batch.X, T, squared_loss(batch.X, batch.Y))
    safe = mlp_loss(safe_w, batch.X, batch.Y)
    assert (raw > before).any()
    assert (safe <= before).all()
    assert torch.equal(safe, torch.minimum(raw, before))
    assert torch.equal(taken, raw <= before)
    # a tolerance lets through a rise up to that relative size (rounding of an exact teleport)
    tol = float(((raw - before) / before).max()) * 1.01
    lenient, _ = safeguarded_teleport(batch.weights, batch.X, T, squared_loss(batch.X, batch.Y), tol=tol)
    assert torch.equal(mlp_loss(lenient, batch.X, batch.Y), raw)


# --- m1 --------------------------------------------------------------------------------------


def test_untrained_m1_is_adam():
    batch = sample_tasks(TaskConfig([8, 5, 6, 3], "gaussian", bias=True), range(2), dtype=torch.float64)
    m1 = CoordinateUpdate(CoordinatewiseConfig(lr=0.03)).double()
    W = [w.clone() for w in batch.weights]
    ref = [w.clone().requires_grad_(True) for w in batch.weights]
    adam = torch.optim.Adam(ref, lr=0.03, betas=(0.9, 0.999), eps=1e-8)
    state = None
    for _ in range(5):
        _, grads = loss_and_grads(W, batch.X, batch.Y)
        updates, state = m1(W, grads, state, batch.X.shape[1])
        W = [w - u for w, u in zip(W, updates)]
        adam.zero_grad()
        mlp_loss(ref, batch.X, batch.Y).sum().backward()
        adam.step()
    for a, b in zip(W, ref):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def test_m1_gives_the_same_update_to_the_same_coordinate_in_networks_of_different_sizes():
    m1 = CoordinateUpdate().double()
    perturb(m1)
    gen = torch.Generator().manual_seed(3)
    first_w, first_g = torch.randn(2, 6, 4, generator=gen).double(), torch.randn(2, 6, 4, generator=gen).double()
    outs = []
    for widths in ([6, 3], [6, 11, 2], [6, 30, 30, 7]):  # the first layer is the same tensor in every net
        shapes = [(widths[0], 4)] + [(widths[i + 1], widths[i]) for i in range(len(widths) - 1)]
        W = [first_w] + [torch.randn(2, *s, generator=gen).double() for s in shapes[1:]]
        g = [first_g] + [torch.randn(2, *s, generator=gen).double() for s in shapes[1:]]
        state = None
        for _ in range(3):
            updates, state = m1(W, g, state, 4)
        outs.append(updates[0])
    assert outs[0].abs().max() > 0
    for o in outs[1:]:
        assert torch.allclose(o, outs[0], rtol=1e-12, atol=1e-15)


# --- the assembled optimizer -------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["update", "update+tele", "lr+tele", "lr"])
def test_batched_steps_equal_a_loop_over_single_tasks(variant, single):
    task = TaskConfig([6, 6, 8, 4], "gaussian", bias=True)
    opt = LearnedOptimizer(task, LearnedConfig(variant=variant, arch="coordinatewise")).double()
    perturb(opt)
    batch = sample_tasks(task, range(3), dtype=torch.float64)

    def run(b):
        stepper = opt.start(b.X, b.Y, b.weights)
        W, losses = b.weights, []
        for _ in range(4):
            W, loss, _ = stepper.step(W)
            losses.append(loss)
        return torch.stack(losses), W

    losses, W = run(batch)
    for i in range(3):
        li, Wi = run(single(batch, i))
        assert torch.allclose(losses[:, i], li[:, 0], rtol=1e-9)
        assert all(torch.allclose(a[i], b[0], rtol=1e-8, atol=1e-12) for a, b in zip(W, Wi))


@pytest.mark.parametrize("variant", ["update+tele", "lr+tele", "update"])
def test_coordinatewise_batch_meta_gradient_is_mean_of_single_meta_gradients(variant):
    B = 3
    kw = {"learned.variant": variant, "task.bias": True}

    def grads(engine):
        perturb(engine.optimizer, 0.1)
        engine.compute_meta_gradient()
        return [p.grad.detach().clone() for p in engine.meta_parameters]

    batched = grads(UnrollEngine(cw_config(batch_size=B, **kw)))
    singles = [grads(UnrollEngine(cw_config(batch_size=1, trajectories=1, train_seed_start=b, **kw))) for b in range(B)]
    assert sum(float(g.abs().sum()) for g in batched) > 0
    for i, g in enumerate(batched):
        mean = sum(s[i] for s in singles) / B
        assert ((g - mean).norm() / mean.norm().clamp_min(1e-30)).item() <= 1e-6, i


def test_every_variant_exists_for_the_coordinatewise_architecture():
    for variant in ("update", "update+tele", "lr+tele", "tele", "lr"):
        eng = UnrollEngine(cw_config(**{"learned.variant": variant}))
        stats = eng.meta_step()
        assert stats["meta_loss"] == stats["meta_loss"]  # finite, not NaN
        assert eng.optimizer.name == f"Coordinatewise({variant})"


def test_coordinatewise_checkpoint_loads_and_runs_on_other_networks(tmp_path):
    config = cw_config(**{"learned.variant": "update+tele"})
    eng = UnrollEngine(config)
    eng.meta_step()
    path = save_checkpoint(tmp_path / "cw.safetensors", eng.optimizer, config)
    for task in (TaskConfig([5, 9, 17, 3], "gaussian"), TaskConfig([8, 10, 20, 20, 4], "gaussian", bias=True),
                 TaskConfig([6, 6, 12, 8, 8, 8, 2], "uniform", bias=True)):
        opt = load_optimizer(path, task=task)
        assert opt.task == task
        batch = sample_tasks(task, unseen_seeds(2), dtype=torch.float32)
        stepper = opt.start(batch.X, batch.Y, batch.weights)
        W, first = batch.weights, None
        for _ in range(20):
            W, loss, _ = stepper.step(W)
            first = loss if first is None else first
        final = mlp_loss(W, batch.X, batch.Y)
        assert torch.isfinite(final).all() and (final < first).all(), task


def test_paper_checkpoint_refuses_another_network_with_a_clear_message(tmp_path):
    config = MetaTrainConfig.from_dict(tiny())
    path = save_checkpoint(tmp_path / "paper.safetensors", LearnedOptimizer(config.task, config.learned), config)
    with pytest.raises(CheckpointError, match="paper architecture.*coordinatewise"):
        load_optimizer(path, task=TaskConfig([6, 6, 9, 6], "gaussian"))
    with pytest.raises(CheckpointError, match="weight shapes"):
        load_optimizer(path, task=TaskConfig([6, 6, 6, 6], "gaussian", bias=True))


def test_arch_is_validated():
    with pytest.raises(ValueError, match="learned.arch"):
        LearnedConfig(arch="transformer")


def test_second_order_meta_gradient_matches_finite_differences():
    # (with a teleport, m2's inputs, the teleport gradient and the gradients it reads, are data)
    eng = UnrollEngine(cw_config(**{"learned.variant": "update", "second_order": True, "task.bias": True}))
    perturb(eng.optimizer, 0.05)
    eng.compute_meta_gradient()
    params = eng.meta_parameters
    grads = [p.grad.clone() for p in params]
    norm = sum(float(g.square().sum()) for g in grads) ** 0.5
    h, values = 1e-5, []
    for sign in (1, -1):
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.add_(sign * h * g / norm)
        values.append(float(eng.compute_meta_gradient().meta_loss))
        with torch.no_grad():
            for p, g in zip(params, grads):
                p.sub_(sign * h * g / norm)
    fd = (values[0] - values[1]) / (2 * h)
    assert abs(fd - norm) <= 1e-4 * norm, (fd, norm)
