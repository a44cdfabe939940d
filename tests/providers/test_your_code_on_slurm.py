"""Your own code on a cluster (issue 10, section 5), on the real local Slurm cluster.

A script in a directory of its own imports ``from helpers import square`` (a module next to it) and is
started as users start scripts, ``python /path/to/project/main.py`` from another directory, with a
``SlurmProvider``.  What reaches the nodes: the functions the script defines travel by value; ``helpers``
travels by reference, and the workers import it from the script's directory, which the manager puts first
on their ``PYTHONPATH`` when the node sees it.  Here the node is this host, so a directory under ``/tmp``
is "on a shared file system"; a directory the node does not see is made with a mount namespace of the
script's own (``tests.support.run_project``, ``node_local=True``).
"""
from __future__ import annotations

import os
import subprocess
import uuid

import pytest

from tests import support

WORKER_DIR = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def tagged_jobs(slurm_cluster):
    """A comment that tags the script's Slurm jobs; any still queued at teardown is cancelled."""
    tag = f"faasx-your-code-{uuid.uuid4().hex[:8]}"
    yield tag
    out = subprocess.run(["squeue", "-h", "-o", "%i %k"], capture_output=True, text=True, timeout=10)
    left = [line.split()[0] for line in out.stdout.splitlines() if line.endswith(tag)]
    if left:
        subprocess.run(["scancel", *left], capture_output=True, timeout=10)


def config(slurm_cluster, tmp_path, tag):
    return {"provider": {"partition": slurm_cluster.partition, "exclusive": False, "walltime": "00:05:00",
                         "init_blocks": 1, "min_blocks": 1, "max_blocks": 1,
                         "scheduler_options": f"#SBATCH --comment={tag}"},
            "executor": {"max_workers_per_node": 1, "run_dir": str(tmp_path / "run"), "heartbeat_period": 1,
                         "heartbeat_threshold": 10},
            "managers": 1, "tasks": 2}


def script_env():
    """The user's environment: faasx importable (this checkout), the project's directory not on any path."""
    return dict(os.environ, PYTHONPATH=WORKER_DIR)


@pytest.mark.slurm
def test_a_module_next_to_the_script_reaches_a_slurm_block_through_the_shared_file_system(
        slurm_cluster, tmp_path, tagged_jobs, squeue_ids):
    project = tmp_path / "project"
    support.write_project(str(project))
    report = support.run_project(str(project), config(slurm_cluster, tmp_path, tagged_jobs), script_env())
    assert "error" not in report, report
    assert report["squares"] == [0, 1, 4, 9]
    jobs = set(report["jobs"])
    assert len(jobs) == 1 and {w["job"] for w in report["where"]} == jobs, "the tasks ran in the Slurm job"
    assert not jobs & squeue_ids(), "the block left the queue at shutdown"


@pytest.mark.slurm
def test_a_module_the_nodes_cannot_see_fails_naming_the_module_the_directory_and_the_fix(
        slurm_cluster, tmp_path, tagged_jobs):
    if os.geteuid() != 0:
        pytest.skip("hiding the project from the node needs a mount namespace: run as root (ci/test.sh does)")
    node_local = tmp_path / "node-local"
    node_local.mkdir()
    project = node_local / "project"
    report = support.run_project(str(project), config(slurm_cluster, tmp_path, tagged_jobs), script_env(),
                                 node_local=True)
    assert not project.exists(), "the project directory was only in the script's own mount namespace"
    error = report.get("error")
    assert error is not None, report
    assert error["type"] == "ModuleNotFoundError" and error["name"] == "helpers", error
    message = error["message"]
    assert "No module named 'helpers' on node" in message and str(project) in message, message
    assert "does not exist on this node" in message and "Fix:" in message, message
    assert "file system the nodes share" in message and "worker_init" in message, message
