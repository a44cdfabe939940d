"""``WorkerTable``, the manager's worker bookkeeping, without processes: per-key queues, adaptive
batches and prefetch, ``assign``, ``plan`` (which workers to start and stop) and ``validate``.

Every table here is a ``CheckedTable``: it runs ``validate()`` after every call that changes it (and
after ``plan``), so each test also checks that no task is lost, duplicated or misfiled on the way."""
from __future__ import annotations

import pytest

from faasx.executor.protocol import Task
from faasx.executor.worker_table import WorkerTable, task_container

FID = b"f" * 16
A, B, C = "podman-aaaaaaaaaaaaaaaa", "podman-bbbbbbbbbbbbbbbb", "podman-cccccccccccccccc"


class CheckedTable(WorkerTable):
    """A WorkerTable that asserts its invariants after every step."""

    def _checked(name):
        def call(self, *args, **kwargs):
            out = getattr(WorkerTable, name)(self, *args, **kwargs)
            self.validate()
            return out
        call.__name__ = name
        return call

    add = _checked("add")
    mark_ready = _checked("mark_ready")
    remove = _checked("remove")
    enqueue = _checked("enqueue")
    take_queued = _checked("take_queued")
    assign = _checked("assign")
    done = _checked("done")
    plan = _checked("plan")
    del _checked


def task(tid, key=None):
    spec = {"container": key, "container_spec": {"type": "podman", "image": "img", "options": []}} if key else None
    return Task(tid, FID, 0, spec, b"")


def table(*workers, ready=True, now=0.0):
    """A table with workers (their keys; None = plain), all ready unless told."""
    t = CheckedTable()
    for wid, key in enumerate(workers):
        t.add(wid, key, now)
        if ready:
            t.mark_ready(wid, now)
    return t


# ---- batches and prefetch ---------------------------------------------------------------------------------
def test_unknown_duration_hands_out_one_task_per_worker():
    t = CheckedTable()
    for w in range(2):
        t.add(w)
        t.mark_ready(w)
    t.enqueue([task(i) for i in range(10)])
    out = t.assign(0.0)
    assert [len(b) for _, b in out] == [1, 1]
    assert t.assign(0.0) == []               # both busy


def test_short_tasks_get_batched_and_long_tasks_do_not():
    t = CheckedTable()
    t.add(0)
    t.mark_ready(0)
    t.enqueue([task(i) for i in range(1000)])
    (slot, batch), = t.assign(0.0)
    t.done(0, [batch[0].tid], 0.00002)         # 20 us per task
    now = 1.0
    for _ in range(6):                        # the worker's slow start doubles per fast batch
        (slot, batch), = t.assign(now)
        now += 0.00002 * len(batch)
        t.done(0, [tk.tid for tk in batch], now)
    (slot, batch), = t.assign(now)
    assert len(batch) > 50
    assert t.prefetch() > 100
    t2 = CheckedTable()
    t2.add(0)
    t2.mark_ready(0)
    t2.enqueue([task(i) for i in range(10)])
    (_, b), = t2.assign(0.0)
    t2.done(0, [b[0].tid], 0.5)                # half a second per task
    (_, b), = t2.assign(1.0)
    assert len(b) == 1 and t2.prefetch() == 0


def test_dead_worker_returns_its_tasks():
    t = CheckedTable()
    t.add(0)
    t.mark_ready(0)
    t.enqueue([task(1)])
    t.assign(0.0)
    assert [x.tid for x in t.remove(0)] == [1]
    assert t.held() == 0


