"""The faasx wire protocol, version 1: the specification, and the only code that builds or reads a message.

This module is the spec in the style of the ZeroMQ RFCs (Majordomo, 7/MDP): the key words MUST,
MUST NOT, SHOULD and MAY are used as in RFC 2119.  Every message on every hop is built by a
``pack_*`` function below and read by ``unpack`` plus a ``parse_*`` function; no other module writes
a header or a message body by hand.

1. Hops and transports
----------------------

=====================  ==========================================  =============================
hop                    transport                                   who starts it
=====================  ==========================================  =============================
client <-> interchange Unix socketpair, inherited by the child     the client spawns the
                       (``faasx.executor.channel``)                interchange (``spawn``)
interchange <-> mgr    on the interchange's host: a Unix socket    the manager connects
                       file in the run's 0700 directory, Channel
                       framing (``faasx.executor.direct``);
                       elsewhere ZeroMQ: manager DEALER ->
                       interchange ROUTER, TCP (CurveZMQ when
                       encrypted; ipc, a socket file in the run
                       directory, when direct links are off)
manager <-> worker     Unix socketpair inherited by the worker, or  the manager starts workers
                       a Unix socket a container worker connects to
=====================  ==========================================  =============================

2. Message framing
------------------

A message is a list of frames::

    frame 0    header    msgpack array [PROTOCOL_VERSION, type, body]
    frame 1..n payloads  opaque bytes, one per record of the body (TASKS, RESULTS, FUNCS only)

On a socketpair (``Channel``) a message is written as one unit: a ``!I`` big-endian frame count,
one ``!Q`` length per frame, then the frames back to back.  A reader that sees a count or a length
over its limit MUST treat the stream as corrupt and close it (``ChannelError``): framing cannot be
resynchronised.

On the manager hop each message is a ZeroMQ multipart message.  The manager's DEALER socket sets
its ZeroMQ identity (``IDENTITY``) to its manager id (bytes), so at the interchange's ROUTER every
message arrives with one extra frame in front, the identity, and every message the interchange
sends starts with the identity of the manager it is for::

    ROUTER side:  [manager id, header, payload...]        DEALER side:  [header, payload...]

The ROUTER uses ``ROUTER_MANDATORY`` (a send to a manager whose connection is gone fails, and the
interchange then removes that manager) and has ``ROUTER_HANDOVER`` off: manager ids are public (they
name log files), so a second connection presenting a registered id must not take over its route.

On a direct link (a manager on the interchange's host) the messages are those of the DEALER side,
in ``Channel`` framing.  The first message on a link MUST be REGISTER; its ``manager_id`` is the
link's identity from then on.  The interchange MUST check the peer's uid (``SO_PEERCRED``: the run's
user or root) before reading, and MUST refuse (REFUSED, then close) a first message that is not a
REGISTER or names an id already connected on any link; it drops a ZeroMQ message that names a
directly linked manager.  A link that closes removes its manager at once.

The header is msgpack, which cannot execute code when decoded: a hostile or corrupt header can at
worst be rejected (``ProtocolError``).  A receiver MUST reject a header that is not a 3-element
array, has a version other than ``PROTOCOL_VERSION``, or a type not in ``TYPE_NAMES``.  Payloads are
never deserialized by the interchange or the manager: only workers (which run user code anyway)
and the client (which submitted the tasks) unpickle them.

3. Records
----------

``tid`` is a task id (int, unique per client, >= 1); ``fid`` a function id (16 bytes: the content
hash of its serialized code, ``FID_SIZE``).

* A task record in a TASKS body is ``[tid, fid, kind, spec]``; ``kind`` is ``KIND_CALL`` (the payload
  is ``(args, kwargs)``) or ``KIND_MAP`` (the payload is ``(args_list, {})``: a chunk of ``map()``);
  ``spec`` is nil or a map (resource spec: ``priority``, ``cores``, ``memory``, ``gpus``,
  ``container``, ``mpi`` -- MPI mode's request, to which the manager adds the task's nodes and
  environment before it goes to a worker, ``faasx.executor.mpi`` ...).  In code it is a ``Task`` (the record plus its payload frame).
* A result record in a RESULTS body is ``[tid, status]``.  ``status`` is ``OK`` (payload: the
  serialized value), ``EXCEPTION`` (payload: the serialized exception), or ``WORKER_LOST``,
  ``MANAGER_LOST``, ``FAILED`` (payload: msgpack ``[error kind, message, attempts]``,
  ``failure_payload``).  In code it is a ``Result``.
* A FUNCS body is ``[fid, ...]``, one code frame (dill) per fid.

A TASKS, RESULTS or FUNCS body MUST have exactly one record per payload frame, in order.

A sender MUST NOT put more than ``BATCH_BYTES`` of payload into one TASKS or RESULTS message unless
the message holds a single record (``chunks_by_bytes``): every receiver accepts a message of
``max_payload_size`` + 16 MiB, so no task within ``max_payload_size`` ever fails because of how it
was batched.

4. Messages
-----------

==========  ====================  ===========================================================
type        direction             body (then payload frames)
==========  ====================  ===========================================================
HELLO       client -> ic          {token, versions}
WELCOME     ic -> client          {versions}
FUNCS       client -> ic,         [fid, ...]; one code frame per fid
            ic -> mgr, mgr -> wkr
TASKS       client -> ic,         [[tid, fid, kind, spec], ...]; one payload frame per task
            ic -> mgr, mgr -> wkr
RESULTS     wkr -> mgr, mgr -> ic [[tid, status], ...]; one payload frame per result
            ic -> client
CANCEL      client -> ic,         [tid, ...]
            ic -> mgr
STARTED     mgr -> ic,            [tid, ...]: tasks a worker has taken
            ic -> client
TERMINATE   client -> ic,         [tid, ...]: stop these tasks, running or not
            ic -> mgr
COMMAND     client -> ic          [req_id, name, args]; req_id >= 1
REPLY       ic -> client          [req_id, result]; req_id 0: [0, [tid, ...]] confirms a CANCEL
EVENT       ic -> client          {kind: "registered", manager, block_id, workers}
                                  {kind: "refused", manager, reason, interchange_versions,
                                   manager_versions}
                                  {kind: "lost", manager, block_id, reason, requeued, failed}
REGISTER    mgr -> ic             {manager_id, block_id, hostname, pid, workers, prefetch, versions,
                                   token, accelerators, containers (bool), container_runtimes,
                                   walltime_left (optional), host_id (optional)}
REGISTERED  ic -> mgr             {heartbeat_period, heartbeat_threshold}
REFUSED     ic -> mgr             {reason}
HEARTBEAT   client <-> ic,        {}
            ic -> mgr
            mgr -> ic             {held, warm: [container key, ...]}, or
                                  {held, capacity: workers + prefetch} when the prefetch changed
DRAIN       mgr -> ic             {reason}
HOLD        ic -> mgr             {}
READY       wkr -> mgr            {worker_id, pid, versions}
SHUTDOWN    client -> ic          {}
            ic -> mgr             {reason}
            mgr -> wkr            {}
BYE         mgr -> ic             {reason, lost: [tid, ...]}
==========  ====================  ===========================================================

``versions`` is the map of ``versions()``; two ends are compatible when ``version_mismatch`` finds
no difference.

5. Dialogs
----------

Client and interchange (``EngineClient``, ``Interchange.handle_client``):

* The client MUST send HELLO first, with the run token it gave the interchange at spawn; the
  interchange answers WELCOME.  Until a valid HELLO the interchange drops every message unanswered
  (a wrong token gets no reply: the client reports the interchange lost after its start timeout).
* The client MUST send the FUNCS carrying a function's code before (or in the same write as, but
  earlier than) the first TASKS that uses its fid.  A task whose fid the interchange has no code
  for is answered at once with a FAILED result; nothing is dispatched for it.
* Every task the client sends MUST be answered by exactly one RESULTS record for its tid, unless
  the client cancelled it: CANCEL asks the interchange to drop queued tasks; the interchange answers
  one REPLY with req_id 0, ``[0, [tid, ...]]``, listing the tasks it dropped.  Those tasks MUST
  NOT be answered later, and the client MAY forget them.  A cancelled task already dispatched is
  not listed: the interchange forwards the CANCEL to the manager holding it (see below), and its
  result arrives as usual (the client discards it).
* STARTED ``[tid, ...]`` from the interchange: workers have taken these tasks (forwarded from their
  managers, only for tasks the sending manager owns).  The client marks their futures running(),
  after which cancel() returns False, as ``concurrent.futures`` requires of a running task.
* COMMAND ``[req_id, name, args]`` is answered by REPLY ``[req_id, result]``; req_id MUST be >= 1
  (0 is reserved for cancel confirmations).  Names: ``managers``, ``connected_blocks``,
  ``outstanding``, ``hold_block`` (args: a block id), ``stats``; an unknown name is answered
  ``{"error": ...}``.
* EVENT tells the client about managers: registered, refused (with both version maps, so that the
  client can fail its futures with ``VersionMismatch``), lost (how many of its tasks were requeued
  and how many failed).
* Both ends send HEARTBEAT every ``heartbeat_period``; any message counts as a sign of life.  The
  client fails every pending future when the interchange is silent past ``heartbeat_threshold``.
  The interchange MUST NOT treat a silent client as gone (its I/O thread may be held up by a main
  thread keeping the GIL in a long C call): it exits when the socketpair closes or the client
  process is gone (its parent pid changes), which it sees at once.
* SHUTDOWN from the client: the interchange sends SHUTDOWN to every manager and exits.

Interchange and manager (``Interchange.handle_manager``, ``Manager``):

* The manager MUST send REGISTER first.  The interchange answers REGISTERED, or REFUSED (malformed
  registration, wrong token, version mismatch) and the manager exits.  A message from a peer that
  has not registered is dropped, except that a manager id the interchange declared lost is answered
  REFUSED whatever it sends: its tasks were re-dispatched and MUST NOT run twice.
* The interchange MUST send the FUNCS for a fid to a manager before the first TASKS to that manager
  that uses it (it records which functions each manager has).  The same holds from manager to
  worker; a worker that lacks a function's code answers its tasks with FAILED.
* The interchange MUST accept a result only from the manager that owns the task, and a manager only
  from the worker that holds it; any other result is dropped as a duplicate or a forgery.
* WORKER_LOST from a manager means a worker died holding the task: the interchange re-dispatches it
  until ``max_retries_on_system_failure`` is spent, then sends the client WORKER_LOST.
* The manager sends HEARTBEAT every ``heartbeat_period`` (and at once when its warm containers
  change), ``capacity`` when its prefetch changed by more than a quarter.  The interchange sends
  HEARTBEAT to every manager each period and removes a manager silent past ``heartbeat_threshold``;
  a manager exits when the interchange is silent that long.
* DRAIN: dispatch nothing more to this manager (it finishes what it holds, then says BYE).  HOLD:
  the interchange asks the manager to drain (scale-in); the manager does not answer DRAIN.
* CANCEL ``[tid, ...]`` to a manager: the client cancelled these tasks.  The manager MUST drop
  those no worker has taken yet and answer each with a FAILED result (which completes it at the
  interchange); one a worker has taken runs on and is answered as usual.
* STARTED ``[tid, ...]``: the manager has handed these tasks to a worker.  It SHOULD send it only
  for tasks still unanswered ``STARTED_DELAY`` after it handed out the oldest of them (a result
  implies it), so short tasks cost no message; the interchange forwards those it still records as
  owned by that manager to the client.
* TERMINATE ``[tid, ...]``: the user asked to stop these tasks even if running.  The interchange
  fails those still queued there at once (a FAILED result of kind ``Terminated``) and forwards the
  others to their managers.  A manager answers each with such a result: one still queued is
  dropped; for one at a worker it MUST kill that worker's whole process group (the function's
  children too) and start a replacement, reporting the worker's other tasks WORKER_LOST.
* A task whose spec has ``walltime`` (seconds) is handed to a worker alone; if it has not finished
  ``walltime`` seconds after that, the manager kills the worker's process group as for TERMINATE and
  answers it with a FAILED result of kind ``TaskTimeout`` (a limit the user set, never retried).
  The interchange MUST NOT dispatch such a task to a manager whose REGISTER said ``walltime_left``
  (seconds until its block ends, from ``FAASX_WALLTIME_END``) less than the walltime, counted
  from its registration; absent or null means no limit.  A task no active manager has time left
  for is failed after ``heartbeat_threshold`` seconds (a longer block may register meanwhile).
  ``walltime_left`` is optional, so it did not change ``PROTOCOL_VERSION``: an interchange that
  ignores it only loses the placement, and a manager that omits it is taken to have no limit.
* A task payload of codec ``S`` (``faasx.executor.payloads``) refers to a shared-memory file on the
  interchange's host.  The interchange MUST NOT send one to a manager whose REGISTER ``host_id``
  differs from its own or is absent: it sends the same content inline (codec ``B``) instead.
  ``host_id`` is optional, so it did not change ``PROTOCOL_VERSION``.
* BYE: the manager is exiting.  ``lost`` lists the tasks it still held, for the log; the interchange
  MUST NOT rely on it, and requeues every task its own ownership record gives that manager.
* SHUTDOWN: the manager MUST stop its workers and exit (it says BYE first).

Manager and worker (``Manager``, ``faasx.executor.worker``):

* The worker MUST send READY first; the manager assigns tasks only to ready workers.  A container
  worker whose versions differ is refused (its tasks fail with a clear error).
* The manager sends FUNCS and TASKS; the worker answers RESULTS (batched: a flush at most every
  ``FLUSH_INTERVAL`` of a long batch, checked as each task ends, and the results finished before a
  task that has run ``EARLY_SEND`` while it runs; ``faasx.executor.worker.ResultFlusher``).  A batch's
  results may so come in several messages.  SHUTDOWN: exit now.

6. Versioning
-------------

``PROTOCOL_VERSION`` MUST change whenever a header, a body or a dialog above changes incompatibly;
a peer of another version is rejected at the header (and refused at REGISTER with the versions
named, as are peers of another faasx, Python major.minor or dill version).
"""
from __future__ import annotations

