"""The manager's worker bookkeeping: pure state, no processes or sockets.

``WorkerTable`` knows the manager's local task queue, which worker holds which tasks and which
function codes each worker already has, and decides how many tasks to hand to an idle worker.

Batch sizing adapts to the observed task duration: for tasks far shorter than a socket round trip
(no-ops, ~20 us) a worker gets up to ``BATCH_WINDOW`` seconds of work per message, which is what
makes small tasks cheap; for tasks of a millisecond or more it gets one task at a time, so no task
waits behind another on a busy worker while a neighbour idles.  The manager's advertised prefetch
(how many tasks beyond its workers it asks the interchange for) adapts the same way unless the user
fixed ``prefetch_capacity``.

Container workers (``docs/containers.md``): a task whose spec names a container (``spec["container"]``,
the routing key) waits in its key's own queue and runs only on a worker of that key; plain tasks run
only on plain workers.  ``plan()`` decides which workers to start and which idle ones to stop so that
queued tasks get a worker of their kind within the node's worker count and its cap on container types.
"""
from __future__ import annotations

from collections import deque
from math import ceil
from typing import Container, Deque, Dict, Iterable, List, Optional, Set, Tuple

BATCH_WINDOW = 0.004      # seconds of work handed to one worker at once
PREFETCH_WINDOW = 0.02    # seconds of work per worker the manager keeps queued locally
MAX_BATCH = 256
MAX_PREFETCH_PER_WORKER = 256
EWMA_ALPHA = 0.2

# Without a measured start time: what starting a worker is assumed to cost (seconds).
DEFAULT_START_SECONDS = {None: 0.2}
DEFAULT_CONTAINER_START_SECONDS = 1.0

# (tid, fid, kind, spec, payload)
Task = Tuple[int, bytes, int, Optional[dict], bytes]


def task_container(task: Task) -> Optional[str]:
    """The container key a task must run in (None: a plain worker)."""
    spec = task[3]
    return (spec.get("container") or None) if spec else None


class WorkerSlot:
    __slots__ = ("wid", "ready", "tasks", "fids", "sent_at", "container", "started_at", "last_used")

    def __init__(self, wid: int, container: Optional[str] = None, now: float = 0.0):
        self.wid = wid
        self.ready = False
        self.tasks: Dict[int, Task] = {}     # tid -> task it is running or has queued
        self.fids: Set[bytes] = set()
        self.sent_at = 0.0
        self.container = container
        self.started_at = now
        self.last_used = now

    @property
    def idle(self) -> bool:
        return self.ready and not self.tasks


