"""The interchange's scheduling core: pure bookkeeping, no sockets, no clocks of its own.

The interchange process (``faasx.executor.interchange``) feeds this class events -- tasks arrived,
a manager registered, results came back, a manager went silent -- and sends whatever ``dispatch()``
decides.  Keeping the decisions here means they are unit-tested without processes or sockets
(``tests/unit/test_scheduling.py``, which checks ``Scheduler.validate()`` after every step).

Model
-----
* A ``TaskRecord`` is owned either by a ready queue or by exactly one manager (``record.manager``).
  A result is accepted only from the owner, so a manager that was declared lost and comes back cannot
  report a task twice.
* A ``ManagerRecord`` has ``workers`` and ``capacity`` (workers + prefetch).  Managers sit in two
  tiers: *idle* (holds fewer tasks than it has workers) and *prefetch* (has workers busy but room
  left in its prefetch).  ``dispatch()`` fills idle workers everywhere before it fills any prefetch
  slot, so a burst of long tasks spreads over all blocks instead of piling into the first one.
* Each manager visited by ``dispatch()`` receives at least one task, and a manager is only visited
  when it has room, so the cost is O(tasks dispatched) whatever the number of managers.
* Runs, not crumbs: each message to a manager costs the interchange far more than a task in it
  (encryption, a ZeroMQ send, the manager's RESULTS coming back), so when the queue is short
  relative to the idle managers -- a few hundred tasks and 2,048 idle managers of 64 workers -- an
  even share (one task each) would cost a message per task.  An idle manager is instead given
  ``min_run`` tasks (16 by default), or as many as it has idle workers if fewer: the queue goes to
  fewer managers, in runs, and the rotation moves the next run elsewhere.  Only idle workers are
  filled this way (prefetch slots keep the even share), so no task waits while a worker idles, and
  a lone task still leaves at once.
  A manager of 2 workers (the local block) sees no difference: its room is below the run anyway.
* Tasks may carry a routing key (``spec['container']`` or ``spec['gpus']``); keyed tasks wait in
  their own queue and go only to managers that accept the key, preferring those reported warm for it.
* Priorities, as in Parsl's HTEX: a task with ``spec['priority']`` waits in a heap (lower runs
  first) and every prioritised task runs before any task without a priority, which wait in a FIFO.
* A task whose manager or worker is lost is re-queued at the front, up to ``max_retries`` times;
  after that it is failed with the kind of loss.
* Walltime-aware placement: a task with ``spec['walltime']`` (seconds) goes only to a manager whose
  block has at least that long left (``info['walltime_left']`` at registration; none: no limit).
  Such tasks wait in queues of their own (``timed``, by routing key), so tasks without a walltime
  keep the O(1) path above; dispatching timed tasks scans the managers with room, as keyed tasks do.
  One that no manager's remaining time fits for ``grace`` seconds is given up (``too_long``).
"""
from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict, deque
from math import ceil, inf
from typing import Any, Deque, Dict, Iterable, List, Optional, Set, Tuple

DEFAULT_KEY = None
# tasks an idle manager is given at least, room permitting (module docstring, "Runs, not crumbs"):
# at 16 the message costs ~1/16 of its tasks; larger runs save little more and spread less
MIN_RUN = 16


class TaskRecord:
    """One task as the interchange holds it: identity, routing data and its opaque payload."""

    __slots__ = ("tid", "fid", "kind", "spec", "payload", "attempts", "manager", "key", "priority",
                 "cancelled", "walltime")

    def __init__(self, tid: int, fid: bytes, kind: int, spec: Optional[dict], payload: Any):
        self.tid = tid
        self.fid = fid
        self.kind = kind
        self.spec = spec
        self.payload = payload
        self.attempts = 0
        self.manager: Optional[bytes] = None
        self.cancelled = False
        self.key = routing_key(spec)
        priority = spec.get("priority") if spec else None
        self.priority = priority if isinstance(priority, (int, float)) and not isinstance(priority, bool) else None
        walltime = spec.get("walltime") if spec else None
        # the client checked it (a number > 0); anything else is treated as no declared walltime
        self.walltime = walltime if type(walltime) in (int, float) and walltime > 0 else None


def routing_key(spec: Optional[dict]) -> Optional[str]:
    """Which managers may run a task: None (any), 'gpu', or 'container:<key>'."""
    if not spec:
        return DEFAULT_KEY
    container = spec.get("container")
    if container:
        return f"container:{container}"
    if spec.get("gpus"):
        return "gpu"
    return DEFAULT_KEY


