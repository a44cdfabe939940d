"""Helpers shared by every test directory."""
from __future__ import annotations

import time
from typing import Any, Callable, Union


def wait_for(fn: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             what: Union[str, Callable[[], str], None] = None) -> Any:
    """Poll ``fn`` until it returns something truthy and return that; fail after ``timeout`` seconds,
    saying what was awaited (``what``: a string, or a callable giving one at failure time) and the
    last value seen.  Tests wait for conditions this way, never by sleeping a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            text = what() if callable(what) else (what or getattr(fn, "__name__", "condition"))
            raise AssertionError(f"timed out after {timeout}s waiting for {text}; last value: {value!r}")
        time.sleep(interval)


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
