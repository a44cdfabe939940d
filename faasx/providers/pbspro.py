"""PBSProProvider: blocks as PBS jobs, for PBS Pro / OpenPBS and for Torque-style qsub/qstat/qdel."""
from __future__ import annotations

import json
import logging
import re
from typing import Dict, Iterator, List, Optional, Tuple

from parsl.jobs.states import JobState, JobStatus
from parsl.launchers.base import Launcher

from faasx.launchers import SingleNodeLauncher
from faasx.providers.base import BatchProvider, SchedulerCommandError, format_walltime, walltime_to_seconds

logger = logging.getLogger(__name__)

PBSPRO = "pbspro"
TORQUE = "torque"
DIALECTS = (PBSPRO, TORQUE)

# Live PBS states.  E (exiting) still holds the nodes, like Slurm's COMPLETING.
PBS_STATES = {
    "Q": JobState.PENDING,  # queued
    "W": JobState.PENDING,  # waiting for its start time
    "T": JobState.PENDING,  # in transit between servers
    "M": JobState.PENDING,  # moved to another server
    "H": JobState.HELD,     # held
    "S": JobState.HELD,     # suspended by the server
    "U": JobState.HELD,     # suspended: workstation busy (PBS Pro)
    "R": JobState.RUNNING,
    "B": JobState.RUNNING,  # array job begun
    "E": JobState.RUNNING,  # exiting after having run
}
# Ended: the exit status says how (PBS Pro F, Torque C, array subjob X).
PBS_ENDED = ("F", "C", "X")
JOB_EXEC_KILL_WALLTIME = -29  # PBS Pro's exit status for a job killed at its walltime
_SIGNAL_BASE = 256            # PBS reports "killed by signal N" as 256 + N

_JOB_ID = re.compile(r"^\d+(\[\d*\])?(\.[\w.-]+)?$")
_UNKNOWN_JOB = re.compile(r"unknown job id", re.IGNORECASE)
# How qstat says it does not know an option (PBS Pro, Torque, Slurm's Perl wrapper).
_REJECTED_OPTION = re.compile(r"unknown option|invalid option|illegal option|unrecognized option|usage:",
                              re.IGNORECASE)
_QSTAT_UNKNOWN_EXIT = 153  # qstat's exit code when no requested job is known


# -- parsing -------------------------------------------------------------------------------------------
def parse_qstat_json(text: str) -> Dict[str, Dict[str, str]]:
    """``qstat -f -F json`` output -> {job id: {attribute: value}}, nested attributes flattened with dots
    (``Resource_List.walltime``) as in the text format."""
    data = json.loads(text)

    def flat(d: dict, prefix: str = "") -> Iterator[Tuple[str, str]]:
        for key, value in d.items():
            if isinstance(value, dict):
                yield from flat(value, f"{prefix}{key}.")
            else:
                yield f"{prefix}{key}", str(value)

    return {job_id: dict(flat(attrs)) for job_id, attrs in (data.get("Jobs") or {}).items()}


_ATTRIBUTE = re.compile(r"^\s+([\w.]+) = ?(.*)$")


def parse_qstat_full(text: str) -> Dict[str, Dict[str, str]]:
    """Text ``qstat -f`` output (PBS Pro: 4-space indent, Torque and Slurm's wrapper: TAB) ->
    {job id: {attribute: value}}.  Long values wrapped onto indented lines without `` = `` are joined."""
    jobs: Dict[str, Dict[str, str]] = {}
    current: Optional[Dict[str, str]] = None
    key = None
    for line in text.splitlines():
        if not line.strip():
            continue
        header = re.match(r"^Job Id:\s*(\S+)", line)
        if header:
            current = jobs.setdefault(header.group(1), {})
            key = None
            continue
        if current is None:
            continue
        attribute = _ATTRIBUTE.match(line)
        if attribute:
            key = attribute.group(1)
            current[key] = attribute.group(2).strip()
        elif key is not None:
            current[key] += line.strip()
    return jobs


def _seconds(walltime: Optional[str]) -> Optional[int]:
    try:
        return walltime_to_seconds(walltime) if walltime else None
    except ValueError:
        return None


