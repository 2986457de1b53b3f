"""The two LSTM meta-optimizers (docs/meta_optimizers.md).

* :class:`UpdateLSTM` (m1) reads the flattened gradient of all weights and writes a same-sized
  update; the inner step is ``W ← W − update``.
* :class:`TeleportLSTM` (m2), one per consecutive layer pair, reads the concatenated flattened
  gradients of ``W_m`` and ``W_{m+1}`` and writes ``T ∈ R^{d_m×d_m}`` rescaled to Frobenius norm
  ``ε``; the network is then teleported with ``g = I + T``. The ``emit_lr`` variant also writes a
  step size for plain gradient descent (clamped to ``[lr_min, lr_max]``, or parameterised in log
  space so that it cannot stick to the clamp).

Both process B trajectories at once with shared weights. The recurrent state is a pair
``(h, c)`` of ``[num_layers, B, hidden]`` tensors, so resetting trajectory ``b`` is a masked
multiply. Two optional input transforms (both off in the paper): gradient preprocessing
(log-magnitude and sign, Andrychowicz et al. 2016) and RMS normalisation (``input_norm: rms``),
so that the LSTMs read gradients of any scale in the same range (see :class:`LSTMConfig`). m1 can
also write the step size of a plain gradient step that its own output corrects (``gd_skip``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar, Sequence

import torch
from torch import nn

from ..configs import check_fields, require
from ..symmetry.strategies import normalize_frobenius

State = tuple[torch.Tensor, torch.Tensor]
INPUT_NORMS = ("none", "rms")
#: added to the mean square before the root, so an all-zero gradient (a converged or sanitised
#: diverged trajectory) gives a finite scale and a zero update
RMS_FLOOR = 1e-30


@dataclass
class LSTMConfig:
    """Sizes and options shared by m1 and m2 (defaults: the paper's).

    Attributes:
        hidden: hidden units per LSTM cell (paper: 300).
        layers: stacked LSTM cells (paper: 2).
        preprocess: log-magnitude/sign gradient preprocessing with p = 10 (off in the paper).
        output_scale: multiplier on m1's linear head (1: the paper's raw head).
        input_norm: ``none`` (the paper: the LSTMs read raw gradients) or ``rms``: each LSTM
            reads its gradient divided by its root-mean-square ``s`` (per trajectory) plus the
            feature ``log(s) / 10``, and m1's update is multiplied by ``s``. The update is then
            ``s · output_scale · f(g / s, log s)``, so a task family whose gradients are 100×
            smaller (the gaussian tasks against the uniform ones) is not a different input
            regime for the LSTM. m2's ``T`` is renormalised to norm ε anyway.
        gd_skip: m1 also writes a step size ``η`` (one extra output, in log space within
            ``[skip_lr_min, skip_lr_max]``) and its update becomes ``η g + (LSTM output)``: a
            gradient step the LSTM corrects. Without it the update has to pass the whole
            gradient through the ``hidden``-unit bottleneck, which a 300-unit LSTM cannot do for
            the 1,200 independent gradient entries of a gaussian task.
        skip_lr_min, skip_lr_max: the range of that step size.
    """

    #: removed options, each with the one value a saved config may still hold (see CoordinatewiseConfig)
    REMOVED: ClassVar[dict[str, Any]] = {"preprocess_p": 10.0}

    hidden: int = 300
    layers: int = 2
    preprocess: bool = False
    output_scale: float = 1.0
    input_norm: str = "none"
    gd_skip: bool = False
    skip_lr_min: float = 1e-7
    skip_lr_max: float = 0.1

    def __post_init__(self) -> None:
        check_fields(self, "lstm")
        require(self.hidden >= 1, "lstm.hidden", f"must be ≥ 1, got {self.hidden}")
        require(self.layers >= 1, "lstm.layers", f"must be ≥ 1, got {self.layers}")
        require(self.output_scale > 0, "lstm.output_scale", f"must be > 0, got {self.output_scale}")
        require(self.input_norm in INPUT_NORMS, "lstm.input_norm",
                f"must be one of {INPUT_NORMS}, got {self.input_norm!r}")
        require(0 < self.skip_lr_min < self.skip_lr_max, "lstm.skip_lr_min/skip_lr_max",
                f"need 0 < skip_lr_min < skip_lr_max, got {self.skip_lr_min}, {self.skip_lr_max}")

    def input_size(self, n: int) -> int:
        """LSTM input width for a flattened gradient of ``n`` entries (two per entry with
        preprocessing, plus the log-scale feature with RMS normalisation)."""
        return (2 if self.preprocess else 1) * n + (1 if self.input_norm == "rms" else 0)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Flattened gradients ``[B, n]`` → (LSTM input, RMS scale ``[B, 1]`` or ``None``)."""
        scale = None
        if self.input_norm == "rms":
            scale = x.square().mean(dim=1, keepdim=True).add(RMS_FLOOR).sqrt()
            x = x / scale
        if self.preprocess:
            x = preprocess_gradients(x)
        if scale is not None:
            x = torch.cat([x, scale.log() / 10], dim=1)
        # a non-finite input (a diverging trajectory's gradient, or inf / inf under rms) would make
        # the cells' backward 0 · NaN for the whole weight gradient, although the engine masks the
        # row: read 0 there instead. Finite inputs are unchanged, bit for bit.
        return torch.nan_to_num(x, nan=0.0, posinf=0.0, neginf=0.0), scale


