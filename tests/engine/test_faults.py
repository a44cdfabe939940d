"""Faults injected for real: killed workers, killed managers, a killed interchange, foreign managers."""
import os
import shlex
import signal
import subprocess
import sys
import time

import psutil
import pytest

import faasx
from faasx.errors import InterchangeLost, ManagerLost, VersionMismatch, WorkerLost
from faasx.providers import LocalProvider

from .conftest import FAST_HEARTBEATS, descendants_named, wait_until


def pid_then_sleep(marker_dir, seconds):
    """Record which process runs this attempt, then sleep; the second attempt returns at once."""
    import os
    import time
    path = os.path.join(marker_dir, "attempts")
    with open(path, "a") as f:
        f.write(f"{os.getpid()}\n")
    with open(path) as f:
        attempts = len(f.read().split())
    if attempts == 1:
        time.sleep(seconds)
    return attempts


def read_pids(marker_dir):
    try:
        with open(os.path.join(marker_dir, "attempts")) as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def test_worker_killed_mid_task_is_redispatched(run_dir, tmp_path):
    marker = str(tmp_path / "m")
    os.makedirs(marker)
    with faasx.Executor(max_workers_per_node=2, run_dir=run_dir, **FAST_HEARTBEATS) as ex:
        fut = ex.submit(pid_then_sleep, marker, 60)
        pid = wait_until(lambda: read_pids(marker), 20, "the task to start")[0]
        os.kill(pid, signal.SIGKILL)
        assert fut.result(timeout=30) == 2            # ran again, on a restarted or other worker
        stats = ex.executor.interchange_stats()
        assert stats["retried"] >= 1
        assert ex.submit(pow, 3, 2).result(timeout=30) == 9


def test_worker_crash_fails_with_worker_lost_after_retries(run_dir):
    def crash():
        import os
        os._exit(3)
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir, max_retries_on_system_failure=1,
                        **FAST_HEARTBEATS) as ex:
        with pytest.raises(WorkerLost) as info:
            ex.submit(crash).result(timeout=60)
        assert info.value.attempts == 2 and "exited with code 3" in str(info.value)
        assert ex.submit(pow, 2, 5).result(timeout=30) == 32       # the worker was restarted


def test_manager_loss_redispatches_its_tasks(run_dir, tmp_path):
    marker = str(tmp_path / "m")
    os.makedirs(marker)
    provider = LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2)
    with faasx.Executor(provider, max_workers_per_node=1, run_dir=run_dir, strategy="none", **FAST_HEARTBEATS) as ex:
        wait_until(lambda: len(ex.executor.connected_managers()) == 2, 20, "two managers")
        fut = ex.submit(pid_then_sleep, marker, 60)
        worker_pid = wait_until(lambda: read_pids(marker), 20, "the task to start")[0]
        manager = psutil.Process(worker_pid).parent()
        assert "faasx-manager" in " ".join(manager.cmdline())
        t0 = time.monotonic()
        manager.kill()                                 # kill -9: no BYE, only silence
        assert fut.result(timeout=30) == 2
        recovered = time.monotonic() - t0
        assert recovered < FAST_HEARTBEATS["heartbeat_threshold"] + 5
        # its worker died with it (PR_SET_PDEATHSIG)
        wait_until(lambda: not psutil.pid_exists(worker_pid) or psutil.Process(worker_pid).status() == "zombie",
                   10, "the orphaned worker to die")


def test_manager_loss_without_retries_fails_with_manager_lost(run_dir, tmp_path):
    marker = str(tmp_path / "m")
    os.makedirs(marker)
    # strategy "none": with Parsl's poller running, losing the only block may instead (and
    # correctly) put the whole executor in bad state before the heartbeat expires
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir, max_retries_on_system_failure=0,
                        strategy="none", **FAST_HEARTBEATS) as ex:
        fut = ex.submit(pid_then_sleep, marker, 60)
        worker_pid = wait_until(lambda: read_pids(marker), 20, "the task to start")[0]
        psutil.Process(worker_pid).parent().kill()
        with pytest.raises(ManagerLost, match="heartbeat|unreachable|exited"):
            fut.result(timeout=30)


