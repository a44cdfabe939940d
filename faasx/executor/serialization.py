"""How functions, arguments, results and exceptions become bytes and back.

* Functions are serialized once with dill and addressed by a content hash (16-byte BLAKE2b of the
  dill bytes): the same code gives the same id in every process, a changed function a new one.
* Data (arguments, results) goes through plain pickle (protocol 5), which is several times faster
  than dill, and falls back to dill for what pickle cannot do (lambdas, closures) or would do wrongly:
  objects of classes defined in ``__main__`` pickle by reference to a module the worker does not
  have, so any pickle that mentions ``__main__`` is redone with dill, which ships such classes by value.
* The first byte of a data payload names its codec, so the reader never guesses.
* Big buffers (numpy arrays, big bytes-like objects) of a payload may travel out of band through a
  file in shared memory (codec ``S``) or inline after the pickle (codec ``B``): ``serialize`` does so
  when given a ``payloads.Writer`` (``shared=``), and ``deserialize`` reads every codec.  The why,
  who writes, who unlinks and the same-host rule are in ``faasx.executor.payloads``.
* Exceptions travel with the text of their remote traceback; one that cannot be pickled arrives as
  ``faasx.errors.RemoteExceptionError`` carrying its type name, message and traceback.
"""
from __future__ import annotations

import hashlib
import io
import pickle
import sys
import traceback
from typing import Any, Callable, Optional, Tuple

import dill

from faasx.errors import RemoteExceptionError, SerializationError
from faasx.executor import payloads

CODEC_PICKLE = b"P"
CODEC_DILL = b"D"
CODEC_TEXT = b"T"   # an exception that could not be pickled: msgpack-free utf-8 record

_dumps = pickle.dumps
_loads = pickle.loads
_MAIN = b"__main__"


def function_id(code: bytes) -> bytes:
    return hashlib.blake2b(code, digest_size=16).digest()


def serialize_function(fn: Callable) -> Tuple[bytes, bytes]:
    """(function id, code) for a callable.  Raises SerializationError if dill cannot handle it.

    ``recurse=True`` ships a by-value function (one of the script's, a lambda, a closure) with exactly
    the globals it refers to.  When one of them cannot be pickled, dill's plain mode would still
    succeed for a ``__main__`` function -- by dropping its globals, so that the worker raises
    ``NameError`` for a name the script defines.  That is refused here, naming the global, even when
    it sits on a branch the call never takes: a failure at submit beats one at run time."""
    try:
        code = dill.dumps(fn, recurse=True)
    except Exception as e:
        name = getattr(fn, "__qualname__", repr(fn))
        if getattr(fn, "__module__", None) == "__main__":
            raise SerializationError(f"function {name}", _unpicklable_references(fn) or f"{type(e).__name__}: {e}",
                                     fix=_FIX_GLOBALS) from e
        try:
            code = dill.dumps(fn)
        except Exception as e2:
            raise SerializationError(f"function {name}", f"{type(e2).__name__}: {e2}") from e2
    return function_id(code), code


_FIX_GLOBALS = ("create such objects inside the function (or pass them as arguments, if picklable); a task "
                "cannot use the executor that runs it: return what the next step needs and submit that "
                "step from the script")


def _unpicklable_references(fn: Callable) -> str:
    """Which globals and closure variables of ``fn`` cannot be pickled, and why ('' if none is found)."""
    found = []
    try:
        refs = dict(dill.detect.globalvars(fn, recurse=True))
        refs.update(dill.detect.freevars(fn))
    except Exception:
        return ""
    for var, value in refs.items():
        try:
            dill.dumps(value, recurse=True)
        except Exception as e:
            found.append(f"{var!r} ({type(value).__name__}: {type(e).__name__}: {e})")
    return ("it refers to " + ", ".join(found) + ", which cannot be sent to a worker") if found else ""


def deserialize_function(code: bytes) -> Callable:
    return dill.loads(code)


def serialize(obj: Any, what: str = "the arguments", shared: Optional[payloads.Writer] = None) -> bytes:
    """Data -> bytes with a codec prefix; raises SerializationError naming ``what``.

    With ``shared``, buffers of at least ``payloads.SHARED_MIN_BYTES`` go out of band into a shared
    file and the bytes returned are a reference to it (``payloads.payload_size`` is its full size).
    What dill has to pickle (``__main__`` classes, lambdas) stays in-band."""
    try:
        data, buffers = _pickle(obj, shared)
        if _MAIN not in data:
            return shared.write(data, buffers) if buffers else CODEC_PICKLE + data
    except Exception:
        pass
    try:
        return CODEC_DILL + dill.dumps(obj, recurse=True)
    except Exception as e:
        raise SerializationError(what, f"{type(e).__name__}: {e}") from e


