"""Direct links: a manager on the interchange's own host talks to it over a plain Unix socket.

Across the network the manager hop is ZeroMQ (a DEALER per manager, the interchange's ROUTER; see
``protocol`` section 1).  On one host ZeroMQ's I/O threads add two thread hand-offs per message at
each end: four of the eleven wake-ups of a no-op round trip.  A manager that can reach the
interchange's socket file connects there instead and speaks the same protocol messages in
``Channel`` framing (``faasx.executor.channel``), as the client and the workers already do.

Who may connect (the same guards as the ipc socket and the container worker sockets):

* the socket is a file in the run's 0700 directory (``security.ipc_socket_path``), mode 0600, so
  ``connect()`` by any other uid fails with EACCES;
* the interchange checks each connection's peer (``SO_PEERCRED``) and closes any that is neither the
  run's uid nor root, before reading a byte from it;
* the first message MUST be a REGISTER carrying the run token, as on ZeroMQ; its ``manager_id`` becomes
  the link's identity.  An id already in use (on any link) is refused: no connection takes over another
  manager's tasks (ZeroMQ's side has ``ROUTER_HANDOVER`` off for the same reason).

Anything else on a link -- a first message that is not a REGISTER, corrupt framing -- closes that link
and nothing else.  A link that closes (the manager exited or died) removes its manager at once: its
tasks are re-dispatched without waiting for the heartbeat threshold.

Threads: everything here belongs to the interchange's main thread (``Interchange.run``).
"""
from __future__ import annotations

import logging
import os
import socket
from typing import Dict, List, Optional, Set, Tuple

import zmq

from faasx.containers.links import peer_refusal
from faasx.executor import protocol as P
from faasx.executor.channel import Channel, ChannelClosed, ChannelError

logger = logging.getLogger("faasx.interchange")

_POLLIN, _POLLOUT = int(zmq.POLLIN), int(zmq.POLLOUT)
ENV_SWITCH = "FAASX_DIRECT_LINKS"   # "0": bind no direct socket (managers then use ZeroMQ's ipc; for A/B runs)


def direct_path(ipc_path: str) -> str:
    """The direct socket beside the interchange's ipc socket (same directory, same length of name,
    so it fits in a Unix socket address whenever the ipc path does)."""
    return os.path.splitext(ipc_path)[0] + ".link"


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1") != "0"


class Link:
    """One accepted connection: its channel, and its manager id once the REGISTER has named it."""

    __slots__ = ("chan", "mid")

    def __init__(self, chan: Channel):
        self.chan = chan
        self.mid: Optional[bytes] = None


