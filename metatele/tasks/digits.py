"""A real-data task family: scikit-learn's 8×8 digits, classified by a LeakyReLU MLP.

``TaskConfig(family="digits", dims=[n_train, 64, h_1, ..., 10], bias=True)``. The data ship
inside scikit-learn (1,797 images of 64 pixels, values 0–16, 10 classes; nothing is
downloaded); pixels are scaled to [0, 1] and the library exposes those values unchanged, one
image per column: ``X`` is ``[B, 64, n_train]``, the targets ``Y`` are one-hot ``[B, 10, n_train]``.

A task's seed fixes the train / validation split (a random permutation of the 1,797 images: the
first ``n_train`` train, the other ``1797 − n_train`` validate) and the initialisation (weights
``N(0, 2 / fan_in)``, He's rule for a ReLU-like σ, biases zero). Both are drawn from the seed's
own CPU generator, so a task depends only on its seed.

The loss is the cross-entropy of the softmax of the network output, averaged over the images
(:func:`cross_entropy`), so its scale does not depend on how many images it is measured on.

**The teleport batch.** The group action keeps the loss on ``n`` samples only if every
teleported layer input (``[h; 1ᵀ]`` with biases) has full column rank, so ``n ≤ d_{m−1}`` (+ 1).
A teleport on digits acts with the first ``k = TaskConfig.teleport_samples`` training images of
the task (a random subset, since the split is a random permutation): the loss on those is
exactly invariant, the loss on the rest of the training set changes, and
:func:`teleport_loss_change` measures both. For a network with one hidden layer the bound
``65`` is not reachable in practice (a pixel that is zero in every image of the batch gives a
zero row); use two or more hidden layers or a smaller ``teleport_batch``.

**Minibatches.** By default every step's gradient is the full-batch one, on all ``n_train``
training images. With ``TaskConfig.minibatch = m``, step ``t`` of the task with seed ``s`` takes
its gradient (and reports its loss) on ``m`` of them, drawn without replacement from
``numpy.random.default_rng([s, t, MINIBATCH_STREAM])`` (:class:`MinibatchSampler`): a function of
``(s, t)`` only, so runs are deterministic, resume without any sampler state, and every task of a
batch draws its own images. Indices are drawn on the host and gathered on the device.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..configs import is_int, require
from .family import TaskBatch, TaskConfig, TaskFamily, as_seed_list, register_family
from .mlp import forward

#: images in scikit-learn's digits set, pixels per image, classes
N_IMAGES, N_PIXELS, N_CLASSES = 1797, 64, 10
#: the third entry of every minibatch generator's seed ``[seed, step, MINIBATCH_STREAM]``, which
#: keeps the minibatch stream apart from any other use of ``numpy.random.default_rng([seed, step])``
MINIBATCH_STREAM = 0x6D696E69  # "mini"


@functools.lru_cache(maxsize=1)
def load_digits_data() -> tuple[np.ndarray, np.ndarray]:
    """The digits set, offline: ``(images [1797, 64] float64 in [0, 1], labels [1797] int64)``."""
    try:  # optional dependency (pip install "metatele[digits]"), needed only for this family
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError('the digits task family needs scikit-learn: pip install "metatele[digits]"') from e

    data = load_digits()
    images = np.asarray(data.data, dtype=np.float64) / 16.0
    labels = np.asarray(data.target, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return images, labels


def cross_entropy(weights: Sequence[torch.Tensor], X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of ``softmax(f(X))`` against one-hot targets, per task.

    Args:
        weights: list of ``[B, d_i, d_{i-1}(+1)]``.  X: ``[B, 64, n]``.  Y: one-hot ``[B, 10, n]``.

    Returns:
        ``[B]``.
    """
    logits = forward(weights, X)
    return -(Y * F.log_softmax(logits, dim=1)).sum(dim=1).mean(dim=1)


def accuracy(weights: Sequence[torch.Tensor], X: torch.Tensor, Y: torch.Tensor) -> torch.Tensor:
    """Fraction of images whose largest output is the target class, per task: ``[B]``."""
    logits = forward(weights, X)
    return (logits.argmax(dim=1) == Y.argmax(dim=1)).to(X.dtype).mean(dim=1)



