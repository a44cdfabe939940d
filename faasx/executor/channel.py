"""The manager <-> worker link: protocol messages over a Unix socketpair.

The manager and its workers share a node, so this hop needs no ZeroMQ: a socketpair inherited by
the worker costs ~5 us one way where a ZeroMQ ipc hop costs ~55 us (ZeroMQ's I/O threads add two
thread hand-offs per message), which is most of a no-op task's latency.  It also tells the manager
the instant a worker dies (end of file), before any process poll would.

Framing: ``!I`` frame count, ``!Q`` per frame length, then the frames.  The frames are the same
protocol messages as everywhere else (``faasx.executor.protocol``).
"""
from __future__ import annotations

import socket
import struct
import time
from typing import List, Optional, Sequence

MAX_FRAMES = 1 << 20
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
