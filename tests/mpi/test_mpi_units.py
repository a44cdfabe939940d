"""MPI mode's pure parts: resource keys, prefixes, host lists, and the node pool of a block's manager.

No processes: ``MpiWorkerTable`` is driven the way the manager drives it (enqueue what the
interchange sent, assign to ready workers, done/remove when results arrive or a worker dies)."""
import os

import pytest

from faasx.executor.mpi import (MPIPlacementError, MpiWorkerTable, NodePool, block_nodes, compose_prefixes,
                                expand_hostlist, parse_mpi_spec, run_in_environment)
from faasx.executor.protocol import Task


# ---- resource keys ---------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, expected", [
    ({"num_nodes": 2, "ranks_per_node": 4}, (2, 4, 8)),              # Parsl: num_ranks = nodes * rpn
    ({"num_nodes": 2, "num_ranks": 8}, (2, 4, 8)),                   # Parsl: rpn = ranks / nodes
    ({"num_nodes": 2, "num_ranks": 3}, (2, 2, 3)),                   # rounded up, never "1.5"
    ({"num_nodes": "3", "ranks_per_node": "2"}, (3, 2, 6)),          # Parsl's examples use strings
    ({"num_ranks": 4}, (1, 4, 4)),
    ({}, (1, 1, 1)),                                                 # no spec: one node, one rank (#3427)
    (None, (1, 1, 1)),
    ({"num_nodes": 2, "ranks_per_node": 2, "num_ranks": 3}, (2, 2, 3)),
])
def test_parse_mpi_spec_completes_ranks_as_parsl_does(spec, expected):
    mpi = parse_mpi_spec(spec)
    assert (mpi["num_nodes"], mpi["ranks_per_node"], mpi["num_ranks"]) == expected
    assert mpi["launcher_options"] == ""


@pytest.mark.parametrize("spec, words", [
    ({"num_nodes": 0}, "num_nodes"),
    ({"num_nodes": -1}, "num_nodes"),
    ({"num_nodes": 1.5}, "num_nodes"),
    ({"num_nodes": True}, "num_nodes"),
    ({"num_nodes": "two"}, "num_nodes"),
    ({"num_nodes": 1, "ranks_per_node": 2, "num_ranks": 5}, "do not fit"),
    ({"num_nodes": 3, "num_ranks": 2}, "without a rank"),
    ({"launcher_options": ["--cpu-bind"]}, "launcher_options"),
])
def test_parse_mpi_spec_rejects_values_that_cannot_be_right(spec, words):
    with pytest.raises(ValueError, match=words):
        parse_mpi_spec(spec)


# ---- prefixes ----------------------------------------------------------------------------------
def test_prefixes_for_every_launcher_and_the_chosen_one():
    mpi = parse_mpi_spec({"num_nodes": 2, "ranks_per_node": 4, "launcher_options": "--cpu-bind depth"})
    env = compose_prefixes("mpiexec", mpi, ["x1", "x2"])
    assert env["PARSL_MPIEXEC_PREFIX"] == "mpiexec -n 8 -ppn 4 -hosts x1,x2 --cpu-bind depth"
    assert env["PARSL_SRUN_PREFIX"] == "srun --ntasks 8 --ntasks-per-node 4 --nodelist x1,x2 --nodes 2 --cpu-bind depth"
    assert env["PARSL_APRUN_PREFIX"] == "aprun -n 8 -N 4 -node-list x1,x2 --cpu-bind depth"
    assert env["PARSL_MPI_PREFIX"] == env["PARSL_MPIEXEC_PREFIX"]
    assert (env["PARSL_NUM_NODES"], env["PARSL_RANKS_PER_NODE"], env["PARSL_NUM_RANKS"]) == ("2", "4", "8")
    assert env["PARSL_MPI_NODELIST"] == "x1,x2"
    assert env["PARSL_LAUNCHER_OPTIONS"] == "--cpu-bind depth"
    assert compose_prefixes("srun", mpi, ["x1", "x2"])["PARSL_MPI_PREFIX"] == env["PARSL_SRUN_PREFIX"]
    assert compose_prefixes("aprun", mpi, ["x1", "x2"])["PARSL_MPI_PREFIX"] == env["PARSL_APRUN_PREFIX"]


def test_prefix_without_launcher_options_has_no_trailing_space():
    env = compose_prefixes("srun", parse_mpi_spec({"num_nodes": 1}), ["n1"])
    assert env["PARSL_MPI_PREFIX"] == "srun --ntasks 1 --ntasks-per-node 1 --nodelist n1 --nodes 1"


def test_unknown_launcher_is_refused():
    with pytest.raises(ValueError, match="mpirun"):
        compose_prefixes("mpirun", parse_mpi_spec({}), ["n1"])


# ---- the nodes of a job -------------------------------------------------------------------------
@pytest.mark.parametrize("hostlist, names", [
    ("node1", ["node1"]),
    ("node[1-3]", ["node1", "node2", "node3"]),
    ("nid[001-003,007],login1", ["nid001", "nid002", "nid003", "nid007", "login1"]),
    ("node[1-2],gpu[09-11]", ["node1", "node2", "gpu09", "gpu10", "gpu11"]),
    ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ("x[1-2]-ib", ["x1-ib", "x2-ib"]),
])
def test_expand_hostlist_reads_slurm_syntax(hostlist, names):
    assert expand_hostlist(hostlist) == names


def test_block_nodes_from_each_scheduler(tmp_path):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x3001\nx3001\nx3002\nx3002\n")   # PBS: one line per slot
    assert block_nodes({"PBS_NODEFILE": str(nodefile)}) == ["x3001", "x3002"]
    assert block_nodes({"COBALT_NODEFILE": str(nodefile)}) == ["x3001", "x3002"]
    assert block_nodes({"SLURM_JOB_NODELIST": "nid[000100-000101]"}) == ["nid000100", "nid000101"]
    assert block_nodes({"SLURM_NODELIST": "node[3-4]"}) == ["node3", "node4"]
    assert block_nodes({"FAASX_MPI_NODELIST": "a, b", "SLURM_JOB_NODELIST": "node1"}) == ["a", "b"]
    assert block_nodes({}) == [os.uname().nodename]


# ---- the pool ---------------------------------------------------------------------------------
def test_node_pool_never_hands_out_a_node_twice():
    pool = NodePool(["n1", "n2", "n3"])
    assert pool.acquire(1, 2) == ["n1", "n2"]
    assert pool.acquire(2, 2) is None
    assert pool.acquire(3, 1) == ["n3"]
    assert pool.release(1) and not pool.release(1)
    assert pool.acquire(4, 2) == ["n1", "n2"]
    with pytest.raises(ValueError):
        NodePool(["n1", "n1"])


def task(tid, **spec):
    return Task(tid, b"f" * 16, 0, {"mpi": spec} if spec else None, b"payload")


def table(nodes=("n1", "n2"), workers=2):
    t = MpiWorkerTable("mpiexec", list(nodes), max_running=workers)
    for wid in range(workers):
        t.add(wid)
        t.mark_ready(wid, 0.0)
    return t


def placed(t, now=1.0):
    """{tid: nodes} of what the table hands to workers now, and {tid: wid}."""
    nodes, where = {}, {}
    for slot, batch in t.assign(now):
        for tid, _fid, _kind, spec, _payload in batch:
            nodes[tid] = spec["mpi"].get("nodes")
            where[tid] = slot.wid
    return nodes, where


def test_two_one_node_tasks_run_at_once_on_a_two_node_block():
    t = table()
    t.enqueue([task(1, num_nodes=1), task(2, num_nodes=1)])
    nodes, _ = placed(t)
    assert nodes == {1: ["n1"], 2: ["n2"]}


def test_a_two_node_task_waits_until_two_nodes_are_free_and_nothing_overtakes_it():
    t = table()
    t.enqueue([task(1, num_nodes=1), task(2, num_nodes=2), task(3, num_nodes=1)])
    nodes, where = placed(t)
    assert nodes == {1: ["n1"]}                       # 2 waits for two nodes; 3 waits behind it
    assert t.held() == 3 and sorted(t.all_tids()) == [1, 2, 3]
    t.done(where[1], [1], 2.0)
    nodes, where = placed(t, 2.0)
    assert nodes == {2: ["n1", "n2"]}
    t.done(where[2], [2], 3.0)
    nodes, _ = placed(t, 3.0)
    assert nodes == {3: ["n1"]}


def test_the_task_gets_its_environment_in_its_spec():
    t = table()
    t.enqueue([task(7, num_nodes=2, ranks_per_node=3, launcher_options="-l")])
    [(slot, [(tid, _f, _k, spec, _p)])] = t.assign(1.0)
    env = spec["mpi"]["env"]
    assert env["PARSL_MPI_PREFIX"] == "mpiexec -n 6 -ppn 3 -hosts n1,n2 -l"
    assert env["PARSL_NUM_RANKS"] == "6" and env["PARSL_MPI_NODELIST"] == "n1,n2"


def test_nodes_of_a_crashed_task_go_back_to_the_pool():
    t = table()
    t.enqueue([task(1, num_nodes=2), task(2, num_nodes=2)])
    nodes, where = placed(t)
    assert nodes == {1: ["n1", "n2"]}
    lost = t.remove(where[1])                         # the worker died running task 1
    assert [x[0] for x in lost] == [1]
    t.add(5)
    t.mark_ready(5, 2.0)
    nodes, _ = placed(t, 2.0)
    assert nodes == {2: ["n1", "n2"]}


def test_nodes_of_a_task_stopped_by_the_manager_go_back_with_its_worker():
    """The manager's stop_task (walltime, terminate()) takes the task off its slot, then removes the worker."""
    t = table()
    t.enqueue([task(1, num_nodes=2), task(2, num_nodes=1)])
    nodes, where = placed(t)
    assert nodes == {1: ["n1", "n2"]}
    t.slots[where[1]].tasks.pop(1)
    assert t.remove(where[1]) == []
    t.add(9)
    t.mark_ready(9, 2.0)
    nodes, _ = placed(t, 2.0)
    assert nodes == {2: ["n1"]}


def test_no_more_tasks_hold_nodes_than_there_are_workers():
    t = table(nodes=("n1", "n2", "n3"), workers=2)
    t.enqueue([task(i, num_nodes=1) for i in (1, 2, 3)])
    nodes, _ = placed(t)
    assert sorted(nodes) == [1, 2] and t.pool.free == ["n3"]


def test_cancelled_tasks_leave_the_line_and_give_back_their_nodes():
    t = MpiWorkerTable("srun", ["n1", "n2"], max_running=2)   # no worker ready yet: tasks stay queued
    t.enqueue([task(1, num_nodes=1), task(2, num_nodes=2), task(3, num_nodes=1)])
    assert t.pool.held == {1: ["n1"]} and [x[0] for x in t.waiting] == [2, 3]
    assert sorted(x[0] for x in t.withdraw({1, 2})) == [1, 2]   # 1 held a node in the queue, 2 waited
    assert t.pool.held == {3: ["n1"]} and not t.waiting           # 3 moved up and took the freed node
    assert t.all_tids() == [3] and t.held() == 1


def test_an_oversize_task_is_failed_at_once_not_left_waiting():
    t = table()
    t.enqueue([task(1, num_nodes=3), task(2, num_nodes=1)])
    batches = {tid: spec for _slot, batch in t.assign(1.0) for tid, _f, _k, spec, _p in batch}
    assert "3" in batches[1]["mpi"]["error"] and "2 node(s)" in batches[1]["mpi"]["error"]
    assert batches[2]["mpi"]["nodes"] == ["n1"]       # the one behind it is not blocked


def test_a_task_without_mpi_keys_takes_one_node():
    t = table()
    t.enqueue([task(1)])
    nodes, _ = placed(t)
    assert nodes == {1: ["n1"]}


# ---- the worker's side -------------------------------------------------------------------------
def test_task_environment_is_set_for_the_call_and_restored(monkeypatch):
    monkeypatch.setenv("PARSL_NUM_RANKS", "before")
    monkeypatch.delenv("PARSL_MPI_PREFIX", raising=False)
    seen = {}

    def call():
        seen.update(os.environ)
        return 0, b"ok"
    assert run_in_environment({"env": {"PARSL_MPI_PREFIX": "mpiexec -n 2", "PARSL_NUM_RANKS": "2"}}, call) == (0, b"ok")
    assert seen["PARSL_MPI_PREFIX"] == "mpiexec -n 2" and seen["PARSL_NUM_RANKS"] == "2"
    assert os.environ["PARSL_NUM_RANKS"] == "before" and "PARSL_MPI_PREFIX" not in os.environ


def test_a_placement_error_becomes_the_task_exception():
    from faasx.executor import protocol as P
    from faasx.executor.serialization import deserialize_exception
    status, data = run_in_environment({"error": "task 1 asks for num_nodes=3"}, lambda: pytest.fail("ran"))
    assert status == P.EXCEPTION
    exc = deserialize_exception(data)
    assert isinstance(exc, MPIPlacementError) and "num_nodes=3" in str(exc)


# ---- ShellFunction, called directly -------------------------------------------------------------
def test_shell_function_walltime_kills_the_command_and_keeps_its_output():
    import time

    from faasx.mpi import ShellFunction
    t0 = time.monotonic()
    r = ShellFunction("echo begun; sleep 30 & wait", walltime=0.5)()
    assert time.monotonic() - t0 < 10
    assert r.returncode == 124 and r.stdout == "begun\n"


def test_shell_function_keeps_the_last_lines_and_quotes_arguments():
    from faasx.mpi import MPIFunction, ShellFunction
    r = ShellFunction("seq 1 10; echo {arg}", snippet_lines=2)(arg="$HOME; rm -rf /")
    assert r.returncode == 0 and r.stdout == "10\n$HOME; rm -rf /\n"
    with pytest.raises(RuntimeError, match="PARSL_MPI_PREFIX is not set"):
        MPIFunction("true")()
    assert MPIFunction("./a", num_nodes=2, ranks_per_node=3).resource_specification == {"num_nodes": 2,
                                                                                         "ranks_per_node": 3}
