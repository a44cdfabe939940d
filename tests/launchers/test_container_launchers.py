"""Container launchers: the exact command each builds, the fragment run by bash through recording
stand-ins of the engines, and -- for podman, marked ``podman`` -- for real in a local busybox image.

Docker, Apptainer/Singularity and Shifter cannot run on these machines (no daemon, not packaged in
Debian 12): their tests check the command line, and the stand-in only replays what the engine would
do with the environment and the inner command.
"""
from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import threading

import pytest

from faasx.containers import SIGNAL_FORWARDER
from faasx.launchers import (ApptainerLauncher, ContainerLauncher, DockerLauncher, PodmanLauncher, ShifterLauncher,
                             SingleNodeLauncher, SingularityLauncher, SrunLauncher)

FWD = shlex.quote(SIGNAL_FORWARDER)
PASS_PODMAN = ('$(for faasx_v in $(compgen -e); do case $faasx_v in FAASX_*|PARSL_*) '
               'printf -- "--env=%s " "$faasx_v";; esac; done)')
PASS_APPTAINER = ('for faasx_v in $(compgen -e); do case $faasx_v in FAASX_*|PARSL_*) '
                  'export "APPTAINERENV_$faasx_v=${!faasx_v}";; esac; done;')
# What the test command prints: the marker only the image has (or "no-marker"), the passed-through and
# fixed variables, one that must not pass, and where it runs.
PROBE = ('echo "$(cat /etc/faasx-marker 2>/dev/null || echo no-marker) copy=$1 wt=$FAASX_WALLTIME_END '
         'parsl=$PARSL_CORES fixed=$FIXED other=${OTHER:-unset} pwd=$(pwd)" >> "$PWD/probe.txt"')
TAIL = 'faasx-launch "$@"'  # the inner launcher's arguments, handed on into the container
JOB_ENV = {"FAASX_WALLTIME_END": "1700000000", "PARSL_CORES": "8", "OTHER": "host-only"}


def read_lines(path) -> list:
    with open(path) as f:
        return sorted(f.read().splitlines())


# -- exact command lines -----------------------------------------------------------------------------------

def test_podman_command_line():
    launcher = PodmanLauncher("localhost/sci:1", binds=["/data", ("/scratch/me", "/scratch", "ro")],
                              options=["--userns=keep-id"], env={"FIXED": "a b"})
    assert launcher.wrap("faasx-manager --port 5 '$X'") == (
        # the job's directory is mounted unless it is one of the binds' destinations (known only at run time)
        """faasx_cwd=(--volume="$PWD:$PWD"); case "$PWD" in /data|/scratch) faasx_cwd=();; esac; """
        "podman run --rm --network=host --security-opt=label=disable --label=faasx.role=manager "
        f"{PASS_PODMAN} '--env=FIXED=a b' "
        '"${faasx_cwd[@]}" --workdir="$PWD" --volume=/data:/data --volume=/scratch/me:/scratch:ro '
        f"--userns=keep-id localhost/sci:1 /bin/sh -c {FWD} faasx-init "
        "/bin/sh -c 'faasx-manager --port 5 '\"'\"'$X'\"'\"'' faasx-launch \"$@\"")


def test_docker_command_line_is_podmans_with_docker():
    launcher = DockerLauncher("python:3.11", env_passthrough=(), bind_cwd=False, executable="/opt/bin/docker")
    assert launcher.wrap("m") == (
        "/opt/bin/docker run --rm --network=host --security-opt=label=disable --label=faasx.role=manager "
        f"python:3.11 /bin/sh -c {FWD} faasx-init /bin/sh -c m {TAIL}")


def test_apptainer_command_line():
    launcher = ApptainerLauncher("/soft/images/sci.sif", binds=["/lus/eagle/p:/data"], options="--nv --cleanenv",
                                 env={"FIXED": "x"})
    assert launcher.wrap("faasx-manager") == (
        f"""{PASS_APPTAINER} faasx_cwd=(--bind="$PWD"); case "$PWD" in /data) faasx_cwd=();; esac; """
        'APPTAINERENV_FIXED=x apptainer exec '
        '"${faasx_cwd[@]}" --pwd="$PWD" --bind=/lus/eagle/p:/data --nv --cleanenv /soft/images/sci.sif '
        f"/bin/sh -c faasx-manager {TAIL}")


def test_singularity_uses_its_own_binary_and_environment_prefix():
    launcher = SingularityLauncher("docker://python:3.11", env={"FIXED": "y z"})
    assert isinstance(launcher, ApptainerLauncher)
    text = launcher.wrap("m")
    assert "SINGULARITYENV_FIXED='y z' singularity exec" in text
    assert 'export "SINGULARITYENV_$faasx_v=${!faasx_v}"' in text
    assert "APPTAINERENV" not in text


