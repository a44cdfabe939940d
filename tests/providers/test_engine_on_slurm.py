"""The faasx engine on blocks from the real local Slurm cluster (and its Torque-style qsub)."""
from __future__ import annotations

import os
import time

import pytest

import faasx
from faasx.providers import PBSProProvider, SlurmProvider


# Tasks are functions of this module, sent by reference: the blocks must be able to import it.
WORKER_INIT = f"export PYTHONPATH={os.path.dirname(os.path.abspath(__file__))}${{PYTHONPATH:+:$PYTHONPATH}}"


def block_job_id():
    import os
    import time
    time.sleep(0.2)  # keep a worker busy so the next task goes to the other block
    return os.environ.get("SLURM_JOB_ID"), os.environ.get("FAASX_BLOCK_JOB_ID")


def _collect(ex, wanted, deadline_s=60):
    seen = set()
    deadline = time.monotonic() + deadline_s
    while len(seen) < wanted:
        assert time.monotonic() < deadline, f"only blocks {seen} served tasks"
        seen |= {f.result(timeout=60) for f in [ex.submit(block_job_id) for _ in range(8)]}
    return seen


@pytest.mark.slurm
def test_two_slurm_blocks_serve_tasks_and_leave_at_shutdown(slurm_cluster, tmp_path, squeue_ids, wait_for):
    if slurm_cluster.cpus < 2:
        pytest.skip("needs a node with 2 CPUs")
    provider = SlurmProvider(partition=slurm_cluster.partition, exclusive=False, walltime="00:05:00",
                             init_blocks=2, min_blocks=2, max_blocks=2, worker_init=WORKER_INIT)
    with faasx.Executor(provider=provider, max_workers_per_node=1, heartbeat_period=1, heartbeat_threshold=5,
                        run_dir=str(tmp_path / "run")) as ex:
        seen = _collect(ex, 2)
        job_ids = set(provider.resources)
    assert len(job_ids) == 2
    # each manager runs inside its own Slurm job, and FAASX_BLOCK_JOB_ID is that job
    assert {slurm_id for slurm_id, _ in seen} == job_ids
    assert all(slurm_id == block_id for slurm_id, block_id in seen)
    wait_for(lambda: not (job_ids & squeue_ids()), timeout=30, what="the blocks to leave squeue after shutdown")


@pytest.mark.slurm
def test_engine_on_a_torque_style_pbs_block(slurm_cluster, tmp_path, squeue_ids, wait_for):
    provider = PBSProProvider(walltime="00:05:00", init_blocks=1, min_blocks=1, max_blocks=1, cmd_timeout=20,
                              worker_init=WORKER_INIT)
    with faasx.Executor(provider=provider, max_workers_per_node=1, heartbeat_period=1, heartbeat_threshold=5,
                        run_dir=str(tmp_path / "run")) as ex:
        seen = _collect(ex, 1)
        job_ids = set(provider.resources)
    assert provider.detected_dialect == "torque"
    assert {block_id for _, block_id in seen} == job_ids  # PBS_JOBID, exported as FAASX_BLOCK_JOB_ID
    wait_for(lambda: not (job_ids & squeue_ids()), timeout=30, what="the PBS block to leave the queue")
