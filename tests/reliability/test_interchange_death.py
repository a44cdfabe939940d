"""The interchange is SIGKILLed with tasks in flight (issue 4, invariant 1).

Pending futures must fail with InterchangeLost within seconds, the managers and workers must exit
on their own within heartbeat_threshold (they are not told: their interchange is simply gone),
``shutdown()`` must return promptly, and a new executor in the same process must work.
"""
from __future__ import annotations

import concurrent.futures
import os
import signal
import time

import pytest

from faasx.errors import InterchangeLost

from .conftest import assert_no_leftovers, engine_procs, wait_until

HB = dict(heartbeat_period=0.5, heartbeat_threshold=3)
ROUNDS = 3


def test_interchange_sigkill_fails_pending_futures_and_executor_restarts(make_executor, report):
    def nap(i, seconds):
        import time
        time.sleep(seconds)
        return i

    fail_times, shutdown_times, orphan_exit_times = [], [], []
    failed_futures = 0
    for round_ in range(ROUNDS):
        ex = make_executor(max_workers_per_node=2, max_retries_on_system_failure=2, **HB)
        ic = ex.executor._client.ic_proc
        # the executor works before the fault
        assert [f.result(timeout=60) for f in [ex.submit(pow, i, 2) for i in range(50)]] == \
            [i * i for i in range(50)]
        running = [ex.submit(nap, i, 60) for i in range(2)]           # at the workers
        queued = [ex.submit(nap, i, 0.01) for i in range(2, 2000)]    # at the interchange / manager
        wait_until(lambda: sum(m["tasks"] for m in ex.executor.connected_managers()) >= 2, 30,
                 what="long tasks to reach the workers")
        managers = engine_procs(ex, "faasx-manager")
        workers = engine_procs(ex, "faasx-worker")
        assert managers and workers

        os.kill(ic.pid, signal.SIGKILL)
        t0 = time.monotonic()
        pending = running + [f for f in queued if not f.done()]
        done, not_done = concurrent.futures.wait(pending, timeout=10)
        fail_times.append(time.monotonic() - t0)
        assert not not_done, f"{len(not_done)} futures still pending 10s after the interchange died"
        for f in pending:
            assert isinstance(f.exception(timeout=0), InterchangeLost), f.exception(timeout=0)
        failed_futures += len(pending)
        assert "exited with code -9" in str(running[0].exception(timeout=0))
        with pytest.raises(InterchangeLost):
            ex.submit(pow, 2, 2)

        # managers notice the silence themselves (no one told them) and take their workers along
        def orphans():
            return [p for p in managers + workers if p.is_running() and p.status() != "zombie"]
        wait_until(lambda: not orphans(), HB["heartbeat_threshold"] + 10, interval=0.1,
                 what="managers and workers to exit after their interchange died")
        orphan_exit_times.append(time.monotonic() - t0)

        t1 = time.monotonic()
        ex.shutdown(wait=True)
        shutdown_times.append(time.monotonic() - t1)
        assert shutdown_times[-1] < 10, f"shutdown() took {shutdown_times[-1]:.1f}s"
        assert_no_leftovers(ex.run_dir, {ic.pid}, what="after the interchange was killed ")

    # the same process starts a fresh executor that works
    ex = make_executor(max_workers_per_node=2, **HB)
    futs = [ex.submit(pow, i, 3) for i in range(500)]
    assert [f.result(timeout=60) for f in futs] == [i ** 3 for i in range(500)]
    report("interchange_sigkill", rounds=ROUNDS, futures_failed_with_InterchangeLost=failed_futures,
           lost_silently=0, duplicated=0,
           max_seconds_to_fail_all_pending=round(max(fail_times), 2),
           max_seconds_managers_and_workers_exit=round(max(orphan_exit_times), 2),
           max_seconds_shutdown=round(max(shutdown_times), 2))
