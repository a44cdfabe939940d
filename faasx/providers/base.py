"""Helpers shared by faasx's batch-scheduler providers.

Parsl's providers run scheduler commands through ``parsl.utils.execute_wait``, which leaves a hung
command running after its timeout, turns a missing ``sbatch`` into an opaque exit code 127, and lets one
failed ``squeue`` call either crash or silently freeze a provider.  The helpers here fix that once for
every faasx provider.  Their names are stable (other providers import them):

``CommandResult(retcode, stdout, stderr)``
    What a finished command printed.
``SchedulerCommandError`` / ``CommandNotFound`` / ``CommandTimeout``
    Raised by :func:`run_command` when a command cannot be started or does not finish in time.
    ``CommandNotFound``'s message says which scheduler the command belongs to
    ("sbatch not found on PATH: is this a Slurm login node? ...").
``run_command(argv, timeout, *, bin_dir=None, env=None, input=None, scheduler=None) -> CommandResult``
    Runs ``argv`` (a list, no shell) with a hard timeout that kills the command's whole process group.
    ``bin_dir`` (a directory) is searched instead of ``PATH`` for ``argv[0]``; ``scheduler`` names the
    scheduler in the "not found" hint (guessed from the command name when omitted).
``submit_command(provider, argv, timeout, job_name, *, bin_dir=None, env=None, input=None, scheduler=None)``
    For submissions: like ``run_command`` but every failure -- missing command, timeout, non-zero exit --
    becomes ``faasx.errors.ScaleOutFailed`` carrying the scheduler's own stdout/stderr and exit code.
``status_command(argv, timeout, *, tries=3, backoff=0.5, accept=None, bin_dir=None, env=None, scheduler=None)``
    For status queries: retries a failing command a few times with a short backoff and returns the first
    accepted ``CommandResult``, or ``None`` after logging why.  It never raises: callers keep their last
    known job states when it returns ``None``.
``walltime_to_seconds(walltime) -> int``
    ``"HH:MM:SS"`` or ``"D-HH:MM:SS"`` to seconds; ``ValueError`` with a clear message otherwise.
``job_environment(walltime_seconds, job_id_var=None, cores=None, mem_gb=None) -> str``
    The ``export`` lines every faasx job script runs before its launcher command: the walltime contract
    with the engine (``FAASX_WALLTIME_END``, epoch seconds at which the scheduler will end the job,
    computed when the script starts), ``FAASX_BLOCK_JOB_ID`` from the scheduler's job-id variable, and
    Parsl's ``PARSL_CORES`` / ``PARSL_MEMORY_GB`` when known.
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Callable, Mapping, NamedTuple, Optional, Sequence

from parsl.providers.errors import ExecutionProviderException

from faasx.errors import FaaSXError

logger = logging.getLogger(__name__)

__all__ = [
    "CommandResult", "SchedulerCommandError", "CommandNotFound", "CommandTimeout",
    "run_command", "submit_command", "status_command", "walltime_to_seconds", "job_environment",
]

# Which scheduler a command belongs to, for the "not found" hint.
_SCHEDULER_OF = {
    "sbatch": "Slurm", "squeue": "Slurm", "scancel": "Slurm", "sacct": "Slurm", "scontrol": "Slurm",
    "srun": "Slurm", "sinfo": "Slurm",
    "qsub": "PBS", "qstat": "PBS", "qdel": "PBS",
}


class CommandResult(NamedTuple):
    retcode: int
    stdout: str
    stderr: str


class SchedulerCommandError(ExecutionProviderException, FaaSXError):
    """A scheduler command could not be run to completion (not installed, or timed out)."""

    def __init__(self, command: str, message: str):
        self.command = command
        self.message = message
        super().__init__(message)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):
        return (type(self), (self.command, self.message))


class CommandNotFound(SchedulerCommandError, FileNotFoundError):
    """The scheduler command is not installed where we looked (``PATH`` or the provider's ``bin_dir``)."""


class CommandTimeout(SchedulerCommandError, TimeoutError):
    """The scheduler command did not finish within the provider's ``cmd_timeout``; it was killed."""


def _not_found_message(name: str, bin_dir: Optional[str], scheduler: Optional[str]) -> str:
    where = f"in {bin_dir}" if bin_dir else "on PATH"
    scheduler = scheduler or _SCHEDULER_OF.get(os.path.basename(name))
    hint = (f"is this a {scheduler} login node? Run faasx where the {scheduler} commands work, "
            f"or load the module that provides them (e.g. 'module load {scheduler.lower()}')"
            if scheduler else "install it or fix PATH")
    return f"{name} not found {where}: {hint}."


def _resolve(name: str, bin_dir: Optional[str], scheduler: Optional[str]) -> str:
    if os.sep in name:
        # An explicit path: take it as given, but say clearly when it is not there.
        if os.access(name, os.X_OK) and not os.path.isdir(name):
            return name
        raise CommandNotFound(name, f"{name} not found or not executable: check the provider's command path.")
    path = shutil.which(name, path=bin_dir) if bin_dir else shutil.which(name)
    if path is None:
        raise CommandNotFound(name, _not_found_message(name, bin_dir, scheduler))
    return path


def run_command(argv: Sequence[str], timeout: float, *, bin_dir: Optional[str] = None,
                env: Optional[Mapping[str, str]] = None, input: Optional[str] = None,
                scheduler: Optional[str] = None) -> CommandResult:
    """Run a scheduler command and return what it printed.

    Parameters
    ----------
    argv : list of str
        The command and its arguments; no shell is involved, so job ids and paths need no quoting.
    timeout : float
        Seconds to wait.  On expiry the command's process group is killed (a hung ``squeue`` must not
        linger, unlike with ``subprocess``'s own timeout) and ``CommandTimeout`` is raised.
    bin_dir : str, optional
        Directory to find ``argv[0]`` in instead of ``PATH``.
    env : mapping, optional
        Extra environment variables for the command.
    input : str, optional
        Text sent to the command's stdin.
    scheduler : str, optional
        Scheduler name for the "not found" hint ("Cobalt"); guessed from the command name if omitted.

    Raises ``CommandNotFound`` or ``CommandTimeout``; a non-zero exit is *not* an error here.
    """
    argv = [str(a) for a in argv]
    exe = _resolve(argv[0], bin_dir, scheduler)
    full_env = None
    if env:
        full_env = dict(os.environ)
        full_env.update(env)
    logger.debug("running %s (timeout %ss)", " ".join(argv), timeout)
    try:
        proc = subprocess.Popen([exe] + argv[1:], stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=full_env,
                                start_new_session=True, text=True)
    except FileNotFoundError as e:  # vanished between which() and exec, or a broken #! line
        raise CommandNotFound(argv[0], f"{argv[0]} could not be started: {e}") from e
    try:
        stdout, stderr = proc.communicate(input=input, timeout=timeout)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.communicate()
        raise CommandTimeout(argv[0], f"'{' '.join(argv)}' did not finish within {timeout} s and was killed: "
                             "the scheduler may be overloaded; raise the provider's cmd_timeout if this persists.")
    return CommandResult(proc.returncode, stdout, stderr)


def submit_command(provider: str, argv: Sequence[str], timeout: float, job_name: str, *,
                   bin_dir: Optional[str] = None, env: Optional[Mapping[str, str]] = None,
                   input: Optional[str] = None, scheduler: Optional[str] = None) -> CommandResult:
    """Run a submission command; any failure becomes ``faasx.errors.ScaleOutFailed``.

    ``provider`` is the provider's label (e.g. ``"slurm"``), ``job_name`` the block's job name; both appear
    in the error.  A non-zero exit carries the scheduler's stdout, stderr and exit code, which say why.
    """
    from faasx.errors import ScaleOutFailed
    try:
        result = run_command(argv, timeout, bin_dir=bin_dir, env=env, input=input, scheduler=scheduler)
    except SchedulerCommandError as e:
        raise ScaleOutFailed(provider, str(e), job_name=job_name) from e
    if result.retcode != 0:
        name = os.path.basename(str(argv[0]))
        raise ScaleOutFailed(provider, f"{name} rejected the job", stdout=result.stdout, stderr=result.stderr,
                             retcode=result.retcode, job_name=job_name)
    return result


def status_command(argv: Sequence[str], timeout: float, *, tries: int = 3, backoff: float = 0.5,
                   accept: Optional[Callable[[CommandResult], bool]] = None, bin_dir: Optional[str] = None,
                   env: Optional[Mapping[str, str]] = None,
                   scheduler: Optional[str] = None) -> Optional[CommandResult]:
    """Run a status command, retrying transient failures; ``None`` (logged) if every try failed.

    ``accept(result)`` decides whether a result is usable (default: exit code 0); schedulers that exit
    non-zero for "unknown job" pass their own.  A timeout or a rejected result is retried up to ``tries``
    times, sleeping ``backoff``, ``2*backoff``, ... in between.  A missing command is not retried.
    """
    accept = accept or (lambda r: r.retcode == 0)
    last = "no attempt made"
    for attempt in range(1, max(1, tries) + 1):
        try:
            result = run_command(argv, timeout, bin_dir=bin_dir, env=env, scheduler=scheduler)
        except CommandNotFound as e:
            logger.error("status query failed: %s", e)
            return None
        except CommandTimeout as e:
            last = str(e)
        else:
            if accept(result):
                if attempt > 1:
                    logger.info("%s succeeded on try %d", argv[0], attempt)
                return result
            last = f"exit code {result.retcode}, stderr: {result.stderr.strip()!r}"
        if attempt < tries:
            logger.debug("%s failed (%s); retrying", argv[0], last)
            time.sleep(backoff * attempt)
    logger.warning("%s failed %d times (last: %s); keeping the last known job states", argv[0], tries, last)
    return None


_WALLTIME = re.compile(r"^(?:(\d+)-)?(\d+):(\d{1,2}):(\d{1,2})$")


def walltime_to_seconds(walltime: str) -> int:
    """``"HH:MM:SS"`` (hours may exceed 24) or ``"D-HH:MM:SS"`` to seconds."""
    m = _WALLTIME.match(str(walltime).strip())
    if not m:
        raise ValueError(f"walltime {walltime!r} is not in HH:MM:SS (or D-HH:MM:SS) form, e.g. '01:30:00'")
    days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
    if minutes >= 60 or seconds >= 60:
        raise ValueError(f"walltime {walltime!r}: minutes and seconds must be below 60")
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def job_environment(walltime_seconds: int, job_id_var: Optional[str] = None, cores: Optional[int] = None,
                    mem_gb: Optional[float] = None) -> str:
    """Shell lines exporting the faasx job contract; see the module docstring."""
    lines = [
        "# faasx: when the scheduler will end this block (epoch s), so managers drain in time",
        f"export FAASX_WALLTIME_END=$(( $(date +%s) + {int(walltime_seconds)} ))",
    ]
    if job_id_var:
        lines.append(f'export FAASX_BLOCK_JOB_ID="${{{job_id_var}:-}}"')
    if cores is not None:
        lines.append(f"export PARSL_CORES={cores}")
    if mem_gb is not None:
        lines.append(f"export PARSL_MEMORY_GB={mem_gb}")
    return "\n".join(lines) + "\n"
