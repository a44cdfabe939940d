"""``engine_cpu``: the engine's threads (manager, interchange, client I/O thread, and libzmq's) run on
one CPU; workers and the caller keep every CPU.

Real executors with a local block (interchange, manager, workers); affinities are read from outside
with ``os.sched_getaffinity(tid)`` for every thread in ``/proc/<pid>/task``; the client's I/O thread
and the interchange are checked too, and the caller's own thread must stay unpinned.
"""
import os
import socket
import subprocess
import sys

import psutil
import pytest

import faasx
from faasx.executor import affinity
from faasx.executor.parsl_executor import FaaSExecutor

from .conftest import FAST_HEARTBEATS, faasx_processes, wait_until

pytestmark = pytest.mark.skipif(not affinity.supported(), reason="no sched_setaffinity on this platform")

ORIGINAL = os.sched_getaffinity(0) if affinity.supported() else set()
needs_two_cpus = pytest.mark.skipif(len(ORIGINAL) < 2, reason="pinning is only visible with 2+ allowed CPUs")


def task_affinity():
    import os
    return os.getpid(), sorted(os.sched_getaffinity(0))


def cores_task():
    import os
    return len(os.sched_getaffinity(0)), os.environ.get("OMP_NUM_THREADS")


def threads(pid: int) -> dict:
    """{tid: (thread name, its CPU set)} of every thread of ``pid``."""
    out = {}
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
            out[int(tid)] = (name, os.sched_getaffinity(int(tid)))
        except (FileNotFoundError, ProcessLookupError):
            pass   # a thread that just ended
    return out


def processes_named(run_dir: str, name: str):
    found = []
    for p in faasx_processes(run_dir):
        try:
            if p.name() == name:
                found.append(p)
        except psutil.Error:
            pass
    return found


def start(run_dir: str, **options) -> faasx.Executor:
    return faasx.Executor(max_workers_per_node=2, run_dir=run_dir, **FAST_HEARTBEATS, **options)


def stop(ex: faasx.Executor, run_dir: str) -> None:
    ex.shutdown()
    wait_until(lambda: not faasx_processes(run_dir), 10, "the executor's processes to exit")


def both_workers(run_dir: str):
    return wait_until(lambda: (lambda w: w if len(w) == 2 else None)(processes_named(run_dir, "faasx-worker")),
                      30, "two faasx-worker processes")


@pytest.fixture(scope="module")
def pinned(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("engine_cpu0"))
    ex = start(run_dir, engine_cpu=0)
    yield ex, run_dir
    stop(ex, run_dir)


@pytest.fixture(scope="module")
def pinned_zmq(tmp_path_factory):
    """Pinned, with the same-host manager on ZeroMQ's ipc transport instead of its direct link."""
    run_dir = str(tmp_path_factory.mktemp("engine_cpu0_zmq"))
    os.environ["FAASX_DIRECT_LINKS"] = "0"      # read by the interchange, which inherits it at start
    try:
        ex = start(run_dir, engine_cpu=0)
    finally:
        del os.environ["FAASX_DIRECT_LINKS"]
    yield ex, run_dir
    stop(ex, run_dir)


def manager_log(ex) -> str:
    return "".join(open(os.path.join(ex.executor.worker_logdir, f)).read()
                   for f in os.listdir(ex.executor.worker_logdir) if f.startswith("manager_"))


@pytest.fixture(scope="module")
def unpinned(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("engine_cpu_none"))
    ex = start(run_dir, engine_cpu=None)
    yield ex, run_dir
    stop(ex, run_dir)


# ---- engine_cpu=0 ----------------------------------------------------------------------------------
def test_pinned_executor_runs_tasks_and_launches_its_manager_with_engine_cpu(pinned):
    ex, run_dir = pinned
    assert ex.executor.engine_cpu == 0
    assert [ex.submit(pow, 2, k).result(timeout=30) for k in range(20)] == [2 ** k for k in range(20)]
    assert "--engine-cpu 0" in ex.executor._launch_template
    [manager] = processes_named(run_dir, "faasx-manager")
    cmd = manager.cmdline()
    assert cmd[cmd.index("--engine-cpu") + 1] == "0"


