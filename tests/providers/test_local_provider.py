"""LocalProvider: blocks as process sessions on this machine."""
from __future__ import annotations

import inspect
import os
import time

import psutil
import pytest
from parsl.jobs.states import JobState
from parsl.providers import LocalProvider as ParslLocalProvider

from faasx.providers import LocalProvider


@pytest.fixture
def local(tmp_path):
    made = []

    def make(**kwargs):
        p = LocalProvider(**kwargs)
        p.script_dir = str(tmp_path / "scripts")
        p.cancel_grace = 1.0
        made.append(p)
        return p
    yield make
    for p in made:  # nothing a failing test started may outlive it
        p.cancel([jid for jid, job in p.resources.items() if not job['status'].terminal])


def _session(pid):
    out = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getsid(proc.pid) == pid:
                out.append(proc.pid)
        except (OSError, psutil.Error):
            pass
    return out


def _ended(p, job_id, wait_for, timeout=20):
    return wait_for(lambda: (s := p.status([job_id])[0]).terminal and s, timeout=timeout, what=f"block {job_id}")


def test_block_runs_and_completes(local, tmp_path, wait_for):
    p = local(worker_init="export GREETING=hello")
    marker = tmp_path / "marker"
    job_id = p.submit(f'echo "$GREETING $FAASX_BLOCK_JOB_ID ${{FAASX_WALLTIME_END:-unset}}" > {marker}', 1)
    status = _ended(p, job_id, wait_for)
    assert status.state == JobState.COMPLETED and status.exit_code == 0
    assert marker.read_text().split() == ["hello", job_id, "unset"]  # no walltime: no end time
    assert os.path.exists(status.stdout_path)


def test_failing_block_is_failed(local, wait_for):
    p = local(launcher=__import__("parsl.launchers", fromlist=["SimpleLauncher"]).SimpleLauncher())
    status = _ended(p, p.submit("exit 7", 1), wait_for)
    assert status.state == JobState.FAILED and status.exit_code == 7


def test_cancel_kills_everything_the_block_started(local, tmp_path, wait_for):
    p = local()
    # two copies, each ignoring SIGTERM, one also starting a grandchild in a session of its own
    job_id = p.submit(f"trap '' TERM; [ $1 = 1 ] && {{ setsid sleep 300 & echo $! > {tmp_path}/escaped; }}; "
                      f"touch {tmp_path}/up.$1; sleep 300", 2)
    wait_for(lambda: len(list(tmp_path.glob("up.*"))) == 2, what="both copies to start")
    escaped = psutil.Process(int((tmp_path / "escaped").read_text()))
    assert os.getsid(escaped.pid) != int(job_id) and len(_session(int(job_id))) >= 3
    assert p.status([job_id])[0].state == JobState.RUNNING
    assert p.cancel([job_id]) == [True]
    assert p.status([job_id])[0].state == JobState.CANCELLED
    assert _session(int(job_id)) == []
    assert not escaped.is_running() or escaped.status() == psutil.STATUS_ZOMBIE


def test_walltime_ends_the_block_as_timeout(local, tmp_path, wait_for):
    p = local(walltime="00:00:02")
    marker = tmp_path / "marker"
    started = int(time.time())
    job_id = p.submit(f'echo "$FAASX_WALLTIME_END" > {marker}; sleep 300', 1)
    status = _ended(p, job_id, wait_for)
    assert status.state == JobState.TIMEOUT
    assert started + 2 <= int(marker.read_text()) <= int(time.time()) + 2
    assert _session(int(job_id)) == []


def test_unknown_block_is_unknown_not_an_error(local):
    assert local().status(["1"])[0].state == JobState.UNKNOWN


def test_script_and_parsl_compatibility():
    parsl_args = set(inspect.signature(ParslLocalProvider.__init__).parameters) - {"self"}
    ours = inspect.signature(LocalProvider.__init__).parameters
    assert parsl_args <= set(ours)
    p = LocalProvider(max_blocks=3, worker_init="source env.sh", walltime="00:30:00")
    for name in ours:
        if name != "self":
            assert hasattr(p, name), name
    assert "walltime='00:30:00'" in repr(p) and p.label == "local"
    lines = p.submit_script("faasx-manager").splitlines()
    end = lines.index("export FAASX_WALLTIME_END=$(( $(date +%s) + 1800 ))")
    assert end < lines.index("source env.sh") < next(i for i, line in enumerate(lines) if "faasx-manager" in line)