class WorkerTable:
    def __init__(self, prefetch_capacity: Optional[int] = None):
        self.slots: Dict[int, WorkerSlot] = {}
        self.queue: Deque[Task] = deque()                  # plain tasks
        self.cqueues: Dict[str, Deque[Task]] = {}          # container key -> its tasks
        self.fixed_prefetch = prefetch_capacity
        self.avg_task_seconds: Optional[float] = None
        self.start_seconds: Dict[Optional[str], float] = {}  # measured worker start time per key
        self.proven: Set[str] = set()                      # keys of which a worker became ready here

    # ---- workers -----------------------------------------------------------------------------
    def add(self, wid: int, container: Optional[str] = None, now: float = 0.0) -> WorkerSlot:
        slot = self.slots[wid] = WorkerSlot(wid, container, now)
        return slot

    def mark_ready(self, wid: int, now: Optional[float] = None) -> bool:
        slot = self.slots.get(wid)
        if slot is None:
            return False
        slot.ready = True
        if now is not None:
            slot.last_used = now
            self.start_seconds[slot.container] = max(0.0, now - slot.started_at)
        if slot.container is not None:
            self.proven.add(slot.container)
        return True

    def warm(self) -> List[str]:
        """Container keys with a ready worker here (what the interchange prefers for those tasks)."""
        return sorted({s.container for s in self.slots.values() if s.ready and s.container is not None})

    def remove(self, wid: int) -> List[Task]:
        """Forget a worker (it died); returns the tasks it held."""
        slot = self.slots.pop(wid, None)
        return list(slot.tasks.values()) if slot else []

    @property
    def size(self) -> int:
        return len(self.slots)

    def held(self) -> int:
        """Tasks on this node: queued here or at a worker."""
        return (len(self.queue) + sum(len(q) for q in self.cqueues.values())
                + sum(len(s.tasks) for s in self.slots.values()))

    def all_tids(self) -> List[int]:
        return ([t[0] for t in self.queue] + [t[0] for q in self.cqueues.values() for t in q]
                + [tid for s in self.slots.values() for tid in s.tasks])

    # ---- tasks -------------------------------------------------------------------------------
    def enqueue(self, tasks: List[Task]) -> None:
        plain = self.queue
        for task in tasks:
            key = task_container(task)
            if key is None:
                plain.append(task)
            else:
                q = self.cqueues.get(key)
                if q is None:
                    q = self.cqueues[key] = deque()
                q.append(task)

    def withdraw(self, tids: Set[int]) -> List[Task]:
        """Remove and return the queued tasks (not yet at a worker) whose ids are in ``tids``."""
        out: List[Task] = []
        for key, q in [(None, self.queue)] + list(self.cqueues.items()):
            if any(t[0] in tids for t in q):
                keep = deque(t for t in q if t[0] not in tids)
                out.extend(t for t in q if t[0] in tids)
                if key is None:
                    self.queue = keep
                else:
                    self.cqueues[key] = keep
        return out

    def take_queued(self, key: str) -> List[Task]:
        """Remove and return every queued task of container ``key`` (to fail them)."""
        q = self.cqueues.pop(key, None)
        return list(q) if q else []

    def queued(self) -> bool:
        return bool(self.queue) or any(self.cqueues.values())

    def assignable(self) -> bool:
        """Whether ``assign`` would hand out something now (an idle worker has queued work of its kind)."""
        queue, cqueues = self.queue, self.cqueues
        if not queue and not (cqueues and any(cqueues.values())):
            return False
        for s in self.slots.values():
            if s.ready and not s.tasks and (queue if s.container is None else cqueues.get(s.container)):
                return True
        return False

    def batch_size(self, idle_workers: int, queued: Optional[int] = None) -> int:
        avg = self.avg_task_seconds
        limit = 1 if avg is None else max(1, min(MAX_BATCH, int(BATCH_WINDOW / max(avg, 1e-7))))
        queued = len(self.queue) if queued is None else queued
        return max(1, min(limit, ceil(queued / max(1, idle_workers))))

    def assign(self, now: float) -> List[Tuple[WorkerSlot, List[Task]]]:
        """Hand queued tasks to idle, ready workers of their kind."""
        out: List[Tuple[WorkerSlot, List[Task]]] = []
        if self.queue:
            self._assign(self.queue, None, now, out)
        if self.cqueues:
            for key, q in self.cqueues.items():
                if q:
                    self._assign(q, key, now, out)
        return out

    def _assign(self, queue: Deque[Task], key: Optional[str], now: float,
                out: List[Tuple[WorkerSlot, List[Task]]]) -> None:
        ready = [s for s in self.slots.values() if s.ready and s.container == key]
        idle = [s for s in ready if not s.tasks]
        if not idle:
            return
        # share the queue among all ready workers, not just those idle right now: otherwise the
        # first worker to finish takes everything while its neighbours are a moment from done
        n = self.batch_size(len(ready), len(queue))
        for slot in idle:
            if not queue:
                break
            batch = [queue.popleft() for _ in range(min(n, len(queue)))]
            for task in batch:
                slot.tasks[task[0]] = task
            slot.sent_at = now
            slot.last_used = now
            out.append((slot, batch))

    def done(self, wid: int, tids: List[int], now: float) -> None:
        """Results for ``tids`` arrived from worker ``wid``; updates the duration estimate."""
        slot = self.slots.get(wid)
        if slot is None or not tids:
            return
        for tid in tids:
            slot.tasks.pop(tid, None)
        slot.last_used = now
        per_task = max(now - slot.sent_at, 0.0) / len(tids)
        slot.sent_at = now
        avg = self.avg_task_seconds
        self.avg_task_seconds = per_task if avg is None else avg + EWMA_ALPHA * (per_task - avg)

    def prefetch(self) -> int:
        """How many tasks beyond one per worker this manager wants queued locally."""
        if self.fixed_prefetch is not None:
            return self.fixed_prefetch
        workers = max(1, len(self.slots))
        avg = self.avg_task_seconds
        if avg is None:
            return 2 * workers
        per_worker = min(MAX_PREFETCH_PER_WORKER, int(PREFETCH_WINDOW / max(avg, 1e-7)))
        return workers * per_worker

    # ---- which workers to run ------------------------------------------------------------------
    def plan(self, n_workers: int, max_types: int,
             blocked: Container[Optional[str]] = ()) -> Tuple[List[Optional[str]], List[int]]:
        """Workers to start (their keys; None is a plain worker) and idle workers to stop (their ids) so
        that queued tasks get a worker of their kind.  Pure: the caller starts and stops the processes
        (and removes stopped slots with ``remove``) and calls ``add`` for each started one.

        Rules, in this order:

        * Work already covered is left alone: a key's idle and starting workers count against its
          queue, and when its workers are busy with tasks that will be done sooner than a new worker
          could start (measured start time vs. the average task time), no worker is added.
        * A key never seen to start on this node (no worker of it became ready yet) gets one worker at a
          time: a broken image costs one failed start, not one per queued task.
        * Never more than ``n_workers`` workers; never more than ``max_types`` distinct container keys.
        * When the node is full, an idle worker whose kind has nothing queued (plain ones included) is
          stopped to make room, least recently used first; to admit a new container key over the cap,
          every worker of an idle, unneeded key is stopped.
        * Keys in ``blocked`` (e.g. their container failed to start moments ago) are not started.
        """
        queues: Dict[Optional[str], int] = {None: len(self.queue)} if self.queue else {}
        for key, q in self.cqueues.items():
            if q:
                queues[key] = len(q)
        if not queues:
            return [], []
        by_key: Dict[Optional[str], List[WorkerSlot]] = {}
        for s in self.slots.values():
            by_key.setdefault(s.container, []).append(s)
        avg = self.avg_task_seconds
        demand: List[Tuple[Optional[str], int]] = []
        for key, n_queued in queues.items():
            if key in blocked:
                continue
            mine = by_key.get(key, [])
            starting = sum(1 for s in mine if not s.ready)
            idle = sum(1 for s in mine if s.idle)
            need = n_queued - starting - idle
            if need <= 0:
                continue
            if key is not None and key not in self.proven:
                need = 0 if starting else 1
            elif mine and avg is not None:
                start = self.start_seconds.get(key, DEFAULT_START_SECONDS.get(key, DEFAULT_CONTAINER_START_SECONDS))
                busy = sum(1 for s in mine if s.ready and s.tasks)
                # the queue drains on the busy workers before a new one would be up
                if busy and n_queued * avg / busy < start:
                    need = 0
            if need > 0:
                demand.append((key, need))
        if not demand:
            return [], []

        to_start: List[Optional[str]] = []
        to_stop: List[int] = []
        stopped: Set[int] = set()
        free = n_workers - len(self.slots)
        types = {k for k in by_key if k is not None}

        def evictable(exclude: Optional[str]) -> List[WorkerSlot]:
            return sorted((s for s in self.slots.values()
                           if s.idle and s.wid not in stopped and s.container != exclude
                           and s.container not in queues),
                          key=lambda s: s.last_used)

        for key, need in demand:
            if key is not None and key not in types and len(types) >= max_types:
                # admit a new container type: retire a whole type that is idle and has nothing queued
                victim = None
                for k in sorted((k for k in types if k in by_key),
                                key=lambda k: max(s.last_used for s in by_key[k])):
                    live = [s for s in by_key[k] if s.wid not in stopped]
                    if k not in queues and all(s.idle for s in live):
                        victim = k
                        break
                if victim is None:
                    continue
                for s in by_key[victim]:
                    if s.wid not in stopped:
                        stopped.add(s.wid)
                        to_stop.append(s.wid)
                        free += 1
                types.discard(victim)
            while need > 0:
                if free <= 0:
                    candidates = evictable(key)
                    if not candidates:
                        break
                    victim_slot = candidates[0]
                    stopped.add(victim_slot.wid)
                    to_stop.append(victim_slot.wid)
                    free += 1
                    if victim_slot.container is not None and all(
                            s.wid in stopped for s in by_key[victim_slot.container]):
                        types.discard(victim_slot.container)
                to_start.append(key)
                free -= 1
                need -= 1
                if key is not None:
                    types.add(key)
        return to_start, to_stop
