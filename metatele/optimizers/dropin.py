"""A learned optimizer as a ``torch.optim.Optimizer`` for the user's own training loop.

It applies to the parameters of an ``nn.Sequential`` of ``nn.Linear`` (with or without bias)
and ``nn.LeakyReLU(0.1)`` layers (no activation after the last ``Linear``). A ``coordinatewise``
optimizer (``learned.arch``) runs on any sizes and depth; a ``paper`` one only on the network
it was trained for::

    learned = load_optimizer("checkpoints/coordinatewise_update_tele_gaussian.safetensors")
    model = nn.Sequential(nn.Linear(12, 48), nn.LeakyReLU(0.1), nn.Linear(48, 48), nn.LeakyReLU(0.1),
                          nn.Linear(48, 4))
    opt = LearnedTeleportOptimizer.for_model(model, learned, X=X, Y=Y)   # X: [d0, n], Y: [dL, n]

    def closure():
        opt.zero_grad()
        loss = 0.5 * (model(X.T) - Y.T).square().sum()
        loss.backward()
        return loss

    for _ in range(100):
        loss = opt.step(closure)

Conventions (docs/tasks.md): data have samples in columns, ``X`` is ``[d0, n]`` and ``Y`` ``[dL, n]``.
``nn.Linear`` works on samples in rows, so ``model(X.T)`` is ``(W_L h_{L-1})ᵀ`` and the loss above
is :func:`metatele.mlp_loss`. Each layer is viewed as a batch of one: ``W_i`` (``[d_i, d_{i-1}]``,
``nn.Linear.weight``), with its bias as an extra column ``[W_i b_i]`` (``[1, d_i, d_{i-1} + 1]``),
and the step is :meth:`LearnedOptimizer.apply`, the same code the unroll engine and the evaluator
run.

Pass the model itself (``LearnedTeleportOptimizer(model, learned, X=X)``, or ``for_model``) so that
its architecture is checked (:func:`check_model`): from bare parameters the activations between
the layers and the order of square layers cannot be seen, so a teleporting optimizer built from
them warns once (:class:`ActivationWarning`): its teleport keeps the loss only on a LeakyReLU(0.1)
network with the parameters in layer order.

Nothing non-finite is written: the teleport batch (``X``, and ``Y`` when it is a tensor) must be
finite when it is set, and a step whose new weights are not finite leaves the parameters as they
were and raises ``FloatingPointError``.

The teleport acts with the *teleport batch* ``X`` (:meth:`LearnedTeleportOptimizer.set_data`
changes it); the loss is exactly unchanged on that batch when it has at most as many samples as
every teleported layer's input width (+1 with a bias), and a :class:`SymmetryWarning` says so
once otherwise. The ``coordinatewise`` m2 reads the teleport gradient, which needs the loss on
that batch: pass its targets ``Y`` (the default loss is the squared error above) and, for another
loss, ``loss(output [n, dL], Y) -> scalar``.

Parameter groups: each group may set ``scale`` (default 1): a multiplier of the local update of
its parameters (0 freezes them against the update; the teleport still moves every pair).

The optimizer's recurrent states live in ``self.state`` as tensors, so ``state_dict()`` /
``load_state_dict()`` work as for any optimizer. The computation runs in the learned optimizer's
dtype and device; results are copied into the parameters in place.
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import replace
from typing import Any, Callable, Iterable

import torch
from torch import nn

from .learned import LearnedOptimizer, LearnedState
from ..tasks.mlp import NEGATIVE_SLOPE, forward, join_bias
from ..symmetry.action import SymmetryWarning, input_qr, non_symmetric_pairs


class ActivationWarning(SymmetryWarning):
    """A teleporting drop-in built from bare parameters: the network's activations and the order
    of its layers could not be checked."""


class StallWarning(UserWarning):
    """The drop-in's steps have left the parameters unchanged for :data:`STALL_PATIENCE` steps in a
    row (its update safeguard refuses every step that would raise the loss)."""


#: consecutive steps without any change of the parameters before :class:`StallWarning`
STALL_PATIENCE = 10
#: the step-size backoff the drop-in gives an optimizer trained with the update safeguard but none
DEFAULT_BACKOFF = 0.5


def with_backoff(learned: LearnedOptimizer, backoff: float | None) -> LearnedOptimizer:
    """``learned``, or a copy whose refused updates shrink its step size by ``backoff`` (and regrow
    after accepted ones) when it was trained with the update safeguard but without a backoff:
    otherwise a refused step is refused again forever and the network stands still. The ``η g``
    of ``lr+tele`` and ``lr`` has no state to carry the step scale in: those are returned as they are."""
    cw = learned.config.coordinatewise
    if (backoff is None or learned.config.arch != "coordinatewise" or not cw.update_safeguard
            or cw.update_backoff is not None or learned.config.local_update == "lr"):
        return learned
    copy_ = copy.deepcopy(learned)
    copy_.config = replace(learned.config, coordinatewise=replace(cw, update_backoff=backoff))
    return copy_


def check_model(model: nn.Module, learned: LearnedOptimizer) -> None:
    """Check that ``model`` is a network ``learned`` can drive.

    It must be an ``nn.Sequential`` alternating ``nn.Linear`` and ``nn.LeakyReLU(0.1)``, ending
    with a ``Linear``. A ``paper`` optimizer needs exactly its task's weight shapes (and biases
    only if it was trained with them); a ``coordinatewise`` one takes any sizes, with or without
    biases. Raises ``ValueError`` naming the first mismatch.
    """
    paper = learned.config.arch == "paper"
    bias_ok = not paper or learned.task.bias
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"model must be an nn.Sequential of Linear and LeakyReLU({NEGATIVE_SLOPE}), got {type(model).__name__}")
    layers = list(model)
    if paper:
        shapes = [tuple(s) for s in learned.task.weight_shapes]
        want = 2 * len(shapes) - 1
        if len(layers) != want:
            raise ValueError(f"model has {len(layers)} layers; the learned optimizer expects {want} "
                             f"({len(shapes)} Linear layers with LeakyReLU({NEGATIVE_SLOPE}) between them)")
    elif len(layers) % 2 == 0:
        raise ValueError(f"model has {len(layers)} layers; expected Linear, LeakyReLU({NEGATIVE_SLOPE}), ..., Linear")
    for i, layer in enumerate(layers):
        if i % 2 == 0:
            if not isinstance(layer, nn.Linear) or (layer.bias is not None and not bias_ok):
                raise ValueError(f"model[{i}] must be nn.Linear(..., bias=False), got {layer}")
            if paper:
                shape = (layer.out_features, layer.in_features + int(layer.bias is not None))
                if shape != shapes[i // 2]:
                    raise ValueError(f"model[{i}].weight has shape {tuple(layer.weight.shape)}"
                                     f"{' with bias' if layer.bias is not None else ''}, expected {shapes[i // 2]}")
        elif not isinstance(layer, nn.LeakyReLU) or layer.negative_slope != NEGATIVE_SLOPE:
            raise ValueError(f"model[{i}] must be nn.LeakyReLU({NEGATIVE_SLOPE}), got {layer}")


def _layers_of(params: list[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """Pair parameters in layer order into ``(weight [d_out, d_in], bias [d_out] or None)``: a
    1-D parameter right after a weight with as many rows is that weight's bias."""
    layers: list[tuple[torch.Tensor, torch.Tensor | None]] = []
    i = 0
    while i < len(params):
        W = params[i]
        if W.dim() != 2:
            raise ValueError(f"parameter {i} has shape {tuple(W.shape)}: expected a Linear weight [d_out, d_in] "
                             "(pass parameters in layer order, each bias right after its weight, or use for_model)")
        b = params[i + 1] if i + 1 < len(params) and params[i + 1].dim() == 1 and params[i + 1].shape[0] == W.shape[0] else None
        layers.append((W, b))
        i += 1 if b is None else 2
    return layers


