"""Finding runs: run directories under ./runinfo and the executor log directories inside them."""
from __future__ import annotations

import os
from typing import List, Optional

from faasx.executor.control import CONTROL_DIR, FINAL_STATUS

DEFAULT_ROOT = "runinfo"
_MARKS = (CONTROL_DIR, FINAL_STATUS, "interchange.log", "client.log")


class NoRun(Exception):
    """No run where the user pointed (the message says where we looked).  ``faasx.cli.main`` prints it as
    ``faasx COMMAND: message`` and exits 2."""


def is_logdir(path: str) -> bool:
    """One executor's log directory (``<run_dir>/<label>``)."""
    return any(os.path.exists(os.path.join(path, m)) for m in _MARKS)


def logdirs(run_dir: str) -> List[str]:
    """The executor log directories of ``run_dir`` (itself, if it is one)."""
    if is_logdir(run_dir):
        return [run_dir]
    try:
        entries = sorted(os.scandir(run_dir), key=lambda e: e.name)
    except FileNotFoundError:
        raise NoRun(f"{run_dir} does not exist") from None
    found = [e.path for e in entries if e.is_dir() and is_logdir(e.path)]
    if not found:
        raise NoRun(f"{run_dir} holds no faasx executor's logs (no {', '.join(_MARKS)})")
    return found


def runs(root: str = DEFAULT_ROOT) -> List[str]:
    """Run directories under ``root``, oldest first (by modification time)."""
    try:
        entries = [e for e in os.scandir(root) if e.is_dir()]
    except FileNotFoundError:
        return []
    return [e.path for e in sorted(entries, key=lambda e: e.stat().st_mtime)]


def selected(run_dir: Optional[str]) -> List[str]:
    """The executor log directories a command works on: those of ``run_dir``, or of the newest run."""
    return logdirs(resolve(run_dir))


def resolve(run_dir: Optional[str], root: str = DEFAULT_ROOT) -> str:
    """``run_dir``, or the newest run under ``root`` that has an executor's logs."""
    if run_dir:
        return run_dir
    for candidate in reversed(runs(root)):
        try:
            logdirs(candidate)
        except NoRun:
            continue
        return candidate
    raise NoRun(f"no faasx run under {os.path.abspath(root)}; name a run directory (faasx status RUN_DIR)")
