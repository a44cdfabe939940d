"""Elasticity and walltime, end to end on the real local Slurm cluster (issue 3).

Real ``sbatch``/``squeue``/``scancel``, real faasx processes: ``faasx.Executor`` runs Parsl's
job-status poller and 'simple' strategy, which scale Slurm blocks out under load and in when idle;
managers drain before their job's walltime and say BYE when Slurm cancels them; blocks that never
connect are reported with their job's stderr.  (Two blocks serving tasks and shutdown leaving
``squeue`` empty are covered by ``test_engine_on_slurm.py``.)

Every executor here uses the same knobs: ``min_blocks=0, max_blocks=3``, one worker per block,
``heartbeat_period=0.5, heartbeat_threshold=4``, ``strategy_period=0.5, max_idletime=3``, and a provider
``status_polling_interval`` of 1 s (Parsl's default for batch providers is 60 s, which would make the
strategy see ended jobs a minute late).  Each block asks Slurm for one CPU (``cores_per_node=1``,
``exclusive=False``) on the 2-CPU test node, so at most two blocks run at once and a third stays PENDING.
Every wait polls with a deadline and every ``result()`` has a timeout.
"""
from __future__ import annotations

import glob
import os
import subprocess
import time

import pytest
from parsl.jobs.states import JobState

from tests.support import safe_executor

HERE = os.path.dirname(os.path.abspath(__file__))
# Tasks are functions of this module, sent by reference: the blocks must be able to import it.
WORKER_INIT = f"export PYTHONPATH={HERE}${{PYTHONPATH:+:$PYTHONPATH}}"

HEARTBEAT_PERIOD = 0.5
HEARTBEAT_THRESHOLD = 4.0
MAX_IDLETIME = 3.0
STRATEGY_PERIOD = 0.5


# ---- functions the blocks run ------------------------------------------------------------------
def job_after(seconds):
    """Sleep, then say which Slurm job ran this."""
    import os
    import time
    time.sleep(seconds)
    return os.environ["SLURM_JOB_ID"]


def run_until_before_walltime(seconds_before_end):
    """Keep the block's only worker busy until ``seconds_before_end`` before the job's walltime."""
    import os
    import time
    end = float(os.environ["FAASX_WALLTIME_END"])
    time.sleep(max(0.0, end - seconds_before_end - time.time()))
    return os.environ["SLURM_JOB_ID"], end, time.time()


def long_task_with_marker(marker, seconds, ignore_sigterm=False):
    """Append this job's id to ``marker`` when starting (once per attempt), then run a while."""
    import os
    import signal
    import time
    if ignore_sigterm:  # as native code or a function with its own handlers may: the worker outlives SIGTERM
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    with open(marker, "a") as f:
        f.write(os.environ["SLURM_JOB_ID"] + "\n")
    time.sleep(seconds)
    return os.environ["SLURM_JOB_ID"]


# ---- helpers -----------------------------------------------------------------------------------
@pytest.fixture
def block_provider(slurm_cluster, slurm_provider):
    if slurm_cluster.cpus < 2:
        pytest.skip("needs a node with 2 CPUs")

    def make(**kw):
        opts = dict(init_blocks=0, min_blocks=0, max_blocks=3, nodes_per_block=1, cores_per_node=1,
                    mem_per_node=0.25, walltime="00:05:00", worker_init=WORKER_INIT)
        opts.update(kw)
        provider = slurm_provider(**opts)
        provider.status_polling_interval = 1
        return provider
    return make


def elastic_executor(provider, tmp_path, **options):
    opts = dict(max_workers_per_node=1, heartbeat_period=HEARTBEAT_PERIOD, heartbeat_threshold=HEARTBEAT_THRESHOLD,
                strategy="simple", strategy_period=STRATEGY_PERIOD, max_idletime=MAX_IDLETIME,
                run_dir=str(tmp_path / "run"))
    opts.update(options)
    return safe_executor(provider, **opts)


def logs(ex, pattern):
    return sorted(glob.glob(os.path.join(ex.executor.logdir, pattern)))


