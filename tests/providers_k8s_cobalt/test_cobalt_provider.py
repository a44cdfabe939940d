"""CobaltProvider: the submit script and qsub arguments, then end to end through the Cobalt stand-in.

Cobalt is retired; tests/fakes/cobalt plays its qsub/qstat/qdel with jobs as local processes.
"""
from __future__ import annotations

import inspect
import logging
import os
import shlex
import subprocess
import time

import pytest
from parsl.jobs.states import JobState
from parsl.launchers import SimpleLauncher, SingleNodeLauncher

import faasx.launchers
from faasx.errors import ScaleOutFailed
from faasx.providers import CobaltProvider
from faasx.providers.cobalt import parse_qstat

# Parsl's last CobaltProvider (removed in Parsl 2024.11) took these arguments.
PARSL_COBALT_ARGS = ["nodes_per_block", "init_blocks", "min_blocks", "max_blocks", "parallelism", "walltime",
                     "account", "queue", "scheduler_options", "worker_init", "launcher", "cmd_timeout"]


def make_provider(tmp_path, **kwargs) -> CobaltProvider:
    kwargs.setdefault("launcher", SimpleLauncher())
    kwargs.setdefault("walltime", "00:01:00")
    provider = CobaltProvider(**kwargs)
    provider.script_dir = str(tmp_path / "submit_scripts")
    os.makedirs(provider.script_dir, exist_ok=True)
    provider.status_polling_interval = 1
    return provider


def state_of(provider, job_id):
    return provider.status([job_id])[0]


# ---------------------------------------------------------------------------------------------- unit

def test_constructor_takes_parsl_cobalt_arguments_and_keeps_them_as_attributes():
    params = inspect.signature(CobaltProvider.__init__).parameters
    assert set(PARSL_COBALT_ARGS) <= set(params)
    passed = dict(account="ALCF_PROJ", queue="debug-cache-quad", walltime="00:30:00",
                  scheduler_options="#COBALT --attrs mcdram=cache:numa=quad", worker_init="module load conda",
                  nodes_per_block=4, max_blocks=3, cmd_timeout=20)
    provider = CobaltProvider(**passed)
    for arg in PARSL_COBALT_ARGS:  # RepresentationMixin needs each argument as an attribute of its name
        assert getattr(provider, arg) == passed.get(arg, params[arg].default), arg
    provider._validate_repr = True
    assert all(f"{arg}=" in repr(provider) for arg in PARSL_COBALT_ARGS)
    assert provider.label == "cobalt"
    assert isinstance(provider.launcher, faasx.launchers.AprunLauncher)  # Theta's default


def test_malformed_walltime_is_refused_at_construction():
    with pytest.raises(ValueError, match="HH:MM:SS"):
        CobaltProvider(walltime="30 minutes")


def test_qsub_arguments(tmp_path):
    provider = make_provider(tmp_path, nodes_per_block=8, walltime="01:30:00", queue="default", account="PROJ")
    assert provider._qsub_argv("/s/job.submit", "/s/job") == [
        "qsub", "-n", "8", "-t", "90", "-q", "default", "-A", "PROJ", "-O", "/s/job", "/s/job.submit"]
    # no queue / project: Cobalt picks its defaults; a sub-minute walltime goes as HH:MM:SS
    provider = make_provider(tmp_path, walltime="00:00:45")
    assert provider._qsub_argv("/s/j.submit", "/s/j") == ["qsub", "-n", "1", "-t", "00:00:45", "-O", "/s/j",
                                                          "/s/j.submit"]


