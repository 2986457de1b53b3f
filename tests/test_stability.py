"""The stability options and ablation switches of the coordinatewise step (coordinatewise_step.py).

``tests/data/coordinatewise_reference.safetensors`` holds :func:`reference_run` of every variant
as computed at commit 9d10288, before these options existed (``python tests/test_stability.py
PATH`` writes it again); the defaults must reproduce it bit for bit in the MLPs' reference layout
(``features_first = False``; the fast layout equals it to rounding: tests/test_fast_path.py).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from helpers import coordinatewise_learned, tiny

from metatele.meta.config import MetaTrainConfig
from metatele.meta.engine import UnrollEngine
from metatele.optimizers.baselines import BaselineConfig, HandDesignedUpdate
from metatele.optimizers.coordinatewise import CoordinatewiseConfig, EquivariantTeleport, linear_teleport_gradient
from metatele.optimizers.coordinatewise_step import bounded_updates, safeguarded_update, stable_step, teleport_outputs
from metatele.optimizers.learned import LearnedOptimizer
from metatele.symmetry.action import input_qr
from metatele.symmetry.teleport_grad import mlp_teleport_gradient, squared_loss
from metatele.tasks.family import TaskConfig, sample_tasks
from metatele.tasks.mlp import loss_and_grads, mlp_loss

pytestmark = pytest.mark.usefixtures("one_thread")
REFERENCE = Path(__file__).parent / "data" / "coordinatewise_reference.safetensors"
VARIANTS = ("update", "update+tele", "lr+tele", "tele")


def perturb(module: torch.nn.Module, scale: float = 0.3, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen, dtype=p.dtype))


def optimizer(task: TaskConfig, variant: str, lr: float | None = None, **cw) -> LearnedOptimizer:
    """The untrained float64 coordinatewise ``variant`` (``lr``: its local step's rate, see
    :func:`coordinatewise_learned`)."""
    return LearnedOptimizer(task, coordinatewise_learned(variant, lr, **cw)).double()


def reference_run(variant: str, features_first: bool = False) -> dict[str, torch.Tensor]:
    """Six steps of a perturbed float64 coordinatewise optimizer on 4 tasks whose first pair is
    not a symmetry (n = 8 > d0 + 1, so the teleport safeguard refuses some teleports): the final
    weights and update state, and the gradient of the summed log losses for every meta-parameter.
    ``features_first``: the MLPs' layout (:func:`metatele.optimizers.coordinatewise.mlp_columns`)."""
    torch.manual_seed(0)
    task = TaskConfig([8, 6, 8, 4], "gaussian", bias=True)
    opt = optimizer(task, variant)
    perturb(opt)
    for m in opt.modules():
        if hasattr(m, "features_first"):
            m.features_first = features_first
    batch = sample_tasks(task, range(4), dtype=torch.float64)
    W, state, total = batch.weights, opt.initial_state(4, dtype=torch.float64), 0.0
    x_qr = input_qr(W, batch.X)
    for _ in range(6):
        W, loss, _, state = opt.step(W, batch.X, batch.Y, state, x_qr=x_qr)
        total = total + loss.log().sum()
    names = [n for n, _ in opt.named_parameters()]
    grads = torch.autograd.grad(total, list(opt.parameters()))
    out = {f"weights.{i}": w.detach() for i, w in enumerate(W)}
    out.update({f"grad.{n}": g for n, g in zip(names, grads)})
    if state.update is not None:
        out.update({"update_state.0": state.update[0].detach(), "update_state.1": state.update[1].detach()})
    return out


def test_defaults_reproduce_the_reference_step_bit_for_bit():
    ref = load_file(REFERENCE)
    for variant in VARIANTS:
        got = reference_run(variant)
        assert sorted(got) == sorted(k.split("/", 1)[1] for k in ref if k.startswith(variant + "/"))
        for k, t in got.items():
            assert torch.equal(t, ref[f"{variant}/{k}"]), (variant, k, float((t - ref[f"{variant}/{k}"]).abs().max()))