def test_a_partial_result_message_is_not_timed_as_a_batch():
    """A worker sends the results finished before a slow task of its batch while that task runs
    (``worker.ResultFlusher``): that message neither makes the tasks look fast (nor the worker proven),
    and the batch is timed once, from its hand-over to its last result, over all its tasks."""
    t = CheckedTable()
    t.add(0)
    t.mark_ready(0)
    t.avg_task_seconds = 20e-6                 # no-ops so far
    t.slots[0].limit = 4
    t.enqueue([task(i) for i in range(10)])
    (slot, batch), = t.assign(10.0)
    assert len(batch) == 4
    prefetch = t.prefetch()
    t.done(0, [tk.tid for tk in batch[:3]], 10.006)     # three ready, the fourth still running
    assert t.avg_task_seconds == 20e-6 and t.prefetch() == prefetch
    assert slot.limit == 4 and not slot.idle, "a partial batch proves nothing"
    t.done(0, [batch[3].tid], 11.0)                      # the batch took a second: 0.25 s per task
    assert t.avg_task_seconds == pytest.approx(20e-6 + 0.2 * (0.25 - 20e-6))
    assert slot.limit == 1 and slot.idle


def test_fixed_prefetch_capacity_is_respected():
    t = CheckedTable(prefetch_capacity=3)
    t.add(0)
    t.done(0, [1], 1.0)
    assert t.prefetch() == 3


# ---- queues and assignment ----------------------------------------------------------------------------------
def test_container_tasks_go_only_to_workers_of_their_key_and_plain_ones_only_to_plain_workers():
    t = table(None, A, B)
    t.enqueue([task(1, A), task(2), task(3, B), task(4, C)])
    got = {slot.wid: [x.tid for x in batch] for slot, batch in t.assign(1.0)}
    assert got == {0: [2], 1: [1], 2: [3]}
    assert [x.tid for x in t.cqueues[C]] == [4], "no worker of C: it waits"
    assert t.held() == 4 and sorted(t.all_tids()) == [1, 2, 3, 4]


def test_a_worker_that_is_not_ready_gets_nothing():
    t = table(A, ready=False)
    t.enqueue([task(1, A)])
    assert t.assign(0.0) == [] and not t.assignable()
    t.mark_ready(0, 2.5)
    assert t.assignable()
    (slot, batch), = t.assign(3.0)
    assert slot.wid == 0 and batch[0].tid == 1
    assert t.start_seconds[A] == 2.5, "start time measured from add to ready"


def test_assignable_is_false_when_idle_workers_are_of_another_kind():
    t = table(None, None)
    t.enqueue([task(1, A)])
    assert not t.assignable(), "the manager would spin at timeout 0 otherwise"


def test_warm_lists_keys_with_a_ready_worker():
    t = table(None, A)
    t.add(5, B, 0.0)   # starting
    assert t.warm() == [A]


def test_take_queued_removes_a_keys_tasks():
    t = table()
    t.enqueue([task(1, A), task(2, A), task(3, B)])
    assert [x.tid for x in t.take_queued(A)] == [1, 2]
    assert t.held() == 1


def test_task_container_reads_the_routing_key():
    assert task_container(task(1, A)) == A
    assert task_container(task(1)) is None
    assert task_container(Task(1, FID, 0, {"priority": 3}, b"")) is None


# ---- plan: which workers to start and stop ---------------------------------------------------------------------
def test_nothing_queued_means_nothing_to_do():
    assert table(None, None).plan(2, 2) == ([], [])


def test_a_full_node_replaces_an_idle_plain_worker_for_a_container_task():
    t = table(None, None)
    t.slots[0].last_used, t.slots[1].last_used = 5.0, 1.0
    t.enqueue([task(1, A)])
    assert t.plan(2, 2) == ([A], [1]), "the least recently used idle worker makes room"


def test_free_room_is_used_before_anything_is_stopped():
    t = table(None)
    t.enqueue([task(1, A)])
    assert t.plan(2, 2) == ([A], [])


def test_an_unproven_key_starts_one_worker_at_a_time():
    t = table()
    t.enqueue([task(i, A) for i in range(5)])
    assert t.plan(4, 2) == ([A], [])
    t.add(0, A, 0.0)
    assert t.plan(4, 2) == ([], []), "wait for the first container to prove the image"
    t.mark_ready(0, 1.0)
    t.assign(1.0)
    start, stop = t.plan(4, 2)
    assert start == [A, A, A] and stop == []


