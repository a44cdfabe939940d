"""Done-callbacks and a busy client never stall the engine (issue 10, section 3), with real processes.

The stdlib runs a callback on the thread that sets the result; faasx runs them on a callback thread
of its own, so that the I/O thread (results, heartbeats) never waits for user code.
"""
import concurrent.futures as cf
import threading
import time

import faasx
from tests.support import wait_until

from .conftest import FAST_HEARTBEATS, faasx_processes


def nap(seconds, value=None):
    import time
    time.sleep(seconds)
    return value


def test_a_callback_slower_than_heartbeat_threshold_does_not_fail_running_tasks(run_dir):
    """A callback that blocks for twice heartbeat_threshold (3 s): the task running meanwhile and one
    submitted meanwhile both succeed, and the second resolves while the callback still blocks."""
    with faasx.Executor(max_workers_per_node=2, run_dir=run_dir, **FAST_HEARTBEATS) as ex:
        in_callback, leave = threading.Event(), threading.Event()

        def slow_callback(_fut):
            in_callback.set()
            leave.wait(2 * FAST_HEARTBEATS["heartbeat_threshold"])

        running = ex.submit(nap, 4, "long")
        first = ex.submit(nap, 0, "first")
        first.add_done_callback(slow_callback)
        assert in_callback.wait(30)
        assert ex.submit(nap, 0, "meanwhile").result(timeout=5) == "meanwhile"
        assert running.result(timeout=30) == "long"
        leave.set()
        assert first.result(timeout=0) == "first"


def test_shutdown_from_a_callback_raises_like_the_stdlib_and_a_second_shutdown_works(run_dir):
    """stdlib: shutdown(wait=True) from a done-callback raises RuntimeError (its thread cannot join
    itself) -- never a deadlock; the executor takes no new tasks; shutdown() afterwards stops it."""
    ex = faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS)
    raised = []
    done = threading.Event()

    def stop_from_callback(_fut):
        try:
            ex.shutdown()
        except BaseException as e:      # noqa: BLE001 - recorded for the assertion below
            raised.append(e)
        done.set()

    pending = ex.submit(nap, 1, "pending")
    ex.submit(nap, 0).add_done_callback(stop_from_callback)
    assert done.wait(30), "shutdown() inside the callback did not return"
    assert len(raised) == 1 and isinstance(raised[0], RuntimeError), raised
    t0 = time.monotonic()
    ex.shutdown()
    assert time.monotonic() - t0 < 15
    assert pending.result(timeout=0) == "pending"
    wait_until(lambda: not faasx_processes(run_dir), 10, what="the executor's processes to exit")


def test_shutdown_wait_false_from_a_callback_finishes_the_work_and_stops(run_dir):
    ex = faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS)
    pending = ex.submit(nap, 1, "pending")
    ex.submit(nap, 0).add_done_callback(lambda _f: ex.shutdown(wait=False))
    assert pending.result(timeout=30) == "pending"
    wait_until(lambda: not faasx_processes(run_dir), 15, what="the executor's processes to exit")
    assert cf.wait([pending], timeout=0).done == {pending}
