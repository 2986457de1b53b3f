"""Host-side schedules of meta-training: every trajectory's horizon, its start offset, every
unroll's truncation length, and the plan of meta-steps they imply.

Everything here is a deterministic function of host integers (the run's seed, a task's seed,
the meta-step index), so the engine never reads the device to decide them, a resumed run draws
exactly what an uninterrupted one would, and :func:`planned_meta_steps` can simulate the engine's
schedule without running it.

* **Horizons** (``horizon``): every trajectory runs ``steps`` inner steps (``fixed``), or a number
  drawn log-uniformly in ``[steps_min, steps]`` from its own task seed (``log_uniform``), so that
  meta-training sees short and long inner problems (Chen et al. 2020, "Training stronger
  baselines for learning to optimize").
* **Truncations** (``truncation``): every unroll has ``unroll`` steps (``fixed``) or a length drawn
  log-uniformly in ``[unroll, unroll_max]`` (``log_uniform``, Metz et al. 2019).
* **Curriculum** (``curriculum``): the longest unroll grows geometrically from ``unroll`` to
  ``unroll_max`` over the first ``curriculum`` meta-steps (``fixed`` truncations take that
  length; ``log_uniform`` ones draw up to it), so that meta-training starts on short, stable
  unrolls and ends on long ones.
"""
from __future__ import annotations

import functools
import math
from typing import Iterator

import numpy as np

TRUNCATIONS = ("fixed", "log_uniform")
HORIZONS = ("fixed", "log_uniform")
#: mixed into a task seed's generator so that its horizon is independent of anything else drawn from it
_HORIZON_STREAM = 0x484F52


def trajectory_horizon(horizon: str, steps: int, steps_min: int, seed: int, task_seed: int) -> int:
    """Inner steps of the trajectory on ``task_seed``: ``steps`` (``fixed``), or an integer drawn
    log-uniformly in ``[steps_min, steps]`` from ``(seed, task_seed)`` (``log_uniform``)."""
    if horizon == "fixed":
        return steps
    u = np.random.default_rng([seed, task_seed, _HORIZON_STREAM]).uniform(math.log(steps_min), math.log(steps))
    return min(steps, max(steps_min, int(round(math.exp(u)))))


def seed_end(next_seed: int, rank: int, world_size: int, start: int) -> int:
    """One past the largest training seed a rank has used, from its ``next_seed`` position."""
    return start if next_seed <= start else start + (next_seed - 1 - start) * world_size + rank + 1


def start_offsets(B: int, rank: int, world_size: int, steps: int, unroll: int) -> np.ndarray:
    """``stagger``'s start offsets ``[B]``: a first batch spread over the horizon of ``steps``.

    Slot ``b`` of rank ``r`` gets the offset of its place ``b·W + r`` in the whole batch of all
    ranks (as in one process), rounded down to a multiple of ``unroll``.
    """
    total = B * world_size
    return np.array([((b * world_size + rank) * steps // total) // unroll * unroll for b in range(B)], dtype=np.int64)


def staggered(offsets: np.ndarray, horizons: np.ndarray) -> np.ndarray:
    """Start offsets scaled to each trajectory's own horizon (``offsets`` were spread over the
    longest, ``steps``): the first batch then ends spread over time with any horizons."""
    longest = max(int(horizons.max()), 1)
    return (offsets * horizons) // longest


def unroll_cap(unroll: int, unroll_max: int, curriculum: int, meta_step: int) -> float:
    """The longest unroll at ``meta_step`` (0-based): ``unroll_max``, or with a ``curriculum`` of
    ``c > 0`` meta-steps ``unroll · (unroll_max / unroll)^min(1, meta_step / c)``."""
    if curriculum <= 0:
        return float(unroll_max)
    return unroll * (unroll_max / unroll) ** min(1.0, meta_step / curriculum)


def unroll_length(rng: np.random.Generator, truncation: str, unroll: int, unroll_max: int,
                  curriculum: int = 0, meta_step: int = 0) -> int:
    """One meta-step's truncation length K (see the module docstring); ``rng`` is drawn from only
    by ``log_uniform`` truncations, once per meta-step."""
    if truncation == "fixed":
        return unroll if curriculum <= 0 else int(round(unroll_cap(unroll, unroll_max, curriculum, meta_step)))
    cap = max(float(unroll), unroll_cap(unroll, unroll_max, curriculum, meta_step))
    return int(round(math.exp(rng.uniform(math.log(unroll), math.log(cap)))))


def truncation_lengths(truncation: str, unroll: int, unroll_max: int, seed: int, curriculum: int = 0) -> Iterator[int]:
    """The truncation length K of every meta-step, in order: the engine's, whose generator is
    ``np.random.default_rng(seed)`` and draws nothing else."""
    rng = np.random.default_rng(seed)
    meta_step = 0
    while True:
        yield unroll_length(rng, truncation, unroll, unroll_max, curriculum, meta_step)
        meta_step += 1


@functools.lru_cache(maxsize=64)
def planned_meta_steps(trajectories: int, B: int, steps: int, unroll: int, truncation: str, unroll_max: int,
                       stagger: bool, seed: int, horizon: str = "fixed", steps_min: int = 1,
                       train_seed_start: int = 0, curriculum: int = 0) -> int:
    """Meta-steps of the engine's schedule, simulated on host integers: B slots, each refilled
    from the budget of ``trajectories`` (seeds ``train_seed_start, +1, ...`` in order) when it
    finishes. Exact for one process when no trajectory diverges (data-parallel ranks interleave
    the seeds, so with random horizons their plan can differ by a few meta-steps)."""
    seeds = iter(range(train_seed_start, train_seed_start + trajectories))
    length = lambda: trajectory_horizon(horizon, steps, steps_min, seed, next(seeds))  # noqa: E731
    horizons = np.array([length() for _ in range(B)], dtype=np.int64)
    done = staggered(start_offsets(B, 0, 1, steps, unroll), horizons) if stagger else np.zeros(B, dtype=np.int64)
    active = np.ones(B, dtype=bool)
    budget, count = trajectories - B, 0
    lengths = truncation_lengths(truncation, unroll, unroll_max, seed, curriculum)
    while active.any():
        count += 1
        done[active] += next(lengths)
        finished = np.flatnonzero(active & (done >= horizons))
        take = min(len(finished), budget)
        budget -= take
        for slot in finished[:take]:
            done[slot], horizons[slot] = 0, length()
        active[finished[take:]] = False
    return count
