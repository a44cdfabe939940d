"""Big payloads through shared memory, with real processes: a local block's client, interchange,
manager and workers (``faasx.executor.payloads``).

What is checked: values come back equal, a worker gets a view of the client's mapping (not a copy)
where that is claimed, no file is left in the run's shm directory after results, failures, cancels
and shutdown, ``max_payload_size`` still counts the whole payload, and a manager that registers
from another host gets everything inline.  That other host is a stand-in: the block's script
re-runs itself in a mount namespace of its own with a fresh tmpfs on /dev/shm (root only), so its
manager and workers see another /dev/shm, as on another node or in a container: the identity the
manager sends (``payloads.host_id``, which includes /dev/shm's device) differs, and the client's
directory does not exist there.  Hostname and boot id stay this machine's."""
import os

import numpy as np
import pytest

import faasx
from faasx.errors import PayloadTooLarge
from faasx.executor import payloads as PL
from faasx.providers import LocalProvider
from tests.engine.conftest import FAST_HEARTBEATS, faasx_processes, wait_until

BIG = PL.SHARED_MIN_BYTES
SIZES = [1000, BIG, 3 * 1024 * 1024, 30 * 1024 * 1024]


def where(x):
    """Runs on the worker: what the argument's memory is (``mmap``: a view of the shared file)."""
    import mmap
    import numpy as np
    base = x.obj if isinstance(x, memoryview) else x
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, memoryview):
        base = base.obj
    return "mmap" if isinstance(base, mmap.mmap) else type(base).__name__


def inc(x):
    return x + 1


def echo(x):
    return x


def boom(x):
    raise ValueError(f"no thanks ({len(x)} bytes)")


def wait_for(path):
    """Runs on the worker: block until ``path`` exists (a task the test holds running)."""
    import os
    import time
    while not os.path.exists(path):
        time.sleep(0.02)
    return True


@pytest.fixture(scope="module")
def shm_ex(ex):
    """conftest's module-scoped executor (2 workers on a local block): this module's own, so the
    leftover-file checks see only this module's payloads."""
    return ex


def files(ex):
    return os.listdir(ex.executor._shm.path)


def empty(ex):
    return wait_until(lambda: not files(ex), 10, lambda: f"the shm directory to empty: {files(ex)}")


@pytest.mark.parametrize("n", SIZES)
def test_numpy_round_trip_and_the_worker_maps_big_arguments(shm_ex, n):
    x = np.arange(n, dtype=np.uint8)
    y = shm_ex.submit(inc, x).result(timeout=60)
    assert np.array_equal(y, x + 1)
    assert (where(y) == "mmap") == (n >= BIG)     # a big result is a view in the client too
    assert (shm_ex.submit(where, x).result(timeout=60) == "mmap") == (n >= BIG)
    empty(shm_ex)


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview])
@pytest.mark.parametrize("n", [100, 3 * 1024 * 1024])
def test_bytes_like_round_trip(shm_ex, kind, n):
    value = kind(os.urandom(n))
    back = shm_ex.submit(echo, value).result(timeout=60)
    assert type(back) is kind and bytes(back) == bytes(value)
    if n >= BIG:      # a memoryview is a view of the mapping; bytes and bytearray own a copy
        assert shm_ex.submit(where, value).result(timeout=60) == ("mmap" if kind is memoryview else kind.__name__)
    empty(shm_ex)


def test_results_of_many_tasks_in_flight_and_nothing_left(shm_ex):
    x = np.arange(2 * 1024 * 1024, dtype=np.uint8)
    futures = [shm_ex.submit(inc, x) for _ in range(20)]
    assert all(np.array_equal(f.result(timeout=60), x + 1) for f in futures)
    assert list(shm_ex.map(inc, [x] * 6, chunksize=3)) and empty(shm_ex)


def test_a_failed_task_leaves_no_file(shm_ex):
    with pytest.raises(ValueError, match="no thanks"):
        shm_ex.submit(boom, np.zeros(BIG, np.uint8)).result(timeout=60)
    empty(shm_ex)


def test_cancelled_tasks_leave_no_file(shm_ex, tmp_path):
    release = str(tmp_path / "go")
    holders = [shm_ex.submit(wait_for, release) for _ in range(2)]   # both workers busy
    wait_until(lambda: all(h.running() for h in holders), 30, "the two holding tasks to start")
    queued = [shm_ex.submit(inc, np.zeros(BIG, np.uint8)) for _ in range(6)]
    assert len(files(shm_ex)) >= 6
    assert all(f.cancel() for f in queued)
    empty(shm_ex)
    open(release, "w").close()
    assert all(h.result(timeout=30) for h in holders)


def kill_first_time(flag, x):
    """Runs on the worker: the first attempt kills its own worker (WorkerLost, retried); then x + 1."""
    import os
    import signal
    if not os.path.exists(flag):
        open(flag, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return x + 1


def test_a_retried_task_reads_its_arguments_again_and_leaves_no_file(shm_ex, tmp_path):
    x = np.arange(BIG, dtype=np.uint8)
    y = shm_ex.submit(kill_first_time, str(tmp_path / "killed"), x).result(timeout=60)
    assert np.array_equal(y, x + 1) and os.path.exists(tmp_path / "killed")
    empty(shm_ex)


def test_oversize_arguments_fail_at_submit_and_oversize_results_at_the_worker(tmp_path):
    run_dir = str(tmp_path)
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir, max_payload_size=4 * 1024 * 1024,
                        **FAST_HEARTBEATS) as ex:
        with pytest.raises(PayloadTooLarge):
            ex.submit(inc, np.zeros(5 * 1024 * 1024, np.uint8))
        assert not files(ex)
        with pytest.raises(PayloadTooLarge, match="return value"):
            ex.submit(np.zeros, 5 * 1024 * 1024, np.uint8).result(timeout=60)
        assert ex.submit(inc, np.zeros(3 * 1024 * 1024, np.uint8)).result(timeout=60).sum() == 3 * 1024 * 1024
        empty(ex)


def test_a_big_result_of_small_arguments_comes_through_shared_memory(shm_ex):
    y = shm_ex.submit(np.ones, 3 * 1024 * 1024, np.uint8).result(timeout=60)
    assert y.sum() == 3 * 1024 * 1024 and where(y) == "mmap"
    empty(shm_ex)


def test_memoized_big_arguments_and_results_hit(tmp_path):
    with faasx.Executor(max_workers_per_node=1, run_dir=str(tmp_path), **FAST_HEARTBEATS) as ex:
        fid = ex.register_function(inc, memoize=True)
        x = np.arange(2 * 1024 * 1024, dtype=np.uint8)
        first = ex.submit(fid, x).result(timeout=60)
        second = ex.submit(fid, x).result(timeout=60)
        assert np.array_equal(first, x + 1) and np.array_equal(first, second) and ex.memo_stats()["hits"] == 1
        make = ex.register_function(np.ones, memoize=True)        # a big result of small arguments
        assert ex.submit(make, BIG, np.uint8).result(timeout=60).sum() == BIG
        assert ex.submit(make, BIG, np.uint8).result(timeout=60).sum() == BIG
        assert ex.memo_stats()["hits"] == 2
        empty(ex)


def test_shutdown_removes_the_directory_with_results_never_read(tmp_path):
    ex = faasx.Executor(max_workers_per_node=1, run_dir=str(tmp_path), **FAST_HEARTBEATS)
    path = ex.executor._shm.path
    assert oct(os.stat(path).st_mode & 0o777) == "0o700"
    ex.submit(inc, np.zeros(BIG, np.uint8)).result(timeout=60)
    ex.submit(inc, np.zeros(BIG, np.uint8))          # maybe still running at shutdown
    ex.shutdown(wait=False)
    wait_until(lambda: not os.path.exists(path), 15, "the shm directory to be removed")
    wait_until(lambda: not faasx_processes(str(tmp_path)), 15, "the executor's processes to exit")


def test_shared_memory_false_sends_everything_inline(tmp_path):
    with faasx.Executor(max_workers_per_node=1, run_dir=str(tmp_path), shared_memory=False,
                        **FAST_HEARTBEATS) as ex:
        assert ex.executor._shm is None
        x = np.arange(3 * 1024 * 1024, dtype=np.uint8)
        assert ex.submit(where, x).result(timeout=60) != "mmap"
        assert where(ex.submit(inc, x).result(timeout=60)) != "mmap"


OWN_SHM = """\
if [ -z "$FAASX_TEST_OWN_SHM" ]; then export FAASX_TEST_OWN_SHM=1; exec unshare --mount --propagation private /bin/bash "$0"; fi
mount -t tmpfs -o mode=1777 tmpfs /dev/shm
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="a mount namespace with its own /dev/shm needs root (CI runs as root)")
def test_a_manager_from_another_host_gets_inline_payloads(tmp_path):
    provider = LocalProvider(worker_init=OWN_SHM)
    with faasx.Executor(provider, max_workers_per_node=1, run_dir=str(tmp_path), **FAST_HEARTBEATS) as ex:
        x = np.arange(3 * 1024 * 1024, dtype=np.uint8)
        assert ex.submit(where, x).result(timeout=60) == "bytearray"     # the inline form, not the file
        y = ex.submit(inc, x).result(timeout=60)
        assert np.array_equal(y, x + 1) and where(y) != "mmap"           # and the result came inline
        empty(ex)                                                         # the client released its file


def keep_argument(x):
    """Runs on the worker: keep the argument (a view of its shared file) beyond the task."""
    global KEPT
    KEPT = x
    return int(x[0])


def kept_argument():
    return int(KEPT.min()), int(KEPT.max())


def test_argument_files_are_reused_but_never_one_a_function_still_holds(tmp_path):
    """Argument files are written again for later tasks (``payloads.Recycler``), never while a worker
    still maps one: here a function keeps its argument in a global, ten more tasks go through the
    same single worker with two in flight (so files are recycled), and the kept array still holds
    its own values.  Without the shared lock the first file would be rewritten under it."""
    n = 4 * BIG
    with faasx.Executor(max_workers_per_node=1, run_dir=str(tmp_path), **FAST_HEARTBEATS) as ex:
        recycler = ex.executor._shm_writer.recycled
        # two in flight from the start: when the keeper's task is done its file would be recycled
        kept = ex.submit(keep_argument, np.full(n, 7, np.uint8))
        futures = [ex.submit(inc, np.full(n, 0, np.uint8))]
        assert kept.result(timeout=60) == 7
        for i in range(1, 11):
            futures.append(ex.submit(inc, np.full(n, i, np.uint8)))
            done = futures.pop(0)
            assert np.array_equal(done.result(timeout=60), np.full(n, i, np.uint8)), i   # its own arguments + 1
        assert np.array_equal(futures[0].result(timeout=60), np.full(n, 11, np.uint8))
        assert recycler.reused > 0, "no argument file was reused: the test would prove nothing"
        assert ex.submit(kept_argument).result(timeout=60) == (7, 7)
        wait_until(lambda: not os.listdir(ex.executor._shm.path) or None, 10, "the shm directory to empty")
