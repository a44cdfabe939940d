"""CobaltProvider: blocks from Cobalt, the batch scheduler of ALCF's Theta (historical).

Cobalt is retired (Theta was the machine of the funcX paper; it was decommissioned in 2023) and Parsl
removed its ``CobaltProvider`` in 2024.11.  faasx keeps one so that Theta-era configurations still port
by changing an import; the constructor takes the arguments of Parsl's last ``CobaltProvider``.

How a block is made::

    submit(command)                        the launcher wraps ``command``
      -> SCRIPT_DIR/JOB.submit             #!/bin/bash, scheduler_options (#COBALT lines),
                                           the faasx exports, worker_init, launcher(command)
      -> qsub -n NODES -t TIME [-q QUEUE] [-A ACCOUNT] -O SCRIPT_DIR/JOB SCRIPT_DIR/JOB.submit
      <- job id (last all-digits line of qsub's stdout)
    status(ids)  -> qstat -u USER          table under a ==== rule; columns found by name
    cancel(ids)  -> qdel ID ...

``TIME`` is whole minutes when the walltime is a whole number of minutes and ``HH:MM:SS`` otherwise
(Cobalt accepted both).  The job's output, error and Cobalt log are ``SCRIPT_DIR/JOB.output``,
``.error`` and ``.cobaltlog``; the first two are attached to every ``JobStatus``.

Job states.  ``queued`` and ``starting`` are PENDING, ``running`` RUNNING; ``exiting`` and ``killing``
stay RUNNING (the job's processes are still being torn down, like Slurm's ``CG``) so that the final state
is decided once the job is gone.  ``*hold`` states are HELD.  Cobalt forgets finished jobs: ``qstat``
simply stops listing them.  So when a job vanishes:

* if its Cobalt log records ``exit code of N``: N == 0 -> COMPLETED; otherwise TIMEOUT when the job
  could have run for its whole walltime (it was killed at the limit), else FAILED with ``exit_code=N``;
* with no exit code in the log: COMPLETED if it had been seen queued or running, TIMEOUT if it could
  have reached its walltime;
* a job never seen in ``qstat`` and with no exit code recorded is MISSING ("left the queue without
  running"): Cobalt lists a job as soon as ``qsub`` returns, so this means it was deleted by someone
  else or the ``qstat`` user filter does not match the submitting user.

A ``qstat`` that fails is retried a few times (``faasx.providers.base.status_command``); if it keeps
failing, ``status()`` logs why and returns the last known states -- it never raises.  ``qsub`` failures
raise ``faasx.errors.ScaleOutFailed`` carrying Cobalt's own stderr, and a missing ``qsub`` says so.

Walltime contract with the engine: the script exports ``FAASX_WALLTIME_END`` (epoch seconds at which
Cobalt ends the job, computed when the script starts) and ``FAASX_BLOCK_JOB_ID`` (``$COBALT_JOBID``)
before ``worker_init`` and the launch command.
"""
from __future__ import annotations

import getpass
import logging
import os
import re
import time
from typing import Dict, List, Optional, Sequence

import typeguard
from parsl.jobs.states import JobState, JobStatus
from parsl.launchers.base import Launcher
from parsl.providers.cluster_provider import ClusterProvider
from parsl.utils import RepresentationMixin

from faasx.executor.security import open_private, private_dir
from faasx.launchers import AprunLauncher
from faasx.providers.base import (job_environment, run_command, SchedulerCommandError, status_command,
                                  submit_command, walltime_to_seconds)


logger = logging.getLogger(__name__)

# Cobalt job state (qstat's State column, lower case) -> Parsl JobState.
_STATE_TABLE = {
    "queued": JobState.PENDING,
    "starting": JobState.PENDING,
    "running": JobState.RUNNING,
    "exiting": JobState.RUNNING,   # tearing down; final state decided when the job vanishes
    "killing": JobState.RUNNING,
}

# Columns we ask qstat for; parsing still finds them by name, so a site default works too.
_QSTAT_HEADER = "JobID:User:WallTime:Nodes:State:Location"
_EXIT_CODE = re.compile(r"exit code of (-?\d+)")
_JOB_ID_LINE = re.compile(r"^\s*(\d+)\s*$")

