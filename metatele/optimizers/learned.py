"""A learned optimizer: m1 and/or m2 assembled into one inner step (docs/meta_optimizers.md).

Variants (``LearnedConfig.variant``):

* ``update``: ``W ← W − m1(g)``.
* ``update+tele``: ``W ← teleport(W − m1(g), T)`` with ``T = m2(g)``.
* ``lr+tele``: ``W ← teleport(W − η g, T)`` with ``(T, η) = m2(g)``.
* ``lr``: ``W ← W − η g`` with ``(T, η) = m2(g)``: ``lr+tele``'s teleport-free twin (see below).
* ``tele``: ``W ← teleport(W − base(g), T)``: a hand-designed optimizer (``base``, e.g. a tuned
  Adam, :class:`~metatele.optimizers.baselines.HandDesignedUpdate`) in m1's place, so every engine
  feature and the drop-in work for it unchanged.

``lr`` isolates the teleport (as ``update`` against ``update+tele``): its m2 is ``lr+tele``'s
network (same parameters from the same seed, same inputs, the teleport gradient ``G`` included, at
``lr+tele``'s price of a double backward), with ``T`` never applied. Options of the teleport alone,
``teleport.exact`` among them (``G`` at ``T = 0`` is the same for both actions), do not apply to it.

Architectures (``LearnedConfig.arch``): ``paper``, the paper's full-vector LSTMs (tied to one
network's sizes), and ``coordinatewise``, a per-coordinate m1 and a permutation-equivariant m2
that run on any LeakyReLU network (see :mod:`metatele.optimizers.coordinatewise`).

Step order as in the paper: gradient at ``W_t`` → update → teleport with ``T`` computed from that
same gradient. :class:`LearnedOptimizer` holds the meta-parameters; :meth:`LearnedOptimizer.apply`
is the one implementation of a step used by the unroll engine, the evaluator and the drop-in
``torch.optim`` wrapper.
"""
from __future__ import annotations

from dataclasses import MISSING, dataclass, field, fields
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .baselines import BaselineConfig, HandDesignedUpdate
from ..configs import changed_fields, check_fields, require
from .coordinatewise import CoordinatewiseConfig, CoordinateUpdate, EquivariantTeleport, sanitize
from .coordinatewise_step import split_step_scale, stable_step, teleport_outputs
from .lstm import LSTMConfig, LSTMStack, State, TeleportConfig, TeleportLSTM, UpdateLSTM, reset_state
from ..tasks.mlp import grad_norm_sq, loss_and_grads
from ..symmetry.action import input_qr, teleport
from ..tasks.digits import MinibatchSampler
from ..tasks.family import TaskConfig
from ..symmetry.teleport_grad import LossFn
from ..profiling import INNER_LOSS, phase

VARIANTS = ("update", "update+tele", "lr+tele", "tele", "lr")
#: the variants that teleport (``lr`` has an m2 too, but only its step size is used)
TELEPORTING_VARIANTS = ("update+tele", "lr+tele", "tele")
#: variant → where its local step comes from, when not from m1 (:attr:`LearnedConfig.local_update`)
_LOCAL_STEP = {"tele": "base", "lr+tele": "lr", "lr": "lr"}
ARCHS = ("paper", "coordinatewise")


#: options of ``learned.lstm`` that only m1 reads (``hidden``, ``layers``, ``preprocess`` and
#: ``input_norm`` shape m2's LSTMs as well)
LSTM_UPDATE_OPTIONS = ("output_scale", "gd_skip", "skip_lr_min", "skip_lr_max")
#: options of ``learned.coordinatewise`` that only the per-coordinate m1 reads (``hidden`` and
#: ``layers`` size m2's MLP as well; the ``update_*`` options act on every local update)
CW_UPDATE_OPTIONS = ("lr", "eps", "magnitude_scale", "time_feature")
#: options of ``learned.coordinatewise`` that only the teleport reads (m2 and its safeguard; ``ablation``:
#: the whole group of the ablations' switches, each of the teleport)
CW_TELEPORT_OPTIONS = ("tele_norm_init", "tele_norm_max", "tele_beta", "safeguard", "safeguard_tol", "ablation")
#: options of ``learned.coordinatewise`` that act on the teleport itself (``T``'s norm, schedule, gate, safeguard,
#: the local update's state at a teleport): the ``lr`` variant's m2 does not read them. Its other options,
#: ``tele_beta`` and ``ablation.tele_gradient_input``, shape what m2 reads and apply to ``lr`` too
CW_TELEPORT_ACTION_OPTIONS = ("tele_norm_init", "tele_norm_max", "safeguard", "safeguard_tol", "ablation.every",
                              "ablation.teleport_state", "ablation.gate", "ablation.learn_norm")
