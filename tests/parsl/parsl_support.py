"""Helpers for the Parsl-integration tests: real DFKs over real faasx processes.

(A plain module, not conftest.py: several test folders have a conftest.py, and importing helpers
"from conftest" would depend on which of them pytest imported last.)

``load_dfk(run_dir, executor, **config)``  parsl.load() a Config around one FaaSExecutor, with this
                    directory on the workers' PYTHONPATH (through the provider's ``worker_init``, as a
                    Parsl user makes their modules importable on workers), so functions defined in these
                    test modules -- which dill pickles by reference, exactly as with HTEX -- import there.
``unload_dfk(dfk)``  cleanup() + parsl.clear(), then assert every faasx process of that run is gone.
``faasx_processes(run_dir=None, pids=())``  {pid: cmdline} of live faasx processes (``pgrep -f faasx-``)
                    that belong to this run: a recorded pid, or the run directory in the command line.
``run_processes(executor)``  {pid: cmdline} of the faasx processes this test process started
                    (interchange, block managers, workers), found through the process tree.
``wait_until(pred, timeout, what)``  poll ``pred`` until truthy or fail at the deadline.
"""
from __future__ import annotations

import os
import subprocess
from typing import Dict, Iterable, Optional

import psutil

import parsl

from tests import support

HERE = os.path.dirname(os.path.abspath(__file__))


wait_until = support.wait_until   # re-exported: the Parsl tests import it from here


def faasx_processes(run_dir: Optional[str] = None, pids: Iterable[int] = ()) -> Dict[int, str]:
    """Live faasx engine processes (``pgrep -f`` on the roles) that belong to this run."""
    out = subprocess.run(["pgrep", "-af", "faasx-(interchange|manager|worker)"], capture_output=True, text=True, timeout=10).stdout
    wanted = set(pids)
    found = {}
    for line in out.splitlines():
        pid_text, _, cmdline = line.partition(" ")
        pid = int(pid_text)
        if pid == os.getpid() or not support.alive(pid):
            continue
        if pid in wanted or (run_dir and run_dir in cmdline):
            found[pid] = cmdline
    return found


def run_processes(executor=None) -> Dict[int, str]:
    """The faasx processes below this test process (interchange, managers, workers)."""
    found = {}
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
            name = p.name()
        except psutil.Error:
            continue
        if support.is_engine_cmdline(cmd) or support.is_engine_cmdline(name):
            found[p.pid] = cmd or name
    if executor is not None and executor._client is not None and executor._client.ic_proc is not None:
        ic = executor._client.ic_proc
        if ic.poll() is None:
            found.setdefault(ic.pid, "faasx-interchange")
    return found


def pythonpath_init() -> str:
    return f'export PYTHONPATH="{HERE}${{PYTHONPATH:+:$PYTHONPATH}}"'


def load_dfk(run_dir: str, executor, **config):
    config.setdefault("strategy_period", 0.5)
    dfk = parsl.load(parsl.Config(executors=[executor], run_dir=run_dir, **config))
    return dfk


def unload_dfk(dfk, run_dir: str, timeout: float = 20.0) -> None:
    """Clean up the DFK and prove no faasx process of this run is left."""
    seen = {}
    for ex in dfk.executors.values():
        if hasattr(ex, "_client"):
            seen.update(run_processes(ex))
    try:
        dfk.cleanup()
    finally:
        parsl.clear()
    wait_until(lambda: not faasx_processes(run_dir, seen), timeout,
               lambda: f"the run's faasx processes to exit after DFK cleanup: {faasx_processes(run_dir, seen)}")
