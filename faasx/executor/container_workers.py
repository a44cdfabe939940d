"""The manager's per-function container workers (funcX container routing; ``docs/containers.md``).

A mixin of ``faasx.executor.manager.Manager``, kept apart so the manager's own module stays about
the event loop, registration and plain workers.  It starts a worker inside a task's container on
demand (``faasx.containers.container_command``), connects it to the manager over an inherited
socket (podman) or a Unix socket in a bind-mounted directory (other engines), keeps it warm, retires
idle workers whose slot another kind needs (``WorkerTable.plan``), and turns a container that dies
before READY into a clear error for that key's tasks instead of a restart loop.
"""
from __future__ import annotations

import logging
import os
import socket
import subprocess
import time
import uuid

import zmq

from faasx.containers import (ContainerStartError, InvalidContainerSpec, container_command, remove_command,
                              validate_container_spec)
from faasx.executor import protocol as P
from faasx.executor.processes import command
from faasx.executor.worker_table import task_container

logger = logging.getLogger("faasx.manager")

MAX_CONTAINER_START_ATTEMPTS = 2   # failed starts in a row (before READY) after which a key's tasks fail
BROKEN_CONTAINER_HOLD = 30.0       # seconds a failed key's new tasks fail at once, before one new try
RETIRE_GRACE = 10.0                # seconds a stopped worker gets to exit before it is killed
# exit codes with which podman/docker (and ``env``/shells) report their own failure, not the worker's: 125
# the engine (image not known, pull failed, bad option), 126 command not executable, 127 command not found
ENGINE_ERROR_CODES = (125, 126, 127)
WORKER_FD_IN_CONTAINER = 4         # the socket's number inside a podman container (fd 3 is the forwarder's)


