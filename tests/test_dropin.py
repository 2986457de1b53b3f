"""The drop-in torch.optim wrapper around a learned optimizer."""
from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from metatele.release.checkpoint import load_optimizer, save_checkpoint
from metatele.optimizers.dropin import ActivationWarning, LearnedTeleportOptimizer, check_model
from metatele.optimizers.learned import LearnedConfig, LearnedOptimizer
from metatele.optimizers.coordinatewise import CoordinatewiseConfig
from metatele.optimizers.lstm import LSTMConfig, TeleportConfig
from metatele.tasks.mlp import mlp_loss
from metatele.symmetry.action import SymmetryWarning
from metatele.tasks.family import TaskConfig, sample_tasks
from metatele.meta.config import MetaTrainConfig

TASK = TaskConfig(dims=[4, 6, 5, 3], distribution="gaussian")  # n=4 ≤ every layer input: a symmetry


def learned_optimizer(variant: str, task: TaskConfig = TASK) -> LearnedOptimizer:
    torch.manual_seed(0)
    return LearnedOptimizer(task, LearnedConfig(variant=variant, lstm=LSTMConfig(hidden=16))).double()


def user_model(weights: list[torch.Tensor]) -> nn.Sequential:
    """The nn.Sequential equivalent to stacked weights of batch 1."""
    layers: list[nn.Module] = []
    for i, w in enumerate(weights):
        if i:
            layers.append(nn.LeakyReLU(0.1))
        linear = nn.Linear(w.shape[2], w.shape[1], bias=False).double()
        with torch.no_grad():
            linear.weight.copy_(w[0])
        layers.append(linear)
    return nn.Sequential(*layers)


def make_closure(opt, model, X, Y):
    def closure():
        opt.zero_grad()
        loss = 0.5 * (model(X.T) - Y.T).square().sum()  # columns are samples: this is mlp_loss
        loss.backward()
        return loss

    return closure


