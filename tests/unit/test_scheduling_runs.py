"""Dispatch in runs: many idle managers and a short queue must not cost a message per task.

The rule (``faasx.executor.scheduling``, "Runs, not crumbs"): an idle manager is given at least
``min_run`` tasks, as many as it has idle workers if fewer; prefetch slots keep the even share.
Every test uses ``CheckedScheduler`` (``Scheduler.validate()`` after each call) except the one at
2,048 managers, which validates after each step by hand.
"""
import pytest

from faasx.executor.scheduling import MIN_RUN, Scheduler
from test_scheduling import CheckedScheduler, tasks


def swarm(s, managers, workers, prefetch=0):
    for i in range(managers):
        s.register_manager(b"m%d" % i, str(i // 1024), workers, workers + prefetch, {}, 0)


def test_a_short_queue_goes_to_few_managers_in_runs():
    s = Scheduler()
    swarm(s, 2048, 64)
    s.submit(tasks(range(100)))
    out = s.dispatch()
    s.validate()
    # 100 tasks over 2,048 idle managers: runs of 16 (the last one shorter), not 100 messages of one
    assert sorted(len(batch) for _, batch in out) == [4] + [MIN_RUN] * 6
    assert all(len(m.tasks) <= m.workers for m in s.managers.values())      # each task on an idle worker


def test_a_lone_task_is_dispatched_at_once():
    s = CheckedScheduler()
    swarm(s, 16, 64)
    s.submit(tasks([7]))
    (m, batch), = s.dispatch()
    assert [r.tid for r in batch] == [7] and m.tasks == {7}


def test_a_run_never_exceeds_the_managers_idle_workers():
    s = CheckedScheduler()
    swarm(s, 4, 8)
    s.submit(tasks(range(20)))
    out = s.dispatch()
    # 20 tasks, 8 idle workers per manager: runs of 8, 8 and 4; no task queued behind a busy worker
    assert sorted(len(b) for _, b in out) == [4, 8, 8]
    assert max(len(m.tasks) for m in s.managers.values()) == 8 and s.queued == 0


def test_a_long_queue_is_still_shared_evenly():
    s = CheckedScheduler()
    swarm(s, 4, 64)
    s.submit(tasks(range(200)))
    s.dispatch()
    assert sorted(len(m.tasks) for m in s.managers.values()) == [50, 50, 50, 50]


def test_successive_runs_rotate_over_the_managers():
    s = CheckedScheduler()
    swarm(s, 8, 64)
    used = []
    for k in range(8):
        s.submit(tasks(range(k * MIN_RUN, (k + 1) * MIN_RUN)))
        (m, batch), = s.dispatch()
        assert len(batch) == MIN_RUN
        used.append(m.mid)
    assert len(set(used)) == 8                      # each run went to a manager that had none


def test_no_worker_idles_while_tasks_wait_and_prefetch_keeps_the_even_share():
    s = CheckedScheduler()
    swarm(s, 4, 4, prefetch=8)
    s.submit(tasks(range(16 + 8)))
    s.dispatch()
    # the 16 idle workers first (4 each: the run is capped by the idle workers), then the 8 left
    # spread evenly over the prefetch slots (2 each), not packed into one manager's
    assert sorted(len(m.tasks) for m in s.managers.values()) == [6, 6, 6, 6] and s.queued == 0


def test_min_run_one_is_the_even_share():
    s = CheckedScheduler(min_run=1)
    swarm(s, 8, 64)
    s.submit(tasks(range(8)))
    out = s.dispatch()
    assert sorted(len(b) for _, b in out) == [1] * 8


def test_min_run_must_be_positive():
    with pytest.raises(ValueError, match="min_run"):
        Scheduler(min_run=0)


def test_results_and_runs_keep_every_task_in_one_place():
    """A busy stream at scale: submit, dispatch, complete half, repeat; validated after each step."""
    s = Scheduler()
    swarm(s, 2048, 64)
    tid = 0
    for step in range(20):
        s.submit(tasks(range(tid, tid + 300)))
        tid += 300
        out = s.dispatch()
        assert all(len(b) >= min(MIN_RUN, 300) or m.workers - len(m.tasks) == 0 for m, b in out[:-1])
        for m, batch in out:
            for rec in batch[::2]:
                assert s.complete(m.mid, rec.tid, step) is rec
        s.validate()
    assert s.queued == 0
