"""Big payloads through shared memory on one host: written once, mapped by the reader, never re-sent.

Without this, a 100 MB numpy argument is pickled in-band (one copy), then framed, queued and read by
every hop -- client, interchange, manager, worker -- with a copy or two at each, and its result the
same way back: ~140 MB/s where one memory copy runs at ~2 GB/s.  Ray avoids it with a shared-memory
object store; this module is the same idea with no store process::

    client   pickle protocol 5, buffer_callback: buffers >= SHARED_MIN_BYTES go out of band
             -> written once into a new file of the run's shm directory (the only copy)
             -> the message carries a small *reference* (codec "S": path, buffer offsets, pickle)
    worker   maps the file copy-on-write and unpickles with buffers= : numpy arrays, bytes-like
             views are views of that mapping (zero copy; writes stay private to the worker)
             -> the result goes back the same way, into a new file of the same directory
    client   maps the result file, unlinks it, unpickles: the user's array is a view of the mapping

The reference is a few hundred bytes, so the hops carry no bulk data at all; ``max_payload_size``
still counts the whole payload (``payload_size``), wherever it lives.

Where a buffer goes out of band: all of a payload's buffers, if they add up to SHARED_MIN_BYTES or
more (else the payload is pickled in-band as before): numpy (and anything else that pickles through
``PickleBuffer``) in any position; ``bytes``/``bytearray`` of at least SHARED_MIN_BYTES and C-contiguous ``memoryview``s
when they are top-level values (an argument, a keyword argument, the result, an item of a returned
tuple/list), wrapped as ``PickleBuffer`` (``_OutOfBand``): pickle puts those in-band otherwise and
cannot pickle a memoryview at all.  Deeper ones stay in-band (finding them would take a Python-level
walk of every payload; the C pickler's ``reducer_override`` is never called for bytes).  A received
``bytes``/``bytearray`` is one copy out of the mapping (they own their memory); a memoryview is a view.

Same host only.  A file in /dev/shm is no use to a manager on another host, so who may be sent a
reference is decided by the interchange, which runs on the client's host: a manager sends its
``host_id()`` (boot id + hostname) in REGISTER, and for a manager whose identity differs (or which
sent none) the interchange replaces each reference by the same bytes inline (codec "B":
pickle + buffers back to back, ``inline``) before dispatching; the payload is never unpickled there.
A worker sends a result by reference when that task's arguments came by reference (it has then
opened a file of the run's directory, which proves it shares the host), or when its manager was
started with the directory (``--shm-dir``: a local block's launch command; the manager hands it to
its plain workers as ``FAASX_SHM_DIR``) and it can create a file there (a container cannot: it has a
/dev/shm of its own, and the random name exists nowhere else); otherwise results are inline.
The client writes references only for a local block (the rule that offers managers the ipc socket),
and never for a task of a per-function container (a container has a /dev/shm of its own).

Who removes what:

* the client owns argument files: it writes one at submit and, when the task's future is done
  (result, exception, cancel, lost worker, shutdown), either unlinks it or keeps it to write the
  next task's arguments into (``Recycler``: the kernel then need not allocate, zero and free the
  pages again).  It keeps it only if no reader has it mapped: a reader holds a shared ``flock`` while
  mapped, and a worker drops its mappings after each task unless the function kept a view of its
  argument.  Until the future is done a retry on another worker can still read it.  The worker
  never unlinks an argument file.
* a result file has one reader, the client, which unlinks it as soon as it has mapped it (the
  mapping keeps the pages until the user drops the array).  A result the client will never read
  (a duplicate: from a manager declared lost, or for a task the client forgot) is unlinked by
  whichever of the interchange and the client drops it.
* the run directory (``RunDir``) is removed with everything left in it when the executor shuts down,
  and by the interchange when it exits (it outlives a client killed with SIGKILL by < 1 s); if both
  died at once, by the same user's next executor (``remove_dead_runs``: its client pid is gone).
  What could be left inside before that: the result of a worker killed between writing its file and
  sending the reference, or of a manager lost with results it had not forwarded.

Security (a login node is shared): the run directory is created by ``mkdir`` with a random name and
mode 0700 under /dev/shm (a sticky world-writable directory: a name taken by someone else fails
``mkdir``, and a new name is drawn), files are created ``O_EXCL | O_NOFOLLOW`` mode 0600 with random
names, and a reader opens with ``O_NOFOLLOW`` and refuses a file that is not a regular file owned by
its own uid with no group/other permission bits.  Another local user can neither list, read, create
nor replace a payload (tests/security/test_shared_payloads.py runs such a user).

If /dev/shm is missing, not writable or full, payloads simply travel inline as before.
"""
from __future__ import annotations

