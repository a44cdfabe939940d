"""Issue 10, section 1, for batch blocks: a job's submit script and its stdout/stderr are 0600 in a 0700
directory whatever the umask, also after the real scheduler has run the job and written its output
(Slurm, and PBS through Slurm's Torque-style qsub).  The fixtures are tests/providers' (a real
single-node Slurm cluster)."""
from __future__ import annotations

import os
import stat

import pytest
from parsl.jobs.states import JobState

from tests.providers.conftest import pbs_provider, slurm_cluster, slurm_provider, wait_for  # noqa: F401


def _modes(directory: str) -> dict:
    return {name: oct(stat.S_IMODE(os.lstat(os.path.join(directory, name)).st_mode))
            for name in os.listdir(directory)}


@pytest.mark.slurm
@pytest.mark.parametrize("scheduler", ["slurm", "pbs"])
def test_a_batch_jobs_script_and_output_are_private(scheduler, slurm_provider, pbs_provider, wait_for,
                                                   umask_zero, open_dir):
    provider = slurm_provider() if scheduler == "slurm" else pbs_provider()
    provider.script_dir = os.path.join(open_dir, "submit_scripts")
    job_id = provider.submit("echo out-of-the-job; echo err-of-the-job >&2", 1, "faasx.sec")
    status = wait_for(lambda: (lambda s: s if s.terminal else None)(provider.status([job_id])[0]), 120,
                      what=f"{scheduler} job {job_id} to end")
    assert status.state == JobState.COMPLETED, status
    modes = _modes(provider.script_dir)
    assert oct(stat.S_IMODE(os.stat(provider.script_dir).st_mode)) == "0o700"
    assert len(modes) >= 3 and set(modes.values()) == {"0o600"}, modes
    with open(status.stdout_path) as f:
        assert "out-of-the-job" in f.read()      # the scheduler wrote into the file we made