@pytest.mark.parametrize("link", ["direct", "zmq"])
def test_every_thread_of_the_manager_is_pinned_to_the_engine_cpu(link, request):
    ex, run_dir = request.getfixturevalue("pinned" if link == "direct" else "pinned_zmq")
    assert ex.submit(pow, 3, 3).result(timeout=30) == 27    # registered and relaying: all threads exist
    [manager] = processes_named(run_dir, "faasx-manager")
    seen = threads(manager.pid)
    names = sorted(name for name, _ in seen.values())
    log = manager_log(ex)
    if link == "direct":     # on its direct link the manager has no libzmq threads at all
        assert "registering with the interchange at direct:" in log, log
        assert names == ["faasx-manager"], names
    else:
        assert "registering with the interchange at ipc://" in log, log
        assert any(n.startswith("ZMQbg") for n in names), names     # libzmq's I/O and reaper threads are checked too
    assert {tid: cpus for tid, (_, cpus) in seen.items()} == {tid: {0} for tid in seen}, seen
    assert f"manager pinned to CPU 0; workers get cpus {affinity.format_cpus(ORIGINAL)}" in log


def test_every_interchange_thread_and_the_clients_io_thread_are_pinned_but_not_the_caller(pinned):
    ex, _ = pinned
    assert ex.submit(pow, 5, 2).result(timeout=30) == 25
    ic = threads(ex.executor._client.ic_proc.pid)
    assert any(name.startswith("ZMQbg") for name, _ in ic.values()), ic    # libzmq's threads inherit the pin
    assert {tid: cpus for tid, (_, cpus) in ic.items()} == {tid: {0} for tid in ic}, ic
    io_thread = ex.executor._client._thread
    assert os.sched_getaffinity(io_thread.native_id) == {0}
    assert os.sched_getaffinity(0) == ORIGINAL                 # the user's own thread is never pinned


def test_workers_of_a_pinned_manager_get_every_original_cpu(pinned):
    ex, run_dir = pinned
    results = dict(f.result(timeout=30) for f in [ex.submit(task_affinity) for _ in range(20)])
    assert results and all(cpus == sorted(ORIGINAL) for cpus in results.values()), results
    for worker in both_workers(run_dir):
        cmd = worker.cmdline()
        assert cmd[cmd.index("--cpus") + 1] == affinity.format_cpus(ORIGINAL)
        seen = threads(worker.pid)
        assert all(cpus == ORIGINAL for _, cpus in seen.values()), seen


@needs_two_cpus
def test_a_task_with_cores_on_a_pinned_manager_gets_that_many_cpus_and_the_worker_gets_them_back(pinned):
    ex, _ = pinned
    # a worker left on its manager's single CPU could give a task only 1 of them
    assert ex.submit_batch([(cores_task, (), {}, {"cores": 2})])[0].result(timeout=30) == (2, "2")
    assert ex.submit_batch([(cores_task, (), {}, {"cores": 1})])[0].result(timeout=30) == (1, "1")
    free = {ex.submit(cores_task).result(timeout=30) for _ in range(6)}
    assert free == {(len(ORIGINAL), None)}, free


# ---- engine_cpu=None -------------------------------------------------------------------------------
def test_engine_cpu_none_pins_nothing(unpinned):
    ex, run_dir = unpinned
    assert ex.executor.engine_cpu is None
    results = dict(f.result(timeout=30) for f in [ex.submit(task_affinity) for _ in range(20)])
    assert all(cpus == sorted(ORIGINAL) for cpus in results.values()), results
    assert "--engine-cpu" not in ex.executor._launch_template
    [manager] = processes_named(run_dir, "faasx-manager")
    assert "--engine-cpu" not in manager.cmdline()
    seen = threads(manager.pid)
    assert all(cpus == ORIGINAL for _, cpus in seen.values()), seen
    for worker in both_workers(run_dir):
        assert "--cpus" not in worker.cmdline()
        assert all(cpus == ORIGINAL for _, cpus in threads(worker.pid).values())


# ---- the option's values -------------------------------------------------------------------------
def test_engine_cpu_defaults_to_auto_and_auto_picks_an_allowed_cpu(run_dir):
    assert FaaSExecutor().engine_cpu == "auto"
    ex = start(run_dir)
    try:
        assert ex.submit(pow, 2, 5).result(timeout=30) == 32
        template = ex.executor._launch_template.split()
        chosen = int(template[template.index("--engine-cpu") + 1])
        assert chosen in ORIGINAL
        [manager] = processes_named(run_dir, "faasx-manager")
        assert all(cpus == {chosen} for _, cpus in threads(manager.pid).values())
    finally:
        stop(ex, run_dir)