# --- update bound ---------------------------------------------------------------------------


def test_update_bound_holds_and_is_the_identity_for_small_updates():
    gen = torch.Generator().manual_seed(0)
    W = [torch.randn(3, 5, 4, generator=gen, dtype=torch.float64) * torch.tensor([0.1, 1.0, 10.0]).view(3, 1, 1).double(),
         torch.zeros(3, 2, 6, dtype=torch.float64)]  # an all-zero tensor moves within b · floor
    b, floor = 0.05, 1e-3
    scale = [w.flatten(1).square().mean(1).add(floor ** 2).sqrt().view(-1, 1, 1) for w in W]
    big = [100 * torch.randn(w.shape, generator=gen, dtype=torch.float64) for w in W]
    for u, s in zip(bounded_updates(W, big, b, floor), scale):
        assert (u.abs() <= b * s * (1 + 1e-12)).all()
        assert (u.abs() > 0.9 * b * s).float().mean() > 0.5  # large updates saturate at the bound
    small = [1e-3 * b * s * torch.randn(w.shape, generator=gen, dtype=torch.float64) for w, s in zip(W, scale)]
    for u, v, s in zip(bounded_updates(W, small, b, floor), small, scale):
        assert torch.allclose(u, v, rtol=1e-5, atol=0) and not torch.equal(u, v)  # (u / b s)² / 3 ≲ 1e-5


@pytest.mark.parametrize("variant", ["update", "tele"])
def test_update_bound_applies_to_m1_and_to_the_tele_variants_base_update(variant):
    task = TaskConfig([12, 6, 8, 4], "gaussian", bias=True)
    batch = sample_tasks(task, range(3), dtype=torch.float64)
    b = 0.01
    tele = {"ablation": {"every": 2}} if variant == "tele" else {}
    opts = {bound: optimizer(task, variant, lr=1.0, update_bound=bound, **tele) for bound in (None, b)}
    moved = {}
    for bound, opt in opts.items():
        W, state = batch.weights, opt.initial_state(3, dtype=torch.float64)
        W, _, _, state = opt.step(W, batch.X, batch.Y, state)  # step 0 teleports (tele); step 1 does not
        new, _, _, _ = opt.step(W, batch.X, batch.Y, state)
        moved[bound] = [(a - w).abs() / w.flatten(1).square().mean(1).add(1e-6).sqrt().view(-1, 1, 1)
                        for a, w in zip(new, W)]
    assert max(float(m.detach().max()) for m in moved[None]) > 10 * b  # lr 1: the raw step is far beyond the bound
    assert all(float(m.detach().max()) <= b * (1 + 1e-9) for m in moved[b])


# --- update safeguard -------------------------------------------------------------------------


def test_safeguarded_update_takes_exactly_the_updates_that_do_not_raise_the_loss():
    batch = sample_tasks(TaskConfig([12, 6, 8, 4], "gaussian"), range(16), dtype=torch.float64)
    loss_fn = squared_loss(batch.X, batch.Y)
    _, grads = loss_and_grads(batch.weights, batch.X, batch.Y)
    lr = torch.logspace(-4, 0, 16, dtype=torch.float64).view(-1, 1, 1)  # small rates lower the loss, large raise it
    raw = [w - lr * g for w, g in zip(batch.weights, grads)]
    before, after = loss_fn(batch.weights), loss_fn(raw)
    assert (after < before).any() and (after > before).any()
    chosen, loss, taken = safeguarded_update(batch.weights, raw, loss_fn)
    assert torch.equal(taken, after <= before)
    assert torch.equal(loss, torch.minimum(before, after)) and torch.equal(loss_fn(chosen), loss)
    for c, r, w in zip(chosen, raw, batch.weights):
        assert torch.equal(c[taken], r[taken]) and torch.equal(c[~taken], w[~taken])


