"""shutdown(cancel_futures=True) with many pending tasks (issue 12): the tasks still queued in the client
are dropped there, never sent to the interchange only to be cancelled, and the interchange gets one
CANCEL for those it holds (one log line, not one per few thousand tasks).  Real processes."""
import glob
import os
import threading

import faasx
from tests.support import wait_for

from .conftest import FAST_HEARTBEATS
from .test_contract import gated, mark

N = 20_000
WINDOW = 300


def test_cancel_many_pending_sends_nothing_new_and_one_cancel(run_dir, release, tmp_path):
    ex = faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS)
    client = ex.executor._client
    running = ex.submit(gated, release.path, str(tmp_path / "running"), 7)
    wait_for(running.running, 30, what="the gated task to be running()")
    # after the manager registered (its event sets the window from the workers): most of the N
    # tasks then wait in the client, as most of a million would
    client.window = WINDOW
    queued = [ex.submit(mark, str(tmp_path / "queued"), i) for i in range(N)]
    wait_for(lambda: client._in_flight >= WINDOW, 30, what="the client's window to fill")
    sent_before = client.stats["submitted"]
    stopper = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True})
    stopper.start()
    wait_for(lambda: all(f.cancelled() for f in queued), 30, what="the queued tasks to be cancelled")
    release.open()
    stopper.join(60)
    assert not stopper.is_alive(), "shutdown(wait=True) did not return"
    assert running.result(timeout=0) == 7
    assert not os.path.exists(tmp_path / "queued"), "a cancelled task ran"
    assert client.stats["submitted"] == sent_before, "tasks were sent to the interchange after the cancel"
    lines = [line for path in glob.glob(os.path.join(run_dir, "**", "*.log"), recursive=True)
             for line in open(path, errors="replace") if "at the client's request" in line]
    assert len(lines) == 1, lines


def test_cancel_pending_wakes_waiters_and_returns_only_the_running(run_dir, release, tmp_path):
    """A thread blocked in result(), one in concurrent.futures.wait() and a done-callback on queued
    futures are all told when cancel_pending() cancels them in bulk (it notifies only futures that have
    a waiter); what it returns to wait for is the one running task."""
    import concurrent.futures
    ex = faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS)
    try:
        running = ex.submit(gated, release.path, str(tmp_path / "running"), 7)
        wait_for(running.running, 30, what="the gated task to be running()")
        queued = [ex.submit(mark, str(tmp_path / "queued"), i) for i in range(50)]
        outcome = {}

        def in_result():
            try:
                queued[0].result(timeout=30)
            except concurrent.futures.CancelledError:
                outcome["result"] = "cancelled"

        def in_wait():
            done, _ = concurrent.futures.wait(queued[1:3], timeout=30)
            outcome["wait"] = len(done)

        seen = []
        queued[3].add_done_callback(lambda f: seen.append(f.cancelled()))
        threads = [threading.Thread(target=in_result), threading.Thread(target=in_wait)]
        for t in threads:
            t.start()
        wait_for(lambda: queued[0]._condition._waiters and queued[1]._waiters, 10,
                 what="both threads to wait on the futures")
        left = ex.executor.cancel_pending()
        for t in threads:
            t.join(10)
        assert outcome == {"result": "cancelled", "wait": 2}
        assert seen == [True]
        assert left == [running]
        assert all(f.cancelled() for f in queued)
    finally:
        release.open()
        ex.shutdown(wait=True)
    assert running.result(timeout=0) == 7
    # Not asserted here: that no cancelled task ran.  A task the manager had already handed to the busy
    # worker, cancelled before its STARTED report reached the client, still runs (docs/reliability.md,
    # "Known limits"); it failed this test once in CI.  test_contract.py covers running()/cancel().
