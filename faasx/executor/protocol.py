"""The faasx wire protocol: every message that crosses a socket is built and parsed here.

A message is a ZeroMQ multipart message::

    frame 0   header   msgpack [PROTOCOL_VERSION, type, body]
    frame 1.. payloads opaque bytes (serialized arguments, results, function code)

Control data (task ids, function ids, registration, heartbeats) lives in the msgpack header, which
cannot execute code when decoded, so a hostile or corrupted frame can at worst be rejected. Payloads
are never unpickled by the interchange or the manager: only workers (which run user code anyway) and
the client (which submitted the tasks) deserialize them.

Message types and their bodies (``tid`` task id: int; ``fid`` function id: 16 bytes):

==================  ===================  ==========================================================
type                direction            body, then payload frames
==================  ===================  ==========================================================
HELLO               client -> ic         {token, versions}
WELCOME             ic -> client         {versions}
FUNCS               any -> downstream    [fid, ...]; one code frame per fid
TASKS               client -> ic -> mgr  [[tid, fid, kind, spec|nil], ...]; one payload per task
                    mgr -> worker
RESULTS             worker -> mgr -> ic  [[tid, status], ...]; one payload per result
                    ic -> client
CANCEL              client -> ic         [tid, ...] (only tasks not yet dispatched are cancelled)
COMMAND / REPLY     client <-> ic        [req_id, name, args] / [req_id, result]
EVENT               ic -> client         {kind, ...}: manager registered / refused / lost
REGISTER            mgr -> ic            {manager_id, block_id, hostname, pid, workers, prefetch,
                                          versions, token, accelerators, containers (bool),
                                          container_runtimes}
REGISTERED          ic -> mgr            {heartbeat_period, heartbeat_threshold}
REFUSED             ic -> mgr            {reason}
HEARTBEAT           both ways, each hop  {}; manager -> ic: {held, warm: [container keys],
                                          capacity?: workers + prefetch when it changed}
DRAIN               mgr -> ic            {reason}: dispatch nothing more to me
HOLD                ic -> mgr            {}: stop taking tasks, exit when idle (scale-in)
READY               worker -> mgr        {worker_id, pid, versions}
SHUTDOWN            downstream           {}: exit now
BYE                 mgr -> ic            {reason}: I am exiting
==================  ===================  ==========================================================

Result statuses: ``OK`` (payload: serialized value), ``EXCEPTION`` (payload: serialized exception),
``WORKER_LOST`` / ``MANAGER_LOST`` / ``FAILED`` (payload: msgpack [error kind, message, attempts]).
"""
from __future__ import annotations

import platform
from typing import Any, List, Sequence, Tuple

import msgpack

from faasx.version import VERSION

PROTOCOL_VERSION = 1

# message types
HELLO = 1
WELCOME = 2
FUNCS = 3
TASKS = 4
RESULTS = 5
CANCEL = 6
COMMAND = 7
REPLY = 8
EVENT = 9
REGISTER = 10
REGISTERED = 11
REFUSED = 12
HEARTBEAT = 13
DRAIN = 14
HOLD = 15
READY = 16
SHUTDOWN = 17
BYE = 18

TYPE_NAMES = {v: k for k, v in list(globals().items()) if k.isupper() and isinstance(v, int)
              and k not in ("PROTOCOL_VERSION",)}

# result statuses
OK = 0
EXCEPTION = 1
WORKER_LOST = 2
MANAGER_LOST = 3
FAILED = 4

# task kinds
KIND_CALL = 0   # fn(*args, **kwargs)
KIND_MAP = 1    # [fn(*a) for a in args_list]: a chunk of a map()

FID_SIZE = 16

_packb = msgpack.Packer(use_bin_type=True).pack


class ProtocolError(ValueError):
    """A message that is not a well-formed faasx message of this protocol version."""


def versions() -> dict:
    """What must match between the processes of one executor."""
    import dill
    return {
        "protocol": PROTOCOL_VERSION,
        "faasx": VERSION,
        "python": platform.python_version(),
        "dill": dill.__version__,
    }


