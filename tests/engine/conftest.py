"""Fixtures for engine tests: real interchange, manager and worker processes on this machine."""
import time

import psutil
import pytest

from tests import support

import faasx

FAST_HEARTBEATS = dict(heartbeat_period=0.5, heartbeat_threshold=3.0)


def faasx_processes(run_dir: str):
    """faasx processes whose command line mentions ``run_dir`` (so parallel runs don't collide)."""
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
        except psutil.Error:
            continue
        if support.is_engine_cmdline(cmd) and run_dir in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


wait_until = support.wait_until   # re-exported: the engine tests import it from here


def descendants_named(root_pid: int, role: str):
    try:
        root = psutil.Process(root_pid)
        children = root.children(recursive=True)
    except psutil.Error:
        return []
    out = []
    for c in children:
        try:
            if role in " ".join(c.cmdline()) and c.status() != psutil.STATUS_ZOMBIE:
                out.append(c)
        except psutil.Error:
            pass
    return out


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    """One shared executor with 2 workers on a local block."""
    run_dir = str(tmp_path_factory.mktemp("engine"))
    executor = faasx.Executor(max_workers_per_node=2, run_dir=run_dir, **FAST_HEARTBEATS)
    yield executor
    executor.shutdown()
    wait_until(lambda: not faasx_processes(run_dir), 10, "the executor's processes to exit")


@pytest.fixture
def run_dir(tmp_path):
    d = str(tmp_path)
    yield d
    left = []
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        left = faasx_processes(d)
        if not left:
            break
        time.sleep(0.1)
    for p in left:
        try:
            p.kill()
        except psutil.Error:
            pass
    assert not left, f"processes left behind: {[p.cmdline() for p in left]}"
