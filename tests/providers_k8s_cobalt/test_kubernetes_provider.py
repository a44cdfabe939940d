"""KubernetesProvider with the REAL ``kubernetes`` client against the fake Pods API (tests/fakes/kube_api.py).

No API server can run on these machines (shared/recipes/kubernetes.md); one test runs against a real
cluster when KUBECONFIG names one.
"""
from __future__ import annotations

import inspect
import logging
import os
import signal
import subprocess
import sys
import time

import pytest
from parsl.jobs.states import JobState

from faasx.errors import ScaleOutFailed
from faasx.providers import KubernetesProvider
from faasx.providers.kubernetes import JOB_LABEL, PROVIDER_LABEL


def make_provider(kubeconfig, **kwargs) -> KubernetesProvider:
    kwargs.setdefault("image", "ghcr.io/example/faasx:1.0")
    provider = KubernetesProvider(kubeconfig=kubeconfig, **kwargs)
    provider.status_polling_interval = 1
    return provider


def pod_requests(api, verb):
    method = {"create": "POST", "list": "GET", "delete": "DELETE"}[verb]
    return [r for r in api.requests if r["method"] == method and
            (verb != "list" or r["path"].endswith("/pods"))]


# ---------------------------------------------------------------------------------------------- config

def test_constructor_takes_every_parsl_kubernetes_argument():
    from parsl.providers import KubernetesProvider as ParslKubernetesProvider
    parsl_args = set(inspect.signature(ParslKubernetesProvider.__init__).parameters) - {"self"}
    ours = inspect.signature(KubernetesProvider.__init__).parameters
    assert parsl_args <= set(ours), parsl_args - set(ours)
    for name in parsl_args:  # same defaults, so a Parsl config behaves the same
        default = inspect.signature(ParslKubernetesProvider.__init__).parameters[name].default
        assert ours[name].default == default or (list(ours[name].default or []) == list(default or [])), name


def test_arguments_are_attributes_of_the_same_name(kubeconfig):
    provider = make_provider(kubeconfig, namespace="science", max_cpu=4, max_mem="8Gi", worker_init="echo hi",
                             extra_labels={"team": "a"}, image_pull_secrets=["regcred"])
    provider._validate_repr = True
    text = repr(provider)
    assert text.startswith("KubernetesProvider(\n    'ghcr.io/example/faasx:1.0',")  # image: positional
    for name in set(inspect.signature(KubernetesProvider.__init__).parameters) - {"self", "image"}:
        assert f"{name}=" in text, name
    assert (provider.namespace, provider.max_cpu, provider.max_mem) == ("science", 4, "8Gi")
    assert provider.cores_per_node == 4 and provider.mem_per_node == 8.0
    assert provider.label == "kubernetes"


def test_missing_kubernetes_package_names_the_extra(monkeypatch):
    for name in list(sys.modules):
        if name == "kubernetes" or name.startswith("kubernetes."):
            monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # import kubernetes -> ImportError
    with pytest.raises(ImportError, match=r"pip install 'faasx\[kubernetes\]'"):
        KubernetesProvider(image="x")


# ---------------------------------------------------------------------------------------------- submit

def test_pod_spec_sent_to_the_api(kube_api, kubeconfig):
    provider = make_provider(
        kubeconfig, image="registry.example.org/faasx:2", namespace="default",
        max_cpu=3, max_mem="2Gi", init_cpu=0.5, init_mem="1Gi",
        extra_requests={"nvidia.com/gpu": "1"}, extra_limits={"nvidia.com/gpu": "1"},
        worker_init="source /opt/venv/bin/activate", pod_name="Science_Run.1",
        user_id="1000", group_id="2000", run_as_non_root=True,
        secret="regcred", image_pull_secrets=["other-cred"],
        persistent_volumes=[("shared-data", "/data")],
        volumes=[{"name": "scratch", "emptyDir": {}}], volume_mounts=[{"name": "scratch", "mountPath": "/scratch"}],
        service_account_name="faasx-runner", annotations={"owner": "lab"}, extra_labels={"team": "hpc"},
        env={"OMP_NUM_THREADS": "1"}, image_pull_policy="IfNotPresent")
    job_id = provider.submit("faasx-manager --interchange 10.0.0.1:9000", 1, "parsl.faasx.block-0")

    assert job_id.startswith("science-run-1-") and len(job_id) <= 63
    assert kube_api.pod_names() == [job_id]
    (request,) = pod_requests(kube_api, "create")
    assert request["path"] == "/api/v1/namespaces/default/pods"
    assert request["headers"]["authorization"] == f"Bearer {kube_api.token}"  # the kubeconfig's credentials
    pod = request["body"]
    check_metadata(pod["metadata"], job_id)
    check_pod_spec(pod["spec"])
    (container,) = pod["spec"]["containers"]
    check_container(container)
    check_container_script(container["command"], job_id)
    stored = kube_api.pod(job_id)
    assert stored["status"]["phase"] == "Pending"


