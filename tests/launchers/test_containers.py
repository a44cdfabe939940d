"""faasx.containers: container specs, routing keys and the per-function worker command.

podman commands are run for real (marked ``podman``); Docker, Apptainer/Singularity and Shifter cannot
run on these machines, so their commands are checked as built.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading

import pytest

from faasx.containers import (CONTAINER_TYPES, SIGNAL_FORWARDER, InvalidContainerSpec, container_command,
                              container_key, normalize_binds, validate_container_spec)
from faasx.errors import FaaSXError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


# -- validate_container_spec -------------------------------------------------------------------------------

def test_spec_is_normalized():
    assert validate_container_spec({"type": " Podman ", "image": " localhost/sci:1 ", "options": "--gpus all -e 'A=b c'"}) == {
        "type": "podman", "image": "localhost/sci:1", "options": ["--gpus", "all", "-e", "A=b c"]}
    assert validate_container_spec({"type": "apptainer", "image": "/x.sif"}) == {
        "type": "apptainer", "image": "/x.sif", "options": []}
    assert validate_container_spec({"type": "shifter", "image": "i", "options": ("--a",)})["options"] == ["--a"]


def test_validating_a_normalized_spec_changes_nothing_and_copies():
    spec = {"type": "docker", "image": "python:3.11", "options": ["--init"]}
    norm = validate_container_spec(spec)
    assert validate_container_spec(norm) == norm == spec
    norm["options"].append("x")
    assert spec["options"] == ["--init"], "the caller's spec is not modified"


@pytest.mark.parametrize("spec, message", [
    ("podman:img", "must be a dict"),
    ({"image": "img"}, "needs a 'type'"),
    ({"type": "", "image": "img"}, "needs a 'type'"),
    ({"type": "lxc", "image": "img"}, "unknown container type 'lxc'"),
    ({"type": "podman"}, "needs an 'image'"),
    ({"type": "podman", "image": "  "}, "needs an 'image'"),
    ({"type": "podman", "image": 3}, "needs an 'image'"),
    ({"type": "podman", "image": "a b"}, "whitespace"),
    ({"type": "podman", "image": "--privileged"}, "must not start with '-'"),
    ({"type": "podman", "image": "i", "options": 5}, "list of strings"),
    ({"type": "podman", "image": "i", "options": ["--a", 1]}, "must be strings"),
    ({"type": "podman", "image": "i", "options": "--a 'unclosed"}, "cannot be split"),
    ({"type": "podman", "image": "i", "imgae": "typo"}, r"unknown key\(s\) \['imgae'\]"),
])
def test_bad_specs_are_refused_with_a_clear_message(spec, message):
    with pytest.raises(InvalidContainerSpec, match=message) as info:
        validate_container_spec(spec)
    assert isinstance(info.value, FaaSXError) and isinstance(info.value, ValueError)


def test_a_spec_may_carry_its_own_key_but_not_a_stale_one():
    spec = {"type": "podman", "image": "img:1"}
    with_key = dict(validate_container_spec(spec), key=container_key(spec))
    assert validate_container_spec(with_key) == {"type": "podman", "image": "img:1", "options": []}
    assert container_command(with_key, ["w"], environ={})[-1] == "w"
    with pytest.raises(InvalidContainerSpec, match="does not match"):
        validate_container_spec(dict(with_key, image="img:2"))


def test_unknown_type_message_lists_the_known_types():
    with pytest.raises(InvalidContainerSpec) as info:
        validate_container_spec({"type": "kata", "image": "i"})
    for known in CONTAINER_TYPES:
        assert known in str(info.value)


# -- container_key ----------------------------------------------------------------------------------------

def test_equivalent_specs_share_a_key_and_different_ones_do_not():
    key = container_key({"type": "podman", "image": "img:1", "options": ["--a", "b"]})
    assert key == container_key({"type": "PODMAN", "image": "img:1", "options": "--a b"})
    assert key.startswith("podman-") and len(key) == len("podman-") + 16
    others = {container_key({"type": "docker", "image": "img:1", "options": ["--a", "b"]}),
              container_key({"type": "podman", "image": "img:2", "options": ["--a", "b"]}),
              container_key({"type": "podman", "image": "img:1", "options": ["--b", "a"]}),
              container_key({"type": "podman", "image": "img:1"})}
    assert len(others) == 4 and key not in others


def test_key_is_the_same_in_another_process_with_another_hash_seed():
    spec = {"type": "apptainer", "image": "/soft/sci.sif", "options": ["--nv"]}
    code = ("import json, sys; from faasx.containers import container_key; "
            "print(container_key(json.loads(sys.argv[1])))")
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=ROOT, PYTHONHASHSEED="12345"), check=True)
    assert out.stdout.strip() == container_key(spec)


def test_importing_faasx_containers_does_not_import_parsl():
    code = ("import sys, faasx.containers; "
            "print(sorted(m for m in sys.modules if m == 'parsl' or m.startswith(('parsl.', 'zmq', 'dill'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, PYTHONPATH=ROOT), check=True)
    assert out.stdout.strip() == "[]"


# -- binds ------------------------------------------------------------------------------------------------

def test_binds_are_normalized():
    assert normalize_binds(["/run/faasx", "/a:/b", "/c:/d:ro", ("/e", "/f"), ("/g", "/h", "ro"), ("/i", "/j", "")]) == [
        "/run/faasx:/run/faasx", "/a:/b", "/c:/d:ro", "/e:/f", "/g:/h:ro", "/i:/j"]


@pytest.mark.parametrize("bind, engine, message", [
    ("relative", "podman", "must be absolute"),
    ("/a:relative", "podman", "must be absolute"),
    (("/a:b", "/c"), "podman", "contains ':'"),
    ("/a:/b:ro:extra", "podman", "is not 'src'"),
    ("", "podman", "is not 'src'"),
    (3, "podman", "must be a path"),
    ("/a,b", "apptainer", "','"),
    ("/a,b", "singularity", "','"),
])
def test_bad_binds_are_refused(bind, engine, message):
    with pytest.raises(InvalidContainerSpec, match=message):
        normalize_binds([bind], engine=engine)


def test_a_comma_is_fine_for_podman():
    assert normalize_binds(["/a,b"], engine="podman") == ["/a,b:/a,b"]


# -- container_command, as built ---------------------------------------------------------------------------

ENVIRON = {"FAASX_WALLTIME_END": "1700000000", "FAASX_RUN_DIR": "/runs/7", "PATH": "/host/bin", "HOME": "/root",
           "XFAASX_NOT": "1"}
WORKER = ["faasx-worker", "--ipc", "ipc:///run/faasx/m1/w3.sock", "--id", "w 3"]


def test_podman_command():
    spec = {"type": "podman", "image": "localhost/sci:1", "options": ["--device", "nvidia.com/gpu=all"]}
    argv = container_command(spec, WORKER, binds=["/run/faasx/m1"], env={"CUDA_VISIBLE_DEVICES": "2"},
                             name="faasx-w3", workdir="/work", environ=ENVIRON)
    assert argv == [
        "podman", "run", "--rm", "-i", "--network=host", "--security-opt=label=disable",
        f"--label=faasx.container_key={container_key(spec)}", "--name=faasx-w3",
        "--volume=/run/faasx/m1:/run/faasx/m1",
        "--env=CUDA_VISIBLE_DEVICES=2", "--env=FAASX_RUN_DIR=/runs/7", "--env=FAASX_WALLTIME_END=1700000000",
        "--workdir=/work", "--device", "nvidia.com/gpu=all",
        "localhost/sci:1", "/bin/sh", "-c", SIGNAL_FORWARDER, "faasx-init", *WORKER]


def test_docker_command_uses_docker_and_the_same_flags():
    argv = container_command({"type": "docker", "image": "python:3.11"}, ["w"], environ={}, executable="/usr/bin/docker")
    assert argv[:2] == ["/usr/bin/docker", "run"]
    assert argv[2:6] == ["--rm", "-i", "--network=host", "--security-opt=label=disable"]
    assert argv[-6:] == ["python:3.11", "/bin/sh", "-c", SIGNAL_FORWARDER, "faasx-init", "w"]


def test_apptainer_command_sets_the_environment_through_apptainerenv():
    argv = container_command({"type": "apptainer", "image": "/soft/sci.sif", "options": "--nv --cleanenv"}, WORKER,
                             binds=["/run/faasx/m1", "/lus/p:/data:ro"], env={"ZE_AFFINITY_MASK": "0.1"},
                             workdir="/work", environ=ENVIRON)
    assert argv == [
        "env", "APPTAINERENV_FAASX_RUN_DIR=/runs/7", "APPTAINERENV_FAASX_WALLTIME_END=1700000000",
        "APPTAINERENV_ZE_AFFINITY_MASK=0.1",
        "apptainer", "exec", "--bind=/run/faasx/m1:/run/faasx/m1", "--bind=/lus/p:/data:ro", "--pwd=/work",
        "--nv", "--cleanenv", "/soft/sci.sif", *WORKER]


def test_singularity_command_uses_singularityenv():
    argv = container_command({"type": "singularity", "image": "docker://python:3.11"}, ["w"],
                             environ={"FAASX_A": "1"})
    assert argv == ["env", "SINGULARITYENV_FAASX_A=1", "singularity", "exec", "docker://python:3.11", "w"]


def test_apptainer_command_without_variables_has_no_env_prefix():
    assert container_command({"type": "apptainer", "image": "i.sif"}, ["w"], environ={}) == [
        "apptainer", "exec", "i.sif", "w"]


def test_shifter_command():
    argv = container_command({"type": "shifter", "image": "myrepo/sci:1", "options": ["--entrypoint"]}, WORKER,
                             binds=["/run/faasx/m1"], env={"CUDA_VISIBLE_DEVICES": "0"}, workdir="/work",
                             environ=ENVIRON)
    assert argv == [
        "env", "CUDA_VISIBLE_DEVICES=0", "FAASX_RUN_DIR=/runs/7", "FAASX_WALLTIME_END=1700000000",
        "shifter", "--image=docker:myrepo/sci:1", "--volume=/run/faasx/m1:/run/faasx/m1", "--workdir=/work",
        "--entrypoint", "--", *WORKER]
    typed = container_command({"type": "shifter", "image": "id:8f2a"}, ["w"], environ={})
    assert typed == ["shifter", "--image=id:8f2a", "--", "w"]


def test_passthrough_reads_os_environ_by_default_and_env_wins(monkeypatch):
    monkeypatch.setenv("FAASX_WALLTIME_END", "42")
    monkeypatch.setenv("FAASX_OVERRIDDEN", "old")
    argv = container_command({"type": "podman", "image": "i"}, ["w"], env={"FAASX_OVERRIDDEN": "new", "N": 3})
    flags = [a for a in argv if a.startswith("--env=")]
    assert "--env=FAASX_WALLTIME_END=42" in flags
    assert "--env=FAASX_OVERRIDDEN=new" in flags and "--env=FAASX_OVERRIDDEN=old" not in flags
    assert "--env=N=3" in flags
    assert not any(f.startswith(("--env=PATH=", "--env=HOME=")) for f in flags), "host PATH/HOME not forced"


def test_passthrough_prefixes_can_be_changed():
    argv = container_command({"type": "podman", "image": "i"}, ["w"], environ={"FAASX_A": "1", "PARSL_B": "2"},
                             passthrough=("PARSL_",))
    assert [a for a in argv if a.startswith("--env=")] == ["--env=PARSL_B=2"]


@pytest.mark.parametrize("kwargs, message", [
    (dict(inner_argv=[]), "needs a command"),
    (dict(inner_argv=["w"], env={"A-B": "1"}), "valid identifier"),
    (dict(inner_argv=["w"], workdir="relative"), "must be an absolute path"),
    (dict(inner_argv=["w"], binds=["rel"]), "must be absolute"),
])
def test_bad_command_arguments_are_refused(kwargs, message):
    with pytest.raises(InvalidContainerSpec, match=message):
        container_command({"type": "podman", "image": "i"}, **kwargs)


def test_a_bad_spec_is_refused_by_container_command():
    with pytest.raises(InvalidContainerSpec, match="unknown container type"):
        container_command({"type": "vm", "image": "i"}, ["w"])


# -- podman, for real ----------------------------------------------------------------------------------------

@pytest.mark.podman
def test_worker_in_podman_reaches_the_managers_ipc_socket(tmp_path, podman_image, image_marker, python_binds):
    """A host Python (bound read-only into the busybox image) runs as the 'worker' inside the container: it
    connects to a Unix socket in the bind-mounted IPC directory, as a worker reaches its manager's ipc://
    socket, and sends what only the container has (its marker file), the FAASX_* and explicit variables
    it sees, and whether faasx imports from the bound checkout."""
    image, engine_env = podman_image
    ipc_dir = tmp_path / "ipc"
    ipc_dir.mkdir()
    path = str(ipc_dir / "manager.sock")
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(1)
    server.settimeout(60)
    received = []

    def accept():
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(30)
                data = b""
                while chunk := conn.recv(4096):
                    data += chunk
                received.append(data)
        except OSError as e:  # pragma: no cover - shows in the assertion below
            received.append(repr(e).encode())

    thread = threading.Thread(target=accept)
    thread.start()
    worker = ("import json, os, socket, faasx.containers; s = socket.socket(socket.AF_UNIX); s.connect(%r); "
              "s.sendall(json.dumps({'marker': open('/etc/faasx-marker').read().strip(), "
              "'wt': os.environ.get('FAASX_WALLTIME_END'), 'gpu': os.environ.get('CUDA_VISIBLE_DEVICES'), "
              "'path': os.environ.get('PATH'), 'cwd': os.getcwd(), "
              "'faasx': faasx.containers.__file__}).encode()); s.close()" % path)
    argv = container_command({"type": "podman", "image": image}, [sys.executable, "-c", worker],
                             binds=[str(ipc_dir), f"{ROOT}:{ROOT}:ro"] + python_binds,
                             env={"CUDA_VISIBLE_DEVICES": "1", "PYTHONPATH": ROOT}, workdir=str(ipc_dir),
                             environ={"FAASX_WALLTIME_END": "1700000000"})
    try:
        result = subprocess.run(argv, env=dict(os.environ, **engine_env), capture_output=True, text=True, timeout=120)
        thread.join(60)
        assert result.returncode == 0, result.stderr
        assert len(received) == 1, received
        seen = json.loads(received[0])
        assert seen["marker"] == image_marker
        assert seen["wt"] == "1700000000" and seen["gpu"] == "1"
        assert seen["path"] != os.environ["PATH"], "the image's PATH, not the host's"
        assert seen["cwd"] == str(ipc_dir)
        assert seen["faasx"] == os.path.join(ROOT, "faasx", "containers", "__init__.py")
    finally:
        server.close()
        thread.join(5)


@pytest.mark.podman
def test_sigterm_to_podman_run_stops_the_worker_and_removes_the_container(tmp_path, podman_image, wait_for,
                                                                           podman_containers):
    """What a manager does to a worker it no longer wants: SIGTERM to ``podman run``.  The worker gets it
    (it is not PID 1: faasx-init is) and the container is gone afterwards; stdin reaches the worker."""
    image, engine_env = podman_image
    script = ('trap "echo got-term; exit 7" TERM; read line; echo "read:$line"; '
              'while :; do sleep 0.1; done')
    argv = container_command({"type": "podman", "image": image}, ["/bin/sh", "-c", script], name=f"faasx-t-{os.getpid()}",
                             environ={})
    proc = subprocess.Popen(argv, env=dict(os.environ, **engine_env), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        proc.stdin.write("hello\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "read:hello\n"
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
        assert out == "got-term\n", err
        assert proc.returncode == 7
        wait_for(lambda: podman_containers(image, engine_env) == [], timeout=30, what="the container to be removed")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