import fcntl
import mmap
import os
import pickle
import re
import secrets
import shutil
import socket
import stat
import struct
import threading
from typing import Any, Callable, List, Optional, Sequence, Tuple

import msgpack

CODEC_SHARED = b"S"     # a reference to a file in the run's shm directory
CODEC_BUFFERS = b"B"    # the same content inline: header, pickle, buffers back to back
SHARED_MIN_BYTES = 256 << 10  # buffers adding up to this go out of band
ALIGN = 64                   # buffer offsets in a file or inline payload: aligned for numpy / SIMD
SHM_ROOT = "/dev/shm"
DIR_PREFIX = "faasx-"
SHM_DIR_ENV = "FAASX_SHM_DIR"   # a local block's plain workers: the client's directory, for results
RECYCLE_FILES = 4               # argument files kept for reuse at most (and never more than are in flight)
RECYCLE_BYTES = 1 << 30         # ... nor more bytes than this
NONCE = 16                      # bytes at the start of an argument file: which payload it holds now

_HEADER_LEN = struct.Struct("!I")
_FILE_NAME = re.compile(r"^[0-9a-f]{32}$")
_DIR_NAME = re.compile(r"^" + DIR_PREFIX + r"(\d+)-(\d+)-[0-9a-f]{16}$")   # uid, client pid, random


class SharedPayloadError(OSError):
    """A shared payload's file cannot be used (gone, not ours, malformed)."""


# ---- host identity -------------------------------------------------------------------------------