@pytest.mark.parametrize("variant", ["update", "update+tele"])
def test_update_safeguard_never_lets_a_loss_rise_along_a_trajectory(variant):
    task = TaskConfig([8, 6, 8, 4], "gaussian", bias=True)  # n > d0 + 1: teleports change the loss
    batch = sample_tasks(task, range(8), dtype=torch.float64)
    rises = {}
    for guard in (False, True):
        tele = {"safeguard_tol": 0.0} if variant == "update+tele" else {}
        opt = optimizer(task, variant, lr=0.1, update_safeguard=guard, **tele)
        perturb(opt, 0.5)
        W, state, losses = batch.weights, opt.initial_state(8, dtype=torch.float64), []
        with torch.no_grad():
            for _ in range(15):
                W, loss, _, state = opt.step(W, batch.X, batch.Y, state)
                losses.append(loss)
        losses.append(mlp_loss(W, batch.X, batch.Y))
        L = torch.stack(losses)
        rises[guard] = L[1:] > L[:-1]
        if guard:
            assert (L[-1] < 0.5 * L[0]).any()  # and still makes progress (not on every task: see the docs)
    assert rises[False].any()  # lr 0.1: without the safeguard some steps raise the loss
    assert not rises[True].any()


def test_safeguards_need_the_loss():
    cfg = CoordinatewiseConfig(update_safeguard=True)
    W = [torch.zeros(1, 2, 2)]
    with pytest.raises(ValueError, match="update_safeguard"):
        stable_step(cfg, W, W, [], None, None, torch.zeros(1, 2, 2), None)


# --- optimizer state at a teleport ------------------------------------------------------------


@pytest.mark.parametrize("variant", ["tele", "update+tele"])
def test_reset_zeroes_exactly_the_moments_of_the_trajectories_that_teleported(variant):
    task = TaskConfig([8, 6, 8, 4], "gaussian", bias=True)  # the safeguard refuses some teleports
    batch = sample_tasks(task, range(8), dtype=torch.float64)
    loss_fn = squared_loss(batch.X, batch.Y)
    x_qr = input_qr(batch.weights, batch.X)
    keep, reset = (optimizer(task, variant, tele_norm_init=0.1, ablation={"every": 2, "teleport_state": s})
                   for s in ("keep", "reset"))
    perturb(keep)
    reset.load_state_dict(keep.state_dict())
    state = keep.initial_state(8, dtype=torch.float64)
    W = batch.weights
    for step in range(3):  # steps 0 and 2 teleport (every = 2), step 1 does not
        _, grads = loss_and_grads(W, batch.X, batch.Y)
        new_keep, s_keep = keep.apply(W, grads, batch.X, state, x_qr, loss_fn)
        new_reset, s_reset = reset.apply(W, grads, batch.X, state, x_qr, loss_fn)
        local, _ = keep.update(W, grads, state.update, 6)
        # (a zero T still moves the weights by rounding: the action solves with the data)
        teleported = torch.stack([((n - (w - u)).abs() > 1e-9).flatten(1).any(1)
                                  for n, w, u in zip(new_keep, W, local)]).any(0)
        if step == 1:
            assert not teleported.any()
        else:
            assert teleported.any() and not teleported.all()
        assert all(torch.equal(a, b) for a, b in zip(new_keep, new_reset))
        for kept, zeroed in zip(s_keep.update, s_reset.update):
            assert (kept[:, ~teleported] != 0).any()
            assert torch.equal(zeroed[:, teleported], torch.zeros_like(zeroed[:, teleported]))
            assert torch.equal(zeroed[:, ~teleported], kept[:, ~teleported])
        W, state = new_keep, s_keep


