"""A learned optimizer as a ``torch.optim.Optimizer`` for the user's own training loop.

The learned optimizer was meta-trained on bias-free LeakyReLU networks, so it applies to the
parameters of a matching ``nn.Sequential`` of ``nn.Linear(d_{i-1}, d_i, bias=False)`` and
``nn.LeakyReLU(0.1)`` layers (no activation after the last ``Linear``)::

    learned = load_optimizer("checkpoints/update_tele.safetensors")
    model = nn.Sequential(nn.Linear(20, 20, bias=False), nn.LeakyReLU(0.1), nn.Linear(20, 20, bias=False))
    opt = LearnedTeleportOptimizer(model.parameters(), learned, X=X)      # X: [d0, n]

    def closure():
        opt.zero_grad()
        loss = 0.5 * (model(X.T) - Y.T).square().sum()
        loss.backward()
        return loss

    for _ in range(100):
        loss = opt.step(closure)

Conventions (SPEC §1): data have samples in columns, ``X`` is ``[d0, n]`` and ``Y`` ``[dL, n]``.
``nn.Linear`` works on samples in rows, so ``model(X.T)`` is ``(W_L h_{L-1})ᵀ`` and the loss above
is :func:`metatele.mlp_loss`. Each parameter ``W_i`` (``[d_i, d_{i-1}]``, ``nn.Linear.weight``) is
viewed as a batch of one (``[1, d_i, d_{i-1}]``) and the step is
:meth:`LearnedOptimizer.apply`, the same code the unroll engine and the evaluator run; the teleport
uses ``X`` (:meth:`LearnedTeleportOptimizer.set_data` changes it). The LSTM states live in
``self.state`` as tensors, so ``state_dict()`` / ``load_state_dict()`` work as for any optimizer.
The computation runs in the learned optimizer's dtype and device; results are copied into the
parameters in place.
"""
from __future__ import annotations

import warnings
from typing import Callable, Iterable

import torch
from torch import nn

from .learned import LearnedOptimizer, LearnedState
from ..tasks.mlp import NEGATIVE_SLOPE
from ..symmetry.action import SymmetryWarning, non_symmetric_pairs


