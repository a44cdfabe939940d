"""Helpers shared by every test directory."""
from __future__ import annotations

import contextlib
import re
import time
from typing import Any, Callable, Iterator, Union


def wait_until(predicate: Callable[[], Any], timeout: float = 30.0,
               what: Union[str, Callable[[], str], None] = None, interval: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns something truthy and return that; fail after ``timeout``
    seconds, saying what was awaited (``what``: a string, or a callable giving one at failure time)
    and the last value seen.  The one way tests wait for a condition: never a fixed sleep, never a
    hand-written deadline loop."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            text = what() if callable(what) else (what or getattr(predicate, "__name__", "condition"))
            raise AssertionError(f"timed out after {timeout}s waiting for {text}; last value: {value!r}")
        time.sleep(interval)


def wait_for(fn: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             what: Union[str, Callable[[], str], None] = None) -> Any:
    """``wait_until`` under its former name and argument order (``interval`` before ``what``), for
    branches written before the rename; new tests call ``wait_until``."""
    return wait_until(fn, timeout, what, interval)


def alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an exited child not yet reaped)."""
    import psutil
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@contextlib.contextmanager
def safe_executor(provider, **options) -> Iterator[Any]:
    """A ``faasx.Executor`` on ``provider`` that a failing test cannot hang: a test that fails may leave
    futures that never resolve, which ``shutdown(wait=True)`` would wait for; at exit the engine is torn
    down first (failing them), then shut down as usual."""
    import faasx
    ex = faasx.Executor(provider=provider, **options)
    try:
        yield ex
    finally:
        if any(not f.done() for f in list(ex.executor.tasks.values())):
            ex._teardown()
        ex.shutdown()


# ---- podman, as these machines run it (/work/shared/recipes/podman.md) ----------------------------
PODMAN_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
"""


def write_podman_conf(directory: str) -> str:
    """A containers.conf for this machine kind (crun fails here: setrlimit, hybrid cgroups; runc with
    lowered ulimits works); returns its path, for CONTAINERS_CONF."""
    import os
    path = os.path.join(directory, "containers.conf")
    with open(path, "w") as f:
        f.write(PODMAN_CONF)
    return path


def build_busybox_image(work: str, repo: str, marker_path: str, marker: str, applets, env: dict) -> str:
    """Import a local podman image (no registry) of busybox plus a marker file; returns its name."""
    import os
    import shutil
    import subprocess
    import uuid
    rootfs = os.path.join(work, "rootfs")
    for d in ("bin", "etc", "tmp", "usr"):
        os.makedirs(os.path.join(rootfs, d))
    shutil.copy2(shutil.which("busybox"), os.path.join(rootfs, "bin", "busybox"))
    for applet in applets:
        os.symlink("busybox", os.path.join(rootfs, "bin", applet))
    os.symlink("usr/lib", os.path.join(rootfs, "lib"))
    os.symlink("usr/lib64", os.path.join(rootfs, "lib64"))
    with open(os.path.join(rootfs, marker_path.lstrip("/")), "w") as f:
        f.write(marker + "\n")
    tar = os.path.join(work, "rootfs.tar")
    subprocess.run(["tar", "-C", rootfs, "-cf", tar, "."], check=True)
    image = f"localhost/{repo}:{uuid.uuid4().hex[:12]}"
    out = subprocess.run(["podman", "import", "--quiet", tar, image], env=dict(os.environ, **env),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return image


def is_static_elf(path: str) -> bool:
    """A 64-bit ELF executable without a program interpreter (it runs in an empty rootfs)."""
    import struct
    with open(path, "rb") as f:
        head = f.read(64)
        if head[:4] != b"\x7fELF" or head[4] != 2:
            return False
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))  # 3 = PT_INTERP


def require_podman() -> None:
    """Skip the calling test without podman, runc and a static busybox -- or fail it when the run demands
    podman (``FAASX_REQUIRE_PODMAN=1``, as CI sets)."""
    import os
    import shutil
    import pytest
    reason = None
    if shutil.which("podman") is None:
        reason = "podman is not installed (apt-get install -y podman runc)"
    elif shutil.which("runc") is None:
        reason = "runc is not installed (apt-get install -y runc)"
    elif shutil.which("busybox") is None or not is_static_elf(shutil.which("busybox")):
        reason = "a static busybox is needed to build the test image (apt-get install -y busybox-static)"
    if reason:
        if os.environ.get("FAASX_REQUIRE_PODMAN") == "1":
            pytest.fail(f"FAASX_REQUIRE_PODMAN=1 but {reason}")
        pytest.skip(reason)


