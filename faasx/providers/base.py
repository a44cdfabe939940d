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
``BatchProvider``
    Base class (Parsl's ``ClusterProvider`` + ``RepresentationMixin``) with the bookkeeping every
    batch provider shares: submit-script paths, job tracking in ``self.resources``, a ``status()`` that
    never raises and keeps the last known states when the scheduler does not answer, and a ``cancel()``
    that reports per job whether it is gone.  Subclasses implement ``_query_status(job_ids)`` and
    ``_cancel_argv(job_ids)``; see its docstring.
"""
from __future__ import annotations

import itertools
import logging
import os
import re
import shutil
import signal
import subprocess
import time
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence

from parsl.jobs.states import JobState, JobStatus
from parsl.providers.cluster_provider import ClusterProvider
from parsl.providers.errors import ExecutionProviderException
from parsl.utils import RepresentationMixin

from faasx.errors import FaaSXError
from faasx.executor.security import open_private, private_dir, private_file

logger = logging.getLogger(__name__)

__all__ = [
    "CommandResult", "SchedulerCommandError", "CommandNotFound", "CommandTimeout",
    "run_command", "submit_command", "status_command", "walltime_to_seconds", "job_environment",
    "format_walltime", "BatchProvider",
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


def format_walltime(seconds: int) -> str:
    """Seconds to ``HH:MM:SS`` (hours may exceed 24), the form Slurm and PBS both accept."""
    seconds = int(seconds)
    return f"{seconds // 3600:02d}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class BatchProvider(ClusterProvider, RepresentationMixin):
    """What faasx's batch-scheduler providers share (subclass it; it is not a provider by itself).

    Subclasses set the class attributes ``scheduler`` (``"Slurm"``) and ``job_id_var``
    (``"SLURM_JOB_ID"``), call ``__init__`` with Parsl's ``ClusterProvider`` arguments plus ``bin_dir``,
    and implement:

    ``_query_status(job_ids) -> dict | None``
        Ask the scheduler about these (non-terminal) jobs: a ``JobStatus`` per job it knows, or ``None``
        when it could not be asked (use :func:`status_command`).  Jobs it does not know any more are
        reported by ``_vanished_status`` (``COMPLETED`` with a message saying so).
    ``_cancel_argv(job_ids) -> list``
        The cancel command for these jobs.

    Helpers for the subclass: ``_run`` / ``_submit`` / ``_ask`` (run_command / submit_command /
    status_command with the provider's timeout, ``bin_dir`` and scheduler name), ``_new_job_files``,
    ``_write_script``, ``_assemble_script`` (directives, ``scheduler_options``, the faasx contract,
    ``worker_init``, launcher -- in that order) and ``_track``.  Each provider also offers a public
    ``submit_script(command, tasks_per_node=1, job_name=...)`` returning the exact script ``submit``
    would write, for tests of site configurations.

    ``self.resources`` maps job id to ``{'job_id', 'status', 'job_stdout_path', 'job_stderr_path'}`` as
    in Parsl, so Parsl's executors see the same structure.
    """

    scheduler = "batch"
    job_id_var: Optional[str] = None
    status_tries = 3
    status_backoff = 0.5
    _counter = itertools.count()

    def __init__(self, label, nodes_per_block, init_blocks, min_blocks, max_blocks, parallelism, walltime,
                 launcher, cmd_timeout, bin_dir):
        super().__init__(label, nodes_per_block, init_blocks, min_blocks, max_blocks, parallelism, walltime,
                         launcher, cmd_timeout=cmd_timeout)
        # Validate now: a typo in walltime should fail when the config is built, not at the first block.
        self.walltime_seconds = walltime_to_seconds(walltime)
        self.bin_dir = bin_dir
        # Parsl's ExecutionProvider contract: these exist (None = not requested) on every provider.
        if not hasattr(self, "cores_per_node"):
            self.cores_per_node = None
        if not hasattr(self, "mem_per_node"):
            self.mem_per_node = None

    # -- commands ---------------------------------------------------------------------------------
    def _run(self, argv, **kw) -> CommandResult:
        return run_command(argv, self.cmd_timeout, bin_dir=self.bin_dir, scheduler=self.scheduler, **kw)

    def _submit(self, argv, job_name: str, **kw) -> CommandResult:
        return submit_command(type(self).__name__, argv, self.cmd_timeout, job_name, bin_dir=self.bin_dir,
                              scheduler=self.scheduler, **kw)

    def _ask(self, argv, accept=None) -> Optional[CommandResult]:
        return status_command(argv, self.cmd_timeout, tries=self.status_tries, backoff=self.status_backoff,
                              accept=accept, bin_dir=self.bin_dir, scheduler=self.scheduler)

    # -- submit-side helpers ----------------------------------------------------------------------
    def _new_job_files(self, job_name: str):
        """A unique job name and the absolute paths of its script, stdout and stderr files."""
        if not self.script_dir:
            # Standalone use (no executor set script_dir): the current directory is usually on the
            # shared file system that compute nodes write their output to; /tmp often is not.
            self.script_dir = os.path.abspath(os.path.join("runinfo", "faasx_submit_scripts"))
        private_dir(self.script_dir)
        name = f"{job_name}.{time.time():.3f}.{next(self._counter)}"
        base = os.path.abspath(os.path.join(self.script_dir, name))
        # the job's output files exist, 0600, before the scheduler opens them (it keeps an existing mode)
        for path in (base + ".stdout", base + ".stderr"):
            private_file(path)
        return name, base + ".submit", base + ".stdout", base + ".stderr"

    def _write_script(self, path: str, text: str, job_name: str) -> None:
        from faasx.errors import ScaleOutFailed
        try:
            with open_private(path, "w") as f:
                f.write(text)
        except OSError as e:
            raise ScaleOutFailed(type(self).__name__, f"cannot write the submit script {path}: {e}",
                                 job_name=job_name) from e

    def _assemble_script(self, directives: List[str], command: str, tasks_per_node: int, job_name: str,
                         cores=None, mem_gb=None) -> str:
        """Directives, the user's scheduler_options, the faasx contract, worker_init, the launcher."""
        parts = ["#!/bin/bash", *directives]
        if self.scheduler_options.strip():  # last, so they override ours where the scheduler takes the last
            parts.append(self.scheduler_options.strip())
        # First thing the job runs: the end time must not drift by worker_init's duration.
        parts += ["", job_environment(self.walltime_seconds, self.job_id_var, cores=cores, mem_gb=mem_gb).rstrip()]
        if self.worker_init.strip():
            parts += ["", self.worker_init.strip()]
        parts += ["", f'export JOBNAME="{job_name}"', "",
                  self.launcher(command, tasks_per_node, self.nodes_per_block, self.script_dir or "").rstrip(), ""]
        return "\n".join(parts)

    def _track(self, job_id: str, stdout_path: Optional[str], stderr_path: Optional[str]) -> None:
        self.resources[job_id] = {"job_id": job_id, "job_stdout_path": stdout_path,
                                  "job_stderr_path": stderr_path,
                                  "status": JobStatus(JobState.PENDING, stdout_path=stdout_path,
                                                      stderr_path=stderr_path)}

    # -- status and cancel ------------------------------------------------------------------------
    def _query_status(self, job_ids: List[str]) -> Optional[Dict[str, JobStatus]]:
        raise NotImplementedError

    def _cancel_argv(self, job_ids: List[str]) -> List[str]:
        raise NotImplementedError

    def _vanished_status(self, job_id: str) -> JobStatus:
        # Gone from the scheduler's memory: it ended, but how is lost.  COMPLETED (terminal, not a
        # failure) as in Parsl; MISSING would count as a block failure in Parsl's error handlers.
        return JobStatus(JobState.COMPLETED, message=f"job {job_id} is no longer known to {self.scheduler}; "
                         "it has ended (exit state unknown)")

    def _status(self):  # ClusterProvider's abstract hook; status() does the work
        self.status(list(self.resources))

    def status(self, job_ids: Sequence[str]) -> List[JobStatus]:
        """Status of each job; never raises: on scheduler trouble the last known states are returned."""
        job_ids = [str(j) for j in job_ids]
        for jid in job_ids:
            if jid not in self.resources:  # submitted elsewhere (e.g. a previous run): ask about it too
                self._track(jid, None, None)
        active = [jid for jid, job in list(self.resources.items()) if not job["status"].terminal]
        if active:
            try:
                found = self._query_status(active)
            except Exception:
                logger.exception("%s: status query failed; keeping the last known job states", self.label)
                found = None
            if found is not None:
                for jid in active:
                    job = self.resources[jid]
                    new = found.get(jid) or self._vanished_status(jid)
                    new.stdout_path = new.stdout_path or job["job_stdout_path"]
                    new.stderr_path = new.stderr_path or job["job_stderr_path"]
                    if new.state != job["status"].state:
                        logger.debug("%s: job %s %s -> %s", self.label, jid, job["status"].state, new.state)
                    job["status"] = new
        return [self.resources[jid]["status"] for jid in job_ids]

    def cancel(self, job_ids: Sequence[str]) -> List[bool]:
        """Cancel jobs; per job, True when it is gone (cancelled now, or already ended)."""
        job_ids = [str(j) for j in job_ids]
        if not job_ids:
            return []
        try:
            result = self._run(self._cancel_argv(job_ids))
        except SchedulerCommandError as e:
            logger.error("%s: cannot cancel jobs %s: %s", self.label, job_ids, e)
            return [False] * len(job_ids)
        if result.retcode == 0:
            done = [True] * len(job_ids)
        else:
            # One bad id fails the whole command: find out which jobs are really still there.
            logger.info("%s: %s exited %d (%s); checking each job", self.label, self._cancel_argv(job_ids)[0],
                        result.retcode, result.stderr.strip())
            done = [self._cancel_one(jid) for jid in job_ids]
        for jid, ok in zip(job_ids, done):
            if ok:
                job = self.resources.setdefault(jid, {"job_id": jid, "job_stdout_path": None,
                                                      "job_stderr_path": None})
                job["status"] = JobStatus(JobState.CANCELLED, message="cancelled by faasx",
                                          stdout_path=job["job_stdout_path"], stderr_path=job["job_stderr_path"])
            else:
                logger.error("%s: could not cancel job %s", self.label, jid)
        return done

    def _cancel_one(self, job_id: str) -> bool:
        try:
            if self._run(self._cancel_argv([job_id])).retcode == 0:
                return True
        except SchedulerCommandError:
            return False
        found = self._query_status([job_id])
        return found is not None and (job_id not in found or found[job_id].terminal)

    @property
    def status_polling_interval(self) -> int:
        """Seconds between the executor's ``status()`` calls (60, as Parsl's batch providers; settable,
        like the Cobalt and Kubernetes providers', e.g. to notice ended blocks sooner in tests)."""
        return getattr(self, "_status_polling_interval", 60)

    @status_polling_interval.setter
    def status_polling_interval(self, seconds: int) -> None:
        self._status_polling_interval = seconds
