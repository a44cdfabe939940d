"""Hostile and broken input on every channel (issue 4, invariant 3): the interchange's manager port,
its link to the client, and the manager's worker channel.

* Manager port: property-based fuzzing (hypothesis) with our own ZeroMQ DEALER sockets -- random
  bytes, well-formed msgpack headers of every message type with random bodies, truncated and
  mismatched real messages, replayed real messages and oversized frames.  Each message the
  interchange receives must be counted in ``malformed`` (or, for REGISTER, in ``managers_refused``),
  exactly; afterwards the executor must still serve real tasks correctly.
* Client link: an inherited socketpair, so no stranger can reach it (the interchange listens on the
  manager port and nothing else).  The only writer is our own client, so broken messages there mean
  a faasx bug; the same fuzzing, written into the real link, must be counted and survived.
* Replays: a replayed REGISTER with a wrong token is refused with the reason; forged RESULTS from a
  stranger must not resolve a future.
* Worker channel: the manager and its workers talk over an inherited socketpair, so the party that
  can write on it is the user's function itself.  Functions write garbage, truncated frames, absurd
  lengths and forged results there; the manager must neither hang nor crash nor accept a result for
  a task the writing worker does not hold.
"""
from __future__ import annotations

import os
import time

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from faasx.errors import WorkerLost
from faasx.executor import protocol as P
from faasx.executor.direct import direct_path
from faasx.executor.serialization import serialize

from .conftest import shared_executor, interchange_log, log_text, wait_until

LIMIT = 1 << 20
T = 60


@pytest.fixture(scope="module")
def ex(tmp_path_factory):
    yield from shared_executor(tmp_path_factory, "fuzz", LIMIT)


@pytest.fixture(scope="module")
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)     # closes every socket a failed test left open; term() alone would wait


def dealer(ctx, ex, port_name: str, identity: bytes = None) -> zmq.Socket:
    """A stranger on the manager port that holds the run's CurveZMQ keys (without them it could not send
    a single frame past the handshake: tests/security), so that what is fuzzed is faasx's own parsing."""
    from faasx.executor.security import configure_client
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if identity:
        sock.setsockopt(zmq.IDENTITY, identity)
    configure_client(sock, os.path.join(ex.executor.logdir, "certs"))
    sock.connect(f"tcp://127.0.0.1:{ex.executor._client.ports[port_name]}")
    return sock


def inject(ex, frames) -> None:
    """Write one message into the real client -> interchange link, as the client's own code does."""
    client = ex.executor._client
    with client._send_lock:
        client.link.send_nowait([bytes(f) for f in frames])
    client._wake()     # whatever the link did not take now, the I/O thread flushes


CLIENT_MESSAGES = {P.TASKS, P.FUNCS, P.HEARTBEAT, P.CANCEL, P.TERMINATE, P.COMMAND, P.SHUTDOWN}


def acted_on_from_client(frames) -> bool:
    """A message the interchange may act on when the client sends it (a task, a cancel, a shutdown):
    not a stranger's input to count, so the link fuzzing skips it."""
    try:
        mtype, _, _ = P.unpack(frames)
    except P.ProtocolError:
        return False
    return mtype in CLIENT_MESSAGES


def stats(ex) -> dict:
    return ex.executor.interchange_stats()


def healthy(ex, n: int = 50) -> None:
    futs = [ex.submit(pow, i, 5) for i in range(n)]
    assert [f.result(timeout=T) for f in futs] == [i ** 5 for i in range(n)]


def expect_counted(ex, before: dict, malformed: int, refused: int = 0) -> dict:
    """Wait until the interchange has counted exactly the messages we sent."""
    target_m = before["malformed"] + malformed
    target_r = before["managers_refused"] + refused
    after = wait_until(lambda: (lambda s: s if s["malformed"] >= target_m and s["managers_refused"] >= target_r
                              else None)(stats(ex)), 30, what=f"{malformed} malformed and {refused} refused")
    assert after["malformed"] == target_m and after["managers_refused"] == target_r, (after, target_m, target_r)
    return after


# ---- strategies ---------------------------------------------------------------------------------
scalars = (st.none() | st.booleans() | st.integers(-2 ** 63, 2 ** 64 - 1) | st.floats(allow_nan=False)
           | st.text(max_size=16) | st.binary(max_size=32))
bodies = st.recursive(scalars, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=8), c, max_size=4),
                      max_leaves=12)