def read(path):
    with open(path) as f:
        return f.read()


def manager_log(ex, block_id):
    found = logs(ex, f"manager_{block_id}_*.log")
    return read(found[0]) if found else ""


def manager_of_block(ex, block_id):
    return [m for m in ex.executor.connected_managers() if m["block_id"] == str(block_id)]


# ---- 1. burst scale-out, idle scale-in --------------------------------------------------------------
@pytest.mark.slurm
def test_burst_scales_out_to_max_blocks_and_idle_blocks_are_cancelled(block_provider, tmp_path, squeue_ids,
                                                                     wait_for):
    """A burst of 8 one-second tasks with no block: the strategy asks for ``max_blocks=3`` jobs at once
    (8 tasks, 0 slots).  Only two fit on the 2-CPU node, so the third may stay PENDING: the test requires
    the 3 submitted jobs in ``squeue`` and tasks served by at least 2 of them.  Once the burst is over the
    executor has nothing to do; after ``max_idletime`` (3 s, not earlier) the strategy cancels every block
    down to ``min_blocks=0`` and the jobs leave ``squeue``."""
    provider = block_provider()
    with elastic_executor(provider, tmp_path) as ex:
        futures = [ex.submit(job_after, 1.0) for _ in range(8)]
        blocks = wait_for(lambda: len(ex.executor.blocks_to_job_id) >= 3 and dict(ex.executor.blocks_to_job_id),
                          timeout=15, what="the strategy to submit 3 blocks for the burst")
        jobs = set(blocks.values())
        assert len(jobs) == 3
        in_queue = squeue_ids()
        assert jobs <= in_queue, f"jobs {jobs - in_queue} of the 3 blocks are not in squeue"
        served = [f.result(timeout=60) for f in futures]
        t_last_result = time.monotonic()
        assert set(served) <= jobs
        assert len(set(served)) >= 2, f"all 8 tasks ran on one block ({set(served)}); the burst did not spread"
        assert len(ex.executor.blocks_to_job_id) == 3, "more than max_blocks blocks were started"

        # scale-in: every block SCALED_IN, not before max_idletime of idleness, and gone from squeue
        wait_for(lambda: all(ex.executor.status_facade[b].state == JobState.SCALED_IN for b in blocks),
                 timeout=MAX_IDLETIME + 15, interval=0.1, what="the idle blocks to be scaled in")
        idle_for = time.monotonic() - t_last_result
        assert idle_for >= MAX_IDLETIME - 0.2, f"blocks were scaled in after {idle_for:.1f}s idle (< max_idletime)"
        wait_for(lambda: not (jobs & squeue_ids()), timeout=30, what="the scaled-in jobs to leave squeue")
        assert ex.executor.connected_managers() == []
        # and the executor still works: a new task brings up a new block
        assert ex.submit(job_after, 0).result(timeout=60) not in jobs
        assert len(ex.executor.blocks_to_job_id) == 4


