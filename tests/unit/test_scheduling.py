"""The interchange's scheduling core, without sockets or processes.

Every test runs on a ``CheckedScheduler``, which calls ``Scheduler.validate()`` after each call, so
the ownership invariant (every task queued once or held by one manager, counts adding up, tiers
consistent) is checked at every step of every scenario, as Dask's tests call
``WorkerState.validate_state``.  The two scale tests use a plain Scheduler (validating 100k managers
after each of a thousand steps would be the test's whole cost) and validate once at the end.
"""
import functools
import time

import pytest

from faasx.executor.scheduling import Scheduler, TaskRecord

FID = b"f" * 16


class CheckedScheduler(Scheduler):
    """A Scheduler that validates its invariants after every public call."""


def _validated(method):
    @functools.wraps(method)
    def call(self, *args, **kwargs):
        out = method(self, *args, **kwargs)
        self.validate()
        return out
    return call


for _name in ("submit", "cancel", "register_manager", "set_capacity", "set_warm", "deactivate", "remove_manager",
              "expired", "touch", "complete", "worker_lost", "unroutable", "too_long", "dispatch"):
    setattr(CheckedScheduler, _name, _validated(getattr(Scheduler, _name)))


def tasks(ids, spec=None):
    return [TaskRecord(i, FID, 0, spec, b"payload%d" % i) for i in ids]


def held_by(sched):
    return {m.mid: sorted(m.tasks) for m in sched.managers.values()}


def test_dispatch_respects_capacity_and_fills_idle_workers_first():
    s = CheckedScheduler()
    s.register_manager(b"m1", "0", workers=2, capacity=4, info={}, now=0)
    s.register_manager(b"m2", "1", workers=2, capacity=4, info={}, now=0)
    s.submit(tasks(range(4)))
    out = s.dispatch()
    # four tasks, four idle workers: two each, none into a prefetch slot
    assert sorted(len(batch) for _, batch in out) == [2, 2]
    s.submit(tasks(range(4, 20)))
    s.dispatch()
    assert all(len(m.tasks) == 4 for m in s.managers.values())   # full: workers + prefetch
    assert s.queued == 12
    assert s.dispatch() == []                                     # no room anywhere


def test_long_task_burst_spreads_over_all_managers():
    s = CheckedScheduler()
    for i in range(3):
        s.register_manager(b"m%d" % i, str(i), workers=2, capacity=100, info={}, now=0)
    s.submit(tasks(range(6)))
    s.dispatch()
    assert [len(m.tasks) for m in s.managers.values()] == [2, 2, 2]


def test_result_only_accepted_from_owner_and_never_twice():
    s = CheckedScheduler()
    s.register_manager(b"a", "0", 1, 1, {}, 0)
    s.register_manager(b"b", "1", 1, 1, {}, 0)
    s.submit(tasks([7]))
    (m, batch), = s.dispatch()
    other = b"b" if m.mid == b"a" else b"a"
    assert s.complete(other, 7, 1) is None          # not the owner
    assert s.complete(m.mid, 7, 1).tid == 7
    assert s.complete(m.mid, 7, 2) is None          # a duplicate
    assert 7 not in s.tasks


def test_manager_loss_redispatches_its_tasks_to_the_front():
    s = CheckedScheduler(max_retries=1)
    s.register_manager(b"a", "0", 2, 2, {}, 0)
    s.submit(tasks([1, 2, 3, 4]))
    s.dispatch()
    requeued, failed = s.remove_manager(b"a", 5)
    assert [r.tid for r in requeued] == [1, 2] and failed == []
    s.register_manager(b"b", "1", 1, 1, {}, 6)
    (m, batch), = s.dispatch()
    assert [r.tid for r in batch] == [1]            # retried tasks go first
    assert batch[0].attempts == 1


def test_retries_exhausted_fail_the_task():
    s = CheckedScheduler(max_retries=1)
    s.submit(tasks([1]))
    for i in range(2):
        s.register_manager(b"m%d" % i, "0", 1, 1, {}, 0)
        s.dispatch()
        requeued, failed = s.remove_manager(b"m%d" % i, 1)
    assert requeued == [] and [r.tid for r in failed] == [1]
    assert 1 not in s.tasks and s.queued == 0


