"""Named phases of an inner step, for the profile of ``metatele throughput --profile``.

The step's stages wrap their work in :func:`phase`. Under :mod:`torch.profiler` the phase is a
``record_function`` range that :mod:`metatele.studies.throughput` sums into a table; otherwise
:func:`phase` is a no-op context (no profiler call in the hot loop).
"""
from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext

import torch
from torch.profiler import record_function

#: the prefix of every phase's ``record_function`` name
PREFIX = "metatele::"
#: the phases, in the order of an inner step
INNER_LOSS = "inner loss and gradient"
FEATURES = "m1 features"
M1 = "m1 MLP and update"
TELEPORT_GRADIENT = "teleport gradient (double backward)"
M2 = "m2 (features, MLP, T)"
UPDATE = "local update (bound, backoff)"
SAFEGUARD = "safeguard loss evaluations"
TELEPORT = "teleport (group action)"
PHASES = (INNER_LOSS, FEATURES, M1, TELEPORT_GRADIENT, M2, UPDATE, SAFEGUARD, TELEPORT)

_OFF = nullcontext()


def phase(name: str) -> AbstractContextManager:
    """A ``record_function`` range named ``metatele::<name>`` while a profiler runs; a no-op otherwise."""
    if torch.autograd._profiler_enabled():
        return record_function(PREFIX + name)
    return _OFF
