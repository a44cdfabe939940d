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
    """Every message waiting on ``sock`` now (at most ``limit``); never blocks."""
    out = []
    while len(out) < limit and _base_get(sock, _EVENTS) & _POLLIN:
        parts = [_base_recv(sock, 0)]
        while _base_get(sock, _RCVMORE):
            parts.append(_base_recv(sock, 0))
        out.append(parts)
    return out