def check_model(model: nn.Module, learned: LearnedOptimizer) -> None:
    """Check that ``model`` is the network ``learned`` was trained for.

    It must be an ``nn.Sequential`` alternating ``nn.Linear(bias=False)`` and
    ``nn.LeakyReLU(0.1)``, ending with a ``Linear``, with weight shapes
    ``learned.task.weight_shapes``. Raises ``ValueError`` naming the first mismatch.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError(f"model must be an nn.Sequential of Linear(bias=False) and LeakyReLU({NEGATIVE_SLOPE}), got {type(model).__name__}")
    layers = list(model)
    shapes = [tuple(s) for s in learned.task.weight_shapes]
    want = 2 * len(shapes) - 1
    if len(layers) != want:
        raise ValueError(f"model has {len(layers)} layers; the learned optimizer expects {want} "
                         f"({len(shapes)} Linear layers with LeakyReLU({NEGATIVE_SLOPE}) between them)")
    for i, layer in enumerate(layers):
        if i % 2 == 0:
            if not isinstance(layer, nn.Linear) or layer.bias is not None:
                raise ValueError(f"model[{i}] must be nn.Linear(..., bias=False), got {layer}")
            if tuple(layer.weight.shape) != shapes[i // 2]:
                raise ValueError(f"model[{i}].weight has shape {tuple(layer.weight.shape)}, expected {shapes[i // 2]}")
        elif not isinstance(layer, nn.LeakyReLU) or layer.negative_slope != NEGATIVE_SLOPE:
            raise ValueError(f"model[{i}] must be nn.LeakyReLU({NEGATIVE_SLOPE}), got {layer}")


class LearnedTeleportOptimizer(torch.optim.Optimizer):
    """Runs a :class:`LearnedOptimizer` (m1 and/or m2) on a user's network.

    Args:
        params: the network's weights in layer order (``model.parameters()``); their shapes must
            be ``learned.task.weight_shapes`` ``[(d1, d0), (d2, d1), ...]``.
        learned: the learned optimizer (e.g. from :func:`metatele.release.checkpoint.load_optimizer`).
            Variants ``update``, ``update+tele`` and ``lr+tele`` are supported.
        X: the inputs the teleport acts with, ``[d0, n]`` (samples in columns) or ``[1, d0, n]``.
            Required by the teleporting variants.

    Raises:
        NotImplementedError: for the ``tele`` variant (its hand-designed base optimizer runs on
            stacked task data, not on a user's parameters).
        ValueError: parameter shapes or ``X`` do not match the learned optimizer's task.
    """

    def __init__(self, params: Iterable[torch.Tensor] | Iterable[dict], learned: LearnedOptimizer,
                 X: torch.Tensor | None = None) -> None:
        if learned.config.variant == "tele":
            raise NotImplementedError(
                "LearnedTeleportOptimizer does not support the 'tele' variant (a hand-designed base "
                "optimizer plus a learned teleport); use a checkpoint of 'update', 'update+tele' or "
                "'lr+tele', or run 'tele' through LearnedOptimizer.start() on stacked tasks"
            )
        super().__init__(params, defaults={})
        self.learned = learned
        expected = [tuple(s) for s in learned.task.weight_shapes]
        got = [tuple(p.shape) for p in self._params()]
        if got != expected:
            raise ValueError(
                f"parameter shapes {got} do not match the learned optimizer's task weight shapes "
                f"{expected} (task dims {learned.task.dims}); pass the weights of a bias-free "
                "Linear/LeakyReLU network in layer order"
            )
        self.X: torch.Tensor | None = None
        if X is not None:
            self.set_data(X)
        elif learned.config.uses_teleport:
            raise ValueError(f"variant {learned.config.variant!r} teleports and needs the data X [d0, n]")

    @classmethod
    def for_model(cls, model: nn.Module, learned: LearnedOptimizer, X: torch.Tensor | None = None) -> "LearnedTeleportOptimizer":
        """Check ``model``'s architecture with :func:`check_model`, then wrap its parameters."""
        check_model(model, learned)
        return cls(model.parameters(), learned, X=X)

    # -- helpers -----------------------------------------------------------------------------
    def _params(self) -> list[torch.Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    def _meta(self) -> tuple[torch.device, torch.dtype]:
        p = next(self.learned.parameters())
        return p.device, p.dtype

    def set_data(self, X: torch.Tensor) -> None:
        """Set the teleport's data: ``[d0, n]`` (samples in columns) or ``[1, d0, n]``.

        Warns with :class:`~metatele.symmetry.action.SymmetryWarning` when some layer input is
        narrower than ``n``: the group action is then not a symmetry of the loss.
        """
        if not torch.is_tensor(X):
            raise TypeError(f"X must be a tensor [d0, n], got {type(X).__name__}")
        given = tuple(X.shape)
        if X.dim() == 2:
            X = X.unsqueeze(0)
        d0 = self._params()[0].shape[1]
        if X.dim() != 3 or X.shape[0] != 1 or X.shape[1] != d0:
            raise ValueError(
                f"X must be [d0, n] = [{d0}, n] (samples in columns) or [1, {d0}, n], got shape "
                f"{given}; for row-sample data pass X.T"
            )
        device, dtype = self._meta()
        self.X = X.detach().to(device=device, dtype=dtype)
        weights = [p.detach().unsqueeze(0) for p in self._params()]
        bad = non_symmetric_pairs(weights, self.X)
        if self.learned.config.uses_teleport and bad:
            warnings.warn(
                f"layer pairs {bad} have inputs narrower than n = {self.X.shape[-1]} samples: the "
                "teleport is not a symmetry of the loss and will change it",
                SymmetryWarning,
                stacklevel=2,
            )

    def _load_learned_state(self) -> LearnedState:
        st = self.state[self._params()[0]]
        device, dtype = self._meta()
        if "step" not in st:
            return self.learned.initial_state(1, device, dtype)
        # load_state_dict() casts state to the parameters' dtype; the LSTMs need their own
        get = lambda k: st[k].to(device=device, dtype=dtype)  # noqa: E731
        update = (get("update_h"), get("update_c")) if "update_h" in st else None
        tele = [(get(f"teleport_h.{m}"), get(f"teleport_c.{m}")) for m in range(len(self.learned.teleports))]
        return LearnedState(update, tele)

    def _store_learned_state(self, state: LearnedState) -> None:
        st = self.state[self._params()[0]]
        st["step"] = st.get("step", torch.tensor(0.0)) + 1
        if state.update is not None:
            st["update_h"], st["update_c"] = (s.detach() for s in state.update)
        for m, (h, c) in enumerate(state.teleport):
            st[f"teleport_h.{m}"], st[f"teleport_c.{m}"] = h.detach(), c.detach()

    def reset_state(self) -> None:
        """Forget the LSTM states (start a new trajectory on the same network)."""
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
        device, dtype = self._meta()
        with torch.no_grad():
            weights = [p.detach().unsqueeze(0).to(device=device, dtype=dtype) for p in params]
            grads = [p.grad.detach().unsqueeze(0).to(device=device, dtype=dtype) for p in params]
            new, state = self.learned.apply(weights, grads, self.X, self._load_learned_state())
            for p, w in zip(params, new):
                p.copy_(w[0])
        self._store_learned_state(state)
        return loss
