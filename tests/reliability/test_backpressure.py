"""Slow consumer / back-pressure (issue 4): a client that submits far faster than the workers drain
must keep the interchange's and the manager's memory bounded.

One worker (max_workers_per_node=1) runs tasks that sleep 1 ms, while the test submits
FAASX_BACKPRESSURE_TASKS tiny tasks (default 1,000,000; ~25 s on 2 cores, ~2 GB in the client) as
fast as it can.  The client keeps at most
``window`` tasks outstanding at the interchange, the rest wait in its own outbox, so:
- the interchange never holds more than ``window`` tasks, and its RSS stops growing once the window
  is full;
- the manager holds at most the largest capacity it can advertise (one task per worker plus the
  adaptive prefetch's ceiling): the adaptive prefetch follows the measured task time, so on a loaded
  machine the capacity shrinks while the manager still holds what it was given under the old one;
- only the client's memory grows with the number submitted (the futures are the caller's).
Each sample also records what the manager advertised (workers, capacity): its adaptive prefetch
follows the task time it measures, which a loaded machine stretches (so it is reported, not asserted).
Then shutdown(cancel_futures=True) must return promptly and leave nothing behind.
"""
from __future__ import annotations

import os
import time

import psutil

from faasx.executor.worker_table import MAX_PREFETCH_PER_WORKER

from .conftest import engine_procs, wait_until

N = int(os.environ.get("FAASX_BACKPRESSURE_TASKS", 1_000_000))
MB = 2 ** 20


def rss(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / MB


def slow_task():
    """A task of 1 ms, defined in a function so that it travels by value (dill), not by module name."""
    def slow(i):
        import time
        time.sleep(0.001)
        return i
    return slow


def memory(pids: dict) -> dict:
    return {f"{role}_mb": rss(pid) for role, pid in pids.items()}


def sample(ex, window: int, submitted: int, pids: dict) -> dict:
    """One sample while flooding; asserts the bounds that must hold at every moment."""
    st = ex.executor.interchange_stats()
    managers = ex.executor.connected_managers()
    held = max((m["tasks"] for m in managers), default=0)
    workers = max((m["worker_count"] for m in managers), default=0)
    assert st["tasks"] <= window, f"the interchange holds {st['tasks']} tasks, over the window of {window}"
    assert ex.executor._client._in_flight <= window
    assert held <= workers * (1 + MAX_PREFETCH_PER_WORKER)
    return {"submitted": submitted, "at_interchange": st["tasks"], "manager_held": held,
            "advertised": [(m["worker_count"], m["capacity"]) for m in managers], **memory(pids)}


def flood(ex, slow, window: int, pids: dict):
    """Submit N tasks in six steps, sampling after each; returns (futures, samples, seconds)."""
    samples, futures = [], []
    t0 = time.monotonic()
    step = max(1, N // 6)
    for start in range(0, N, step):
        futures += [ex.submit(slow, i) for i in range(start, min(N, start + step))]
        samples.append(sample(ex, window, len(futures), pids))
    return futures, samples, time.monotonic() - t0


def window_filled(ex, window: int) -> dict:
    def full():
        st = ex.executor.interchange_stats()
        return st if st["tasks"] >= min(window, N) * 0.9 else None
    return wait_until(full, 60, what="the interchange's window to fill")


def assert_bounded(base: dict, final: dict, samples: list, window: int) -> None:
    """Once the window is full the interchange does not grow with what the client queues."""
    window_full = [s for s in samples if s["submitted"] >= window]
    if len(window_full) >= 2:
        growth = final["interchange_mb"] - window_full[0]["interchange_mb"]
        assert growth < 64, f"interchange grew {growth:.0f} MB while only the client's outbox grew: {samples}"
    assert final["interchange_mb"] - base["interchange_mb"] < 400, (base, final)
    assert final["manager_mb"] - base["manager_mb"] < 100, (base, final)


def outcomes(futures: list) -> tuple:
    """(completed, the indices of wrong results) once every future is done."""
    ok = [i for i, f in enumerate(futures) if not f.cancelled() and f.exception(timeout=0) is None]
    return len(ok), [i for i in ok if futures[i].result(timeout=0) != i]


def test_interchange_and_manager_memory_stay_bounded_under_a_flood(make_executor, report):
    ex = make_executor(max_workers_per_node=1, heartbeat_period=1, heartbeat_threshold=10)
    client = ex.executor._client
    window = client.window
    wait_until(lambda: ex.executor.connected_managers(), 30, what="the manager to register")
    pids = {"client": os.getpid(), "interchange": client.ic_proc.pid,
            "manager": engine_procs(ex, "faasx-manager")[0].pid}
    slow = slow_task()
    assert ex.submit(slow, -1).result(timeout=30) == -1      # function shipped, everything warm
    base = memory(pids)
    futures, samples, submit_seconds = flood(ex, slow, window, pids)
    # the window fills up: the interchange holds (close to) window tasks, the rest wait in the client
    full = window_filled(ex, window)
    final = memory(pids)
    assert sum(f.done() for f in futures) < N / 2, "the workers were meant to be the bottleneck"
    assert_bounded(base, final, samples, window)

    t1 = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    shutdown_seconds = time.monotonic() - t1
    assert shutdown_seconds < 30
    assert all(f.done() for f in futures)
    completed, wrong = outcomes(futures)
    assert not wrong
    report(f"backpressure_{N}", tasks_submitted=N, window=window, submit_seconds=round(submit_seconds, 1),
           submits_per_second=round(N / submit_seconds), held_at_interchange=full["tasks"],
           completed_before_cancel=completed,
           client_rss_mb=[round(base["client_mb"]), round(final["client_mb"])],
           interchange_rss_mb=[round(base["interchange_mb"]), round(final["interchange_mb"])],
           manager_rss_mb=[round(base["manager_mb"]), round(final["manager_mb"])],
           client_bytes_per_queued_task=round((final["client_mb"] - base["client_mb"]) * MB / N),
           shutdown_cancel_seconds=round(shutdown_seconds, 2), samples=samples)
