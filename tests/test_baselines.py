"""Hand-designed baselines on stacked weights, hyper-gradients and the paper's GD protocol
(metatele.optimizers.baselines)."""
from __future__ import annotations


import pytest
import torch

from metatele.optimizers.baselines import BASELINES, BaselineConfig, HandDesigned, HandDesignedUpdate, run_baseline
from metatele.configs import ConfigError
from metatele.tasks.mlp import grad_norm_sq, loss_and_grads, mlp_loss
from metatele.symmetry.strategies import TeleportSchedule
from metatele.tasks.family import TaskConfig, sample_tasks, training_seeds, unseen_seeds

pytestmark = pytest.mark.usefixtures("one_thread")


def _torch_optimizer(config: BaselineConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
    """The ``torch.optim`` optimizer the baseline ``config`` must match step for step."""
    c = config
    if c.name == "gd":
        return torch.optim.SGD(params, lr=c.lr)
    if c.name == "momentum":
        return torch.optim.SGD(params, lr=c.lr, momentum=c.momentum)
    if c.name == "adam":
        return torch.optim.Adam(params, lr=c.lr, betas=c.betas, eps=c.eps)
    if c.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=c.lr, alpha=c.alpha, eps=c.eps)
    return torch.optim.Adagrad(params, lr=c.lr, eps=c.eps)

# learning rates that make visible progress in a few steps on the small Gaussian task
LR = {"gd": 1e-2, "momentum": 3e-3, "adam": 1e-2, "rmsprop": 1e-3, "adagrad": 1e-2}


@pytest.fixture
def batch():
    return sample_tasks(TaskConfig([6, 8, 7, 5], "gaussian"), training_seeds(4), dtype=torch.float64)


def _run(config, batch, steps, **kwargs):
    """Weights, losses ``[steps, B]`` and squared gradient norms ``[steps, B]`` of ``steps`` updates."""
    opt = HandDesigned(config, batch.X, batch.Y, batch.weights, **kwargs)
    W, losses, norms = list(batch.weights), [], []
    for _ in range(steps):
        W, loss, gn = opt.step(W)
        losses.append(loss)
        norms.append(gn)
    return W, torch.stack(losses), torch.stack(norms)


# --- config ------------------------------------------------------------------------------


def test_config_defaults_are_the_papers_gd():
    config = BaselineConfig()
    assert (config.name, config.lr, config.teleport) == ("gd", 3e-4, None)
    assert config.label == "gd"
    assert set(BASELINES) == {"gd", "momentum", "adam", "rmsprop", "adagrad"}


def test_config_turns_a_teleport_dict_into_a_schedule_and_labels_it():
    config = BaselineConfig(teleport={"steps": [5], "strategy": "random"})
    assert isinstance(config.teleport, TeleportSchedule) and config.teleport.steps == [5]
    assert config.label == "gd+tele(random)"
    assert BaselineConfig(teleport={"steps": []}).label == "gd"


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"name": "lbfgs"}, "baseline.name"),
        ({"lr": 0.0}, "baseline.lr"),
        ({"momentum": 1.0}, "baseline.momentum"),
        ({"betas": (0.9, 1.0)}, "baseline.betas"),
        ({"betas": (0.9,)}, "baseline.betas"),
        ({"alpha": -0.1}, "baseline.alpha"),
        ({"eps": 0.0}, "baseline.eps"),
    ],
)
def test_config_rejects_bad_values_naming_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=field):
        BaselineConfig(**kwargs)


# --- batched = loop, and = torch.optim ---------------------------------------------------


