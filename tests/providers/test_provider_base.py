"""faasx.providers.base: running scheduler commands (timeouts, missing commands, retries) and the
job-script contract with the engine (FAASX_WALLTIME_END)."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from faasx.errors import ScaleOutFailed
from faasx.providers.base import (CommandNotFound, CommandTimeout, format_walltime, job_environment, run_command,
                                  status_command, submit_command, walltime_to_seconds)
from tests.support import alive, wait_until


def _script(path, body):
    path.write_text("#!/bin/bash\n" + body)
    path.chmod(0o755)
    return str(path)


def test_run_command_returns_output_and_exit_code():
    result = run_command(["bash", "-c", "echo out; echo err >&2; exit 3"], 5)
    assert result == (3, "out\n", "err\n")


def test_timeout_kills_the_whole_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    start = time.monotonic()
    with pytest.raises(CommandTimeout, match="did not finish within 0.5 s"):
        # the command forks a grandchild that would outlive a plain kill of the command
        run_command(["bash", "-c", f"sleep 60 & echo $! > {pidfile}; wait"], 0.5)
    assert time.monotonic() - start < 5
    child = int(pidfile.read_text())
    wait_until(lambda: not alive(child), 5, "the timed-out command's child to be gone")


def test_missing_command_names_the_scheduler(tmp_path):
    with pytest.raises(CommandNotFound) as info:
        run_command(["sbatch", "x.sh"], 5, bin_dir=str(tmp_path))
    assert str(info.value).startswith(f"sbatch not found in {tmp_path}: is this a Slurm login node?")
    with pytest.raises(CommandNotFound, match="qsub not found on PATH: is this a PBS login node"):
        _without_path(lambda: run_command(["qsub"], 5))
    with pytest.raises(CommandNotFound, match="is this a Cobalt login node"):
        run_command(["qsub"], 5, bin_dir=str(tmp_path), scheduler="Cobalt")


def _without_path(fn):
    old = os.environ["PATH"]
    os.environ["PATH"] = "/nonexistent"
    try:
        return fn()
    finally:
        os.environ["PATH"] = old


def test_submit_failure_is_scale_out_failed_with_stderr(tmp_path):
    sbatch = _script(tmp_path / "sbatch", "echo 'sbatch: error: Batch job submission failed: Invalid account' >&2; exit 1\n")
    with pytest.raises(ScaleOutFailed) as info:
        submit_command("SlurmProvider", [sbatch, "job.sh"], 5, "block-0")
    err = info.value
    assert err.retcode == 1 and "Invalid account" in err.stderr and err.job_name == "block-0"
    assert "Invalid account" in str(err) and "SlurmProvider could not start a block" in str(err)
    with pytest.raises(ScaleOutFailed, match="sbatch not found in"):
        submit_command("SlurmProvider", ["sbatch", "job.sh"], 5, "block-1", bin_dir=str(tmp_path / "empty"))
    with pytest.raises(ScaleOutFailed, match="did not finish within"):
        submit_command("SlurmProvider", ["sleep", "5"], 0.3, "block-2")


def test_status_command_retries_a_transient_failure(tmp_path):
    counter = tmp_path / "calls"
    squeue = _script(tmp_path / "squeue", f"""
echo x >> {counter}
if [ $(wc -l < {counter}) -lt 3 ]; then echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1; fi
echo '42|RUNNING|0|None'
""")
    result = status_command([squeue], 5, tries=3, backoff=0.01)
    assert result is not None and result.stdout == "42|RUNNING|0|None\n"
    assert len(counter.read_text().split()) == 3


def test_status_command_gives_up_quietly(tmp_path, caplog):
    counter = tmp_path / "calls"
    squeue = _script(tmp_path / "squeue", f"echo x >> {counter}; echo 'down' >&2; exit 1\n")
    assert status_command([squeue], 5, tries=2, backoff=0.01) is None
    assert len(counter.read_text().split()) == 2
    assert "keeping the last known job states" in caplog.text
    assert status_command(["squeue"], 5, bin_dir=str(tmp_path / "empty")) is None  # missing: no raise


@pytest.mark.parametrize("text,seconds", [("00:10:00", 600), ("1:02:03", 3723), ("48:00:00", 172800),
                                          ("2-01:00:00", 176400), ("00:00:05", 5)])
def test_walltime_parsing(text, seconds):
    assert walltime_to_seconds(text) == seconds
    assert walltime_to_seconds(format_walltime(seconds)) == seconds


@pytest.mark.parametrize("bad", ["10", "10:00", "00:61:00", "1h", ""])
def test_bad_walltime_is_rejected(bad):
    with pytest.raises(ValueError, match="walltime"):
        walltime_to_seconds(bad)


def test_job_environment_exports_the_walltime_end_when_run():
    lines = job_environment(600, "SLURM_JOB_ID", cores=4, mem_gb=8)
    before = int(time.time())
    out = subprocess.run(["bash", "-c", lines + 'echo "$FAASX_WALLTIME_END $FAASX_BLOCK_JOB_ID $PARSL_CORES '
                                                '$PARSL_MEMORY_GB"'],
                         env=dict(os.environ, SLURM_JOB_ID="77"), capture_output=True, text=True, check=True)
    end, job_id, cores, mem = out.stdout.split()
    assert before + 600 <= int(end) <= int(time.time()) + 600
    assert (job_id, cores, mem) == ("77", "4", "8")
