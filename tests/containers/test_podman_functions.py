"""Per-function containers for real: registered functions run on faasx workers inside podman containers that
the manager starts on demand and keeps warm; plain functions stay on the host; a missing image fails fast
with podman's own error; no container outlives its executor or its manager.

The image (``conftest.test_image``) is busybox with a marker file; the host's Python and this checkout are
bound in read-only through the spec's ``options``, as a real image would have them installed."""
from __future__ import annotations

import os
import signal
import statistics
import sys
import time

import psutil
import pytest

import faasx
from faasx.containers import ContainerStartError, container_key
from tests.support import wait_until

HEARTBEATS = dict(heartbeat_period=0.5, heartbeat_threshold=10.0)


def where_am_i():
    """What the task sees: the image's marker (None on the host), its worker, a per-process token, its pid."""
    import builtins
    import os
    import uuid
    token = builtins.__dict__.setdefault("_faasx_test_token", uuid.uuid4().hex)
    try:
        with open("/etc/faasx-test-marker") as f:
            marker = f.read().strip()
    except FileNotFoundError:
        marker = None
    return marker, os.environ.get("FAASX_WORKER_ID"), token, os.getpid()


def warm_keys(ex):
    return [k for m in ex.executor.connected_managers() for k in m.get("warm", [])]


def report(capsys, line):
    with capsys.disabled():
        sys.stdout.write(f"\n    {line}\n")


@pytest.mark.podman
def test_function_runs_in_its_container_stays_warm_and_plain_functions_stay_on_the_host(
        tmp_path, image_spec, test_image, marker, podman_counter, containers_of, capsys):
    spec = image_spec()
    key = container_key(spec)
    with faasx.Executor(max_workers_per_node=2, run_dir=str(tmp_path / "run"), **HEARTBEATS) as ex:
        assert ex.submit(where_am_i).result(timeout=60)[0] is None, "warm up the engine itself first"
        fid = ex.register_function(where_am_i, container=spec)
        assert ex.registered_functions()[0]["container"]["image"] == test_image

        t0 = time.perf_counter()
        first = ex.submit(fid).result(timeout=120)
        cold = time.perf_counter() - t0
        assert first[0] == marker, "the function ran inside the image"
        assert podman_counter.runs() == 1

        warm = []
        for _ in range(20):
            t0 = time.perf_counter()
            again = ex.submit(fid).result(timeout=60)
            warm.append(time.perf_counter() - t0)
            assert again[:3] == first[:3], "the same warm worker (worker id, process token)"
        assert podman_counter.runs() == 1, "warm calls start no container"
        assert len(containers_of(test_image)) == 1
        wait_until(lambda: key in warm_keys(ex), 10, "the manager to report the key warm")

        marker_on_host, _, plain_token, plain_pid = ex.submit(where_am_i).result(timeout=60)
        assert marker_on_host is None and plain_token != first[2]
        assert "faasx-worker" in " ".join(psutil.Process(plain_pid).cmdline()), "a plain worker on the host"

        results = [f.result(timeout=120) for f in [ex.submit(fid) for _ in range(10)]]
        assert all(r[0] == marker for r in results)
        report(capsys, f"container call latency: cold {cold * 1000:.0f} ms (podman run + worker start), "
                       f"warm median {statistics.median(warm) * 1000:.2f} ms, "
                       f"max {max(warm) * 1000:.2f} ms over {len(warm)} calls")
    wait_until(lambda: containers_of(test_image) == [], 30, "the container to be gone after shutdown")


