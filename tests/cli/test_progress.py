"""``faasx.progress`` and ``map(progress=True)``: what the bar prints, over faasx futures, Parsl AppFutures
(through a real DataFlowKernel on a FaaSExecutor) and plain concurrent.futures."""
from __future__ import annotations

import io
import json
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

import faasx
from tests import support

from .test_commands import faasx_cli


def maybe_fail(i):
    if i % 5 == 4:
        raise ValueError(i)
    return i


def final_line(text: str) -> str:
    return text.replace("\r", "\n").strip().splitlines()[-1]


def test_progress_shows_the_count_done_failed_and_the_rate(executor):
    ex = executor()
    futures = [ex.submit(maybe_fail, i) for i in range(15)]
    buf = io.StringIO()
    assert faasx.progress(futures, file=buf, desc="work", timeout=60) == futures
    assert all(f.done() for f in futures)
    last = final_line(buf.getvalue())
    assert last.startswith("work: 100%") and " 15/15 " in last, last
    assert "done=12 failed=3" in last and re.search(r"[\d.]+task/s", last), last


def test_progress_is_the_module_too_and_works_on_any_futures():
    import faasx.progress as module
    assert module is faasx.progress and callable(module)
    buf = io.StringIO()
    with ThreadPoolExecutor(2) as pool:
        futures = [pool.submit(time.sleep, 0.01) for _ in range(6)]
        module(futures, file=buf)
    assert " 6/6 " in final_line(buf.getvalue()) and "done=6 failed=0" in buf.getvalue()


def test_progress_times_out_instead_of_waiting_for_ever(executor, tmp_path):
    ex = executor(max_workers_per_node=1)
    gate = tmp_path / "gate"
    slow = ex.submit(support.wait_until, gate.exists, 60, "the gate", 0.05)
    with pytest.raises(TimeoutError, match="0 of 1 futures done after 0.5s"):
        faasx.progress([slow], file=io.StringIO(), timeout=0.5)
    gate.touch()
    assert slow.result(timeout=30)


@pytest.mark.parametrize("chunksize", [1, 8])
def test_map_progress_true_draws_a_bar_of_the_calls(executor, capsys, chunksize):
    ex = executor()
    assert list(ex.map(abs, range(-20, 20), chunksize=chunksize, progress=True)) == [abs(i) for i in range(-20, 20)]
    seen = []

    def finished():
        seen.append(capsys.readouterr().err)
        return "40/40" in "".join(seen) and "".join(seen).endswith("\n")   # the bar closed
    support.wait_until(finished, 10, "the map's bar to finish", interval=0.05)
    last = final_line("".join(seen))
    assert "100%" in last and "done=40 failed=0" in last and "call/s" in last, last


def test_progress_over_parsl_app_futures_and_status_of_a_parsl_run(tmp_path):
    from parsl import python_app
    from parsl.dataflow.futures import AppFuture
    from tests.parsl.parsl_support import load_dfk, unload_dfk

    run_dir = str(tmp_path / "runinfo")
    dfk = load_dfk(run_dir, faasx.FaaSExecutor(label="fx", max_workers_per_node=2, heartbeat_period=0.5,
                                               heartbeat_threshold=3.0))
    try:
        @python_app
        def square(x):
            if x == 3:
                raise KeyError(x)
            return x * x

        futures = [square(i) for i in range(8)]
        assert all(isinstance(f, AppFuture) for f in futures)
        buf = io.StringIO()
        faasx.progress(futures, file=buf, timeout=60)
        assert "8/8" in final_line(buf.getvalue()) and "done=7 failed=1" in buf.getvalue(), buf.getvalue()
        snap = json.loads(faasx_cli("status", "--json", dfk.run_dir).stdout)   # Parsl's runinfo/000
        [fx] = [s for s in snap if s.get("label") == "fx"]
        # Parsl wraps an app's exception into its result, so for the engine every task succeeded: faasx
        # status counts engine-level failures (lost workers, unpicklable results...), Parsl's own records app ones
        assert fx["live"] and fx["tasks"]["done"] == 8 and fx["tasks"]["failed"] == 0, fx["tasks"]
        assert fx["blocks"] and fx["managers"][0]["workers"] == 2
    finally:
        unload_dfk(dfk, run_dir)
