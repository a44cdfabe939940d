"""A fake of the Kubernetes Pods REST API, for testing ``KubernetesProvider`` with the real client.

This is a stand-in because no Kubernetes API server can run on these machines (no kube-apiserver,
kind, k3s or envtest binary is installable here; see ``shared/recipes/kubernetes.md``).  The provider
under test uses the REAL official ``kubernetes`` Python client, which talks HTTP to this server exactly
as it would to a cluster; only the server side is fake.  It serves, on 127.0.0.1 from a thread:

====================================================  =============================================
``POST   /api/v1/namespaces/{ns}/pods``               201 + the stored Pod (uid, resourceVersion,
                                                      creationTimestamp, ``status.phase: Pending``);
                                                      409 ``AlreadyExists``; 422 ``Invalid`` (bad name,
                                                      no containers, bad restartPolicy ...); 403
                                                      ``Forbidden`` when over the pod quota
``GET    /api/v1/namespaces/{ns}/pods?labelSelector=``  200 PodList (``k=v``, ``k==v``, ``k!=v``, ``k``,
                                                      ``!k``, ``k in (a,b)``, ``k notin (a,b)``)
``GET    /api/v1/namespaces/{ns}/pods/{name}[/status]``  200 Pod; 404 ``NotFound``
``DELETE /api/v1/namespaces/{ns}/pods/{name}``          200 + the last Pod (now gone); 404 ``NotFound``
====================================================  =============================================

Errors are ``Status`` objects as the API server sends them, so the client raises ``ApiException`` with
``.status`` and a JSON ``.body``.  Requests need ``Authorization: Bearer <token>`` (401 otherwise), which
checks that the client really used the kubeconfig it was given.

There is no kubelet: a pod stays ``Pending`` until a test moves it with :meth:`FakeKubeAPI.set_phase`.
With ``run_pods=True`` a tiny stand-in kubelet runs each pod's container command as a local process
instead (the image is ignored; the container's ``env`` is added to this process's environment): the pod
is ``Running`` while it runs, then ``Succeeded`` or ``Failed`` with its exit code; deleting the pod sends
SIGTERM and, after ``grace_seconds``, SIGKILL to every process it started -- enough to run real faasx
managers in "pods".
:meth:`FakeKubeAPI.fail_next` makes the next calls of one kind fail (e.g. a 500 on list), and
:attr:`FakeKubeAPI.requests` records every request with its decoded JSON body (header names lower-cased).
"""
from __future__ import annotations

import contextlib
import copy
import datetime
import json
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import parse_qs, urlsplit

_POD_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods(?:/(?P<name>[^/]+)(?P<sub>/status)?)?$")
_DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def status_body(code: int, reason: str, message: str, details: Optional[dict] = None) -> dict:
    """A ``Status`` object as the API server returns it for errors."""
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}
    if details is not None:
        body["details"] = details
    return body


class _Reject(Exception):
    def __init__(self, code: int, reason: str, message: str, details: Optional[dict] = None):
        super().__init__(message)
        self.body = status_body(code, reason, message, details)
        self.code = code


def _split_requirements(selector: str) -> List[str]:
    parts, depth, current = [], 0, ""
    for ch in selector:
        if ch == "(":
            depth += 1
        elif ch == ")":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append(current.strip())
            current = ""
        else:
            current += ch
    if current.strip():
        parts.append(current.strip())
    return parts


def selector_matches(selector: Optional[str], labels: Dict[str, str]) -> bool:
    """Kubernetes label-selector semantics (equality- and set-based)."""
    if not selector:
        return True
    for req in _split_requirements(selector):
        m = re.fullmatch(r"(\S+?)\s+(in|notin)\s+\((.*)\)", req)
        if m:
            key, op, values = m.group(1), m.group(2), {v.strip() for v in m.group(3).split(",")}
            if op == "in" and labels.get(key) not in values:
                return False
            if op == "notin" and key in labels and labels[key] in values:
                return False
            continue
        m = re.fullmatch(r"([^=!\s]+)\s*(==|=|!=)\s*(\S*)", req)
        if m:
            key, op, value = m.groups()
            if op in ("=", "==") and labels.get(key) != value:
                return False
            if op == "!=" and labels.get(key) == value:
                return False
            continue
        if req.startswith("!"):
            if req[1:].strip() in labels:
                return False
            continue
        if req not in labels:
            return False
    return True


# ---- what the API server validates in a pod (422 Invalid, one cause per field) ----------------------
def _name_causes(name: str) -> list:
    if not name:
        return [("metadata.name", "Required value: name or generateName is required")]
    if len(name) > 253 or not _DNS_SUBDOMAIN.match(name):
        return [("metadata.name", f'Invalid value: "{name}": a lowercase RFC 1123 subdomain must '
                                  "consist of lower case alphanumeric characters, '-' or '.', and "
                                  "must start and end with an alphanumeric character")]
    return []


def _container_causes(spec: dict) -> list:
    containers = spec.get("containers") or []
    causes = [] if containers else [("spec.containers", "Required value")]
    for i, c in enumerate(containers):
        if not _DNS_LABEL.match(c.get("name") or "") or len(c.get("name") or "") > 63:
            causes.append((f"spec.containers[{i}].name", f'Invalid value: "{c.get("name")}": a lowercase '
                                                         "RFC 1123 label must consist of lower case "
                                                         "alphanumeric characters or '-'"))
        if not c.get("image"):
            causes.append((f"spec.containers[{i}].image", "Required value"))
    return causes


def _label_causes(meta: dict) -> list:
    return [("metadata.labels", f'Invalid value: "{value}": must be no more than 63 characters')
            for value in (meta.get("labels") or {}).values() if len(str(value)) > 63]


def _restart_causes(spec: dict) -> list:
    if spec.get("restartPolicy", "Always") in ("Always", "OnFailure", "Never"):
        return []
    return [("spec.restartPolicy", f'Unsupported value: "{spec.get("restartPolicy")}": '
                                   'supported values: "Always", "OnFailure", "Never"')]


class FakeKubeAPI:
    """The fake API server.  Use as a context manager, or call :meth:`start` / :meth:`stop`."""

    def __init__(self, token: str = "faasx-test-token", max_pods: Optional[int] = None, run_pods: bool = False,
                 grace_seconds: float = 5.0, log_dir: Optional[str] = None):
        self.token = token
        self.max_pods = max_pods  # a ResourceQuota on pods per namespace; None: unlimited
        self.run_pods = run_pods
        self.grace_seconds = grace_seconds
        self.log_dir = log_dir    # where run pods' stdout/stderr go (NAME.log); None: discarded
        self._procs: Dict[str, subprocess.Popen] = {}  # pod uid -> its container process
        self._run_uids: List[str] = []                 # every pod ever run, for the leak check
        self.pods: Dict[Tuple[str, str], dict] = {}
        self.requests: List[Dict[str, Any]] = []
        self._faults: List[Dict[str, Any]] = []
        self._lock = threading.RLock()
        self._resource_version = 100
        self._server: Optional[ThreadingHTTPServer] = None
        self._thread: Optional[threading.Thread] = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def url(self) -> str:
        assert self._server is not None, "server not started"
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> "FakeKubeAPI":
        api = self

        class Handler(_Handler):
            fake = api

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05},
                                        name="fake-kube-api", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        for uid in list(self._procs):
            self._kill_pod_processes(uid, grace=0)
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread.join(timeout=5)
            self._server = None

    def __enter__(self) -> "FakeKubeAPI":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def write_kubeconfig(self, path: str, namespace: str = "default", token: Optional[str] = None) -> str:
        """Write a kubeconfig naming this server (JSON, which is valid YAML); returns ``path``."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": self.url}}],
            "users": [{"name": "fake-user", "user": {"token": token or self.token}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake-user",
                                                      "namespace": namespace}}],
            "current-context": "fake",
        }
        with open(path, "w") as f:
            json.dump(config, f, indent=2)
        return path

    # ------------------------------------------------------------------ test controls

    def fail_next(self, verb: str, code: int, reason: str, message: str, times: int = 1) -> None:
        """Make the next ``times`` requests of ``verb`` ('create', 'list', 'read', 'delete') fail."""
        with self._lock:
            self._faults.append({"verb": verb, "code": code, "reason": reason, "message": message,
                                 "left": times})

    def pod(self, name: str, namespace: str = "default") -> Optional[dict]:
        with self._lock:
            pod = self.pods.get((namespace, name))
            return copy.deepcopy(pod) if pod is not None else None

    def pod_names(self, namespace: str = "default") -> List[str]:
        with self._lock:
            return sorted(name for ns, name in self.pods if ns == namespace)

    def set_phase(self, name: str, phase: str, namespace: str = "default", *, exit_code: Optional[int] = None,
                  reason: Optional[str] = None, message: Optional[str] = None,
                  waiting_reason: Optional[str] = None) -> None:
        """Move a pod to ``phase`` as a kubelet would, with container states to match."""
        with self._lock:
            pod = self.pods[(namespace, name)]
            status = pod["status"]
            status["phase"] = phase
            for key in ("reason", "message"):
                status.pop(key, None)
            if reason:
                status["reason"] = reason
            if message:
                status["message"] = message
            containers = pod["spec"]["containers"]
            if phase == "Pending" and waiting_reason:
                state = {"waiting": {"reason": waiting_reason, "message": message or waiting_reason}}
            elif phase == "Pending":
                state = {"waiting": {"reason": "ContainerCreating"}}
            elif phase == "Running":
                state = {"running": {"startedAt": _now()}}
            elif phase in ("Succeeded", "Failed"):
                code = exit_code if exit_code is not None else (0 if phase == "Succeeded" else 1)
                state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error",
                                        "startedAt": _now(), "finishedAt": _now()}}
            else:
                state = {}
            status["containerStatuses"] = [
                {"name": c["name"], "image": c["image"], "imageID": "", "ready": phase == "Running",
                 "restartCount": 0, "state": state} for c in containers]
            if phase != "Pending":
                status.setdefault("startTime", _now())
            self._bump(pod)

    def remove_pod(self, name: str, namespace: str = "default") -> None:
        """Delete a pod behind the client's back (as ``kubectl delete`` would)."""
        with self._lock:
            del self.pods[(namespace, name)]

    # ------------------------------------------------------------------ request handling

    def _bump(self, pod: dict) -> None:
        self._resource_version += 1
        pod["metadata"]["resourceVersion"] = str(self._resource_version)

    def _take_fault(self, verb: str) -> Optional[_Reject]:
        for fault in self._faults:
            if fault["verb"] == verb and fault["left"] > 0:
                fault["left"] -= 1
                return _Reject(fault["code"], fault["reason"], fault["message"])
        return None

    def handle(self, method: str, path: str, query: Dict[str, List[str]], body: Any) -> Tuple[int, dict]:
        m = _POD_PATH.match(path)
        if m is None:
            return 404, status_body(404, "NotFound", "the server could not find the requested resource")
        ns, name = m.group("ns"), m.group("name")
        if method == "POST" and name is None:
            verb = "create"
        elif method == "GET" and name is None:
            verb = "list"
        elif method == "GET":
            verb = "read"
        elif method == "DELETE" and name is not None:
            verb = "delete"
        else:
            return 405, status_body(405, "MethodNotAllowed", f"the server does not allow this method ({method})")
        with self._lock:
            try:
                fault = self._take_fault(verb)
                if fault is not None:
                    raise fault
                return getattr(self, f"_{verb}")(ns, name, query, body)
            except _Reject as e:
                return e.code, e.body

    def _create(self, ns, _name, _query, body) -> Tuple[int, dict]:
        if not isinstance(body, dict) or body.get("kind", "Pod") != "Pod":
            raise _Reject(400, "BadRequest", "the object provided is not a Pod")
        pod = copy.deepcopy(body)
        meta = pod.setdefault("metadata", {})
        name = meta.get("name") or ""
        body_ns = meta.get("namespace")
        if body_ns and body_ns != ns:
            raise _Reject(400, "BadRequest", "the namespace of the provided object does not match the "
                                             "namespace sent on the request")
        spec = pod.get("spec") or {}
        causes = _name_causes(name) + _container_causes(spec) + _label_causes(meta) + _restart_causes(spec)
        if causes:
            message = f'Pod "{name}" is invalid: ' + ", ".join(f"{f}: {m}" for f, m in causes)
            raise _Reject(422, "Invalid", message, {
                "name": name, "kind": "Pod",
                "causes": [{"reason": "FieldValueInvalid", "message": m, "field": f} for f, m in causes]})
        self._admit(ns, name)
        pod.setdefault("apiVersion", "v1")
        pod["kind"] = "Pod"
        meta.update({"namespace": ns, "uid": str(uuid.uuid4()), "creationTimestamp": _now()})
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("dnsPolicy", "ClusterFirst")
        spec.setdefault("schedulerName", "default-scheduler")
        pod["spec"] = spec
        pod["status"] = {"phase": "Pending", "qosClass": "Burstable"}
        self._bump(pod)
        self.pods[(ns, name)] = pod
        if self.run_pods:
            self._start_pod(ns, name, pod)
        return 201, copy.deepcopy(pod)

    def _admit(self, ns: str, name: str) -> None:
        """A valid pod still needs a free name and room in the namespace's quota (409 / 403 otherwise)."""
        if (ns, name) in self.pods:
            raise _Reject(409, "AlreadyExists", f'pods "{name}" already exists', {"name": name, "kind": "pods"})
        used = sum(1 for pns, _ in self.pods if pns == ns)
        if self.max_pods is not None and used >= self.max_pods:
            raise _Reject(403, "Forbidden", f'pods "{name}" is forbidden: exceeded quota: pod-quota, '
                                            f"requested: pods=1, used: pods={used}, limited: pods={self.max_pods}",
                          {"name": name, "kind": "pods"})

    def _list(self, ns, _name, query, _body) -> Tuple[int, dict]:
        selector = (query.get("labelSelector") or [None])[0]
        items = [copy.deepcopy(p) for (pns, _), p in sorted(self.pods.items())
                 if pns == ns and selector_matches(selector, p["metadata"].get("labels") or {})]
        return 200, {"kind": "PodList", "apiVersion": "v1",
                     "metadata": {"resourceVersion": str(self._resource_version)}, "items": items}

    def _read(self, ns, name, _query, _body) -> Tuple[int, dict]:
        pod = self.pods.get((ns, name))
        if pod is None:
            raise _Reject(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        return 200, copy.deepcopy(pod)

    def _delete(self, ns, name, _query, _body) -> Tuple[int, dict]:
        pod = self.pods.pop((ns, name), None)
        if pod is None:
            raise _Reject(404, "NotFound", f'pods "{name}" not found', {"name": name, "kind": "pods"})
        pod["metadata"]["deletionTimestamp"] = _now()
        self._bump(pod)
        uid = pod["metadata"]["uid"]
        if uid in self._procs:
            threading.Thread(target=self._kill_pod_processes, args=(uid, self.grace_seconds), daemon=True).start()
        return 200, pod

    # ------------------------------------------------------------------ the stand-in kubelet

    _MARKER = "FAASX_FAKE_KUBE_POD"

    def _start_pod(self, ns: str, name: str, pod: dict) -> None:
        container = pod["spec"]["containers"][0]
        argv = list(container.get("command") or []) + list(container.get("args") or [])
        env = dict(os.environ)
        env.update({e["name"]: e.get("value", "") for e in container.get("env") or []})
        env[self._MARKER] = pod["metadata"]["uid"]
        out = open(os.path.join(self.log_dir, f"{name}.log"), "ab") if self.log_dir else subprocess.DEVNULL
        try:
            proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True)
        except OSError as e:
            self._finish(ns, name, pod["metadata"]["uid"], 128, f"StartError: {e}")
            return
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        self._procs[pod["metadata"]["uid"]] = proc
        self._run_uids.append(pod["metadata"]["uid"])
        self.set_phase(name, "Running", ns)
        threading.Thread(target=self._watch, args=(ns, name, pod["metadata"]["uid"], proc), daemon=True).start()

    def _watch(self, ns: str, name: str, uid: str, proc: subprocess.Popen) -> None:
        code = proc.wait()
        self._finish(ns, name, uid, 128 - code if code < 0 else code)

    def _finish(self, ns: str, name: str, uid: str, code: int, message: Optional[str] = None) -> None:
        with self._lock:
            self._procs.pop(uid, None)
            pod = self.pods.get((ns, name))
            if pod is not None and pod["metadata"]["uid"] == uid:
                self.set_phase(name, "Succeeded" if code == 0 else "Failed", ns, exit_code=code, message=message)

    def _pod_pids(self, uid: str) -> List[int]:
        needle = f"{self._MARKER}={uid}".encode() + b"\0"
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/environ", "rb") as f:
                        if needle in f.read():
                            pids.append(int(entry))
                except OSError:
                    continue
        return pids

    def pod_processes(self) -> List[int]:
        """Live processes started by any run pod (none should outlive its pod)."""
        with self._lock:
            uids = list(self._run_uids)
        return sorted({pid for uid in uids for pid in self._pod_pids(uid)})

    def _kill_pod_processes(self, uid: str, grace: float) -> None:
        """As a kubelet stops a container: SIGTERM to its main process, SIGKILL to all after the grace."""
        proc = self._procs.get(uid)
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and proc.poll() is None:
                time.sleep(0.05)
        for pid in self._pod_pids(uid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)


class _Handler(BaseHTTPRequestHandler):
    fake: FakeKubeAPI
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep test output clean
        pass

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw.decode(errors="replace")
        with self.fake._lock:
            self.fake.requests.append({"method": self.command, "path": parts.path, "query": query,
                                       "body": body,
                                       "headers": {k.lower(): v for k, v in self.headers.items()}})
        if self.headers.get("Authorization") != f"Bearer {self.fake.token}":
            code, reply = 401, status_body(401, "Unauthorized", "Unauthorized")
        else:
            code, reply = self.fake.handle(self.command, parts.path, query, body)
        data = json.dumps(reply).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_DELETE = do_PUT = do_PATCH = _serve
