"""SlurmProvider: blocks as Slurm batch jobs (sbatch / squeue / sacct / scancel)."""
from __future__ import annotations

import logging
import math
import re
from typing import Dict, List, Optional

from parsl.jobs.states import JobState, JobStatus
from parsl.launchers.base import Launcher

from faasx.launchers import SrunLauncher
from faasx.providers.base import BatchProvider, format_walltime

logger = logging.getLogger(__name__)

# Slurm job states (squeue %T / sacct State) -> Parsl.  Slurm's own end states map one to one; the
# transient ones map to what the block is doing: COMPLETING still holds its nodes, CONFIGURING waits
# for them.  PREEMPTED and DEADLINE are ends imposed by the scheduler, like a walltime: TIMEOUT, which
# Parsl does not count as a block failure.
SLURM_STATES = {
    "PENDING": JobState.PENDING,
    "CONFIGURING": JobState.PENDING,
    "REQUEUED": JobState.PENDING,
    "REQUEUE_FED": JobState.PENDING,
    "RUNNING": JobState.RUNNING,
    "COMPLETING": JobState.RUNNING,
    "RESIZING": JobState.RUNNING,
    "SIGNALING": JobState.RUNNING,
    "STAGE_OUT": JobState.RUNNING,
    "SUSPENDED": JobState.HELD,
    "STOPPED": JobState.HELD,
    "REQUEUE_HOLD": JobState.HELD,
    "RESV_DEL_HOLD": JobState.HELD,
    "COMPLETED": JobState.COMPLETED,
    "CANCELLED": JobState.CANCELLED,
    "REVOKED": JobState.CANCELLED,  # a federation sibling removed because another cluster runs it
    "FAILED": JobState.FAILED,
    "NODE_FAIL": JobState.FAILED,
    "BOOT_FAIL": JobState.FAILED,
    "OUT_OF_MEMORY": JobState.FAILED,
    "SPECIAL_EXIT": JobState.FAILED,
    "TIMEOUT": JobState.TIMEOUT,
    "DEADLINE": JobState.TIMEOUT,
    "PREEMPTED": JobState.TIMEOUT,
}

_INVALID_JOB_ID = "Invalid job id specified"
_ACCOUNTING_DISABLED = "accounting storage is disabled"


def slurm_job_status(state: str, reason: str = "", exit_code: str = "") -> JobStatus:
    """A ``JobStatus`` from Slurm's state name (``CANCELLED by 123`` is fine), reason and exit code."""
    name = state.split()[0].rstrip("+") if state.strip() else "UNKNOWN"
    mapped = SLURM_STATES.get(name)
    if mapped is None:
        logger.warning("unknown Slurm job state %r", state)
        mapped = JobState.UNKNOWN
    reason = reason.strip()
    if mapped == JobState.PENDING and reason.startswith("JobHeld"):
        mapped = JobState.HELD  # held by user/admin: will not start until released
    code, signal = _exit_code(exit_code)
    if mapped not in (JobState.COMPLETED, JobState.FAILED, JobState.TIMEOUT):
        code = signal = None
    message = f"Slurm state {name}" + (f", reason {reason}" if reason and reason != "None" else "")
    if signal:
        message += f", killed by signal {signal}"
    return JobStatus(mapped, message=message, exit_code=code)


def _exit_code(text: str):
    """(exit code, signal) from sacct's ``"3:0"`` or squeue's raw wait status (``768`` = exit 3)."""
    text = text.strip()
    try:
        if ":" in text:
            code, signal = text.split(":", 1)
            return int(code), int(signal)
        raw = int(text)
    except ValueError:
        return None, None
    return raw >> 8, raw & 0x7F


