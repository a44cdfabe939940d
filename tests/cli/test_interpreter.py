"""Which Python runs the managers: the client's own for a local block, the job's PATH for batch jobs.

All real: a venv created here, a script run by the venv's absolute interpreter path with a PATH that
has neither the venv nor any ``faasx-manager``, a real Slurm job, and a manager started under another
real Python version (``FAASX_OTHER_PYTHON``, one of ``ci/test.sh``'s per-version venvs).
"""
from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
import textwrap

import pytest

import faasx
from faasx.errors import VersionMismatch
from faasx.providers import LocalProvider

from .conftest import FAST_HEARTBEATS, child_env

BARE_PATH = "/usr/bin:/bin"     # no venv, no pyenv shims: no faasx-manager anywhere on it

SCRIPT = textwrap.dedent("""
    import os, sys, faasx
    def where():
        import sys, psutil
        return sys.executable, psutil.Process(os.getppid()).cmdline()[0]
    with faasx.Executor(max_workers_per_node=1, run_dir=sys.argv[1], heartbeat_period=0.5,
                        heartbeat_threshold=3.0) as ex:
        worker_python, manager_python = ex.submit(where).result(timeout=60)
    print("client", sys.executable)
    print("worker", worker_python)
    print("manager", manager_python)
""")


def test_a_script_run_by_a_venvs_interpreter_without_the_venv_on_PATH_runs_its_local_block(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)],
                   check=True, timeout=120)
    python = str(venv / "bin" / "python")
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    out = subprocess.run([python, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                         timeout=120, cwd=str(tmp_path), env=child_env(PATH=BARE_PATH))
    assert out.returncode == 0, out.stdout + out.stderr
    lines = dict(line.split(" ", 1) for line in out.stdout.splitlines())
    assert lines == {"client": python, "worker": python, "manager": python}, out.stdout


def test_a_local_blocks_launch_command_names_this_interpreter_and_stays_recognisable(executor):
    ex = executor(max_workers_per_node=1)
    argv = shlex.split(ex.executor._get_launch_command("0"))
    assert argv[0] == sys.executable and argv[argv.index("faasx-manager") + 1] == "--addresses"
    assert ex.submit(pow, 2, 3).result(timeout=30) == 8


@pytest.mark.slurm
def test_a_batch_job_runs_faasx_manager_from_its_PATH_and_the_error_says_so(slurm_provider, tmp_path):
    """A Slurm job whose worker_init leaves no faasx on PATH: the block is reported as never connecting,
    with the job's ``command not found`` and which interpreter choice to fix."""
    from parsl.jobs.states import JobState
    from tests import support
    provider = slurm_provider(worker_init=f"export PATH={BARE_PATH}", init_blocks=1, min_blocks=0, max_blocks=1)
    with faasx.Executor(provider, max_workers_per_node=1, run_dir=str(tmp_path / "run"), strategy="none",
                        **FAST_HEARTBEATS) as ex:
        assert ex.executor._get_launch_command("0").startswith("faasx-manager ")

        def never_connected():
            return [st for st in ex.executor.status().values() if st.state in (JobState.MISSING, JobState.FAILED)]
        st = support.wait_until(never_connected, 60, "the Slurm block to be reported", interval=0.2)[0]
        assert "faasx-manager: command not found" in st.message, st.message
        assert "from its PATH after worker_init" in st.message and sys.executable in st.message, st.message


def test_a_manager_under_another_python_is_refused_naming_both_versions(executor, other_python):
    python, version = other_python
    mine = "%d.%d" % sys.version_info[:2]
    assert version != mine
    ex = executor(provider=LocalProvider(init_blocks=0, min_blocks=0, max_blocks=1), strategy="none")
    fut = ex.submit(pow, 2, 3)
    argv = shlex.split(ex.executor._get_launch_command("other"))
    manager = subprocess.run([python] + argv[1:], timeout=60, capture_output=True, env=child_env())
    assert manager.returncode == 1, manager.stderr[-2000:]
    with pytest.raises(VersionMismatch) as info:
        fut.result(timeout=15)
    msg = str(info.value)
    assert f"interchange '{platform.python_version()}'" in msg and f"'{version}." in msg, msg
