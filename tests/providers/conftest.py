"""Fixtures for the provider tests.

``slurm_cluster``   (session) the real local Slurm cluster started by ``ci/start-slurm.sh``: found through
                    ``SLURM_CONF``, else ``$SLURM_CI_DIR/etc/slurm.conf`` (default dir /tmp/slurm-ci), and
                    checked with ``scontrol ping`` and ``sinfo``.  Exports ``SLURM_CONF`` for the session.
                    No cluster: the test is skipped with the reason -- unless ``FAASX_REQUIRE_SLURM=1``
                    (CI sets it), where it fails.  Value: a ``SlurmCluster`` (conf, partition, cpus).
``slurm_provider``  factory: ``slurm_provider(**kwargs)`` -> a faasx ``SlurmProvider`` on that cluster
                    (default partition, ``exclusive=False``, script_dir in tmp_path); every job it
                    submitted is cancelled at teardown, so a failing test does not starve the next one.
``pbs_provider``    the same for ``PBSProProvider`` through Slurm's Torque-style qsub/qstat/qdel.
``wait_for``        ``wait_for(fn, timeout=30, interval=0.2, what=...)``: poll until ``fn()`` is truthy and
                    return it, or fail saying what was awaited.
``squeue_ids``      ``squeue_ids()`` -> set of job ids Slurm still has pending/running/completing.

Mark tests that need the cluster with ``@pytest.mark.slurm``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import subprocess

import pytest

from tests import support


@dataclasses.dataclass
class SlurmCluster:
    conf: str
    partition: str
    cpus: int


def _no_cluster(reason: str):
    reason = f"no usable Slurm cluster: {reason} (start one with ci/start-slurm.sh)"
    if os.environ.get("FAASX_REQUIRE_SLURM") == "1":
        pytest.fail(f"FAASX_REQUIRE_SLURM=1 but {reason}", pytrace=False)
    pytest.skip(reason)


def _run(argv, env, timeout=10):
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def slurm_cluster():
    conf = os.environ.get("SLURM_CONF") or os.path.join(os.environ.get("SLURM_CI_DIR", "/tmp/slurm-ci"),
                                                       "etc", "slurm.conf")
    if not os.path.isfile(conf):
        _no_cluster(f"{conf} does not exist")
    env = dict(os.environ, SLURM_CONF=conf)
    try:
        ping = _run(["scontrol", "ping"], env)
        if ping.returncode != 0 or "UP" not in ping.stdout:
            _no_cluster(f"slurmctld does not answer (scontrol ping: {(ping.stdout + ping.stderr).strip()})")
        info = _run(["sinfo", "--noheader", "--format=%P|%T|%c"], env)
    except FileNotFoundError as e:
        _no_cluster(f"Slurm client commands are not installed ({e})")
    except subprocess.TimeoutExpired as e:
        _no_cluster(f"{e.cmd[0]} timed out")
    rows = [line.split("|") for line in info.stdout.split()]
    usable = [r for r in rows if len(r) == 3 and r[1] in ("idle", "mixed", "allocated")]
    if not usable:
        _no_cluster(f"no node is up (sinfo: {info.stdout.strip() or info.stderr.strip()})")
    default = next((r for r in usable if r[0].endswith("*")), usable[0])
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf  # the providers' commands inherit it
    yield SlurmCluster(conf=conf, partition=default[0].rstrip("*"), cpus=int(default[2]))
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous


def _active_ids(env=None):
    out = subprocess.run(["squeue", "--noheader", "--states=PENDING,RUNNING,COMPLETING,CONFIGURING,SUSPENDED",
                          "--format=%i"], capture_output=True, text=True, timeout=10, env=env)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


@pytest.fixture
def squeue_ids(slurm_cluster):
    return _active_ids


@pytest.fixture
def wait_for():
    """``tests.support.wait_until``, polling less often: the conditions here ask the scheduler."""
    return functools.partial(support.wait_until, interval=0.2)


def _cleanup(providers):
    ids = []
    for provider in providers:
        ids += [jid for jid in provider.resources if jid.isdigit()]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True, timeout=10)


@pytest.fixture
def slurm_provider(slurm_cluster, tmp_path):
    from faasx.providers import SlurmProvider
    made = []

    def make(**kwargs):
        kwargs.setdefault("partition", slurm_cluster.partition)
        kwargs.setdefault("exclusive", False)  # two 1-CPU blocks share the test node
        kwargs.setdefault("walltime", "00:05:00")
        provider = SlurmProvider(**kwargs)
        provider.script_dir = str(tmp_path / "submit_scripts")
        provider.status_backoff = 0.1
        made.append(provider)
        return provider

    yield make
    _cleanup(made)


@pytest.fixture
def pbs_provider(slurm_cluster, tmp_path):
    from faasx.providers import PBSProProvider
    made = []

    def make(**kwargs):
        kwargs.setdefault("walltime", "00:05:00")
        kwargs.setdefault("cmd_timeout", 20)
        provider = PBSProProvider(**kwargs)
        provider.script_dir = str(tmp_path / "submit_scripts")
        provider.status_backoff = 0.1
        made.append(provider)
        return provider

    yield make
    _cleanup(made)