def test_interchange_death_fails_pending_futures_fast_and_shutdown_returns(run_dir):
    def sleepy():
        import time
        time.sleep(60)
    ex = faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS)
    futs = [ex.submit(sleepy) for _ in range(3)]
    wait_until(lambda: ex.executor.interchange_stats().get("tasks", 0) == 3, 10, "tasks at the interchange")
    t0 = time.monotonic()
    ex.executor._client.ic_proc.kill()
    for fut in futs:
        with pytest.raises(InterchangeLost, match="interchange"):
            fut.result(timeout=10)
    assert time.monotonic() - t0 < 3
    with pytest.raises(InterchangeLost):
        ex.submit(pow, 1, 1)
    t0 = time.monotonic()
    ex.shutdown(wait=False)
    ex._teardown()
    assert time.monotonic() - t0 < 10
    # a new executor in the same process works
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir + "/again", **FAST_HEARTBEATS) as ex2:
        assert ex2.submit(pow, 2, 2).result(timeout=30) == 4


def test_version_mismatch_is_a_clear_error_and_the_interchange_survives(run_dir):
    provider = LocalProvider(init_blocks=0, min_blocks=0, max_blocks=1)
    with faasx.Executor(provider, max_workers_per_node=1, run_dir=run_dir, strategy="none",
                        **FAST_HEARTBEATS) as ex:
        fut = ex.submit(pow, 2, 3)
        cmd = ex.executor._get_launch_command("old")
        argv = shlex.split(cmd)
        argv = argv[argv.index("faasx-manager") + 1:]
        # a manager from an older faasx: same code, but it reports another version
        boot = ("import sys; import faasx.executor.protocol as p; p.VERSION = '0.0.1'; "
                "from faasx.executor.manager import main; sys.exit(main(sys.argv[1:]))")
        old = subprocess.run([sys.executable, "-c", boot] + argv, timeout=30, capture_output=True)
        assert old.returncode == 1
        with pytest.raises(VersionMismatch) as info:
            fut.result(timeout=10)
        msg = str(info.value)
        assert "0.0.1" in msg and faasx.__version__ in msg and "Fix" in msg
        # a matching manager is still welcome afterwards
        good = subprocess.Popen(ex.executor._get_launch_command("good"), shell=True)
        try:
            assert ex.submit(pow, 2, 4).result(timeout=30) == 16
        finally:
            good.terminate()
            good.wait(10)


def test_foreign_manager_with_wrong_token_is_refused(run_dir):
    provider = LocalProvider(init_blocks=0, min_blocks=0, max_blocks=1)
    with faasx.Executor(provider, max_workers_per_node=1, run_dir=run_dir, strategy="none",
                        **FAST_HEARTBEATS) as ex:
        # the run's keys (it gets through CurveZMQ) but another run's token, read from its --cert-dir
        import shutil
        certs = os.path.join(ex.executor.logdir, "certs")
        foreign_certs = os.path.join(run_dir, "foreign-certs")
        shutil.copytree(certs, foreign_certs)
        with open(os.path.join(foreign_certs, "token"), "w") as f:
            f.write("0" * 32)
        cmd = ex.executor._get_launch_command("x").replace(certs, foreign_certs)
        foreign = subprocess.run(cmd, shell=True, timeout=30)
        assert foreign.returncode == 1
        assert ex.executor.interchange_stats()["managers_refused"] == 1
        assert ex.executor.connected_managers() == []


def test_manager_exits_when_interchange_is_gone(run_dir):
    ex = faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **FAST_HEARTBEATS)
    assert ex.submit(pow, 2, 2).result(timeout=30) == 4
    managers = descendants_named(os.getpid(), "faasx-manager")
    assert managers
    ex.executor._client.ic_proc.kill()
    wait_until(lambda: all(not m.is_running() or m.status() == psutil.STATUS_ZOMBIE for m in managers),
               FAST_HEARTBEATS["heartbeat_threshold"] + 8, "managers to notice the interchange is gone")
    ex.shutdown(wait=False)
    ex._teardown()