payloads = st.lists(st.binary(max_size=64), max_size=3)
FID = b"\x01" * P.FID_SIZE


def _real_messages():
    """Well-formed messages of every kind, as the engine itself builds them (for replay/truncation)."""
    return [
        P.pack(P.HELLO, {"token": "0" * 32, "versions": P.versions()}),
        P.pack(P.TASKS, [[1, FID, P.KIND_CALL, None], [2, FID, P.KIND_MAP, {"priority": 1}]],
               [serialize(((1,), {})), serialize(([(2,)], None))]),
        P.pack(P.FUNCS, [FID], [b"not dill"]),
        P.pack(P.RESULTS, [[1, P.OK], [2, P.WORKER_LOST]], [serialize(1), P.failure_payload("WorkerLost", "x", 0)]),
        P.pack(P.CANCEL, [1, 2, 3]),
        P.pack(P.COMMAND, [1, "stats", None]),
        P.pack(P.HEARTBEAT, {"held": 3, "capacity": 10 ** 9}),
        P.pack(P.REGISTER, {"manager_id": "m", "block_id": "0", "hostname": "h", "pid": 1, "workers": 2,
                            "prefetch": 2, "versions": P.versions(), "token": "f" * 32}),
        P.pack(P.DRAIN, {"reason": "x"}),
        P.pack(P.BYE, {"reason": "x", "lost": [1, 2]}),
        P.pack(P.SHUTDOWN, {}),
    ]


REAL = _real_messages()


@st.composite
def messages(draw):
    kind = draw(st.sampled_from(["random", "header", "typed", "truncated", "mismatched", "replayed"]))
    if kind == "random":
        return [draw(st.binary(min_size=0, max_size=256))] + draw(payloads)
    if kind == "header":       # a msgpack header of any shape, any version
        return [msgpack.packb(draw(bodies), use_bin_type=True)] + draw(payloads)
    if kind == "typed":        # right version, a real type, a random body
        version = draw(st.sampled_from([P.PROTOCOL_VERSION, P.PROTOCOL_VERSION + 1, 0]))
        mtype = draw(st.sampled_from(sorted(P.TYPE_NAMES)) | st.integers(-5, 40))
        return [msgpack.packb([version, mtype, draw(bodies)], use_bin_type=True)] + draw(payloads)
    msg = list(draw(st.sampled_from(REAL)))
    if kind == "truncated":    # the header cut short
        cut = draw(st.integers(0, max(0, len(msg[0]) - 1)))
        return [msg[0][:cut]] + msg[1:]
    if kind == "mismatched":   # payload frames missing or extra
        return msg[:1] + msg[1:][:draw(st.integers(0, 1))] + draw(payloads)
    return msg                 # replayed as is


def classify(frames, port: str) -> str:
    """What the interchange must do with a message from a stranger: 'malformed' or 'refused'."""
    try:
        mtype, _, _ = P.unpack(frames)
    except P.ProtocolError:
        return "malformed"
    if port == "manager_port" and mtype == P.REGISTER:
        return "refused"
    return "malformed"


# ---- the interchange's manager port and client link ---------------------------------------------
@pytest.mark.parametrize("port", ["client_link", "manager_port"])
def test_fuzzed_frames_are_counted_and_the_executor_keeps_serving(ex, zctx, port, report):
    healthy(ex)
    before = stats(ex)
    socks = [dealer(zctx, ex, port) for _ in range(3)] if port == "manager_port" else []
    sent = {"malformed": 0, "refused": 0, "messages": 0}

    @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
    @given(msg=messages(), which=st.integers(0, 2))
    def fuzz(msg, which):
        if port == "client_link":
            assume(not acted_on_from_client(msg))
            inject(ex, msg)
        else:
            socks[which].send_multipart(msg)
        sent[classify(msg, port)] += 1
        sent["messages"] += 1

    fuzz()
    after = expect_counted(ex, before, sent["malformed"], sent["refused"])
    assert after["managers"] == before["managers"] and after["managers_registered"] == before["managers_registered"]
    assert after["tasks_received"] == before["tasks_received"], "no task from a stranger was queued"
    for s in socks:
        s.close()
    healthy(ex)
    assert ex.executor._client.ic_proc.poll() is None
    report(f"fuzz_{port}", messages=sent["messages"], counted_malformed=after["malformed"] - before["malformed"],
           refused_registrations=after["managers_refused"] - before["managers_refused"], crashes=0,
           tasks_lost=0, tasks_duplicated=0)


