"""SlurmProvider: the sbatch script it writes, its state mapping, and the real thing on the local cluster."""
from __future__ import annotations

import inspect
import os
import subprocess
import time

import pytest
from parsl.jobs.states import JobState
from parsl.providers import SlurmProvider as ParslSlurmProvider

from faasx.errors import ScaleOutFailed
from faasx.providers import SlurmProvider
from faasx.providers.slurm import slurm_job_status


def _directives(script):
    return [line[len("#SBATCH "):] for line in script.splitlines() if line.startswith("#SBATCH ")]


# -- the submit script -------------------------------------------------------------------------------------
def test_script_carries_every_option():
    p = SlurmProvider(partition="regular", account="m1234", qos="premium", constraint="gpu", clusters="perlmutter",
                      nodes_per_block=4, cores_per_node=64, mem_per_node=200, gpus_per_node=4, gres="craynetwork:1",
                      walltime="1-12:30:05", scheduler_options="#SBATCH --reservation=demo\n",
                      worker_init="module load python\nconda activate faasx")
    script = p.submit_script("faasx-manager --x", tasks_per_node=2, job_name="blk", stdout_path="/o",
                             stderr_path="/e")
    assert _directives(script) == [
        "--job-name=blk", "--output=/o", "--error=/e", "--nodes=4", "--ntasks-per-node=2", "--time=36:30:05",
        "--exclusive", "--partition=regular", "--account=m1234", "--qos=premium", "--constraint=gpu",
        "--clusters=perlmutter", "--gpus-per-node=4", "--gres=craynetwork:1", "--mem=200G", "--cpus-per-task=32",
        "--reservation=demo",  # the user's scheduler_options come last, so they win
    ]
    lines = script.splitlines()
    # sbatch stops reading directives at the first command: all of them must come first
    last_directive = max(i for i, line in enumerate(lines) if line.startswith("#SBATCH"))
    first_command = min(i for i, line in enumerate(lines) if line.strip() and not line.startswith("#"))
    assert last_directive < first_command
    end = lines.index("export FAASX_WALLTIME_END=$(( $(date +%s) + 131405 ))")
    assert lines[end + 1] == 'export FAASX_BLOCK_JOB_ID="${SLURM_JOB_ID:-}"'
    assert "export PARSL_CORES=32" in lines and "export PARSL_MEMORY_GB=200" in lines
    # the end time is computed before worker_init (which may take minutes) and before the launcher
    assert end < lines.index("module load python") < lines.index("conda activate faasx")
    assert lines.index("conda activate faasx") < next(i for i, line in enumerate(lines) if "faasx-manager --x" in line)


def test_script_omits_what_is_not_set():
    script = SlurmProvider(exclusive=False, walltime="00:10:00").submit_script("true")
    assert _directives(script) == ["--job-name=faasx.block", "--output=faasx.block.stdout",
                                   "--error=faasx.block.stderr", "--nodes=1", "--ntasks-per-node=1", "--time=00:10:00"]
    assert "PARSL_CORES" not in script and "PARSL_MEMORY_GB" not in script


def test_fractional_memory_is_requested_in_megabytes():
    assert "--mem=1536M" in _directives(SlurmProvider(mem_per_node=1.5).submit_script("true"))


def test_parsl_config_ports_by_changing_the_import():
    """Every argument of Parsl's SlurmProvider is accepted and stored under its own name (RepresentationMixin)."""
    parsl_args = set(inspect.signature(ParslSlurmProvider.__init__).parameters) - {"self"}
    ours = inspect.signature(SlurmProvider.__init__).parameters
    assert parsl_args <= set(ours)
    values = dict(partition="p", account="a", qos="q", constraint="c", clusters="k", nodes_per_block=2,
                  cores_per_node=8, mem_per_node=4, gpus_per_node=1, gres="g", init_blocks=0, min_blocks=0,
                  max_blocks=5, parallelism=0.5, walltime="02:00:00", scheduler_options="#SBATCH -x",
                  regex_job_id=r"(?P<id>\d+)", worker_init="w", cmd_timeout=20, status_batch_size=7,
                  exclusive=False, bin_dir="/opt/slurm/bin")
    p = SlurmProvider(**values)
    for name in ours:
        if name != "self":
            assert hasattr(p, name), name
    for name, value in values.items():
        assert getattr(p, name) == value, name
    assert "partition='p'" in repr(p) and "bin_dir='/opt/slurm/bin'" in repr(p)
    assert p.label == "slurm" and p.status_polling_interval == 60


def test_bad_walltime_fails_at_construction():
    with pytest.raises(ValueError, match="HH:MM:SS"):
        SlurmProvider(walltime="90 minutes")


