"""Memoization: registered with memoize=True or per call; exceptions never cached; SQLite survives restarts."""
import os

import pytest

import faasx

from .conftest import FAST_HEARTBEATS


def counted(marker_dir, x):
    """Appends one line per real execution, so the test can count them."""
    import os
    with open(os.path.join(marker_dir, f"runs-{x}"), "a") as f:
        f.write("run\n")
    return x * 10


def flaky(marker_dir):
    """Fails on its first execution, succeeds afterwards."""
    import os
    path = os.path.join(marker_dir, "flaky")
    first = not os.path.exists(path)
    open(path, "a").close()
    if first:
        raise RuntimeError("first run fails")
    return "ok"


def runs(marker_dir, x):
    try:
        with open(os.path.join(marker_dir, f"runs-{x}")) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def test_registered_memoized_function_runs_once_per_distinct_arguments(ex, tmp_path):
    d = str(tmp_path)
    fid = ex.register_function(counted, memoize=True)
    assert ex.submit(fid, d, 1).result(timeout=30) == 10
    hit = ex.submit(fid, d, 1)
    assert hit.done()                        # resolved in the caller, no round trip
    assert hit.result() == 10 and runs(d, 1) == 1
    assert ex.submit(fid, d, 2).result(timeout=30) == 20 and runs(d, 2) == 1
    assert ex.submit(counted, d, 1).result(timeout=30) == 10 and runs(d, 1) == 2   # not memoized by fn


def test_identical_running_calls_share_one_execution(ex, tmp_path):
    d = str(tmp_path)
    fid = ex.register_function(counted, memoize=True)
    futs = [ex.submit(fid, d, 7) for _ in range(5)]
    assert [f.result(timeout=30) for f in futs] == [70] * 5
    assert runs(d, 7) == 1


def test_exceptions_are_not_cached(ex, tmp_path):
    d = str(tmp_path)
    fid = ex.register_function(flaky, memoize=True)
    with pytest.raises(RuntimeError, match="first run fails"):
        ex.submit(fid, d).result(timeout=30)
    assert ex.submit(fid, d).result(timeout=30) == "ok"
    assert ex.submit(fid, d).done()


def test_per_call_memoization_through_the_resource_specification(ex, tmp_path):
    d = str(tmp_path)
    call = (counted, (d, 3), {}, {"memoize": True})
    assert ex.submit_batch([call])[0].result(timeout=30) == 30
    assert ex.submit_batch([call])[0].result(timeout=30) == 30
    assert runs(d, 3) == 1


def test_sqlite_store_survives_a_restart(run_dir, tmp_path):
    d = str(tmp_path / "markers")
    os.makedirs(d)
    store = str(tmp_path / "memo.sqlite")
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir + "/1", memo_store=store, **FAST_HEARTBEATS) as ex1:
        fid = ex1.register_function(counted, memoize=True)
        assert ex1.submit(fid, d, 5).result(timeout=30) == 50
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir + "/2", memo_store=store, **FAST_HEARTBEATS) as ex2:
        fid2 = ex2.register_function(counted, memoize=True)
        assert fid2 == fid
        fut = ex2.submit(fid2, d, 5)
        assert fut.done() and fut.result() == 50
        assert ex2.memo_stats()["hits"] == 1
    assert runs(d, 5) == 1