def test_worker_lost_with_no_retries_left_fails_the_task_once():
    s = CheckedScheduler(max_retries=0)
    s.register_manager(b"a", "0", 1, 1, {}, 0)
    s.submit(tasks([1]))
    s.dispatch()
    rec, requeued = s.worker_lost(b"a", 1, 1)
    assert rec.tid == 1 and requeued is False
    assert s.worker_lost(b"a", 1, 1) == (None, False)    # already gone


def test_cancel_drops_queued_tasks_but_not_dispatched_ones():
    s = CheckedScheduler()
    s.register_manager(b"a", "0", 1, 1, {}, 0)
    s.submit(tasks([1, 2, 3]))
    s.dispatch()                                    # task 1 is at the manager
    assert s.cancel([1, 2, 99]) == [2]
    (m, batch), = (s.complete(b"a", 1, 1), s.dispatch())[1]
    assert [r.tid for r in batch] == [3]


def test_a_task_id_submitted_twice_is_refused_the_second_time():
    s = CheckedScheduler()
    assert s.submit(tasks([1])) == []
    dup = s.submit(tasks([1]))
    assert [r.tid for r in dup] == [1] and s.queued == 1


def test_priority_lower_value_runs_first_then_unprioritised_fifo_as_in_htex():
    s = CheckedScheduler()
    s.submit(tasks([1, 2]))
    s.submit(tasks([3], {"priority": 10}))
    s.submit(tasks([4], {"priority": -5}))
    s.submit(tasks([5], {"priority": 0}))
    s.register_manager(b"a", "0", 1, 10, {}, 0)
    (m, batch), = s.dispatch()
    assert [r.tid for r in batch] == [4, 5, 3, 1, 2]


def test_drained_manager_gets_nothing_more():
    s = CheckedScheduler()
    s.register_manager(b"a", "0", 2, 2, {}, 0)
    s.deactivate(b"a")
    s.submit(tasks([1]))
    assert s.dispatch() == [] and s.queued == 1


def test_gpu_tasks_only_go_to_managers_with_accelerators():
    s = CheckedScheduler()
    s.register_manager(b"cpu", "0", 4, 4, {}, 0)
    s.register_manager(b"gpu", "1", 1, 1, {"accelerators": ["0"]}, 0)
    s.submit(tasks([1, 2], {"gpus": 1}))
    out = s.dispatch()
    assert [(m.mid, [r.tid for r in b]) for m, b in out] == [(b"gpu", [1])]
    assert s.queued == 1


def test_container_tasks_prefer_warm_managers():
    s = CheckedScheduler()
    s.register_manager(b"cold", "0", 2, 2, {"containers": True}, 0)
    s.register_manager(b"warm", "1", 2, 2, {"containers": True}, 0)
    s.register_manager(b"none", "2", 2, 2, {}, 0)
    s.set_warm(b"warm", ["img"])
    s.submit(tasks([1], {"container": "img"}))
    (m, batch), = s.dispatch()
    assert m.mid == b"warm"


def test_managers_silent_past_the_threshold_are_expired():
    s = CheckedScheduler()
    s.register_manager(b"a", "0", 1, 1, {}, 0)
    s.register_manager(b"b", "0", 1, 1, {}, 0)
    s.touch(b"b", 9)
    assert s.expired(10, 5) == [b"a"]


def test_a_raised_capacity_lets_a_manager_prefetch_more():
    s = CheckedScheduler()
    s.register_manager(b"a", "0", 1, 1, {}, 0)
    s.submit(tasks(range(10)))
    s.dispatch()
    assert len(s.managers[b"a"].tasks) == 1
    s.set_capacity(b"a", 5)
    s.dispatch()
    assert len(s.managers[b"a"].tasks) == 5


def test_registering_a_manager_id_twice_is_refused():
    s = CheckedScheduler()
    s.register_manager(b"a", "0", 1, 1, {}, 0)
    with pytest.raises(ValueError):
        s.register_manager(b"a", "0", 1, 1, {}, 0)


def test_dispatch_cost_does_not_grow_with_idle_managers():
    """O(1) per task: dispatching a few tasks must not scan 100k full managers."""
    s = Scheduler()
    for i in range(100_000):
        s.register_manager(b"m%d" % i, "0", 1, 1, {}, 0)
    s.submit(tasks(range(100_000)))
    s.dispatch()                       # every manager now full
    s.complete(b"m5", 5, 1)            # one slot frees up
    s.submit(tasks([10**9]))
    t0 = time.perf_counter()
    for _ in range(100):
        out = s.dispatch()
    elapsed = time.perf_counter() - t0
    s.validate()
    assert [m.mid for m, _ in out] in ([], ) or out == []
    assert s.managers[b"m5"].tasks == {10**9}
    assert elapsed < 0.05, f"100 dispatches over 100k full managers took {elapsed:.3f}s"