class ContainerWorkers:
    """Container-worker management; uses the manager's procs, chans, poller, table and args."""

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

    def start_container_worker(self, key: str) -> None:
        """Start a worker inside container ``key``: the normal worker command, wrapped by the engine."""
        spec = self.container_specs[key]
        ctype = spec["type"]
        wid = self.next_wid
        self.next_wid += 1
        now = time.monotonic()
        name = f"faasx-{self.mid.decode()}-w{wid}".lower()
        name = "".join(c if c.isalnum() or c in "_.-" else "-" for c in name)
        log_base = os.path.join(self.args.logdir, f"worker_{self.mid.decode()}_{wid}")
        inner = [self.args.container_python] + command("faasx-worker", "faasx.executor.worker")[1:] + [
            "--worker-id", str(wid), "--manager-pid", "0", "--max-payload-size", str(self.args.max_payload_size)]
        if self.worker_cpus is not None:
            # the engine is started unpinned (``unpinned``), and the worker takes back the manager's original
            # CPUs itself too, as far as the container's cpuset allows (docker's daemon starts it elsewhere)
            inner += ["--cpus", self.worker_cpus]
        # the worker logs to stderr: its lines land in the .out file with the engine's own messages
        if self.args.debug:
            inner.append("--debug")
        env = self._worker_env(wid)
        mode = self._channel_mode(ctype)
        ours = theirs = listener = None
        stdin = subprocess.DEVNULL
        try:
            if mode == "fd":
                ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
                fd = theirs.fileno()
                inner += ["--fd", str(WORKER_FD_IN_CONTAINER)]
                argv = container_command(spec, inner, env=env, name=name, preserve_fds=WORKER_FD_IN_CONTAINER - 2)
                # podman passes fds 3..; the socket goes to 4 (the forwarder takes 3 for stdin).  Popen can
                # only place a descriptor at 0-2, so it arrives as stdin and a shell that execs podman moves
                # it (POSIX sh only redirects single-digit fds; no Python runs between fork and exec)
                argv = ["/bin/sh", "-c", f'exec "$@" {WORKER_FD_IN_CONTAINER}<&0 3</dev/null 0</dev/null',
                        "faasx-container-worker"] + argv
                stdin = fd
            else:
                if self.sock_dir is None:
                    import tempfile
                    self.sock_dir = tempfile.mkdtemp(prefix="faasx-sock-")
                    os.chmod(self.sock_dir, 0o711)
                path = os.path.join(self.sock_dir, f"w{wid}-{uuid.uuid4().hex[:8]}.sock")
                listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                listener.bind(path)
                os.chmod(path, 0o666)   # the image may run as another user
                listener.listen(1)
                listener.setblocking(False)
                inner += ["--connect", path]
                argv = container_command(spec, inner, binds=[self.sock_dir], env=env, name=name)
            with open(log_base + ".out", "ab") as out:
                out.write(f"# faasx: starting worker {wid} in container {key}: {' '.join(argv)}\n".encode())
                out.flush()
                with self.unpinned():
                    self.procs[wid] = subprocess.Popen(argv, stdin=stdin, stdout=out, stderr=subprocess.STDOUT,
                                                       start_new_session=True)
        except (OSError, InvalidContainerSpec) as e:
            for s in (ours, theirs, listener):
                if s is not None:
                    s.close()
            if listener is not None:
                try:
                    os.unlink(path)
                except OSError:
                    pass
            self.table.add(wid, key, now)
            results: list = []
            payloads: list = []
            self._container_start_failed(wid, key, f"could not be started ({ctype} failed to run: {e})", results,
                                         payloads, definite=True)
            if results:
                self.ic.send_multipart(P.pack(P.RESULTS, results, payloads))
            return
        finally:
            if theirs is not None:
                theirs.close()
        self.container_names[wid] = (ctype, name)
        if ours is not None:
            self._add_channel(wid, ours)
        else:
            self.listeners[listener.fileno()] = (wid, listener, path)
            self.poller.register(listener.fileno(), zmq.POLLIN)
        self.table.add(wid, key, now)
        logger.info("started worker %d in container %s (%s %s, pid %d, channel %s)", wid, key, ctype, spec["image"],
                    self.procs[wid].pid, mode)

    def accept_container_worker(self, fd: int) -> None:
        wid, listener, path = self.listeners.pop(fd)
        self.poller.unregister(fd)
        try:
            conn, _ = listener.accept()
        except OSError as e:
            logger.error("worker %d: accepting its connection failed: %s", wid, e)
            return
        finally:
            listener.close()
            try:
                os.unlink(path)
            except OSError:
                pass
        conn.setblocking(True)
        if wid in self.procs:
            self._add_channel(wid, conn)
        else:
            conn.close()

    def _drop_listener(self, wid: int) -> None:
        for fd, (w, listener, path) in list(self.listeners.items()):
            if w == wid:
                del self.listeners[fd]
                self.poller.unregister(fd)
                listener.close()
                try:
                    os.unlink(path)
                except OSError:
                    pass

    def _out_tail(self, wid: int, lines: int = 12) -> str:
        path = os.path.join(self.args.logdir, f"worker_{self.mid.decode()}_{wid}.out")
        try:
            with open(path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        body = [ln for ln in text.splitlines() if ln.strip() and not ln.startswith("# faasx:")]
        return "\n".join(body[-lines:])

    def _container_start_failed(self, wid: int, key: str, how: str, results: list, payloads: list,
                                definite: bool = False) -> None:
        """A container worker ended before READY: count it; after MAX_CONTAINER_START_ATTEMPTS in a row
        (at once when the engine itself failed: image missing, bad option), fail the key's queued tasks
        with the engine's output, and hold new ones off for a while."""
        self.table.remove(wid)
        self.container_names.pop(wid, None)
        n = self.start_failures[key] = self.start_failures.get(key, 0) + 1
        spec = self.container_specs.get(key, {})
        tail = self._out_tail(wid)
        logger.error("worker %d in container %s (%s) %s before it was ready (attempt %d of %d%s); its output:\n%s",
                     wid, key, spec.get("image"), how, n, MAX_CONTAINER_START_ATTEMPTS,
                     "; an error of the container engine itself: not retried" if definite else "", tail)
        if n < MAX_CONTAINER_START_ATTEMPTS and not definite:
            return
        tail = "\n".join(tail.splitlines()[-6:])
        ctype, image = spec.get("type", "?"), spec.get("image", "?")
        hint = {"podman": f"build or pull it on the node (podman pull {image}, or podman build/import -t {image}); "
                          "check it with: podman run --rm " + image + " python3 -c 'import faasx'",
                "docker": f"docker pull {image} (or docker build -t {image} .) on the node"}.get(
            ctype, f"make sure the image {image} exists on the node and {ctype} can run it")
        message = (f"the container for this function could not be started on {self.hostname}: {ctype} image "
                   f"{image!r} (key {key}); the worker {how} before it was ready"
                   f"{' (the container engine failed)' if definite else f', {n} times in a row'}. "
                   f"Output of the last attempt:\n{tail or '(none)'}\nFix: {hint}. The image also needs "
                   f"{self.args.container_python} with faasx {P.versions()['faasx']} and Python "
                   f"{P.versions()['python'].rsplit('.', 1)[0]} installed (the same versions as the executor).")
        self.broken[key] = (time.monotonic() + BROKEN_CONTAINER_HOLD, message)
        self.start_failures[key] = 0
        self.fail_tasks(self.table.take_queued(key), message, results, payloads)

    def fail_tasks(self, tasks: list, message: str, results: list, payloads: list) -> None:
        if not tasks:
            return
        from faasx.executor.serialization import serialize_exception
        for task in tasks:
            results.append([task[0], P.EXCEPTION])
            payloads.append(serialize_exception(ContainerStartError(f"task {task[0]}: {message}"), self.hostname))
        logger.error("failed %d task(s) %s: %s", len(tasks), [t[0] for t in tasks][:50], message)

    def retire_worker(self, wid: int) -> None:
        """Stop an idle worker whose slot another kind of worker needs."""
        self.table.remove(wid)
        chan = self.chans.pop(wid, None)
        if chan is not None:
            try:
                chan.send(P.pack(P.SHUTDOWN, {}))
            except OSError:
                pass
            self.fd_wid.pop(chan.fileno(), None)
            self.poller.unregister(chan.fileno())
            chan.close()
        self._drop_listener(wid)
        proc = self.procs.pop(wid, None)
        if proc is not None:
            self.retiring[wid] = (proc, time.monotonic() + RETIRE_GRACE)
        else:
            self.container_names.pop(wid, None)
        logger.info("stopping idle worker %d to make room for another kind of worker", wid)

    def reap_retiring(self, now: float, force: bool = False) -> None:
        for wid, (proc, deadline) in list(self.retiring.items()):
            if proc.poll() is None and (force or now > deadline):
                self._remove_container(wid)
                self._kill(proc)
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    continue
            if proc.poll() is not None:
                del self.retiring[wid]
                self.container_names.pop(wid, None)

    def _remove_container(self, wid: int) -> None:
        """Force-remove a container worker's container (podman/docker: killing ``podman run`` leaves it)."""
        entry = self.container_names.get(wid)
        if entry is None:
            return
        cmd = remove_command(*entry)
        if cmd is None:
            return
        try:
            subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            logger.warning("could not remove container %s: %s", entry[1], e)

    def manage_containers(self, results: list, payloads: list) -> None:
        """Start and stop workers so queued tasks get a worker of their kind (``WorkerTable.plan``)."""
        now = time.monotonic()
        blocked = [k for k, (until, _) in self.broken.items() if now < until]
        to_start, to_stop = self.table.plan(self.n_workers, self.args.max_container_types, blocked)
        for wid in to_stop:
            self.retire_worker(wid)
        for key in to_start:
            self.start_worker(key)

    def admit_container_tasks(self, tasks: list) -> list:
        """Keep the tasks this node can run; fail container tasks it cannot, with the reason and the fix."""
        keep, results, payloads = [], [], []
        now = time.monotonic()
        for task in tasks:
            key = task_container(task)
            if key is None:
                keep.append(task)
                continue
            error = None
            if key not in self.container_specs:
                raw = task[3].get("container_spec")
                if raw is None:
                    error = (f"task {task[0]} names container {key!r} but not its spec; register the function with "
                             "register_function(fn, container={'type': ..., 'image': ...}) instead of giving a "
                             "bare container key")
                else:
                    try:
                        spec = validate_container_spec(raw)
                        if raw.get("key", key) != key:
                            raise InvalidContainerSpec(f"the spec's key {raw.get('key')!r} is not the task's {key!r}")
                        self.container_specs[key] = spec
                    except InvalidContainerSpec as e:
                        error = f"task {task[0]}: invalid container spec: {e}"
            if error is None:
                ctype = self.container_specs[key]["type"]
                if ctype not in self.runtimes:
                    error = (f"task {task[0]} needs a {ctype} container but {ctype} is not on PATH on "
                             f"{self.hostname} (found: {self.runtimes or 'no container engine'}). Fix: install "
                             f"{ctype} on the compute nodes or load its module before the manager starts")
                elif key in self.broken:
                    until, message = self.broken[key]
                    if now < until:
                        error = message
                    else:
                        del self.broken[key]   # one more try: the image may have been built meanwhile
            if error is None:
                keep.append(task)
            else:
                self.fail_tasks([task], error, results, payloads)
        if results:
            self.ic.send_multipart(P.pack(P.RESULTS, results, payloads))
        return keep

    def container_version_mismatch(self, wid: int, key: str, diff: dict, results: list, payloads: list) -> None:
        spec = self.container_specs.get(key, {})
        what = ", ".join(f"{k} {b!r} in the image vs {a!r} here" for k, (a, b) in sorted(diff.items()))
        message = (f"the container image {spec.get('image')!r} ({spec.get('type')}) on {self.hostname} has a "
                   f"different {what}. Fix: install the executor's versions in the image "
                   f"(faasx {P.versions()['faasx']}, Python {P.versions()['python']}, dill {P.versions()['dill']})")
        logger.error("worker %d in container %s: %s", wid, key, message)
        self.broken[key] = (time.monotonic() + BROKEN_CONTAINER_HOLD, message)
        self.fail_tasks(self.table.take_queued(key), message, results, payloads)
        self.retire_worker(wid)