def pbs_job_status(attrs: Dict[str, str]) -> JobStatus:
    """A ``JobStatus`` from one job's qstat attributes (either format, see the parsers)."""
    state = attrs.get("job_state", "").strip()
    if state not in PBS_ENDED:
        mapped = PBS_STATES.get(state)
        if mapped is None:
            logger.warning("unknown PBS job state %r", state)
        comment = attrs.get("comment")
        return JobStatus(mapped or JobState.UNKNOWN,
                         message=f"PBS state {state}" + (f": {comment}" if comment else ""))
    raw_exit = attrs.get("Exit_status", attrs.get("exit_status"))
    if raw_exit is None:
        # Slurm's Torque wrapper (and Torque without keep_completed details) shows C for every end.
        return JobStatus(JobState.COMPLETED, message=f"PBS state {state} (no exit status reported)")
    try:
        code = int(raw_exit)
    except ValueError:
        return JobStatus(JobState.COMPLETED, message=f"PBS state {state}, exit status {raw_exit!r}")
    if code == 0:
        return JobStatus(JobState.COMPLETED, message=f"PBS state {state}", exit_code=0)
    if code == JOB_EXEC_KILL_WALLTIME:
        return JobStatus(JobState.TIMEOUT, message="killed by PBS at its walltime", exit_code=code)
    if code < 0:
        return JobStatus(JobState.FAILED, message=f"PBS could not run the job (exit status {code})",
                         exit_code=code)
    if code >= _SIGNAL_BASE:
        used = _seconds(attrs.get("resources_used.walltime"))
        limit = _seconds(attrs.get("Resource_List.walltime"))
        if used is not None and limit is not None and used >= limit:
            return JobStatus(JobState.TIMEOUT, message=f"killed by signal {code - _SIGNAL_BASE} at its walltime",
                             exit_code=code)
        return JobStatus(JobState.CANCELLED, message=f"killed by signal {code - _SIGNAL_BASE} (qdel?)",
                         exit_code=code)
    return JobStatus(JobState.FAILED, message=f"job script exited with {code}", exit_code=code)


def dialect_from_version(result_text: str) -> str:
    """``qstat --version`` output -> dialect: PBS Pro and OpenPBS print ``pbs_version = ...``; Torque
    prints ``Version: ...`` and Slurm's Torque wrapper rejects the option: both speak Torque."""
    return PBSPRO if "pbs_version" in result_text.lower() else TORQUE