import platform
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

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
STARTED = 19
TERMINATE = 20

TYPE_NAMES: Dict[int, str] = {
    HELLO: "HELLO", WELCOME: "WELCOME", FUNCS: "FUNCS", TASKS: "TASKS", RESULTS: "RESULTS",
    CANCEL: "CANCEL", COMMAND: "COMMAND", REPLY: "REPLY", EVENT: "EVENT", REGISTER: "REGISTER",
    REGISTERED: "REGISTERED", REFUSED: "REFUSED", HEARTBEAT: "HEARTBEAT", DRAIN: "DRAIN", HOLD: "HOLD",
    READY: "READY", SHUTDOWN: "SHUTDOWN", BYE: "BYE", STARTED: "STARTED", TERMINATE: "TERMINATE",
}

# result statuses
OK = 0
EXCEPTION = 1
WORKER_LOST = 2
MANAGER_LOST = 3
FAILED = 4
STATUSES = frozenset((OK, EXCEPTION, WORKER_LOST, MANAGER_LOST, FAILED))

# the error kinds of failure payloads, and the status each travels under
FAILURE_STATUS = {"WorkerLost": WORKER_LOST, "ManagerLost": MANAGER_LOST, "FAILED": FAILED}

# task kinds
KIND_CALL = 0   # fn(*args, **kwargs)
KIND_MAP = 1    # [fn(*a) for a in args_list]: a chunk of a map()
KINDS = (KIND_CALL, KIND_MAP)