class SlurmProvider(BatchProvider):
    """Slurm execution provider: each block is one ``sbatch`` job.

    Arguments are those of Parsl's ``SlurmProvider`` (so a Parsl config ports by changing the import),
    plus ``bin_dir``.  Differences from Parsl, all on purpose:

    - every scheduler command has a hard timeout (``cmd_timeout``) after which it is killed;
    - a rejected submission raises ``faasx.errors.ScaleOutFailed`` carrying sbatch's own stderr, and a
      missing ``sbatch`` says so ("sbatch not found on PATH: is this a Slurm login node? ...");
    - status uses ``squeue --states=all`` first (it reports COMPLETED / FAILED / CANCELLED / TIMEOUT for
      ``MinJobAge`` seconds after a job ends), then ``sacct`` for jobs squeue has forgotten -- when
      accounting is enabled, which is found out on first use rather than by running ``sacct`` in the
      constructor; failing queries are retried and never raise out of ``status()``;
    - the walltime is passed to Slurm to the second, and the job script exports ``FAASX_WALLTIME_END``
      (epoch seconds at which Slurm will end the job) and ``FAASX_BLOCK_JOB_ID`` (``$SLURM_JOB_ID``)
      before the launcher runs, so faasx managers can drain before the job is killed.

    Parameters
    ----------
    partition : str
        Slurm partition to request blocks from (``#SBATCH --partition``); default: the cluster's default.
    account : str
        Account to charge (``--account``); default: the user's default account.
    qos : str
        Quality of service (``--qos``).
    constraint : str
        Node features to require (``--constraint``), e.g. ``"gpu"`` on Perlmutter.
    clusters : str
        Cluster name(s) in a federation (``--clusters``, also passed to squeue/scancel/sacct).
    nodes_per_block : int
        Nodes per block (``--nodes``).
    cores_per_node : int
        Cores to request per node; becomes ``--cpus-per-task=cores_per_node // tasks_per_node`` and
        ``PARSL_CORES`` in the job.  None: Slurm's default, executors assume all cores.
    mem_per_node : float
        Memory per node in GB (``--mem``, exported as ``PARSL_MEMORY_GB``).  None: not requested.
    gpus_per_node : int
        GPUs per node (``--gpus-per-node``).
    gres : str
        Generic resources (``--gres``).
    init_blocks, min_blocks, max_blocks : int
        Blocks to start with, and the bounds the executor scales between.
    parallelism : float
        Ratio of provisioned task slots to active tasks (1: scale out aggressively).
    walltime : str
        Walltime per block, ``HH:MM:SS`` (or ``D-HH:MM:SS``).
    scheduler_options : str
        Extra ``#SBATCH`` lines, added after faasx's own (so they win where Slurm takes the last value).
    regex_job_id : str
        Regular expression with a group ``id`` that finds the job id in sbatch's output.
    worker_init : str
        Shell commands run before the launcher, e.g. ``"module load python; source activate env"``.
    cmd_timeout : int
        Seconds after which a scheduler command is killed.
    status_batch_size : int
        Job ids per squeue/sacct call.
    exclusive : bool
        Request whole nodes (``--exclusive``).
    launcher : Launcher
        Starts the command on the block's nodes; default ``SrunLauncher``.
    bin_dir : str
        faasx extension: directory holding the Slurm commands when they are not on ``PATH``
        (e.g. ``/opt/slurm/bin``).  Default: search ``PATH``.
    """

    scheduler = "Slurm"
    job_id_var = "SLURM_JOB_ID"

    def __init__(self,
                 partition: Optional[str] = None,
                 account: Optional[str] = None,
                 qos: Optional[str] = None,
                 constraint: Optional[str] = None,
                 clusters: Optional[str] = None,
                 nodes_per_block: int = 1,
                 cores_per_node: Optional[int] = None,
                 mem_per_node: Optional[float] = None,
                 gpus_per_node: Optional[int] = None,
                 gres: Optional[str] = None,
                 init_blocks: int = 1,
                 min_blocks: int = 0,
                 max_blocks: int = 1,
                 parallelism: float = 1,
                 walltime: str = "00:10:00",
                 scheduler_options: str = '',
                 regex_job_id: str = r"Submitted batch job (?P<id>\S*)",
                 worker_init: str = '',
                 cmd_timeout: int = 10,
                 status_batch_size: int = 50,
                 exclusive: bool = True,
                 launcher: Launcher = SrunLauncher(),
                 bin_dir: Optional[str] = None):
        self.cores_per_node = cores_per_node
        self.mem_per_node = mem_per_node
        super().__init__('slurm', nodes_per_block, init_blocks, min_blocks, max_blocks, parallelism, walltime,
                         launcher, cmd_timeout, bin_dir)
        self.partition = partition
        self.account = account
        self.qos = qos
        self.constraint = constraint
        self.clusters = clusters
        self.gpus_per_node = gpus_per_node
        self.gres = gres
        self.scheduler_options = scheduler_options
        self.regex_job_id = regex_job_id
        self._job_id_re = re.compile(regex_job_id)
        self.worker_init = worker_init
        self.status_batch_size = max(1, int(status_batch_size))
        self.exclusive = exclusive
        self._sacct_works: Optional[bool] = None  # found out on first need

    # -- submit ----------------------------------------------------------------------------------------
    def submit_script(self, command: str, tasks_per_node: int = 1, job_name: str = "faasx.block",
                      stdout_path: str = "faasx.block.stdout", stderr_path: str = "faasx.block.stderr") -> str:
        """The sbatch script a block with this configuration runs (``submit`` writes exactly this)."""
        directives = [
            f"--job-name={job_name}",
            f"--output={stdout_path}",
            f"--error={stderr_path}",
            f"--nodes={self.nodes_per_block}",
            f"--ntasks-per-node={tasks_per_node}",
            f"--time={format_walltime(self.walltime_seconds)}",
        ]
        if self.exclusive:
            directives.append("--exclusive")
        for option, value in (("partition", self.partition), ("account", self.account), ("qos", self.qos),
                              ("constraint", self.constraint), ("clusters", self.clusters),
                              ("gpus-per-node", self.gpus_per_node), ("gres", self.gres)):
            if value:
                directives.append(f"--{option}={value}")
        cores = None
        if self.mem_per_node is not None:
            mem = self.mem_per_node
            directives.append(f"--mem={int(mem)}G" if float(mem).is_integer() else f"--mem={math.ceil(mem * 1024)}M")
        if self.cores_per_node is not None:
            cores = max(1, self.cores_per_node // max(1, tasks_per_node))
            directives.append(f"--cpus-per-task={cores}")
        return self._assemble_script([f"#SBATCH {d}" for d in directives], command, tasks_per_node, job_name,
                                     cores=cores, mem_gb=self.mem_per_node)

    def submit(self, command: str, tasks_per_node: int, job_name: str = "parsl.slurm") -> str:
        """Submit ``command`` as one sbatch job; returns the Slurm job id.

        Raises ``faasx.errors.ScaleOutFailed`` (with sbatch's stderr) when Slurm rejects the job, sbatch
        is missing or hangs, or its output has no job id.
        """
        from faasx.errors import ScaleOutFailed
        name, script, stdout_path, stderr_path = self._new_job_files(job_name)
        self._write_script(script, self.submit_script(command, tasks_per_node, name, stdout_path, stderr_path),
                           name)
        logger.debug("submitting %s (%d nodes)", script, self.nodes_per_block)
        result = self._submit(["sbatch", script], name)
        for line in result.stdout.splitlines():
            match = self._job_id_re.match(line.strip())
            if match:
                job_id = match.group("id")
                self._track(job_id, stdout_path, stderr_path)
                logger.info("submitted Slurm job %s (%s)", job_id, name)
                return job_id
        raise ScaleOutFailed(type(self).__name__, f"no job id in sbatch's output (regex_job_id={self.regex_job_id!r})",
                             stdout=result.stdout, stderr=result.stderr, retcode=result.retcode, job_name=name)

    # -- status ----------------------------------------------------------------------------------------
    def _clusters_args(self) -> List[str]:
        return [f"--clusters={self.clusters}"] if self.clusters else []

    def _query_status(self, job_ids: List[str]) -> Optional[Dict[str, JobStatus]]:
        found: Dict[str, JobStatus] = {}
        for start in range(0, len(job_ids), self.status_batch_size):
            batch = job_ids[start:start + self.status_batch_size]
            result = self._ask(
                ["squeue", "--noheader", "--states=all", "--Format=JobID:|,State:|,exit_code:|,Reason:",
                 f"--jobs={','.join(batch)}", *self._clusters_args()],
                # squeue exits 1 when none of the ids is known any more: an answer, not a failure
                accept=lambda r: r.retcode == 0 or _INVALID_JOB_ID in r.stderr)
            if result is None:
                return None
            for line in result.stdout.splitlines():
                fields = line.split("|", 3)
                if len(fields) == 4 and fields[0].strip():  # skips "CLUSTER: name" headers
                    found[fields[0].strip()] = slurm_job_status(fields[1], fields[3], fields[2])
        forgotten = [j for j in job_ids if j not in found]
        if forgotten:
            found.update(self._sacct(forgotten))
        return found

    def _sacct(self, job_ids: List[str]) -> Dict[str, JobStatus]:
        """Final states of jobs squeue has forgotten, when Slurm accounting works (else nothing)."""
        if self._sacct_works is False:
            return {}
        try:
            result = self._run(["sacct", "-X", "--noheader", "--parsable2", "--format=JobID,State,ExitCode",
                                f"--jobs={','.join(job_ids)}", *self._clusters_args()])
        except Exception as e:  # missing sacct or a hang: squeue's answer stands
            logger.info("sacct unusable (%s); relying on squeue", e)
            self._sacct_works = False
            return {}
        if result.retcode != 0:
            if _ACCOUNTING_DISABLED in result.stderr:
                logger.info("Slurm accounting is disabled here; job states come from squeue only")
                self._sacct_works = False
            else:
                logger.warning("sacct failed (exit %d): %s", result.retcode, result.stderr.strip())
            return {}
        self._sacct_works = True
        found = {}
        for line in result.stdout.splitlines():
            fields = line.split("|")
            if len(fields) >= 3 and fields[0] in job_ids:
                found[fields[0]] = slurm_job_status(fields[1], "", fields[2])
        return found

    # -- cancel ----------------------------------------------------------------------------------------
    def _cancel_argv(self, job_ids: List[str]) -> List[str]:
        return ["scancel", *self._clusters_args(), *job_ids]