def test_submit_script_orders_options_exports_worker_init_and_launch(tmp_path):
    provider = make_provider(tmp_path, walltime="00:30:00", worker_init="source /env/bin/activate",
                             scheduler_options="#COBALT --attrs mcdram=cache:numa=quad")
    script = provider._submit_script("faasx-manager --block 0", 1, "faasx.block-0.123", str(tmp_path))
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[1] == "#COBALT --attrs mcdram=cache:numa=quad"  # directives before any command
    walltime = lines.index("export FAASX_WALLTIME_END=$(( $(date +%s) + 1800 ))")
    job_id = lines.index('export FAASX_BLOCK_JOB_ID="${COBALT_JOBID:-}"')
    init = lines.index("source /env/bin/activate")
    launch = lines.index("faasx-manager --block 0")
    assert walltime < init < launch and job_id < init


def test_submit_script_wraps_the_command_with_the_launcher(tmp_path):
    provider = make_provider(tmp_path, launcher=SingleNodeLauncher(), nodes_per_block=2)
    script = provider._submit_script("echo worker", 3, "jobname", str(tmp_path))
    assert "WORKERCOUNT=6" in script  # 3 per node x 2 nodes
    assert "echo worker" in script


def test_submit_script_exports_run_in_bash(tmp_path):
    """The exports are valid shell: FAASX_WALLTIME_END is now + walltime, FAASX_BLOCK_JOB_ID the job id."""
    provider = make_provider(tmp_path, walltime="00:02:00", worker_init="export FROM_INIT=yes")
    script = provider._submit_script('echo "$FAASX_WALLTIME_END $FAASX_BLOCK_JOB_ID $FROM_INIT"', 1, "j",
                                     str(tmp_path))
    before = int(time.time())
    out = subprocess.run(["bash", "-c", script], env=dict(os.environ, COBALT_JOBID="4242"),
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    end, job_id, init = out.stdout.strip().splitlines()[-1].split()
    assert before + 120 <= int(end) <= int(time.time()) + 120
    assert (job_id, init) == ("4242", "yes")


def test_parse_qstat_finds_columns_by_name():
    text = ("JobID  User  WallTime  RunTime   Nodes  State    Location\n"
            "==========================================================\n"
            "101    me    00:10:00  00:01:00  1      running  3820\n"
            "102    me    00:10:00  N/A       2      queued   None\n")
    assert parse_qstat(text) == {"101": "running", "102": "queued"}
    text = "JobID User State\n=====\n7 me user_hold\n"
    assert parse_qstat(text) == {"7": "user_hold"}
    assert parse_qstat("") == {}


# ------------------------------------------------------------------------------- end to end (stand-in)

def test_job_runs_with_cobalt_environment_and_goes_pending_running_completed(fake_cobalt, tmp_path, wait_for):
    fake_cobalt.configure(queue_seconds=1.5, start_seconds=0.3)  # long enough to be seen in each state
    marker = tmp_path / "marker"
    provider = make_provider(tmp_path, nodes_per_block=2, walltime="00:05:00", account="PROJ",
                             worker_init="export FROM_INIT=yes")
    command = (f'{{ echo "jobid=$COBALT_JOBID"; echo "block=$FAASX_BLOCK_JOB_ID"; echo "part=$COBALT_PARTNAME"; '
               f'echo "end=$FAASX_WALLTIME_END"; echo "init=$FROM_INIT"; cat "$COBALT_NODEFILE"; }} '
               f'> {shlex.quote(str(marker))}.tmp && mv {shlex.quote(str(marker))}.tmp {shlex.quote(str(marker))}; '
               'sleep 2')
    job_id = provider.submit(command, 1, "faasx.block-0")
    assert job_id.isdigit()
    assert fake_cobalt.jobs()[int(job_id)]["project"] == "PROJ"

    seen = []

    def finished():
        status = state_of(provider, job_id)
        if not seen or seen[-1] != status.state:
            seen.append(status.state)
        return status.terminal and status

    final = wait_for(finished, timeout=20, what="the Cobalt job to finish")
    assert final.state == JobState.COMPLETED, final
    assert seen[0] == JobState.PENDING and JobState.RUNNING in seen, seen
    assert seen.index(JobState.PENDING) < seen.index(JobState.RUNNING) < seen.index(JobState.COMPLETED)

    lines = marker.read_text().splitlines()
    assert lines[0] == f"jobid={job_id}"
    assert lines[1] == f"block={job_id}"
    assert lines[2] == "part=0-1"
    assert abs(int(lines[3].split("=")[1]) - (time.time() + 300)) < 30
    assert lines[4] == "init=yes"
    assert lines[5:] == ["localhost", "localhost"]  # COBALT_NODEFILE: one line per node
    assert int(job_id) not in fake_cobalt.jobs()  # finished jobs vanish from qstat
    assert os.path.exists(final.stdout_path) and "faasx: Cobalt job" in final.stdout


def test_cancel_kills_a_running_job(fake_cobalt, tmp_path, wait_for):
    pidfile = tmp_path / "pid"
    provider = make_provider(tmp_path)
    job_id = provider.submit(f"echo $$ > {pidfile}; exec sleep 300", 1, "faasx.block-0")
    wait_for(lambda: state_of(provider, job_id).state == JobState.RUNNING and pidfile.exists(), timeout=10,
             what="the job to run")
    pid = int(wait_for(lambda: pidfile.read_text().strip(), what="the pid file"))
    assert provider.cancel([job_id]) == [True]
    assert state_of(provider, job_id).state == JobState.CANCELLED
    wait_for(lambda: int(job_id) not in fake_cobalt.jobs(), timeout=10, what="the job to leave qstat")
    wait_for(lambda: not os.path.exists(f"/proc/{pid}"), timeout=5, what="the job's process to die")
    assert state_of(provider, job_id).state == JobState.CANCELLED  # terminal: not overwritten by polls


def test_cancel_of_a_queued_job_and_of_a_finished_one(fake_cobalt, tmp_path, wait_for):
    fake_cobalt.configure(queue_seconds=30)
    provider = make_provider(tmp_path)
    job_id = provider.submit("sleep 300", 1, "faasx.block-0")
    assert state_of(provider, job_id).state == JobState.PENDING
    assert provider.cancel([job_id]) == [True]
    wait_for(lambda: int(job_id) not in fake_cobalt.jobs(), timeout=5, what="the queued job to go")
    assert provider.cancel([job_id]) == [True]  # already gone: qdel has nothing to do, and says so with 0


def test_walltime_expiry_ends_the_job(fake_cobalt, tmp_path, wait_for):
    pidfile = tmp_path / "pid"
    provider = make_provider(tmp_path, walltime="00:00:02")
    start = time.monotonic()
    job_id = provider.submit(f"echo $$ > {pidfile}; exec sleep 300", 1, "faasx.block-0")
    final = wait_for(lambda: (s := state_of(provider, job_id)).terminal and s, timeout=15,
                     what="the job to hit its walltime")
    assert final.state == JobState.TIMEOUT, final
    assert time.monotonic() - start < 10
    pid = int(pidfile.read_text())
    assert not os.path.exists(f"/proc/{pid}")
    assert "maximum execution time" in open(provider.resources[job_id]["cobaltlog"]).read()


def test_failing_job_is_failed_with_its_exit_code_and_stderr(fake_cobalt, tmp_path, wait_for):
    provider = make_provider(tmp_path, worker_init="echo 'python3: command not found' >&2; exit 3")
    job_id = provider.submit("echo never", 1, "faasx.block-0")
    final = wait_for(lambda: (s := state_of(provider, job_id)).terminal and s, timeout=10,
                     what="the job to fail")
    assert final.state == JobState.FAILED, final
    assert final.exit_code == 3
    assert "command not found" in final.stderr  # what the engine shows for a block that never connected


def test_job_deleted_by_someone_else_before_it_was_seen_is_missing(fake_cobalt, tmp_path, wait_for):
    fake_cobalt.configure(queue_seconds=30)
    provider = make_provider(tmp_path)
    job_id = provider.submit("sleep 300", 1, "faasx.block-0")
    subprocess.run(["qdel", job_id], check=True, capture_output=True, timeout=10)  # an admin, say
    wait_for(lambda: int(job_id) not in fake_cobalt.jobs(), timeout=5, what="the job to go")
    status = state_of(provider, job_id)
    assert status.state == JobState.MISSING, status
    assert "without ever being listed" in status.message


def test_qsub_rejection_raises_scale_out_failed_with_cobalt_stderr(fake_cobalt, tmp_path):
    provider = make_provider(tmp_path, queue="no-such-queue")
    with pytest.raises(ScaleOutFailed) as info:
        provider.submit("echo hi", 1, "faasx.block-0")
    error = info.value
    assert "queue 'no-such-queue' does not exist" in error.stderr
    assert error.retcode == 1
    assert "no-such-queue" in str(error) and error.provider == "cobalt"
    assert fake_cobalt.jobs() == {}

    fake_cobalt.configure(projects=["GoodProject"])
    provider = make_provider(tmp_path, account="SpentProject")
    with pytest.raises(ScaleOutFailed, match="project 'SpentProject' is not valid"):
        provider.submit("echo hi", 1, "faasx.block-0")


def test_too_many_nodes_is_rejected(fake_cobalt, tmp_path):
    fake_cobalt.configure(max_nodes=4)
    provider = make_provider(tmp_path, nodes_per_block=8)
    with pytest.raises(ScaleOutFailed, match="node count 8 out of range"):
        provider.submit("echo hi", 1, "faasx.block-0")


def test_missing_qsub_says_so(fake_cobalt, tmp_path, monkeypatch):
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    provider = make_provider(tmp_path)
    with pytest.raises(ScaleOutFailed) as info:
        provider.submit("echo hi", 1, "faasx.block-0")
    assert "qsub not found on PATH" in str(info.value)
    assert "Cobalt" in str(info.value)


def test_transient_qstat_failure_is_retried(fake_cobalt, tmp_path, wait_for):
    provider = make_provider(tmp_path)
    job_id = provider.submit("sleep 300", 1, "faasx.block-0")
    wait_for(lambda: state_of(provider, job_id).state == JobState.RUNNING, timeout=10, what="running")
    fake_cobalt.fail_next_qstat(2)  # two failures, the third try answers
    assert state_of(provider, job_id).state == JobState.RUNNING
    assert fake_cobalt.qstat_failures_left() == 0


def test_persistent_qstat_failure_keeps_last_states_and_never_raises(fake_cobalt, tmp_path, wait_for, caplog):
    provider = make_provider(tmp_path)
    job_id = provider.submit("sleep 300", 1, "faasx.block-0")
    wait_for(lambda: state_of(provider, job_id).state == JobState.RUNNING, timeout=10, what="running")
    fake_cobalt.fail_next_qstat(100)
    with caplog.at_level(logging.WARNING):
        status = state_of(provider, job_id)
    assert status.state == JobState.RUNNING
    assert "failed 3 times" in caplog.text and "Connection refused" in caplog.text


def test_status_without_qstat_on_path_never_raises(fake_cobalt, tmp_path, wait_for, monkeypatch, caplog):
    provider = make_provider(tmp_path)
    job_id = provider.submit("sleep 300", 1, "faasx.block-0")
    first = state_of(provider, job_id).state
    path = os.environ["PATH"]
    monkeypatch.setenv("PATH", str(tmp_path))
    with caplog.at_level(logging.ERROR):
        assert state_of(provider, job_id).state == first
    assert "qstat not found" in caplog.text
    monkeypatch.setenv("PATH", path)
    assert provider.cancel([job_id]) == [True]


def test_status_of_a_job_this_provider_did_not_submit_is_unknown(tmp_path):
    provider = make_provider(tmp_path)
    assert provider.status(["999"])[0].state == JobState.UNKNOWN