CANCEL_CONFIRMED = 0   # the REPLY req_id that confirms a CANCEL

FID_SIZE = 16

BATCH_BYTES = 8 << 20  # payload bytes per TASKS/RESULTS message, beyond which a batch is split

STARTED_DELAY = 0.01   # seconds a task handed to a worker may finish in before its manager reports STARTED

_packb = msgpack.Packer(use_bin_type=True).pack
_new_tuple = tuple.__new__   # builds a record without NamedTuple.__new__'s Python frame (hot path)


class ProtocolError(ValueError):
    """A message that is not a well-formed faasx message of this protocol version."""


# ---- records ---------------------------------------------------------------------------------

class Task(NamedTuple):
    """A task record and its payload frame (a TASKS body row plus the frame that goes with it)."""
    tid: int
    fid: bytes
    kind: int
    spec: Optional[dict]
    payload: Any


class Result(NamedTuple):
    """A result record and its payload frame (a RESULTS body row plus the frame that goes with it)."""
    tid: int
    status: int
    payload: Any


class Registration(NamedTuple):
    """A manager's REGISTER body."""
    manager_id: Any
    block_id: str
    hostname: Any
    pid: Any
    workers: int
    prefetch: int
    versions: Any
    token: Any
    accelerators: Any
    containers: Any
    container_runtimes: Any
    walltime_left: Optional[float] = None       # seconds until the block ends; None: no limit
    host_id: Optional[str] = None               # payloads.host_id(); None: treated as another host


class ManagerHeartbeat(NamedTuple):
    """A manager's HEARTBEAT body; a field it did not send (or sent ill-typed) is None."""
    held: Optional[int]
    warm: Optional[List[str]]
    capacity: Optional[int]


class Command(NamedTuple):
    req_id: int
    name: str
    args: Any


class Bye(NamedTuple):
    reason: str
    lost: List[int]


class Ready(NamedTuple):
    worker_id: Any
    pid: Any
    versions: Any


# ---- versions --------------------------------------------------------------------------------

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


# ---- framing ---------------------------------------------------------------------------------

def pack(msg_type: int, body: Any = None, payloads: Sequence[bytes] = ()) -> List[bytes]:
    """One message as a list of frames (the primitive under every ``pack_*``)."""
    header = _packb([PROTOCOL_VERSION, msg_type, body])
    if payloads:
        return [header, *payloads]
    return [header]


def unpack(frames: Sequence[Any]) -> Tuple[int, Any, Sequence[Any]]:
    """Parse a message into (type, body, payload frames); raise ProtocolError if malformed."""
    if not frames:
        raise ProtocolError("empty message")
    decoded = _decode_header(frames[0])
    if not isinstance(decoded, list) or len(decoded) != 3:
        raise ProtocolError("header is not [version, type, body]")
    version, msg_type, body = decoded
    if version != PROTOCOL_VERSION:
        raise ProtocolError(f"protocol version {version!r}, expected {PROTOCOL_VERSION}")
    if type(msg_type) is not int or msg_type not in TYPE_NAMES:
        raise ProtocolError(f"unknown message type {msg_type!r}")
    return msg_type, body, frames[1:]


def _decode_header(head: Any) -> Any:
    raw = head if isinstance(head, (bytes, bytearray, memoryview)) else head.buffer   # a zmq.Frame
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except Exception as e:
        raise ProtocolError(f"undecodable header ({type(e).__name__}: {e})") from None


def type_name(msg_type: int) -> str:
    return TYPE_NAMES.get(msg_type, repr(msg_type))


# ---- FUNCS, TASKS, RESULTS: the hot path -----------------------------------------------------

def pack_funcs(fids: Sequence[bytes], codes: Sequence[bytes]) -> List[bytes]:
    return pack(FUNCS, list(fids), codes)


def parse_funcs(body: Any, payloads: Sequence[Any]) -> List[Tuple[bytes, Any]]:
    """[(fid, code), ...] of a FUNCS message."""
    _check_one_per_frame(body, payloads)
    for fid in body:
        if not isinstance(fid, bytes) or len(fid) != FID_SIZE:
            raise ProtocolError(f"malformed function id {fid!r:.40}")
    return list(zip(body, payloads))


def pack_tasks(tasks: Iterable[Any]) -> List[bytes]:
    """A TASKS message from ``Task``s (or any records with tid, fid, kind, spec and payload)."""
    tasks = tasks if isinstance(tasks, (list, tuple)) else list(tasks)
    return pack(TASKS, [[t.tid, t.fid, t.kind, t.spec] for t in tasks], [t.payload for t in tasks])