class DirectLinks:
    """The interchange's listening socket and its direct links, kept in its ``zmq.Poller``.

    ``serve(fd, event)`` returns the protocol messages that arrived, as ``[manager id, header, ...]``
    exactly as the ROUTER would deliver them, and the managers whose link closed."""

    def __init__(self, path: str, max_message: int):
        self.path = path
        self.max_message = max_message
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.listener.listen(256)
        self.listener.setblocking(False)
        self.fd = self.listener.fileno()
        self.by_fd: Dict[int, Link] = {}
        self.by_mid: Dict[bytes, Link] = {}
        self.writing: Set[int] = set()      # links with bytes queued, polled for POLLOUT
        self.poller: Optional[zmq.Poller] = None
        self.refused = 0                    # connections closed before or at their REGISTER

    def attach(self, poller: zmq.Poller) -> None:
        self.poller = poller
        poller.register(self.fd, _POLLIN)

    def owns(self, fd) -> bool:
        return fd == self.fd or fd in self.by_fd

    # ---- receiving ---------------------------------------------------------------------------
    def serve(self, fd: int, event: int, in_use) -> Tuple[List[list], List[bytes]]:
        """Handle one poll event; ``in_use(mid)`` says whether a manager id is taken elsewhere (ZeroMQ)."""
        if fd == self.fd:
            self._accept()
            return [], []
        link = self.by_fd[fd]
        if event & _POLLOUT:
            self._flush(fd, link)
        try:
            messages = link.chan.recv_available() if event & _POLLIN or not event & _POLLOUT else []
        except (ChannelClosed, ChannelError, ConnectionResetError) as e:
            if link.mid is None and not isinstance(e, ChannelClosed):
                self.refused += 1
                logger.error("direct manager socket: corrupt stream before any REGISTER (%s); closing the link", e)
            return [], self._close(fd, link, e)
        out = []
        for frames in messages:
            if link.mid is None and not self._name(fd, link, frames, in_use):
                return out, []
            out.append([link.mid] + frames)
        return out, []

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            refusal = peer_refusal(conn)
            if refusal:
                self.refused += 1
                logger.warning("direct manager socket: refused a connection: %s", refusal)
                conn.close()
                continue
            conn.setblocking(False)
            link = Link(Channel(conn, max_message=self.max_message))
            self.by_fd[conn.fileno()] = link
            self.poller.register(conn.fileno(), _POLLIN)

    def _name(self, fd: int, link: Link, frames: list, in_use) -> bool:
        """The link's first message: a REGISTER whose manager id is free names the link (True)."""
        try:
            msg_type, body, _ = P.unpack(frames)
            mid = P.parse_register(body).manager_id.encode() if msg_type == P.REGISTER else None
        except P.ProtocolError as e:
            msg_type, mid = None, None
            logger.error("direct manager socket: malformed first message (%s); closing the link", e)
        if mid is None:
            self._reject(fd, link, f"the first message on a direct link must be REGISTER, not "
                                   f"{P.type_name(msg_type) if msg_type is not None else 'that'}")
            return False
        if mid in self.by_mid or in_use(mid):
            self._reject(fd, link, f"manager id {mid!r} is already connected")
            return False
        link.mid = mid
        self.by_mid[mid] = link
        return True

    def _reject(self, fd: int, link: Link, reason: str) -> None:
        self.refused += 1
        logger.error("direct manager socket: refused a manager: %s", reason)
        try:
            link.chan.send_nowait(P.pack_refused(reason))
        except OSError:
            pass
        self._close(fd, link, None)

    # ---- sending -----------------------------------------------------------------------------
    def send(self, mid: bytes, frames: list) -> bool:
        """Queue one message for a directly linked manager; False if its link is gone."""
        link = self.by_mid[mid]
        try:
            done = link.chan.send_nowait(frames)
        except OSError:
            return False
        fd = link.chan.fileno()
        if not done and fd not in self.writing:
            self.writing.add(fd)
            self.poller.modify(fd, _POLLIN | _POLLOUT)
        return True

    def _flush(self, fd: int, link: Link) -> None:
        try:
            done = link.chan.flush()
        except OSError:
            done = True     # the read that follows sees the link closed
        if done and fd in self.writing:
            self.writing.discard(fd)
            self.poller.modify(fd, _POLLIN)

    # ---- ending ------------------------------------------------------------------------------
    def _close(self, fd: int, link: Link, why) -> List[bytes]:
        """Forget a link; returns its manager id (to remove) if it had one."""
        self.poller.unregister(fd)
        self.writing.discard(fd)
        del self.by_fd[fd]
        link.chan.close()
        if link.mid is None:
            return []
        self.by_mid.pop(link.mid, None)
        logger.debug("direct link of manager %r closed (%s)", link.mid, why)
        return [link.mid]

    def close(self, deadline: float) -> None:
        """At exit: what is queued for each link (the SHUTDOWNs) gets until ``deadline``
        (``time.monotonic()``) to leave, as ZeroMQ's LINGER gives the ROUTER's; then all is closed."""
        for fd, link in list(self.by_fd.items()):
            try:
                link.chan.flush_until(deadline)
            except OSError:
                pass
            self._close(fd, link, "interchange exiting")
        self.listener.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass
