"""PBSProProvider: both dialects' scripts, PBS Pro parsing against recorded outputs, dialect detection,
and the Torque-style qsub/qstat/qdel of the real local cluster (Slurm's slurm-wlm-torque wrappers)."""
from __future__ import annotations

import inspect
import json
import logging
import os
import sys
import time

import pytest
from parsl.jobs.states import JobState
from parsl.providers import PBSProProvider as ParslPBSProProvider

from faasx.errors import ScaleOutFailed
from faasx.providers import PBSProProvider
from faasx.providers.pbspro import (PBSPRO, TORQUE, dialect_from_version, parse_qstat_full, parse_qstat_json,
                                    pbs_job_status)

FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")
SERVER = "polaris-pbs-01.hsn.cm.polaris.alcf.anl.gov"


def fixture(name):
    with open(os.path.join(FIXTURES, name)) as f:
        return f.read()


def _directives(script):
    return [line[len("#PBS "):] for line in script.splitlines() if line.startswith("#PBS ")]


# -- scripts -----------------------------------------------------------------------------------------------
def _polaris_like():
    return PBSProProvider(account="MYPROJECT", queue="debug", nodes_per_block=2, cpus_per_node=64,
                          select_options="ngpus=4", walltime="01:00:00",
                          scheduler_options="#PBS -l filesystems=home:eagle",
                          worker_init="module use /soft/modulefiles; module load conda")


def test_pbspro_script():
    script = _polaris_like().submit_script("faasx-manager", 1, "blk", "/o", "/e", dialect=PBSPRO)
    assert _directives(script) == ["-S /bin/bash", "-N blk", "-m n", "-l walltime=01:00:00",
                                   "-l select=2:ncpus=64:ngpus=4", "-o /o", "-e /e", "-q debug", "-A MYPROJECT",
                                   "-l filesystems=home:eagle"]
    lines = script.splitlines()
    end = lines.index("export FAASX_WALLTIME_END=$(( $(date +%s) + 3600 ))")
    assert lines[end + 1] == 'export FAASX_BLOCK_JOB_ID="${PBS_JOBID:-}"'
    init = lines.index("module use /soft/modulefiles; module load conda")
    assert end < init < next(i for i, line in enumerate(lines) if "faasx-manager" in line)


def test_torque_script():
    script = _polaris_like().submit_script("faasx-manager", 1, "blk", "/o", "/e", dialect=TORQUE)
    assert _directives(script) == ["-S /bin/bash", "-N blk", "-m n", "-l nodes=2:ppn=64:ngpus=4,walltime=01:00:00",
                                   "-o /o", "-e /e", "-q debug", "-A MYPROJECT", "-l filesystems=home:eagle"]
    assert "select=" not in script


def test_parsl_config_ports_by_changing_the_import():
    parsl_args = set(inspect.signature(ParslPBSProProvider.__init__).parameters) - {"self"}
    ours = inspect.signature(PBSProProvider.__init__).parameters
    assert parsl_args <= set(ours)
    values = dict(account="a", queue="q", scheduler_options="#PBS -l x", select_options=":ngpus=4",
                  worker_init="w", nodes_per_block=3, cpus_per_node=32, init_blocks=0, min_blocks=0, max_blocks=4,
                  parallelism=0.5, walltime="00:30:00", cmd_timeout=60, dialect="torque", bin_dir="/opt/pbs/bin")
    p = PBSProProvider(**values)
    for name in ours:
        if name != "self":
            assert hasattr(p, name), name
    for name, value in values.items():
        assert getattr(p, name) == value, name
    assert "queue='q'" in repr(p)
    assert p.select_options == ":ngpus=4"  # not mutated by building a script (Parsl's is)
    p.submit_script("x")
    assert p.select_options == ":ngpus=4"
    with pytest.raises(ValueError, match="dialect"):
        PBSProProvider(dialect="lsf")


# -- recorded PBS Pro outputs ---------------------------------------------------------------------------
EXPECTED = {  # sequence number -> (state, exit code) for the jobs of pbspro_qstat_f.json
    123: (JobState.RUNNING, None),
    124: (JobState.PENDING, None),
    125: (JobState.HELD, None),
    126: (JobState.COMPLETED, 0),
    127: (JobState.TIMEOUT, 271),    # SIGTERM at the walltime (used >= limit)
    128: (JobState.CANCELLED, 271),  # SIGTERM long before it: qdel
    129: (JobState.TIMEOUT, -29),    # JOB_EXEC_KILL_WALLTIME
    130: (JobState.FAILED, 1),
    131: (JobState.FAILED, -1),      # PBS could not start it
    132: (JobState.RUNNING, None),   # E: exiting, still holds its node
}


