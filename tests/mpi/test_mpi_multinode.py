"""MPI tasks across real nodes: the multi-node Slurm cluster (one slurmd per network namespace, each node
its own host name and address), a 2-node block from ``SlurmProvider`` + ``SimpleLauncher``, and an
MPICH ``MPI_Allreduce`` compiled in the test.  Through ``faasx.Executor`` (``MPIFunction``) and through
Parsl (``@bash_app`` with ``$PARSL_MPI_PREFIX`` / ``$PARSL_SRUN_PREFIX``), as a Parsl user writes it.

One block serves every test of a module (a Slurm block takes seconds to start); the tests leave it as
they found it: every node free.
"""
from __future__ import annotations

import os
import re

import pytest

import faasx
from faasx.errors import InvalidResourceSpecification, WorkerLost
from faasx.launchers import SimpleLauncher
from faasx.mpi import MPIFunction, MPIPythonFunction
from faasx.providers import SlurmProvider

pytestmark = pytest.mark.slurm

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def ranks(stdout: str):
    """[(rank, size, host, sum)] from the allreduce program's lines."""
    return sorted((int(r), int(n), h, int(s))
                  for r, n, h, s in re.findall(r"rank (\d+)/(\d+) host (\S+) sum (\d+)", stdout))


def provider(cluster, mpich, nodes=2):
    return SlurmProvider(partition=cluster.partition, nodes_per_block=nodes, exclusive=False, walltime="00:10:00",
                         init_blocks=1, min_blocks=1, max_blocks=1, launcher=SimpleLauncher(),
                         worker_init=f"export PATH={mpich.bin}:$PATH PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}")


def wait_until_gone(job_ids):
    """The blocks' jobs have left Slurm's queue: the next test (here or in tests/multinode) finds every
    node idle."""
    import subprocess

    from tests.support import wait_until

    def gone():
        out = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True, timeout=20).stdout
        return not (set(out.split()) & set(job_ids))
    wait_until(gone, timeout=60, interval=0.2, what=f"jobs {sorted(job_ids)} to leave squeue")


def processes_naming(*paths):
    """Live processes on any node (they share this host's PID space) whose command line names a path."""
    import psutil
    found = []
    for p in psutil.process_iter():
        try:
            cmd = " ".join(p.cmdline())
            if p.pid != os.getpid() and any(path in cmd for path in paths) and p.status() != psutil.STATUS_ZOMBIE:
                found.append((p.pid, cmd[:160]))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture(scope="module")
def ex(on_multinode, mpich, tmp_path_factory):
    """One 2-node block for the module.  At the end: its job leaves the queue and nothing it started --
    manager, workers, launchers, MPI ranks -- is left on any node."""
    from tests.support import wait_until
    blocks = provider(on_multinode, mpich)
    run_dir = str(tmp_path_factory.mktemp("mpi_mn"))
    with faasx.Executor(blocks, address=on_multinode.host_address, encrypted=True,
                        mpi_launcher="mpiexec", max_workers_per_block=2, max_retries_on_system_failure=0,
                        heartbeat_period=1, heartbeat_threshold=10, run_dir=run_dir) as executor:
        yield executor
    wait_until_gone(set(blocks.resources))
    wait_until(lambda: not processes_naming(run_dir, mpich.allreduce), timeout=30, interval=0.2,
             what=lambda: f"the block's processes to end: {processes_naming(run_dir, mpich.allreduce)}")


def test_allreduce_across_two_nodes_through_executor(ex, mpich):
    r = ex.submit(MPIFunction(mpich.allreduce, num_nodes=2, ranks_per_node=2)).result(180)
    assert r.returncode == 0, r.stderr
    found = ranks(r.stdout)
    assert [x[0] for x in found] == [0, 1, 2, 3] and all(x[1] == 4 and x[3] == 6 for x in found)
    hosts = [x[2] for x in found]
    assert len(set(hosts)) == 2, hosts                   # ranks on two distinct nodes, two on each
    assert sorted(hosts.count(h) for h in set(hosts)) == [2, 2]
    # what the module's teardown checks is gone: the block's manager and workers, found by their run dir
    assert any("faasx-manager" in cmd or "manager" in cmd for _pid, cmd in processes_naming(ex.run_dir))


