"""The wire protocol and serialization (the manager's worker bookkeeping: tests/unit/test_worker_table.py)."""
import pickle
import threading

import msgpack
import pytest

from faasx.errors import RemoteExceptionError, SerializationError
from faasx.executor import protocol as P
from faasx.executor.serialization import (deserialize, deserialize_exception, deserialize_function, serialize,
                                          serialize_exception, serialize_function)

FID = b"x" * 16


# ---- protocol ---------------------------------------------------------------------------------
def test_pack_unpack_roundtrip_keeps_payloads_opaque():
    frames = P.pack(P.TASKS, [[1, FID, P.KIND_CALL, None]], [b"\x80opaque"])
    msg_type, body, payloads = P.unpack(frames)
    assert msg_type == P.TASKS and P.parse_tasks(body, payloads) == [P.Task(1, FID, 0, None, b"\x80opaque")]
    assert payloads == [b"\x80opaque"]


@pytest.mark.parametrize("frames", [
    [],
    [b"\xc1"],                                            # never-used msgpack byte
    [msgpack.packb([P.PROTOCOL_VERSION + 1, P.TASKS, []])],  # future version
    [msgpack.packb([P.PROTOCOL_VERSION, 999, None])],        # unknown type
    [msgpack.packb({"not": "a list"})],
])
def test_malformed_headers_raise_protocol_error(frames):
    with pytest.raises(P.ProtocolError):
        P.unpack(frames)


@pytest.mark.parametrize("body,payloads", [
    ([[1, FID, 0, None]], []),                     # payload count mismatch
    ([[1, b"short", 0, None]], [b""]),             # bad function id
    ([["1", FID, 0, None]], [b""]),                # task id not an int
    ([[1, FID, 7, None]], [b""]),                  # unknown kind
    ([[1, FID, 0, "spec"]], [b""]),                # spec not a dict
    ("nope", [b""]),
])
def test_malformed_task_bodies_are_rejected(body, payloads):
    with pytest.raises(P.ProtocolError):
        P.parse_tasks(body, payloads)


def test_header_decoding_cannot_execute_code():
    evil = pickle.dumps(threading.Thread)  # a pickle is not a valid header
    with pytest.raises(P.ProtocolError):
        P.unpack([evil])


def test_version_mismatch_ignores_python_patch_level():
    ours = {"protocol": 1, "faasx": "0.1.0", "python": "3.11.7", "dill": "0.4.1"}
    assert P.version_mismatch(ours, dict(ours, python="3.11.9")) == {}
    diff = P.version_mismatch(ours, dict(ours, python="3.12.1", dill="0.3.8"))
    assert set(diff) == {"python", "dill"}


def test_type_names_name_every_message_type_once():
    assert sorted(TYPE for TYPE in P.TYPE_NAMES) == list(range(1, len(P.TYPE_NAMES) + 1))
    for value, name in P.TYPE_NAMES.items():
        assert getattr(P, name) == value


# The builders must emit exactly the frames the spec's table documents (the wire format of
# PROTOCOL_VERSION 1 is unchanged by them): each is compared with the message written out by hand.
@pytest.mark.parametrize("built,expected", [
    (P.pack_tasks([P.Task(1, FID, P.KIND_CALL, None, b"a"), P.Task(2, FID, P.KIND_MAP, {"priority": 1}, b"b")]),
     P.pack(P.TASKS, [[1, FID, 0, None], [2, FID, 1, {"priority": 1}]], [b"a", b"b"])),
    (P.pack_results([P.Result(1, P.OK, b"v"), P.Result(2, P.EXCEPTION, b"e")]),
     P.pack(P.RESULTS, [[1, 0], [2, 1]], [b"v", b"e"])),
    (P.pack_funcs([FID], [b"code"]), P.pack(P.FUNCS, [FID], [b"code"])),
    (P.pack_cancel([3, 4]), P.pack(P.CANCEL, [3, 4])),
    (P.pack_cancel_confirmed([3]), P.pack(P.REPLY, [0, [3]])),
    (P.pack_command(5, "stats", None), P.pack(P.COMMAND, [5, "stats", None])),
    (P.pack_reply(5, {"x": 1}), P.pack(P.REPLY, [5, {"x": 1}])),
    (P.pack_heartbeat(), P.pack(P.HEARTBEAT, {})),
    (P.pack_manager_heartbeat(3, warm=["k"]), P.pack(P.HEARTBEAT, {"held": 3, "warm": ["k"]})),
    (P.pack_manager_heartbeat(3, capacity=9), P.pack(P.HEARTBEAT, {"held": 3, "capacity": 9})),
    (P.pack_shutdown(), P.pack(P.SHUTDOWN, {})),
    (P.pack_shutdown("bye"), P.pack(P.SHUTDOWN, {"reason": "bye"})),
    (P.pack_bye("exit", [1, 2]), P.pack(P.BYE, {"reason": "exit", "lost": [1, 2]})),
    (P.pack_drain("walltime"), P.pack(P.DRAIN, {"reason": "walltime"})),
    (P.pack_hold(), P.pack(P.HOLD, {})),
    (P.pack_refused("no"), P.pack(P.REFUSED, {"reason": "no"})),
    (P.pack_registered(1.0, 5.0), P.pack(P.REGISTERED, {"heartbeat_period": 1.0, "heartbeat_threshold": 5.0})),
    (P.pack_event_lost("m", "0", "gone", 2, 1),
     P.pack(P.EVENT, {"kind": "lost", "manager": "m", "block_id": "0", "reason": "gone", "requeued": 2,
                      "failed": 1})),
], ids=lambda v: P.type_name(P.unpack(v)[0]) if isinstance(v, list) else None)
def test_builders_emit_the_bodies_the_spec_documents(built, expected):
    assert built == expected


