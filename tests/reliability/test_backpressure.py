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


def test_interchange_and_manager_memory_stay_bounded_under_a_flood(make_executor, report):
    ex = make_executor(max_workers_per_node=1, heartbeat_period=1, heartbeat_threshold=10)
    client = ex.executor._client
    window = client.window
    ic_pid = client.ic_proc.pid
    wait_until(lambda: ex.executor.connected_managers(), 30, what="the manager to register")
    manager_pid = engine_procs(ex, "faasx-manager")[0].pid

    def slow(i):
        import time
        time.sleep(0.001)
        return i

    assert ex.submit(slow, -1).result(timeout=30) == -1      # function shipped, everything warm
    base = {"client": rss(os.getpid()), "interchange": rss(ic_pid), "manager": rss(manager_pid)}
    samples = []
    futures = []
    t0 = time.monotonic()
    step = max(1, N // 6)
    for start in range(0, N, step):
        futures += [ex.submit(slow, i) for i in range(start, min(N, start + step))]
        st = ex.executor.interchange_stats()
        managers = ex.executor.connected_managers()
        held = max((m["tasks"] for m in managers), default=0)
        workers = max((m["worker_count"] for m in managers), default=0)
        capacity = workers * (1 + MAX_PREFETCH_PER_WORKER)
        samples.append({"submitted": len(futures), "at_interchange": st["tasks"], "manager_held": held,
                        "advertised": [(m["worker_count"], m["capacity"]) for m in managers],
                        "client_mb": rss(os.getpid()), "interchange_mb": rss(ic_pid),
                        "manager_mb": rss(manager_pid)})
        assert st["tasks"] <= window, f"the interchange holds {st['tasks']} tasks, over the window of {window}"
        assert client._in_flight <= window
        assert held <= capacity
    submit_seconds = time.monotonic() - t0
    # the window fills up: the interchange holds (close to) window tasks, the rest wait in the client
    full = wait_until(lambda: (lambda s: s if s["tasks"] >= min(window, N) * 0.9 else None)(
        ex.executor.interchange_stats()), 60, what="the interchange's window to fill")
    final = {"client_mb": rss(os.getpid()), "interchange_mb": rss(ic_pid), "manager_mb": rss(manager_pid)}
    done = sum(f.done() for f in futures)
    assert done < N / 2, "the workers were meant to be the bottleneck"

    # bounded: once the window is full the interchange does not grow with what the client queues
    window_full = [s for s in samples if s["submitted"] >= window]
    if len(window_full) >= 2:
        growth = final["interchange_mb"] - window_full[0]["interchange_mb"]
        assert growth < 64, f"interchange grew {growth:.0f} MB while only the client's outbox grew: {samples}"
    assert final["interchange_mb"] - base["interchange"] < 400, (base, final)
    assert final["manager_mb"] - base["manager"] < 100, (base, final)

    t1 = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    shutdown_seconds = time.monotonic() - t1
    assert shutdown_seconds < 30
    assert all(f.done() for f in futures)
    completed = sum(1 for f in futures if not f.cancelled() and f.exception(timeout=0) is None)
    wrong = [i for i, f in enumerate(futures) if not f.cancelled() and f.exception(timeout=0) is None
             and f.result(timeout=0) != i]
    assert not wrong
    report(f"backpressure_{N}", tasks_submitted=N, window=window, submit_seconds=round(submit_seconds, 1),
           submits_per_second=round(N / submit_seconds), held_at_interchange=full["tasks"],
           completed_before_cancel=completed,
           client_rss_mb=[round(base["client"]), round(final["client_mb"])],
           interchange_rss_mb=[round(base["interchange"]), round(final["interchange_mb"])],
           manager_rss_mb=[round(base["manager"]), round(final["manager_mb"])],
           client_bytes_per_queued_task=round((final["client_mb"] - base["client"]) * MB / N),
           shutdown_cancel_seconds=round(shutdown_seconds, 2), samples=samples)