@pytest.mark.parametrize("variant", ["update", "update+tele", "lr+tele", "tele", "lr"])
def test_dropin_matches_learned_optimizer_on_the_stacked_task(variant):
    """Stepping a user's nn.Sequential equals LearnedOptimizer.step / LearnedStepper at B = 1."""
    learned = learned_optimizer(variant)
    batch = sample_tasks(TASK, [7], dtype=torch.float64)
    model = user_model(batch.weights)
    X, Y = batch.X[0], batch.Y[0]
    opt = LearnedTeleportOptimizer.for_model(model, learned, X=X)
    closure = make_closure(opt, model, X, Y)
    W, state = batch.weights, learned.initial_state(1, None, torch.float64)
    stepper, W_stepper = learned.start(batch.X, batch.Y, batch.weights), batch.weights
    for _ in range(6):
        with torch.no_grad():
            W, loss, _, state = learned.step(W, batch.X, batch.Y, state)
        W_stepper, stepper_loss, _ = stepper.step(W_stepper)
        user_loss = opt.step(closure)
        torch.testing.assert_close(user_loss.detach(), loss[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(user_loss.detach(), stepper_loss[0], rtol=1e-12, atol=0)
        for w, ws, p in zip(W, W_stepper, model.parameters()):
            torch.testing.assert_close(p.detach(), w[0], rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(p.detach(), ws[0], rtol=1e-10, atol=1e-12)
    assert float(opt.state[next(model.parameters())]["step"]) == 6


def test_teleport_alone_keeps_the_user_loss():
    learned = learned_optimizer("update+tele")
    with torch.no_grad():  # m1 writes a zero update: the step is a pure teleport
        learned.update.net.head.weight.zero_()
        learned.update.net.head.bias.zero_()
    batch = sample_tasks(TASK, [3], dtype=torch.float64)
    model = user_model(batch.weights)
    X, Y = batch.X[0], batch.Y[0]
    opt = LearnedTeleportOptimizer(model, learned, X=X)
    closure = make_closure(opt, model, X, Y)
    before = [p.detach().clone() for p in model.parameters()]
    losses = [float(opt.step(closure).detach()) for _ in range(3)]
    assert any(not torch.allclose(a, p) for a, p in zip(before, model.parameters()))  # it moved
    final = float(mlp_loss([p.detach().unsqueeze(0) for p in model.parameters()], batch.X, batch.Y))
    assert losses[1] == pytest.approx(losses[0], rel=1e-10)
    assert final == pytest.approx(losses[0], rel=1e-10)


def test_step_without_closure_uses_existing_gradients():
    learned = learned_optimizer("update")
    batch = sample_tasks(TASK, [1], dtype=torch.float64)
    model = user_model(batch.weights)
    opt = LearnedTeleportOptimizer(model.parameters(), learned)
    with pytest.raises(RuntimeError, match="no gradient"):
        opt.step()
    loss = 0.5 * (model(batch.X[0].T) - batch.Y[0].T).square().sum()
    loss.backward()
    assert opt.step() is None
    W, _, _, _ = learned.step(batch.weights, batch.X, batch.Y, learned.initial_state(1, None, torch.float64))
    torch.testing.assert_close(next(model.parameters()).detach(), W[0][0].detach())


def test_parameter_shape_mismatch_names_expected_and_got():
    learned = learned_optimizer("update")
    wrong = nn.Sequential(nn.Linear(6, 4, bias=False), nn.LeakyReLU(0.1), nn.Linear(4, 3, bias=False))
    with pytest.raises(ValueError, match=r"\[\(4, 6\), \(3, 4\)\].*\[\(5, 6\), \(3, 5\)\]"):
        LearnedTeleportOptimizer(wrong.parameters(), learned)
    with pytest.raises(ValueError, match="parameter shapes"):
        LearnedTeleportOptimizer(list(wrong.parameters())[:1], learned)


def test_check_model_rejects_biases_and_other_activations():
    learned = learned_optimizer("update")
    good = nn.Sequential(nn.Linear(6, 5, bias=False), nn.LeakyReLU(0.1), nn.Linear(5, 3, bias=False))
    check_model(good, learned)
    with pytest.raises(ValueError, match=r"model\[0\] must be nn.Linear\(\.\.\., bias=False\)"):
        check_model(nn.Sequential(nn.Linear(6, 5), nn.LeakyReLU(0.1), nn.Linear(5, 3, bias=False)), learned)
    with pytest.raises(ValueError, match=r"model\[1\] must be nn.LeakyReLU\(0.1\)"):
        check_model(nn.Sequential(nn.Linear(6, 5, bias=False), nn.ReLU(), nn.Linear(5, 3, bias=False)), learned)


def test_data_is_validated_and_may_be_batched_or_replaced():
    learned = learned_optimizer("update+tele")
    batch = sample_tasks(TASK, [1], dtype=torch.float64)
    model = user_model(batch.weights)
    with pytest.raises(ValueError, match="needs the data X"):
        LearnedTeleportOptimizer(model.parameters(), learned)
    with pytest.raises(ValueError, match=r"\[6, n\].*got shape \(4, 6\).*X.T"):
        LearnedTeleportOptimizer(model, learned, X=batch.X[0].T)
    opt = LearnedTeleportOptimizer(model, learned, X=batch.X)  # [1, d0, n]
    assert opt.X.shape == (1, 6, 4)
    with pytest.warns(SymmetryWarning, match="not a symmetry"):
        opt.set_data(torch.randn(6, 8, dtype=torch.float64))  # n = 8 > 6: no left inverse
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.set_data(batch.X[0])


def test_state_dict_round_trip_continues_the_same_trajectory():
    batch = sample_tasks(TASK, [2], dtype=torch.float64)
    X, Y = batch.X[0], batch.Y[0]
    learned = learned_optimizer("update+tele")

    def run(steps, model, opt):
        closure = make_closure(opt, model, X, Y)
        for _ in range(steps):
            opt.step(closure)

    ref = user_model(batch.weights)
    ref_opt = LearnedTeleportOptimizer(ref, learned, X=X)
    run(5, ref, ref_opt)

    first = user_model(batch.weights)
    first_opt = LearnedTeleportOptimizer(first, learned, X=X)
    run(2, first, first_opt)
    resumed = user_model([p.detach().unsqueeze(0) for p in first.parameters()])
    resumed_opt = LearnedTeleportOptimizer(resumed, learned, X=X)
    resumed_opt.load_state_dict(first_opt.state_dict())
    run(3, resumed, resumed_opt)
    for a, b in zip(ref.parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    resumed_opt.reset_state()
    assert not resumed_opt.state


def test_float32_checkpoint_drives_a_float64_user_model(tmp_path):
    config = MetaTrainConfig(task=TASK, learned=LearnedConfig(variant="update+tele", lstm=LSTMConfig(hidden=16)),
                             trajectories=4)
    torch.manual_seed(0)
    path = save_checkpoint(tmp_path / "opt.safetensors", LearnedOptimizer(config.task, config.learned), config)
    learned = load_optimizer(path, task=TASK)
    batch = sample_tasks(TASK, [5], dtype=torch.float64)
    model = user_model(batch.weights)
    opt = LearnedTeleportOptimizer.for_model(model, learned, X=batch.X[0])
    closure = make_closure(opt, model, batch.X[0], batch.Y[0])
    for _ in range(3):
        loss = opt.step(closure)
    assert torch.isfinite(loss) and next(model.parameters()).dtype == torch.float64
    W = [w.float() for w in batch.weights]
    state = learned.initial_state(1, None, torch.float32)
    with torch.no_grad():
        for _ in range(3):
            W, _, _, state = learned.step(W, batch.X.float(), batch.Y.float(), state)
    for w, p in zip(W, model.parameters()):
        torch.testing.assert_close(p.detach().float(), w[0], rtol=1e-4, atol=1e-5)


# --- coordinatewise: any nn.Sequential of Linear (with or without bias) and LeakyReLU(0.1) ----------


def coordinatewise(variant: str, **cw) -> LearnedOptimizer:
    torch.manual_seed(0)
    tele = TeleportConfig(lr_min=1e-3, lr_max=3e-2) if variant in ("lr+tele", "lr") else TeleportConfig()  # step sizes
    opt = LearnedOptimizer(TASK, LearnedConfig(variant=variant, arch="coordinatewise", teleport=tele,
                                               coordinatewise=CoordinatewiseConfig(**cw))).double()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():  # a non-trivial (not exactly Adam) optimizer
        for p in opt.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return opt


def biased_model(sizes: list[int], seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    layers: list[nn.Module] = []
    for i in range(len(sizes) - 1):
        if i:
            layers.append(nn.LeakyReLU(0.1))
        layers.append(nn.Linear(sizes[i], sizes[i + 1], bias=i % 2 == 0).double())
    return nn.Sequential(*layers)


@pytest.mark.parametrize("variant", ["update", "update+tele", "lr+tele", "lr"])
def test_coordinatewise_dropin_trains_an_unseen_network_with_biases(variant):
    model = biased_model([9, 31, 17, 23, 4])  # biases on layers 0 and 2, none on 1 and 3
    gen = torch.Generator().manual_seed(2)
    X, Y = torch.randn(9, 8, generator=gen, dtype=torch.float64), torch.randn(4, 8, generator=gen, dtype=torch.float64)
    opt = LearnedTeleportOptimizer.for_model(model, coordinatewise(variant), X=X, Y=Y)
    closure = make_closure(opt, model, X, Y)
    first = float(closure().detach())
    for _ in range(60):
        loss = opt.step(closure)
    # lr+tele and lr take plain gradient steps at a rate within [1e-3, 3e-2]: slower
    assert float(loss.detach()) < (0.8 if variant in ("lr+tele", "lr") else 0.3) * first


def dropin_beside_stacked(learned: LearnedOptimizer, steps: int):
    """``steps`` drop-in steps on a biased model and the same steps of ``learned`` on its stacked
    weights: ``(model, stacked weights, stacked state, drop-in optimizer)``."""
    model = biased_model([6, 7, 5, 3])
    X, Y = torch.randn(6, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    W = [torch.cat([model[0].weight, model[0].bias[:, None]], 1)[None].detach().clone(),
         model[2].weight[None].detach().clone(),
         torch.cat([model[4].weight, model[4].bias[:, None]], 1)[None].detach().clone()]
    opt = LearnedTeleportOptimizer.for_model(model, learned, X=X, Y=Y)
    closure = make_closure(opt, model, X, Y)
    state = learned.initial_state(1, None, torch.float64)
    for _ in range(steps):
        opt.step(closure)
        with torch.no_grad():
            W, _, _, state = learned.step(W, X[None], Y[None], state)
    return model, W, state, opt


def test_coordinatewise_dropin_step_equals_the_stacked_step():
    model, W, _, _ = dropin_beside_stacked(coordinatewise("update+tele"), 3)
    torch.testing.assert_close(model[2].weight.detach(), W[1][0])
    torch.testing.assert_close(model[4].bias.detach(), W[2][0, :, -1])


def test_coordinatewise_dropin_with_the_safeguard_backoff_follows_the_stacked_step_and_keeps_its_scale():
    learned = coordinatewise("update+tele", lr=1.0, update_safeguard=True, update_backoff=0.5)  # refusals
    model, W, state, opt = dropin_beside_stacked(learned, 12)
    torch.testing.assert_close(model[2].weight.detach(), W[1][0])
    log_scale = state.update[1][1]
    assert float(log_scale) < 0  # backed off
    assert torch.equal(opt.state_dict()["state"][0]["update_c"][1], log_scale)  # σ travels with the state


def test_coordinatewise_dropin_honours_parameter_groups_and_round_trips_state():
    model = biased_model([6, 7, 5, 3])
    X, Y = torch.randn(6, 5, dtype=torch.float64), torch.randn(3, 5, dtype=torch.float64)
    frozen = [model[2].weight.detach().clone()]
    groups = [{"params": list(model[0].parameters())}, {"params": list(model[2].parameters()), "scale": 0.0},
              {"params": list(model[4].parameters()), "scale": 0.5}]
    opt = LearnedTeleportOptimizer(groups, coordinatewise("update"), X=X, Y=Y)
    closure = make_closure(opt, model, X, Y)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(3):
        opt.step(closure)
    assert torch.equal(model[2].weight, frozen[0])  # scale 0: no update
    assert not torch.equal(model[0].weight, before[0]) and not torch.equal(model[4].bias, before[4])
    other = biased_model([6, 7, 5, 3])
    with torch.no_grad():
        for a, b in zip(other.parameters(), model.parameters()):
            a.copy_(b)
    groups2 = [{"params": list(other[0].parameters())}, {"params": list(other[2].parameters()), "scale": 0.0},
               {"params": list(other[4].parameters()), "scale": 0.5}]
    opt2 = LearnedTeleportOptimizer(groups2, opt.learned, X=X, Y=Y)
    opt2.load_state_dict(opt.state_dict())
    opt.step(closure)
    opt2.step(make_closure(opt2, other, X, Y))
    for a, b in zip(model.parameters(), other.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_coordinatewise_dropin_needs_targets_and_warns_once_for_a_wide_batch():
    model = biased_model([6, 7, 5, 3])
    learned = coordinatewise("update+tele")
    X = torch.randn(6, 5, dtype=torch.float64)
    opt = LearnedTeleportOptimizer.for_model(model, learned, X=X)
    with pytest.raises(ValueError, match="targets Y"):
        opt.step(make_closure(opt, model, X, torch.randn(3, 5, dtype=torch.float64)))
    wide = torch.randn(6, 9, dtype=torch.float64)  # n = 9 > 6 + 1
    with pytest.warns(SymmetryWarning, match="not a symmetry"):
        opt.set_data(wide, torch.randn(3, 9, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        opt.set_data(wide)  # warned once already
        opt.step(make_closure(opt, model, wide, opt.Y))


def test_custom_loss_on_the_teleport_batch():
    model = biased_model([6, 7, 5, 3])
    X, labels = torch.randn(6, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    ce = lambda out, y: nn.functional.cross_entropy(out, y, reduction="sum")  # noqa: E731
    opt = LearnedTeleportOptimizer.for_model(model, coordinatewise("update+tele"), X=X, Y=labels, loss=ce)

    def closure():
        opt.zero_grad()
        loss = ce(model(X.T), labels)
        loss.backward()
        return loss

    first = float(closure().detach())
    for _ in range(40):
        loss = opt.step(closure)
    assert float(loss.detach()) < 0.5 * first


# --- what the drop-in refuses: activations it cannot teleport, non-finite data and weights, foreign states ---
@pytest.mark.parametrize("activation", [nn.ReLU(), nn.LeakyReLU(0.2), nn.Tanh()])
def test_the_plain_constructor_refuses_a_model_it_cannot_teleport(activation):
    learned = learned_optimizer("update+tele")
    model = nn.Sequential(nn.Linear(6, 5, bias=False), activation, nn.Linear(5, 3, bias=False)).double()
    X = torch.randn(6, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"model\[1\] must be nn.LeakyReLU\(0.1\)"):
        LearnedTeleportOptimizer(model, learned, X=X)
    with pytest.warns(ActivationWarning, match="cannot check the network's activations or the order"):
        LearnedTeleportOptimizer(model.parameters(), learned, X=X)  # bare parameters: it says what it cannot see
    with pytest.warns(ActivationWarning):  # square layers in the wrong order: shapes cannot tell
        square = nn.Sequential(nn.Linear(6, 6, bias=False), nn.LeakyReLU(0.1), nn.Linear(6, 6, bias=False)).double()
        LearnedTeleportOptimizer(list(square.parameters())[::-1], coordinatewise("update+tele"), X=X,
                                 Y=torch.randn(6, 4, dtype=torch.float64))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a checked model, or a variant that does not teleport: no warning
        LearnedTeleportOptimizer(user_model(sample_tasks(TASK, [1], dtype=torch.float64).weights), learned, X=X)
        LearnedTeleportOptimizer(model.parameters(), learned_optimizer("update"))


def test_a_non_finite_teleport_batch_is_refused_when_set_and_the_weights_stay_finite():
    learned = learned_optimizer("update+tele")
    batch = sample_tasks(TASK, [1], dtype=torch.float64)
    model = user_model(batch.weights)
    X, Y = batch.X[0].clone(), batch.Y[0]
    X[2, 1] = float("nan")
    with pytest.raises(ValueError, match="X has 1 non-finite entries"):
        LearnedTeleportOptimizer(model, learned, X=X)
    opt = LearnedTeleportOptimizer(model, learned, X=batch.X[0])
    bad_Y = Y.clone()
    bad_Y[1, 3] = float("inf")
    with pytest.raises(ValueError, match="Y has 1 non-finite entries"):
        opt.set_data(batch.X[0], bad_Y)
    before = [p.detach().clone() for p in model.parameters()]
    make_closure(opt, model, batch.X[0], Y)()
    with torch.no_grad():  # a learned optimizer whose update overflows
        learned.update.net.head.bias.fill_(float("inf"))
    with pytest.raises(FloatingPointError, match="non-finite weights from finite weights and gradients.*left unchanged"):
        opt.step()
    assert all(torch.equal(a, p) for a, p in zip(before, model.parameters()))


def test_a_coordinatewise_state_is_refused_by_a_paper_optimizer_at_load_time():
    X, Y = torch.randn(6, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    paper_model = user_model(sample_tasks(TASK, [1], dtype=torch.float64).weights)
    cw_model = nn.Sequential(nn.Linear(6, 5, bias=False), nn.LeakyReLU(0.1), nn.Linear(5, 3, bias=False)).double()
    cw = LearnedTeleportOptimizer(cw_model, coordinatewise("update+tele"), X=X, Y=Y)
    make_closure(cw, cw_model, X, Y)()
    cw.step()
    paper = LearnedTeleportOptimizer(paper_model, learned_optimizer("update+tele"), X=X)
    with pytest.raises(ValueError, match="does not fit the learned optimizer .arch paper"):
        paper.load_state_dict(cw.state_dict())
    assert not paper.state  # nothing was loaded


# -- safe on any model: a refusing safeguard backs off, and a stall says so ------------------------
def _stalling_setup(**kw):
    """A coordinatewise update optimizer whose first steps are far too large for the network (m1
    starts as Adam at lr 10), with the update safeguard: every such step raises the loss."""
    import metatele as mt
    from metatele.optimizers.coordinatewise import CoordinatewiseConfig
    from metatele.optimizers.learned import LearnedConfig, LearnedOptimizer
    torch.manual_seed(0)
    cw = CoordinatewiseConfig(lr=10.0, update_safeguard=True, **kw)
    learned = LearnedOptimizer(mt.TaskConfig(dims=[8, 6, 8, 4], distribution="gaussian"),
                               LearnedConfig(variant="update", arch="coordinatewise", coordinatewise=cw))
    model = nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(0.1), nn.Linear(8, 4))
    X, Y = torch.randn(6, 8), torch.randn(4, 8)
    return learned, model, X, Y


def _run(opt, model, X, Y, steps):
    def closure():
        opt.zero_grad()
        loss = 0.5 * (model(X.T) - Y.T).square().sum()
        loss.backward()
        return loss
    return [opt.step(closure).item() for _ in range(steps)]


def test_an_optimizer_whose_safeguard_refuses_every_step_stalls_as_trained_and_says_so():
    from metatele.optimizers.dropin import STALL_PATIENCE, StallWarning
    learned, model, X, Y = _stalling_setup()
    opt = LearnedTeleportOptimizer(model, learned, X=X, Y=Y, backoff=None)
    with pytest.warns(StallWarning, match="unchanged for 10 steps"):
        losses = _run(opt, model, X, Y, STALL_PATIENCE + 2)
    assert len(set(losses)) == 1 and opt.stalled_steps == STALL_PATIENCE + 2


def test_the_drop_in_backs_off_where_the_safeguard_refuses_and_the_loss_falls():
    import warnings as w
    from metatele.optimizers.dropin import StallWarning
    learned, model, X, Y = _stalling_setup()
    opt = LearnedTeleportOptimizer(model, learned, X=X, Y=Y)  # the default backoff
    assert learned.config.coordinatewise.update_backoff is None  # the caller's optimizer is not changed
    assert opt.learned.config.coordinatewise.update_backoff == 0.5
    with w.catch_warnings():
        w.simplefilter("error", StallWarning)
        losses = _run(opt, model, X, Y, 40)
    assert losses[-1] < 0.5 * losses[0]


def test_a_coordinatewise_optimizer_without_data_is_refused_when_built():
    learned, model, X, Y = _stalling_setup()
    with pytest.raises(ValueError, match="batch size n"):
        LearnedTeleportOptimizer(model, learned)


def test_backoff_is_checked():
    learned, model, X, Y = _stalling_setup()
    with pytest.raises(ValueError, match="backoff"):
        LearnedTeleportOptimizer(model, learned, X=X, Y=Y, backoff=1.5)
