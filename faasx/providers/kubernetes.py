"""KubernetesProvider: one pod per block, through the official ``kubernetes`` client.

The constructor takes the arguments of Parsl's ``KubernetesProvider`` (so a Parsl configuration ports by
changing its import) plus a few faasx additions: ``extra_labels``, ``image_pull_secrets``, ``volumes`` /
``volume_mounts`` (pod-spec JSON, as written in YAML), ``env``, ``image_pull_policy``, ``kubeconfig``,
``context`` and ``cmd_timeout``.

How a block is made::

    submit(command)  -> POST /api/v1/namespaces/NS/pods      pod NAME = <pod_name or job_name>-<8 hex>
                        restartPolicy Never, one container running
                        /bin/bash -c 'export FAASX_BLOCK_JOB_ID=NAME; worker_init; command'
                     <- job id = NAME
    status(ids)      -> GET .../pods?labelSelector=faasx-provider=<this provider's id>   (one call)
    cancel(ids)      -> DELETE .../pods/NAME

What faasx does differently from Parsl's provider, and why:

* ``restartPolicy: Never``.  Parsl leaves Kubernetes' default (``Always``), so a block whose manager
  exits is restarted forever and never reaches ``Succeeded``.
* One ``list`` per status poll (by label) instead of one ``read`` per pod.
* The container's shell forwards SIGTERM to the launch command, so ``cancel`` (pod deletion) lets the
  manager exit cleanly instead of waiting out the grace period and being SIGKILLed.
* ``cores_per_node`` / ``mem_per_node`` are set from ``max_cpu`` / ``max_mem`` (and exported as
  ``PARSL_CORES`` / ``PARSL_MEMORY_GB``), so executors size worker pools to the pod, not to the host.
* Kubernetes has no walltime, so no ``FAASX_WALLTIME_END`` is exported; ``FAASX_BLOCK_JOB_ID`` is.

Pod phase -> ``JobState``: Pending -> PENDING (the message names a waiting container's reason, e.g.
``ImagePullBackOff``, or why the pod is unschedulable), Running -> RUNNING, Succeeded -> COMPLETED,
Failed -> FAILED (with the container's exit code and reason), Unknown -> UNKNOWN.  A pod that no longer
exists although faasx did not delete it is COMPLETED if it had been seen before (deleted outside faasx,
e.g. ``kubectl delete``) and MISSING if it was never listed at all (it vanished right after creation).

Failures: a refused pod (409 AlreadyExists, 422 Invalid, 403 over quota ...) raises
``faasx.errors.ScaleOutFailed`` carrying the API's Status message (and its raw JSON as ``stderr``); an
unreachable API server or a missing configuration does too.  A failing ``list`` is retried a few times,
then logged -- ``status()`` never raises.

Configuration: ``kubeconfig`` (a path), else ``$KUBECONFIG``, else ``~/.kube/config``; if none of these
exists, the in-cluster service-account configuration (when faasx itself runs in a pod).  The client is
built on first use, with its own configuration object (the ``kubernetes`` package's global default is not
touched).  ``kubernetes`` is an optional dependency: ``pip install 'faasx[kubernetes]'``.
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import threading
import time
import uuid
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import typeguard
from parsl.jobs.states import JobState, JobStatus
from parsl.providers.base import ExecutionProvider
from parsl.utils import RepresentationMixin

logger = logging.getLogger(__name__)

_INSTALL_HINT = "KubernetesProvider needs the 'kubernetes' package: pip install 'faasx[kubernetes]'"

_PHASES = {
    "Pending": JobState.PENDING,
    "Running": JobState.RUNNING,
    "Succeeded": JobState.COMPLETED,
    "Failed": JobState.FAILED,
    "Unknown": JobState.UNKNOWN,
}

PROVIDER_LABEL = "faasx-provider"   # one value per provider instance: what status() lists by
JOB_LABEL = "faasx-job-id"          # the block's job id (= pod name)
CONTAINER_NAME = "faasx-block"

_LIST_TRIES = 3
_LIST_BACKOFF = 0.5


def _import_kubernetes():
    try:
        import kubernetes  # noqa: F401  (optional dependency)
        from kubernetes import client, config
    except ImportError as e:
        raise ImportError(f"{_INSTALL_HINT} ({e})") from e
    return client, config


def _dns_label(text: str, limit: int) -> str:
    """``text`` as a lowercase RFC 1123 label prefix of at most ``limit`` characters."""
    label = re.sub(r"[^a-z0-9-]+", "-", text.lower())
    label = re.sub(r"-{2,}", "-", label).strip("-")[:limit].rstrip("-")
    return label or "faasx-block"


_QUANTITY = re.compile(r"^([0-9.]+)([KMGTPE]i?|[kmun]|)$")
_QUANTITY_FACTORS = {"": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
                     "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60,
                     "m": 1e-3, "u": 1e-6, "n": 1e-9}


def _memory_gb(quantity: str) -> Optional[float]:
    """A Kubernetes memory quantity ("500Mi", "2G") in GiB, or None if it cannot be read."""
    m = _QUANTITY.match(quantity.strip())
    if not m:
        return None
    return round(float(m.group(1)) * _QUANTITY_FACTORS[m.group(2)] / 2**30, 3)


class KubernetesProvider(ExecutionProvider, RepresentationMixin):
    """Kubernetes execution provider: each block is one pod.

    Parameters (as Parsl's ``KubernetesProvider``)
    ----------------------------------------------
    image : str
        Container image; it must contain ``/bin/bash`` and faasx (same version as the submit side).
    namespace : str
        Namespace to create pods in. Default ``"default"``.
    nodes_per_block : int
        Kept for compatibility; a block is always one pod (values above 1 are ignored, with a warning).
    init_blocks, min_blocks, max_blocks : int
        Pods to start with and the range to scale within. Defaults 4, 0, 10 (Parsl's).
    max_cpu, max_mem : float, str
        Container limits (``2``, ``"500Mi"``).
    init_cpu, init_mem : float, str
        Container requests (``1``, ``"250Mi"``).
    extra_requests, extra_limits : dict, optional
        More requests / limits, e.g. ``{"nvidia.com/gpu": "1"}``.
    parallelism : float
        Ratio of provisioned task slots to active tasks. Default 1.
    worker_init : str
        Shell commands run in the container before the launch command.
    pod_name : str, optional
        Pod name prefix (sanitised to an RFC 1123 label); default: the executor's job name.
    user_id, group_id : str or int, optional
        ``runAsUser`` / ``runAsGroup`` of the container.
    run_as_non_root : bool
        ``runAsNonRoot``.
    secret : str, optional
        An image pull secret (Parsl's name for it).
    persistent_volumes : list of (claim name, mount path)
        PersistentVolumeClaims to mount.
    service_account_name : str, optional
        Service account of the pod.
    annotations : dict, optional
        Pod annotations.

    faasx additions
    ---------------
    extra_labels : dict, optional
        More pod labels (faasx's own ``faasx-provider`` / ``faasx-job-id`` labels always win).
    image_pull_secrets : list of str, optional
        More image pull secrets (added to ``secret``).
    volumes, volume_mounts : list of dict, optional
        Pod ``volumes`` and container ``volumeMounts`` in the API's JSON form, e.g.
        ``[{"name": "scratch", "emptyDir": {}}]`` and ``[{"name": "scratch", "mountPath": "/scratch"}]``.
    env : dict, optional
        Environment variables of the container.
    image_pull_policy : str, optional
        ``Always``, ``IfNotPresent`` or ``Never``.
    kubeconfig : str, optional
        Path of the kubeconfig file (default: ``$KUBECONFIG``, then ``~/.kube/config``, then in-cluster).
    context : str, optional
        Kubeconfig context (default: its current context).
    cmd_timeout : int
        Seconds to wait for each API request. Default 10.
    """

    @typeguard.typechecked
    def __init__(self,
                 image: str,
                 namespace: str = 'default',
                 nodes_per_block: int = 1,
                 init_blocks: int = 4,
                 min_blocks: int = 0,
                 max_blocks: int = 10,
                 max_cpu: float = 2,
                 max_mem: str = "500Mi",
                 init_cpu: float = 1,
                 init_mem: str = "250Mi",
                 extra_requests: Optional[Dict[str, str]] = None,
                 extra_limits: Optional[Dict[str, str]] = None,
                 parallelism: float = 1,
                 worker_init: str = "",
                 pod_name: Optional[str] = None,
                 user_id: Optional[Union[str, int]] = None,
                 group_id: Optional[Union[str, int]] = None,
                 run_as_non_root: bool = False,
                 secret: Optional[str] = None,
                 persistent_volumes: Sequence[Tuple[str, str]] = (),
                 service_account_name: Optional[str] = None,
                 annotations: Optional[Dict[str, str]] = None,
                 extra_labels: Optional[Dict[str, str]] = None,
                 image_pull_secrets: Optional[List[str]] = None,
                 volumes: Optional[List[Dict[str, Any]]] = None,
                 volume_mounts: Optional[List[Dict[str, Any]]] = None,
                 env: Optional[Dict[str, str]] = None,
                 image_pull_policy: Optional[str] = None,
                 kubeconfig: Optional[str] = None,
                 context: Optional[str] = None,
                 cmd_timeout: int = 10) -> None:
        _import_kubernetes()  # fail at configuration time, with the install hint, if it is missing
        self.image = image
        self.namespace = namespace
        self.nodes_per_block = nodes_per_block
        self.init_blocks = init_blocks
        self.min_blocks = min_blocks
        self.max_blocks = max_blocks
        self.max_cpu = max_cpu
        self.max_mem = max_mem
        self.init_cpu = init_cpu
        self.init_mem = init_mem
        self.extra_requests = extra_requests
        self.extra_limits = extra_limits
        self.parallelism = parallelism
        self.worker_init = worker_init
        self.pod_name = pod_name
        self.user_id = user_id
        self.group_id = group_id
        self.run_as_non_root = run_as_non_root
        self.secret = secret
        self.persistent_volumes = persistent_volumes
        self.service_account_name = service_account_name
        self.annotations = annotations
        self.extra_labels = extra_labels
        self.image_pull_secrets = image_pull_secrets
        self.volumes = volumes
        self.volume_mounts = volume_mounts
        self.env = env
        self.image_pull_policy = image_pull_policy
        self.kubeconfig = kubeconfig
        self.context = context
        self.cmd_timeout = cmd_timeout

        if nodes_per_block != 1:
            logger.warning("KubernetesProvider: a block is one pod; nodes_per_block=%d is ignored", nodes_per_block)
        # Size worker pools to the pod's limits, not to the host the pod lands on.
        self.cores_per_node: Optional[int] = max(1, math.floor(max_cpu))
        self.mem_per_node: Optional[float] = _memory_gb(max_mem)
        self.script_dir: Optional[str] = None
        self.resources: Dict[str, Dict[str, Any]] = {}
        self._provider_id = uuid.uuid4().hex[:12]
        self._status_polling_interval = 60
        self._core_api = None
        self._api_lock = threading.Lock()

    # ------------------------------------------------------------------ ExecutionProvider

    @property
    def label(self) -> str:
        return "kubernetes"

    @property
    def status_polling_interval(self) -> int:
        """Seconds between ``status()`` calls (60; settable, e.g. for tests)."""
        return self._status_polling_interval

    @status_polling_interval.setter
    def status_polling_interval(self, seconds: int) -> None:
        self._status_polling_interval = seconds

    def submit(self, command: str, tasks_per_node: int, job_name: str = "faasx.kube") -> str:
        """Create the block's pod and return its name (the job id).

        Raises ``faasx.errors.ScaleOutFailed`` if the API refuses the pod (with its Status message), is
        unreachable, or no configuration is found.
        """
        from faasx.errors import ScaleOutFailed

        name = f"{_dns_label(self.pod_name or job_name, 63 - 9)}-{uuid.uuid4().hex[:8]}"
        body = self._pod_manifest(name, command, tasks_per_node)
        try:
            api = self._api()
        except Exception as e:
            raise ScaleOutFailed(self.label, str(e), job_name=name) from e
        client, _ = _import_kubernetes()
        try:
            api.create_namespaced_pod(namespace=self.namespace, body=body, _request_timeout=self.cmd_timeout)
        except client.ApiException as e:
            error = ScaleOutFailed(self.label, f"the Kubernetes API refused pod {name} (HTTP {e.status}): "
                                              f"{_api_message(e)}", stderr=_body_text(e), job_name=name)
            error.http_status = e.status
            raise error from e
        except Exception as e:  # connection refused, TLS, timeout ...
            raise ScaleOutFailed(self.label, f"cannot reach the Kubernetes API server at "
                                             f"{api.api_client.configuration.host}: {e}", job_name=name) from e
        logger.info("pod %s created in namespace %s for block %s", name, self.namespace, job_name)
        self.resources[name] = {"job_id": name, "pod_name": name, "seen": False,
                                "status": JobStatus(JobState.PENDING, message="pod created")}
        return name

    def status(self, job_ids: Sequence[str]) -> List[JobStatus]:
        """States of ``job_ids`` after one pod list (retried on failure; never raises)."""
        if job_ids:
            try:
                self._poll()
            except Exception:
                logger.exception("Kubernetes status update failed; keeping the last known states")
        return [self.resources[jid]["status"] if jid in self.resources
                else JobStatus(JobState.UNKNOWN, message=f"pod {jid} was not created by this provider")
                for jid in job_ids]

    def cancel(self, job_ids: Sequence[str]) -> List[bool]:
        """Delete the pods; True for each pod deleted or already gone."""
        results = []
        for jid in job_ids:
            ok = self._delete_pod(jid)
            if ok and jid in self.resources:
                self.resources[jid]["status"] = JobStatus(JobState.CANCELLED, message="pod deleted")
            results.append(ok)
        return results

    # ------------------------------------------------------------------ the pod

    def _pod_manifest(self, name: str, command: str, tasks_per_node: int) -> Dict[str, Any]:
        """The Pod sent to the API server (JSON form)."""
        container = self._container(self._container_script(name, command, tasks_per_node))
        return {"apiVersion": "v1", "kind": "Pod", "metadata": self._pod_metadata(name),
                "spec": self._pod_spec(container)}

    def _pod_metadata(self, name: str) -> Dict[str, Any]:
        """Name, labels (the user's, then faasx's own, which find the pod again) and annotations."""
        labels = dict(self.extra_labels or {})
        labels.update({
            "app.kubernetes.io/name": "faasx",
            "app.kubernetes.io/component": "block",
            PROVIDER_LABEL: self._provider_id,
            JOB_LABEL: name,
        })
        metadata: Dict[str, Any] = {"name": name, "labels": labels}
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        return metadata

    def _container(self, script: str) -> Dict[str, Any]:
        """The one container of a block's pod: image, the block script, resources, env, mounts, user."""
        requests = {"cpu": str(self.init_cpu), "memory": self.init_mem}
        requests.update(self.extra_requests or {})
        limits = {"cpu": str(self.max_cpu), "memory": self.max_mem}
        limits.update(self.extra_limits or {})
        container: Dict[str, Any] = {
            "name": CONTAINER_NAME,
            "image": self.image,
            "command": ["/bin/bash", "-c", script],
            "resources": {"requests": requests, "limits": limits},
        }
        if self.image_pull_policy:
            container["imagePullPolicy"] = self.image_pull_policy
        if self.env:
            container["env"] = [{"name": k, "value": str(v)} for k, v in self.env.items()]
        mounts = [{"name": claim, "mountPath": path} for claim, path in self.persistent_volumes]
        mounts += list(self.volume_mounts or [])
        if mounts:
            container["volumeMounts"] = mounts
        security = self._security_context()
        if security:
            container["securityContext"] = security
        return container

    def _security_context(self) -> Dict[str, Any]:
        security: Dict[str, Any] = {}
        if self.user_id is not None:
            security["runAsUser"] = int(self.user_id)
        if self.group_id is not None:
            security["runAsGroup"] = int(self.group_id)
        if self.run_as_non_root:
            security["runAsNonRoot"] = True
        return security

    def _pod_spec(self, container: Dict[str, Any]) -> Dict[str, Any]:
        """Never restarted (a block that ends is over), pull secrets, volumes, service account."""
        spec: Dict[str, Any] = {"containers": [container], "restartPolicy": "Never"}
        pull_secrets = ([self.secret] if self.secret else []) + list(self.image_pull_secrets or [])
        if pull_secrets:
            spec["imagePullSecrets"] = [{"name": s} for s in pull_secrets]
        pod_volumes = [{"name": claim, "persistentVolumeClaim": {"claimName": claim}}
                       for claim, _ in self.persistent_volumes]
        pod_volumes += list(self.volumes or [])
        if pod_volumes:
            spec["volumes"] = pod_volumes
        if self.service_account_name:
            spec["serviceAccountName"] = self.service_account_name
        return spec

    def _container_script(self, name: str, command: str, tasks_per_node: int) -> str:
        """What ``/bin/bash -c`` runs: exports, worker_init, then the command, forwarding SIGTERM."""
        exports = [f'export FAASX_BLOCK_JOB_ID="{name}"']
        if self.cores_per_node is not None:
            exports.append(f"export PARSL_CORES={self.cores_per_node}")
        if self.mem_per_node is not None:
            exports.append(f"export PARSL_MEMORY_GB={self.mem_per_node}")
        copies = max(1, int(tasks_per_node))
        # bash as PID 1 ignores SIGTERM: run the command in the background, each copy in its own process
        # group (set -m), and pass the signal to the whole group, so deleting the pod stops the manager
        # cleanly instead of SIGKILLing it after the grace period.
        return "\n".join(exports) + f"""
{self.worker_init}
faasx_block() {{
{command}
}}
set -m
faasx_pids=""
for faasx_i in $(seq 1 {copies}); do faasx_block & faasx_pids="$faasx_pids $!"; done
trap 'for faasx_pid in $faasx_pids; do kill -TERM -- -$faasx_pid 2>/dev/null; done; wait; exit 143' TERM INT
faasx_rc=0
for faasx_pid in $faasx_pids; do wait $faasx_pid || faasx_rc=$?; done
exit $faasx_rc
"""

    # ------------------------------------------------------------------ API calls

    def _api(self):
        """The CoreV1Api, built on first use from kubeconfig or the in-cluster configuration."""
        with self._api_lock:
            if self._core_api is None:
                self._core_api = _make_core_api(self.kubeconfig, self.context)
            return self._core_api

    def _list_pods(self):
        """The pods of this provider, or None after ``_LIST_TRIES`` failed attempts (logged)."""
        client, _ = _import_kubernetes()
        last = "no attempt made"
        for attempt in range(1, _LIST_TRIES + 1):
            try:
                return self._api().list_namespaced_pod(
                    namespace=self.namespace, label_selector=f"{PROVIDER_LABEL}={self._provider_id}",
                    _request_timeout=self.cmd_timeout).items
            except client.ApiException as e:
                last = f"HTTP {e.status}: {_api_message(e)}"
                if e.status is not None and 400 <= e.status < 500 and e.status not in (408, 429):
                    logger.error("listing pods in namespace %s was refused (%s); keeping the last known "
                                 "states", self.namespace, last)
                    return None  # not transient: retrying cannot help
            except Exception as e:  # unreachable server, timeout, no configuration ...
                last = f"{type(e).__name__}: {e}"
            if attempt < _LIST_TRIES:
                logger.debug("listing pods failed (%s); retrying", last)
                time.sleep(_LIST_BACKOFF * attempt)
        logger.warning("listing pods in namespace %s failed %d times (last: %s); keeping the last known "
                       "states", self.namespace, _LIST_TRIES, last)
        return None

    def _poll(self) -> None:
        active = {jid: r for jid, r in self.resources.items() if not r["status"].terminal}
        if not active:
            return
        pods = self._list_pods()
        if pods is None:
            return
        by_name = {pod.metadata.name: pod for pod in pods}
        for jid, record in active.items():
            pod = by_name.get(record["pod_name"])
            if pod is not None:
                record["seen"] = True
                record["status"] = _pod_status(pod)
            elif record["seen"]:
                record["status"] = JobStatus(JobState.COMPLETED, message=f"pod {jid} no longer exists "
                                                                         "(deleted outside faasx)")
            else:
                record["status"] = JobStatus(JobState.MISSING, message=f"pod {jid} vanished before it was "
                                                                       "ever listed")

    def _delete_pod(self, name: str) -> bool:
        client, _ = _import_kubernetes()
        try:
            self._api().delete_namespaced_pod(name=name, namespace=self.namespace, body=client.V1DeleteOptions(),
                                              _request_timeout=self.cmd_timeout)
        except client.ApiException as e:
            if e.status == 404:
                return True  # already gone: what cancel wanted
            logger.error("cannot delete pod %s: HTTP %s: %s", name, e.status, _api_message(e))
            return False
        except Exception as e:
            logger.error("cannot delete pod %s: %s", name, e)
            return False
        logger.info("pod %s deleted", name)
        return True


def _make_core_api(kubeconfig: Optional[str], context: Optional[str]):
    client, config = _import_kubernetes()
    from kubernetes.config.config_exception import ConfigException

    configuration = client.Configuration()
    path = kubeconfig or os.environ.get("KUBECONFIG") or os.path.expanduser("~/.kube/config")
    candidates = [p for p in path.split(os.pathsep) if p and os.path.exists(os.path.expanduser(p))]
    if kubeconfig and not candidates:
        raise FileNotFoundError(f"kubeconfig {kubeconfig} does not exist")
    if candidates:
        config.load_kube_config(config_file=path, context=context, client_configuration=configuration,
                                persist_config=False)
    else:
        try:
            config.load_incluster_config(client_configuration=configuration)
        except ConfigException as e:
            raise RuntimeError(f"no Kubernetes configuration: no kubeconfig at {path} (pass kubeconfig= or set "
                               f"KUBECONFIG) and not running inside a cluster ({e})") from e
    return client.CoreV1Api(client.ApiClient(configuration))


def _body_text(e) -> Optional[str]:
    body = e.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    return body or None


def _api_message(e) -> str:
    """``Reason: message`` from the API's Status reply, or the HTTP reason and body."""
    body = _body_text(e)
    try:
        status = json.loads(body)
        return f"{status.get('reason') or e.reason}: {status['message']}"
    except (TypeError, ValueError, KeyError):
        return f"{e.reason}: {body}" if body else str(e.reason)


def _pod_status(pod) -> JobStatus:
    status = pod.status
    phase = status.phase if status is not None else None
    state = _PHASES.get(phase, JobState.UNKNOWN)
    details: List[str] = []
    exit_code = None
    if status is not None:
        if status.reason:
            details.append(status.reason + (f": {status.message}" if status.message else ""))
        for cs in status.container_statuses or []:
            code = _container_details(cs, details)
            if code is not None:
                exit_code = code
        if phase == "Pending":
            details += _unschedulable(status)
    message = f"pod phase {phase}" + (f" ({'; '.join(details)})" if details else "")
    return JobStatus(state, message=message, exit_code=exit_code)


def _with_message(text: str, message: Optional[str]) -> str:
    return text + (f": {message}" if message else "")


def _container_details(cs, details: List[str]) -> Optional[int]:
    """Append why a container waits or how it ended to ``details``; its exit code if it terminated."""
    if cs.state is None:
        return None
    waiting, terminated = cs.state.waiting, cs.state.terminated
    if waiting is not None and waiting.reason:
        details.append(_with_message(f"{cs.name} waiting: {waiting.reason}", waiting.message))
    if terminated is None:
        return None
    details.append(_with_message(f"{cs.name} terminated: {terminated.reason or ''} "
                                 f"(exit code {terminated.exit_code})", terminated.message))
    return terminated.exit_code


def _unschedulable(status) -> List[str]:
    """Why a pending pod cannot be placed (its PodScheduled condition), if the scheduler said."""
    return [f"unschedulable: {cond.message or cond.reason}" for cond in status.conditions or []
            if cond.type == "PodScheduled" and cond.status == "False"]