def test_fuzzed_streams_on_the_direct_socket_never_register_or_harm_the_executor(ex, report):
    """The direct socket (same-host managers, ``faasx.executor.direct``), fed by a process of the run's own
    user -- another user cannot connect at all: each example is a fresh connection carrying one fuzzed
    message in the link's framing, or raw bytes, then closed.  Nothing registers, no task is queued, the
    real manager keeps its link and the executor keeps serving."""
    import socket as _socket
    from faasx.executor.channel import Channel
    healthy(ex)
    before = stats(ex)
    path = direct_path(ex.executor._client.ports["manager_ipc"])
    sent = {"framed": 0, "raw": 0}

    @settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck), derandomize=False)
    @given(msg=messages(), raw=st.booleans(), junk=st.binary(min_size=1, max_size=128))
    def fuzz(msg, raw, junk):
        with _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(path)
            if raw:
                s.sendall(junk)
            else:
                Channel(s).send([bytes(f) for f in msg])
        sent["raw" if raw else "framed"] += 1

    fuzz()
    healthy(ex)
    after = stats(ex)
    assert after["managers"] == before["managers"] and after["managers_registered"] == before["managers_registered"]
    assert after["tasks_received"] == before["tasks_received"] + 50, "no task from a stranger was queued"
    assert [m["link"] for m in ex.executor.connected_managers()] == ["direct"]
    assert ex.executor._client.ic_proc.poll() is None
    report("fuzz_direct_socket", connections=sent["framed"] + sent["raw"], **sent,
           refused=after["direct_refused"] + after["managers_refused"] - before["direct_refused"]
           - before["managers_refused"], crashes=0)


def test_oversized_frames_are_dropped_by_the_transport(ex, zctx):
    healthy(ex)
    before = stats(ex)
    port = "manager_port"
    big = dealer(zctx, ex, port)
    for _ in range(3):
        big.send_multipart([P.pack(P.HEARTBEAT, {})[0], b"\0" * (LIMIT + (17 << 20))])
    # a stranger's small message after the oversized ones is still counted: the port is alive
    small = dealer(zctx, ex, port)
    small.send_multipart([b"\xc1garbage"])
    expect_counted(ex, before, 1)
    big.close()
    small.close()
    healthy(ex)


def test_the_client_side_of_the_interchange_is_not_reachable_from_outside(ex):
    """The client talks to its interchange over an inherited socketpair: the interchange listens on the
    manager port (TCP, and its ipc twin for managers on this host) and on nothing else, so no other
    process can pose as the client (replay its HELLO, forge its tasks or steal its results)."""
    import psutil
    healthy(ex)
    ic = psutil.Process(ex.executor._client.ic_proc.pid)
    ports = ex.executor._client.ports
    listening = {c.laddr.port for c in ic.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}
    assert listening == {ports["manager_port"]}, listening
    # named Unix sockets: only the manager port's own ipc socket and the direct socket beside it (files in
    # the 0700 run dir) for managers on this host
    named = {c.laddr for c in ic.net_connections(kind="unix") if c.laddr}
    assert named == {ports["manager_ipc"], direct_path(ports["manager_ipc"])}, named
    assert set(ports) == {"manager_port", "manager_ipc"}


def test_replayed_register_with_wrong_token_is_refused(ex, zctx):
    real = ex.executor.connected_managers()
    before = stats(ex)
    fake = dealer(zctx, ex, "manager_port", identity=b"replayed-manager")
    register = {"manager_id": "replayed-manager", "block_id": "0", "hostname": "vm", "pid": 1, "workers": 4,
                "prefetch": 4, "versions": P.versions(), "token": "0" * 32, "accelerators": []}
    fake.send_multipart(P.pack(P.REGISTER, register))
    assert fake.poll(10_000), "no answer to the replayed REGISTER"
    mtype, body, _ = P.unpack(fake.recv_multipart())
    assert mtype == P.REFUSED and "wrong run token" in body["reason"]
    after = expect_counted(ex, before, 0, refused=1)
    assert after["managers_registered"] == before["managers_registered"]
    assert [m["manager"] for m in ex.executor.connected_managers()] == [m["manager"] for m in real]
    assert "refused manager b'replayed-manager'" in interchange_log(ex)
    assert "wrong run token" in interchange_log(ex)
    fake.close()
    healthy(ex)


def test_forged_results_from_a_stranger_do_not_resolve_futures(ex, zctx):
    def slow(x):
        import time
        time.sleep(2)
        return x

    fut = ex.submit(slow, "real")
    tid = fut.parsl_executor_task_id
    wait_until(lambda: sum(m["tasks"] for m in ex.executor.connected_managers()) >= 1, 20, what="the task to be dispatched")
    before = stats(ex)
    forger = dealer(zctx, ex, "manager_port")
    forger.send_multipart(P.pack(P.RESULTS, [[tid, P.OK]], [serialize("forged")]))
    expect_counted(ex, before, 1)
    assert fut.result(timeout=T) == "real"
    forger.close()


# ---- the manager's worker channel ---------------------------------------------------------------
def _write_to_my_channel(data: bytes, then_sleep: float = 0.0, frames=None):
    """Runs in a worker: write raw bytes (or a framed message) on the worker's channel to its manager."""
    import os
    import socket
    import struct
    import sys
    import time
    fd = int(sys.argv[sys.argv.index("--fd") + 1])
    if frames is not None:
        data = struct.pack(f"!I{len(frames)}Q", len(frames), *[len(f) for f in frames]) + b"".join(frames)
    sock = socket.socket(fileno=os.dup(fd))
    sock.sendall(data)
    sock.close()
    time.sleep(then_sleep)
    return "returned"


CHANNEL_ABUSE = {
    # name: (raw bytes, extra frames, seconds the function then sleeps)
    "garbage": (bytes(range(256)) * 64, None, 0.5),
    "absurd_frame_count": (b"\xff\xff\xff\xff" + b"\0" * 64, None, 0.5),
    "absurd_length": (b"\0\0\0\x01" + b"\x7f" + b"\xff" * 7 + b"x" * 10, None, 0.5),
    "truncated_then_silent": (b"\0\0\0\x02" + b"\0" * 7 + b"\x10", None, 3.0),
    "undecodable_header": (b"", [b"\xc1\xc1\xc1", b"payload"], 0.5),
}


@pytest.mark.parametrize("abuse", sorted(CHANNEL_ABUSE))
def test_worker_channel_abuse_never_hangs_or_kills_the_manager(ex, abuse, report):
    data, frames, nap = CHANNEL_ABUSE[abuse]
    managers = {m["pid"] for m in wait_until(ex.executor.connected_managers, 30, what="the manager to register")}

    def slow(i):
        import time
        time.sleep(0.2)
        return i

    t0 = time.monotonic()
    bad = ex.submit(_write_to_my_channel, data, nap, frames)
    # the other worker keeps serving while its neighbour misbehaves: the manager is not blocked
    others = [ex.submit(slow, i) for i in range(10)]
    assert [f.result(timeout=T) for f in others] == list(range(10))
    try:
        outcome = bad.result(timeout=T)
    except WorkerLost as e:
        outcome = f"WorkerLost after {e.attempts} attempts"
    took = time.monotonic() - t0
    # the manager survived (same pid, still registered) and serves
    assert {m["pid"] for m in ex.executor.connected_managers()} == managers
    healthy(ex)
    logs = "".join(log_text(os.path.join(ex.executor.logdir, f)) for f in os.listdir(ex.executor.logdir)
                   if f.startswith("manager_"))
    report(f"fuzz_worker_channel_{abuse}", outcome=str(outcome)[:80], seconds=round(took, 2), manager_survived=True)
    if abuse != "undecodable_header":
        # a stream that cannot be parsed cannot be trusted: the worker is replaced, its task retried
        assert isinstance(outcome, str) and outcome.startswith("WorkerLost"), outcome
        assert "closed its connection" in logs or "corrupt" in logs


def test_forged_result_from_a_function_does_not_resolve_another_task(ex):
    """A function writes a well-formed RESULTS message for a task that another worker is running."""
    def slow(x):
        import time
        time.sleep(2)
        return x

    victim = ex.submit(slow, "real")
    wait_until(lambda: sum(m["tasks"] for m in ex.executor.connected_managers()) >= 1, 20, what="the victim to run")
    tid = victim.parsl_executor_task_id
    forged = P.pack(P.RESULTS, [[tid, P.OK]], [serialize("forged")])
    forger = ex.submit(_write_to_my_channel, b"", 0.0, forged)
    forger.result(timeout=T)
    assert victim.result(timeout=T) == "real"
    assert ex.executor._client.stats["duplicates"] == 0
    healthy(ex)