def check_metadata(meta: dict, job_id: str) -> None:
    assert meta["name"] == job_id
    assert meta["labels"][JOB_LABEL] == job_id and meta["labels"]["team"] == "hpc"
    assert PROVIDER_LABEL in meta["labels"]
    assert meta["annotations"] == {"owner": "lab"}


def check_pod_spec(spec: dict) -> None:
    assert spec["restartPolicy"] == "Never"  # a block that ends must not be restarted forever
    assert spec["serviceAccountName"] == "faasx-runner"
    assert spec["imagePullSecrets"] == [{"name": "regcred"}, {"name": "other-cred"}]
    assert {"name": "shared-data", "persistentVolumeClaim": {"claimName": "shared-data"}} in spec["volumes"]
    assert {"name": "scratch", "emptyDir": {}} in spec["volumes"]


def check_container(container: dict) -> None:
    assert container["image"] == "registry.example.org/faasx:2"
    assert container["imagePullPolicy"] == "IfNotPresent"
    assert container["resources"] == {"requests": {"cpu": "0.5", "memory": "1Gi", "nvidia.com/gpu": "1"},
                                      "limits": {"cpu": "3", "memory": "2Gi", "nvidia.com/gpu": "1"}}
    assert container["securityContext"] == {"runAsUser": 1000, "runAsGroup": 2000, "runAsNonRoot": True}
    assert {"name": "shared-data", "mountPath": "/data"} in container["volumeMounts"]
    assert {"name": "scratch", "mountPath": "/scratch"} in container["volumeMounts"]
    assert container["env"] == [{"name": "OMP_NUM_THREADS", "value": "1"}]


def check_container_script(command: list, job_id: str) -> None:
    shell, flag, script = command
    assert (shell, flag) == ("/bin/bash", "-c")
    assert f'export FAASX_BLOCK_JOB_ID="{job_id}"' in script
    assert "FAASX_WALLTIME_END" not in script  # Kubernetes has no walltime
    assert script.index("source /opt/venv/bin/activate") < script.index("faasx-manager --interchange")


def test_container_script_runs_worker_init_then_copies_of_the_command(kube_api, kubeconfig, tmp_path):
    provider = make_provider(kubeconfig, worker_init="export FROM_INIT=yes")
    job_id = provider.submit(f'echo "$FROM_INIT $FAASX_BLOCK_JOB_ID" >> {tmp_path}/out', 3, "blk")
    script = kube_api.pod(job_id)["spec"]["containers"][0]["command"][2]
    done = subprocess.run(["/bin/bash", "-c", script], capture_output=True, text=True, timeout=10)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out").read_text().splitlines() == [f"yes {job_id}"] * 3  # tasks_per_node copies

    job_id = provider.submit("exit 7", 1, "blk")
    script = kube_api.pod(job_id)["spec"]["containers"][0]["command"][2]
    assert subprocess.run(["/bin/bash", "-c", script], timeout=10).returncode == 7


def test_container_script_passes_sigterm_to_the_command(kube_api, kubeconfig, tmp_path, wait_for):
    """Deleting a pod sends SIGTERM to PID 1 (bash): the launch command must get it and exit cleanly."""
    provider = make_provider(kubeconfig)
    ready, got = tmp_path / "ready", tmp_path / "got-term"
    command = (f"python3 -c 'import os,signal,sys,time,pathlib; "
               f"signal.signal(signal.SIGTERM, lambda *a: (pathlib.Path(\"{got}\").touch(), sys.exit(0))); "
               f"pathlib.Path(\"{ready}\").write_text(str(os.getpid())); time.sleep(60)'")
    job_id = provider.submit(command, 1, "blk")
    script = kube_api.pod(job_id)["spec"]["containers"][0]["command"][2]
    shell = subprocess.Popen(["/bin/bash", "-c", script])
    try:
        wait_for(ready.exists, timeout=10, what="the command to start")
        shell.send_signal(signal.SIGTERM)
        assert shell.wait(timeout=10) == 143
        assert got.exists()
    finally:
        if shell.poll() is None:
            shell.kill()
            shell.wait()
        if ready.exists() and os.path.exists(f"/proc/{ready.read_text()}"):
            os.kill(int(ready.read_text()), signal.SIGKILL)  # the command outlived the shell: don't leak it


