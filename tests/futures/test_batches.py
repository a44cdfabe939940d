"""Batches are bounded in bytes on every hop (issue 10, section 2): no task within max_payload_size
fails because of how it was batched.  Real processes; arguments and results of 2 MiB each against a
max_payload_size of 3 MiB, so that any hop that batched more than one or two of them into one message
would exceed a receiver's limit (max_payload_size + 16 MiB on the manager's ZeroMQ socket, twice that
on the socketpairs)."""
import faasx

from .conftest import FAST_HEARTBEATS

MIB = 1 << 20


def echo_size(blob):
    return len(blob), b"r" * len(blob)


def test_many_large_tasks_submitted_at_once_all_succeed(run_dir):
    # shared_memory=False: through shared memory the messages would carry only small references
    with faasx.Executor(max_workers_per_node=2, run_dir=run_dir, max_payload_size=3 * MIB,
                        prefetch_capacity=40, shared_memory=False, **FAST_HEARTBEATS) as ex:
        # submitted before the block's manager has registered: they wait at the interchange, which
        # then hands the manager its whole capacity (42 tasks) at once
        futures = ex.submit_batch([(echo_size, (bytes([i]) * (2 * MIB),)) for i in range(40)])
        results = [f.result(timeout=120) for f in futures]
        assert [n for n, _ in results] == [2 * MIB] * 40
        assert all(len(r) == 2 * MIB for _, r in results)


def test_chunks_by_bytes_bounds_every_message_and_keeps_order():
    """The rule every hop applies (protocol.chunks_by_bytes): at most BATCH_BYTES of payload per
    message unless it holds one record; nothing dropped or reordered; a batch that fits is one slice."""
    from faasx.executor import protocol as P
    tasks = [P.Task(i, b"f" * 16, P.KIND_CALL, None, b"x" * size)
             for i, size in enumerate([3 * MIB, 3 * MIB, 3 * MIB, 20 * MIB, 1, 1, 7 * MIB, 2 * MIB])]
    chunks = P.chunks_by_bytes(tasks)
    assert [t.tid for c in chunks for t in c] == list(range(len(tasks)))
    assert all(len(c) == 1 or sum(len(t.payload) for t in c) <= P.BATCH_BYTES for c in chunks)
    assert [len(c) for c in chunks] == [2, 1, 1, 3, 1]
    small = tasks[4:6]
    assert P.chunks_by_bytes(small) == [small]
