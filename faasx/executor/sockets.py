"""Sending and draining ZeroMQ multipart messages on the hot path, with less overhead than pyzmq's
conveniences: plain-int flags (pyzmq's enum flags cost a Python-level ``__or__`` per frame) and a
drain loop that asks one socket option per message, none per frame (see ``drain``).  A few microseconds per
message, on every hop of every task."""
from __future__ import annotations

from typing import List, Sequence

import zmq

_EVENTS = int(zmq.EVENTS)
_POLLIN = int(zmq.POLLIN)
_SNDMORE = int(zmq.SNDMORE)
_NOBLOCK = int(zmq.NOBLOCK)


# pyzmq's Cython socket methods, without the Python-level wrappers of zmq.Socket (argument checks for
# routing ids and groups, option-name enums): a few microseconds per frame, several frames a message
_base_send = zmq.backend.Socket.send
_base_recv = zmq.backend.Socket.recv
_base_get = zmq.backend.Socket.get


def send(sock: zmq.Socket, frames: Sequence, nonblocking: bool = False) -> None:
    """Send one multipart message (raises zmq.ZMQError as ``send_multipart`` would)."""
    last = len(frames) - 1
    more = _SNDMORE | (_NOBLOCK if nonblocking else 0)
    end = _NOBLOCK if nonblocking else 0
    for i, frame in enumerate(frames):
        _base_send(sock, frame, more if i < last else end)


def drain(sock: zmq.Socket, limit: int) -> List[List[bytes]]:
    """Every message waiting on ``sock`` now (at most ``limit``), each a list of bytes; never blocks.

    One ZMQ_EVENTS query per message says whether another is waiting (ending with a raised
    ``zmq.Again`` instead cost each drain an exception, and a sequential round trip was ~10 % slower);
    the frames of a message are received as ``zmq.Frame`` (``copy=False``), whose ``more`` attribute
    replaces a ZMQ_RCVMORE query per frame.  Each query builds a Python enum inside pyzmq, even
    through its Cython ``get``: 4.6 -> 3.0 us per 4-frame message in a micro-benchmark.  The rest of
    a message is there once its first frame is (ZeroMQ delivers messages whole), so those receives
    do not block."""
    out = []
    while len(out) < limit and _base_get(sock, _EVENTS) & _POLLIN:
        f = _base_recv(sock, 0, False)
        parts = [f.bytes]
        while f.more:
            f = _base_recv(sock, 0, False)
            parts.append(f.bytes)
        out.append(parts)
    return out