class ManagerRecord:
    """A registered manager: its capacity, the tasks it holds and what it can run."""

    __slots__ = ("mid", "block_id", "workers", "capacity", "tasks", "last_seen", "active", "idle_since",
                 "functions", "info", "keys", "warm", "ends_at")

    def __init__(self, mid: bytes, block_id: str, workers: int, capacity: int, info: dict, now: float):
        self.mid = mid
        self.block_id = block_id
        self.workers = workers
        self.capacity = max(capacity, workers)
        self.tasks: Set[int] = set()
        self.last_seen = now
        self.active = True
        self.idle_since: Optional[float] = now
        self.functions: Set[bytes] = set()
        self.info = info
        self.keys: Set[Optional[str]] = {DEFAULT_KEY}
        if info.get("accelerators"):
            self.keys.add("gpu")
        self.warm: Set[str] = set()          # container keys with a warm worker on this manager
        # when its block ends, on the caller's clock: the seconds it had left when it registered
        left = info.get("walltime_left")
        self.ends_at = now + left if left is not None else inf

    def time_left(self, now: float) -> float:
        return self.ends_at - now

    def accepts(self, key: Optional[str]) -> bool:
        if key in self.keys:
            return True
        return bool(key and key.startswith("container:") and self.info.get("containers"))

    def summary(self, now: float) -> dict:
        return {
            "manager": self.mid.decode(errors="replace"),
            "block_id": self.block_id,
            "hostname": self.info.get("hostname"),
            "pid": self.info.get("pid"),
            "worker_count": self.workers,
            "capacity": self.capacity,
            "tasks": len(self.tasks),
            "idle_duration": (now - self.idle_since) if self.idle_since is not None else 0.0,
            "last_heard": now - self.last_seen,        # seconds since its last message
            "active": self.active,
            "warm": sorted(self.warm),
            "walltime_left": self.ends_at - now if self.ends_at != inf else None,
            "link": self.info.get("link"),        # "direct" (a same-host socket) or "zmq"
        }


class _Queue:
    """Ready tasks of one routing key: a heap for prioritised tasks, a FIFO for the rest."""

    __slots__ = ("fifo", "heap", "counter", "live")

    def __init__(self) -> None:
        self.fifo: Deque[TaskRecord] = deque()
        self.heap: List[Tuple[float, int, TaskRecord]] = []
        self.counter = itertools.count()
        self.live = 0          # queued and not cancelled

    def push(self, rec: TaskRecord, front: bool = False) -> None:
        if rec.priority is not None:
            # retried tasks keep their priority but go before equal-priority newcomers
            heapq.heappush(self.heap, (rec.priority, -next(self.counter) if front else next(self.counter), rec))
        elif front:
            self.fifo.appendleft(rec)
        else:
            self.fifo.append(rec)
        self.live += 1

    def drain(self) -> List[TaskRecord]:
        """Every live task, in dispatch order; the queue is empty afterwards."""
        out = []
        while True:
            rec = self.pop()
            if rec is None:
                return out
            out.append(rec)

    def pop(self) -> Optional[TaskRecord]:
        while True:
            heap, fifo = self.heap, self.fifo
            if heap:
                rec = heapq.heappop(heap)[2]
            elif fifo:
                rec = fifo.popleft()
            else:
                return None
            if not rec.cancelled:
                self.live -= 1
                return rec