# ---- 2. walltime drain ----------------------------------------------------------------------------
@pytest.mark.slurm
def test_block_drains_before_its_walltime_and_new_tasks_go_to_a_new_block(block_provider, tmp_path, squeue_ids,
                                                                            wait_for):
    """A block with a 60 s walltime and ``drain_margin=50``.

    When the drain starts: the manager drains at ``FAASX_WALLTIME_END - margin`` with
    ``margin = min(drain_margin, 25% of the walltime left when it starts)`` (``Manager._drain_deadline``:
    the cap keeps a short job from draining as soon as it starts).  The job script sets the end at its
    own start + 60 s and the manager starts ~1-2 s later, so the margin is ~min(50, 0.25 * 58) ~ 14.5 s:
    the drain comes ~45 s into the job, ~14.5 s before Slurm would kill it -- not 10 s into it, which
    ``drain_margin=50`` alone would suggest.  The test asserts the drain lands in [end - 20, end - 10].

    The block's single worker runs a task that lasts until 8 s before the walltime (so it is running
    when the drain starts, and keeps the block from idling away under ``max_idletime=3`` meanwhile).
    It must finish on that block; the manager then says "drained" and exits, and its job ends as
    COMPLETED before its walltime (not TIMEOUT).  Tasks submitted after the drain started run on a new
    block the strategy starts.  Nothing is lost or retried.
    """
    provider = block_provider(walltime="00:01:00")
    with elastic_executor(provider, tmp_path, drain_margin=50) as ex:
        keeper = ex.submit(run_until_before_walltime, 8)
        wait_for(lambda: manager_of_block(ex, 0), timeout=30, what="block 0's manager to register")
        job0 = ex.executor.blocks_to_job_id["0"]
        wait_for(lambda: "draining" in manager_log(ex, 0), timeout=75, interval=0.2,
                 what="block 0's manager to start draining")
        t_drain = time.time()
        assert "draining: the block's walltime is nearly over" in manager_log(ex, 0)
        assert not keeper.done(), "the long task finished before the drain: the test proves nothing"
        # the interchange no longer offers the draining manager any task
        wait_for(lambda: all(not m["active"] for m in manager_of_block(ex, 0)), timeout=5,
                 what="the interchange to mark the draining manager inactive")

        assert list(ex.executor.blocks_to_job_id) == ["0"], "a second block was started before the drain"
        after = [ex.submit(job_after, 0.5) for _ in range(3)]
        late_jobs = {f.result(timeout=60) for f in after}
        job_id, end, finished = keeper.result(timeout=30)
        assert job_id == job0, "the task running when the drain started did not finish on its block"
        assert finished > t_drain
        assert end - 20 <= t_drain <= end - 10, (f"drain started {end - t_drain:.1f}s before the walltime; expected "
                                                 "~14.5s (min(drain_margin=50, 25% of the walltime))")
        print(f"drain began {end - t_drain:.1f}s before the walltime; later tasks ran on jobs {late_jobs}, not {job0}")
        assert job0 not in late_jobs, "a task submitted after the drain started ran on the draining block"
        assert late_jobs <= set(ex.executor.blocks_to_job_id.values())

        wait_for(lambda: "drained" in manager_log(ex, 0), timeout=10, what="block 0's manager to say 'drained'")
        wait_for(lambda: job0 not in squeue_ids(), timeout=15, what="the drained block's job to end")
        assert time.time() < end, "the drained job only ended at its walltime"
        state = provider.status([job0])[0]
        assert state.state == JobState.COMPLETED, f"drained job ended as {state}"
        stats = ex.executor.interchange_stats()
        assert stats["retried"] == 0 and stats["failed_system"] == 0, stats


# ---- 3. a job cancelled while its task runs ---------------------------------------------------------
@pytest.mark.slurm
@pytest.mark.parametrize("worker_outlives_sigterm", [False, True],
                         ids=["worker-dies-with-job", "worker-ignores-sigterm"])
