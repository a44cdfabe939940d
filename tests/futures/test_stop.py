"""Per-task time limits and stopping a running task (issue 10, section 6), with real processes: the
worker's whole process group dies (the function's children too), the worker is replaced, and the
future fails with a clear error."""
import concurrent.futures as cf
import os
import time

import psutil
import pytest

import faasx
from faasx.errors import TaskTimeout
from tests.support import wait_for

from .conftest import FAST_HEARTBEATS


def spawn_and_hang(pid_file):
    """Start a child that outlives us unless its process group is killed; then hang."""
    import subprocess
    import time
    child = subprocess.Popen(["sleep", "300"])
    with open(pid_file, "w") as f:
        f.write(str(child.pid))
    time.sleep(300)


def add(a, b):
    return a + b


def child_pid(path):
    wait_for(lambda: os.path.exists(path) and open(path).read(), 30, what="the task to start its child")
    return int(open(path).read())


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_walltime_kills_the_task_and_its_children_and_is_not_retried(run_dir, tmp_path):
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir, max_retries_on_system_failure=2,
                        **FAST_HEARTBEATS) as ex:
        pid_file = str(tmp_path / "child")
        fut = ex.options(walltime=1.5).submit(spawn_and_hang, pid_file)
        pid = child_pid(pid_file)
        with pytest.raises(TaskTimeout, match=r"walltime of 1\.5s"):
            fut.result(timeout=20)
        wait_for(lambda: gone(pid), 5, what="the task's child to be killed")
        assert ex.submit(add, 1, 2).result(timeout=30) == 3          # a replacement worker
        # the Parsl spelling goes the same way
        pid_file2 = str(tmp_path / "child2")
        fut2 = ex.executor.submit(spawn_and_hang, {"walltime": 1}, pid_file2)
        pid2 = child_pid(pid_file2)
        with pytest.raises(TaskTimeout, match="walltime of 1s"):
            fut2.result(timeout=20)
        wait_for(lambda: gone(pid2), 5, what="the second task's child to be killed")
        assert ex.executor.interchange_stats()["retried"] == 0


def test_walltime_is_validated_and_does_not_collide_with_the_functions_kwargs(run_dir):
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS) as ex:
        def uses_walltime(walltime):
            return walltime
        assert ex.options(walltime=30).submit(uses_walltime, walltime="mine").result(timeout=30) == "mine"
        assert list(ex.options(walltime=30).map(add, [1, 2], [10, 20])) == [11, 22]
        with pytest.raises(faasx.errors.InvalidResourceSpecification):
            ex.options(walltime=-1)


def test_terminate_stops_a_running_task_and_frees_its_worker_at_once(run_dir, tmp_path):
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS) as ex:
        pid_file = str(tmp_path / "child")
        fut = ex.submit(spawn_and_hang, pid_file)
        pid = child_pid(pid_file)
        wait_for(fut.running, 5, what="the task to be running()")
        assert fut.cancel() is False                   # cancel() keeps the stdlib contract
        assert ex.terminate(fut) is True
        with pytest.raises(cf.CancelledError):
            fut.result(timeout=10)
        t0 = time.monotonic()
        assert ex.submit(add, 2, 2).result(timeout=10) == 4
        free_after = time.monotonic() - t0
        assert free_after < 1.0, f"the worker was free again only after {free_after:.2f}s"
        wait_for(lambda: gone(pid), 5, what="the terminated task's child to be killed")
        assert ex.terminate(fut) is False              # done already
