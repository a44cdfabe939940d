"""Fixtures for the MPI tests.

``mpich``             (session) MPICH's compiler and launcher, and ``allreduce.c`` built with ``mpicc.mpich``
                      into a temporary directory (never committed).  ``bin`` is a directory to put first on
                      PATH so that ``mpiexec`` is MPICH's (on Debian ``/usr/bin/mpiexec`` is Open MPI's when
                      both are installed).  Missing MPICH: skipped, or failed with ``FAASX_REQUIRE_MPI=1``.
``multinode_slurm``   (session) the multi-node Slurm cluster of ``ci/start-multinode.sh`` (slurmd per network
                      namespace: node1..nodeN, each its own host name and address), found through
                      ``$SLURM_MN_DIR`` (default /tmp/slurm-mn).  Missing: skipped, or failed with
                      ``FAASX_REQUIRE_MULTINODE=1``.
``on_multinode``      (module) the same, with ``SLURM_CONF`` pointing at it for the module's duration only.
"""
from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
from typing import List

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))


@dataclasses.dataclass
class Mpich:
    bin: str          # put first on PATH: mpiexec / mpicc there are MPICH's
    allreduce: str    # the compiled test program


@dataclasses.dataclass
class MultiNode:
    conf: str
    partition: str
    nodes: List[str]
    host_address: str   # the host's end of the nodes' bridge: where managers reach the interchange


def _missing(var: str, reason: str):
    if os.environ.get(var) == "1":
        pytest.fail(f"{var}=1 but {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="session")
def mpich(tmp_path_factory):
    mpicc, mpiexec = shutil.which("mpicc.mpich"), shutil.which("mpiexec.mpich")
    if not (mpicc and mpiexec):
        _missing("FAASX_REQUIRE_MPI", "MPICH is not installed (apt-get install mpich libmpich-dev)")
    work = tmp_path_factory.mktemp("mpich")
    bindir = work / "bin"
    bindir.mkdir()
    # a wrapper, not a symlink: hydra looks for its proxy beside the path it was started as
    wrapper = bindir / "mpiexec"
    wrapper.write_text(f'#!/bin/sh\nexec {mpiexec} "$@"\n')
    wrapper.chmod(0o755)
    exe = work / "allreduce"
    subprocess.run([mpicc, "-O1", "-o", str(exe), os.path.join(HERE, "allreduce.c")], check=True, timeout=120)
    return Mpich(bin=str(bindir), allreduce=str(exe))


@pytest.fixture(scope="session")
def multinode_slurm():
    base = os.environ.get("SLURM_MN_DIR", "/tmp/slurm-mn")
    conf = os.path.join(base, "etc", "slurm.conf")
    if not os.path.isfile(conf):
        _missing("FAASX_REQUIRE_MULTINODE", f"no multi-node Slurm cluster ({conf} missing; start one with "
                                            "ci/start-multinode.sh)")
    env = dict(os.environ, SLURM_CONF=conf)
    try:
        info = subprocess.run(["sinfo", "--noheader", "--format=%P|%T|%N"], env=env, capture_output=True,
                              text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired) as e:
        _missing("FAASX_REQUIRE_MULTINODE", f"the multi-node cluster does not answer ({e})")
    rows = [line.split("|") for line in info.stdout.split()]
    up = [r for r in rows if len(r) == 3 and r[1] in ("idle", "mixed", "allocated")]
    if not up:
        _missing("FAASX_REQUIRE_MULTINODE", f"no node of the multi-node cluster is up: {info.stdout}{info.stderr}")
    partition = next((r for r in up if r[0].endswith("*")), up[0])[0].rstrip("*")
    nodes_file = os.path.join(base, "nodes")   # "name address netns" per line
    with open(nodes_file) as f:
        rows_ = [line.split() for line in f if line.strip()]
    nodes = [r[0] for r in rows_]
    host_address = rows_[0][1].rsplit(".", 1)[0] + ".1"   # the bridge's host end: NET.1
    return MultiNode(conf=conf, partition=partition, nodes=nodes, host_address=host_address)


@pytest.fixture(scope="module")
def on_multinode(multinode_slurm):
    """``SLURM_CONF`` points at the multi-node cluster for one test module (providers' commands inherit
    it), and at whatever it pointed at before afterwards: other directories use the single-node cluster."""
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = multinode_slurm.conf
    yield multinode_slurm
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
