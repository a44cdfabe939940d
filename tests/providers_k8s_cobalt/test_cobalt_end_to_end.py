"""faasx (and Parsl's own HighThroughputExecutor) running real tasks on blocks from the Cobalt stand-in.

The block's job script runs the executor's launch command (a ``faasx-manager``) as a local process
started by the stand-in's "MOM node", exactly as Cobalt would start it on Theta.
"""
from __future__ import annotations

import os

import pytest
from parsl.jobs.states import JobState
from parsl.launchers import SingleNodeLauncher

import faasx
from faasx.providers import CobaltProvider


def test_faasx_tasks_run_on_a_cobalt_block(fake_cobalt, tmp_path, wait_for):
    provider = CobaltProvider(launcher=SingleNodeLauncher(), walltime="00:05:00", queue="debug-cache-quad",
                              account="PROJ", init_blocks=1, min_blocks=0, max_blocks=1)
    provider.status_polling_interval = 1

    def job_env(name):  # defined here so that it travels by value: workers cannot import test modules
        import os
        return os.environ.get(name), os.getpid()

    with faasx.Executor(provider=provider, max_workers_per_node=2, run_dir=str(tmp_path / "run")) as ex:
        futures = [ex.submit(job_env, "COBALT_JOBID") for _ in range(20)]
        results = [f.result(timeout=60) for f in futures]
        (job_id,) = provider.resources  # one block, one Cobalt job
        assert {r[0] for r in results} == {job_id}  # every task ran inside the Cobalt job
        assert os.getpid() not in {r[1] for r in results}
        assert ex.submit(job_env, "FAASX_BLOCK_JOB_ID").result(timeout=30)[0] == job_id
        job = fake_cobalt.jobs()[int(job_id)]
        assert (job["queue"], job["project"], job["state"]) == ("debug-cache-quad", "PROJ", "running")
    # shutdown cancelled the block: Cobalt forgets it and every process the job started is gone
    wait_for(lambda: fake_cobalt.jobs() == {}, timeout=15, what="the block's job to leave qstat")
    wait_for(lambda: not fake_cobalt.job_processes(), timeout=10, what="the job's processes to exit")
    assert provider.status([job_id])[0].state in (JobState.CANCELLED, JobState.SCALED_IN, JobState.COMPLETED)


def test_theta_like_configuration_with_the_default_aprun_launcher(fake_cobalt, tmp_path):
    """CobaltProvider's defaults, as on Theta: AprunLauncher starts one manager per node of a 2-node block."""
    provider = CobaltProvider(nodes_per_block=2, walltime="00:05:00", account="PROJ", queue="debug-flat-quad",
                              scheduler_options="#COBALT --attrs mcdram=cache:numa=quad", init_blocks=1,
                              max_blocks=1)
    provider.status_polling_interval = 1

    def where():
        import os
        import time
        time.sleep(0.2)  # keep both managers busy
        return os.environ["COBALT_JOBID"], os.environ["ALPS_APP_PE"]

    with faasx.Executor(provider=provider, max_workers_per_node=1, run_dir=str(tmp_path / "run")) as ex:
        results = [f.result(timeout=60) for f in [ex.submit(where) for _ in range(12)]]
    (job_id,) = provider.resources
    assert {r[0] for r in results} == {job_id}
    assert {r[1] for r in results} == {"0", "1"}  # both nodes' managers served tasks
    (script,) = [name for name in os.listdir(provider.script_dir) if name.endswith(".submit")]
    assert "aprun -n 2 -N 1" in open(os.path.join(provider.script_dir, script)).read()


def test_tasks_outlast_a_blocks_walltime(fake_cobalt, tmp_path):
    """The first block's walltime runs out mid-run: its manager drains (FAASX_WALLTIME_END), Cobalt ends the
    job, the executor gets a new block, and every task still completes."""
    provider = CobaltProvider(launcher=SingleNodeLauncher(), walltime="00:00:06", init_blocks=1, min_blocks=0,
                              max_blocks=1)
    provider.status_polling_interval = 1

    def slow(i):
        import os
        import time
        time.sleep(0.25)
        return i, os.environ["COBALT_JOBID"]

    with faasx.Executor(provider=provider, max_workers_per_node=2, strategy_period=0.5,
                        run_dir=str(tmp_path / "run")) as ex:
        futures = [ex.submit(slow, i) for i in range(60)]  # ~7.5 s of work for 2 workers
        results = [f.result(timeout=90) for f in futures]
    assert [r[0] for r in results] == list(range(60))
    jobs = {r[1] for r in results}
    assert len(jobs) >= 2, f"all tasks ran in job(s) {jobs}: the walltime should have ended the first block"
    first = min(provider.resources, key=int)
    assert provider.status([first])[0].state in (JobState.COMPLETED, JobState.TIMEOUT)


def test_parsl_htex_runs_on_the_cobalt_provider(fake_cobalt, tmp_path):
    """faasx's providers also work under Parsl's own executors."""
    parsl = pytest.importorskip("parsl")
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor

    # Parsl pickles the app with a reference to this module: let the workers import it, as a user would
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(os.path.dirname(here))  # in case tests/ is imported as a package
    provider = CobaltProvider(launcher=SingleNodeLauncher(), walltime="00:05:00", init_blocks=1, max_blocks=1,
                              worker_init=f'export PYTHONPATH="{here}:{root}:$PYTHONPATH"')
    provider.status_polling_interval = 1
    config = Config(executors=[HighThroughputExecutor(label="htex_cobalt", provider=provider,
                                                      max_workers_per_node=1, address="127.0.0.1")],
                    run_dir=str(tmp_path / "runinfo"), strategy="none")

    @parsl.python_app
    def where():
        import os
        return os.environ.get("COBALT_JOBID")

    dfk = parsl.load(config)
    try:
        assert where().result(timeout=60) in provider.resources
    finally:
        dfk.cleanup()