def test_parsed_tasks_and_results_are_named_records_of_their_payloads():
    tasks = [P.Task(7, FID, P.KIND_CALL, None, b"p7"), P.Task(8, FID, P.KIND_MAP, {"cores": 2}, b"p8")]
    _, body, payloads = P.unpack(P.pack_tasks(tasks))
    assert P.parse_tasks(body, payloads) == tasks
    assert P.parse_tasks(body, payloads)[1].spec == {"cores": 2}
    built = P.parse_tasks(body, payloads, record=lambda *fields: fields)   # e.g. the interchange's TaskRecord
    assert built == [tuple(t) for t in tasks]
    results = [P.Result(7, P.OK, b"r7"), P.failed_result(8, "WorkerLost", "died", 2)]
    _, body, payloads = P.unpack(P.pack_results(results))
    parsed = P.parse_results(body, payloads)
    assert parsed == results and parsed[1].status == P.WORKER_LOST
    assert P.parse_failure(parsed[1].payload) == ("WorkerLost", "died", 2)


@pytest.mark.parametrize("body,payloads", [
    ([[1, 9]], [b""]),              # unknown status
    ([[True, 0]], [b""]),           # a bool is not a task id
    ([[1]], [b""]),
    ([[1, 0]], []),
])
def test_malformed_result_bodies_are_rejected(body, payloads):
    with pytest.raises(P.ProtocolError):
        P.parse_results(body, payloads)


def test_registration_parsing_refuses_what_cannot_be_a_manager():
    for body in (None, [], {"workers": 0}, {"workers": "2"}, {"workers": True}):
        with pytest.raises(P.ProtocolError, match="malformed registration"):
            P.parse_register(body)
    reg = P.parse_register({"workers": 2, "block_id": 3, "prefetch": "x", "token": "t"})
    assert (reg.workers, reg.block_id, reg.prefetch, reg.token, reg.hostname) == (2, "3", 0, "t", None)
    _, body, _ = P.unpack(P.pack_register(reg))
    assert P.parse_register(body) == reg


def test_control_bodies_tolerate_ill_typed_fields():
    hb = P.parse_manager_heartbeat({"held": 2, "warm": ["a", 3], "capacity": "9"})
    assert hb == P.ManagerHeartbeat(2, ["a"], None)
    assert P.parse_manager_heartbeat("junk") == P.ManagerHeartbeat(None, None, None)
    assert P.parse_cancel([1, "2", 3]) == [1, 3]
    assert P.parse_bye({"reason": "exit", "lost": [1, "x"]}) == P.Bye("exit", [1])
    assert P.parse_reason(None, "default") == "default"
    for bad in (P.parse_cancel, P.parse_command, P.parse_reply, P.parse_event):
        with pytest.raises(P.ProtocolError):
            bad("not a list or map")


# ---- serialization ----------------------------------------------------------------------------
def test_function_ids_are_content_addressed():
    def square(x):
        return x * x
    fid1, code1 = serialize_function(square)
    fid2, _ = serialize_function(square)
    assert fid1 == fid2 and len(fid1) == 16
    assert deserialize_function(code1)(7) == 49

    def cube(x):
        return x * x * x
    assert serialize_function(cube)[0] != fid1


def test_lambdas_and_closures_roundtrip():
    k = 3
    fid, code = serialize_function(lambda x: x + k)
    assert deserialize_function(code)(4) == 7
    assert deserialize(serialize((lambda: 5,)))[0]() == 5


class DefinedHere:
    def __init__(self, v):
        self.v = v


def test_plain_data_uses_pickle_and_main_objects_use_dill(monkeypatch):
    assert serialize((1, "a"))[:1] == b"P"
    DefinedHere.__module__ = "__main__"     # as if defined in the user's script
    try:
        data = serialize(DefinedHere(4))
        assert data[:1] == b"D"
    finally:
        DefinedHere.__module__ = __name__


def test_unpicklable_arguments_raise_serialization_error():
    gen = (i for i in range(3))    # neither pickle nor dill can serialize a running generator
    with pytest.raises(SerializationError) as info:
        serialize(((gen,), {}), "the arguments")
    assert "the arguments" in str(info.value) and "generator" in str(info.value)


def test_exception_roundtrip_keeps_type_and_remote_traceback():
    try:
        raise KeyError("missing")
    except KeyError as e:
        payload = serialize_exception(e, "node7")
    exc = deserialize_exception(payload)
    assert type(exc) is KeyError and exc.args == ("missing",)
    assert "node7" in "".join(exc.__notes__) and "raise KeyError" in exc.remote_traceback


def test_unpicklable_exception_arrives_as_remote_exception_error():
    class Weird(Exception):
        def __init__(self):
            super().__init__("weird")
            self.lock = threading.Lock()
    try:
        raise Weird()
    except Weird as e:
        payload = serialize_exception(e)
    exc = deserialize_exception(payload)
    assert isinstance(exc, RemoteExceptionError)
    assert "Weird" in exc.remote_type and "weird" in str(exc)


@pytest.mark.parametrize("bad_type", [[1], {"a": 1}, "TASKS", True, 4.0, None])
def test_message_types_that_are_not_ints_are_protocol_errors(bad_type):
    """Found by the fuzzer: an unhashable type (a list) used to raise TypeError and end the interchange."""
    with pytest.raises(P.ProtocolError):
        P.unpack([msgpack.packb([P.PROTOCOL_VERSION, bad_type, None])])
