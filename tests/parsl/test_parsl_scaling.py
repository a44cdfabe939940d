"""Parsl's job-status poller and scaling strategies driving faasx blocks, and DFK cleanup.

* strategy 'simple' with ``LocalProvider(init_blocks=0, min_blocks=0, max_blocks=2)``: no block
  until tasks arrive, then the strategy scales out to two blocks (one worker each, so two tasks run
  at once only if both blocks are up); once idle past ``max_idletime`` the blocks are scaled in
  (status SCALED_IN, manager processes gone), and a new task scales out again.
* strategy 'htex_auto_scale': tasks complete, and idle blocks are scaled in.
* DFK cleanup stops the interchange, the managers and the workers -- with a task still running.
"""
from __future__ import annotations

import time

import parsl
from parsl import python_app
from parsl.jobs.states import JobState

import faasx
from faasx.errors import ExecutorShutdown
from faasx.providers import LocalProvider

from parsl_support import faasx_processes, load_dfk, pythonpath_init, run_processes, unload_dfk, wait_until

T = 60


@python_app
def hold(ident, ready_file, release_file):
    """Say 'ready', then wait (at most 60 s) until the test releases us."""
    import os
    import time
    with open(ready_file, "a") as f:
        f.write(f"{ident} {os.getpid()}\n")
    end = time.monotonic() + 60
    while not os.path.exists(release_file) and time.monotonic() < end:
        time.sleep(0.02)
    return os.getpid()


@python_app
def nap(seconds):
    import time
    time.sleep(seconds)
    return seconds


def _elastic_executor():
    return faasx.FaaSExecutor(label="fx", max_workers_per_node=1, heartbeat_period=1, heartbeat_threshold=5,
                              provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=2,
                                                     worker_init=pythonpath_init()))


def _managers(ex):
    return {p: c for p, c in run_processes(ex).items() if "faasx-manager" in c}


def _scale_out_and_in(ex, tmp_path, label):
    assert ex.status_facade == {} and ex.connected_managers() == [], "init_blocks=0: no block before any task"
    ready, release = tmp_path / f"{label}.ready", tmp_path / f"{label}.release"
    ready.touch()
    futs = [hold(i, str(ready), str(release)) for i in range(4)]
    # two tasks at once need two single-worker blocks: the strategy must have scaled out to max_blocks
    wait_until(lambda: len(ready.read_text().splitlines()) >= 2, 30,
               lambda: f"two tasks running at once (ready: {ready.read_text()!r}, status: {ex.status_facade})")
    assert len(ex.connected_managers()) == 2
    # (status_facade is the poller's copy, refreshed every provider.status_polling_interval; ask live)
    running = [b for b, s in ex.status().items() if s.state == JobState.RUNNING]
    assert len(running) == 2, ex.status()
    managers = _managers(ex)
    assert len(managers) == 2, managers
    release.touch()
    pids = {f.result(timeout=T) for f in futs}
    assert len(pids) == 2, f"the four tasks ran on {pids}, expected the two blocks' workers"
    # idle past max_idletime: both blocks are scaled in and their managers exit
    wait_until(lambda: ex.status_facade and all(s.state == JobState.SCALED_IN for s in ex.status_facade.values()),
               30, lambda: f"every block SCALED_IN (status: {ex.status_facade})")
    assert all(s.state == JobState.SCALED_IN for s in ex.status().values()), ex.status()
    wait_until(lambda: not faasx_processes(pids=managers), 20,
               lambda: f"the scaled-in managers to exit: {faasx_processes(pids=managers)}")
    wait_until(lambda: ex.connected_managers() == [], 20, "the interchange to drop the scaled-in managers")
    return managers


def test_simple_strategy_scales_out_from_zero_and_in_when_idle(tmp_path):
    run_dir = str(tmp_path / "simple_run")
    ex = _elastic_executor()
    dfk = load_dfk(run_dir, ex, strategy="simple", max_idletime=1.0)
    try:
        old = _scale_out_and_in(ex, tmp_path, "simple")
        # a new task after scale-in: the strategy provisions a block again
        assert nap(0.01).result(timeout=T) == 0.01
        assert set(_managers(ex)).isdisjoint(old) or not _managers(ex)
        assert any(s.state == JobState.RUNNING for s in ex.status().values()), ex.status()
    finally:
        unload_dfk(dfk, run_dir)


def test_htex_auto_scale_strategy_runs_tasks_and_scales_in(tmp_path):
    run_dir = str(tmp_path / "auto_run")
    ex = _elastic_executor()
    dfk = load_dfk(run_dir, ex, strategy="htex_auto_scale", max_idletime=1.0)
    try:
        _scale_out_and_in(ex, tmp_path, "auto")
        assert [f.result(timeout=T) for f in [nap(0.05) for _ in range(6)]] == [0.05] * 6
    finally:
        unload_dfk(dfk, run_dir)


def test_dfk_cleanup_leaves_no_faasx_processes(tmp_path):
    run_dir = str(tmp_path / "cleanup_run")
    ex = faasx.FaaSExecutor(label="fx", max_workers_per_node=2, heartbeat_period=1, heartbeat_threshold=5,
                            provider=LocalProvider(worker_init=pythonpath_init()))
    dfk = load_dfk(run_dir, ex)
    try:
        assert [nap(0.05).result(timeout=T) for _ in range(3)] == [0.05] * 3
        running = nap(30)                               # still running when cleanup starts
        procs = wait_until(lambda: (lambda p: p if sum("faasx-worker" in c for c in p.values()) == 2 else None)(
            run_processes(ex)), 20, "two workers")
        roles = sorted(next(r for r in ("faasx-interchange", "faasx-manager", "faasx-worker") if r in c)
                       for c in procs.values())
        assert roles == ["faasx-interchange", "faasx-manager", "faasx-worker", "faasx-worker"], procs
        t0 = time.monotonic()
    finally:
        dfk.cleanup()
        parsl.clear()
    assert time.monotonic() - t0 < 20, "cleanup with a running task took too long"
    wait_until(lambda: not faasx_processes(run_dir, procs), 20,
               lambda: f"no faasx process of the run after cleanup; left: {faasx_processes(run_dir, procs)}")
    assert running.done(), "the running task's future must resolve at cleanup"
    assert isinstance(running.exception(timeout=0), ExecutorShutdown), running.exception(timeout=0)