def host_id() -> str:
    """What identifies the shared memory this process sees: the kernel's boot id (new at every boot),
    the hostname, and the device of /dev/shm -- a container with the host's hostname (podman
    ``--network=host``) still has a /dev/shm of its own, another mount."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
    except OSError:
        boot = "no-boot-id"
    try:
        shm = os.stat(SHM_ROOT).st_dev
    except OSError:
        shm = -1
    return f"{boot}/{socket.gethostname()}/{shm}"


# ---- the run's directory (client) ----------------------------------------------------------------

class RunDir:
    """The client's private directory of shared payloads, /dev/shm/faasx-<uid>-<pid>-<random>, mode 0700.

    Created by the executor at start (``create``), removed at shutdown (``remove``); the interchange
    removes it too when it exits.  If both were killed at once (SIGKILL to the whole process group),
    the next ``create`` of the same user removes it: a directory of our uid whose client pid is no
    longer alive belongs to a dead run.  Thread-safe: ``writer`` and ``release`` keep no state."""

    def __init__(self, path: str):
        self.path = path

    @classmethod
    def create(cls, root: str = SHM_ROOT) -> Optional["RunDir"]:
        """A new private directory under ``root``, or None where shared memory cannot be used."""
        if not os.path.isdir(root) or not os.access(root, os.W_OK | os.X_OK):
            return None
        remove_dead_runs(root)
        for _ in range(8):
            path = os.path.join(root, f"{DIR_PREFIX}{os.geteuid()}-{os.getpid()}-{secrets.token_hex(8)}")
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:       # taken (by chance or by someone else): draw another name
                continue
            except OSError:
                return None
            os.chmod(path, 0o700)         # mkdir's mode is masked by the umask, never widened: be exact
            return cls(path)
        return None

    def writer(self, max_size: int) -> "Writer":
        """A writer of argument files (the client keeps them until the future is done)."""
        return Writer(self.path, consume=False, max_size=max_size)

    def remove(self) -> None:
        remove_dir(self.path)


def remove_dead_runs(root: str = SHM_ROOT) -> List[str]:
    """Remove the run directories of this uid whose client process is gone; returns their paths.
    (A client in another PID namespace sharing this /dev/shm would look dead: such a setup must give
    each namespace its own /dev/shm, as containers do by default.)"""
    removed = []
    try:
        names = os.listdir(root)
    except OSError:
        return removed
    for name in names:
        match = _DIR_NAME.match(name)
        if not match or int(match.group(1)) != os.geteuid() or _alive(int(match.group(2))):
            continue
        path = os.path.join(root, name)
        try:
            if os.lstat(path).st_uid == os.geteuid():
                remove_dir(path)
                removed.append(path)
        except OSError:
            pass
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_dir(path: Optional[str]) -> None:
    """Remove a run directory and what is left in it (idempotent; only a faasx shm directory)."""
    if path and _DIR_NAME.match(os.path.basename(path)):
        shutil.rmtree(path, ignore_errors=True)


# ---- pickling with out-of-band buffers ---------------------------------------------------------

def _rebuild_memoryview(buf: Any, fmt: str, shape: Tuple[int, ...]) -> memoryview:
    view = memoryview(buf)
    return view.cast("B").cast(fmt, shape) if (fmt, shape) != ("B", (view.nbytes,)) else view


class _OutOfBand:
    """A bytes-like value to pickle as a PickleBuffer, so that it can go out of band like a numpy
    array: pickle itself puts bytes/bytearray in-band (the C pickler never calls a
    ``reducer_override`` for them) and cannot pickle a memoryview at all."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __reduce_ex__(self, protocol: int) -> Any:
        obj = self.obj
        if type(obj) is memoryview:
            return _rebuild_memoryview, (pickle.PickleBuffer(obj), obj.format, obj.shape)
        return type(obj), (pickle.PickleBuffer(obj),)


def _wrap(value: Any) -> Any:
    kind = type(value)
    if (kind is memoryview and value.c_contiguous) or \
            ((kind is bytes or kind is bytearray) and len(value) >= SHARED_MIN_BYTES):
        return _OutOfBand(value)
    return value


def _is_task(obj: Any) -> bool:
    """Whether ``obj`` is a task's ``(args, kwargs)`` (``kwargs`` None for a map chunk)."""
    return type(obj) is tuple and len(obj) == 2 and type(obj[0]) in (tuple, list) and \
        (obj[1] is None or type(obj[1]) is dict)


def _wrap_bytes_like(obj: Any) -> Any:
    """``obj`` with its top-level bytes-like values wrapped in ``_OutOfBand``: the value itself, the
    items of a top-level tuple/list, and a task's ``(args, kwargs)``.  Deeper ones stay in-band."""
    kind = type(obj)
    if _is_task(obj):
        kwargs = obj[1] if obj[1] is None else {k: _wrap(v) for k, v in obj[1].items()}
        return (type(obj[0])(_wrap(v) for v in obj[0]), kwargs)
    if kind is tuple or kind is list:
        return kind(_wrap(v) for v in obj)
    return _wrap(obj)


def _has_bytes_like(obj: Any) -> bool:
    """Whether ``_wrap_bytes_like`` would wrap anything in ``obj``."""
    if _is_task(obj):
        values = list(obj[0]) + list((obj[1] or {}).values())
    else:
        values = obj if type(obj) in (tuple, list) else (obj,)
    return any(_wrap(v) is not v for v in values)


