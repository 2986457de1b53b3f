"""Hand-designed baselines on stacked weights, differentiable end to end.

GD, SGD with momentum, Adam, RMSProp and AdaGrad are element-wise, so one update over the
stacked ``[B, d_i, d_{i-1}]`` weights advances B independent tasks exactly as B separate
optimizers would. :class:`HandDesignedUpdate` is their one implementation (each matches the
``torch.optim`` class step for step), written in plain tensor operations with its state held per
trajectory, so hyper-parameters given as tensors (learning rate, momentum) can be differentiated
through an unroll (``differentiable=True``), may be per task (a ``[B]`` tensor, which lets a
learning-rate grid run as one batch), and a trajectory's state can be reset on its own (the
learned ``tele`` variant's local update).

Each optimizer can teleport on a :class:`~metatele.symmetry.strategies.TeleportSchedule`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import nn

from ..configs import check_fields, require
from .lstm import State, flatten
from ..tasks.mlp import DataLoss, check_problem, grad_norm_sq, mlp_loss
from ..symmetry.strategies import TeleportSchedule
from ..tasks.digits import MinibatchSampler

BASELINES = ("gd", "momentum", "adam", "rmsprop", "adagrad")


@dataclass
class BaselineConfig:
    """A hand-designed optimizer and its hyper-parameters.

    Attributes:
        name: one of ``gd``, ``momentum``, ``adam``, ``rmsprop``, ``adagrad``.
        lr: learning rate (paper's GD: 3e-4).
        momentum: heavy-ball coefficient (``momentum`` only).
        betas: Adam's moment decay rates.
        alpha: RMSProp's decay rate.
        eps: denominator epsilon (Adam, RMSProp, AdaGrad).
        teleport: optional teleport schedule (``None``: never teleport).
    """

    name: str = "gd"
    lr: float = 3e-4
    momentum: float = 0.9
    betas: tuple[float, float] = (0.9, 0.999)
    alpha: float = 0.99
    eps: float = 1e-8
    teleport: TeleportSchedule | None = None

    def __post_init__(self) -> None:
        check_fields(self, "baseline")
        require(self.name in BASELINES, "baseline.name", f"must be one of {BASELINES}, got {self.name!r}")
        require(self.lr > 0, "baseline.lr", f"must be > 0, got {self.lr}")
        require(0 <= self.momentum < 1, "baseline.momentum", f"must be in [0, 1), got {self.momentum}")
        self.betas = tuple(self.betas)
        require(len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas), "baseline.betas",
                f"must be two numbers in [0, 1), got {self.betas}")
        require(0 <= self.alpha < 1, "baseline.alpha", f"must be in [0, 1), got {self.alpha}")
        require(self.eps > 0, "baseline.eps", f"must be > 0, got {self.eps}")
        if isinstance(self.teleport, dict):
            self.teleport = TeleportSchedule(**self.teleport)

    @property
    def label(self) -> str:
        tele = "" if not self.teleport or not self.teleport.steps else f"+tele({self.teleport.strategy})"
        return f"{self.name}{tele}"


def _per_task(value: float | torch.Tensor | None, B: int, like: torch.Tensor) -> float | torch.Tensor | None:
    """A hyper-parameter as a float, or a tensor broadcastable to flattened ``[B, P]`` coordinates."""
    if value is None or not torch.is_tensor(value):
        return value
    if value.dim() == 0:
        return value.to(like.device, like.dtype)
    if value.shape != (B,):
        raise ValueError(f"per-task hyper-parameter must be a scalar or [B] = [{B}], got {tuple(value.shape)}")
    return value.to(like.device, like.dtype).view(B, 1)


class HandDesignedUpdate(nn.Module):
    """The element-wise update of a hand-designed optimizer, with per-trajectory state.

    The one implementation of GD, momentum, Adam, RMSProp and AdaGrad in the package: the
    baselines (:class:`HandDesigned`) step with it, and the ``tele`` variant of a learned
    optimizer uses it as its local update (in place of a learned m1). Each matches the
    ``torch.optim`` class of the same name (SGD, SGD with momentum and no dampening, Adam,
    RMSprop, Adagrad, default options otherwise) step for step.

    State per trajectory, a pair like an LSTM state (so it is reset, detached and saved the same
    way): the moments ``[2, B, P]`` (Adam's m and v; the momentum buffer; RMSProp's and AdaGrad's
    squared-gradient average or sum) and the step count ``[1, B, 1]``, where ``P`` is the number
    of coordinates of the network. Everything is differentiable: hyper-parameters given as
    tensors (``lr``, ``momentum``, scalars or one per trajectory) receive hyper-gradients.
    """

    def __init__(self, config: BaselineConfig) -> None:
        super().__init__()
        self.config = config

    def initial_state(self, weights: Sequence[torch.Tensor], dtype: torch.dtype | None = None) -> State:
        """Zero state for the network ``weights`` (list of ``[B, ...]``)."""
        B, P = weights[0].shape[0], sum(w[0].numel() for w in weights)
        dev, dt = weights[0].device, dtype or weights[0].dtype
        return torch.zeros(2, B, P, device=dev, dtype=dt), torch.zeros(1, B, 1, device=dev, dtype=dt)

    def forward(
        self,
        weights: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        state: State | None,
        d0: int | None = None,
        lr: float | torch.Tensor | None = None,
        momentum: float | torch.Tensor | None = None,
    ) -> tuple[list[torch.Tensor], State]:
        """``grads`` (list of ``[B, ...]``) → updates of the same shapes (``W ← W − update``)
        and the new state (``None``: a fresh trajectory). ``lr`` and ``momentum`` override the
        config's (a float, a 0-d tensor or a ``[B]`` tensor); ``d0`` is unused (the signature
        is the learned m1's)."""
        c = self.config
        if state is None:
            state = self.initial_state(grads)
        (m, v), t = state[0], state[1] + 1
        g = flatten(grads).to(m.dtype)
        B = g.shape[0]
        lr = c.lr if lr is None else _per_task(lr, B, g)
        if c.name == "gd":
            step = lr * g
        elif c.name == "momentum":
            mu = c.momentum if momentum is None else _per_task(momentum, B, g)
            m = mu * m + g  # torch.optim.SGD's buffer: g at the first step
            step = lr * m
        elif c.name == "adam":
            b1, b2 = c.betas
            m = b1 * m + (1 - b1) * g
            v = b2 * v + (1 - b2) * g * g
            tt = t[0]  # [B, 1]
            denom = v.sqrt() / (1 - b2 ** tt).sqrt() + c.eps  # torch.optim.Adam's order of operations
            step = (lr / (1 - b1 ** tt)) * (m / denom)
        elif c.name == "rmsprop":
            v = c.alpha * v + (1 - c.alpha) * g * g
            step = lr * (g / (v.sqrt() + c.eps))
        else:  # adagrad
            v = v + g * g
            step = lr * (g / (v.sqrt() + c.eps))
        sizes = [gr[0].numel() for gr in grads]
        updates = [u.view_as(gr).to(gr.dtype) for u, gr in zip(step.split(sizes, dim=1), grads)]
        return updates, (torch.stack([m, v]), t)


class HandDesigned:
    """A hand-designed optimizer advancing B stacked tasks.

    Args:
        config: which optimizer, its hyper-parameters and teleport schedule.
        X, Y: task data ``[B, d0, n]``, ``[B, dL, n]``.
        weights: the initial stacked weights (for shapes, dtype and device).
        differentiable: keep the graph through updates (the gradients are taken with
            ``create_graph``), so that hyper-parameters given as tensors get hyper-gradients.
        lr: optional override, a float, a 0-d tensor or a ``[B]`` tensor (per task); a tensor
            that requires grad receives hyper-gradients through the unroll.
        momentum: optional override for ``momentum``, of the same kinds as ``lr``.
        loss_fn: the task loss ``(weights, X, Y) -> [B]`` (default: the regression loss).
        teleport_samples: teleport with the first ``k`` samples of ``(X, Y)`` only (a digits
            task's teleport batch; ``None``: all of them).
        minibatches: take step ``t``'s gradient on that step's minibatch of ``(X, Y)`` (a digits
            task's ``TaskConfig.minibatch``, :func:`metatele.tasks.digits.minibatch_sampler`;
            ``None``: on all samples). Teleports keep acting with the teleport batch.

    ``step(weights)`` returns ``(new_weights, loss, grad_norm_sq)`` where the loss ``[B]`` and
    squared gradient norm ``[B]`` are measured at the weights the update was computed from (after
    any scheduled teleport, which leaves the loss unchanged), on the samples the gradient is taken
    on (the step's minibatch, if any).
    """

    def __init__(
        self,
        config: BaselineConfig,
        X: torch.Tensor,
        Y: torch.Tensor,
        weights: Sequence[torch.Tensor],
        differentiable: bool = False,
        lr: float | torch.Tensor | None = None,
        momentum: float | torch.Tensor | None = None,
        loss_fn: DataLoss | None = None,
        teleport_samples: int | None = None,
        minibatches: MinibatchSampler | None = None,
    ) -> None:
        check_problem(weights, X, Y)
        self.config, self.X, self.Y = config, X, Y
        self.loss_fn = loss_fn or mlp_loss
        self.teleport_samples = teleport_samples
        self.minibatches = minibatches
        self.differentiable = differentiable
        B = X.shape[0]
        _per_task(lr, B, X), _per_task(momentum, B, X)  # validate the shapes now
        if momentum is not None and config.name != "momentum":
            raise ValueError(f"momentum override only applies to 'momentum', not {config.name!r}")
        self.lr, self.momentum = lr, momentum
        self.update = HandDesignedUpdate(config)
        self.state: State = self.update.initial_state(weights, X.dtype)
        self.teleport_steps = set(config.teleport.steps) if config.teleport else set()
        self.strategy = config.teleport.build(loss_fn) if config.teleport and config.teleport.steps else None
        self.t = 0

    def detach_(self) -> "HandDesigned":
        """Cut the graph through the optimizer's state (momentum, moments) at a truncation."""
        self.state = (self.state[0].detach(), self.state[1].detach())
        return self

    def step(self, weights: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        weights = [w if w.requires_grad else w.detach().requires_grad_(True) for w in weights]
        if self.strategy is not None and self.t in self.teleport_steps:
            k = self.teleport_samples
            weights = self.strategy(weights, self.X[..., :k], self.Y[..., :k]) if k else self.strategy(weights, self.X, self.Y)
        with torch.enable_grad():
            # Aliases cut the dependence of W_{m+1} on W_m that a teleport creates, so the
            # optimizer sees ∂L/∂W_i rather than total derivatives through the group action.
            weights = [w.view_as(w) for w in weights]
            X, Y = (self.X, self.Y) if self.minibatches is None else self.minibatches.select(self.X, self.Y, self.t)
            loss = self.loss_fn(weights, X, Y)
            grads = torch.autograd.grad(loss.sum(), weights, create_graph=self.differentiable)
            updates, state = self.update(weights, grads, self.state, lr=self.lr, momentum=self.momentum)
            new = [w - u for w, u in zip(weights, updates)]
        if not self.differentiable:
            new, state = [w.detach() for w in new], (state[0].detach(), state[1].detach())
        self.state = state
        self.t += 1
        return new, loss if self.differentiable else loss.detach(), grad_norm_sq(grads).detach()


def run_baseline(
    config: BaselineConfig,
    X: torch.Tensor,
    Y: torch.Tensor,
    weights: Sequence[torch.Tensor],
    steps: int,
    lr: float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Run ``steps`` updates and return the loss curve ``[steps + 1, B]`` (no graph kept)."""
    opt = HandDesigned(config, X, Y, weights, lr=lr)
    losses = []
    W = [w.detach() for w in weights]
    for _ in range(steps):
        W, loss, _ = opt.step(W)
        W = [w.detach() for w in W]
        losses.append(loss)
    losses.append(mlp_loss(W, X, Y).detach())
    return torch.stack(losses)
