"""SingleNodeLauncher, SrunLauncher, AprunLauncher, MpiExecLauncher: the exact commands they build, and
their fragments run by bash -- for real on this host (SingleNodeLauncher), through recording stand-ins of
srun/aprun/mpiexec that run each task on this host (the others)."""
from __future__ import annotations

import os
import signal
import subprocess

import parsl.launchers
import pytest
from parsl.launchers.base import Launcher

from faasx.launchers import AprunLauncher, MpiExecLauncher, SingleNodeLauncher, SrunLauncher

TRICKY = """echo "rank=${SLURM_PROCID:-}${ALPS_APP_PE:-}${PMI_RANK:-} walltime=$FAASX_WALLTIME_END" 'single $quoted' `echo bq` $(echo sub) >> out.txt"""


def lines(path) -> list:
    with open(path) as f:
        return sorted(f.read().splitlines())


# -- the public names ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [SingleNodeLauncher, SrunLauncher, AprunLauncher, MpiExecLauncher])
def test_launchers_are_parsl_launchers_of_the_same_name(cls):
    # Parsl's providers insist on a Launcher; code that checks Parsl's concrete class keeps working
    assert issubclass(cls, Launcher)
    assert issubclass(cls, getattr(parsl.launchers, cls.__name__))
    assert cls.__module__ == "faasx.launchers.batch"


def test_repr_shows_constructor_arguments():
    text = " ".join(repr(MpiExecLauncher(bind_cmd="--cpu-bind", ppn_flag="--npernode")).split())
    assert text.startswith("MpiExecLauncher(")
    for part in ("bind_cmd='--cpu-bind'", "debug=True", "overrides=''", "ppn_flag='--npernode'"):
        assert part in text


@pytest.mark.parametrize("tasks, nodes", [(0, 1), (1, 0), (-1, 2)])
def test_a_launch_of_no_copies_is_refused(tasks, nodes):
    with pytest.raises(ValueError, match="tasks_per_node >= 1"):
        SingleNodeLauncher()("true", tasks, nodes)


# -- exact command lines ---------------------------------------------------------------------------------

def test_srun_command_line():
    fragment = SrunLauncher(debug=False, overrides="--gpus-per-node=4 -c 64")("faasx-manager --block-id 3 'a b'", 1, 2)
    assert (
        "srun --nodes=2 --ntasks=2 --ntasks-per-node=1 --kill-on-bad-exit=0 --label --gpus-per-node=4 -c 64 "
        "/bin/bash -c 'faasx-manager --block-id 3 '\"'\"'a b'\"'\"''") in fragment.splitlines()
    assert "cat <<" not in fragment and "cmd_$" not in fragment, "no heredoc, no per-job command file"


def test_aprun_command_line():
    fragment = AprunLauncher(debug=False, overrides="-d 64 -j 1")("faasx-manager", 2, 3)
    assert fragment.splitlines()[-1] == "aprun -n 6 -N 2 -d 64 -j 1 /bin/bash -c faasx-manager"
    assert "&\nwait" not in fragment, "aprun must run in the foreground so its status is the fragment's"


def test_mpiexec_command_line_for_pals_and_for_open_mpi():
    pals = MpiExecLauncher(debug=False, bind_cmd="--cpu-bind", overrides="--depth=64")("faasx-manager $X", 1, 4)
    assert ("\nmpiexec --cpu-bind none --ppn 1 -n 4 --hostfile \"$faasx_hostfile\" --depth=64 "
            "/bin/bash -c 'faasx_cmd() {\nfaasx-manager $X\n}\n") in pals
    ompi = MpiExecLauncher(debug=False, ppn_flag="--npernode")("m", 2, 2)
    assert '\nmpiexec --bind-to none --npernode 2 -n 4 --hostfile "$faasx_hostfile" /bin/bash -c ' in ompi
    bare = MpiExecLauncher(debug=False, bind_cmd="", ppn_flag="")("m", 1, 1)
    assert '\nmpiexec -n 1 --hostfile "$faasx_hostfile" /bin/bash -c ' in bare


def test_single_node_fragment_defines_the_command_as_a_function():
    fragment = SingleNodeLauncher(debug=False)("faasx-manager --x", 3, 1)
    assert "faasx_cmd() {\nfaasx-manager --x\n}\n" in fragment
    assert "for faasx_i in $(seq 1 3); do" in fragment
    assert "set -e" not in fragment