class LearnedTeleportOptimizer(torch.optim.Optimizer):
    """Runs a :class:`LearnedOptimizer` (m1 and/or m2) on a user's network.

    Args:
        params: the network itself (an ``nn.Sequential`` checked by :func:`check_model`, as
            :meth:`for_model` does), or its parameters in layer order (``model.parameters()``: each
            bias right after its weight), or parameter groups (dicts with ``params`` and optionally
            ``scale``). For a ``paper`` optimizer the layer shapes must be
            ``learned.task.weight_shapes``. A teleporting optimizer given bare parameters warns
            once (:class:`ActivationWarning`): their activations and order cannot be checked.
        learned: the learned optimizer (e.g. from :func:`metatele.release.checkpoint.load_optimizer`).
            Every variant is supported (``tele``: its hand-designed base optimizer steps the
            parameters, m2 teleports them).
        X: the teleport batch, ``[d0, n]`` (samples in columns) or ``[1, d0, n]``. Required by
            the teleporting variants.
        Y: the targets of that batch (``[dL, n]`` for the default squared loss; anything
            ``loss`` accepts otherwise). Required by a teleporting ``coordinatewise`` optimizer.
        loss: ``loss(output [n, dL], Y) -> scalar`` on the teleport batch (default: the squared
            error ``½‖output − Yᵀ‖²``).
        backoff: a coordinatewise optimizer trained with the update safeguard (which refuses a
            local update that would raise the loss) but without a step-size backoff (and whose local
            update has a state to carry it in: not the ``η g`` of ``lr+tele`` or ``lr``) would refuse
            the same step forever on a network where its steps are too large; the drop-in then
            multiplies its step size by ``backoff`` at each refusal and regrows it after accepted
            steps (``coordinatewise.update_backoff``). ``None`` keeps the optimizer exactly as
            trained. Either way, :class:`StallWarning` says when the parameters have not moved for
            :data:`STALL_PATIENCE` steps in a row.

    Raises:
        ValueError: the model, the parameter shapes or ``X`` do not match the learned optimizer,
            or ``X`` (``Y``) is not finite.
    """

    def __init__(self, params: nn.Module | Iterable[torch.Tensor] | Iterable[dict], learned: LearnedOptimizer,
                 X: torch.Tensor | None = None, Y: Any = None,
                 loss: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
                 backoff: float | None = DEFAULT_BACKOFF) -> None:
        if backoff is not None and not (isinstance(backoff, float) and 0 < backoff < 1):
            raise ValueError(f"backoff must be a number in (0, 1) or None, got {backoff!r}")
        learned = with_backoff(learned, backoff)
        checked = isinstance(params, nn.Module)
        if checked:
            check_model(params, learned)
            params = params.parameters()
        super().__init__(params, defaults={"scale": 1.0})
        self.learned = learned
        self.layers = _layers_of(self._params())
        got = [(W.shape[0], W.shape[1] + int(b is not None)) for W, b in self.layers]
        if learned.config.arch == "paper":
            expected = [tuple(s) for s in learned.task.weight_shapes]
            if got != expected:
                raise ValueError(
                    f"parameter shapes {got} do not match the learned optimizer's task weight shapes "
                    f"{expected} (task dims {learned.task.dims}); pass the weights of a "
                    f"{'' if learned.task.bias else 'bias-free '}Linear/LeakyReLU network in layer order"
                )
        for i in range(1, len(self.layers)):
            if self.layers[i][0].shape[1] != self.layers[i - 1][0].shape[0]:
                raise ValueError(f"layer {i} has input width {self.layers[i][0].shape[1]} but layer {i - 1} "
                                 f"has {self.layers[i - 1][0].shape[0]} outputs")
        if learned.config.uses_m2 and len(self.layers) < 2:
            raise ValueError(f"variant {learned.config.variant!r} has an m2, which reads (and teleports) pairs of "
                             "consecutive layers: it needs at least two Linear layers")
        self.X: torch.Tensor | None = None
        self.Y, self.loss = Y, loss
        self._x_qr: tuple[torch.Tensor, torch.Tensor] | None = None
        self._warned = False
        #: consecutive steps that left every parameter unchanged (see :class:`StallWarning`)
        self.stalled_steps = 0
        if X is not None:
            self.set_data(X, Y)
        elif learned.config.uses_teleport:
            raise ValueError(f"variant {learned.config.variant!r} teleports and needs the data X [d0, n]")
        elif learned.config.arch == "coordinatewise":
            raise ValueError("a coordinatewise optimizer reads the batch size n of the data (and its safeguards the "
                             "loss on it): give the data X [d0, n] (and its targets Y)")
        if learned.config.uses_teleport and not checked:
            warnings.warn(
                "built from bare parameters, the drop-in cannot check the network's activations or the order of "
                f"its layers; the teleport keeps the loss only on Linear/LeakyReLU({NEGATIVE_SLOPE}) networks with "
                "the parameters in layer order (ReLU, Tanh or another slope change it). Pass the model itself, "
                "LearnedTeleportOptimizer(model, learned, X=X), to have it checked",
                ActivationWarning, stacklevel=2)

    @classmethod
    def for_model(cls, model: nn.Module, learned: LearnedOptimizer, X: torch.Tensor | None = None,
                  Y: Any = None, loss: Callable[[torch.Tensor, Any], torch.Tensor] | None = None,
                  backoff: float | None = DEFAULT_BACKOFF) -> "LearnedTeleportOptimizer":
        """Check ``model``'s architecture with :func:`check_model`, then wrap its parameters
        (the same as ``LearnedTeleportOptimizer(model, learned, ...)``)."""
        return cls(model, learned, X=X, Y=Y, loss=loss, backoff=backoff)

    # -- helpers -----------------------------------------------------------------------------
    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _meta(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.learned.parameters())
        return p.device, p.dtype

    def _stacked(self, get: Callable[[torch.Tensor], torch.Tensor]) -> list[torch.Tensor]:
        """Each layer's ``[1, d_out, d_in(+1)]`` (``get`` reads a parameter or its gradient)."""
        device, dtype = self._meta()
        out = []
        for W, b in self.layers:
            V = get(W).detach().unsqueeze(0).to(device=device, dtype=dtype)
            out.append(join_bias(V, None if b is None else get(b).detach().unsqueeze(0).to(device=device, dtype=dtype)))
        return out

    def _scales(self) -> list[torch.Tensor] | None:
        """Per-layer update multipliers from the groups' ``scale`` (``None`` when all are 1)."""
        scale = {id(p): float(g["scale"]) for g in self.param_groups for p in g["params"]}
        if all(s == 1.0 for s in scale.values()):
            return None
        device, dtype = self._meta()
        out = []
        for W, b in self.layers:
            s = torch.full((1, W.shape[0], W.shape[1]), scale[id(W)], device=device, dtype=dtype)
            if b is not None:
                s = torch.cat([s, torch.full((1, W.shape[0], 1), scale[id(b)], device=device, dtype=dtype)], dim=2)
            out.append(s)
        return out

    def set_data(self, X: torch.Tensor, Y: Any = None) -> None:
        """Set the teleport batch: ``X`` ``[d0, n]`` (samples in columns) or ``[1, d0, n]``, and
        optionally its targets ``Y`` (kept if not given).

        Warns once with :class:`~metatele.symmetry.action.SymmetryWarning` when some teleported layer's
        input (+1 with a bias) is narrower than ``n``: the group action is then not a symmetry
        of the loss.
        """
        if not torch.is_tensor(X):
            raise TypeError(f"X must be a tensor [d0, n], got {type(X).__name__}")
        given = tuple(X.shape)
        if X.dim() == 2:
            X = X.unsqueeze(0)
        d0 = self.layers[0][0].shape[1]
        if X.dim() != 3 or X.shape[0] != 1 or X.shape[1] != d0:
            raise ValueError(
                f"X must be [d0, n] = [{d0}, n] (samples in columns) or [1, {d0}, n], got shape "
                f"{given}; for row-sample data pass X.T"
            )
        if not bool(torch.isfinite(X).all()):
            raise ValueError(f"X has {int((~torch.isfinite(X)).sum())} non-finite entries: the teleport batch must "
                             "be finite (a NaN would turn the weights to NaN)")
        if torch.is_tensor(Y) and Y.is_floating_point() and not bool(torch.isfinite(Y).all()):
            raise ValueError(f"Y has {int((~torch.isfinite(Y)).sum())} non-finite entries: the teleport batch's "
                             "targets must be finite")
        device, dtype = self._meta()
        self.X = X.detach().to(device=device, dtype=dtype)
        if Y is not None:
            self.Y = Y
        weights = self._stacked(lambda p: p)
        self._x_qr = input_qr(weights, self.X) if self.learned.config.uses_m2 else None
        bad = non_symmetric_pairs(weights, self.X)
        if self.learned.config.uses_teleport and bad and not self._warned:
            self._warned = True
            warnings.warn(
                f"layer pairs {bad} have inputs narrower than n = {self.X.shape[-1]} samples: the "
                "teleport is not a symmetry of the loss and will change it",
                SymmetryWarning,
                stacklevel=2,
            )

    def _loss_fn(self) -> Callable[[list[torch.Tensor]], torch.Tensor] | None:
        """The per-task loss on the teleport batch as a function of the stacked weights."""
        if self.Y is None:
            return None
        X, Y, loss = self.X, self.Y, self.loss
        if loss is None:
            Yt = Y.detach().to(X) if Y.dim() == 3 else Y.detach().to(X).unsqueeze(0)
            return lambda W: 0.5 * (forward(W, X) - Yt).square().sum(dim=(1, 2))
        return lambda W: loss(forward(W, X)[0].T, Y).reshape(1)

    def _load_learned_state(self) -> LearnedState:
        st = self.state[self._params()[0]]
        device, dtype = self._meta()
        if "step" not in st:
            return self.learned.initial_state(1, device, dtype)
        # load_state_dict() casts state to the parameters' dtype; the optimizer needs its own
        get = lambda k: st[k].to(device=device, dtype=dtype)  # noqa: E731
        update = (get("update_h"), get("update_c")) if "update_h" in st else None
        n_tele = sum(1 for k in st if k.startswith("teleport_h."))
        tele = [(get(f"teleport_h.{m}"), get(f"teleport_c.{m}")) for m in range(n_tele)]
        return LearnedState(update, tele)

    def _store_learned_state(self, state: LearnedState) -> None:
        st = self.state[self._params()[0]]
        st["step"] = st.get("step", torch.tensor(0.0)) + 1
        if state.update is not None:
            st["update_h"], st["update_c"] = (s.detach() for s in state.update)
        for m, (h, c) in enumerate(state.teleport):
            st[f"teleport_h.{m}"], st[f"teleport_c.{m}"] = h.detach(), c.detach()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state written by ``state_dict()``; a recurrent state that this learned optimizer
        cannot continue (another architecture, variant or size) is refused here, not at ``step()``."""
        st = state_dict.get("state", {}).get(0, {})
        if "step" in st and self.learned.config.arch == "paper":  # a coordinatewise state is network-sized
            device, dtype = self._meta()
            want = self.learned.initial_state(1, device, dtype)
            shapes = {**({"update_h": want.update[0].shape, "update_c": want.update[1].shape} if want.update else {}),
                      **{f"teleport_{x}.{m}": t.shape for m, s in enumerate(want.teleport) for x, t in zip("hc", s)}}
            got = {k: tuple(v.shape) for k, v in st.items() if k != "step" and torch.is_tensor(v)}
            if got != {k: tuple(v) for k, v in shapes.items()}:
                raise ValueError(f"this state_dict does not fit the learned optimizer (arch {self.learned.config.arch}, "
                                 f"variant {self.learned.config.variant}): it holds recurrent states {got}, this "
                                 f"optimizer's are { {k: tuple(v) for k, v in shapes.items()} }")
        super().load_state_dict(state_dict)

    def reset_state(self) -> None:
        """Forget the recurrent states (start a new trajectory on the same network)."""
        self.state.clear()

    # -- the step ----------------------------------------------------------------------------
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]
        """One learned step.

        Args:
            closure: zeroes the gradients, computes the loss, calls ``backward()`` and returns the
                loss (the ``torch.optim`` convention). Without it, the gradients already in
                ``p.grad`` are used.

        Returns:
            The closure's loss (measured before the step), or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        params = self._params()
        missing = [i for i, p in enumerate(params) if p.grad is None]
        if missing:
            raise RuntimeError(f"parameters {missing} have no gradient; call loss.backward() or pass a closure")
        cw = self.learned.config.arch == "coordinatewise"
        loss_fn = self._loss_fn()
        if cw and self.learned.config.uses_m2 and loss_fn is None:
            raise ValueError(f"the coordinatewise {self.learned.config.variant} optimizer's m2 reads the teleport "
                             "gradient: give the targets Y of the teleport batch (LearnedTeleportOptimizer(..., X=X, "
                             "Y=Y) or set_data(X, Y))")
        with torch.no_grad():
            weights = self._stacked(lambda p: p)
            grads = self._stacked(lambda p: p.grad)
            new, state = self.learned.apply(weights, grads, self.X, self._load_learned_state(), x_qr=self._x_qr,
                                            loss_fn=loss_fn, update_scale=self._scales())
            if not all(bool(torch.isfinite(w).all()) for w in new):  # one read per step: never write NaN
                finite_grads = all(bool(torch.isfinite(g).all()) for g in grads)
                raise FloatingPointError(
                    "the learned step gave non-finite weights " + ("(the gradients are not finite)" if not finite_grads
                                                                  else "from finite weights and gradients")
                    + "; the parameters were left unchanged")
            moved = any(not torch.equal(a, b) for a, b in zip(weights, new))
            for (W, b), w in zip(self.layers, new):
                W.copy_(w[0, :, :W.shape[1]])
                if b is not None:
                    b.copy_(w[0, :, -1])
        self._store_learned_state(state)
        self.stalled_steps = 0 if moved else self.stalled_steps + 1
        if self.stalled_steps == STALL_PATIENCE:
            cw = self.learned.config.coordinatewise
            why = (" (its update safeguard refuses every step that would raise the loss"
                   + (f"; its step size has backed off to {cw.update_backoff}^k of its own" if cw.update_backoff
                      else "") + ")") if cw.update_safeguard else ""
            warnings.warn(f"the learned optimizer has left the parameters unchanged for {STALL_PATIENCE} steps in a "
                          f"row{why}: it may not suit this network. Try another shipped optimizer (`metatele "
                          "pretrained`), a smaller output scale of the model, or a hand-designed optimizer",
                          StallWarning, stacklevel=2)
        return loss
