"""MPI mode on a local block: the real interchange, manager and workers, no batch scheduler.

The block's manager is told its nodes by ``FAASX_MPI_NODELIST`` (names only: these tests check
placement, which node a task holds and when, with Python functions that report their ``PARSL_*``
variables), and one test runs a real MPICH program on this host.  The same behaviour across real nodes
is ``test_mpi_multinode.py``.
"""
from __future__ import annotations

import os
import time

import pytest

import faasx
from faasx.errors import InvalidResourceSpecification, WorkerLost
from faasx.executor.mpi import MPIPlacementError
from faasx.launchers import SimpleLauncher
from faasx.mpi import MPIFunction, MPIPythonFunction, ShellFunction, ShellResult
from faasx.providers import LocalProvider
from tests.support import wait_until

HERE = os.path.dirname(os.path.abspath(__file__))


def placement(hold: float = 0.0):
    """What the task was given, and when it ran."""
    import os
    import time
    start = time.time()
    time.sleep(hold)
    keys = ("PARSL_MPI_PREFIX", "PARSL_MPI_NODELIST", "PARSL_NUM_NODES", "PARSL_NUM_RANKS", "PARSL_RANKS_PER_NODE",
            "PARSL_SRUN_PREFIX", "PARSL_APRUN_PREFIX", "PARSL_MPIEXEC_PREFIX")
    return {k: os.environ.get(k) for k in keys}, start, time.time()


def meet(directory: str, me: str, other: str, timeout: float = 60.0):
    """Say "I run" in ``directory`` and wait until ``other`` says so too: both returning True proves the
    two tasks ran at the same time, however slowly each worker started."""
    import os
    import time
    open(os.path.join(directory, me), "w").close()
    deadline = time.monotonic() + timeout
    while not os.path.exists(os.path.join(directory, other)):
        if time.monotonic() > deadline:
            return os.environ.get("PARSL_MPI_NODELIST"), False, time.time()
        time.sleep(0.02)
    return os.environ.get("PARSL_MPI_NODELIST"), True, time.time()


def hold_until(path: str, timeout: float = 60.0):
    import os
    import time
    deadline = time.monotonic() + timeout
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.02)
    return os.environ.get("PARSL_MPI_NODELIST")


def touch(path: str):
    open(path, "w").close()


def crash():
    import os
    os._exit(3)


def local_block(nodes: str, **options):
    provider = LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, nodes_per_block=len(nodes.split(",")),
                             launcher=SimpleLauncher(), worker_init=f"export FAASX_MPI_NODELIST={nodes}")
    return provider


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    """A 2-node local block ("fake1", "fake2") running up to 3 MPI tasks at once."""
    run_dir = tmp_path_factory.mktemp("mpi_local")
    with faasx.Executor(local_block("fake1,fake2"), mpi_launcher="mpiexec", max_workers_per_block=3,
                        max_retries_on_system_failure=0, heartbeat_period=1, heartbeat_threshold=10,
                        run_dir=str(run_dir)) as executor:
        yield executor


def submit(ex, fn, spec, *args):
    return ex.submit_batch([(fn, args, {}, spec)])[0]


def test_task_environment_matches_parsl(ex):
    env, _, _ = submit(ex, placement, {"num_nodes": 2, "ranks_per_node": 3, "launcher_options": "-l"}).result(60)
    assert env["PARSL_MPI_PREFIX"] == "mpiexec -n 6 -ppn 3 -hosts fake1,fake2 -l"
    assert env["PARSL_MPIEXEC_PREFIX"] == env["PARSL_MPI_PREFIX"]
    assert env["PARSL_SRUN_PREFIX"] == "srun --ntasks 6 --ntasks-per-node 3 --nodelist fake1,fake2 --nodes 2 -l"
    assert env["PARSL_APRUN_PREFIX"] == "aprun -n 6 -N 3 -node-list fake1,fake2 -l"
    assert (env["PARSL_NUM_NODES"], env["PARSL_RANKS_PER_NODE"], env["PARSL_NUM_RANKS"]) == ("2", "3", "6")
    assert env["PARSL_MPI_NODELIST"] == "fake1,fake2"
    # and nothing of it stays behind in the worker for the next task
    env2, _, _ = submit(ex, placement, {"num_nodes": 1}).result(60)
    assert env2["PARSL_NUM_NODES"] == "1" and env2["PARSL_MPI_NODELIST"] in ("fake1", "fake2")


def test_one_node_tasks_pack_the_block_and_a_two_node_task_waits_for_both(ex, tmp_path):
    a = submit(ex, meet, {"num_nodes": 1}, str(tmp_path), "a", "b")
    b = submit(ex, meet, {"num_nodes": 1}, str(tmp_path), "b", "a")
    c = submit(ex, placement, {"num_nodes": 2}, 0.0)
    (node_a, met_a, end_a), (node_b, met_b, end_b), (ec, start_c, _) = a.result(90), b.result(90), c.result(90)
    assert met_a and met_b                           # the two ran at the same time
    assert {node_a, node_b} == {"fake1", "fake2"}    # never on the same node
    assert ec["PARSL_MPI_NODELIST"] == "fake1,fake2"
    assert start_c >= max(end_a, end_b)              # the 2-node task started once both nodes were free


def test_a_task_asking_for_more_nodes_than_a_block_has_fails_at_submit(ex):
    t0 = time.monotonic()
    with pytest.raises(InvalidResourceSpecification, match="num_nodes=3.*2 node"):
        submit(ex, placement, {"num_nodes": 3})
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(InvalidResourceSpecification, match="gpus"):
        submit(ex, placement, {"num_nodes": 1, "gpus": 1})
    with pytest.raises(InvalidResourceSpecification, match="do not fit"):
        submit(ex, placement, {"num_nodes": 1, "ranks_per_node": 1, "num_ranks": 2})


