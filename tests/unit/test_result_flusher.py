"""``worker.ResultFlusher``: when a worker's results go to its manager (issue 10 section 4).

The flusher is driven here as ``Worker.run_batch`` drives it (start_batch, then start_task / add per
task, then end_batch) on the test's own thread, with its real helper thread; what it sends is decoded
with the real protocol.  A "task" is the test's code between start_task and add: a sleep, or pure
Python that holds the GIL.
"""
from __future__ import annotations

import threading
import time

import pytest

from faasx.executor import protocol as P
from faasx.executor import worker
from faasx.executor.worker import EARLY_SEND, ResultFlusher


@pytest.fixture
def helper_only(monkeypatch):
    """No flush between tasks (``FLUSH_INTERVAL`` a minute): whatever goes before the batch ends was
    sent by the helper thread, whatever the machine's load does to this thread's timing."""
    monkeypatch.setattr(worker, "FLUSH_INTERVAL", 60.0)


class Recorder:
    """The worker's send(): records each RESULTS message with when and from which thread it went."""

    def __init__(self):
        self.messages = []     # (perf_counter, thread name, [tid, ...])

    def __call__(self, frames):
        msg_type, body, payloads = P.unpack(frames)
        assert msg_type == P.RESULTS
        tids = [r.tid for r in P.parse_results(body, payloads)]
        self.messages.append((time.perf_counter(), threading.current_thread().name, tids))

    def tids(self):
        return [tid for _, _, tids in self.messages for tid in tids]

    def early(self):
        return [m for m in self.messages if m[1] != threading.current_thread().name]


def spin(seconds):
    """Pure Python for ``seconds``: the GIL is released only at the interpreter's switch interval."""
    end = time.perf_counter() + seconds
    n = 0
    while time.perf_counter() < end:
        n += 1
    return n


def run_task(flusher, tid, more, work=None):
    """One task as ``Worker.run_batch`` runs it."""
    flusher.start_task()
    if work is not None:
        work()
    flusher.add(tid, P.OK, b"x", more=more)


def test_results_go_while_a_slow_task_sleeps(helper_only):
    sent = Recorder()
    f = ResultFlusher(sent)
    f.start_batch(3)
    run_task(f, 1, True)
    run_task(f, 2, True)
    f.start_task()
    t0 = time.perf_counter()
    time.sleep(0.3)                              # the slow task
    assert sent.early() == sent.messages and sent.tids() == [1, 2], sent.messages
    assert sent.messages[-1][0] - t0 < 0.25, "the results waited for the slow task"
    f.add(3, P.OK, b"x", more=False)
    f.end_batch()
    assert sent.tids() == [1, 2, 3]


def test_results_go_while_a_slow_task_runs_python_code_holding_the_gil(helper_only):
    """The helper thread gets the GIL at the switch interval even while the task runs pure Python."""
    sent = Recorder()
    f = ResultFlusher(sent)
    f.start_batch(2)
    run_task(f, 1, True)
    f.start_task()
    t0 = time.perf_counter()
    spin(0.3)
    assert sent.early() == sent.messages and sent.tids() == [1], sent.messages
    assert sent.messages[0][0] - t0 < 0.25, sent.messages
    f.add(2, P.OK, b"x", more=False)
    f.end_batch()
    assert sent.tids() == [1, 2]


def test_a_lone_task_and_a_batch_of_short_tasks_send_one_message_each():
    sent = Recorder()
    f = ResultFlusher(sent)
    f.start_batch(1)
    run_task(f, 0, False)
    f.end_batch()
    assert [m[2] for m in sent.messages] == [[0]]
    sent.messages.clear()
    longest, t_batch = 0.0, time.perf_counter()
    f.start_batch(200)
    for tid in range(200):
        t = time.perf_counter()
        run_task(f, tid, tid < 199)
        longest = max(longest, time.perf_counter() - t)
    f.end_batch()
    assert sent.tids() == list(range(200))
    # only a task that ran EARLY_SEND sends early (here: only if the machine stalled this thread), and
    # the batch's own flushes happen at most every FLUSH_INTERVAL
    if longest < EARLY_SEND and time.perf_counter() - t_batch < EARLY_SEND:
        assert len(sent.messages) == 1, sent.messages


def test_every_result_goes_exactly_once_and_in_order_while_the_helper_sends_early(helper_only):
    """Every tenth task takes 20 ms, the others nothing: the helper thread sends the short ones' results
    while a long one runs and the worker's thread the rest at the batch's end, each result once and in
    order."""
    sent = Recorder()
    f = ResultFlusher(sent)
    for batch in range(3):
        tids = range(batch * 100, batch * 100 + 100)
        f.start_batch(len(tids))
        for i, tid in enumerate(tids):
            run_task(f, tid, i < 99, work=(lambda: time.sleep(0.02)) if tid % 10 == 9 else None)
        f.end_batch()
    assert sent.tids() == list(range(300))
    assert sent.early(), "no result was sent early although tasks ran 20 ms"
