"""faasx.Executor as a concurrent.futures.Executor, with real processes and sockets."""
import concurrent.futures
import os
import subprocess

import pytest

import faasx
from faasx.errors import ExecutorShutdown, UnknownFunction

from .conftest import FAST_HEARTBEATS, faasx_processes, wait_until


def add(a, b=0):
    return a + b


class Boom(Exception):
    pass


def explode(msg):
    raise Boom(msg)


def whoami():
    import time
    time.sleep(0.01)
    return os.getpid(), os.environ.get("FAASX_WORKER_ID")


def test_submit_returns_results_of_builtins_lambdas_and_closures(ex):
    offset = 100
    assert ex.submit(pow, 2, 10).result(timeout=30) == 1024
    assert ex.submit(lambda x: x + offset, 1).result(timeout=30) == 101
    assert ex.submit(add, 1, b=2).result(timeout=30) == 3
    fut = ex.submit(add, 5)
    assert isinstance(fut, concurrent.futures.Future) and fut.result(timeout=30) == 5


def test_two_workers_share_the_work(ex):
    pids = {f.result(timeout=30)[0] for f in [ex.submit(whoami) for _ in range(40)]}
    assert len(pids) == 2


def test_exception_keeps_its_type_and_remote_traceback(ex):
    with pytest.raises(Boom, match="kaboom") as info:
        ex.submit(explode, "kaboom").result(timeout=30)
    notes = "".join(getattr(info.value, "__notes__", []))
    assert "Remote traceback" in notes and "explode" in notes
    assert ex.submit(add, 1, 1).result(timeout=30) == 2    # still healthy


def test_map_keeps_order_with_several_iterables_and_chunks(ex):
    a, b = range(1000), range(1000, 0, -1)
    expected = [x + y for x, y in zip(a, b)]
    assert list(ex.map(add, a, b)) == expected
    assert list(ex.map(add, a, b, chunksize=64)) == expected
    assert list(ex.map(add, [], chunksize=8)) == []


def test_map_raises_the_first_failing_items_exception_in_order(ex):
    def check(x):
        if x == 7:
            raise ValueError("seven")
        return x
    it = ex.map(check, range(10), chunksize=3)
    assert [next(it) for _ in range(6)] == list(range(6))
    with pytest.raises(ValueError, match="seven"):
        list(it)


def test_map_timeout_raises_timeout_error(ex):
    import time

    def slow(x):
        time.sleep(2)
        return x
    with pytest.raises(concurrent.futures.TimeoutError):
        list(ex.map(slow, range(2), timeout=0.3, chunksize=2))


def test_register_function_is_content_addressed_and_callable_by_id(ex):
    def triple(x):
        return 3 * x
    fid = ex.register_function(triple)
    assert fid == ex.register_function(triple)
    assert isinstance(fid, str) and len(fid) == 32
    assert ex.submit(fid, 14).result(timeout=30) == 42
    assert list(ex.map(fid, range(5), chunksize=2)) == [0, 3, 6, 9, 12]
    assert any(f["function_id"] == fid and f["name"].endswith("triple") for f in ex.registered_functions())

    def triple(x):  # noqa: F811 - a changed function gets a new id
        return 3 * x + 0
    assert ex.register_function(triple) != fid


def test_unknown_function_id_fails_at_submit(ex):
    with pytest.raises(UnknownFunction, match="register"):
        ex.submit("0" * 32, 1)


def test_submit_batch_returns_futures_in_order(ex):
    futs = ex.submit_batch([(add, (i,), {"b": 1}) for i in range(100)] + [(pow, (2, 3))])
    assert [f.result(timeout=30) for f in futs] == [i + 1 for i in range(100)] + [8]


def test_futures_are_released_once_resolved(ex):
    futs = [ex.submit(add, i) for i in range(5000)]
    assert sum(f.result(timeout=60) for f in futs) == sum(range(5000))
    client = ex.executor._client
    wait_until(lambda: len(client.futures) == 0, 5, "the futures table to empty")
    assert client._in_flight == 0


def test_every_component_is_recognisable_in_ps(ex):
    ex.submit(add, 1).result(timeout=30)
    out = subprocess.run(["ps", "-eww", "-o", "args"], capture_output=True, text=True).stdout
    run_dir = ex.run_dir
    lines = [line for line in out.splitlines() if run_dir in line or "faasx-worker" in line]
    assert any("faasx-interchange" in line for line in out.splitlines())
    assert any("faasx-manager" in line and run_dir in line for line in lines)
    assert any("faasx-worker" in line for line in lines)


