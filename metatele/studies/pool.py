"""Independent calls in a process pool, where a finished call may add follow-up calls.

:class:`~metatele.studies.benchmark.BenchmarkRun` runs its learned jobs this way, and each trained
checkpoint's transfer evaluations as soon as it exists, so that they fill the pool's tail. Results
are returned by key: they do not depend on the order in which calls finish.
"""
from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from typing import Any, Callable, Hashable, Mapping

Call = tuple[Callable[..., Any], tuple]  # a top-level function and its arguments (picklable)


def run_calls(calls: Mapping[Hashable, Call], workers: int,
              follow: Callable[[Hashable, Any], Mapping[Hashable, Call]] = lambda key, result: {},
              done: Callable[[Hashable], None] = lambda key: None) -> dict[Hashable, Any]:
    """Run ``calls`` (key → (function, args)); return key → result for them and every follow-up.

    ``follow(key, result)`` names the calls a finished call adds (keys distinct from all others);
    ``done(key)`` is told of each finished call. With ``workers == 1`` everything runs here, each
    call's follow-ups right after it; otherwise in ``workers`` spawned processes, started in the
    order of ``calls`` and follow-ups submitted as soon as their call has finished.
    """
    results: dict[Hashable, Any] = {}
    if workers == 1:
        queue = list(calls.items())
        while queue:
            key, (fn, args) = queue.pop(0)
            results[key] = fn(*args)
            done(key)
            queue[:0] = follow(key, results[key]).items()
        return results
    ctx = multiprocessing.get_context("spawn")  # no fork of a process with live OpenMP threads
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(fn, *args): key for key, (fn, args) in calls.items()}
        while futures:
            for f in wait(futures, return_when=FIRST_COMPLETED).done:
                key = futures.pop(f)
                results[key] = f.result()
                done(key)
                futures.update({pool.submit(fn, *args): k for k, (fn, args) in follow(key, results[key]).items()})
    return results