def test_a_reset_base_adam_restarts_its_bias_correction():
    # one trajectory; after a reset the next step is Adam's first step from the teleported weights
    base = HandDesignedUpdate(BaselineConfig(name="adam", lr=0.01))
    batch = sample_tasks(TaskConfig([6, 6, 6, 6], "gaussian"), range(1), dtype=torch.float64)
    _, grads = loss_and_grads(batch.weights, batch.X, batch.Y)
    fresh, _ = base(batch.weights, grads, None)
    _, state = base(batch.weights, [3 * g for g in grads], None)
    cfg = CoordinatewiseConfig(ablation={"teleport_state": "reset"}, safeguard=False)
    T = [torch.zeros(1, 6, 6, dtype=torch.float64)]
    _, state = stable_step(cfg, batch.weights, fresh, T, torch.ones(1, dtype=torch.bool), state, batch.X, None)
    again, _ = base(batch.weights, grads, state)
    assert all(torch.equal(a, b) for a, b in zip(again, fresh))


# --- ablation switches of m2 ------------------------------------------------------------------


def test_linear_teleport_gradient_is_the_teleport_gradient_of_a_linear_network():
    gen = torch.Generator().manual_seed(0)
    B, n, d0, d, d2 = 3, 5, 4, 6, 3
    X, Y = torch.randn(B, d0, n, generator=gen).double(), torch.randn(B, d2, n, generator=gen).double()
    V, U = torch.randn(B, d, d0 + 1, generator=gen).double(), torch.randn(B, d2, d + 1, generator=gen).double()
    Xa = torch.cat([X, torch.ones(B, 1, n).double()], dim=1)

    def grads(V, U):  # the linear network U [V [X; 1]; 1]
        H = torch.cat([V @ Xa, torch.ones(B, 1, n).double()], dim=1)
        loss = 0.5 * (U @ H - Y).square().sum()
        return torch.autograd.grad(loss, (V, U), create_graph=True)

    T = torch.zeros(B, d, d, dtype=torch.float64, requires_grad=True)
    g = torch.eye(d).double() + T
    Vt = g @ V.requires_grad_(True)
    Ut = torch.cat([U[..., :d] @ torch.linalg.inv(g), U[..., d:]], dim=-1)
    gv, gu = grads(Vt, Ut)
    G = torch.autograd.grad(gv.square().sum() + gu.square().sum(), T)[0]
    gv, gu = grads(V, U.requires_grad_(True))
    assert torch.allclose(linear_teleport_gradient([gv.detach(), gu.detach()])[0], G, rtol=1e-10, atol=1e-10)


def test_without_the_teleport_gradient_m2_steps_along_the_linear_one():
    task = TaskConfig([12, 6, 8, 4], "gaussian")
    batch = sample_tasks(task, range(3), dtype=torch.float64)
    loss_fn = squared_loss(batch.X, batch.Y)
    _, grads = loss_and_grads(batch.weights, batch.X, batch.Y)
    G = [mlp_teleport_gradient(batch.weights, batch.X, batch.Y)[0], linear_teleport_gradient(grads)[0]]
    for flag, g in zip((True, False), G):  # untrained: T = norm_init · Ĝ (step 0: no decay yet)
        m2 = EquivariantTeleport(CoordinatewiseConfig(ablation={"tele_gradient_input": flag})).double()
        T, _, _, active = teleport_outputs(m2, batch.weights, batch.X, loss_fn, [])
        assert torch.allclose(T[0], 0.003 * g / g.flatten(1).norm(dim=1).view(-1, 1, 1)) and active.all()
    assert not torch.allclose(G[0] / G[0].norm(), G[1] / G[1].norm())  # and the two differ
    opts = [optimizer(task, "tele", ablation={"tele_gradient_input": flag}) for flag in (True, False)]
    perturb(opts[0])
    opts[1].load_state_dict(opts[0].state_dict())
    new = [opt.apply(batch.weights, grads, batch.X, opt.initial_state(3), None, loss_fn)[0] for opt in opts]
    assert not torch.allclose(new[0][0], new[1][0])