def test_shifter_command_line():
    launcher = ShifterLauncher("myrepo/sci:1.0", binds=["/global/cfs/cdirs/m1:/data"], env={"FIXED": "v"})
    assert launcher.bind_cwd is False, "shifter keeps the working directory and mounts the site's file systems"
    assert launcher.wrap("faasx-manager") == (
        "FIXED=v shifter --image=docker:myrepo/sci:1.0 --volume=/global/cfs/cdirs/m1:/data -- "
        f"/bin/sh -c faasx-manager {TAIL}")
    explicit = ShifterLauncher("docker:ubuntu:22.04", bind_cwd=True).wrap("m")
    assert explicit == f'shifter --image=docker:ubuntu:22.04 --volume="$PWD:$PWD" --workdir="$PWD" -- /bin/sh -c m {TAIL}'


def test_without_binds_the_cwd_mount_is_plain():
    assert PodmanLauncher("i", env_passthrough=()).wrap("m").startswith(
        'podman run --rm --network=host --security-opt=label=disable --label=faasx.role=manager '
        '--volume="$PWD:$PWD" --workdir="$PWD" i ')
    assert ApptainerLauncher("i.sif", env_passthrough=()).wrap("m").startswith(
        'apptainer exec --bind="$PWD" --pwd="$PWD" i.sif ')


def test_wrapped_launcher_receives_the_container_command():
    container = PodmanLauncher("localhost/sci:1", env_passthrough=("FAASX_*",), launcher=SrunLauncher(debug=False))
    fragment = container("faasx-manager --block-id 2", 1, 4)
    # the fragment also traps signals and restores srun's exit status around it: find the srun line
    (srun_line,) = [line for line in fragment.splitlines() if line.startswith("srun ")]
    words = shlex.split(srun_line)
    assert words[:6] == ["srun", "--nodes=4", "--ntasks=4", "--ntasks-per-node=1", "--kill-on-bad-exit=0", "--label"]
    assert words[6:8] == ["/bin/bash", "-c"]
    assert words[8] == container.wrap("faasx-manager --block-id 2")


def test_default_inner_launcher_is_single_node():
    launcher = ApptainerLauncher("img.sif", debug=False)
    assert isinstance(launcher.launcher, SingleNodeLauncher) and launcher.launcher.debug is False
    assert "faasx_cmd() {\n" + launcher.wrap("m") + "\n}" in launcher("m", 2, 1)


@pytest.mark.parametrize("kwargs, message", [
    (dict(image="two words"), "without whitespace"),
    (dict(image=""), "without whitespace"),
    (dict(image="i", binds=["relative/dir"]), "must be absolute"),
    (dict(image="i", binds=[("/a:b", "/c")]), "contains ':'"),
    (dict(image="i", env={"not valid": "1"}), "valid identifier"),
    (dict(image="i", env_passthrough=["FAASX_*; rm -rf /"]), "env_passthrough"),
])
def test_bad_arguments_are_refused_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        PodmanLauncher(**kwargs)


def test_apptainer_refuses_a_comma_in_a_bind():
    with pytest.raises(ValueError, match="','"):
        ApptainerLauncher("i.sif", binds=["/a,b"])


def test_container_launcher_repr_lists_its_arguments():
    text = " ".join(repr(PodmanLauncher("img", binds=["/d"], launcher=SrunLauncher(overrides="-c 4"))).split())
    assert text.startswith("PodmanLauncher( 'img',")
    assert "binds=['/d']" in text and "launcher=SrunLauncher(" in text and "overrides='-c 4'" in text


def test_base_class_needs_an_engine():
    with pytest.raises(NotImplementedError):
        ContainerLauncher("img")("m", 1, 1)


# -- the fragments, run by bash through recording stand-ins --------------------------------------------------

