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
(``ShellFunction("echo {name}")(name="x")``); values are shell-quoted.  ``MPIPythonFunction(fn, ...)`` runs
a Python function on every rank and returns the ranks' values.  A plain Python function submitted to an
``MPIExecutor`` runs once, on the first node, with the ``PARSL_*`` variables in its ``os.environ`` -- it
may start ``$PARSL_MPI_PREFIX`` itself with ``subprocess``.
"""
from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from dataclasses import dataclass
from typing import Any, Dict, List, Optional, Tuple

from faasx.executor.mpi import MPI_RESOURCE_KEYS

__all__ = ["ShellFunction", "MPIFunction", "MPIPythonFunction", "ShellResult", "rank_and_size"]


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


# ---- a Python function on every rank ------------------------------------------------------------------
#: the environment variables in which launchers tell a process its rank and the number of ranks
#: (MPICH/hydra and Cray PALS: PMI_*; Open MPI: OMPI_COMM_WORLD_*; srun: SLURM_*; aprun: ALPS_APP_PE)
RANK_VARS = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PALS_RANKID", "SLURM_PROCID", "ALPS_APP_PE")
SIZE_VARS = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_NTASKS")
_CALL_VAR = "FAASX_MPI_CALL"
_MARK = "@faasx-rank-result"
LINE_CHUNK = 3000           # base64 characters per result line
MAX_CALL_BYTES = 96 * 1024   # one environment string may hold 128 KiB (Linux MAX_ARG_STRLEN)


def rank_and_size(environ=os.environ):
    """(rank, number of ranks) of this process as its MPI launcher set them; (0, 1) when none did."""
    rank = next((environ[v] for v in RANK_VARS if environ.get(v)), "0")
    size = next((environ[v] for v in SIZE_VARS if environ.get(v)), os.environ.get("PARSL_NUM_RANKS", "1"))
    return int(rank), int(size)


class MPIPythonFunction:
    """Run a Python function on every rank of an MPI launch; the call returns the ranks' return values.

    ``MPIPythonFunction(fn, num_nodes=2, ranks_per_node=4)`` submitted with ``args`` starts
    ``$PARSL_MPI_PREFIX python -c ...`` on the task's nodes; each rank calls ``fn(*args, **kwargs)``
    (``faasx.mpi.rank_and_size()`` says which rank it is; with ``mpi4py`` installed, ``MPI.COMM_WORLD``
    works inside ``fn``) and the result is the list of return values, rank 0 first.  A rank that raises
    makes the call raise that exception (the lowest such rank's).  The function and arguments travel to
    the ranks in the environment (at most ``MAX_CALL_BYTES`` serialized: pass file paths for big data),
    results on the launcher's stdout, so no shared file system is needed.

    Parameters
    ----------
    fn : callable
        Importable on the nodes, or defined in the script (then sent by value, as for any task).
    python : str
        The interpreter on the nodes (default: the worker's own, ``sys.executable``).
    num_nodes, ranks_per_node, num_ranks, launcher_options :
        The task's MPI resource keys, as for ``MPIFunction``.
    """

    def __init__(self, fn, *, num_nodes: int = 1, ranks_per_node: Optional[int] = None,
                 num_ranks: Optional[int] = None, launcher_options: str = "", python: Optional[str] = None):
        if not callable(fn):
            raise TypeError(f"MPIPythonFunction needs a callable, got {fn!r}")
        self.fn = fn
        self.python = python
        spec = {"num_nodes": num_nodes, "ranks_per_node": ranks_per_node, "num_ranks": num_ranks,
                "launcher_options": launcher_options}
        self.resource_specification = {k: v for k, v in spec.items() if v not in (None, "")}

    def __repr__(self) -> str:
        return f"MPIPythonFunction({getattr(self.fn, '__qualname__', self.fn)!r})"

    def __call__(self, *args: Any, **kwargs: Any) -> list:
        import base64
        import sys

        from faasx.executor.serialization import serialize
        prefix = os.environ.get("PARSL_MPI_PREFIX")
        if not prefix:
            raise RuntimeError(f"{self!r}: PARSL_MPI_PREFIX is not set: submit MPI functions to an executor in "
                               "MPI mode (faasx.MPIExecutor, or faasx.Executor(..., mpi_launcher=...))")
        call = base64.b64encode(serialize((self.fn, args, kwargs), "the MPI function and its arguments")).decode()
        if len(call) > MAX_CALL_BYTES:
            raise ValueError(f"{self!r}: the function and its arguments take {len(call)} bytes serialized, over "
                             f"{MAX_CALL_BYTES}: pass file paths instead of large data")
        python = self.python or sys.executable
        cmd = f"{prefix} {shlex.quote(python)} -c 'import faasx.mpi as m; m._rank_main()'"
        proc = subprocess.run(cmd, shell=True, executable="/bin/bash", stdin=subprocess.DEVNULL, capture_output=True,
                              text=True, errors="replace", env=dict(os.environ, **{_CALL_VAR: call}))
        return _gather(cmd, proc)


def _rank_outcomes(stdout: str) -> Tuple[Dict[int, Tuple[bool, bytes]], List[str]]:
    """{rank: (ok, payload)} of every rank whose result lines all arrived, and the ranks' other output."""
    import base64
    parts: Dict[int, Dict[int, str]] = {}
    counts: Dict[int, int] = {}
    status: Dict[int, bool] = {}
    other = []
    for line in stdout.split("\n"):
        fields = line.split(" ", 5) if line.startswith(_MARK) else []
        if len(fields) == 6:
            rank, seq = int(fields[1]), int(fields[3])
            status[rank], counts[rank] = fields[2] == "ok", int(fields[4])
            parts.setdefault(rank, {})[seq] = fields[5]
        elif line:
            other.append(line)
    outcomes = {r: (status[r], base64.b64decode("".join(p[i] for i in range(counts[r]))))
                for r, p in parts.items() if len(p) == counts[r]}
    return outcomes, other


def _gather(cmd: str, proc: subprocess.CompletedProcess) -> list:
    """The ranks' values in rank order, or the lowest failing rank's exception, from the launcher's stdout."""
    from faasx.executor.serialization import deserialize, deserialize_exception
    outcomes, other = _rank_outcomes(proc.stdout)
    if other:
        print("\n".join(other))     # the ranks' own output: the worker's log (.out)
    failed = sorted(r for r, (ok, _) in outcomes.items() if not ok)
    if failed:
        raise deserialize_exception(outcomes[failed[0]][1])
    ranks = sorted(outcomes)
    if proc.returncode != 0 or not ranks or ranks != list(range(len(ranks))):
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout[-4000:], proc.stderr[-4000:])
    return [deserialize(outcomes[r][1]) for r in ranks]


def _rank_main() -> None:
    """One rank: run the call from the environment, print the outcome as one marked line."""
    import base64
    import sys

    from faasx.executor.serialization import deserialize, serialize, serialize_exception
    rank, _size = rank_and_size()
    try:
        fn, args, kwargs = deserialize(base64.b64decode(os.environ[_CALL_VAR]))
        status, data = "ok", serialize(fn(*args, **kwargs), f"rank {rank}'s return value")
    except BaseException as e:   # the rank reports whatever happened; the launcher's exit code follows
        status, data = "err", serialize_exception(e, f"{os.uname().nodename} rank {rank}")
    # in lines shorter than a pipe's atomic write (PIPE_BUF, 4 KiB): the launcher merges the ranks' output
    # streams and must not cut one rank's line with another's
    text = base64.b64encode(data).decode()
    chunks = [text[i:i + LINE_CHUNK] for i in range(0, len(text), LINE_CHUNK)] or [""]
    sys.stdout.flush()
    for seq, chunk in enumerate(chunks):
        sys.stdout.write(f"{_MARK} {rank} {status} {seq} {len(chunks)} {chunk}\n")
        sys.stdout.flush()
