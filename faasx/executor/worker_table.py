"""The manager's worker bookkeeping: pure state, no processes or sockets.

``WorkerTable`` knows the manager's local task queue, which worker holds which tasks and which
function codes each worker already has, and decides how many tasks to hand to an idle worker.

Batch sizing adapts to the observed task duration: for tasks far shorter than a socket round trip
(no-ops, ~20 us) a worker gets up to ``BATCH_WINDOW`` seconds of work per message, which is what
makes small tasks cheap; for tasks of a millisecond or more it gets one task at a time, so no task
waits behind another on a busy worker while a neighbour idles.  The manager's advertised prefetch
(how many tasks beyond its workers it asks the interchange for) adapts the same way unless the user
fixed ``prefetch_capacity``.
"""
from __future__ import annotations

from collections import deque
from math import ceil
from typing import Deque, Dict, List, Optional, Set, Tuple

BATCH_WINDOW = 0.004      # seconds of work handed to one worker at once
PREFETCH_WINDOW = 0.02    # seconds of work per worker the manager keeps queued locally
MAX_BATCH = 256
MAX_PREFETCH_PER_WORKER = 256
EWMA_ALPHA = 0.2

# (tid, fid, kind, spec, payload)
Task = Tuple[int, bytes, int, Optional[dict], bytes]


class WorkerSlot:
    __slots__ = ("wid", "ready", "tasks", "fids", "sent_at", "container")

    def __init__(self, wid: int, container: Optional[str] = None):
        self.wid = wid
        self.ready = False
        self.tasks: Dict[int, Task] = {}     # tid -> task it is running or has queued
        self.fids: Set[bytes] = set()
        self.sent_at = 0.0
        self.container = container


class WorkerTable:
    def __init__(self, prefetch_capacity: Optional[int] = None):
        self.slots: Dict[int, WorkerSlot] = {}
        self.queue: Deque[Task] = deque()
        self.fixed_prefetch = prefetch_capacity
        self.avg_task_seconds: Optional[float] = None

    # ---- workers -----------------------------------------------------------------------------
    def add(self, wid: int, container: Optional[str] = None) -> WorkerSlot:
        slot = self.slots[wid] = WorkerSlot(wid, container)
        return slot

    def mark_ready(self, wid: int) -> bool:
        slot = self.slots.get(wid)
        if slot is None:
            return False
        slot.ready = True
        return True

    def remove(self, wid: int) -> List[Task]:
        """Forget a worker (it died); returns the tasks it held."""
        slot = self.slots.pop(wid, None)
        return list(slot.tasks.values()) if slot else []

    @property
    def size(self) -> int:
        return len(self.slots)

    def held(self) -> int:
        """Tasks on this node: queued here or at a worker."""
        return len(self.queue) + sum(len(s.tasks) for s in self.slots.values())

    def all_tids(self) -> List[int]:
        return [t[0] for t in self.queue] + [tid for s in self.slots.values() for tid in s.tasks]

    # ---- tasks -------------------------------------------------------------------------------
    def enqueue(self, tasks: List[Task]) -> None:
        self.queue.extend(tasks)

    def batch_size(self, idle_workers: int) -> int:
        avg = self.avg_task_seconds
        limit = 1 if avg is None else max(1, min(MAX_BATCH, int(BATCH_WINDOW / max(avg, 1e-7))))
        return max(1, min(limit, ceil(len(self.queue) / max(1, idle_workers))))

    def assign(self, now: float) -> List[Tuple[WorkerSlot, List[Task]]]:
        """Hand queued tasks to idle, ready workers."""
        if not self.queue:
            return []
        ready = [s for s in self.slots.values() if s.ready and s.container is None]
        idle = [s for s in ready if not s.tasks]
        if not idle:
            return []
        # share the queue among all ready workers, not just those idle right now: otherwise the
        # first worker to finish takes everything while its neighbours are a moment from done
        n = self.batch_size(len(ready))
        out = []
        queue = self.queue
        for slot in idle:
            if not queue:
                break
            batch = [queue.popleft() for _ in range(min(n, len(queue)))]
            for task in batch:
                slot.tasks[task[0]] = task
            slot.sent_at = now
            out.append((slot, batch))
        return out

    def done(self, wid: int, tids: List[int], now: float) -> None:
        """Results for ``tids`` arrived from worker ``wid``; updates the duration estimate."""
        slot = self.slots.get(wid)
        if slot is None or not tids:
            return
        for tid in tids:
            slot.tasks.pop(tid, None)
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