class PBSProProvider(BatchProvider):
    """PBS execution provider: each block is one ``qsub`` job.

    Arguments are those of Parsl's ``PBSProProvider`` plus ``dialect`` and ``bin_dir``.  Two dialects of
    the PBS commands exist in the wild and this provider speaks both:

    ``pbspro``  PBS Pro / OpenPBS (ALCF Polaris, Aurora): ``#PBS -l select=N:ncpus=C``, ``qsub`` prints
                ``123.server``, status from ``qstat -x -f -F json``.
    ``torque``  Torque, and Slurm's Torque wrappers (``slurm-wlm-torque``): ``#PBS -l nodes=N:ppn=C``,
                bare or ``123.server`` ids, status from text ``qstat -f`` (no ``-x``, no JSON), only the
                states Q R S C (and E H W on real Torque).

    Dialect detection (``dialect=None``, the default) happens on first use and is cached: ``qstat
    --version`` printing ``pbs_version = ...`` means PBS Pro; anything else (Torque's ``Version: ...``,
    or the wrapper's "Unknown option") means Torque.  If ``qstat --version`` cannot be run the provider
    assumes PBS Pro without caching, and a status query whose ``-F json`` option is rejected switches it
    to Torque for good.  Pass ``dialect="pbspro"`` or ``"torque"`` to skip detection.

    Ended jobs are mapped by exit status: 0 COMPLETED, -29 (killed at walltime) TIMEOUT, other negative
    values FAILED (PBS could not run the job), 1-255 FAILED, 256+N (killed by signal N) TIMEOUT when the
    used walltime reached the limit, else CANCELLED.  A ``C`` without exit status (Slurm's wrapper) is
    COMPLETED; a job qstat no longer knows is COMPLETED with a message saying so.

    Parameters
    ----------
    account : str
        Account to charge (``-A``).
    queue : str
        Queue to submit to (``-q``).
    scheduler_options : str
        Extra ``#PBS`` lines, added after faasx's own.
    select_options : str
        Appended to the resource request, e.g. ``"ngpus=4"`` gives ``select=1:ncpus=64:ngpus=4``
        (Torque dialect: ``nodes=1:ppn=64:ngpus=4``; write Torque's own names there, e.g. ``gpus=4``).
    worker_init : str
        Shell commands run before the launcher, e.g. ``"module use /soft/modulefiles; conda activate"``.
    nodes_per_block : int
        Nodes per block.
    cpus_per_node : int
        CPUs to request per node (``ncpus``; Torque: ``ppn``).
    init_blocks, min_blocks, max_blocks : int
        Blocks to start with, and the bounds the executor scales between.
    parallelism : float
        Ratio of provisioned task slots to active tasks (1: scale out aggressively).
    launcher : Launcher
        Starts the command on the block's nodes; default ``SingleNodeLauncher`` (``MpiExecLauncher``
        for multi-node blocks on Polaris/Aurora).
    walltime : str
        Walltime per block, ``HH:MM:SS``.
    cmd_timeout : int
        Seconds after which a scheduler command is killed.
    dialect : str
        faasx extension: ``"pbspro"``, ``"torque"`` or None (detect, see above).
    bin_dir : str
        faasx extension: directory holding qsub/qstat/qdel when they are not on ``PATH``.
    """

    scheduler = "PBS"
    job_id_var = "PBS_JOBID"

    def __init__(self,
                 account: Optional[str] = None,
                 queue: Optional[str] = None,
                 scheduler_options: str = '',
                 select_options: str = '',
                 worker_init: str = '',
                 nodes_per_block: int = 1,
                 cpus_per_node: int = 1,
                 init_blocks: int = 1,
                 min_blocks: int = 0,
                 max_blocks: int = 1,
                 parallelism: float = 1,
                 launcher: Launcher = SingleNodeLauncher(),
                 walltime: str = "00:20:00",
                 cmd_timeout: int = 120,
                 dialect: Optional[str] = None,
                 bin_dir: Optional[str] = None):
        if dialect is not None and dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS} or None (detect), not {dialect!r}")
        super().__init__('pbspro', nodes_per_block, init_blocks, min_blocks, max_blocks, parallelism, walltime,
                         launcher, cmd_timeout, bin_dir)
        self.account = account
        self.queue = queue
        self.scheduler_options = scheduler_options
        self.select_options = select_options
        self.worker_init = worker_init
        self.cpus_per_node = cpus_per_node
        self.dialect = dialect
        self._detected: Optional[str] = dialect

    # -- dialect ---------------------------------------------------------------------------------------
    @property
    def detected_dialect(self) -> Optional[str]:
        """The dialect in use, once known (``dialect`` if given, else what detection found)."""
        return self._detected

    def _dialect(self) -> str:
        if self._detected:
            return self._detected
        try:
            result = self._run(["qstat", "--version"])
        except SchedulerCommandError as e:
            logger.info("cannot probe the PBS dialect (%s); assuming PBS Pro for now", e)
            return PBSPRO
        self._detected = dialect_from_version(result.stdout + result.stderr)
        logger.info("PBS dialect: %s (qstat --version: %r)", self._detected,
                    (result.stdout or result.stderr).strip()[:80])
        return self._detected

    # -- submit ----------------------------------------------------------------------------------------
    def submit_script(self, command: str, tasks_per_node: int = 1, job_name: str = "faasx.block",
                      stdout_path: str = "faasx.block.stdout", stderr_path: str = "faasx.block.stderr",
                      dialect: Optional[str] = None) -> str:
        """The qsub script a block with this configuration runs, in ``dialect`` (default: detected)."""
        dialect = dialect or self._dialect()
        extra = self.select_options.strip().lstrip(":")
        extra = f":{extra}" if extra else ""
        walltime = format_walltime(self.walltime_seconds)
        directives = ["-S /bin/bash", f"-N {job_name}", "-m n"]
        if dialect == PBSPRO:
            directives += [f"-l walltime={walltime}", f"-l select={self.nodes_per_block}:ncpus={self.cpus_per_node}{extra}"]
        else:
            directives += [f"-l nodes={self.nodes_per_block}:ppn={self.cpus_per_node}{extra},walltime={walltime}"]
        directives += [f"-o {stdout_path}", f"-e {stderr_path}"]
        if self.queue:
            directives.append(f"-q {self.queue}")
        if self.account:
            directives.append(f"-A {self.account}")
        return self._assemble_script([f"#PBS {d}" for d in directives], command, tasks_per_node, job_name)

    def submit(self, command: str, tasks_per_node: int, job_name: str = "parsl") -> str:
        """Submit ``command`` as one qsub job; returns the job id exactly as qsub printed it.

        Raises ``faasx.errors.ScaleOutFailed`` (with qsub's stderr) when PBS rejects the job, qsub is
        missing or hangs, or its output holds no job id.
        """
        from faasx.errors import ScaleOutFailed
        name, script, stdout_path, stderr_path = self._new_job_files(job_name)
        self._write_script(script, self.submit_script(command, tasks_per_node, name, stdout_path, stderr_path),
                           name)
        argv = ["qsub"]
        # Also on the command line: Slurm's qsub wrapper overrides the script's -o/-e with its own.
        if self.queue:
            argv += ["-q", self.queue]
        if self.account:
            argv += ["-A", self.account]
        argv += ["-o", stdout_path, "-e", stderr_path, script]
        result = self._submit(argv, name)
        ids = [line.strip() for line in result.stdout.splitlines() if _JOB_ID.match(line.strip())]
        if not ids:
            raise ScaleOutFailed(type(self).__name__, "no job id in qsub's output", stdout=result.stdout,
                                 stderr=result.stderr, retcode=result.retcode, job_name=name)
        job_id = ids[-1]
        self._track(job_id, stdout_path, stderr_path)
        logger.info("submitted PBS job %s (%s)", job_id, name)
        return job_id

    # -- status ----------------------------------------------------------------------------------------
    def _query_status(self, job_ids: List[str]) -> Optional[Dict[str, JobStatus]]:
        attrs = None
        if self._dialect() == PBSPRO:
            attrs = self._query_json(job_ids)
            if attrs is None and self._detected != TORQUE:
                return None
        if attrs is None:
            attrs = self._query_text(job_ids)
            if attrs is None:
                return None
        return {jid: pbs_job_status(a) for jid, a in _match_ids(job_ids, attrs).items()}

    def _query_json(self, job_ids: List[str]) -> Optional[Dict[str, Dict[str, str]]]:
        def answered(r):  # unknown ids still give JSON for the others, and a non-zero exit
            return (r.retcode == 0 or r.stdout.lstrip().startswith("{") or bool(_UNKNOWN_JOB.search(r.stderr))
                    or bool(_REJECTED_OPTION.search(r.stderr + r.stdout)))
        result = self._ask(["qstat", "-x", "-f", "-F", "json", *job_ids], accept=answered)
        if result is None:
            return None
        if not result.stdout.lstrip().startswith("{"):
            if _REJECTED_OPTION.search(result.stderr + result.stdout):
                logger.info("qstat rejects -x/-F json (%s): switching to the Torque dialect",
                            result.stderr.strip().splitlines()[0] if result.stderr.strip() else "no output")
                self._detected = TORQUE
                return None
            return {}  # every id unknown
        try:
            return parse_qstat_json(result.stdout)
        except ValueError as e:
            # Some PBS Pro versions emit invalid JSON (unescaped characters in Variable_List).
            logger.warning("qstat printed invalid JSON (%s); reading its text format instead", e)
            result = self._ask(["qstat", "-x", "-f", *job_ids], accept=self._text_answered)
            return None if result is None else parse_qstat_full(result.stdout)

    @staticmethod
    def _text_answered(r) -> bool:
        return r.retcode in (0, _QSTAT_UNKNOWN_EXIT) or bool(_UNKNOWN_JOB.search(r.stderr))

    def _query_text(self, job_ids: List[str]) -> Optional[Dict[str, Dict[str, str]]]:
        result = self._ask(["qstat", "-f", *job_ids], accept=self._text_answered)
        return None if result is None else parse_qstat_full(result.stdout)

    # -- cancel ----------------------------------------------------------------------------------------
    def _cancel_argv(self, job_ids: List[str]) -> List[str]:
        return ["qdel", *job_ids]


def _match_ids(job_ids: List[str], attrs: Dict[str, Dict[str, str]]) -> Dict[str, Dict[str, str]]:
    """qstat may name a job differently from qsub (``123.server`` vs ``123`` vs a longer host name):
    match exactly first, then by the sequence number before the first dot."""
    matched = {}
    by_number = {key.split(".")[0]: value for key, value in attrs.items()}
    for jid in job_ids:
        if jid in attrs:
            matched[jid] = attrs[jid]
        elif jid.split(".")[0] in by_number:
            matched[jid] = by_number[jid.split(".")[0]]
    return matched
