"""Helpers shared by every test directory."""
from __future__ import annotations

import time
from typing import Any, Callable, Union


def wait_for(fn: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05,
             what: Union[str, Callable[[], str], None] = None) -> Any:
    """Poll ``fn`` until it returns something truthy and return that; fail after ``timeout`` seconds,
    saying what was awaited (``what``: a string, or a callable giving one at failure time) and the
    last value seen.  Tests wait for conditions this way, never by sleeping a fixed time."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            text = what() if callable(what) else (what or getattr(fn, "__name__", "condition"))
            raise AssertionError(f"timed out after {timeout}s waiting for {text}; last value: {value!r}")
        time.sleep(interval)
