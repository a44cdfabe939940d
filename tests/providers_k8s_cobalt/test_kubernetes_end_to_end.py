"""faasx tasks on KubernetesProvider blocks, end to end: the real ``kubernetes`` client creates pods on the
fake API, whose stand-in kubelet runs each pod's command (the faasx manager) as a local process."""
from __future__ import annotations

import time

import pytest
from parsl.jobs.states import JobState

import faasx
from faasx.providers import KubernetesProvider
from kube_api import FakeKubeAPI


@pytest.fixture
def running_kube(tmp_path):
    api = FakeKubeAPI(run_pods=True, grace_seconds=5, log_dir=str(tmp_path))
    with api:
        yield api
    leftovers = api.pod_processes()
    assert not leftovers, f"pods left processes behind: {leftovers}"


def test_faasx_tasks_run_in_kubernetes_pods(running_kube, tmp_path, wait_for):
    kubeconfig = running_kube.write_kubeconfig(str(tmp_path / "kubeconfig"))
    provider = KubernetesProvider(image="registry.example.org/faasx:test", kubeconfig=kubeconfig, init_blocks=1,
                                  min_blocks=0, max_blocks=1, max_cpu=2, env={"FROM_POD_SPEC": "yes"})
    provider.status_polling_interval = 1

    def where():
        import os
        return os.environ["FAASX_BLOCK_JOB_ID"], os.environ["FROM_POD_SPEC"], os.environ["PARSL_CORES"]

    with faasx.Executor(provider=provider, max_workers_per_node=2, run_dir=str(tmp_path / "run")) as ex:
        results = {f.result(timeout=60) for f in [ex.submit(where) for _ in range(10)]}
        (pod_name,) = provider.resources
        assert results == {(pod_name, "yes", "2")}
        assert running_kube.pod(pod_name)["status"]["phase"] == "Running"
        assert provider.status([pod_name])[0].state == JobState.RUNNING
    # shutdown deleted the pod; its manager got SIGTERM and every process of the pod is gone
    assert running_kube.pod_names() == []
    wait_for(lambda: not running_kube.pod_processes(), timeout=10, what="the pod's processes to exit")


def test_a_pod_whose_command_fails_is_failed_with_its_exit_code(running_kube, tmp_path, wait_for):
    kubeconfig = running_kube.write_kubeconfig(str(tmp_path / "kubeconfig"))
    provider = KubernetesProvider(image="x", kubeconfig=kubeconfig, worker_init="echo 'no python here' >&2; exit 3")
    pod_name = provider.submit("faasx-manager --never-reached", 1, "blk")
    status = wait_for(lambda: (s := provider.status([pod_name])[0]).terminal and s, timeout=10,
                      what="the pod to fail")
    assert status.state == JobState.FAILED and status.exit_code == 3
    assert "no python here" in (tmp_path / f"{pod_name}.log").read_text()
    assert running_kube.pod(pod_name)["spec"]["restartPolicy"] == "Never"  # so it stays failed


def test_deleting_a_running_pod_stops_its_command_with_sigterm(running_kube, tmp_path, wait_for):
    kubeconfig = running_kube.write_kubeconfig(str(tmp_path / "kubeconfig"))
    provider = KubernetesProvider(image="x", kubeconfig=kubeconfig)
    flag = tmp_path / "terminated"
    pod_name = provider.submit(f"trap 'touch {flag}; exit 0' TERM; while true; do sleep 0.1; done", 1, "blk")
    wait_for(lambda: provider.status([pod_name])[0].state == JobState.RUNNING, timeout=10, what="running")
    started = time.monotonic()
    assert provider.cancel([pod_name]) == [True]
    wait_for(flag.exists, timeout=10, what="the command to get SIGTERM")
    assert time.monotonic() - started < running_kube.grace_seconds  # not the SIGKILL path
    assert provider.status([pod_name])[0].state == JobState.CANCELLED