def test_the_nodes_of_a_crashed_task_go_back_to_the_pool(ex):
    with pytest.raises(WorkerLost):
        submit(ex, crash, {"num_nodes": 2}).result(60)
    env, _, _ = submit(ex, placement, {"num_nodes": 2}).result(60)
    assert env["PARSL_MPI_NODELIST"] == "fake1,fake2"


def test_a_cancelled_task_waiting_for_nodes_never_runs(ex, tmp_path):
    go, ran = str(tmp_path / "go"), str(tmp_path / "ran")
    holder = submit(ex, hold_until, {"num_nodes": 2}, go)
    waiting = submit(ex, touch, {"num_nodes": 2}, ran)
    # the second is at the manager, waiting for the nodes the first holds (not at the interchange, where
    # a cancel would stop it without the manager's part being exercised)
    wait_until(lambda: sum(m["tasks"] for m in ex.executor.connected_managers()) == 2, timeout=30,
             what="both tasks to be held by the block's manager")
    assert waiting.cancel() and waiting.cancelled()
    touch(go)
    assert holder.result(60) == "fake1,fake2"
    assert submit(ex, placement, {"num_nodes": 2}).result(60)[0]["PARSL_MPI_NODELIST"] == "fake1,fake2"
    assert not os.path.exists(ran)


def test_a_task_past_its_walltime_is_stopped_and_its_nodes_return(ex, tmp_path):
    from faasx.errors import TaskTimeout
    with pytest.raises(TaskTimeout):
        submit(ex, hold_until, {"num_nodes": 2, "walltime": 0.5}, str(tmp_path / "never")).result(60)
    env, _, _ = submit(ex, placement, {"num_nodes": 2}).result(60)
    assert env["PARSL_MPI_NODELIST"] == "fake1,fake2"


def test_a_failing_command_is_a_result_with_its_output(ex):
    r = ex.submit(ShellFunction("echo out; echo err >&2; exit 7")).result(60)
    assert isinstance(r, ShellResult) and (r.returncode, r.stdout, r.stderr) == (7, "out\n", "err\n")
    with pytest.raises(Exception, match="exit status 7"):
        r.check()
    r = ex.submit(MPIFunction("echo {word} $PARSL_NUM_NODES", num_nodes=2, ranks_per_node=1), word="a b").result(60)
    # the prefix is MPICH's mpiexec on the fake nodes: here only the formatting and the spec are checked
    assert r.cmd == "$PARSL_MPI_PREFIX echo 'a b' $PARSL_NUM_NODES"


def test_block_smaller_than_nodes_per_block_fails_the_task_not_hangs(tmp_path):
    """The provider promises 2 nodes but the job has only one: the manager fails the 2-node task at once."""
    provider = LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, nodes_per_block=2,
                             launcher=SimpleLauncher(), worker_init="export FAASX_MPI_NODELIST=only1")
    with faasx.Executor(provider, mpi_launcher="srun", run_dir=str(tmp_path)) as ex:
        with pytest.raises(MPIPlacementError, match="num_nodes=2 but this block has 1 node"):
            submit(ex, placement, {"num_nodes": 2}).result(60)
        env, _, _ = submit(ex, placement, {"num_nodes": 1}).result(60)
        assert env["PARSL_MPI_PREFIX"] == "srun --ntasks 1 --ntasks-per-node 1 --nodelist only1 --nodes 1"


def test_mpi_executor_needs_a_simple_launcher():
    with pytest.raises(TypeError, match="SimpleLauncher"):
        faasx.MPIExecutor(provider=LocalProvider())
    with pytest.raises(ValueError, match="mpi_launcher"):
        faasx.MPIExecutor(mpi_launcher="mpirun")


def rank_report(scale, blob_size=0):
    import socket

    from faasx.mpi import rank_and_size
    rank, size = rank_and_size()
    if scale == "fail" and rank == 1:
        raise ValueError(f"rank {rank} refuses")
    return rank, size, socket.gethostname(), scale * rank, "x" * blob_size


def test_real_mpich_program_and_python_function_on_this_host(mpich, tmp_path):
    """MPICH's mpiexec from $PARSL_MPI_PREFIX on the one local node: a C allreduce on 3 ranks, and a
    Python function on every rank (its results in rank order, a rank's exception raised)."""
    host = os.uname().nodename
    provider = LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1, launcher=SimpleLauncher(),
                             worker_init=f"export PATH={mpich.bin}:$PATH FAASX_MPI_NODELIST={host}")
    with faasx.Executor(provider, mpi_launcher="mpiexec", run_dir=str(tmp_path)) as ex:
        r = ex.submit(MPIFunction(mpich.allreduce, num_nodes=1, num_ranks=3)).result(120)
        assert r.returncode == 0, r.stderr
        assert sorted(r.stdout.split("\n")[:-1]) == [f"rank {i}/3 host {host} sum 3" for i in range(3)]
        # 50 kB per rank: each rank's result crosses the launcher's merged stdout in many lines
        values = ex.submit(MPIPythonFunction(rank_report, num_ranks=3), 10, blob_size=50_000).result(120)
        assert [v[:4] for v in values] == [(i, 3, host, 10 * i) for i in range(3)]
        assert all(v[4] == "x" * 50_000 for v in values)
        with pytest.raises(ValueError, match="rank 1 refuses"):
            ex.submit(MPIPythonFunction(rank_report, num_ranks=3), "fail").result(120)
