"""Walltime-aware placement with real processes: two local blocks whose jobs end at different times.

Both blocks come from one ``LocalProvider``; its ``worker_init`` gives the first block to start an
hour of ``FAASX_WALLTIME_END`` and the other five minutes (``mkdir`` is atomic: exactly one block
wins), as a batch provider's job script would export them.  The managers read the variable and send
``walltime_left`` at REGISTER; the interchange's scheduler places each task by its declared walltime.
"""
import os
import time

import pytest

import faasx
from faasx.executor import protocol as P
from faasx.providers import LocalProvider
from tests.engine.conftest import FAST_HEARTBEATS, faasx_processes, wait_until

LONG, SHORT = 3600, 300


def block_end(seconds):
    """The block's end (FAASX_WALLTIME_END) as its worker sees it, after ``seconds`` of work."""
    time.sleep(seconds)
    return float(os.environ["FAASX_WALLTIME_END"])


@pytest.fixture(scope="module")
def two_blocks(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("placement"))
    flag = os.path.join(run_dir, "long-block")
    worker_init = (f'if mkdir {flag} 2>/dev/null; then left={LONG}; else left={SHORT}; fi\n'
                   'export FAASX_WALLTIME_END=$(( $(date +%s) + left ))')
    provider = LocalProvider(init_blocks=2, min_blocks=2, max_blocks=2, worker_init=worker_init)
    ex = faasx.Executor(provider, run_dir=run_dir, max_workers_per_node=2, prefetch_capacity=0,
                        strategy=None, **FAST_HEARTBEATS)
    try:
        wait_until(lambda: len(ex.executor.connected_managers()) == 2, 60, "both blocks' managers to register")
        yield ex
    finally:
        ex.shutdown()
        wait_until(lambda: not faasx_processes(run_dir), 15, "the executor's processes to exit")


def test_managers_report_the_time_their_block_has_left(two_blocks):
    lefts = sorted(m["walltime_left"] for m in two_blocks.executor.connected_managers())
    assert SHORT - 120 < lefts[0] <= SHORT and LONG - 120 < lefts[1] <= LONG


def test_a_long_task_lands_only_on_the_long_block_and_short_tasks_may_use_either(two_blocks):
    ex = two_blocks
    now = time.time()
    # four long tasks (twice the long block's workers) first, then short ones while they run
    long_runs = [ex.options(walltime=1200).submit(block_end, 0.5) for _ in range(4)]
    short_runs = [ex.options(walltime=60).submit(block_end, 0.2) for _ in range(6)]
    long_ends = {round(f.result(timeout=60)) for f in long_runs}
    short_ends = {round(f.result(timeout=60)) for f in short_runs}
    assert len(long_ends) == 1 and list(long_ends)[0] - now > LONG - 120, long_ends
    # the long block was busy with long tasks: the short ones used the short block (and may use both)
    assert any(end - now < SHORT + 5 for end in short_ends), short_ends


def test_a_task_longer_than_any_block_fails_with_a_clear_error(two_blocks):
    fut = two_blocks.options(walltime=7200).submit(block_end, 0)
    with pytest.raises(Exception, match=r"walltime of 7200s.*longest remaining block time .* is 3\d\d\ds"):
        fut.result(timeout=30)      # after the grace period (heartbeat_threshold, 3 s here)
    # the executor goes on: a task that fits still runs
    assert two_blocks.options(walltime=30).submit(block_end, 0).result(timeout=30) > time.time()


@pytest.mark.parametrize("left, expected", [(None, None), (12.5, 12.5), (-3, 0.0), (7, 7.0)])
def test_register_carries_an_optional_walltime_left(left, expected):
    body = {"workers": 1, "block_id": "0"}
    if left is not None:
        body["walltime_left"] = left
    assert P.parse_register(body).walltime_left == expected


@pytest.mark.parametrize("bad", ["3600", True, float("nan"), [1]])
def test_a_malformed_walltime_left_is_refused(bad):
    with pytest.raises(P.ProtocolError, match="walltime_left"):
        P.parse_register({"workers": 1, "block_id": "0", "walltime_left": bad})
