"""The generic Slurm and PBS configurations running the faasx engine on the real local Slurm cluster
(``ci/start-slurm.sh``; PBS through Slurm's Torque-style qsub/qstat/qdel).  Marked ``slurm``: skipped
without a cluster, failed instead when ``FAASX_REQUIRE_SLURM=1``."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from tests.support import wait_until

HERE = os.path.dirname(os.path.abspath(__file__))
# Tasks are functions of this module, sent by reference: the blocks import it.
WORKER_INIT = f"export PYTHONPATH={HERE}${{PYTHONPATH:+:$PYTHONPATH}}"


def where_am_i():
    import os
    return {k: os.environ.get(k) for k in ("SLURM_JOB_ID", "SLURM_STEP_ID", "FAASX_BLOCK_JOB_ID",
                                           "FAASX_WALLTIME_END")}


@pytest.fixture
def slurm_env(monkeypatch):
    conf = os.environ.get("SLURM_CONF") or os.path.join(os.environ.get("SLURM_CI_DIR", "/tmp/slurm-ci"), "etc",
                                                       "slurm.conf")
    reason = None
    if not os.path.isfile(conf):
        reason = f"{conf} does not exist"
    else:
        env = dict(os.environ, SLURM_CONF=conf)
        try:
            ping = subprocess.run(["scontrol", "ping"], env=env, capture_output=True, text=True, timeout=20)
            if "UP" not in ping.stdout:
                reason = f"scontrol ping: {ping.stdout.strip()} {ping.stderr.strip()}"
        except (OSError, subprocess.TimeoutExpired) as e:
            reason = f"scontrol ping failed: {e}"
    if reason:
        reason = f"no usable Slurm cluster: {reason} (start one with ci/start-slurm.sh)"
        if os.environ.get("FAASX_REQUIRE_SLURM") == "1":
            pytest.fail(f"FAASX_REQUIRE_SLURM=1 but {reason}", pytrace=False)
        pytest.skip(reason)
    monkeypatch.setenv("SLURM_CONF", conf)
    partitions = subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, text=True, timeout=20,
                                check=True).stdout.split()
    default = [p.rstrip("*") for p in partitions if p.endswith("*")] or [partitions[0]]
    return default[0]


def _live_jobs(job_ids) -> set:
    out = subprocess.run(["squeue", "-h", "-o", "%i %T"], capture_output=True, text=True, timeout=20).stdout
    return {line.split()[0] for line in out.splitlines()
            if line.split()[0] in job_ids and line.split()[1] in ("PENDING", "RUNNING", "CONFIGURING", "COMPLETING")}


@pytest.mark.slurm
@pytest.mark.parametrize("site", ["slurm_cluster", "pbs_cluster"])
def test_generic_config_runs_functions_on_the_real_cluster(site, slurm_env, tmp_path):
    import faasx
    from faasx.configs import executor_kwargs
    if site == "slurm_cluster":
        kwargs = executor_kwargs(site, slurm_env, exclusive=False, cores_per_node=1, walltime="00:05:00",
                                 worker_init=WORKER_INIT)
    else:  # Slurm's Torque-style qsub: one node per block, SingleNodeLauncher
        kwargs = executor_kwargs(site, queue=slurm_env, cpus_per_node=1, dialect="torque", walltime="00:05:00",
                                 worker_init=WORKER_INIT)
    kwargs.update(max_workers_per_node=1, heartbeat_period=1, heartbeat_threshold=5)
    with faasx.Executor(run_dir=str(tmp_path / "run"), **kwargs) as ex:
        seen = ex.submit(where_am_i).result(timeout=120)
        job_ids = set(kwargs["provider"].resources)
    assert seen["SLURM_JOB_ID"] in job_ids, (seen, job_ids)
    assert seen["FAASX_BLOCK_JOB_ID"], "the job exported its block id before the launcher ran"
    assert int(seen["FAASX_WALLTIME_END"]) > time.time()
    if site == "slurm_cluster":
        assert seen["SLURM_STEP_ID"] not in (None, "batch"), "the manager ran in an srun step, not the batch script"
    wait_until(lambda: not _live_jobs(job_ids), 60, lambda: f"jobs {_live_jobs(job_ids)} to leave squeue after "
               "shutdown", interval=0.5)