def parse_tasks(body: Any, payloads: Sequence[Any], record: Any = Task) -> list:
    """The tasks of a TASKS message, each built as ``record(tid, fid, kind, spec, payload)``.

    ``record`` lets the interchange build its ``TaskRecord`` directly instead of a ``Task`` first."""
    _check_one_per_frame(body, payloads)
    new, named = _new_tuple, record is Task
    out = []
    for rec, payload in zip(body, payloads):
        if type(rec) is not list or len(rec) != 4:
            raise ProtocolError(f"malformed task record {rec!r:.80}")
        tid, fid, kind, spec = rec
        if type(tid) is not int or type(fid) is not bytes or len(fid) != FID_SIZE or kind not in KINDS \
                or not (spec is None or type(spec) is dict):
            raise ProtocolError(f"malformed task record {rec!r:.80}")
        out.append(new(Task, (tid, fid, kind, spec, payload)) if named else record(tid, fid, kind, spec, payload))
    return out


def pack_results(results: Sequence[Result]) -> List[bytes]:
    return pack(RESULTS, [[r.tid, r.status] for r in results], [r.payload for r in results])


def parse_results(body: Any, payloads: Sequence[Any]) -> List[Result]:
    _check_one_per_frame(body, payloads)
    new, statuses = _new_tuple, STATUSES
    out = []
    for rec, payload in zip(body, payloads):
        if type(rec) is not list or len(rec) != 2 or type(rec[0]) is not int or rec[1] not in statuses:
            raise ProtocolError(f"malformed result record {rec!r:.80}")
        out.append(new(Result, (rec[0], rec[1], payload)))
    return out


def chunks_by_bytes(items: Sequence[Any], size: Any = None, limit: int = BATCH_BYTES) -> List[Sequence[Any]]:
    """``items`` cut into consecutive runs whose payloads add up to at most ``limit`` bytes (an item
    bigger than that goes alone).  ``size(item)`` defaults to ``len(item.payload)``.  One slice, no
    copy, in the usual case of a batch that fits."""
    out: List[Sequence[Any]] = []
    start, total = 0, 0
    for i, item in enumerate(items):
        n = len(item.payload) if size is None else size(item)
        if total + n > limit and i > start:
            out.append(items[start:i])
            start, total = i, 0
        total += n
    out.append(items[start:])
    return out


def _check_one_per_frame(body: Any, payloads: Sequence[Any]) -> None:
    if not isinstance(body, list) or len(body) != len(payloads):
        raise ProtocolError(f"body has {len(body) if isinstance(body, list) else 'no'} records "
                            f"for {len(payloads)} payload frames")


def failure_payload(kind: str, message: str, attempts: int = 0) -> bytes:
    """Payload of a WORKER_LOST / MANAGER_LOST / FAILED result."""
    return _packb([kind, message, attempts])


def failed_result(tid: int, kind: str, message: str, attempts: int = 0) -> Result:
    """A result that reports a failure the engine (not the function) detected; ``kind`` is
    "WorkerLost", "ManagerLost" or "FAILED"."""
    return Result(tid, FAILURE_STATUS.get(kind, FAILED), failure_payload(kind, message, attempts))


def parse_failure(payload: bytes) -> Tuple[str, str, int]:
    try:
        kind, message, attempts = msgpack.unpackb(payload, raw=False)
        return str(kind), str(message), int(attempts)
    except Exception:
        return "FAILED", f"undecodable failure record {bytes(payload)[:60]!r}", 0


# ---- client <-> interchange ------------------------------------------------------------------

def pack_hello(token: str) -> List[bytes]:
    return pack(HELLO, {"token": token, "versions": versions()})


def hello_token(body: Any) -> Optional[str]:
    """The token of a HELLO body (None if there is none)."""
    return body.get("token") if isinstance(body, dict) else None


def pack_welcome(ours: dict) -> List[bytes]:
    return pack(WELCOME, {"versions": ours})


def pack_cancel(tids: Sequence[int]) -> List[bytes]:
    return pack(CANCEL, list(tids))


def parse_cancel(body: Any) -> List[int]:
    if not isinstance(body, list):
        raise ProtocolError("CANCEL body must be a list of task ids")
    return [t for t in body if type(t) is int]


def pack_started(tids: Sequence[int]) -> List[bytes]:
    return pack(STARTED, list(tids))


def parse_started(body: Any) -> List[int]:
    if not isinstance(body, list):
        raise ProtocolError("STARTED body must be a list of task ids")
    return [t for t in body if type(t) is int]


def pack_terminate(tids: Sequence[int]) -> List[bytes]:
    return pack(TERMINATE, list(tids))


def parse_terminate(body: Any) -> List[int]:
    if not isinstance(body, list):
        raise ProtocolError("TERMINATE body must be a list of task ids")
    return [t for t in body if type(t) is int]


def pack_cancel_confirmed(tids: Sequence[int]) -> List[bytes]:
    """The REPLY to a CANCEL: these tasks were dropped and will never be answered."""
    return pack(REPLY, [CANCEL_CONFIRMED, list(tids)])


def pack_command(req_id: int, name: str, args: Any) -> List[bytes]:
    return pack(COMMAND, [req_id, name, args])


def parse_command(body: Any) -> Command:
    if not isinstance(body, list) or len(body) != 3:
        raise ProtocolError("COMMAND body must be [req_id, name, args]")
    return Command(*body)


def pack_reply(req_id: int, result: Any) -> List[bytes]:
    return pack(REPLY, [req_id, result])


def parse_reply(body: Any) -> Tuple[int, Any]:
    """(req_id, result); req_id ``CANCEL_CONFIRMED`` carries the list of cancelled task ids."""
    if not isinstance(body, list) or len(body) != 2 or type(body[0]) is not int:
        raise ProtocolError("REPLY body must be [req_id, result]")
    return body[0], body[1]


def pack_event_registered(manager: str, block_id: str, workers: int) -> List[bytes]:
    return pack(EVENT, {"kind": "registered", "manager": manager, "block_id": block_id, "workers": workers})


def pack_event_refused(manager: str, reason: str, interchange_versions: dict,
                       manager_versions: Any) -> List[bytes]:
    return pack(EVENT, {"kind": "refused", "manager": manager, "reason": reason,
                        "interchange_versions": interchange_versions, "manager_versions": manager_versions})


def pack_event_lost(manager: str, block_id: str, reason: str, requeued: int, failed: int) -> List[bytes]:
    return pack(EVENT, {"kind": "lost", "manager": manager, "block_id": block_id, "reason": reason,
                        "requeued": requeued, "failed": failed})


def parse_event(body: Any) -> dict:
    """An EVENT body: a map with a str ``kind`` (the fields per kind are in the table above)."""
    if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
        raise ProtocolError("EVENT body must be a map with a 'kind'")
    return body