def test_rejected_pod_raises_scale_out_failed_with_the_api_message(kube_api, kubeconfig):
    provider = make_provider(kubeconfig, image="")  # the API server validates: image is required
    with pytest.raises(ScaleOutFailed) as info:
        provider.submit("echo hi", 1, "blk")
    error = info.value
    assert error.http_status == 422
    assert "spec.containers[0].image: Required value" in str(error)
    assert '"reason": "Invalid"' in error.stderr  # the API's own Status reply

    provider = make_provider(kubeconfig)
    kube_api.fail_next("create", 409, "AlreadyExists", 'pods "blk-0" already exists')
    with pytest.raises(ScaleOutFailed, match='AlreadyExists: pods "blk-0" already exists') as info:
        provider.submit("echo hi", 1, "blk")
    assert info.value.http_status == 409 and info.value.provider == "kubernetes"
    assert provider.resources == {}


def test_pod_quota_exceeded_raises_scale_out_failed(kube_api, kubeconfig):
    kube_api.max_pods = 1
    provider = make_provider(kubeconfig)
    provider.submit("echo hi", 1, "blk")
    with pytest.raises(ScaleOutFailed, match="exceeded quota"):
        provider.submit("echo hi", 1, "blk")


def test_unreachable_api_server_raises_scale_out_failed(kube_api, kubeconfig):
    kube_api.stop()
    provider = make_provider(kubeconfig, cmd_timeout=2)
    with pytest.raises(ScaleOutFailed, match="cannot reach the Kubernetes API server at http://127.0.0.1"):
        provider.submit("echo hi", 1, "blk")


def test_no_configuration_at_all_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "absent"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    provider = KubernetesProvider(image="x")
    with pytest.raises(ScaleOutFailed, match="no Kubernetes configuration"):
        provider.submit("echo hi", 1, "blk")


# ---------------------------------------------------------------------------------------------- status

@pytest.mark.parametrize("phase, kwargs, state, exit_code, words", [
    ("Pending", {}, JobState.PENDING, None, "ContainerCreating"),
    ("Pending", {"waiting_reason": "ImagePullBackOff", "message": "Back-off pulling image"}, JobState.PENDING,
     None, "ImagePullBackOff: Back-off pulling image"),
    ("Running", {}, JobState.RUNNING, None, "Running"),
    ("Succeeded", {}, JobState.COMPLETED, 0, "exit code 0"),
    ("Failed", {"exit_code": 3}, JobState.FAILED, 3, "exit code 3"),
    ("Failed", {"reason": "Evicted", "message": "The node was low on resource: memory."}, JobState.FAILED, 1,
     "Evicted: The node was low on resource: memory."),
    ("Unknown", {}, JobState.UNKNOWN, None, "Unknown"),
])
def test_pod_phase_maps_to_job_state(kube_api, kubeconfig, phase, kwargs, state, exit_code, words):
    provider = make_provider(kubeconfig)
    job_id = provider.submit("sleep 1000", 1, "blk")
    kube_api.set_phase(job_id, phase, **kwargs)
    status = provider.status([job_id])[0]
    assert status.state == state
    assert status.exit_code == exit_code
    assert words in status.message


def test_one_list_call_per_poll_selected_by_this_providers_label(kube_api, kubeconfig):
    provider = make_provider(kubeconfig)
    other = make_provider(kubeconfig)
    ids = [provider.submit("sleep 1000", 1, "blk") for _ in range(3)]
    other.submit("sleep 1000", 1, "blk")  # another executor's pod: not ours to report
    kube_api.set_phase(ids[1], "Running")
    before = len(pod_requests(kube_api, "list"))
    states = [s.state for s in provider.status(ids)]
    lists = pod_requests(kube_api, "list")[before:]
    assert states == [JobState.PENDING, JobState.RUNNING, JobState.PENDING]
    assert len(lists) == 1
    assert lists[0]["query"]["labelSelector"] == [f"{PROVIDER_LABEL}={provider._provider_id}"]


def test_cancel_deletes_the_pod(kube_api, kubeconfig):
    provider = make_provider(kubeconfig)
    keep, drop = provider.submit("sleep 1000", 1, "blk"), provider.submit("sleep 1000", 1, "blk")
    assert provider.cancel([drop]) == [True]
    assert kube_api.pod_names() == [keep]
    (delete,) = pod_requests(kube_api, "delete")
    assert delete["path"] == f"/api/v1/namespaces/default/pods/{drop}"
    assert [s.state for s in provider.status([keep, drop])] == [JobState.PENDING, JobState.CANCELLED]
    assert provider.cancel([drop]) == [True]  # already gone (404) is what cancel wanted


