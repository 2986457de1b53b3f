"""Hand-designed baselines on stacked weights, differentiable through ``higher``.

GD, SGD with momentum, Adam, RMSProp and AdaGrad are element-wise, so one optimizer over the
stacked ``[B, d_i, d_{i-1}]`` weights advances B independent tasks exactly as B separate
optimizers would. Each is built from the matching ``torch.optim`` class turned into a
``higher`` differentiable optimizer, so hyper-parameters given as tensors (learning rate,
momentum) can be differentiated through an unroll (``differentiable=True``). Hyper-parameters may
also be per task (a ``[B]`` tensor), which lets a learning-rate grid run as one batch.

Each optimizer can teleport on a :class:`~metatele.symmetry.strategies.TeleportSchedule`.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Sequence

import higher
import torch

from ..configs import require
from ..tasks.mlp import DataLoss, grad_norm_sq, mlp_loss
from ..symmetry.strategies import TeleportSchedule
from ..tasks.digits import MinibatchSampler
from ..tasks.family import check_problem

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


def _torch_optimizer(config: BaselineConfig, params: list[torch.Tensor]) -> torch.optim.Optimizer:
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


def _per_task(value: float | torch.Tensor | None, B: int, like: torch.Tensor):
    if value is None or not torch.is_tensor(value):
        return value
    if value.dim() == 0:
        return value.to(like.device, like.dtype)
    if value.shape != (B,):
        raise ValueError(f"per-task hyper-parameter must be a scalar or [B] = [{B}], got {tuple(value.shape)}")
    return value.to(like.device, like.dtype).view(B, 1, 1)


class HandDesigned:
    """A hand-designed optimizer advancing B stacked tasks.

    Args:
        config: which optimizer, its hyper-parameters and teleport schedule.
        X, Y: task data ``[B, d0, n]``, ``[B, dL, n]``.
        weights: the initial stacked weights (for shapes, dtype and device).
        differentiable: keep the graph through updates (``higher``'s ``track_higher_grads``).
        lr: optional override, a float, a 0-d tensor or a ``[B]`` tensor (per task); a tensor
            that requires grad receives hyper-gradients through the unroll.
        momentum: optional override, a float or 0-d tensor (``higher``'s SGD branches on its
            value, so it cannot be per task).
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
        reference = [torch.zeros_like(w, requires_grad=True) for w in weights]
        override = {}
        lr = _per_task(lr, B, X)
        momentum = _per_task(momentum, B, X)
        if lr is not None:
            override["lr"] = [lr]
        if momentum is not None:
            if config.name != "momentum":
                raise ValueError(f"momentum override only applies to 'momentum', not {config.name!r}")
            if torch.is_tensor(momentum) and momentum.numel() != 1:
                raise ValueError("momentum override must be a scalar (higher's SGD cannot take it per task)")
            override["momentum"] = [momentum]
        with warnings.catch_warnings():  # higher warns on every RMSprop it builds
            warnings.filterwarnings("ignore", message="Differentiable RMSprop suffers", category=UserWarning)
            self.diffopt = higher.optim.get_diff_optim(
                _torch_optimizer(config, reference), reference,
                override=override or None, track_higher_grads=differentiable,
            )
        self.teleport_steps = set(config.teleport.steps) if config.teleport else set()
        self.strategy = config.teleport.build(loss_fn) if config.teleport and config.teleport.steps else None
        self.t = 0
        self.last_grads: list[torch.Tensor] = []

    def detach_(self) -> "HandDesigned":
        """Cut the graph through the optimizer's state (momentum, moments) at a truncation."""
        for group_state in self.diffopt.state:
            for param_state in group_state.values() if isinstance(group_state, dict) else group_state:
                for k, v in list(param_state.items()):
                    if torch.is_tensor(v):
                        param_state[k] = v.detach()
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
            seen: list[torch.Tensor] = []

            def keep(grads):  # higher computes the gradient once; keep it for the report
                seen.extend(grads)
                return grads

            if self.config.name == "adam":
                # higher's Adam adds eps to sqrt(v) before the bias correction, i.e. an
                # effective eps / sqrt(1 - beta2^t); rescale it so the step is torch.optim.Adam's.
                for group in self.diffopt.param_groups:
                    group["eps"] = self.config.eps * (1 - self.config.betas[1] ** (self.t + 1)) ** 0.5
            new = self.diffopt.step(loss.sum(), params=weights, grad_callback=keep)
        self.t += 1
        self.last_grads = seen
        return list(new), loss if self.differentiable else loss.detach(), grad_norm_sq(seen).detach()


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
