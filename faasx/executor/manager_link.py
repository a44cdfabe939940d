"""The manager's end of the interchange hop: a direct Unix socket on the interchange's host, else ZeroMQ.

Both links offer the manager the same few calls, so ``Manager`` does not care which it has:

=================  ============================================================================
``key``            what the manager's ``zmq.Poller`` reports for it (``register`` put it there)
``send(frames)``   one protocol message; blocks at most ``heartbeat_threshold``, then raises
                   ``InterchangeGone`` (so does a link the interchange closed)
``drain(limit)``   every whole message waiting now, never blocks
``recv(timeout)``  one message within ``timeout`` seconds, or None (the registration reply)
``close(linger)``  end it, giving what was just sent up to ``linger`` seconds to leave
=================  ============================================================================

``DirectLink`` (``faasx.executor.direct``, the interchange's side) is used when the interchange's
direct socket accepts a connection from here, which it does only on its own host and for the run's
user; ``ZmqLink`` (a DEALER whose identity is the manager id; CurveZMQ when the executor is
encrypted) everywhere else.  Threads: a link belongs to the manager's one thread.
"""
from __future__ import annotations

import select
import socket
import struct
import time
from typing import List, Optional

import zmq

from faasx.executor.channel import Channel, ChannelClosed, ChannelError
from faasx.executor.sockets import drain, send


class InterchangeGone(ConnectionError):
    """The interchange did not take a message within the liveness threshold, or closed the link."""


class ZmqLink:
    """A DEALER socket to the interchange's ROUTER (TCP, or ipc on its host)."""

    def __init__(self, ctx: zmq.Context, mid: bytes, threshold: float, max_message: int,
                 cert_dir: Optional[str], encrypted: bool):
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.IDENTITY, mid)
        sock.setsockopt(zmq.SNDHWM, 0)
        sock.setsockopt(zmq.RCVHWM, 0)
        # A DEALER with no peer pipe blocks in send; after a fatal handshake failure (wrong or missing
        # CURVE keys) it has none, and would block for ever.  Bound every send by the liveness threshold.
        sock.setsockopt(zmq.SNDTIMEO, int(threshold * 1000))
        if max_message:
            sock.setsockopt(zmq.MAXMSGSIZE, max_message)
        if encrypted:
            from faasx.executor.security import configure_client
            configure_client(sock, cert_dir)
        self.sock = self.key = sock

    def connect(self, url: str) -> None:
        self.sock.connect(url)

    def register(self, poller: zmq.Poller) -> None:
        poller.register(self.sock, zmq.POLLIN)

    def send(self, frames: List[bytes], nowait: bool = False) -> None:
        try:
            send(self.sock, frames, nonblocking=nowait)
        except zmq.Again as e:
            raise InterchangeGone("the interchange took no message for the liveness threshold") from e

    def drain(self, limit: int) -> List[List[bytes]]:
        return drain(self.sock, limit)

    def recv(self, timeout: float) -> Optional[List[bytes]]:
        if not self.sock.poll(int(timeout * 1000)):
            return None
        return self.sock.recv_multipart()

    def close(self, linger: float = 0.0) -> None:
        self.sock.close(int(linger * 1000))


class DirectLink:
    """A Unix stream socket to the interchange's direct socket, in ``Channel`` framing."""

    def __init__(self, path: str, threshold: float, max_message: int):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(min(threshold, 5.0))
        try:
            sock.connect(path)
        except OSError:
            sock.close()
            raise
        sock.settimeout(None)
        # blocking, but no send or blocking receive waits longer than the liveness threshold
        timeval = struct.pack("ll", int(threshold), int((threshold % 1) * 1e6))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        self.chan = Channel(sock, max_message=max_message)
        self.key = sock.fileno()
        self.early: List[List[bytes]] = []     # read with the registration reply, not yet handed out

    @classmethod
    def try_connect(cls, path: str, threshold: float, max_message: int) -> Optional["DirectLink"]:
        """The link, or None when the socket is not there or not ours to use (another host, another run)."""
        try:
            return cls(path, threshold, max_message)
        except OSError:
            return None

    def register(self, poller: zmq.Poller) -> None:
        poller.register(self.key, zmq.POLLIN)

    def send(self, frames: List[bytes], nowait: bool = False) -> None:
        try:
            self.chan.send(frames)     # a small message (BYE) goes at once either way
        except OSError as e:      # EAGAIN after SO_SNDTIMEO, EPIPE, ECONNRESET
            raise InterchangeGone(f"the interchange's direct link failed ({e})") from e

    def drain(self, limit: int) -> List[List[bytes]]:
        """Every whole message here now (``limit`` does not apply: a Channel read is one system call)."""
        if self.early:
            early, self.early = self.early, []
            return early + self._read()
        return self._read()

    def _read(self) -> List[List[bytes]]:
        try:
            return self.chan.recv_available()
        except (ChannelClosed, ChannelError, ConnectionResetError) as e:
            raise InterchangeGone(f"the interchange closed the direct link ({e})") from e

    def recv(self, timeout: float) -> Optional[List[bytes]]:
        deadline = time.monotonic() + timeout
        while True:
            messages = self.drain(1)
            if messages:
                self.early = messages[1:]     # tasks may follow REGISTERED in the same read
                return messages[0]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.key], [], [], left)[0]:
                return None

    def close(self, linger: float = 0.0) -> None:
        self.chan.close()