@pytest.mark.parametrize("state,reason,code,expected", [
    ("PENDING", "Priority", "", JobState.PENDING),
    ("PENDING", "JobHeldUser", "", JobState.HELD),
    ("CONFIGURING", "None", "", JobState.PENDING),
    ("RUNNING", "None", "0", JobState.RUNNING),
    ("COMPLETING", "None", "0", JobState.RUNNING),
    ("SUSPENDED", "None", "", JobState.HELD),
    ("COMPLETED", "None", "0", JobState.COMPLETED),
    ("CANCELLED by 0", "", "0:15", JobState.CANCELLED),
    ("FAILED", "NonZeroExitCode", "768", JobState.FAILED),  # squeue: raw wait status (exit 3)
    ("FAILED", "", "3:0", JobState.FAILED),  # sacct: exit code:signal
    ("OUT_OF_MEMORY", "", "0:125", JobState.FAILED),
    ("NODE_FAIL", "", "", JobState.FAILED),
    ("BOOT_FAIL", "", "", JobState.FAILED),
    ("TIMEOUT", "TimeLimit", "0", JobState.TIMEOUT),
    ("DEADLINE", "", "", JobState.TIMEOUT),
    ("PREEMPTED", "", "", JobState.TIMEOUT),
    ("SOMETHING_NEW", "", "", JobState.UNKNOWN),
])
def test_state_mapping(state, reason, code, expected):
    status = slurm_job_status(state, reason, code)
    assert status.state == expected
    if expected == JobState.FAILED and code in ("768", "3:0"):
        assert status.exit_code == 3


def test_missing_commands_give_a_clear_error(tmp_path):
    p = SlurmProvider(bin_dir=str(tmp_path))
    p.script_dir = str(tmp_path / "scripts")
    with pytest.raises(ScaleOutFailed) as info:
        p.submit("true", 1)
    assert f"sbatch not found in {tmp_path}: is this a Slurm login node?" in str(info.value)
    # status never raises: it keeps what it knew
    p.resources["5"] = {"job_id": "5", "status": slurm_job_status("RUNNING"), "job_stdout_path": None,
                        "job_stderr_path": None}
    assert [s.state for s in p.status(["5"])] == [JobState.RUNNING]
    assert p.cancel(["5"]) == [False]


def test_missing_sbatch_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    p = SlurmProvider()
    p.script_dir = str(tmp_path / "scripts")
    with pytest.raises(ScaleOutFailed, match="sbatch not found on PATH: is this a Slurm login node"):
        p.submit("true", 1)


# -- on the real cluster -----------------------------------------------------------------------------------
def _marker_command(path):
    return f'echo "$SLURM_JOB_ID $FAASX_BLOCK_JOB_ID $FAASX_WALLTIME_END" > {path}'


def _final(provider, job_id, wait_for, timeout=60):
    seen = []

    def ended():
        status = provider.status([job_id])[0]
        if not seen or seen[-1] != status.state:
            seen.append(status.state)
        return status if status.terminal else None
    return wait_for(ended, timeout=timeout, what=f"job {job_id} to end"), seen


@pytest.mark.slurm
def test_job_runs_with_the_walltime_contract(slurm_provider, tmp_path, wait_for):
    p = slurm_provider(walltime="00:05:00")
    marker = tmp_path / "marker"
    submitted = int(time.time())
    job_id = p.submit(_marker_command(marker), 1, "faasx.test")
    assert job_id.isdigit()
    status, seen = _final(p, job_id, wait_for)
    assert status.state == JobState.COMPLETED, (status, status.stderr)
    assert set(seen) <= {JobState.PENDING, JobState.RUNNING, JobState.COMPLETED} and seen[-1] == JobState.COMPLETED
    slurm_id, block_id, end = marker.read_text().split()
    assert slurm_id == job_id and block_id == job_id
    assert submitted + 300 <= int(end) <= int(time.time()) + 300
    assert os.path.exists(status.stdout_path)  # the job's own output file is reported


@pytest.mark.slurm
def test_two_blocks_run_at_the_same_time(slurm_provider, tmp_path, wait_for, slurm_cluster):
    if slurm_cluster.cpus < 2:
        pytest.skip("needs a node with 2 CPUs")
    p = slurm_provider()
    # Each job announces itself, then waits for the other one: both can only succeed if they overlap.
    cmd = ('touch {dir}/$SLURM_JOB_ID; for i in $(seq 100); do [ $(ls {dir} | wc -l) -ge 2 ] && exit 0; '
           'sleep 0.1; done; exit 1').format(dir=tmp_path / "barrier")
    (tmp_path / "barrier").mkdir()
    jobs = [p.submit(cmd, 1), p.submit(cmd, 1)]
    for job_id in jobs:
        status, _ = _final(p, job_id, wait_for)
        assert status.state == JobState.COMPLETED, (job_id, status, status.stdout, status.stderr)
    assert sorted(os.listdir(tmp_path / "barrier")) == sorted(jobs)


@pytest.mark.slurm
def test_cancel_a_running_block(slurm_provider, cancel_a_running_job):
    job_id = cancel_a_running_job(slurm_provider())
    # Slurm itself says CANCELLED (a fresh provider, which never cancelled anything, asks it)
    fresh = SlurmProvider()
    assert fresh.status([job_id])[0].state == JobState.CANCELLED


