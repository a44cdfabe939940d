"""Fixtures for the site configuration tests.

``schedulers``  a directory, first on PATH, of stand-ins for the *submission* commands only -- ``sbatch``,
                PBS ``qsub``/``qstat --version``, Cobalt ``qsub`` -- that keep a copy of each submitted
                script and the qsub/sbatch arguments, and print a job id as the real command would.  The
                provider under test runs unchanged (its script writing, its submit path); only the
                scheduler is replaced.  ``schedulers.flavor`` chooses what ``qsub`` is ("pbspro",
                "torque" or "cobalt").
``shims``       recording stand-ins of srun / aprun / mpiexec / container engines that run each task on this
                host (see tests/launchers/launch_shims.py), so a submitted script can then be run by bash.
``run_script``  run a captured job script with bash, with a deadline.
"""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest

import launch_shims  # noqa: E402  (on sys.path: the repository's conftest.py)

_SUBMIT = r'''
import json, os, shutil, sys

prog = os.path.basename(sys.argv[0])
argv = sys.argv[1:]
flavor = os.environ.get("FAKE_QSUB_FLAVOR", "pbspro")
if prog == "qstat":
    if argv == ["--version"] and flavor == "pbspro":
        print("pbs_version = 2022.1.3")
        sys.exit(0)
    print("qstat: Unknown option: version", file=sys.stderr)
    sys.exit(2)
capture = os.environ["FAKE_SUBMIT_DIR"]
n = len([f for f in os.listdir(capture) if f.endswith(".json")])
script = argv[-1]
shutil.copy(script, os.path.join(capture, f"{n}.script"))
with open(os.path.join(capture, f"{n}.json"), "w") as f:
    json.dump({"prog": prog, "argv": argv, "flavor": flavor}, f)
job = 4242 + n
if prog == "sbatch":
    print(f"Submitted batch job {job}")
elif flavor == "pbspro":
    print(f"{job}.polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov")
elif flavor == "cobalt":
    print(f"Job routed to queue \"{os.environ.get('FAKE_COBALT_QUEUE', 'default')}\".")
    print(job)
else:
    print(job)
'''


class Schedulers:
    def __init__(self, capture_dir: str, monkeypatch):
        self.capture_dir = capture_dir
        self._monkeypatch = monkeypatch
        self.flavor = "pbspro"

    @property
    def flavor(self) -> str:
        return self._flavor

    @flavor.setter
    def flavor(self, value: str) -> None:
        self._flavor = value
        self._monkeypatch.setenv("FAKE_QSUB_FLAVOR", value)

    def submissions(self) -> list:
        """[(record, script text)] in submission order."""
        out = []
        n = 0
        while os.path.exists(os.path.join(self.capture_dir, f"{n}.json")):
            with open(os.path.join(self.capture_dir, f"{n}.json")) as f:
                record = json.load(f)
            with open(os.path.join(self.capture_dir, f"{n}.script")) as f:
                out.append((record, f.read()))
            n += 1
        return out

    def only(self):
        subs = self.submissions()
        assert len(subs) == 1, f"expected one submission, got {len(subs)}"
        record, script = subs[0]
        return record, script, os.path.join(self.capture_dir, "0.script")


@pytest.fixture
def schedulers(tmp_path, monkeypatch):
    bin_dir = tmp_path / "scheduler-bin"
    bin_dir.mkdir()
    capture = tmp_path / "submitted"
    capture.mkdir()
    source = f"#!{sys.executable}\n{_SUBMIT}"
    for name in ("sbatch", "qsub", "qstat"):
        path = bin_dir / name
        path.write_text(source)
        path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SUBMIT_DIR", str(capture))
    return Schedulers(str(capture), monkeypatch)


@pytest.fixture
def shims(tmp_path, monkeypatch):
    return launch_shims.install_on_path(tmp_path, monkeypatch)


@pytest.fixture
def run_script():
    """``run_script(path, cwd, env=None, timeout=60) -> CompletedProcess``."""

    def run(path: str, cwd, env: dict | None = None, timeout: float = 60.0):
        full_env = dict(os.environ)
        full_env.update(env or {})
        proc = subprocess.Popen(["bash", path], cwd=str(cwd), env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.communicate()
            raise AssertionError(f"{path} did not finish within {timeout}s")
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    return run
