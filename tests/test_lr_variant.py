"""The ``lr`` variant: learned step-size gradient descent, ``lr+tele``'s twin without the teleport."""
from __future__ import annotations

import math

import pytest
import torch
import yaml
from torch import nn

from helpers import tiny

from metatele import LearnedTeleportOptimizer
from metatele.configs import ConfigError, apply_overrides, defaults_dir
from metatele.evaluation.identity import learned_id
from metatele.meta.config import MetaTrainConfig
from metatele.meta.engine import UnrollEngine
from metatele.optimizers.coordinatewise_step import teleport_outputs
from metatele.optimizers.coordinatewise import CoordinatewiseConfig
from metatele.optimizers.learned import LearnedConfig, LearnedOptimizer
from metatele.optimizers.lstm import LSTMConfig, TeleportConfig
from metatele.release.checkpoint import load_optimizer, save_checkpoint
from metatele.symmetry.teleport_grad import squared_loss, teleport_gradient
from metatele.tasks.family import TaskConfig, sample_tasks
from metatele.tasks.mlp import loss_and_grads

pytestmark = pytest.mark.usefixtures("one_thread")

TASK = TaskConfig([6, 6, 8, 7, 4], "gaussian", bias=True)  # three layers: η is the geometric mean over two pairs
ARCHS = ["paper", "coordinatewise"]


def twins(arch: str, seed: int = 0) -> tuple[LearnedOptimizer, LearnedOptimizer]:
    """``lr`` and ``lr+tele`` built from the same seed, then given the same random (non-zero)
    output layers, in float64, with a step-size range wide enough to move the weights."""
    opts = []
    for variant in ("lr", "lr+tele"):
        torch.manual_seed(seed)
        cfg = LearnedConfig(variant=variant, arch=arch, teleport=TeleportConfig(lr_min=1e-4, lr_max=1e-1),
                            **({"lstm": LSTMConfig(hidden=16)} if arch == "paper" else {}))
        opt = LearnedOptimizer(TASK, cfg).double()
        gen = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in opt.parameters():
                p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
        opts.append(opt)
    return opts[0], opts[1]


def step_sizes(opt: LearnedOptimizer, W, grads, X, Y) -> torch.Tensor:
    """The step size ``[B]`` that ``opt``'s m2 writes at a trajectory's first step (geometric mean over pairs)."""
    state = opt.initial_state(X.shape[0], None, torch.float64)
    if opt.config.arch == "coordinatewise":
        _, lrs, _, _ = teleport_outputs(opt.teleports[0], W, X, squared_loss(X, Y), state.teleport)
    else:
        lrs = [m2(grads[m], grads[m + 1], state.teleport[m])[1] for m, m2 in enumerate(opt.teleports)]
    return torch.stack(lrs).log().mean(0).exp()


@pytest.mark.parametrize("arch", ARCHS)
def test_lr_and_lr_tele_built_from_one_seed_are_twins(arch):
    torch.manual_seed(3)
    lr = LearnedOptimizer(TASK, LearnedConfig(variant="lr", arch=arch))
    torch.manual_seed(3)
    tele = LearnedOptimizer(TASK, LearnedConfig(variant="lr+tele", arch=arch))
    a, b = lr.state_dict(), tele.state_dict()
    assert a.keys() == b.keys() and len(a) > 0
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert lr.update is None and lr.config.teleport.emit_lr and not lr.config.uses_teleport and lr.config.uses_m2


@pytest.mark.parametrize("arch", ARCHS)
def test_an_lr_step_is_gradient_descent_at_the_step_size_m2_writes(arch):
    lr, tele = twins(arch)
    batch = sample_tasks(TASK, range(3), dtype=torch.float64)
    W, X, Y = batch.weights, batch.X, batch.Y
    _, grads = loss_and_grads(W, X, Y)
    eta = step_sizes(lr, W, grads, X, Y)
    assert torch.equal(eta, step_sizes(tele, W, grads, X, Y))  # the twins write the same η
    assert eta.min() > 1e-4 and eta.max() < 1e-1 and eta.std() > 0  # one per trajectory, within the range
    with torch.no_grad():
        new, _, _, _ = lr.step(W, X, Y, lr.initial_state(3, None, torch.float64))
        teleported, _, _, _ = tele.step(W, X, Y, tele.initial_state(3, None, torch.float64))
    for w, g, n, t in zip(W, grads, new, teleported):
        torch.testing.assert_close(n, w - eta.view(-1, 1, 1) * g, rtol=1e-12, atol=1e-14)
    # lr+tele took the same local step and then teleported: its weights differ from lr's
    assert any((n - t).abs().max() > 1e-6 for n, t in zip(new, teleported))


