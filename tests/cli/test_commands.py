"""The ``faasx`` command against real executors: status (live, --watch, --json, finished), logs, ps, clean,
and the control endpoint's access control against a real unprivileged user (``setpriv``)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time

import pytest

from faasx.executor.control import socket_path
from tests import support

from .conftest import child_env


def faasx_cli(*args, cwd=None, timeout=60):
    return subprocess.run([sys.executable, "-m", "faasx", *args], capture_output=True, text=True, timeout=timeout,
                          cwd=cwd, env=child_env())


def shout(i):
    print(f"hello from call {i}")
    print(f"warning from call {i}", file=sys.stderr)
    return i


def fail(i):
    raise ValueError(f"bad input {i}")


def test_status_of_a_live_run_shows_blocks_managers_tasks_and_errors(executor, tmp_path):
    ex = executor(run_dir=str(tmp_path / "runinfo" / "myrun"))
    assert [f.result(timeout=30) for f in [ex.submit(pow, 2, i) for i in range(20)]] == [2 ** i for i in range(20)]
    failing = [ex.submit(fail, i) for i in range(2)]
    for f in failing:
        assert isinstance(f.exception(timeout=30), ValueError)
    gate = tmp_path / "gate"
    blocker = ex.submit(support.wait_until, lambda: os.path.exists(gate), 60, "the gate", 0.05)
    support.wait_until(lambda: json.loads(faasx_cli("status", "--json", cwd=tmp_path).stdout)[0]["tasks"]["running"],
                       30, "the blocking task to run", interval=0.2)

    out = faasx_cli("status", cwd=str(tmp_path))          # default: the newest run under ./runinfo
    assert out.returncode == 0, out.stderr
    text = out.stdout
    assert "myrun" in text and ": live, up" in text, text
    assert "RUNNING" in text and os.uname().nodename in text, text
    assert "done 22" not in text and "done 20" in text and "failed 2" in text and "running 1" in text, text
    assert f"task {failing[0].parsl_executor_task_id}" in text and "ValueError: bad input 0" in text, text
    assert "tasks/s over the last minute" in text

    snap = json.loads(faasx_cli("status", "--json", str(tmp_path / "runinfo" / "myrun")).stdout)[0]
    [manager] = snap["managers"]
    assert manager["workers"] == 2 and manager["busy"] == 1 and manager["tasks"] == 1
    assert 0 <= manager["last_heard"] < 3
    [block] = snap["blocks"]
    assert block["nodes"] == [os.uname().nodename] and block["job_id"]
    assert snap["tasks"]["failed"] == 2 and snap["tasks"]["done"] == 20 and snap["tasks"]["pending"] == 1
    # two workers: the two failures may come back in either order
    assert sorted(e["task_id"] for e in snap["errors"]) == sorted(f.parsl_executor_task_id for f in failing)
    gate.touch()
    assert blocker.result(timeout=30)


def test_status_watch_refreshes_in_place(executor, tmp_path):
    ex = executor()
    ex.submit(pow, 2, 2).result(timeout=30)
    out = faasx_cli("status", "--watch", "--interval", "0.2", "--count", "3", ex.run_dir)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("\x1b[H\x1b[2J") == 3 and out.stdout.count(": live, up") == 3


def test_status_of_a_finished_run_says_so_and_prints_the_final_counts(executor):
    ex = executor()
    futures = [ex.submit(pow, 3, i) for i in range(7)] + [ex.submit(fail, 9)]
    for f in futures:
        f.exception(timeout=30)
    ex.shutdown()
    assert not os.path.exists(socket_path(ex.executor.logdir))
    out = faasx_cli("status", ex.run_dir)
    assert out.returncode == 0, out.stderr
    assert "finished at" in out.stdout and "done 7" in out.stdout and "failed 1" in out.stdout, out.stdout
    assert "ValueError: bad input 9" in out.stdout
    snap = json.loads(faasx_cli("status", "--json", ex.run_dir).stdout)[0]
    assert snap["live"] is False and snap["tasks"]["done"] == 7


def test_status_of_a_run_whose_client_was_killed_says_why_it_cannot_answer(tmp_path):
    script = ("import faasx, os, sys; ex = faasx.Executor(max_workers_per_node=1, run_dir=sys.argv[1]); "
              "ex.submit(pow, 2, 2).result(timeout=30); print('up', flush=True); os._exit(0)")
    out = subprocess.run([sys.executable, "-c", script, str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=60, env=child_env())
    assert out.stdout.strip() == "up", out.stderr
    res = faasx_cli("status", str(tmp_path / "run"))
    assert res.returncode == 1
    assert "not live" in res.stdout and "ended without shutting the executor down" in res.stdout, res.stdout


def test_the_control_endpoint_is_private_to_the_runs_user(executor, tmp_path):
    """0700 directory, 0600 socket; a real other user (``setpriv`` to nobody) cannot reach it, and when the
    modes are loosened on purpose the server still refuses that user by its SO_PEERCRED uid."""
    ex = executor()
    path = socket_path(ex.executor.logdir)
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600 and stat.S_ISSOCK(os.stat(path).st_mode)
    attacker = ("import json, socket, sys; s = socket.socket(socket.AF_UNIX); "
                "s.connect('/proc/self/fd/%d/control.sock' % int(sys.argv[1])); "
                "print(s.recv(65536).decode())")   # a refused peer is answered before it sends anything
    dir_fd = os.open(os.path.dirname(path), os.O_RDONLY | os.O_DIRECTORY)
    try:
        def as_nobody():
            return subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "/usr/bin/python3",
                                   "-c", attacker, str(dir_fd)], pass_fds=(dir_fd,), capture_output=True, text=True,
                                  timeout=30)
        denied = as_nobody()
        assert denied.returncode != 0 and "PermissionError" in denied.stderr, denied
        os.chmod(os.path.dirname(path), 0o711)
        os.chmod(path, 0o666)
        refused = as_nobody()
        assert refused.returncode == 0, refused.stderr
        assert json.loads(refused.stdout) == {"error": "refused: uid 65534 is not the run's user"}
        assert "tasks" not in refused.stdout
    finally:
        os.close(dir_fd)
    mine = faasx_cli("status", "--json", ex.run_dir)     # the run's user still gets its answer
    assert json.loads(mine.stdout)[0]["live"] is True
    with open(os.path.join(ex.executor.logdir, "client.log")) as f:
        assert "refused a connection from uid 65534" in f.read()


def test_logs_shows_a_tasks_path_through_every_component_and_what_it_printed(executor):
    ex = executor(worker_debug=True)
    futures = [ex.submit(shout, i) for i in range(6)]
    assert [f.result(timeout=30) for f in futures] == list(range(6))
    tid = futures[3].parsl_executor_task_id
    out = faasx_cli("logs", str(tid), ex.run_dir)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    components = [line.split()[0] for line in lines if line.startswith("  ") and not line.startswith("  |")]
    for hop in ("client", "interchange", "manager_", "worker_"):
        assert any(c.startswith(hop) for c in components), out.stdout
    assert f"task {tid}: start" in out.stdout and f"task {tid} resolved" in out.stdout
    assert "  | hello from call 3" in lines and "  | warning from call 3" in lines, out.stdout
    assert "call 2" not in out.stdout and "call 4" not in out.stdout, out.stdout


def test_logs_without_worker_debug_still_shows_the_output_and_says_what_is_missing(executor):
    ex = executor()
    futures = [ex.submit(shout, i) for i in range(3)]
    [f.result(timeout=30) for f in futures]
    out = faasx_cli("logs", str(futures[1].parsl_executor_task_id), ex.run_dir)
    assert out.returncode == 0, out.stderr
    assert "  | hello from call 1" in out.stdout and "worker_debug=True" in out.stdout
    missing = faasx_cli("logs", "999999", ex.run_dir)
    assert missing.returncode == 1 and "no log line and no output" in missing.stdout


def test_ps_groups_this_hosts_faasx_processes_by_run(executor):
    ex = executor(max_workers_per_node=2)
    ex.submit(pow, 2, 2).result(timeout=30)
    out = faasx_cli("ps")
    assert out.returncode == 0, out.stderr
    logdir = os.path.abspath(ex.executor.logdir)
    lines = out.stdout.splitlines()
    start = lines.index(logdir)
    group = []
    for line in lines[start + 1:]:
        if not line.startswith("  "):
            break
        group.append(line.split())
    roles = sorted(g[1] for g in group)
    assert roles == ["faasx-interchange", "faasx-manager", "faasx-worker", "faasx-worker"], out.stdout
    ic = next(g for g in group if g[1] == "faasx-interchange")
    assert ic[3] == str(os.getpid())          # the interchange's parent is this client


def test_clean_removes_old_finished_runs_and_keeps_live_and_recent_ones(executor, tmp_path):
    root = tmp_path / "runinfo"
    old, recent = root / "old-run", root / "recent-run"
    for d in (old, recent):
        (d / "faasx").mkdir(parents=True)
        (d / "faasx" / "client.log").write_text("x\n")
    week_ago = time.time() - 8 * 86400
    for p in (old / "faasx" / "client.log", old / "faasx", old):
        os.utime(p, (week_ago, week_ago))
    live = executor(run_dir=str(root / "live-run"))
    live.submit(pow, 1, 1).result(timeout=30)
    for p in (root / "live-run" / "faasx", root / "live-run"):
        os.utime(p, (week_ago, week_ago))

    dry = faasx_cli("clean", "--older-than", "7d", "--dry-run", cwd=str(tmp_path))
    assert dry.returncode == 0 and "would remove runinfo/old-run" in dry.stdout and old.exists(), dry.stdout
    out = faasx_cli("clean", "--older-than", "7d", cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    assert not old.exists() and recent.exists() and (root / "live-run").exists()
    assert "kept runinfo/live-run: faasx processes of this run are still running" in out.stdout, out.stdout
    bad = faasx_cli("clean", "--older-than", "soon", cwd=str(tmp_path))
    assert bad.returncode == 2 and "not an age" in bad.stderr


def test_the_console_script_and_python_m_faasx_are_the_same_command():
    out = faasx_cli("--help")
    assert out.returncode == 0 and all(c in out.stdout for c in ("status", "logs", "ps", "clean"))
    from faasx.cli import main
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    script = shutil.which("faasx")
    if script is not None:   # installed: the console script runs the same main()
        assert subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60,
                              env=child_env()).stdout == out.stdout.replace("python -m faasx", "faasx")
