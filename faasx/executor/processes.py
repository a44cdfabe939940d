"""How faasx starts its own processes so that each is recognisable and dies with its parent.

Every process faasx starts carries its role (``faasx-interchange``, ``faasx-manager``,
``faasx-worker``) in its command line, so ``ps``/``pgrep -f`` find it whether or not the console
scripts are on PATH, and sets its kernel name (``/proc/PID/comm``, what plain ``pgrep`` and ``top``
show) to the same role.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from typing import List

_PR_SET_PDEATHSIG = 1
_PR_SET_NAME = 15

try:
    _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
except OSError:  # pragma: no cover - non-glibc platforms
    _libc = None


def command(role: str, module: str) -> List[str]:
    """argv that runs ``module.main()`` under this interpreter, with ``role`` in the command line."""
    boot = f"import sys; from {module} import main; sys.exit(main(sys.argv[2:]))"
    return [sys.executable, "-c", boot, role]


def manager_program(on_this_host: bool) -> List[str]:
    """The program part of a block's launch command.

    A block on this host (a ``LocalProvider`` block) runs the manager under the client's own
    interpreter, so ``/path/to/venv/bin/python script.py`` works without an activated venv (the same
    as ``ProcessPoolExecutor``).  A batch job runs on another node, where this interpreter's path may
    not exist: there the job's ``PATH`` after ``worker_init`` chooses it, through the
    ``faasx-manager`` console script of the environment ``worker_init`` activates.
    """
    if on_this_host:
        return command("faasx-manager", "faasx.executor.manager")
    return ["faasx-manager"]


def set_process_name(role: str) -> None:
    if _libc is not None and sys.platform.startswith("linux"):
        _libc.prctl(_PR_SET_NAME, role.encode()[:15], 0, 0, 0)


def die_with_parent(expected_parent: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to signal us when our parent exits; exit now if it already has."""
    if _libc is not None and sys.platform.startswith("linux"):
        _libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != expected_parent:
        os._exit(0)