# -- SingleNodeLauncher, for real --------------------------------------------------------------------------

def test_single_node_starts_n_copies_each_with_its_index(tmp_path, run_fragment):
    fragment = SingleNodeLauncher(debug=False)('echo "copy $1 pid $$ cores $CORES" >> copies.txt; echo "err $1" >&2', 4, 1)
    result = run_fragment(fragment, tmp_path)
    assert result.returncode == 0, result.stderr
    copies = lines(tmp_path / "copies.txt")
    assert sorted(int(c.split()[1]) for c in copies) == [1, 2, 3, 4]
    assert all(c.split()[5] == str(os.cpu_count()) for c in copies)
    # the copies' stderr is the job's; bash's job reports ("[1] Done ...") are not
    assert sorted(result.stderr.splitlines()) == ["err 1", "err 2", "err 3", "err 4"]
    assert result.stdout == ""


def test_single_node_runs_tasks_per_node_times_nodes_copies(tmp_path, run_fragment):
    result = run_fragment(SingleNodeLauncher(debug=False)("echo $1 >> n.txt", 2, 3), tmp_path)
    assert result.returncode == 0
    assert lines(tmp_path / "n.txt") == sorted(str(i) for i in range(1, 7))


@pytest.mark.parametrize("fail_on_any, failing, expected", [
    (False, "1", 0),          # one of three failed: not all failed
    (False, "1 2 3", 1),      # all failed
    (True, "1", 1),           # any failed
    (True, "", 0),            # none failed
])
def test_single_node_exit_status(tmp_path, run_fragment, fail_on_any, failing, expected):
    # the failing copy is the first one waited for and ends last: Parsl's `set -e` + `wait $PID` exited
    # right there with its status, whatever fail_on_any said
    command = f'sleep 0.$((4 - $1)); echo "$1" >> ended.txt; case " {failing} " in *" $1 "*) exit 3;; esac'
    result = run_fragment(SingleNodeLauncher(debug=False, fail_on_any=fail_on_any)(command, 3, 1), tmp_path)
    assert result.returncode == expected, result.stderr
    assert lines(tmp_path / "ended.txt") == ["1", "2", "3"], "every copy ran to its end"


def test_single_node_debug_reports_but_keeps_the_status(tmp_path, run_fragment):
    result = run_fragment(SingleNodeLauncher(debug=True)("true", 2, 1), tmp_path)
    assert result.returncode == 0
    assert "starting 2 copies" in result.stdout and "2 succeeded, 0 failed" in result.stdout


