"""``parsl_resource_specification={'priority': n}`` orders queued tasks through faasx.FaaSExecutor.

One worker, no prefetch: while a task holds the worker, tasks queue at the interchange; when it is
released they run lowest priority value first, as with Parsl's HTEX.  Only orderings on which faasx
and HTEX agree are asserted (HTEX runs every prioritized task before any unprioritized one; faasx
gives an unprioritized task priority 0 -- see docs/parsl.md).
"""
from __future__ import annotations

import pytest

from parsl import python_app

import faasx
from faasx.providers import LocalProvider

from parsl_support import load_dfk, pythonpath_init, unload_dfk, wait_until

T = 60


@python_app
def hold(ready_file, release_file):
    import os
    import time
    open(ready_file, "w").close()
    end = time.monotonic() + 60
    while not os.path.exists(release_file) and time.monotonic() < end:
        time.sleep(0.02)
    return "held"


@python_app
def mark(name, log_file, parsl_resource_specification={}):
    with open(log_file, "a") as f:
        f.write(name + "\n")
    return name


@pytest.fixture(scope="module")
def one_worker_dfk(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("parsl_priority"))
    ex = faasx.FaaSExecutor(label="fx", max_workers_per_node=1, prefetch_capacity=0, heartbeat_period=1,
                            heartbeat_threshold=5,
                            provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1,
                                                   worker_init=pythonpath_init()))
    dfk = load_dfk(run_dir, ex)
    try:
        yield dfk
    finally:
        unload_dfk(dfk, run_dir)


def test_queued_tasks_run_lowest_priority_value_first(one_worker_dfk, tmp_path):
    ready, release, log = tmp_path / "ready", tmp_path / "release", tmp_path / "order.log"
    blocker = hold(str(ready), str(release))
    wait_until(ready.exists, 30, "the blocking task to start")
    futs = [mark("p5", str(log), parsl_resource_specification={"priority": 5}),
            mark("p1", str(log), parsl_resource_specification={"priority": 1}),
            mark("p3", str(log), parsl_resource_specification={"priority": 3}),
            mark("urgent", str(log), parsl_resource_specification={"priority": -10})]
    plain = mark("plain", str(log))
    # every task must be queued at the interchange before the worker frees up
    wait_until(lambda: one_worker_dfk.executors["fx"].interchange_stats().get("queued", 0) >= 5 or None, 10,
               lambda: f"five queued tasks (stats: {one_worker_dfk.executors['fx'].interchange_stats()})")
    release.touch()
    assert blocker.result(timeout=T) == "held"
    assert [f.result(timeout=T) for f in futs] == ["p5", "p1", "p3", "urgent"]
    assert plain.result(timeout=T) == "plain"
    order = log.read_text().split()
    prioritized = [n for n in order if n != "plain"]
    assert prioritized == ["urgent", "p1", "p3", "p5"], order
    assert order.index("urgent") < order.index("plain"), order