def test_parse_pbspro_json():
    jobs = parse_qstat_json(fixture("pbspro_qstat_f.json"))
    assert set(jobs) == {f"{n}.{SERVER}" for n in EXPECTED}
    running = jobs[f"123.{SERVER}"]
    assert running["job_state"] == "R" and running["Resource_List.select"] == "1:ncpus=64"
    assert running["resources_used.walltime"] == "00:03:27"
    for number, (state, code) in EXPECTED.items():
        status = pbs_job_status(jobs[f"{number}.{SERVER}"])
        assert (status.state, status.exit_code) == (state, code), number
    assert "Insufficient amount of resource" in pbs_job_status(jobs[f"124.{SERVER}"]).message


def test_parse_pbspro_text_with_wrapped_values():
    jobs = parse_qstat_full(fixture("pbspro_qstat_f.txt"))
    assert set(jobs) == {f"{n}.{SERVER}" for n in (123, 127, 128, 130)}
    job = jobs[f"123.{SERVER}"]
    assert job["Variable_List"].endswith("PBS_O_HOST=polaris-login-02.hsn.cm.polaris.alcf.anl.gov")
    assert "PBS_O_LOGNAME=alice" in job["Variable_List"]  # joined across the wrap
    assert job["Submit_arguments"].endswith(".submit")
    json_jobs = parse_qstat_json(fixture("pbspro_qstat_f.json"))
    for jid, attrs in jobs.items():  # the two formats describe the same jobs identically
        assert pbs_job_status(attrs).state == pbs_job_status(json_jobs[jid]).state
        assert attrs["Resource_List.walltime"] == json_jobs[jid]["Resource_List.walltime"]


def test_parse_slurm_torque_wrapper_text():
    jobs = parse_qstat_full(fixture("slurm_torque_qstat_f.txt"))
    assert set(jobs) == {"7", "11"}
    assert jobs["11"]["Job_Name"] == "faasx-recorded"
    assert pbs_job_status(jobs["11"]).state == JobState.RUNNING
    done = pbs_job_status(jobs["7"])
    assert done.state == JobState.COMPLETED and "no exit status" in done.message


@pytest.mark.parametrize("name,dialect", [("pbspro_qstat_version.txt", PBSPRO), ("torque_qstat_version.txt", TORQUE),
                                          ("slurm_torque_qstat_version.txt", TORQUE)])
def test_dialect_from_version_output(name, dialect):
    assert dialect_from_version(fixture(name)) == dialect


# -- PBS Pro end to end, through stand-ins that replay the recorded outputs ----------------------------------
_STANDIN = r'''
import json, os, sys
prog, args = os.path.basename(sys.argv[0]), sys.argv[1:]
fixtures, log = os.environ["PBS_FIXTURES"], os.environ["PBS_CALL_LOG"]
with open(log, "a") as f:
    f.write(json.dumps([prog] + args) + "\n")
read = lambda name: open(os.path.join(fixtures, name)).read()
if prog == "qsub":
    sys.stdout.write(read("pbspro_qsub.txt"))
elif prog == "qstat" and args == ["--version"]:
    sys.stdout.write(read("pbspro_qstat_version.txt"))
elif prog == "qstat" and args[:4] == ["-x", "-f", "-F", "json"]:
    doc = json.loads(read("pbspro_qstat_f.json"))
    known = {k.split(".")[0]: k for k in doc["Jobs"]}
    wanted = [a.split(".")[0] for a in args[4:]]
    doc["Jobs"] = {known[w]: doc["Jobs"][known[w]] for w in wanted if w in known}
    print(json.dumps(doc, indent=4))
    missing = [a for a in args[4:] if a.split(".")[0] not in known]
    for m in missing:
        sys.stderr.write(f"qstat: Unknown Job Id {m}\n")
    sys.exit(153 if missing else 0)
elif prog == "qdel":
    sys.exit(0)
else:
    sys.stderr.write(f"{prog}: unexpected arguments {args}\n")
    sys.exit(2)
'''


@pytest.fixture
def pbspro_standins(tmp_path, monkeypatch):
    bin_dir = tmp_path / "pbs_bin"
    bin_dir.mkdir()
    for name in ("qsub", "qstat", "qdel"):
        (bin_dir / name).write_text(f"#!{sys.executable}\n{_STANDIN}")
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("PBS_FIXTURES", FIXTURES)
    monkeypatch.setenv("PBS_CALL_LOG", str(log))

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return str(bin_dir), calls


