"""Fixtures for the reliability tests (issue 4): real interchanges, managers and workers; no mocks.

``make_executor``   factory: ``make_executor(**options)`` -> a started ``faasx.Executor`` whose run
                    directory is under ``tmp_path``; at teardown it is shut down with
                    ``cancel_futures=True`` and every process it started (found by its run directory in
                    the command line, plus the interchange's pid) must be gone within seconds -- a
                    leftover fails the test (it is killed first, so the next test starts clean).
``wait_for``        ``wait_for(fn, timeout, what=...)``: poll until ``fn()`` is truthy and return it, or
                    fail saying what was awaited.  Nothing in these tests sleeps and hopes.
``engine_procs``    ``engine_procs(executor, role)`` -> live psutil processes of that executor with
                    ``role`` (``faasx-manager`` / ``faasx-worker``) in their command line.
``start_manager``   ``start_manager(executor, block_id, prefix=(), drop=(), replace={})`` -> Popen of the
                    executor's own launch command (as a block would run it), started by hand; killed at
                    teardown.
``report``          ``report(section, **numbers)``: record measured numbers; at the end of the session
                    they are printed and merged into the JSON file ``$FAASX_RELIABILITY_REPORT`` (default
                    ``/tmp/faasx-reliability-report.json``), the source of docs/reliability.md.

Task functions are defined inside the tests (dill ships local functions by value), so workers need
not import the test modules.
"""
from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import time
from typing import Dict, List, Optional

import psutil
import pytest

_REPORT: Dict[str, dict] = {}


from tests.support import wait_until  # noqa: E402,F401  (re-exported for the tests here)


@pytest.fixture
def report():
    def record(section: str, **numbers):
        _REPORT.setdefault(section, {}).update(numbers)
        print(f"[reliability] {section}: {json.dumps(numbers, default=str)}")
    return record


def pytest_terminal_summary(terminalreporter):
    if not _REPORT:
        return
    path = os.environ.get("FAASX_RELIABILITY_REPORT", "/tmp/faasx-reliability-report.json")
    try:
        old = json.load(open(path)) if os.path.exists(path) else {}
    except ValueError:
        old = {}
    old.update(_REPORT)
    with open(path, "w") as f:
        json.dump(old, f, indent=2, sort_keys=True, default=str)
    terminalreporter.section("faasx reliability measurements")
    for section, numbers in sorted(_REPORT.items()):
        terminalreporter.write_line(f"{section}: {json.dumps(numbers, default=str)}")
    terminalreporter.write_line(f"(written to {path})")


# ---- processes ------------------------------------------------------------------------------------
def _cmdline(p: psutil.Process) -> str:
    try:
        return " ".join(p.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return ""


def _alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def processes_of(run_dir: str, pids=()) -> List[psutil.Process]:
    """Live processes started for the executor whose run directory is ``run_dir`` (managers and
    workers carry it in their command line), plus any of ``pids`` still alive."""
    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        if p.pid in pids or (run_dir in _cmdline(p)):
            if _alive(p):
                found.append(p)
    return found


def engine_procs(executor, role: str) -> List[psutil.Process]:
    return [p for p in processes_of(executor.run_dir) if role in _cmdline(p)]


def kill_all(procs) -> None:
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=5)


def assert_no_leftovers(run_dir: str, pids=(), timeout: float = 15.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    left = processes_of(run_dir, pids)
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = processes_of(run_dir, pids)
    if left:
        desc = [(p.pid, _cmdline(p)[:160]) for p in left]
        kill_all(left)
        pytest.fail(f"processes left behind {what}after {timeout}s: {desc}", pytrace=False)


def shared_executor(tmp_path_factory, name: str, max_payload_size: int):
    """A module's one executor for many small abuse tests (2 workers, fast heartbeats, one retry, a small
    ``max_payload_size``); on teardown nothing of it may be left running.  Use with ``yield from``."""
    import faasx
    run_dir = str(tmp_path_factory.mktemp(name))
    executor = faasx.Executor(max_workers_per_node=2, heartbeat_period=0.5, heartbeat_threshold=5,
                              max_retries_on_system_failure=1, max_payload_size=max_payload_size, run_dir=run_dir)
    ic = executor.executor._client.ic_proc
    yield executor
    executor.shutdown(wait=True, cancel_futures=True)
    assert_no_leftovers(run_dir, {ic.pid}, what=f"by the {name} executor ")


@pytest.fixture
def make_executor(tmp_path):
    import faasx
    made: List = []

    def make(**options):
        options.setdefault("run_dir", str(tmp_path / f"run{len(made)}"))
        ex = faasx.Executor(**options)
        made.append(ex)
        return ex

    yield make
    for ex in made:
        ic = ex.executor._client.ic_proc if ex.executor._client is not None else None
        pids = {ic.pid} if ic is not None else set()
        t0 = time.monotonic()
        ex.shutdown(wait=True, cancel_futures=True)
        took = time.monotonic() - t0
        assert_no_leftovers(ex.run_dir, pids, what=f"by the executor in {ex.run_dir} ")
        assert took < 30, f"shutdown took {took:.1f}s"


@pytest.fixture
def start_manager():
    started: List[subprocess.Popen] = []

    def start(executor, block_id: str, prefix=(), drop=(), replace: Optional[dict] = None,
              log=None) -> subprocess.Popen:
        """Run the executor's launch command for ``block_id``; ``drop`` removes options (with their
        value), ``replace`` overrides option values, ``prefix`` goes before it (``ip netns exec NS``)."""
        argv = shlex.split(executor.executor._get_launch_command(block_id))
        for opt in drop:
            if opt in argv:
                i = argv.index(opt)
                del argv[i:i + 2]
        for opt, value in (replace or {}).items():
            if opt in argv:
                argv[argv.index(opt) + 1] = str(value)
            else:
                argv += [opt, str(value)]
        out = open(log, "ab") if log else subprocess.DEVNULL
        proc = subprocess.Popen(list(prefix) + argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass


def stats(executor) -> dict:
    return executor.executor.interchange_stats()


def log_text(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def interchange_log(executor) -> str:
    return log_text(os.path.join(executor.executor.logdir, "interchange.log"))