def test_task_of_a_cancelled_job_is_redispatched_at_once(block_provider, tmp_path, wait_for, worker_outlives_sigterm):
    """Two blocks; a long task starts on one of them; ``scancel`` that job.  Slurm sends SIGTERM to every
    process of the job, and the task is re-dispatched to the other block at once -- faster than
    ``heartbeat_threshold`` (4 s), the only way a vanished manager could be noticed otherwise -- and
    completes there (Globus Compute issue #890: tasks of a cancelled or timed-out endpoint job must not be
    lost).

    Which message carries the task back depends on who dies first:

    * worker-dies-with-job: the worker usually dies of the SIGTERM before its manager has acted on its
      own, so the manager reports the task WORKER_LOST; or, if the manager is quicker, in its BYE.
    * worker-ignores-sigterm: the task ignores SIGTERM (as native code or a function with its own
      handlers may), so the worker lives on and only the manager's BYE, which lists the task it held,
      can bring the task back before the heartbeat timeout.
    """
    provider = block_provider(init_blocks=2)
    marker = str(tmp_path / "starts")
    with elastic_executor(provider, tmp_path) as ex:
        fut = ex.submit(long_task_with_marker, marker, 6, worker_outlives_sigterm)
        wait_for(lambda: os.path.exists(marker), timeout=30, what="the long task to start")
        wait_for(lambda: len(ex.executor.connected_managers()) == 2, timeout=30, what="both managers to register")
        first_job = read(marker).split()[0]
        victim = ex.executor.job_ids_to_block[first_job]
        assert [m["tasks"] for m in manager_of_block(ex, victim)] == [1]
        other = next(m for m in ex.executor.connected_managers() if m["block_id"] != victim)

        t0 = time.monotonic()
        subprocess.run(["scancel", first_job], check=True, timeout=10)
        wait_for(lambda: any(m["manager"] == other["manager"] and m["tasks"] == 1
                             for m in ex.executor.connected_managers()),
                 timeout=15, interval=0.05, what="the task to be re-dispatched to the other block")
        recovery = time.monotonic() - t0
        second_job = fut.result(timeout=30)
        assert second_job != first_job
        assert read(marker).split() == [first_job, second_job]
        print(f"re-dispatched {recovery:.2f}s after scancel")
        assert recovery < HEARTBEAT_THRESHOLD, (f"re-dispatch took {recovery:.2f}s, not faster than a heartbeat "
                                                f"timeout (heartbeat_threshold={HEARTBEAT_THRESHOLD}s)")

        log = manager_log(ex, victim)
        assert "exited (received SIGTERM" in log, log[-2000:]
        ic_log = read(os.path.join(ex.executor.logdir, "interchange.log"))
        assert "removed: it exited (received SIGTERM" in ic_log, ic_log[-3000:]
        via_bye = "1 task(s) were still held" in log
        if worker_outlives_sigterm:
            assert via_bye, log[-2000:]
            # the BYE goes out before the manager gives its workers their 2 s of shutdown grace
            assert recovery < 1.5, f"re-dispatch through BYE took {recovery:.2f}s"
        if via_bye:
            assert "1 task(s) re-queued" in ic_log, ic_log[-3000:]
        else:
            assert "was killed by signal 15 while holding 1 task(s)" in log, log[-2000:]
            assert "worker lost on manager" in ic_log, ic_log[-3000:]


# ---- 4. blocks that never connect ---------------------------------------------------------------
@pytest.mark.slurm
def test_blocks_that_never_connect_are_reported_with_their_stderr_and_fail_the_futures(block_provider, tmp_path,
                                                                                        wait_for):
    """``worker_init`` prints to stderr and exits 3, so no manager ever starts.  The executor reports each
    such block as MISSING (or FAILED) with a message that carries the job's stderr, and Parsl's block
    error handler (the default, ``block_error_handler=True``) puts the executor in a bad state once
    every block has failed: the submitted futures fail with that error within seconds, not hang."""
    provider = block_provider(worker_init="echo PLANTED-ERROR: no python here >&2; exit 3")
    with elastic_executor(provider, tmp_path) as ex:
        futures = [ex.submit(job_after, 0) for _ in range(2)]

        def failed_block():
            return [(b, st) for b, st in ex.executor.status().items()
                    if st.state in (JobState.MISSING, JobState.FAILED)]
        b, st = wait_for(failed_block, timeout=30, what="a never-connecting block to be reported")[0]
        assert "PLANTED-ERROR: no python here" in (st.message or ""), st.message
        assert "without its manager ever connecting" in st.message

        t0 = time.monotonic()
        done = wait_for(lambda: all(f.done() for f in futures) and futures, timeout=30,
                        what="the futures to fail instead of hanging")
        for f in done:
            exc = f.exception(timeout=0)
            assert exc is not None
            assert "PLANTED-ERROR" in str(exc), str(exc)
        print(f"futures fail with {type(exc).__name__}: {str(exc)[:600]}")
        assert ex.executor.bad_state_is_set
        with pytest.raises(Exception, match="PLANTED-ERROR"):
            ex.submit(job_after, 0)
        print(f"futures failed {time.monotonic() - t0:.1f}s after the first block was reported")
