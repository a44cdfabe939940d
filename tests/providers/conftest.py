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
``cancel_a_running_job``  ``cancel(provider)``: a running job cancelled, checked CANCELLED and gone; its id.

Mark tests that need the cluster with ``@pytest.mark.slurm``.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import subprocess

import pytest
from parsl.jobs.states import JobState

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


def _provider_factory(cls, tmp_path, **defaults):
    """``make(**kwargs)`` -> a ``cls`` provider with ``defaults`` (a 5-minute walltime and more), its job scripts
    in ``tmp_path``, status retries quick; and ``made``, the providers, whose jobs teardown cancels."""
    made = []

    def make(**kwargs):
        for key, value in dict(defaults, walltime="00:05:00").items():
            kwargs.setdefault(key, value)
        provider = cls(**kwargs)
        provider.script_dir = str(tmp_path / "submit_scripts")
        provider.status_backoff = 0.1
        made.append(provider)
        return provider
    return make, made


@pytest.fixture
def slurm_provider(slurm_cluster, tmp_path):
    from faasx.providers import SlurmProvider
    # exclusive=False: two 1-CPU blocks share the test node
    make, made = _provider_factory(SlurmProvider, tmp_path, partition=slurm_cluster.partition, exclusive=False)
    yield make
    _cleanup(made)


@pytest.fixture
def pbs_provider(slurm_cluster, tmp_path):
    from faasx.providers import PBSProProvider
    make, made = _provider_factory(PBSProProvider, tmp_path, cmd_timeout=20)
    yield make
    _cleanup(made)


@pytest.fixture
def cancel_a_running_job(tmp_path, wait_for, squeue_ids):
    """``cancel(provider) -> job id``: submit a sleeping job with ``provider``, wait until it runs, cancel it,
    and check that the provider says CANCELLED and that the job leaves the queue."""
    def cancel(provider):
        started = tmp_path / "started"
        job_id = provider.submit(f"touch {started}; sleep 300", 1)
        wait_for(lambda: provider.status([job_id])[0].state == JobState.RUNNING and started.exists(), timeout=30,
                 what="the job to run")
        assert provider.cancel([job_id]) == [True]
        assert provider.status([job_id])[0].state == JobState.CANCELLED
        wait_for(lambda: job_id not in squeue_ids(), timeout=30, what="the job to leave the queue")
        return job_id
    return cancel