@needs_two_cpus
def test_auto_governs_the_io_thread_and_every_interchange_thread_and_an_explicit_cpu_does_not(run_dir, pinned):
    """With "auto" the client's I/O thread and each interchange thread (libzmq's included) are governed
    (``affinity.Governor``: spread while their CPU is saturated); moving them is real.  engine_cpu=0
    is a hard pin: no governor."""
    ex = start(run_dir)
    try:
        assert ex.submit(pow, 2, 5).result(timeout=30) == 32
        client = ex.executor._client
        gov = wait_until(lambda: client.governor, 10, "the I/O thread's governor")
        members = set(gov.members())
        assert (os.getpid(), client._thread.native_id) in members
        assert {(client.ic_proc.pid, tid) for tid in threads(client.ic_proc.pid)} <= members
        assert gov.cpu == ex.executor._engine_cpu and gov.allowed == ORIGINAL
        assert gov._apply(ORIGINAL)                 # what spreading does, to every member thread
        assert all(os.sched_getaffinity(tid) == ORIGINAL for _, tid in members)
        assert ex.submit(pow, 3, 2).result(timeout=30) == 9
    finally:
        stop(ex, run_dir)
    pinned_ex, _ = pinned
    assert pinned_ex.executor._client.governor is None


@pytest.mark.parametrize("value", ["bogus", -1, True])
def test_bad_engine_cpu_values_fail_at_construction(value, run_dir):
    with pytest.raises(ValueError, match="engine_cpu"):
        FaaSExecutor(engine_cpu=value)
    with pytest.raises(ValueError, match="engine_cpu"):
        faasx.Executor(engine_cpu=value, run_dir=run_dir)
    assert not faasx_processes(run_dir)


# ---- the manager on a host without the requested CPU ---------------------------------------------
BOOT_PROBE = """\
import os
if os.environ.get("FAASX_TEST_BOOT_AFFINITY"):
    with open(os.path.join(os.environ["FAASX_TEST_BOOT_AFFINITY"], str(os.getpid())), "w") as f:
        f.write(",".join(map(str, sorted(os.sched_getaffinity(0)))))
"""


@needs_two_cpus
def test_a_manager_given_a_cpu_its_host_does_not_have_uses_its_highest_and_unpins_its_workers(tmp_path):
    """As on a node with fewer CPUs than the client's host.  No interchange answers: the manager waits for
    its registration reply, with its workers already started -- long enough to look at both.  A
    ``sitecustomize`` records each interpreter's CPUs as it starts: the workers' start-up (imports) must not
    run on the engine's CPU either, before their ``--cpus`` takes effect."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]          # nothing listens here
    logdir = str(tmp_path / "logs")
    probe = tmp_path / "probe"
    boot = tmp_path / "boot"
    probe.mkdir()
    boot.mkdir()
    (probe / "sitecustomize.py").write_text(BOOT_PROBE)
    env = dict(os.environ, FAASX_TEST_BOOT_AFFINITY=str(boot),
               PYTHONPATH=os.pathsep.join(filter(None, [str(probe), os.environ.get("PYTHONPATH")])))
    cmd = [sys.executable, "-c", "import sys; from faasx.executor.manager import main; sys.exit(main(sys.argv[2:]))",
           "faasx-manager", "--addresses", "127.0.0.1", "--port", str(port), "--logdir", logdir,
           "--max-workers-per-node", "2", "--heartbeat-period", "1", "--heartbeat-threshold", "30",
           "--engine-cpu", "4095"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    highest = max(ORIGINAL)
    try:
        def workers():
            kids = [c for c in psutil.Process(proc.pid).children() if c.name() == "faasx-worker"]
            return kids if len(kids) == 2 and all(os.sched_getaffinity(c.pid) == ORIGINAL for c in kids) else None
        kids = wait_until(workers, 30, "two workers with the original CPUs")
        for kid in kids:
            assert all(cpus == ORIGINAL for _, cpus in threads(kid.pid).values())
            assert (boot / str(kid.pid)).read_text() == affinity.format_cpus(ORIGINAL), "the worker started pinned"
        seen = wait_until(lambda: (lambda t: t if any(n.startswith("ZMQbg") for n, _ in t.values()) else None)(
            threads(proc.pid)), 10, "the manager's ZeroMQ threads")
        assert all(cpus == {highest} for _, cpus in seen.values()), seen
        log = "".join(open(os.path.join(logdir, f)).read() for f in os.listdir(logdir) if f.startswith("manager_"))
        assert f"manager pinned to CPU {highest}; workers get cpus {affinity.format_cpus(ORIGINAL)}" in log
    finally:
        proc.kill()        # it would wait out its registration first; its workers die with it (PDEATHSIG)
        proc.wait(10)
    wait_until(lambda: not [c for c in psutil.process_iter(["cmdline"])
                            if logdir in " ".join(c.info["cmdline"] or [])], 10, "the workers to exit")