@pytest.mark.parametrize("arch", ARCHS)
def test_lr_never_teleports_each_step_moves_along_the_gradient(arch):
    """Over a trajectory, every ``lr`` step is ``W − η g`` with one ``η > 0`` per trajectory:
    ``(W − W') / g`` is the same for every coordinate of every layer (a teleport would break it)."""
    lr, _ = twins(arch)
    batch = sample_tasks(TASK, range(2), dtype=torch.float64)
    stepper = lr.start(batch.X, batch.Y, batch.weights)
    W = batch.weights
    for _ in range(5):
        _, grads = loss_and_grads(W, batch.X, batch.Y)
        new, _, _ = stepper.step(W)
        ratio = torch.cat([((w - n) / g).flatten(1) for w, n, g in zip(W, new, grads)], dim=1)
        eta = ratio.mean(1, keepdim=True)
        assert (eta > 0).all()
        torch.testing.assert_close(ratio, eta.expand_as(ratio), rtol=1e-8, atol=0)
        W = new


@pytest.mark.parametrize("arch", ARCHS)
def test_lr_meta_trains_learns_only_its_step_size_and_round_trips_a_checkpoint(arch, tmp_path):
    config = MetaTrainConfig.from_dict(tiny(**{"learned.variant": "lr", "learned.arch": arch,
                                               "learned.teleport.lr_max": 0.05, "trajectories": 16}))
    eng = UnrollEngine(config)
    head = eng.optimizer.teleports[0].net[-1] if arch == "coordinatewise" else eng.optimizer.teleports[0].net.head
    before = head.weight.detach().clone()
    losses = []
    while not eng.done:
        m = eng.meta_step()
        assert math.isfinite(m["meta_loss"]) and m["diverged"] == 0
        losses.append(m["meta_loss"])
    assert len(losses) >= 4
    # truncated backprop: only the η row of m2's output layer learns; the rows that write T get
    # no meta-gradient (T is never applied)
    changed = (head.weight.detach() != before).any(dim=1)
    assert changed[-1] and not changed[:-1].any()
    path = save_checkpoint(tmp_path / "lr.safetensors", eng.optimizer, config)
    loaded = load_optimizer(path)
    assert loaded.config == eng.optimizer.config
    a, b = loaded.state_dict(), eng.optimizer.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_lr_meta_trains_with_pes():
    eng = UnrollEngine(MetaTrainConfig.from_dict(tiny(**{"learned.variant": "lr", "learned.arch": "coordinatewise",
                                                         "estimator": "pes", "pes_groups": 2})))
    before = [p.detach().clone() for p in eng.meta_parameters]
    while not eng.done:
        assert math.isfinite(eng.meta_step()["meta_loss"])
    assert any(not torch.equal(a, p) for a, p in zip(before, eng.meta_parameters))


CW = "learned.arch=coordinatewise"


@pytest.mark.parametrize("run,item", [
    ([CW], "learned.coordinatewise.safeguard=false"),
    ([CW], "learned.coordinatewise.safeguard_tol=0.01"),
    ([CW], "learned.coordinatewise.ablation.every=5"),
    ([CW], "learned.coordinatewise.tele_norm_init=0.01"),
    ([CW], "learned.coordinatewise.tele_norm_max=0.5"),
    ([CW], "learned.coordinatewise.ablation.gate=learned"),
    ([CW], "learned.coordinatewise.ablation.learn_norm=false"),
    ([CW], "learned.coordinatewise.ablation.teleport_state=reset"),
    ([CW], "learned.teleport.exact=false"),
    ([], "learned.teleport.exact=false"),
    ([], "learned.teleport.eps=0.1"),
    ([], "learned.teleport.learn_eps=true"),
    ([CW], "lr_update=1e-2"),  # no m1 (lr_teleport applies: test_what_lr_s_m2_reads_and_writes_is_accepted)
])
def test_a_teleport_only_option_under_lr_is_an_error(run, item):
    with pytest.raises(ConfigError, match=f"^{item.split('=')[0]}: does not apply to this run: "):
        MetaTrainConfig.from_dict(apply_overrides({}, ["learned.variant=lr", *run, item]))


