"""Shared-memory payloads on a shared host: another local user (a real ``nobody`` process, started
with setpriv) can neither list, read, create nor replace the payload files of a live run, with the
umask at 0 (so only faasx's own modes protect them) and the file's path handed to the attacker."""
from __future__ import annotations

import json
import os
import stat
import subprocess

import numpy as np

import faasx
from faasx.executor import payloads as PL
from tests.security.conftest import AS_NOBODY, ATTACKER_PYTHON
from tests.support import wait_until

ATTACK = r"""
import json, os, sys
directory, path = sys.argv[1], sys.argv[2]
tries = {
    "list": lambda: os.listdir(directory),
    "read": lambda: open(path, "rb").read(16),
    "create": lambda: open(os.path.join(directory, "f" * 32), "wb").write(b"x"),
    "replace": lambda: os.rename(own, path),
    "remove": lambda: os.unlink(path),
}
own = directory + "-attacker"       # a file of the attacker's own, on the same file system
open(own, "wb").write(b"forged")
out = {}
for name, attempt in tries.items():
    try:
        attempt()
        out[name] = "succeeded"
    except OSError as e:
        out[name] = type(e).__name__
os.unlink(own)
print(json.dumps(out))
"""


def hold(path, x):
    import os
    import time
    while not os.path.exists(path):
        time.sleep(0.02)
    return int(x[0])


def test_another_user_cannot_read_or_replace_a_payload(attacker_ready, umask_zero, open_dir):
    release = os.path.join(open_dir, "go")
    with faasx.Executor(max_workers_per_node=1, run_dir=os.path.join(open_dir, "run"),
                        heartbeat_period=0.5, heartbeat_threshold=10) as ex:
        directory = ex.executor._shm.path
        fut = ex.submit(hold, release, np.full(2 * PL.SHARED_MIN_BYTES, 7, np.uint8))
        [name] = wait_until(lambda: os.listdir(directory), 30, "the argument file")
        path = os.path.join(directory, name)
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        out = subprocess.run(AS_NOBODY + [ATTACKER_PYTHON, "-c", ATTACK, directory, path], capture_output=True,
                             text=True, cwd="/", timeout=60, env={"PATH": "/usr/bin:/bin"})
        assert out.returncode == 0, out.stderr[-2000:]
        report = json.loads(out.stdout)
        assert report == {k: "PermissionError" for k in report}, report
        assert os.listdir(directory) == [name]
        open(release, "w").close()
        assert fut.result(timeout=30) == 7
    assert not os.path.exists(directory)
