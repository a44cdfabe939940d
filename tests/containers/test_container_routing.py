"""Container routing without processes: the spec a registered function carries, and how the interchange's
scheduler uses a manager's ``containers`` flag and its warm keys.  The manager's side (``WorkerTable``: per-key
queues, ``assign``, ``plan``) is tested in tests/unit/test_worker_table.py."""
from __future__ import annotations

import pytest

from faasx.containers import container_key
from faasx.executor.registry import FunctionRegistry
from faasx.executor.scheduling import Scheduler, TaskRecord

FID = b"f" * 16
A, B, C = "podman-aaaaaaaaaaaaaaaa", "podman-bbbbbbbbbbbbbbbb", "podman-cccccccccccccccc"


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
