"""The README's MPI examples per site, each checked against the command it produces.

For each site: ``configs.mpi_executor_kwargs`` builds a ``faasx.MPIExecutor`` whose provider starts one
manager per block (``SimpleLauncher``: the launch command once, as it is) in MPI mode; then the block's
manager is given the node list that site's scheduler hands a job (``PBS_NODEFILE`` on Polaris/Aurora,
``SLURM_JOB_NODELIST`` on Perlmutter/Frontier), places the README's task on it and the task's
``PARSL_MPI_PREFIX`` must be exactly the command the README shows.  No scheduler is contacted.
"""
from __future__ import annotations

import os

import pytest

import faasx
from faasx import configs
from faasx.configs import SiteConfigError
from faasx.executor.mpi import MpiWorkerTable, block_nodes
from faasx.executor.protocol import KIND_CALL, Task
from faasx.launchers import SimpleLauncher

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SITES = {
    # site: (site arguments, scheduler environment of a 2-node job, the README's task spec, expected prefix)
    "polaris": (("MyProject", "debug"), {"PBS_NODEFILE": ["x3001c0s13b0n0.hsn.cm.polaris.alcf.anl.gov"] * 2
                                         + ["x3001c0s13b1n0.hsn.cm.polaris.alcf.anl.gov"] * 2},
                {"num_nodes": 2, "ranks_per_node": 4, "launcher_options": "--cpu-bind depth --depth 8"},
                "mpiexec -n 8 -ppn 4 -hosts x3001c0s13b0n0.hsn.cm.polaris.alcf.anl.gov,"
                "x3001c0s13b1n0.hsn.cm.polaris.alcf.anl.gov --cpu-bind depth --depth 8"),
    "aurora": (("MyProject", "debug"), {"PBS_NODEFILE": ["x4102c5s2b0n0.hostmgmt2102.cm.aurora.alcf.anl.gov",
                                                         "x4102c5s3b0n0.hostmgmt2102.cm.aurora.alcf.anl.gov"]},
               {"num_nodes": 2, "ranks_per_node": 12, "launcher_options": "--cpu-bind depth --depth 8"},
               "mpiexec -n 24 -ppn 12 -hosts x4102c5s2b0n0.hostmgmt2102.cm.aurora.alcf.anl.gov,"
               "x4102c5s3b0n0.hostmgmt2102.cm.aurora.alcf.anl.gov --cpu-bind depth --depth 8"),
    "perlmutter": (("m1234_g",), {"SLURM_JOB_NODELIST": "nid[001000-001001]"},
                   {"num_nodes": 2, "ranks_per_node": 4, "launcher_options": "--gpus-per-task=1"},
                   "srun --ntasks 8 --ntasks-per-node 4 --nodelist nid001000,nid001001 --nodes 2 --gpus-per-task=1"),
    "frontier": (("ABC123",), {"SLURM_JOB_NODELIST": "frontier[00042,00107]"},
                 {"num_nodes": 2, "num_ranks": 16, "launcher_options": "--gpus-per-task=1 --gpu-bind=closest"},
                 "srun --ntasks 16 --ntasks-per-node 8 --nodelist frontier00042,frontier00107 --nodes 2 "
                 "--gpus-per-task=1 --gpu-bind=closest"),
}


def scheduler_env(tmp_path, env):
    if "PBS_NODEFILE" in env:
        path = tmp_path / "nodefile"
        path.write_text("\n".join(env["PBS_NODEFILE"]) + "\n")
        return {"PBS_NODEFILE": str(path)}
    return dict(env)


@pytest.mark.parametrize("site", sorted(SITES))
def test_site_mpi_example_produces_the_readme_command(site, tmp_path):
    args, env, spec, expected = SITES[site]
    kwargs = configs.mpi_executor_kwargs(site, *args, nodes_per_block=2, max_workers_per_block=2, interface=None,
                                         worker_init="module load conda; conda activate faasx")
    ex = faasx.MPIExecutor(label=f"{site}_mpi", **kwargs)
    assert ex.mpi_launcher == configs.mpi.MPI_LAUNCHER_OF_SITE[site]
    assert isinstance(ex.provider.launcher, SimpleLauncher) and ex.provider.nodes_per_block == 2
    assert "available_accelerators" not in kwargs and ex.available_accelerators == []
    # the manager command the job script runs, once per block, is in MPI mode
    ex._token, ex._engine_cpu = "token", None      # what start() sets before building it
    launch = ex._build_launch_cmd(["10.0.0.1"], 54000, None)
    assert launch.endswith(f"--mpi-launcher {ex.mpi_launcher}") and "--max-workers-per-node 2" in launch
    assert ex.provider.launcher(launch, 1, 2).strip() == launch
    # what the block's manager gives the README's task on the nodes that site's scheduler hands the job
    nodes = block_nodes(scheduler_env(tmp_path, env))
    table = MpiWorkerTable(ex.mpi_launcher, nodes, ex.max_workers_per_block)
    table.add(0)
    table.mark_ready(0)
    ex.validate_resource_spec(spec)
    table.enqueue([Task(1, b"f" * 16, KIND_CALL, ex._routing_spec(spec), b"")])
    [(_slot, [(_tid, _fid, _kind, placed, _payload)])] = table.assign(0.0)
    assert placed["mpi"]["env"]["PARSL_MPI_PREFIX"] == expected
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    assert expected in readme, f"the README's {site} example does not show the command it produces"


def test_parsl_config_for_a_site_holds_an_mpi_executor():
    config = configs.mpi_config("frontier", "ABC123", nodes_per_block=4, max_workers_per_block=4, interface=None)
    (ex,) = config.executors
    assert isinstance(ex, faasx.MPIExecutor) and ex.label == "frontier_mpi" and ex.mpi_launcher == "srun"
    assert ex.max_workers_per_block == 4 and ex.nodes_per_block == 4


def test_site_mpi_config_refuses_what_it_cannot_honour():
    with pytest.raises(SiteConfigError, match="kubernetes"):
        configs.mpi_executor_kwargs("kubernetes", "img")
    with pytest.raises(SiteConfigError, match="launcher"):
        configs.mpi_executor_kwargs("polaris", "MyProject", launcher=SimpleLauncher(), interface=None)