def test_what_lr_s_m2_reads_and_writes_is_accepted():
    cw = MetaTrainConfig.from_dict(apply_overrides({}, [
        CW, "learned.variant=lr", "learned.coordinatewise.tele_beta=0.5", "learned.coordinatewise.ablation.tele_gradient_input=false",
        "learned.coordinatewise.update_bound=0.5", "learned.teleport.lr_min=1e-6", "learned.teleport.lr_max=0.1",
        "lr_teleport=1e-3"]))
    assert cw.learned.local_update == "lr" and cw.lr_teleport == 1e-3
    paper = MetaTrainConfig.from_dict(apply_overrides({}, ["learned.variant=lr", "learned.teleport.lr_log_space=true"]))
    assert paper.learned.teleport.lr_log_space and not paper.learned.uses_teleport
    assert not learned_id("LSTM(lr)", "lr").teleport and learned_id("LSTM(lr+tele)", "lr+tele").base == "LSTM(lr)"


def test_the_lr_dropin_trains_a_user_network_and_needs_two_layers():
    lr, _ = twins("coordinatewise")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(7, 12), nn.LeakyReLU(0.1), nn.Linear(12, 3)).double()
    gen = torch.Generator().manual_seed(4)
    X, Y = torch.randn(7, 6, generator=gen, dtype=torch.float64), torch.randn(3, 6, generator=gen, dtype=torch.float64)
    opt = LearnedTeleportOptimizer.for_model(model, lr, X=X, Y=Y)

    def closure():
        opt.zero_grad()
        loss = 0.5 * (model(X.T) - Y.T).square().sum()
        loss.backward()
        return loss

    first = float(closure().detach())
    for _ in range(30):
        loss = opt.step(closure)
    assert float(loss.detach()) < 0.5 * first
    with pytest.raises(ValueError, match="at least two Linear layers"):
        LearnedTeleportOptimizer.for_model(nn.Sequential(nn.Linear(7, 3)).double(), lr, X=X, Y=Y)


def test_the_generalist_lr_pair_differs_only_in_the_variant():
    ship = defaults_dir() / "ship"
    tele, lr = (yaml.safe_load((ship / f"generalist_{n}.yaml").read_text()) for n in ("lr_tele", "lr"))
    assert tele["learned"].pop("variant") == "lr+tele" and lr["learned"].pop("variant") == "lr"
    assert tele == lr
    for name in ("lr_tele", "lr"):
        config = MetaTrainConfig.from_dict(yaml.safe_load((ship / f"generalist_{name}.yaml").read_text()))
        assert config.learned.arch == "coordinatewise" and config.mix is not None


@pytest.mark.parametrize("n", [4, 12])  # a symmetry, and more samples than a layer input allows
def test_the_teleport_gradient_lr_reads_does_not_depend_on_the_exact_flag(n):
    """Why ``teleport.exact`` does not apply to ``lr``: ``G`` is a derivative at ``T = 0``, where the
    exact action and its first-order form agree to first order."""
    task = TaskConfig([n, 5, 6, 7, 3], "gaussian", bias=True)
    batch = sample_tasks(task, range(2), dtype=torch.float64)
    exact, first = (teleport_gradient(batch.weights, batch.X, squared_loss(batch.X, batch.Y), exact=e)[0]
                    for e in (True, False))
    assert all(g.abs().max() > 0 for g in exact)
    for a, b in zip(exact, first):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("variant", ["lr", "lr+tele"])
def test_the_dropin_takes_a_step_size_variant_trained_with_the_update_safeguard(variant):
    """The drop-in's default backoff needs a local-update state to carry its step scale; ``η g`` has
    none, so the optimizer is used as trained (it was refused with a ConfigError before)."""
    task = TaskConfig([4, 6, 5, 3], "gaussian")
    learned = LearnedOptimizer(task, LearnedConfig(variant=variant, arch="coordinatewise",
                                                   coordinatewise=CoordinatewiseConfig(update_safeguard=True))).double()
    model = nn.Sequential(nn.Linear(6, 5), nn.LeakyReLU(0.1), nn.Linear(5, 3)).double()
    gen = torch.Generator().manual_seed(5)
    X, Y = torch.randn(6, 4, generator=gen, dtype=torch.float64), torch.randn(3, 4, generator=gen, dtype=torch.float64)
    opt = LearnedTeleportOptimizer(model, learned, X=X, Y=Y)
    assert opt.learned is learned and opt.learned.config.coordinatewise.update_backoff is None
    opt.zero_grad()
    (0.5 * (model(X.T) - Y.T).square().sum()).backward()
    opt.step()