def _pickle(obj: Any, shared: Optional[payloads.Writer]) -> Tuple[bytes, Any]:
    """(pickle, out-of-band buffers or None); a top-level memoryview, which pickle cannot do, is sent as
    its bytes and comes back a memoryview (``payloads.dumps_out_of_band`` does that too)."""
    if shared is not None:
        return payloads.dumps_out_of_band(obj)
    try:
        return _dumps(obj, 5), None
    except TypeError:
        return payloads.dumps_in_band(obj), None


class _MainClassUnpickler(dill.Unpickler):
    """dill's Unpickler, except that a class sent by value from ``__main__`` resolves to this process's
    own ``__main__`` class of that name when there is one.

    Classes of the user's script travel by value (workers cannot import ``__main__``), so without this
    a result or exception of such a class -- nested anywhere, such as the exception inside Parsl's
    ``RemoteExceptionWrapper`` -- would come back as an instance of a look-alike copy, and
    ``except ScriptError:`` in the script would not catch it.  dill itself does this only for the
    top-level object.  The class already existing here is left as it is (no attribute is set on it).
    """

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self._reused: set = set()

    def find_class(self, module: str, name: str) -> Any:
        if module in ("dill._dill", "dill.dill") and name == "_create_type":
            return self._create_type
        if module in ("builtins", "__builtin__") and name == "setattr":
            return self._setattr
        return super().find_class(module, name)

    def _create_type(self, typeobj: Any, *args: Any) -> Any:
        if len(args) == 3 and isinstance(args[2], dict) and args[2].get("__module__") == "__main__":
            existing = getattr(sys.modules.get("__main__"), args[0], None)
            if isinstance(existing, type) and existing.__module__ == "__main__" and existing.__name__ == args[0]:
                self._reused.add(id(existing))
                return existing
        return typeobj(*args)

    def _setattr(self, obj: Any, name: str, value: Any) -> None:
        if id(obj) not in self._reused:    # dill's post-processing of a class it built
            setattr(obj, name, value)


def deserialize(payload: bytes) -> Any:
    codec = payload[:1]
    if codec == CODEC_PICKLE:
        return _loads(memoryview(payload)[1:])
    if codec == CODEC_DILL:
        return _MainClassUnpickler(io.BytesIO(bytes(memoryview(payload)[1:]))).load()
    if codec == payloads.CODEC_SHARED or codec == payloads.CODEC_BUFFERS:
        return payloads.load(payload, _loads)
    raise ValueError(f"unknown payload codec {bytes(codec)!r}")


def serialize_exception(exc: BaseException, host: str = "") -> bytes:
    """An exception and its traceback text; never raises."""
    tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    where = f" on {host}" if host else ""
    try:
        exc.__traceback__ = None
        data = serialize((exc, tb_text, where), "exception")
        # Exceptions whose __init__ does not match their args pickle fine but fail to load; find out
        # here, where the type and message are still known, rather than in the caller.
        deserialize(data)
        return data
    except Exception:
        name = f"{type(exc).__module__}.{type(exc).__qualname__}"
        try:
            message = str(exc)
        except Exception:
            message = "<unprintable>"
        return CODEC_TEXT + "\0".join((name, message, tb_text)).encode("utf-8", "replace")


def deserialize_exception(payload: bytes) -> BaseException:
    """The exception to raise in the caller, with the remote traceback attached as a note."""
    if payload[:1] == CODEC_TEXT:
        name, message, tb_text = (bytes(payload[1:]).decode("utf-8", "replace").split("\0", 2) + ["", ""])[:3]
        return RemoteExceptionError(name, message, tb_text)
    try:
        exc, tb_text, where = deserialize(payload)
    except Exception as e:  # e.g. the exception's class cannot be imported here
        return RemoteExceptionError("<unknown>", f"the remote exception could not be deserialized: {e!r}", "")
    if isinstance(exc, BaseException):
        try:
            exc.remote_traceback = tb_text  # type: ignore[attr-defined]
            _attach_note(exc, f"\nRemote traceback (faasx worker{where}):\n{tb_text.rstrip()}")
        except Exception:
            pass
        return exc
    return RemoteExceptionError(type(exc).__name__, repr(exc), tb_text)


class _RemoteTraceback(Exception):
    """Shown as the cause of a remote exception on Python 3.10, which has no exception notes (the
    same device as ``concurrent.futures.process._RemoteTraceback``)."""

    def __init__(self, text: str):
        super().__init__(text)
        self.text = text

    def __str__(self) -> str:
        return self.text


def _attach_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; on 3.10 the same ``__notes__`` list, and the note as the exception's
    cause so that a printed traceback still shows it."""
    if hasattr(exc, "add_note"):
        exc.add_note(note)
        return
    exc.__notes__ = list(getattr(exc, "__notes__", ())) + [note]  # type: ignore[attr-defined]
    if exc.__cause__ is None:
        exc.__cause__ = _RemoteTraceback(note)
