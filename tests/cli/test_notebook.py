"""examples/quickstart.ipynb executed by a real Jupyter kernel (nbclient + ipykernel), and a kernel restarted
in the middle of a run: the executor's processes must not outlive the kernel (checked with psutil)."""
from __future__ import annotations

import os
import re
import time

import nbformat
import psutil
import pytest
from nbclient import NotebookClient

from tests import support

from .conftest import ROOT

NOTEBOOK = os.path.join(ROOT, "examples", "quickstart.ipynb")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


def text_of(cell) -> str:
    parts = []
    for out in cell.outputs:
        if out.output_type == "stream":
            parts.append(out.text)
        elif out.output_type in ("execute_result", "display_data"):
            parts.append(out.data.get("text/plain", ""))
        elif out.output_type == "error":
            parts.append(ANSI.sub("", "\n".join(out.traceback)))
    return "".join(parts)


def cell(nb, needle: str):
    return next(c for c in nb.cells if c.cell_type == "code" and needle in c.source)


def faasx_descendants(pid: int):
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    found = []
    for p in children:
        try:
            if support.is_engine_cmdline(" ".join(p.cmdline())):
                found.append(p)
        except psutil.Error:
            pass
    return found


def gone(procs):
    def check():
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p.pid)
            except psutil.NoSuchProcess:
                pass
        return not alive
    return check


def test_the_quickstart_notebook_runs_in_a_real_kernel(tmp_path):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, timeout=180, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert text_of(cell(nb, "ex = faasx.Executor")) == "1024"
    assert text_of(cell(nb, "def simulate")) == "True"
    assert text_of(cell(nb, "class Particle")) == "9.0\n16.0\n"       # a class and a lambda from cells
    assert text_of(cell(nb, "register_function")).endswith(" True\n")
    error = cell(nb, "def divide")
    [err] = [o for o in error.outputs if o.output_type == "error"]
    assert err.ename == "ZeroDivisionError"
    shown = text_of(error)
    assert "Remote traceback (faasx worker" in shown and "return a / b" in shown, shown
    bar = text_of(cell(nb, "faasx.progress(futures"))
    assert "200/200" in bar and "done=200 failed=0" in bar and "task/s" in bar, bar
    mapped = text_of(cell(nb, "progress=True"))
    assert "2000/2000" in mapped and "done=2000 failed=0" in mapped, mapped
    status = text_of(cell(nb, "faasx status"))
    # tasks, not calls: 5 single calls + 200 submits + 20 map chunks done, the division failed
    assert ": live, up" in status and "done 225" in status and "failed 1" in status, status
    assert "ZeroDivisionError: division by zero" in status
    runs = os.listdir(tmp_path / "runinfo")
    assert len(runs) == 1 and os.path.exists(tmp_path / "runinfo" / runs[0] / "faasx" / "status.json")


@pytest.mark.parametrize("how", ["restart", "kill"])
def test_a_kernel_restarted_mid_run_takes_the_executors_processes_with_it(tmp_path, how):
    """``restart``: Jupyter's restart (a shutdown request, the kernel exits, faasx's atexit hook stops the
    engine).  ``kill``: the kernel is killed outright; the interchange sees its link close at once and the
    managers give up on it after heartbeat_threshold."""
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(
        "import time, faasx\n"
        "ex = faasx.Executor(max_workers_per_node=2, heartbeat_period=0.5, heartbeat_threshold=3.0)\n"
        "futures = [ex.submit(time.sleep, 60) for _ in range(4)]\n"
        "deadline = time.monotonic() + 60\n"
        "while sum(m['tasks'] for m in ex.executor.connected_managers()) < 4 and time.monotonic() < deadline:\n"
        "    time.sleep(0.05)\n"
        "print('running', sum(m['tasks'] for m in ex.executor.connected_managers()))")]
    client = NotebookClient(nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    from jupyter_core.utils import run_sync
    with client.setup_kernel():
        client.execute_cell(nb.cells[0], 0)
        assert text_of(nb.cells[0]) == "running 4\n"
        kernel_pid = client.km.provisioner.process.pid
        procs = faasx_descendants(kernel_pid)
        roles = sorted(r for p in procs for r in ("faasx-interchange", "faasx-manager", "faasx-worker")
                       if r in " ".join(p.cmdline()))
        assert roles == ["faasx-interchange", "faasx-manager", "faasx-worker", "faasx-worker"], roles
        t0 = time.monotonic()
        run_sync(client.km.restart_kernel)(now=(how == "kill"))
        support.wait_until(gone(procs), 20, "the executor's processes to exit with the kernel", interval=0.1)
        took = time.monotonic() - t0
        assert not psutil.pid_exists(kernel_pid) or psutil.Process(kernel_pid).status() == psutil.STATUS_ZOMBIE
        assert client.km.provisioner.process.pid != kernel_pid                # a new kernel is up
    print(f"{how}: the executor's processes were gone {took:.1f}s after the restart began")