@dataclass
class DigitsBatch(TaskBatch):
    """B digits tasks: the training data of :class:`TaskBatch` plus the validation images.

    Attributes:
        X, Y: training images ``[B, 64, n_train]`` and one-hot targets ``[B, 10, n_train]``; the
            first ``teleport_samples`` columns are the teleport batch.
        X_val, Y_val: validation images ``[B, 64, n_val]`` and targets ``[B, 10, n_val]``.
        teleport_samples: size ``k`` of the teleport batch.
    """

    X_val: torch.Tensor | None = None
    Y_val: torch.Tensor | None = None
    teleport_samples: int = 0

    @property
    def X_tele(self) -> torch.Tensor:
        """The teleport batch ``[B, 64, k]``."""
        return self.X[..., : self.teleport_samples]

    @property
    def Y_tele(self) -> torch.Tensor:
        return self.Y[..., : self.teleport_samples]

    @property
    def X_rest(self) -> torch.Tensor:
        """The training images outside the teleport batch ``[B, 64, n_train − k]``."""
        return self.X[..., self.teleport_samples:]

    @property
    def Y_rest(self) -> torch.Tensor:
        return self.Y[..., self.teleport_samples:]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "DigitsBatch":
        move = lambda t: t.to(device=device, dtype=dtype)  # noqa: E731
        return DigitsBatch(move(self.X), move(self.Y), [move(w) for w in self.weights], self.seeds,
                           move(self.X_val), move(self.Y_val), self.teleport_samples)

    def metrics(self, weights: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
        """Validation loss and accuracy at ``weights``: ``{"val_loss": [B], "val_accuracy": [B]}``."""
        with torch.no_grad():
            return {"val_loss": cross_entropy(weights, self.X_val, self.Y_val),
                    "val_accuracy": accuracy(weights, self.X_val, self.Y_val)}


def _sample_one(config: TaskConfig, seed: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The seed's permutation of the images ``[1797]`` and its initial weights (float64)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(int(seed))
    order = torch.randperm(N_IMAGES, generator=gen)
    widths, b = config.widths, int(config.bias)
    weights = []
    for i in range(len(widths) - 1):
        W = torch.randn(widths[i + 1], widths[i], generator=gen, dtype=torch.float64) * math.sqrt(2.0 / widths[i])
        weights.append(torch.cat([W, torch.zeros(widths[i + 1], b, dtype=torch.float64)], dim=1))
    return order, weights


def sample_digits(
    config: TaskConfig,
    seeds: Iterable[int],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> DigitsBatch:
    """Draw one digits task per seed and stack them (what :func:`~metatele.tasks.family.sample_tasks` does for ``digits``).

    Raises ``ValueError`` for a config of another family, an empty seed list or a seed outside
    ``[0, 2 · TEST_SEED_OFFSET)``.
    """
    if config.family != "digits":
        raise ValueError(f"sample_digits needs task.family 'digits', got {config.family!r}")
    seeds = as_seed_list(seeds)
    images, labels = load_digits_data()
    images_t = torch.from_numpy(np.array(images))  # [1797, 64]
    onehot = F.one_hot(torch.from_numpy(np.array(labels)), N_CLASSES).to(torch.float64)  # [1797, 10]
    n = config.n_samples
    parts = [_sample_one(config, s) for s in seeds]
    orders = torch.stack([p[0] for p in parts])  # [B, 1797]
    Xall = images_t[orders].mT  # [B, 64, 1797], one image per column in the seed's order
    Yall = onehot[orders].mT  # [B, 10, 1797]
    cast = lambda t: t.to(dtype=dtype).to(device)  # noqa: E731
    weights = [cast(torch.stack([p[1][i] for p in parts])) for i in range(len(parts[0][1]))]
    return DigitsBatch(cast(Xall[..., :n]), cast(Yall[..., :n]), weights, seeds,
                       cast(Xall[..., n:]), cast(Yall[..., n:]), config.teleport_samples)


def minibatch_indices(seeds: Sequence[int], steps: int | Sequence[int], n_train: int, size: int) -> np.ndarray:
    """The training images of each task's minibatch: ``[B, size]`` int64 indices into ``[0, n_train)``.

    Row ``b`` holds ``size`` distinct indices for step ``steps[b]`` (or ``steps``, one step for
    every task) of the task with seed ``seeds[b]``, drawn from
    ``numpy.random.default_rng([seeds[b], steps[b], MINIBATCH_STREAM])`` and sorted ascending (so
    ``size = n_train`` selects every image in order). Host only: nothing touches a device.
    """
    seeds = [int(s) for s in seeds]
    steps_b = np.broadcast_to(np.asarray(steps, dtype=np.int64), (len(seeds),))
    if not (isinstance(size, int) and 1 <= size <= n_train):
        raise ValueError(f"minibatch size must be an integer in [1, n_train = {n_train}], got {size!r}")
    if (steps_b < 0).any() or any(s < 0 for s in seeds):
        raise ValueError(f"minibatch seeds and steps must be non-negative, got seeds {seeds[:5]}, steps {steps_b[:5]}")
    out = np.empty((len(seeds), size), dtype=np.int64)
    for b, (seed, step) in enumerate(zip(seeds, steps_b.tolist())):
        rng = np.random.default_rng([seed, step, MINIBATCH_STREAM])
        out[b] = np.sort(rng.choice(n_train, size=size, replace=False))
    return out


@dataclass(frozen=True)
class MinibatchSampler:
    """The per-step minibatches of B digits tasks (``TaskConfig.minibatch``).

    Attributes:
        seeds: the tasks' seeds, one per row of the batch (length ``B``).
        size: training images per minibatch.
    """

    seeds: tuple[int, ...]
    size: int

    def select(self, X: torch.Tensor, Y: torch.Tensor, steps: int | Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The minibatch of step ``steps`` (an int, or one host integer per task ``[B]``).

        Args:
            X: training images ``[B, 64, n_train]``.  Y: one-hot targets ``[B, 10, n_train]``.

        Returns:
            ``(X_b [B, 64, size], Y_b [B, 10, size])``: the columns :func:`minibatch_indices`
            picks, gathered on ``X``'s device (one host→device copy of the indices, no read-back);
            ``(X, Y)`` themselves when ``size = n_train`` (every image, in order).
        """
        if X.shape[0] != len(self.seeds):
            raise ValueError(f"the sampler holds {len(self.seeds)} task seeds but X has batch size {X.shape[0]}")
        if self.size == X.shape[-1]:
            return X, Y
        idx = minibatch_indices(self.seeds, steps, X.shape[-1], self.size)
        idx = torch.from_numpy(idx).to(X.device).unsqueeze(1)  # [B, 1, size]
        return torch.take_along_dim(X, idx, dim=-1), torch.take_along_dim(Y, idx, dim=-1)


def minibatch_sampler(config: TaskConfig, seeds: Iterable[int]) -> MinibatchSampler | None:
    """The sampler of ``config.minibatch`` for the tasks of ``seeds`` (``None``: full batch)."""
    if config.minibatch is None:
        return None
    return MinibatchSampler(tuple(int(s) for s in seeds), config.minibatch)


@dataclass
class TeleportLossChange:
    """The loss change a teleport causes, relative to the loss before, per task (``[B]`` each)."""

    teleport_batch: torch.Tensor
    rest: torch.Tensor
    validation: torch.Tensor


def teleport_loss_change(
    batch: DigitsBatch, before: Sequence[torch.Tensor], after: Sequence[torch.Tensor]
) -> TeleportLossChange:
    """``(L(after) − L(before)) / L(before)`` on the teleport batch (≈ 0: the group action keeps it),
    on the rest of the training set, and on the validation images."""
    with torch.no_grad():
        rel = lambda X, Y: (cross_entropy(after, X, Y) - cross_entropy(before, X, Y)) / cross_entropy(before, X, Y)  # noqa: E731
        return TeleportLossChange(rel(batch.X_tele, batch.Y_tele), rel(batch.X_rest, batch.Y_rest),
                                  rel(batch.X_val, batch.Y_val))


class DigitsFamily(TaskFamily):
    """scikit-learn's 8×8 digits: networks ``[n_train, 64, h_1, ..., 10]``, cross-entropy, the
    held-out images as validation data, a teleport batch and optional minibatches."""

    name = "digits"
    loss = staticmethod(cross_entropy)
    accuracy = staticmethod(accuracy)
    has_validation = True
    scale_targets = False  # one-hot labels
    sample = staticmethod(sample_digits)

    def validate(self, config: TaskConfig) -> None:
        dims = config.dims
        require(dims[1] == N_PIXELS and dims[-1] == N_CLASSES and len(dims) >= 4, "task.dims",
                f"a digits network is [n_train, {N_PIXELS}, h_1, ..., {N_CLASSES}], got {dims}")
        require(dims[0] < N_IMAGES, "task.dims", f"n_train must leave validation images (< {N_IMAGES}), got {dims[0]}")
        limit = min(min((s[1] for s in config.weight_shapes[:-1]), default=0), dims[0])
        require(config.teleport_batch is None or (is_int(config.teleport_batch) and 1 <= config.teleport_batch <= limit),
                "task.teleport_batch",
                f"must be null or an integer in [1, {limit}] (the narrowest teleported layer "
                f"input{' + 1 with biases' if config.bias else ''}), got {config.teleport_batch!r}")
        require(config.minibatch is None or (is_int(config.minibatch) and 1 <= config.minibatch <= dims[0]),
                "task.minibatch", f"must be null (full batch) or an integer in [1, {dims[0]}] (the training images "
                f"n_train = dims[0]), got {config.minibatch!r}")

    def teleport_batch(self, config: TaskConfig) -> int:
        """The first ``teleport_batch`` training images, by default as many as the narrowest
        teleported layer input allows."""
        return config.teleport_batch or min(config.dims[0], min(s[1] for s in config.weight_shapes[:-1]))


register_family(DigitsFamily())