@pytest.mark.podman
def test_a_missing_image_fails_fast_with_the_engines_error_and_no_retry_storm(
        tmp_path, image_spec, podman_counter, marker):
    missing = "localhost/faasx-test-no-such-image:missing"
    with faasx.Executor(max_workers_per_node=2, run_dir=str(tmp_path / "run"), **HEARTBEATS) as ex:
        bad = ex.register_function(where_am_i, container=image_spec(image=missing))
        t0 = time.perf_counter()
        futures = [ex.submit(bad) for _ in range(3)]
        errors = []
        for fut in futures:
            with pytest.raises(ContainerStartError) as info:
                fut.result(timeout=60)
            errors.append(str(info.value))
        elapsed = time.perf_counter() - t0
        message = errors[0]
        assert missing in message and "podman" in message
        assert "Error:" in message, "podman's own stderr is in the message"
        assert "Fix:" in message and "podman pull" in message
        assert elapsed < 30, f"took {elapsed:.1f}s"
        assert podman_counter.runs() == 1, "one failed start, not one per task or a restart loop"

        t0 = time.perf_counter()
        with pytest.raises(ContainerStartError):
            ex.submit(bad).result(timeout=30)
        assert time.perf_counter() - t0 < 5 and podman_counter.runs() == 1, "held off: fails at once"

        # the executor is fine: plain work and a good container still run
        assert ex.submit(where_am_i).result(timeout=60)[0] is None
        good = ex.register_function(where_am_i, container=image_spec())
        assert ex.submit(good).result(timeout=120)[0] == marker


@pytest.mark.podman
def test_container_type_cap_and_replacing_idle_workers(tmp_path, image_spec, test_image, podman_counter, marker,
                                                       containers_of, monkeypatch):
    spec_a, spec_b = image_spec(), image_spec(extra=["--env=FAASX_TEST_VARIANT=b"])
    with faasx.Executor(max_workers_per_node=2, max_container_types=1, run_dir=str(tmp_path / "run"),
                        **HEARTBEATS) as ex:
        fa = ex.register_function(where_am_i, container=spec_a)
        fb = ex.register_function(where_am_i, container=spec_b)
        a1 = ex.submit(fa).result(timeout=120)
        b1 = ex.submit(fb).result(timeout=120)
        assert a1[0] == b1[0] == marker and a1[2] != b1[2]
        assert podman_counter.runs() == 2
        wait_until(lambda: warm_keys(ex) == [container_key(spec_b)], 20,
                 "A's worker to be retired: one container type per node")
        wait_until(lambda: len(containers_of(test_image)) == 1, 30, "A's container to be removed")
        a2 = ex.submit(fa).result(timeout=120)
        assert a2[2] != a1[2] and podman_counter.runs() == 3, "A starts cold again"
        assert ex.submit(where_am_i).result(timeout=60)[0] is None, "plain tasks still run on the host"
    wait_until(lambda: containers_of(test_image) == [], 30, "no container left after shutdown")


@pytest.mark.podman
def test_one_worker_node_alternates_between_plain_and_container_work(tmp_path, image_spec, test_image, marker,
                                                                   podman_counter, containers_of):
    with faasx.Executor(max_workers_per_node=1, run_dir=str(tmp_path / "run"), **HEARTBEATS) as ex:
        fid = ex.register_function(where_am_i, container=image_spec())
        for _ in range(2):
            assert ex.submit(fid).result(timeout=120)[0] == marker
            assert ex.submit(where_am_i).result(timeout=60)[0] is None
        mixed = [ex.submit(fid) if i % 2 else ex.submit(where_am_i) for i in range(6)]
        assert [f.result(timeout=120)[0] for f in mixed] == [None, marker] * 3
    wait_until(lambda: containers_of(test_image) == [], 30, "no container left after shutdown")


@pytest.mark.podman
def test_the_unix_socket_channel_used_for_other_engines_works(tmp_path, image_spec, marker, monkeypatch,
                                                               podman_counter):
    """docker/apptainer/singularity/shifter workers connect to a Unix socket in a bind-mounted directory; the
    same path, forced for podman, runs a function."""
    monkeypatch.setenv("FAASX_CONTAINER_CHANNEL", "socket")
    with faasx.Executor(max_workers_per_node=1, run_dir=str(tmp_path / "run"), **HEARTBEATS) as ex:
        fid = ex.register_function(where_am_i, container=image_spec())
        first = ex.submit(fid).result(timeout=120)
        assert first[0] == marker
        assert ex.submit(fid).result(timeout=60)[:3] == first[:3]
        assert podman_counter.runs() == 1