def python_bind_dirs() -> list:
    """Host directories to bind read-only so the host's Python (and its site-packages) runs inside the
    busybox test image: ``/usr`` brings the C library and loader (the image's /lib, /lib64 point there),
    plus the interpreter's prefix when it lives elsewhere (pyenv, a venv)."""
    import os
    import sys
    dirs = ["/usr"]
    for prefix in (sys.base_prefix, sys.prefix, os.path.dirname(os.path.realpath(sys.executable))):
        prefix = os.path.realpath(prefix)
        if not any(prefix == d or prefix.startswith(d + "/") for d in dirs):
            dirs.append(prefix)
    return dirs


# The roles faasx puts in its processes' command lines (faasx.executor.processes).  Match them as whole
# words: a bare "faasx-" also matches paths such as CI's /tmp/faasx-ci-venvs/py3.10/bin/python, and
# every Python started from there (multiprocessing's resource tracker, say) would count as faasx's.
ENGINE_ROLE = re.compile(r"(?<![\w-])faasx-(?:interchange|manager|worker)(?![\w-])")


def is_engine_cmdline(cmdline: str) -> bool:
    """Whether a command line is one of faasx's own engine processes (interchange, manager, worker)."""
    return ENGINE_ROLE.search(cmdline) is not None


# ---- a user's project: a script and a module next to it (issue 10, section 5) ---------------------
PROJECT_HELPERS = '''\
def square(x):
    return x * x


def where(delay=0.0):
    import os, socket, time
    time.sleep(delay)
    return {"host": socket.gethostname(), "job": os.environ.get("SLURM_JOB_ID")}
'''

# Run as ``python /path/to/project/main.py CONFIG`` from another directory.  CONFIG (JSON) gives the
# SlurmProvider's arguments (``"srun": true``: an SrunLauncher, one manager per node) and the Executor's,
# how many managers to wait for, and how many ``where`` tasks to run.
PROJECT_MAIN = '''\
import json, sys, time
import faasx
from faasx.providers import SlurmProvider
from helpers import square, where

if __name__ == "__main__":
    config = json.loads(sys.argv[1])
    if config["provider"].pop("srun", False):
        from faasx.launchers import SrunLauncher
        config["provider"]["launcher"] = SrunLauncher()
    provider = SlurmProvider(**config["provider"])
    report = {}
    with faasx.Executor(provider=provider, **config["executor"]) as ex:
        try:
            deadline = time.monotonic() + 120
            while len(ex.executor.connected_managers()) < config["managers"] and time.monotonic() < deadline:
                time.sleep(0.1)
            report["squares"] = [f.result(timeout=120) for f in [ex.submit(square, i) for i in range(4)]]
            report["where"] = [f.result(timeout=120) for f in [ex.submit(where, 0.3) for _ in range(config["tasks"])]]
        except ModuleNotFoundError as e:
            report["error"] = {"type": type(e).__name__, "name": e.name, "message": str(e)}
        report["jobs"] = sorted(provider.resources)
    print(json.dumps(report))
'''


def write_project(directory: str) -> str:
    """``directory``/helpers.py and main.py (``PROJECT_HELPERS``, ``PROJECT_MAIN``); returns main.py's path."""
    import os
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "helpers.py"), "w") as f:
        f.write(PROJECT_HELPERS)
    with open(os.path.join(directory, "main.py"), "w") as f:
        f.write(PROJECT_MAIN)
    return os.path.join(directory, "main.py")


def run_project(project: str, config: dict, env: dict, node_local: bool = False, timeout: float = 300) -> dict:
    """Run ``project``/main.py as a user would, ``python /path/to/main.py CONFIG`` from ``/``; its JSON report.

    ``node_local``: the project is on a file system the nodes do not share -- the script runs in a mount
    namespace of its own (``unshare --mount``, root only) where a tmpfs over ``project``'s parent holds a
    copy of it, so the Slurm nodes (slurmd, in the host's namespace) see that directory empty."""
    import json
    import os
    import shlex
    import subprocess
    import sys
    main = os.path.join(project, "main.py")
    argv = [sys.executable, main, json.dumps(config)]
    if node_local:
        hide = os.path.dirname(project)
        setup = (f"mount -t tmpfs tmpfs {shlex.quote(hide)} && mkdir {shlex.quote(project)} && "
                 f"printf %s {shlex.quote(PROJECT_HELPERS)} > {shlex.quote(project)}/helpers.py && "
                 f"printf %s {shlex.quote(PROJECT_MAIN)} > {shlex.quote(main)} && exec {shlex.join(argv)}")
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", setup]
    out = subprocess.run(argv, cwd="/", env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"the script failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return json.loads(out.stdout.strip().splitlines()[-1])