def test_logs_per_component_in_the_run_directory(ex):
    ex.submit(add, 1).result(timeout=30)
    logdir = ex.executor.logdir
    names = os.listdir(logdir)
    assert "interchange.log" in names and "client.log" in names
    assert any(n.startswith("manager_") and n.endswith(".log") for n in names)
    assert any(n.startswith("worker_") and n.endswith(".log") for n in names)
    with open(os.path.join(logdir, "interchange.log")) as f:
        assert "registered manager" in f.read()


def test_debug_logs_let_one_task_be_followed_end_to_end(run_dir):
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir, worker_debug=True, **FAST_HEARTBEATS) as ex:
        fut = ex.submit(add, 20, 22)
        assert fut.result(timeout=30) == 42
        tid = fut.parsl_executor_task_id
        logdir = ex.executor.logdir
    hits = {}
    for name in os.listdir(logdir):
        if name.endswith(".log"):
            with open(os.path.join(logdir, name)) as f:
                text = f.read()
            hits[name.split("_")[0].split(".")[0]] = f"task {tid}" in text or f"{tid}]" in text
    assert hits.get("interchange") and hits.get("manager") and hits.get("worker") and hits.get("client"), hits


def test_shutdown_cancel_futures_and_submit_after_shutdown(run_dir):
    import time

    def slow(x):
        time.sleep(0.5)
        return x
    ex = faasx.Executor(max_workers_per_node=1, run_dir=run_dir, prefetch_capacity=0, **FAST_HEARTBEATS)
    futs = [ex.submit(slow, i) for i in range(20)]
    futs[0].result(timeout=30)
    t0 = time.monotonic()
    ex.shutdown(wait=True, cancel_futures=True)
    assert time.monotonic() - t0 < 10
    assert all(f.done() for f in futs)
    assert sum(f.cancelled() for f in futs) >= 15
    with pytest.raises(RuntimeError):
        ex.submit(slow, 1)


def test_shutdown_wait_true_finishes_pending_work(run_dir):
    ex = faasx.Executor(max_workers_per_node=2, run_dir=run_dir, **FAST_HEARTBEATS)
    futs = [ex.submit(add, i) for i in range(300)]
    ex.shutdown(wait=True)
    assert [f.result(timeout=0) for f in futs] == list(range(300))


def test_context_manager_leaves_no_process_behind(run_dir):
    with faasx.Executor(max_workers_per_node=2, run_dir=run_dir, **FAST_HEARTBEATS) as ex:
        assert ex.submit(add, 1).result(timeout=30) == 1
        assert faasx_processes(run_dir)
    wait_until(lambda: not faasx_processes(run_dir), 10, "no faasx process of this run")


def test_pending_futures_fail_if_the_executor_is_shut_down_underneath(run_dir):
    import time

    def slow():
        time.sleep(30)
    ex = faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS)
    fut = ex.submit(slow)
    ex.executor.shutdown()       # the engine goes away without waiting
    with pytest.raises(ExecutorShutdown):
        fut.result(timeout=15)
    ex.shutdown(wait=False)


def test_accelerators_pin_one_device_per_worker(run_dir):
    def devices():
        import os
        import time
        time.sleep(0.2)
        return tuple(os.environ.get(v) for v in ("CUDA_VISIBLE_DEVICES", "ROCR_VISIBLE_DEVICES", "ZE_AFFINITY_MASK"))
    with faasx.Executor(available_accelerators=["0", "1"], run_dir=run_dir, prefetch_capacity=0,
                        **FAST_HEARTBEATS) as ex:
        seen = {f.result(timeout=30) for f in [ex.submit(devices) for _ in range(8)]}
    assert seen == {("0", "0", "0"), ("1", "1", "1")}


def test_cores_per_worker_bounds_the_pool(run_dir):
    with faasx.Executor(cores_per_worker=os.cpu_count(), run_dir=run_dir, **FAST_HEARTBEATS) as ex:
        managers = ex.executor.connected_managers()
        wait_until(lambda: ex.executor.connected_managers(), 10, "a manager")
        managers = ex.executor.connected_managers()
        assert [m["worker_count"] for m in managers] == [1]