def test_dispatch_cost_does_not_grow_with_many_idle_managers():
    """A trickle of single tasks over 100k idle managers: each dispatch touches one manager."""
    s = Scheduler()
    for i in range(100_000):
        s.register_manager(b"m%d" % i, "0", 1, 1, {}, 0)
    t0 = time.perf_counter()
    for tid in range(1000):
        s.submit(tasks([tid]))
        (m, batch), = s.dispatch()
        assert s.complete(m.mid, tid, 1) is not None
    elapsed = time.perf_counter() - t0
    s.validate()
    assert elapsed < 0.5, f"1000 single-task dispatches over 100k idle managers took {elapsed:.3f}s"
    used = {m for m in s.managers.values() if m.idle_since == 1}
    assert len(used) == 1000          # rotation: a different manager each time


def test_tasks_no_manager_can_run_are_given_up_after_a_grace_period():
    s = CheckedScheduler()
    s.submit(tasks([1, 2], {"gpus": 1}))
    assert s.unroutable(100, 5) == []              # no manager yet: blocks may still be starting
    s.register_manager(b"cpu", "0", 2, 2, {}, 100)
    assert s.unroutable(101, 5) == []              # the grace period starts now
    s.submit(tasks([3]))
    (key, recs), = s.unroutable(107, 5)
    assert key == "gpu" and [r.tid for r in recs] == [1, 2]
    assert 1 not in s.tasks and 3 in s.tasks and s.queued == 1


def test_a_capable_manager_keeps_keyed_tasks_waiting():
    s = CheckedScheduler()
    s.register_manager(b"gpu", "0", 1, 1, {"accelerators": ["0"]}, 0)
    s.submit(tasks([1, 2], {"gpus": 1}))
    s.dispatch()                                   # one runs, one waits for the busy GPU manager
    assert s.unroutable(1000, 5) == [] and s.queued == 1


# ---- walltime-aware placement -------------------------------------------------------------------
def _two_blocks(short_left=100, long_left=3600, now=0):
    s = CheckedScheduler()
    s.register_manager(b"short", "0", 4, 4, {"walltime_left": short_left}, now)
    s.register_manager(b"long", "1", 4, 4, {"walltime_left": long_left}, now)
    return s


def test_a_task_longer_than_a_block_has_left_goes_only_to_a_longer_block():
    s = _two_blocks()
    s.submit(tasks(range(3), {"walltime": 600}))
    out = s.dispatch(now=10)
    assert [(m.mid, [r.tid for r in batch]) for m, batch in out] == [(b"long", [0, 1, 2])]


def test_a_short_task_may_go_to_either_block():
    s = _two_blocks()
    s.submit(tasks(range(8), {"walltime": 30}))
    s.dispatch(now=10)
    assert [len(t) for t in held_by(s).values()] == [4, 4]     # idle workers on both blocks


@pytest.mark.parametrize("now, placed", [(30, [1]), (50, [])])
def test_time_left_is_counted_from_registration(now, placed):
    s = CheckedScheduler()
    s.register_manager(b"short", "0", 1, 1, {"walltime_left": 100}, 0)
    s.submit(tasks([1], {"walltime": 60}))
    s.dispatch(now=now)                 # 70 s left: it fits; 50 s left: it does not
    assert held_by(s) == {b"short": placed}


def test_a_waiting_timed_task_keeps_its_place_and_untimed_tasks_pass_it():
    s = _two_blocks(short_left=100, long_left=100)
    s.submit(tasks([1], {"walltime": 600}))          # fits neither block
    s.submit(tasks([2], {"walltime": 5}))
    s.submit(tasks([3]))
    s.dispatch(now=0)
    assert 1 not in set().union(*held_by(s).values()) and {2, 3} <= set().union(*held_by(s).values())
    assert s.queued == 1