@pytest.mark.podman
def test_container_workers_die_with_a_killed_manager(tmp_path, image_spec, test_image, marker, podman_counter,
                                                     containers_of):
    with faasx.Executor(max_workers_per_node=1, run_dir=str(tmp_path / "run"), **HEARTBEATS) as ex:
        fid = ex.register_function(where_am_i, container=image_spec())
        assert ex.submit(fid).result(timeout=120)[0] == marker
        assert len(containers_of(test_image)) == 1
        manager_pid = ex.executor.connected_managers()[0]["pid"]
        os.kill(manager_pid, signal.SIGKILL)
        wait_until(lambda: containers_of(test_image) == [], 30,
                 "the container to exit once its manager is gone (the worker's socket reaches end of file)")
        wait_until(lambda: not [p for p in psutil.process_iter(["cmdline"])
                              if "faasx-container-worker" in " ".join(p.info["cmdline"] or [])
                              and str(tmp_path) in " ".join(p.info["cmdline"] or [])], 10,
                 "the podman run process to exit")


def crash_first_time(flag_path):
    """Kill the worker the first time (a crash after READY), succeed when retried."""
    import os
    if not os.path.exists(flag_path):
        open(flag_path, "w").close()
        os._exit(3)
    with open("/etc/faasx-test-marker") as f:
        return f.read().strip()


@pytest.mark.podman
def test_a_container_worker_that_dies_mid_task_is_replaced_and_the_task_retried(
        tmp_path, image_spec, test_image, marker, podman_counter, containers_of):
    shared = tmp_path / "shared"
    shared.mkdir()
    spec = image_spec(extra=[f"--volume={shared}:{shared}"])
    with faasx.Executor(max_workers_per_node=1, run_dir=str(tmp_path / "run"), max_retries_on_system_failure=1,
                        **HEARTBEATS) as ex:
        fid = ex.register_function(crash_first_time, container=spec)
        assert ex.submit(fid, str(shared / "crashed")).result(timeout=120) == marker
        assert (shared / "crashed").exists()
        assert podman_counter.runs() == 2, "the dead worker's container was replaced"
        wait_until(lambda: len(containers_of(test_image)) == 1, 30, "the dead worker's container to be removed")
    wait_until(lambda: containers_of(test_image) == [], 30, "no container left after shutdown")


@pytest.mark.podman
def test_an_image_without_python_fails_with_a_clear_error(tmp_path, test_image, podman_counter):
    with faasx.Executor(max_workers_per_node=1, run_dir=str(tmp_path / "run"), **HEARTBEATS) as ex:
        fid = ex.register_function(where_am_i, container={"type": "podman", "image": test_image})
        with pytest.raises(ContainerStartError) as info:
            ex.submit(fid).result(timeout=60)
        message = str(info.value)
        assert "python3" in message and "not found" in message, message
        assert "faasx" in message and podman_counter.runs() == 1
        assert ex.submit(where_am_i).result(timeout=60)[0] is None


@pytest.mark.podman
def test_a_container_can_be_asked_for_per_call(tmp_path, image_spec, marker, podman_counter):
    """No registration: the resource specification names the container for this one call."""
    with faasx.Executor(max_workers_per_node=2, run_dir=str(tmp_path / "run"), **HEARTBEATS) as ex:
        inside, = ex.submit_batch([(where_am_i, (), {}, {"container": image_spec()})])
        assert inside.result(timeout=120)[0] == marker
        assert ex.submit(where_am_i).result(timeout=60)[0] is None
        with pytest.raises(faasx.errors.InvalidResourceSpecification):
            ex.submit_batch([(where_am_i, (), {}, {"container": "not-a-dict"})])
