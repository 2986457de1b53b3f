"""``metatele throughput --profile``: a meta-step's time split by phase (metatele.studies.throughput)."""
from __future__ import annotations

import pytest

from metatele.profiling import PHASES, TELEPORT_GRADIENT
from metatele.studies.throughput import META_BACKWARD, META_OPTIMIZER, OTHER, profile_meta_step

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("variant", ["update", "update+tele"])
def test_the_phases_add_up_to_the_profiled_meta_step(variant):
    r = profile_meta_step(2, variant, meta_steps=1, device="cpu", dims=[5, 6, 6, 3])
    phases = r["phases"]
    assert list(phases) == [*PHASES, META_BACKWARD, META_OPTIMIZER, OTHER]
    assert sum(phases.values()) == pytest.approx(r["profiled_seconds"])
    assert all(v >= 0 for k, v in phases.items() if k != OTHER)
    assert phases[META_BACKWARD] > 0 and phases[META_OPTIMIZER] > 0
    assert (phases[TELEPORT_GRADIENT] > 0) == (variant == "update+tele")  # only a teleporting step needs G
    # the named phases account for most of the step (nothing large is left unlabelled)
    assert phases[OTHER] < 0.5 * r["profiled_seconds"]