def dumps_out_of_band(obj: Any) -> Tuple[bytes, List[pickle.PickleBuffer]]:
    """Pickle protocol 5 with its buffers out of band, if they add up to SHARED_MIN_BYTES or more:
    (pickle bytes, buffers); otherwise everything in-band and no buffers.

    The C pickler first, as it is (no per-call Python walk: this is every task's path); only if that
    fails (a memoryview) or leaves a lot in-band is it redone with the top-level bytes-like values
    wrapped, when there are any."""
    buffers: List[pickle.PickleBuffer] = []
    try:
        data = pickle.dumps(obj, 5, buffer_callback=buffers.append)
        redo = len(data) >= SHARED_MIN_BYTES and _has_bytes_like(obj)
    except TypeError:
        redo = True
    if redo:
        buffers.clear()
        data = pickle.dumps(_wrap_bytes_like(obj), 5, buffer_callback=buffers.append)
    if buffers and sum(b.raw().nbytes for b in buffers) < SHARED_MIN_BYTES:
        return pickle.dumps(_wrap_bytes_like(obj) if redo else obj, 5), []    # small arrays: in-band
    return data, buffers


def dumps_in_band(obj: Any) -> bytes:
    """Pickle protocol 5, everything in-band, top-level memoryviews included (as ``_OutOfBand``)."""
    return pickle.dumps(_wrap_bytes_like(obj), 5)


