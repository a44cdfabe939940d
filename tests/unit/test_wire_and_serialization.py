"""The wire protocol, serialization, and the manager's worker bookkeeping."""
import pickle
import threading

import msgpack
import pytest

from faasx.errors import RemoteExceptionError, SerializationError
from faasx.executor import protocol as P
from faasx.executor.serialization import (deserialize, deserialize_exception, deserialize_function, serialize,
                                          serialize_exception, serialize_function)
from faasx.executor.worker_table import WorkerTable

FID = b"x" * 16


# ---- protocol ---------------------------------------------------------------------------------
def test_pack_unpack_roundtrip_keeps_payloads_opaque():
    frames = P.pack(P.TASKS, [[1, FID, P.KIND_CALL, None]], [b"\x80opaque"])
    msg_type, body, payloads = P.unpack(frames)
    assert msg_type == P.TASKS and P.check_tasks(body, payloads) == [[1, FID, 0, None]]
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
        P.check_tasks(body, payloads)


def test_header_decoding_cannot_execute_code():
    evil = pickle.dumps(threading.Thread)  # a pickle is not a valid header
    with pytest.raises(P.ProtocolError):
        P.unpack([evil])


def test_version_mismatch_ignores_python_patch_level():
    ours = {"protocol": 1, "faasx": "0.1.0", "python": "3.11.7", "dill": "0.4.1"}
    assert P.version_mismatch(ours, dict(ours, python="3.11.9")) == {}
    diff = P.version_mismatch(ours, dict(ours, python="3.12.1", dill="0.3.8"))
    assert set(diff) == {"python", "dill"}


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


# ---- worker table -----------------------------------------------------------------------------
def task(i):
    return (i, FID, 0, None, b"")


def test_unknown_duration_hands_out_one_task_per_worker():
    t = WorkerTable()
    for w in range(2):
        t.add(w)
        t.mark_ready(w)
    t.enqueue([task(i) for i in range(10)])
    out = t.assign(0.0)
    assert [len(b) for _, b in out] == [1, 1]
    assert t.assign(0.0) == []               # both busy


def test_short_tasks_get_batched_and_long_tasks_do_not():
    t = WorkerTable()
    t.add(0)
    t.mark_ready(0)
    t.enqueue([task(i) for i in range(1000)])
    (slot, batch), = t.assign(0.0)
    t.done(0, [batch[0][0]], 0.00002)         # 20 us per task
    (slot, batch), = t.assign(1.0)
    assert len(batch) > 50
    assert t.prefetch() > 100
    t2 = WorkerTable()
    t2.add(0)
    t2.mark_ready(0)
    t2.enqueue([task(i) for i in range(10)])
    (_, b), = t2.assign(0.0)
    t2.done(0, [b[0][0]], 0.5)                # half a second per task
    (_, b), = t2.assign(1.0)
    assert len(b) == 1 and t2.prefetch() == 0


def test_dead_worker_returns_its_tasks():
    t = WorkerTable()
    t.add(0)
    t.mark_ready(0)
    t.enqueue([task(1)])
    t.assign(0.0)
    assert [x[0] for x in t.remove(0)] == [1]
    assert t.held() == 0


def test_fixed_prefetch_capacity_is_respected():
    t = WorkerTable(prefetch_capacity=3)
    t.add(0)
    t.done(0, [1], 1.0)
    assert t.prefetch() == 3


@pytest.mark.parametrize("bad_type", [[1], {"a": 1}, "TASKS", True, 4.0, None])
def test_message_types_that_are_not_ints_are_protocol_errors(bad_type):
    """Found by the fuzzer: an unhashable type (a list) used to raise TypeError and end the interchange."""
    with pytest.raises(P.ProtocolError):
        P.unpack([msgpack.packb([P.PROTOCOL_VERSION, bad_type, None])])
