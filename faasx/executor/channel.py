"""Links between processes of one host: protocol messages over an inherited Unix socketpair.

Two hops use it: manager <-> worker, and client <-> interchange (the client starts its interchange,
so they always share a host).  ZeroMQ stays the transport across the network (interchange <->
managers).  On one host ZeroMQ buys nothing and costs two thread hand-offs per message (its I/O
threads on both ends): a socketpair inherited by the child costs ~5 us one way where a ZeroMQ hop
costs ~55 us, most of a no-op task's latency.  It also tells either end the instant the other dies
(end of file), before any process poll or heartbeat would, and no other process can connect to it.

Two ways to send: ``send`` blocks until the message is written (the manager to an idle worker,
which is reading); ``send_nowait`` queues what the kernel will not take now and ``flush`` writes
more when the socket is writable again (the interchange and the client's I/O thread, which must
never block: both ends sending a large message at once would otherwise deadlock).

Framing: ``!I`` frame count, ``!Q`` per frame length, then the frames.  The frames are the same
protocol messages as everywhere else (``faasx.executor.protocol``).
"""
from __future__ import annotations

import socket
import struct
import time
from collections import deque
from itertools import islice
from typing import Deque, List, Optional, Sequence

MAX_FRAMES = 1 << 20
IOV_BATCH = 512          # buffers per sendmsg (the kernel's limit, IOV_MAX, is 1024)
_COUNT = struct.Struct("!I")
READ_SIZE = 1 << 16


class ChannelClosed(EOFError):
    """The peer closed the socket (or died)."""


class ChannelError(ValueError):
    """The byte stream is not valid framing; the channel cannot be trusted any more."""


class Channel:
    def __init__(self, sock: socket.socket, max_message: int = 1 << 31):
        self.sock = sock
        self.max_message = max_message
        self._buf = bytearray()
        self._pos = 0
        self.partial_since: Optional[float] = None   # when recv_available() last left a message half-read
        self._out: Deque = deque()                   # queued by send_nowait, not yet written

    def fileno(self) -> int:
        return self.sock.fileno()

    def buffered(self) -> bool:
        """Bytes already read but not yet returned as a message."""
        return len(self._buf) > self._pos

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # ---- sending -----------------------------------------------------------------------------
    def send(self, frames: Sequence[bytes]) -> None:
        n = len(frames)
        header = struct.pack(f"!I{n}Q", n, *[len(f) for f in frames])
        bufs = [header, *frames]
        total = len(header) + sum(len(f) for f in frames)
        sent = self.sock.sendmsg(bufs)
        if sent < total:  # a large message: send the rest in order
            remaining = sent
            for b in bufs:
                mv = memoryview(b).cast("B")
                if remaining >= len(mv):
                    remaining -= len(mv)
                    continue
                self.sock.sendall(mv[remaining:])
                remaining = 0

    def send_nowait(self, frames: Sequence[bytes]) -> bool:
        """Queue one message and write what the socket takes now; True if nothing is left queued.
        Raises ``BrokenPipeError``/``ConnectionResetError`` when the peer is gone."""
        n = len(frames)
        self._out.append(struct.pack(f"!I{n}Q", n, *[len(f) for f in frames]))
        self._out.extend(frames)
        return self.flush()

    def flush(self) -> bool:
        """Write queued bytes until the socket would block; True once the queue is empty."""
        out = self._out
        sendmsg = self.sock.sendmsg
        while out:
            try:
                sent = sendmsg(list(islice(out, IOV_BATCH)), (), socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            if not sent and len(out[0]):
                return False     # nothing taken: wait until the socket is writable
            while out:       # drop what was written, empty frames included
                size = len(out[0])
                if sent >= size:
                    out.popleft()
                    sent -= size
                else:
                    if sent:
                        out[0] = memoryview(out[0]).cast("B")[sent:]
                    break
        return True

    def flush_until(self, deadline: float) -> bool:
        """Flush, waiting for the socket to become writable until ``deadline`` (``time.monotonic()``);
        True once everything queued is written (for an orderly exit, never for the hot path)."""
        import select
        while not self.flush():
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([], [self.sock.fileno()], [], left)[1]:
                return False
        return True

    def wants_write(self) -> bool:
        """Bytes queued by ``send_nowait`` wait for the socket to become writable."""
        return bool(self._out)

    def queued_bytes(self) -> int:
        return sum(len(b) for b in self._out)

    # ---- receiving ---------------------------------------------------------------------------
    def _fill(self, block: bool) -> bool:
        """Read once more into the buffer; False if nothing was available (non-blocking)."""
        if self._pos and self._pos > len(self._buf) // 2:
            del self._buf[:self._pos]
            self._pos = 0
        try:
            chunk = self.sock.recv(READ_SIZE) if block else self.sock.recv(READ_SIZE, socket.MSG_DONTWAIT)
        except BlockingIOError:
            return False
        if not chunk:
            raise ChannelClosed("peer closed the channel")
        self._buf += chunk
        return True

    def _parse(self) -> Optional[List[bytes]]:
        """One complete message from the buffer, or None if it is not all here yet."""
        buf, pos = self._buf, self._pos
        avail = len(buf) - pos
        if avail < 4:
            return None
        (n,) = _COUNT.unpack_from(buf, pos)
        if n == 0 or n > MAX_FRAMES:
            raise ChannelError(f"invalid frame count {n}")
        head = 4 + 8 * n
        if avail < head:
            return None
        lengths = struct.unpack_from(f"!{n}Q", buf, pos + 4)
        size = sum(lengths)
        if size > self.max_message:
            raise ChannelError(f"message of {size} bytes exceeds the limit of {self.max_message}")
        if avail < head + size:
            return None
        frames = []
        at = pos + head
        for length in lengths:
            frames.append(bytes(buf[at:at + length]))
            at += length
        self._pos = at
        return frames

    def recv(self) -> List[bytes]:
        """Block until one whole message is here (socket timeouts propagate, nothing is lost)."""
        while True:
            msg = self._parse()
            if msg is not None:
                return msg
            self._fill(block=True)

    def recv_available(self) -> List[List[bytes]]:
        """Every whole message that can be read now; never blocks."""
        progressed = self._fill(block=False)
        out = []
        while True:
            msg = self._parse()
            if msg is not None:
                out.append(msg)
                continue
            if len(self._buf) - self._pos == 0:
                self.partial_since = None
                return out
            if self._fill(block=False):
                progressed = True
            else:
                # A message is half here.  Never block for the rest: a peer that stops mid-message
                # (a function scribbling on its worker's socket) would freeze the manager's loop.  The
                # poller wakes us when more bytes come; partial_since (the last progress on a half-read
                # message) lets the owner give up on a peer that never finishes.
                if progressed or self.partial_since is None:
                    self.partial_since = time.monotonic()
                return out
