"""Multi-node blocks on the real multi-node Slurm cluster (``ci/start-multinode.sh``).

Each block is one Slurm job of 2 or 3 nodes; its launcher (``srun``, or ``mpiexec`` of MPICH or Open MPI
inside the allocation) starts one manager per node, in that node's network namespace, and every manager
connects to the interchange on this host over TCP across the bridge -- CurveZMQ on, the address found
by the managers' probe among all of this host's addresses.  Every test here runs real sbatch, srun,
mpiexec and faasx processes, and polls with deadlines.
"""
from __future__ import annotations

import glob
import os
import shlex
import signal
import subprocess
import time

import pytest

from tests.support import wait_until

from mn_support import manager_logs, managers_of, serve_every_node, wait_for_managers

pytestmark = pytest.mark.multinode


# ---- functions the blocks run (by reference: WORKER_INIT puts this directory on PYTHONPATH) ------------
def where(seconds: float = 0.0) -> dict:
    """Which node, manager and launcher rank ran this."""
    import os
    import socket
    import time
    time.sleep(seconds)
    rank = next((os.environ[k] for k in ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID") if k in os.environ), None)
    return {"host": socket.gethostname(), "manager_pid": os.getppid(), "job": os.environ.get("FAASX_BLOCK_JOB_ID"),
            "rank": rank}


def busy_until_before_walltime(seconds_before_end: float) -> dict:
    """Keep this worker busy until ``seconds_before_end`` before the block's walltime."""
    import os
    import time
    end = float(os.environ["FAASX_WALLTIME_END"])
    time.sleep(max(0.0, end - seconds_before_end - time.time()))
    return dict(where(), finished=time.time(), end=end)


# ---- 1. one manager per node, every node serving ----------------------------------------------------------
@pytest.mark.parametrize("nodes", [2, 3])
@pytest.mark.parametrize("kind", ["srun", "mpich", "openmpi"])
def test_a_block_runs_one_manager_per_node_and_every_node_serves_tasks(kind, nodes, multinode):
    """A block of ``nodes`` nodes: exactly one manager registers from each node Slurm gave the job, each
    from its own node (hostname) and launcher rank; tasks run on every node, each in a worker of that
    node's manager.  Every manager reached the interchange at the bridge address (``127.20.0.1``: the
    probe skipped this host's other addresses, which the nodes cannot route to) with CurveZMQ on.  At
    shutdown the job leaves the queue (the fixture checks no process is left)."""
    cluster = multinode.cluster
    launcher, init = multinode.launcher(kind)
    provider = multinode.provider(nodes_per_block=nodes, init_blocks=1, launcher=launcher, worker_init=init)
    with multinode.executor(provider) as ex:
        managers = wait_for_managers(ex, nodes, block_id=0)
        job = ex.executor.blocks_to_job_id["0"]
        hosts = cluster.job_nodes(job)
        assert len(hosts) == nodes, f"Slurm gave job {job} nodes {hosts}"
        assert sorted(m["hostname"] for m in managers) == sorted(hosts), "not one manager per node of the job"

        results = serve_every_node(ex, hosts, where)
        pids = {m["hostname"]: m["pid"] for m in managers}
        for r in results:
            assert r["manager_pid"] == pids[r["host"]], f"task on {r['host']} ran outside that node's manager: {r}"
            assert r["job"] == job
        ranks = {r["host"]: r["rank"] for r in results}
        assert sorted(ranks.values()) == [str(i) for i in range(nodes)], f"launcher ranks per node: {ranks}"

        logs = manager_logs(ex, 0)
        assert sorted(logs) == sorted(hosts)
        for host, text in logs.items():
            assert f"registering with the interchange at tcp://{cluster.host_address}:" in text, (host, text[-1500:])
        assert "--cert-dir" in shlex.split(ex.executor._get_launch_command("0")), "the run is not encrypted"
    wait_until(lambda: job not in cluster.active_jobs(), timeout=30, what=f"job {job} to leave squeue after shutdown")


# ---- 2. encryption across the bridge ------------------------------------------------------------------
def test_a_manager_on_a_node_needs_the_run_keys_to_register(multinode, tmp_path):
    """The manager port is a CurveZMQ server on the bridge too: the executor's own launch command, run
    inside a node's network namespace, registers; the same command without ``--cert-dir`` (TCP reaches
    the port, but the handshake cannot complete) never does, and says so."""
    node = multinode.cluster.nodes[-1]
    with multinode.executor(multinode.provider()) as ex:
        base = shlex.split(ex.executor._get_launch_command("keyed"))
        at = base.index("--cert-dir")
        keyless = base[:at] + base[at + 2:]
        keyless[keyless.index("--block-id") + 1] = "keyless"
        in_node = ["nsenter", f"--net=/run/netns/{node.netns}"]

        refused = subprocess.run(in_node + keyless, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 1, refused
        (log,) = glob.glob(os.path.join(ex.executor.logdir, "manager_keyless_*.log"))
        with open(log) as f:
            text = f.read()
        assert f"tcp://{multinode.cluster.host_address}:" in text and "did not answer the registration" in text, text
        assert managers_of(ex, "keyless") == []

        keyed = subprocess.Popen(in_node + base, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            (m,) = wait_for_managers(ex, 1, block_id="keyed", timeout=30)
            assert m["pid"] == keyed.pid
        finally:
            keyed.send_signal(signal.SIGTERM)
            keyed.wait(timeout=30)
        assert ex.executor.interchange_stats()["managers_registered"] == 1


# ---- 3. elasticity per block ------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["srun", "mpich"])
def test_blocks_of_two_nodes_scale_out_under_load_and_in_when_idle(kind, multinode):
    """Parsl's 'simple' strategy with ``nodes_per_block=2``, ``max_blocks=2``: a burst scales out to two
    2-node jobs, each with one manager on each of its own 2 nodes; once idle for ``max_idletime`` both
    blocks are scaled in -- every manager of each leaves and both jobs leave squeue."""
    from parsl.jobs.states import JobState
    cluster = multinode.cluster
    launcher, init = multinode.launcher(kind)
    provider = multinode.provider(nodes_per_block=2, max_blocks=2, launcher=launcher, worker_init=init)
    with multinode.executor(provider, strategy="simple", strategy_period=0.5, max_idletime=3) as ex:
        futures = [ex.submit(where, 1.0) for _ in range(12)]
        managers = wait_for_managers(ex, 4, timeout=90)
        blocks = dict(ex.executor.blocks_to_job_id)
        assert sorted(blocks) == ["0", "1"], blocks
        for block, job in blocks.items():
            mine = [m["hostname"] for m in managers if m["block_id"] == block]
            assert sorted(mine) == sorted(cluster.job_nodes(job)), f"block {block}: managers on {mine}"
            assert len(set(mine)) == 2
        results = [f.result(timeout=60) for f in futures]
        assert {r["job"] for r in results} == set(blocks.values()), "a block served no task"

        wait_until(lambda: all(ex.executor.status_facade[b].state == JobState.SCALED_IN for b in blocks),
                 timeout=30, interval=0.1, what="both idle blocks to be scaled in")
        wait_until(lambda: managers_of(ex) == [], timeout=15, what="every manager of both blocks to leave")
        wait_until(lambda: not (set(blocks.values()) & cluster.active_jobs()), timeout=30,
                 what="the scaled-in jobs to leave squeue")


# ---- 4. walltime drain per block ------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["srun", "mpich"])
def test_every_manager_of_a_block_drains_before_its_walltime(kind, multinode):
    """A 2-node block whose job ends 16 s after it starts (``FAASX_WALLTIME_END``; Slurm itself rounds the
    limit up to a minute).  Each of its managers drains ~3.5 s before that end (``drain_margin`` capped at
    25% of the time left when it starts): both stop taking tasks, finish the task each is running, say
    "drained" and exit, and the job ends COMPLETED.  Tasks submitted after the drain run on a new block."""
    from parsl.jobs.states import JobState
    launcher, init = multinode.launcher(kind)
    provider = multinode.provider(nodes_per_block=2, max_blocks=2, init_blocks=1, walltime="00:00:16",
                                  launcher=launcher, worker_init=init)
    with multinode.executor(provider, strategy="simple", strategy_period=0.5, max_idletime=30,
                            drain_margin=60, prefetch_capacity=0) as ex:
        wait_for_managers(ex, 2, block_id=0)
        job0 = ex.executor.blocks_to_job_id["0"]
        keepers = [ex.submit(busy_until_before_walltime, 1.0) for _ in range(2)]
        wait_until(lambda: sum(m["tasks"] for m in managers_of(ex, 0)) == 2, timeout=15,
                 what="both managers of block 0 to run a keeper")
        wait_until(lambda: all("draining: the block's walltime is nearly over" in t for t in manager_logs(ex, 0).values())
                 and len(manager_logs(ex, 0)) == 2, timeout=30, interval=0.1,
                 what="both managers of block 0 to start draining")
        t_drain = time.time()
        assert not any(k.done() for k in keepers), "a keeper finished before the drain: the test proves nothing"
        wait_until(lambda: all(not m["active"] for m in managers_of(ex, 0)), timeout=5,
                 what="the interchange to mark both draining managers inactive")

        late = [ex.submit(where, 0.2) for _ in range(4)]
        kept = [k.result(timeout=30) for k in keepers]
        assert {k["job"] for k in kept} == {job0}, "a running task did not finish on its draining block"
        assert len({k["host"] for k in kept}) == 2
        assert all(k["finished"] > t_drain for k in kept)
        late_jobs = {f.result(timeout=60)["job"] for f in late}
        assert job0 not in late_jobs, "a task submitted after the drain ran on the draining block"

        wait_until(lambda: all("drained" in t for t in manager_logs(ex, 0).values()), timeout=15,
                 what="both managers of block 0 to say 'drained'")
        wait_until(lambda: job0 not in multinode.cluster.active_jobs(), timeout=30, what="the drained job to end")
        assert provider.status([job0])[0].state == JobState.COMPLETED
        stats = ex.executor.interchange_stats()
        assert stats["retried"] == 0 and stats["failed_system"] == 0, stats