def test_busy_workers_that_finish_sooner_than_a_cold_start_are_waited_for():
    t = table(A)
    t.enqueue([task(0, A)])
    t.assign(0.0)                          # the one worker is busy
    t.avg_task_seconds = 0.001             # 1 ms tasks
    t.start_seconds[A] = 1.0               # a container took 1 s to start
    t.enqueue([task(i, A) for i in range(1, 4)])
    assert t.assign(0.0) == []
    assert t.plan(4, 2) == ([], []), "3 ms of queued work: not worth a 1 s container start"
    t.enqueue([task(i, A) for i in range(4, 2000)])
    assert t.plan(4, 2) == ([A, A, A], []), "2 s of work: start more, up to the node's worker count"


def test_a_busy_or_still_needed_worker_is_never_stopped():
    t = table(None, B)
    t.enqueue([task(1), task(2, B)])
    t.assign(0.0)                          # both busy now
    t.enqueue([task(3, A)])
    assert t.plan(2, 3) == ([], [])
    t2 = table(None, B)
    t2.enqueue([task(3, A), task(4, B), task(5, B)])
    t2.assign(0.0)                         # B busy, one B task still queued
    assert t2.plan(2, 3) == ([A], [0]), "the idle plain worker goes, B stays"


def test_the_cap_on_container_types_retires_a_whole_idle_type():
    t = table(None, A, A, B)
    t.slots[1].last_used = t.slots[2].last_used = 1.0
    t.slots[3].last_used = 9.0
    t.enqueue([task(1, C)])
    start, stop = t.plan(8, 2)
    assert start == [C] and sorted(stop) == [1, 2], "A (least recently used) is retired entirely"


def test_the_cap_waits_when_every_type_is_busy_or_needed():
    t = table(A, B)
    t.enqueue([task(1, A), task(2, B)])
    t.assign(0.0)
    t.enqueue([task(3, C)])
    assert t.plan(8, 2) == ([], [])


def test_plain_tasks_get_a_worker_back_when_containers_took_the_node():
    t = table(A)
    t.enqueue([task(1)])
    assert t.plan(1, 2) == ([None], [0])


def test_blocked_keys_are_not_started():
    t = table()
    t.enqueue([task(1, A)])
    assert t.plan(2, 2, blocked=[A]) == ([], [])


# ---- validate: each invariant it guards can fail ----------------------------------------------------------
def test_validate_catches_a_task_both_queued_and_at_a_worker():
    t = table(None)
    t.enqueue([task(1), task(2)])
    (slot, batch), = t.assign(0.0)
    t.queue.append(batch[0])
    with pytest.raises(AssertionError, match="task 1 is both in"):
        t.validate()


def test_validate_catches_a_container_task_in_the_plain_queue():
    t = table()
    t.queue.append(task(1, A))
    with pytest.raises(AssertionError, match="of key"):
        t.validate()


def test_validate_catches_a_task_on_a_worker_of_another_kind():
    t = table(None, A)
    t.slots[1].tasks[7] = task(7)
    with pytest.raises(AssertionError, match="task 7 of key None is in worker 1"):
        t.validate()


def test_validate_catches_tasks_held_by_a_worker_that_is_not_ready():
    t = table(None, ready=False)
    t.slots[0].tasks[3] = task(3)
    with pytest.raises(AssertionError, match="before it is ready"):
        t.validate()


def test_validate_catches_a_task_filed_under_another_id():
    t = table(None)
    t.slots[0].tasks[4] = task(5)
    with pytest.raises(AssertionError, match="under id 4"):
        t.validate()


def test_a_dead_worker_mid_batch_leaves_its_queue_mates_queued():
    t = table(None, None)
    t.enqueue([task(i) for i in range(6)])
    t.assign(0.0)
    lost = t.remove(0)
    assert [x.tid for x in lost] == [0]
    assert sorted(t.all_tids()) == [1, 2, 3, 4, 5]