def test_single_node_forwards_sigterm_to_everything_the_copies_started(tmp_path, wait_for):
    # each copy starts a grandchild that would outlive a plain `kill` of the copy's shell
    command = 'sleep 300 & echo $! > "grandchild.$1"; wait'
    fragment = SingleNodeLauncher(debug=False)(command, 2, 1)
    proc = subprocess.Popen(["bash", "-c", fragment], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    grandchildren = []
    try:
        wait_for(lambda: all((tmp_path / f"grandchild.{i}").exists() and (tmp_path / f"grandchild.{i}").read_text()
                             for i in (1, 2)), what="both copies to start their grandchild")
        grandchildren = [int((tmp_path / f"grandchild.{i}").read_text()) for i in (1, 2)]
        proc.send_signal(signal.SIGTERM)  # to the launcher's shell only, as a scheduler's cancel does
        out, err = proc.communicate(timeout=15)
        assert proc.returncode == 128 + signal.SIGTERM, err

        def gone(pid):
            try:
                with open(f"/proc/{pid}/stat") as f:
                    return f.read().split(")")[-1].split()[0] == "Z"  # a zombie waiting for init is gone
            except FileNotFoundError:
                return True
        wait_for(lambda: all(gone(p) for p in grandchildren), what="the grandchildren to be terminated")
    finally:
        # the copies run in process groups of their own: clean up each, whatever failed above
        for kill, pid in [(os.killpg, proc.pid)] + [(os.kill, p) for p in grandchildren]:
            try:
                kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        proc.wait()


# -- srun / aprun / mpiexec through recording stand-ins -----------------------------------------------------

def test_srun_fragment_runs_the_command_unexpanded_until_each_task(tmp_path, shims, run_fragment):
    fragment = SrunLauncher(debug=False, overrides="--gpus-per-node=4")(TRICKY, 1, 3)
    result = run_fragment(fragment, tmp_path, env={"FAASX_WALLTIME_END": "1234", "SLURM_CPUS_ON_NODE": "8"})
    assert result.returncode == 0, result.stderr
    (call,) = shims.calls("srun")
    assert call["argv"][:6] == ["--nodes=3", "--ntasks=3", "--ntasks-per-node=1", "--kill-on-bad-exit=0",
                                "--label", "--gpus-per-node=4"]
    assert call["argv"][6:] == ["/bin/bash", "-c", TRICKY], "the command reaches srun verbatim"
    assert call["env"]["CORES"] == "8"
    # $SLURM_PROCID differs per task: it was expanded in each task, not when the script was written
    assert lines(tmp_path / "out.txt") == [
        f"rank={r} walltime=1234 single $quoted bq sub" for r in range(3)]


def test_srun_fragment_status_is_srun_status_with_and_without_debug(tmp_path, shims, run_fragment):
    for debug in (False, True):
        ok = run_fragment(SrunLauncher(debug=debug)("true", 1, 2), tmp_path)
        assert ok.returncode == 0, (debug, ok.stderr)  # Parsl's ended on a failing `[[ 0 == 1 ]] && echo`
        failed = run_fragment(SrunLauncher(debug=debug)("exit 5", 1, 2), tmp_path)
        assert failed.returncode == 5, debug


def test_aprun_fragment(tmp_path, shims, run_fragment):
    result = run_fragment(AprunLauncher(debug=False, overrides="-d 64 -j 1 -cc depth")(TRICKY, 1, 2), tmp_path,
                          env={"FAASX_WALLTIME_END": "99"})
    assert result.returncode == 0, result.stderr
    (call,) = shims.calls("aprun")
    assert call["argv"] == ["-n", "2", "-N", "1", "-d", "64", "-j", "1", "-cc", "depth", "/bin/bash", "-c", TRICKY]
    assert lines(tmp_path / "out.txt") == [f"rank={r} walltime=99 single $quoted bq sub" for r in range(2)]
    assert run_fragment(AprunLauncher(debug=False)("exit 4", 1, 1), tmp_path).returncode == 4


def test_mpiexec_fragment_deduplicates_the_pbs_nodefile_in_order(tmp_path, shims, run_fragment):
    nodefile = tmp_path / "nodefile"
    nodefile.write_text("x3001\nx3001\nx3002\nx3001\nx3000\nx3002\n")
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    fragment = MpiExecLauncher(debug=False, bind_cmd="--cpu-bind", overrides="--depth=64")(TRICKY, 1, 3)
    result = run_fragment(fragment, tmp_path, env={"PBS_NODEFILE": str(nodefile), "TMPDIR": str(tmpdir),
                                                   "FAASX_WALLTIME_END": "7"})
    assert result.returncode == 0, result.stderr
    (call,) = shims.calls("mpiexec")
    assert call["hostfile"] == ["x3001", "x3002", "x3000"]
    hostfile = call["argv"][call["argv"].index("--hostfile") + 1]
    assert call["argv"][:-1] == ["--cpu-bind", "none", "--ppn", "1", "-n", "3", "--hostfile", hostfile, "--depth=64",
                                 "/bin/bash", "-c"]
    assert f"\n{TRICKY}\n" in call["argv"][-1], "the command travels unexpanded inside the rank's script"
    assert os.path.dirname(hostfile) == str(tmpdir)
    assert list(tmpdir.iterdir()) == [], "the temporary hostfile is removed afterwards"
    assert lines(tmp_path / "out.txt") == [f"rank={r} walltime=7 single $quoted bq sub" for r in range(3)]


def test_mpiexec_fragment_without_a_nodefile_uses_localhost_and_reports_a_failed_copy(tmp_path, shims, run_fragment):
    """A copy that fails is reported on stderr but exits 0 to mpiexec, which would otherwise end the
    copies on every other node (tests/multinode proves that on a real MPICH)."""
    env = {"PBS_NODEFILE": "", "COBALT_NODEFILE": "", "SLURM_JOB_NODELIST": ""}
    result = run_fragment(MpiExecLauncher(debug=True)("exit 6", 1, 1), tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert shims.calls("mpiexec")[0]["hostfile"] == ["localhost"]
    assert "ended with status 6; the copies on the other nodes keep running" in result.stderr
    assert "launch ended with status 0" in result.stdout
