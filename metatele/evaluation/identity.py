"""What a method is, as a typed record carried with its results (not recovered from its name).

A display name such as ``LSTM(update+tele) [skip]`` or ``gd(tuned)+tele`` is for people; code that
needs to know whether a method teleports, which learned variant it is, which search candidate it
belongs to or which method it adds a teleport to reads its :class:`MethodId`, built where the
method is built (from its config) and stored next to its statistics.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ..optimizers.learned import TELEPORTING_VARIANTS

#: learned variant → the variant of the same learned optimizer without its teleport
_WITHOUT_TELEPORT = {"update+tele": "update", "lr+tele": "lr"}


@dataclass(frozen=True)
class MethodId:
    """The identity of one evaluated method.

    Attributes:
        name: the display name (table rows, legends, wandb run names).
        base: the method this one is without its teleport (its own name when it does not
            teleport): methods with the same ``base`` share a colour in figures, and
            ``teleport`` sets the line style.
        teleport: whether the method teleports (a learned teleport or a baseline's schedule).
        variant: the learned optimizer's variant (``update``, ``update+tele``, ``lr+tele``,
            ``tele``, ``lr``); ``None`` for a hand-designed baseline.
        candidate: the configuration-search candidate (or other tag) the method belongs to.
    """

    name: str
    base: str
    teleport: bool
    variant: str | None = None
    candidate: str | None = None

    @property
    def learned(self) -> bool:
        """Whether this is a learned optimizer."""
        return self.variant is not None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for ``results.json`` and wandb configs)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "MethodId":
        """Inverse of :meth:`to_dict`."""
        return cls(**dict(data))


def learned_id(name: str, variant: str, candidate: str | None = None) -> MethodId:
    """The identity of a learned optimizer of ``variant`` shown as ``name``; its ``base`` is the
    same optimizer without teleport, ``LSTM(update)`` for ``update+tele`` (with `` [candidate]``)."""
    core = _WITHOUT_TELEPORT.get(variant, variant)
    base = f"LSTM({core})" + (f" [{candidate}]" if candidate else "")
    return MethodId(name, base, variant in TELEPORTING_VARIANTS, variant, candidate)


def baseline_id(name: str, teleport: bool = False, base: str | None = None) -> MethodId:
    """The identity of a hand-designed baseline shown as ``name``; ``base``: the name of the same
    baseline without teleport (default ``name``)."""
    return MethodId(name, base or name, teleport)
