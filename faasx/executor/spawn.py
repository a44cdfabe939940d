"""Starting the interchange: the client's child process, the link to it, and the handshake.

``InterchangeProcess.start`` does, in order, with every step bounded by ``timeout``:

1. a Unix socketpair (the link, ``faasx.executor.channel``); the child inherits one end, so no
   other process can ever connect to it;
2. ``faasx-interchange`` as a child process, its configuration written as one JSON line on its
   stdin (the run token included, so it never appears on a command line);
3. one JSON line read back from its stdout: the ports it bound for managers (``manager_port``,
   ``manager_ipc``);
4. HELLO -> WELCOME on the link (``protocol``), before any other thread uses it.

Any failure kills the child and raises ``InterchangeLost`` naming what to read (its stderr tail, or
its log).  Afterwards the object answers the client's I/O thread about the process (``poll``) and
describes how it was lost (``lost``).
"""
from __future__ import annotations

import json
import os
import select
import socket
import subprocess
from typing import Any, Dict

from faasx.errors import InterchangeLost
from faasx.executor import protocol as P
from faasx.executor.channel import Channel, ChannelClosed, ChannelError
from faasx.executor.processes import command
from faasx.executor.security import open_private

LINK_BUFFER = 4 << 20        # socket buffer asked for on the client link (the kernel may cap it)
STDERR_TAIL = 2000           # bytes of the interchange's stderr quoted when it fails to start


class InterchangeProcess:
    """The interchange as its client sees it: a child process and the link to it."""

    def __init__(self, label: str, logdir: str, proc: subprocess.Popen, link: Channel, ports: Dict[str, Any]):
        self.label = label
        self.logdir = logdir
        self.proc = proc
        self.link = link
        self.ports = ports          # {"manager_port": n, "manager_ipc": name or None}

    @classmethod
    def start(cls, label: str, logdir: str, cfg: dict, token: str, max_message: int,
              timeout: float) -> "InterchangeProcess":
        """Spawn the interchange with ``cfg`` and shake hands with it (see the module docstring)."""
        mine, theirs = _socketpair()
        stderr_path = os.path.join(logdir, "interchange.stderr")
        try:
            proc = _spawn(dict(cfg, client_fd=theirs.fileno()), theirs, stderr_path, logdir)
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        ic = cls(label, logdir, proc, Channel(mine, max_message=max_message), {})
        ic.ports = ic._read_ports(timeout, stderr_path)
        ic._handshake(token, timeout)
        return ic

    def _read_ports(self, timeout: float, stderr_path: str) -> Dict[str, Any]:
        stdout = self.proc.stdout
        assert stdout is not None
        ready, _, _ = select.select([stdout], [], [], timeout)
        line = stdout.readline() if ready else b""
        stdout.close()
        if line:
            return json.loads(line)
        self.kill()
        self.link.close()
        with open(stderr_path, "rb") as f:
            tail = f.read()[-STDERR_TAIL:].decode(errors="replace")
        raise InterchangeLost(f"executor {self.label}: the interchange did not start within {timeout}s "
                              f"(exit code {self.proc.returncode}). Its stderr ({stderr_path}):\n{tail}")

    def _handshake(self, token: str, timeout: float) -> None:
        """HELLO -> WELCOME, blocking (bounded by ``timeout``); the link is non-blocking afterwards."""
        link = self.link
        link.sock.settimeout(timeout)
        try:
            link.send(P.pack_hello(token))
            reply: Any = link.recv()
        except socket.timeout:
            reply = "no answer"
        except (OSError, ChannelClosed, ChannelError) as e:
            reply = e
        finally:
            link.sock.setblocking(False)
        if not _is_welcome(reply):
            self.kill()
            link.close()
            raise InterchangeLost(f"executor {self.label}: the interchange did not answer HELLO within "
                                  f"{timeout}s ({reply!r:.200}); see {self.logdir}/interchange.log")

    # ---- afterwards ----------------------------------------------------------------------------
    @property
    def pid(self) -> int:
        return self.proc.pid

    def poll(self):
        """Its exit code, or None while it runs."""
        return self.proc.poll()

    def wait(self, timeout: float) -> int:
        """Wait for it to exit (raises ``subprocess.TimeoutExpired``)."""
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def lost(self, what: str) -> InterchangeLost:
        """The error pending futures fail with; ``what`` says what the client saw."""
        if "exited" not in what:
            try:   # a closed link usually means the process died: name its exit code when it has one
                what = f"exited with code {self.proc.wait(1.0)}"
            except subprocess.TimeoutExpired:
                pass
        return InterchangeLost(
            f"executor {self.label}: the interchange (pid {self.proc.pid}) {what}; pending tasks "
            f"cannot complete. See {self.logdir}/interchange.log and interchange.stderr. "
            "Start a new executor to continue.")


def _socketpair():
    mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    for end in (mine, theirs):
        for opt in (socket.SO_SNDBUF, socket.SO_RCVBUF):
            try:
                end.setsockopt(socket.SOL_SOCKET, opt, LINK_BUFFER)
            except OSError:
                pass
    return mine, theirs


def _spawn(cfg: dict, theirs: socket.socket, stderr_path: str, logdir: str) -> subprocess.Popen:
    # the run directory on the command line: ``faasx ps`` groups a run's processes by it
    with open_private(stderr_path, "ab") as err:
        proc = subprocess.Popen(command("faasx-interchange", "faasx.executor.interchange") + [logdir],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err,
                                pass_fds=(theirs.fileno(),))
    assert proc.stdin is not None
    proc.stdin.write(json.dumps(cfg).encode() + b"\n")
    proc.stdin.close()
    return proc


def _is_welcome(reply: Any) -> bool:
    if not isinstance(reply, list):
        return False
    try:
        return P.unpack(reply)[0] == P.WELCOME
    except P.ProtocolError:
        return False