class Scheduler:
    """Ready queues, manager records and task ownership for one interchange."""

    def __init__(self, max_retries: int = 2, min_run: int = MIN_RUN):
        if min_run < 1:
            raise ValueError(f"min_run must be >= 1, not {min_run}")
        self.max_retries = max_retries
        self.min_run = min_run                           # tasks per idle manager at least (see above)
        self.tasks: Dict[int, TaskRecord] = {}           # every task not yet finished
        self.managers: Dict[bytes, ManagerRecord] = {}
        self.queues: Dict[Optional[str], _Queue] = {DEFAULT_KEY: _Queue()}
        # managers with room, in rotation order; OrderedDict because popping its front is O(1)
        # (a plain dict's front slowly fills with deleted slots that every lookup must skip)
        self._idle: "OrderedDict[bytes, ManagerRecord]" = OrderedDict()
        self._prefetch: "OrderedDict[bytes, ManagerRecord]" = OrderedDict()
        self._unroutable_since: Dict[Optional[str], float] = {}
        # tasks with a walltime, by routing key (see the module docstring), and since when each
        # queued one has fitted no manager's remaining time (``too_long``)
        self.timed: Dict[Optional[str], _Queue] = {}
        self._unfit_since: Dict[int, float] = {}

    # ---- tasks -------------------------------------------------------------------------------
    def submit(self, records: Iterable[TaskRecord]) -> List[TaskRecord]:
        """Queue new tasks; returns those refused because their id is already known (duplicates)."""
        duplicates = []
        tasks, queues = self.tasks, self.queues
        for rec in records:
            if rec.tid in tasks:
                duplicates.append(rec)
                continue
            tasks[rec.tid] = rec
            if rec.walltime is not None:
                self._queue_of(rec).push(rec)
                continue
            q = queues.get(rec.key)
            if q is None:
                q = queues[rec.key] = _Queue()
            q.push(rec)
        return duplicates

    def owners(self, tids: Iterable[int]) -> Dict[bytes, List[int]]:
        """The tasks of ``tids`` that managers hold, grouped by manager."""
        out: Dict[bytes, List[int]] = {}
        tasks = self.tasks
        for tid in tids:
            rec = tasks.get(tid)
            if rec is not None and rec.manager is not None:
                out.setdefault(rec.manager, []).append(tid)
        return out

    def cancel(self, tids: Iterable[int]) -> List[int]:
        """Cancel tasks that are still queued here (those at a manager: ``owners``, for the interchange to tell it)."""
        cancelled = []
        for tid in tids:
            rec = self.tasks.get(tid)
            if rec is not None and rec.manager is None and not rec.cancelled:
                rec.cancelled = True
                self._queue_of(rec).live -= 1
                del self.tasks[tid]
                cancelled.append(tid)
        return cancelled

    @property
    def queued(self) -> int:
        return sum(q.live for q in itertools.chain(self.queues.values(), self.timed.values()))

    def _queue_of(self, rec: TaskRecord) -> _Queue:
        """The ready queue ``rec`` waits in (created on first use)."""
        queues = self.queues if rec.walltime is None else self.timed
        q = queues.get(rec.key)
        if q is None:
            q = queues[rec.key] = _Queue()
        return q

    # ---- managers ----------------------------------------------------------------------------
    def register_manager(self, mid: bytes, block_id: str, workers: int, capacity: int, info: dict,
                         now: float) -> ManagerRecord:
        if mid in self.managers:
            raise ValueError(f"manager {mid!r} is already registered")
        m = ManagerRecord(mid, block_id, workers, capacity, info, now)
        self.managers[mid] = m
        self._update_tier(m)
        return m

    def set_capacity(self, mid: bytes, capacity: int) -> None:
        m = self.managers.get(mid)
        if m is not None:
            m.capacity = max(int(capacity), m.workers)
            self._update_tier(m)

    def set_warm(self, mid: bytes, warm: Iterable[str]) -> None:
        m = self.managers.get(mid)
        if m is not None:
            m.warm = set(warm)

    def deactivate(self, mid: bytes) -> Optional[ManagerRecord]:
        """Dispatch nothing more to this manager (drain, hold); it keeps the tasks it has."""
        m = self.managers.get(mid)
        if m is not None:
            m.active = False
            self._update_tier(m)
        return m

    def remove_manager(self, mid: bytes, now: float) -> Tuple[List[TaskRecord], List[TaskRecord]]:
        """Forget a manager; its tasks are re-queued (first list) or failed (second list)."""
        m = self.managers.pop(mid, None)
        if m is None:
            return [], []
        self._idle.pop(mid, None)
        self._prefetch.pop(mid, None)
        requeued, failed = [], []
        # pushed to the front one by one, so go from the newest: the oldest ends up first
        for tid in sorted(m.tasks, reverse=True):
            rec = self.tasks.get(tid)
            if rec is None:
                continue
            (requeued if self._retry(rec) else failed).append(rec)
        m.tasks.clear()
        return requeued[::-1], failed[::-1]

    def expired(self, now: float, threshold: float) -> List[bytes]:
        return [mid for mid, m in self.managers.items() if now - m.last_seen > threshold]

    def touch(self, mid: bytes, now: float) -> Optional[ManagerRecord]:
        m = self.managers.get(mid)
        if m is not None:
            m.last_seen = now
        return m

    # ---- results -----------------------------------------------------------------------------
    def complete(self, mid: bytes, tid: int, now: float) -> Optional[TaskRecord]:
        """A manager reports task ``tid`` finished.  Returns the record, or None if that manager
        does not own the task (a duplicate or a stale manager): the caller drops such results."""
        rec = self.tasks.get(tid)
        if rec is None or rec.manager != mid:
            return None
        del self.tasks[tid]
        m = self.managers[mid]
        m.tasks.discard(tid)
        if not m.tasks:
            m.idle_since = now
        self._update_tier(m)
        return rec

    def worker_lost(self, mid: bytes, tid: int, now: float) -> Tuple[Optional[TaskRecord], bool]:
        """The worker running ``tid`` died.  Returns (record, requeued); record None if not owned."""
        rec = self.tasks.get(tid)
        if rec is None or rec.manager != mid:
            return None, False
        m = self.managers[mid]
        m.tasks.discard(tid)
        if not m.tasks:
            m.idle_since = now
        self._update_tier(m)
        return rec, self._retry(rec)

    def _retry(self, rec: TaskRecord) -> bool:
        rec.manager = None
        rec.attempts += 1
        if rec.attempts > self.max_retries:
            del self.tasks[rec.tid]
            return False
        self._queue_of(rec).push(rec, front=True)
        return True

    def unroutable(self, now: float, grace: float) -> List[Tuple[str, List[TaskRecord]]]:
        """Keyed tasks (GPU, container) that no registered manager can run, for longer than ``grace``.

        While no manager is registered nothing is judged (blocks may still be starting); once some
        are and none accepts a key for ``grace`` seconds, that key's queued tasks are taken out and
        returned, for the caller to fail -- instead of waiting for ever.  Blocks of one executor
        are alike, so later ones would not accept the key either.
        """
        out = []
        for key in dict.fromkeys(itertools.chain(self.queues, self.timed)):
            qs = [q for q in (self.queues.get(key), self.timed.get(key)) if q is not None and q.live]
            if key is DEFAULT_KEY or not qs:
                self._unroutable_since.pop(key, None)
                continue
            if not self.managers or any(m.accepts(key) for m in self.managers.values()):
                self._unroutable_since.pop(key, None)
                continue
            since = self._unroutable_since.setdefault(key, now)
            if now - since > grace:
                recs = [rec for q in qs for rec in q.drain()]
                for rec in recs:
                    self.tasks.pop(rec.tid, None)
                del self._unroutable_since[key]
                out.append((key, recs))
        return out

    def too_long(self, now: float, grace: float) -> List[Tuple[TaskRecord, float]]:
        """Tasks whose walltime has exceeded every active manager's remaining time for ``grace`` seconds.

        Returns [(task, the longest remaining time of the managers that accept its key)], the tasks
        taken out of their queues for the caller to fail.  The same grace as ``unroutable``: while no
        active manager accepts a key nothing is judged, and a longer block that registers in time
        takes the task.  O(timed tasks queued + managers); the caller runs it once per heartbeat.
        """
        out: List[Tuple[TaskRecord, float]] = []
        unfit_since, self._unfit_since = self._unfit_since, {}
        for key, q in self.timed.items():
            if not q.live:
                continue
            lefts = [m.time_left(now) for m in self.managers.values() if m.active and m.accepts(key)]
            if not lefts:
                continue
            longest = max(lefts)
            kept = []
            for rec in q.drain():
                if rec.walltime <= longest:
                    kept.append(rec)
                    continue
                since = unfit_since.get(rec.tid, now)
                if now - since > grace:
                    del self.tasks[rec.tid]
                    out.append((rec, longest))
                else:
                    self._unfit_since[rec.tid] = since
                    kept.append(rec)
            for rec in kept:
                q.push(rec)
        return out

    # ---- invariants --------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise AssertionError if the bookkeeping is inconsistent.  O(tasks + managers): for tests
        (they call it after every step, as Dask's tests call ``WorkerState.validate_state``), never on
        the hot path.  The invariants:

        * ownership: every task in ``tasks`` is either live in exactly one ready queue (the queue of
          its routing key, in ``timed`` iff it has a walltime, with no owner) or held by exactly one registered manager (``rec.manager``,
          and in that manager's ``tasks``), never both; nothing else is queued or held;
        * counts add up: each queue's ``live`` is the number of its uncancelled entries, and
          ``len(tasks) == queued + sum(tasks held by managers)``;
        * managers: ``capacity >= workers``; ``idle_since`` is None exactly when it holds tasks;
        * tiers: a manager is in ``_idle`` iff it is active and holds fewer tasks than its workers
          (and its capacity), in ``_prefetch`` iff active with every worker busy and prefetch room
          left, in neither otherwise; tier entries are registered managers.
        """
        queued = self._validate_queues()
        held = self._validate_managers()
        for tid, rec in self.tasks.items():
            _require(rec.tid == tid, f"task {tid} filed under another id ({rec.tid})")
            _require(not rec.cancelled, f"task {tid} is cancelled but still known")
            _require(rec.attempts <= self.max_retries, f"task {tid} kept after {rec.attempts} attempts")
            if rec.manager is None:
                _require(tid in queued, f"task {tid} has no owner and is in no queue")
            else:
                _require(tid in held and held[tid] == rec.manager,
                         f"task {tid} names manager {rec.manager!r}, which does not hold it")
                _require(tid not in queued, f"task {tid} is held by {rec.manager!r} and also queued")
        _require(len(self.tasks) == len(queued) + len(held),
                 f"{len(self.tasks)} tasks known, but {len(queued)} queued + {len(held)} held")
        self._validate_tiers()

    def _validate_queues(self) -> Set[int]:
        """The ids of every live queued task, each checked to be queued once, where its key says."""
        queued: Set[int] = set()
        for timed, queues in ((False, self.queues), (True, self.timed)):
            for key, q in queues.items():
                live = [rec for rec in itertools.chain(q.fifo, (e[2] for e in q.heap)) if not rec.cancelled]
                _require(q.live == len(live), f"queue {key!r} counts {q.live} live tasks, holds {len(live)}")
                for rec in live:
                    _require(rec.tid not in queued, f"task {rec.tid} is queued twice")
                    _require(self.tasks.get(rec.tid) is rec, f"queued task {rec.tid} is not in the task table")
                    _require(rec.key == key, f"task {rec.tid} of key {rec.key!r} queued under {key!r}")
                    _require((rec.walltime is not None) == timed,
                             f"task {rec.tid} (walltime {rec.walltime}) in the wrong kind of queue")
                    queued.add(rec.tid)
        return queued

    def _validate_managers(self) -> Dict[int, bytes]:
        """{task id: owner} over every manager, each task held by one manager only."""
        held: Dict[int, bytes] = {}
        for mid, m in self.managers.items():
            _require(m.mid == mid, f"manager {mid!r} filed under another id ({m.mid!r})")
            _require(m.capacity >= m.workers, f"manager {mid!r}: capacity {m.capacity} < {m.workers} workers")
            _require((m.idle_since is None) == bool(m.tasks),
                     f"manager {mid!r}: idle_since {m.idle_since} while holding {len(m.tasks)} task(s)")
            for tid in m.tasks:
                _require(tid not in held, f"task {tid} held by both {held.get(tid)!r} and {mid!r}")
                held[tid] = mid
        return held

    def _validate_tiers(self) -> None:
        _require(not (self._idle.keys() & self._prefetch.keys()), "a manager is in both tiers")
        for tier in (self._idle, self._prefetch):
            for mid, m in tier.items():
                _require(self.managers.get(mid) is m, f"tier entry {mid!r} is not a registered manager")
        for mid, m in self.managers.items():
            held = len(m.tasks)
            room = m.active and held < m.capacity
            _require((mid in self._idle) == (room and held < m.workers), f"manager {mid!r}: wrong idle tier")
            _require((mid in self._prefetch) == (room and held >= m.workers),
                     f"manager {mid!r}: wrong prefetch tier")

    # ---- dispatch ----------------------------------------------------------------------------
    def dispatch(self, now: float = 0.0) -> List[Tuple[ManagerRecord, List[TaskRecord]]]:
        """Assign queued tasks to managers with room.  Returns [(manager, tasks)], one entry per manager.

        ``now`` (the clock ``register_manager`` was given) matters only to tasks with a walltime."""
        out: Dict[bytes, Tuple[ManagerRecord, List[TaskRecord]]] = {}
        # timed tasks first: they are few, and fussier about where they go than the rest
        for key, q in self.timed.items():
            if q.live:
                self._fill_timed(key, q, now, out)
        for key, q in self.queues.items():
            if not q.live:
                continue
            if key is DEFAULT_KEY:
                self._fill(q, self._idle, True, out)
                if q.live:
                    self._fill(q, self._prefetch, False, out)
            else:
                self._fill_keyed(key, q, out)
        return list(out.values())

    def _fill(self, q: _Queue, tier: "OrderedDict[bytes, ManagerRecord]", idle_tier: bool,
              out: Dict[bytes, Tuple[ManagerRecord, List[TaskRecord]]]) -> None:
        # Rotate: take managers from the front; one that still has room goes to the back, so the
        # next dispatch starts elsewhere.  Each visit assigns at least one task, and no manager is
        # visited twice per call, so the cost is O(tasks assigned) however many managers wait.
        # An even share of the queue, but at least a run of ``min_run`` idle workers (the docstring's
        # "Runs"); prefetch slots keep the even share: a task there waits behind busy workers, and
        # spreading those waits is worth the messages
        visits = len(tier)
        floor = self.min_run if idle_tier else 1
        while q.live and visits and tier:
            visits -= 1
            mid, m = tier.popitem(last=False)
            room = (m.workers if idle_tier else m.capacity) - len(m.tasks)
            # shared among the managers not yet visited in this call (``len(tier)`` would count
            # again those sent to the back, and leave part of the queue for the next call)
            share = max(ceil(q.live / (visits + 1)), floor)
            self._assign(m, q, min(room, share), out)
            self._update_tier(m)

    def _fill_keyed(self, key: str, q: _Queue,
                    out: Dict[bytes, Tuple[ManagerRecord, List[TaskRecord]]]) -> None:
        # Keyed tasks are rare (containers, GPUs): a scan over managers is acceptable here.
        candidates = [m for m in self.managers.values() if m.active and m.accepts(key)]
        container = key[len("container:"):] if key.startswith("container:") else None
        candidates.sort(key=lambda m: (container not in m.warm, len(m.tasks) >= m.workers, len(m.tasks)))
        for m in candidates:
            if not q.live:
                break
            room = m.capacity - len(m.tasks)
            if room > 0:
                self._assign(m, q, room, out)
                self._update_tier(m)

    def _fill_timed(self, key: Optional[str], q: _Queue, now: float,
                    out: Dict[bytes, Tuple[ManagerRecord, List[TaskRecord]]]) -> None:
        # Each task goes to a manager with room and time enough: idle workers first, then the least
        # loaded.  A task none fits now keeps its place.  The scan stops when every manager is full;
        # otherwise it visits each queued timed task once: O(timed tasks x managers with room).
        candidates = [m for m in self.managers.values()
                      if m.active and len(m.tasks) < m.capacity and m.accepts(key)]
        kept = []
        while candidates and q.live:
            rec = q.pop()
            fits = [m for m in candidates if m.time_left(now) >= rec.walltime]
            if not fits:
                kept.append(rec)
                continue
            m = min(fits, key=lambda m: (len(m.tasks) >= m.workers, len(m.tasks)))
            self._give(m, rec, out)
            if len(m.tasks) >= m.capacity:
                candidates.remove(m)
        for rec in reversed(kept):      # back where they were, in their order
            q.push(rec, front=True)

    def _give(self, m: ManagerRecord, rec: TaskRecord,
              out: Dict[bytes, Tuple[ManagerRecord, List[TaskRecord]]]) -> None:
        """Assign one task (``_assign`` takes n from a queue's front)."""
        entry = out.get(m.mid)
        if entry is None:
            entry = out[m.mid] = (m, [])
        entry[1].append(rec)
        rec.manager = m.mid
        m.tasks.add(rec.tid)
        m.idle_since = None
        self._update_tier(m)

    def _assign(self, m: ManagerRecord, q: _Queue, n: int,
                out: Dict[bytes, Tuple[ManagerRecord, List[TaskRecord]]]) -> None:
        entry = out.get(m.mid)
        if entry is None:
            entry = out[m.mid] = (m, [])
        batch = entry[1]
        held = m.tasks
        for _ in range(n):
            rec = q.pop()
            if rec is None:
                break
            rec.manager = m.mid
            held.add(rec.tid)
            batch.append(rec)
        if held:
            m.idle_since = None

    def _update_tier(self, m: ManagerRecord) -> None:
        mid, held = m.mid, len(m.tasks)
        if not m.active or held >= m.capacity:
            self._idle.pop(mid, None)
            self._prefetch.pop(mid, None)
        elif held < m.workers:
            self._prefetch.pop(mid, None)
            if mid not in self._idle:
                self._idle[mid] = m
        else:
            self._idle.pop(mid, None)
            if mid not in self._prefetch:
                self._prefetch[mid] = m


def _require(condition: bool, message: str) -> None:
    """``assert`` that survives ``python -O``: ``validate`` must check even there."""
    if not condition:
        raise AssertionError(f"Scheduler invariant broken: {message}")
