"""Recording stand-ins for srun, aprun, mpiexec and the container engines (used by tests/launchers and
tests/configs).

Each stand-in appends what it was called with (argv, working directory, environment, for mpiexec the
hostfile's lines) to the JSON-lines file named by ``LAUNCHER_SHIM_LOG``, then does the job for real on
this host: a launcher runs its ``/bin/bash -c CMD`` once per task (with the task's rank variable set), an
engine runs the ``/bin/sh ...`` part of its command line with the environment that engine would give
the container.
"""
from __future__ import annotations

import json
import os
import stat
import sys

SHIM_NAMES = ("srun", "aprun", "mpiexec", "podman", "docker", "apptainer", "singularity", "shifter")

_SHIM = r'''
import fcntl, json, os, subprocess, sys

prog = os.path.basename(sys.argv[0])
argv = sys.argv[1:]
record = {"prog": prog, "argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}
if prog == "mpiexec" and "--hostfile" in argv:
    with open(argv[argv.index("--hostfile") + 1]) as f:
        record["hostfile"] = f.read().splitlines()
with open(os.environ["LAUNCHER_SHIM_LOG"], "a") as log:
    fcntl.flock(log, fcntl.LOCK_EX)
    log.write(json.dumps(record) + "\n")

LAUNCHERS = {"srun": "SLURM_PROCID", "aprun": "ALPS_APP_PE", "mpiexec": "PMI_RANK"}
if prog in LAUNCHERS:
    if prog == "srun":
        ntasks = int([a for a in argv if a.startswith("--ntasks=")][0].split("=", 1)[1])
    else:
        ntasks = int(argv[argv.index("-n") + 1])
    cmd = argv[argv.index("/bin/bash"):]
    procs = [subprocess.Popen(cmd, env=dict(os.environ, **{LAUNCHERS[prog]: str(rank)})) for rank in range(ntasks)]
    sys.exit(max(p.wait() for p in procs))

# a container engine: run the /bin/sh part on this host, with the environment the container would get
inner = argv[argv.index("/bin/sh"):]
env = {"PATH": os.environ["PATH"]}
if prog in ("podman", "docker"):
    for a in argv[:argv.index("/bin/sh")]:
        if a.startswith("--env="):
            name, eq, value = a[len("--env="):].partition("=")
            if eq:
                env[name] = value
            elif name in os.environ:
                env[name] = os.environ[name]
elif prog in ("apptainer", "singularity"):
    prefix = "APPTAINERENV_" if prog == "apptainer" else "SINGULARITYENV_"
    env.update(os.environ)
    env.update({k[len(prefix):]: v for k, v in os.environ.items() if k.startswith(prefix)})
else:  # shifter keeps the caller's environment
    env.update(os.environ)
sys.exit(subprocess.call(inner, env=env))
'''


def install(bin_dir: str, log_path: str) -> "ShimLog":
    """Write the stand-ins into ``bin_dir`` (put it first on PATH and set LAUNCHER_SHIM_LOG=log_path)."""
    source = f"#!{sys.executable}\n{_SHIM}"
    for name in SHIM_NAMES:
        path = os.path.join(bin_dir, name)
        with open(path, "w") as f:
            f.write(source)
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return ShimLog(log_path)


def install_on_path(tmp_path, monkeypatch) -> "ShimLog":
    """``install`` into a fresh directory of ``tmp_path`` put first on PATH for this test."""
    bin_dir = tmp_path / "shim-bin"
    bin_dir.mkdir()
    log = tmp_path / "shim-log.jsonl"
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("LAUNCHER_SHIM_LOG", str(log))
    return install(str(bin_dir), str(log))


class ShimLog:
    """The calls recorded by the shims, in order."""

    def __init__(self, path: str):
        self.path = path

    def calls(self, prog: str | None = None) -> list:
        if not os.path.exists(self.path):
            return []
        with open(self.path) as f:
            records = [json.loads(line) for line in f if line.strip()]
        return [r for r in records if prog is None or r["prog"] == prog]