def test_a_task_no_block_can_fit_fails_after_the_grace_period_naming_the_longest_time_left():
    s = _two_blocks(short_left=100, long_left=300, now=0)
    s.submit(tasks([1], {"walltime": 600}))
    s.submit(tasks([2], {"walltime": 200}))
    assert s.too_long(10, 5) == []                  # the grace period starts now
    s.dispatch(now=10)                              # task 2 fits the long block
    assert s.too_long(14, 5) == []
    (rec, longest), = s.too_long(16, 5)
    assert rec.tid == 1 and longest == 300 - 16
    assert 1 not in s.tasks and s.queued == 0


def test_a_longer_block_that_registers_within_the_grace_period_takes_the_task():
    s = _two_blocks(short_left=100, long_left=300)
    s.submit(tasks([1], {"walltime": 600}))
    assert s.too_long(10, 5) == []
    s.register_manager(b"longer", "2", 1, 1, {"walltime_left": 1000}, 12)
    assert s.too_long(20, 5) == []
    s.dispatch(now=20)
    assert held_by(s)[b"longer"] == [1]


def test_timed_tasks_wait_while_no_manager_is_registered_and_blocks_without_a_limit_take_any():
    s = CheckedScheduler()
    s.submit(tasks([1], {"walltime": 10 ** 6}))
    assert s.too_long(1000, 5) == [] and s.dispatch(now=1000) == []
    s.register_manager(b"nolimit", "0", 1, 1, {}, 1000)
    s.dispatch(now=1001)
    assert held_by(s) == {b"nolimit": [1]}


def test_timed_keyed_tasks_respect_both_key_and_time():
    s = CheckedScheduler()
    s.register_manager(b"cpu_long", "0", 2, 2, {"walltime_left": 1000}, 0)
    s.register_manager(b"gpu_short", "1", 2, 2, {"walltime_left": 50, "accelerators": ["0"]}, 0)
    s.register_manager(b"gpu_long", "2", 2, 2, {"walltime_left": 1000, "accelerators": ["0"]}, 0)
    s.submit(tasks([1], {"walltime": 100, "gpus": 1}))
    s.dispatch(now=0)
    assert held_by(s)[b"gpu_long"] == [1]
    # a GPU task with a walltime, and no GPU manager at all: failed as unroutable, as without walltime
    s2 = CheckedScheduler()
    s2.register_manager(b"cpu", "0", 1, 1, {}, 0)
    s2.submit(tasks([1], {"walltime": 10, "gpus": 1}))
    assert s2.unroutable(1, 5) == []
    (key, recs), = s2.unroutable(7, 5)
    assert key == "gpu" and [r.tid for r in recs] == [1]


def test_a_timed_task_requeued_after_a_loss_waits_in_the_timed_queue():
    s = _two_blocks()
    s.submit(tasks([1], {"walltime": 600}))
    s.dispatch(now=0)
    requeued, failed = s.remove_manager(b"long", 1)
    assert [r.tid for r in requeued] == [1] and s.timed[None].live == 1
    assert s.dispatch(now=1) == []                  # the short block is still too short
    assert s.cancel([1]) == [1] and s.queued == 0


def test_untimed_dispatch_does_not_scan_managers():
    """The hot path: tasks without a walltime never touch the timed code (no per-task manager scan)."""
    s = Scheduler()
    for i in range(100_000):
        s.register_manager(b"m%d" % i, str(i), 1, 1, {"walltime_left": 3600}, 0)
    s.submit(tasks(range(1000)))
    t0 = time.perf_counter()
    for _ in range(1000):
        s.dispatch(now=1)
    elapsed = time.perf_counter() - t0
    s.validate()
    assert s.queued == 0 and not s.timed
    assert elapsed < 0.5, f"dispatching 1000 untimed tasks over 100k managers took {elapsed:.3f}s"


# ---- validate() itself: each invariant it guards, broken on purpose ----------------------------------
def _busy_scheduler():
    s = CheckedScheduler()
    s.register_manager(b"a", "0", 1, 2, {}, 0)
    s.register_manager(b"b", "1", 1, 2, {}, 0)
    s.submit(tasks(range(6)))
    s.dispatch()                                   # a and b hold two each, two stay queued
    return s


def _hold_elsewhere(s):
    tid = next(iter(s.managers[b"a"].tasks))
    s.managers[b"b"].tasks.add(tid)


def _orphan(s):
    tid = next(iter(s.managers[b"a"].tasks))
    s.managers[b"a"].tasks.discard(tid)


