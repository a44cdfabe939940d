"""Your own code on a multi-node cluster (issue 10, section 5): a script in a directory of its own,
``from helpers import square`` next to it, started as ``python /path/to/project/main.py`` from ``/``, on a
2-node block of the real multi-node Slurm cluster.  The nodes are network namespaces of this host that
share its file system, so the project directory is "on a shared file system": every node's workers import
``helpers`` from it (the script's directory, first on their ``PYTHONPATH``).  The case of a directory the
nodes cannot see is tested on the single-node cluster (``tests/providers/test_your_code_on_slurm.py``)."""
from __future__ import annotations

import os
import uuid

from tests import support

from mn_support import HERE

WORKER_DIR = os.path.dirname(os.path.dirname(HERE))


def test_a_module_next_to_the_script_reaches_every_node_of_a_block(multinode, tmp_path):
    cluster = multinode.cluster
    project = tmp_path / "project"
    support.write_project(str(project))
    run_dir = str(tmp_path / "run")
    multinode.run_dirs.append(run_dir)          # the fixture checks that no process of it is left
    tag = f"faasx-your-code-{uuid.uuid4().hex[:8]}"
    config = {"provider": {"partition": cluster.partition, "exclusive": False, "cores_per_node": 1,
                           "mem_per_node": 0.25, "walltime": "00:05:00", "nodes_per_block": 2, "init_blocks": 1,
                           "min_blocks": 1, "max_blocks": 1, "srun": True,
                           "scheduler_options": f"#SBATCH --comment={tag}"},
              "executor": {"encrypted": True, "max_workers_per_node": 1, "prefetch_capacity": 0,
                           "heartbeat_period": 0.5, "heartbeat_threshold": 4.0, "strategy": "none",
                           "run_dir": run_dir},
              "managers": 2, "tasks": 12}
    env = dict(os.environ, PYTHONPATH=WORKER_DIR, SLURM_CONF=cluster.conf)
    try:
        report = support.run_project(str(project), config, env)
    finally:
        left = [line.split()[0] for line in cluster.run("squeue", "-h", "-o", "%i %k").stdout.splitlines()
                if line.endswith(tag)]
        if left:
            cluster.run("scancel", *left, check=False)
    assert "error" not in report, report
    assert report["squares"] == [0, 1, 4, 9]
    (job,) = report["jobs"]
    hosts = {w["host"] for w in report["where"]}
    assert len(hosts) == 2 and hosts <= {n.name for n in cluster.nodes}, report["where"]
    assert {w["job"] for w in report["where"]} == {job}
