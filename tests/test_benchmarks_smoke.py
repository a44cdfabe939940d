"""The benchmarks still run against the current engine (``--quick``: a few hundred tasks each).

They prove speed only when run in full on a quiet machine (``benchmarks/README.md``); here they are
smoke-run so that a change to the engine or to Parsl cannot silently break them.  Each script exits
non-zero on any error: a failed or hung run, a wrong result, or a process left behind.
"""
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.mark.parametrize("script,args,expect", [
    ("bench_engine.py", ["--systems", "faasx,htex"], "throughput"),
    ("bench_dfk.py", [], "tasks/s"),
    ("bench_memo.py", [], "memo hit"),
    ("bench_mixed.py", ["--systems", "faasx,processpool"], "makespan/bound"),
    ("bench_scale.py", [], "all registered"),
    ("bench_cancel.py", [], "cancel_futures=True"),
])
def test_benchmark_smoke_run(script, args, expect, tmp_path):
    out = subprocess.run([sys.executable, os.path.join(BENCH, script), "--quick", "--no-save", *args],
                         capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert expect in out.stdout and "STRAY" not in out.stdout, out.stdout[-3000:]


def test_bench_arrays_smoke_run(tmp_path):
    """bench_arrays needs numpy (the 'bench' extra); Ray is left out here: it is the peer, not the engine."""
    pytest.importorskip("numpy")
    out = subprocess.run([sys.executable, os.path.join(BENCH, "bench_arrays.py"), "--quick", "--no-save",
                          "--systems", "faasx,floor"], capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert out.returncode == 0, (out.stdout[-3000:], out.stderr[-3000:])
    assert "copies held" in out.stdout and "socketpair" in out.stdout and "STRAY" not in out.stdout, out.stdout[-3000:]