def test_cancel_refused_returns_false(kube_api, kubeconfig):
    provider = make_provider(kubeconfig)
    job_id = provider.submit("sleep 1000", 1, "blk")
    kube_api.fail_next("delete", 403, "Forbidden", 'pods "x" is forbidden: User cannot delete pods')
    assert provider.cancel([job_id]) == [False]
    assert provider.status([job_id])[0].state == JobState.PENDING


def test_transient_list_failure_is_retried(kube_api, kubeconfig):
    provider = make_provider(kubeconfig)
    job_id = provider.submit("sleep 1000", 1, "blk")
    kube_api.set_phase(job_id, "Running")
    kube_api.fail_next("list", 500, "InternalError", "etcdserver: request timed out", times=2)
    before = len(pod_requests(kube_api, "list"))
    assert provider.status([job_id])[0].state == JobState.RUNNING
    assert len(pod_requests(kube_api, "list")) - before == 3


def test_persistent_list_failure_keeps_last_states_and_never_raises(kube_api, kubeconfig, caplog):
    provider = make_provider(kubeconfig)
    job_id = provider.submit("sleep 1000", 1, "blk")
    kube_api.set_phase(job_id, "Running")
    assert provider.status([job_id])[0].state == JobState.RUNNING
    kube_api.set_phase(job_id, "Succeeded")
    kube_api.fail_next("list", 503, "ServiceUnavailable", "the server is currently unable to handle the request",
                       times=100)
    with caplog.at_level(logging.WARNING):
        assert provider.status([job_id])[0].state == JobState.RUNNING  # last known
    assert "failed 3 times" in caplog.text and "ServiceUnavailable" in caplog.text
    kube_api.stop()  # and with the API server gone altogether
    provider.cmd_timeout = 1
    assert provider.status([job_id])[0].state == JobState.RUNNING


def test_pod_deleted_outside_faasx(kube_api, kubeconfig):
    provider = make_provider(kubeconfig)
    seen, unseen = provider.submit("sleep 1000", 1, "blk"), provider.submit("sleep 1000", 1, "blk")
    assert provider.status([seen])[0].state == JobState.PENDING  # both listed now...
    provider.resources[unseen]["seen"] = False  # ...pretend the second vanished before its first poll
    kube_api.remove_pod(seen)
    kube_api.remove_pod(unseen)
    seen_status, unseen_status = provider.status([seen, unseen])
    assert seen_status.state == JobState.COMPLETED and "deleted outside faasx" in seen_status.message
    assert unseen_status.state == JobState.MISSING and "before it was ever listed" in unseen_status.message


def test_status_of_a_pod_this_provider_did_not_create_is_unknown(kube_api, kubeconfig):
    assert make_provider(kubeconfig).status(["nope"])[0].state == JobState.UNKNOWN


# ---------------------------------------------------------------------------------------------- real cluster

REAL_KUBECONFIG = os.environ.get("KUBECONFIG", "")


@pytest.mark.skipif(not REAL_KUBECONFIG or not all(os.path.exists(p) for p in REAL_KUBECONFIG.split(os.pathsep)),
                    reason="needs a real Kubernetes cluster: set KUBECONFIG to its kubeconfig (no API server can "
                           "run on these machines; the fake-API tests above cover the provider)")
def test_real_cluster_pod_lifecycle(wait_for):
    image = os.environ.get("FAASX_TEST_K8S_IMAGE", "python:3.11-slim")
    namespace = os.environ.get("FAASX_TEST_K8S_NAMESPACE", "default")
    provider = KubernetesProvider(image=image, namespace=namespace, init_cpu=0.1, init_mem="64Mi",
                                  max_cpu=0.5, max_mem="128Mi", worker_init="echo faasx-init")
    job_id = provider.submit("echo faasx-ok; sleep 600", 1, "faasx-test")

    def running_or_ended():
        status = provider.status([job_id])[0]
        return status if status.state == JobState.RUNNING or status.terminal else None

    try:
        status = wait_for(running_or_ended, timeout=300, interval=2, what="the pod to run")
        assert status.state == JobState.RUNNING, status
    finally:
        assert provider.cancel([job_id]) == [True]
    api = provider._api()
    wait_for(lambda: job_id not in [p.metadata.name for p in api.list_namespaced_pod(namespace).items],
             timeout=120, interval=2, what="the pod to be deleted")
