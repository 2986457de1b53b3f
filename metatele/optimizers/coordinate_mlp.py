"""The small MLP that the coordinatewise m1 and m2 share across coordinates, and how it is run.

One MLP (``layers`` hidden ReLU layers of width ``hidden``) maps each coordinate's (or each
matrix entry's) ``k`` features to a few outputs. It runs on every coordinate of every layer and
task in one call; :func:`mlp_columns` runs it with the features first (``[k, N]``), the layout the
CPU's matrix products are fast in, and :func:`heads` also keeps the reference row layout
(``[N, k]``, ``nn.Sequential`` as is) that the tests compare it with.
"""
from __future__ import annotations

import torch
from torch import nn


def coordinate_mlp(n_in: int, n_out: int, hidden: int, layers: int) -> nn.Sequential:
    """``layers`` hidden ReLU layers of width ``hidden``; the output layer starts at zero."""
    mods: list[nn.Module] = []
    width = n_in
    for _ in range(layers):
        mods += [nn.Linear(width, hidden), nn.ReLU()]
        width = hidden
    head = nn.Linear(width, n_out)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return nn.Sequential(*mods, head)


def mlp_columns(net: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """``net`` (a :func:`coordinate_mlp`) on every column of ``x`` ``[k, ...]`` (features first):
    ``[n_out, ...]``, the function ``net(x.movedim(0, -1)).movedim(-1, 0)``.

    Every layer is one ``W h + b`` product over all the columns at once. This layout is what the
    CPU's matrix products are fast in: with the features last, the first layer's backward
    multiplies by a 9-wide matrix on the row side, several times slower per flop. The result
    equals the row layout's to rounding (a different summation order in the matrix products).
    """
    shape = x.shape[1:]
    h = x.reshape(x.shape[0], -1)
    for layer in net:
        if isinstance(layer, nn.Linear):
            h = torch.addmm(layer.bias.unsqueeze(1), layer.weight, h)
        else:  # the ReLU after a product, in place (the product's backward does not read its output)
            h = torch.relu_(h)
    return h.view(-1, *shape)


def heads(net: nn.Sequential, x: torch.Tensor, features_first: bool) -> tuple[torch.Tensor, ...]:
    """The outputs of ``net`` on the features ``x`` ``[..., k]`` (a view of a features-first
    tensor), one tensor ``[...]`` per output: by :func:`mlp_columns`, or in the reference row
    layout (``net`` on ``x`` made contiguous, the computation before the features-first one)."""
    if features_first:
        return mlp_columns(net, x.movedim(-1, 0)).unbind(0)
    return net(x.contiguous()).unbind(-1)