@pytest.mark.parametrize("name", BASELINES)
def test_batched_baseline_equals_a_loop_over_single_tasks(name, batch, single):
    config = BaselineConfig(name, lr=LR[name])
    W, losses, norms = _run(config, batch, 6)
    for i in range(batch.batch_size):
        W_i, losses_i, norms_i = _run(config, single(batch, i), 6)
        torch.testing.assert_close(losses[:, i : i + 1], losses_i, rtol=1e-10, atol=0)
        torch.testing.assert_close(norms[:, i : i + 1], norms_i, rtol=1e-10, atol=0)
        for a, b in zip(W, W_i):
            torch.testing.assert_close(a[i : i + 1], b, rtol=1e-10, atol=1e-10)
    assert (losses[-1] < losses[0]).all()  # it optimizes


def test_batched_baseline_with_gradient_ascent_teleport_equals_a_loop(batch, single):
    config = BaselineConfig("momentum", lr=1e-3, teleport={"steps": [2], "ascent_steps": 2, "ascent_lr": 1e-4})
    W, losses, _ = _run(config, batch, 4)
    for i in range(batch.batch_size):
        W_i, losses_i, _ = _run(config, single(batch, i), 4)
        torch.testing.assert_close(losses[:, i : i + 1], losses_i, rtol=1e-10, atol=0)
        for a, b in zip(W, W_i):
            torch.testing.assert_close(a[i : i + 1], b, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("name", BASELINES)
def test_batched_baseline_equals_the_torch_optimizer_on_each_task(name, batch):
    """B separate ``torch.optim`` runs (Adam's eps placement included) give the same weights.

    AdaGrad's first step is ~lr·sign(g), so elements with a near-zero gradient amplify
    float64 rounding by lr/eps; hence its looser absolute tolerance.
    """
    config = BaselineConfig(name, lr=LR[name])
    steps = 10
    W, _, _ = _run(config, batch, steps)
    for i in range(batch.batch_size):
        params = [w[i].clone().requires_grad_(True) for w in batch.weights]
        opt = _torch_optimizer(config, params)
        for _ in range(steps):
            opt.zero_grad()
            mlp_loss([p[None] for p in params], batch.X[i : i + 1], batch.Y[i : i + 1]).sum().backward()
            opt.step()
        for a, b in zip(W, params):
            torch.testing.assert_close(a[i].detach(), b.detach(), rtol=1e-6, atol=1e-8 if name == "adagrad" else 1e-12)


def test_batched_adam_equals_separate_torch_adam_runs_on_the_reference_task():
    batch = sample_tasks(TaskConfig(), unseen_seeds(3), dtype=torch.float64)
    config = BaselineConfig("adam", lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
    W, losses, _ = _run(config, batch, 20)
    for i in range(3):
        params = [w[i].clone().requires_grad_(True) for w in batch.weights]
        opt = torch.optim.Adam(params, lr=1e-2, betas=(0.8, 0.99), eps=1e-6)
        curve = []
        for _ in range(20):
            opt.zero_grad()
            loss = mlp_loss([p[None] for p in params], batch.X[i : i + 1], batch.Y[i : i + 1]).sum()
            curve.append(loss.detach())
            loss.backward()
            opt.step()
        torch.testing.assert_close(losses[:, i], torch.stack(curve), rtol=1e-6, atol=0)
        for a, b in zip(W, params):
            torch.testing.assert_close(a[i].detach(), b.detach(), rtol=1e-6, atol=1e-12)


# --- step bookkeeping and teleports ------------------------------------------------------


def test_step_reports_loss_and_grad_norm_at_the_weights_it_updated(batch):
    opt = HandDesigned(BaselineConfig("gd", lr=1e-2), batch.X, batch.Y, batch.weights)
    new, loss, gn = opt.step(batch.weights)
    expected_loss, grads = loss_and_grads(batch.weights, batch.X, batch.Y)
    torch.testing.assert_close(loss, expected_loss.detach())
    torch.testing.assert_close(gn, grad_norm_sq(grads))
    for w, g, n in zip(batch.weights, grads, new):
        torch.testing.assert_close(n.detach(), w - 1e-2 * g)
    assert not loss.requires_grad and not gn.requires_grad


@pytest.mark.parametrize("strategy", ["random", "gradient_ascent"])
def test_scheduled_teleport_keeps_the_loss_and_steps_with_the_teleported_gradient(strategy):
    batch = sample_tasks(TaskConfig([6, 8, 7, 9, 5], "gaussian"), range(3), dtype=torch.float64)
    schedule = TeleportSchedule(steps=[1], strategy=strategy, eps=0.3, ascent_steps=2, ascent_lr=1e-4)
    plain = HandDesigned(BaselineConfig("gd", lr=1e-3), batch.X, batch.Y, batch.weights)
    tele = HandDesigned(BaselineConfig("gd", lr=1e-3, teleport=schedule), batch.X, batch.Y, batch.weights)
    W_plain, _, _ = plain.step(batch.weights)
    W_tele, _, _ = tele.step(batch.weights)  # step 0: no teleport yet
    for a, b in zip(W_plain, W_tele):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    W_plain = [w.detach() for w in W_plain]
    _, loss_plain, gn_plain = plain.step(W_plain)
    new, loss_tele, gn_tele = tele.step(W_plain)  # step 1: teleport, then update
    torch.testing.assert_close(loss_tele, loss_plain, rtol=1e-10, atol=0)
    assert (gn_tele != gn_plain).all()
    # the update is plain GD from the teleported point, with its true gradient ∂L/∂W_i
    teleported = schedule.build()(W_plain, batch.X, batch.Y)
    _, grads = loss_and_grads(teleported, batch.X, batch.Y)
    torch.testing.assert_close(gn_tele, grad_norm_sq(grads))
    for w, g, n in zip(teleported, grads, new):
        torch.testing.assert_close(n.detach(), w.detach() - 1e-3 * g, rtol=1e-10, atol=1e-12)


def test_run_baseline_returns_the_loss_curve_without_graph(batch):
    curve = run_baseline(BaselineConfig("adam", lr=1e-2), batch.X, batch.Y, batch.weights, 7)
    assert curve.shape == (8, 4) and not curve.requires_grad
    torch.testing.assert_close(curve[0], mlp_loss(batch.weights, batch.X, batch.Y))
    assert (curve[-1] < curve[0]).all()


# --- hyper-gradients ---------------------------------------------------------------------


def _meta_loss(name, batch, lr, steps, differentiable=True):
    """Sum of the inner losses over ``steps`` updates plus the final loss."""
    opt = HandDesigned(BaselineConfig(name), batch.X, batch.Y, batch.weights, differentiable=differentiable, lr=lr)
    W, total = list(batch.weights), 0
    for _ in range(steps):
        W, loss, _ = opt.step(W)
        total = total + loss.sum()
    return total + mlp_loss(W, batch.X, batch.Y).sum()


@pytest.mark.parametrize("name", BASELINES)
def test_hyper_gradient_of_lr_is_finite_and_non_zero_from_the_first_step(name, batch):
    lr = torch.tensor(LR[name], dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(_meta_loss(name, batch, lr, steps=1), lr)
    assert torch.isfinite(grad) and grad.abs() > 1e-6  # Adam: second moment starts at zero


@pytest.mark.parametrize("name", BASELINES)
def test_hyper_gradient_of_lr_matches_finite_differences(name, batch):
    base = LR[name]
    lr = torch.tensor(base, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(_meta_loss(name, batch, lr, steps=3), lr)
    h = base * 1e-4
    with torch.no_grad():
        plus = _meta_loss(name, batch, torch.tensor(base + h, dtype=torch.float64), 3, differentiable=False)
        minus = _meta_loss(name, batch, torch.tensor(base - h, dtype=torch.float64), 3, differentiable=False)
    torch.testing.assert_close(grad, (plus - minus) / (2 * h), rtol=1e-5, atol=0)


def test_hyper_gradient_of_momentum_is_finite_and_non_zero(batch):
    momentum = torch.tensor(0.9, dtype=torch.float64, requires_grad=True)
    opt = HandDesigned(BaselineConfig("momentum", lr=1e-3), batch.X, batch.Y, batch.weights,
                       differentiable=True, momentum=momentum)
    W = list(batch.weights)
    for _ in range(3):
        W, _, _ = opt.step(W)
    (grad,) = torch.autograd.grad(mlp_loss(W, batch.X, batch.Y).sum(), momentum)
    assert torch.isfinite(grad) and grad.abs() > 0


@pytest.mark.parametrize("name", BASELINES)
def test_per_task_lr_equals_running_each_task_with_its_lr(name, batch, single):
    lrs = torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=torch.float64) * LR[name]
    curves = run_baseline(BaselineConfig(name), batch.X, batch.Y, batch.weights, 5, lr=lrs)
    for i in range(4):
        one = single(batch, i)
        alone = run_baseline(BaselineConfig(name, lr=float(lrs[i])), one.X, one.Y, one.weights, 5)
        # AdaGrad amplifies rounding of near-zero gradient elements by lr/eps (see above)
        torch.testing.assert_close(curves[:, i : i + 1], alone, rtol=1e-7 if name == "adagrad" else 1e-10, atol=0)


@pytest.mark.parametrize("name", ["gd", "adam"])
def test_per_task_hyper_gradient_equals_each_tasks_own(name, batch, single):
    lrs = (torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=torch.float64) * LR[name]).requires_grad_(True)
    (grads,) = torch.autograd.grad(_meta_loss(name, batch, lrs, steps=2), lrs)
    for i in range(4):
        lr_i = lrs[i].detach().clone().requires_grad_(True)
        (g_i,) = torch.autograd.grad(_meta_loss(name, single(batch, i), lr_i, steps=2), lr_i)
        torch.testing.assert_close(grads[i], g_i, rtol=1e-9, atol=0)


def test_per_task_lr_of_the_wrong_size_is_rejected(batch):
    with pytest.raises(ValueError, match=r"\[B\] = \[4\]"):
        HandDesigned(BaselineConfig(), batch.X, batch.Y, batch.weights, lr=torch.ones(3))


def test_momentum_override_only_applies_to_momentum(batch):
    with pytest.raises(ValueError, match="momentum"):
        HandDesigned(BaselineConfig("adam"), batch.X, batch.Y, batch.weights, momentum=0.5)


def test_hand_designed_validates_shapes(batch):
    with pytest.raises(ValueError, match="Y"):
        HandDesigned(BaselineConfig(), batch.X, batch.Y[:, :2], batch.weights)


# --- the paper's protocol (docs/protocol.md, reference measurements) ------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    return sample_tasks(TaskConfig([20, 20, 20, 20]), unseen_seeds(20), dtype=torch.float64)


def test_gd_lr_3e_4_reaches_median_loss_below_60_by_step_30(reference):
    curve = run_baseline(BaselineConfig("gd", lr=3e-4), reference.X, reference.Y, reference.weights, 30)
    median = curve.median(dim=1).values
    assert median[0] > 1e5
    assert median[30] < 60  # docs/protocol.md: the paper code's mean 46 at step 30 over 5 seeds


def test_one_gradient_ascent_teleport_at_step_5_lowers_gd_loss_at_step_300(reference):
    X, Y, W = reference.X, reference.Y, reference.weights
    plain = run_baseline(BaselineConfig("gd", lr=1e-4), X, Y, W, 300)
    tele = run_baseline(BaselineConfig("gd", lr=1e-4, teleport=TeleportSchedule(steps=[5])), X, Y, W, 300)
    torch.testing.assert_close(tele[:6], plain[:6], rtol=1e-10, atol=0)  # identical up to the teleport
    assert tele[300].median() < 0.8 * plain[300].median()  # measured ~25.9 vs ~49.9
    assert (tele[300] < plain[300]).sum() >= 18  # measured: lower on 20 of 20 seeds
