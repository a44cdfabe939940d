"""Issue 10, section 1: what another local user could read.  Every path in a run directory is 0700/0600
whatever the umask (the tests run with umask 0, so a file created without an explicit mode would be
0666), and the run's secrets are in no command line, submit script or log."""
from __future__ import annotations

import os
import stat
import subprocess

import pytest

import faasx
from faasx.providers import LocalProvider

HB = dict(heartbeat_period=0.5, heartbeat_threshold=10)


def chatty(i):
    print("stdout of task", i)          # the worker's .out file
    return i + 1


def modes(run_dir: str) -> dict:
    """{path relative to run_dir: mode} for every entry under run_dir, run_dir itself as '.'."""
    found = {".": stat.S_IMODE(os.lstat(run_dir).st_mode)}
    for root, dirs, files in os.walk(run_dir):
        for name in dirs + files:
            path = os.path.join(root, name)
            found[os.path.relpath(path, run_dir)] = stat.S_IMODE(os.lstat(path).st_mode)
    return found


def not_private(found: dict, run_dir: str) -> dict:
    bad = {}
    for rel, mode in found.items():
        path = os.path.join(run_dir, rel)
        want = 0o700 if os.path.isdir(path) and not os.path.islink(path) else 0o600
        if mode != want:
            bad[rel] = oct(mode)
    return bad


def test_every_path_in_the_run_dir_is_private_whatever_the_umask(umask_zero, open_dir):
    run_dir = os.path.join(open_dir, "run")
    with faasx.Executor(max_workers_per_node=2, run_dir=run_dir, worker_debug=True,
                        memo_store=os.path.join(run_dir, "memo.sqlite"), **HB) as ex:
        assert [f.result(timeout=60) for f in [ex.submit(chatty, i) for i in range(10)]] == list(range(1, 11))
        fid = ex.register_function(chatty, memoize=True)
        assert ex.submit(fid, 5).result(timeout=60) == 6 and ex.submit(fid, 5).result(timeout=60) == 6
        running = modes(run_dir)
    after = modes(run_dir)
    assert not_private(running, run_dir) == {}, "while running"
    assert not_private(after, run_dir) == {}, "after shutdown"
    # the run made what the issue lists: logs, submit scripts and the jobs' output, certs, the memo store
    import fnmatch
    for pattern in ("faasx/client.log", "faasx/interchange.log", "faasx/manager_*.log", "faasx/worker_*.log",
                    "faasx/worker_*.out", "faasx/submit_scripts/*.sh", "faasx/submit_scripts/*.stdout",
                    "faasx/submit_scripts/*.stderr", "faasx/certs/token", "faasx/certs/*.key_secret",
                    "faasx/interchange-*.sock", "memo.sqlite", "memo.sqlite-wal"):
        assert fnmatch.filter(running, pattern), (pattern, sorted(running))


def test_a_local_block_of_another_run_dir_layout_is_private_too(umask_zero, open_dir):
    """A provider used with its own script_dir (as Parsl sets it): scripts and the job's output 0600."""
    script_dir = os.path.join(open_dir, "scripts")
    provider = LocalProvider(init_blocks=1, min_blocks=0, max_blocks=1)
    provider.script_dir = script_dir
    with faasx.Executor(provider=provider, max_workers_per_node=1, run_dir=os.path.join(open_dir, "run"),
                        **HB) as ex:
        assert ex.submit(pow, 3, 3).result(timeout=60) == 27
    assert not_private(modes(script_dir), script_dir) == {}


def test_the_run_token_and_keys_are_in_no_command_line_script_or_log(umask_zero, open_dir):
    run_dir = os.path.join(open_dir, "run")
    with faasx.Executor(max_workers_per_node=1, run_dir=run_dir, **HB) as ex:
        assert ex.submit(pow, 2, 2).result(timeout=60) == 4
        certs = os.path.join(ex.executor.logdir, "certs")
        token = ex.executor._token
        secret_key = token    # (also the client's CurveZMQ secret key, where there is one)
        if os.path.exists(os.path.join(certs, "client.key_secret")):
            with open(os.path.join(certs, "client.key_secret")) as f:
                secret_key = [line.split('"')[1] for line in f if "secret-key" in line][0]
        cmdlines = subprocess.run(["ps", "-eo", "args", "--no-headers", "-ww"], capture_output=True,
                                  text=True, check=True).stdout
        assert "faasx-manager" in cmdlines and "--cert-dir" in cmdlines
        leaks = []
        for root, _, files in os.walk(run_dir):
            if os.path.abspath(root).startswith(certs):
                continue          # the credentials themselves (0600 in a 0700 directory)
            for name in files:
                path = os.path.join(root, name)
                if stat.S_ISSOCK(os.lstat(path).st_mode):
                    continue
                with open(path, "rb") as f:
                    data = f.read()
                if token.encode() in data or secret_key.encode() in data:
                    leaks.append(path)
    assert token not in cmdlines and secret_key not in cmdlines, "a secret is in ps"
    assert leaks == [], leaks


def test_a_run_dir_that_another_user_owns_is_refused(open_dir):
    """Another user may have made the directory first (in /tmp, say) to read what we put in it."""
    trap = os.path.join(open_dir, "shared-run")
    os.mkdir(trap, 0o777)
    os.chown(trap, 65534, 65534)     # nobody
    with pytest.raises(PermissionError, match="belongs to uid 65534"):
        faasx.Executor(max_workers_per_node=1, run_dir=trap, **HB)
    assert os.listdir(trap) == []
