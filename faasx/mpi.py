"""Shell commands and MPI applications as faasx functions (after Globus Compute's ``ShellFunction`` /
``MPIFunction``).

``ShellFunction(cmd)`` is a callable that runs ``cmd`` in ``bash`` on a worker and returns a
``ShellResult`` (return code, stdout, stderr): a failing command is a result, not an exception, so its
output is never lost.  ``MPIFunction(cmd, num_nodes=..., ranks_per_node=...)`` runs
``$PARSL_MPI_PREFIX cmd`` on the nodes an ``MPIExecutor`` block gives the task::

    import faasx
    from faasx.mpi import MPIFunction
    from faasx.providers import SlurmProvider
    from faasx.launchers import SimpleLauncher

    with faasx.Executor(SlurmProvider(nodes_per_block=2, launcher=SimpleLauncher()),
                        mpi_launcher="srun", max_workers_per_block=2) as ex:
        r = ex.submit(MPIFunction("./allreduce", num_nodes=2, ranks_per_node=2)).result()
        print(r.returncode, r.stdout)

The command is a ``str.format`` template filled from the call's keyword arguments
(``ShellFunction("echo {name}")(name="x")``); values are shell-quoted.  A Python function runs under MPI
the same way (``MPIFunction("python3 my_rank_code.py")``, with ``mpi4py`` in the script); a plain Python
function submitted to an ``MPIExecutor`` runs once, on the first node, with the ``PARSL_*`` variables in
its ``os.environ`` -- it may start ``$PARSL_MPI_PREFIX`` itself with ``subprocess``.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, Optional

from faasx.executor.mpi import MPI_RESOURCE_KEYS

__all__ = ["ShellFunction", "MPIFunction", "ShellResult"]


@dataclass(frozen=True)
class ShellResult:
    """What a shell command did: its return code and the tail of its output (``snippet_lines`` lines)."""
    cmd: str
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> "ShellResult":
        """Raise ``subprocess.CalledProcessError`` unless the command succeeded; returns self."""
        if self.returncode != 0:
            raise subprocess.CalledProcessError(self.returncode, self.cmd, self.stdout, self.stderr)
        return self


def _tail(text: str, lines: int) -> str:
    if lines <= 0:
        return ""
    return "\n".join(text.splitlines()[-lines:]) + ("\n" if text.endswith("\n") and lines else "")


def _kill_tree(proc: subprocess.Popen) -> None:
    """Kill the shell and everything it started (mpiexec and its local ranks)."""
    import psutil
    try:
        children = psutil.Process(proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        children = []
    for p in [*children]:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()
    proc.kill()


class ShellFunction:
    """Run a shell command on a worker; call it (or submit it) like a function.

    Parameters
    ----------
    cmd : str
        A ``bash`` command; ``{name}`` fields are filled from the call's keyword arguments (shell-quoted).
    walltime : float or None
        Seconds the command may run; then it is killed and the result's return code is 124 (as
        ``timeout(1)``), with what it printed so far.
    snippet_lines : int
        How many trailing lines of stdout and of stderr the result keeps (the full output may be huge).
    cwd : str or None
        Directory to run in (default: the worker's).
    """

    prefix = ""

    def __init__(self, cmd: str, *, walltime: Optional[float] = None, snippet_lines: int = 1000,
                 cwd: Optional[str] = None):
        if not isinstance(cmd, str) or not cmd.strip():
            raise ValueError("cmd must be a non-empty shell command")
        self.cmd = cmd
        self.walltime = walltime
        self.snippet_lines = snippet_lines
        self.cwd = cwd
        self.resource_specification: Optional[Dict[str, Any]] = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.cmd!r})"

    def command(self, **kwargs: Any) -> str:
        """The command line this call runs (with the prefix, before the shell expands variables)."""
        body = self.cmd.format(**{k: shlex.quote(str(v)) for k, v in kwargs.items()}) if kwargs else self.cmd
        return f"{self.prefix} {body}" if self.prefix else body

    def __call__(self, **kwargs: Any) -> ShellResult:
        cmd = self.command(**kwargs)
        # in the worker's process group: a worker stopped by its manager takes the command with it
        proc = subprocess.Popen(cmd, shell=True, executable="/bin/bash", cwd=self.cwd, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, errors="replace")
        try:
            out, err = proc.communicate(timeout=self.walltime)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            _kill_tree(proc)
            out, err = proc.communicate()
            code = 124
        return ShellResult(cmd, code, _tail(out, self.snippet_lines), _tail(err, self.snippet_lines))


class MPIFunction(ShellFunction):
    """A ``ShellFunction`` started with ``$PARSL_MPI_PREFIX`` on the nodes of an ``MPIExecutor`` block.

    The resource keys are Parsl's (``num_nodes``, ``ranks_per_node``, ``num_ranks``, ``launcher_options``)
    and travel with the function: ``ex.submit(MPIFunction("./app", num_nodes=2, ranks_per_node=4))``.
    Submitted to an executor that is not in MPI mode it fails: the prefix would be empty.
    """

    prefix = "$PARSL_MPI_PREFIX"

    def __init__(self, cmd: str, *, num_nodes: int = 1, ranks_per_node: Optional[int] = None,
                 num_ranks: Optional[int] = None, launcher_options: str = "", **options: Any):
        super().__init__(cmd, **options)
        spec = {"num_nodes": num_nodes, "ranks_per_node": ranks_per_node, "num_ranks": num_ranks,
                "launcher_options": launcher_options}
        self.resource_specification = {k: v for k, v in spec.items() if k in MPI_RESOURCE_KEYS and v not in (None, "")}

    def __call__(self, **kwargs: Any) -> ShellResult:
        if not os.environ.get("PARSL_MPI_PREFIX"):
            raise RuntimeError(f"{self!r}: PARSL_MPI_PREFIX is not set: submit MPI functions to an executor in "
                               "MPI mode (faasx.MPIExecutor, or faasx.Executor(..., mpi_launcher=...))")
        return super().__call__(**kwargs)