def _layout(buffers: Sequence[pickle.PickleBuffer], start: int = 0) -> Tuple[List[list], int]:
    """[[offset, length, readonly], ...] of each buffer placed at ALIGN-ed offsets from ``start``, and
    the end offset."""
    spans, at = [], start
    for buf in buffers:
        raw = buf.raw()
        at = -(-at // ALIGN) * ALIGN
        spans.append([at, raw.nbytes, raw.readonly])
        at += raw.nbytes
    return spans, at


def _pack(codec: bytes, header: dict, data: bytes) -> bytes:
    head = msgpack.packb(header, use_bin_type=True)
    return codec + _HEADER_LEN.pack(len(head)) + head + data


def _unpack(payload: Any) -> Tuple[dict, memoryview, int]:
    """(header, pickle bytes, end of the pickle) of an S or B payload."""
    view = memoryview(payload)
    (n,) = _HEADER_LEN.unpack_from(view, 1)
    start = 1 + _HEADER_LEN.size
    header = msgpack.unpackb(view[start:start + n], raw=False)
    end = start + n + header["n"]
    return header, view[start + n:end], end


# ---- writing -------------------------------------------------------------------------------------

class Writer:
    """Writes the out-of-band buffers of payloads into new files of one run directory.

    ``consume``: the reader unlinks the file once it has mapped it (results, which have one reader);
    otherwise the writer's side does (arguments: the client, when the future is done).
    ``max_size``: a payload bigger than that is not written (the inline form returned has its size,
    for the caller's ``max_payload_size`` check to refuse)."""

    def __init__(self, directory: str, consume: bool, max_size: int):
        self.directory = directory
        self.consume = consume
        self.max_size = max_size
        self.recycled = None if consume else Recycler()

    def write(self, data: bytes, buffers: Sequence[pickle.PickleBuffer]) -> bytes:
        """The reference to a file holding ``buffers`` (an argument file: a recycled one if there is
        one, see ``Recycler``); the inline form if it cannot be written (shared memory full, directory
        gone)."""
        start = 0 if self.consume else ALIGN      # an argument file starts with its nonce
        spans, size = _layout(buffers, start)
        if len(data) + size > self.max_size:
            return inline_from(data, buffers)
        header = {"n": len(data), "c": self.consume, "s": size}
        if self.recycled is not None:
            header["g"] = secrets.token_bytes(NONCE)
            self.recycled.count(+1)       # in flight from now: a release meanwhile must not empty the pool
        path, fd = self.recycled.take(size) if self.recycled is not None else (None, -1)
        if path is None:
            path = os.path.join(self.directory, secrets.token_hex(16))
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            except OSError:
                return self._inline(data, buffers)
        try:
            os.fchmod(fd, 0o600)          # exact whatever the umask (a umask of 0o777 would leave 000)
            if "g" in header:
                os.pwrite(fd, header["g"], 0)
            for (offset, _, _), buf in zip(spans, buffers):
                _pwrite_all(fd, buf.raw(), offset)
            os.ftruncate(fd, size)
        except OSError:                   # ENOSPC on a full tmpfs: leave nothing behind, go inline
            os.close(fd)
            _unlink(path)
            return self._inline(data, buffers)
        os.close(fd)                      # and with it the exclusive lock of a recycled file
        header.update(p=path, b=spans)
        return _pack(CODEC_SHARED, header, data)

    def _inline(self, data: bytes, buffers: Sequence[pickle.PickleBuffer]) -> bytes:
        if self.recycled is not None:
            self.recycled.count(-1)       # no file after all
        return inline_from(data, buffers)

    def release(self, payload: Any) -> None:
        """The task of argument ``payload`` is done: keep its file for reuse if no reader has it mapped
        any more, else unlink it (the client's job, when the future is done)."""
        if self.recycled is None or not self.recycled.keep(payload):
            release(payload)


class Recycler:
    """Argument files whose tasks are done, kept to be written again (thread-safe: ``Writer.write`` runs
    in the caller's threads, ``keep`` in a done-callback).

    Why: a new file's pages are allocated and zeroed by the kernel as it is written, and freed when it
    is unlinked: for 100 MB that is 52 ms against 15 ms to write the same file again (this VM).

    When a file may be written again (``faasx.executor.payloads`` module doc, "Who removes what"):
    every reader holds a shared ``flock`` on the file for as long as it has it mapped (``load``,
    ``release_mappings``); ``keep`` takes the exclusive lock without waiting, and keeps the file only
    if it gets it -- no worker (nor a retry's) still has it mapped, e.g. in an array the function kept.
    The lock stays held while the file waits here, so a stale reader cannot open it (``load`` then says
    the payload is gone), and every payload carries a random nonce that is also the file's first bytes:
    a reader that got in between sees another nonce and refuses the file.

    How many: at most one per task still in flight with a file, RECYCLE_FILES and RECYCLE_BYTES; when
    no such task is left, all are unlinked, so an idle executor holds no argument file."""

    def __init__(self):
        self.lock = threading.Lock()
        self.files: List[Tuple[int, str, int]] = []     # (size, path, fd holding LOCK_EX)
        self.in_flight = 0                              # written argument files not yet released
        self.reused = 0                                 # files written again (for tests and benchmarks)

    def count(self, delta: int) -> None:
        with self.lock:
            self.in_flight += delta

    def take(self, size: int) -> Tuple[Optional[str], int]:
        """(path, fd) of the kept file closest in size to ``size``, or (None, -1)."""
        with self.lock:
            if not self.files:
                return None, -1
            best = min(range(len(self.files)), key=lambda i: abs(self.files[i][0] - size))
            _, path, fd = self.files.pop(best)
            self.reused += 1
        return path, fd

    def keep(self, payload: Any) -> bool:
        """Keep the argument file of ``payload`` if no reader has it mapped; False: unlink it."""
        path = _file_of(payload, recyclable=True)
        if path is None:
            return False
        with self.lock:
            self.in_flight = max(0, self.in_flight - 1)
            if not self.in_flight:
                self._drop_all()
                return False
            if len(self.files) >= RECYCLE_FILES or sum(f[0] for f in self.files) >= RECYCLE_BYTES:
                return False
        try:
            fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:                   # a reader still has it mapped (or is about to read it)
            os.close(fd)
            return False
        with self.lock:
            self.files.append((os.fstat(fd).st_size, path, fd))
        return True

    def _drop_all(self) -> None:
        for _, path, fd in self.files:
            _unlink(path)
            os.close(fd)
        self.files = []


def _pwrite_all(fd: int, raw: memoryview, offset: int) -> None:
    done = 0
    while done < raw.nbytes:
        done += os.pwrite(fd, raw[done:], offset + done)


def inline_from(data: bytes, buffers: Sequence[pickle.PickleBuffer]) -> bytes:
    """Codec B: header, pickle and buffers back to back in one bytes object (one copy of each)."""
    spans, end = _layout(buffers)
    out = bytearray(_pack(CODEC_BUFFERS, {"b": spans, "n": len(data), "s": end}, data))
    base = -(-len(out) // ALIGN) * ALIGN
    out.extend(bytes(base - len(out)))
    out.extend(bytes(end))
    for (offset, length, _), buf in zip(spans, buffers):
        out[base + offset:base + offset + length] = buf.raw()
    return bytes(out)


# ---- reading -------------------------------------------------------------------------------------

def is_shared(payload: Any) -> bool:
    return payload[:1] == CODEC_SHARED


def payload_size(payload: Any) -> int:
    """The size that ``max_payload_size`` limits: the pickle plus its buffers, wherever they are."""
    if payload[:1] == CODEC_SHARED:
        header, _, _ = _unpack(payload)
        return len(payload) + header["s"]
    return len(payload)


def _open_private(path: str) -> int:
    """Open a payload file read-only, refusing anything but a regular 0600 file of our own uid in a
    faasx shm directory."""
    if not (_FILE_NAME.match(os.path.basename(path)) and _DIR_NAME.match(os.path.basename(os.path.dirname(path)))):
        raise SharedPayloadError(f"refusing shared payload path {path!r}: not a faasx payload file")
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise SharedPayloadError(f"the shared payload {path} is gone: its task was cancelled or has "
                                 "finished, or the executor shut down") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise SharedPayloadError(f"refusing shared payload {path}: not a private file of uid {os.geteuid()}")
    return fd


def _map(path: str, size: int, nonce: Optional[bytes] = None) -> mmap.mmap:
    """Map a payload file copy-on-write.  An argument file (``nonce``: the client may recycle it) is
    mapped under a shared ``flock``, held until ``release_mappings`` sees the mapping unused, and
    refused if the client has recycled it for another payload since (``Recycler``)."""
    fd = _open_private(path)
    try:
        if nonce is not None:
            _lock_shared(fd, path)
        if os.fstat(fd).st_size < size:
            raise SharedPayloadError(f"shared payload {path} is truncated ({os.fstat(fd).st_size} < {size} bytes)")
        # copy-on-write: the reader may write into its arrays (as into unpickled ones); nobody else sees it
        mapping = mmap.mmap(fd, size, access=mmap.ACCESS_COPY) if size else None
        if nonce is not None and (mapping is None or mapping[:NONCE] != nonce):
            if mapping is not None:
                mapping.close()
            raise SharedPayloadError(f"the shared payload {path} is gone: its task has finished or was "
                                     "cancelled, and the file holds another payload now")
    except BaseException:
        os.close(fd)
        raise
    if nonce is None:
        os.close(fd)
    else:
        _held.append((mapping, fd))       # the fd keeps the shared lock
    return mapping


def _lock_shared(fd: int, path: str) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:               # the client holds it: kept for reuse, its task is over
        raise SharedPayloadError(f"the shared payload {path} is gone: its task has finished or was "
                                 "cancelled") from None


def _views(base: Any, spans: Sequence[list]) -> List[memoryview]:
    view = memoryview(base) if base is not None else memoryview(b"")
    return [view[off:off + length].toreadonly() if readonly else view[off:off + length]
            for off, length, readonly in spans]


# this process's mapped argument files and their locked fds; a worker's main thread (the one that runs
# tasks) owns it: ``load`` appends, ``release_mappings`` after each task removes
_held: List[Tuple[mmap.mmap, int]] = []


def held() -> bool:
    """Whether this process has argument files mapped (``release_mappings`` has work)."""
    return bool(_held)


def release_mappings() -> int:
    """Unmap every argument file no array uses any more and drop its lock, so that the client may
    write it again (a worker calls this after each task, before it sends the result); returns how
    many are still in use (a function kept a view of its argument)."""
    kept = []
    for mapping, fd in _held:
        try:
            mapping.close()
        except BufferError:               # an object still exports the mapping's memory
            kept.append((mapping, fd))
            continue
        os.close(fd)
    _held[:] = kept
    return len(kept)


def load(payload: Any, loads: Callable[..., Any] = pickle.loads) -> Any:
    """Unpickle an S (shared) or B (inline buffers) payload; its arrays are views, not copies."""
    header, data, end = _unpack(payload)
    if payload[:1] == CODEC_SHARED:
        path = header["p"]
        mapping = _map(path, header["s"], header.get("g"))    # "g": an argument file, recyclable
        if header["c"]:
            _unlink(path)                 # the one reader has it mapped: the name is no longer needed
        return loads(data, buffers=_views(mapping, header["b"]))
    base = -(-end // ALIGN) * ALIGN
    raw = memoryview(payload)[base:base + header["s"]]
    if raw.readonly and any(not ro for _, _, ro in header["b"]):
        raw = memoryview(bytearray(raw))  # writable as the sender's arrays were: one copy, as in-band
    return loads(data, buffers=_views(raw, header["b"]))


def inline(payload: Any) -> bytes:
    """The B form of an S payload (for a manager on another host); the file is left where it is."""
    header, data, _ = _unpack(payload)
    if header["s"] == 0:
        return inline_from(bytes(data), [])
    mapping = _map(header["p"], header["s"])
    buffers = [pickle.PickleBuffer(v) for v in _views(mapping, header["b"])]
    return inline_from(bytes(data), buffers)


def to_keep(payload: Any) -> Optional[bytes]:
    """A payload to keep beyond its task (the memo store): an S payload's content inline, since its
    file is removed once read; None if that file is gone already."""
    if payload[:1] != CODEC_SHARED:
        return payload
    try:
        return inline(payload)
    except (OSError, ValueError, KeyError):
        return None


def release(payload: Any) -> None:
    """Unlink the file of an S payload (the owner's job: the client, once the task's future is done)."""
    path = _file_of(payload)
    if path is not None:
        _unlink(path)


def _file_of(payload: Any, recyclable: bool = False) -> Optional[str]:
    """The path of an S payload's file (with ``recyclable``: only an argument file, which has a
    nonce), or None: not an S payload, or its header is not one of ours."""
    if payload[:1] != CODEC_SHARED:
        return None
    try:
        header, _, _ = _unpack(payload)
    except Exception:
        return None
    path = header.get("p")
    if not isinstance(path, str) or not _FILE_NAME.match(os.path.basename(path)):
        return None
    return path if "g" in header or not recyclable else None


def reply_writer(args_payload: Any, max_size: int, shm_dir: Optional[str] = None) -> Optional[Writer]:
    """The writer for a task's result: into the directory its arguments came from if they came by
    reference, else into ``shm_dir`` (the manager's ``--shm-dir``, a local block), else None (inline).
    A worker that cannot create a file there (a container's own /dev/shm) sends the result inline."""
    if args_payload[:1] == CODEC_SHARED:
        header, _, _ = _unpack(args_payload)
        return Writer(os.path.dirname(header["p"]), consume=True, max_size=max_size)
    if shm_dir and _DIR_NAME.match(os.path.basename(shm_dir)):
        return Writer(shm_dir, consume=True, max_size=max_size)
    return None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def inline_tasks(records: Sequence[Any]) -> List[Any]:
    """The task records to send to a manager on another host: each S payload replaced by its B form
    (a copy of the record; the interchange keeps the reference for a retry elsewhere).  A record whose
    file is gone (its future is done: cancelled meanwhile) goes as it is, and its worker says so."""
    from faasx.executor.protocol import Task
    out = []
    for r in records:
        if r.payload[:1] == CODEC_SHARED:
            try:
                r = Task(r.tid, r.fid, r.kind, r.spec, inline(r.payload))
            except (OSError, ValueError, KeyError):
                pass
        out.append(r)
    return out
