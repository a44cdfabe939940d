"""How a worker inside a container reaches its manager (``docs/containers.md``, "Manager <-> worker channel").

``ContainerWorkers`` picks one link per container worker:

``FdLink``     podman: one end of a socketpair is passed into the container (``--preserve-fds``).  There is
               no path, so no other process can connect to it.
``PathLink``   docker, apptainer/singularity, shifter (engines that cannot pass a descriptor in, or are not
               relied on to keep one open), and podman when asked to (``--container-channel socket``): the
               manager listens on a Unix socket in a directory bind-mounted into the container, and the
               worker connects to it (``--connect PATH``, ``connect_to_manager``).

The socket's path is public: it is on the worker's command line, and ``/proc/net/unix`` lists every
listening socket to every user.  Whoever connects first would be taken for the worker -- it would get
the run's tasks and answer them with pickles that the client loads.  The kernel keeps other users out,
twice:

* the socket lives in a fresh 0700 directory of the manager's user (``private_socket_dir``: ``mkdtemp``,
  which creates it atomically with that mode), so ``connect()`` by any other uid fails with EACCES;
* the manager checks every connection's peer (``SO_PEERCRED``, ``peer_refusal``) and takes only one from
  the manager's own uid or root; any other is closed and the socket keeps listening for the real worker.

Root is accepted because it is what rootful podman and docker run a container as (an image without a
``USER``), and root can read the manager's memory anyway.  Rootless podman/docker and Apptainer,
Singularity (``--fakeroot`` included) and Shifter run the worker as the user who started it, as the
kernel sees it (``SO_PEERCRED`` reports the uid mapped into the manager's user namespace).  An image that
runs as some other uid (a ``USER`` line under rootful docker, docker's ``userns-remap``) cannot connect;
``connect_to_manager`` then exits with the fix (``--user=UID:GID``).  There is no extra secret: anything
that passes both checks is the run's user or root, who can read the run's credentials (0600, theirs)
anyway; the threat model is other users (README, "Threat model").
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import tempfile
import uuid
from typing import List, Optional

from faasx.containers.engines import container_command

WORKER_FD_IN_CONTAINER = 4         # the socket's number inside a podman container (fd 3 is the forwarder's)
CONNECT_TIMEOUT = 30.0             # seconds the worker waits for the manager to accept its connection
_UCRED = struct.Struct("3i")       # struct ucred {pid, uid, gid}


def private_socket_dir() -> str:
    """A fresh directory for a manager's container sockets: 0700 and ours from the moment it exists."""
    return tempfile.mkdtemp(prefix="faasx-sock-")


def peer_refusal(conn: socket.socket) -> Optional[str]:
    """Why the process at the other end of ``conn`` may not be a worker (None: it may).

    Allowed: the manager's own uid, and root (rootful podman/docker containers; root can read the
    manager's memory anyway)."""
    pid, uid, _gid = _UCRED.unpack(conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))
    if uid in (os.geteuid(), 0):
        return None
    return (f"the connecting process (pid {pid}) runs as uid {uid}, neither the run's user (uid {os.geteuid()}) "
            "nor root")


def connect_to_manager(path: str, timeout: float = CONNECT_TIMEOUT) -> socket.socket:
    """The worker's side of ``PathLink``: connect to the manager's socket, or exit with the reason and the fix."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
    except PermissionError as e:
        sock.close()
        raise SystemExit(_permission_advice(path, e)) from None
    sock.settimeout(None)
    return sock


def _permission_advice(path: str, error: OSError) -> str:
    try:
        st = os.stat(os.path.dirname(path))
        owner = f"uid {st.st_uid}"
        fix = f"--user={st.st_uid}:{st.st_gid}"
    except OSError:
        owner, fix = "the manager's user", "--user=UID:GID"
    return (f"faasx-worker: cannot connect to the manager's socket {path}: {error}. The socket is private to "
            f"{owner}, and this worker runs as uid {os.getuid()} inside the container. Fix: run the container as "
            f"that user or as root (docker: add '{fix}' to the container spec's options; rootless podman: "
            "'--userns=keep-id'; docker's userns-remap cannot be used for faasx workers)")


class FdLink:
    """podman: the worker's end of a socketpair is passed into the container (``--preserve-fds``)."""

    def __init__(self) -> None:
        self.ours = self.theirs = None

    def command(self, spec: dict, inner: List[str], env: dict, name: str) -> tuple:
        self.ours, self.theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        inner = inner + ["--fd", str(WORKER_FD_IN_CONTAINER)]
        argv = container_command(spec, inner, env=env, name=name, preserve_fds=WORKER_FD_IN_CONTAINER - 2)
        # podman passes fds 3..; the socket goes to 4 (the forwarder takes 3 for stdin).  Popen can only
        # place a descriptor at 0-2, so it arrives as stdin and a shell that execs podman moves it (POSIX
        # sh only redirects single-digit fds; no Python runs between fork and exec)
        argv = ["/bin/sh", "-c", f'exec "$@" {WORKER_FD_IN_CONTAINER}<&0 3</dev/null 0</dev/null',
                "faasx-container-worker"] + argv
        return argv, self.theirs.fileno()

    def started(self) -> None:
        if self.theirs is not None:
            self.theirs.close()      # the child has its copy (or there is no child)

    def abandon(self) -> None:
        if self.ours is not None:
            self.ours.close()

    def attach(self, workers, wid: int) -> None:
        workers.pool.add_channel(wid, self.ours)


class PathLink:
    """Other engines: the worker connects to a Unix socket in the manager's private socket directory, which is
    bind-mounted into the container at the same path."""

    def __init__(self, sock_dir: str, wid: int) -> None:
        self.sock_dir = sock_dir
        self.path = os.path.join(sock_dir, f"w{wid}-{uuid.uuid4().hex[:8]}.sock")
        self.listener: Optional[socket.socket] = None

    def command(self, spec: dict, inner: List[str], env: dict, name: str) -> tuple:
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(self.path)
        os.chmod(self.path, 0o600)   # the 0700 directory already keeps others out; the socket says so too
        self.listener.listen(4)      # a refused peer must not make the real worker wait behind it
        self.listener.setblocking(False)
        argv = container_command(spec, inner + ["--connect", self.path], binds=[self.sock_dir], env=env, name=name)
        return argv, subprocess.DEVNULL

    def started(self) -> None:
        pass

    def abandon(self) -> None:
        if self.listener is not None:
            self.listener.close()
            unlink(self.path)

    def attach(self, workers, wid: int) -> None:
        import zmq   # here: the worker imports this module for connect_to_manager and needs no ZeroMQ
        fd = self.listener.fileno()
        workers.listeners[fd] = (wid, self.listener, self.path)
        workers.pool.poller.register(fd, zmq.POLLIN)


def unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
