"""LocalProvider: blocks as process groups on this machine (faasx's default provider)."""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
import time
from typing import List, Optional, Sequence

import psutil

from parsl.jobs.states import JobState, JobStatus
from parsl.launchers.base import Launcher
from parsl.providers import LocalProvider as _ParslLocalProvider

from faasx.launchers import SingleNodeLauncher
from faasx.executor.security import open_private, private_dir
from faasx.providers.base import job_environment, walltime_to_seconds

logger = logging.getLogger(__name__)


class LocalProvider(_ParslLocalProvider):
    """Runs each block as a process group on the local machine.

    Arguments are those of Parsl's ``LocalProvider`` plus ``walltime``.  Differences from Parsl's:

    - ``cancel()`` sends SIGTERM to the block's process group, then SIGKILL after ``cancel_grace`` seconds
      to every process left of the block -- its session plus the leader's descendants at cancel time
      (launchers may put each copy in a process group or session of its own, so the group alone is not
      enough) -- and returns True per block only once nothing is left;
    - ``status()`` never raises (Parsl's raises when the exit-code file is missing) and reports a block
      killed by a signal it did not send as FAILED with the signal in the message;
    - optional ``walltime``: the block is ended (SIGTERM, then SIGKILL) when it expires and reported as
      TIMEOUT, and the script exports ``FAASX_WALLTIME_END`` -- a way to exercise walltime draining
      without a batch scheduler.  Without a walltime ``FAASX_WALLTIME_END`` is not set (no limit).
    - the script exports ``FAASX_BLOCK_JOB_ID``, which is the job id ``submit()`` returns (the pid of the
      block's process-group leader).

    Parameters
    ----------
    nodes_per_block : int
        Nodes per block; always 1 in effect (this machine).
    launcher : Launcher
        Wraps the command; default ``SingleNodeLauncher``.
    init_blocks, min_blocks, max_blocks : int
        Blocks to start with, and the bounds the executor scales between.
    worker_init : str
        Shell commands run before the launcher.
    cmd_timeout : int
        Kept for compatibility with Parsl (faasx starts blocks directly, without a shell command).
    parallelism : float
        Ratio of provisioned task slots to active tasks.
    walltime : str
        faasx extension: ``HH:MM:SS`` lifetime of each block, or None (default) for no limit.
    """

    cancel_grace = 5.0  # seconds between SIGTERM and SIGKILL

    def __init__(self,
                 nodes_per_block: int = 1,
                 launcher: Launcher = SingleNodeLauncher(),
                 init_blocks: int = 1,
                 min_blocks: int = 0,
                 max_blocks: int = 1,
                 worker_init: str = '',
                 cmd_timeout: int = 30,
                 parallelism: float = 1,
                 walltime: Optional[str] = None):
        super().__init__(nodes_per_block=nodes_per_block, launcher=launcher, init_blocks=init_blocks,
                         min_blocks=min_blocks, max_blocks=max_blocks, worker_init=worker_init,
                         cmd_timeout=cmd_timeout, parallelism=parallelism)
        self.walltime = walltime
        self.walltime_seconds = walltime_to_seconds(walltime) if walltime else None
        self._lock = threading.Lock()

    # -- submit ----------------------------------------------------------------------------------------
    def submit_script(self, command: str, tasks_per_node: int = 1, job_name: str = "faasx.block") -> str:
        """The script a block runs (``submit`` writes exactly this)."""
        parts = ["#!/bin/bash"]
        if self.walltime_seconds:
            parts.append(job_environment(self.walltime_seconds).rstrip())
        parts.append('export FAASX_BLOCK_JOB_ID=$$  # = the job id: this shell leads the block\'s process group')
        if self.worker_init.strip():
            parts += ["", self.worker_init.strip()]
        parts += ["", f'export JOBNAME="{job_name}"', "",
                  self.launcher(command, tasks_per_node, self.nodes_per_block, self.script_dir or "").rstrip(), ""]
        return "\n".join(parts)

    def submit(self, command: str, tasks_per_node: int, job_name: str = "parsl.localprovider") -> str:
        """Start ``command`` as a new process group; returns its leader's pid (as a string)."""
        from faasx.errors import ScaleOutFailed
        if not self.script_dir:
            self.script_dir = os.path.abspath(os.path.join("runinfo", "faasx_submit_scripts"))
        name = f"{job_name}.{time.time():.3f}"
        base = os.path.abspath(os.path.join(self.script_dir, name))
        script, stdout_path, stderr_path = base + ".sh", base + ".stdout", base + ".stderr"
        try:
            private_dir(self.script_dir)
            with open_private(script, "w") as f:
                f.write(self.submit_script(command, tasks_per_node, name))
            with open_private(stdout_path, "w") as out, open_private(stderr_path, "w") as err:
                # Own session: cancel() can signal the whole block, and it does not get our terminal's ^C.
                proc = subprocess.Popen(["/bin/bash", script], stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True, cwd=os.getcwd())
        except OSError as e:
            raise ScaleOutFailed(type(self).__name__, f"cannot start a local block from {script}: {e}",
                                 job_name=name) from e
        job_id = str(proc.pid)
        job = {'job_id': job_id, 'status': JobStatus(JobState.RUNNING, stdout_path=stdout_path,
                                                     stderr_path=stderr_path),
               'remote_pid': proc.pid, 'script_path': script, 'proc': proc, 'ended_by': None,
               'job_stdout_path': stdout_path, 'job_stderr_path': stderr_path}
        if self.walltime_seconds:
            timer = threading.Timer(self.walltime_seconds, self._expire, args=(job_id,))
            timer.daemon = True
            timer.start()
            job['timer'] = timer
        with self._lock:
            self.resources[job_id] = job
        logger.debug("started local block %s: %s", job_id, script)
        return job_id

    # -- status ----------------------------------------------------------------------------------------
    def status(self, job_ids: Sequence[str]) -> List[JobStatus]:
        result = []
        for jid in job_ids:
            job = self.resources.get(str(jid))
            if job is None:
                result.append(JobStatus(JobState.UNKNOWN, message=f"no local block {jid} was started here"))
                continue
            if not job['status'].terminal:
                try:
                    job['status'] = self._poll(job)
                except Exception:  # never let one odd block break the executor's poller
                    logger.exception("local block %s: status check failed", jid)
            result.append(job['status'])
        return result

    @staticmethod
    def _poll(job) -> JobStatus:
        paths = dict(stdout_path=job['job_stdout_path'], stderr_path=job['job_stderr_path'])
        code = job['proc'].poll()
        if code is None:
            return JobStatus(JobState.RUNNING, **paths)
        if job['ended_by'] == 'walltime':
            return JobStatus(JobState.TIMEOUT, message="ended at its walltime", exit_code=code, **paths)
        if job['ended_by'] == 'cancel':
            return JobStatus(JobState.CANCELLED, message="cancelled by faasx", exit_code=code, **paths)
        if code == 0:
            return JobStatus(JobState.COMPLETED, exit_code=0, **paths)
        if code < 0:
            return JobStatus(JobState.FAILED, message=f"killed by signal {-code}", exit_code=code, **paths)
        return JobStatus(JobState.FAILED, message=f"block script exited with {code}", exit_code=code, **paths)

    # -- cancel ----------------------------------------------------------------------------------------
    def _expire(self, job_id: str) -> None:
        job = self.resources.get(job_id)
        if job is not None and job['proc'].poll() is None and job['ended_by'] is None:
            logger.info("local block %s reached its walltime %s; ending it", job_id, self.walltime)
            job['ended_by'] = 'walltime'
            self._stop_groups([job])

    def cancel(self, job_ids: Sequence[str]) -> List[bool]:
        """SIGTERM each block's process group, SIGKILL after ``cancel_grace`` s; True per block once gone."""
        jobs = []
        for jid in job_ids:
            job = self.resources.get(str(jid))
            if job is not None:
                if job['ended_by'] is None:
                    job['ended_by'] = 'cancel'
                if 'timer' in job:
                    job['timer'].cancel()
                jobs.append(job)
        self._stop_groups(jobs)
        done = []
        for jid in job_ids:
            job = self.resources.get(str(jid))
            if job is None:
                done.append(False)
                continue
            gone = not _block_alive(job['remote_pid'], job['proc'])
            if gone:
                job['status'] = self._poll(job)
            done.append(gone)
        return done

    def _stop_groups(self, jobs) -> None:
        # Who to stop is decided before signalling: once a parent dies its children are re-parented and
        # could not be found any more.  Signal every block first, then wait for all together, so that
        # shutting down many blocks takes one grace period, not one each.
        members = {job['job_id']: _block_processes(job['remote_pid'], job['proc']) for job in jobs}
        for job in jobs:
            _signal_group(job['remote_pid'], signal.SIGTERM)
        deadline = time.monotonic() + self.cancel_grace
        while time.monotonic() < deadline and any(_alive(members[j['job_id']], j) for j in jobs):
            time.sleep(0.05)
        for job in jobs:
            left = _alive(members[job['job_id']], job)
            if left:
                logger.warning("local block %s: %d processes ignored SIGTERM; sending SIGKILL", job['job_id'],
                               len(left))
                for process in left:
                    try:
                        process.kill()
                    except psutil.Error:
                        pass
        # SIGKILL is not instantaneous: wait (briefly) until the kernel has taken them all down.
        deadline = time.monotonic() + self.cancel_grace
        while time.monotonic() < deadline and any(_alive(members[j['job_id']], j) for j in jobs):
            time.sleep(0.02)
        for job in jobs:
            try:
                job['proc'].wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                logger.error("local block %s did not exit after SIGKILL", job['job_id'])


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _block_processes(sid: int, proc: Optional[subprocess.Popen] = None) -> List[psutil.Process]:
    """Live processes of a block: its session (whatever process groups the launcher made) plus every
    descendant of its leader (which catches those that started a session of their own)."""
    if proc is not None:
        proc.poll()  # reap the leader: a zombie would look alive
    found = {}
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(p.pid) == sid:
                found[p.pid] = p
        except (OSError, psutil.Error):
            continue
    if proc is not None and proc.returncode is None:  # unreaped leader: its pid cannot have been reused
        try:
            for p in psutil.Process(sid).children(recursive=True):
                found.setdefault(p.pid, p)
        except psutil.Error:
            pass
    return list(found.values())


def _alive(processes: List[psutil.Process], job) -> List[psutil.Process]:
    job['proc'].poll()
    alive = []
    for p in processes:
        try:  # is_running() also guards against a recycled pid
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
        except psutil.Error:
            continue
    known = {p.pid for p in alive}
    return alive + [p for p in _block_processes(job['remote_pid'], job['proc']) if p.pid not in known]


def _block_alive(sid: int, proc: Optional[subprocess.Popen] = None) -> bool:
    return bool(_block_processes(sid, proc))
