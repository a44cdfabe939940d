"""The manager's workers inside per-function containers (funcX container routing; ``docs/containers.md``).

``ContainerWorkers`` is composed into ``faasx.executor.manager.Manager``.  It starts a worker inside a
task's container on demand (``faasx.containers.engines.container_command``), connects it to the
manager (``faasx.containers.links``: an inherited socket for podman, for other engines a Unix socket in
a private 0700 directory bind-mounted into the container, whose peer's uid is checked), keeps it warm, retires idle workers whose slot another kind needs (``WorkerTable.plan``),
and turns a container that dies before READY into a clear error for that key's tasks instead of a
restart loop.  Tasks it fails go into the manager's ``ResultBatch``, which the manager's loop sends.

It owns the container state (specs, container names, start failures, broken keys, listening sockets,
retiring processes); the processes and channels themselves are in the manager's ``WorkerProcesses``
and the tasks in its ``WorkerTable``.  Like the rest of the manager, it belongs to the manager's one
thread.
"""
from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import Callable, Dict, Iterator, List, Optional, Tuple

from faasx.containers.engines import (ContainerStartError, InvalidContainerSpec, available_runtimes,
                                      remove_command, validate_container_spec)
from faasx.containers.links import FdLink, PathLink, peer_refusal, private_socket_dir, unlink
from faasx.executor import protocol as P
from faasx.executor.processes import command
from faasx.executor.security import open_private
from faasx.executor.worker_table import task_container

logger = logging.getLogger("faasx.manager")

MAX_CONTAINER_START_ATTEMPTS = 2   # failed starts in a row (before READY) after which a key's tasks fail
BROKEN_CONTAINER_HOLD = 30.0       # seconds a failed key's new tasks fail at once, before one new try
RETIRE_GRACE = 10.0                # seconds a stopped worker gets to exit before it is killed
# exit codes with which podman/docker (and ``env``/shells) report their own failure, not the worker's: 125
# the engine (image not known, pull failed, bad option), 126 command not executable, 127 command not found
ENGINE_ERROR_CODES = (125, 126, 127)