def test_concurrent_one_node_tasks_pack_the_nodes(ex, mpich, tmp_path):
    """Two 1-node tasks run at once, each on its own node (each waits until the other has started: a
    rendezvous in the shared file system, not a sleep); a 2-node task submitted with them waits for both."""
    meet = (f"sh -c 'touch {tmp_path}/$(hostname); n=0; while [ $(ls {tmp_path} | wc -l) -lt 2 ] && [ $n -lt 600 ]; "
            f"do sleep 0.1; n=$((n+1)); done; echo met $(ls {tmp_path} | wc -l); {mpich.allreduce}; "
            "echo end $(date +%s.%N)'")
    span = MPIFunction(meet, num_nodes=1, ranks_per_node=1)
    wide = MPIFunction(f"sh -c 'echo start $(hostname) $(date +%s.%N); {mpich.allreduce}'", num_nodes=2,
                       ranks_per_node=1)
    futures = [ex.submit(span), ex.submit(span), ex.submit(wide)]
    out = [f.result(180) for f in futures]
    assert all(r.returncode == 0 for r in out), [r.stderr for r in out]
    assert all("met 2" in r.stdout for r in out[:2]), [r.stdout for r in out[:2]]     # at the same time
    assert sorted(os.listdir(tmp_path)) == sorted({x[2] for r in out[:2] for x in ranks(r.stdout)})
    assert len(os.listdir(tmp_path)) == 2                                          # on two distinct nodes
    end_a, end_b = [float(re.search(r"end (\S+)", r.stdout).group(1)) for r in out[:2]]
    wide_starts = [float(t) for t in re.findall(r"start \S+ (\S+)", out[2].stdout)]
    assert len(wide_starts) == 2 and min(wide_starts) >= max(end_a, end_b)
    assert len({x[2] for x in ranks(out[2].stdout)}) == 2


def where_am_i(tag):
    import socket

    from faasx.mpi import rank_and_size
    return rank_and_size(), socket.gethostname(), tag


def test_python_function_on_every_rank_across_two_nodes(ex):
    values = ex.submit(MPIPythonFunction(where_am_i, num_nodes=2, ranks_per_node=2), "t").result(180)
    assert [v[0] for v in values] == [(r, 4) for r in range(4)] and {v[2] for v in values} == {"t"}
    hosts = [v[1] for v in values]
    assert len(set(hosts)) == 2 and sorted(hosts.count(h) for h in set(hosts)) == [2, 2]


def crash_holding_nodes():
    import os
    os._exit(9)


def test_nodes_of_failed_and_crashed_tasks_go_back_to_the_pool(ex, mpich):
    """An MPI program that fails on both nodes, then a worker that dies holding both: each time the next
    2-node task still gets both nodes."""
    failed = ex.submit(MPIFunction("sh -c 'echo on $(hostname); exit 3'", num_nodes=2)).result(180)
    assert failed.returncode != 0 and len(set(re.findall(r"on (\S+)", failed.stdout))) == 2
    with pytest.raises(WorkerLost):
        ex.submit_batch([(crash_holding_nodes, (), {}, {"num_nodes": 2})])[0].result(180)
    r = ex.submit(MPIFunction(mpich.allreduce, num_nodes=2, ranks_per_node=1)).result(180)
    assert r.returncode == 0, r.stderr
    assert len({x[2] for x in ranks(r.stdout)}) == 2 and {x[3] for x in ranks(r.stdout)} == {1}


def test_oversize_request_fails_at_once(ex):
    with pytest.raises(InvalidResourceSpecification, match="num_nodes=3"):
        ex.submit(MPIFunction("true", num_nodes=3))


# ---- through Parsl ---------------------------------------------------------------------------------
def test_parsl_bash_app_runs_unchanged(on_multinode, mpich, tmp_path):
    """A Parsl MPIExecutor config with the import changed: ``$PARSL_MPI_PREFIX`` and ``$PARSL_SRUN_PREFIX``.

    (The block has one CPU per node -- ``exclusive=False``, one task per node -- so srun gets one rank per
    node; hydra's mpiexec forks its ranks itself and is not bound by that.)"""
    import parsl
    from parsl import bash_app

    @bash_app
    def allreduce(exe, prefix="$PARSL_MPI_PREFIX", stdout=None, stderr=None, parsl_resource_specification={}):
        return f"{prefix} {exe}"

    blocks = provider(on_multinode, mpich)
    config = parsl.Config(executors=[faasx.MPIExecutor(
        label="mpi", provider=blocks, address=on_multinode.host_address,
        mpi_launcher="mpiexec", max_workers_per_block=2, heartbeat_period=1, heartbeat_threshold=10)],
        run_dir=str(tmp_path / "runinfo"))
    spec = {"num_nodes": 2, "ranks_per_node": 2}
    with parsl.load(config):
        by_mpiexec = allreduce(mpich.allreduce, stdout=str(tmp_path / "a.out"), stderr=str(tmp_path / "a.err"),
                               parsl_resource_specification=spec)
        by_srun = allreduce(mpich.allreduce, prefix="$PARSL_SRUN_PREFIX", stdout=str(tmp_path / "b.out"),
                            stderr=str(tmp_path / "b.err"), parsl_resource_specification={"num_nodes": 2, "num_ranks": 2,
                                                            "launcher_options": "--mpi=pmi2"})
        assert by_mpiexec.result(180) == 0, (tmp_path / "a.err").read_text()
        assert by_srun.result(180) == 0, (tmp_path / "b.err").read_text()
    wait_until_gone(set(blocks.resources))
    found = ranks((tmp_path / "a.out").read_text())
    assert [x[0] for x in found] == [0, 1, 2, 3] and {x[3] for x in found} == {6}
    assert len({x[2] for x in found}) == 2
    found = ranks((tmp_path / "b.out").read_text())
    assert [x[0] for x in found] == [0, 1] and {x[3] for x in found} == {1}
    assert len({x[2] for x in found}) == 2