def preprocess_gradients(x: torch.Tensor, p: float = 10.0) -> torch.Tensor:
    """Andrychowicz et al. (2016) preprocessing: ``[B, P] → [B, 2P]``.

    ``(log|x|/p, sign x)`` if ``|x| ≥ e^{-p}``, else ``(−1, e^p x)``.
    """
    big = x.abs() >= math.exp(-p)
    first = torch.where(big, x.abs().clamp_min(math.exp(-p)).log() / p, torch.full_like(x, -1.0))
    second = torch.where(big, torch.sign(x), x * math.exp(p))
    return torch.cat([first, second], dim=-1)


def log_space(z: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Map a raw output to ``(lo, hi)`` log-uniformly: ``exp(log lo + (log hi − log lo) σ(z))``.

    Smooth everywhere, so a step size cannot stick to a bound (unlike a clamp); ``z = 0`` gives
    the geometric mean of ``lo`` and ``hi``.
    """
    return torch.exp(math.log(lo) + (math.log(hi) - math.log(lo)) * torch.sigmoid(z))


def flatten(tensors: Sequence[torch.Tensor]) -> torch.Tensor:
    """``[B, ...]`` tensors → ``[B, sum of sizes]``."""
    return torch.cat([t.reshape(t.shape[0], -1) for t in tensors], dim=1)


class LSTMStack(nn.Module):
    """``layers`` stacked LSTM cells and a linear head, batched over trajectories.

    Each cell is a :class:`torch.nn.LSTMCell`; the B trajectories are its batch dimension.
    """

    def __init__(self, input_size: int, output_size: int, hidden: int = 300, layers: int = 2) -> None:
        super().__init__()
        self.hidden, self.layers = hidden, layers
        self.cells = nn.ModuleList(
            nn.LSTMCell(input_size if i == 0 else hidden, hidden) for i in range(layers)
        )
        self.head = nn.Linear(hidden, output_size)
        #: gradient hook on the head's output (set by :class:`~metatele.optimizers.learned.LearnedOptimizer`
        #: from its ``output_hook``): the meta-training engine zeroes diverged trajectories' rows there,
        #: before a row's non-finite factor (an RMS scale, a gradient) can turn a zero into a NaN
        self.output_hook: Callable[[torch.Tensor], torch.Tensor] | None = None

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        """Zero state: ``(h, c)``, each ``[layers, B, hidden]``."""
        z = torch.zeros(self.layers, batch_size, self.hidden, device=device, dtype=dtype)
        return z, z.clone()

    def forward(self, x: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """``x`` ``[B, input_size]`` → output ``[B, output_size]`` and the new state."""
        h0, c0 = state
        hs, cs = [], []
        inp = x
        for i, cell in enumerate(self.cells):
            h, c = cell(inp, (h0[i], c0[i]))
            hs.append(h)
            cs.append(c)
            inp = h
        out = self.head(inp)
        if self.output_hook is not None and out.requires_grad:
            out.register_hook(self.output_hook)
        return out, (torch.stack(hs), torch.stack(cs))


def reset_state(state: State, keep: torch.Tensor) -> State:
    """Zero the state of trajectories where ``keep`` (``[B]`` bool) is False, without a sync."""
    k = keep.to(state[0].dtype).view(1, -1, 1)
    return state[0] * k, state[1] * k


class UpdateLSTM(nn.Module):
    """m1: reads all gradients, writes the local update (``W ← W − update``).

    Args:
        weight_shapes: ``[(d1, d0), (d2, d1), ...]``.
        config: sizes and options.
    """

    def __init__(self, weight_shapes: Sequence[tuple[int, int]], config: LSTMConfig | None = None) -> None:
        super().__init__()
        self.config = config or LSTMConfig()
        self.weight_shapes = [tuple(s) for s in weight_shapes]
        self.size = sum(a * b for a, b in self.weight_shapes)
        self.net = LSTMStack(self.config.input_size(self.size), self.size + int(self.config.gd_skip),
                             self.config.hidden, self.config.layers)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        return self.net.initial_state(batch_size, device, dtype)

    def forward(self, grads: Sequence[torch.Tensor], state: State) -> tuple[list[torch.Tensor], State]:
        """``grads``: list of ``[B, d_i, d_{i-1}]`` → updates of the same shapes, new state."""
        cfg = self.config
        g = flatten(grads)
        x, scale = cfg.encode(g)
        out, state = self.net(x, state)
        raw = out[:, :self.size] * cfg.output_scale
        if scale is not None:
            raw = raw * scale
        if cfg.gd_skip:
            raw = raw + log_space(out[:, self.size:], cfg.skip_lr_min, cfg.skip_lr_max) * g
        updates, i = [], 0
        for a, b in self.weight_shapes:
            updates.append(raw[:, i:i + a * b].view(-1, a, b))
            i += a * b
        return updates, state


@dataclass
class TeleportConfig:
    """m2 options (defaults: the paper's).

    Attributes:
        eps: Frobenius norm of ``T``, the paper's ε (0.01); not an Adam-style denominator epsilon
            (those are ``base.eps`` and ``coordinatewise.eps``).
        learn_eps: let m2 scale ``T`` by ``eps · 2·sigmoid(z)`` (``z`` an extra output), i.e. a
            learned magnitude in ``(0, 2 eps)`` instead of the fixed ``eps``.
        emit_lr: also write a step size for gradient descent (the ``lr+tele`` and ``lr`` variants).
        lr_min, lr_max: the step-size range (paper: clamp to ``[1e-7, 5e-3]``).
        lr_log_space: parameterise the step size as ``exp`` of a sigmoid-squashed log, so it
            cannot collapse onto the clamp (off: the paper's hard clamp).
        exact: exact group action (default) or the paper's first-order ``U (I − T)``.
    """

    eps: float = 0.01
    learn_eps: bool = False
    emit_lr: bool = False
    lr_min: float = 1e-7
    lr_max: float = 5e-3
    lr_log_space: bool = False
    exact: bool = True

    def __post_init__(self) -> None:
        check_fields(self, "teleport")
        require(self.eps > 0, "teleport.eps", f"must be > 0, got {self.eps}")
        require(0 < self.lr_min < self.lr_max, "teleport.lr_min/lr_max",
                f"need 0 < lr_min < lr_max, got {self.lr_min}, {self.lr_max}")


class TeleportLSTM(nn.Module):
    """m2 for one consecutive pair ``(W_m, W_{m+1})``: writes ``T`` ``[B, d_m, d_m]`` (and a step size).

    Args:
        shape_v: ``(d_m, d_{m-1})``; shape_u: ``(d_{m+1}, d_m)`` (one more column each with biases).
    """

    def __init__(
        self,
        shape_v: tuple[int, int],
        shape_u: tuple[int, int],
        config: LSTMConfig | None = None,
        teleport: TeleportConfig | None = None,
    ) -> None:
        super().__init__()
        self.config = config or LSTMConfig()
        self.tele = teleport or TeleportConfig()
        if shape_v[0] not in (shape_u[1], shape_u[1] - 1):  # U may carry a bias column
            raise ValueError(f"pair shapes do not chain: V {shape_v}, U {shape_u}")
        self.d = shape_v[0]
        in_size = shape_v[0] * shape_v[1] + shape_u[0] * shape_u[1]
        self.extra = int(self.tele.emit_lr) + int(self.tele.learn_eps)
        self.net = LSTMStack(self.config.input_size(in_size), self.d * self.d + self.extra, self.config.hidden, self.config.layers)

    def initial_state(self, batch_size: int, device=None, dtype=None) -> State:
        return self.net.initial_state(batch_size, device, dtype)

    def step_size(self, z: torch.Tensor) -> torch.Tensor:
        """Map the raw output ``z`` ``[B]`` to a step size in ``[lr_min, lr_max]``."""
        lo, hi = self.tele.lr_min, self.tele.lr_max
        if self.tele.lr_log_space:
            return log_space(z, lo, hi)
        return z.clamp(lo, hi)

    def forward(
        self, grad_v: torch.Tensor, grad_u: torch.Tensor, state: State
    ) -> tuple[torch.Tensor, torch.Tensor | None, State]:
        """Gradients of the pair → ``(T [B, d, d], step size [B] or None, new state)``."""
        x, _ = self.config.encode(flatten([grad_v, grad_u]))
        out, state = self.net(x, state)
        dd = self.d * self.d
        norm: float | torch.Tensor = self.tele.eps  # the Frobenius norm of T (the paper's ε)
        col = dd
        if self.tele.learn_eps:
            norm = self.tele.eps * 2 * torch.sigmoid(out[:, col])
            col += 1
        T = normalize_frobenius(out[:, :dd].view(-1, self.d, self.d), norm)
        lr = self.step_size(out[:, col]) if self.tele.emit_lr else None
        return T, lr, state
