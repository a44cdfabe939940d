"""Memoization: reuse the result of (function, arguments) instead of computing it again.

A call is keyed by a BLAKE2b hash of the function's content id and the *serialized* arguments, so
two calls hit the same entry exactly when their argument bytes are equal (equal values that
serialize differently -- sets of strings across processes, dicts built in another order -- miss,
which costs a recomputation, never a wrong answer).  Only successful results are stored, as the
result bytes the worker sent, so a hit returns a fresh copy.  A hit resolves the future in the
caller's thread without touching the network.  Calls identical to one still running share its
result instead of running twice.

``MemoStore`` keeps recent entries in memory (bounded by bytes) and, given a path, in a SQLite file
that survives restarts (written in batches from the I/O thread; WAL mode, so readers never wait).
"""
from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from typing import Optional

logger = logging.getLogger("faasx.executor")

COMMIT_EVERY = 0.5     # seconds between SQLite commits of new entries


def memo_key(fid: bytes, payload: bytes) -> bytes:
    h = hashlib.blake2b(fid, digest_size=20)
    h.update(payload)
    return h.digest()


class MemoStore:
    def __init__(self, path: Optional[str] = None, max_memory_bytes: int = 256 << 20):
        self.path = path
        self.max_memory_bytes = max_memory_bytes
        self._mem: "OrderedDict[bytes, bytes]" = OrderedDict()
        self._mem_bytes = 0
        self._lock = threading.Lock()
        self._db: Optional[sqlite3.Connection] = None
        self._dirty = 0
        self._last_commit = time.monotonic()
        self.hits = 0
        self.misses = 0
        if path:
            from faasx.executor.security import private_file
            private_file(path)   # 0600 before SQLite opens it: its -wal and -shm files copy this mode
            self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute("CREATE TABLE IF NOT EXISTS memo (key BLOB PRIMARY KEY, value BLOB NOT NULL, "
                             "created REAL NOT NULL)")
            self._db.execute("BEGIN")

    def get(self, key: bytes) -> Optional[bytes]:
        with self._lock:
            value = self._mem.get(key)
            if value is not None:
                self._mem.move_to_end(key)
                self.hits += 1
                return value
            if self._db is not None:
                row = self._db.execute("SELECT value FROM memo WHERE key = ?", (key,)).fetchone()
                if row is not None:
                    self._remember(key, row[0])
                    self.hits += 1
                    return row[0]
            self.misses += 1
            return None

    def put(self, key: bytes, value: bytes) -> None:
        value = bytes(value)
        with self._lock:
            self._remember(key, value)
            if self._db is not None:
                self._db.execute("INSERT OR REPLACE INTO memo VALUES (?, ?, ?)", (key, value, time.time()))
                self._dirty += 1
                if time.monotonic() - self._last_commit > COMMIT_EVERY:
                    self._commit()

    def _remember(self, key: bytes, value: bytes) -> None:
        old = self._mem.pop(key, None)
        if old is not None:
            self._mem_bytes -= len(old)
        if len(value) > self.max_memory_bytes:
            return
        self._mem[key] = value
        self._mem_bytes += len(value)
        while self._mem_bytes > self.max_memory_bytes:
            _, dropped = self._mem.popitem(last=False)
            self._mem_bytes -= len(dropped)

    def _commit(self) -> None:
        if self._db is not None and self._dirty:
            self._db.execute("COMMIT")
            self._db.execute("BEGIN")
            self._dirty = 0
        self._last_commit = time.monotonic()

    def flush(self) -> None:
        with self._lock:
            self._commit()

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                try:
                    self._commit()
                    self._db.execute("COMMIT")
                except sqlite3.Error as e:
                    logger.warning("memo store %s: final commit failed: %s", self.path, e)
                self._db.close()
                self._db = None

    def __len__(self) -> int:
        with self._lock:
            if self._db is not None:
                return self._db.execute("SELECT COUNT(*) FROM memo").fetchone()[0]
            return len(self._mem)
