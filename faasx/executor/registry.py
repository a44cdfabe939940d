"""Registered functions: serialized once, known by a content-addressed id (funcX's function service).

The id is the hex of the BLAKE2b hash of the function's dill serialization, so registering the same
code twice gives the same id and a changed function gets a new one.  A function registered with a
container is addressed by its code *and* its container (BLAKE2b of both): the same code registered for
two containers is two functions, each running in its own container.  Submitting by id sends no code
from the caller: the executor already holds it and ships it once per interchange and manager.
"""
from __future__ import annotations

import threading
from typing import Callable, Dict, List, Optional, Tuple

from faasx.errors import UnknownFunction
from faasx.executor.serialization import serialize_function


class RegisteredFunction:
    __slots__ = ("fid", "code", "name", "container", "memoize", "spec")

    def __init__(self, fid: bytes, code: bytes, name: str, container: Optional[dict], memoize: bool):
        self.fid = fid
        self.code = code
        self.name = name
        self.container = container
        self.memoize = memoize
        # the routing key for the interchange, and the spec itself for the manager that starts the container
        self.spec = ({"container": container["key"],
                      "container_spec": {k: container[k] for k in ("type", "image", "options")}}
                     if container else None)


class FunctionRegistry:
    def __init__(self) -> None:
        self._by_id: Dict[str, RegisteredFunction] = {}
        self._lock = threading.Lock()

    def register(self, fn: Callable, *, container: Optional[dict] = None, memoize: bool = False) -> str:
        if not callable(fn):
            raise TypeError(f"register_function needs a callable, got {type(fn).__name__}")
        if container is not None:
            from faasx.containers import container_key, validate_container_spec
            container = dict(validate_container_spec(container))
            container["key"] = container_key(container)
        fid, code = serialize_function(fn)
        key = fid.hex()
        if container is not None:
            import hashlib
            key = hashlib.blake2b(fid + container["key"].encode(), digest_size=len(fid)).hexdigest()
        name = getattr(fn, "__qualname__", None) or repr(fn)
        with self._lock:
            self._by_id[key] = RegisteredFunction(fid, code, name, container, memoize)
        return key

    def lookup(self, function_id: str) -> Tuple[bytes, bytes, Optional[dict]]:
        entry = self._by_id.get(function_id)
        if entry is None:
            raise UnknownFunction(function_id)
        return entry.fid, entry.code, entry.spec

    def get(self, function_id: str) -> RegisteredFunction:
        entry = self._by_id.get(function_id)
        if entry is None:
            raise UnknownFunction(function_id)
        return entry

    def listing(self) -> List[dict]:
        with self._lock:
            return [{"function_id": k, "name": e.name, "container": e.container, "memoize": e.memoize}
                    for k, e in self._by_id.items()]
