"""faasx.Executor keeps the concurrent.futures contract (issue 10, section 4), with real processes.

Each test states the stdlib behaviour (ProcessPoolExecutor) and checks faasx does the same.
Tasks that must stay "running" wait for a file the test creates, bounded by a deadline, so nothing
sleeps and hopes.
"""
import concurrent.futures as cf
import os
import threading
import time

import pytest

import faasx
from tests.support import wait_until

from .conftest import FAST_HEARTBEATS


def gated(gate, marker, value):
    """Write ``marker``, then wait (at most 60 s) until ``gate`` exists; return ``value``."""
    import os
    import time
    with open(marker, "w"):
        pass
    deadline = time.monotonic() + 60
    while not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return value


def mark(marker, value):
    with open(marker, "w"):
        pass
    return value


def nap(seconds, value):
    import time
    time.sleep(seconds)
    return value


def fail_after(seconds):
    import time
    time.sleep(seconds)
    raise ValueError(f"failed after {seconds}s")


def warm_up(ex):
    """Run no-op tasks until the manager knows tasks are tiny: from then on it hands a worker
    several queued tasks in one batch (what the ordering tests need)."""
    for _ in range(3):
        assert sum(f.result(timeout=30) for f in ex.submit_batch([(nap, (0, 1))] * 200)) == 200


def test_a_started_task_is_running_and_cancel_returns_false(run_dir, release, tmp_path):
    """stdlib: a task a worker has taken is running(); cancel() on it returns False and it runs on."""
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS) as ex:
        marker = str(tmp_path / "started")
        fut = ex.submit(gated, release.path, marker, 42)
        wait_until(lambda: os.path.exists(marker), 30, what="the task to start on its worker")
        wait_until(fut.running, 5, what="the future to report running()")
        assert fut.cancel() is False
        assert not fut.cancelled() and not fut.done()
        release.open()
        assert fut.result(timeout=30) == 42


def test_shutdown_cancel_futures_cancels_only_tasks_not_started(run_dir, release, tmp_path):
    """stdlib: shutdown(cancel_futures=True) cancels what has not started and returns the results of
    the running tasks; a cancelled task never runs."""
    ex = faasx.Executor(max_workers_per_node=2, run_dir=run_dir, **FAST_HEARTBEATS)
    running = [ex.submit(gated, release.path, str(tmp_path / f"run{i}"), i) for i in range(2)]
    wait_until(lambda: all(f.running() for f in running), 30, what="both gated tasks to be running()")
    queued = [ex.submit(mark, str(tmp_path / f"queued{i}"), i) for i in range(6)]
    stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True})
    stopper.start()
    wait_until(lambda: all(f.cancelled() for f in queued), 10, what="the queued tasks to be cancelled")
    release.open()
    stopper.join(60)
    assert not stopper.is_alive(), "shutdown(wait=True) did not return"
    assert [f.result(timeout=0) for f in running] == [0, 1]
    assert not [p for p in os.listdir(tmp_path) if p.startswith("queued")], "a cancelled task ran"


# The slow task's place in the tests below: after warm_up the node has drained, so the worker's slow
# start hands it batches of 1, 2, 4, 8 and then 16 tasks (worker_table's module docstring); task 30 is
# the last of that fifth batch, behind 15 that finish at once -- they share a batch with it.
SLOW = 30


def ready_unless_slow(gate, i):
    """``i`` at once, except for task ``SLOW``, which first waits (at most 60 s) until ``gate`` exists."""
    import os
    import time
    deadline = time.monotonic() + 60
    while i == SLOW and not os.path.exists(gate) and time.monotonic() < deadline:
        time.sleep(0.01)
    return i


def test_map_timeout_yields_every_ready_result_in_order_before_raising(run_dir, tmp_path):
    """stdlib: map(timeout=) yields each result that is ready, in order, then raises TimeoutError --
    also when the ready tasks shared a worker (and a batch) with a slow one."""
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS) as ex:
        for chunksize in (1, 2):
            warm_up(ex)
            gate = str(tmp_path / f"release-{chunksize}")
            got = []
            t0 = time.monotonic()
            with pytest.raises(cf.TimeoutError):
                for value in ex.map(ready_unless_slow, [gate] * (SLOW + 2), range(SLOW + 2), timeout=2.0,
                                    chunksize=chunksize):
                    got.append(value)
            # every task before the slow one (with chunksize 2: every chunk before the slow one's) was
            # ready long before the timeout
            assert got == list(range(SLOW)), (chunksize, got)
            assert time.monotonic() - t0 < 10
            with open(gate, "w"):
                pass
            assert ex.submit(ready_unless_slow, gate, 0).result(timeout=30) == 0    # the slow task ended


def test_wait_first_exception_returns_when_a_task_fails(run_dir, release):
    """stdlib: wait(FIRST_EXCEPTION) returns as soon as a task fails, with every finished task in done
    -- also when they shared a worker batch with a slow task still running."""
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS) as ex:
        warm_up(ex)
        calls = [(ready_unless_slow, (release.path, i)) for i in range(SLOW - 1)]
        calls += [(fail_after, (0,)), (ready_unless_slow, (release.path, SLOW))]
        *ok, bad, slow = ex.submit_batch(calls)
        t0 = time.monotonic()
        done, not_done = cf.wait([*ok, bad, slow], timeout=30, return_when=cf.FIRST_EXCEPTION)
        elapsed = time.monotonic() - t0
        release.open()
        assert done == {*ok, bad} and not_done == {slow}, (len(done), len(not_done))
        assert elapsed < 10, elapsed
        assert isinstance(bad.exception(), ValueError)
        assert slow.result(timeout=30) == SLOW
