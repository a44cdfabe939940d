"""WorkerTable batching with long and short tasks (issue 12 part 1): after a run of no-ops has taught the
table that tasks are short, a burst of long tasks must still spread over the workers.

These drive the pure table with a simulated clock (no processes): a simulation runs each worker's batch
serially, as faasx-worker does, and reports each task's result the moment it ends, so the makespan it
returns is what a real node would see if messages cost nothing.
"""
from __future__ import annotations

import heapq

from faasx.executor.protocol import Task
from faasx.executor.worker_table import BATCH_WINDOW, MAX_BATCH, WorkerTable

FID = b"f" * 16


def task(i):
    return Task(i, FID, 0, None, b"")


def table(workers: int) -> WorkerTable:
    t = WorkerTable()
    for w in range(workers):
        t.add(w)
        t.mark_ready(w)
    return t


def check(t: WorkerTable) -> None:
    """The table's invariants (``WorkerTable.validate``: every task in one place, each worker within
    its batch and its slow-start limit)."""
    t.validate()


def simulate(t: WorkerTable, durations, now: float = 0.0):
    """Run ``durations`` (task i takes durations[i - base] seconds) on ``t``'s workers; returns
    (makespan, {wid: [tids it ran]}); ``t.batches`` counts the batches handed out."""
    base = 1_000_000 + int(now * 1000)
    t.enqueue([task(base + i) for i in range(len(durations))])
    start = now
    events = []              # (time a task ends, wid, tid)
    ran = {}
    free_at = {}             # wid -> when its current batch's last task ends
    while True:
        for slot, batch in t.assign(now):
            t.batches = getattr(t, "batches", 0) + 1
            end = max(now, free_at.get(slot.wid, now))
            for tk in batch:
                end += durations[tk[0] - base]
                heapq.heappush(events, (end, slot.wid, tk[0]))
                ran.setdefault(slot.wid, []).append(tk[0])
            free_at[slot.wid] = end
        if len(events) % 64 == 0 or len(t.queue) < 64:
            check(t)
        if not events:
            break
        now, wid, tid = heapq.heappop(events)
        t.done(wid, [tid], now)
    return now - start, ran


def warm_up(t: WorkerTable, n: int = 2000) -> float:
    """No-ops of 20 us: the table learns that tasks are short and batches grow."""
    span, _ = simulate(t, [20e-6] * n)
    return span


def test_noops_still_get_big_batches():
    """The slow start costs a few small batches per worker, then no-ops go ~BATCH_WINDOW at a time."""
    t = table(2)
    warm_up(t)
    assert t.avg_task_seconds < 1e-4
    t.batches = 0
    simulate(t, [20e-6] * 10_000, 1.0)
    assert 10_000 / t.batches >= 50, t.batches
    cap = max(1, int(BATCH_WINDOW / t.avg_task_seconds))
    t.enqueue([task(i) for i in range(1000)])
    for slot in t.slots.values():
        slot.limit = MAX_BATCH
    assert all(len(b) <= cap for _, b in t.assign(9.0))   # ... and the history still caps a batch


def test_long_burst_after_noops_spreads_over_the_workers():
    """Issue 12 row (a): 4 x 3 s then 20 x 10 ms on 2 workers after no-ops: bound 6.1 s."""
    t = table(2)
    now = warm_up(t)
    durations = [3.0] * 4 + [0.01] * 20
    span, ran = simulate(t, durations, now + 0.01)
    bound = max(sum(durations) / 2, max(durations))
    assert span <= 1.1 * bound, (span, bound)
    base = 1_000_000 + int((now + 0.01) * 1000)
    longs = [sum(1 for tid in tids if tid - base < 4) for tids in ran.values()]
    assert sorted(longs) == [2, 2]


def test_limit_doubles_on_fast_batches_and_resets_at_once_on_a_long_task():
    t = table(1)
    warm_up(t)
    t.enqueue([task(i) for i in range(100)])
    sizes, now = [], 5.0
    for _ in range(4):
        (slot, batch), = t.assign(now)
        sizes.append(len(batch))
        now += 20e-6 * len(batch)
        t.done(0, [tk[0] for tk in batch], now)
    assert sizes == [1, 2, 4, 8] and slot.limit == 16
    (slot, batch), = t.assign(now)
    t.done(0, [batch[0][0]], now + 1.0)               # its first task took a second
    assert slot.limit == 1


def test_drained_node_starts_again_from_one_task():
    t = table(2)
    warm_up(t)
    assert all(s.limit == 1 for s in t.slots.values())   # the node drained: nothing is known of what comes


def test_shuffled_long_and_short_stay_within_the_bound():
    """Rows (b) and (c): long tasks among many short ones, shuffled."""
    import random
    rng = random.Random(12)
    for durations in ([2.0] * 6 + [0.01] * 300, [1.0] * 6 + [0.02] * 150):
        rng.shuffle(durations)
        t = table(2)
        now = warm_up(t)
        span, _ = simulate(t, durations, now + 0.01)
        bound = max(sum(durations) / 2, max(durations))
        assert span <= 1.1 * bound, (span, bound)