def pack_heartbeat() -> List[bytes]:
    """HEARTBEAT as the client and the interchange send it (the manager's carries its state)."""
    return pack(HEARTBEAT, {})


def pack_shutdown(reason: Optional[str] = None) -> List[bytes]:
    """SHUTDOWN: {} from the client and the manager, {reason} from the interchange."""
    return pack(SHUTDOWN, {"reason": reason} if reason else {})


def parse_reason(body: Any, default: str = "") -> str:
    """The ``reason`` of a REFUSED, DRAIN, SHUTDOWN or BYE body."""
    reason = body.get("reason") if isinstance(body, dict) else None
    return str(reason) if reason else default


# ---- interchange <-> manager -----------------------------------------------------------------

def pack_register(reg: Registration) -> List[bytes]:
    return pack(REGISTER, reg._asdict())


def parse_register(body: Any) -> Registration:
    """A REGISTER body; ProtocolError("malformed registration") if it cannot be one."""
    if not isinstance(body, dict) or type(body.get("workers")) is not int or body["workers"] < 1:
        raise ProtocolError("malformed registration")
    prefetch = body.get("prefetch")
    fields = {k: body.get(k) for k in Registration._fields}
    left = body.get("walltime_left")
    if left is not None and (type(left) not in (int, float) or left != left):
        raise ProtocolError(f"malformed registration: walltime_left {left!r} is not a number of seconds")
    host = body.get("host_id")
    fields.update(block_id=str(body.get("block_id")), prefetch=prefetch if type(prefetch) is int else 0,
                  host_id=host if type(host) is str else None,
                  walltime_left=max(0.0, float(left)) if left is not None else None)
    return Registration(**fields)


def pack_registered(heartbeat_period: float, heartbeat_threshold: float) -> List[bytes]:
    return pack(REGISTERED, {"heartbeat_period": heartbeat_period, "heartbeat_threshold": heartbeat_threshold})


def pack_refused(reason: str) -> List[bytes]:
    return pack(REFUSED, {"reason": reason})


def pack_manager_heartbeat(held: int, warm: Optional[List[str]] = None,
                           capacity: Optional[int] = None) -> List[bytes]:
    body: Dict[str, Any] = {"held": held}
    if warm is not None:
        body["warm"] = warm
    if capacity is not None:
        body["capacity"] = capacity
    return pack(HEARTBEAT, body)


def parse_manager_heartbeat(body: Any) -> ManagerHeartbeat:
    if not isinstance(body, dict):
        return ManagerHeartbeat(None, None, None)
    held, warm, capacity = body.get("held"), body.get("warm"), body.get("capacity")
    return ManagerHeartbeat(held if type(held) is int else None,
                            [k for k in warm if isinstance(k, str)] if isinstance(warm, list) else None,
                            capacity if type(capacity) is int else None)


def pack_drain(reason: str) -> List[bytes]:
    return pack(DRAIN, {"reason": reason})


def pack_hold() -> List[bytes]:
    return pack(HOLD, {})


def pack_bye(reason: str, lost: Sequence[int]) -> List[bytes]:
    return pack(BYE, {"reason": reason, "lost": list(lost)})


def parse_bye(body: Any) -> Bye:
    lost = body.get("lost") if isinstance(body, dict) else None
    return Bye(parse_reason(body), [t for t in lost if type(t) is int] if isinstance(lost, list) else [])


# ---- manager <-> worker ----------------------------------------------------------------------

def pack_ready(worker_id: Any, pid: int) -> List[bytes]:
    return pack(READY, {"worker_id": worker_id, "pid": pid, "versions": versions()})


def parse_ready(body: Any) -> Ready:
    if not isinstance(body, dict):
        return Ready(None, None, None)
    return Ready(body.get("worker_id"), body.get("pid"), body.get("versions"))