_SCRIPT_TEMPLATE = """#!/bin/bash
{scheduler_options}
# faasx block for Cobalt: {job_name}
{job_environment}
export JOBNAME="{job_name}"

{worker_init}

echo "faasx: Cobalt job $COBALT_JOBID on partition ${{COBALT_PARTNAME:-?}}, nodes in ${{COBALT_NODEFILE:-?}}"

{launch}
"""


class CobaltProvider(ClusterProvider, RepresentationMixin):
    """Cobalt execution provider: ``qsub`` to submit, ``qstat -u $USER`` for status, ``qdel`` to cancel.

    Parameters
    ----------
    nodes_per_block : int
        Nodes per block (``qsub -n``). Default 1.
    init_blocks, min_blocks, max_blocks : int
        Blocks to start with, and the range the executor scales within. Defaults 0, 0, 1.
    parallelism : float
        Ratio of provisioned task slots to active tasks (Parsl's meaning). Default 1.
    walltime : str
        Walltime of each block, ``HH:MM:SS`` (``qsub -t``). Default ``"00:10:00"``.
    account : str, optional
        Project to charge (``qsub -A``).
    queue : str, optional
        Queue (``qsub -q``); Cobalt routes to its default queue when omitted.
    scheduler_options : str
        Lines placed at the top of the submit script, typically ``#COBALT --attrs mcdram=cache:numa=quad``.
    worker_init : str
        Shell commands run before the launcher, e.g. ``module load miniconda-3; conda activate env``.
    launcher : Launcher
        Starts the command on the block's nodes; ``AprunLauncher`` (Theta's KNL nodes) by default.
    cmd_timeout : int
        Seconds to wait for ``qsub`` / ``qstat`` / ``qdel``. Default 10.
    """

    @typeguard.typechecked
    def __init__(self,
                 nodes_per_block: int = 1,
                 init_blocks: int = 0,
                 min_blocks: int = 0,
                 max_blocks: int = 1,
                 parallelism: float = 1,
                 walltime: str = "00:10:00",
                 account: Optional[str] = None,
                 queue: Optional[str] = None,
                 scheduler_options: str = '',
                 worker_init: str = '',
                 launcher: Launcher = AprunLauncher(),
                 cmd_timeout: int = 10):
        super().__init__("cobalt", nodes_per_block, init_blocks, min_blocks, max_blocks, parallelism,
                         walltime, launcher, cmd_timeout=cmd_timeout)
        self._walltime_seconds = walltime_to_seconds(walltime)  # fail early on a malformed walltime
        if self._walltime_seconds <= 0:
            raise ValueError(f"walltime {walltime!r} must be longer than zero")
        self.account = account
        self.queue = queue
        self.scheduler_options = scheduler_options
        self.worker_init = worker_init
        self._status_polling_interval = 60

    # ------------------------------------------------------------------ ExecutionProvider

    @property
    def status_polling_interval(self) -> int:
        """Seconds between ``status()`` calls (60; settable, e.g. for tests)."""
        return self._status_polling_interval

    @status_polling_interval.setter
    def status_polling_interval(self, seconds: int) -> None:
        self._status_polling_interval = seconds

    def submit(self, command: str, tasks_per_node: int, job_name: str = "faasx.cobalt") -> str:
        """Write the block's script, ``qsub`` it and return Cobalt's job id.

        Raises ``faasx.errors.ScaleOutFailed`` when ``qsub`` is missing, times out, rejects the job (with
        Cobalt's stderr) or prints no job id.
        """
        from faasx.errors import ScaleOutFailed

        script_dir = self._script_dir()
        job_name = f"{job_name}.{time.time():.6f}"
        prefix = os.path.join(script_dir, job_name)
        script_path = prefix + ".submit"
        with open_private(script_path, "w") as f:
            f.write(self._submit_script(command, tasks_per_node, job_name, script_dir))
        # Cobalt runs the script itself (as us), so it must be executable -- by us only.
        os.chmod(script_path, 0o700)

        argv = self._qsub_argv(script_path, prefix)
        logger.debug("submitting %s: %s", job_name, " ".join(argv))
        result = submit_command(self.label, argv, self.cmd_timeout, job_name, scheduler="Cobalt")
        job_id = None
        for line in result.stdout.splitlines():  # Cobalt may print routing notes before the id
            m = _JOB_ID_LINE.match(line)
            if m:
                job_id = m.group(1)
        if job_id is None:
            raise ScaleOutFailed(self.label, "qsub printed no job id", stdout=result.stdout,
                                 stderr=result.stderr, retcode=result.retcode, job_name=job_name)
        logger.info("Cobalt job %s submitted for block %s (%d node(s), walltime %s)",
                    job_id, job_name, self.nodes_per_block, self.walltime)
        self.resources[job_id] = {
            "job_id": job_id,
            "job_name": job_name,
            "status": JobStatus(JobState.PENDING, stdout_path=prefix + ".output", stderr_path=prefix + ".error"),
            "stdout_path": prefix + ".output",
            "stderr_path": prefix + ".error",
            "cobaltlog": prefix + ".cobaltlog",
            "submitted": time.time(),
            "seen": False,           # listed by qstat at least once
            "not_running_at": time.time(),  # last time known not yet running: the job started after this
        }
        return job_id

    def status(self, job_ids: Sequence[str]) -> List[JobStatus]:
        """States of ``job_ids`` after one ``qstat`` (retried on failure; never raises)."""
        if job_ids:
            try:
                self._status()
            except Exception:  # a parsing surprise must not take the executor down
                logger.exception("Cobalt status update failed; keeping the last known states")
        return [self.resources[jid]["status"] if jid in self.resources
                else JobStatus(JobState.UNKNOWN, message=f"job {jid} was not submitted by this provider")
                for jid in job_ids]

    def cancel(self, job_ids: Sequence[str]) -> List[bool]:
        """``qdel`` the jobs; True for each job when Cobalt accepted (or the job was already gone)."""
        job_ids = list(job_ids)
        if not job_ids:
            return []
        try:
            result = run_command(["qdel"] + job_ids, self.cmd_timeout, scheduler="Cobalt")
        except SchedulerCommandError as e:
            logger.error("cannot cancel Cobalt jobs %s: %s", job_ids, e)
            return [False] * len(job_ids)
        if result.retcode != 0:
            logger.error("qdel %s failed (exit code %d): %s", " ".join(job_ids), result.retcode,
                         result.stderr.strip())
            return [False] * len(job_ids)
        for jid in job_ids:
            if jid in self.resources:
                record = self.resources[jid]
                record["status"] = JobStatus(JobState.CANCELLED, message="cancelled with qdel",
                                             stdout_path=record["stdout_path"],
                                             stderr_path=record["stderr_path"])
        return [True] * len(job_ids)

    # ------------------------------------------------------------------ internals

    def _script_dir(self) -> str:
        # Parsl's DFK (and faasx's Executor) set script_dir; fall back to the working directory so a
        # provider used on its own still works.  It must be on a file system the MOM node sees.
        if not self.script_dir:
            self.script_dir = os.path.join(os.getcwd(), "faasx_submit_scripts")
            logger.info("CobaltProvider: script_dir not set, using %s", self.script_dir)
        return private_dir(self.script_dir)

    def _time_arg(self) -> str:
        minutes, seconds = divmod(self._walltime_seconds, 60)
        if seconds == 0:
            return str(minutes)
        return f"{minutes // 60:02d}:{minutes % 60:02d}:{seconds:02d}"

    def _qsub_argv(self, script_path: str, prefix: str) -> List[str]:
        """``qsub -n NODES -t TIME [-q QUEUE] [-A ACCOUNT] -O PREFIX SCRIPT``."""
        argv = ["qsub", "-n", str(self.nodes_per_block), "-t", self._time_arg()]
        if self.queue:
            argv += ["-q", self.queue]
        if self.account:
            argv += ["-A", self.account]
        return argv + ["-O", prefix, script_path]

    def _submit_script(self, command: str, tasks_per_node: int, job_name: str, script_dir: str) -> str:
        """The script Cobalt runs on the MOM node: options, faasx exports, worker_init, launch."""
        return _SCRIPT_TEMPLATE.format(
            job_name=job_name,
            scheduler_options=self.scheduler_options.strip("\n"),
            job_environment=job_environment(self._walltime_seconds, job_id_var="COBALT_JOBID").rstrip("\n"),
            worker_init=self.worker_init.strip("\n"),
            launch=self.launcher(command, tasks_per_node, self.nodes_per_block, script_dir),
        )

    @staticmethod
    def _user() -> str:
        return os.environ.get("USER") or getpass.getuser()

    def _status(self) -> None:
        active = {jid: r for jid, r in self.resources.items() if not r["status"].terminal}
        if not active:
            return
        result = status_command(["qstat", "-u", self._user()], self.cmd_timeout,
                                env={"QSTAT_HEADER": _QSTAT_HEADER}, scheduler="Cobalt")
        if result is None:
            return  # logged by status_command; keep the last known states
        listed = parse_qstat(result.stdout)
        now = time.time()
        for jid, record in active.items():
            state = listed.get(jid)
            if state is not None:
                self._update_listed(jid, record, state, now)
            else:
                self._update_vanished(jid, record, now)

    def _update_listed(self, jid: str, record: Dict, state: str, now: float) -> None:
        record["seen"] = True
        if state in ("queued", "starting") or "hold" in state:
            record["not_running_at"] = now
        if "hold" in state:
            job_state = JobState.HELD
        else:
            job_state = _STATE_TABLE.get(state)
            if job_state is None:
                logger.warning("Cobalt job %s is in unknown state %r", jid, state)
                job_state = JobState.UNKNOWN
        record["status"] = JobStatus(job_state, message=f"Cobalt state: {state}",
                                     stdout_path=record["stdout_path"], stderr_path=record["stderr_path"])

    def _update_vanished(self, jid: str, record: Dict, now: float) -> None:
        exit_code = _exit_code_from_log(record["cobaltlog"])
        # The job started after not_running_at, so it ran at most now - not_running_at seconds.
        could_hit_walltime = now - record["not_running_at"] >= self._walltime_seconds
        if exit_code == 0:
            state, message = JobState.COMPLETED, "job finished (exit code 0)"
        elif exit_code is not None and could_hit_walltime:
            state, message = JobState.TIMEOUT, f"job ended at its walltime of {self.walltime}"
        elif exit_code is not None:
            state, message = JobState.FAILED, f"job script failed with exit code {exit_code}"
        elif could_hit_walltime and record["seen"]:
            state, message = JobState.TIMEOUT, f"job left the queue after its walltime of {self.walltime}"
        elif record["seen"]:
            state, message = JobState.COMPLETED, "job left the queue (no exit code in the Cobalt log)"
        else:
            state, message = JobState.MISSING, (
                f"job {jid} left the queue without ever being listed by 'qstat -u {self._user()}' and "
                f"without an exit code in {record['cobaltlog']}: deleted by someone else, or submitted "
                "as another user")
        logger.debug("Cobalt job %s vanished from qstat: %s (%s)", jid, state, message)
        record["status"] = JobStatus(state, message=message, exit_code=exit_code,
                                     stdout_path=record["stdout_path"], stderr_path=record["stderr_path"])


def parse_qstat(text: str) -> Dict[str, str]:
    """Job id -> lower-case state from Cobalt's ``qstat`` table (columns found by header name)."""
    jobs: Dict[str, str] = {}
    id_col = state_col = None
    for line in text.splitlines():
        fields = line.split()
        if not fields or line.startswith("="):
            continue
        lowered = [f.lower() for f in fields]
        if "jobid" in lowered and "state" in lowered:
            id_col, state_col = lowered.index("jobid"), lowered.index("state")
            continue
        if id_col is None or len(fields) <= max(id_col, state_col):
            continue
        jobs[fields[id_col]] = fields[state_col].lower()
    return jobs


def _exit_code_from_log(path: str) -> Optional[int]:
    try:
        with open(path, errors="replace") as f:
            codes = _EXIT_CODE.findall(f.read())
    except OSError:
        return None
    return int(codes[-1]) if codes else None
