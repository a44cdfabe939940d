"""Fixtures for the multi-node tests: the real Slurm cluster of ``ci/start-multinode.sh``.

That cluster runs beside the single-node one (``ci/start-slurm.sh``): slurmctld on this host, one slurmd
per network namespace ``fxnI``, each node with its own hostname ``nodeI`` and address on the bridge
``fxbr0`` (host end ``127.20.0.1``).  Jobs, managers and workers run inside the nodes' namespaces, so
managers reach the interchange over real TCP across the bridge.

``multinode_cluster``  (session) the cluster, found through ``$SLURM_MN_DIR`` (default /tmp/slurm-mn) and
                       checked with ``scontrol ping`` and ``sinfo``.  Without it the test is skipped with
                       the reason -- or failed when ``FAASX_REQUIRE_MULTINODE=1`` (CI sets it).  Value: a
                       ``MultinodeCluster``.
``multinode``          (function) uses the cluster for one test: ``SLURM_CONF`` points at it for the test's
                       duration; ``multinode.provider(**kw)`` makes a ``SlurmProvider`` on it;
                       ``multinode.executor(provider, **opts)`` a ``faasx.Executor`` context with this
                       directory's defaults (encrypted, fast heartbeats).  At teardown every node is
                       reconnected (a test may cut one off), the test's jobs are cancelled, and the test
                       fails if a job, a node not back to idle, or a process of its run directory is
                       left -- so the next test starts on a clean cluster.
``faasx_processes``    ``faasx_processes(run_dir)`` -> [(pid, node or "host", cmdline)] of live processes
                       whose command line names ``run_dir`` (managers and workers carry it).

Tasks are functions of the test modules, sent by reference: ``WORKER_INIT`` puts this directory on the
nodes' ``PYTHONPATH``.  Everything polls with a deadline (``tests.support.wait_until``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import subprocess
from typing import Dict, List, Optional

import psutil
import pytest

from tests.support import safe_executor, wait_until

from mn_support import WORKER_INIT  # on sys.path: the repository's conftest.py

#: executor options of every test here: encryption on (127.x counts as loopback, which would turn it off
#: by default, but these managers are on other "hosts"), heartbeats fast enough to notice a lost node in
#: a few seconds, one worker per node.
EXECUTOR_DEFAULTS = dict(encrypted=True, max_workers_per_node=1, heartbeat_period=0.5, heartbeat_threshold=4.0,
                         strategy="none")


MPIEXEC = {"mpich": "mpiexec.mpich", "openmpi": "mpiexec.openmpi"}
MPI_PACKAGES = {"mpich": "mpich", "openmpi": "openmpi-bin"}


@dataclasses.dataclass(frozen=True)
class Node:
    name: str
    address: str
    netns: str


@dataclasses.dataclass
class MultinodeCluster:
    dir: str
    conf: str
    partition: str
    nodes: List[Node]

    @property
    def host_address(self) -> str:
        """The host's end of the bridge: the only address of this host the nodes can reach."""
        return self.nodes[0].address.rsplit(".", 1)[0] + ".1"

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)

    def run(self, *argv, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm command against this cluster."""
        return subprocess.run(list(argv), env=dict(os.environ, SLURM_CONF=self.conf), capture_output=True,
                              text=True, timeout=timeout, check=check)

    def active_jobs(self) -> set:
        out = self.run("squeue", "-h", "--states=PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED", "-o", "%i")
        return set(out.stdout.split())

    def node_states(self) -> Dict[str, str]:
        out = self.run("sinfo", "-h", "-N", "-o", "%N %T")
        return dict(line.split() for line in out.stdout.splitlines() if line.strip())

    def job_nodes(self, job_id: str) -> List[str]:
        """The hostnames Slurm gave a job (``scontrol show hostnames`` of its node list)."""
        nodelist = self.run("squeue", "-h", "-j", str(job_id), "-o", "%N").stdout.strip()
        if not nodelist:
            return []
        return self.run("scontrol", "show", "hostnames", nodelist).stdout.split()

    def set_link(self, node: str, up: bool) -> None:
        """Connect or cut off ``node``: its end of the link to the bridge goes up or down."""
        subprocess.run(["ip", "-n", self.node(node).netns, "link", "set", "eth0", "up" if up else "down"],
                       check=True, timeout=10, capture_output=True)


def _no_cluster(reason: str):
    reason = f"no usable multi-node Slurm cluster: {reason} (start one with: sudo bash ci/start-multinode.sh)"
    if os.environ.get("FAASX_REQUIRE_MULTINODE") == "1":
        pytest.fail(f"FAASX_REQUIRE_MULTINODE=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def multinode_cluster() -> MultinodeCluster:
    d = os.environ.get("SLURM_MN_DIR", "/tmp/slurm-mn")
    conf, nodes_file = os.path.join(d, "etc", "slurm.conf"), os.path.join(d, "nodes")
    if not (os.path.isfile(conf) and os.path.isfile(nodes_file)):
        _no_cluster(f"{conf} or {nodes_file} does not exist")
    with open(nodes_file) as f:
        nodes = [Node(*line.split()) for line in f if line.strip()]
    cluster = MultinodeCluster(dir=d, conf=conf, partition="", nodes=nodes)
    try:
        ping = cluster.run("scontrol", "ping", check=False)
        if "UP" not in ping.stdout:
            _no_cluster(f"slurmctld does not answer (scontrol ping: {(ping.stdout + ping.stderr).strip()})")
        partitions = cluster.run("sinfo", "-h", "-o", "%P").stdout.split()
        states = cluster.node_states()
    except FileNotFoundError as e:
        _no_cluster(f"Slurm client commands are not installed ({e})")
    except subprocess.TimeoutExpired as e:
        _no_cluster(f"{e.cmd[0]} timed out")
    down = [n.name for n in nodes if states.get(n.name) not in ("idle", "mixed", "allocated")]
    if len(nodes) < 3 or down:
        _no_cluster(f"needs 3 or more nodes up; nodes {down} are not (sinfo: {states})")
    cluster.partition = next((p.rstrip("*") for p in partitions if p.endswith("*")), partitions[0])
    return cluster


# ---- processes ------------------------------------------------------------------------------------
def _netns_of(pid: int, inodes: Dict[int, str]) -> str:
    try:
        return inodes.get(os.stat(f"/proc/{pid}/ns/net").st_ino, "host")
    except OSError:
        return "?"


def _node_netns_inodes(cluster: Optional[MultinodeCluster]) -> Dict[int, str]:
    found = {}
    for node in (cluster.nodes if cluster else []):
        with contextlib.suppress(OSError):
            found[os.stat(f"/run/netns/{node.netns}").st_ino] = node.name
    return found


def faasx_processes_of(run_dir: str, cluster: Optional[MultinodeCluster] = None) -> List[tuple]:
    """Live processes naming ``run_dir`` in their command line, with the node (network namespace) each
    runs in.  All nodes share this host's PID space, so one scan sees every node."""
    inodes = _node_netns_inodes(cluster)
    found = []
    for p in psutil.process_iter():
        if p.pid == os.getpid():
            continue
        try:
            cmd = " ".join(p.cmdline())
            if run_dir in cmd and p.status() != psutil.STATUS_ZOMBIE:
                found.append((p.pid, _netns_of(p.pid, inodes), cmd[:200]))
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


@pytest.fixture
def faasx_processes(multinode_cluster):
    return lambda run_dir: faasx_processes_of(run_dir, multinode_cluster)


# ---- one test's use of the cluster ------------------------------------------------------------------
class MultinodeSession:
    def __init__(self, cluster: MultinodeCluster, tmp_path):
        self.cluster = cluster
        self.tmp_path = tmp_path
        self.providers: list = []
        self.run_dirs: List[str] = []

    def provider(self, **kwargs):
        """A faasx ``SlurmProvider`` on the multi-node cluster: 1 CPU per node unless told otherwise (so
        blocks of different tests can share nodes), no initial block, a 5-minute walltime."""
        from faasx.providers import SlurmProvider
        opts = dict(partition=self.cluster.partition, exclusive=False, cores_per_node=1, mem_per_node=0.25,
                    walltime="00:05:00", init_blocks=0, min_blocks=0, max_blocks=1, worker_init=WORKER_INIT)
        opts.update(kwargs)
        provider = SlurmProvider(**opts)
        provider.script_dir = str(self.tmp_path / f"submit_scripts_{len(self.providers)}")
        provider.status_backoff = 0.1
        provider.status_polling_interval = 1   # Parsl's 60 s would make the strategy see ended jobs late
        self.providers.append(provider)
        return provider

    def executor(self, provider, **options):
        """``tests.support.safe_executor`` with this directory's defaults and a run directory of its own."""
        opts = dict(EXECUTOR_DEFAULTS, run_dir=str(self.tmp_path / f"run{len(self.run_dirs)}"))
        opts.update(options)
        self.run_dirs.append(opts["run_dir"])
        return safe_executor(provider, **opts)

    def launcher(self, kind: str):
        """(launcher, worker_init) that start one manager per node: ``"srun"``; ``"mpich"`` (Hydra's
        mpiexec: ``--ppn``, ``--bind-to``, as PALS and Intel MPI take them) or ``"openmpi"`` (``--npernode``).
        An MPI is chosen as a site's ``module load`` would: its ``mpiexec`` first on ``PATH``."""
        from faasx.launchers import MpiExecLauncher, SrunLauncher
        if kind == "srun":
            return SrunLauncher(), WORKER_INIT
        exe = shutil.which(MPIEXEC[kind])
        if exe is None:
            _no_cluster(f"{MPIEXEC[kind]} is not installed (apt-get install {MPI_PACKAGES[kind]})")
        bin_dir = self.tmp_path / f"{kind}-bin"
        bin_dir.mkdir(exist_ok=True)
        # a script, not a symlink: Hydra finds its proxy next to the path it was started as
        wrapper = bin_dir / "mpiexec"
        wrapper.write_text(f'#!/bin/sh\nexec {exe} "$@"\n')
        wrapper.chmod(0o755)
        init = f"{WORKER_INIT}\nexport PATH={bin_dir}:$PATH"
        if kind == "openmpi":
            # as root, and over the bridge: Open MPI skips 127.x interfaces unless told to use eth0
            init += ("\nexport OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
                     "OMPI_MCA_oob_tcp_if_include=eth0")
            return MpiExecLauncher(bind_cmd="--bind-to", ppn_flag="--npernode"), init
        return MpiExecLauncher(bind_cmd="--bind-to", ppn_flag="--ppn"), init

    def job_ids(self) -> set:
        return {jid for p in self.providers for jid in p.resources if str(jid).isdigit()}

    def cleanup(self) -> List[str]:
        """Reconnect every node, cancel this test's jobs; what was left behind, as messages."""
        problems = []
        cluster = self.cluster
        for node in cluster.nodes:
            cluster.set_link(node.name, True)
        jobs = self.job_ids()
        if jobs & cluster.active_jobs():
            cluster.run("scancel", *sorted(jobs), check=False)
        try:
            wait_until(lambda: not (jobs & cluster.active_jobs()), timeout=60, interval=0.2,
                     what=lambda: f"jobs {sorted(jobs & cluster.active_jobs())} to leave squeue")
        except AssertionError as e:
            problems.append(str(e))
        try:
            wait_until(lambda: all(s in ("idle", "mixed", "allocated") for s in cluster.node_states().values()),
                     timeout=90, interval=0.5, what=lambda: f"every node to be up again: {cluster.node_states()}")
        except AssertionError as e:
            problems.append(str(e))
        for run_dir in self.run_dirs:
            try:
                wait_until(lambda: not faasx_processes_of(run_dir, cluster), timeout=20, interval=0.2,
                         what=lambda: f"the processes of {run_dir} to exit: {faasx_processes_of(run_dir, cluster)}")
            except AssertionError as e:
                problems.append(str(e))
                for pid, _, _ in faasx_processes_of(run_dir, cluster):
                    with contextlib.suppress(OSError):
                        os.kill(pid, 9)
        return problems


@pytest.fixture
def multinode(multinode_cluster, tmp_path, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", multinode_cluster.conf)   # the providers' commands and jobs inherit it
    session = MultinodeSession(multinode_cluster, tmp_path)
    yield session
    problems = session.cleanup()
    assert not problems, "the test left the cluster unclean:\n" + "\n".join(problems)
