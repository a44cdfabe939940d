"""The manager's worker bookkeeping: pure state, no processes or sockets.

``WorkerTable`` knows the manager's local task queue, which worker holds which tasks and which
function codes each worker already has, and decides how many tasks to hand to an idle worker.

Batch sizing adapts to the observed task duration: for tasks far shorter than a socket round trip
(no-ops, ~20 us) a worker gets up to ``BATCH_WINDOW`` seconds of work per message, which is what
makes small tasks cheap; for tasks of a millisecond or more it gets one task at a time, so no task
waits behind another on a busy worker while a neighbour idles.

A worker runs its batch serially, so the history can only say what tasks *were*: a burst of long
tasks after a run of no-ops would all land in one worker's batch while the others idle (issue 12).
Each worker therefore also has its own ``limit``, grown by proof like TCP's slow start: it starts at
one task, doubles each time a whole batch comes back within ``LONG_BATCH``, and falls back to
one the moment a batch runs long or the node has drained (what comes next is unknown).  A long task then holds back at most the short tasks batched with it while the limit was
proven, never a pile of other long ones behind it.  The manager's advertised prefetch
(how many tasks beyond its workers it asks the interchange for) adapts the same way unless the user
fixed ``prefetch_capacity``.

Container workers (``docs/containers.md``): a task whose spec names a container (``spec["container"]``,
the routing key) waits in its key's own queue and runs only on a worker of that key; plain tasks run
only on plain workers.  ``plan()`` decides which workers to start and which idle ones to stop so that
queued tasks get a worker of their kind within the node's worker count and its cap on container types.

``validate()`` asserts the invariants the rest relies on (every task in exactly one place, counts that
add up); the unit tests run it after every step.  Owned by the manager's one thread.
"""
from __future__ import annotations

from collections import deque
from math import ceil
from typing import Container, Deque, Dict, List, Optional, Set, Tuple

from faasx.executor.protocol import Task

BATCH_WINDOW = 0.004      # seconds of work handed to one worker at once
PREFETCH_WINDOW = 0.02    # seconds of work per worker the manager keeps queued locally
MAX_BATCH = 256
MAX_PREFETCH_PER_WORKER = 256
EWMA_ALPHA = 0.2
# A batch that takes longer than this (and 4 x what the history expects of it) holds a task that is not
# short: its worker starts again from one task.  Well above a loaded machine's scheduling delays (a
# lower 8 ms reset workers of no-ops often enough to cost ~5 us of CPU per task), well below a long task.
LONG_BATCH = 0.05

# Without a measured start time: what starting a worker is assumed to cost (seconds).
DEFAULT_START_SECONDS = {None: 0.2}
DEFAULT_CONTAINER_START_SECONDS = 1.0


def task_container(task: Task) -> Optional[str]:
    """The container key a task must run in (None: a plain worker)."""
    spec = task.spec
    return (spec.get("container") or None) if spec else None


class WorkerSlot:
    __slots__ = ("wid", "ready", "tasks", "fids", "container", "started_at", "last_used",
                 "limit", "batch_at", "batch_len")

    def __init__(self, wid: int, container: Optional[str] = None, now: float = 0.0):
        self.wid = wid
        self.ready = False
        self.tasks: Dict[int, Task] = {}     # tid -> task it is running or has queued
        self.fids: Set[bytes] = set()
        self.container = container
        self.started_at = now
        self.last_used = now
        self.limit = 1              # most tasks in its next batch (slow start; see the module docstring)
        self.batch_at = 0.0         # when its current batch was sent
        self.batch_len = 0          # how many tasks it had

    @property
    def idle(self) -> bool:
        return self.ready and not self.tasks


def _has_walltime(task: Task) -> bool:
    spec = task[3]
    return bool(spec) and "walltime" in spec