def version_mismatch(ours: dict, theirs: Any) -> dict:
    """The keys on which two ``versions()`` dicts differ ({} when they agree).

    Python must agree on major.minor only: bytecode and pickles are compatible across patch releases.
    """
    if not isinstance(theirs, dict):
        return {"versions": (ours, theirs)}
    diff = {}
    for key in ("protocol", "faasx", "python", "dill"):
        a, b = ours.get(key), theirs.get(key)
        if key == "python" and isinstance(a, str) and isinstance(b, str):
            a, b = a.rsplit(".", 1)[0], b.rsplit(".", 1)[0]
        if a != b:
            diff[key] = (ours.get(key), theirs.get(key))
    return diff


def pack(msg_type: int, body: Any = None, payloads: Sequence[bytes] = ()) -> List[bytes]:
    """Build one message as a list of frames."""
    header = _packb([PROTOCOL_VERSION, msg_type, body])
    if payloads:
        return [header, *payloads]
    return [header]


def unpack(frames: Sequence[Any]) -> Tuple[int, Any, Sequence[Any]]:
    """Parse a message into (type, body, payload frames); raise ProtocolError if malformed."""
    if not frames:
        raise ProtocolError("empty message")
    head = frames[0]
    try:
        decoded = msgpack.unpackb(head if isinstance(head, (bytes, bytearray, memoryview)) else head.buffer,
                                  raw=False, strict_map_key=False)
    except Exception as e:
        raise ProtocolError(f"undecodable header ({type(e).__name__}: {e})") from None
    if not isinstance(decoded, list) or len(decoded) != 3:
        raise ProtocolError("header is not [version, type, body]")
    version, msg_type, body = decoded
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    if not isinstance(msg_type, int) or isinstance(msg_type, bool) or msg_type not in TYPE_NAMES:
        raise ProtocolError(f"unknown message type {msg_type!r}")
    return msg_type, body, frames[1:]


def check_items(body: Any, payloads: Sequence[Any], width: int) -> list:
    """Validate a TASKS/RESULTS/FUNCS body: a list of records matching the payload frames one to one."""
    if not isinstance(body, list) or len(body) != len(payloads):
        raise ProtocolError(f"body has {len(body) if isinstance(body, list) else 'no'} records "
                            f"for {len(payloads)} payload frames")
    if width:
        for rec in body:
            if not isinstance(rec, list) or len(rec) != width or not isinstance(rec[0], int):
                raise ProtocolError(f"malformed record {rec!r:.80}")
    return body


def check_funcs(body: Any, payloads: Sequence[Any]) -> list:
    check_items(body, payloads, 0)
    for fid in body:
        if not isinstance(fid, bytes) or len(fid) != FID_SIZE:
            raise ProtocolError(f"malformed function id {fid!r:.40}")
    return body


def check_tasks(body: Any, payloads: Sequence[Any]) -> list:
    check_items(body, payloads, 4)
    for rec in body:
        fid = rec[1]
        if not isinstance(fid, bytes) or len(fid) != FID_SIZE or rec[2] not in (KIND_CALL, KIND_MAP) \
                or not (rec[3] is None or isinstance(rec[3], dict)):
            raise ProtocolError(f"malformed task record {rec!r:.80}")
    return body


def check_results(body: Any, payloads: Sequence[Any]) -> list:
    check_items(body, payloads, 2)
    for rec in body:
        if rec[1] not in (OK, EXCEPTION, WORKER_LOST, MANAGER_LOST, FAILED):
            raise ProtocolError(f"malformed result record {rec!r:.80}")
    return body


def failure_payload(kind: str, message: str, attempts: int = 0) -> bytes:
    """Payload of a WORKER_LOST / MANAGER_LOST / FAILED result."""
    return _packb([kind, message, attempts])


def parse_failure(payload: bytes) -> Tuple[str, str, int]:
    try:
        kind, message, attempts = msgpack.unpackb(payload, raw=False)
        return str(kind), str(message), int(attempts)
    except Exception:
        return "FAILED", f"undecodable failure record {bytes(payload)[:60]!r}", 0
