"""Bad user input: each case gets a clear error, and the executor serves a normal task right after.

Invariant 3 of issue 4 (no input from a user can crash the interchange or a manager) and invariant 1
(every future resolves).  One executor serves the module (max_retries_on_system_failure=1, so a task
that kills its worker runs exactly twice); cases that need their own shutdown get their own executor.
"""
from __future__ import annotations

import socket
import sys
import time

import psutil
import pytest

from faasx.errors import FunctionExited, PayloadTooLarge, SerializationError, WorkerLost

from .conftest import assert_no_leftovers, shared_executor, engine_procs, wait_until

LIMIT = 1 << 20          # max_payload_size of the module's executor: 1 MiB
T = 60                   # every result() has a timeout


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    yield from shared_executor(tmp_path_factory, "bad_input", LIMIT)


def healthy(ex, n: int = 20) -> None:
    """The executor still runs ordinary tasks correctly, on every worker."""
    futs = [ex.submit(pow, i, 3) for i in range(n)]
    assert [f.result(timeout=T) for f in futs] == [i ** 3 for i in range(n)]
    stats = ex.executor.interchange_stats()
    assert stats["managers"] >= 1


def test_unpicklable_arguments_fail_at_submit(ex):
    def f(x):
        return x

    # (a threading.Lock is *not* an error: dill, the fallback codec, ships it as a fresh lock)
    with pytest.raises(SerializationError) as info:
        ex.submit(f, (i for i in range(3)))
    assert "generator" in str(info.value) and "Fix:" in str(info.value)
    with socket.socket() as sock, pytest.raises(SerializationError) as info:
        ex.submit(f, x=sock)
    assert "socket" in str(info.value)
    with pytest.raises(SerializationError):
        ex.submit(f, [1, 2, sys._getframe()])
    assert ex.executor.outstanding() == 0
    healthy(ex)


def test_unpicklable_result_fails_the_future(ex):
    def make_generator():
        return (i for i in range(3))

    fut = ex.submit(make_generator)
    with pytest.raises(SerializationError) as info:
        fut.result(timeout=T)
    assert "return value" in str(info.value)
    assert info.value.task_id == fut.parsl_executor_task_id
    healthy(ex)


def test_result_over_max_payload_size(ex):
    def big(n):
        return b"x" * n

    fut = ex.submit(big, 4 * LIMIT)
    with pytest.raises(PayloadTooLarge) as info:
        fut.result(timeout=T)
    assert info.value.limit == LIMIT and info.value.size > LIMIT
    # just under the limit still works
    assert len(ex.submit(big, LIMIT - 1000).result(timeout=T)) == LIMIT - 1000
    healthy(ex)


def test_arguments_over_max_payload_size_fail_at_submit(ex):
    with pytest.raises(PayloadTooLarge) as info:
        ex.submit(len, b"y" * (2 * LIMIT))
    assert "arguments" in str(info.value)
    assert ex.executor.outstanding() == 0
    healthy(ex)


def test_sys_exit_is_function_exited(ex):
    def leave(code):
        import sys
        sys.exit(code)

    workers_before = {p.pid for p in engine_procs(ex, "faasx-worker")}
    for code in (0, 7, "bye"):
        with pytest.raises(FunctionExited) as info:
            ex.submit(leave, code).result(timeout=T)
        assert "SystemExit" in str(info.value)
    def interrupt():
        raise KeyboardInterrupt
    with pytest.raises(FunctionExited):
        ex.submit(interrupt).result(timeout=T)
    # the workers survived: same processes
    assert {p.pid for p in engine_procs(ex, "faasx-worker")} == workers_before
    healthy(ex)


def test_os_exit_is_worker_lost_after_retries(ex, tmp_path):
    marker = str(tmp_path / "runs")

    def die(path):
        import os
        with open(path, "a") as f:
            f.write(f"{os.getpid()}\n")
        os._exit(3)

    before = ex.executor.interchange_stats()["retried"]
    fut = ex.submit(die, marker)
    with pytest.raises(WorkerLost) as info:
        fut.result(timeout=T)
    runs = open(marker).read().split()
    assert len(runs) == 2, f"with max_retries_on_system_failure=1 the task must run exactly twice, ran {runs}"
    assert len(set(runs)) == 2, "each run killed its worker, so the second ran in a fresh one"
    assert info.value.attempts == 2
    assert "exited with code 3" in str(info.value)
    assert ex.executor.interchange_stats()["retried"] == before + 1
    # the manager replaced the dead workers
    wait_until(lambda: len(engine_procs(ex, "faasx-worker")) == 2, 20, what="the manager to restart its workers")
    healthy(ex)


def test_segfault_is_worker_lost(ex):
    def crash():
        import ctypes
        return ctypes.string_at(0)

    with pytest.raises(WorkerLost) as info:
        ex.submit(crash).result(timeout=T)
    assert "signal 11" in str(info.value)
    healthy(ex)


def test_memory_exhaustion_raises_memory_error(ex):
    def hog(extra_mb):
        import resource
        soft, hard = resource.getrlimit(resource.RLIMIT_AS)
        import psutil
        vms = psutil.Process().memory_info().vms
        resource.setrlimit(resource.RLIMIT_AS, (vms + extra_mb * 2**20, hard))
        try:
            blocks = []
            for _ in range(100):
                blocks.append(bytearray(100 * 2**20))   # would be 10 GB without the limit
            return len(blocks)
        finally:
            del blocks
            resource.setrlimit(resource.RLIMIT_AS, (soft, hard))

    with pytest.raises(MemoryError):
        ex.submit(hog, 300).result(timeout=T)
    healthy(ex)


def test_megabytes_on_stdout_do_not_block_the_worker(ex):
    def chatty(mb):
        import sys
        line = "z" * 1023 + "\n"
        for _ in range(mb * 1024):
            sys.stdout.write(line)
        sys.stdout.flush()
        sys.stderr.write(line * 1024)
        return mb

    t0 = time.monotonic()
    futs = [ex.submit(chatty, 20) for _ in range(2)]
    assert [f.result(timeout=T) for f in futs] == [20, 20]
    assert time.monotonic() - t0 < T
    healthy(ex)


def test_children_that_never_exit_are_gone_after_shutdown(make_executor):
    ex = make_executor(max_workers_per_node=2, heartbeat_period=0.5, heartbeat_threshold=5)

    def spawn():
        import subprocess
        return subprocess.Popen(["sleep", "1000"]).pid

    def spawn_detached():
        import subprocess
        # a grandchild in the worker's process group, whose parent (sh) exits at once
        out = subprocess.run(["sh", "-c", "sleep 1000 >/dev/null 2>&1 & echo $!"], capture_output=True, text=True)
        return int(out.stdout)

    pids = [ex.submit(spawn).result(timeout=T) for _ in range(3)] + [ex.submit(spawn_detached).result(timeout=T)]
    for pid in pids:
        assert psutil.pid_exists(pid)
    healthy(ex)
    t0 = time.monotonic()
    ex.shutdown(wait=True)
    assert time.monotonic() - t0 < 15

    def gone():
        for pid in pids:
            try:
                if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                    return False
            except psutil.NoSuchProcess:
                pass
        return True
    wait_until(gone, 10, what=f"the functions' children {pids} to be gone after shutdown")


def test_function_that_never_returns_can_be_cancelled(make_executor):
    ex = make_executor(max_workers_per_node=2, heartbeat_period=0.5, heartbeat_threshold=5)
    ic = ex.executor._client.ic_proc

    def forever():
        import time
        while True:
            time.sleep(1)

    stuck = ex.submit(forever)
    queued = [ex.submit(forever) for _ in range(3)]
    # the first two run; wait until the interchange has handed them to the manager
    wait_until(lambda: any(m["tasks"] >= 2 for m in ex.executor.connected_managers()), 20,
             what="the never-returning tasks to reach the manager")
    assert stuck.cancel()
    assert stuck.cancelled()
    with pytest.raises(Exception):
        stuck.result(timeout=1)
    t0 = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    took = time.monotonic() - t0
    assert took < 10, f"shutdown(cancel_futures=True) took {took:.1f}s"
    assert all(f.done() for f in queued)
    assert_no_leftovers(ex.run_dir, {ic.pid}, timeout=10, what="by never-returning tasks ")