@pytest.mark.parametrize("cls, prog", [(PodmanLauncher, "podman"), (DockerLauncher, "docker")])
def test_podman_and_docker_fragments_pass_exactly_the_matching_variables(tmp_path, shims, run_fragment, cls, prog):
    fragment = cls("localhost/sci:1", binds=["/data"], env={"FIXED": "f v"}, launcher=SingleNodeLauncher(debug=False))(
        PROBE, 2, 1)
    result = run_fragment(fragment, tmp_path, env=JOB_ENV)
    assert result.returncode == 0, result.stderr
    calls = shims.calls(prog)
    assert len(calls) == 2
    argv = calls[0]["argv"]
    image_at = argv.index("localhost/sci:1")
    flags = argv[:image_at]
    assert flags[:5] == ["run", "--rm", "--network=host", "--security-opt=label=disable", "--label=faasx.role=manager"]
    # names only for passed-through variables: the engine copies their values from its environment
    env_flags = sorted(f for f in flags if f.startswith("--env="))
    assert env_flags == ["--env=FAASX_WALLTIME_END", "--env=FIXED=f v", "--env=PARSL_CORES"]
    assert f"--volume={tmp_path}:{tmp_path}" in flags and f"--workdir={tmp_path}" in flags
    assert "--volume=/data:/data" in flags
    assert argv[image_at + 1:image_at + 5] == ["/bin/sh", "-c", SIGNAL_FORWARDER, "faasx-init"]
    assert sorted(c["argv"][image_at + 5:] for c in calls) == [
        ["/bin/sh", "-c", PROBE, "faasx-launch", "1"], ["/bin/sh", "-c", PROBE, "faasx-launch", "2"]]
    assert read_lines(tmp_path / "probe.txt") == [
        f"no-marker copy={i} wt=1700000000 parsl=8 fixed=f v other=unset pwd={tmp_path}" for i in (1, 2)]


@pytest.mark.parametrize("cls, prog, flag", [(PodmanLauncher, "podman", "--volume"),
                                             (ApptainerLauncher, "apptainer", "--bind"),
                                             (ShifterLauncher, "shifter", "--volume")])
def test_the_cwd_is_not_mounted_twice(tmp_path, shims, run_fragment, cls, prog, flag):
    """Binding the job's directory explicitly (e.g. a checkout the job runs in) must not add a second
    mount at the same destination, which the engines refuse."""
    other = tmp_path / "elsewhere"
    other.mkdir()
    launcher = cls("img", binds=[str(tmp_path)], bind_cwd=True, launcher=SingleNodeLauncher(debug=False))
    for cwd in (tmp_path, other):
        assert run_fragment(launcher("true", 1, 1), cwd).returncode == 0
    inside, outside = (c["argv"] for c in shims.calls(prog))
    own = f"{flag}={tmp_path}:{tmp_path}"
    assert [a for a in inside if a.startswith(flag)] == [own]
    cwd_mount = f"{flag}={other}:{other}" if flag == "--volume" else f"{flag}={other}"
    assert [a for a in outside if a.startswith(flag)] == [cwd_mount, own]


@pytest.mark.parametrize("cls, prog, prefix", [(ApptainerLauncher, "apptainer", "APPTAINERENV_"),
                                               (SingularityLauncher, "singularity", "SINGULARITYENV_")])
def test_apptainer_fragment_exports_variables_for_the_container(tmp_path, shims, run_fragment, cls, prog, prefix):
    fragment = cls("/soft/sci.sif", env={"FIXED": "f v"}, options=["--cleanenv"],
                   launcher=SingleNodeLauncher(debug=False))(PROBE, 1, 1)
    result = run_fragment(fragment, tmp_path, env=JOB_ENV)
    assert result.returncode == 0, result.stderr
    (call,) = shims.calls(prog)
    assert call["argv"] == ["exec", f"--bind={tmp_path}", f"--pwd={tmp_path}", "--cleanenv", "/soft/sci.sif",
                            "/bin/sh", "-c", PROBE, "faasx-launch", "1"]
    env = call["env"]
    assert env[f"{prefix}FAASX_WALLTIME_END"] == "1700000000" and env[f"{prefix}PARSL_CORES"] == "8"
    assert env[f"{prefix}FIXED"] == "f v" and f"{prefix}OTHER" not in env
    assert read_lines(tmp_path / "probe.txt")[0].startswith("no-marker copy=1 wt=1700000000 parsl=8 fixed=f v")


def test_shifter_fragment(tmp_path, shims, run_fragment):
    fragment = ShifterLauncher("sci:1", env={"FIXED": "f v"}, launcher=SingleNodeLauncher(debug=False))(PROBE, 1, 1)
    result = run_fragment(fragment, tmp_path, env=JOB_ENV)
    assert result.returncode == 0, result.stderr
    (call,) = shims.calls("shifter")
    assert call["argv"] == ["--image=docker:sci:1", "--", "/bin/sh", "-c", PROBE, "faasx-launch", "1"]
    assert call["env"]["FIXED"] == "f v" and call["env"]["FAASX_WALLTIME_END"] == "1700000000"
    assert call["cwd"] == str(tmp_path)


