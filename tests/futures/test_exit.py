"""A script that submits and ends loses nothing (issue 10, section 2), as with ProcessPoolExecutor:
interpreter exit waits for the submitted tasks; Ctrl-C while it waits stops at once.  Each test runs
a real script in its own interpreter."""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.support import wait_until

from .conftest import faasx_processes

SCRIPT = textwrap.dedent("""
    import os, sys, time
    import faasx

    def side_effect(path, seconds):
        import os, time
        with open(path + ".started", "w"):
            pass
        time.sleep(seconds)
        with open(path, "w") as f:
            f.write("done")

    out, mode, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    ex = faasx.Executor(max_workers_per_node=2, run_dir=os.path.join(out, "run"),
                        heartbeat_period=0.5, heartbeat_threshold=3.0)
    for i in range(8):
        ex.submit(side_effect, os.path.join(out, f"task{i}"), seconds)
    if mode == "nowait":
        ex.shutdown(wait=False)
    print("script ends", flush=True)
""")


def run_script(tmp_path, mode, seconds):
    script = tmp_path / "main.py"
    script.write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
    return subprocess.Popen([sys.executable, str(script), str(tmp_path), mode, str(seconds)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("mode", ["no-shutdown", "nowait"])
def test_a_script_that_ends_gets_all_its_tasks_run(tmp_path, mode):
    proc = run_script(tmp_path, mode, 0.2)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-3000:]
    done = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("task") and "." not in p.name)
    assert done == [f"task{i}" for i in range(8)], err[-3000:]
    wait_until(lambda: not faasx_processes(str(tmp_path / "run")), 10, what="no faasx process left")


def test_ctrl_c_while_exit_waits_stops_at_once(tmp_path):
    proc = run_script(tmp_path, "no-shutdown", 120)
    try:
        wait_until(lambda: os.path.exists(tmp_path / "task0.started"), 60, what="the first task to start")
        assert proc.stdout.readline().strip() == "script ends"
        t0 = time.monotonic()
        proc.send_signal(signal.SIGINT)
        proc.wait(20)
        assert time.monotonic() - t0 < 15
    finally:
        if proc.poll() is None:
            proc.kill()
    wait_until(lambda: not faasx_processes(str(tmp_path / "run")), 15, what="no faasx process left")
    assert not any(p.name.startswith("task") and "." not in p.name for p in tmp_path.iterdir())
