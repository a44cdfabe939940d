"""What of the user's code reaches a node, and the error a worker gives when a module does not.

A task's function and arguments are pickled.  What is defined in the script itself (``__main__``)
travels by value: its code is in the pickle.  Everything else -- ``from helpers import square`` next
to the script, a package of the user's -- travels by reference (``helpers.square``), and the worker
imports it on its node.  The manager puts the submitting script's directory first on its workers'
``PYTHONPATH`` when that directory exists on the node (always on a local block; on a cluster when it is
on a file system the nodes share) and tells them the directory (``FAASX_SCRIPT_DIR``).

When the import fails while a worker loads a task's function or arguments, a bare ``No module named
'helpers'`` says neither where nor why.  ``explain_missing_module`` turns it into a ``ModuleNotFoundError``
(same type, same ``name``) that names the module, the node, whether the script's directory is there,
and the fixes.  A ``ModuleNotFoundError`` raised by the function itself, while it runs, is the
function's own exception and is left as it is.
"""
from __future__ import annotations

import os

SCRIPT_DIR_VAR = "FAASX_SCRIPT_DIR"


def explain_missing_module(error: ModuleNotFoundError, tid: int, host: str) -> ModuleNotFoundError:
    """The error to raise when loading task ``tid``'s function or arguments on ``host`` failed with ``error``."""
    if not error.name:
        return error
    explained = ModuleNotFoundError(missing_module_message(error.name, tid, host), name=error.name)
    explained.__cause__ = error
    return explained


def missing_module_message(module: str, tid: int, host: str) -> str:
    script_dir = os.environ.get(SCRIPT_DIR_VAR)
    if not script_dir:
        where = "the script's directory is not known (an interactive session or a notebook)"
    elif os.path.isdir(script_dir):
        where = f"the script's directory {script_dir} is on this node and on the workers' path, but has no such module"
    else:
        where = (f"the script's directory {script_dir} does not exist on this node (it is not on a file system "
                 "the nodes share)")
    return (f"task {tid}: No module named {module!r} on node {host}. The task's function or arguments refer to "
            f"{module!r} by name (only what is defined in the script itself travels by value), so the worker must "
            f"import it there, and {where}. Fix: keep the script and its modules on a file system the nodes "
            "share (home, project or scratch), install the module in the nodes' environment (worker_init), or "
            "define the function in the script itself")