@pytest.mark.slurm
def test_failing_job_is_failed_with_its_exit_code(slurm_provider, wait_for):
    p = slurm_provider()
    job_id = p.submit("exit 3", 1)
    status, _ = _final(p, job_id, wait_for)
    assert status.state == JobState.FAILED and status.exit_code == 3, status


@pytest.mark.slurm
def test_rejected_job_carries_sbatch_stderr(slurm_provider):
    p = slurm_provider(partition="no_such_partition")
    with pytest.raises(ScaleOutFailed) as info:
        p.submit("true", 1, "faasx.rejected")
    err = info.value
    assert "invalid partition specified: no_such_partition" in err.stderr
    assert err.retcode == 1 and err.job_name.startswith("faasx.rejected")
    assert "invalid partition specified" in str(err)
    assert p.resources == {}


@pytest.mark.slurm
def test_unknown_job_id_is_reported_ended_not_raised(slurm_provider):
    p = slurm_provider()
    status = p.status(["999999"])[0]
    assert status.state == JobState.COMPLETED and "no longer known" in status.message
    assert p.cancel(["999998"]) == [True]  # nothing left to cancel


def _wrapper_dir(tmp_path, fail_squeue_calls):
    """A bin_dir with the real Slurm commands, except a squeue that fails its first N calls."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "scancel", "sacct"):
        os.symlink(subprocess.check_output(["which", name], text=True).strip(), bin_dir / name)
    real = subprocess.check_output(["which", "squeue"], text=True).strip()
    counter = tmp_path / "squeue_calls"
    (bin_dir / "squeue").write_text(f"""#!/bin/bash
echo call >> {counter}
if [ $(wc -l < {counter}) -le {fail_squeue_calls} ]; then
  echo 'squeue: error: slurm_load_jobs error: Socket timed out on send/recv operation' >&2
  exit 1
fi
exec {real} "$@"
""")
    (bin_dir / "squeue").chmod(0o755)
    return str(bin_dir), counter


@pytest.mark.slurm
def test_transient_squeue_failure_is_retried(slurm_provider, tmp_path, wait_for, squeue_ids):
    bin_dir, counter = _wrapper_dir(tmp_path, fail_squeue_calls=1)
    p = slurm_provider(bin_dir=bin_dir)
    job_id = p.submit("true", 1)
    wait_for(lambda: job_id not in squeue_ids(), timeout=30, what="the job to finish")
    assert p.status([job_id])[0].state == JobState.COMPLETED  # one call failed, the retry answered
    assert counter.read_text().split() == ["call", "call"]


@pytest.mark.slurm
def test_persistent_squeue_failure_keeps_last_state(slurm_provider, tmp_path, wait_for, squeue_ids, caplog):
    bin_dir, counter = _wrapper_dir(tmp_path, fail_squeue_calls=1000)
    p = slurm_provider(bin_dir=bin_dir)
    job_id = p.submit("true", 1)
    wait_for(lambda: job_id not in squeue_ids(), timeout=30, what="the job to finish")
    assert p.status([job_id])[0].state == JobState.PENDING  # last known; no exception
    assert len(counter.read_text().split()) == p.status_tries
    assert "keeping the last known job states" in caplog.text


@pytest.mark.slurm
def test_under_parsl_high_throughput_executor(slurm_cluster, tmp_path, squeue_ids, wait_for):
    """faasx's SlurmProvider drives Parsl's own HighThroughputExecutor on the real cluster."""
    import parsl
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor

    here = os.path.dirname(os.path.abspath(__file__))
    provider = SlurmProvider(partition=slurm_cluster.partition, exclusive=False, walltime="00:05:00",
                             init_blocks=1, min_blocks=0, max_blocks=1,
                             # the app is defined in this test module: workers must be able to import it
                             worker_init=f"export PYTHONPATH={here}:{os.path.dirname(os.path.dirname(here))}")
    htex = HighThroughputExecutor(label="htex_slurm", provider=provider, max_workers_per_node=1,
                                  address="127.0.0.1", worker_logdir_root=str(tmp_path / "workers"))

    @parsl.python_app
    def where():
        import os
        return os.environ.get("SLURM_JOB_ID"), os.environ.get("FAASX_BLOCK_JOB_ID")

    dfk = parsl.load(Config(executors=[htex], run_dir=str(tmp_path / "runinfo"), strategy="none",
                            initialize_logging=False))
    try:
        slurm_id, block_id = where().result(timeout=90)
        job_ids = list(provider.resources)
        assert slurm_id in job_ids and block_id == slurm_id
    finally:
        dfk.cleanup()
        parsl.clear()
    wait_for(lambda: not (set(job_ids) & squeue_ids()), timeout=30, what="HTEX's block to be cancelled")