def _queue_held_task(s):
    tid = next(iter(s.managers[b"a"].tasks))
    s.queues[None].fifo.append(s.tasks[tid])
    s.queues[None].live += 1


def _miscount_queue(s):
    s.queues[None].live += 1


def _forget_queued_task(s):
    del s.tasks[s.queues[None].fifo[0].tid]


def _wrong_tier(s):
    s._idle[b"a"] = s.managers[b"a"]


def _shrink_capacity(s):
    s.managers[b"a"].capacity = 0


def _lose_idle_since(s):
    s.managers[b"a"].idle_since = 5.0


def _timed_task_in_untimed_queue(s):
    rec = s.queues[None].fifo[0]
    rec.walltime = 60


@pytest.mark.parametrize("corrupt", [_hold_elsewhere, _orphan, _queue_held_task, _miscount_queue,
                                     _forget_queued_task, _wrong_tier, _shrink_capacity, _lose_idle_since,
                                     _timed_task_in_untimed_queue])
def test_validate_detects_each_broken_invariant(corrupt):
    s = _busy_scheduler()
    s.validate()
    corrupt(s)
    with pytest.raises(AssertionError, match="Scheduler invariant broken"):
        s.validate()


# ---- random event sequences: the invariant holds whatever the order ---------------------------
hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

_submit = st.tuples(st.just("submit"), st.integers(0, 15), st.sampled_from([None, {"priority": 1}, {"gpus": 1}, {"walltime": 5},
                                                        {"walltime": 50, "priority": 1},
                                                        {"walltime": 30, "gpus": 1}]))
_dispatch = st.tuples(st.just("dispatch"))
_event = st.one_of(     # submit and dispatch listed twice: drawn more often, so that managers hold tasks
    _submit, _submit, _dispatch, _dispatch,
    st.tuples(st.just("register"), st.integers(0, 2), st.integers(1, 3)),
    st.tuples(st.just("complete"), st.integers(0, 2), st.integers(0, 15)),
    st.tuples(st.just("worker_lost"), st.integers(0, 2), st.integers(0, 15)),
    st.tuples(st.just("remove"), st.integers(0, 2)),
    st.tuples(st.just("cancel"), st.integers(0, 15)),
    st.tuples(st.just("capacity"), st.integers(0, 2), st.integers(0, 6)),
    st.tuples(st.just("deactivate"), st.integers(0, 2)),
    st.tuples(st.just("unroutable"), st.integers(0, 20)),
    st.tuples(st.just("too_long"), st.integers(0, 20)),
)


def _apply(s, event, now):
    op, *a = event
    if op == "submit":
        s.submit(tasks([a[0]], a[1]))
    elif op == "register" and b"m%d" % a[0] not in s.managers:
        info = {"accelerators": ["0"]} if a[0] != 1 else {}
        if a[0] != 2:                  # m2's block has no end; m0 and m1 have 20 or 60 s left
            info["walltime_left"] = 20 if a[0] == 0 else 60
        s.register_manager(b"m%d" % a[0], "0", a[1], a[1] + 1, info, now)
    elif op == "dispatch":
        s.dispatch(now)
    elif op in ("complete", "worker_lost"):
        m = s.managers.get(b"m%d" % a[0])
        held = sorted(m.tasks) if m is not None else []
        # mostly a task the manager holds (the interesting case), sometimes one it does not
        tid = held[a[1] % len(held)] if held and a[1] % 4 else a[1]
        getattr(s, op)(b"m%d" % a[0], tid, now)
    elif op == "remove":
        s.remove_manager(b"m%d" % a[0], now)
    elif op == "cancel":
        s.cancel([a[0]])
    elif op == "capacity":
        s.set_capacity(b"m%d" % a[0], a[1])
    elif op == "deactivate":
        s.deactivate(b"m%d" % a[0])
    elif op == "unroutable":
        s.unroutable(now, a[0])
    elif op == "too_long":
        s.too_long(now, a[0])


@hypothesis.settings(max_examples=300, deadline=None)
@hypothesis.given(st.lists(_event, min_size=10, max_size=80))
def test_every_sequence_of_events_keeps_each_task_in_one_place(events):
    s = CheckedScheduler(max_retries=1)
    for now, event in enumerate(events):
        _apply(s, event, float(now))       # CheckedScheduler validates after each call
