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


@pytest.mark.parametrize("bad_type", [[1], {"a": 1}, "TASKS", True, 4.0, None])
def test_message_types_that_are_not_ints_are_protocol_errors(bad_type):
    """Found by the fuzzer: an unhashable type (a list) used to raise TypeError and end the interchange."""
    with pytest.raises(P.ProtocolError):
        P.unpack([msgpack.packb([P.PROTOCOL_VERSION, bad_type, None])])