#: options of ``learned.teleport`` that only the ``lr+tele`` and ``lr`` variants' m2 reads (the step size it writes)
TELEPORT_STEP_SIZE_OPTIONS = ("emit_lr", "lr_min", "lr_max", "lr_log_space")

Inapplicable = tuple[str, "tuple[str, ...] | None", str]


def _names(key: str, keys: tuple[str, ...] | None) -> bool:
    """Whether ``keys`` (of :func:`inapplicable_options`) name option ``key`` (dotted within a
    group, ``ablation.gate``): all (``None``), the key itself, or the group it is in."""
    return keys is None or any(key == k or key.startswith(k + ".") for k in keys)


def drop_options(section: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    """A section of a saved config (a nested dict) without the options ``keys`` name (:func:`_names`)."""
    out = {}
    for k, v in section.items():
        if _names(k, keys):
            continue
        inner = tuple(n.removeprefix(k + ".") for n in keys if n.startswith(k + "."))
        out[k] = drop_options(v, inner) if inner and isinstance(v, dict) else v
    return out


def inapplicable_options(arch: str, variant: str,
                         coordinatewise: Mapping[str, Any] | None = None) -> list[Inapplicable]:
    """``(section of LearnedConfig, its keys or None for all, why)`` of the options that a run of
    architecture ``arch`` and variant ``variant`` does not read: setting one of them (to anything
    but its default) is an error (:class:`LearnedConfig`). A key names an option of the section or
    a nested group of them (``ablation``), or, dotted, one option of such a group
    (``ablation.teleport_state``). ``coordinatewise``: the run's
    ``learned.coordinatewise`` values, for the options that depend on another one's value
    (``update_regrow`` only acts with ``update_backoff``)."""
    local = _LOCAL_STEP.get(variant, "learned")
    step = {"base": "learned.base, a hand-designed optimizer", "lr": "η g, with the step size η that m2 writes",
            "learned": "m1, a learned update"}[local]
    out: list[Inapplicable] = []
    if local != "base":
        out.append(("base", None, f"learned.base is the hand-designed local step of variant: tele; the local "
                    f"step of variant: {variant} is {step}"))
    no_m1 = f"variant: {variant} has no learned update (m1): its local step is {step}, and this option is m1's"
    no_m2 = "variant: update does not teleport (no m2), and this option is the teleport's"
    no_teleport = ("variant: lr never teleports (its m2 writes only the step size η; the T it also writes is "
                   "never applied), and this option acts on the teleport itself")
    if variant == "update":
        out.append(("teleport", None, no_m2))
    elif local != "lr":
        out.append(("teleport", TELEPORT_STEP_SIZE_OPTIONS, f"only the lr+tele variant's m2 writes a step size "
                    f"(and that of lr, its twin without the teleport; the local step of variant: {variant} is {step})"))
    if variant == "lr":
        out.append(("teleport", ("eps", "learn_eps"), no_teleport))
        out.append(("teleport", ("exact",), no_teleport + " (the teleport gradient that the coordinatewise m2 "
                    "reads is the same for the exact and the first-order action)"))
    if arch == "coordinatewise":
        out.append(("lstm", None,
                    "arch: coordinatewise has no LSTMs (its m1 and m2 are set by learned.coordinatewise.*)"))
        out.append(("teleport", ("eps", "learn_eps", "lr_log_space"),
                    "the coordinatewise m2 sets the norm of T with learned.coordinatewise.tele_norm_init, tele_norm_max "
                    "and ablation.learn_norm, and its step size (lr+tele, lr) always in log space; it reads only "
                    "teleport.exact, lr_min and lr_max"))
        if local != "learned":
            out.append(("coordinatewise", CW_UPDATE_OPTIONS, no_m1))
        if variant == "update":
            out.append(("coordinatewise", CW_TELEPORT_OPTIONS, no_m2))
        if variant == "lr":
            out.append(("coordinatewise", CW_TELEPORT_ACTION_OPTIONS, no_teleport))
        if local == "lr":
            out.append(("coordinatewise", ("ablation.teleport_state", "update_backoff", "update_regrow"),
                        f"{variant}'s local step η g has no state: none to keep or reset at a teleport "
                        "(ablation.teleport_state), nor to carry update_backoff's step scale"))
        if (coordinatewise or {}).get("update_backoff") is None:
            out.append(("coordinatewise", ("update_regrow",), "update_regrow is the factor by which "
                        "update_backoff's step scale grows back, and this run sets no update_backoff"))
    else:
        out.append(("coordinatewise", None, "learned.coordinatewise.* are the options of arch: coordinatewise, and this "
                    "run uses arch: paper (its options are learned.lstm.* and learned.teleport.*)"))
        if local != "learned":
            out.append(("lstm", LSTM_UPDATE_OPTIONS, no_m1))
    return out


@dataclass
class LearnedConfig:
    """Which learned optimizer to build.

    Attributes:
        variant: ``update``, ``update+tele``, ``lr+tele``, ``tele`` or ``lr`` (a learned step-size
            GD, lr+tele without the teleport).
        lstm: sizes and options of the LSTMs.
        teleport: m2 options (ε, step-size range, exact or first-order action).
        base: the hand-designed optimizer under a ``tele`` variant.
        arch: ``paper`` (full-vector LSTMs for one network size) or ``coordinatewise`` (shared
            per-coordinate m1 and equivariant m2, for any network).
        coordinatewise: options of the ``coordinatewise`` architecture (its m2 takes the
            step-size range and the exact/first-order flag from ``teleport``).

    An option the architecture and variant do not read (:func:`inapplicable_options`: m1's
    without m1, m2's without m2, ``base`` outside ``tele``, ...) must keep its default: setting it
    is a :class:`~metatele.configs.ConfigError` naming it and saying why.
    """

    variant: str = "update+tele"
    lstm: LSTMConfig = field(default_factory=LSTMConfig)
    teleport: TeleportConfig = field(default_factory=TeleportConfig)
    base: BaselineConfig = field(default_factory=lambda: BaselineConfig(name="adam", lr=1e-2))
    arch: str = "paper"
    coordinatewise: CoordinatewiseConfig = field(default_factory=CoordinatewiseConfig)

    def __post_init__(self) -> None:
        check_fields(self, "learned")
        require(self.variant in VARIANTS, "learned.variant", f"must be one of {VARIANTS}, got {self.variant!r}")
        require(self.arch in ARCHS, "learned.arch", f"must be one of {ARCHS}, got {self.arch!r}")
        if self.local_update == "lr" and not self.teleport.emit_lr:
            self.teleport = TeleportConfig(**{**self.teleport.__dict__, "emit_lr": True})
        for section, keys, why in inapplicable_options(self.arch, self.variant, vars(self.coordinatewise)):
            value = getattr(self, section)
            changed = [k for k in changed_fields(value, LEARNED_DEFAULTS[section]) if _names(k, keys)]
            # name first what differs from the class's defaults too (a partial learned.base mapping builds
            # on BaselineConfig's, not on Adam at 1e-2): the key the user set
            changed.sort(key=lambda k: k not in changed_fields(value))
            require(not changed, f"learned.{section}.{changed[0] if changed else ''}",
                    f"does not apply to this run: {why}; remove it")

    @property
    def teleport_norm(self) -> float:
        """The (initial) Frobenius norm of m2's ``T``: ``teleport.eps`` for the paper's m2,
        ``coordinatewise.tele_norm_init`` for the coordinatewise one."""
        return self.coordinatewise.tele_norm_init if self.arch == "coordinatewise" else self.teleport.eps

    @property
    def uses_update(self) -> bool:
        """The local update is learned (m1): ``update`` and ``update+tele``."""
        return self.variant in ("update", "update+tele")

    @property
    def local_update(self) -> str:
        """Where the local step comes from: ``learned`` (m1), ``base`` (the hand-designed
        ``base`` optimizer, ``tele``) or ``lr`` (``η g`` with m2's step size, ``lr+tele`` and ``lr``)."""
        return _LOCAL_STEP.get(self.variant, "learned")

    @property
    def uses_teleport(self) -> bool:
        """The optimizer teleports: ``update+tele``, ``lr+tele`` and ``tele``."""
        return self.variant in TELEPORTING_VARIANTS

    @property
    def uses_m2(self) -> bool:
        """The optimizer has an m2: every variant but ``update`` (``lr``'s m2 writes its step size)."""
        return self.variant != "update"


#: the default of each section of :class:`LearnedConfig` (``base`` is Adam at 1e-2, not ``BaselineConfig()``)
LEARNED_DEFAULTS: dict[str, Any] = {f.name: f.default_factory() for f in fields(LearnedConfig)
                                    if f.default_factory is not MISSING}


@dataclass
class LearnedState:
    """Per-trajectory state, each a pair of tensors with the trajectories on dimension 1: the
    local update's (m1's ``(h, c)``, a coordinatewise m1's or the ``tele`` variant's base
    optimizer's moments and step count; ``None`` before the first step of a network-sized
    state) and one per m2."""

    update: State | None
    teleport: list[State]

    def detach(self) -> "LearnedState":
        d = lambda s: (s[0].detach(), s[1].detach())  # noqa: E731
        return LearnedState(d(self.update) if self.update else None, [d(s) for s in self.teleport])

    def reset(self, keep: torch.Tensor) -> "LearnedState":
        """Zero the state of trajectories where ``keep`` ``[B]`` is False."""
        return LearnedState(
            reset_state(self.update, keep) if self.update else None,
            [reset_state(s, keep) for s in self.teleport],
        )


class LearnedOptimizer(nn.Module):
    """m1 (``update``) and the m2s (``teleports``, one per consecutive pair) of one variant.

    Args:
        task: the task family (fixes the weight shapes the LSTMs read and write).
        config: the variant and its options.
    """

    def __init__(self, task: TaskConfig, config: LearnedConfig | None = None) -> None:
        super().__init__()
        self.task = task
        self.config = config or LearnedConfig()
        shapes, local = task.weight_shapes, self.config.local_update
        self._output_hook: Callable[[torch.Tensor], torch.Tensor] | None = None
        if self.config.arch == "coordinatewise":  # one shared m1 and one shared m2, for any network
            cw, tele = self.config.coordinatewise, self.config.teleport
            self.update = CoordinateUpdate(cw) if local == "learned" else None
            lr_range = (tele.lr_min, tele.lr_max) if local == "lr" else None
            self.teleports = nn.ModuleList([EquivariantTeleport(cw, lr_range)] if self.config.uses_m2 else [])
        else:
            self.update = UpdateLSTM(shapes, self.config.lstm) if local == "learned" else None
            self.teleports = nn.ModuleList(
                TeleportLSTM(shapes[m], shapes[m + 1], self.config.lstm, self.config.teleport)
                for m in range(len(shapes) - 1)
            ) if self.config.uses_m2 else nn.ModuleList()
            if self.config.uses_m2 and len(shapes) < 2:
                raise ValueError(f"variant {self.config.variant!r} needs at least two weight matrices, dims={task.dims}")
        if local == "base":  # the tele variant: a hand-designed local step, no meta-parameters
            self.update = HandDesignedUpdate(self.config.base)

    # -- state -------------------------------------------------------------------------------
    def initial_state(
        self,
        batch_size: int,
        device=None,
        dtype=None,
    ) -> LearnedState:
        """Zero LSTM states for ``batch_size`` trajectories. States sized by the network (a
        coordinatewise optimizer's, the ``tele`` variant's base optimizer's) are made at the
        first step (``None`` here)."""
        if self.config.arch == "coordinatewise":
            return LearnedState(None, [])
        return LearnedState(
            self.update.initial_state(batch_size, device, dtype) if isinstance(self.update, UpdateLSTM) else None,
            [m2.initial_state(batch_size, device, dtype) for m2 in self.teleports],
        )

    @property
    def output_hook(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """Gradient hook on every network output (the engine's mask), also on the LSTMs' raw ones."""
        return self._output_hook

    @output_hook.setter
    def output_hook(self, hook: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        self._output_hook = hook
        for module in self.modules():
            if isinstance(module, LSTMStack):
                module.output_hook = hook

    # -- one step ----------------------------------------------------------------------------
    def _hooked(self, t: torch.Tensor) -> torch.Tensor:
        if self.output_hook is not None and t.requires_grad:
            t.register_hook(self.output_hook)
        return t

    def _teleport_outputs(self, grads: Sequence[torch.Tensor], state: LearnedState):
        """Every m2 on its pair's gradients: ``(T per pair, step sizes, new m2 states)``."""
        T, lrs, states = [], [], []
        for m, m2 in enumerate(self.teleports):
            t, lr, s = m2(grads[m], grads[m + 1], state.teleport[m])
            T.append(self._hooked(t))
            if lr is not None:
                lrs.append(self._hooked(lr))
            states.append(s)
        return T, lrs, states

    def apply(
        self,
        weights: Sequence[torch.Tensor],
        grads: Sequence[torch.Tensor],
        X: torch.Tensor,
        state: LearnedState,
        x_qr: tuple[torch.Tensor, torch.Tensor] | None = None,
        loss_fn: LossFn | None = None,
        update_scale: Sequence[torch.Tensor | float] | None = None,
    ) -> tuple[list[torch.Tensor], LearnedState]:
        """One inner step from the gradients at ``weights``.

        Args:
            weights: list of ``[B, d_i, d_{i-1}]`` (may carry a graph to the meta-parameters).
            grads: the gradients at ``weights`` (data, or with a graph for second order).
            X: ``[B, d0, n]``, the data the teleport is applied with.
            state: recurrent state from :meth:`initial_state` or the previous step.
            x_qr: optional precomputed QR of ``X`` (see :func:`metatele.symmetry.action.qr_factor`).
            loss_fn: the per-task loss of the weights (``[B]``); the ``coordinatewise`` m2 reads
                its teleport gradient and its safeguard compares losses with it.
            update_scale: optional multipliers of the local update (before the teleport), one
                per weight tensor, broadcastable to it (the drop-in's parameter groups).

        Returns:
            ``(new_weights, new_state)``.
        """
        grads = [sanitize(g) for g in grads]
        cfg = self.config
        coordinatewise = cfg.arch == "coordinatewise"
        T, lrs, tele_states, active = [], [], [], None
        if cfg.uses_m2 and coordinatewise:  # m2 reads the teleport gradient at W_t
            if loss_fn is None:
                raise ValueError(f"the coordinatewise {cfg.variant!r} optimizer needs loss_fn for its teleport gradient")
            T, lrs, tele_states, active = teleport_outputs(self.teleports[0], weights, X, loss_fn, state.teleport,
                                                           cfg.teleport.exact, x_qr, self._hooked)
        elif cfg.uses_m2:
            T, lrs, tele_states = self._teleport_outputs(grads, state)
        if not cfg.uses_teleport:  # lr: m2 ran as in lr+tele, only its step size is used
            T, active = [], None
        update_state, step_scale = split_step_scale(state.update) if coordinatewise else (state.update, None)
        if self.update is None:  # lr+tele, lr: η g with m2's step size, the geometric mean over pairs
            eta = torch.exp(torch.stack(lrs).log().mean(0)).view(-1, 1, 1)
            steps = [eta.to(g.dtype) * g for g in grads]
        elif isinstance(self.update, UpdateLSTM):
            updates, update_state = self.update(grads, update_state)
            steps = [self._hooked(u) for u in updates]
        else:  # a coordinatewise m1 or the tele variant's hand-designed base optimizer
            updates, update_state = self.update(weights, grads, update_state, X.shape[1])
            steps = [self._hooked(u) for u in updates]
        if update_scale is not None:
            steps = [s * u for s, u in zip(update_scale, steps)]
        if coordinatewise:  # bounds, safeguards, the update's state at a teleport: coordinatewise_step
            new, update_state = stable_step(cfg.coordinatewise, weights, steps, T, active, update_state, X, loss_fn,
                                            cfg.teleport.exact, x_qr, step_scale)
        else:
            new = [w - u for w, u in zip(weights, steps)]
            if T:
                new = teleport(new, X, T, exact=cfg.teleport.exact, warn=False, x_qr=x_qr)
        return new, LearnedState(update_state, tele_states)

    def step(
        self,
        weights: Sequence[torch.Tensor],
        X: torch.Tensor,
        Y: torch.Tensor,
        state: LearnedState,
        second_order: bool = False,
        x_qr: tuple[torch.Tensor, torch.Tensor] | None = None,
        minibatch: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor, LearnedState]:
        """Loss and gradient at ``weights``, then :meth:`apply`.

        ``minibatch``: digits only, the step's ``(X_b, Y_b)`` (:class:`MinibatchSampler`) that the
        gradient (and the loss returned) is taken on; ``None``: all of ``(X, Y)``. The teleport
        keeps acting with the teleport batch, and its teleport gradient and safeguard keep reading
        the full training loss.

        Returns ``(new_weights, loss [B], squared gradient norm [B], new_state)``; the loss is
        measured at ``weights`` and keeps its graph.
        """
        # the family's loss on all training samples (or the step's minibatch); the teleport acts with
        # the family's teleport batch (x_qr must factor it: all of X for regression), its teleport
        # gradient and safeguard read the full training loss
        data_loss = self.task.kind.loss
        X_grad, Y_grad = minibatch if minibatch is not None else (X, Y)
        with phase(INNER_LOSS):
            loss, grads = loss_and_grads(weights, X_grad, Y_grad, create_graph=second_order, loss_fn=data_loss)
        new, state = self.apply(weights, grads, self.teleport_data(X), state, x_qr,
                                loss_fn=lambda w: data_loss(w, X, Y))
        return new, loss, grad_norm_sq(grads).detach(), state

    def teleport_data(self, X: torch.Tensor) -> torch.Tensor:
        """The samples the group action acts with: ``X`` itself, or a digits task's teleport
        batch ``X[..., :k]`` (``k = task.teleport_samples``)."""
        return self.task.kind.teleport_data(self.task, X)

    # -- evaluator-facing --------------------------------------------------------------------
    @property
    def name(self) -> str:
        if self.config.arch == "coordinatewise":
            return f"Coordinatewise({self.config.variant})"
        return f"LSTM({self.config.variant})"

    def start(self, X: torch.Tensor, Y: torch.Tensor, weights: Sequence[torch.Tensor],
              minibatches: MinibatchSampler | None = None) -> "LearnedStepper":
        """An inner optimizer for the evaluator: ``stepper.step(weights) -> (weights, loss, grad_sq)``
        (step ``t``'s gradient on its minibatch of ``minibatches``, if any)."""
        return LearnedStepper(self, X, Y, weights, minibatches)


class LearnedStepper:
    """Runs a :class:`LearnedOptimizer` without meta-gradients on fixed tasks."""

    def __init__(self, opt: LearnedOptimizer, X: torch.Tensor, Y: torch.Tensor, weights: Sequence[torch.Tensor],
                 minibatches: MinibatchSampler | None = None) -> None:
        self.opt, self.X, self.Y = opt, X, Y
        self.minibatches, self.t = minibatches, 0
        self.x_qr = input_qr(weights, opt.teleport_data(X)) if opt.config.uses_m2 else None
        p = next(opt.parameters())
        self.state = opt.initial_state(X.shape[0], X.device, p.dtype)

    def step(self, weights: Sequence[torch.Tensor]) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        W = [w.detach() for w in weights]
        batch = self.minibatches.select(self.X, self.Y, self.t) if self.minibatches is not None else None
        with torch.no_grad():  # no graph over the meta-parameters (inner gradients still work)
            new, loss, gsq, state = self.opt.step(W, self.X, self.Y, self.state, x_qr=self.x_qr, minibatch=batch)
        self.state = state.detach()
        self.t += 1
        return [w.detach() for w in new], loss.detach(), gsq
