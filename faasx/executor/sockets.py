"""Sending and draining ZeroMQ multipart messages on the hot path, with less overhead than pyzmq's
conveniences: plain-int flags (pyzmq's enum flags cost a Python-level ``__or__`` per frame) and a
drain loop that asks ZMQ_EVENTS instead of ending every batch with a raised ``zmq.Again``.  A few
microseconds per message, on every hop of every task."""
from __future__ import annotations

from typing import List, Sequence

import zmq

_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_RCVMORE = int(zmq.RCVMORE)
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


def send(sock: zmq.Socket, frames: Sequence, nonblocking: bool = False) -> None:
    """Send one multipart message (raises zmq.ZMQError as ``send_multipart`` would)."""
    last = len(frames) - 1
    more = _SNDMORE | (_NOBLOCK if nonblocking else 0)
    for i, frame in enumerate(frames):
        sock.send(frame, more if i < last else (_NOBLOCK if nonblocking else 0))


def drain(sock: zmq.Socket, limit: int) -> List[List[bytes]]:
    """Every message waiting on ``sock`` now (at most ``limit``); never blocks."""
    out = []
    getsockopt, recv = sock.getsockopt, sock.recv
    while len(out) < limit and getsockopt(_EVENTS) & _POLLIN:
        parts = [recv(0)]
        while getsockopt(_RCVMORE):
            parts.append(recv(0))
        out.append(parts)
    return out