class ContainerWorkers:
    """Container workers of one manager.

    Parameters
    ----------
    args : argparse.Namespace
        The manager's options (``container_*``, ``max_payload_size``, ``logdir``, ``debug``).
    pool : WorkerProcesses
        Where worker processes are started and their channels registered.
    table : WorkerTable
        The manager's task and worker bookkeeping.
    out : ResultBatch
        Results of tasks failed here (bad spec, no engine, broken image) go there.
    mid, hostname, worker_env, worker_cpus
        The manager's id, host, the variables of a worker (``Manager.worker_env``) and the CPUs its
        workers take back (None: not pinned).
    """

    def __init__(self, args, pool, table, out, *, mid: str, hostname: str,
                 worker_env: Callable[[int], Dict[str, str]], worker_cpus: Optional[str] = None):
        self.args = args
        self.pool = pool
        self.table = table
        self.out = out
        self.mid = mid
        self.hostname = hostname
        self.worker_env = worker_env
        self.worker_cpus = worker_cpus
        self.runtimes = available_runtimes()
        self.specs: Dict[str, dict] = {}             # key -> validated spec, learned from tasks
        self.names: Dict[int, tuple] = {}            # wid -> (engine, container name) of container workers
        self.start_failures: Dict[str, int] = {}     # key -> failed starts in a row
        self.broken: Dict[str, tuple] = {}           # key -> (until, error message)
        self.listeners: Dict[int, tuple] = {}        # listening fd -> (wid, socket, path)
        self.retiring: Dict[int, tuple] = {}         # wid -> (process, kill deadline)
        self.sock_dir: Optional[str] = None

    def active(self) -> bool:
        """Whether any container worker exists (else the manager skips container work on its loop)."""
        return bool(self.names)

    # ---- admitting tasks -----------------------------------------------------------------------
    def admit(self, tasks: list) -> list:
        """Keep the tasks this node can run; fail container tasks it cannot, with the reason and the fix."""
        keep = []
        now = time.monotonic()
        for task in tasks:
            key = task_container(task)
            error = None if key is None else self._refusal(task, key, now)
            if error is None:
                keep.append(task)
            else:
                self.fail_tasks([task], error)
        return keep

    def _refusal(self, task, key: str, now: float) -> Optional[str]:
        """Why this node cannot run container task ``task`` now (None: it can)."""
        error = self._learn_spec(task, key) if key not in self.specs else None
        if error is not None:
            return error
        ctype = self.specs[key]["type"]
        if ctype not in self.runtimes:
            return (f"task {task.tid} needs a {ctype} container but {ctype} is not on PATH on "
                    f"{self.hostname} (found: {self.runtimes or 'no container engine'}). Fix: install "
                    f"{ctype} on the compute nodes or load its module before the manager starts")
        if key in self.broken:
            until, message = self.broken[key]
            if now < until:
                return message
            del self.broken[key]   # one more try: the image may have been built meanwhile
        return None

    def _learn_spec(self, task, key: str) -> Optional[str]:
        raw = task.spec.get("container_spec")
        if raw is None:
            return (f"task {task.tid} names container {key!r} but not its spec; register the function with "
                    "register_function(fn, container={'type': ..., 'image': ...}) instead of giving a "
                    "bare container key")
        try:
            spec = validate_container_spec(raw)
            if raw.get("key", key) != key:
                raise InvalidContainerSpec(f"the spec's key {raw.get('key')!r} is not the task's {key!r}")
        except InvalidContainerSpec as e:
            return f"task {task.tid}: invalid container spec: {e}"
        self.specs[key] = spec
        return None

    def fail_tasks(self, tasks: list, message: str) -> None:
        if not tasks:
            return
        from faasx.executor.serialization import serialize_exception
        for task in tasks:
            self.out.add(P.Result(task.tid, P.EXCEPTION, serialize_exception(
                ContainerStartError(f"task {task.tid}: {message}"), self.hostname)))
        logger.error("failed %d task(s) %s: %s", len(tasks), [t.tid for t in tasks][:50], message)

    def blocked(self) -> List[str]:
        """Keys whose container failed moments ago: not to be started now."""
        now = time.monotonic()
        return [k for k, (until, _) in self.broken.items() if now < until]

    # ---- starting ------------------------------------------------------------------------------
    def _channel_mode(self, ctype: str) -> str:
        """How a container worker reaches the manager: 'fd' (podman passes the inherited socket in with
        --preserve-fds) or 'socket' (the worker connects to a Unix socket in a bind-mounted directory:
        docker has no way to pass a descriptor, and Apptainer/Singularity/Shifter are not relied on to
        keep one open)."""
        mode = self.args.container_channel
        if mode == "auto":
            return "fd" if ctype == "podman" else "socket"
        if mode == "fd" and ctype != "podman":
            return "socket"
        return mode

    def _inner_argv(self, wid: int) -> List[str]:
        """The worker command run inside the container."""
        inner = [self.args.container_python] + command("faasx-worker", "faasx.executor.worker")[1:] + [
            "--worker-id", str(wid), "--manager-pid", "0", "--max-payload-size", str(self.args.max_payload_size)]
        if self.worker_cpus is not None:
            # the engine is started unpinned (``unpinned``), and the worker takes back the manager's original
            # CPUs itself too, as far as the container's cpuset allows (docker's daemon starts it elsewhere)
            inner += ["--cpus", self.worker_cpus]
        # the worker logs to stderr: its lines land in the .out file with the engine's own messages
        if self.args.debug:
            inner.append("--debug")
        return inner

    def start(self, key: str) -> None:
        """Start a worker inside container ``key``: the normal worker command, wrapped by the engine."""
        spec = self.specs[key]
        ctype = spec["type"]
        wid = self.pool.new_wid()
        now = time.monotonic()
        name = f"faasx-{self.mid}-w{wid}".lower()
        name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in name)
        mode = self._channel_mode(ctype)
        link = FdLink() if mode == "fd" else PathLink(self._sock_dir(), wid)
        try:
            argv, stdin = link.command(spec, self._inner_argv(wid), self.worker_env(wid), name)
            self._spawn(wid, key, argv, stdin)
        except (OSError, InvalidContainerSpec) as e:
            link.abandon()
            self.table.add(wid, key, now)
            self.start_failed(wid, key, f"could not be started ({ctype} failed to run: {e})", definite=True)
            return
        finally:
            link.started()
        self.names[wid] = (ctype, name)
        link.attach(self, wid)
        self.table.add(wid, key, now)
        logger.info("started worker %d in container %s (%s %s, pid %d, channel %s)", wid, key, ctype, spec["image"],
                    self.pool.procs[wid].pid, mode)

    def _sock_dir(self) -> str:
        if self.sock_dir is None:
            self.sock_dir = private_socket_dir()   # 0700: only this user and root can connect in it
        return self.sock_dir

    def _spawn(self, wid: int, key: str, argv: List[str], stdin) -> None:
        log_base = os.path.join(self.args.logdir, f"worker_{self.mid}_{wid}")
        with open_private(log_base + ".out", "ab") as out:
            out.write(f"# faasx: starting worker {wid} in container {key}: {' '.join(argv)}\n".encode())
            out.flush()
            self.pool.spawn(wid, argv, out, stdin=stdin)

    def accept(self, fd: int) -> None:
        """A process connected to a container worker's socket path (``fd`` is its listener; others are
        ignored).  Only a peer of the run's uid or root becomes the worker (``links.peer_refusal``); any
        other is closed and the socket keeps listening for the real worker."""
        entry = self.listeners.get(fd)
        if entry is None:
            return
        wid, listener, path = entry
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return                       # the peer gave up before we got to it
        except OSError as e:
            logger.error("worker %d: accepting its connection failed: %s", wid, e)
            self.drop_listener(wid)
            return
        refusal = peer_refusal(conn)
        if refusal is not None:
            conn.close()
            logger.error("worker %d: refused a connection to its socket %s: %s", wid, path, refusal)
            return
        self.drop_listener(wid)
        conn.setblocking(True)
        if wid in self.pool.procs:
            self.pool.add_channel(wid, conn)
        else:
            conn.close()

    def drop_listener(self, wid: int) -> None:
        for fd, (w, listener, path) in list(self.listeners.items()):
            if w == wid:
                del self.listeners[fd]
                self.pool.poller.unregister(fd)
                listener.close()
                unlink(path)

    def worker_ready(self, wid: int, slot, ready: P.Ready, now: float) -> bool:
        """A container worker said READY: False (and its key failed) if the image's versions differ."""
        theirs = ready.versions
        diff = P.version_mismatch(P.versions(), theirs) if theirs is not None else {}
        if diff:
            self._version_mismatch(wid, slot.container, diff)
            return False
        self.start_failures.pop(slot.container, None)
        self.broken.pop(slot.container, None)
        logger.info("worker %d in container %s is ready after %.2fs", wid, slot.container, now - slot.started_at)
        return True

    # ---- failing -------------------------------------------------------------------------------
    def _out_tail(self, wid: int, lines: int = 12) -> str:
        path = os.path.join(self.args.logdir, f"worker_{self.mid}_{wid}.out")
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        body = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("# faasx:")]
        return "\n".join(body[-lines:])

    def start_failed(self, wid: int, key: str, how: str, definite: bool = False) -> None:
        """A container worker ended before READY: count it; after MAX_CONTAINER_START_ATTEMPTS in a row
        (at once when the engine itself failed: image missing, bad option), fail the key's queued tasks
        with the engine's output, and hold new ones off for a while."""
        self.table.remove(wid)
        self.names.pop(wid, None)
        n = self.start_failures[key] = self.start_failures.get(key, 0) + 1
        spec = self.specs.get(key, {})
        tail = self._out_tail(wid)
        logger.error("worker %d in container %s (%s) %s before it was ready (attempt %d of %d%s); its output:\n%s",
                     wid, key, spec.get("image"), how, n, MAX_CONTAINER_START_ATTEMPTS,
                     "; an error of the container engine itself: not retried" if definite else "", tail)
        if n < MAX_CONTAINER_START_ATTEMPTS and not definite:
            return
        self.start_failures[key] = 0
        self._mark_broken(key, self._start_error(key, how, n, definite, tail))

    def _start_error(self, key: str, how: str, n: int, definite: bool, tail: str) -> str:
        spec = self.specs.get(key, {})
        tail = "\n".join(tail.splitlines()[-6:])
        ctype, image = spec.get("type", "?"), spec.get("image", "?")
        hint = {"podman": f"build or pull it on the node (podman pull {image}, or podman build/import -t {image}); "
                          "check it with: podman run --rm " + image + " python3 -c 'import faasx'",
                "docker": f"docker pull {image} (or docker build -t {image} .) on the node"}.get(
            ctype, f"make sure the image {image} exists on the node and {ctype} can run it")
        return (f"the container for this function could not be started on {self.hostname}: {ctype} image "
                f"{image!r} (key {key}); the worker {how} before it was ready"
                f"{' (the container engine failed)' if definite else f', {n} times in a row'}. "
                f"Output of the last attempt:\n{tail or '(none)'}\nFix: {hint}. The image also needs "
                f"{self.args.container_python} with faasx {P.versions()['faasx']} and Python "
                f"{P.versions()['python'].rsplit('.', 1)[0]} installed (the same versions as the executor).")

    def _mark_broken(self, key: str, message: str) -> None:
        """Fail ``key``'s queued tasks with ``message``, and its new ones for ``BROKEN_CONTAINER_HOLD``."""
        self.broken[key] = (time.monotonic() + BROKEN_CONTAINER_HOLD, message)
        self.fail_tasks(self.table.take_queued(key), message)

    def _version_mismatch(self, wid: int, key: str, diff: dict) -> None:
        spec = self.specs.get(key, {})
        what = ", ".join(f"{k} {b!r} in the image vs {a!r} here" for k, (a, b) in sorted(diff.items()))
        message = (f"the container image {spec.get('image')!r} ({spec.get('type')}) on {self.hostname} has a "
                   f"different {what}. Fix: install the executor's versions in the image "
                   f"(faasx {P.versions()['faasx']}, Python {P.versions()['python']}, dill {P.versions()['dill']})")
        logger.error("worker %d in container %s: %s", wid, key, message)
        self._mark_broken(key, message)
        self.retire_worker(wid)

    def overdue_starts(self, now: float) -> Iterator[Tuple[int, str]]:
        """Container workers not ready within ``container_start_timeout``: each is killed, then yielded
        (wid, why) for the manager to report as gone."""
        if not self.names:
            return
        timeout = self.args.container_start_timeout
        procs = self.pool.procs
        for wid, slot in list(self.table.slots.items()):
            if slot.container is None or slot.ready or now - slot.started_at <= timeout or wid not in procs:
                continue
            logger.error("worker %d in container %s not ready after %.0fs (container_start_timeout); "
                         "stopping it", wid, slot.container, now - slot.started_at)
            self.remove_container(wid)
            self.pool.kill_and_wait(procs[wid])
            yield wid, f"was not ready within {timeout:.0f}s"

    # ---- stopping ------------------------------------------------------------------------------
    def retire_worker(self, wid: int) -> None:
        """Stop an idle worker (of any kind) whose slot another kind of worker needs."""
        self.table.remove(wid)
        self.pool.close_channel(wid, say_shutdown=True)
        self.drop_listener(wid)
        proc = self.pool.procs.pop(wid, None)
        if proc is not None:
            self.retire_process(wid, proc)
        else:
            self.names.pop(wid, None)
        logger.info("stopping idle worker %d to make room for another kind of worker", wid)

    def retire_process(self, wid: int, proc: subprocess.Popen) -> None:
        """Let ``proc`` exit in the background (``reap_retiring``), killed after ``RETIRE_GRACE``."""
        self.retiring[wid] = (proc, time.monotonic() + RETIRE_GRACE)

    def forget(self, wid: int) -> None:
        """Worker ``wid`` is gone: its container name is kept only while its process is still retiring."""
        if wid not in self.retiring:
            self.names.pop(wid, None)

    def reap_retiring(self, now: float, force: bool = False) -> None:
        for wid, (proc, deadline) in list(self.retiring.items()):
            if proc.poll() is None and (force or now > deadline):
                self.remove_container(wid)
                if not self.pool.kill_and_wait(proc):
                    continue
            if proc.poll() is not None:
                del self.retiring[wid]
                self.names.pop(wid, None)

    def remove_container(self, wid: int) -> None:
        """Force-remove a container worker's container (podman/docker: killing ``podman run`` leaves it)."""
        entry = self.names.get(wid)
        cmd = remove_command(*entry) if entry is not None else None
        if cmd is None:
            return
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            logger.warning("could not remove container %s: %s", entry[1], e)

    def close(self) -> None:
        """At exit, after the pool stopped its workers: retired ones, listeners, the socket directory."""
        self.reap_retiring(time.monotonic(), force=True)
        for wid, _listener, _path in list(self.listeners.values()):
            self.drop_listener(wid)
        self.names.clear()
        if self.sock_dir is not None:
            import shutil
            shutil.rmtree(self.sock_dir, ignore_errors=True)
            self.sock_dir = None