def test_pbspro_dialect_end_to_end_on_recorded_outputs(pbspro_standins, tmp_path):
    bin_dir, calls = pbspro_standins
    p = PBSProProvider(account="MYPROJECT", queue="debug", cpus_per_node=64, bin_dir=bin_dir)
    p.script_dir = str(tmp_path / "scripts")
    job_id = p.submit("faasx-manager", 1, "faasx.block-0")
    assert job_id == "123.polaris-pbs-01"  # exactly what qsub printed
    assert p.detected_dialect == PBSPRO
    qsub = next(c for c in calls() if c[0] == "qsub")
    assert qsub[1:5] == ["-q", "debug", "-A", "MYPROJECT"]
    with open(qsub[-1]) as f:
        assert "#PBS -l select=1:ncpus=64" in f.read()
    # qstat names the job with the server's long name: matched by sequence number
    assert p.status([job_id])[0].state == JobState.RUNNING
    others = [f"{n}.polaris-pbs-01" for n in (126, 127, 128)]
    assert [s.state for s in p.status(others)] == [JobState.COMPLETED, JobState.TIMEOUT, JobState.CANCELLED]
    gone = p.status(["999.polaris-pbs-01"])[0]  # unknown to qstat (exit 153): ended, not an error
    assert gone.state == JobState.COMPLETED and "no longer known" in gone.message
    assert p.cancel([job_id]) == [True]
    assert ["qdel", job_id] in calls()
    assert [c[0:2] for c in calls()].count(["qstat", "--version"]) == 1  # detected once, then cached


def test_detection_is_not_cached_when_qstat_is_missing(tmp_path):
    p = PBSProProvider(bin_dir=str(tmp_path))
    assert "select=" in p.submit_script("x")  # cannot probe: PBS Pro syntax, the modern default
    assert p.detected_dialect is None
    p.script_dir = str(tmp_path / "scripts")
    with pytest.raises(ScaleOutFailed, match=f"qsub not found in {tmp_path}: is this a PBS login node"):
        p.submit("x", 1)


# -- the real Torque-style commands of the local cluster --------------------------------------------------
@pytest.mark.slurm
def test_torque_style_submit_status_and_contract(pbs_provider, tmp_path, wait_for):
    p = pbs_provider(cpus_per_node=1)
    marker = tmp_path / "marker"
    submitted = int(time.time())
    job_id = p.submit(f'echo "$PBS_JOBID $FAASX_BLOCK_JOB_ID $FAASX_WALLTIME_END" > {marker}', 1, "faasx.pbs")
    assert job_id.isdigit(), job_id  # the wrapper's bare ids
    assert p.detected_dialect == TORQUE
    with open(next(f for f in (tmp_path / "submit_scripts").iterdir() if f.suffix == ".submit")) as f:
        assert "#PBS -l nodes=1:ppn=1,walltime=00:05:00" in f.read()
    status = wait_for(lambda: (s := p.status([job_id])[0]).terminal and s, timeout=60, what="the PBS job to end")
    assert status.state == JobState.COMPLETED, (status, status.stderr)
    pbs_id, block_id, end = marker.read_text().split()
    assert pbs_id == block_id == job_id
    assert submitted + 300 <= int(end) <= int(time.time()) + 300
    assert os.path.exists(status.stdout_path) and status.stdout_path.startswith(str(tmp_path))


@pytest.mark.slurm
def test_torque_style_cancel(pbs_provider, cancel_a_running_job):
    job_id = cancel_a_running_job(pbs_provider())
    # qstat of a fresh provider still lists it, as C
    assert PBSProProvider(dialect=TORQUE).status([job_id])[0].terminal


@pytest.mark.slurm
def test_torque_style_unknown_ids(pbs_provider):
    p = pbs_provider()
    status = p.status(["999999"])[0]  # the wrapper's qstat exits 153 printing nothing
    assert status.state == JobState.COMPLETED and "no longer known" in status.message
    assert p.cancel(["999998"]) == [True]  # qdel exits 1; the job is not there: nothing to cancel


@pytest.mark.slurm
def test_torque_style_rejected_queue(pbs_provider):
    p = pbs_provider(queue="no_such_queue")
    with pytest.raises(ScaleOutFailed) as info:
        p.submit("true", 1)
    assert "invalid partition specified: no_such_queue" in str(info.value)
    assert info.value.retcode == 1


@pytest.mark.slurm
def test_json_rejection_falls_back_to_text(pbs_provider, wait_for, caplog):
    """Told it is PBS Pro, the provider meets a qstat that rejects -x/-F json and switches for good."""
    caplog.set_level(logging.INFO, logger="faasx.providers.pbspro")
    p = pbs_provider(dialect=PBSPRO)
    job_id = p.submit("true", 1)
    status = wait_for(lambda: (s := p.status([job_id])[0]).terminal and s, timeout=60, what="the PBS job to end")
    assert status.state == JobState.COMPLETED
    assert p.detected_dialect == TORQUE
    assert "switching to the Torque dialect" in caplog.text
