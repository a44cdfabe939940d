"""Container routing without processes: the manager's worker bookkeeping (``WorkerTable``: per-key queues,
``assign``, ``plan``), the spec a registered function carries, and how the interchange's scheduler uses a
manager's ``containers`` flag and its warm keys."""
from __future__ import annotations

import pytest

from faasx.containers import container_key
from faasx.executor.registry import FunctionRegistry
from faasx.executor.scheduling import Scheduler, TaskRecord
from faasx.executor.worker_table import WorkerTable, task_container

FID = b"f" * 16
A, B, C = "podman-aaaaaaaaaaaaaaaa", "podman-bbbbbbbbbbbbbbbb", "podman-cccccccccccccccc"


def task(tid, key=None):
    spec = {"container": key, "container_spec": {"type": "podman", "image": "img", "options": []}} if key else None
    return (tid, FID, 0, spec, b"")


def table(*workers, ready=True, now=0.0):
    """A table with workers (their keys; None = plain), all ready unless told."""
    t = WorkerTable()
    for wid, key in enumerate(workers):
        t.add(wid, key, now)
        if ready:
            t.mark_ready(wid, now)
    return t


# ---- queues and assignment ----------------------------------------------------------------------------------
def test_container_tasks_go_only_to_workers_of_their_key_and_plain_ones_only_to_plain_workers():
    t = table(None, A, B)
    t.enqueue([task(1, A), task(2), task(3, B), task(4, C)])
    got = {slot.wid: [x[0] for x in batch] for slot, batch in t.assign(1.0)}
    assert got == {0: [2], 1: [1], 2: [3]}
    assert [x[0] for x in t.cqueues[C]] == [4], "no worker of C: it waits"
    assert t.held() == 4 and sorted(t.all_tids()) == [1, 2, 3, 4]


def test_a_worker_that_is_not_ready_gets_nothing():
    t = table(A, ready=False)
    t.enqueue([task(1, A)])
    assert t.assign(0.0) == [] and not t.assignable()
    t.mark_ready(0, 2.5)
    assert t.assignable()
    (slot, batch), = t.assign(3.0)
    assert slot.wid == 0 and batch[0][0] == 1
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
    assert [x[0] for x in t.take_queued(A)] == [1, 2]
    assert t.held() == 1


def test_task_container_reads_the_routing_key():
    assert task_container(task(1, A)) == A
    assert task_container(task(1)) is None
    assert task_container((1, FID, 0, {"priority": 3}, b"")) is None


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


# ---- registry and scheduler --------------------------------------------------------------------------------
def test_a_registered_function_carries_its_routing_key_and_its_spec():
    reg = FunctionRegistry()
    spec = {"type": "Podman", "image": "localhost/x:1", "options": "--env A=1"}
    fid = reg.register(lambda: 1, container=spec)
    _, _, task_spec = reg.lookup(fid)
    key = container_key(spec)
    assert task_spec == {"container": key,
                         "container_spec": {"type": "podman", "image": "localhost/x:1", "options": ["--env", "A=1"]}}
    assert container_key(task_spec["container_spec"]) == key
    assert reg.listing()[0]["container"]["image"] == "localhost/x:1"


def test_container_tasks_reach_only_managers_with_a_runtime_and_prefer_warm_ones():
    s = Scheduler()
    s.register_manager(b"plain", "0", 4, 4, {}, 0.0)
    s.register_manager(b"cold", "1", 4, 4, {"containers": True}, 0.0)
    s.register_manager(b"warm", "2", 4, 4, {"containers": True}, 0.0)
    s.set_warm(b"warm", [A])
    s.submit([TaskRecord(1, FID, 0, {"container": A}, b"")])
    (m, recs), = s.dispatch()
    assert m.mid == b"warm" and recs[0].tid == 1
    s.submit([TaskRecord(2, FID, 0, {"container": B}, b"")])
    (m, _), = s.dispatch()
    assert m.mid in (b"cold", b"warm")
    s2 = Scheduler()
    s2.register_manager(b"plain", "0", 4, 4, {}, 0.0)
    s2.submit([TaskRecord(3, FID, 0, {"container": A}, b"")])
    assert s2.dispatch() == [], "no manager can run it: it waits for one that can"


@pytest.mark.parametrize("warm", [[], [A]])
def test_warm_keys_show_in_the_manager_summary(warm):
    s = Scheduler()
    s.register_manager(b"m", "0", 1, 1, {"containers": True}, 0.0)
    s.set_warm(b"m", warm)
    assert s.managers[b"m"].summary(0.0)["warm"] == warm


def test_the_same_code_registered_for_two_containers_is_two_functions():
    reg = FunctionRegistry()

    def fn():
        return 1
    plain = reg.register(fn)
    in_a = reg.register(fn, container={"type": "podman", "image": "a"})
    in_b = reg.register(fn, container={"type": "podman", "image": "b"})
    assert len({plain, in_a, in_b}) == 3
    assert reg.register(fn, container={"type": "podman", "image": "a"}) == in_a, "still content-addressed"
    assert reg.lookup(in_a)[0] == reg.lookup(in_b)[0] == reg.lookup(plain)[0], "one code, shipped once"
    assert reg.lookup(in_a)[2]["container_spec"]["image"] == "a"
    assert reg.lookup(in_b)[2]["container_spec"]["image"] == "b"
    assert reg.lookup(plain)[2] is None