def test_container_inside_srun_starts_one_container_per_node(tmp_path, shims, run_fragment):
    launcher = PodmanLauncher("localhost/sci:1", launcher=SrunLauncher(debug=False))
    result = run_fragment(launcher('echo "wt=$FAASX_WALLTIME_END" >> "$PWD/out.txt"', 1, 3), tmp_path,
                          env={"FAASX_WALLTIME_END": "5"})
    assert result.returncode == 0, result.stderr
    (srun,) = shims.calls("srun")
    assert srun["argv"][:3] == ["--nodes=3", "--ntasks=3", "--ntasks-per-node=1"]
    podman_calls = shims.calls("podman")
    assert sorted(c["env"]["SLURM_PROCID"] for c in podman_calls) == ["0", "1", "2"], "one engine call per task"
    assert all("--env=FAASX_WALLTIME_END" in c["argv"] for c in podman_calls)
    assert read_lines(tmp_path / "out.txt") == ["wt=5"] * 3


# -- podman, for real ----------------------------------------------------------------------------------------

@pytest.mark.podman
def test_podman_launcher_runs_the_command_inside_the_image(tmp_path, podman_image, image_marker, run_fragment,
                                                           podman_containers):
    """The marker file exists only in the image; two copies run; the job's FAASX_*/PARSL_* variables,
    the fixed ones and the working directory reach the container, other variables do not."""
    image, env = podman_image
    assert not os.path.exists("/etc/faasx-marker"), "the host must not have the image's marker"
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "input.txt").write_text("from-a-bind\n")
    command = PROBE + '; cat /mnt/shared/input.txt >> "$PWD/probe.txt"'
    launcher = PodmanLauncher(image, binds=[(str(shared), "/mnt/shared", "ro")], env={"FIXED": "f v"},
                              launcher=SingleNodeLauncher(debug=False))
    result = run_fragment(launcher(command, 2, 1), tmp_path, env=dict(JOB_ENV, **env), timeout=90)
    assert result.returncode == 0, result.stderr
    assert read_lines(tmp_path / "probe.txt") == sorted(
        [f"{image_marker} copy={i} wt=1700000000 parsl=8 fixed=f v other=unset pwd={tmp_path}" for i in (1, 2)]
        + ["from-a-bind"] * 2)
    assert podman_containers(image, env) == [], "--rm: no container is left"


@pytest.mark.podman
def test_podman_launcher_uses_the_host_network(tmp_path, podman_image, image_marker, run_fragment):
    """A server on the host's 127.0.0.1 is reachable from the container only with host networking."""
    image, env = podman_image
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(60)
    port = server.getsockname()[1]
    received = []

    def accept():
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(30)
                received.append(conn.recv(100))
        except OSError as e:  # pragma: no cover - reported by the assertion below
            received.append(repr(e).encode())

    thread = threading.Thread(target=accept)
    thread.start()
    try:
        launcher = PodmanLauncher(image, launcher=SingleNodeLauncher(debug=False))
        command = f'cat /etc/faasx-marker | nc -w 5 127.0.0.1 {port}'
        result = run_fragment(launcher(command, 1, 1), tmp_path, env=env, timeout=90)
        thread.join(60)
        assert result.returncode == 0, result.stderr
        assert received == [image_marker.encode() + b"\n"]
    finally:
        server.close()
        thread.join(5)


@pytest.mark.podman
def test_cancelling_the_block_stops_and_removes_its_containers(tmp_path, podman_image, wait_for, podman_containers):
    """SIGTERM to the launcher's shell (what a scheduler's cancel sends) reaches the command inside each
    container through podman's signal proxy and the faasx-init forwarder; the containers are removed."""
    image, env = podman_image
    command = 'trap "echo terminated > \\"$PWD/term.$1\\"; exit 0" TERM; touch "$PWD/up.$1"; while :; do sleep 0.1; done'
    launcher = PodmanLauncher(image, launcher=SingleNodeLauncher(debug=False))
    proc = subprocess.Popen(["bash", "-c", launcher(command, 2, 1)], cwd=tmp_path, env=dict(os.environ, **env),
                            start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: (tmp_path / "up.1").exists() and (tmp_path / "up.2").exists(), timeout=60,
                 what="both containers to start")
        assert len(podman_containers(image, env)) == 2
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 128 + signal.SIGTERM, err
        assert (tmp_path / "term.1").read_text() == "terminated\n"
        assert (tmp_path / "term.2").read_text() == "terminated\n"
        wait_for(lambda: podman_containers(image, env) == [], timeout=30, what="the containers to be removed")
    finally:
        if proc.poll() is None:  # a failure above: stop the block the way a scheduler would
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