def test_fixed_norm_ignores_the_norm_output_and_a_learned_gate_scales_T_within_0_1():
    gen = torch.Generator().manual_seed(0)
    G, gv, gu = (torch.randn(4, 5, 5, generator=gen).double(), torch.randn(4, 5, 3, generator=gen).double(),
                 torch.randn(4, 2, 5, generator=gen).double())
    every = EquivariantTeleport(CoordinatewiseConfig(tele_norm_init=0.02)).double()
    perturb(every, 1.0)
    fixed = EquivariantTeleport(CoordinatewiseConfig(tele_norm_init=0.02, ablation={"learn_norm": False})).double()
    fixed.load_state_dict(every.state_dict())
    T_every = every(G, gv, gu, None)[0]
    T_fixed = fixed(G, gv, gu, None)[0]
    norms = T_every.flatten(1).norm(dim=1)
    assert (norms - 0.02).abs().max() > 1e-3  # the learned norm moved
    assert torch.allclose(T_fixed.flatten(1).norm(dim=1), torch.full((4,), 0.02, dtype=torch.float64))
    assert torch.allclose(T_fixed / 0.02, T_every / norms.view(-1, 1, 1))  # same direction

    gated = EquivariantTeleport(CoordinatewiseConfig(tele_norm_init=0.02, ablation={"gate": "learned"})).double()
    with torch.no_grad():  # the same net, with a zero gate row added to the head
        for (name, p), q in zip(gated.named_parameters(), every.parameters()):
            p.copy_(torch.cat([q, torch.zeros(p.shape[0] - q.shape[0], *q.shape[1:]).double()]) if name.startswith("net.4") else q)
    out = gated.outputs(G, gv, gu, None)
    assert torch.allclose(out.T, 0.9 * T_every) and out.active.all()  # the untrained gate: 0.9
    with torch.no_grad():
        gated.net[4].weight[-1] = torch.randn(gated.net[4].weight.shape[1], generator=gen).double()
        gate = gated.outputs(G, gv, gu, None).T.flatten(1).norm(dim=1) / norms
        gated.net[4].bias[-1] -= (gate / (1 - gate)).log().mean()  # gates around ½, varying by task
    out = gated.outputs(G, gv, gu, None)
    ratio = out.T.flatten(1).norm(dim=1) / norms
    assert ((ratio > 0) & (ratio < 1)).all() and ratio.std() > 0.01
    assert torch.allclose(out.T / ratio.view(-1, 1, 1), T_every)
    assert torch.equal(out.active, ratio > 0.5) and out.active.any() and not out.active.all()


@pytest.mark.parametrize("option", [
    {}, {"update_bound": 0.05}, {"update_safeguard": True}, {"ablation.teleport_state": "reset"},
    {"ablation.tele_gradient_input": False}, {"ablation.gate": "learned"}, {"ablation.learn_norm": False},
])
def test_the_meta_gradient_reaches_every_network_with_each_option(option):
    config = MetaTrainConfig.from_dict(tiny(**{"learned.arch": "coordinatewise", "task.bias": True, "steps": 8,
                                               "learned.coordinatewise.ablation.every": 2,
                                               **{f"learned.coordinatewise.{k}": v for k, v in option.items()}}))
    eng = UnrollEngine(config)
    perturb(eng.optimizer, 0.1)
    eng.compute_meta_gradient()
    for net in (eng.optimizer.update, eng.optimizer.teleports[0]):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None and torch.isfinite(g).all() for g in grads)
        assert sum(float(g.abs().sum()) for g in grads) > 0


def test_options_are_validated():
    with pytest.raises(ValueError, match="coordinatewise.update_bound"):
        CoordinatewiseConfig(update_bound=-1.0)
    for field, value in (("teleport_state", "zero"), ("gate", "sometimes"), ("every", 0), ("learn_norm", 1)):
        with pytest.raises(ValueError, match=f"coordinatewise.ablation.{field}"):
            CoordinatewiseConfig(ablation={field: value})


if __name__ == "__main__":  # write the reference file (at the commit whose step is the reference)
    torch.set_num_threads(1)
    save_file({f"{v}/{k}": t.contiguous() for v in VARIANTS for k, t in reference_run(v).items()}, sys.argv[1])