def _take_batch(queue: Deque[Task], n: int) -> List[Task]:
    """Up to ``n`` tasks from the front of ``queue``; a task with a walltime always goes alone, so
    that its clock starts when it starts (the manager times it from the hand-over)."""
    batch = [queue.popleft()]
    if _has_walltime(batch[0]):
        return batch
    while len(batch) < n and queue and not _has_walltime(queue[0]):
        batch.append(queue.popleft())
    return batch


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
        return ([t.tid for t in self.queue] + [t.tid for q in self.cqueues.values() for t in q]
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
            if any(t.tid in tids for t in q):
                keep = deque(t for t in q if t.tid not in tids)
                out.extend(t for t in q if t.tid in tids)
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
            batch = _take_batch(queue, min(n, slot.limit))
            for task in batch:
                slot.tasks[task.tid] = task
            slot.batch_at = now
            slot.batch_len = len(batch)
            slot.last_used = now
            out.append((slot, batch))

    def done(self, wid: int, tids: List[int], now: float) -> None:
        """Results for ``tids`` arrived from worker ``wid``.  The duration estimate is updated once per
        batch, when its last result is in: a worker sends the results finished before a slow task of
        its batch while that task still runs (``worker.ResultFlusher``), and such a partial message
        says nothing about how long the batch's tasks take -- timing it as a whole batch made a slow
        worker look fast, and the rest of the batch, timed alone, made its tasks look slower than
        they were."""
        slot = self.slots.get(wid)
        if slot is None or not tids:
            return
        for tid in tids:
            slot.tasks.pop(tid, None)
        self._adapt_limit(slot, now)
        slot.last_used = now
        if slot.tasks:
            return                  # part of the batch: wait for the rest before timing it
        per_task = max(now - slot.batch_at, 0.0) / max(1, slot.batch_len)
        avg = self.avg_task_seconds
        self.avg_task_seconds = per_task if avg is None else avg + EWMA_ALPHA * (per_task - avg)

    def _adapt_limit(self, slot: WorkerSlot, now: float) -> None:
        """Slow start of ``slot.limit``: proven fast batches double it, anything else resets it to one."""
        elapsed = now - slot.batch_at
        # "long" against what the history expects of this batch, so that a loaded machine's delays
        # do not keep resetting workers whose tasks take a millisecond or two
        expected = slot.batch_len * (self.avg_task_seconds or 0.0)
        if elapsed > max(LONG_BATCH, 4 * expected):
            slot.limit = 1                       # this batch runs long: its tasks are not all short
        elif not slot.tasks:
            queue = self.queue if slot.container is None else self.cqueues.get(slot.container)
            if queue:
                slot.limit = min(MAX_BATCH, 2 * slot.limit)
                return
            # the node has drained (nothing queued, every worker of this kind idle): what comes next is
            # unknown, so every one of them starts again from one task.  A worker that only caught up
            # while its neighbours still run keeps its limit: a stream of no-ops often empties the queue
            # for a moment, and resetting then costs messages (~5 us of CPU per no-op task measured)
            mine = [s for s in self.slots.values() if s.container == slot.container]
            if all(not s.tasks for s in mine):
                for s in mine:
                    s.limit = 1

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

    # ---- invariants ----------------------------------------------------------------------------
    def validate(self) -> None:
        """Assert the bookkeeping invariants (the unit tests call this after every step, as Dask's
        ``WorkerState.validate_state``):

        * every task is in exactly one place: the plain queue, its key's queue, or one worker's slot;
        * a plain task is only in the plain queue or on a plain worker, a container task only in its
          key's queue or on a worker of its key;
        * only ready workers hold tasks, each under its own id, and a slot knows its own worker id;
        * ``held()`` and ``all_tids()`` count exactly those tasks;
        * a worker holds at most the batch it was sent, and its slow-start limit is within 1..MAX_BATCH.
        """
        where: Dict[int, str] = {}

        def place(task: Task, here: str, key: Optional[str]) -> None:
            assert task.tid not in where, f"task {task.tid} is both in {where[task.tid]} and in {here}"
            assert task_container(task) == key, f"task {task.tid} of key {task_container(task)!r} is in {here}"
            where[task.tid] = here

        for task in self.queue:
            place(task, "the plain queue", None)
        for key, q in self.cqueues.items():
            for task in q:
                place(task, f"the queue of {key}", key)
        for wid, slot in self.slots.items():
            assert slot.wid == wid, f"slot of worker {slot.wid} filed under {wid}"
            assert slot.ready or not slot.tasks, f"worker {wid} holds tasks before it is ready"
            for tid, task in slot.tasks.items():
                assert task.tid == tid, f"worker {wid} holds task {task.tid} under id {tid}"
                place(task, f"worker {wid}", slot.container)
            assert 1 <= slot.limit <= MAX_BATCH, f"worker {wid}'s batch limit is {slot.limit}"
            assert len(slot.tasks) <= slot.batch_len, f"worker {wid} holds more than the batch it was sent"
        # the base class's counts: a subclass that keeps tasks elsewhere too (``MpiWorkerTable``'s tasks
        # waiting for nodes) checks those places in its own validate()
        held = WorkerTable.held(self)
        assert held == len(where), f"held() is {held}, {len(where)} tasks are here"
        assert sorted(WorkerTable.all_tids(self)) == sorted(where), "all_tids() does not list the tasks held"
        assert self.avg_task_seconds is None or self.avg_task_seconds >= 0

    # ---- which workers to run ------------------------------------------------------------------
    def plan(self, n_workers: int, max_types: int,
             blocked: Container[Optional[str]] = ()) -> Tuple[List[Optional[str]], List[int]]:
        """Workers to start (their keys; None is a plain worker) and idle workers to stop (their ids) so
        that queued tasks get a worker of their kind.  Pure: the caller starts and stops the processes
        (and removes stopped slots with ``remove``) and calls ``add`` for each started one.

        Rules, in this order:

        * Work already covered is left alone: a key's idle and starting workers count against its
          queue, and when its workers are busy with tasks that will be done sooner than a new worker
          could start (measured start time vs. the average task time), no worker is added (``_need``).
        * A key never seen to start on this node (no worker of it became ready yet) gets one worker at a
          time: a broken image costs one failed start, not one per queued task (``_need``).
        * Never more than ``n_workers`` workers; never more than ``max_types`` distinct container keys.
        * When the node is full, an idle worker whose kind has nothing queued (plain ones included) is
          stopped to make room, least recently used first (``_Plan.evict_one``); to admit a new
          container key over the cap, every worker of an idle, unneeded key is stopped
          (``_Plan.retire_idle_type``).
        * Keys in ``blocked`` (e.g. their container failed to start moments ago) are not started.
        """
        queues = self._queue_lengths()
        if not queues:
            return [], []
        by_key: Dict[Optional[str], List[WorkerSlot]] = {}
        for s in self.slots.values():
            by_key.setdefault(s.container, []).append(s)
        demand: List[Tuple[Optional[str], int]] = []
        for key, n_queued in queues.items():
            need = 0 if key in blocked else self._need(key, n_queued, by_key.get(key, []))
            if need > 0:
                demand.append((key, need))
        if not demand:
            return [], []
        plan = _Plan(self.slots, n_workers, max_types, by_key, queues)
        for key, need in demand:
            plan.serve(key, need)
        return plan.to_start, plan.to_stop

    def _queue_lengths(self) -> Dict[Optional[str], int]:
        """Queued tasks per key (None: plain), only keys with some."""
        queues: Dict[Optional[str], int] = {None: len(self.queue)} if self.queue else {}
        for key, q in self.cqueues.items():
            if q:
                queues[key] = len(q)
        return queues

    def _need(self, key: Optional[str], n_queued: int, mine: List[WorkerSlot]) -> int:
        """How many more workers of ``key`` its ``n_queued`` tasks call for, given its workers ``mine``."""
        starting = _count(mine, lambda s: not s.ready)
        need = n_queued - starting - _count(mine, lambda s: s.idle)
        if need <= 0:
            return 0
        if key is not None and key not in self.proven:
            return 0 if starting else 1
        return 0 if self._drains_before_start(key, n_queued, mine) else need

    def _drains_before_start(self, key: Optional[str], n_queued: int, mine: List[WorkerSlot]) -> bool:
        """Whether the queue drains on the busy workers before a new one would be up (unknown without a
        measured task length)."""
        if self.avg_task_seconds is None:
            return False
        start = self.start_seconds.get(key, DEFAULT_START_SECONDS.get(key, DEFAULT_CONTAINER_START_SECONDS))
        busy = _count(mine, lambda s: s.ready and s.tasks)
        return bool(busy) and n_queued * self.avg_task_seconds / busy < start


def _count(slots: List[WorkerSlot], test) -> int:
    return sum(1 for s in slots if test(s))


class _Plan:
    """The working state of one ``WorkerTable.plan`` call: free slots, container types running, what is
    to be started and stopped.  Stopped workers stay in ``slots`` (the table is not changed) and are
    skipped through ``stopped``."""

    def __init__(self, slots: Dict[int, WorkerSlot], n_workers: int, max_types: int,
                 by_key: Dict[Optional[str], List[WorkerSlot]], queues: Dict[Optional[str], int]):
        self.slots = slots
        self.max_types = max_types
        self.by_key = by_key
        self.queues = queues
        self.free = n_workers - len(slots)
        self.types = {k for k in by_key if k is not None}
        self.stopped: Set[int] = set()
        self.to_start: List[Optional[str]] = []
        self.to_stop: List[int] = []

    def serve(self, key: Optional[str], need: int) -> None:
        """Start up to ``need`` workers of ``key``, making room where the rules allow."""
        if key is not None and key not in self.types and len(self.types) >= self.max_types \
                and not self.retire_idle_type():
            return
        while need > 0 and (self.free > 0 or self.evict_one(key)):
            self.to_start.append(key)
            self.free -= 1
            need -= 1
            if key is not None:
                self.types.add(key)

    def stop(self, slot: WorkerSlot) -> None:
        self.stopped.add(slot.wid)
        self.to_stop.append(slot.wid)
        self.free += 1

    def retire_idle_type(self) -> bool:
        """Admit a new container type over the cap: stop every worker of the least recently used type
        that is idle and has nothing queued.  False if there is none."""
        for k in sorted((k for k in self.types if k in self.by_key),
                        key=lambda k: max(s.last_used for s in self.by_key[k])):
            live = [s for s in self.by_key[k] if s.wid not in self.stopped]
            if k not in self.queues and all(s.idle for s in live):
                self._stop_type(k, live)
                return True
        return False

    def _stop_type(self, key: str, live: List[WorkerSlot]) -> None:
        for s in live:
            self.stop(s)
        self.types.discard(key)

    def evict_one(self, key: Optional[str]) -> bool:
        """Make room on a full node: stop the least recently used idle worker of another kind that has
        nothing queued.  False if there is none."""
        candidates = [s for s in self.slots.values() if s.idle and s.wid not in self.stopped
                      and s.container != key and s.container not in self.queues]
        if not candidates:
            return False
        victim = min(candidates, key=lambda s: s.last_used)
        self.stop(victim)
        if victim.container is not None and all(s.wid in self.stopped for s in self.by_key[victim.container]):
            self.types.discard(victim.container)
        return True
